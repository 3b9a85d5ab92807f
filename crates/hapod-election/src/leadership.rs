//! The pure election decision: lease record + what this replica observed + now -> what to do.
//!
//! No clock, no I/O: the runtime (and the model check) feed in local monotonic milliseconds.
//! Every duration is measured on the *deciding* replica's own monotonic clock, from the moment
//! it observed something, never by comparing wall-clock timestamps written by another replica.
//! That is what makes the safety argument independent of wall-clock skew (docs/election.md).

use std::fmt;

/// Local monotonic time in milliseconds (any fixed origin per process).
pub type Millis = u64;

/// The controller term: the high 32 bits of every epoch (fencing token) the acting replica
/// issues. Strictly increases with every acquisition of the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(u32);

impl Term {
    /// A term with the given number.
    pub const fn new(n: u32) -> Self {
        Term(n)
    }

    /// The term number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The epoch `(term << 32) | seq` of docs/contracts.md.
    pub const fn epoch(self, seq: u32) -> u64 {
        ((self.0 as u64) << 32) | seq as u64
    }

    /// The term of the next acquisition after `self`: one more, but never below `floor`.
    ///
    /// The floor (seconds since 2024-01-01 on the acquiring replica's wall clock, see
    /// `term_floor_from_wall_clock`) keeps terms growing even if somebody deletes the Lease and
    /// the count starts again from nothing. `None` only when the term space is exhausted.
    pub fn next(self, floor: u32) -> Option<Term> {
        self.0.checked_add(1).map(|n| Term(n.max(floor)))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who holds the Lease, as recorded in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// `spec.holderIdentity`: pod name plus a per-process instance suffix, so a restarted
    /// container is a different holder than its dead predecessor.
    pub identity: String,
    /// The holder's pod name (annotation `hapod.io/holder-pod`), if recorded.
    pub pod: Option<String>,
}

/// The Lease as this replica last observed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseView {
    /// `None` when the Lease exists but was released (empty holder).
    pub holder: Option<Holder>,
    /// The last term handed out (annotation `hapod.io/term`).
    pub term: Term,
    /// How long the holder promised to stay away from acting without a renew, in ms
    /// (annotation `hapod.io/lease-duration-ms`, else `leaseDurationSeconds`). The holder's
    /// own value is used, so replicas with different flags (rolling update) stay consistent.
    pub lease_duration_ms: u64,
    /// Local monotonic time at which this replica first saw this version of the Lease
    /// (a new `resourceVersion`). Always at or after the real time of the write.
    pub observed_at: Millis,
}

/// This replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Me {
    /// The identity this process writes into `holderIdentity`.
    pub identity: String,
    /// This replica's pod name.
    pub pod: String,
}

/// Why a holder's pod counts as dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeathCause {
    /// The pod is gone (deleted, or replaced by a pod with the same name and another UID).
    Deleted,
    /// The pod has a `deletionTimestamp` (graceful termination started).
    Terminating,
    /// The holder's container is no longer running (or the pod phase is terminal).
    ContainerTerminated,
}

impl fmt::Display for DeathCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeathCause::Deleted => "pod deleted",
            DeathCause::Terminating => "pod terminating",
            DeathCause::ContainerTerminated => "container terminated",
        })
    }
}

/// What this replica knows about the holder's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodHealth {
    /// The pod cache is not synced yet, or the Lease does not name the holder's pod.
    Unknown,
    /// Seen and running.
    Alive,
    /// Seen dead.
    Dead(DeathCause),
}

/// What the runtime knows besides the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    /// Health of the pod named by the Lease holder.
    pub holder_pod: PodHealth,
    /// The term this replica is acting in and the local time its renew deadline passes,
    /// if it is acting right now.
    pub acting: Option<(Term, Millis)>,
    /// SIGTERM received or own pod terminating: release, never acquire.
    pub shutting_down: bool,
    /// Lower bound for the next term (see [`Term::next`]).
    pub term_floor: u32,
}

