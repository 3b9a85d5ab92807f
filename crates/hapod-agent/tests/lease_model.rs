//! Exhaustive model check (stateright) of the application lease of protocol version 2
//! (`docs/fencing.md`), with the agents running the real [`LeaseHolder`].
//!
//! Property: **never two agents acting active at the same real instant**, where acting active
//! is what the application is told, `LeaseHolder::role(now) == Some(Active)` on the agent's own
//! clock.
//!
//! What is modelled:
//! - Real time in whole ticks up to a horizon. Every process has its own monotonic clock; a
//!   tick is `NOMINAL` ms of local time at the nominal rate.
//! - Two agents (pods 0 and 1) that answer every order they apply with a report (as the
//!   agent's receive loop does: stale orders get none), and may restart: a new incarnation, a
//!   new `LeaseHolder` whose epoch floor is the epoch file (written before every new epoch is
//!   applied).
//! - The network: orders and reports in flight as a set; any of them may be delivered at any
//!   time and stays in flight (delay, reordering, duplication) until it is lost (loss). At
//!   most `capacity` datagrams are in flight: a send into a full network is a loss.
//! - Controllers following the rule below; one controller change: a second replica takes over
//!   with a higher term, knowing nothing of the first one's grants, while the first one goes
//!   on sending (renewing its grant) for up to `window` ticks after the takeover (the end of
//!   its fence in the worst case).
//! - Initially the first controller has made pod 0 active with a grant pod 0 has applied.
//!
//! The controller rule (what the controller's version 2 sender is to implement):
//! - Every order carries the controller's current epoch `(term << 32) | seq`; every decision
//!   (choosing a pod to make active, promoting it) takes a new epoch, so the demotion of the
//!   others and the promotion are separate epochs.
//! - It sends orders to the pods whenever it likes (heartbeats). The pod it has promoted gets
//!   an active order whose grant echoes the newest (last received) report it has from that
//!   pod; every other pod gets a standby order. For each grant it sends it records
//!   `live_until = send + ceil(L × (1 + ρ))` on its own clock.
//! - It promotes pod `p` only when, for every other pod `q`, either `q` has reported standby
//!   at an epoch at least that of the decision that demoted it, or both: no grant it sent to
//!   `q` is live any more, and it has been acting for at least `ceil((L + W) × (1 + ρ))` on
//!   its own clock, `W` being the longest time its predecessor may still send after the
//!   takeover (for the first controller there is no predecessor).
//!
//! Clock drift: each process's clock runs at a fixed rate, slow (`1 − ρ`) or fast (`1 + ρ`),
//! with ρ = 1/4 so that the drift is visible in whole ticks: a tick is 6 ms on a slow clock,
//! 8 ms nominal, 10 ms on a fast one; L = 16 ms (2 ticks), so an agent ends its grant 12 ms
//! after the stamp and a controller counts a grant for 20 ms. Why fixed rates at the
//! extremes are enough: time enters the safety argument only through the two interval
//! bounds of `docs/fencing.md` (the agent stops by `s + L` real time, the controller counts a
//! grant until at least `o + L`), everything else being order of events, which the model
//! explores freely. Slow agents and fast controllers meet both bounds exactly (12 ms at 6
//! ms/tick = 2 ticks, 20 ms at 10 ms/tick = 2 ticks), which is the worst case; rates that
//! change over time lie in between and only make the agent stop earlier or the controller
//! wait longer. All events happen on tick boundaries, and the agent's bound (active while
//! `now < end`) and the controller's (over once `now >= live_until`) are whole ticks at the
//! extreme rates, so a lapse and a promotion at the same tick are ordered as in continuous
//! time. The property test `the_agent_stops_before_the_controller_counts_the_grant_as_over`
//! (`hapod_agent::lease`) checks the arithmetic itself at realistic ρ over random rates.
//!
//! Non-vacuity: `sometimes` properties (an agent acts, a failover completes, the new
//! controller's promotion is acted on), and flawed variants for which the checker must find
//! two agents active at once.

use std::num::NonZeroU64;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hapod_agent::lease::{LeaseHolder, OrderVerdict};
use hapod_protocol::{AgentRole, Grant, Order, Role};
use stateright::{Checker, Model, Property};

