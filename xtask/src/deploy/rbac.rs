//! The RBAC proof: with the controller ServiceAccount's own token, `kubectl auth can-i` must
//! answer yes to every verb the controller uses and no to each thing it must not do.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::problems::Problems;
use super::render::str_at;
use super::server::Kubectl;

/// One `kubectl auth can-i` question and the answer the RBAC must give.
struct Can {
    verb: &'static str,
    resource: &'static str,
    /// None: all namespaces (`-A`); Some("") for cluster-scoped resources.
    namespace: Option<String>,
    allowed: bool,
}

fn rbac_expectations(controller_ns: &str, app_ns: &str) -> Vec<Can> {
    let mut v = Vec::new();
    let mut add = |verbs: &[&'static str], resource: &'static str, ns: Option<&str>, allowed| {
        for verb in verbs {
            v.push(Can {
                verb,
                resource,
                namespace: ns.map(str::to_string),
                allowed,
            });
        }
    };
    // Needed.
    add(
        &["get", "list", "watch", "patch", "delete"],
        "pods",
        None,
        true,
    );
    add(
        &["get", "list", "watch", "patch", "delete"],
        "pods",
        Some(app_ns),
        true,
    );
    add(&["get", "patch", "delete"], "pods", Some("default"), true);
    add(
        &["get", "list", "watch", "patch"],
        "pods",
        Some(controller_ns),
        true,
    );
    add(
        &["create", "patch"],
        "events.events.k8s.io",
        Some(app_ns),
        true,
    );
    add(&["create", "patch"], "events", Some(app_ns), true);
    add(
        &["create", "patch"],
        "events.events.k8s.io",
        Some(controller_ns),
        true,
    );
    // EndpointSlice mode.
    add(&["get"], "services", Some(app_ns), true);
    add(
        &["get", "create", "update", "delete"],
        "endpointslices.discovery.k8s.io",
        Some(app_ns),
        true,
    );
    let lease_verbs = ["get", "list", "watch", "create", "update", "patch"];
    add(
        &lease_verbs,
        "leases.coordination.k8s.io",
        Some(controller_ns),
        true,
    );
    // Must not have.
    add(&["create", "update"], "pods", Some(app_ns), false);
    add(&["create", "update"], "pods", None, false);
    add(&["create"], "pods/exec", Some(app_ns), false);
    add(&["create"], "pods/eviction", Some(app_ns), false);
    add(&["patch", "update"], "pods/status", Some(app_ns), false);
    add(
        &["delete", "create", "patch", "update", "list"],
        "services",
        Some(app_ns),
        false,
    );
    add(
        &["list", "watch", "patch"],
        "endpointslices.discovery.k8s.io",
        Some(app_ns),
        false,
    );
    add(&["get", "list"], "secrets", None, false);
    add(&["get", "list"], "secrets", Some(controller_ns), false);
    add(&["get", "list"], "secrets", Some(app_ns), false);
    add(
        &["create", "update", "get"],
        "leases.coordination.k8s.io",
        Some(app_ns),
        false,
    );
    add(
        &["delete"],
        "leases.coordination.k8s.io",
        Some(controller_ns),
        false,
    );
    add(&["delete", "list"], "events", Some(app_ns), false);
    add(
        &["patch", "delete"],
        "deployments.apps",
        Some(app_ns),
        false,
    );
    add(
        &["patch", "delete"],
        "replicasets.apps",
        Some(app_ns),
        false,
    );
    add(&["list", "patch"], "nodes", Some(""), false);
    add(
        &["create", "patch", "escalate", "bind"],
        "clusterroles.rbac.authorization.k8s.io",
        Some(""),
        false,
    );
    add(
        &["create"],
        "serviceaccounts/token",
        Some(controller_ns),
        false,
    );
    v
}

/// Proves, with the ServiceAccount's own token, that it can do everything the controller
/// does and none of the listed things it must not.
/// The RBAC proof as a library call, for the end-to-end tests: with the ServiceAccount's own
/// token (`kubectl create token`), `kubectl auth can-i` must answer yes to every verb the
/// controller uses and no to each of a list of things it must not do. `kubectl`: the binary
/// to use (e.g. the control plane's own); `kubeconfig`: an admin kubeconfig.
pub fn prove_controller_rbac(
    kubectl: &Path,
    kubeconfig: &Path,
    controller_ns: &str,
    service_account: &str,
    app_ns: &str,
) -> Result<()> {
    prove_rbac(
        &Kubectl::new(kubectl, kubeconfig),
        controller_ns,
        service_account,
        app_ns,
    )
}

pub(crate) fn prove_rbac(
    kubectl: &Kubectl,
    controller_ns: &str,
    service_account: &str,
    app_ns: &str,
) -> Result<()> {
    let token = kubectl
        .run(&[
            "create",
            "token",
            service_account,
            "--namespace",
            controller_ns,
            "--duration",
            "10m",
        ])
        .context("kubectl create token")?;
    let view = kubectl.run(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ])?;
    let view: Value = serde_json::from_str(&view)?;
    let mut cluster = view
        .pointer("/clusters/0/cluster")
        .context("kubeconfig has no cluster")?
        .clone();
    if let Some(m) = cluster.as_object_mut() {
        m.retain(|k, _| {
            matches!(
                k.as_str(),
                "server"
                    | "certificate-authority-data"
                    | "tls-server-name"
                    | "insecure-skip-tls-verify"
            )
        });
    }
    // A kubeconfig holding nothing but the token: no client certificate may authenticate.
    let sa_config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    });
    let dir = tempfile::tempdir()?;
    let sa_kubeconfig = dir.path().join("sa.kubeconfig");
    std::fs::write(&sa_kubeconfig, serde_json::to_vec(&sa_config)?)?;
    let sa = kubectl.with_kubeconfig(&sa_kubeconfig);

    let whoami: Value = serde_json::from_str(&sa.run(&["auth", "whoami", "-o", "json"])?)?;
    let user = str_at(&whoami, "/status/userInfo/username").to_string();
    let want_user = format!("system:serviceaccount:{controller_ns}:{service_account}");
    ensure!(
        user == want_user,
        "token authenticates as {user:?}, not {want_user}"
    );

    let mut p = Problems::default();
    let expectations = rbac_expectations(controller_ns, app_ns);
    let mut table = BTreeMap::new();
    for can in &expectations {
        let mut cmd = sa.cmd();
        cmd.args(["auth", "can-i", can.verb]);
        match can.resource.split_once('/') {
            Some((resource, sub)) => cmd.args([resource, "--subresource", sub]),
            None => cmd.arg(can.resource),
        };
        match can.namespace.as_deref() {
            None => {
                cmd.arg("--all-namespaces");
            }
            Some("") => {}
            Some(ns) => {
                cmd.args(["--namespace", ns]);
            }
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let yes = match (out.status.code(), answer.as_str()) {
            (Some(0), "yes") => true,
            (Some(1), a) if a.starts_with("no") => false,
            _ => bail!(
                "kubectl auth can-i {} {}: unexpected answer {answer:?} ({}): {}",
                can.verb,
                can.resource,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        let scope = match can.namespace.as_deref() {
            None => "all namespaces".to_string(),
            Some("") => "cluster".to_string(),
            Some(ns) => ns.to_string(),
        };
        table.insert(
            format!("{:>8} {} ({scope})", can.verb, can.resource),
            (yes, can.allowed),
        );
        p.expect(yes == can.allowed, || {
            format!(
                "{user} can-i {} {} in {scope}: {}, must be {}",
                can.verb,
                can.resource,
                if yes { "yes" } else { "no" },
                if can.allowed { "yes" } else { "no" }
            )
        });
    }
    let allowed = table.values().filter(|(yes, _)| *yes).count();
    eprintln!(
        "xtask deploy: RBAC of {user}: {} questions, {allowed} allowed, {} denied",
        table.len(),
        table.len() - allowed
    );
    p.finish("RBAC proof (kubectl auth can-i with the ServiceAccount token)")
}
