//! The application side of hapod: receive role notifications, validate and acknowledge them,
//! and tell the application its current role.
//!
//! Embed it in a Rust application:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use hapod_agent::{Agent, AgentConfig};
//! use hapod_protocol::Role;
//!
//! let pod_ip: std::net::IpAddr = std::env::var("POD_IP").unwrap().parse().unwrap();
//! let config = AgentConfig::new((pod_ip, hapod_agent::DEFAULT_PORT).into(), "my-pod");
//! let agent = Agent::bind(config).await?;
//! let mut state = agent.state();
//! while state.changed().await.is_ok() {
//!     if state.borrow_and_update().role == Some(Role::Active) {
//!         // start serving as the active replica
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Applications in other languages run the `hapod-agent` sidecar binary instead, which keeps
//! the role in a file and runs a hook command on every change ([`sidecar`]).
//!
//! Cargo features: `cli` (default) adds the `hapod-agent` binary and the `cli` module with its
//! flags and logging setup; `metrics` (part of `cli`) the agent's Prometheus metrics
//! ([`metrics`]); embed with `default-features = false` (and `features = ["metrics"]` if
//! wanted) to leave out clap and tracing-subscriber.

#[cfg(feature = "cli")]
pub mod cli;
mod epoch_file;
pub mod lease;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod sidecar;
mod validate;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hapod_protocol::{
    Key, MAX_DATAGRAM_LEN, Order, Role, encode_ack, encode_report, unix_nanos_now,
};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use epoch_file::EpochFile;
use lease::{LeaseHolder, OrderVerdict};
use validate::{DropReason, Validator, Verdict};

/// The notification port of the original system, kept as the default.
pub const DEFAULT_PORT: u16 = 10001;

/// Role changes kept for a slow [`Agent::changes`] subscriber before it lags.
const CHANGE_BACKLOG: usize = 256;

/// At most one "dropped datagram" warning per this interval; the rest are counted.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What the agent listens on and accepts.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Usually `POD_IP:10001`: bind the pod IP, never a wildcard, so pods that are processes on
    /// one host do not collide.
    pub bind: SocketAddr,
    /// This pod's name; notifications for any other pod are dropped.
    pub pod_name: String,
    /// Shared HMAC key; with a key, unsigned or wrongly signed datagrams are dropped.
    pub key: Option<Key>,
    /// Accept the original system's unauthenticated 22-byte datagram as "become active".
    /// Anyone who can reach the port can then make this pod active: off by default.
    pub accept_legacy: bool,
    /// This pod's UID (downward API `metadata.uid`): version 2 orders naming another UID are
    /// dropped. Without it the UID is not checked.
    pub pod_uid: Option<String>,
    /// Where the last applied version 2 epoch is kept across restarts (a file in an
    /// `emptyDir`). Without it a restarted agent accepts any epoch once.
    pub epoch_file: Option<PathBuf>,
    /// Clock rate error allowed against the controller's clock (parts per million); grants
    /// are shortened by this share ([`lease::DEFAULT_DRIFT_PPM`]).
    pub drift_ppm: u32,
}

impl AgentConfig {
    /// No key, legacy datagram refused.
    pub fn new(bind: SocketAddr, pod_name: impl Into<String>) -> Self {
        AgentConfig {
            bind,
            pod_name: pod_name.into(),
            key: None,
            accept_legacy: false,
            pod_uid: None,
            epoch_file: None,
            drift_ppm: lease::DEFAULT_DRIFT_PPM,
        }
    }
}

/// How the current role was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing applied yet.
    None,
    /// A versioned notification.
    Notification,
    /// The original system's datagram (no epoch, group, id or send time).
    Legacy,
    /// A version 2 order (with a grant when active).
    Order,
    /// The grant of a version 2 active order ran out without renewal: standby.
    Lapsed,
    /// [`Agent::relinquish`]: standby for good, the process is shutting down.
    Relinquished,
}

