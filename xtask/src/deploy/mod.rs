//! `cargo xtask deploy ...`: render and validate everything under `deploy/`.
//!
//! `deploy check` renders the kustomize base and overlay (`kubectl kustomize`) and the Helm
//! chart (`helm template`, several value sets), checks the invariants the manifests promise
//! (security contexts, probes, labels, the Service's port, the notify key wiring, the
//! NetworkPolicies), checks that
//! the chart renders the same objects (kind/namespace/name, RBAC rules, selectors, containers)
//! as kustomize, then validates every render against a real kube-apiserver
//! (`kubectl apply --dry-run=server`) and proves the controller's RBAC with its own
//! ServiceAccount token (`kubectl auth can-i`: every verb it needs, and none of a list of
//! verbs it must not have). Any mismatch fails the command.
//!
//! `deploy rules` prints `deploy/observability/prometheus-rules.yaml` from the chart.
//!
//! `deploy rbac-check --kubeconfig K` runs only the RBAC proof against a cluster where the
//! controller's RBAC is installed (the end-to-end tests use it after `kubectl apply -k`).

mod binaries;
mod docs_example;
mod helm_test;
mod invariants;
mod netpol;
mod observability;
mod parity;
mod problems;
mod rbac;
mod releases;
mod render;
mod server;

use std::path::PathBuf;

use anyhow::{Context, Result};

use hapod_testkit::helm;
use hapod_testkit::testbed::{APP_NAMESPACE, CONTROLLER_NAME, CONTROLLER_NAMESPACE};

use binaries::binaries_accept_args;
use invariants::offline_checks;
pub use rbac::prove_controller_rbac;
use rbac::prove_rbac;
use render::render_all;
use server::{Kubectl, server_checks};

/// Render and validate `deploy/` (kustomize, Helm chart) against a real kube-apiserver.
#[derive(Debug, clap::Args)]
pub struct Cli {
    #[command(subcommand)]
    cmd: DeployCmd,
}

#[derive(Debug, clap::Subcommand)]
enum DeployCmd {
    /// Render kustomize + Helm, check invariants and chart/kustomize parity, validate
    /// against a real kube-apiserver and prove the RBAC.
    Check {
        /// Use this cluster instead of starting the project's control plane.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Only the renders and the offline checks (no API server).
        #[arg(long, conflicts_with = "kubeconfig")]
        offline: bool,
        /// Where to find hapod-controller / hapod-demo / hapod-agent to check that they accept
        /// the manifests' args (repeatable; default: <target>/debug and <target>/release).
        /// A binary found nowhere is skipped with a note.
        #[arg(long)]
        bin_dir: Vec<PathBuf>,
    },
    /// RBAC proof only, with the controller ServiceAccount's own token.
    RbacCheck {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "kubectl")]
        kubectl: PathBuf,
        /// Namespace of the controller (and of its ServiceAccount, Role and Lease).
        #[arg(long, default_value = CONTROLLER_NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = CONTROLLER_NAME)]
        service_account: String,
        /// A namespace holding application pods.
        #[arg(long, default_value = APP_NAMESPACE)]
        app_namespace: String,
    },
    /// Print the path of the cached helm binary, building it first if needed.
    Helm,
    /// Print deploy/observability/prometheus-rules.yaml as the chart renders it (its
    /// PrometheusRule at the default thresholds).
    Rules,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        run(self.cmd)
    }
}

fn run(cmd: DeployCmd) -> Result<()> {
    match cmd {
        DeployCmd::Check {
            kubeconfig,
            offline,
            bin_dir,
        } => check(kubeconfig, offline, bin_dir),
        DeployCmd::RbacCheck {
            kubeconfig,
            kubectl,
            namespace,
            service_account,
            app_namespace,
        } => prove_rbac(
            &Kubectl::new(kubectl, &kubeconfig),
            &namespace,
            &service_account,
            &app_namespace,
        ),
        DeployCmd::Helm => {
            println!("{}", helm::ensure_helm()?.display());
            Ok(())
        }
        DeployCmd::Rules => {
            let render = render::helm_template(
                &helm::ensure_helm()?,
                "monitoring",
                observability::MONITORING_SETS,
            )?;
            print!("{}", observability::rules_file(&render)?);
            Ok(())
        }
    }
}

fn check(kubeconfig: Option<PathBuf>, offline: bool, bin_dirs: Vec<PathBuf>) -> Result<()> {
    let renders = render_all()?;
    offline_checks(&renders)?;
    let bin_dirs = if bin_dirs.is_empty() {
        let target = hapod_testkit::target_dir()?;
        vec![target.join("debug"), target.join("release")]
    } else {
        bin_dirs
    };
    binaries_accept_args(&renders, &bin_dirs)?;
    if offline {
        return Ok(());
    }
    match kubeconfig {
        Some(k) => server_checks(&renders, &Kubectl::new("kubectl", &k)),
        None => {
            let cluster = hapod_testkit::controlplane::ControlPlane::start(Default::default())
                .context("starting the control plane")?;
            // The control plane's own kubectl matches the apiserver's version.
            let kubectl = Kubectl::new(cluster.binaries().path("kubectl"), &cluster.kubeconfig());
            let result = server_checks(&renders, &kubectl);
            cluster.stop()?;
            result
        }
    }
}