/// The origin of every clock in the model: local time `x` ms is `BASE + x`.
static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Local ms per real tick at the nominal rate, and at the extremes of ρ = 1/4.
const NOMINAL: u64 = 8;
const SLOW: u64 = 6;
const FAST: u64 = 10;
/// ρ = 1/4 in parts per million.
const DRIFT_PPM: u32 = 250_000;
/// L: the grant's lease, 2 ticks at the nominal rate.
const LEASE_MS: u32 = 16;

const PODS: usize = 2;
const UIDS: [&str; PODS] = ["uid-0", "uid-1"];

/// `ceil(ms × (1 + ρ))`: how long the controller counts an interval of `ms`.
fn controller_span(ms: u64, drift_ppm: u32) -> u64 {
    (ms * (1_000_000 + u64::from(drift_ppm))).div_ceil(1_000_000)
}

fn epoch(term: u64, seq: u64) -> u64 {
    (term << 32) | seq
}

/// A deliberate flaw, for the checks that must fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// The agent measures the lease from the order's arrival, not from the echoed stamp.
    ReceiptClock,
    /// Neither side applies the drift allowance (the agent acts for the full lease, the
    /// controller counts just the lease).
    NoDriftAllowance,
    /// The new controller waits only `L × (1 + ρ)` after the takeover, forgetting that its
    /// predecessor may still send for `W`.
    ForgetsPredecessor,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    Order {
        from: usize,
        pod: usize,
        active: bool,
        epoch: u64,
        /// Echoed (incarnation, stamp nanos).
        grant: Option<(u64, u64)>,
    },
    Report {
        to: usize,
        pod: usize,
        epoch: u64,
        standby: bool,
        incarnation: u64,
        stamp: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Agent {
    holder: LeaseHolder,
    epoch_file: u64,
    incarnations: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Status {
    /// Not leader yet (the second replica before the takeover).
    Idle,
    Acting,
    /// Lost the leadership; still sends until `window` ticks after the takeover.
    Deposed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Ctrl {
    status: Status,
    term: u64,
    seq: u64,
    /// The pod chosen to be active, and whether it was promoted (active orders go out).
    target: Option<usize>,
    promoted: bool,
    /// Epoch of the decision that chose `target`: every other pod was demoted by it.
    demoted_at: u64,
    /// Pods that reported standby at an epoch >= `demoted_at`.
    confirmed: [bool; PODS],
    /// Local ms until which a grant sent to the pod may be live.
    live_until: [u64; PODS],
    /// The last report received from each pod: (incarnation, stamp nanos).
    echo: [Option<(u64, u64)>; PODS],
    /// Local ms before which no promotion (no predecessor's grant may be live before).
    quiet_until: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u64,
    agents: [Agent; PODS],
    ctrls: [Ctrl; 2],
    /// Sorted, without repeats.
    net: Vec<Msg>,
    restarts_left: u8,
    takeover_at: Option<u64>,
    // Ghost state for the properties.
    last_active: Option<usize>,
    failover: bool,
    successor_acted_on: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    Takeover,
    /// Controller `c` chooses pod `p` to be active (a new epoch demoting the others).
    Choose(usize, usize),
    /// Controller `c` promotes its chosen pod (a new epoch; again after a restart).
    Promote(usize),
    Send(usize, usize),
    Deliver(usize),
    Lose(usize),
    Restart(usize),
}

struct LeaseModel {
    horizon: u64,
    /// W: ticks the deposed controller may still send after the takeover.
    window: u64,
    agent_rate: [u64; PODS],
    ctrl_rate: [u64; 2],
    takeover: bool,
    restarts: u8,
    /// Decisions (choices and promotions) of the first controller after the initial state,
    /// and of the second.
    first_decisions: u64,
    decisions: u64,
    capacity: usize,
    flaw: Flaw,
}

impl LeaseModel {
    fn drift_ppm(&self) -> u32 {
        if self.flaw == Flaw::NoDriftAllowance {
            0
        } else {
            DRIFT_PPM
        }
    }

    fn agent_now(&self, s: &State, pod: usize) -> Instant {
        *BASE + Duration::from_millis(self.agent_rate[pod] * s.now)
    }

    fn ctrl_now(&self, s: &State, c: usize) -> u64 {
        self.ctrl_rate[c] * s.now
    }

    fn acting(&self, s: &State) -> Vec<usize> {
        (0..PODS)
            .filter(|&i| s.agents[i].holder.role(self.agent_now(s, i)) == Some(Role::Active))
            .collect()
    }

    fn holder(&self, pod: usize, incarnations: u64, floor: u64, now: Instant) -> LeaseHolder {
        let incarnation =
            NonZeroU64::new(pod as u64 * 1000 + incarnations + 1).unwrap_or(NonZeroU64::MIN);
        LeaseHolder::with_incarnation(
            incarnation,
            Some(UIDS[pod].into()),
            floor,
            self.drift_ppm(),
            now,
        )
    }

    fn may_act(&self, s: &State, c: usize) -> bool {
        match s.ctrls[c].status {
            Status::Idle => false,
            Status::Acting => true,
            Status::Deposed => s.takeover_at.is_some_and(|t| s.now <= t + self.window),
        }
    }

    /// The promotion rule.
    fn may_promote(&self, s: &State, c: usize) -> bool {
        let ctrl = &s.ctrls[c];
        let Some(p) = ctrl.target else {
            return false;
        };
        let now = self.ctrl_now(s, c);
        (0..PODS)
            .filter(|&q| q != p)
            .all(|q| ctrl.confirmed[q] || (now >= ctrl.live_until[q] && now >= ctrl.quiet_until))
    }

    fn send(&self, s: &mut State, msg: Msg) {
        if let Err(at) = s.net.binary_search(&msg)
            && s.net.len() < self.capacity
        {
            s.net.insert(at, msg);
        }
    }

    fn deliver_order(&self, s: &mut State, msg: &Msg) {
        let Msg::Order {
            from,
            pod,
            active,
            epoch,
            grant,
        } = *msg
        else {
            return;
        };
        let now = self.agent_now(s, pod);
        let agent = &mut s.agents[pod];
        let grant = grant.map(|(incarnation, stamp)| Grant {
            incarnation,
            stamp_nanos: if self.flaw == Flaw::ReceiptClock {
                agent.holder.report(0, now).stamp_nanos
            } else {
                stamp
            },
            lease_millis: LEASE_MS,
        });
        let role = if active { Role::Active } else { Role::Standby };
        let order = Order::new("g", format!("p{pod}"), UIDS[pod], role, epoch, grant);
        match agent.holder.judge(&order) {
            OrderVerdict::NewEpoch => agent.epoch_file = epoch,
            OrderVerdict::SameEpoch => {}
            // The real agent also reports on a stale order (so its sender learns the epoch);
            // leaving that out here only removes behaviour, never adds an acting agent.
            OrderVerdict::WrongUid | OrderVerdict::Stale => return,
        }
        agent.holder.apply(&order);
        let report = agent.holder.report(0, now);
        self.send(
            s,
            Msg::Report {
                to: from,
                pod,
                epoch: report.epoch,
                standby: report.role == Some(AgentRole::Standby),
                incarnation: report.incarnation,
                stamp: report.stamp_nanos,
            },
        );
    }

    fn deliver_report(&self, s: &mut State, msg: &Msg) {
        let Msg::Report {
            to,
            pod,
            epoch,
            standby,
            incarnation,
            stamp,
        } = *msg
        else {
            return;
        };
        if !self.may_act(s, to) {
            return;
        }
        let ctrl = &mut s.ctrls[to];
        ctrl.echo[pod] = Some((incarnation, stamp));
        if standby && ctrl.target != Some(pod) && epoch >= ctrl.demoted_at {
            ctrl.confirmed[pod] = true;
        }
    }
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let ctrl = |status, term| Ctrl {
            status,
            term,
            seq: 0,
            target: None,
            promoted: false,
            demoted_at: 0,
            confirmed: [false; PODS],
            live_until: [0; PODS],
            echo: [None; PODS],
            quiet_until: 0,
        };
        // The first controller has made pod 0 active at epoch (1, 2) with a grant echoing
        // its report at time 0, which pod 0 has applied; pod 1 was demoted at (1, 1).
        let first = epoch(1, 2);
        let grant = Grant {
            incarnation: self.holder(0, 0, 0, *BASE).report(0, *BASE).incarnation,
            stamp_nanos: 0,
            lease_millis: LEASE_MS,
        };
        let mut agent0 = self.holder(0, 0, 0, *BASE);
        agent0.apply(&Order::new(
            "g",
            "p0",
            UIDS[0],
            Role::Active,
            first,
            Some(grant),
        ));
        let mut agent1 = self.holder(1, 0, 0, *BASE);
        agent1.apply(&Order::new("g", "p1", UIDS[1], Role::Standby, first, None));
        let mut ctrl0 = ctrl(Status::Acting, 1);
        ctrl0.seq = 2;
        ctrl0.target = Some(0);
        ctrl0.promoted = true;
        ctrl0.demoted_at = epoch(1, 1);
        ctrl0.confirmed = [false, true];
        ctrl0.live_until[0] = controller_span(u64::from(LEASE_MS), self.drift_ppm());
        ctrl0.echo[0] = Some((grant.incarnation, 0));
        let agent = |holder| Agent {
            holder,
            epoch_file: first,
            incarnations: 0,
        };
        vec![State {
            now: 0,
            agents: [agent(agent0), agent(agent1)],
            ctrls: [ctrl0, ctrl(Status::Idle, 2)],
            net: Vec::new(),
            restarts_left: self.restarts,
            takeover_at: None,
            last_active: Some(0),
            failover: false,
            successor_acted_on: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < self.horizon {
            actions.push(Action::Tick);
        }
        // At tick 0, when the first controller's grant to pod 0 is as fresh as it gets (the
        // model is the same at any later tick, shifted).
        if self.takeover && s.takeover_at.is_none() && s.now == 0 {
            actions.push(Action::Takeover);
        }
        for c in 0..2 {
            if !self.may_act(s, c) {
                continue;
            }
            let ctrl = &s.ctrls[c];
            // The first controller starts at seq 2 (its first two decisions are in the initial
            // state).
            let decisions = [self.first_decisions + 2, self.decisions][c];
            if ctrl.seq < decisions {
                for p in 0..PODS {
                    if ctrl.target != Some(p) {
                        actions.push(Action::Choose(c, p));
                    }
                }
                if self.may_promote(s, c) {
                    actions.push(Action::Promote(c));
                }
            }
            if ctrl.target.is_some() {
                for p in 0..PODS {
                    actions.push(Action::Send(c, p));
                }
            }
        }
        for i in 0..s.net.len() {
            actions.push(Action::Deliver(i));
            actions.push(Action::Lose(i));
        }
        if s.restarts_left > 0 {
            for p in 0..PODS {
                actions.push(Action::Restart(p));
            }
        }
    }

    fn next_state(&self, before: &State, action: Action) -> Option<State> {
        let mut s = before.clone();
        match action {
            Action::Tick => s.now += 1,
            Action::Takeover => {
                s.takeover_at = Some(s.now);
                s.ctrls[0].status = Status::Deposed;
                let predecessor_ms = if self.flaw == Flaw::ForgetsPredecessor {
                    0
                } else {
                    self.window * NOMINAL
                };
                let quiet = self.ctrl_now(&s, 1)
                    + controller_span(u64::from(LEASE_MS) + predecessor_ms, self.drift_ppm());
                let ctrl = &mut s.ctrls[1];
                ctrl.status = Status::Acting;
                ctrl.quiet_until = quiet;
            }
            Action::Choose(c, p) => {
                let ctrl = &mut s.ctrls[c];
                ctrl.seq += 1;
                ctrl.target = Some(p);
                ctrl.promoted = false;
                ctrl.demoted_at = epoch(ctrl.term, ctrl.seq);
                ctrl.confirmed = [false; PODS];
            }
            Action::Promote(c) => {
                let ctrl = &mut s.ctrls[c];
                ctrl.seq += 1;
                ctrl.promoted = true;
            }
            Action::Send(c, pod) => {
                let now = self.ctrl_now(&s, c);
                let span = controller_span(u64::from(LEASE_MS), self.drift_ppm());
                let ctrl = &mut s.ctrls[c];
                let active = ctrl.target == Some(pod) && ctrl.promoted;
                let grant = ctrl.echo[pod].filter(|_| active);
                if grant.is_some() {
                    ctrl.live_until[pod] = ctrl.live_until[pod].max(now + span);
                }
                let msg = Msg::Order {
                    from: c,
                    pod,
                    active,
                    epoch: epoch(ctrl.term, ctrl.seq),
                    grant,
                };
                self.send(&mut s, msg);
            }
            Action::Deliver(i) => {
                let msg = s.net[i].clone();
                match msg {
                    Msg::Order { .. } => self.deliver_order(&mut s, &msg),
                    Msg::Report { .. } => self.deliver_report(&mut s, &msg),
                }
            }
            Action::Lose(i) => {
                s.net.remove(i);
            }
            Action::Restart(pod) => {
                s.restarts_left -= 1;
                let now = self.agent_now(&s, pod);
                let agent = &mut s.agents[pod];
                agent.incarnations += 1;
                agent.holder = self.holder(pod, agent.incarnations, agent.epoch_file, now);
            }
        }
        if let [only] = self.acting(&s)[..] {
            if s.last_active.is_some_and(|last| last != only) {
                s.failover = true;
            }
            s.last_active = Some(only);
            if s.agents[only].holder.epoch() >> 32 == 2 {
                s.successor_acted_on = true;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("never two agents active at once", |m: &Self, s: &State| {
                m.acting(s).len() <= 1
            }),
            Property::sometimes("an agent acts active", |m: &Self, s: &State| {
                !m.acting(s).is_empty()
            }),
            Property::sometimes("a failover completes", |_, s: &State| s.failover),
        ];
        if self.takeover {
            properties.push(Property::sometimes(
                "the new controller's promotion is acted on",
                |_, s: &State| s.successor_acted_on,
            ));
        }
        properties
    }
}

// Sizes (dev profile, 2 threads): controller change ~741k states (~10 s), agent restarts
// ~799k states (~6 s); the flawed variants stop at their counterexample (under 2 s each).

/// The controller change at tick 0 (a later one is the same model shifted in time): the first
/// controller keeps renewing pod 0's grant for `W` = 1 tick after it, the second one chooses
/// and promotes either pod.
fn takeover(flaw: Flaw) -> LeaseModel {
    LeaseModel {
        horizon: 3,
        window: 1,
        agent_rate: [SLOW, SLOW],
        ctrl_rate: [FAST, FAST],
        takeover: true,
        restarts: 0,
        first_decisions: 0,
        decisions: 2,
        capacity: 2,
        flaw,
    }
}

/// One controller failing over (choice, promotion), one agent restart at any point.
fn restart(flaw: Flaw) -> LeaseModel {
    LeaseModel {
        horizon: 2,
        window: 0,
        takeover: false,
        restarts: 1,
        first_decisions: 2,
        decisions: 0,
        ..takeover(flaw)
    }
}

fn check(model: LeaseModel) -> impl Checker<LeaseModel> {
    let started = Instant::now();
    let c = model.checker().threads(2).spawn_bfs().join();
    eprintln!(
        "{} unique states in {:?}",
        c.unique_state_count(),
        started.elapsed()
    );
    c
}

#[test]
fn the_discretization_meets_the_bounds_exactly_at_the_extreme_rates() {
    // The agent ends 12 ms after the stamp: 2 ticks on a slow clock, less on a fast one.
    let agent_ms = u64::from(LEASE_MS) * u64::from(1_000_000 - DRIFT_PPM) / 1_000_000;
    assert_eq!(agent_ms, 12);
    assert_eq!(agent_ms.div_ceil(SLOW), 2);
    // The controller counts 20 ms: 2 ticks on a fast clock, more on a slow one.
    assert_eq!(controller_span(u64::from(LEASE_MS), DRIFT_PPM), 20);
    assert_eq!(20 / FAST, 2);
    assert_eq!(u64::from(LEASE_MS) / NOMINAL, 2);
}

#[test]
fn two_agents_never_act_at_once_across_a_controller_change() {
    check(takeover(Flaw::None)).assert_properties();
}

#[test]
fn two_agents_never_act_at_once_across_agent_restarts() {
    check(restart(Flaw::None)).assert_properties();
}

#[test]
fn measuring_from_the_arrival_breaks_exclusion() {
    let c = check(restart(Flaw::ReceiptClock));
    c.assert_any_discovery("never two agents active at once");
}

#[test]
fn leaving_out_the_drift_allowance_breaks_exclusion() {
    let c = check(restart(Flaw::NoDriftAllowance));
    c.assert_any_discovery("never two agents active at once");
}

#[test]
fn forgetting_the_predecessors_window_breaks_exclusion() {
    let c = check(takeover(Flaw::ForgetsPredecessor));
    c.assert_any_discovery("never two agents active at once");
}
