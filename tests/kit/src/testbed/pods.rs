//! Reading pods and groups (role, epoch, IP, readiness accessors, a group's view, the
//! Lease holder, Service endpoints) and acting on them (the failure [`Trigger`]s, files in a
//! container's `/tmp`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use super::Testbed;
use super::names::{
    ACTIVE, APP_CONTAINER, APP_NAME, APP_NAMESPACE, CONTROLLER_NAMESPACE, CRITICAL_CONTAINER,
    EPOCH_ANNOTATION, GROUP_LABEL, LEASE_NAME, LOG_ANNOTATION_PREFIX, NONCRITICAL_CONTAINER,
    NOTIFY_SECRET, ROLE_LABEL, STANDBY, TMP_ANNOTATION_PREFIX,
};
use crate::netns::Partition;
use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// The containerd IDs of the pod's running containers whose name `containers` accepts (from
/// `status.containerStatuses`; none on the process node, which reports no container IDs).
fn runtime_container_ids(pod: &Pod, containers: impl Fn(&str) -> bool) -> Vec<String> {
    pod.status
        .iter()
        .flat_map(|status| status.container_statuses.iter().flatten())
        .filter(|status| containers(&status.name))
        .filter_map(|status| {
            status
                .container_id
                .as_deref()?
                .strip_prefix("containerd://")
        })
        .map(str::to_owned)
        .collect()
}

impl Testbed {
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

    /// Ready endpoint addresses of a Service, merged over its EndpointSlices (sorted): what
    /// the real EndpointSlice controller published.
    pub async fn service_endpoints(&self, ns: &str, service: &str) -> Result<Vec<String>> {
        let mut ips = BTreeSet::new();
        for slice in &self.service_slices(ns, service).await? {
            ips.extend(ready_slice_addresses(slice));
        }
        Ok(ips.into_iter().collect())
    }

