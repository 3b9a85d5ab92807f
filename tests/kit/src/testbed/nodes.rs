//! The process nodes: the first one, started with the testbed, and a second one that a
//! scenario starts and removes itself ([`SecondNode`]: another Kubernetes Node with its own
//! `hapod-node` process, pod range, kubelet port and folder); cordoning; the pods bound to a
//! node; a node's readiness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{
    APP_GROUP, APP_NAMESPACE, APP_REPLICAS, IMAGES, JOURNAL_ENV, Settled, Testbed, Trigger,
    stop_child, tail,
};
use crate::controlplane::ControlPlane;
use crate::poll::{Check, await_condition};

/// Node name of the testbed's first process node.
pub const FIRST_NODE: &str = "hapod-node";
/// Node name of the second process node ([`Testbed::start_second_node`]).
pub const SECOND_NODE: &str = "hapod-node-1";

/// What sets a process node apart from the other one on the same machine.
struct NodeSlot {
    name: &'static str,
    /// Its pod range, one of [`crate::netns::POD_CIDRS`].
    pod_cidr: &'static str,
    /// Its kubelet endpoint on 127.0.0.1 (`kubectl logs`), one per node process.
    kubelet_port: u16,
}

const FIRST: NodeSlot = NodeSlot {
    name: FIRST_NODE,
    pod_cidr: crate::netns::POD_CIDRS[0],
    kubelet_port: 10250,
};

const SECOND: NodeSlot = NodeSlot {
    name: SECOND_NODE,
    pod_cidr: crate::netns::POD_CIDRS[1],
    kubelet_port: 10251,
};

