//! The election runtime: one task that watches the Lease and the controller pods, runs
//! [`decide`] on every event and timer, and performs the Lease writes (create / CAS replace).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, info, warn};

use crate::config::{ConfigError, ElectionConfig, millis};
use crate::leadership::{Decision, Me, Millis, Observation, PodHealth, Term, decide_leadership};
use crate::lease::{self, Acquisition, HolderRecord, ParsedLease};
use crate::metrics::Metrics;
use crate::pods::PodTracker;

/// The acting state the controller follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderState {
    /// Not acting; `leader` is the holder identity this replica last saw, if any.
    Standby { leader: Option<String> },
    /// Acting in `term`. A new term always arrives as a new `Leading` value: the controller
    /// restarts its epoch sequence at 1 and rebuilds its state from the API.
    Leading { term: Term },
}

/// `fence()` failed: do not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this replica is not the acting leader (lease not held or renew deadline passed)")]
pub struct NotLeader;

#[derive(Debug)]
struct ActingState {
    /// The term being acted in and the monotonic instant its renew deadline passes.
    acting: Mutex<Option<(Term, Instant)>>,
    shutting_down: AtomicBool,
    wake: Notify,
}

impl ActingState {
    fn acting(&self) -> Option<(Term, Instant)> {
        *self.acting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_acting(&self, v: Option<(Term, Instant)>) -> Option<(Term, Instant)> {
        std::mem::replace(
            &mut *self.acting.lock().unwrap_or_else(|e| e.into_inner()),
            v,
        )
    }

    fn fence(&self) -> Result<(Term, Instant), NotLeader> {
        match self.acting() {
            Some((term, deadline)) if Instant::now() < deadline => Ok((term, deadline)),
            _ => Err(NotLeader),
        }
    }
}

/// What the controller holds: fencing, the acting state channel, and release for SIGTERM.
#[derive(Clone, Debug)]
pub struct LeaderHandle {
    shared: Arc<ActingState>,
    state: watch::Receiver<LeaderState>,
    done: watch::Receiver<bool>,
    identity: Arc<str>,
}

impl LeaderHandle {
    /// The term to build epochs from, only while this replica holds the Lease and its renew
    /// deadline (measured on the monotonic clock from the start of the last successful renew)
    /// has not passed. Call it right before every write, and put the term's epoch and a
    /// resourceVersion precondition on that write.
    pub fn fence(&self) -> Result<Term, NotLeader> {
        self.shared.fence().map(|(term, _)| term)
    }

    /// [`LeaderHandle::fence`] with the instant the leadership stops being certain (the renew
    /// deadline): bound every write by it, so none can land after another replica may act.
    pub fn fence_until(&self) -> Result<(Term, Instant), NotLeader> {
        self.shared.fence()
    }

