//! The NetworkPolicies, checked structurally (the testbed enforces none): the app pods'
//! notification port is reachable only from the controller pods, and the controller's HTTP
//! port (/metrics) not from everywhere. Pods, labels and ports are taken from the rendered
//! workloads, so a label or port changed on one side only fails the check.

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use hapod_testkit::testbed::{ACTIVE, CONTROLLER_NAME, CONTROLLER_NAMESPACE, ROLE_LABEL, STANDBY};

use super::invariants::args;
use super::problems::Problems;
use super::render::{Render, str_at};

/// A pod as a NetworkPolicy sees it: its namespace's labels and its own.
struct Pod<'a> {
    namespace: &'a str,
    namespace_labels: Map<String, Value>,
    labels: Map<String, Value>,
}

/// The NetworkPolicies of a render that has both the controller and the app.
pub(crate) fn network_policies(p: &mut Problems, r: &Render) {
    match network_policy_problems(r) {
        Ok(problems) => {
            for e in problems {
                p.0.push(format!("{}: {e}", r.label));
            }
        }
        Err(e) => p.wrap(&r.label, Err(e)),
    }
}

fn network_policy_problems(r: &Render) -> Result<Vec<String>> {
    let mut p = Vec::new();
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let controller = dep
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/name") == "controller"))
        .context("no controller container")?;
    let flag = |name: &str, default: &'static str| {
        let prefix = format!("--{name}=");
        args(controller)
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| default.to_string())
    };
    // The acting pods relabel themselves: a policy must hold for either role.
    let roles = [
        (flag("role-label", ROLE_LABEL), flag("active-value", ACTIVE)),
        (
            flag("role-label", ROLE_LABEL),
            flag("standby-value", STANDBY),
        ),
    ];
    let app = r.app_workload()?;
    let udp = ports(app, "UDP");
    if udp.is_empty() {
        p.push("the app declares no UDP (notification) port".into());
    }
    let http = ports(dep, "TCP");
    for role in &roles {
        let controller_pod = pod(r, dep, role);
        let app_pod = pod(r, app, role);
        let what = format!("{}={}", role.0, role.1);
        for port in &udp {
            only_from(
                &mut p,
                r,
                &app_pod,
                port,
                "UDP",
                &format!("app notification port {port:?}, {what}"),
                |peer| peer.is_some_and(|peer| selects_peer(peer, &controller_pod)),
            );
        }
        for port in &http {
            only_from(
                &mut p,
                r,
                &controller_pod,
                port,
                "TCP",
                &format!("controller port {port:?}, {what}"),
                |peer| peer.is_some(),
            );
        }
    }
    Ok(p)
}

/// The (number, name) of every container port of `workload`'s pods with this protocol.
fn ports(workload: &Value, protocol: &str) -> Vec<(i64, String)> {
    workload
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c.pointer("/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|port| str_at(port, "/protocol") == protocol)
        .filter_map(|port| {
            let number = port.pointer("/containerPort").and_then(Value::as_i64)?;
            Some((number, str_at(port, "/name").to_string()))
        })
        .collect()
}

fn pod<'a>(r: &Render, workload: &'a Value, (key, value): &(String, String)) -> Pod<'a> {
    let namespace = str_at(workload, "/metadata/namespace");
    let mut labels = workload
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(key.clone(), json!(value));
    // The API server labels every namespace with its name.
    let mut namespace_labels = r
        .objects
        .iter()
        .find(|o| str_at(o, "/kind") == "Namespace" && str_at(o, "/metadata/name") == namespace)
        .and_then(|ns| ns.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    namespace_labels.insert("kubernetes.io/metadata.name".into(), json!(namespace));
    Pod {
        namespace,
        namespace_labels,
        labels,
    }
}

/// `target`'s `port`/`protocol` is isolated by a policy, reachable through at least one peer,
/// and every peer (`None`: any source) that reaches it passes `allowed`.
fn only_from(
    p: &mut Vec<String>,
    r: &Render,
    target: &Pod,
    port: &(i64, String),
    protocol: &str,
    what: &str,
    allowed: impl Fn(Option<&Value>) -> bool,
) {
    let policies: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| {
            str_at(o, "/kind") == "NetworkPolicy"
                && str_at(o, "/metadata/namespace") == target.namespace
                && o.pointer("/spec/podSelector")
                    .is_some_and(|s| selects(s, &target.labels))
                && isolates_ingress(o)
        })
        .collect();
    if policies.is_empty() {
        p.push(format!("{what}: no NetworkPolicy isolates these pods"));
        return;
    }
    let mut reachable = false;
    for policy in policies {
        let name = str_at(policy, "/metadata/name");
        for rule in policy
            .pointer("/spec/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !rule_covers(rule, port, protocol) {
                continue;
            }
            let peers: Vec<Option<&Value>> = match rule.pointer("/from").and_then(Value::as_array) {
                Some(from) if !from.is_empty() => from.iter().map(Some).collect(),
                _ => vec![None],
            };
            for peer in peers {
                reachable = true;
                if !allowed(peer) {
                    let peer = peer.map_or("every source".to_string(), Value::to_string);
                    p.push(format!("{what}: NetworkPolicy {name} lets in {peer}"));
                }
            }
        }
    }
    if !reachable {
        p.push(format!("{what}: no NetworkPolicy rule lets anything in"));
    }
}

