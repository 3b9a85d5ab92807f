//! One task per pod: runs its containers as processes, restarts them per restartPolicy with
//! crash-loop backoff, runs probes, writes the pod status on every change and finishes the
//! deletion after killing the processes.
//!
//! This file holds the pod's lifecycle (the worker, its message loop, sandbox and start order);
//! the rest of the worker is split by concern: `containers` (starting and exits), `probing`
//! (probe tasks and their verdicts), `termination` (grace periods, kills, the final delete)
//! and `status_writer` (the status patch).

mod containers;
mod probing;
mod status_writer;
mod termination;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::expand::EnvContext;
use crate::ip_allocator::IpAllocator;
use crate::path_error::{AtPath, PathError};
use crate::probe::ProbeKind;
use crate::process::Spawner;
use crate::retry::{API_WAITS, until_done};
use crate::status::{ConditionClock, ContainerView, Kind, RunState};
use crate::volumes::{self, VolumeContext};
use containers::PodContainer;
pub(crate) use termination::delete_finished_pod;

/// Annotation prefix under which each container's private /tmp host folder is published.
pub const TMP_ANNOTATION_PREFIX: &str = "node.hapod.io/tmp-";
/// Annotation prefix under which each container's log file (stdout and stderr) is published.
pub const LOG_ANNOTATION_PREFIX: &str = "node.hapod.io/log-";
const HOST_IP: &str = "127.0.0.1";
const TOKEN_REFRESH: Duration = Duration::from_secs(20 * 60);

/// Shared by every pod of the node process.
pub struct NodeContext {
    pub client: Client,
    pub config: NodeConfig,
    pub pod_ips: IpAllocator,
    pub spawner: Spawner,
    pub service_env: Vec<(String, String)>,
    pub ca_pem: Option<String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub relist: RelistClock,
}

/// The node's relist ticks: one clock for every pod, as the kubelet's PLEG.
#[derive(Debug, Clone, Copy)]
pub struct RelistClock {
    origin: std::time::Instant,
    period: Duration,
}

impl RelistClock {
    pub fn new(origin: std::time::Instant, period: Duration) -> Self {
        Self { origin, period }
    }

    /// How long a container's exit at `now` stays unseen: until the next relist if the
    /// container exited by itself and no relist saw it yet (`unseen`); an exit the node caused
    /// (its stop, the pod's deletion) is seen at once, as the kubelet waits for those.
    pub fn wait_to_see(&self, unseen: bool, now: std::time::Instant) -> Option<Duration> {
        Some(self.until_next(now)).filter(|wait| unseen && !wait.is_zero())
    }

    /// How long from `now` until the next relist (zero without relisting).
    fn until_next(&self, now: std::time::Instant) -> Duration {
        if self.period.is_zero() {
            return Duration::ZERO;
        }
        let period = self.period.as_nanos();
        let into = now.saturating_duration_since(self.origin).as_nanos() % period;
        Duration::from_nanos(u64::try_from(period - into).unwrap_or(u64::MAX))
    }
}

/// A container process's end, as its waiter saw it.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub index: usize,
    pub instance: u64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// When the process exited.
    pub at: Timestamp,
}

/// Messages to a pod's task: from the node's pod watch and from the task's own helpers.
#[derive(Debug)]
pub enum Message {
    /// The pod as last seen by the watch.
    Updated(Box<Pod>),
    /// The pod object is gone (force delete): kill at once.
    Gone,
    /// The node is stopping: kill at once, leave the API alone.
    Shutdown,
    Exited {
        exit: Exit,
        /// Whether the node's relist has seen it (see [`NodeConfig::relist_period`]).
        relisted: bool,
    },
    Probe {
        index: usize,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
    },
    /// A backoff wait is over: try to start the container again.
    Retry {
        index: usize,
        instance: u64,
    },
    /// The grace period is over: SIGKILL.
    Kill {
        index: usize,
        instance: u64,
    },
    RefreshVolumes,
    FlushStatus,
}

fn now() -> Timestamp {
    Timestamp::now()
}

pub struct PodWorker {
    node: Arc<NodeContext>,
    pod: Pod,
    namespace: String,
    name: String,
    uid: String,
    node_name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    volumes: HashMap<String, PathBuf>,
    containers: Vec<PodContainer>,
    clock: ConditionClock,
    start_time: Timestamp,
    sandbox_error: Option<String>,
    /// Volumes were set up once; later failures are refreshes that leave them as they are.
    sandbox_ready: bool,
    sandbox_backoff: Duration,
    terminating: bool,
    tx: mpsc::UnboundedSender<Message>,
    last_written: Option<PodStatus>,
    dirty_since: Option<Instant>,
}

/// Directory name of a pod below the state dir: readable and unique.
fn pod_dir_name(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}_{name}_{uid}")
}

