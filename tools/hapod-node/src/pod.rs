//! One task per pod: runs its containers as processes, restarts them per restartPolicy with
//! crash-loop backoff, runs probes, writes the pod status on every change and finishes the
//! deletion after killing the processes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus, Probe};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::command::command_line;
use crate::config::NodeConfig;
use crate::expand::{EnvContext, RefData, build_env, expand, referenced_objects};
use crate::ip_allocator::IpAllocator;
use crate::probe::{self, ProbeKind, ProbeTarget};
use crate::process::{BindMount, ProcessSpec, Spawner, build_command, signal_group};
use crate::status::{
    ConditionClock, ContainerView, Kind, PodFacts, RunState, Terminated, build_status,
    should_restart,
};
use crate::volumes::{self, VolumeContext};

/// Annotation prefix under which each container's private /tmp host folder is published.
pub const TMP_ANNOTATION_PREFIX: &str = "node.hapod.io/tmp-";
/// Annotation prefix under which each container's log file (stdout and stderr) is published.
pub const LOG_ANNOTATION_PREFIX: &str = "node.hapod.io/log-";
const HOST_IP: &str = "127.0.0.1";
const TOKEN_REFRESH: Duration = Duration::from_secs(20 * 60);

/// Shared by every pod of the node process.
pub struct NodeCtx {
    pub client: Client,
    pub cfg: NodeConfig,
    pub ips: IpAllocator,
    pub spawner: Spawner,
    pub service_env: Vec<(String, String)>,
    pub ca_pem: Option<String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// Messages to a pod's task: from the node's pod watch and from the task's own helpers.
#[derive(Debug)]
pub enum Msg {
    /// The pod as last seen by the watch.
    Updated(Box<Pod>),
    /// The pod object is gone (force delete): kill at once.
    Gone,
    /// The node is stopping: kill at once, leave the API alone.
    Shutdown,
    Exited {
        idx: usize,
        inst: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Probe {
        idx: usize,
        inst: u64,
        kind: ProbeKind,
        ok: bool,
    },
    /// A backoff wait is over: try to start the container again.
    Retry {
        idx: usize,
        inst: u64,
    },
    /// The grace period is over: SIGKILL.
    Kill {
        idx: usize,
        inst: u64,
    },
    RefreshVolumes,
    FlushStatus,
}

fn now() -> Timestamp {
    Timestamp::now()
}

struct Ctr {
    spec: Container,
    view: ContainerView,
    /// Changes on every start attempt and exit, so that stale timers and probe results of an
    /// earlier instance are ignored.
    inst: u64,
    pid: Option<u32>,
    env: Vec<(String, String)>,
    program: Option<PathBuf>,
    tmp: PathBuf,
    log: PathBuf,
    backoff: Duration,
    attempts: u32,
    runs: u32,
    probes: Vec<AbortHandle>,
}

impl Ctr {
    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

pub struct PodWorker {
    ctx: Arc<NodeCtx>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    node_name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    volumes: HashMap<String, PathBuf>,
    ctrs: Vec<Ctr>,
    clock: ConditionClock,
    start_time: Timestamp,
    sandbox_error: Option<String>,
    /// Volumes were set up once; later failures are refreshes that leave them as they are.
    sandbox_ready: bool,
    sandbox_backoff: Duration,
    terminating: bool,
    tx: mpsc::UnboundedSender<Msg>,
    last_written: Option<PodStatus>,
    dirty_since: Option<Instant>,
}

/// Directory name of a pod below the state dir: readable and unique.
fn pod_dir_name(ns: &str, name: &str, uid: &str) -> String {
    format!("{ns}_{name}_{uid}")
}

impl PodWorker {
    /// Prepares the worker; returns `None` when no pod IP is left.
    pub fn new(ctx: Arc<NodeCtx>, pod: Pod, tx: mpsc::UnboundedSender<Msg>) -> Option<Self> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let node_name = spec.node_name.clone().unwrap_or_default();
        let preferred = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = ctx.ips.allocate(preferred)?;
        let dir = ctx
            .cfg
            .state_dir
            .join("pods")
            .join(pod_dir_name(&ns, &name, &uid));
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(now, |t| t.0);
        let mut ctrs = Vec::new();
        let previous: Vec<ContainerStatus> = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .cloned()
            .collect();
        let mut add = |c: &Container, kind: Kind| {
            let mut view =
                ContainerView::new(&c.name, c.image.as_deref().unwrap_or_default(), kind);
            // A pod that already ran (the node process restarted and its processes died with
            // it) keeps counting restarts: its next start is a restart.
            let ran_before = previous.iter().find(|p| p.name == c.name).filter(|p| {
                p.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || p.last_state
                        .as_ref()
                        .is_some_and(|s| s.terminated.is_some())
            });
            if let Some(p) = ran_before {
                view.restart_count = p.restart_count;
            }
            ctrs.push(Ctr {
                runs: u32::from(ran_before.is_some()),
                view,
                spec: c.clone(),
                inst: 0,
                pid: None,
                env: Vec::new(),
                program: None,
                tmp: dir.join("tmp").join(&c.name),
                log: dir.join("logs").join(format!("{}.log", c.name)),
                backoff: ctx.cfg.backoff_initial,
                attempts: 0,
                probes: Vec::new(),
            });
        };
        for c in spec.init_containers.iter().flatten() {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            add(c, kind);
        }
        for c in &spec.containers {
            add(c, Kind::Regular);
        }
        Some(Self {
            sandbox_backoff: ctx.cfg.backoff_initial,
            ctx,
            pod,
            ns,
            name,
            uid,
            node_name,
            ip,
            dir,
            volumes: HashMap::new(),
            ctrs,
            clock: ConditionClock::default(),
            start_time,
            sandbox_error: None,
            sandbox_ready: false,
            terminating: false,
            tx,
            last_written: None,
            dirty_since: None,
        })
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn env_ctx(&self) -> EnvContext {
        EnvContext {
            pod_ip: self.ip.to_string(),
            host_ip: HOST_IP.into(),
            node_name: self.node_name.clone(),
            service_env: self.ctx.service_env.clone(),
            node_cpu_millis: self.ctx.cpu_millis,
            node_memory_bytes: self.ctx.memory_bytes,
        }
    }

