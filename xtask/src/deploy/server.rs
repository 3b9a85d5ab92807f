//! Server-side validation: every render applied with `kubectl apply --dry-run=server` to a
//! real kube-apiserver, then the RBAC installed from each source and proven.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use hapod_testkit::testbed::{APP_NAMESPACE, CONTROLLER_NAME, CONTROLLER_NAMESPACE};

use super::problems::Problems;
use super::rbac::prove_rbac;
use super::render::{Renders, run_capture, run_capture_all, str_at, to_yaml_stream};

/// A kubectl binary bound to a kubeconfig.
pub(crate) struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub(crate) fn new(bin: impl Into<PathBuf>, kubeconfig: &Path) -> Self {
        Self {
            bin: bin.into(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub(crate) fn with_kubeconfig(&self, kubeconfig: &Path) -> Self {
        Self::new(self.bin.clone(), kubeconfig)
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<String> {
        run_capture(self.cmd().args(args))
    }

    /// `kubectl apply -f` of `yaml`; any warning of the API server (deprecated API, Pod
    /// Security `warn` violations of a pod template, ...) is an error.
    pub(crate) fn apply(&self, yaml: &str, extra: &[&str]) -> Result<String> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, yaml)?;
        let (stdout, stderr) =
            run_capture_all(self.cmd().args(["apply", "-f"]).arg(&file).args(extra))?;
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("warning"))
            .collect();
        ensure!(
            warnings.is_empty(),
            "the API server warned:\n{}",
            warnings.join("\n")
        );
        Ok(stdout)
    }
}

pub(crate) fn server_checks(r: &Renders, kubectl: &Kubectl) -> Result<()> {
    // Namespaces for real: a server-side dry run of a namespaced object needs its namespace.
    // The docs example's gets the restricted Pod Security profile, as the base's have.
    let example_namespaces: Vec<Value> = r
        .docs_sidecar
        .objects
        .iter()
        .map(|o| str_at(o, "/metadata/namespace"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|name| {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted"}}})
        })
        .collect();
    let created: Vec<&Value> = r
        .base
        .objects
        .iter()
        .filter(|o| str_at(o, "/kind") == "Namespace")
        .chain(&example_namespaces)
        .collect();
    // Any other namespace a render puts objects in (the all-flags render's watched ones).
    let known: BTreeSet<&str> = created
        .iter()
        .map(|o| str_at(o, "/metadata/name"))
        .collect();
    let others: Vec<Value> = r
        .all()
        .iter()
        .flat_map(|render| &render.objects)
        .map(|o| str_at(o, "/metadata/namespace"))
        .filter(|ns| !ns.is_empty() && !known.contains(ns))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|name| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .collect();
    let namespaces: Vec<&Value> = created.into_iter().chain(&others).collect();
    kubectl
        .apply(&to_yaml_stream(&namespaces)?, &[])
        .context("creating the namespaces")?;
    // A Pod is admitted only once its ServiceAccount exists, and a dry run creates none. A
    // namespace's `default` one comes from kube-controller-manager.
    let mut accounts = Vec::new();
    for pod in r.all().iter().flat_map(|render| &render.objects) {
        if str_at(pod, "/kind") != "Pod" {
            continue;
        }
        let namespace = str_at(pod, "/metadata/namespace");
        match str_at(pod, "/spec/serviceAccountName") {
            "" | "default" => wait_for_default_account(kubectl, namespace)?,
            name => accounts.push(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace}})),
        }
    }
    kubectl
        .apply(&to_yaml_stream(&accounts.iter().collect::<Vec<_>>())?, &[])
        .context("creating the ServiceAccounts of the Pods")?;

    let mut p = Problems::default();
    for render in r.all() {
        let result = kubectl
            .apply(&render.yaml, &["--dry-run=server"])
            .map(|out| {
                eprintln!(
                    "xtask deploy: {}: server dry run ok ({} objects)",
                    render.label,
                    out.lines().count()
                );
            });
        p.wrap(
            &format!("{} (kubectl apply --dry-run=server)", render.label),
            result,
        );
    }
    p.finish("server-side validation")?;

    // RBAC for real, from each source in turn (same names: the second replaces the first),
    // each time proven with the ServiceAccount's own token.
    for render in [&r.base, &r.helm_default] {
        let rbac: Vec<&Value> = render
            .objects
            .iter()
            .filter(|o| {
                matches!(
                    str_at(o, "/kind"),
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            })
            .collect();
        kubectl
            .apply(&to_yaml_stream(&rbac)?, &[])
            .with_context(|| format!("applying the RBAC of {}", render.label))?;
        eprintln!("xtask deploy: RBAC of {}:", render.label);
        prove_rbac(
            kubectl,
            CONTROLLER_NAMESPACE,
            CONTROLLER_NAME,
            APP_NAMESPACE,
        )?;
    }
    Ok(())
}

fn wait_for_default_account(kubectl: &Kubectl, namespace: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while kubectl
        .run(&["-n", namespace, "get", "serviceaccount", "default"])
        .is_err()
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "no ServiceAccount {namespace}/default after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}
