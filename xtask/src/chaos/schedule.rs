//! The seeded fault schedule: a pure function of the seed. Each group, the controller fault
//! stream and the control plane fault stream draw from their own generator (seeded from the
//! run's seed and the stream's index), so that the same seed gives every group the same
//! faults in the same order, however the groups' steps interleave on the machine (and a run
//! without control plane faults the same application and controller faults as one with them).

use hapod_testkit::controlplane::Component;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How the kinds of the controller faults begin.
pub const CONTROLLER_PREFIX: &str = "controller-";
/// How the kinds of the control plane faults begin.
pub const PLANE_PREFIX: &str = "plane-";

/// The stream index of the controller faults; group `g` has `1 + g`.
const CONTROLLER_STREAM: u64 = 0;
/// The stream index of the control plane faults, apart from every group's.
const PLANE_STREAM: u64 = u64::MAX;

/// A fault on one application group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppFault {
    /// The active pod deleted with grace 0.
    ForceDelete,
    /// The active pod deleted with its grace period.
    GracefulDelete,
    /// The active pod's critical crash container aborts (`/tmp/killme`).
    CriticalCrash,
    /// The active app's readiness probe fails (`/tmp/unready`) until the role moved.
    NotReady,
    /// The active pod's non-critical sidecar aborts (`/tmp/killme`; restarted in place).
    SidecarCrash,
    /// Every process of the active pod stopped (SIGSTOP), continued after a while.
    Hang,
    /// The active pod's application container (the app with its embedded agent) SIGKILLed:
    /// the node restarts it in place, a critical restart.
    AgentKill,
    /// The standby pod deleted with grace 0 (the role must not move).
    StandbyDelete,
    /// The acting controller and the active pod cut from each other (every packet between
    /// their addresses dropped inside the testbed's network namespace), healed after a while:
    /// the API still sees the pod Ready, only the missed reports tell.
    Partition,
}

/// (fault, weight) of the application faults.
const APP_FAULTS: [(AppFault, u32); 9] = [
    (AppFault::ForceDelete, 3),
    (AppFault::GracefulDelete, 2),
    (AppFault::CriticalCrash, 2),
    (AppFault::NotReady, 2),
    (AppFault::SidecarCrash, 1),
    (AppFault::Hang, 2),
    (AppFault::AgentKill, 1),
    (AppFault::StandbyDelete, 1),
    (AppFault::Partition, 2),
];

impl AppFault {
    pub fn name(self) -> &'static str {
        match self {
            AppFault::ForceDelete => "force-delete",
            AppFault::GracefulDelete => "graceful-delete",
            AppFault::CriticalCrash => "critical-crash",
            AppFault::NotReady => "not-ready",
            AppFault::SidecarCrash => "sidecar-crash",
            AppFault::Hang => "hang",
            AppFault::AgentKill => "agent-kill",
            AppFault::StandbyDelete => "standby-delete",
            AppFault::Partition => "partition",
        }
    }

    /// The role must move to another pod after this fault. A hang or a partition may or may
    /// not outlast the readiness probe or the report timeout and the grant; a standby's loss
    /// leaves the active alone; a crashed sidecar restarts in place within about two seconds,
    /// and an active Ready again keeps its role.
    pub fn moves_role(self) -> bool {
        !matches!(
            self,
            AppFault::Hang | AppFault::Partition | AppFault::StandbyDelete | AppFault::SidecarCrash
        )
    }
}

/// One step of a group's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppStep {
    pub fault: AppFault,
    /// How long a [`AppFault::Hang`] or a [`AppFault::Partition`] lasts (ms).
    pub lasts_ms: u64,
    /// Injected as soon as the group has one eligible active again, without waiting for the
    /// replacement pod (a fault in the middle of the previous recovery).
    pub back_to_back: bool,
}

/// Which controller replica a controller fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Replica {
    Acting,
    Standby,
}

/// What a controller fault does to every process of the replica's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtlSignal {
    Kill,
    Term,
    /// SIGSTOP, then SIGCONT after this many milliseconds.
    Stop(u64),
}

/// One controller fault, injected `gap_ms` after the replicas settled from the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtlStep {
    pub replica: Replica,
    pub signal: CtlSignal,
    pub gap_ms: u64,
}

impl CtlStep {
    /// `acting-kill`, `standby-stop`, ...: the fault's kind, for the counts.
    pub fn kind(&self) -> String {
        let replica = match self.replica {
            Replica::Acting => "acting",
            Replica::Standby => "standby",
        };
        let signal = match self.signal {
            CtlSignal::Kill => "sigkill",
            CtlSignal::Term => "sigterm",
            CtlSignal::Stop(_) => "sigstop",
        };
        format!("{CONTROLLER_PREFIX}{replica}-{signal}")
    }
}

/// A fault of the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlaneFault {
    /// SIGKILL, then started again as before (same arguments, ports, certificates, data);
    /// for kube-apiserver this cuts every watch and request.
    Restart(Component),
    /// SIGSTOP, then SIGCONT after this many milliseconds.
    Stop(Component, u64),
}

/// One control plane fault, injected `gap_ms` after the previous one recovered and the
/// controller replicas settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneStep {
    pub fault: PlaneFault,
    pub gap_ms: u64,
}

impl PlaneStep {
    /// The component it hits.
    pub fn component(&self) -> Component {
        match self.fault {
            PlaneFault::Restart(c) | PlaneFault::Stop(c, _) => c,
        }
    }

