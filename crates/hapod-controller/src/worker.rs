//! One task per group: owns the group's core state, feeds it events in order and carries out
//! its actions. Writes of a group are serialized by construction; groups run concurrently.
//! Notifications, Kubernetes Events and metrics never block the next write.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hapod_core::{
    Action, Config, Event, GroupState, Health, Notify, Record, RecordKind, Role, RoleOrder, Route,
    Write, WriteOutcome, decide,
};
use hapod_protocol::Notification;
use hapod_protocol::sender::Notifier;
use tokio::sync::mpsc;
use tokio::sync::mpsc::WeakUnboundedSender;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{Instant, sleep_until};

use crate::endpoints::SliceTask;
use crate::metrics::{GroupLabels, Metrics, ReasonLabels, Stage};
use crate::orders::{OrderChannel, wire_role};
use crate::podview::pod_view;
use crate::router::GroupKey;
use crate::writer::Writer;

/// An event with the instant it was received (the start of every latency).
pub type Input = (Event, Instant);

/// A Kubernetes Event to publish about a pod, off the hot path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodNote {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub reason: &'static str,
    pub note: String,
    pub warning: bool,
}

/// What every worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub group_label: String,
    pub notifier: Notifier,
    pub notify_port: u16,
    pub notes: mpsc::Sender<PodNote>,
    pub metrics: Metrics,
    /// Highest epoch issued by workers that have exited: a group whose worker was stopped
    /// and started again goes on above it (its pods' agents may remember those epochs).
    pub epoch_floor: AtomicU64,
    /// The application lease's orders and their heartbeat interval; `None`: version 1.
    pub orders: Option<(OrderChannel, Duration)>,
    /// Requests of all groups to the API server in flight at once (`Writer`).
    pub api_requests: Arc<tokio::sync::Semaphore>,
}

/// First retry delay after a failed re-read; doubles per failure up to `REREAD_MAX`.
const REREAD_BASE: Duration = Duration::from_millis(100);
const REREAD_MAX: Duration = Duration::from_secs(10);

pub struct Worker {
    key: GroupKey,
    state: GroupState,
    writer: Writer,
    shared: Arc<Shared>,
    /// Write outcomes and re-read results, fed after the watch events already waiting.
    follow_ups: VecDeque<Input>,
    wake_at: Option<Instant>,
    failed_rereads: u32,
    without_active: bool,
    /// This worker exports the group's `hapod_group_paused` series (paused while acting).
    paused_exported: bool,
    /// This worker's own input, for the agents' reports (application lease).
    reports_to: Option<WeakUnboundedSender<Input>>,
    next_heartbeat: Option<Instant>,
    /// Pods (UIDs) ordered since the last heartbeat began: one no longer ordered at the next
    /// (gone, its grant over, or this replica no longer acting) loses its report route and
    /// series.
    ordered: BTreeSet<String>,
    /// The group's EndpointSlice writer, from its first route naming a Service on.
    slices: Option<SliceTask>,
}

impl Worker {
    pub fn new(key: GroupKey, writer: Writer, shared: Arc<Shared>) -> Self {
        let floor = shared.epoch_floor.load(Ordering::Relaxed);
        Self {
            state: GroupState::new(Arc::clone(&shared.config)).with_epoch_floor(floor),
            key,
            writer,
            shared,
            follow_ups: VecDeque::new(),
            wake_at: None,
            failed_rereads: 0,
            without_active: false,
            paused_exported: false,
            reports_to: None,
            next_heartbeat: None,
            ordered: BTreeSet::new(),
            slices: None,
        }
    }

    /// Routes the agents' reports of this group's pods to `input` (the worker's own input)
    /// and starts the heartbeat, when the application lease is on.
    pub fn with_reports_to(mut self, input: WeakUnboundedSender<Input>) -> Self {
        if let Some((_, every)) = &self.shared.orders {
            self.reports_to = Some(input);
            self.next_heartbeat = Some(Instant::now() + heartbeat_phase(&self.key, *every));
        }
        self
    }

