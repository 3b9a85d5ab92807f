//! Per-group state machine: events in (watch changes, re-lists, write outcomes, leadership),
//! actions out (fenced writes, notifications, records, health). One write per group is in
//! flight at a time; the next step is planned only when its outcome is fed back, which is
//! what makes "demote, then promote" hold: the promote is issued after the demote is acked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::epoch;
use crate::pod::{Config, PodView, Role};

/// Identifies one write issued by a group; outcomes carrying another id are stale.
pub type OpId = u64;

/// First retry delay after a transient write error; doubles per failure.
const RETRY_BASE: Duration = Duration::from_millis(50);
/// Cap of the transient retry delay.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// After the API refused a write on a pod for good (403, 422), no write on that pod for this
/// long.
const REJECTED_PAUSE: Duration = Duration::from_secs(30);
/// How long a force-deleted (vanishing) active is waited for before it is demoted like any
/// terminating one: the API server removes it within the same request.
const VANISH_WAIT: Duration = Duration::from_millis(250);
/// Pods that left the group, remembered so a late duplicate watch event cannot bring them back.
const TOMBSTONES: usize = 64;

mod entry;
mod grants;
mod plan;
mod types;

use entry::{PodEntry, Relinquished, Tombstone, after_floor, at_least_as_recent};
use grants::Grants;
pub use types::{
    Action, Endpoint, Event, Health, Notify, PodRef, PromotionReason, Purpose, Record, RecordKind,
    ReportedRole, RoleOrder, Route, Write, WriteKind, WriteOutcome,
};
/// When a failover started and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Trigger {
    at: Instant,
    reason: PromotionReason,
}

/// A promotion whose outcome is unknown (the request failed, or the term changed while it was
/// in flight): the API may have applied it, or may still. Until the pod is seen at another
/// resourceVersion than the promotion's precondition, no other pod is promoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Doubt {
    pod: String,
    uid: String,
    resource_version: String,
}

/// A write issued and not yet answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InFlight {
    op: OpId,
    pod: String,
    uid: String,
    kind: WriteKind,
    /// When the failover this write is part of began: the promotion's watch event may clear
    /// the trigger before the write's answer comes.
    trigger_at: Option<Instant>,
}

/// Everything one replica knows about one group (namespace + group label value).
/// Hashable so model checkers can tell visited states apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupState {
    config: Arc<Config>,
    pods: BTreeMap<String, PodEntry>,
    tombstones: VecDeque<Tombstone>,
    /// Controller term while this replica acts.
    term: Option<u32>,
    /// Last sequence used in `term`.
    seq: u32,
    /// Highest epoch issued by this process, or carried by an active pod that left while this
    /// replica acted (in its term or before): the allocation floor once the pod is gone.
    highest_epoch: u64,
    /// Epochs of a term above the acting one already reported, by pod UID, in this term.
    future_reported: BTreeSet<(String, u64)>,
    next_op: OpId,
    in_flight: Option<InFlight>,
    backoff_until: Option<Instant>,
    failures: u32,
    trigger: Option<Trigger>,
    /// Active pods (UID, epoch) this replica told they are active, in this term.
    announced: BTreeSet<(String, u64)>,
    health: Option<Health>,
    /// The route last emitted in this term (`None`: none yet).
    route: Option<Route>,
    /// The application lease: orders, live grants, agents' reports.
    grants: Grants,
    doubt: Option<Doubt>,
    /// Whether the group was paused after the previous event (a member carried
    /// `hapod.io/paused=true`).
    paused: bool,
}