    /// Every EndpointSlice of a Service, whoever manages it.
    pub async fn service_slices(&self, ns: &str, service: &str) -> Result<Vec<EndpointSlice>> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await?;
        Ok(list.items)
    }

    /// The pod name of the election Lease's holder (the holder identity is
    /// `<pod name>_<instance>`; pod names never contain `_`).
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        self.lease_holder_of(CONTROLLER_NAMESPACE, LEASE_NAME).await
    }

    /// The same for Lease `ns/name` (another controller's, e.g. a second Helm release's).
    pub async fn lease_holder_of(&self, ns: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .lease_holder_identity_of(ns, name)
            .await?
            .map(|h| h.split('_').next().unwrap_or_default().to_string()))
    }

    /// When the election Lease was last acquired (its `acquireTime`).
    pub async fn lease_acquired_at(&self) -> Result<Option<std::time::SystemTime>> {
        Ok(self
            .lease_spec(CONTROLLER_NAMESPACE, LEASE_NAME)
            .await?
            .and_then(|s| s.acquire_time)
            .map(|t| std::time::SystemTime::from(t.0)))
    }

    /// The election Lease's holder identity, as written by the controller.
    pub async fn lease_holder_identity(&self) -> Result<Option<String>> {
        self.lease_holder_identity_of(CONTROLLER_NAMESPACE, LEASE_NAME)
            .await
    }

    /// The holder identity of Lease `ns/name`.
    async fn lease_holder_identity_of(&self, ns: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .lease_spec(ns, name)
            .await?
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    async fn lease_spec(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<k8s_openapi::api::coordination::v1::LeaseSpec>> {
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.and_then(|l| l.spec))
    }

    /// Host path of a container's private /tmp: published by the process node on the pod;
    /// on the real node, its writable-tmp emptyDir (there also while the container is down).
    pub fn container_tmp(&self, pod: &Pod, container: &str) -> Result<PathBuf> {
        if let Ok(path) = Self::published_path(pod, TMP_ANNOTATION_PREFIX, container) {
            return Ok(path);
        }
        let node = self.real_node.as_ref().with_context(|| {
            format!(
                "pod {} has no published /tmp of {container}",
                pod.name_any()
            )
        })?;
        Ok(node.container_tmp(pod, container))
    }

    /// What a container has written to stdout and stderr so far, also after the pod is
    /// gone: the process node keeps the file and publishes its path on the pod; the real
    /// node's kubelet keeps its files (CRI format, every start of the container) until its
    /// next garbage collection.
    pub fn container_log(&self, pod: &Pod, container: &str) -> Result<String> {
        if let Ok(path) = Self::published_path(pod, LOG_ANNOTATION_PREFIX, container) {
            return std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()));
        }
        let node = self
            .real_node
            .as_ref()
            .with_context(|| format!("pod {} has no published log", pod.name_any()))?;
        node.container_log(pod, container)
    }

    fn published_path(pod: &Pod, prefix: &str, container: &str) -> Result<PathBuf> {
        let key = format!("{prefix}{container}");
        pod.annotations()
            .get(&key)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("pod {} has no annotation {key}", pod.name_any()))
    }

    /// PIDs of every process running in the pod's containers on the process node (sorted):
    /// the processes whose `/tmp`, seen through `/proc/<pid>/root` (their own mount
    /// namespace), is one of the container folders the node publishes on the pod. A
    /// container's children and exec probes share its mount namespace and are included.
    pub fn pod_processes(pod: &Pod) -> Result<Vec<i32>> {
        Self::processes_of(pod, |_| true)
    }

    /// PIDs of the processes of one container of the pod (see [`Testbed::pod_processes`]).
    pub fn container_processes(pod: &Pod, container: &str) -> Result<Vec<i32>> {
        Self::processes_of(pod, |c| c == container)
    }

    /// PIDs of the processes of the pod's containers whose name `containers` accepts: on the
    /// process node, those whose `/tmp` is one of the folders it publishes on the pod; on the
    /// real node, those in the containers' cgroups.
    fn processes_of(pod: &Pod, containers: impl Fn(&str) -> bool) -> Result<Vec<i32>> {
        use std::os::unix::fs::MetadataExt;
        let folders: BTreeSet<(u64, u64)> = pod
            .annotations()
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(TMP_ANNOTATION_PREFIX)
                    .is_some_and(&containers)
            })
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let ids = runtime_container_ids(pod, &containers);
        anyhow::ensure!(
            !folders.is_empty() || !ids.is_empty(),
            "pod {} has no such container: no /tmp folder published by the process node, no \
             containerd container",
            pod.name_any()
        );
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // A process may exit meanwhile, or be a kernel thread: skipped.
            let in_folder = || {
                std::fs::metadata(format!("/proc/{pid}/root/tmp"))
                    .is_ok_and(|m| folders.contains(&(m.dev(), m.ino())))
            };
            // cgroup v1 with the cgroupfs driver: `.../pod<uid>/<container id>`.
            let in_cgroup = || {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cgroups| {
                    cgroups
                        .lines()
                        .any(|line| ids.iter().any(|id| line.ends_with(&format!("/{id}"))))
                })
            };
            if (!folders.is_empty() && in_folder()) || (!ids.is_empty() && in_cgroup()) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }

    /// Sends `signal` to every process of `pids` (see [`Testbed::pod_processes`]); a process
    /// that exited meanwhile is not an error.
    pub fn signal_processes(pids: &[i32], signal: nix::sys::signal::Signal) -> Result<()> {
        use nix::errno::Errno;
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        for &pid in pids {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(anyhow!("{signal} to process {pid}: {e}")),
            }
        }
        Ok(())
    }

    /// Stops every process of `pids` (SIGSTOP) until the guard is resumed or dropped.
    pub fn stop_processes(pids: Vec<i32>) -> Result<StoppedProcesses> {
        let stopped = StoppedProcesses {
            pids,
            resumed: false,
        };
        // On a partial failure, the drop continues what was stopped.
        Self::signal_processes(&stopped.pids, nix::sys::signal::Signal::SIGSTOP)?;
        Ok(stopped)
    }

    /// Creates `/tmp/<file>` inside a container (through the node's host folder).
    pub fn touch_in_container(&self, pod: &Pod, container: &str, file: &str) -> Result<PathBuf> {
        let path = self.container_tmp(pod, container)?.join(file);
        std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Removes `/tmp/<file>` inside a container (no error when absent).
    pub fn remove_in_container(&self, pod: &Pod, container: &str, file: &str) -> Result<()> {
        let path = self.container_tmp(pod, container)?.join(file);
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
                self.touch_in_container(pod, CRITICAL_CONTAINER, "killme")?;
            }
            Trigger::KillNonCritical => {
                self.touch_in_container(pod, NONCRITICAL_CONTAINER, "killme")?;
            }
            Trigger::Unready => {
                self.touch_in_container(pod, APP_CONTAINER, "unready")?;
            }
            Trigger::KillAgent => {
                let pids = Self::container_processes(pod, APP_CONTAINER)?;
                anyhow::ensure!(
                    !pids.is_empty(),
                    "no process runs in the {APP_CONTAINER} container of {name}"
                );
                Self::signal_processes(&pids, nix::sys::signal::Signal::SIGKILL)?;
            }
        }
        Ok(t)
    }
}

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
    /// SIGKILL to the process of the app container, which embeds the agent: the agent dies
    /// without relinquishing its role (no report), and the node restarts the container in
    /// place, a critical container's death.
    KillAgent,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::ForceDelete,
        Trigger::GracefulDelete,
        Trigger::KillCritical,
        Trigger::KillNonCritical,
        Trigger::Unready,
        Trigger::KillAgent,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Trigger::ForceDelete => "force-delete",
            Trigger::GracefulDelete => "graceful-delete",
            Trigger::KillCritical => "critical-crash",
            Trigger::KillNonCritical => "noncritical-crash",
            Trigger::Unready => "not-ready",
            Trigger::KillAgent => "agent-kill",
        }
    }
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
    pod_label(p, ROLE_LABEL)
}