/// Why this replica acquires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcquireReason {
    /// No Lease object exists: create it.
    Create,
    /// The Lease has no holder (released).
    Released,
    /// No renew observed for a whole lease duration.
    Expired,
    /// The holder's pod was observed dead.
    HolderDead(DeathCause),
    /// The holder is an earlier process in this very pod (the container restarted), or this
    /// process itself after its renew deadline passed: it stopped acting, so a new term starts.
    Reacquire,
}

impl fmt::Display for AcquireReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireReason::Create => f.write_str("no lease"),
            AcquireReason::Released => f.write_str("lease released"),
            AcquireReason::Expired => f.write_str("lease expired"),
            AcquireReason::HolderDead(c) => write!(f, "holder dead: {c}"),
            AcquireReason::Reacquire => f.write_str("re-acquire after restart or lapse"),
        }
    }
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Write the Lease (create it if absent, else CAS on the observed resourceVersion) with
    /// this replica as holder and the given new term. Act only after the write succeeded.
    Acquire { term: Term, reason: AcquireReason },
    /// Renew the Lease (CAS) keeping the term.
    Renew { term: Term },
    /// Stop acting (already done by the caller) and clear the holder (CAS).
    Release { term: Term },
    /// Do nothing; decide again at `recheck_at` (the lease expiry) or on the next event.
    StandBy { recheck_at: Option<Millis> },
}

/// Decide what this replica does with the Lease.
pub fn decide_leadership(
    lease: Option<&LeaseView>,
    me: &Me,
    obs: &Observation,
    now: Millis,
) -> Decision {
    let standby = Decision::StandBy { recheck_at: None };
    let Some(lease) = lease else {
        if obs.shutting_down {
            return standby;
        }
        return acquire(Term::default(), AcquireReason::Create, obs);
    };
    let holder = lease.holder.as_ref();
    let mine = holder.is_some_and(|h| h.identity == me.identity);
    if obs.shutting_down {
        return if mine {
            Decision::Release { term: lease.term }
        } else {
            standby
        };
    }
    let Some(holder) = holder else {
        return acquire(lease.term, AcquireReason::Released, obs);
    };
    if mine {
        return match obs.acting {
            // Renew only a term this process is still continuously acting in: after a lapse
            // it starts a new term, so one term is always one unbroken acting interval.
            Some((term, deadline)) if term == lease.term && now < deadline => {
                Decision::Renew { term }
            }
            _ => acquire(lease.term, AcquireReason::Reacquire, obs),
        };
    }
    if holder.pod.as_deref() == Some(me.pod.as_str()) {
        // An earlier process of this pod: the container restarted, so that process is dead.
        return acquire(lease.term, AcquireReason::Reacquire, obs);
    }
    if let PodHealth::Dead(cause) = obs.holder_pod {
        return acquire(lease.term, AcquireReason::HolderDead(cause), obs);
    }
    let expires = lease.observed_at.saturating_add(lease.lease_duration_ms);
    if now >= expires {
        return acquire(lease.term, AcquireReason::Expired, obs);
    }
    Decision::StandBy {
        recheck_at: Some(expires),
    }
}

fn acquire(current: Term, reason: AcquireReason, obs: &Observation) -> Decision {
    let term = current
        .next(obs.term_floor)
        .unwrap_or_else(|| recovery_term(obs.term_floor));
    Decision::Acquire { term, reason }
}

/// Terms that acquisitions faster than one per second can have run ahead of the wall-clock
/// floor: about 194 days' worth.
const RECOVERY_MARGIN: u32 = 1 << 24;

/// The term taken over a Lease whose term cannot grow (`u32::MAX`: 2^32 acquisitions cannot
/// happen, so it was written by hand or corrupted). Standing by for ever would stop every
/// failover; the wall-clock floor plus a margin is above every term an honest acquisition
/// can have issued, and the compare-and-swap on the Lease still lets one replica win.
fn recovery_term(floor: u32) -> Term {
    Term(floor.saturating_add(RECOVERY_MARGIN))
}

