//! Exhaustive model check (stateright) of two controller replicas running the real core
//! against one API server: watch events delayed, reordered and duplicated per replica, write
//! requests and their answers delayed, resourceVersion compare-and-swap on every role write,
//! pods failing, pods leaving the group and rejoining it, and leadership lost and then taken
//! by either replica (the other, or the same one again). Property: at most one pod is labeled
//! active, in every reachable state, apart from a pod a user brought back into the group still
//! labeled active (until a write resolves it).
//!
//! Leadership assumption (what the election's fencing provides): the Lease moves only when the
//! old holder has no write in flight (it stops writing at its renew deadline, before the lease
//! can expire for the other), and a new holder re-lists the pods (a new watch) before acting.
//!
//! The default bound (one fault, one duplicate, one leadership loss) runs in well under a
//! minute; `MODEL_FAULTS=2` explores two faults (minutes).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use common::{FakeApi, pod};
use hapod_core::{Action, Config, Event, GroupState, OpId, Write, WriteOutcome, decide};
use stateright::{Checker, Model, Property};

/// One fixed instant: time does not pass in the model (no transient failures, no backoff).
static NOW: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    /// Pods by name in the API, with the API's revision counter.
    pods: Vec<hapod_core::PodView>,
    revision: u64,
    /// See [`FakeApi::rejoined`].
    rejoined: BTreeSet<String>,
    replicas: [GroupState; 2],
    leader: usize,
    term: u32,
    handovers_left: u8,
    faults_left: u8,
    duplicates_left: u8,
    /// Write requests on their way to the API.
    requests: Vec<(usize, Write)>,
    /// Answers on their way back.
    answers: Vec<(usize, OpId, WriteOutcome)>,
    /// Watch events (and re-read results) on their way to each replica.
    watch: Vec<(usize, Event)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    Deliver(usize),
    DeliverDuplicate(usize),
    Execute(usize),
    Answer(usize),
    NotReady(usize),
    Delete(usize),
    Touch(usize),
    Leave(usize),
    Rejoin(usize),
    /// The leader loses the Lease and replica `r` (the other one, or the same one again)
    /// takes it in a higher term.
    Handover(usize),
}

impl World {
    fn api(&self) -> FakeApi {
        FakeApi {
            pods: self
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            revision: self.revision,
            rejoined: self.rejoined.clone(),
            promotions: Vec::new(),
        }
    }

    fn set_api(&mut self, api: FakeApi) {
        self.pods = api.pods.into_values().collect();
        self.revision = api.revision;
        self.rejoined = api.rejoined;
    }

    /// Feeds `event` to replica `r` and queues what it asks for.
    fn feed(&mut self, r: usize, event: Event) {
        for action in decide(&mut self.replicas[r], event, *NOW) {
            match action {
                Action::Write(w) => self.requests.push((r, w)),
                Action::Refresh { pod, uid } => {
                    let fresh = match self.pods.iter().find(|p| p.name == pod) {
                        Some(view) => FakeApi::event_for(view.clone()),
                        None => Event::Deleted {
                            name: pod,
                            uid,
                            resource_version: None,
                        },
                    };
                    self.watch.push((r, fresh));
                }
                _ => {}
            }
        }
    }

    /// An API change seen by both replicas' watches.
    fn broadcast(&mut self, event: Event) {
        self.watch.push((0, event.clone()));
        self.watch.push((1, event));
    }

    /// Active pods in the group, apart from ones a user brought back labeled active.
    fn actives(&self) -> usize {
        let api = self.api();
        api.actives()
            .iter()
            .filter(|a| !api.rejoined.contains(**a))
            .count()
    }
}

struct TwoReplicas {
    pods: usize,
    faults: u8,
    duplicates: u8,
    handovers: u8,
}

impl Model for TwoReplicas {
    type State = World;
    type Action = Step;