fn isolates_ingress(policy: &Value) -> bool {
    match policy
        .pointer("/spec/policyTypes")
        .and_then(Value::as_array)
    {
        Some(types) => types.iter().any(|t| t == "Ingress"),
        None => true,
    }
}

fn rule_covers(rule: &Value, (number, name): &(i64, String), protocol: &str) -> bool {
    let Some(ports) = rule.pointer("/ports").and_then(Value::as_array) else {
        return true;
    };
    ports.is_empty()
        || ports.iter().any(|p| {
            let proto = p
                .pointer("/protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            let port = match p.pointer("/port") {
                None => true,
                Some(Value::String(s)) => s == name,
                Some(v) => v.as_i64().is_some_and(|first| {
                    let last = p
                        .pointer("/endPort")
                        .and_then(Value::as_i64)
                        .unwrap_or(first);
                    (first..=last).contains(number)
                }),
            };
            proto == protocol && port
        })
}

/// A NetworkPolicy peer that selects `pod` by its labels and its namespace's: not every pod
/// (an empty selector), not an ipBlock (pod IPs change).
fn selects_peer(peer: &Value, pod: &Pod) -> bool {
    let narrow = |ptr: &str, labels: &Map<String, Value>| {
        peer.pointer(ptr)
            .is_some_and(|s| !is_empty_selector(s) && selects(s, labels))
    };
    narrow("/namespaceSelector", &pod.namespace_labels) && narrow("/podSelector", &pod.labels)
}

fn is_empty_selector(selector: &Value) -> bool {
    ["/matchLabels", "/matchExpressions"].iter().all(|ptr| {
        selector.pointer(ptr).is_none_or(|v| match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => true,
        })
    })
}

/// A label selector (matchLabels, matchExpressions) against a label set.
fn selects(selector: &Value, labels: &Map<String, Value>) -> bool {
    let match_labels = selector
        .pointer("/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector
        .pointer("/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let value = labels.get(str_at(e, "/key"));
            let listed = |v: &Value| {
                e.pointer("/values")
                    .and_then(Value::as_array)
                    .is_some_and(|vs| vs.contains(v))
            };
            match str_at(e, "/operator") {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
    match_labels && expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapod_testkit::testbed::APP_NAMESPACE;

    fn render(policy_pods: &str, metrics_from: &str) -> Render {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {CONTROLLER_NAME}, namespace: {CONTROLLER_NAMESPACE}}}\n\
             spec:\n  template:\n    metadata: {{labels: {{app: icr, role: standby}}}}\n    spec:\n      containers:\n\
             \x20       - name: controller\n          ports: [{{name: http, containerPort: 8080, protocol: TCP}}]\n\
             ---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: app, namespace: {APP_NAMESPACE}}}\n\
             spec:\n  template:\n    metadata: {{labels: {{app: hapod, role: standby}}}}\n    spec:\n      containers:\n\
             \x20       - name: app\n          ports: [{{name: notify, containerPort: 10001, protocol: UDP}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: app, namespace: {APP_NAMESPACE}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: hapod}}}}\n  ingress:\n\
             \x20   - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {CONTROLLER_NAMESPACE}}}}}, podSelector: {policy_pods}}}]\n\
             \x20     ports: [{{port: 10001, protocol: UDP}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: c, namespace: {CONTROLLER_NAMESPACE}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: icr}}}}\n  policyTypes: [Ingress]\n  ingress:\n\
             \x20   - {metrics_from}ports: [{{port: http}}]\n"
        );
        Render::new("test", yaml).unwrap()
    }

    const MONITORING: &str = "from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]\n      ";

    #[test]
    fn the_shipped_shape_passes() {
        let r = render("{matchLabels: {app: icr}}", MONITORING);
        assert_eq!(network_policy_problems(&r).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_broken_label_or_an_open_port_fails() {
        for (pods, from) in [
            ("{matchLabels: {app: icx}}", MONITORING),
            ("{matchLabels: {role: active}}", MONITORING),
            ("{}", MONITORING),
            ("{matchLabels: {app: icr}}", ""),
        ] {
            let problems = network_policy_problems(&render(pods, from)).unwrap();
            assert!(!problems.is_empty(), "{pods} / {from:?} passed");
        }
    }
}
