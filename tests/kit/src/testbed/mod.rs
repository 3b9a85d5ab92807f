//! The testbed: a real control plane, the process node and hapod deployed from `deploy/`.
//! This file is its lifecycle ([`Testbed::start`], [`Testbed::stop`]); the rest is split by
//! concern:
//!
//! - [`names`]: the namespaces, groups, labels, annotations, Services and containers of
//!   `deploy/base` (shared with the deploy checks and the benchmark);
//! - `build`: the workspace binaries the process node runs;
//! - `nodes`: the process nodes (the first one; a second one a scenario starts and removes),
//!   cordoning, the pods bound to a node;
//! - `pods`: pod accessors (role, epoch, IP, readiness), a group's view, failure triggers;
//! - `wait`: the bounded waits for a state (one active, settled, endpoints, a failover);
//! - `http`: the bounded HTTP client for pods (`/state`, `/metrics`);
//! - `history`: the label-history recorder, the double-active check and failover timelines;
//! - `journal`: the applications' acting journals and the check that no two act at once.
//!
//! One implementation shared by the end-to-end tests (`tests/e2e`), `cargo xtask demo` and
//! `cargo xtask bench`. [`Testbed::start`]:
//!
//! 1. builds the workspace binaries (`hapod-controller`, `hapod-demo`, `hapod-agent`,
//!    `hapod-node`; debug or release),
//! 2. starts the control plane ([`ControlPlane`]),
//! 3. starts the process node with the image map of `docs/contracts.md`,
//! 4. starts the [`History`] recorder (every pod change and every EndpointSlice change of the
//!    run, with the time our watch received it),
//! 5. applies `deploy/base` with the control plane's own kubectl (the controller runs as a pod
//!    on the process node, 2 replicas, under its ServiceAccount and RBAC; the sample app too).
//!
//! Everything it started is stopped when the [`Testbed`] is dropped, also on failure.
//!
//! Network rule: the testbed runs inside its own network namespace ([`crate::netns`]), whose
//! only interface is `lo`. The API server listens on 127.0.0.1; the process nodes give pods
//! IPs from [`crate::netns::POD_CIDRS`] (10.244.0.0/16; 10.245.0.0/16 on a second node) on
//! that `lo`, so nothing reaches them from outside and no packet leaves the namespace. No
//! ClusterIP is ever contacted: "the Service" is reached through its EndpointSlice.

mod build;
mod controller;
mod history;
mod http;
mod journal;
pub mod names;
mod nodes;
mod pods;
mod traffic;
mod wait;

pub use build::*;
pub use history::*;
pub use http::*;
pub use journal::*;
pub use names::*;
pub use nodes::*;
pub use pods::*;
pub use traffic::*;
pub use wait::*;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use tokio::task::JoinHandle;

use crate::controlplane::ControlPlane;
use crate::{target_dir, workspace_root};

/// Cargo profile of the binaries under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// Cargo's folder for the profile, also its name in reports.
    pub fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// What runs the pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeKind {
    /// `hapod-node`: pods as local processes (fast, the default).
    #[default]
    Process,
    /// A kubelet with containerd, runc, CNI and kube-proxy ([`crate::realnode`]).
    Real,
}

/// How to start a testbed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Profile of the workspace binaries (debug for tests, release for the benchmark).
    pub profile: Profile,
    /// Build the binaries first (`cargo build`); off when the caller just built them.
    pub build: bool,
    /// Where logs (node, pods, control plane) of this run go; default
    /// `<target>/testbed/<name>-<unix time>`.
    pub run_dir: Option<PathBuf>,
    /// A name for the run (log folder).
    pub name: String,
    /// Kustomize directory to apply (default `deploy/base`).
    pub kustomize_dir: PathBuf,
    /// Wait for the sample app and the controller to settle after applying.
    pub wait_settled: bool,
    /// Extra arguments of the process node (e.g. `--max-pods=2200` for the scale benchmark).
    pub node_args: Vec<String>,
    /// Print progress lines.
    pub verbose: bool,
    /// etcd syncs every commit to disk (production-like; the benchmark). Tests keep it off.
    pub etcd_fsync: bool,
    /// What runs the pods.
    pub node: NodeKind,
    /// The real node's kube-proxy `nftables.minSyncPeriod` (`None`: its default, 1 s).
    pub kube_proxy_min_sync: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            profile: Profile::Debug,
            build: true,
            run_dir: None,
            name: "testbed".into(),
            kustomize_dir: workspace_root().join("deploy/base"),
            wait_settled: true,
            node_args: Vec::new(),
            verbose: true,
            etcd_fsync: false,
            node: NodeKind::Process,
            kube_proxy_min_sync: None,
        }
    }
}