/// The group label of a pod.
pub fn pod_group(p: &Pod) -> Option<&str> {
    pod_label(p, GROUP_LABEL)
}

fn pod_label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.labels().get(key).map(String::as_str)
}

/// The epoch annotation of a pod.
pub fn pod_epoch(p: &Pod) -> Option<u64> {
    p.annotations().get(EPOCH_ANNOTATION)?.trim().parse().ok()
}

/// The pod IP.
pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone().filter(|s| !s.is_empty())
}

/// Cuts pods `a` and `b` from each other inside the testbed's network namespace (see
/// [`Partition`]).
pub fn partition_pods(a: &Pod, b: &Pod) -> Result<Partition> {
    let address = |p: &Pod| -> Result<std::net::Ipv4Addr> {
        let ip = pod_ip(p).with_context(|| format!("{} has no IP", p.name_any()))?;
        ip.parse()
            .with_context(|| format!("{} has IP {ip}, not IPv4", p.name_any()))
    };
    Partition::cut(address(a)?, address(b)?)
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

/// Names of containers that restarted at least once (`restartCount` > 0).
pub fn restarted_containers(p: &Pod) -> Vec<String> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .filter(|c| c.restart_count > 0)
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

pub fn ready_slice_addresses(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// Processes stopped by [`Testbed::stop_processes`]: continued (SIGCONT) by
/// [`StoppedProcesses::resume`], or when dropped, so that a failed check never leaves a frozen
/// pod behind for the next scenario.
pub struct StoppedProcesses {
    pids: Vec<i32>,
    resumed: bool,
}

impl StoppedProcesses {
    /// The processes stopped.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    pub fn resume(mut self) -> Result<()> {
        self.resumed = true;
        Testbed::signal_processes(&self.pids, nix::sys::signal::Signal::SIGCONT)
    }
}

impl Drop for StoppedProcesses {
    fn drop(&mut self) {
        if !self.resumed {
            let _ = Testbed::signal_processes(&self.pids, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// A fault that keeps an active app pod's agent from reporting while the API still sees the
/// pod as it was (failures the API learns of late), until it ends (or is dropped).
pub enum Fault {
    /// Every process of the pod (or of a whole node) stopped (SIGSTOP) at `at` (right before
    /// the first signal).
    Hang {
        stopped: StoppedProcesses,
        at: SystemTime,
    },
    /// The acting controller and the pod (or every pod of a node) cut from each other at `at`
    /// (right before the first cut).
    Cut {
        partitions: Vec<Partition>,
        at: SystemTime,
    },
}

impl Fault {
    /// Stops every process of `pod` (see [`Testbed::pod_processes`]).
    pub fn hang(pod: &Pod) -> Result<Fault> {
        Self::stop(Testbed::pod_processes(pod)?)
    }

    /// A lost node: stops the node's process `node_pid` and every process of `pods`, the pods
    /// bound to it. The node first, so that it reports nothing (such as a failed probe) about
    /// pods stopped before it.
    pub fn node_lost(node_pid: i32, pods: &[Pod]) -> Result<Fault> {
        let mut pids = vec![node_pid];
        for pod in pods {
            pids.extend(Testbed::pod_processes(pod)?);
        }
        Self::stop(pids)
    }

    fn stop(pids: Vec<i32>) -> Result<Fault> {
        let at = SystemTime::now();
        let stopped = Testbed::stop_processes(pids)?;
        Ok(Fault::Hang { stopped, at })
    }

    /// Cuts the acting controller `controller` from `pod` (see [`partition_pods`]).
    pub fn cut(controller: &Pod, pod: &Pod) -> Result<Fault> {
        Self::cut_from(controller, std::slice::from_ref(pod))
    }

    /// Cuts the acting controller `controller` from every pod of `pods` (those of a node: its
    /// agent-facing network lost).
    pub fn cut_from(controller: &Pod, pods: &[Pod]) -> Result<Fault> {
        let at = SystemTime::now();
        // On a partial failure, the drops heal what was cut.
        let partitions = pods
            .iter()
            .map(|pod| partition_pods(controller, pod))
            .collect::<Result<_>>()?;
        Ok(Fault::Cut { partitions, at })
    }

    /// When the fault started (wall clock).
    pub fn started(&self) -> SystemTime {
        match self {
            Fault::Hang { at, .. } | Fault::Cut { at, .. } => *at,
        }
    }

    /// Ends the fault: continues the processes or heals the partitions.
    pub fn end(self) -> Result<()> {
        match self {
            Fault::Hang { stopped, .. } => stopped.resume(),
            Fault::Cut { partitions, .. } => partitions.into_iter().try_for_each(Partition::heal),
        }
    }
}

/// Creates namespace `ns` with the sample app's notification key Secret, for another copy of
/// the sample app (its own group of the deployed controller, which watches every namespace).
/// Returns the sample app's ReplicaSet as the testbed deployed it, to copy (so a copy carries
/// whatever the applied kustomization added, such as its components' env).
pub async fn create_app_namespace(client: &Client, ns: &str) -> Result<ReplicaSet> {
    let deployed = Api::<ReplicaSet>::namespaced(client.clone(), APP_NAMESPACE)
        .get(APP_NAME)
        .await
        .with_context(|| {
            format!("reading the sample app's ReplicaSet {APP_NAMESPACE}/{APP_NAME}")
        })?;
    let key = Api::<Secret>::namespaced(client.clone(), APP_NAMESPACE)
        .get(NOTIFY_SECRET)
        .await
        .context("reading the notification key Secret of the sample app")?;
    let pp = PostParams::default();
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&pp, &namespace)
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(NOTIFY_SECRET.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: key.data,
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&pp, &secret)
        .await
        .with_context(|| format!("creating the key Secret in {ns}"))?;
    Ok(deployed)
}
