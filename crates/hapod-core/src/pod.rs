//! Plain domain view of one application pod, built by the runtime from the Kubernetes object,
//! and the rules that only need one pod: role, eligibility, critical-container marker.

use std::net::IpAddr;
use std::time::Duration;

use crate::PromotionReason;

/// Names and values the controller matches and writes. Defaults keep the original system's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Label key carrying the role (`role`).
    pub role_label: String,
    /// Role value of the one pod that serves (`active`).
    pub active_value: String,
    /// Role value of every other pod (`standby`).
    pub standby_value: String,
    /// Env var name marking a critical container (`pwcriticality`), compared exactly.
    pub critical_env: String,
    /// Env var value marking a critical container (`critical`), see [`Config::is_critical_env`].
    pub critical_value: String,
    /// The application lease (protocol version 2); `None`: version 1 notifications only.
    pub application_lease: Option<ApplicationLease>,
}

/// Timing of the application lease on the controller's side (`docs/fencing.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ApplicationLease {
    /// How long a grant sent now may be live: the lease stretched by the drift allowance.
    pub live_span: Duration,
    /// After taking over: how long the previous acting replica may still have sent grants
    /// (its renew deadline).
    pub predecessor_window: Duration,
    /// A pod whose agent has not reported for this long, while another agent of its group
    /// has, is unresponsive: not eligible, so an active one is replaced. `None`: pods are
    /// judged by the API's view alone.
    pub report_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            role_label: "role".into(),
            active_value: "active".into(),
            standby_value: "standby".into(),
            critical_env: "pwcriticality".into(),
            critical_value: "critical".into(),
            application_lease: None,
        }
    }
}

impl Config {
    /// Whether one env entry marks its container critical. The key must match exactly (env
    /// names are case-sensitive in Kubernetes); the value is compared after trimming ASCII
    /// whitespace and ignoring ASCII case, so `" Critical\n"` counts, because YAML authors
    /// write it that way and a missed marker silently disables the kill. A missing value
    /// (`valueFrom`) never counts: the controller cannot resolve it.
    pub fn is_critical_env(&self, name: &str, value: Option<&str>) -> bool {
        name == self.critical_env
            && value.is_some_and(|v| {
                v.trim_ascii()
                    .eq_ignore_ascii_case(self.critical_value.trim_ascii())
            })
    }

    /// The role a label value stands for.
    pub fn role_of(&self, label: Option<&str>) -> Role {
        match label {
            Some(v) if v == self.active_value => Role::Active,
            Some(v) if v == self.standby_value => Role::Standby,
            _ => Role::Other,
        }
    }
}

/// Role as read from the role label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Active,
    Standby,
    /// Missing or any other value: repaired to standby.
    Other,
}

/// Pod phase (`status.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl Phase {
    /// Parses `status.phase`; anything unknown or missing is `Unknown`.
    pub fn parse(phase: Option<&str>) -> Self {
        match phase {
            Some("Pending") => Self::Pending,
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// Status of one critical container (non-critical containers are not kept). It is dead
/// when terminated, waiting in CrashLoopBackOff, or restarted at all (`restart_count > 0`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CriticalContainer {
    pub name: String,
    /// `state.terminated` is set.
    pub terminated: bool,
    /// `lastState.terminated` is set.
    pub last_terminated: bool,
    pub restart_count: u32,
    /// `state.waiting.reason`.
    pub waiting_reason: Option<String>,
}

impl CriticalContainer {
    /// Dead: terminated, waiting in CrashLoopBackOff, or restarted at all. A critical
    /// container is never supposed to restart in place, so every restart is a death the
    /// controller must act on, whether it saw it happen or not (a pod the controller already
    /// killed is gone or deleting, and deleting pods are not killed again).
    fn dead(&self) -> bool {
        self.terminated
            || self.waiting_reason.as_deref() == Some("CrashLoopBackOff")
            || self.restart_count > 0
    }
}

/// What the controller needs to know about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// Value of the group label.
    pub group: String,
    /// Value of the role label.
    pub role_label: Option<String>,
    /// `hapod.io/epoch` annotation, when present and a decimal u64.
    pub epoch: Option<u64>,
    pub phase: Phase,
    /// Ready condition is True.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Deleted with a grace period of 0 and no finalizers: the API server removes it within
    /// the same request, so the watch shows it gone a moment later.
    pub vanishing: bool,
    /// `status.podIPs` (the first is the primary), falling back to `status.podIP`.
    pub pod_ips: Vec<IpAddr>,
    /// `metadata.creationTimestamp` in Unix seconds (the API's precision).
    pub created_unix_seconds: i64,
    /// When the Ready condition last turned True, in Unix seconds (`i64::MAX` when not
    /// ready or not known): among pods created in the same second, the one ready longest
    /// is the older.
    pub ready_since_unix_seconds: i64,
    /// An operator asked that this pod not be active (annotation `hapod.io/drain=true`): the
    /// role moves to an eligible standby the way it does off an unready active, and comes
    /// back to this pod only once the annotation is gone.
    pub drained: bool,
    /// An operator paused the pod's group (annotation `hapod.io/paused=true`): while any
    /// member carries it, the controller changes no pod's role and deletes no pod.
    pub paused: bool,
    /// How long an active of the pod's group may stay not Ready before the role moves
    /// (annotation `hapod.io/not-ready-grace-ms`; zero without it or with a value the runtime
    /// ignored). The group's grace is the longest any member asks for.
    pub not_ready_grace: Duration,
    /// How long the Ready condition had been other than True when the view was built (from
    /// its lastTransitionTime); `None` when Ready or not known.
    pub unready_for: Option<Duration>,
    /// Critical containers only (regular containers; init containers are not watched).
    pub critical: Vec<CriticalContainer>,
    /// The EndpointSlice mode: what the slice of the pod's group needs from it. `None`
    /// without `hapod.io/service` (or with a value that is no Service name). Boxed: most
    /// pods go without, and every event carries a view.
    pub routing: Option<Box<Routing>>,
}