/// The role this pod was last told, with the notification that told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// `None` until the first notification is applied.
    pub role: Option<Role>,
    /// Epoch of the last applied versioned notification (0 before any).
    pub epoch: u64,
    pub group: String,
    pub message_id: u64,
    pub sent_at_unix_nanos: u64,
    /// This host's wall clock when the notification was applied.
    pub applied_at_unix_nanos: u64,
    pub source: Source,
    /// End of the grant to act active (protocol version 2), on this host's monotonic clock;
    /// `None` when the role is not bounded by a grant. Renewals move it without waking
    /// readers of [`Agent::state`].
    pub acting_until: Option<Instant>,
}

impl RoleState {
    fn unknown() -> Self {
        RoleState {
            role: None,
            epoch: 0,
            group: String::new(),
            message_id: 0,
            sent_at_unix_nanos: 0,
            applied_at_unix_nanos: 0,
            source: Source::None,
            acting_until: None,
        }
    }

    /// Whether the application may act active at `now`. Check it right before every
    /// leader-only step: it turns false the moment the grant runs out, also before the
    /// agent's own timer has published the lapse (a process that was frozen past the end of
    /// its grant resumes with a stale `role`).
    pub fn acting(&self, now: Instant) -> bool {
        self.role == Some(Role::Active) && self.acting_until.is_none_or(|until| now < until)
    }

    /// `active`, `standby` or `unknown`.
    pub fn role_name(&self) -> &'static str {
        self.role.map_or("unknown", Role::as_str)
    }

    /// Time from the sender's decision to applying it here; meaningful only when the two
    /// clocks are synchronised, `None` when unknown or negative.
    pub fn latency(&self) -> Option<Duration> {
        let nanos = self
            .applied_at_unix_nanos
            .checked_sub(self.sent_at_unix_nanos)?;
        (self.sent_at_unix_nanos != 0).then(|| Duration::from_nanos(nanos))
    }
}

/// One applied notification: the state before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub previous: Option<Role>,
    pub current: RoleState,
}

impl RoleChange {
    /// Logs the change (info level) with its wall-clock time and the latency from the send.
    pub fn log(&self) {
        let state = &self.current;
        let applied_at = i128::from(state.applied_at_unix_nanos);
        let applied_at = jiff::Timestamp::from_nanosecond(applied_at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        tracing::info!(
            previous = self.previous.map_or("unknown", Role::as_str),
            role = state.role_name(),
            epoch = state.epoch,
            group = %state.group,
            message_id = state.message_id,
            source = ?state.source,
            %applied_at,
            latency_us = state.latency().map(|d| d.as_micros()),
            "role changed"
        );
    }
}

/// Counts of what the agent received; every dropped datagram is counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub applied: u64,
    pub legacy_accepted: u64,
    /// Repeats of the current epoch, acknowledged again without re-applying.
    pub duplicates: u64,
    pub acks_sent: u64,
    pub ack_send_errors: u64,
    /// Version 2 orders of the applied epoch (heartbeats and renewals).
    pub renewals: u64,
    /// Grants that ran out without renewal.
    pub lapses: u64,
    pub dropped_oversized: u64,
    pub dropped_malformed: u64,
    pub dropped_unauthenticated: u64,
    pub dropped_wrong_pod: u64,
    pub dropped_wrong_uid: u64,
    pub dropped_not_recorded: u64,
    pub dropped_stale: u64,
    pub dropped_legacy_disabled: u64,
    pub dropped_unexpected_ack: u64,
}

#[derive(Debug, Default)]
struct AtomicCounters {
    received: AtomicU64,
    applied: AtomicU64,
    legacy_accepted: AtomicU64,
    duplicates: AtomicU64,
    acks_sent: AtomicU64,
    ack_send_errors: AtomicU64,
    renewals: AtomicU64,
    lapses: AtomicU64,
    dropped_oversized: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_unauthenticated: AtomicU64,
    dropped_wrong_pod: AtomicU64,
    dropped_wrong_uid: AtomicU64,
    dropped_not_recorded: AtomicU64,
    dropped_stale: AtomicU64,
    dropped_legacy_disabled: AtomicU64,
    dropped_unexpected_ack: AtomicU64,
}