impl PodWorker {
    /// Prepares the worker; returns `None` when no pod IP is left.
    pub fn new(
        node: Arc<NodeContext>,
        pod: Pod,
        tx: mpsc::UnboundedSender<Message>,
    ) -> Option<Self> {
        let namespace = pod
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
        let ip = node.pod_ips.allocate(preferred)?;
        let dir_name = pod_dir_name(&namespace, &name, &uid);
        let dir = node.config.state_dir.join("pods").join(&dir_name);
        // Logs live apart from the pod folder and outlast the pod, as a container runtime's
        // do, so that what a deleted pod's processes said last can still be read.
        let logs = node.config.state_dir.join("logs").join(&dir_name);
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(now, |t| t.0);
        let mut containers = Vec::new();
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
            containers.push(PodContainer {
                runs: u32::from(ran_before.is_some()),
                view,
                spec: c.clone(),
                instance: 0,
                pid: None,
                env: Vec::new(),
                program: None,
                tmp_dir: dir.join("tmp").join(&c.name),
                log_file: logs.join(format!("{}.log", c.name)),
                backoff: node.config.backoff_initial,
                attempts: 0,
                probes: Vec::new(),
                readiness_rerun: None,
                stopping: false,
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
            sandbox_backoff: node.config.backoff_initial,
            node,
            pod,
            namespace,
            name,
            uid,
            node_name,
            ip,
            dir,
            volumes: HashMap::new(),
            containers,
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
        Api::namespaced(self.node.client.clone(), &self.namespace)
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn env_context(&self) -> EnvContext {
        EnvContext {
            pod_ip: self.ip.to_string(),
            host_ip: HOST_IP.into(),
            node_name: self.node_name.clone(),
            service_env: self.node.service_env.clone(),
            node_cpu_millis: self.node.cpu_millis,
            node_memory_bytes: self.node.memory_bytes,
        }
    }

    fn after(&self, delay: Duration, message: Message) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(message);
        });
    }

