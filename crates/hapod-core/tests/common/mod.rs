//! Test fixtures: pod views and an in-memory API server that answers the core's writes the
//! way the apiserver does (resourceVersion and UID preconditions, monotonic versions).

#![allow(dead_code)] // each test binary uses a different part of the fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use hapod_core::{
    Action, Config, CriticalContainer, Event, Phase, PodView, Role, Write, WriteKind, WriteOutcome,
};

/// Value of the group label of the group under test.
pub const GROUP: &str = "hapod";

/// A Running, Ready, standby pod with one critical container, created at `created`.
pub fn pod(name: &str, created: i64) -> PodView {
    let octet = name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    PodView {
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("{name}-uid"),
        resource_version: "1".into(),
        group: GROUP.into(),
        role_label: Some("standby".into()),
        epoch: None,
        phase: Phase::Running,
        ready: true,
        deleting: false,
        vanishing: false,
        pod_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet))],
        created_unix_seconds: created,
        ready_since_unix_seconds: created,
        drained: false,
        paused: false,
        not_ready_grace: std::time::Duration::ZERO,
        unready_for: None,
        critical: vec![CriticalContainer {
            name: "crit".into(),
            terminated: false,
            last_terminated: false,
            restart_count: 0,
            waiting_reason: None,
        }],
        routing: None,
    }
}

/// What a delete with grace 0 (no finalizers) shows before the pod is gone.
pub fn force_deleting(view: &mut PodView) {
    view.deleting = true;
    view.vanishing = true;
}

pub fn active(mut view: PodView, epoch: Option<u64>) -> PodView {
    view.role_label = Some("active".into());
    view.epoch = epoch;
    view
}

pub fn writes(actions: &[Action]) -> Vec<&Write> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Write(w) => Some(w),
            _ => None,
        })
        .collect()
}

/// The only write among `actions`.
pub fn single_write(actions: &[Action]) -> Write {
    let w = writes(actions);
    assert_eq!(w.len(), 1, "expected one write in {actions:?}");
    w[0].clone()
}

/// In-memory API server holding the truth about one group's pods (and pods relabeled out of
/// it, which it keeps).
#[derive(Clone, Debug, Default)]
pub struct FakeApi {
    pub pods: BTreeMap<String, PodView>,
    pub revision: u64,
    /// Pods a user relabeled back into the group still labeled active: a second active the
    /// controller did not make (nor could see coming: it may promote another pod before the
    /// rejoin reaches it). Forgotten once the controller wrote the pod's role, or a standby
    /// write left the group with at most one active (the pair was resolved).
    pub rejoined: BTreeSet<String>,
    /// Epochs of acknowledged role writes to active (promotions and adoptions), in order.
    pub promotions: Vec<u64>,
}

