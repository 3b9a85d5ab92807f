//! Builds the core's [`PodView`] from a Kubernetes `Pod`. Never panics on odd cluster data:
//! missing fields read as "not there" (no IP, not ready, phase Unknown).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use hapod_core::{Config, CriticalContainer, Phase, PodView, Routing};
use k8s_openapi::api::core::v1::Pod;

/// Annotation holding the epoch of a pod's promotion.
pub const EPOCH_ANNOTATION: &str = "hapod.io/epoch";

/// Annotation by which an operator drains the active role from a pod: `true` drains it, any
/// other value (or none) does not.
pub const DRAIN_ANNOTATION: &str = "hapod.io/drain";

/// Annotation by which an operator pauses a pod's group (`kubectl hapod pause`): while any
/// member carries `true`, the controller changes no role and deletes no pod. Any other value
/// (or none) does not pause.
pub const PAUSE_ANNOTATION: &str = "hapod.io/paused";

/// The operator's switches: annotations of which only the value `true` counts.
const SWITCHES: [&str; 2] = [DRAIN_ANNOTATION, PAUSE_ANNOTATION];

/// Annotation giving a group's not-Ready grace in milliseconds: an active pod that stops being
/// Ready keeps the role that long before it moves (the longest of the group's members counts).
/// Absent, `0`, or a value that is ignored: the role moves at once.
pub const NOT_READY_GRACE_ANNOTATION: &str = "hapod.io/not-ready-grace-ms";

/// Annotation naming the Service whose EndpointSlice the controller maintains for the pod's
/// group (docs/endpoints.md): a selector-less Service of the pod's namespace.
pub const SERVICE_ANNOTATION: &str = "hapod.io/service";

/// The longest not-Ready grace taken: a longer one is more likely a mistake (seconds typed as
/// milliseconds twice over) than a wish to leave a group without a Ready active for hours.
pub const NOT_READY_GRACE_MAX: Duration = Duration::from_secs(3600);

/// A pod the controller cannot place in a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaceable {
    #[error("pod has no name, namespace or uid")]
    Incomplete,
    #[error("pod lacks the group label {0:?}")]
    NoGroupLabel(String),
}

/// Builds the view of `pod`, grouping by the value of `group_label`.
pub fn pod_view(pod: &Pod, config: &Config, group_label: &str) -> Result<PodView, Unplaceable> {
    let meta = &pod.metadata;
    let (Some(name), Some(namespace), Some(uid)) = (&meta.name, &meta.namespace, &meta.uid) else {
        return Err(Unplaceable::Incomplete);
    };
    let labels = meta.labels.as_ref();
    let group = labels
        .and_then(|l| l.get(group_label))
        .ok_or_else(|| Unplaceable::NoGroupLabel(group_label.to_owned()))?;
    let status = pod.status.as_ref();
    let condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let ready_condition = condition.filter(|c| c.status == "True");
    let ready = ready_condition.is_some();
    Ok(PodView {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        group: group.clone(),
        role_label: labels.and_then(|l| l.get(&config.role_label)).cloned(),
        epoch: annotation(pod, EPOCH_ANNOTATION).and_then(|v| v.trim().parse().ok()),
        phase: Phase::parse(status.and_then(|s| s.phase.as_deref())),
        ready,
        deleting: meta.deletion_timestamp.is_some(),
        vanishing: meta.deletion_timestamp.is_some()
            && meta.deletion_grace_period_seconds == Some(0)
            && meta.finalizers.as_ref().is_none_or(Vec::is_empty),
        pod_ips: pod_ips(pod),
        created_unix_seconds: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        ready_since_unix_seconds: ready_condition
            .and_then(|c| c.last_transition_time.as_ref())
            .map_or(i64::MAX, |t| t.0.as_second()),
        drained: annotation(pod, DRAIN_ANNOTATION).is_some_and(switched_on),
        paused: paused(pod),
        not_ready_grace: annotation(pod, NOT_READY_GRACE_ANNOTATION)
            .and_then(|v| not_ready_grace(v).ok())
            .unwrap_or_default(),
        unready_for: condition
            .filter(|_| !ready)
            .and_then(|c| c.last_transition_time.as_ref())
            // Whole seconds in the API: from the end of that second, never cutting a grace short.
            .map(|t| since(t.0.as_millisecond() + 999)),
        critical: critical_containers(pod, config),
        routing: annotation(pod, SERVICE_ANNOTATION)
            .and_then(|v| service_name(v).ok())
            .map(|service| {
                Box::new(Routing {
                    service: service.to_owned(),
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                })
            }),
    })
}

/// Annotation `key` of `pod`, when it has one.
fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether the value of an operator's switch turns it on: only `true` does (whitespace around
/// it ignored). Any other value reads as off, as every odd annotation value reads as absent.
fn switched_on(value: &str) -> bool {
    value.trim() == "true"
}