    /// `plane-kube-apiserver-restart`, `plane-etcd-sigstop`, ...: the fault's kind, for the
    /// counts.
    pub fn kind(&self) -> String {
        let what = match self.fault {
            PlaneFault::Restart(_) => "restart",
            PlaneFault::Stop(..) => "sigstop",
        };
        format!("{PLANE_PREFIX}{}-{what}", self.component().name())
    }
}

/// The generator of stream `stream` of a run ([`CONTROLLER_STREAM`], [`PLANE_STREAM`], or
/// 1 + g for group g).
fn stream(seed: u64, stream: u64) -> StdRng {
    // Distinct, well-mixed seeds per stream (the golden-ratio increment of splitmix64).
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The faults of group `group`, endless (the run stops them).
pub fn group_steps(seed: u64, group: usize) -> impl Iterator<Item = AppStep> {
    let mut rng = stream(seed, 1 + group as u64);
    let total: u32 = APP_FAULTS.iter().map(|(_, w)| w).sum();
    std::iter::from_fn(move || {
        let mut pick = rng.random_range(0..total);
        let fault = APP_FAULTS
            .iter()
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or(AppFault::ForceDelete, |(f, _)| *f);
        Some(AppStep {
            fault,
            lasts_ms: rng.random_range(300..4000),
            back_to_back: rng.random_bool(0.15),
        })
    })
}

/// The controller faults, endless; gaps of `min_gap_ms` up to three times that.
pub fn controller_steps(seed: u64, min_gap_ms: u64) -> impl Iterator<Item = CtlStep> {
    let mut rng = stream(seed, CONTROLLER_STREAM);
    std::iter::from_fn(move || {
        let replica = if rng.random_bool(0.7) {
            Replica::Acting
        } else {
            Replica::Standby
        };
        let signal = match rng.random_range(0..10) {
            0..4 => CtlSignal::Kill,
            4..7 => CtlSignal::Term,
            // Up to beyond the renew deadline (2 s): the peer takes over from a frozen leader,
            // which must notice on waking that it lost the Lease.
            _ => CtlSignal::Stop(rng.random_range(200..3500)),
        };
        Some(CtlStep {
            replica,
            signal,
            gap_ms: rng.random_range(min_gap_ms..=3 * min_gap_ms),
        })
    })
}

/// The control plane faults, endless; gaps of `min_gap_ms` up to twice that. Restarts and
/// stops of kube-apiserver and of etcd, equally often; a stop lasts 200 ms to 4 s (beyond the
/// controller's renew deadline).
pub fn plane_steps(seed: u64, min_gap_ms: u64) -> impl Iterator<Item = PlaneStep> {
    let mut rng = stream(seed, PLANE_STREAM);
    std::iter::from_fn(move || {
        let component = if rng.random_bool(0.5) {
            Component::KubeApiserver
        } else {
            Component::Etcd
        };
        let fault = if rng.random_bool(0.5) {
            PlaneFault::Restart(component)
        } else {
            PlaneFault::Stop(component, rng.random_range(200..4000))
        };
        Some(PlaneStep {
            fault,
            gap_ms: rng.random_range(min_gap_ms..=2 * min_gap_ms),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        let a: Vec<AppStep> = group_steps(42, 3).take(50).collect();
        assert_eq!(a, group_steps(42, 3).take(50).collect::<Vec<_>>());
        let c: Vec<CtlStep> = controller_steps(42, 1000).take(20).collect();
        assert_eq!(c, controller_steps(42, 1000).take(20).collect::<Vec<_>>());
    }

    #[test]
    fn seeds_and_groups_get_different_schedules() {
        let a: Vec<AppStep> = group_steps(42, 3).take(50).collect();
        assert_ne!(a, group_steps(43, 3).take(50).collect::<Vec<_>>());
        assert_ne!(a, group_steps(42, 4).take(50).collect::<Vec<_>>());
    }

    #[test]
    fn every_fault_is_drawn() {
        let drawn: std::collections::BTreeSet<AppFault> =
            group_steps(7, 0).take(500).map(|s| s.fault).collect();
        assert_eq!(drawn.len(), APP_FAULTS.len());
        let kinds: std::collections::BTreeSet<String> = controller_steps(7, 100)
            .take(200)
            .map(|s| s.kind())
            .collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
    }

    #[test]
    fn every_plane_fault_is_drawn_and_the_same_seed_replays() {
        let p: Vec<PlaneStep> = plane_steps(42, 1000).take(50).collect();
        assert_eq!(p, plane_steps(42, 1000).take(50).collect::<Vec<_>>());
        assert_ne!(p, plane_steps(43, 1000).take(50).collect::<Vec<_>>());
        let kinds: std::collections::BTreeSet<String> = p.iter().map(PlaneStep::kind).collect();
        let expected = [
            "plane-etcd-restart",
            "plane-etcd-sigstop",
            "plane-kube-apiserver-restart",
            "plane-kube-apiserver-sigstop",
        ];
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);
        for step in &p {
            assert!((1000..=2000).contains(&step.gap_ms), "{step:?}");
            if let PlaneFault::Stop(_, ms) = step.fault {
                assert!((200..4000).contains(&ms), "{step:?}");
            }
        }
    }

    #[test]
    fn the_plane_stream_is_apart_from_the_controller_and_every_group() {
        // Its own generator: a run with control plane faults replays the application and
        // controller faults of the same seed without them.
        let first = |index| stream(42, index).random::<u64>();
        let plane = first(PLANE_STREAM);
        assert!((CONTROLLER_STREAM..=10_000).all(|i| first(i) != plane));
    }
}
