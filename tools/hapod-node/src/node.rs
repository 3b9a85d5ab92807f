//! The node process: registers its Nodes, keeps them alive, watches the pods bound to them and
//! runs one [`PodWorker`] per pod.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::expand::parse_quantity;
use crate::ip_allocator::ConfinementError;
use crate::ip_allocator::IpAllocator;
use crate::path_error::{AtPath, PathError};
use crate::pod::{Message, NodeContext, PodWorker, RelistClock, delete_finished_pod};
use crate::process::Spawner;

/// Why the node cannot start, register or keep its Nodes alive.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no node names given")]
    NoNodeNames,
    #[error("API server URL has no host")]
    NoApiHost,
    #[error("API server host {host} is not an IP address: {error}")]
    ApiHostNotAnIp {
        host: String,
        error: std::net::AddrParseError,
    },
    #[error("API server {0} is not a loopback address; hapod-node only talks to loopback")]
    ApiNotLoopback(IpAddr),
    #[error(transparent)]
    Confinement(#[from] ConfinementError),
    #[error("API client: {0}")]
    Client(kube::Error),
    #[error("create {0}")]
    StateDir(PathError),
    #[error("spawner thread: {0}")]
    Spawner(std::io::Error),
    #[error("Node object: {0}")]
    NodeObject(serde_json::Error),
    /// An API call; `action` says which (`create Node x`, `renew Lease kube-node-lease/x`).
    #[error("{action}: {error}")]
    Api { action: String, error: kube::Error },
    #[error("node task panicked: {0}")]
    Panicked(tokio::task::JoinError),
}

/// Names a failed API call: `.map_err(api_error(format!("create Node {name}")))`.
fn api_error(action: String) -> impl FnOnce(kube::Error) -> NodeError {
    move |error| NodeError::Api { action, error }
}

/// The in-cluster service variables, pointing at the API server the node itself talks to: its
/// loopback address and port (never a Service ClusterIP: nothing routes those here).
pub fn service_env(cluster_url: &http::Uri) -> Result<Vec<(String, String)>, NodeError> {
    let host = cluster_url.host().ok_or(NodeError::NoApiHost)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse().map_err(|error| NodeError::ApiHostNotAnIp {
            host: host.to_string(),
            error,
        })?
    };
    if !ip.is_loopback() {
        return Err(NodeError::ApiNotLoopback(ip));
    }
    let port = cluster_url.port_u16().unwrap_or(443);
    let (h, p) = (ip.to_string(), port.to_string());
    Ok(vec![
        ("KUBERNETES_SERVICE_HOST".into(), h.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), p.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.clone()),
        ("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}")),
        (format!("KUBERNETES_PORT_{p}_TCP"), format!("tcp://{h}:{p}")),
        (format!("KUBERNETES_PORT_{p}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{p}_TCP_PORT"), p.clone()),
        (format!("KUBERNETES_PORT_{p}_TCP_ADDR"), h),
    ])
}

/// The CA certificates of the node's kubeconfig as PEM (for `ca.crt` in ServiceAccount volumes).
pub fn ca_pem(kube_config: &kube::Config) -> Option<String> {
    if let Some(file) = &kube_config.root_cert_file
        && let Ok(pem) = std::fs::read_to_string(file)
    {
        return Some(pem);
    }
    let certs = kube_config.root_cert.as_ref()?;
    let mut pem = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Some(pem)
}

fn node_status(config: &NodeConfig, ready_since: Timestamp, now: Timestamp) -> serde_json::Value {
    let resources = json!({
        "cpu": config.cpu,
        "memory": config.memory,
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": Time(now),
            "lastTransitionTime": Time(ready_since),
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "hapod-node is posting ready status"),
        ],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": config.kubelet_port } },
        "nodeInfo": {
            "architecture": std::env::consts::ARCH,
            "bootID": "",
            "containerRuntimeVersion": concat!("hapod-node://", env!("CARGO_PKG_VERSION")),
            "kernelVersion": "",
            "kubeProxyVersion": "",
            "kubeletVersion": "v1.36.0",
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": "hapod-node (pods run as local processes)",
            "systemUUID": "",
        },
    })
}

fn node_object(config: &NodeConfig, name: &str, now: Timestamp) -> Result<Node, NodeError> {
    let mut labels: serde_json::Map<String, serde_json::Value> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", std::env::consts::ARCH),
        ("node.hapod.io/process-node", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), json!(v)))
    .collect();
    for (k, v) in &config.node_labels {
        labels.insert(k.clone(), json!(v));
    }
    let mut status = node_status(config, now, now);
    // The API server reaches a kubelet by the Hostname address first: `localhost` keeps that
    // on loopback without any DNS lookup of the node name.
    status["addresses"] = json!([
        { "type": "InternalIP", "address": "127.0.0.1" },
        { "type": "Hostname", "address": "localhost" },
    ]);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
        "spec": {},
        "status": status,
    }))
    .map_err(NodeError::NodeObject)
}

