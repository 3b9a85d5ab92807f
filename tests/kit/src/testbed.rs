//! The testbed: a real control plane, the process node and hapod deployed from `deploy/`.
//!
//! One implementation shared by the end-to-end tests (`tests/e2e`), `cargo xtask demo` and
//! `cargo xtask bench`:
//!
//! 1. builds the workspace binaries (`hapod-controller`, `hapod-demo`, `hapod-agent`,
//!    `hapod-node`; debug or release),
//! 2. starts the control plane ([`ControlPlane`]),
//! 3. starts the process node with the image map of `docs/contracts.md`,
//! 4. starts the [`History`] recorder (every pod change and every EndpointSlice change of the
//!    run, with the time our watch received it),
//! 5. applies `deploy/base` with the control plane's own kubectl (the controller runs as a pod
//!    on the process node, 2 replicas, under its ServiceAccount and RBAC; the sample app too),
//! 6. offers the helpers the scenarios need (wait for one active pod, EndpointSlices, the demo
//!    app's `/state`, the acting controller replica, `/tmp/killme`, `/tmp/unready`, failover
//!    timelines).
//!
//! Everything it started is stopped when the [`Testbed`] is dropped, also on failure.
//!
//! Network rule: every address used here is a loopback address (the API server on
//! 127.0.0.1, pod IPs 127.x.y.z from the process node). No ClusterIP is ever contacted: "the
//! Service" is reached through its EndpointSlice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::controlplane::ControlPlane;
use crate::{cargo, target_dir, workspace_root};

/// Namespace of the sample application in `deploy/base`.
pub const APP_NAMESPACE: &str = "hapod-demo";
/// Group label value of the sample application (`app=hapod`).
pub const APP_GROUP: &str = "hapod";
/// The sample application's Service.
pub const APP_SERVICE: &str = "hapod-demo";
/// The sample application's ReplicaSet (replicas).
pub const APP_REPLICAS: usize = 2;
/// The demo app's container name (HTTP endpoint, readiness probe, `/tmp/unready`).
pub const APP_CONTAINER: &str = "app";
/// The critical crash container of the sample app (`/tmp/killme`).
pub const CRITICAL_CONTAINER: &str = "critcontainer";
/// The non-critical crash container of the sample app (`/tmp/killme`, `pwcriticality:
/// noncritical`).
pub const NONCRITICAL_CONTAINER: &str = "sidecar";
/// The demo app's HTTP port.
pub const APP_HTTP_PORT: u16 = 8080;
/// The controller's HTTP port (`/metrics`, `/healthz`, `/readyz`).
pub const CONTROLLER_HTTP_PORT: u16 = 8080;
/// Namespace of the controller in `deploy/base`.
pub const CONTROLLER_NAMESPACE: &str = "hapod-system";
/// Group label value of the controller pods (`app=icr`).
pub const CONTROLLER_GROUP: &str = "icr";
/// Controller replicas in `deploy/base`.
pub const CONTROLLER_REPLICAS: usize = 2;
/// The controller's ServiceAccount.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "hapod-controller";
/// The election Lease.
pub const LEASE_NAME: &str = "hapod-controller";
/// Group label key.
pub const GROUP_LABEL: &str = "app";
/// Role label key.
pub const ROLE_LABEL: &str = "role";
/// Role values.
pub const ACTIVE: &str = "active";
pub const STANDBY: &str = "standby";
/// Epoch annotation on a promoted pod.
pub const EPOCH_ANNOTATION: &str = "hapod.io/epoch";
/// The process node publishes each container's private /tmp (host path) under this prefix.
pub const TMP_ANNOTATION_PREFIX: &str = "node.hapod.io/tmp-";

/// The binaries the testbed builds and the process node runs.
pub const BINARIES: [&str; 4] = [
    "hapod-controller",
    "hapod-demo",
    "hapod-agent",
    "hapod-node",
];
/// Images (last path segment, without tag) the process node maps to built binaries.
pub const IMAGES: [&str; 3] = ["hapod-controller", "hapod-demo", "hapod-agent"];

/// Cargo profile of the binaries under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
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
        }
    }
}

/// Prepares, outside, everything that needs the package registries (the control plane and the
/// binaries of `profile`), then runs this same command again inside the private network
/// namespace the testbed needs ([`crate::netns`]). Inside it, returns at once.
pub fn enter_private_network(profile: Profile) -> Result<()> {
    if crate::netns::inside() {
        return Ok(());
    }
    crate::controlplane::ensure_built().context("building the control plane")?;
    build_binaries(profile, true)?;
    crate::netns::reexec_inside().map(|never| match never {})
}