/// Prepares, outside, everything that needs the package registries (the control plane, the
/// real node's runtime for [`NodeKind::Real`] and the binaries of `profile`), then runs this
/// same command again inside the private network namespace the testbed needs
/// ([`crate::netns`]). Inside it, returns at once.
pub fn enter_private_network(profile: Profile, node: NodeKind) -> Result<()> {
    if crate::netns::inside() {
        return Ok(());
    }
    crate::controlplane::ensure_built().context("building the control plane")?;
    if node == NodeKind::Real {
        crate::realnode::ensure_built().context("building the real node's runtime")?;
    }
    build_binaries(profile, true)?;
    crate::netns::reexec_inside().map(|never| match never {})
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock time as UNIX nanoseconds (the clock the demo app's `/state` uses).
pub fn now_unix_nanos() -> u64 {
    unix_nanos(SystemTime::now())
}

/// A running control plane + process node + hapod deployment.
pub struct Testbed {
    /// Admin client (system:masters).
    pub client: Client,
    /// Folder of this run's logs.
    pub run_dir: PathBuf,
    /// Folder of the binaries under test.
    pub bin_dir: PathBuf,
    /// Every pod and EndpointSlice change of the run.
    pub history: History,
    admin_kubeconfig: PathBuf,
    /// The first process node.
    node: Option<Child>,
    /// The real node, when it runs the pods instead.
    real_node: Option<crate::realnode::RealNode>,
    /// Extra arguments of every process node.
    node_args: Vec<String>,
    /// Second nodes started so far (each gets its own folder).
    second_nodes_started: AtomicUsize,
    tasks: Vec<JoinHandle<()>>,
    /// Shared with the blocking tasks of [`Testbed::with_control_plane`].
    control_plane: Option<Arc<ControlPlane>>,
    verbose: bool,
}

impl Testbed {
    /// Builds, starts and deploys everything; stops what it started if any step fails.
    pub async fn start(opts: Options) -> Result<Testbed> {
        ensure!(
            crate::netns::inside(),
            "the testbed runs inside its own network namespace (Services need non-loopback pod \
             IPs, which must never leave the machine): run it through `cargo xtask test`, \
             `cargo xtask demo` or `cargo xtask bench`"
        );
        let started = Instant::now();
        let bin_dir = if opts.build {
            progress(opts.verbose, "building the workspace binaries");
            let profile = opts.profile;
            let verbose = opts.verbose;
            tokio::task::spawn_blocking(move || build_binaries(profile, verbose)).await??
        } else {
            target_dir()?.join(opts.profile.dir())
        };
        for b in BINARIES {
            ensure!(
                bin_dir.join(b).is_file(),
                "testbed: binary {} is missing; build the workspace first (cargo build)",
                bin_dir.join(b).display()
            );
        }
        let run_dir = match &opts.run_dir {
            Some(d) => d.clone(),
            None => target_dir()?.join("testbed").join(format!(
                "{}-{}",
                opts.name,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            )),
        };
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let bin_dir = snapshot_binaries(&bin_dir, &run_dir.join("bin"))?;

        progress(opts.verbose, "starting the control plane");
        let cp_dir = run_dir.join("controlplane");
        let fsync = opts.etcd_fsync;
        let pod_network = opts.node == NodeKind::Real;
        let control_plane =
            tokio::task::spawn_blocking(move || start_control_plane(&cp_dir, fsync, pod_network))
                .await?
                .context(
                    "testbed: the control plane did not start (build it first with \
                 `cargo xtask controlplane build`, or run `cargo xtask test`)",
                )?;
        let admin_kubeconfig = control_plane_kubeconfig(&control_plane);
        let client = client_from_kubeconfig(&admin_kubeconfig).await?;

        let mut tb = Testbed {
            client,
            run_dir,
            bin_dir,
            history: History::default(),
            admin_kubeconfig,
            node: None,
            real_node: None,
            node_args: opts.node_args.clone(),
            second_nodes_started: AtomicUsize::new(0),
            tasks: Vec::new(),
            control_plane: Some(Arc::new(control_plane)),
            verbose: opts.verbose,
        };
        // From here on, Drop stops everything on failure.
        tb.tasks = tb.history.start(tb.client.clone());
        match opts.node {
            NodeKind::Process => {
                progress(opts.verbose, "starting the process node");
                tb.start_first_node().await?;
            }
            NodeKind::Real => {
                progress(
                    opts.verbose,
                    "starting the real node (containerd, kubelet, kube-proxy)",
                );
                tb.start_real_node(opts.kube_proxy_min_sync).await?;
            }
        }

        let kustomization = match opts.node {
            NodeKind::Process => opts.kustomize_dir.clone(),
            NodeKind::Real => {
                let journals = tb.journal_dir();
                let node = tb
                    .real_node
                    .as_mut()
                    .context("the real node did not start")?;
                let in_container = REAL_NODE_JOURNAL.trim_start_matches("/tmp/");
                let links = node.link_files(&format!("tmp-{APP_CONTAINER}"), in_container)?;
                std::fs::create_dir_all(journals.parent().unwrap_or(Path::new("/")))?;
                std::os::unix::fs::symlink(&links, &journals).with_context(|| {
                    format!("linking {} to {}", journals.display(), links.display())
                })?;
                real_node_kustomization(&opts.kustomize_dir, &tb.run_dir)?
            }
        };
        progress(
            opts.verbose,
            &format!("applying {}", kustomization.display()),
        );
        tb.apply_kustomization(&kustomization)?;
        if opts.wait_settled {
            progress(opts.verbose, "waiting for the controller replicas");
            tb.wait_controllers_settled(Duration::from_secs(120))
                .await
                .context("controller replicas did not settle")?;
            progress(opts.verbose, "waiting for the sample app group");
            tb.wait_settled(
                APP_NAMESPACE,
                APP_GROUP,
                APP_REPLICAS,
                Duration::from_secs(120),
            )
            .await
            .context("sample app group did not settle")?;
        }
        progress(
            opts.verbose,
            &format!("testbed ready in {:.1} s", started.elapsed().as_secs_f64()),
        );
        Ok(tb)
    }

    /// What runs the pods.
    pub fn node_kind(&self) -> NodeKind {
        match self.real_node {
            Some(_) => NodeKind::Real,
            None => NodeKind::Process,
        }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The running control plane (its server address, binaries and kubeconfig).
    pub fn control_plane(&self) -> Result<&ControlPlane> {
        self.control_plane
            .as_deref()
            .ok_or_else(|| anyhow!("control plane stopped"))
    }

    /// Runs `f` on the control plane off the async runtime (`spawn_blocking`): for its
    /// blocking calls, such as [`ControlPlane::restart`] of a component.
    pub async fn with_control_plane<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ControlPlane) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cp = self.control_plane_arc()?;
        tokio::task::spawn_blocking(move || f(&cp)).await?
    }

    /// A share of the running control plane, for what must outlive a borrow of the testbed
    /// (guards that undo a change when dropped).
    fn control_plane_arc(&self) -> Result<Arc<ControlPlane>> {
        self.control_plane
            .clone()
            .ok_or_else(|| anyhow!("control plane stopped"))
    }

    /// Runs the control plane's kubectl with the admin kubeconfig; returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run_kubectl(self.control_plane()?, args)
    }

    /// A client that authenticates as a ServiceAccount (token from the TokenRequest API).
    pub async fn service_account_client(&self, ns: &str, sa: &str) -> Result<Client> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
            serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [], "expirationSeconds": 3600}}),
        )?;
        let tr = api
            .create_token_request(sa, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {ns}/{sa}"))?;
        let token = tr
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
        let kc = Kubeconfig::read_from(&self.admin_kubeconfig)?;
        let mut v = serde_json::to_value(&kc)?;
        if let Some(users) = v.get_mut("users").and_then(|u| u.as_array_mut()) {
            for u in users {
                u["user"] = serde_json::json!({ "token": token });
            }
        }
        let kc: Kubeconfig = serde_json::from_value(v)?;
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(cfg)?)
    }

    /// A text dump of every hapod pod (for failure messages and the demo).
    pub async fn pods_table(&self) -> Result<String> {
        let mut out = String::new();
        for (ns, group) in [
            (CONTROLLER_NAMESPACE, CONTROLLER_GROUP),
            (APP_NAMESPACE, APP_GROUP),
        ] {
            let view = self.group_view(ns, group).await?;
            out.push_str(&view.table());
        }
        Ok(out)
    }

    /// Tail of the node log and of the controller replicas' logs, for failure reports.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Ok(t) = self.pods_table().await {
            let _ = writeln!(out, "pods:\n{t}");
        }
        let _ = writeln!(
            out,
            "node log ({}):\n{}",
            self.run_dir.join("node.log").display(),
            tail(&self.run_dir.join("node.log"), 30)
        );
        if let Ok(pods) = self
            .group_pods(CONTROLLER_NAMESPACE, CONTROLLER_GROUP)
            .await
        {
            for p in pods {
                if let Ok(log) = self.kubectl(&[
                    "logs",
                    "-n",
                    CONTROLLER_NAMESPACE,
                    &p.name_any(),
                    "--tail=30",
                ]) {
                    let _ = writeln!(out, "controller {} log:\n{log}", p.name_any());
                }
            }
        }
        out
    }

    /// Stops the node and the control plane (also done on drop).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let had_node = self.real_node.is_some() || self.node.is_some();
        if let Some(mut node) = self.real_node.take() {
            progress(self.verbose, "stopping the real node");
            node.stop();
        }
        if let Some(mut child) = self.node.take() {
            stop_child(&mut child, "hapod-node", Duration::from_secs(15));
        }
        if had_node {
            // Outside the run folder (see `journal_dir`): not left behind.
            let _ = std::fs::remove_dir_all(self.journal_dir());
        }
        if let Some(cp) = self.control_plane.take() {
            progress(self.verbose, "stopping the control plane");
            if Arc::strong_count(&cp) > 1 {
                progress(
                    self.verbose,
                    "a blocking call on the control plane is still running; the control \
                     plane stops when it ends",
                );
            }
            drop(cp);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn progress(verbose: bool, msg: &str) {
    if verbose {
        eprintln!("[testbed] {msg}");
    }
}

/// SIGTERM, bounded wait, then SIGKILL of the child's process group.
pub(crate) fn stop_child(child: &mut Child, what: &str, grace: Duration) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // Its process group may still hold stragglers.
            let _ = killpg(pid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("[testbed] {what} did not stop within {grace:?}; killing it");
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Links (or copies) the binaries under test into `to`: a build in another work tree sharing
/// the target folder replaces cargo's copies, and must not change what a running testbed
/// starts (the process node starts every replacement pod from these paths).
fn snapshot_binaries(from: &Path, to: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for b in BINARIES {
        let (src, dst) = (from.join(b), to.join(b));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(to.to_path_buf())
}

/// Where the sample app keeps its acting journal on the real node: in its writable /tmp
/// (the emptyDir `tmp-app`), from where the real node links it out
/// ([`crate::realnode::RealNode::link_files`]).
const REAL_NODE_JOURNAL: &str = "/tmp/hapod-journal";

/// The kustomization the real node runs: `base` with `deploy/components/writable-tmp` (a
/// writable /tmp in each container of the sample app: the failure triggers create files
/// there) and, as a test instrument, the sample app's acting journal in that /tmp (the
/// process node sets the same variable itself). Written into `run_dir`; kustomize takes
/// relative paths only.
fn real_node_kustomization(base: &Path, run_dir: &Path) -> Result<PathBuf> {
    let dir = run_dir.join("kustomization");
    std::fs::create_dir_all(&dir)?;
    let component = workspace_root().join("deploy/components/writable-tmp");
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": APP_NAME, "namespace": APP_NAMESPACE},
        "spec": {"template": {"spec": {"containers": [{
            "name": APP_CONTAINER,
            "env": [{"name": JOURNAL_ENV, "value": REAL_NODE_JOURNAL}],
        }]}}},
    });
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
         components:\n  - {}\npatches:\n  - patch: '{}'\n",
        relative_path(&dir, &std::path::absolute(base)?).display(),
        relative_path(&dir, &component).display(),
        // JSON is YAML; quoted, a quote is doubled.
        patch.to_string().replace('\'', "''")
    );
    std::fs::write(dir.join("kustomization.yaml"), text)?;
    Ok(dir)
}

/// `to` as a path relative to the folder `from` (both absolute).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    std::iter::repeat_n(std::path::Component::ParentDir, from.len() - common)
        .chain(to[common..].iter().copied())
        .collect()
}

/// Last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Client for a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

// --- adapters to the control plane runner (crate::controlplane) ------------------------------

fn start_control_plane(dir: &Path, etcd_fsync: bool, pod_network: bool) -> Result<ControlPlane> {
    ControlPlane::start(crate::controlplane::Options {
        dir: Some(dir.to_path_buf()),
        ready_timeout: None,
        etcd_fsync,
        pod_network,
    })
}

fn control_plane_kubeconfig(cp: &ControlPlane) -> PathBuf {
    cp.kubeconfig()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        assert_eq!(
            relative_path(
                Path::new("/w/target/testbed/e2e-1/k"),
                Path::new("/w/deploy/base")
            ),
            Path::new("../../../../deploy/base")
        );
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/a/b")),
            Path::new("b")
        );
    }
}