/// Whether `pod` pauses its group (annotation `hapod.io/paused=true`).
pub fn paused(pod: &Pod) -> bool {
    annotation(pod, PAUSE_ANNOTATION).is_some_and(switched_on)
}

/// The not-Ready grace a value of `hapod.io/not-ready-grace-ms` asks for, or why it is ignored.
pub fn not_ready_grace(value: &str) -> Result<Duration, &'static str> {
    let value = value.trim();
    let Ok(ms) = value.parse::<u64>() else {
        return Err(if value.parse::<i64>().is_ok_and(i64::is_negative) {
            "negative"
        } else {
            "not a whole number of milliseconds"
        });
    };
    let grace = Duration::from_millis(ms);
    if grace > NOT_READY_GRACE_MAX {
        return Err("above the limit of 3600000 (one hour)");
    }
    Ok(grace)
}

/// The Service a value of `hapod.io/service` names, or why it is ignored: a Service name is
/// a DNS label (RFC 1035: lower case letters, digits and '-', starting with a letter, at most
/// 63 characters).
pub fn service_name(value: &str) -> Result<&str, &'static str> {
    let name = value.trim();
    if crate::args::dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(name)
    } else {
        Err(
            "not a Service name (lower case letters, digits and '-', starting with a letter, at most 63)",
        )
    }
}

/// How long ago `unix_ms` was on this host's clock; zero for a time ahead of it (the kubelet's
/// clock may run ahead).
fn since(unix_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let then = Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    now.saturating_sub(then)
}

/// The annotations of `pod` whose value the controller ignores, with that value and why: they
/// read as absent, which whoever set them may not have meant (`hapod.io/paused=yes` pauses
/// nothing, `hapod.io/not-ready-grace-ms=3s` graces nothing).
pub fn ignored_annotations(pod: &Pod) -> Vec<(&'static str, &str, &'static str)> {
    let switches = SWITCHES
        .into_iter()
        .filter_map(|key| Some((key, annotation(pod, key)?)))
        .filter(|(_, value)| !switched_on(value))
        .map(|(key, value)| (key, value, "only \"true\" counts"));
    let grace = annotation(pod, NOT_READY_GRACE_ANNOTATION).and_then(|value| {
        let why = not_ready_grace(value).err()?;
        Some((NOT_READY_GRACE_ANNOTATION, value, why))
    });
    let service = annotation(pod, SERVICE_ANNOTATION).and_then(|value| {
        let why = service_name(value).err()?;
        Some((SERVICE_ANNOTATION, value, why))
    });
    switches.chain(grace).chain(service).collect()
}