impl GroupState {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            pods: BTreeMap::new(),
            tombstones: VecDeque::new(),
            term: None,
            seq: 0,
            highest_epoch: 0,
            future_reported: BTreeSet::new(),
            next_op: 1,
            in_flight: None,
            backoff_until: None,
            failures: 0,
            trigger: None,
            announced: BTreeSet::new(),
            health: None,
            route: None,
            grants: Grants::default(),
            doubt: None,
            paused: false,
        }
    }

    /// Continues above `floor`, the highest epoch this process issued for the group before
    /// (a new worker of a group that was reaped earlier).
    pub fn with_epoch_floor(mut self, floor: u64) -> Self {
        self.highest_epoch = self.highest_epoch.max(floor);
        self
    }

    /// Whether the group has no pods (a worker may be reaped).
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Highest epoch issued or taken into account for the group, to hand to
    /// [`GroupState::with_epoch_floor`] when the group is recreated.
    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    /// Cached views of the group's pods, by name.
    pub fn pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().map(|e| &e.view)
    }

    /// Whether an operator paused the group: one of its pods carries `hapod.io/paused=true`.
    /// Then no role changes and no pod is deleted (see `GroupState::plan`).
    pub fn is_paused(&self) -> bool {
        self.pods.values().any(|e| e.view.paused)
    }

    /// Whether this replica acts for the group (it holds a term).
    pub fn is_acting(&self) -> bool {
        self.term.is_some()
    }

    /// Names of the pods labeled active in this replica's view.
    pub fn actives(&self) -> Vec<&str> {
        self.pods
            .values()
            .filter(|e| e.role(&self.config) == Role::Active)
            .map(|e| e.view.name.as_str())
            .collect()
    }

    /// The eligible active with the highest epoch, then the oldest.
    fn eligible_active(&self) -> Option<&PodEntry> {
        self.best_active(PodEntry::eligible)
    }

    /// Of the active pods passing `filter`, the one with the highest epoch, then the oldest:
    /// the rule for keeping one of two actives.
    fn best_active(&self, filter: impl Fn(&PodEntry) -> bool) -> Option<&PodEntry> {
        self.pods
            .values()
            .filter(|e| e.role(&self.config) == Role::Active && filter(e))
            .max_by(|a, b| {
                a.view
                    .epoch
                    .cmp(&b.view.epoch)
                    .then_with(|| b.view.age_key().cmp(&a.view.age_key()))
            })
    }

    /// The group's not-Ready grace: the longest any member asks for (`PodView::not_ready_grace`),
    /// as one member's `hapod.io/paused=true` pauses the whole group.
    fn not_ready_grace(&self) -> Duration {
        self.pods
            .values()
            .map(|e| e.view.not_ready_grace)
            .max()
            .unwrap_or_default()
    }

    /// The active pod that is not Ready but within the group's grace, and when that ends.
    fn graced_active(&self, now: Instant) -> Option<(&PodEntry, Instant)> {
        let grace = self.not_ready_grace();
        if grace.is_zero() {
            return None;
        }
        let entry = self.best_active(|e| e.not_ready_grace_until(grace, now).is_some())?;
        Some((entry, entry.not_ready_grace_until(grace, now)?))
    }

    /// The active pod that keeps the role: the eligible one; failing that, one not Ready
    /// within the group's grace; failing that, a softly ineligible one while no successor can
    /// be promoted at once (demoting it would leave the group without any active). In a
    /// paused group none can be.
    fn kept_active(&self, now: Instant) -> Option<&PodEntry> {
        self.eligible_active()
            .or_else(|| self.graced_active(now).map(|(entry, _)| entry))
            .or_else(|| {
                if !self.is_paused() && self.successor(now).is_some_and(|e| e.writable(now)) {
                    None
                } else {
                    self.best_active(PodEntry::softly_ineligible)
                }
            })
    }

    fn upsert(&mut self, view: PodView, now: Instant) {
        if let Some(i) = self.tombstones.iter().position(|t| t.uid == view.uid) {
            if !after_floor(&view.resource_version, &self.tombstones[i].floor) {
                return;
            }
            // It rejoined the group: a new member from here on.
            self.tombstones.remove(i);
        }
        match self.pods.get_mut(&view.name) {
            Some(entry) if entry.view.uid == view.uid => {
                if at_least_as_recent(&view.resource_version, &entry.view.resource_version) {
                    entry.stale = false;
                    entry.observe(view, now);
                }
            }
            Some(_) => {
                // The name was reused by a new pod: the old one is gone.
                let name = view.name.clone();
                self.forget(&name, None, now);
                self.pods.insert(name, PodEntry::new(view, now));
            }
            None => {
                self.pods
                    .insert(view.name.clone(), PodEntry::new(view, now));
            }
        }
    }

    /// Drops a pod that left the group at `resource_version` (`None`: unknown, the last one
    /// seen counts); losing the active starts a failover.
    fn forget(&mut self, name: &str, resource_version: Option<String>, now: Instant) {
        let Some(entry) = self.pods.remove(name) else {
            return;
        };
        if entry.role(&self.config) == Role::Active {
            if let (Some(term), Some(epoch)) = (self.term, entry.view.epoch)
                && epoch::term_of(epoch) <= term
            {
                self.highest_epoch = self.highest_epoch.max(epoch);
            }
            if self.trigger.is_none() {
                self.trigger = Some(Trigger {
                    at: now,
                    reason: PromotionReason::Deleted,
                });
            }
        }
        self.future_reported
            .retain(|(uid, _)| *uid != entry.view.uid);
        self.announced.retain(|(uid, _)| *uid != entry.view.uid);
        if self.tombstones.len() == TOMBSTONES {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back(Tombstone {
            floor: resource_version.unwrap_or(entry.view.resource_version),
            uid: entry.view.uid,
        });
    }

    fn resync(&mut self, snapshot: Vec<PodView>, now: Instant) {
        // The list is authoritative: UIDs deleted before it cannot come back through it.
        self.tombstones.clear();
        let missing: Vec<String> = self
            .pods
            .values()
            .filter(|e| {
                !snapshot
                    .iter()
                    .any(|v| v.name == e.view.name && v.uid == e.view.uid)
            })
            .map(|e| e.view.name.clone())
            .collect();
        for name in missing {
            self.forget(&name, None, now);
        }
        for view in snapshot {
            self.upsert(view, now);
        }
    }

    /// An agent's report: the lease's book, and a pod judged unresponsive is heard again.
    fn reported(
        &mut self,
        uid: &str,
        role: Option<ReportedRole>,
        epoch: u64,
        incarnation: u64,
        now: Instant,
    ) {
        // Standby at the very epoch this replica granted it, and told it nothing since: no
        // order says that, so its agent gave the role up (its process is shutting down). A
        // standby report at any other epoch may answer an order (a second active is told the
        // kept active's epoch, a demotion comes with a fresh one).
        let gave_up_grant = role == Some(ReportedRole::Standby)
            && self.grants.told.get(uid) == Some(&(Role::Active, epoch));
        let granted_at = self.grants.awaiting_report.get(uid).copied();
        self.grants.report(uid, role, epoch, now);
        let config = &self.config;
        if let Some(entry) = self.pods.values_mut().find(|e| e.view.uid == uid) {
            entry.unresponsive = false;
            if role == Some(ReportedRole::Active) {
                entry.grant_round_trip = granted_at.map(|at| now.saturating_duration_since(at));
            }
            let another_process = entry
                .relinquished
                .is_some_and(|r| r.incarnation != incarnation);
            match role {
                Some(ReportedRole::Standby)
                    if gave_up_grant
                        && entry.role(config) == Role::Active
                        && entry.view.epoch == Some(epoch) =>
                {
                    entry.relinquished = Some(Relinquished { epoch, incarnation });
                }
                // Another process of the pod's agent: it has not given anything up.
                _ if another_process => entry.relinquished = None,
                None | Some(ReportedRole::Active) => entry.relinquished = None,
                _ => {}
            }
        }
    }

    /// Marks the pods whose agents went silent while others of the group answered
    /// (`ApplicationLease::report_timeout`).
    fn judge_silence(&mut self, now: Instant) {
        let Some(timeout) = self
            .config
            .application_lease
            .and_then(|lease| lease.report_timeout)
        else {
            return;
        };
        let uids: Vec<&str> = self.pods.values().map(|e| e.view.uid.as_str()).collect();
        let Some(silent) = self.grants.silent(&uids, timeout, now) else {
            // Nobody answers: no evidence against anyone, old marks included.
            for entry in self.pods.values_mut() {
                entry.unresponsive = false;
            }
            return;
        };
        let silent: Vec<String> = silent.into_iter().map(str::to_owned).collect();
        for entry in self.pods.values_mut() {
            if silent.contains(&entry.view.uid) {
                entry.unresponsive = true;
            } else if self.grants.heard_within(&entry.view.uid, timeout, now) {
                // Heard again, maybe only through the heartbeat's book (a report that says
                // nothing new is no event).
                entry.unresponsive = false;
            }
        }
    }

    fn set_leadership(&mut self, term: Option<u32>, now: Instant) {
        if self.term == term {
            return;
        }
        if let (Some(_), Some(lease)) = (term, self.config.application_lease) {
            self.grants
                .take_over(now + lease.predecessor_window + lease.live_span);
        }
        self.term = term;
        self.seq = 0;
        // Outcomes of writes issued in another term no longer drive this group; a promotion
        // among them may still land.
        if let Some(write) = self.in_flight.take() {
            self.doubt_promotion(&write);
        }
        self.backoff_until = None;
        self.failures = 0;
        self.announced.clear();
        self.future_reported.clear();
        self.health = None;
        self.route = None;
        // Silence is judged afresh by each acting term.
        for entry in self.pods.values_mut() {
            entry.unresponsive = false;
        }
    }

    /// After an event: note when the group was paused or resumed, recorded once per change
    /// by the acting replica (on the oldest pod carrying the annotation, or on the group's
    /// oldest pod). A failover the pause held back starts at the resume (its latency must not
    /// count the maintenance).
    fn observe_pause(&mut self, now: Instant, out: &mut Vec<Action>) {
        let paused = self.is_paused();
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        if !paused && let Some(trigger) = &mut self.trigger {
            trigger.at = now;
        }
        if self.term.is_none() {
            return;
        }
        let pod = self
            .pods
            .values()
            .filter(|e| e.view.paused || !paused)
            .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
            .map(PodEntry::pod_ref);
        let kind = if paused {
            RecordKind::Paused
        } else {
            RecordKind::Resumed
        };
        out.push(Action::Record(Record { pod, kind }));
    }

    /// Records each pod whose agent's latest report says the role its label says (acting at
    /// the pod's epoch when labeled active, standing by at the epoch this replica told it
    /// when labeled standby), once until its report or label says otherwise: its application
    /// took the role. Checked after every event, since a report may come before the watch
    /// shows the label it answers.
    fn record_acknowledgements(&mut self, out: &mut Vec<Action>) {
        if self.term.is_none() {
            return;
        }
        for entry in self.pods.values_mut() {
            let uid = entry.view.uid.as_str();
            let labeled = entry.role(&self.config);
            let taken = match self.grants.reported.get(uid) {
                Some(&(Some(ReportedRole::Active), epoch))
                    if labeled == Role::Active && entry.view.epoch == Some(epoch) =>
                {
                    Some((Role::Active, epoch))
                }
                Some(&(Some(ReportedRole::Standby), epoch))
                    if labeled == Role::Standby
                        && self.grants.told.get(uid) == Some(&(Role::Standby, epoch)) =>
                {
                    Some((Role::Standby, epoch))
                }
                _ => None,
            };
            if taken == entry.acknowledged {
                continue;
            }
            entry.acknowledged = taken;
            if let Some((role, epoch)) = taken {
                out.push(Action::Record(Record {
                    pod: Some(entry.pod_ref()),
                    kind: RecordKind::Acknowledged {
                        role,
                        epoch,
                        round_trip: entry.grant_round_trip.filter(|_| role == Role::Active),
                    },
                }));
            }
        }
    }

    /// After an event: note the start of a failover, or its end when an eligible active is back.
    /// A not-Ready active within its grace has not been lost yet: the failover, if any, starts
    /// when the grace is over.
    fn observe_trigger(&mut self, now: Instant) {
        if self.eligible_active().is_some() {
            self.trigger = None;
            return;
        }
        if self.trigger.is_some() || self.graced_active(now).is_some() {
            return;
        }
        let lost = self
            .pods
            .values()
            .find(|e| e.role(&self.config) == Role::Active);
        if let Some(entry) = lost {
            self.trigger = Some(Trigger {
                at: now,
                reason: entry.loss_reason(),
            });
        }
    }

    fn outcome(&mut self, op: OpId, outcome: WriteOutcome, now: Instant, out: &mut Vec<Action>) {
        let Some(write) = self.in_flight.take_if(|w| w.op == op) else {
            return;
        };
        match outcome {
            WriteOutcome::Done { resource_version } => {
                self.failures = 0;
                self.acknowledged(write, resource_version, now, out);
            }
            WriteOutcome::Conflict => {
                if let Some(entry) = self.pods.get_mut(&write.pod) {
                    entry.stale = true;
                }
                out.push(Action::Refresh {
                    pod: write.pod,
                    uid: write.uid,
                });
            }
            WriteOutcome::NotFound => {
                if self
                    .pods
                    .get(&write.pod)
                    .is_some_and(|e| e.view.uid == write.uid)
                {
                    self.forget(&write.pod, None, now);
                }
            }
            WriteOutcome::Rejected { code } => {
                let entry = self.pods.get_mut(&write.pod);
                let pod = entry.map(|e| {
                    e.refused_until = Some(now + REJECTED_PAUSE);
                    e.pod_ref()
                });
                out.push(Action::Record(Record {
                    pod,
                    kind: RecordKind::Rejected {
                        delete: matches!(write.kind, WriteKind::Delete { .. }),
                        code,
                    },
                }));
                out.push(Action::WakeAfter(REJECTED_PAUSE));
            }
            WriteOutcome::Failed => {
                // A timeout or a lost connection: the API may have applied it.
                self.doubt_promotion(&write);
                self.failures = self.failures.saturating_add(1);
                let delay = RETRY_BASE
                    .saturating_mul(1u32 << self.failures.min(16))
                    .min(RETRY_MAX);
                self.back_off(delay, now, out);
            }
        }
    }

    /// Remembers `write` when it makes a pod active: its outcome is unknown.
    fn doubt_promotion(&mut self, write: &InFlight) {
        if let WriteKind::SetRole {
            role: Role::Active,
            resource_version,
            ..
        } = &write.kind
        {
            self.doubt = Some(Doubt {
                pod: write.pod.clone(),
                uid: write.uid.clone(),
                resource_version: resource_version.clone(),
            });
        }
    }

    /// Drops the doubt once the pod is gone or seen at another resourceVersion: the
    /// promotion's precondition can no longer hold (or it landed, and the view shows it).
    fn settle_doubt(&mut self) {
        let Some(doubt) = &self.doubt else {
            return;
        };
        let unchanged = self.pods.get(&doubt.pod).is_some_and(|e| {
            e.view.uid == doubt.uid && e.view.resource_version == doubt.resource_version
        });
        if !unchanged {
            self.doubt = None;
        }
    }

    fn back_off(&mut self, delay: Duration, now: Instant, out: &mut Vec<Action>) {
        self.backoff_until = Some(now + delay);
        out.push(Action::WakeAfter(delay));
    }

    fn acknowledged(
        &mut self,
        write: InFlight,
        resource_version: Option<String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let entry = self
            .pods
            .get_mut(&write.pod)
            .filter(|e| e.view.uid == write.uid);
        match write.kind {
            WriteKind::SetRole {
                role,
                epoch,
                purpose,
                ..
            } => {
                let Some(entry) = entry else {
                    return;
                };
                if let Some(rv) = resource_version {
                    entry.view.resource_version = rv;
                }
                entry.view.role_label = Some(match role {
                    Role::Active => self.config.active_value.clone(),
                    _ => self.config.standby_value.clone(),
                });
                if epoch.is_some() {
                    entry.view.epoch = epoch;
                }
                let pod = entry.pod_ref();
                let ip = entry.view.primary_ip();
                match purpose {
                    Purpose::Promote(reason) => {
                        let epoch = epoch.unwrap_or_default();
                        let trigger = self.trigger.take();
                        let latency = write
                            .trigger_at
                            .or(trigger.map(|t| t.at))
                            .map(|at| now.duration_since(at));
                        self.announce(&pod, ip, epoch, now, out);
                        out.push(Action::Record(Record {
                            pod: Some(pod),
                            kind: RecordKind::Promoted {
                                epoch,
                                reason,
                                latency,
                            },
                        }));
                    }
                    Purpose::Demote => {
                        // Told standby: a later active role must be announced again.
                        self.announced.retain(|(uid, _)| *uid != pod.uid);
                        // A fresh epoch, above the one it was promoted with, so the pod's
                        // agent takes the standby order as newer than its last active order.
                        let epoch = self.term.and_then(|t| self.allocate_epoch(t));
                        if let (Some(ip), Some(epoch)) = (ip, epoch) {
                            self.tell(&pod, ip, Role::Standby, epoch, now, out);
                        }
                        out.push(Action::Record(Record {
                            pod: Some(pod),
                            kind: RecordKind::Demoted,
                        }));
                    }
                    Purpose::Adopt => {
                        let epoch = epoch.unwrap_or_default();
                        self.announce(&pod, ip, epoch, now, out);
                        out.push(Action::Record(Record {
                            pod: Some(pod),
                            kind: RecordKind::Adopted { epoch },
                        }));
                    }
                    Purpose::Repair | Purpose::Fence => {}
                }
            }
            WriteKind::Delete { container } => {
                // With grace period 0 the pod is gone at once: the watch may have delivered
                // its deletion (and the pod been forgotten) before this answer. Killed all
                // the same.
                if let Some(entry) = entry {
                    entry.kill_sent = true;
                }
                out.push(Action::Record(Record {
                    pod: Some(PodRef {
                        name: write.pod,
                        uid: write.uid,
                    }),
                    kind: RecordKind::Killed { container },
                }));
            }
        }
    }
}