impl AtomicCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::Oversized => &self.dropped_oversized,
            DropReason::Malformed => &self.dropped_malformed,
            DropReason::Unauthenticated => &self.dropped_unauthenticated,
            DropReason::WrongPod => &self.dropped_wrong_pod,
            DropReason::WrongUid => &self.dropped_wrong_uid,
            DropReason::NotRecorded => &self.dropped_not_recorded,
            DropReason::Stale => &self.dropped_stale,
            DropReason::LegacyDisabled => &self.dropped_legacy_disabled,
            DropReason::UnexpectedAck => &self.dropped_unexpected_ack,
        }
    }

    fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            received: get(&self.received),
            applied: get(&self.applied),
            legacy_accepted: get(&self.legacy_accepted),
            duplicates: get(&self.duplicates),
            acks_sent: get(&self.acks_sent),
            ack_send_errors: get(&self.ack_send_errors),
            renewals: get(&self.renewals),
            lapses: get(&self.lapses),
            dropped_oversized: get(&self.dropped_oversized),
            dropped_malformed: get(&self.dropped_malformed),
            dropped_unauthenticated: get(&self.dropped_unauthenticated),
            dropped_wrong_pod: get(&self.dropped_wrong_pod),
            dropped_wrong_uid: get(&self.dropped_wrong_uid),
            dropped_not_recorded: get(&self.dropped_not_recorded),
            dropped_stale: get(&self.dropped_stale),
            dropped_legacy_disabled: get(&self.dropped_legacy_disabled),
            dropped_unexpected_ack: get(&self.dropped_unexpected_ack),
        }
    }
}

/// A running receiver. Dropping it stops receiving.
#[derive(Debug)]
pub struct Agent {
    local_addr: SocketAddr,
    state: watch::Receiver<RoleState>,
    changes: broadcast::Sender<RoleChange>,
    counters: Arc<AtomicCounters>,
    relinquish: mpsc::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    /// Binds `config.bind` and starts receiving; must run inside a tokio runtime. Fails on an
    /// epoch file that cannot be read.
    pub async fn bind(config: AgentConfig) -> io::Result<Agent> {
        let epoch_file = config.epoch_file.map(EpochFile::new);
        let epoch_floor = epoch_file.as_ref().map_or(Ok(0), EpochFile::load)?;
        let socket = UdpSocket::bind(config.bind).await?;
        let local_addr = socket.local_addr()?;
        let (state_tx, state) = watch::channel(RoleState::unknown());
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        let counters = Arc::new(AtomicCounters::default());
        let (relinquish, relinquish_requests) = mpsc::channel(1);
        let receiver = Receiver {
            socket,
            validator: Validator::new(config.pod_name, config.key, config.accept_legacy),
            lease: LeaseHolder::new(
                config.pod_uid,
                epoch_floor,
                config.drift_ppm,
                Instant::now(),
            ),
            epoch_file,
            state: state_tx,
            changes: changes.clone(),
            counters: counters.clone(),
            drop_log: DropLog::default(),
            relinquish_requests,
            orders_from: None,
        };
        let task = tokio::spawn(receiver.run());
        tracing::info!(%local_addr, epoch_floor, "hapod agent listening");
        Ok(Agent {
            local_addr,
            state,
            changes,
            counters,
            relinquish,
            task,
        })
    }

    /// Steps down for good before the process exits (call it on SIGTERM): the state turns
    /// standby (`Source::Relinquished`), no later order makes this agent active again, and
    /// an unsolicited standby report goes to the controller that sent the last order, so it
    /// can promote a successor at once instead of waiting for this pod's grant to run out.
    /// Returns once the state is published and the report sent; stop acting when the
    /// state turns standby, as for any other demotion.
    pub async fn relinquish(&self) {
        let (done, sent) = oneshot::channel();
        if self.relinquish.send(done).await.is_ok() {
            // An error only means the receiver task ended: nothing is acting through it.
            let _ = sent.await;
        }
    }

    /// The bound address (useful when binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The current role; `changed()` wakes on every applied notification (intermediate states
    /// may be skipped by a slow reader: use [`Agent::changes`] to see each one).
    pub fn state(&self) -> watch::Receiver<RoleState> {
        self.state.clone()
    }