/// Creates the Node (or takes over an existing one) and writes its status.
async fn register(
    client: &Client,
    config: &NodeConfig,
    name: &str,
    now: Timestamp,
) -> Result<Node, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = node_object(config, name, now)?;
    let created = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => nodes
            .get(name)
            .await
            .map_err(api_error(format!("get Node {name}")))?,
        Err(e) => return Err(api_error(format!("create Node {name}"))(e)),
    };
    // Create may drop the status, and an existing Node keeps its old one: write it.
    let status = json!({ "status": node.status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(api_error(format!("write status of Node {name}")))?;
    clear_condition_taints(&nodes, &created).await?;
    tracing::info!(node = name, "node registered");
    Ok(created)
}

/// Taints the API server's admission (`TaintNodesByCondition`) puts on every new Node and that
/// the node lifecycle controller would lift once the node reports Ready. That controller may
/// not run (it would evict pods of a node whose heartbeat lags on a loaded machine), so the
/// node lifts them itself: it reports Ready from the start.
const CONDITION_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

async fn clear_condition_taints(nodes: &Api<Node>, node: &Node) -> Result<(), NodeError> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let kept: Vec<_> = taints
        .iter()
        .filter(|t| !CONDITION_TAINTS.contains(&t.key.as_str()))
        .cloned()
        .collect();
    if kept.len() == taints.len() {
        return Ok(());
    }
    let patch = json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "spec": { "taints": kept },
    });
    nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(api_error(format!(
            "remove the not-ready taint of Node {}",
            node.name_any()
        )))?;
    Ok(())
}

/// Renews the node's Lease (what the node lifecycle controller watches) and refreshes the
/// status heartbeat.
async fn heartbeat(
    client: &Client,
    config: &NodeConfig,
    node: &Node,
    ready_since: Timestamp,
) -> Result<(), NodeError> {
    let name = node.name_any();
    let now = Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": node.metadata.uid.clone().unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": config.lease_duration_seconds,
            "renewTime": MicroTime(now),
        },
    });
    let params = PatchParams::apply("hapod-node").force();
    leases
        .patch(&name, &params, &Patch::Apply(&lease))
        .await
        .map_err(api_error(format!("renew Lease kube-node-lease/{name}")))?;
    let status = json!({ "status": node_status(config, ready_since, now) });
    Api::<Node>::all(client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(api_error(format!("heartbeat of Node {name}")))?;
    Ok(())
}

struct Worker {
    tx: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
    /// Index of the node (and of its pod watch) the pod is bound to.
    node: usize,
}

/// Runs the node until `shutdown` fires, then kills every container process.
pub async fn run(
    kube_config: kube::Config,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    if config.node_names.is_empty() {
        return Err(NodeError::NoNodeNames);
    }
    config.pod_cidr.check_confined()?;
    let service_env = service_env(&kube_config.cluster_url)?;
    let ca_pem = ca_pem(&kube_config);
    let client = Client::try_from(kube_config).map_err(NodeError::Client)?;
    std::fs::create_dir_all(config.state_dir.join("pods"))
        .at(&config.state_dir)
        .map_err(NodeError::StateDir)?;
    let context = Arc::new(NodeContext {
        client: client.clone(),
        pod_ips: IpAllocator::for_this_process(config.pod_cidr),
        spawner: Spawner::start().map_err(NodeError::Spawner)?,
        service_env,
        ca_pem,
        cpu_millis: parse_quantity(&config.cpu).map_or(4000, |c| (c * 1000.0) as i64),
        memory_bytes: parse_quantity(&config.memory).map_or(8 << 30, |m| m as i64),
        relist: RelistClock::new(std::time::Instant::now(), config.relist_period),
        config,
    });

    let kubelet = (context.config.kubelet_port != 0).then(|| {
        let (port, dir, token) = (
            context.config.kubelet_port,
            context.config.state_dir.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = crate::kubelet::serve(port, dir, token).await {
                tracing::warn!(error = %e, "kubelet endpoint unavailable");
            }
        })
    });
    let started = Timestamp::now();
    let mut nodes: Vec<Node> = Vec::new();
    for name in &context.config.node_names {
        nodes.push(register(&client, &context.config, name, started).await?);
    }
    let beat = {
        let (client, context, token) = (client.clone(), context.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(context.config.heartbeat);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                for node in &mut nodes {
                    if let Err(e) = heartbeat(&client, &context.config, node, started).await {
                        tracing::warn!(error = %e, "node heartbeat failed");
                        // A Node deleted from under the node is registered again.
                        let name = node.name_any();
                        if let Ok(None) = Api::<Node>::all(client.clone()).get_opt(&name).await {
                            match register(&client, &context.config, &name, Timestamp::now()).await
                            {
                                Ok(n) => *node = n,
                                Err(e) => tracing::warn!(
                                    error = %e,
                                    "re-registration failed"
                                ),
                            }
                        }
                    }
                }
            }
        })
    };

    let streams = context
        .config
        .node_names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let watch_config = watcher::Config::default().fields(&format!("spec.nodeName={name}"));
            watcher(Api::<Pod>::all(client.clone()), watch_config)
                .default_backoff()
                .map(move |e| (index, e))
                .boxed()
        });
    let mut events = futures::stream::select_all(streams);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // Pods whose worker finished (deleted by the node): their last updates must not start them
    // again while the object lingers (finalizers).
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: Vec<HashSet<String>> = vec![HashSet::new(); context.config.node_names.len()];
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.next() => e,
        };
        let Some((node, event)) = event else { break };
        match event {
            Ok(watcher::Event::Init) => listed[node].clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed[node].insert(pod.uid().unwrap_or_default());
                on_apply(&context, &mut workers, &mut finished, node, pod);
            }
            Ok(watcher::Event::Apply(pod)) => {
                on_apply(&context, &mut workers, &mut finished, node, pod)
            }
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while the watch was down: a relist covers only its own node.
                let gone: Vec<String> = workers
                    .iter()
                    .filter(|(uid, w)| w.node == node && !listed[node].contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in gone {
                    if let Some(w) = workers.remove(&uid) {
                        let _ = w.tx.send(Message::Gone);
                    }
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                finished.remove(&uid);
                if let Some(w) = workers.remove(&uid) {
                    let _ = w.tx.send(Message::Gone);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch error; retrying"),
        }
        let done: Vec<String> = workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            workers.remove(&uid);
            finished.insert(uid);
        }
    }

    tracing::info!("node stopping: killing every container process");
    beat.abort();
    if let Some(k) = kubelet {
        k.abort();
    }
    for w in workers.values() {
        let _ = w.tx.send(Message::Shutdown);
    }
    for (_, w) in workers {
        let _ = w.task.await;
    }
    Ok(())
}