    fn after(&self, delay: Duration, msg: Msg) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(msg);
        });
    }

    fn mark(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// Runs the pod until it is deleted (or the node stops).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        tracing::info!(pod = %self.key(), ip = %self.ip, "pod assigned");
        if let Err(e) = self.prepare_dirs() {
            self.sandbox_error = Some(e);
        }
        self.publish_annotations().await;
        self.mark();
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.begin_termination();
        } else {
            self.setup_sandbox().await;
            self.reconcile().await;
        }
        loop {
            self.flush().await;
            if self.terminating && self.ctrs.iter().all(|c| c.pid.is_none()) {
                self.finish_deletion().await;
                return;
            }
            let Some(first) = rx.recv().await else { break };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for msg in batch {
                match msg {
                    Msg::Gone => {
                        tracing::info!(pod = %self.key(), "pod object gone: killing its processes");
                        self.kill_all();
                        self.cleanup();
                        return;
                    }
                    Msg::Shutdown => {
                        // The pod lives on in the API: its folder (logs above all) stays for
                        // whoever looks into a failed run, and for the next node process.
                        self.kill_all();
                        self.ctx.ips.release(self.ip);
                        return;
                    }
                    other => self.handle(other).await,
                }
            }
        }
        self.kill_all();
        self.cleanup();
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn prepare_dirs(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for c in &self.ctrs {
            std::fs::create_dir_all(&c.tmp).map_err(|e| format!("{}: {e}", c.tmp.display()))?;
            // Like /tmp: world-writable with the sticky bit, for containers that drop root.
            std::fs::set_permissions(&c.tmp, std::fs::Permissions::from_mode(0o1777))
                .map_err(|e| format!("{}: {e}", c.tmp.display()))?;
        }
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))
    }

    /// Publishes the host folder behind each container's /tmp (tests create `/tmp/killme`
    /// there since there is no `kubectl exec`) and its log file, before anything starts.
    async fn publish_annotations(&self) {
        let mut annotations = serde_json::Map::new();
        for c in &self.ctrs {
            annotations.insert(
                format!("{TMP_ANNOTATION_PREFIX}{}", c.view.name),
                Value::String(c.tmp.display().to_string()),
            );
            annotations.insert(
                format!("{LOG_ANNOTATION_PREFIX}{}", c.view.name),
                Value::String(c.log.display().to_string()),
            );
        }
        let patch = json!({ "metadata": { "annotations": annotations } });
        if let Err(e) = self
            .api()
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %self.key(), error = %e, "could not publish the /tmp annotations");
        }
    }

    async fn setup_sandbox(&mut self) {
        let env = self.env_ctx();
        let ctx = VolumeContext {
            client: &self.ctx.client,
            env: &env,
            ca_pem: self.ctx.ca_pem.as_deref(),
        };
        match volumes::materialize(&ctx, &self.pod, &self.dir.join("volumes")).await {
            Ok(paths) => {
                self.volumes = paths;
                self.sandbox_error = None;
                self.sandbox_ready = true;
                self.sandbox_backoff = self.ctx.cfg.backoff_initial;
                if volumes::has_token(&self.pod) {
                    self.after(TOKEN_REFRESH, Msg::RefreshVolumes);
                }
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "volume setup failed; retrying");
                // A failed refresh leaves running containers with the files they have.
                if !self.sandbox_ready {
                    for c in self.ctrs.iter_mut().filter(|c| c.attempts == 0) {
                        c.view.state = RunState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(format!("MountVolume.SetUp failed: {e}")),
                        };
                    }
                    self.sandbox_error = Some(e);
                }
                let delay = self.sandbox_backoff;
                self.sandbox_backoff = (delay * 2).min(self.ctx.cfg.backoff_max);
                self.after(delay, Msg::RefreshVolumes);
            }
        }
        self.mark();
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Updated(pod) => {
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let gates_changed = pod.status.as_ref().map(|s| &s.conditions)
                    != self.pod.status.as_ref().map(|s| &s.conditions);
                self.pod = *pod;
                if deleting && !self.terminating {
                    self.begin_termination();
                }
                if gates_changed {
                    self.mark();
                }
            }
            Msg::Exited {
                idx,
                inst,
                code,
                signal,
            } => self.on_exit(idx, inst, code, signal).await,
            Msg::Probe {
                idx,
                inst,
                kind,
                ok,
            } => self.on_probe(idx, inst, kind, ok).await,
            Msg::Retry { idx, inst } => {
                if self
                    .ctrs
                    .get(idx)
                    .is_some_and(|c| c.inst == inst && c.pid.is_none())
                    && !self.terminating
                {
                    self.start(idx).await;
                    self.reconcile().await;
                }
            }
            Msg::Kill { idx, inst } => {
                if let Some(c) = self.ctrs.get(idx).filter(|c| c.inst == inst)
                    && let Some(pid) = c.pid
                {
                    tracing::info!(pod = %self.key(), container = %c.view.name, "grace period over: SIGKILL");
                    signal_group(pid, Signal::SIGKILL);
                }
            }
            Msg::RefreshVolumes => {
                if !self.terminating {
                    let was_broken = self.sandbox_error.is_some();
                    self.setup_sandbox().await;
                    if was_broken {
                        self.reconcile().await;
                    }
                }
            }
            Msg::FlushStatus => self.mark(),
            Msg::Gone | Msg::Shutdown => {}
        }
    }

    /// Starts what should run now: init containers one by one (sidecars stay running), then
    /// all regular containers.
    async fn reconcile(&mut self) {
        if self.terminating || self.sandbox_error.is_some() {
            return;
        }
        for idx in 0..self.ctrs.len() {
            let c = &self.ctrs[idx];
            match c.view.kind {
                Kind::Sidecar => {
                    if c.attempts == 0 {
                        self.start(idx).await;
                    }
                    let c = &self.ctrs[idx];
                    if !(c.view.is_running() && c.view.started) {
                        return;
                    }
                }
                Kind::Init => {
                    if matches!(&c.view.state, RunState::Terminated(t) if t.exit_code == 0) {
                        continue;
                    }
                    if c.attempts == 0 {
                        self.start(idx).await;
                    }
                    return;
                }
                Kind::Regular => {
                    if c.attempts == 0 {
                        self.start(idx).await;
                    }
                }
            }
        }
    }

    /// Waits in `reason` and retries after the container's backoff.
    fn wait_and_retry(&mut self, idx: usize, reason: &str, message: String) {
        let c = &mut self.ctrs[idx];
        tracing::warn!(pod = %format_args!("{}/{}", self.ns, self.name), container = %c.view.name, reason, %message, "container cannot start");
        c.view.state = RunState::Waiting {
            reason: reason.into(),
            message: Some(message),
        };
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(self.ctx.cfg.backoff_max);
        let inst = c.inst;
        self.after(delay, Msg::Retry { idx, inst });
        self.mark();
    }

    async fn start(&mut self, idx: usize) {
        self.mark();
        let first_attempt = self.ctrs[idx].attempts == 0;
        {
            let c = &mut self.ctrs[idx];
            c.attempts += 1;
            c.inst += 1;
        }
        let image = self.ctrs[idx].view.image.clone();
        let binary = match self.ctx.cfg.images.resolve(&image) {
            Ok(b) => b,
            Err(e) => {
                let reason = if first_attempt {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                self.wait_and_retry(idx, reason, e);
                return;
            }
        };
        self.ctrs[idx].view.image_id = Some(format!("hapod-node://{}", binary.display()));
        let env = match self.container_env(idx).await {
            Ok(env) => env,
            Err(e) => {
                self.wait_and_retry(idx, "CreateContainerConfigError", e);
                return;
            }
        };
        let mounts = match self.mounts(idx) {
            Ok(m) => m,
            Err(e) => {
                self.wait_and_retry(idx, "CreateContainerConfigError", e);
                return;
            }
        };
        let c = &self.ctrs[idx];
        // A restarted container gets a fresh /tmp, as a new container's writable layer would.
        if c.runs > 0 {
            clear_dir(&c.tmp);
        }
        let (program, args) = command_line(&c.spec, &binary, &env);
        let spec = ProcessSpec {
            program: program.clone(),
            args,
            env: env.clone(),
            working_dir: c.spec.working_dir.as_ref().map(PathBuf::from),
            tmp_dir: Some(c.tmp.clone()),
            mounts,
            log_file: Some(c.log.clone()),
            join_mount_ns_of: None,
        };
        let spawned = match build_command(&spec) {
            Ok(cmd) => self.ctx.spawner.spawn(cmd).await,
            Err(e) => Err(e),
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let msg = format!("failed to start {}: {e}", program.display());
                self.wait_and_retry(idx, "RunContainerError", msg);
                return;
            }
        };
        let Some(pid) = child.id() else {
            self.wait_and_retry(
                idx,
                "RunContainerError",
                "process exited before it was tracked".into(),
            );
            return;
        };
        let uid = self.uid.clone();
        let c = &mut self.ctrs[idx];
        if c.runs > 0 {
            c.view.restart_count += 1;
        }
        c.runs += 1;
        c.pid = Some(pid);
        c.env = env;
        c.program = Some(binary);
        let started_at = now();
        c.view.state = RunState::Running {
            started_at,
            container_id: format!(
                "hapod-node://{uid}/{}/{}",
                c.view.name, c.view.restart_count
            ),
        };
        let has_startup = c.spec.startup_probe.is_some();
        c.view.started = !has_startup;
        c.view.ready = !has_startup && c.spec.readiness_probe.is_none();
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.view.name, pid, restarts = c.view.restart_count, "container started");
        let inst = c.inst;
        let tx = self.tx.clone();
        // The child's exit is reported as soon as the runtime reaps it (SIGCHLD), not polled.
        tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    (status.code(), status.signal())
                }
                Err(_) => (None, Some(libc::SIGKILL)),
            };
            let _ = tx.send(Msg::Exited {
                idx,
                inst,
                code,
                signal,
            });
        });
        if has_startup {
            self.spawn_probe(idx, ProbeKind::Startup);
        } else {
            self.spawn_probe(idx, ProbeKind::Readiness);
            self.spawn_probe(idx, ProbeKind::Liveness);
        }
    }

    async fn container_env(&self, idx: usize) -> Result<Vec<(String, String)>, String> {
        let container = &self.ctrs[idx].spec;
        let (secrets, config_maps) = referenced_objects(container);
        let mut refs = RefData::default();
        for name in secrets {
            let data = volumes::secret_strings(&self.ctx.client, &self.ns, &name).await?;
            refs.secrets.insert(name, data);
        }
        for name in config_maps {
            let data = volumes::config_map_strings(&self.ctx.client, &self.ns, &name).await?;
            refs.config_maps.insert(name, data);
        }
        let mut env = build_env(&self.pod, container, &self.env_ctx(), &refs)?;
        // What a container runtime adds: a PATH, HOME and the pod's host name.
        for (k, v) in [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOME", "/root"),
            ("HOSTNAME", self.name.as_str()),
        ] {
            if !env.iter().any(|(key, _)| key == k) {
                env.push((k.into(), v.into()));
            }
        }
        Ok(env)
    }

    fn mounts(&self, idx: usize) -> Result<Vec<BindMount>, String> {
        let c = &self.ctrs[idx];
        let env = &c.env;
        let mut out = Vec::new();
        for m in c.spec.volume_mounts.iter().flatten() {
            let source = self.volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "volume {} of mount {} is not available",
                    m.name, m.mount_path
                )
            })?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(e)) if !e.is_empty() => Some(expand(e, |n| {
                    env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                })),
                _ => None,
            };
            let source = match sub {
                Some(sub) if sub.split('/').any(|s| s == "..") || sub.starts_with('/') => {
                    return Err(format!("subPath {sub} must stay inside the volume"));
                }
                Some(sub) => {
                    let p = source.join(sub);
                    if !p.exists() {
                        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    }
                    p
                }
                None => source.clone(),
            };
            out.push(BindMount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true),
            });
        }
        Ok(out)
    }

    fn probe_of(c: &Container, kind: ProbeKind) -> Option<&Probe> {
        match kind {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
        }
    }

    fn spawn_probe(&mut self, idx: usize, kind: ProbeKind) {
        let c = &self.ctrs[idx];
        let (Some(probe), Some(pid), Some(program)) = (
            Self::probe_of(&c.spec, kind).cloned(),
            c.pid,
            c.program.clone(),
        ) else {
            return;
        };
        let target = ProbeTarget {
            pod_ip: self.ip,
            container: c.spec.clone(),
            pid,
            program,
            env: c.env.clone(),
            spawner: self.ctx.spawner.clone(),
        };
        let tx = self.tx.clone();
        let inst = c.inst;
        let scale = self.ctx.cfg.probe_period_scale;
        let task = tokio::spawn(probe::run(kind, probe, target, scale, move |ok| {
            tx.send(Msg::Probe {
                idx,
                inst,
                kind,
                ok,
            })
            .is_ok()
        }));
        self.ctrs[idx].probes.push(task.abort_handle());
    }

    async fn on_probe(&mut self, idx: usize, inst: u64, kind: ProbeKind, ok: bool) {
        let Some(c) = self
            .ctrs
            .get_mut(idx)
            .filter(|c| c.inst == inst && c.pid.is_some())
        else {
            return;
        };
        self.dirty_since.get_or_insert_with(Instant::now);
        match (kind, ok) {
            (ProbeKind::Readiness, ready) => {
                tracing::info!(pod = %format_args!("{}/{}", self.ns, self.name), container = %c.view.name, ready, "readiness changed");
                c.view.ready = ready;
            }
            (ProbeKind::Startup, true) => {
                c.view.started = true;
                c.view.ready = c.spec.readiness_probe.is_none();
                self.spawn_probe(idx, ProbeKind::Readiness);
                self.spawn_probe(idx, ProbeKind::Liveness);
                self.reconcile().await;
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                tracing::info!(pod = %format_args!("{}/{}", self.ns, self.name), container = %c.view.name, ?kind, "probe failed: restarting the container");
                let grace = Self::probe_of(&c.spec, kind)
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or_else(|| {
                        self.pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                self.stop_container(idx, grace);
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    /// SIGTERM now, SIGKILL after the grace period.
    fn stop_container(&mut self, idx: usize, grace_seconds: i64) {
        let c = &mut self.ctrs[idx];
        let Some(pid) = c.pid else { return };
        c.stop_probes();
        signal_group(pid, Signal::SIGTERM);
        let inst = c.inst;
        self.after(
            Duration::from_secs(grace_seconds.max(0) as u64),
            Msg::Kill { idx, inst },
        );
    }

    async fn on_exit(&mut self, idx: usize, inst: u64, code: Option<i32>, signal: Option<i32>) {
        let policy = self.policy();
        let terminating = self.terminating;
        let backoff_max = self.ctx.cfg.backoff_max;
        let backoff_initial = self.ctx.cfg.backoff_initial;
        let key = self.key();
        let Some(c) = self.ctrs.get_mut(idx).filter(|c| c.inst == inst) else {
            return;
        };
        let Some(pid) = c.pid.take() else { return };
        c.inst += 1;
        c.stop_probes();
        // Whatever the container's process left behind dies with it, as in a container.
        signal_group(pid, Signal::SIGKILL);
        let finished_at = now();
        let (started_at, container_id) = match &c.view.state {
            RunState::Running {
                started_at,
                container_id,
            } => (*started_at, container_id.clone()),
            _ => (finished_at, String::new()),
        };
        let t = Terminated::from_exit(code, signal, started_at, finished_at, container_id);
        tracing::info!(pod = %key, container = %c.view.name, exit_code = t.exit_code, signal = ?t.signal, "container exited");
        let exit_code = t.exit_code;
        c.view.state = RunState::Terminated(t.clone());
        c.view.ready = false;
        c.view.started = false;
        self.dirty_since.get_or_insert_with(Instant::now);
        if terminating || !should_restart(&policy, c.view.kind, exit_code) {
            self.reconcile().await;
            return;
        }
        // A container that ran long enough is not crash-looping: start over with a short wait.
        let ran = finished_at.duration_since(started_at).as_secs_f64();
        if ran > 2.0 * backoff_max.as_secs_f64() {
            c.backoff = backoff_initial;
        }
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(backoff_max);
        let name = c.view.name.clone();
        let inst = c.inst;
        // The death itself reaches the API first, then the backoff wait.
        self.flush().await;
        let c = &mut self.ctrs[idx];
        c.view.last = Some(t);
        c.view.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}ms restarting failed container={name} pod={}_{}({})",
                delay.as_millis(),
                self.name,
                self.ns,
                self.uid
            )),
        };
        self.mark();
        self.after(delay, Msg::Retry { idx, inst });
    }

    fn begin_termination(&mut self) {
        self.terminating = true;
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        tracing::info!(pod = %self.key(), grace, "pod deleted: stopping its containers");
        for idx in 0..self.ctrs.len() {
            self.stop_container(idx, grace);
        }
        self.mark();
    }

    fn kill_all(&mut self) {
        for c in &mut self.ctrs {
            c.stop_probes();
            if let Some(pid) = c.pid.take() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    fn cleanup(&mut self) {
        self.ctx.ips.release(self.ip);
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the pod folder");
        }
    }

    /// All processes are gone: the final status, then the deletion with grace 0 (UID
    /// precondition, so that a new pod of the same name is never deleted by mistake).
    async fn finish_deletion(&mut self) {
        self.flush().await;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "deletion finished"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final delete failed"),
        }
        self.cleanup();
    }

    fn gate_status(&self) -> Vec<(String, bool)> {
        let conditions = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        self.pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .map(|g| {
                let ok = conditions
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == g.condition_type && c.status == "True");
                (g.condition_type.clone(), ok)
            })
            .collect()
    }

    /// Writes the status if it changed since the last write.
    async fn flush(&mut self) {
        let Some(since) = self.dirty_since.take() else {
            return;
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let facts = PodFacts {
            spec: &spec,
            pod_ip: Some(self.ip.to_string()),
            host_ip: HOST_IP.into(),
            start_time: self.start_time,
            gate_status: self.gate_status(),
            sandbox_error: self.sandbox_error.clone(),
        };
        let views: Vec<ContainerView> = self.ctrs.iter().map(|c| c.view.clone()).collect();
        let status = build_status(&facts, &views, &mut self.clock, now());
        if self.last_written.as_ref() == Some(&status) {
            return;
        }
        let patch = status_patch(&status);
        match self
            .api()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(
                    pod = %self.key(),
                    phase = status.phase.as_deref().unwrap_or_default(),
                    at = %now(),
                    since_change_ms = since.elapsed().as_secs_f64() * 1000.0,
                    "status written"
                );
                self.last_written = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "status write failed; retrying");
                self.after(Duration::from_millis(500), Msg::FlushStatus);
            }
        }
    }
}

/// The status as a strategic merge patch. Conditions merge by type, so a condition that
/// became True must clear its old reason and message explicitly (null deletes a field).
pub fn status_patch(status: &PodStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(conditions) = value.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
            for field in ["reason", "message"] {
                c.entry(field).or_insert(Value::Null);
            }
        }
    }
    json!({ "status": value })
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_stale_condition_fields() {
        let status = PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let patch = status_patch(&status);
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["reason"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("message"));
    }
}