    fn init_states(&self) -> Vec<World> {
        let names = ["a", "b", "c"];
        let api = FakeApi::new((0..self.pods).map(|i| pod(names[i], i as i64)));
        let config = Arc::new(Config::default());
        let mut world = World {
            pods: Vec::new(),
            revision: 0,
            rejoined: BTreeSet::new(),
            replicas: [GroupState::new(config.clone()), GroupState::new(config)],
            leader: 0,
            term: 1,
            handovers_left: self.handovers,
            faults_left: self.faults,
            duplicates_left: self.duplicates,
            requests: Vec::new(),
            answers: Vec::new(),
            watch: Vec::new(),
        };
        let listed = api.snapshot();
        world.set_api(api);
        for r in 0..2 {
            world.feed(
                r,
                Event::Resync {
                    pods: listed.clone(),
                },
            );
        }
        world.feed(0, Event::Leadership(Some(1)));
        vec![world]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Step>) {
        for i in 0..w.watch.len() {
            actions.push(Step::Deliver(i));
            if w.duplicates_left > 0 {
                actions.push(Step::DeliverDuplicate(i));
            }
        }
        actions.extend((0..w.requests.len()).map(Step::Execute));
        actions.extend((0..w.answers.len()).map(Step::Answer));
        if w.faults_left > 0 {
            for p in 0..w.pods.len() {
                actions.push(Step::NotReady(p));
                actions.push(Step::Delete(p));
                actions.push(Step::Touch(p));
            }
            // Only the first pod leaves (it is the first promoted): enough for the rejoin
            // races, and the bound stays fast.
            actions.push(Step::Leave(0));
        }
        for (p, view) in w.pods.iter().enumerate() {
            if view.group != common::GROUP {
                actions.push(Step::Rejoin(p));
            }
        }
        let leader_writing = w.requests.iter().any(|(r, _)| *r == w.leader);
        if w.handovers_left > 0 && !leader_writing {
            actions.extend([Step::Handover(0), Step::Handover(1)]);
        }
    }

    fn next_state(&self, last: &World, step: Step) -> Option<World> {
        let mut w = last.clone();
        match step {
            Step::Deliver(i) => {
                let (r, event) = w.watch.remove(i);
                w.feed(r, event);
            }
            Step::DeliverDuplicate(i) => {
                w.duplicates_left -= 1;
                let (r, event) = w.watch[i].clone();
                w.feed(r, event);
            }
            Step::Execute(i) => {
                let (r, write) = w.requests.remove(i);
                let mut api = w.api();
                let (outcome, echo) = api.execute(&write);
                w.set_api(api);
                w.answers.push((r, write.op, outcome));
                if let Some(echo) = echo {
                    w.broadcast(echo);
                }
            }
            Step::Answer(i) => {
                let (r, op, outcome) = w.answers.remove(i);
                w.feed(r, Event::Outcome { op, outcome });
            }
            Step::NotReady(p) | Step::Delete(p) | Step::Touch(p) | Step::Leave(p) => {
                w.faults_left -= 1;
                let name = w.pods[p].name.clone();
                let mut api = w.api();
                let event = match step {
                    Step::NotReady(_) => api.modify(&name, |v| v.ready = false),
                    Step::Delete(_) => api.remove(&name),
                    Step::Leave(_) => api.leave(&name),
                    _ => api.modify(&name, |_| {}),
                };
                w.set_api(api);
                w.broadcast(event?);
            }
            Step::Rejoin(p) => {
                let name = w.pods[p].name.clone();
                let mut api = w.api();
                let event = api.rejoin(&name);
                w.set_api(api);
                w.broadcast(event?);
            }
            Step::Handover(new) => {
                w.handovers_left -= 1;
                w.feed(w.leader, Event::Leadership(None));
                w.term += 1;
                w.leader = new;
                // The new holder restarts its watch: events in flight to it are dropped and
                // the re-list arrives in watch order before it acts.
                w.watch.retain(|(r, _)| *r != new);
                let listed = w.api().snapshot();
                w.feed(new, Event::Resync { pods: listed });
                w.feed(new, Event::Leadership(Some(w.term)));
            }
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("at most one active pod", |_, w: &World| w.actives() <= 1),
            Property::sometimes("a pod becomes active", |_, w: &World| w.actives() == 1),
            Property::sometimes("failover after a fault", |_, w: &World| {
                w.faults_left == 0 && w.actives() == 1 && w.pods.iter().any(|p| !p.ready)
            }),
        ]
    }
}

#[test]
fn two_replicas_never_make_two_actives() {
    let checker = TwoReplicas {
        pods: 2,
        faults: std::env::var("MODEL_FAULTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        duplicates: 1,
        handovers: 1,
    }
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    checker.assert_properties();
    eprintln!("states explored: {}", checker.unique_state_count());
}