/// A pod of a group whose traffic follows the role through the controller's own EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Routing {
    /// The Service the pod names (annotation `hapod.io/service`).
    pub service: String,
    /// `spec.nodeName`, for the endpoint's `nodeName`.
    pub node: Option<String>,
}

impl PodView {
    pub fn role(&self, config: &Config) -> Role {
        config.role_of(self.role_label.as_deref())
    }

    /// Address notifications go to: the primary pod IP.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.pod_ips.first().copied()
    }

    /// Why the API's view of this pod alone rules it out of the active role, if it does: the
    /// reason the controller gives when it takes the role from it. What only the controller
    /// knows (a death seen before a restart, a relinquish, a silent agent) is not in it.
    pub fn unfit_by_api(&self) -> Option<PromotionReason> {
        if self.deleting {
            Some(PromotionReason::Terminating)
        } else if self.dead_container().is_some() {
            Some(PromotionReason::CriticalDeath)
        } else if matches!(self.phase, Phase::Failed | Phase::Succeeded) {
            Some(PromotionReason::Finished)
        } else if !self.ready {
            Some(PromotionReason::NotReady)
        } else if !self.serving() {
            Some(PromotionReason::NotServing)
        } else if self.drained {
            Some(PromotionReason::Drained)
        } else {
            None
        }
    }

    /// Eligibility, except the critical-container rule, which is sticky (see `GroupState`).
    pub(crate) fn serving(&self) -> bool {
        self.ready && self.running_with_ip()
    }

    /// Serving but for the Ready condition: Running, not deleting, with an IP.
    pub(crate) fn running_with_ip(&self) -> bool {
        self.phase == Phase::Running && !self.deleting && !self.pod_ips.is_empty()
    }

    /// Name of a dead critical container, see [`CriticalContainer`].
    pub(crate) fn dead_container(&self) -> Option<&str> {
        self.critical
            .iter()
            .find(|c| c.dead())
            .map(|c| c.name.as_str())
    }

    /// Sort key for "oldest first": created first, then ready first, ties by name. A
    /// ReplicaSet's replacement is often created within the same second as the standby it
    /// joins; the name alone would pick either.
    pub(crate) fn age_key(&self) -> (i64, i64, &str) {
        (
            self.created_unix_seconds,
            self.ready_since_unix_seconds,
            self.name.as_str(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_marker_trims_and_ignores_case_of_value_only() {
        let c = Config::default();
        assert!(c.is_critical_env("pwcriticality", Some("critical")));
        assert!(c.is_critical_env("pwcriticality", Some("  CRITICAL\t\n")));
        assert!(!c.is_critical_env("PWCRITICALITY", Some("critical")));
        assert!(!c.is_critical_env("pwcriticality", Some("noncritical")));
        assert!(!c.is_critical_env("pwcriticality", Some("")));
        assert!(!c.is_critical_env("pwcriticality", Some("critical!")));
        assert!(!c.is_critical_env("pwcriticality", None));
    }

    #[test]
    fn roles_and_phases_parse() {
        let c = Config::default();
        assert_eq!(c.role_of(Some("active")), Role::Active);
        assert_eq!(c.role_of(Some("standby")), Role::Standby);
        assert_eq!(c.role_of(Some("Active")), Role::Other);
        assert_eq!(c.role_of(None), Role::Other);
        assert_eq!(Phase::parse(Some("Running")), Phase::Running);
        assert_eq!(Phase::parse(Some("weird")), Phase::Unknown);
        assert_eq!(Phase::parse(None), Phase::Unknown);
    }

    #[test]
    fn what_the_api_shows_rules_a_pod_out_in_the_controllers_order() {
        let fit = PodView {
            namespace: "ns".into(),
            name: "a".into(),
            uid: "u".into(),
            resource_version: "1".into(),
            group: "g".into(),
            role_label: None,
            epoch: None,
            phase: Phase::Running,
            ready: true,
            deleting: false,
            vanishing: false,
            pod_ips: vec!["10.244.0.1".parse().unwrap()],
            created_unix_seconds: 0,
            ready_since_unix_seconds: 0,
            drained: false,
            paused: false,
            not_ready_grace: Duration::ZERO,
            unready_for: None,
            critical: vec![CriticalContainer {
                name: "app".into(),
                terminated: false,
                last_terminated: false,
                restart_count: 0,
                waiting_reason: None,
            }],
            routing: None,
        };
        assert_eq!(fit.unfit_by_api(), None);
        let unfit = |change: fn(&mut PodView)| {
            let mut view = fit.clone();
            change(&mut view);
            view.unfit_by_api().map(PromotionReason::as_str)
        };
        assert_eq!(unfit(|v| v.drained = true), Some("drained"));
        assert_eq!(unfit(|v| v.pod_ips.clear()), Some("not_serving"));
        assert_eq!(unfit(|v| v.ready = false), Some("not_ready"));
        assert_eq!(
            unfit(|v| {
                v.ready = false;
                v.phase = Phase::Failed;
            }),
            Some("finished")
        );
        assert_eq!(
            unfit(|v| {
                v.phase = Phase::Failed;
                v.critical[0].restart_count = 1;
            }),
            Some("critical_death")
        );
        assert_eq!(
            unfit(|v| {
                v.critical[0].terminated = true;
                v.deleting = true;
            }),
            Some("terminating")
        );
    }
}