    /// The acting state; changes when this replica starts or stops acting.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// The `holderIdentity` this process writes: `<pod>_<random instance id>`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// For SIGTERM: stop acting at once (`fence()` fails from now on), release the Lease if
    /// held, and wait until the election task has finished. Bound it with a timeout.
    pub async fn release(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.set_acting(None);
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        // An error means the task is gone, which is just as finished.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// The election task; run it with `tokio::spawn(elector.run())`.
#[derive(Debug)]
pub struct LeaderElector {
    runner: Runner,
}

impl LeaderElector {
    /// Validate the configuration, register the metrics, and build the handle plus the task.
    /// Nothing talks to the API server until [`LeaderElector::run`] is polled.
    pub fn new(
        client: Client,
        config: ElectionConfig,
        registry: &mut Registry,
    ) -> Result<(LeaderHandle, LeaderElector), ConfigError> {
        config.validate()?;
        let identity = format!("{}_{}", config.pod_name, instance_id());
        let shared = Arc::new(ActingState {
            acting: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let (state_tx, state_rx) = watch::channel(LeaderState::Standby { leader: None });
        let (done_tx, done_rx) = watch::channel(false);
        let handle = LeaderHandle {
            shared: shared.clone(),
            state: state_rx,
            done: done_rx,
            identity: identity.as_str().into(),
        };
        let runner = Runner {
            leases: Api::namespaced(client.clone(), &config.namespace),
            pods_api: Api::namespaced(client, &config.namespace),
            me: Me {
                identity,
                pod: config.pod_name.clone(),
            },
            cfg: config,
            shared,
            state_tx,
            done_tx,
            metrics: Metrics::new(registry),
            origin: Instant::now(),
            lease: LeaseSlot::Unknown,
            lease_relist: None,
            pods: PodTracker::default(),
            next_renew: Instant::now(),
            labeled: BTreeMap::new(),
        };
        Ok((handle, LeaderElector { runner }))
    }

    /// Run until released. Dropping the future (or its task ending) also stops acting.
    pub async fn run(self) {
        self.runner.run().await
    }
}

/// A per-process random id, so a restarted container is a new holder.
fn instance_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[derive(Debug)]
enum LeaseSlot {
    /// Not read yet.
    Unknown,
    Absent,
    Present {
        lease: Box<Lease>,
        parsed: ParsedLease,
        observed_at: Instant,
    },
}

#[derive(Debug)]
struct Runner {
    leases: Api<Lease>,
    pods_api: Api<Pod>,
    cfg: ElectionConfig,
    me: Me,
    shared: Arc<ActingState>,
    state_tx: watch::Sender<LeaderState>,
    done_tx: watch::Sender<bool>,
    metrics: Metrics,
    origin: Instant,
    lease: LeaseSlot,
    /// Lease re-list in progress (watcher Init..InitDone): `Some(None)` = nothing listed yet.
    lease_relist: Option<Option<Lease>>,
    pods: PodTracker,
    next_renew: Instant,
    /// Pods whose role label was patched (or refused) at this resourceVersion: wait for the
    /// watch to bring a newer version instead of repeating the write.
    labeled: BTreeMap<String, String>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop_acting("election task ended");
        self.done_tx.send_replace(true);
    }
}

enum LeaseWriteOutcome {
    Written(Box<Lease>),
    Conflict,
    Failed,
}

impl Runner {
    async fn run(mut self) {
        let name_selector = format!("metadata.name={}", self.cfg.lease_name);
        let mut lease_events = watcher(
            self.leases.clone(),
            watcher::Config::default().fields(&name_selector),
        )
        .default_backoff()
        .boxed();
        let mut pod_events = watcher(
            self.pods_api.clone(),
            watcher::Config::default().labels(&self.cfg.controller_selector),
        )
        .default_backoff()
        .boxed();
        let shared = self.shared.clone();
        while let Some(wake) = self.step().await {
            tokio::select! {
                biased;
                _ = shared.wake.notified() => {}
                Some(ev) = lease_events.next() => match ev {
                    Ok(ev) => self.on_lease_event(ev),
                    Err(e) => warn!(error = %e, "lease watch failed; retrying"),
                },
                Some(ev) = pod_events.next() => match ev {
                    Ok(ev) => self.pods.apply(ev),
                    Err(e) => warn!(error = %e, "controller pod watch failed; retrying"),
                },
                _ = sleep_until(wake) => {}
            }
        }
        info!(identity = %self.me.identity, "election finished");
    }

    fn ms(&self, t: Instant) -> Millis {
        millis(t.saturating_duration_since(self.origin))
    }

    fn instant(&self, ms: Millis) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// One decision and the write it asks for. `None` once released (task finished).
    async fn step(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let retry = now + self.cfg.retry_period;
        if let Some((_, deadline)) = self.shared.acting()
            && now >= deadline
        {
            self.stop_acting("renew deadline passed");
        }
        let shutting_down = self.shared.shutting_down.load(Ordering::SeqCst)
            || self.pods.terminating(&self.cfg.pod_name);
        if shutting_down {
            self.shared.shutting_down.store(true, Ordering::SeqCst);
            self.stop_acting("shutting down");
        }
        if matches!(self.lease, LeaseSlot::Unknown) {
            self.refetch().await;
            if matches!(self.lease, LeaseSlot::Unknown) {
                return if shutting_down { None } else { Some(retry) };
            }
        }
        let default_ms = millis(self.cfg.lease_duration);
        let (view, holder_pod) = match &self.lease {
            LeaseSlot::Present {
                parsed,
                observed_at,
                ..
            } => (
                Some(parsed.view(default_ms, self.ms(*observed_at))),
                parsed
                    .holder
                    .as_ref()
                    .map_or(PodHealth::Unknown, |h| self.pods.health(h)),
            ),
            _ => (None, PodHealth::Unknown),
        };
        let obs = Observation {
            holder_pod,
            acting: self.shared.acting().map(|(t, d)| (t, self.ms(d))),
            shutting_down,
            term_floor: crate::leadership::term_floor_from_wall_clock(
                jiff::Timestamp::now().as_second(),
            ),
        };
        let decision = decide_leadership(view.as_ref(), &self.me, &obs, self.ms(now));
        let wake = match decision {
            Decision::Acquire { term, reason } => {
                info!(%term, %reason, identity = %self.me.identity, "acquiring lease");
                if let Some(lease_term) = view.as_ref().map(|v| v.term).filter(|t| *t >= term) {
                    // Only a Lease term that cannot grow (edited by hand) leads here.
                    tracing::error!(%lease_term, %term, "lease term cannot grow; recovering with a term from the wall clock");
                    self.metrics.term_recovered();
                }
                self.acquire(term).await
            }
            Decision::Renew { term } if now >= self.next_renew => self.renew(term).await,
            Decision::Renew { .. } => self.next_renew,
            Decision::Release { term } => {
                self.release(term).await;
                return None;
            }
            Decision::StandBy { .. } if shutting_down => return None,
            Decision::StandBy { recheck_at } => {
                recheck_at.map_or(retry, |at| self.instant(at).min(retry))
            }
        };
        self.fix_roles().await;
        // Wake at the renew deadline too, so the acting state is withdrawn on time.
        Some(match self.shared.acting() {
            Some((_, deadline)) => wake.min(deadline),
            None => wake,
        })
    }

    async fn acquire(&mut self, term: Term) -> Instant {
        let (pod_uid, container) = self.pods.identity_of(&self.me.pod);
        let holder = HolderRecord {
            identity: self.me.identity.clone(),
            pod: Some(self.me.pod.clone()),
            pod_uid,
            container,
        };
        let a = Acquisition {
            holder: &holder,
            term,
            lease_duration_ms: millis(self.cfg.lease_duration),
            now: jiff::Timestamp::now(),
        };
        let sent = Instant::now();
        let write = match &self.lease {
            LeaseSlot::Present { lease, .. } => {
                let body =
                    lease::acquired(Some(lease), &self.cfg.lease_name, &self.cfg.namespace, &a);
                self.replace(body, self.cfg.renew_deadline).await
            }
            _ => {
                let body = lease::acquired(None, &self.cfg.lease_name, &self.cfg.namespace, &a);
                self.create(body).await
            }
        };
        match write {
            LeaseWriteOutcome::Written(new) => {
                self.observe_lease(Some(*new));
                if self.shared.shutting_down.load(Ordering::SeqCst) {
                    // SIGTERM arrived while the write was in flight: never start acting.
                    return Instant::now();
                }
                self.start_acting(term, sent + self.cfg.renew_deadline);
                self.metrics.renewed_at(sent);
                self.next_renew = sent + self.cfg.retry_period;
                self.next_renew
            }
            LeaseWriteOutcome::Conflict => {
                self.refetch().await;
                Instant::now()
            }
            LeaseWriteOutcome::Failed => Instant::now() + self.cfg.retry_period,
        }
    }

    async fn renew(&mut self, term: Term) -> Instant {
        let LeaseSlot::Present { lease, .. } = &self.lease else {
            return Instant::now();
        };
        let mut body = lease::renewed(
            lease,
            millis(self.cfg.lease_duration),
            jiff::Timestamp::now(),
        );
        let (pod_uid, container) = self.pods.identity_of(&self.me.pod);
        lease::complete_holder(&mut body, pod_uid.as_deref(), container.as_deref());
        let sent = Instant::now();
        let budget = self
            .shared
            .acting()
            .map_or(Duration::ZERO, |(_, d)| d.saturating_duration_since(sent));
        match self.replace(body, budget).await {
            LeaseWriteOutcome::Written(new) => {
                self.observe_lease(Some(*new));
                let extended = {
                    let mut acting = self.shared.acting.lock().unwrap_or_else(|e| e.into_inner());
                    // Only extend the interval we are still in: a release() or a lapse during
                    // the write must not be undone by its late success.
                    match *acting {
                        // Nor resurrect a term whose deadline passed while the write was in
                        // flight: one term must be one unbroken acting interval.
                        Some((t, deadline))
                            if t == term
                                && Instant::now() < deadline
                                && !self.shared.shutting_down.load(Ordering::SeqCst) =>
                        {
                            *acting = Some((term, sent + self.cfg.renew_deadline));
                            true
                        }
                        _ => false,
                    }
                };
                if extended {
                    self.metrics.renewed_at(sent);
                }
                self.next_renew = sent + self.cfg.retry_period;
                self.next_renew
            }
            LeaseWriteOutcome::Conflict => {
                self.refetch().await;
                Instant::now()
            }
            LeaseWriteOutcome::Failed => {
                self.next_renew = Instant::now() + self.cfg.retry_period;
                self.next_renew
            }
        }
    }

    async fn release(&mut self, term: Term) {
        self.stop_acting("releasing");
        let LeaseSlot::Present { lease, .. } = &self.lease else {
            return;
        };
        let body = lease::released(lease);
        match self.replace(body, self.cfg.renew_deadline).await {
            LeaseWriteOutcome::Written(new) => {
                info!(%term, "lease released");
                self.observe_lease(Some(*new));
            }
            // Someone else already took it, or the API is unreachable: either way the lease
            // is not ours to hand over any more, and it expires on its own.
            LeaseWriteOutcome::Conflict | LeaseWriteOutcome::Failed => {
                warn!(%term, "lease release failed; it will expire instead");
            }
        }
    }

    async fn create(&self, body: Lease) -> LeaseWriteOutcome {
        let pp = PostParams::default();
        let call = self.leases.create(&pp, &body);
        classify(timeout(self.cfg.renew_deadline, call).await)
    }

    async fn replace(&self, body: Lease, budget: Duration) -> LeaseWriteOutcome {
        let pp = PostParams::default();
        let call = self.leases.replace(&self.cfg.lease_name, &pp, &body);
        classify(timeout(budget, call).await)
    }

    /// Read the Lease directly: after a conflict, or before the watch has listed it.
    async fn refetch(&mut self) {
        match timeout(
            self.cfg.retry_period,
            self.leases.get_opt(&self.cfg.lease_name),
        )
        .await
        {
            Ok(Ok(l)) => self.observe_lease(l),
            Ok(Err(e)) => warn!(error = %e, "reading the lease failed"),
            Err(_) => warn!("reading the lease timed out"),
        }
    }

    fn on_lease_event(&mut self, ev: watcher::Event<Lease>) {
        match ev {
            watcher::Event::Init => self.lease_relist = Some(None),
            watcher::Event::InitApply(l) => {
                if l.name_any() == self.cfg.lease_name {
                    self.lease_relist = Some(Some(l));
                }
            }
            watcher::Event::InitDone => {
                if let Some(l) = self.lease_relist.take() {
                    self.observe_lease(l);
                }
            }
            watcher::Event::Apply(l) => self.observe_lease(Some(l)),
            watcher::Event::Delete(_) => self.observe_lease(None),
        }
    }

    /// Take a newer version of the Lease (or its absence) into account.
    fn observe_lease(&mut self, new: Option<Lease>) {
        let now = Instant::now();
        match new {
            None => self.lease = LeaseSlot::Absent,
            Some(new) => {
                let new_rv = new.resource_version();
                if let LeaseSlot::Present {
                    lease, observed_at, ..
                } = &mut self.lease
                {
                    let old_rv = lease.resource_version();
                    if is_older(new_rv.as_deref(), old_rv.as_deref()) {
                        // A watch event behind our own write's response: nothing new.
                        return;
                    }
                    if new_rv == old_rv {
                        // Same version: keep the first observation time.
                        **lease = new;
                        return;
                    }
                    *observed_at = now;
                }
                let parsed = ParsedLease::from_lease(&new);
                if parsed.holder.is_some() {
                    self.metrics.renewed_at(now);
                }
                self.lease = LeaseSlot::Present {
                    lease: Box::new(new),
                    parsed,
                    observed_at: now,
                };
            }
        }
        let holder = match &self.lease {
            LeaseSlot::Present { parsed, .. } => parsed.holder.as_ref().map(|h| h.identity.clone()),
            _ => None,
        };
        if holder.as_deref() != Some(self.me.identity.as_str()) {
            // Somebody else holds it (or nobody): stop at once, without waiting for a renew
            // to fail.
            self.stop_acting("lease no longer ours");
            self.state_tx.send_if_modified(|s| {
                let next = LeaderState::Standby { leader: holder };
                let changed = *s != next;
                *s = next;
                changed
            });
        }
    }

    fn start_acting(&mut self, term: Term, deadline: Instant) {
        self.shared.set_acting(Some((term, deadline)));
        self.labeled.clear();
        self.metrics.became(true);
        info!(%term, identity = %self.me.identity, "acting as leader");
        self.state_tx.send_replace(LeaderState::Leading { term });
    }

    fn stop_acting(&mut self, why: &str) {
        if let Some((term, _)) = self.shared.set_acting(None) {
            self.metrics.became(false);
            warn!(%term, reason = why, "stopped acting");
        }
        let leader = match &self.lease {
            LeaseSlot::Present { parsed, .. } => parsed.holder.as_ref().map(|h| h.identity.clone()),
            _ => None,
        };
        self.state_tx.send_if_modified(|s| {
            if matches!(s, LeaderState::Leading { .. }) {
                *s = LeaderState::Standby { leader };
                true
            } else {
                false
            }
        });
    }

    /// The acting replica labels itself active and every other controller pod standby.
    async fn fix_roles(&mut self) {
        if self.shared.fence().is_err() {
            return;
        }
        let wrong = self.pods.wrong_roles(
            &self.me.pod,
            &self.cfg.role_label,
            &self.cfg.active_value,
            &self.cfg.standby_value,
        );
        for (name, rv, value) in wrong {
            if self.labeled.get(&name) == Some(&rv) {
                continue;
            }
            // Like every fenced write: given up when the leadership stops being certain.
            let Ok((_, until)) = self.shared.fence() else {
                return;
            };
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": rv,
                    "labels": { self.cfg.role_label.as_str(): value },
                }
            });
            let (pp, patch) = (PatchParams::default(), Patch::Merge(&patch));
            let call = self.pods_api.patch(&name, &pp, &patch);
            match timeout_at(until.min(Instant::now() + self.cfg.retry_period), call).await {
                Ok(Ok(pod)) => {
                    debug!(pod = %name, role = %value, "role label set");
                    self.pods.upsert(pod);
                }
                // 409: our view was stale; the watch brings the new version and we retry then,
                // not before.
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                    debug!(pod = %name, message = %s.message, "role label patch refused");
                    self.labeled.insert(name, rv);
                }
                // Nothing says the pod changed: tried again at the next round.
                Ok(Err(e)) => warn!(pod = %name, error = %e, "role label patch failed"),
                Err(_) => warn!(pod = %name, "role label patch timed out"),
            }
        }
    }
}