/// Feeds one event into a group and returns what to do, in order. `now` is when the event
/// was observed (for a watch event: when it was received), used for latencies and backoff.
pub fn decide(state: &mut GroupState, event: Event, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    match event {
        Event::Applied(view) => state.upsert(view, now),
        Event::Deleted {
            name,
            uid,
            resource_version,
        } => {
            // A deletion older than the view held is stale: a re-read of the pod back in the
            // group overtook the watch event of it leaving.
            let current = state.pods.get(&name).is_some_and(|e| {
                e.view.uid == uid
                    && resource_version
                        .as_deref()
                        .is_none_or(|rv| at_least_as_recent(rv, &e.view.resource_version))
            });
            if current {
                state.forget(&name, resource_version, now);
            }
        }
        Event::Resync { pods } => state.resync(pods, now),
        Event::Tick => {
            // A re-read that failed or got lost is asked for again on every tick.
            for entry in state.pods.values().filter(|e| e.stale) {
                out.push(Action::Refresh {
                    pod: entry.view.name.clone(),
                    uid: entry.view.uid.clone(),
                });
            }
        }
        Event::Leadership(term) => state.set_leadership(term, now),
        Event::Outcome { op, outcome } => state.outcome(op, outcome, now, &mut out),
        Event::Heartbeat { heard } => state.heartbeat(&heard, now, &mut out),
        Event::Reported {
            uid,
            role,
            epoch,
            incarnation,
        } => state.reported(&uid, role, epoch, incarnation, now),
    }
    state.settle_doubt();
    state.observe_trigger(now);
    state.observe_pause(now, &mut out);
    state.record_acknowledgements(&mut out);
    state.report_future_epochs(&mut out);
    state.plan(now, &mut out);
    state.report_health(&mut out);
    state.report_route(&mut out);
    out
}
