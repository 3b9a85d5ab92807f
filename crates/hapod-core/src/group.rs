//! Per-group state machine: events in (watch changes, re-lists, write outcomes, leadership),
//! actions out (fenced writes, notifications, records, health). One write per group is in
//! flight at a time; the next step is planned only when its outcome is fed back, which is
//! what makes "demote, then promote" hold: the promote is issued after the demote is acked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::epoch;
use crate::pod::{Config, Phase, PodView, Role};

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

/// Why a pod was promoted (metric label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PromotionReason {
    /// The group had no active pod (start-up, new group, or no eligible pod until now).
    Initial,
    /// The active pod was deleted.
    Deleted,
    /// The active pod got a `deletionTimestamp`.
    Terminating,
    /// The active pod's Ready condition went false.
    NotReady,
    /// The active pod's phase became Failed or Succeeded.
    Finished,
    /// A critical container of the active pod died.
    CriticalDeath,
    /// The active pod lost its IP or left phase Running for Pending/Unknown.
    NotServing,
}

impl PromotionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Deleted => "deleted",
            Self::Terminating => "terminating",
            Self::NotReady => "not_ready",
            Self::Finished => "finished",
            Self::CriticalDeath => "critical_death",
            Self::NotServing => "not_serving",
        }
    }
}

/// Why a role write is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    Promote(PromotionReason),
    /// An active pod that must not stay active (ineligible, or a second active).
    Demote,
    /// A non-active pod whose role label is missing or wrong.
    Repair,
    /// A kept active pod without an epoch annotation gets one, so its agent can order the
    /// orders it receives.
    Adopt,
}

/// What a write does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// Merge patch of the role label (and the epoch annotation when `epoch` is set),
    /// with `metadata.resourceVersion` as precondition.
    SetRole {
        resource_version: String,
        role: Role,
        epoch: Option<u64>,
        purpose: Purpose,
    },
    /// Delete with `gracePeriodSeconds=0` and a UID precondition.
    Delete { container: String },
}

/// One write to carry out; feed its outcome back as [`Event::Outcome`] with `op`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Write {
    pub op: OpId,
    pub pod: String,
    pub uid: String,
    pub kind: WriteKind,
}

/// A role notification to send (after its label write was acknowledged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub pod: String,
    pub ip: IpAddr,
    pub role: Role,
    pub epoch: u64,
}

/// Something to report as a Kubernetes Event, log line and metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Promoted {
        epoch: u64,
        reason: PromotionReason,
        /// From the trigger being observed to the label write being acknowledged.
        latency: Option<Duration>,
    },
    Demoted,
    Killed {
        container: String,
    },
    /// The group has no active pod and no eligible one.
    NoEligible,
    /// An active pod carries an epoch of a term above the acting one: no replica can have
    /// issued it while this one holds the Lease. Ignored for epoch allocation.
    FutureEpoch {
        epoch: u64,
    },
    /// A kept active pod without an epoch got one written.
    Adopted {
        epoch: u64,
    },
    /// The API refused a write for good (403, 422).
    Rejected {
        delete: bool,
        code: u16,
    },
}

/// A record about one pod (`pod` is `None` when the pod is no longer known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pod: Option<PodRef>,
    pub kind: RecordKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
}

/// Whether the group has an eligible pod labeled active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    Active,
    NoActive {
        eligible: bool,
    },
    /// The group has no pods: nothing to serve, so not "without active".
    Empty,
}

/// Output of [`decide`], carried out by the runtime in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Write(Write),
    /// A write met a 409: read the pod again and feed it back as `Applied` (or `Deleted`).
    Refresh {
        pod: String,
        uid: String,
    },
    Notify(Notify),
    Record(Record),
    /// Feed [`Event::Tick`] after this delay (plus jitter): a retry is due.
    WakeAfter(Duration),
    /// The group's health changed.
    Health(Health),
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    /// Acknowledged; the new resourceVersion when the API returned one.
    Done { resource_version: Option<String> },
    /// 409: the precondition failed, the view is stale.
    Conflict,
    /// 404: the pod is gone.
    NotFound,
    /// Refused for good (403, 422): reported, retried only after a long pause.
    Rejected { code: u16 },
    /// Transient (network, 5xx, 429, lease not held at the fence): retried with backoff.
    Failed,
}