impl FakeApi {
    pub fn new(pods: impl IntoIterator<Item = PodView>) -> Self {
        let mut api = Self::default();
        for p in pods {
            api.put(p);
        }
        api
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Stores a pod under a fresh resourceVersion and returns the watch event for it.
    pub fn put(&mut self, mut view: PodView) -> Event {
        view.resource_version = self.next_revision().to_string();
        self.pods.insert(view.name.clone(), view.clone());
        Event::Applied(view)
    }

    /// Changes a pod (as the kubelet or a user would) and returns the group's watch event.
    pub fn modify(&mut self, name: &str, change: impl FnOnce(&mut PodView)) -> Option<Event> {
        let mut view = self.pods.get(name)?.clone();
        change(&mut view);
        let Event::Applied(view) = self.put(view) else {
            unreachable!()
        };
        Some(Self::event_for(view))
    }

    /// The watch event for a pod: a pod outside the group left it.
    pub fn event_for(view: PodView) -> Event {
        if view.group == GROUP {
            Event::Applied(view)
        } else {
            Event::Deleted {
                name: view.name,
                uid: view.uid,
                resource_version: Some(view.resource_version),
            }
        }
    }

    /// A user relabels the pod out of the group; the API keeps it.
    pub fn leave(&mut self, name: &str) -> Option<Event> {
        if self.pods.get(name)?.group != GROUP {
            return None;
        }
        self.modify(name, |p| p.group = "elsewhere".into())
    }

    /// A user relabels a pod back into the group, as it is (an active stays labeled active).
    pub fn rejoin(&mut self, name: &str) -> Option<Event> {
        if self.pods.get(name)?.group == GROUP {
            return None;
        }
        let event = self.modify(name, |p| p.group = GROUP.into())?;
        if self.actives().contains(&name) {
            self.rejoined.insert(name.to_owned());
        }
        Some(event)
    }

    pub fn remove(&mut self, name: &str) -> Option<Event> {
        let view = self.pods.remove(name)?;
        Some(Event::Deleted {
            name: view.name,
            uid: view.uid,
            resource_version: Some(self.next_revision().to_string()),
        })
    }

    /// The group's pods, as a re-list returns them.
    pub fn snapshot(&self) -> Vec<PodView> {
        self.pods
            .values()
            .filter(|p| p.group == GROUP)
            .cloned()
            .collect()
    }

    /// Names of the pods (in the group or not) carrying `hapod.io/paused=true`.
    pub fn paused(&self) -> Vec<String> {
        self.pods
            .values()
            .filter(|p| p.paused)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Pods of the group labeled active.
    pub fn actives(&self) -> Vec<&str> {
        let config = Config::default();
        self.pods
            .values()
            .filter(|p| p.group == GROUP && p.role(&config) == Role::Active)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Carries out a write; returns its outcome and the watch event it causes.
    pub fn execute(&mut self, write: &Write) -> (WriteOutcome, Option<Event>) {
        let Some(current) = self.pods.get(&write.pod).cloned() else {
            return (WriteOutcome::NotFound, None);
        };
        if current.uid != write.uid {
            return (WriteOutcome::Conflict, None);
        }
        match &write.kind {
            WriteKind::SetRole {
                resource_version,
                role,
                epoch,
                ..
            } => {
                if *resource_version != current.resource_version {
                    return (WriteOutcome::Conflict, None);
                }
                let mut view = current;
                view.role_label = Some(
                    if *role == Role::Active {
                        "active"
                    } else {
                        "standby"
                    }
                    .into(),
                );
                if let Some(e) = epoch {
                    view.epoch = Some(*e);
                }
                if *role == Role::Active {
                    // Adopting (an epoch for an active without one) writes the same role again.
                    let others: Vec<&str> = self
                        .actives()
                        .into_iter()
                        .filter(|a| *a != write.pod && !self.rejoined.contains(*a))
                        .collect();
                    assert!(
                        others.is_empty(),
                        "promotion of {} while {:?} active",
                        write.pod,
                        self.actives()
                    );
                    self.promotions
                        .push(epoch.expect("promotion carries an epoch"));
                }
                let Event::Applied(view) = self.put(view) else {
                    unreachable!()
                };
                self.rejoined.remove(&view.name);
                if *role == Role::Standby && self.actives().len() <= 1 {
                    self.rejoined.clear();
                }
                (
                    WriteOutcome::Done {
                        resource_version: Some(view.resource_version.clone()),
                    },
                    Some(Self::event_for(view)),
                )
            }
            WriteKind::Delete { .. } => {
                let event = self.remove(&write.pod);
                (
                    WriteOutcome::Done {
                        resource_version: None,
                    },
                    event,
                )
            }
        }
    }
}

/// One controller replica wired to a [`FakeApi`] with instant watch delivery.
pub struct Ctl {
    pub state: hapod_core::GroupState,
    pub api: FakeApi,
    pub now: std::time::Instant,
}

impl Ctl {
    /// A replica that listed `pods` and acts in term 1.
    pub fn acting(pods: impl IntoIterator<Item = PodView>) -> (Self, Vec<Action>) {
        Self::acting_with(Config::default(), pods)
    }

    /// [`Ctl::acting`] with another configuration.
    pub fn acting_with(
        config: Config,
        pods: impl IntoIterator<Item = PodView>,
    ) -> (Self, Vec<Action>) {
        let api = FakeApi::new(pods);
        let mut ctl = Self {
            state: hapod_core::GroupState::new(std::sync::Arc::new(config)),
            api,
            now: std::time::Instant::now(),
        };
        ctl.feed(Event::Resync {
            pods: ctl.api.snapshot(),
        });
        let actions = ctl.feed(Event::Leadership(Some(1)));
        (ctl, actions)
    }

    pub fn feed(&mut self, event: Event) -> Vec<Action> {
        hapod_core::decide(&mut self.state, event, self.now)
    }

    /// Executes `write` against the API and feeds back its outcome (not its watch event).
    pub fn answer(&mut self, write: &Write) -> (Vec<Action>, Option<Event>) {
        let (outcome, echo) = self.api.execute(write);
        let actions = self.feed(Event::Outcome {
            op: write.op,
            outcome,
        });
        (actions, echo)
    }

    /// Executes every write until none is issued, delivering watch echoes at once; returns
    /// every action seen, `first` included.
    pub fn settle(&mut self, first: Vec<Action>) -> Vec<Action> {
        let mut all = Vec::new();
        let mut pending = first;
        while !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            for action in &batch {
                match action {
                    Action::Write(w) => {
                        let (actions, echo) = self.answer(w);
                        pending.extend(actions);
                        if let Some(echo) = echo {
                            pending.extend(self.feed(echo));
                        }
                    }
                    Action::Refresh { pod, .. } => {
                        if let Some(view) = self.api.pods.get(pod).cloned() {
                            pending.extend(self.feed(FakeApi::event_for(view)));
                        }
                    }
                    _ => {}
                }
            }
            all.extend(batch);
        }
        all
    }
}
