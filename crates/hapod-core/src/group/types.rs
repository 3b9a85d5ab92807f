//! What goes in and out of a group: events, actions and the records that explain them.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::OpId;
use crate::pod::{PodView, Role};

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
    /// The active pod's agent stopped reporting while the others of its group did not (a
    /// hung process, a lost node, a network partition).
    Unresponsive,
    /// The active pod's agent relinquished the role (its process is shutting down): it
    /// reported standby at the epoch the pod is labeled active with.
    Relinquished,
    /// An operator drained the role from the active pod (`hapod.io/drain=true`, what
    /// `kubectl hapod switchover` sets): a planned handover.
    Drained,
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
            Self::Unresponsive => "unresponsive",
            Self::Relinquished => "relinquished",
            Self::Drained => "drained",
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
    /// A pod whose promotion may have landed unseen (its outcome is unknown) is written once
    /// more with that promotion's precondition and a fresh epoch annotation: the write either
    /// fails (the promotion landed) or changes the pod, so that the promotion never can.
    Fence,
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

/// What an agent reported of itself (application lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportedRole {
    /// Acting active under a live grant.
    Active,
    /// Applied a standby order.
    Standby,
    /// Ordered active, but its grant ran out: not acting.
    Lapsed,
}

/// An order of the application lease to send to one pod's agent: its role at `epoch`, with a
/// grant to act when `grant` is set (only for the active role).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleOrder {
    pub pod: String,
    pub uid: String,
    pub ip: IpAddr,
    pub role: Role,
    pub epoch: u64,
    pub grant: bool,
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
    /// An older pod than the one being promoted (the choice is "the oldest eligible") could
    /// not take the role, for this reason.
    PassedOver {
        why: &'static str,
    },
    /// An active pod carries an epoch of a term above the acting one: no replica can have
    /// issued it while this one holds the Lease. Ignored for epoch allocation.
    FutureEpoch {
        epoch: u64,
    },
    /// A kept active pod without an epoch got one written.
    Adopted {
        epoch: u64,
    },
    /// An operator paused the group (a pod of it, the record's, carries
    /// `hapod.io/paused=true`): no role changes until it is resumed.
    Paused,
    /// No pod of the group carries `hapod.io/paused=true` any more: the rules apply again.
    Resumed,
    /// A pod's agent reported the role its label says, the first time since it said anything
    /// else: acting at the pod's epoch when labeled active, standing by at the epoch this
    /// replica told it when labeled standby. The application took the role.
    /// `round_trip` (active only): from the first grant of that epoch sent to the report
    /// received, when this replica sent it.
    Acknowledged {
        role: Role,
        epoch: u64,
        round_trip: Option<Duration>,
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

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
}

/// Where the group's Service sends traffic, in the EndpointSlice mode (`docs/endpoints.md`):
/// the Service its pods name, and the endpoint that slice lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The Service named by the group's oldest pod carrying `hapod.io/service`; `None`: no
    /// pod names one (the label mode), and a slice written before is to be removed.
    pub service: Option<String>,
    /// The pod labeled active as this replica sees it after its own acknowledged writes, as
    /// the slice's only endpoint; `None`: no pod is labeled active (or it has no IP).
    pub endpoint: Option<Endpoint>,
}

/// The one endpoint of a group's slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub pod: PodRef,
    /// The pod's IPs, primary first (the slice takes those of the Service's IP family).
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// Ready, Running with an IP, not terminating, and no critical container dead.
    pub ready: bool,
    /// Ready, Running and with an IP, terminating or not (EndpointSlice `serving`).
    pub serving: bool,
    /// `deletionTimestamp` is set.
    pub terminating: bool,
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

/// Output of [`decide`](crate::decide), carried out by the runtime in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Write(Write),
    /// A write met a 409: read the pod again and feed it back as `Applied` (or `Deleted`).
    Refresh {
        pod: String,
        uid: String,
    },
    Notify(Notify),
    /// Application lease: an order for one agent (at a role change and on every heartbeat).
    Order(RoleOrder),
    Record(Record),
    /// Feed [`Event::Tick`] after this delay (plus jitter): a retry is due.
    WakeAfter(Duration),
    /// The group's health changed.
    Health(Health),
    /// Where the group's traffic goes changed (EndpointSlice mode; emitted only for groups
    /// whose pods name a Service, or did).
    Route(Route),
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

/// Input of [`decide`](crate::decide).
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
    /// Application lease: time to repeat every pod's order (the heartbeat). `heard`: when
    /// each agent of the group was last heard (its newest report, by pod UID), since a report
    /// that says nothing new is not fed as [`Event::Reported`].
    Heartbeat { heard: Vec<(String, Instant)> },
    /// Application lease: a pod's agent reported a role (`None`: it applied no order since
    /// it started) or epoch other than in its previous report.
    /// `incarnation` names the agent's process (random at each start): another one is a new
    /// process, which gave nothing up.
    Reported {
        uid: String,
        role: Option<ReportedRole>,
        epoch: u64,
        incarnation: u64,
    },
}
