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
    decide,
};
use stateright::{Checker, Model, Property};

const TICK_MS: u64 = 500;
/// Lease duration and renew deadline of the model, in ticks (2000 ms / 1000 ms).
const LD: i64 = 4;
const RD: i64 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// Version the CAS is based on (0 = the Lease does not exist: create).
    base: usize,
    sent_local: i64,
    /// `None` until it reached the API server, then whether the CAS succeeded.
    arrived: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replica {
    alive: bool,
    inc: u8,
    /// local clock = real time + offset, offset in [-skew, 0].
    offset: i64,
    /// Lease version seen (0 = seen absent) and the local time it was first seen.
    view: Option<(usize, i64)>,
    /// This replica's last look at the other pods: dead or not.
    pods_seen: Option<Vec<bool>>,
    acting: Option<(u32, i64)>,
    write: Option<Write>,
    shutting: bool,
    done: bool,
    pod_deleting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: i64,
    /// Lease versions; the current one is the last. Empty = no Lease object.
    history: Vec<Record>,
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
    /// Real time advances one tick; each replica's clock advances by 0, 1 or 2 ticks.
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
    max_time: i64,
    death_signals: bool,
    crashes: u8,
    deletions: u8,
}

impl ElectionModel {
    fn local(&self, s: &State, i: usize) -> i64 {
        s.now + s.replicas[i].offset
    }

    fn is_acting(&self, s: &State, i: usize) -> Option<u32> {
        let r = &s.replicas[i];
        match r.acting {
            Some((term, deadline)) if r.alive && self.local(s, i) < deadline => Some(term),
            _ => None,
        }
    }

    fn ms(local: i64) -> u64 {
        u64::try_from(local).unwrap_or(0) * TICK_MS
    }