fn classify(
    r: Result<Result<Lease, kube::Error>, tokio::time::error::Elapsed>,
) -> LeaseWriteOutcome {
    match r {
        Ok(Ok(l)) => LeaseWriteOutcome::Written(Box::new(l)),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
            debug!(message = %s.message, "lease write lost a race");
            LeaseWriteOutcome::Conflict
        }
        Ok(Err(e)) => {
            warn!(error = %e, "lease write failed");
            LeaseWriteOutcome::Failed
        }
        Err(_) => {
            warn!("lease write timed out");
            LeaseWriteOutcome::Failed
        }
    }
}

/// resourceVersions are opaque, but in practice etcd revisions: when both parse as numbers,
/// an event with a smaller one is stale. Anything else counts as newer (the safe direction:
/// at worst we stop acting needlessly).
fn is_older(new: Option<&str>, old: Option<&str>) -> bool {
    match (
        new.and_then(|s| s.parse::<u64>().ok()),
        old.and_then(|s| s.parse::<u64>().ok()),
    ) {
        (Some(n), Some(o)) => n < o,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_older;

    #[test]
    fn stale_resource_versions() {
        assert!(is_older(Some("9"), Some("10")));
        assert!(!is_older(Some("10"), Some("10")));
        assert!(!is_older(Some("x"), Some("10")));
        assert!(!is_older(None, Some("1")));
    }
}