    /// Every role change applied after this call, in order. A subscriber more than 256
    /// changes behind gets `RecvError::Lagged` and should re-read [`Agent::state`].
    pub fn changes(&self) -> broadcast::Receiver<RoleChange> {
        self.changes.subscribe()
    }

    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }
}

struct Receiver {
    socket: UdpSocket,
    validator: Validator,
    lease: LeaseHolder,
    epoch_file: Option<EpochFile>,
    state: watch::Sender<RoleState>,
    changes: broadcast::Sender<RoleChange>,
    counters: Arc<AtomicCounters>,
    drop_log: DropLog,
    relinquish_requests: mpsc::Receiver<oneshot::Sender<()>>,
    /// Where the last authentic order came from: the acting controller's order socket.
    orders_from: Option<SocketAddr>,
}

impl Receiver {
    async fn run(mut self) {
        // One byte more than the longest valid datagram, so oversized ones are detected.
        let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
        loop {
            let grant_end = self.lease.expires_at(Instant::now());
            let received = tokio::select! {
                received = self.socket.recv_from(&mut buf) => received,
                // The grant runs out on this clock alone, without any message.
                () = sleep_until_or_never(grant_end) => {
                    AtomicCounters::bump(&self.counters.lapses);
                    self.publish_lease(None, Source::Lapsed);
                    continue;
                }
                Some(done) = self.relinquish_requests.recv() => {
                    self.relinquish().await;
                    let _ = done.send(());
                    continue;
                }
            };
            let (len, from) = match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::warn!(%error, "notification receive failed");
                    // Avoid spinning on a persistent error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            AtomicCounters::bump(&self.counters.received);
            match self.validator.judge(&buf[..len]) {
                Verdict::Apply(msg) => {
                    let ack = msg.ack();
                    self.publish(RoleState {
                        role: Some(self.allowed(msg.role)),
                        epoch: msg.epoch,
                        group: msg.group,
                        message_id: msg.message_id,
                        sent_at_unix_nanos: msg.sent_at_unix_nanos,
                        applied_at_unix_nanos: unix_nanos_now(),
                        source: Source::Notification,
                        acting_until: None,
                    });
                    AtomicCounters::bump(&self.counters.applied);
                    self.send_ack(ack, from).await;
                }
                Verdict::Reack(ack) => {
                    AtomicCounters::bump(&self.counters.duplicates);
                    self.send_ack(ack, from).await;
                }
                Verdict::Legacy => {
                    AtomicCounters::bump(&self.counters.legacy_accepted);
                    let current = self.state.borrow().clone();
                    if current.role != Some(Role::Active) && !self.lease.relinquished() {
                        self.publish(RoleState {
                            role: Some(Role::Active),
                            message_id: 0,
                            sent_at_unix_nanos: 0,
                            applied_at_unix_nanos: unix_nanos_now(),
                            source: Source::Legacy,
                            acting_until: None,
                            ..current
                        });
                    }
                }
                Verdict::Order(order) => {
                    self.orders_from = Some(from);
                    let taken = self.take_order(&order);
                    if let Err(reason) = taken {
                        AtomicCounters::bump(self.counters.dropped(reason));
                        self.drop_log.record(reason, from, len);
                    }
                    // A stale order is answered all the same: the report tells its sender
                    // the epoch this agent is at, so the next order can be newer.
                    if matches!(taken, Ok(()) | Err(DropReason::Stale)) {
                        self.send_report(order.message_id, from).await;
                    }
                }
                Verdict::Drop(reason) => {
                    AtomicCounters::bump(self.counters.dropped(reason));
                    self.drop_log.record(reason, from, len);
                }
            }
        }
    }