/// `status.podIPs` in order (the first is the primary), else `status.podIP`; unparseable
/// entries are skipped.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// Status of the regular containers whose env marks them critical. A critical container
/// without a status yet reads as alive with no restarts.
fn critical_containers(pod: &Pod, config: &Config) -> Vec<CriticalContainer> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    spec.containers
        .iter()
        .filter(|c| {
            // Every env entry is checked: the original stopped at the first one.
            c.env
                .iter()
                .flatten()
                .any(|e| config.is_critical_env(&e.name, e.value.as_deref()))
        })
        .map(|c| {
            let status = statuses.iter().find(|s| s.name == c.name);
            let state = status.and_then(|s| s.state.as_ref());
            CriticalContainer {
                name: c.name.clone(),
                terminated: state.is_some_and(|s| s.terminated.is_some()),
                last_terminated: status
                    .and_then(|s| s.last_state.as_ref())
                    .is_some_and(|s| s.terminated.is_some()),
                restart_count: status.map_or(0, |s| u32::try_from(s.restart_count).unwrap_or(0)),
                waiting_reason: state
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("valid pod json")
    }

    fn config() -> Config {
        Config::default()
    }

    #[test]
    fn full_pod_reads_every_field() {
        let pod = parse(json!({
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "hapod", "role": "active"},
                "annotations": {"hapod.io/epoch": "4294967297", "hapod.io/drain": "true",
                                "hapod.io/paused": " true\n",
                                "hapod.io/not-ready-grace-ms": "2500"},
                "creationTimestamp": "2026-01-01T00:00:10Z",
            },
            "spec": {"containers": [
                {"name": "app", "env": [{"name": "other", "value": "x"},
                                        {"name": "pwcriticality", "value": " Critical "}]},
                {"name": "side", "env": [{"name": "pwcriticality", "value": "noncritical"}]},
                {"name": "plain"},
            ]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-01-01T00:00:12Z"}],
                "podIP": "10.0.0.1",
                "podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}],
                "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 3, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 134}},
                }],
            },
        }));
        let v = pod_view(&pod, &config(), "app").unwrap();
        assert_eq!(
            (v.name.as_str(), v.namespace.as_str(), v.group.as_str()),
            ("p", "ns", "hapod")
        );
        assert_eq!(v.resource_version, "42");
        assert_eq!(v.role_label.as_deref(), Some("active"));
        assert_eq!(v.epoch, Some((1 << 32) | 1));
        assert_eq!(v.phase, Phase::Running);
        assert!(v.ready && !v.deleting);
        assert_eq!(
            v.pod_ips,
            [
                "fd00::1".parse::<IpAddr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(v.created_unix_seconds, 1_767_225_610);
        assert_eq!(v.ready_since_unix_seconds, 1_767_225_612);
        assert!(v.drained && v.paused);
        assert_eq!(v.not_ready_grace, Duration::from_millis(2500));
        assert_eq!(v.unready_for, None);
        assert!(ignored_annotations(&pod).is_empty());
        assert_eq!(
            v.critical,
            [CriticalContainer {
                name: "app".into(),
                terminated: false,
                last_terminated: true,
                restart_count: 3,
                waiting_reason: Some("CrashLoopBackOff".into()),
            }]
        );
    }

    #[test]
    fn bare_pod_reads_as_not_eligible_without_panicking() {
        let pod = parse(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "g"},
                         "annotations": {"hapod.io/epoch": "not-a-number",
                                         "hapod.io/drain": "yes",
                                         "hapod.io/paused": "True",
                                         "hapod.io/not-ready-grace-ms": "-300"}},
            "spec": {"containers": []},
        }));
        let v = pod_view(&pod, &config(), "app").unwrap();
        assert_eq!(v.phase, Phase::Unknown);
        assert!(!v.ready && v.pod_ips.is_empty() && v.critical.is_empty());
        assert_eq!((v.epoch, v.role_label), (None, None));
        assert_eq!(v.created_unix_seconds, 0);
        assert_eq!(v.ready_since_unix_seconds, i64::MAX);
        // Only `true` drains or pauses; the odd values are named for the operator.
        assert!(!v.drained && !v.paused);
        assert_eq!(v.not_ready_grace, Duration::ZERO);
        assert_eq!(
            ignored_annotations(&pod),
            [
                ("hapod.io/drain", "yes", "only \"true\" counts"),
                ("hapod.io/paused", "True", "only \"true\" counts"),
                ("hapod.io/not-ready-grace-ms", "-300", "negative"),
            ]
        );
    }

    #[test]
    fn not_ready_grace_takes_whole_milliseconds_up_to_an_hour() {
        let ms = |v: &str| not_ready_grace(v).map(|d| d.as_millis());
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms(" 3000\n"), Ok(3000));
        assert_eq!(ms("3600000"), Ok(3_600_000));
        assert_eq!(ms("3600001"), Err("above the limit of 3600000 (one hour)"));
        assert_eq!(
            ms("99999999999999999999"),
            Err("not a whole number of milliseconds")
        );
        assert_eq!(ms("-1"), Err("negative"));
        for odd in ["3s", "1.5", "", "1e3"] {
            assert_eq!(
                ms(odd),
                Err("not a whole number of milliseconds"),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn a_not_ready_pod_says_since_when_by_its_ready_condition() {
        let with_ready = |status: &str, at: &str| {
            let pod = parse(json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "g"}},
                "status": {"conditions": [{"type": "Ready", "status": status,
                                           "lastTransitionTime": at}]},
            }));
            pod_view(&pod, &config(), "app").unwrap().unready_for
        };
        let long_ago = with_ready("False", "2026-01-01T00:00:12Z").expect("not ready since");
        assert!(long_ago > Duration::from_secs(3600), "{long_ago:?}");
        // A kubelet clock ahead of this one: not ready for no time yet.
        assert_eq!(
            with_ready("Unknown", "2999-01-01T00:00:00Z"),
            Some(Duration::ZERO)
        );
        assert_eq!(with_ready("True", "2026-01-01T00:00:12Z"), None);
    }

    #[test]
    fn odd_ips_and_env_values() {
        let pod = parse(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "g"}},
            "spec": {"containers": [
                {"name": "from-ref", "env": [{"name": "pwcriticality",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                {"name": "empty", "env": [{"name": "pwcriticality", "value": ""}]},
                {"name": "key-case", "env": [{"name": "PWCRITICALITY", "value": "critical"}]},
            ]},
            "status": {"podIP": "not-an-ip", "podIPs": [{"ip": "garbage"}]},
        }));
        let v = pod_view(&pod, &config(), "app").unwrap();
        assert!(v.pod_ips.is_empty());
        assert!(v.critical.is_empty());
        let v6 = parse(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "g"}},
            "status": {"podIP": "fd00::7"},
        }));
        assert_eq!(
            pod_view(&v6, &config(), "app").unwrap().primary_ip(),
            Some("fd00::7".parse().unwrap())
        );
    }

    #[test]
    fn missing_group_label_or_identity_is_unplaceable() {
        let pod = parse(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}));
        assert_eq!(
            pod_view(&pod, &config(), "app"),
            Err(Unplaceable::NoGroupLabel("app".into()))
        );
        let pod = parse(json!({"metadata": {"name": "p", "labels": {"app": "g"}}}));
        assert_eq!(
            pod_view(&pod, &config(), "app"),
            Err(Unplaceable::Incomplete)
        );
    }
}