    fn mark(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// Runs the pod until it is deleted (or the node stops).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        tracing::info!(pod = %self.key(), ip = %self.ip, "pod assigned");
        if let Err(e) = self.prepare_dirs() {
            self.sandbox_error = Some(e.to_string());
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
            if self.terminating && self.containers.iter().all(|c| c.pid.is_none()) {
                self.finish_deletion().await;
                return;
            }
            let Some(first) = rx.recv().await else { break };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            for message in batch {
                match message {
                    Message::Gone => {
                        tracing::info!(pod = %self.key(), "pod object gone: killing its processes");
                        self.kill_all();
                        self.cleanup();
                        return;
                    }
                    Message::Shutdown => {
                        // The pod lives on in the API: its folder (logs above all) stays for
                        // whoever looks into a failed run, and for the next node process.
                        self.kill_all();
                        self.node.pod_ips.release(self.ip);
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
        format!("{}/{}", self.namespace, self.name)
    }

    fn prepare_dirs(&self) -> Result<(), PathError> {
        use std::os::unix::fs::PermissionsExt;
        for c in &self.containers {
            std::fs::create_dir_all(&c.tmp_dir).at(&c.tmp_dir)?;
            // Like /tmp: world-writable with the sticky bit, for containers that drop root.
            std::fs::set_permissions(&c.tmp_dir, std::fs::Permissions::from_mode(0o1777))
                .at(&c.tmp_dir)?;
        }
        for c in &self.containers {
            if let Some(logs) = c.log_file.parent() {
                std::fs::create_dir_all(logs).at(logs)?;
            }
        }
        Ok(())
    }

    /// Publishes the host folder behind each container's /tmp (tests create `/tmp/killme`
    /// there since there is no `kubectl exec`) and its log file, before anything starts.
    async fn publish_annotations(&self) {
        let mut annotations = serde_json::Map::new();
        for c in &self.containers {
            annotations.insert(
                format!("{TMP_ANNOTATION_PREFIX}{}", c.view.name),
                Value::String(c.tmp_dir.display().to_string()),
            );
            annotations.insert(
                format!("{LOG_ANNOTATION_PREFIX}{}", c.view.name),
                Value::String(c.log_file.display().to_string()),
            );
        }
        let patch = json!({ "metadata": { "annotations": annotations } });
        let api = self.api();
        let publish = || async {
            api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        };
        if let Err(e) = until_done(publish, &API_WAITS, &[404]).await {
            tracing::warn!(pod = %self.key(), error = %e, "could not publish the /tmp annotations");
        }
    }

    async fn setup_sandbox(&mut self) {
        let env = self.env_context();
        let volume_context = VolumeContext {
            client: &self.node.client,
            env: &env,
            ca_pem: self.node.ca_pem.as_deref(),
        };
        match volumes::materialize(&volume_context, &self.pod, &self.dir.join("volumes")).await {
            Ok(paths) => {
                self.volumes = paths;
                self.sandbox_error = None;
                self.sandbox_ready = true;
                self.sandbox_backoff = self.node.config.backoff_initial;
                if volumes::has_token(&self.pod) {
                    self.after(TOKEN_REFRESH, Message::RefreshVolumes);
                }
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "volume setup failed; retrying");
                // A failed refresh leaves running containers with the files they have.
                if !self.sandbox_ready {
                    for c in self.containers.iter_mut().filter(|c| c.attempts == 0) {
                        c.view.state = RunState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(format!("MountVolume.SetUp failed: {e}")),
                        };
                    }
                    self.sandbox_error = Some(e.to_string());
                }
                let delay = self.sandbox_backoff;
                self.sandbox_backoff = (delay * 2).min(self.node.config.backoff_max);
                self.after(delay, Message::RefreshVolumes);
            }
        }
        self.mark();
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Updated(pod) => {
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let gates_changed = pod.status.as_ref().map(|s| &s.conditions)
                    != self.pod.status.as_ref().map(|s| &s.conditions);
                // The kubelet syncs a pod on a change of these, not of its status (which it
                // writes itself).
                let synced = pod.metadata.labels != self.pod.metadata.labels
                    || pod.metadata.annotations != self.pod.metadata.annotations
                    || pod.metadata.deletion_timestamp != self.pod.metadata.deletion_timestamp
                    || pod.spec != self.pod.spec;
                self.pod = *pod;
                if deleting && !self.terminating {
                    self.begin_termination();
                }
                if gates_changed {
                    self.mark();
                }
                if synced {
                    self.rerun_unready_probes();
                }
            }
            Message::Exited { exit, relisted } => self.on_exit(exit, relisted).await,
            Message::Probe {
                index,
                instance,
                kind,
                ok,
            } => self.on_probe(index, instance, kind, ok).await,
            Message::Retry { index, instance } => {
                if self
                    .containers
                    .get(index)
                    .is_some_and(|c| c.instance == instance && c.pid.is_none())
                    && !self.terminating
                {
                    self.start(index).await;
                    self.reconcile().await;
                }
            }
            Message::Kill { index, instance } => self.on_grace_over(index, instance),
            Message::RefreshVolumes => {
                if !self.terminating {
                    let was_broken = self.sandbox_error.is_some();
                    self.setup_sandbox().await;
                    if was_broken {
                        self.reconcile().await;
                    }
                }
            }
            Message::FlushStatus => self.mark(),
            Message::Gone | Message::Shutdown => {}
        }
    }

    /// Starts what should run now: init containers one by one (sidecars stay running), then
    /// all regular containers.
    async fn reconcile(&mut self) {
        if self.terminating || self.sandbox_error.is_some() {
            return;
        }
        for index in 0..self.containers.len() {
            let c = &self.containers[index];
            match c.view.kind {
                Kind::Sidecar => {
                    if c.attempts == 0 {
                        self.start(index).await;
                    }
                    let c = &self.containers[index];
                    if !(c.view.is_running() && c.view.started) {
                        return;
                    }
                }
                Kind::Init => {
                    if matches!(&c.view.state, RunState::Terminated(t) if t.exit_code == 0) {
                        continue;
                    }
                    if c.attempts == 0 {
                        self.start(index).await;
                    }
                    return;
                }
                Kind::Regular => {
                    if c.attempts == 0 {
                        self.start(index).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relist_ticks_are_one_clock_for_the_node() {
        let origin = std::time::Instant::now();
        let clock = RelistClock::new(origin, Duration::from_secs(1));
        let at = |ms| origin + Duration::from_millis(ms);
        assert_eq!(clock.until_next(at(0)), Duration::from_secs(1));
        assert_eq!(clock.until_next(at(250)), Duration::from_millis(750));
        assert_eq!(clock.until_next(at(3999)), Duration::from_millis(1));
        assert_eq!(clock.until_next(at(4000)), Duration::from_secs(1));
        let at_once = RelistClock::new(origin, Duration::ZERO);
        assert_eq!(at_once.until_next(at(250)), Duration::ZERO);
    }

    #[test]
    fn only_an_exit_of_the_containers_own_waits_for_the_relist() {
        let origin = std::time::Instant::now();
        let clock = RelistClock::new(origin, Duration::from_secs(1));
        let now = origin + Duration::from_millis(2300);
        assert_eq!(
            clock.wait_to_see(true, now),
            Some(Duration::from_millis(700))
        );
        // stopped by the node, or already relisted
        assert_eq!(clock.wait_to_see(false, now), None);
        // no relisting at all
        let at_once = RelistClock::new(origin, Duration::ZERO);
        assert_eq!(at_once.wait_to_see(true, now), None);
    }
}