    /// Runs until the input channel closes and everything sent has been handled.
    ///
    /// Watch events waiting in the channel go before the follow-ups of earlier writes, so a
    /// lost active is seen (and, the core's most urgent step, replaced) before a chain of
    /// kills or label repairs goes on.
    pub async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        self.shared.metrics.groups.inc();
        loop {
            // The heartbeat goes first: a busy group must not let its active's grant lapse.
            if let Some(beat) = self.next_heartbeat.filter(|at| *at <= Instant::now()) {
                self.next_heartbeat = self.shared.orders.as_ref().map(|(_, every)| beat + *every);
                let heard = self.heard();
                self.step((Event::Heartbeat { heard }, Instant::now()))
                    .await;
                continue;
            }
            let input = match inputs.try_recv() {
                Ok(input) => input,
                Err(closed) => match self.follow_ups.pop_front() {
                    Some(follow_up) => follow_up,
                    None if closed == TryRecvError::Disconnected => break,
                    None => tokio::select! {
                        input = inputs.recv() => match input {
                            Some(input) => input,
                            None => break,
                        },
                        () = sleep_until(self.wake_at.unwrap_or_else(Instant::now)), if self.wake_at.is_some() => {
                            self.wake_at = None;
                            (Event::Tick, Instant::now())
                        }
                        () = sleep_until(self.next_heartbeat.unwrap_or_else(Instant::now)), if self.next_heartbeat.is_some() => continue,
                    },
                },
            };
            self.step(input).await;
        }
        // Reaped: nothing of this group is ordered any more.
        self.forget_unordered(&[]);
        self.export_paused(false);
        self.shared.metrics.groups.dec();
        if self.without_active {
            self.shared.metrics.groups_without_active.dec();
        }
        self.shared
            .epoch_floor
            .fetch_max(self.state.highest_epoch(), Ordering::Relaxed);
    }

    /// Feeds one input and everything it leads to (write outcomes, re-reads) into the core.
    pub async fn handle(&mut self, input: Input) {
        self.step(input).await;
        while let Some(follow_up) = self.follow_ups.pop_front() {
            self.step(follow_up).await;
        }
    }

    /// Feeds one input into the core and carries out its actions.
    async fn step(&mut self, (event, received): Input) {
        let heartbeat = matches!(event, Event::Heartbeat { .. });
        let actions = decide(&mut self.state, event, received.into_std());
        if heartbeat {
            self.forget_unordered(&actions);
        } else {
            // Orders between heartbeats (a leadership change, a promotion) set up routes
            // too: the next heartbeat must see them to drop those it no longer orders.
            self.ordered.extend(ordered_uids(&actions));
        }
        self.export_paused(self.state.is_paused() && self.state.is_acting());
        let decided = Instant::now();
        for action in actions {
            if let Some(next) = self.act(action, received, decided).await {
                self.follow_ups.push_back(next);
            }
        }
    }

    /// Exports (`1`) or removes the group's `hapod_group_paused` series: only the acting
    /// replica exports group series, and only while the group is paused.
    fn export_paused(&mut self, exported: bool) {
        if exported == self.paused_exported {
            return;
        }
        self.paused_exported = exported;
        let labels = GroupLabels {
            group: self.key.to_string(),
        };
        let family = &self.shared.metrics.groups_paused;
        if exported {
            family.get_or_create(&labels).set(1);
        } else {
            family.remove(&labels);
        }
    }

    async fn act(&mut self, action: Action, received: Instant, decided: Instant) -> Option<Input> {
        match action {
            Action::Write(write) => Some(self.write(write, received, decided).await),
            Action::Refresh { pod, uid } => match self.writer.read(&pod).await {
                Ok(fresh) => {
                    self.failed_rereads = 0;
                    let view = fresh.as_ref().map(|fresh| {
                        (
                            pod_view(fresh, &self.shared.config, &self.shared.group_label),
                            fresh.metadata.resource_version.clone(),
                        )
                    });
                    let event = match view {
                        Some((Ok(view), _)) if view.group == self.key.group && view.uid == uid => {
                            Event::Applied(view)
                        }
                        // Relabeled out of the group meanwhile (or the name reused by a new
                        // pod): gone from this group at that version.
                        Some((_, resource_version)) => Event::Deleted {
                            name: pod,
                            uid,
                            resource_version,
                        },
                        None => Event::Deleted {
                            name: pod,
                            uid,
                            resource_version: None,
                        },
                    };
                    Some((event, Instant::now()))
                }
                Err(error) => {
                    self.failed_rereads = self.failed_rereads.saturating_add(1);
                    let delay = REREAD_BASE
                        .saturating_mul(1 << self.failed_rereads.min(16))
                        .min(REREAD_MAX);
                    tracing::warn!(group = %self.key, %pod, %error, retry_ms = delay.as_millis() as u64, "re-read after conflict failed");
                    self.wake(delay);
                    None
                }
            },
            Action::Notify(notify) => {
                self.notify(notify, received);
                None
            }
            Action::Order(order) => {
                self.order(order).await;
                None
            }
            Action::Record(record) => {
                self.record(record);
                None
            }
            Action::WakeAfter(delay) => {
                self.wake(delay);
                None
            }
            Action::Health(health) => {
                self.health(health);
                None
            }
            Action::Route(route) => {
                self.route(route, decided);
                None
            }
        }
    }

    /// Hands the route to the group's slice task (started by the first route that names a
    /// Service): the slice is written beside the next label writes, not before them.
    fn route(&mut self, route: Route, decided: Instant) {
        match &self.slices {
            Some(task) => task.route(route, decided),
            None if route.service.is_some() => {
                self.slices = Some(SliceTask::start(
                    self.key.clone(),
                    self.writer.clone(),
                    self.shared.metrics.clone(),
                    (route, decided),
                ));
            }
            None => {}
        }
    }

    async fn write(&mut self, write: Write, received: Instant, decided: Instant) -> Input {
        let sent = Instant::now();
        let outcome = self.writer.execute(&write).await;
        let acked = Instant::now();
        let metrics = &self.shared.metrics;
        metrics.stage(Stage::decide, decided - received);
        metrics.stage(Stage::send, sent - decided);
        if matches!(outcome, WriteOutcome::Done { .. }) {
            metrics.stage(Stage::ack, acked - sent);
        }
        tracing::debug!(
            group = %self.key,
            pod = %write.pod,
            op = write.op,
            kind = ?write.kind,
            ?outcome,
            decide_us = (decided - received).as_micros() as u64,
            send_us = (sent - decided).as_micros() as u64,
            ack_us = (acked - sent).as_micros() as u64,
            "write stages"
        );
        (
            Event::Outcome {
                op: write.op,
                outcome,
            },
            acked,
        )
    }

    fn wake(&mut self, delay: Duration) {
        // Jitter of up to a quarter spreads the retries of many groups after an API outage.
        let quarter = u64::try_from(delay.as_micros() / 4).unwrap_or(u64::MAX);
        let jitter = Duration::from_micros(rand::random_range(0..=quarter));
        let at = Instant::now() + delay + jitter;
        self.wake_at = Some(self.wake_at.map_or(at, |t| t.min(at)));
    }

    fn notify(&self, notify: Notify, acked: Instant) {
        let role = wire_role(notify.role);
        if !self.writer.leading() {
            // The leadership that allowed the label write is gone: the next acting replica
            // announces what it keeps.
            self.count_notification(role, "fenced");
            tracing::debug!(group = %self.key, pod = %notify.pod, "notification not sent: not leading any more");
            return;
        }
        let message = Notification::new(self.key.to_string(), &notify.pod, role, notify.epoch);
        let message_id = message.message_id;
        let addr = SocketAddr::new(notify.ip, self.shared.notify_port);
        let metrics = &self.shared.metrics;
        match self.shared.notifier.notify(addr, message) {
            Ok(()) => {
                metrics.stage(Stage::notify, acked.elapsed());
                tracing::debug!(
                    group = %self.key, pod = %notify.pod, %addr, role = role.as_str(),
                    epoch = notify.epoch, message_id, notify_us = acked.elapsed().as_micros() as u64,
                    "notification sent"
                );
            }
            Err(error) => {
                self.count_notification(role, "refused");
                tracing::warn!(group = %self.key, pod = %notify.pod, %addr, %error, "notification refused");
            }
        }
    }

    /// When each pod's agent was last heard, from the order channel's book: the channel
    /// forwards only reports that say something new, so a steady agent is heard here.
    fn heard(&self) -> Vec<(String, std::time::Instant)> {
        let Some((orders, _)) = &self.shared.orders else {
            return Vec::new();
        };
        orders.heard(self.state.pods().map(|pod| pod.uid.as_str()))
    }

    /// Drops the report routes of pods ordered since the previous heartbeat but not at this
    /// one.
    fn forget_unordered(&mut self, actions: &[Action]) {
        let Some((orders, _)) = &self.shared.orders else {
            return;
        };
        let ordered: BTreeSet<String> = ordered_uids(actions).collect();
        for uid in self.ordered.difference(&ordered) {
            orders.forget(uid);
        }
        self.ordered = ordered;
    }

    /// Sends an order of the application lease, only while leading: the grant it may carry
    /// was counted by the core under this leadership.
    async fn order(&self, order: RoleOrder) {
        let (Some((orders, _)), Some(reports_to)) = (&self.shared.orders, &self.reports_to) else {
            return;
        };
        if !self.writer.leading() {
            tracing::debug!(group = %self.key, pod = %order.pod, "order not sent: not leading any more");
            return;
        }
        if let Err(error) = orders.send(&self.key.to_string(), &order, reports_to).await {
            tracing::warn!(group = %self.key, pod = %order.pod, %error, "order not sent");
        }
    }

    /// An agent's report that changed what it says (the order channel forwards only those).
    fn count_notification(&self, role: hapod_protocol::Role, outcome: &str) {
        self.shared
            .metrics
            .notifications
            .get_or_create(&crate::metrics::NotificationLabels {
                role: role.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn record(&self, record: Record) {
        let metrics = &self.shared.metrics;
        let (reason, note, warning) = match &record.kind {
            RecordKind::Promoted {
                epoch,
                reason,
                latency,
            } => {
                metrics
                    .promotions
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str().into(),
                    })
                    .inc();
                if let Some(latency) = latency {
                    metrics.failover_latency.observe(latency.as_secs_f64());
                }
                let latency_ms = latency.map(|l| l.as_secs_f64() * 1e3);
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name),
                    epoch, reason = reason.as_str(), ?latency_ms, "promoted");
                let note = match latency_ms {
                    Some(ms) => format!(
                        "promoted to active, epoch {epoch}, reason {}, failover {ms:.1} ms",
                        reason.as_str()
                    ),
                    None => format!(
                        "promoted to active, epoch {epoch}, reason {}",
                        reason.as_str()
                    ),
                };
                ("Promoted", note, false)
            }
            RecordKind::Demoted => {
                metrics.demotions.inc();
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), "demoted");
                ("Demoted", "relabeled standby".to_owned(), false)
            }
            RecordKind::Killed { container } => {
                metrics.kills.inc();
                tracing::warn!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), container, "critical container died: pod deleted");
                (
                    "CriticalContainerDied",
                    format!("critical container {container} died: pod deleted (grace 0)"),
                    true,
                )
            }
            RecordKind::Adopted { epoch } => {
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), epoch, "kept active given an epoch");
                (
                    "Adopted",
                    format!("kept as active; epoch {epoch} written and announced"),
                    false,
                )
            }
            RecordKind::FutureEpoch { epoch } => {
                metrics.epoch_anomalies.inc();
                let term = hapod_core::epoch::term_of(*epoch);
                tracing::error!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), epoch, term,
                    "active pod carries an epoch of a term above the acting one; ignored (edited or copied annotation?)");
                (
                    "FutureEpoch",
                    format!(
                        "annotation hapod.io/epoch={epoch} names term {term}, above the acting controller's; ignored"
                    ),
                    true,
                )
            }
            RecordKind::PassedOver { why } => {
                tracing::info!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), why, "passed over for promotion");
                (
                    "PassedOver",
                    format!("not promoted although older than the pod promoted: {why}"),
                    false,
                )
            }
            RecordKind::NoEligible => {
                tracing::warn!(group = %self.key, "no eligible pod to make active");
                (
                    "NoEligiblePod",
                    format!("group {} has no active pod and no eligible one", self.key),
                    true,
                )
            }
            RecordKind::Paused => {
                tracing::warn!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name),
                    "group paused (hapod.io/paused=true): no role change until resumed");
                (
                    "Paused",
                    format!(
                        "group {} paused (hapod.io/paused=true): no promotion, demotion or kill until no pod carries it",
                        self.key
                    ),
                    false,
                )
            }
            RecordKind::Resumed => {
                tracing::info!(group = %self.key, "group resumed: no pod carries hapod.io/paused=true");
                (
                    "Resumed",
                    format!(
                        "group {} resumed (no pod carries hapod.io/paused=true): failovers as usual",
                        self.key
                    ),
                    false,
                )
            }
            RecordKind::Acknowledged {
                role,
                epoch,
                round_trip,
            } => {
                let round_trip_ms = round_trip.map(|d| d.as_secs_f64() * 1e3);
                tracing::debug!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name),
                    ?role, epoch, ?round_trip_ms, "the application acknowledged its role");
                let note = match (role, round_trip_ms) {
                    (Role::Active, Some(ms)) => {
                        format!("application acts active, epoch {epoch}, round trip {ms:.1} ms")
                    }
                    (Role::Active, None) => format!("application acts active, epoch {epoch}"),
                    _ => format!("application stands by, epoch {epoch}"),
                };
                ("Acknowledged", note, false)
            }
            RecordKind::Rejected { delete, code } => {
                let verb = if *delete { "delete" } else { "patch" };
                tracing::error!(group = %self.key, pod = ?record.pod.as_ref().map(|p| &p.name), verb, code, "write refused by the API; retried after a pause");
                (
                    "WriteRejected",
                    format!("{verb} refused with HTTP {code}; check RBAC and admission"),
                    true,
                )
            }
        };
        let Some(pod) = record.pod else {
            return;
        };
        let note = PodNote {
            namespace: self.key.namespace.clone(),
            pod: pod.name,
            uid: pod.uid,
            reason,
            note,
            warning,
        };
        if self.shared.notes.try_send(note).is_err() {
            tracing::debug!(group = %self.key, reason, "event queue full; event dropped");
        }
    }

    fn health(&mut self, health: Health) {
        let without = matches!(health, Health::NoActive { .. });
        if without != self.without_active {
            self.without_active = without;
            let gauge = &self.shared.metrics.groups_without_active;
            if without {
                gauge.inc();
            } else {
                gauge.dec();
            }
        }
    }
}