    fn decision(&self, s: &State, i: usize) -> Decision {
        let r = &s.replicas[i];
        let me = Me {
            identity: format!("r{i}_{}", r.inc),
            pod: format!("r{i}"),
        };
        let (view, holder_pod) = match r.view {
            None | Some((0, _)) => (None, PodHealth::Unknown),
            Some((v, seen_at)) => {
                let rec = &s.history[v - 1];
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
                    lease_duration_ms: LD as u64 * TICK_MS,
                    observed_at: Self::ms(seen_at),
                };
                (Some(view), health)
            }
        };
        let obs = Observation {
            holder_pod,
            acting: r.acting.map(|(t, d)| (Term::new(t), Self::ms(d))),
            shutting_down: r.shutting,
            term_floor: 0,
        };
        decide(view.as_ref(), &me, &obs, Self::ms(self.local(s, i)))
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
            let current = after.history.last().map_or(0, |r| r.term);
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
            now: 0,
            history: Vec::new(),
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
        if s.now < self.max_time {
            // Each clock may advance 0, 1 or 2 ticks as long as its offset stays in bounds.
            let mut choices: Vec<Vec<i64>> = vec![Vec::new()];
            for r in &s.replicas {
                let steps: Vec<i64> = (0..=2)
                    .filter(|d| {
                        let off = r.offset + d - 1;
                        (-self.skew..=0).contains(&off)
                    })
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
        }
        for (i, r) in s.replicas.iter().enumerate() {
            if let Some(w) = &r.write {
                match w.arrived {
                    None => actions.push(Action::Arrive(i)),
                    Some(_) if r.alive && w.inc == r.inc => {
                        actions.push(Action::Respond(i));
                        actions.push(Action::LoseResponse(i));
                    }
                    Some(_) => {}
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
            let current = s.history.len();
            if r.view.map(|(v, _)| v) != Some(current) {
                actions.push(Action::ObserveLease(i));
            }
            if self.death_signals {
                let truth: Vec<bool> = s
                    .replicas
                    .iter()
                    .map(|p| !p.alive || p.pod_deleting)
                    .collect();
                if r.pods_seen.as_ref() != Some(&truth) || (r.pod_deleting && !r.shutting) {
                    actions.push(Action::ObservePods(i));
                }
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
                s.now += 1;
                for (r, d) in s.replicas.iter_mut().zip(steps) {
                    r.offset += d - 1;
                }
            }
            Action::Decide(i) => {
                let local = self.local(&s, i);
                let decision = self.decision(&s, i);
                let base = s.replicas[i].view.map_or(0, |(v, _)| v);
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
                    base,
                    sent_local: local,
                    arrived: None,
                });
            }
            Action::Arrive(i) => {
                let (j, inc) = (i as u8, s.replicas[i].inc);
                let w = s.replicas[i].write.clone()?;
                s.replicas[i].write.as_mut()?.arrived = Some(w.base == s.history.len());
                let ok = w.base == s.history.len();
                if ok {
                    let prev_term = s.history.last().map_or(0, |r| r.term);
                    let rec = match w.kind {
                        Kind::Acquire { term, via_death } => {
                            if via_death {
                                s.death_terms.insert(term);
                            }
                            Record {
                                holder: Some((j, w.inc)),
                                term,
                            }
                        }
                        Kind::Renew { term } => Record {
                            holder: Some((j, w.inc)),
                            term,
                        },
                        Kind::Release => Record {
                            holder: None,
                            term: prev_term,
                        },
                    };
                    s.history.push(rec);
                }
                // The writer died meanwhile: nobody is there to receive the response.
                if w.inc != inc || !s.replicas[i].alive {
                    s.replicas[i].write = None;
                }
            }
            Action::Respond(i) => {
                let local = self.local(&s, i);
                let acting_now = self.is_acting(&s, i);
                let current = s.history.len();
                let r = &mut s.replicas[i];
                let w = r.write.take()?;
                match (w.kind, w.arrived) {
                    (Kind::Acquire { term, .. }, Some(true)) => {
                        r.view = Some((w.base + 1, local));
                        if !r.shutting {
                            r.acting = Some((term, w.sent_local + RD));
                        }
                    }
                    (Kind::Renew { term }, Some(true)) => {
                        r.view = Some((w.base + 1, local));
                        if acting_now == Some(term) && !r.shutting {
                            r.acting = Some((term, w.sent_local + RD));
                        }
                    }
                    (Kind::Release, _) => {}
                    // Conflict: the runtime re-reads the Lease at once.
                    (_, _) => {
                        if r.view.map(|(v, _)| v) != Some(current) {
                            r.view = Some((current, local));
                        }
                        drop_if_not_holder(&mut s, i);
                    }
                }
            }
            Action::LoseResponse(i) => {
                s.replicas[i].write = None;
            }
            Action::ObserveLease(i) => {
                let local = self.local(&s, i);
                let current = s.history.len();
                s.replicas[i].view = Some((current, local));
                drop_if_not_holder(&mut s, i);
            }
            Action::ObservePods(i) => {
                let truth: Vec<bool> = s
                    .replicas
                    .iter()
                    .map(|p| !p.alive || p.pod_deleting)
                    .collect();
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
fn drop_if_not_holder(s: &mut State, i: usize) {
    let inc = s.replicas[i].inc;
    let holder = s.replicas[i]
        .view
        .and_then(|(v, _)| v.checked_sub(1))
        .and_then(|v| s.history[v].holder);
    if holder != Some((i as u8, inc)) {
        s.replicas[i].acting = None;
    }
}

fn check(model: ElectionModel) -> impl Checker<ElectionModel> {
    model.checker().threads(2).spawn_bfs().join()
}

#[test]
fn two_replicas_with_crash_deletion_and_skew_are_safe() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 1,
        max_time: 7,
        death_signals: true,
        crashes: 1,
        deletions: 1,
    });
    eprintln!("states: {}", c.unique_state_count());
    c.assert_properties();
}

#[test]
fn strict_exclusion_without_death_signals() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 1,
        max_time: 9,
        death_signals: false,
        crashes: 1,
        deletions: 1,
    });
    eprintln!("states: {}", c.unique_state_count());
    c.assert_properties();
}

/// The model is not vacuous: with clocks off by more than the documented bound, the
/// expiry-based takeover overlaps with the old leader and the checker finds it.
#[test]
fn skew_beyond_the_bound_breaks_exclusion() {
    let c = check(ElectionModel {
        replicas: 2,
        skew: 2,
        max_time: 8,
        death_signals: false,
        crashes: 0,
        deletions: 0,
    });
    assert!(c.discovery("safety").is_some());
}
