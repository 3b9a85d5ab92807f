//! The chart's `helm test` hook: a Pod running `kubectl-hapod status --require-active` from
//! the controller image, under a ServiceAccount of its own bound to the release's viewer role.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde_json::Value;

use hapod_testkit::testbed::{CONTROLLER_NAME, CONTROLLER_NAMESPACE};

use super::invariants::args;
use super::problems::Problems;
use super::render::{RELEASE, Render, str_at};

const HOOK: &str = "/metadata/annotations/helm.sh~1hook";

/// The matching flags the plugin must share with the controller (name, the controller's
/// default when it does not pass the flag).
const MATCHING: &[(&str, &str)] = &[
    ("selector", "app=hapod"),
    ("group-label", "app"),
    ("role-label", "role"),
    ("active-value", "active"),
    ("standby-value", "standby"),
    ("critical-env", "pwcriticality"),
    ("critical-value", "critical"),
    ("lease-name", "hapod-controller"),
];

/// The test hook of `r` (release `RELEASE` in `CONTROLLER_NAMESPACE`): what it runs, with
/// which identity, in which namespaces, and that no NetworkPolicy keeps it from the API server.
pub(crate) fn test_hook(r: &Render) -> Result<()> {
    let pod = r
        .objects
        .iter()
        .find(|o| str_at(o, "/kind") == "Pod" && str_at(o, HOOK) == "test")
        .context("no Pod with the annotation helm.sh/hook: test")?;
    let mut p = Problems::default();
    p.expect_eq("restartPolicy", str_at(pod, "/spec/restartPolicy"), "Never");
    p.expect(
        pod.pointer("/spec/automountServiceAccountToken") != Some(&Value::Bool(false)),
        || "the pod gets no ServiceAccount token".into(),
    );
    bound_to_viewer(&mut p, r, pod);

    let controller = r
        .find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?
        .pointer("/spec/template/spec/containers/0")
        .context("no controller container")?;
    let controller_args = args(controller);
    let flag = |a: &[String], name: &str| {
        let prefix = format!("--{name}=");
        a.iter()
            .find_map(|x| x.strip_prefix(&prefix).map(str::to_string))
    };
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .context("no containers")?;
    let mut scopes = BTreeSet::new();
    for c in containers {
        let who = format!("container {}", str_at(c, "/name"));
        let a = args(c);
        p.expect_eq(
            &format!("{who} image"),
            str_at(c, "/image"),
            str_at(controller, "/image"),
        );
        p.expect_eq(
            &format!("{who} command"),
            c.pointer("/command/0").and_then(Value::as_str),
            Some("/usr/local/bin/kubectl-hapod"),
        );
        p.expect_eq(
            &format!("{who} subcommand"),
            a.first().map(String::as_str),
            Some("status"),
        );
        p.expect(a.iter().any(|x| x == "--require-active"), || {
            format!("{who} does not pass --require-active: it would succeed without an active pod")
        });
        p.expect_eq(
            &format!("{who} --controller-namespace"),
            flag(&a, "controller-namespace").as_deref(),
            Some(CONTROLLER_NAMESPACE),
        );
        for (name, default) in MATCHING {
            let want = flag(&controller_args, name).unwrap_or_else(|| (*default).into());
            p.expect_eq(&format!("{who} --{name}"), flag(&a, name), Some(want));
        }
        scopes.insert(flag(&a, "namespace").unwrap_or_else(|| {
            if a.iter().any(|x| x == "--all-namespaces") {
                String::new()
            } else {
                "(none)".into()
            }
        }));
    }
    // The namespaces the controller watches, each by a container; "" is every namespace.
    let watched: BTreeSet<String> = match flag(&controller_args, "namespaces") {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => [String::new()].into(),
    };
    p.expect_eq("namespaces the test reads", scopes, watched);
    egress_open(&mut p, r, pod);
    p.finish(&format!("{}: helm test hook", r.label))
}

/// The pod's ServiceAccount is a test hook of the release, bound by a test hook binding to
/// the release's viewer ClusterRole.
fn bound_to_viewer(p: &mut Problems, r: &Render, pod: &Value) {
    let (sa, ns) = (
        str_at(pod, "/spec/serviceAccountName"),
        str_at(pod, "/metadata/namespace"),
    );
    let hook = |kind: &str, namespace: &str, name: &str| {
        r.find(kind, namespace, name)
            .is_ok_and(|o| str_at(o, HOOK) == "test")
    };
    p.expect(hook("ServiceAccount", ns, sa), || {
        format!("no test hook ServiceAccount {ns}/{sa}")
    });
    let viewer = format!("{RELEASE}-viewer");
    let bound = r.objects.iter().any(|b| {
        str_at(b, "/kind") == "ClusterRoleBinding"
            && str_at(b, HOOK) == "test"
            && str_at(b, "/roleRef/kind") == "ClusterRole"
            && str_at(b, "/roleRef/name") == viewer
            && b.pointer("/subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|s| str_at(s, "/name") == sa && str_at(s, "/namespace") == ns)
    });
    p.expect(bound && r.find("ClusterRole", "", &viewer).is_ok(), || {
        format!("{ns}/{sa} is not bound to the release's ClusterRole {viewer} by a test hook")
    });
}

/// No rendered NetworkPolicy restricting egress selects the pod: it must reach the API server.
fn egress_open(p: &mut Problems, r: &Render, pod: &Value) {
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    for policy in r.objects.iter().filter(|o| {
        str_at(o, "/kind") == "NetworkPolicy"
            && str_at(o, "/metadata/namespace") == str_at(pod, "/metadata/namespace")
    }) {
        let restricts_egress = policy
            .pointer("/spec/policyTypes")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "Egress"));
        let selects = policy
            .pointer("/spec/podSelector/matchLabels")
            .and_then(Value::as_object)
            .is_none_or(|want| {
                want.iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            });
        p.expect(!(restricts_egress && selects), || {
            format!(
                "NetworkPolicy {} restricts the test pod's egress (the API server)",
                str_at(policy, "/metadata/name")
            )
        });
    }
}