/// The pods (UIDs) that `actions` order.
fn ordered_uids(actions: &[Action]) -> impl Iterator<Item = String> + '_ {
    actions.iter().filter_map(|action| match action {
        Action::Order(order) => Some(order.uid.clone()),
        _ => None,
    })
}

/// Where in each heartbeat interval a group's heartbeat falls: spread over the interval by
/// the group's key, so that the orders of many groups (and their agents' reports) do not
/// all go out in one burst, which overflows the controller's socket receive buffer. Stable
/// per group, so a group's beat does not shift when its worker restarts.
fn heartbeat_phase(key: &GroupKey, every: Duration) -> Duration {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    // The hash's top 32 bits as a fraction of the interval, below 1.
    let nanos = (every.as_nanos() * u128::from(hasher.finish() >> 32)) >> 32;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_of_many_groups_spread_over_the_interval() {
        let every = Duration::from_millis(100);
        let mut per_tenth = [0usize; 10];
        for i in 0..1_000 {
            let key = GroupKey {
                namespace: format!("ns-{}", i % 7),
                group: format!("app-{i}"),
            };
            let phase = heartbeat_phase(&key, every);
            assert!(phase < every, "{phase:?} is not within the interval");
            assert_eq!(phase, heartbeat_phase(&key, every), "not stable per group");
            per_tenth[(phase.as_nanos() * 10 / every.as_nanos()) as usize] += 1;
        }
        // A uniform spread puts 100 in each tenth; a burst puts most in one.
        assert!(
            per_tenth.iter().all(|n| (50..=150).contains(n)),
            "heartbeats per tenth of the interval: {per_tenth:?}"
        );
    }
}
