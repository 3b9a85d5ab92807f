//! Pure pod status building: container states, phase and conditions, as the kubelet reports
//! them (`getPhase`, `GeneratePodReadyCondition` and friends), from the node's view of its
//! processes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Where a container sits in the pod: init containers run one after the other to completion,
/// sidecars (init containers with `restartPolicy: Always`) keep running, regular containers run
/// once initialization is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Sidecar,
    Regular,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub container_id: String,
}

impl Terminated {
    /// A process result in the kubelet's terms: a process killed by a signal exits with
    /// 128 + signal; exit 0 is "Completed", anything else "Error".
    pub fn from_exit(
        code: Option<i32>,
        signal: Option<i32>,
        started_at: Timestamp,
        finished_at: Timestamp,
        container_id: String,
    ) -> Self {
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        Self {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at,
            container_id,
        }
    }

    fn to_api(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            container_id: Some(self.container_id.clone()),
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: Some(Time(self.started_at)),
            finished_at: Some(Time(self.finished_at)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
        container_id: String,
    },
    Terminated(Terminated),
}

/// The node's view of one container, enough to report its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: Option<String>,
    pub kind: Kind,
    pub state: RunState,
    pub last: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
}

impl ContainerView {
    pub fn new(name: &str, image: &str, kind: Kind) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            image_id: None,
            kind,
            state: RunState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    fn to_api(&self) -> ContainerStatus {
        let (state, container_id) = match &self.state {
            RunState::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..Default::default()
                },
                self.last.as_ref().map(|t| t.container_id.clone()),
            ),
            RunState::Running {
                started_at,
                container_id,
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..Default::default()
                },
                Some(container_id.clone()),
            ),
            RunState::Terminated(t) => (
                ContainerState {
                    terminated: Some(t.to_api()),
                    ..Default::default()
                },
                Some(t.container_id.clone()),
            ),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone().unwrap_or_default(),
            container_id,
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(match &self.last {
                Some(t) => ContainerState {
                    terminated: Some(t.to_api()),
                    ..Default::default()
                },
                None => ContainerState::default(),
            }),
            ..Default::default()
        }
    }
}

/// Whether a container that just exited is started again, per the pod's restart policy
/// (init containers are retried only on failure; sidecars always).
pub fn should_restart(policy: &str, kind: Kind, exit_code: i32) -> bool {
    match kind {
        Kind::Sidecar => true,
        Kind::Init => exit_code != 0 && policy != "Never",
        Kind::Regular => match policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        },
    }
}

/// The pod phase from its containers, following the kubelet's `getPhase`.
pub fn phase(policy: &str, containers: &[ContainerView]) -> &'static str {
    let init_failed = containers.iter().any(|c| {
        c.kind == Kind::Init
            && matches!(&c.state, RunState::Terminated(t) if t.exit_code != 0)
            && !should_restart(policy, Kind::Init, 1)
    });
    if init_failed {
        return "Failed";
    }
    let initialized = containers
        .iter()
        .filter(|c| c.kind == Kind::Init)
        .all(|c| matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0));
    if !initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers.iter().filter(|c| c.kind == Kind::Regular) {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } if c.last.is_some() => stopped += 1,
            RunState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        // Containers that will be restarted keep the pod Running.
        let restarting = containers.iter().any(|c| {
            c.kind == Kind::Regular
                && match (&c.state, &c.last) {
                    (RunState::Terminated(t), _) => should_restart(policy, c.kind, t.exit_code),
                    (RunState::Waiting { .. }, Some(_)) => true,
                    _ => false,
                }
        });
        if restarting {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Pending"
    }
}

/// The last status of each condition the node owns, so that `lastTransitionTime` only moves
/// when the status does.
#[derive(Debug, Default, Clone)]
pub struct ConditionClock {
    last: BTreeMap<String, (String, Timestamp)>,
}

impl ConditionClock {
    fn condition(
        &mut self,
        kind: &str,
        ok: bool,
        reason: Option<String>,
        message: Option<String>,
        now: Timestamp,
    ) -> PodCondition {
        let status = if ok { "True" } else { "False" }.to_string();
        let since = match self.last.get(kind) {
            Some((prev, at)) if *prev == status => *at,
            _ => {
                self.last.insert(kind.to_string(), (status.clone(), now));
                now
            }
        };
        PodCondition {
            type_: kind.to_string(),
            status,
            reason: if ok { None } else { reason },
            message: if ok { None } else { message },
            last_transition_time: Some(Time(since)),
            last_probe_time: None,
            ..Default::default()
        }
    }
}