/// The wall-clock floor for new terms: whole seconds since 2024-01-01T00:00:00Z.
///
/// Only a liveness aid for a deleted Lease; safety never depends on it, as terms are also
/// strictly increasing through the CAS on the Lease.
pub fn term_floor_from_wall_clock(unix_seconds: i64) -> u32 {
    const ORIGIN: i64 = 1_704_067_200;
    u32::try_from(unix_seconds.saturating_sub(ORIGIN).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            identity: "icr-a_1".into(),
            pod: "icr-a".into(),
        }
    }

    fn held_by(identity: &str, pod: &str, term: u32, observed_at: Millis) -> LeaseView {
        LeaseView {
            holder: Some(Holder {
                identity: identity.into(),
                pod: Some(pod.into()),
            }),
            term: Term::new(term),
            lease_duration_ms: 3000,
            observed_at,
        }
    }

    fn obs() -> Observation {
        Observation {
            holder_pod: PodHealth::Alive,
            acting: None,
            shutting_down: false,
            term_floor: 0,
        }
    }

    fn acq(term: u32, reason: AcquireReason) -> Decision {
        Decision::Acquire {
            term: Term::new(term),
            reason,
        }
    }

    #[test]
    fn creates_missing_lease_with_first_term() {
        assert_eq!(
            decide_leadership(None, &me(), &obs(), 0),
            acq(1, AcquireReason::Create)
        );
    }

    #[test]
    fn never_acquires_while_shutting_down() {
        let o = Observation {
            shutting_down: true,
            ..obs()
        };
        assert_eq!(
            decide_leadership(None, &me(), &o, 0),
            Decision::StandBy { recheck_at: None }
        );
        let released = LeaseView {
            holder: None,
            ..held_by("x", "x", 4, 0)
        };
        assert_eq!(
            decide_leadership(Some(&released), &me(), &o, 10_000),
            Decision::StandBy { recheck_at: None }
        );
    }

    #[test]
    fn holder_releases_on_shutdown() {
        let o = Observation {
            shutting_down: true,
            acting: Some((Term::new(4), 100)),
            ..obs()
        };
        let lease = held_by("icr-a_1", "icr-a", 4, 0);
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &o, 10_000),
            Decision::Release { term: Term::new(4) }
        );
    }

    #[test]
    fn acquires_released_lease_at_once_with_next_term() {
        let lease = LeaseView {
            holder: None,
            ..held_by("x", "x", 7, 1000)
        };
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &obs(), 1000),
            acq(8, AcquireReason::Released)
        );
    }

    #[test]
    fn renews_while_acting_in_the_lease_term() {
        let lease = held_by("icr-a_1", "icr-a", 4, 0);
        let o = Observation {
            acting: Some((Term::new(4), 2000)),
            ..obs()
        };
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &o, 1999),
            Decision::Renew { term: Term::new(4) }
        );
    }

    #[test]
    fn starts_a_new_term_after_its_own_deadline_lapsed() {
        let lease = held_by("icr-a_1", "icr-a", 4, 0);
        let o = Observation {
            acting: Some((Term::new(4), 2000)),
            ..obs()
        };
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &o, 2000),
            acq(5, AcquireReason::Reacquire)
        );
        // An acquisition whose response was lost: the Lease names us but we never acted.
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &obs(), 10),
            acq(5, AcquireReason::Reacquire)
        );
    }

    #[test]
    fn restarted_container_takes_over_from_its_previous_incarnation() {
        let lease = held_by("icr-a_0", "icr-a", 9, 0);
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &obs(), 1),
            acq(10, AcquireReason::Reacquire)
        );
    }

    #[test]
    fn waits_for_expiry_measured_from_its_own_observation() {
        let lease = held_by("icr-b_1", "icr-b", 3, 5000);
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &obs(), 7999),
            Decision::StandBy {
                recheck_at: Some(8000)
            }
        );
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &obs(), 8000),
            acq(4, AcquireReason::Expired)
        );
    }

    #[test]
    fn unknown_pod_health_falls_back_to_expiry() {
        let lease = held_by("icr-b_1", "icr-b", 3, 0);
        let o = Observation {
            holder_pod: PodHealth::Unknown,
            ..obs()
        };
        assert!(matches!(
            decide_leadership(Some(&lease), &me(), &o, 100),
            Decision::StandBy { .. }
        ));
    }

    #[test]
    fn takes_over_at_once_when_holder_pod_is_dead() {
        let lease = held_by("icr-b_1", "icr-b", 3, 5000);
        for cause in [
            DeathCause::Deleted,
            DeathCause::Terminating,
            DeathCause::ContainerTerminated,
        ] {
            let o = Observation {
                holder_pod: PodHealth::Dead(cause),
                ..obs()
            };
            assert_eq!(
                decide_leadership(Some(&lease), &me(), &o, 5001),
                acq(4, AcquireReason::HolderDead(cause))
            );
        }
    }

    #[test]
    fn term_floor_lifts_terms_after_lease_deletion() {
        let o = Observation {
            term_floor: 90_000_000,
            ..obs()
        };
        assert_eq!(
            decide_leadership(None, &me(), &o, 0),
            acq(90_000_000, AcquireReason::Create)
        );
        let lease = LeaseView {
            holder: None,
            ..held_by("x", "x", 95_000_000, 0)
        };
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &o, 0),
            acq(95_000_001, AcquireReason::Released)
        );
    }

    #[test]
    fn an_exhausted_term_is_recovered_from_the_wall_clock_not_stood_by() {
        let lease = LeaseView {
            holder: None,
            ..held_by("x", "x", u32::MAX, 0)
        };
        let o = Observation {
            term_floor: 90_000_000,
            ..obs()
        };
        assert_eq!(
            decide_leadership(Some(&lease), &me(), &o, 0),
            acq(90_000_000 + (1 << 24), AcquireReason::Released)
        );
    }

    #[test]
    fn epoch_layout_matches_contract() {
        assert_eq!(Term::new(3).epoch(5), (3u64 << 32) | 5);
        assert_eq!(term_floor_from_wall_clock(1_704_067_200 + 42), 42);
        assert_eq!(term_floor_from_wall_clock(0), 0);
    }

    proptest::proptest! {
        /// Whatever the inputs, an acquisition always moves the term strictly forward and
        /// a renew or release never changes it.
        #[test]
        fn terms_only_grow(
            held in proptest::option::of((0u32..5, 0u32..3, proptest::bool::ANY)),
            term in 0u32..10,
            observed_at in 0u64..10_000,
            now in 0u64..20_000,
            acting in proptest::option::of((0u32..10, 0u64..20_000)),
            shutting_down in proptest::bool::ANY,
            dead in proptest::bool::ANY,
            floor in 0u32..12,
        ) {
            let lease = held.map(|(who, pod, present)| LeaseView {
                holder: present.then(|| Holder {
                    identity: format!("icr-{pod}_{who}"),
                    pod: Some(format!("icr-{pod}")),
                }),
                term: Term::new(term),
                lease_duration_ms: 3000,
                observed_at,
            });
            let o = Observation {
                holder_pod: if dead { PodHealth::Dead(DeathCause::Deleted) } else { PodHealth::Alive },
                acting: acting.map(|(t, d)| (Term::new(t), d)),
                shutting_down,
                term_floor: floor,
            };
            let me = Me { identity: "icr-0_0".into(), pod: "icr-0".into() };
            let before = lease.as_ref().map_or(Term::default(), |l| l.term);
            match decide_leadership(lease.as_ref(), &me, &o, now) {
                Decision::Acquire { term: t, .. } => {
                    proptest::prop_assert!(t > before);
                    proptest::prop_assert!(!shutting_down);
                }
                Decision::Renew { term: t } | Decision::Release { term: t } => {
                    proptest::prop_assert_eq!(t, before);
                }
                Decision::StandBy { .. } => {}
            }
        }
    }
}
