//! What a group remembers about each of its pods, and about pods that left it.

use std::time::{Duration, Instant};

use super::PodRef;
use super::PromotionReason;
use crate::pod::{Config, Phase, PodView, Role};

/// What the group remembers about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PodEntry {
    pub(super) view: PodView,
    /// A critical container that died; sticky until the pod is gone.
    pub(super) dead_container: Option<String>,
    /// Our delete was acknowledged; the pod is on its way out.
    pub(super) kill_sent: bool,
    /// A write on this version met a 409: no writes until a newer version is seen.
    pub(super) stale: bool,
    /// The API refused a write on this pod for good (403, 422): no writes on it until then,
    /// while the rest of the group goes on.
    pub(super) refused_until: Option<Instant>,
    /// Its agent stopped reporting while others of the group did (`Grants::silent`); cleared
    /// by its next report.
    pub(super) unresponsive: bool,
    /// Its agent relinquished the active role (while labeled active, a standby report at the
    /// epoch of the grant this replica sent it, with no order since): that process acts no
    /// more, whatever it is told. A new label epoch, or another agent process reporting,
    /// ends it.
    pub(super) relinquished: Option<Relinquished>,
    /// Since when the pod has not been Ready, on this replica's clock: first seen so, or
    /// earlier when the Ready condition's lastTransitionTime says so (a restarted replica must
    /// not grant a fresh grace; without that time, one grace per restart at most).
    pub(super) not_ready_since: Option<Instant>,
    /// The role and epoch its application was last recorded taking (`Acknowledged`), while
    /// its agent's latest report still says so.
    pub(super) acknowledged: Option<(Role, u64)>,
    /// From this replica's first grant at an epoch to its agent's report of acting there.
    pub(super) grant_round_trip: Option<Duration>,
}

/// Which agent process gave the role up, and at which label epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Relinquished {
    pub(super) epoch: u64,
    pub(super) incarnation: u64,
}

impl PodEntry {
    pub(super) fn new(view: PodView, now: Instant) -> Self {
        let dead_container = view.dead_container().map(str::to_owned);
        let mut entry = Self {
            view,
            dead_container,
            kill_sent: false,
            stale: false,
            refused_until: None,
            unresponsive: false,
            relinquished: None,
            not_ready_since: None,
            acknowledged: None,
            grant_round_trip: None,
        };
        entry.track_readiness(now);
        entry
    }

    /// Takes a newer version of the same pod, seen at `now`; a death seen once stays.
    pub(super) fn observe(&mut self, view: PodView, now: Instant) {
        if self.dead_container.is_none() {
            self.dead_container = view.dead_container().map(str::to_owned);
        }
        self.view = view;
        self.track_readiness(now);
    }

    fn track_readiness(&mut self, now: Instant) {
        if self.view.ready {
            self.not_ready_since = None;
            return;
        }
        let seen = self.not_ready_since.unwrap_or(now);
        let transition = self.view.unready_for.and_then(|d| now.checked_sub(d));
        self.not_ready_since = Some(transition.map_or(seen, |t| t.min(seen)));
    }

    pub(super) fn role(&self, config: &Config) -> Role {
        self.view.role(config)
    }

    pub(super) fn refused(&self, now: Instant) -> bool {
        self.refused_until.is_some_and(|t| now < t)
    }

    pub(super) fn writable(&self, now: Instant) -> bool {
        !self.stale && !self.refused(now)
    }

    /// Already on its way out: being deleted, or every container has stopped for good. A kill
    /// would only cut its grace period short.
    pub(super) fn leaving(&self) -> bool {
        self.view.deleting || matches!(self.view.phase, Phase::Failed | Phase::Succeeded)
    }

    pub(super) fn eligible(&self) -> bool {
        self.view.ready && self.eligible_but_for_readiness()
    }

    /// Everything eligibility asks but the Ready condition.
    fn eligible_but_for_readiness(&self) -> bool {
        self.view.running_with_ip()
            && !self.view.drained
            && self.dead_container.is_none()
            && !self.kill_sent
            && !self.unresponsive
            && !self.relinquished()
    }

    /// Its agent gave up the role at the epoch the pod is labeled with.
    pub(super) fn relinquished(&self) -> bool {
        self.relinquished
            .is_some_and(|r| Some(r.epoch) == self.view.epoch)
    }

    /// Until when this active, not Ready and otherwise eligible, keeps the role for the
    /// group's not-Ready `grace`, if that is still ahead of `now`. Nothing else is graced:
    /// a deletion, a dead critical container, a drain or a silent agent move the role at once.
    pub(super) fn not_ready_grace_until(&self, grace: Duration, now: Instant) -> Option<Instant> {
        if self.view.ready || !self.eligible_but_for_readiness() {
            return None;
        }
        let until = self.not_ready_since? + grace;
        (now < until).then_some(until)
    }

    /// Ineligible, but only for a reason that may pass (not Ready, no IP, phase Pending or
    /// Unknown, an unresponsive agent): such an active still serves better than none, so it keeps the role until a
    /// successor can take over. The hard reasons (leaving, a dead critical container, a kill
    /// sent) lose the role at once.
    pub(super) fn softly_ineligible(&self) -> bool {
        !self.eligible()
            && !self.leaving()
            && self.dead_container.is_none()
            && !self.kill_sent
            && !self.relinquished()
    }

    /// Why an active pod that is not eligible has to give up the role.
    pub(super) fn loss_reason(&self) -> PromotionReason {
        // The sticky death and the relinquish come before what the API shows now, a
        // deletion before them all.
        if self.view.deleting {
            PromotionReason::Terminating
        } else if self.dead_container.is_some() || self.kill_sent {
            PromotionReason::CriticalDeath
        } else if self.relinquished() {
            PromotionReason::Relinquished
        } else {
            self.view
                .unfit_by_api()
                .unwrap_or(PromotionReason::Unresponsive)
        }
    }

    /// Why this pod cannot be promoted now (it is not [`PodEntry::eligible`], or the API
    /// refused a write to it a moment ago).
    pub(super) fn unfit_reason(&self, now: Instant) -> &'static str {
        if self.eligible() && self.refused(now) {
            "write_refused"
        } else {
            self.loss_reason().as_str()
        }
    }

    pub(super) fn pod_ref(&self) -> PodRef {
        PodRef {
            name: self.view.name.clone(),
            uid: self.view.uid.clone(),
        }
    }
}

/// A pod that left the group: events about it up to `floor` (the resourceVersion at which it
/// left) are late duplicates; a later one means it came back (relabeled into the group again).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Tombstone {
    pub(super) uid: String,
    pub(super) floor: String,
}

/// Whether `new` is strictly after `floor`, both read as integers; one that does not parse
/// is not, so an odd apiserver cannot bring a deleted pod back.
pub(super) fn after_floor(new: &str, floor: &str) -> bool {
    matches!((new.parse::<u64>(), floor.parse::<u64>()), (Ok(n), Ok(f)) if n > f)
}

/// Whether `new` is at least as recent as `old`. Resource versions are compared as integers
/// (the apiserver's resource versions are comparable etcd revisions); one that does not parse
/// is taken as newer, so an odd apiserver degrades to "last event wins".
pub(super) fn at_least_as_recent(new: &str, old: &str) -> bool {
    match (new.parse::<u64>(), old.parse::<u64>()) {
        (Ok(n), Ok(o)) => n >= o,
        _ => true,
    }
}
