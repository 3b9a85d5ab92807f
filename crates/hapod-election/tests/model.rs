//! Exhaustive model check (stateright) of the election protocol built on the real `decide`.
//!
//! What is modelled, in ticks of `TICK_MS` real time:
//! - a Lease register with compare-and-swap on its resourceVersion (every write makes a new
//!   version; a write based on an older version fails);
//! - replicas with local monotonic clocks that may run slow or fast, so that any interval one
//!   replica measures is off from real time by at most `skew` ticks (the documented bound);
//! - writes that arrive at the API server later than sent, and responses that get lost (the
//!   writer never learns whether its acquisition happened);
//! - delayed observations: each replica sees the Lease and the pods only when it gets round to
//!   it (a watch event), so its views can be arbitrarily stale;
//! - a process crash and restart in the same pod (a new incarnation, memory lost), a pod
//!   deletion seen by the standby before the old leader notices, and SIGTERM.
//!
//! Acting means what `LeaderHandle::fence()` answers: holding a term whose renew deadline,
//! measured on the local clock from the send time of the last successful renew, has not
//! passed. The properties checked in every reachable state:
//! - `one owner per term`: no two processes (replica, incarnation) ever act in the same term;
//! - `one interval per term`: once a process stops acting in a term it never acts in it again
//!   (so `(term << 32) | seq` with an in-memory seq never repeats an epoch);
//! - `exclusion`: two processes act at the same instant only if the newer one took over on an
//!   observed pod death, and then the older one's term is lower and already superseded in the
//!   Lease (its writes carry stale epochs). With death-signal takeovers switched off
//!   (`strict exclusion` runs), two processes never act at the same instant at all.

use std::collections::{BTreeMap, BTreeSet};

use hapod_election::{
    AcquireReason, DeathCause, Decision, Holder, LeaseView, Me, Observation, PodHealth, Term,
    decide_leadership,
};
use stateright::{Checker, Model, Property};