/// Input of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Watch add/modify (or the result of a refresh).
    Applied(PodView),
    /// The pod left the group: watch delete (the final object's resourceVersion), relabeled
    /// out of the group (the resourceVersion of that update), or found gone (`None`).
    Deleted {
        name: String,
        uid: String,
        resource_version: Option<String>,
    },
    /// Full list of the group's pods, delivered in watch order (start, watch re-list,
    /// taking over): a pod missing from it is deleted.
    Resync { pods: Vec<PodView> },
    /// Re-plan from the cached state (periodic resync, retry timer).
    Tick,
    /// This replica acts with the given controller term, or stopped acting (`None`).
    Leadership(Option<u32>),
    /// Outcome of the write `op`.
    Outcome { op: OpId, outcome: WriteOutcome },
}

/// What the group remembers about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PodEntry {
    view: PodView,
    /// A critical container that died; sticky until the pod is gone.
    dead_container: Option<String>,
    /// Our delete was acknowledged; the pod is on its way out.
    kill_sent: bool,
    /// A write on this version met a 409: no writes until a newer version is seen.
    stale: bool,
    /// The API refused a write on this pod for good (403, 422): no writes on it until then,
    /// while the rest of the group goes on.
    refused_until: Option<Instant>,
}

impl PodEntry {
    fn new(view: PodView) -> Self {
        let dead_container = view.dead_container().map(str::to_owned);
        Self {
            view,
            dead_container,
            kill_sent: false,
            stale: false,
            refused_until: None,
        }
    }

    /// Takes a newer version of the same pod; a death seen once stays.
    fn observe(&mut self, view: PodView) {
        if self.dead_container.is_none() {
            self.dead_container = view.dead_container().map(str::to_owned);
        }
        self.view = view;
    }

    fn role(&self, config: &Config) -> Role {
        self.view.role(config)
    }

    fn refused(&self, now: Instant) -> bool {
        self.refused_until.is_some_and(|t| now < t)
    }

    fn writable(&self, now: Instant) -> bool {
        !self.stale && !self.refused(now)
    }

    /// Already on its way out: being deleted, or every container has stopped for good. A kill
    /// would only cut its grace period short.
    fn leaving(&self) -> bool {
        self.view.deleting || matches!(self.view.phase, Phase::Failed | Phase::Succeeded)
    }

    fn eligible(&self) -> bool {
        self.view.serving() && self.dead_container.is_none() && !self.kill_sent
    }

    /// Ineligible, but only for a reason that may pass (not Ready, no IP, phase Pending or
    /// Unknown): such an active still serves better than none, so it keeps the role until a
    /// successor can take over. The hard reasons (leaving, a dead critical container, a kill
    /// sent) lose the role at once.
    fn softly_ineligible(&self) -> bool {
        !self.eligible() && !self.leaving() && self.dead_container.is_none() && !self.kill_sent
    }

    /// Why an active pod that is not eligible has to give up the role.
    fn loss_reason(&self) -> PromotionReason {
        if self.view.deleting {
            PromotionReason::Terminating
        } else if self.dead_container.is_some() || self.kill_sent {
            PromotionReason::CriticalDeath
        } else if matches!(self.view.phase, Phase::Failed | Phase::Succeeded) {
            PromotionReason::Finished
        } else if !self.view.ready {
            PromotionReason::NotReady
        } else {
            PromotionReason::NotServing
        }
    }

    fn pod_ref(&self) -> PodRef {
        PodRef {
            name: self.view.name.clone(),
            uid: self.view.uid.clone(),
        }
    }
}

/// A pod that left the group: events about it up to `floor` (the resourceVersion at which it
/// left) are late duplicates; a later one means it came back (relabeled into the group again).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Tombstone {
    uid: String,
    floor: String,
}

/// Whether `new` is strictly after `floor`, both read as integers; one that does not parse
/// is not, so an odd apiserver cannot bring a deleted pod back.
fn after_floor(new: &str, floor: &str) -> bool {
    matches!((new.parse::<u64>(), floor.parse::<u64>()), (Ok(n), Ok(f)) if n > f)
}

/// Whether `new` is at least as recent as `old`. Resource versions are compared as integers
/// (the apiserver's resource versions are comparable etcd revisions); one that does not parse
/// is taken as newer, so an odd apiserver degrades to "last event wins".
fn at_least_as_recent(new: &str, old: &str) -> bool {
    match (new.parse::<u64>(), old.parse::<u64>()) {
        (Ok(n), Ok(o)) => n >= o,
        _ => true,
    }
}