/// Inputs of a pod status besides its containers.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    pub spec: &'a PodSpec,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Timestamp,
    /// Status of each readiness gate condition, as currently found on the pod.
    pub gate_status: Vec<(String, bool)>,
    /// Set when the pod cannot run at all (e.g. a volume failed); reported on the conditions.
    pub sandbox_error: Option<String>,
}

/// Builds the status the node writes with a strategic merge patch (conditions merge by type, so
/// the scheduler's `PodScheduled` and other writers' conditions stay).
pub fn build_status(
    facts: &PodFacts<'_>,
    containers: &[ContainerView],
    clock: &mut ConditionClock,
    now: Timestamp,
) -> PodStatus {
    let policy = facts.spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = phase(policy, containers);
    let names = |pred: &dyn Fn(&ContainerView) -> bool, kinds: &[Kind]| -> Vec<String> {
        containers
            .iter()
            .filter(|c| kinds.contains(&c.kind) && pred(c))
            .map(|c| c.name.clone())
            .collect()
    };
    let uninitialized = names(
        &|c| !matches!(&c.state, RunState::Terminated(t) if t.exit_code == 0),
        &[Kind::Init],
    )
    .into_iter()
    .chain(names(&|c| !c.started, &[Kind::Sidecar]))
    .collect::<Vec<_>>();
    let unready = names(&|c| !c.ready, &[Kind::Sidecar, Kind::Regular]);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let containers_ready = unready.is_empty() && !terminal;
    let gates_missing: Vec<&str> = facts
        .gate_status
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(g, _)| g.as_str())
        .collect();
    let list = |v: &[String]| format!("[{}]", v.join(" "));

    let mut conditions = vec![
        clock.condition(
            "PodReadyToStartContainers",
            facts.sandbox_error.is_none() && !terminal,
            None,
            facts.sandbox_error.clone(),
            now,
        ),
        clock.condition(
            "Initialized",
            uninitialized.is_empty(),
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: {}",
                list(&uninitialized)
            )),
            now,
        ),
        clock.condition(
            "ContainersReady",
            containers_ready,
            Some(
                if terminal {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }
                .into(),
            ),
            Some(format!(
                "containers with unready status: {}",
                list(&unready)
            )),
            now,
        ),
    ];
    let (ready, reason, message) = if !containers_ready {
        (
            false,
            if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            },
            format!("containers with unready status: {}", list(&unready)),
        )
    } else if !gates_missing.is_empty() {
        (
            false,
            "ReadinessGatesNotReady",
            format!(
                "corresponding condition of pod readiness gate \"{}\" does not exist or is not True",
                gates_missing.join("\", \"")
            ),
        )
    } else {
        (true, "", String::new())
    };
    conditions.push(clock.condition("Ready", ready, Some(reason.into()), Some(message), now));

    let to_api = |kinds: &[Kind]| -> Option<Vec<ContainerStatus>> {
        let v: Vec<_> = containers
            .iter()
            .filter(|c| kinds.contains(&c.kind))
            .map(ContainerView::to_api)
            .collect();
        (!v.is_empty()).then_some(v)
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.host_ip.clone(),
        }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(facts.start_time)),
        container_statuses: to_api(&[Kind::Regular]),
        init_container_statuses: to_api(&[Kind::Init, Kind::Sidecar]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn running(name: &str) -> ContainerView {
        let mut c = ContainerView::new(name, "img", Kind::Regular);
        c.state = RunState::Running {
            started_at: ts(0),
            container_id: format!("hapod://{name}"),
        };
        c.started = true;
        c.ready = true;
        c
    }

    fn exited(name: &str, code: Option<i32>, signal: Option<i32>) -> ContainerView {
        let mut c = ContainerView::new(name, "img", Kind::Regular);
        c.state = RunState::Terminated(Terminated::from_exit(
            code,
            signal,
            ts(0),
            ts(1),
            "id".into(),
        ));
        c
    }

    #[test]
    fn exit_codes_like_the_kubelet() {
        let t = Terminated::from_exit(None, Some(6), ts(0), ts(1), "x".into());
        assert_eq!(
            (t.exit_code, t.signal, t.reason.as_str()),
            (134, Some(6), "Error")
        );
        let t = Terminated::from_exit(Some(0), None, ts(0), ts(1), "x".into());
        assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));
    }

    #[test]
    fn phases() {
        let waiting = ContainerView::new("w", "img", Kind::Regular);
        assert_eq!(phase("Always", std::slice::from_ref(&waiting)), "Pending");
        assert_eq!(phase("Always", &[running("a"), waiting]), "Pending");
        assert_eq!(phase("Always", &[running("a")]), "Running");
        assert_eq!(phase("Always", &[exited("a", Some(0), None)]), "Running");
        assert_eq!(phase("Never", &[exited("a", Some(0), None)]), "Succeeded");
        assert_eq!(
            phase(
                "Never",
                &[exited("a", Some(0), None), exited("b", Some(1), None)]
            ),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", &[exited("a", Some(0), None)]),
            "Succeeded"
        );
        assert_eq!(phase("OnFailure", &[exited("a", None, Some(9))]), "Running");
        assert_eq!(
            phase("Never", &[running("a"), exited("b", Some(1), None)]),
            "Running"
        );

        let mut backoff = ContainerView::new("c", "img", Kind::Regular);
        backoff.last = Some(Terminated::from_exit(
            Some(1),
            None,
            ts(0),
            ts(1),
            "id".into(),
        ));
        backoff.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        assert_eq!(phase("Always", &[backoff]), "Running");

        let mut init = exited("init", Some(1), None);
        init.kind = Kind::Init;
        assert_eq!(
            phase(
                "Never",
                &[init.clone(), ContainerView::new("a", "i", Kind::Regular)]
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                "Always",
                &[init, ContainerView::new("a", "i", Kind::Regular)]
            ),
            "Pending"
        );
    }

    /// A running pod's facts at 127.10.0.3 with the given readiness gates.
    fn facts(spec: &PodSpec, gate_status: Vec<(String, bool)>) -> PodFacts<'_> {
        PodFacts {
            spec,
            pod_ip: Some("127.10.0.3".into()),
            host_ip: "127.0.0.1".into(),
            start_time: ts(0),
            gate_status,
            sandbox_error: None,
        }
    }

    fn spec(policy: &str) -> PodSpec {
        PodSpec {
            restart_policy: Some(policy.into()),
            ..Default::default()
        }
    }

    fn cond<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    #[test]
    fn conditions_and_transition_times() {
        let spec = spec("Always");
        let facts = facts(&spec, vec![]);
        let mut clock = ConditionClock::default();
        let mut a = running("a");
        a.ready = false;
        let s = build_status(&facts, &[a.clone(), running("b")], &mut clock, ts(1));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.10.0.3"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "127.10.0.3");
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [a]")
        );
        assert_eq!(cond(&s, "Initialized").status, "True");

        // Same status later: the transition time stays.
        let s = build_status(&facts, &[a.clone(), running("b")], &mut clock, ts(5));
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(Time(ts(1))));
        a.ready = true;
        let s = build_status(&facts, &[a, running("b")], &mut clock, ts(7));
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.clone()),
            ("True", Some(Time(ts(7))))
        );
        assert_eq!(ready.reason, None);
        assert_eq!(
            cond(&s, "Initialized").last_transition_time,
            Some(Time(ts(1)))
        );
        let statuses = s.container_statuses.unwrap();
        assert_eq!(statuses.len(), 2);
        assert!(s.init_container_statuses.is_none());
        let container = &statuses[0];
        assert_eq!(container.container_id.as_deref(), Some("hapod://a"));
        assert!(container.state.as_ref().unwrap().running.is_some());
        assert_eq!(container.started, Some(true));
    }

    #[test]
    fn readiness_gates_and_crash_statuses() {
        let spec = spec("Always");
        let facts = facts(&spec, vec![("example.com/gate".into(), false)]);
        let mut clock = ConditionClock::default();
        let s = build_status(&facts, &[running("a")], &mut clock, ts(1));
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ReadinessGatesNotReady"))
        );

        let mut crashed = running("a");
        crashed.ready = false;
        crashed.restart_count = 2;
        crashed.last = Some(Terminated::from_exit(
            None,
            Some(6),
            ts(0),
            ts(1),
            "old".into(),
        ));
        crashed.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some("back-off 2s".into()),
        };
        let s = build_status(&facts, &[crashed], &mut clock, ts(2));
        let container = &s.container_statuses.unwrap()[0];
        assert_eq!(container.restart_count, 2);
        assert_eq!(container.container_id.as_deref(), Some("old"));
        let waiting = container.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = container
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!((last.exit_code, last.signal), (134, Some(6)));
    }
}