/// How long a node process has to register its Node and report it Ready.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Testbed {
    /// Starts the first process node and waits until its Node is Ready.
    pub(super) async fn start_first_node(&mut self) -> Result<()> {
        let since = SystemTime::now();
        let log = self.run_dir.join("node.log");
        let process = self.spawn_node(&FIRST, &self.run_dir.join("node"), &log)?;
        let process = self.node.insert(process);
        wait_node_ready(
            &self.client,
            FIRST_NODE,
            since,
            process_alive(process),
            &log,
        )
        .await
    }

    /// Starts the real node ([`crate::realnode`]) and waits until its Node is Ready.
    pub(super) async fn start_real_node(
        &mut self,
        kube_proxy_min_sync: Option<Duration>,
    ) -> Result<()> {
        let since = SystemTime::now();
        let runtime = crate::realnode::ensure_built()?;
        let control_plane = self.control_plane_arc()?;
        let bin_dir = self.bin_dir.clone();
        let dir = self.run_dir.join("real-node");
        let node = tokio::task::spawn_blocking(move || {
            crate::realnode::RealNode::start(crate::realnode::Config {
                runtime: &runtime,
                control_plane: &control_plane,
                bin_dir: &bin_dir,
                dir,
                images: &IMAGES,
                kube_proxy_min_sync,
            })
        })
        .await??;
        let node = self.real_node.insert(node);
        let log = node.log_path("kubelet");
        wait_node_ready(
            &self.client,
            crate::realnode::REAL_NODE,
            since,
            || node.check_alive(),
            &log,
        )
        .await
    }

    /// Starts a second process node ([`SECOND_NODE`]) and waits until its Node is Ready. Pods
    /// already running stay on the first node; new ones may go to either (the scheduler's
    /// choice: cordon a node to choose). One at a time.
    pub async fn start_second_node(&self) -> Result<SecondNode> {
        let n = self.second_nodes_started.fetch_add(1, Ordering::Relaxed);
        let folder = self.run_dir.join(format!("second-node-{n}"));
        let log = folder.with_extension("log");
        let since = SystemTime::now();
        let mut node = SecondNode {
            process: self.spawn_node(&SECOND, &folder, &log)?,
            log,
            client: self.client.clone(),
            control_plane: self.control_plane_arc()?,
            removed: false,
        };
        // On failure, the drop stops the process and removes what it registered.
        node.wait_ready_since(since).await?;
        Ok(node)
    }

    /// Starts `hapod-node` for `slot`: state in `folder`, stdout and stderr to `log`.
    fn spawn_node(&self, slot: &NodeSlot, folder: &Path, log: &Path) -> Result<Child> {
        let node_bin = self.bin_dir.join("hapod-node");
        let log = std::fs::File::create(log)?;
        let mut cmd = Command::new(&node_bin);
        cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        for image in IMAGES {
            cmd.arg("--image")
                .arg(format!("{image}={}", self.bin_dir.join(image).display()));
        }
        cmd.arg("--node-name").arg(slot.name);
        cmd.arg("--state-dir").arg(folder);
        cmd.arg("--pod-cidr").arg(slot.pod_cidr);
        cmd.arg("--kubelet-port").arg(slot.kubelet_port.to_string());
        cmd.arg("--container-env")
            .arg(format!("{JOURNAL_ENV}={}", self.journal_dir().display()));
        cmd.args(&self.node_args);
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
        cmd.spawn()
            .with_context(|| format!("starting {}", node_bin.display()))
    }

    /// Marks `node` unschedulable until the returned guard ends or is dropped: new pods go to
    /// the other node.
    pub fn cordon(&self, node: &str) -> Result<Cordoned> {
        let cordoned = Cordoned {
            node: node.to_string(),
            control_plane: self.control_plane_arc()?,
            ended: false,
        };
        self.kubectl(&["cordon", node])?;
        Ok(cordoned)
    }

    /// Makes the sample app's active pod the only pod of its group on the second node, the
    /// standbys on the first, and returns the group so placed: the standby is deleted while
    /// the first node is cordoned (its replacement can only go to the second), then the
    /// active is deleted gracefully while the second node is cordoned (the standby there is
    /// promoted, the replacement goes to the first).
    pub async fn place_active_on_second_node(&self, timeout: Duration) -> Result<Settled> {
        let settled = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await?;
        let standby = settled
            .standbys
            .first()
            .context("the group has no standby")?;
        let cordoned = self.cordon(FIRST_NODE)?;
        self.trigger(standby, Trigger::ForceDelete).await?;
        let replaced = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await;
        cordoned.end()?;
        replaced.with_context(|| format!("no standby joined on {SECOND_NODE}"))?;

        let cordoned = self.cordon(SECOND_NODE)?;
        let moved = self.failover(Trigger::GracefulDelete, timeout).await;
        let replaced = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await;
        cordoned.end()?;
        let moved = moved.context("moving the active role to the standby")?;
        let placed = replaced.context("the group did not settle after the role moved")?;
        ensure!(
            pod_node(&placed.active) == Some(SECOND_NODE)
                && placed
                    .standbys
                    .iter()
                    .all(|p| pod_node(p) == Some(FIRST_NODE)),
            "want the active on {SECOND_NODE} and the standbys on {FIRST_NODE}, got {} on {:?} \
             (the active before: {})",
            placed.active.name_any(),
            pod_node(&placed.active),
            moved.old.name_any()
        );
        Ok(placed)
    }

    /// Pods bound to `node`, in every namespace.
    pub async fn node_pods(&self, node: &str) -> Result<Vec<Pod>> {
        let fields = format!("spec.nodeName={node}");
        let list = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&fields))
            .await?;
        Ok(list.items)
    }
}

/// The second process node, from [`Testbed::start_second_node`]. [`SecondNode::remove`], or
/// dropping it, stops its process (which kills its containers) and removes its Node and every
/// pod bound to it from the API: their ReplicaSets replace them on the first node, and the
/// scenarios after find the testbed with one node again.
pub struct SecondNode {
    process: Child,
    log: PathBuf,
    client: Client,
    control_plane: Arc<ControlPlane>,
    removed: bool,
}