/// When a failover started and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Trigger {
    at: Instant,
    reason: PromotionReason,
}

/// A write issued and not yet answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InFlight {
    op: OpId,
    pod: String,
    uid: String,
    kind: WriteKind,
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
    paused_until: Option<Instant>,
    failures: u32,
    trigger: Option<Trigger>,
    /// Active pods (UID, epoch) this replica told they are active, in this term.
    announced: BTreeSet<(String, u64)>,
    health: Option<Health>,
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
            paused_until: None,
            failures: 0,
            trigger: None,
            announced: BTreeSet::new(),
            health: None,
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

    /// The active pod that keeps the role: the eligible one; failing that, a softly
    /// ineligible one while no successor can be promoted at once (demoting it would leave the
    /// group without any active).
    fn kept_active(&self, now: Instant) -> Option<&PodEntry> {
        self.eligible_active().or_else(|| {
            if self.successor(now).is_some_and(|e| e.writable(now)) {
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
                    entry.observe(view);
                }
            }
            Some(_) => {
                // The name was reused by a new pod: the old one is gone.
                let name = view.name.clone();
                self.forget(&name, None, now);
                self.pods.insert(name, PodEntry::new(view));
            }
            None => {
                self.pods.insert(view.name.clone(), PodEntry::new(view));
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

    fn set_leadership(&mut self, term: Option<u32>) {
        if self.term == term {
            return;
        }
        self.term = term;
        self.seq = 0;
        // Outcomes of writes issued in another term no longer drive this group.
        self.in_flight = None;
        self.paused_until = None;
        self.failures = 0;
        self.announced.clear();
        self.future_reported.clear();
        self.health = None;
    }

    /// After an event: note the start of a failover, or its end when an eligible active is back.
    fn observe_trigger(&mut self, now: Instant) {
        if self.eligible_active().is_some() {
            self.trigger = None;
            return;
        }
        if self.trigger.is_some() {
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
                self.failures = self.failures.saturating_add(1);
                let delay = RETRY_BASE
                    .saturating_mul(1u32 << self.failures.min(16))
                    .min(RETRY_MAX);
                self.pause(delay, now, out);
            }
        }
    }

    fn pause(&mut self, delay: Duration, now: Instant, out: &mut Vec<Action>) {
        self.paused_until = Some(now + delay);
        out.push(Action::WakeAfter(delay));
    }

    fn acknowledged(
        &mut self,
        write: InFlight,
        resource_version: Option<String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self
            .pods
            .get_mut(&write.pod)
            .filter(|e| e.view.uid == write.uid)
        else {
            return;
        };
        match write.kind {
            WriteKind::SetRole {
                role,
                epoch,
                purpose,
                ..
            } => {
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
                        let latency = self.trigger.take().map(|t| now.duration_since(t.at));
                        self.announce(&pod, ip, epoch, out);
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
                            out.push(Action::Notify(Notify {
                                pod: pod.name.clone(),
                                ip,
                                role: Role::Standby,
                                epoch,
                            }));
                        }
                        out.push(Action::Record(Record {
                            pod: Some(pod),
                            kind: RecordKind::Demoted,
                        }));
                    }
                    Purpose::Adopt => {
                        let epoch = epoch.unwrap_or_default();
                        self.announce(&pod, ip, epoch, out);
                        out.push(Action::Record(Record {
                            pod: Some(pod),
                            kind: RecordKind::Adopted { epoch },
                        }));
                    }
                    Purpose::Repair => {}
                }
            }
            WriteKind::Delete { container } => {
                entry.kill_sent = true;
                out.push(Action::Record(Record {
                    pod: Some(entry.pod_ref()),
                    kind: RecordKind::Killed { container },
                }));
            }
        }
    }

    /// Next epoch for the group in `term`: above every epoch of `term` issued by this process
    /// or carried by an active pod. Older terms' epochs are below it by construction. One of a
    /// newer term cannot be legitimate while this replica holds the Lease: it is reported
    /// (see `report_future_epochs`) and ignored, so failover goes on. Epochs on pods not
    /// labeled active never count: they are left over from earlier promotions. `None` only
    /// when the sequence of `term` is exhausted.
    fn allocate_epoch(&mut self, term: u32) -> Option<u64> {
        let config = Arc::clone(&self.config);
        let used = self
            .pods
            .values()
            .filter(|e| e.role(&config) == Role::Active)
            .filter_map(|e| e.view.epoch)
            .chain([self.highest_epoch])
            .filter(|&e| epoch::term_of(e) == term)
            .map(epoch::seq_of)
            .max()
            .unwrap_or(0);
        self.seq = self.seq.max(used).checked_add(1)?;
        let fresh = epoch::compose(term, self.seq);
        self.highest_epoch = self.highest_epoch.max(fresh);
        Some(fresh)
    }

    /// Reports, once per pod and epoch while acting, an active pod whose epoch belongs to a
    /// term above the acting one.
    fn report_future_epochs(&mut self, out: &mut Vec<Action>) {
        let Some(term) = self.term else {
            return;
        };
        for entry in self.pods.values() {
            let Some(epoch) = entry.view.epoch else {
                continue;
            };
            if entry.role(&self.config) == Role::Active
                && epoch::term_of(epoch) > term
                && self.future_reported.insert((entry.view.uid.clone(), epoch))
            {
                out.push(Action::Record(Record {
                    pod: Some(entry.pod_ref()),
                    kind: RecordKind::FutureEpoch { epoch },
                }));
            }
        }
    }

    fn issue(&mut self, entry_name: &str, kind: WriteKind, out: &mut Vec<Action>) {
        let Some(entry) = self.pods.get(entry_name) else {
            return;
        };
        let op = self.next_op;
        self.next_op += 1;
        let write = Write {
            op,
            pod: entry.view.name.clone(),
            uid: entry.view.uid.clone(),
            kind,
        };
        self.in_flight = Some(InFlight {
            op,
            pod: write.pod.clone(),
            uid: write.uid.clone(),
            kind: write.kind.clone(),
        });
        out.push(Action::Write(write));
    }

    fn set_role(
        &mut self,
        name: &str,
        role: Role,
        epoch: Option<u64>,
        purpose: Purpose,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.pods.get(name) else {
            return;
        };
        let kind = WriteKind::SetRole {
            resource_version: entry.view.resource_version.clone(),
            role,
            epoch,
            purpose,
        };
        self.issue(name, kind, out);
    }

    /// Issues the next write the group needs, most urgent first, so a lost active is always
    /// handled before kills and label repairs. Each phase answers whether the group now waits
    /// (a write issued, or one it must wait for). Nothing while another write is in flight,
    /// while paused, or while standby.
    fn plan(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(term) = self.term else {
            return;
        };
        if self.in_flight.is_some() || self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        let keep = self.kept_active(now).map(|e| e.view.name.clone());
        let keep = keep.as_deref();
        if self.demote_extra_active(keep, now, out)
            || self.promote(keep, term, now, out)
            || self.announce_kept_active(keep, term, now, out)
            || self.kill_dead_critical(now, out)
        {
            return;
        }
        self.repair_labels(now, out);
    }

    /// Demotes an active pod other than `keep` (a second active, or one that must give up).
    fn demote_extra_active(
        &mut self,
        keep: Option<&str>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(victim) = self
            .pods
            .values()
            .find(|e| e.role(&self.config) == Role::Active && Some(e.view.name.as_str()) != keep)
        else {
            return false;
        };
        // A force-deleted victim is gone a moment later: waiting for that saves a demote the
        // API would answer 404, without ever promoting beside it.
        if victim.view.vanishing
            && let Some(until) = self.trigger.map(|t| t.at + VANISH_WAIT)
            && now < until
        {
            out.push(Action::WakeAfter(until - now));
            return true;
        }
        // A victim that cannot be written now is waited for: promoting meanwhile could make
        // two actives.
        if victim.writable(now) {
            let name = victim.view.name.clone();
            self.set_role(&name, Role::Standby, None, Purpose::Demote, out);
        }
        true
    }

    /// Promotes the oldest eligible pod when no active is kept.
    fn promote(
        &mut self,
        keep: Option<&str>,
        term: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        if keep.is_some() {
            return false;
        }
        let Some(candidate) = self.successor(now) else {
            return false;
        };
        // A stale candidate waits for its refresh rather than handing the role to another
        // pod: the choice stays "the oldest eligible".
        if candidate.stale {
            return true;
        }
        let name = candidate.view.name.clone();
        let Some(epoch) = self.allocate_epoch(term) else {
            return true;
        };
        let reason = self.trigger.map_or(PromotionReason::Initial, |t| t.reason);
        self.set_role(
            &name,
            Role::Active,
            Some(epoch),
            Purpose::Promote(reason),
            out,
        );
        true
    }

    /// Makes sure the kept active knows it is active, once per (pod, epoch) in this term: the
    /// previous replica may have stopped between write and send, or the pod became the kept
    /// active without this replica promoting it (a second active kept, a pod that rejoined).
    /// One without an epoch first gets one written, so its agent can order its orders. Only
    /// an eligible active is told.
    fn announce_kept_active(
        &mut self,
        keep: Option<&str>,
        term: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(entry) = keep.map(|name| &self.pods[name]).filter(|e| e.eligible()) else {
            return false;
        };
        let Some(epoch) = entry.view.epoch else {
            if !entry.writable(now) {
                return false;
            }
            let name = entry.view.name.clone();
            let Some(epoch) = self.allocate_epoch(term) else {
                return false;
            };
            self.set_role(&name, Role::Active, Some(epoch), Purpose::Adopt, out);
            return true;
        };
        if !self.announced.contains(&(entry.view.uid.clone(), epoch)) {
            let (pod, ip) = (entry.pod_ref(), entry.view.primary_ip());
            self.announce(&pod, ip, epoch, out);
        }
        false
    }

    /// Tells `pod` it is active with `epoch` (when it has an address to be told at).
    fn announce(&mut self, pod: &PodRef, ip: Option<IpAddr>, epoch: u64, out: &mut Vec<Action>) {
        self.announced.insert((pod.uid.clone(), epoch));
        if let Some(ip) = ip {
            out.push(Action::Notify(Notify {
                pod: pod.name.clone(),
                ip,
                role: Role::Active,
                epoch,
            }));
        }
    }

    /// Deletes a pod with a dead critical container, unless it is already on its way out.
    fn kill_dead_critical(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        let doomed = self.pods.values().find_map(|e| match &e.dead_container {
            Some(c) if !e.kill_sent && !e.leaving() && !e.refused(now) => {
                Some((e.view.name.clone(), c.clone()))
            }
            _ => None,
        });
        let Some((name, container)) = doomed else {
            return false;
        };
        self.issue(&name, WriteKind::Delete { container }, out);
        true
    }

    /// Labels standby a live pod whose role label is missing or wrong.
    fn repair_labels(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mislabeled = self
            .pods
            .values()
            .find(|e| {
                e.role(&self.config) == Role::Other
                    && !e.view.deleting
                    && e.dead_container.is_none()
                    && e.writable(now)
            })
            .map(|e| e.view.name.clone());
        if let Some(name) = mislabeled {
            self.set_role(&name, Role::Standby, None, Purpose::Repair, out);
        }
    }

    /// The pod to promote when no active is kept: the oldest eligible one that the API has
    /// not refused.
    fn successor(&self, now: Instant) -> Option<&PodEntry> {
        self.pods
            .values()
            .filter(|e| e.eligible() && !e.refused(now))
            .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
    }

    /// Reports a change of health; the no-eligible record only from the acting replica, and
    /// never for an empty group (nothing there to be eligible).
    fn report_health(&mut self, out: &mut Vec<Action>) {
        let health = if self.pods.is_empty() {
            Health::Empty
        } else if self.eligible_active().is_some() {
            Health::Active
        } else {
            Health::NoActive {
                eligible: self.pods.values().any(PodEntry::eligible),
            }
        };
        if self.health == Some(health) {
            return;
        }
        self.health = Some(health);
        out.push(Action::Health(health));
        if health == (Health::NoActive { eligible: false }) && self.term.is_some() {
            let pod = self
                .pods
                .values()
                .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
                .map(PodEntry::pod_ref);
            out.push(Action::Record(Record {
                pod,
                kind: RecordKind::NoEligible,
            }));
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
        Event::Leadership(term) => state.set_leadership(term),
        Event::Outcome { op, outcome } => state.outcome(op, outcome, now, &mut out),
    }
    state.observe_trigger(now);
    state.report_future_epochs(&mut out);
    state.plan(now, &mut out);
    state.report_health(&mut out);
    out
}