const TICK_MS: u64 = 1000;
/// Lease duration and renew deadline of the model, in ticks (3000 ms / 1000 ms): the
/// margin LD - RD is 2 ticks, so the documented bound allows 1 tick of error per replica.
const LD: i64 = 3;
const RD: i64 = 1;
/// `decide` gets absolute times; the model keeps only ages, so it places "now" here.
const BASE: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Record {
    holder: Option<(u8, u8)>,
    term: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Acquire { term: u32, via_death: bool },
    Renew { term: u32 },
    Release,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Write {
    inc: u8,
    kind: Kind,
    /// Whether the version the CAS is based on is still the current one (no write since).
    base_current: bool,
    /// Local ticks since the request was sent (capped at RD: older cannot extend anything).
    sent_age: i64,
    /// `None` until it reached the API server, then whether the CAS succeeded.
    arrived: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct View {
    /// The Lease content seen (`None`: seen absent).
    record: Option<Record>,
    /// Local ticks since this version was first seen (capped at LD: expired is expired).
    age: i64,
    /// Still the current version (no write since).
    current: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replica {
    alive: bool,
    inc: u8,
    /// How far this clock is behind real time, in [-skew, 0]: bounds every measured interval.
    offset: i64,
    view: Option<View>,
    /// This replica's last look at the pods: which are dead.
    pods_seen: Option<Vec<bool>>,
    /// Acting term and local ticks left before its renew deadline (always > 0).
    acting: Option<(u32, i64)>,
    write: Option<Write>,
    shutting: bool,
    done: bool,
    pod_deleting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    lease: Option<Record>,
    replicas: Vec<Replica>,
    crashes_left: u8,
    deletions_left: u8,
    // Ghost state for the properties.
    owners: BTreeMap<u32, (u8, u8)>,
    ended: BTreeSet<u32>,
    death_terms: BTreeSet<u32>,
    violation: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// Real time advances one tick; each replica's clock advances by the given 0, 1 or 2.
    Tick(Vec<i64>),
    Decide(usize),
    Arrive(usize),
    Respond(usize),
    LoseResponse(usize),
    ObserveLease(usize),
    ObservePods(usize),
    Crash(usize),
    Restart(usize),
    DeletePod(usize),
    Sigterm(usize),
}

struct ElectionModel {
    replicas: usize,
    skew: i64,
    /// No acquisition beyond this term (keeps the state space finite).
    max_term: u32,
    death_signals: bool,
    crashes: u8,
    deletions: u8,
}

fn ms(ticks: i64) -> u64 {
    u64::try_from(ticks).unwrap_or(0) * TICK_MS
}

impl ElectionModel {
    fn is_acting(&self, s: &State, i: usize) -> Option<u32> {
        let r = &s.replicas[i];
        r.acting.filter(|_| r.alive).map(|(t, _)| t)
    }

    fn pod_truth(s: &State) -> Vec<bool> {
        s.replicas
            .iter()
            .map(|p| !p.alive || p.pod_deleting)
            .collect()
    }

    fn decision(&self, s: &State, i: usize) -> Decision {
        let r = &s.replicas[i];
        let me = Me {
            identity: format!("r{i}_{}", r.inc),
            pod: format!("r{i}"),
        };
        let (view, holder_pod) = match &r.view {
            None | Some(View { record: None, .. }) => (None, PodHealth::Unknown),
            Some(View {
                record: Some(rec),
                age,
                ..
            }) => {
                let health = match (rec.holder, &r.pods_seen) {
                    (Some((j, _)), Some(seen)) if self.death_signals => {
                        if seen[usize::from(j)] {
                            PodHealth::Dead(DeathCause::Deleted)
                        } else {
                            PodHealth::Alive
                        }
                    }
                    _ => PodHealth::Unknown,
                };
                let view = LeaseView {
                    holder: rec.holder.map(|(j, inc)| Holder {
                        identity: format!("r{j}_{inc}"),
                        pod: Some(format!("r{j}")),
                    }),
                    term: Term::new(rec.term),
                    lease_duration_ms: ms(LD),
                    observed_at: ms(BASE - age),
                };
                (Some(view), health)
            }
        };
        let obs = Observation {
            holder_pod,
            acting: r.acting.map(|(t, left)| (Term::new(t), ms(BASE + left))),
            shutting_down: r.shutting,
            term_floor: 0,
        };
        match decide_leadership(view.as_ref(), &me, &obs, ms(BASE)) {
            Decision::Acquire { term, .. } if term.get() > self.max_term => {
                Decision::StandBy { recheck_at: None }
            }
            d => d,
        }
    }

    /// Ghost bookkeeping after every transition.
    fn audit(&self, before: &State, after: &mut State) {
        for i in 0..after.replicas.len() {
            let was = self.is_acting(before, i);
            let is = self.is_acting(after, i);
            if let Some(t) = was
                && is != Some(t)
            {
                after.ended.insert(t);
            }
            if let Some(t) = is {
                let me = (i as u8, after.replicas[i].inc);
                if *after.owners.entry(t).or_insert(me) != me {
                    after
                        .violation
                        .get_or_insert("two processes acted in one term");
                }
                if after.ended.contains(&t) && was != Some(t) {
                    after.violation.get_or_insert("a term was acted in twice");
                }
            }
        }
        let acting: Vec<u32> = (0..after.replicas.len())
            .filter_map(|i| self.is_acting(after, i))
            .collect();
        if acting.len() > 1 {
            let newest = acting.iter().copied().max().unwrap_or(0);
            let current = after.lease.map_or(0, |r| r.term);
            let excused = self.death_signals
                && after.death_terms.contains(&newest)
                && acting.iter().all(|t| *t == newest || *t < current);
            if !excused {
                after
                    .violation
                    .get_or_insert("two processes acting at once");
            }
        }
    }
}

impl Model for ElectionModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let replica = Replica {
            alive: true,
            inc: 0,
            offset: 0,
            view: None,
            pods_seen: None,
            acting: None,
            write: None,
            shutting: false,
            done: false,
            pod_deleting: false,
        };
        vec![State {
            lease: None,
            replicas: vec![replica; self.replicas],
            crashes_left: self.crashes,
            deletions_left: self.deletions,
            owners: BTreeMap::new(),
            ended: BTreeSet::new(),
            death_terms: BTreeSet::new(),
            violation: None,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.violation.is_some() {
            return;
        }
        // Each clock advances 0, 1 or 2 ticks per real tick, keeping its offset in bounds.
        let mut choices: Vec<Vec<i64>> = vec![Vec::new()];
        for r in &s.replicas {
            let steps: Vec<i64> = (0..=2)
                .filter(|d| (-self.skew..=0).contains(&(r.offset + d - 1)))
                .collect();
            choices = choices
                .into_iter()
                .flat_map(|c| {
                    steps.iter().map(move |d| {
                        let mut c = c.clone();
                        c.push(*d);
                        c
                    })
                })
                .collect();
        }
        actions.extend(choices.into_iter().map(Action::Tick));
        let truth = Self::pod_truth(s);
        for (i, r) in s.replicas.iter().enumerate() {
            if let Some(w) = &r.write {
                match w.arrived {
                    None => actions.push(Action::Arrive(i)),
                    Some(_) => {
                        actions.push(Action::Respond(i));
                        actions.push(Action::LoseResponse(i));
                    }
                }
            }
            if !r.alive {
                actions.push(Action::Restart(i));
                continue;
            }
            if r.done {
                continue;
            }
            if r.write.is_none() && !matches!(self.decision(s, i), Decision::StandBy { .. }) {
                actions.push(Action::Decide(i));
            }
            if !r.view.as_ref().is_some_and(|v| v.current) {
                actions.push(Action::ObserveLease(i));
            }
            if self.death_signals
                && (r.pods_seen.as_ref() != Some(&truth) || (r.pod_deleting && !r.shutting))
            {
                actions.push(Action::ObservePods(i));
            }
            if s.crashes_left > 0 {
                actions.push(Action::Crash(i));
            }
            if s.deletions_left > 0 && !r.pod_deleting {
                actions.push(Action::DeletePod(i));
            }
            if r.pod_deleting && !r.shutting {
                actions.push(Action::Sigterm(i));
            }
        }
    }

    fn next_state(&self, before: &State, action: Action) -> Option<State> {
        let mut s = before.clone();
        match action {
            Action::Tick(steps) => {
                for (r, d) in s.replicas.iter_mut().zip(steps) {
                    r.offset += d - 1;
                    if let Some(v) = r.view.as_mut() {
                        v.age = (v.age + d).min(LD);
                    }
                    if let Some(w) = r.write.as_mut() {
                        w.sent_age = (w.sent_age + d).min(RD);
                    }
                    r.acting = r
                        .acting
                        .map(|(t, left)| (t, left - d))
                        .filter(|(_, left)| *left > 0);
                }
            }
            Action::Decide(i) => {
                let decision = self.decision(&s, i);
                let base_current = s.replicas[i].view.as_ref().is_some_and(|v| v.current);
                let r = &mut s.replicas[i];
                let kind = match decision {
                    Decision::Acquire { term, reason } => Kind::Acquire {
                        term: term.get(),
                        via_death: matches!(reason, AcquireReason::HolderDead(_)),
                    },
                    Decision::Renew { term } => Kind::Renew { term: term.get() },
                    Decision::Release { .. } => {
                        r.acting = None;
                        r.done = true;
                        Kind::Release
                    }
                    Decision::StandBy { .. } => return None,
                };
                r.write = Some(Write {
                    inc: r.inc,
                    kind,
                    base_current,
                    sent_age: 0,
                    arrived: None,
                });
            }
            Action::Arrive(i) => {
                let w = s.replicas[i].write.clone()?;
                let ok = w.base_current;
                if ok {
                    let rec = match w.kind {
                        Kind::Acquire { term, via_death } => {
                            if via_death {
                                s.death_terms.insert(term);
                            }
                            Record {
                                holder: Some((i as u8, w.inc)),
                                term,
                            }
                        }
                        Kind::Renew { term } => Record {
                            holder: Some((i as u8, w.inc)),
                            term,
                        },
                        Kind::Release => Record {
                            holder: None,
                            term: s.lease.map_or(0, |r| r.term),
                        },
                    };
                    s.lease = Some(rec);
                    // Every other view and in-flight CAS is now based on an old version.
                    for r in &mut s.replicas {
                        if let Some(v) = r.view.as_mut() {
                            v.current = false;
                        }
                        if let Some(o) = r.write.as_mut() {
                            o.base_current = false;
                        }
                    }
                }
                let r = &mut s.replicas[i];
                if w.inc != r.inc || !r.alive {
                    // The writer died meanwhile: nobody is there to receive the response.
                    r.write = None;
                } else if let Some(w) = r.write.as_mut() {
                    w.arrived = Some(ok);
                }
            }
            Action::Respond(i) => {
                let lease = s.lease;
                let r = &mut s.replicas[i];
                let w = r.write.take()?;
                let fresh = View {
                    record: lease,
                    age: 0,
                    current: true,
                };
                match (w.kind, w.arrived) {
                    (Kind::Acquire { term, .. }, Some(true)) => {
                        // The view is what we wrote, possibly already overwritten since.
                        r.view = Some(View {
                            record: Some(Record {
                                holder: Some((i as u8, w.inc)),
                                term,
                            }),
                            age: 0,
                            current: lease
                                == Some(Record {
                                    holder: Some((i as u8, w.inc)),
                                    term,
                                }),
                        });
                        if !r.shutting && w.sent_age < RD {
                            r.acting = Some((term, RD - w.sent_age));
                        }
                    }
                    (Kind::Renew { term }, Some(true)) => {
                        r.view = Some(View {
                            record: Some(Record {
                                holder: Some((i as u8, w.inc)),
                                term,
                            }),
                            age: 0,
                            current: lease
                                == Some(Record {
                                    holder: Some((i as u8, w.inc)),
                                    term,
                                }),
                        });
                        // Extend only the interval still running.
                        if r.acting.is_some_and(|(t, _)| t == term) && !r.shutting {
                            r.acting = Some((term, RD - w.sent_age));
                        }
                    }
                    (Kind::Release, _) => {}
                    // Conflict: the runtime re-reads the Lease at once.
                    _ => {
                        if !r.view.as_ref().is_some_and(|v| v.current) {
                            r.view = Some(fresh);
                        }
                        drop_if_not_holder(r, i);
                    }
                }
                r.acting = r.acting.filter(|(_, left)| *left > 0);
            }
            Action::LoseResponse(i) => {
                s.replicas[i].write = None;
            }
            Action::ObserveLease(i) => {
                let lease = s.lease;
                let r = &mut s.replicas[i];
                r.view = Some(View {
                    record: lease,
                    age: 0,
                    current: true,
                });
                drop_if_not_holder(r, i);
            }
            Action::ObservePods(i) => {
                let truth = Self::pod_truth(&s);
                let r = &mut s.replicas[i];
                r.pods_seen = Some(truth);
                if r.pod_deleting {
                    r.shutting = true;
                    r.acting = None;
                }
            }
            Action::Crash(i) => {
                s.crashes_left -= 1;
                let r = &mut s.replicas[i];
                r.alive = false;
                r.acting = None;
            }
            Action::Restart(i) => {
                let r = &mut s.replicas[i];
                *r = Replica {
                    alive: true,
                    inc: r.inc + 1,
                    offset: r.offset,
                    view: None,
                    pods_seen: None,
                    acting: None,
                    // A request sent before the crash may still arrive.
                    write: r.write.take().filter(|w| w.arrived.is_none()),
                    shutting: false,
                    done: false,
                    pod_deleting: r.pod_deleting,
                };
            }
            Action::DeletePod(i) => {
                s.deletions_left -= 1;
                s.replicas[i].pod_deleting = true;
            }
            Action::Sigterm(i) => {
                let r = &mut s.replicas[i];
                r.shutting = true;
                r.acting = None;
            }
        }
        self.audit(before, &mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("safety", |_, s: &State| s.violation.is_none()),
            // Non-vacuity: the interesting things do happen.
            Property::sometimes("a takeover by another replica", |_, s: &State| {
                s.owners
                    .values()
                    .map(|(r, _)| *r)
                    .collect::<BTreeSet<_>>()
                    .len()
                    > 1
            }),
        ]
    }
}

/// A replica that learns the Lease is not its own stops acting at once.
fn drop_if_not_holder(r: &mut Replica, i: usize) {
    let holder = r
        .view
        .as_ref()
        .and_then(|v| v.record)
        .and_then(|rec| rec.holder);
    if holder != Some((i as u8, r.inc)) {
        r.acting = None;
    }
}

fn check(model: ElectionModel) -> impl Checker<ElectionModel> {
    model.checker().threads(2).spawn_bfs().join()
}

// Sizes: strict/no faults ~190k states; death signals with a pod deletion ~2.0M; with a crash
// ~2.0M; strict with a crash and clock error ~1.4M. The workspace's dev profile optimizes
// stateright and this crate, so all of them run in the ordinary `cargo test` (under a minute
// together on 2 cores).

/// Timing argument alone: CAS, late writes, lost responses, stale views and clock error up to
/// the bound; no death signals, so two processes must never act at the same instant.
#[test]
fn strict_exclusion_with_clock_error_within_the_bound() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 1,
        max_term: 2,
        death_signals: false,
        crashes: 0,
        deletions: 0,
    });
    c.assert_properties();
}