impl SecondNode {
    /// Process id of its `hapod-node` (a single process: containers are its children, each in
    /// its own process group).
    pub fn pid(&self) -> i32 {
        self.process.id() as i32
    }

    /// Waits until its Node is Ready with a status heartbeat posted at or after `since`: the
    /// process is alive and talking to the API.
    pub async fn wait_ready_since(&mut self, since: SystemTime) -> Result<()> {
        wait_node_ready(
            &self.client,
            SECOND_NODE,
            since,
            process_alive(&mut self.process),
            &self.log,
        )
        .await
    }

    /// Stops the node and removes it and its pods from the API.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        self.tear_down()
    }

    fn tear_down(&mut self) -> Result<()> {
        // Stopped first: a running node registers its Node again.
        stop_child(&mut self.process, SECOND_NODE, Duration::from_secs(15));
        let kubectl = |args: &[&str]| run_kubectl(&self.control_plane, args);
        kubectl(&["delete", "node", SECOND_NODE, "--ignore-not-found"])?;
        // Nothing runs them any more (no node-lifecycle controller evicts them).
        kubectl(&[
            "delete",
            "pods",
            "--all-namespaces",
            "--field-selector",
            &format!("spec.nodeName={SECOND_NODE}"),
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
        ])?;
        Ok(())
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.tear_down();
        }
    }
}

/// A node cordoned by [`Testbed::cordon`]: uncordoned by [`Cordoned::end`] or when dropped.
pub struct Cordoned {
    node: String,
    control_plane: Arc<ControlPlane>,
    ended: bool,
}

impl Cordoned {
    pub fn end(mut self) -> Result<()> {
        self.ended = true;
        self.uncordon()
    }

    fn uncordon(&self) -> Result<()> {
        run_kubectl(&self.control_plane, &["uncordon", &self.node]).map(drop)
    }
}

impl Drop for Cordoned {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.uncordon();
        }
    }
}

/// Runs the control plane's kubectl with the admin kubeconfig; returns its stdout.
pub(super) fn run_kubectl(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = cp
        .kubectl()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl")?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until Node `name` is Ready with a status heartbeat at or after `since` (rounded down
/// to the second: the API keeps whole seconds); fails early if `process`, its node, exited.
async fn wait_node_ready(
    client: &Client,
    name: &str,
    since: SystemTime,
    mut alive: impl FnMut() -> Result<()>,
    log: &Path,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let since_second = since
        .duration_since(UNIX_EPOCH)
        .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()))
        .unwrap_or(UNIX_EPOCH);
    let what = format!("Node {name} Ready with a heartbeat since {since_second:?}");
    let waited = await_condition(what, NODE_READY_TIMEOUT, Duration::from_millis(200), || {
        // The processes are looked at here, the API in the future below.
        let alive = alive();
        let nodes = nodes.clone();
        async move {
            alive?;
            let Some(node) = nodes.get_opt(name).await? else {
                return Ok(Check::NotYet("not registered".into()));
            };
            Ok(match ready_heartbeat(&node) {
                Some(at) if at >= since_second => Check::Done(()),
                at => Check::NotYet(format!("Ready heartbeat {at:?}")),
            })
        }
    })
    .await;
    waited.with_context(|| format!("node log:\n{}", tail(log, 40)))
}

/// A check that fails once the node process has exited.
fn process_alive(process: &mut Child) -> impl FnMut() -> Result<()> + '_ {
    || match process.try_wait()? {
        Some(status) => bail!("hapod-node exited ({status})"),
        None => Ok(()),
    }
}

/// When the node last posted its Ready condition as True (None: not Ready).
fn ready_heartbeat(node: &Node) -> Option<SystemTime> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_heartbeat_time
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

/// The node a pod is bound to.
pub fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

/// Names of `pods`, for messages.
pub fn pod_names<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<String> {
    pods.into_iter().map(ResourceExt::name_any).collect()
}