/// Builds the binaries the testbed runs and returns the folder holding them.
pub fn build_binaries(profile: Profile, verbose: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.arg("build").current_dir(workspace_root());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    for b in BINARIES {
        cmd.args(["--package", b]);
    }
    cmd.arg("--bins");
    if !verbose {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build of the testbed binaries failed"
    );
    let dir = target_dir()?.join(profile.dir());
    for b in BINARIES {
        ensure!(
            dir.join(b).is_file(),
            "binary {} missing after cargo build",
            dir.join(b).display()
        );
    }
    Ok(dir)
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

// ---------------------------------------------------------------------------------------------
// The running testbed
// ---------------------------------------------------------------------------------------------

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
    node: Option<Child>,
    tasks: Vec<JoinHandle<()>>,
    control_plane: Option<ControlPlane>,
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

        progress(opts.verbose, "starting the control plane");
        let cp_dir = run_dir.join("controlplane");
        let control_plane = tokio::task::spawn_blocking(move || start_control_plane(&cp_dir))
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
            tasks: Vec::new(),
            control_plane: Some(control_plane),
            verbose: opts.verbose,
        };
        // From here on, Drop stops everything on failure.
        tb.tasks = tb.history.start(tb.client.clone());
        progress(opts.verbose, "starting the process node");
        tb.start_node(&opts.node_args)?;
        tb.wait_node_ready(Duration::from_secs(60)).await?;

        progress(
            opts.verbose,
            &format!("applying {}", opts.kustomize_dir.display()),
        );
        tb.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &opts.kustomize_dir.to_string_lossy(),
        ])?;
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

    fn start_node(&mut self, extra_args: &[String]) -> Result<()> {
        let node_bin = self.bin_dir.join("hapod-node");
        let log = std::fs::File::create(self.run_dir.join("node.log"))?;
        let mut cmd = Command::new(&node_bin);
        cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        for image in IMAGES {
            cmd.arg("--image")
                .arg(format!("{image}={}", self.bin_dir.join(image).display()));
        }
        cmd.arg("--state-dir").arg(self.run_dir.join("node"));
        cmd.arg("--pod-cidr").arg(crate::netns::POD_CIDR);
        cmd.args(extra_args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", node_bin.display()))?;
        self.node = Some(child);
        Ok(())
    }

    async fn wait_node_ready(&mut self, timeout: Duration) -> Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.node.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "hapod-node exited early ({status}); log:\n{}",
                    tail(&self.run_dir.join("node.log"), 40)
                );
            }
            let list = nodes.list(&ListParams::default()).await?;
            let ready = list.items.iter().any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no Ready node after {timeout:?}; node log:\n{}",
                    tail(&self.run_dir.join("node.log"), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Runs the control plane's kubectl with the admin kubeconfig; returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let cp = self
            .control_plane
            .as_ref()
            .ok_or_else(|| anyhow!("control plane stopped"))?;
        let out = control_plane_kubectl(cp)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")?;
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pods of a group (label `app=<group>`) in a namespace, not yet deleted.
    pub async fn group_pods(&self, ns: &str, group: &str) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels(&format!("{GROUP_LABEL}={group}")))
            .await?;
        Ok(list.items)
    }

    /// One pod by name (None when gone).
    pub async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    /// Looks at a group once.
    pub async fn group_view(&self, ns: &str, group: &str) -> Result<GroupView> {
        let pods = self.group_pods(ns, group).await?;
        Ok(GroupView::new(pods))
    }

    /// Waits until exactly one pod of the group is labeled active (terminating pods
    /// included in the count) and returns it.
    pub async fn wait_one_active(&self, ns: &str, group: &str, timeout: Duration) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.group_view(ns, group).await?;
            let active = view.active();
            if active.len() == 1 {
                return Ok(active[0].clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: {} pods of group {ns}/{group} active; pods:\n{}",
                    active.len(),
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a pod other than `old` (by UID) is the only active pod of the group.
    pub async fn wait_new_active(
        &self,
        ns: &str,
        group: &str,
        old_uid: &str,
        timeout: Duration,
    ) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.group_view(ns, group).await?;
            let active = view.active();
            if active.len() == 1 && active[0].uid().as_deref() != Some(old_uid) {
                return Ok(active[0].clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: no new single active pod in {ns}/{group}; pods:\n{}",
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready endpoint addresses of a Service, merged over its EndpointSlices (sorted): what
    /// the real EndpointSlice controller published.
    pub async fn service_endpoints(&self, ns: &str, service: &str) -> Result<Vec<String>> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await?;
        let mut ips = BTreeSet::new();
        for slice in &list.items {
            ips.extend(ready_slice_addresses(slice));
        }
        Ok(ips.into_iter().collect())
    }

    /// Waits until the Service's ready endpoints are exactly `ips`.
    pub async fn wait_endpoints(
        &self,
        ns: &str,
        service: &str,
        ips: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let want: Vec<String> = {
            let mut v: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.service_endpoints(ns, service).await?;
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: Service {ns}/{service} endpoints are {got:?}, want {want:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The demo app's `/state` (its last applied notification).
    pub async fn app_state(&self, pod: &Pod) -> Result<AppState> {
        let ip = pod_ip(pod).ok_or_else(|| anyhow!("pod {} has no IP", pod.name_any()))?;
        let (status, body) = http_get(&ip, APP_HTTP_PORT, "/state", Duration::from_secs(2))
            .await
            .with_context(|| format!("GET http://{ip}:{APP_HTTP_PORT}/state"))?;
        ensure!(
            status == 200,
            "GET /state on {} answered {status}: {body}",
            pod.name_any()
        );
        serde_json::from_str(&body).with_context(|| format!("parsing /state: {body}"))
    }

    /// Waits until the pod's demo app reports it applied `role` (and, for active, the
    /// pod's epoch annotation).
    pub async fn wait_app_role(
        &self,
        ns: &str,
        name: &str,
        role: &str,
        timeout: Duration,
    ) -> Result<AppState> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.pod(ns, name).await? {
                None => bail!("pod {ns}/{name} is gone while waiting for its app to be {role}"),
                Some(pod) => {
                    let epoch = pod_epoch(&pod);
                    match self.app_state(&pod).await {
                        Ok(state) => {
                            let epoch_ok =
                                role != ACTIVE || (epoch.is_some() && state.epoch == epoch);
                            if state.role.as_deref() == Some(role) && epoch_ok {
                                return Ok(state);
                            }
                            last = format!("state {state:?}, pod epoch annotation {epoch:?}");
                        }
                        Err(e) => last = format!("{e:#}"),
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("timeout after {timeout:?}: app of {ns}/{name} is not {role}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the steady state of a group: `replicas` pods, none terminating, all Ready,
    /// exactly one active (with an epoch annotation), the others standby, the Service's ready
    /// endpoints exactly the active pod (when the group is the sample app), and the active
    /// app's `/state` showing role active with the pod's epoch.
    pub async fn wait_settled(
        &self,
        ns: &str,
        group: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Settled> {
        let deadline = Instant::now() + timeout;
        let mut why;
        loop {
            let view = self.group_view(ns, group).await?;
            why = view.settled_problem(replicas);
            if why.is_none() {
                let active = view.active()[0].clone();
                let standbys: Vec<Pod> = view
                    .live()
                    .into_iter()
                    .filter(|p| p.uid() != active.uid())
                    .cloned()
                    .collect();
                let ip = pod_ip(&active).unwrap_or_default();
                let eps = if ns == APP_NAMESPACE && group == APP_GROUP {
                    Some(self.service_endpoints(ns, APP_SERVICE).await?)
                } else {
                    None
                };
                match eps {
                    Some(eps) if eps != vec![ip.clone()] => {
                        why = Some(format!("service endpoints {eps:?}, active IP {ip}"))
                    }
                    _ => {
                        if ns == APP_NAMESPACE {
                            let epoch = pod_epoch(&active);
                            match self.app_state(&active).await {
                                Ok(s) if s.role.as_deref() == Some(ACTIVE) && s.epoch == epoch => {
                                    return Ok(Settled {
                                        active,
                                        standbys,
                                        app_state: Some(s),
                                    });
                                }
                                Ok(s) => {
                                    why = Some(format!(
                                        "active app state {s:?}, epoch annotation {epoch:?}"
                                    ))
                                }
                                Err(e) => why = Some(format!("active app /state: {e:#}")),
                            }
                        } else {
                            return Ok(Settled {
                                active,
                                standbys,
                                app_state: None,
                            });
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                let view = self.group_view(ns, group).await?;
                bail!(
                    "timeout after {timeout:?}: group {ns}/{group} not settled: {}\n{}",
                    why.unwrap_or_default(),
                    view.table()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Steady state of the controller replicas: both Ready, exactly one labeled active, and
    /// it holds the Lease.
    pub async fn wait_controllers_settled(&self, timeout: Duration) -> Result<Settled> {
        let deadline = Instant::now() + timeout;
        loop {
            let settled = self
                .wait_settled(
                    CONTROLLER_NAMESPACE,
                    CONTROLLER_GROUP,
                    CONTROLLER_REPLICAS,
                    deadline.saturating_duration_since(Instant::now()),
                )
                .await?;
            let holder = self.lease_holder().await?;
            if holder.as_deref() == Some(settled.active.name_any().as_str()) {
                return Ok(settled);
            }
            if Instant::now() > deadline {
                bail!(
                    "timeout after {timeout:?}: active controller pod {} but Lease holder {holder:?}",
                    settled.active.name_any()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pod name of the election Lease's holder (the holder identity is
    /// `<pod name>_<instance>`; pod names never contain `_`).
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        Ok(self
            .lease_holder_identity()
            .await?
            .map(|h| h.split('_').next().unwrap_or_default().to_string()))
    }

    /// The election Lease's holder identity, as written by the controller.
    pub async fn lease_holder_identity(&self) -> Result<Option<String>> {
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), CONTROLLER_NAMESPACE);
        Ok(api
            .get_opt(LEASE_NAME)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// The acting controller replica: the pod labeled active.
    pub async fn active_controller(&self, timeout: Duration) -> Result<Pod> {
        self.wait_one_active(CONTROLLER_NAMESPACE, CONTROLLER_GROUP, timeout)
            .await
    }

    /// Scrapes a controller replica's `/metrics` (pod IP, port 8080) and returns the sum of
    /// the samples of `metric` whose labels include every `labels` pair.
    pub async fn controller_metric(
        &self,
        pod: &Pod,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Result<f64> {
        let ip = pod_ip(pod).ok_or_else(|| anyhow!("pod {} has no IP", pod.name_any()))?;
        let (status, body) = http_get(
            &ip,
            CONTROLLER_HTTP_PORT,
            "/metrics",
            Duration::from_secs(2),
        )
        .await
        .with_context(|| format!("GET http://{ip}:{CONTROLLER_HTTP_PORT}/metrics"))?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(sum_metric(&body, metric, labels))
    }

    /// Host path of a container's private /tmp (annotation published by the process node).
    pub fn container_tmp(pod: &Pod, container: &str) -> Result<PathBuf> {
        let key = format!("{TMP_ANNOTATION_PREFIX}{container}");
        pod.annotations()
            .get(&key)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("pod {} has no annotation {key}", pod.name_any()))
    }

    /// Creates `/tmp/<file>` inside a container (through the node's host folder).
    pub fn touch_in_container(pod: &Pod, container: &str, file: &str) -> Result<PathBuf> {
        let path = Self::container_tmp(pod, container)?.join(file);
        std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Removes `/tmp/<file>` inside a container (no error when absent).
    pub fn remove_in_container(pod: &Pod, container: &str, file: &str) -> Result<()> {
        let path = Self::container_tmp(pod, container)?.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Performs a failure on a pod (returns the wall-clock time right before the action).
    pub async fn trigger(&self, pod: &Pod, trigger: Trigger) -> Result<SystemTime> {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let name = pod.name_any();
        let t = SystemTime::now();
        match trigger {
            Trigger::ForceDelete => {
                api.delete(&name, &DeleteParams::default().grace_period(0))
                    .await?;
            }
            Trigger::GracefulDelete => {
                api.delete(&name, &DeleteParams::default()).await?;
            }
            Trigger::KillCritical => {
                Self::touch_in_container(pod, CRITICAL_CONTAINER, "killme")?;
            }
            Trigger::KillNonCritical => {
                Self::touch_in_container(pod, NONCRITICAL_CONTAINER, "killme")?;
            }
            Trigger::Unready => {
                Self::touch_in_container(pod, APP_CONTAINER, "unready")?;
            }
        }
        Ok(t)
    }

    /// After a trigger on the active app pod `old` at `t_trigger`: waits until another pod is
    /// the only active one, the Service's EndpointSlice lists only it and its app applied the
    /// notification; returns the new active, its app state and the timeline.
    pub async fn await_failover(
        &self,
        old: &Pod,
        t_trigger: SystemTime,
        timeout: Duration,
    ) -> Result<(Pod, AppState, Timeline)> {
        let old_uid = old.uid().unwrap_or_default();
        let new = self
            .wait_new_active(APP_NAMESPACE, APP_GROUP, &old_uid, timeout)
            .await?;
        let new_ip = pod_ip(&new).ok_or_else(|| anyhow!("new active has no IP"))?;
        self.wait_endpoints(APP_NAMESPACE, APP_SERVICE, &[&new_ip], timeout)
            .await?;
        let state = self
            .wait_app_role(APP_NAMESPACE, &new.name_any(), ACTIVE, timeout)
            .await?;
        // Let the watch deliver what the API already shows.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let timeline = self.history.timeline(
            t_trigger,
            old,
            &new,
            APP_NAMESPACE,
            APP_SERVICE,
            Some(&state),
        );
        Ok((new, state, timeline))
    }

    /// Runs one failover of the sample app: the group must be settled first; performs
    /// `trigger` on the active pod, waits until another pod is the only active one, the
    /// Service's endpoints moved to it and its app applied the notification; returns the
    /// timeline (from the [`History`]) and the pods involved. Does not wait for the
    /// replacement: call [`Testbed::wait_settled`] afterwards.
    pub async fn failover(&self, trigger: Trigger, timeout: Duration) -> Result<Failover> {
        let before = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await
            .context("group not settled before the failover")?;
        let old = before.active.clone();
        let t_trigger = self.trigger(&old, trigger).await?;
        let (new, state, timeline) = self
            .await_failover(&old, t_trigger, timeout)
            .await
            .with_context(|| format!("no failover after {trigger:?} of {}", old.name_any()))?;
        Ok(Failover {
            trigger,
            old,
            new,
            standby_before: before.standbys,
            app_state: state,
            timeline,
        })
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
        if let Some(mut child) = self.node.take() {
            stop_child(&mut child, "hapod-node", Duration::from_secs(15));
        }
        if let Some(cp) = self.control_plane.take() {
            progress(self.verbose, "stopping the control plane");
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
fn stop_child(child: &mut Child, what: &str, grace: Duration) {
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

// --- adapters to the control plane library (xtask/src/controlplane.rs) -----------------------

fn start_control_plane(dir: &Path) -> Result<ControlPlane> {
    ControlPlane::start(crate::controlplane::Options {
        dir: Some(dir.to_path_buf()),
        ready_timeout: None,
    })
}

fn control_plane_kubeconfig(cp: &ControlPlane) -> PathBuf {
    cp.kubeconfig()
}

/// The control plane's kubectl (already pointed at the admin kubeconfig).
fn control_plane_kubectl(cp: &ControlPlane) -> Command {
    cp.kubectl()
}

// ---------------------------------------------------------------------------------------------
// Pods, groups
// ---------------------------------------------------------------------------------------------

/// Failures the testbed can cause on a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `DELETE` with grace period 0.
    ForceDelete,
    /// `DELETE` with the pod's grace period.
    GracefulDelete,
    /// `/tmp/killme` in the critical container (it aborts).
    KillCritical,
    /// `/tmp/killme` in the non-critical container (it aborts and keeps aborting, restarted
    /// in place by the node, until the file is removed).
    KillNonCritical,
    /// `/tmp/unready` in the app container (its readiness probe fails).
    Unready,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Trigger::ForceDelete,
        Trigger::GracefulDelete,
        Trigger::KillCritical,
        Trigger::KillNonCritical,
        Trigger::Unready,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Trigger::ForceDelete => "force-delete",
            Trigger::GracefulDelete => "graceful-delete",
            Trigger::KillCritical => "critical-crash",
            Trigger::KillNonCritical => "noncritical-crash",
            Trigger::Unready => "not-ready",
        }
    }
}

/// The result of [`Testbed::failover`].
#[derive(Clone, Debug)]
pub struct Failover {
    pub trigger: Trigger,
    pub old: Pod,
    pub new: Pod,
    pub standby_before: Vec<Pod>,
    pub app_state: AppState,
    pub timeline: Timeline,
}

/// A group's steady state.
#[derive(Clone, Debug)]
pub struct Settled {
    pub active: Pod,
    pub standbys: Vec<Pod>,
    pub app_state: Option<AppState>,
}

/// The pods of a group at one moment.
#[derive(Clone, Debug)]
pub struct GroupView {
    pub pods: Vec<Pod>,
}

impl GroupView {
    pub fn new(mut pods: Vec<Pod>) -> Self {
        pods.sort_by_key(|p| p.name_any());
        GroupView { pods }
    }
    /// Pods labeled active (terminating ones included).
    pub fn active(&self) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| pod_role(p) == Some(ACTIVE))
            .collect()
    }
    /// Pods not terminating.
    pub fn live(&self) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }
    /// Why the group is not in its steady state (None when it is).
    pub fn settled_problem(&self, replicas: usize) -> Option<String> {
        if self.pods.len() != replicas {
            return Some(format!("{} pods, want {replicas}", self.pods.len()));
        }
        if self.live().len() != replicas {
            return Some("a pod is terminating".into());
        }
        if let Some(p) = self.pods.iter().find(|p| !pod_ready(p)) {
            return Some(format!("pod {} not Ready", p.name_any()));
        }
        let active = self.active();
        if active.len() != 1 {
            return Some(format!("{} active pods", active.len()));
        }
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| pod_role(p) != Some(ACTIVE) && pod_role(p) != Some(STANDBY))
        {
            return Some(format!("pod {} has role {:?}", p.name_any(), pod_role(p)));
        }
        None
    }
    /// `kubectl get pods -L role` plus IPs and epochs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for p in &self.pods {
            let _ = writeln!(
                out,
                "  {:<14} {:<36} {:<8} {:<10} {:<16} ready={:<5} epoch={}{}",
                p.namespace().unwrap_or_default(),
                p.name_any(),
                pod_role(p).unwrap_or("-"),
                pod_phase(p),
                pod_ip(p).unwrap_or_else(|| "-".into()),
                pod_ready(p),
                pod_epoch(p)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into()),
                if p.metadata.deletion_timestamp.is_some() {
                    " (terminating)"
                } else {
                    ""
                }
            );
        }
        out
    }
}

/// The role label of a pod.
pub fn pod_role(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
}

/// The group label of a pod.
pub fn pod_group(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GROUP_LABEL))
        .map(String::as_str)
}

/// The epoch annotation of a pod.
pub fn pod_epoch(p: &Pod) -> Option<u64> {
    p.annotations().get(EPOCH_ANNOTATION)?.trim().parse().ok()
}

/// The pod IP.
pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone().filter(|s| !s.is_empty())
}

/// The pod phase.
pub fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "-".into())
}

/// Ready condition True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Names of containers that are not running.
pub fn not_running_containers(p: &Pod) -> Vec<String> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .filter(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_none())
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Restart count of one container.
pub fn restart_count(p: &Pod, container: &str) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
        .map(|c| c.restart_count)
}

fn ready_slice_addresses(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The demo app over HTTP (pod IPs are loopback addresses)
// ---------------------------------------------------------------------------------------------

/// The demo app's `/state`: its last applied notification.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AppState {
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub applied_at_unix_nanos: Option<u64>,
    #[serde(default)]
    pub sent_at_unix_nanos: Option<u64>,
    #[serde(default)]
    pub message_id: Option<u64>,
}

/// Whether the testbed may send a packet to `addr`: a loopback address, or (inside the
/// testbed's private network namespace, whose only interface is `lo`) a pod IP of
/// [`crate::netns::POD_CIDR`].
pub fn allowed_address(addr: IpAddr) -> bool {
    addr.is_loopback()
        || (crate::netns::inside()
            && matches!(addr, IpAddr::V4(v4) if v4.octets()[0] == 10 && v4.octets()[1] == 244))
}

/// A bounded HTTP/1.1 GET to a pod or loopback address (see [`allowed_address`]); returns
/// status and body.
pub async fn http_get(ip: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr: IpAddr = ip.parse().with_context(|| format!("bad IP {ip}"))?;
    ensure!(
        allowed_address(addr),
        "network rule: refusing to connect to {addr} (neither loopback nor a pod IP inside \
         the testbed's private network namespace)"
    );
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((addr, port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("timeout after {timeout:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: {text}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Sum of the samples of `metric` (Prometheus/OpenMetrics text) whose labels include every
/// `labels` pair.
pub fn sum_metric(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let ok = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        });
        if ok
            && let Some(v) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// History: every pod change and EndpointSlice change of the run
// ---------------------------------------------------------------------------------------------

/// One observed pod state (recorded when anything listed here changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// resourceVersion of the event (etcd revision of the write).
    pub rv: u64,
    /// When our watch received it (UNIX nanos).
    pub seen_unix_nanos: u64,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub group: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub ip: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// The Delete event.
    pub deleted: bool,
    pub not_running: Vec<String>,
}

impl PodRecord {
    fn from_pod(p: &Pod, deleted: bool, seen: u64) -> Option<PodRecord> {
        Some(PodRecord {
            rv: p.resource_version()?.parse().ok()?,
            seen_unix_nanos: seen,
            namespace: p.namespace().unwrap_or_default(),
            pod: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            group: pod_group(p).map(String::from),
            role: pod_role(p).map(String::from),
            epoch: pod_epoch(p),
            ip: pod_ip(p),
            ready: pod_ready(p),
            terminating: p.metadata.deletion_timestamp.is_some(),
            deleted,
            not_running: not_running_containers(p),
        })
    }
    fn same_state(&self, o: &PodRecord) -> bool {
        (
            &self.group,
            &self.role,
            self.epoch,
            &self.ip,
            self.ready,
            self.terminating,
            self.deleted,
            &self.not_running,
        ) == (
            &o.group,
            &o.role,
            o.epoch,
            &o.ip,
            o.ready,
            o.terminating,
            o.deleted,
            &o.not_running,
        )
    }
    /// Labeled active and not deleted (terminating pods count: they are still selected).
    pub fn is_active(&self) -> bool {
        !self.deleted && self.role.as_deref() == Some(ACTIVE)
    }
}

/// One observed state of a Service's endpoints (merged over its slices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointsRecord {
    pub rv: u64,
    pub seen_unix_nanos: u64,
    pub namespace: String,
    pub service: String,
    pub ready_ips: Vec<String>,
}

#[derive(Default)]
struct HistoryInner {
    pods: Vec<PodRecord>,
    last: HashMap<String, PodRecord>,
    endpoints: Vec<EndpointsRecord>,
    slices: HashMap<(String, String), (String, Vec<String>)>,
    watch_restarts: Vec<String>,
    /// Pods a scenario itself brought into a group while labeled active: (UID, rv).
    injected_actives: Vec<(String, u64)>,
    pod_inits: usize,
    slice_inits: usize,
}

/// Recorder of every pod change (resourceVersion, pod, group, role, readiness, deletion)
/// and every EndpointSlice change of the run, replayable in resourceVersion order.
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<HistoryInner>>,
}

/// A pair of pods of one group that were active at the same resourceVersion.
#[derive(Clone, Debug)]
pub struct DoubleActive {
    pub rv: u64,
    pub namespace: String,
    pub group: String,
    pub pods: Vec<String>,
    /// Every pod that was active there was terminating except one.
    pub only_terminating_overlap: bool,
}

impl History {
    /// Starts the pod and EndpointSlice watches (all namespaces).
    pub fn start(&self, client: Client) -> Vec<JoinHandle<()>> {
        let pods = {
            let me = self.clone();
            let api: Api<Pod> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                loop {
                    match stream.try_next().await {
                        Ok(Some(ev)) => me.on_pod_event(ev),
                        Ok(None) => break,
                        Err(e) => {
                            me.inner
                                .lock()
                                .unwrap()
                                .watch_restarts
                                .push(format!("pod watch error: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        };
        let slices = {
            let me = self.clone();
            let api: Api<EndpointSlice> = Api::all(client);
            tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                loop {
                    match stream.try_next().await {
                        Ok(Some(ev)) => me.on_slice_event(ev),
                        Ok(None) => break,
                        Err(e) => {
                            me.inner
                                .lock()
                                .unwrap()
                                .watch_restarts
                                .push(format!("endpointslice watch error: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        };
        vec![pods, slices]
    }

    fn on_pod_event(&self, ev: watcher::Event<Pod>) {
        let seen = now_unix_nanos();
        let mut g = self.inner.lock().unwrap();
        match ev {
            watcher::Event::Init => {
                g.pod_inits += 1;
                if g.pod_inits > 1 {
                    g.watch_restarts
                        .push("pod watch re-listed (changes in the gap may be missed)".into());
                }
            }
            watcher::Event::InitDone => {}
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => g.push_pod(&p, false, seen),
            watcher::Event::Delete(p) => g.push_pod(&p, true, seen),
        }
    }

    fn on_slice_event(&self, ev: watcher::Event<EndpointSlice>) {
        let seen = now_unix_nanos();
        let mut g = self.inner.lock().unwrap();
        match ev {
            watcher::Event::Init => {
                g.slice_inits += 1;
                if g.slice_inits > 1 {
                    g.watch_restarts
                        .push("endpointslice watch re-listed".into());
                }
            }
            watcher::Event::InitDone => {}
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                g.push_slice(&s, false, seen)
            }
            watcher::Event::Delete(s) => g.push_slice(&s, true, seen),
        }
    }

    /// Every recorded pod state, in resourceVersion order.
    pub fn pod_records(&self) -> Vec<PodRecord> {
        let mut v = self.inner.lock().unwrap().pods.clone();
        v.sort_by_key(|r| r.rv);
        v
    }

    /// Every recorded Service endpoints state, in resourceVersion order.
    pub fn endpoint_records(&self) -> Vec<EndpointsRecord> {
        let mut v = self.inner.lock().unwrap().endpoints.clone();
        v.sort_by_key(|r| r.rv);
        v
    }

    /// Watch errors and re-lists (a re-list may hide a change).
    pub fn watch_restarts(&self) -> Vec<String> {
        self.inner.lock().unwrap().watch_restarts.clone()
    }

    /// Declares that a scenario itself put the pod `uid` into a group while it was labeled
    /// active, by a write at resourceVersion `rv` (a pod relabeled back into its group): that
    /// second active is the scenario's doing, not the controller's. From `rv` until the pod's
    /// first record that is not active (the controller demoted it, or it is gone), the
    /// double-active check leaves it out; whether and how fast the controller demotes it is
    /// the scenario's own assertion.
    pub fn injected_active(&self, uid: &str, rv: u64) {
        self.inner
            .lock()
            .unwrap()
            .injected_actives
            .push((uid.to_string(), rv));
    }

    /// The pod records the double-active check replays: every record, in resourceVersion
    /// order, with the actives a scenario injected ([`History::injected_active`]) not active.
    fn controller_written_records(&self) -> Vec<PodRecord> {
        let injected = self.inner.lock().unwrap().injected_actives.clone();
        without_injected_actives(self.pod_records(), &injected)
    }

    /// Replays the pod records in resourceVersion order per group (namespace + group label)
    /// and returns every resourceVersion at which two pods of a group were labeled active
    /// (actives injected by a scenario left out, see [`History::injected_active`]).
    pub fn double_actives(&self) -> Vec<DoubleActive> {
        double_actives(&self.controller_written_records())
    }

    /// Errors when two pods of a group were ever active at the same resourceVersion (actives
    /// injected by a scenario left out); returns how many pod records and groups were
    /// checked.
    pub fn assert_no_double_active(&self) -> Result<(usize, usize)> {
        let records = self.controller_written_records();
        let bad = double_actives(&records);
        if bad.is_empty() {
            let groups: BTreeSet<(String, String)> = records
                .iter()
                .filter_map(|r| r.group.clone().map(|g| (r.namespace.clone(), g)))
                .collect();
            return Ok((records.len(), groups.len()));
        }
        {
            let mut msg = format!("{} double-active resourceVersions:\n", bad.len());
            for d in bad.iter().take(20) {
                let _ = writeln!(msg, "  {d:?}");
            }
            let _ = writeln!(msg, "history of the affected groups:");
            let affected: BTreeSet<(String, String)> = bad
                .iter()
                .map(|d| (d.namespace.clone(), d.group.clone()))
                .collect();
            for r in records.iter().filter(|r| {
                r.group
                    .as_ref()
                    .is_some_and(|g| affected.contains(&(r.namespace.clone(), g.clone())))
            }) {
                let _ = writeln!(
                    msg,
                    "  rv={} {}/{} role={:?} ready={} terminating={} deleted={}",
                    r.rv, r.namespace, r.pod, r.role, r.ready, r.terminating, r.deleted
                );
            }
            bail!(msg);
        }
    }

    /// First pod record at or after `since` matching `f`.
    pub fn first_pod(
        &self,
        since_unix_nanos: u64,
        f: impl Fn(&PodRecord) -> bool,
    ) -> Option<PodRecord> {
        self.pod_records()
            .into_iter()
            .filter(|r| r.seen_unix_nanos >= since_unix_nanos)
            .find(|r| f(r))
    }

    /// Builds a failover timeline from the records after `trigger`.
    pub fn timeline(
        &self,
        trigger: SystemTime,
        old: &Pod,
        new: &Pod,
        ns: &str,
        service: &str,
        app: Option<&AppState>,
    ) -> Timeline {
        let t0 = unix_nanos(trigger);
        let old_uid = old.uid().unwrap_or_default();
        let new_uid = new.uid().unwrap_or_default();
        let new_ip = pod_ip(new);
        let seen = self
            .first_pod(t0, |r| {
                r.uid == old_uid
                    && (r.deleted || r.terminating || !r.ready || !r.not_running.is_empty())
            })
            .map(|r| r.seen_unix_nanos);
        let demoted = self
            .first_pod(t0, |r| r.uid == old_uid && !r.is_active())
            .map(|r| r.seen_unix_nanos);
        let promoted = self
            .first_pod(t0, |r| r.uid == new_uid && r.is_active())
            .map(|r| r.seen_unix_nanos);
        let endpoints = self
            .endpoint_records()
            .into_iter()
            .filter(|r| r.seen_unix_nanos >= t0 && r.namespace == ns && r.service == service)
            .find(|r| {
                new_ip
                    .as_ref()
                    .is_some_and(|ip| r.ready_ips == vec![ip.clone()])
            })
            .map(|r| r.seen_unix_nanos);
        Timeline {
            trigger_unix_nanos: t0,
            seen_unix_nanos: seen,
            demoted_unix_nanos: demoted,
            promoted_unix_nanos: promoted,
            app_applied_unix_nanos: app.and_then(|a| a.applied_at_unix_nanos),
            endpoints_unix_nanos: endpoints,
        }
    }
}

impl HistoryInner {
    fn push_pod(&mut self, p: &Pod, deleted: bool, seen: u64) {
        let Some(r) = PodRecord::from_pod(p, deleted, seen) else {
            return;
        };
        if let Some(prev) = self.last.get(&r.uid)
            && prev.same_state(&r)
        {
            return;
        }
        self.last.insert(r.uid.clone(), r.clone());
        self.pods.push(r);
    }

    fn push_slice(&mut self, s: &EndpointSlice, deleted: bool, seen: u64) {
        let ns = s.namespace().unwrap_or_default();
        let Some(service) = s.labels().get("kubernetes.io/service-name").cloned() else {
            return;
        };
        let Some(rv) = s.resource_version().and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        let key = (ns.clone(), s.name_any());
        if deleted {
            self.slices.remove(&key);
        } else {
            self.slices
                .insert(key, (service.clone(), ready_slice_addresses(s)));
        }
        let mut ips: Vec<String> = self
            .slices
            .iter()
            .filter(|((n, _), (svc, _))| *n == ns && *svc == service)
            .flat_map(|(_, (_, ips))| ips.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ips.sort();
        let last = self
            .endpoints
            .iter()
            .rev()
            .find(|r| r.namespace == ns && r.service == service);
        if last.is_some_and(|l| l.ready_ips == ips) {
            return;
        }
        self.endpoints.push(EndpointsRecord {
            rv,
            seen_unix_nanos: seen,
            namespace: ns,
            service,
            ready_ips: ips,
        });
    }
}

/// `records` (in resourceVersion order) with each injected active `(uid, rv)` shown not
/// active from `rv` up to the pod's first record there that is not active.
fn without_injected_actives(
    mut records: Vec<PodRecord>,
    injected: &[(String, u64)],
) -> Vec<PodRecord> {
    for (uid, from) in injected {
        for r in records
            .iter_mut()
            .filter(|r| r.uid == *uid && r.rv >= *from)
        {
            if !r.is_active() {
                break;
            }
            r.role = None;
        }
    }
    records
}

/// Replays pod records (any order) in resourceVersion order per group; returns every
/// resourceVersion at which two or more pods of one group were labeled active.
pub fn double_actives(records: &[PodRecord]) -> Vec<DoubleActive> {
    let mut sorted: Vec<&PodRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.rv);
    // (namespace, group) -> uid -> (pod name, terminating) of active pods
    let mut active: BTreeMap<(String, String), BTreeMap<String, (String, bool)>> = BTreeMap::new();
    // uid -> group key, to move a pod out of its old group if its group label changes
    let mut group_of: HashMap<String, (String, String)> = HashMap::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let rv = sorted[i].rv;
        let mut touched = BTreeSet::new();
        while i < sorted.len() && sorted[i].rv == rv {
            let r = sorted[i];
            if let Some(old) = group_of.remove(&r.uid)
                && let Some(m) = active.get_mut(&old)
            {
                m.remove(&r.uid);
            }
            if let Some(g) = &r.group {
                let key = (r.namespace.clone(), g.clone());
                if !r.deleted {
                    group_of.insert(r.uid.clone(), key.clone());
                }
                if r.is_active() {
                    active
                        .entry(key.clone())
                        .or_default()
                        .insert(r.uid.clone(), (r.pod.clone(), r.terminating));
                }
                touched.insert(key);
            }
            i += 1;
        }
        for key in touched {
            if let Some(m) = active.get(&key)
                && m.len() > 1
            {
                let live = m.values().filter(|(_, t)| !t).count();
                out.push(DoubleActive {
                    rv,
                    namespace: key.0.clone(),
                    group: key.1.clone(),
                    pods: m.values().map(|(n, _)| n.clone()).collect(),
                    only_terminating_overlap: live <= 1,
                });
            }
        }
    }
    out
}

/// Failover time stamps (UNIX nanos, one host clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Right before the trigger (API call or file write).
    pub trigger_unix_nanos: u64,
    /// First watch event showing the failure on the old active pod.
    pub seen_unix_nanos: Option<u64>,
    /// Old active no longer labeled active (or gone).
    pub demoted_unix_nanos: Option<u64>,
    /// New active labeled (watch).
    pub promoted_unix_nanos: Option<u64>,
    /// The new active app applied the notification (its own clock, same host).
    pub app_applied_unix_nanos: Option<u64>,
    /// The Service's ready endpoints (its EndpointSlice) are exactly the new active pod.
    pub endpoints_unix_nanos: Option<u64>,
}

impl Timeline {
    /// (stage name, milliseconds since the trigger) for each stage that was observed.
    pub fn stages_ms(&self) -> Vec<(&'static str, Option<f64>)> {
        let ms = |t: Option<u64>| t.map(|t| (t as f64 - self.trigger_unix_nanos as f64) / 1e6);
        vec![
            ("failure seen (watch)", ms(self.seen_unix_nanos)),
            ("old active demoted", ms(self.demoted_unix_nanos)),
            ("new active labeled", ms(self.promoted_unix_nanos)),
            ("app applied notification", ms(self.app_applied_unix_nanos)),
            ("EndpointSlice moved", ms(self.endpoints_unix_nanos)),
        ]
    }

    /// A printable timeline.
    pub fn render(&self) -> String {
        let mut out = String::from("  t=0          trigger\n");
        for (name, ms) in self.stages_ms() {
            match ms {
                Some(ms) => {
                    let _ = writeln!(out, "  +{ms:>9.1} ms {name}");
                }
                None => {
                    let _ = writeln!(out, "  {:>12} {name}", "(not seen)");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rv: u64, pod: &str, role: Option<&str>, deleted: bool, terminating: bool) -> PodRecord {
        PodRecord {
            rv,
            seen_unix_nanos: rv,
            namespace: "ns".into(),
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            group: Some("g".into()),
            role: role.map(String::from),
            epoch: None,
            ip: None,
            ready: true,
            terminating,
            deleted,
            not_running: vec![],
        }
    }

    #[test]
    fn clean_failover_has_no_double_active() {
        let r = vec![
            rec(10, "a", Some(ACTIVE), false, false),
            rec(11, "b", Some(STANDBY), false, false),
            rec(12, "a", Some(ACTIVE), false, true),
            rec(13, "a", Some(STANDBY), false, true),
            rec(14, "b", Some(ACTIVE), false, false),
            rec(15, "a", Some(STANDBY), true, true),
        ];
        assert!(double_actives(&r).is_empty());
    }

    #[test]
    fn promotion_before_demotion_is_double_active() {
        let r = vec![
            rec(14, "b", Some(ACTIVE), false, false),
            rec(10, "a", Some(ACTIVE), false, false),
            rec(11, "b", Some(STANDBY), false, false),
            rec(15, "a", Some(STANDBY), false, false),
        ];
        let d = double_actives(&r);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].rv, 14);
        assert_eq!(d[0].pods, vec!["a".to_string(), "b".to_string()]);
        assert!(!d[0].only_terminating_overlap);
    }

    #[test]
    fn deleted_pod_stops_counting() {
        let r = vec![
            rec(10, "a", Some(ACTIVE), false, false),
            rec(11, "a", Some(ACTIVE), true, false),
            rec(12, "b", Some(ACTIVE), false, false),
        ];
        assert!(double_actives(&r).is_empty());
    }

    #[test]
    fn injected_active_is_left_out_until_demoted() {
        let r = vec![
            rec(10, "a", Some(ACTIVE), false, false),
            rec(11, "b", Some(ACTIVE), false, false),
            rec(12, "b", Some(STANDBY), false, false),
            rec(13, "b", Some(ACTIVE), false, false),
        ];
        let injected = [("uid-b".to_string(), 11)];
        let d = double_actives(&without_injected_actives(r.clone(), &injected));
        // Injected at 11, demoted at 12; active again at 13 is the controller's doing.
        assert_eq!(d.iter().map(|d| d.rv).collect::<Vec<_>>(), vec![13]);
        assert_eq!(double_actives(&r).len(), 2);
    }

    #[test]
    fn other_groups_do_not_interfere() {
        let mut b = rec(11, "b", Some(ACTIVE), false, false);
        b.group = Some("other".into());
        let r = vec![rec(10, "a", Some(ACTIVE), false, false), b];
        assert!(double_actives(&r).is_empty());
    }

    #[test]
    fn sum_metric_filters_labels() {
        let text = "# TYPE hapod_notifications counter\n\
            hapod_notifications_total{role=\"active\",outcome=\"acked\"} 3\n\
            hapod_notifications_total{role=\"standby\",outcome=\"acked\"} 5\n\
            hapod_notifications_total{role=\"active\",outcome=\"timed_out\"} 1\n\
            hapod_groups 2\n";
        let acked = [("role", "active"), ("outcome", "acked")];
        assert_eq!(sum_metric(text, "hapod_notifications_total", &acked), 3.0);
        assert_eq!(sum_metric(text, "hapod_notifications_total", &[]), 9.0);
        assert_eq!(sum_metric(text, "hapod_groups", &[]), 2.0);
    }

    #[test]
    fn dechunk_decodes() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }

    #[test]
    fn http_get_refuses_non_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(http_get("10.0.0.1", 80, "/", Duration::from_millis(10)))
            .unwrap_err();
        assert!(err.to_string().contains("network rule"));
    }
}