/// Leader pod deleted while its process keeps running until it notices (or gets SIGTERM):
/// the standby takes over on the signal; overlap only with the old term already superseded.
#[test]
fn takeover_on_pod_deletion_is_safe() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 0,
        max_term: 2,
        death_signals: true,
        crashes: 0,
        deletions: 1,
    });
    c.assert_properties();
}

/// The acting process crashes (its pod survives) and restarts as a new incarnation that
/// re-acquires, racing the standby's takeover on "container terminated".
#[test]
fn crash_and_restart_race_is_safe() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 0,
        max_term: 2,
        death_signals: true,
        crashes: 1,
        deletions: 0,
    });
    c.assert_properties();
}

/// A crash with clock error and no death signals: still strict exclusion.
#[test]
fn crash_with_clock_error_keeps_strict_exclusion() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 1,
        max_term: 2,
        death_signals: false,
        crashes: 1,
        deletions: 0,
    });
    c.assert_properties();
}

/// The model is not vacuous: with clocks off by more than the documented bound, the
/// expiry-based takeover overlaps with the old leader and the checker finds it.
#[test]
fn clock_error_beyond_the_bound_breaks_exclusion() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 2,
        max_term: 2,
        death_signals: false,
        crashes: 0,
        deletions: 0,
    });
    assert!(c.discovery("safety").is_some());
}