fn on_apply(
    context: &Arc<NodeContext>,
    workers: &mut HashMap<String, Worker>,
    finished: &mut HashSet<String>,
    node: usize,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(w) = workers.get(&uid)
        && !w.task.is_finished()
    {
        let _ = w.tx.send(Message::Updated(Box::new(pod)));
        return;
    }
    if workers.remove(&uid).is_some() || finished.contains(&uid) {
        finished.insert(uid);
        return;
    }
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if terminal {
        // Nothing runs for a finished pod (e.g. after a node restart); only its deletion is
        // completed.
        if pod.metadata.deletion_timestamp.is_some() {
            finished.insert(uid.clone());
            let api: Api<Pod> =
                Api::namespaced(context.client.clone(), &pod.namespace().unwrap_or_default());
            let name = pod.name_any();
            tokio::spawn(async move {
                let _ = delete_finished_pod(&api, &name, &uid).await;
            });
        }
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let Some(worker) = PodWorker::new(context.clone(), pod.clone(), tx.clone()) else {
        tracing::error!(pod = %pod.name_any(), "no free pod IP left in {:?}", context.config.pod_cidr);
        return;
    };
    let task = tokio::spawn(worker.run(rx));
    workers.insert(uid, Worker { tx, task, node });
}

/// A node running in the background of the caller's runtime.
pub struct NodeHandle {
    token: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl NodeHandle {
    /// Starts a node in the current tokio runtime.
    pub fn spawn(kube_config: kube::Config, config: NodeConfig) -> Self {
        let token = CancellationToken::new();
        let task = tokio::spawn(run(kube_config, config, token.clone()));
        Self { token, task }
    }

    /// Whether the node stopped on its own (an error during registration, for instance).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the node, killing every container process, and returns how it ended.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.token.cancel();
        self.task.await.map_err(NodeError::Panicked)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_env_uses_the_loopback_api_server() {
        let env = service_env(&"https://127.0.0.1:6443".parse().unwrap()).unwrap();
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())));
        assert!(env.contains(&("KUBERNETES_SERVICE_PORT".into(), "6443".into())));
        assert!(env.contains(&("KUBERNETES_PORT_6443_TCP_ADDR".into(), "127.0.0.1".into())));
        assert!(service_env(&"https://10.96.0.1:443".parse().unwrap()).is_err());
        assert!(service_env(&"https://example.org".parse().unwrap()).is_err());
    }

    #[test]
    fn node_object_is_ready_with_capacity() {
        let config = NodeConfig::new(vec!["n1".into()], "/tmp/x");
        let node = node_object(&config, "n1", Timestamp::now()).unwrap();
        let status = node.status.unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.unwrap()["pods"].0, "110");
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].address, "127.0.0.1");
        assert_eq!(addresses[1].type_, "Hostname");
    }

    #[test]
    fn ca_is_pem_encoded() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.root_cert = Some(vec![vec![1, 2, 3]]);
        let pem = ca_pem(&config).unwrap();
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n"
        );
    }
}