    /// Applies a version 2 order: a new epoch is recorded in the epoch file first, so that
    /// no restart can take it (or an older one) again.
    fn take_order(&mut self, order: &Order) -> Result<(), DropReason> {
        match self.lease.judge(order) {
            OrderVerdict::WrongUid => return Err(DropReason::WrongUid),
            OrderVerdict::Stale => return Err(DropReason::Stale),
            OrderVerdict::NewEpoch => {
                if let Some(file) = &self.epoch_file
                    && let Err(error) = file.store(order.epoch)
                {
                    tracing::error!(path = %file.path().display(), %error,
                        "cannot record the epoch: order dropped");
                    return Err(DropReason::NotRecorded);
                }
                AtomicCounters::bump(&self.counters.applied);
            }
            OrderVerdict::SameEpoch => AtomicCounters::bump(&self.counters.renewals),
        }
        self.lease.apply(order);
        self.publish_lease(Some(order), Source::Order);
        Ok(())
    }

    /// Publishes the lease's role if it or the epoch changed; a renewal only moves the end
    /// of the grant, without waking readers.
    fn publish_lease(&self, order: Option<&Order>, source: Source) {
        let now = Instant::now();
        let current = self.state.borrow().clone();
        let role = self.lease.role(now);
        let epoch = self.lease.epoch();
        let acting_until = self.lease.expires_at(now);
        if current.role == role && current.epoch == epoch {
            self.state.send_if_modified(|state| {
                state.acting_until = acting_until;
                false
            });
            return;
        }
        self.publish(RoleState {
            role,
            epoch,
            group: order.map_or(current.group, |o| o.group.clone()),
            message_id: order.map_or(0, |o| o.message_id),
            sent_at_unix_nanos: order.map_or(0, |o| o.sent_at_unix_nanos),
            applied_at_unix_nanos: unix_nanos_now(),
            source,
            acting_until,
        });
    }

    /// The role a notification may set: never active again once relinquished.
    fn allowed(&self, role: Role) -> Role {
        if self.lease.relinquished() {
            Role::Standby
        } else {
            role
        }
    }

    async fn relinquish(&mut self) {
        // Logged here, before the caller learns it is done: a process that exits right
        // after may never run its other tasks (change subscribers) again.
        tracing::info!(epoch = self.lease.epoch(), controller = ?self.orders_from,
            "role relinquished: standing by for good");
        self.lease.relinquish();
        let current = self.state.borrow().clone();
        if matches!(current.source, Source::Notification | Source::Legacy) {
            // Set by an unleased notification: no grant to end, just stand by.
            if current.role == Some(Role::Active) {
                self.publish(RoleState {
                    role: Some(Role::Standby),
                    applied_at_unix_nanos: unix_nanos_now(),
                    source: Source::Relinquished,
                    ..current
                });
            }
        } else {
            self.publish_lease(None, Source::Relinquished);
        }
        if let Some(controller) = self.orders_from {
            self.send_report(0, controller).await;
        }
    }

    async fn send_report(&self, message_id: u64, to: SocketAddr) {
        let report = self.lease.report(message_id, Instant::now());
        let Ok(datagram) = encode_report(&report, self.validator.key()) else {
            // Only an over-long pod UID, which the UID check already refused.
            return;
        };
        self.send(&datagram, to).await;
    }

    fn publish(&self, current: RoleState) {
        let previous = self.state.send_replace(current.clone()).role;
        // No subscriber is fine: the watch channel still holds the state.
        let _ = self.changes.send(RoleChange { previous, current });
    }

    async fn send_ack(&self, ack: hapod_protocol::Ack, to: SocketAddr) {
        let datagram = encode_ack(&ack, self.validator.key());
        self.send(&datagram, to).await;
    }

    async fn send(&self, datagram: &[u8], to: SocketAddr) {
        match self.socket.send_to(datagram, to).await {
            Ok(_) => AtomicCounters::bump(&self.counters.acks_sent),
            Err(error) => {
                AtomicCounters::bump(&self.counters.ack_send_errors);
                tracing::debug!(%to, %error, "ack send failed");
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Rate limit for "dropped datagram" warnings, so a flood cannot flood the log.
#[derive(Debug, Default)]
struct DropLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    fn record(&mut self, reason: DropReason, from: SocketAddr, len: usize) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < DROP_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %from,
            len,
            reason = reason.as_str(),
            suppressed_since_last = self.suppressed,
            "dropped notification datagram"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
