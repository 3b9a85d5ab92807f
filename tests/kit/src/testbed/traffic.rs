//! Which component publishes the sample app's endpoints: kube-controller-manager from the
//! Service's selector (the label mode, `deploy/base`), or hapod's controller itself (the
//! EndpointSlice mode, `deploy/overlays/endpoint-slices`). The switches follow the steps
//! docs/endpoints.md gives an operator, so that the Service never lists a pod other than the
//! active one, nor none, on the way. And which pod answers a request to the Service's
//! ClusterIP ([`ServiceProbe`], the real node's kube-proxy).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client, ResourceExt};

use super::Testbed;
use super::names::{APP_GROUP, APP_NAMESPACE, APP_REPLICAS, APP_SERVICE};
use super::pods::{pod_ip, ready_slice_addresses};
use crate::poll::{Check, await_condition};
use crate::workspace_root;

/// The annotation by which a group's pods name the Service whose slice hapod writes.
pub const SERVICE_ANNOTATION: &str = "hapod.io/service";
/// `endpointslice.kubernetes.io/managed-by` of hapod's slices.
pub const HAPOD_SLICES: &str = "controller.hapod.io";
/// `endpointslice.kubernetes.io/managed-by` of kube-controller-manager's slices.
pub const KUBE_SLICES: &str = "endpointslice-controller.k8s.io";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// One EndpointSlice of the sample app's Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceSummary {
    /// Its `endpointslice.kubernetes.io/managed-by`.
    pub manager: String,
    /// Its ready addresses, sorted.
    pub ready: Vec<String>,
    /// The pod UIDs of its endpoints (ready or not).
    pub pod_uids: Vec<String>,
}

impl Testbed {
    /// The sample app's Service's EndpointSlices, sorted.
    pub async fn app_slices(&self) -> Result<Vec<SliceSummary>> {
        let mut slices: Vec<SliceSummary> = self
            .service_slices(APP_NAMESPACE, APP_SERVICE)
            .await?
            .iter()
            .map(|s| SliceSummary {
                manager: s
                    .labels()
                    .get(MANAGED_BY_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                ready: ready_slice_addresses(s),
                pod_uids: s
                    .endpoints
                    .iter()
                    .flatten()
                    .filter_map(|e| e.target_ref.as_ref()?.uid.clone())
                    .collect(),
            })
            .collect();
        slices.sort();
        Ok(slices)
    }

    /// Waits until the sample app's slices are exactly `want`: (manager, the one ready
    /// address), sorted or not.
    pub async fn wait_app_slices(&self, want: &[(&str, &str)], timeout: Duration) -> Result<()> {
        let mut want: Vec<(String, Vec<String>)> = want
            .iter()
            .map(|(m, ip)| (m.to_string(), vec![ip.to_string()]))
            .collect();
        want.sort();
        await_condition(
            format!("the Service's slices to be {want:?}"),
            timeout,
            Duration::from_millis(50),
            || async {
                let now: Vec<(String, Vec<String>)> = self
                    .app_slices()
                    .await?
                    .into_iter()
                    .map(|s| (s.manager, s.ready))
                    .collect();
                Ok(if now == want {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{now:?}"))
                })
            },
        )
        .await
    }

    /// Switches the sample app to the EndpointSlice mode: the Service loses its selector
    /// (kube-controller-manager leaves its last slice, and the Service's Endpoints object gets
    /// mirrored into another), the pods name the Service (hapod writes its own slice of the
    /// same active), the leftovers are deleted. Returns with hapod's slice alone listing the
    /// active.
    pub async fn use_endpoint_slices(&self, timeout: Duration) -> Result<()> {
        let active = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await?
            .active;
        let ip = pod_ip(&active).unwrap_or_default();
        self.apply_kustomization(&workspace_root().join("deploy/overlays/endpoint-slices"))?;
        self.annotate_app_pods(&format!("{SERVICE_ANNOTATION}={APP_SERVICE}"))?;
        await_condition(
            format!("hapod's slice to list {ip}, and no slice another address"),
            timeout,
            Duration::from_millis(50),
            || async {
                let now = self.app_slices().await?;
                let hapod = now
                    .iter()
                    .any(|s| s.manager == HAPOD_SLICES && s.ready == [ip.as_str()]);
                let others = now.iter().all(|s| s.ready.iter().all(|a| *a == ip));
                Ok(if hapod && others {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{now:?}"))
                })
            },
        )
        .await?;
        self.kubectl(&[
            "delete",
            "endpointslices",
            "-n",
            APP_NAMESPACE,
            "-l",
            &format!("kubernetes.io/service-name={APP_SERVICE},{MANAGED_BY_LABEL}={KUBE_SLICES}"),
        ])?;
        self.kubectl(&["delete", "endpoints", "-n", APP_NAMESPACE, APP_SERVICE])?;
        self.wait_app_slices(&[(HAPOD_SLICES, &ip)], timeout).await
    }

    /// Back to the label mode: the selector returns (kube-controller-manager's slice with
    /// it, listing the same active), then the annotation goes (hapod deletes its slice).
    pub async fn use_label_selector(&self, timeout: Duration) -> Result<()> {
        let active = self
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
            .await?
            .active;
        let ip = pod_ip(&active).unwrap_or_default();
        self.apply_kustomization(&workspace_root().join("deploy/base"))?;
        self.wait_app_slices(&[(KUBE_SLICES, &ip), (HAPOD_SLICES, &ip)], timeout)
            .await?;
        self.annotate_app_pods(&format!("{SERVICE_ANNOTATION}-"))?;
        self.wait_app_slices(&[(KUBE_SLICES, &ip)], timeout).await
    }

    /// `kubectl annotate` of every pod of the sample app (`key=value`, or `key-` to remove).
    fn annotate_app_pods(&self, annotation: &str) -> Result<()> {
        let selector = format!("app={APP_GROUP}");
        self.kubectl(&[
            "annotate",
            "pods",
            "-n",
            APP_NAMESPACE,
            "-l",
            &selector,
            annotation,
            "--overwrite",
        ])?;
        Ok(())
    }

    /// `kubectl apply --server-side` of a kustomization (one field manager throughout, so
    /// fields a later apply leaves out are removed).
    pub(super) fn apply_kustomization(&self, path: &Path) -> Result<()> {
        self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &path.to_string_lossy(),
        ])?;
        Ok(())
    }
}

/// Requests to a Service's ClusterIP, one after another on fresh connections (as new clients
/// would come), each answer's pod recorded with the time it arrived: what a client of the
/// Service sees during a failover. Bounded: one request at a time, at most one every 2 ms,
/// for at most two minutes.
pub struct ServiceProbe {
    stop: Arc<AtomicBool>,
    /// (answer received, unix nanos; the pod that answered)
    answers: Arc<Mutex<Vec<(u64, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceProbe {
    const LONGEST: Duration = Duration::from_secs(120);

    /// Starts probing `http://<ClusterIP>:<port>/state` of the Service `ns/name` (the demo
    /// app's `/state` names its pod).
    pub async fn start(client: &Client, ns: &str, name: &str) -> Result<ServiceProbe> {
        let service = Api::<Service>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .with_context(|| format!("reading Service {ns}/{name}"))?;
        let spec = service.spec.unwrap_or_default();
        let ip: std::net::IpAddr = spec
            .cluster_ip
            .as_deref()
            .with_context(|| format!("Service {ns}/{name} has no ClusterIP"))?
            .parse()
            .with_context(|| format!("Service {ns}/{name}: ClusterIP"))?;
        let port = spec
            .ports
            .unwrap_or_default()
            .first()
            .map(|p| p.port)
            .with_context(|| format!("Service {ns}/{name} has no port"))?;
        let url = crate::http::url("http", ip, u16::try_from(port)?, "/state");
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, answers) = (stop.clone(), answers.clone());
            async move {
                let http = crate::http::Client::new(Duration::from_millis(250));
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Self::LONGEST {
                    if let Ok(answer) = http.get(&url).await
                        && let Ok(state) = serde_json::from_str::<serde_json::Value>(&answer.body)
                        && let Some(pod) = state["pod"].as_str()
                    {
                        let at = super::now_unix_nanos();
                        answers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((at, pod.to_owned()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Ok(ServiceProbe {
            stop,
            answers,
            task,
        })
    }

    /// When the first answer from `pod` after `since` (unix nanos) arrived; waits for one up
    /// to `timeout`, then stops probing.
    pub async fn first_answer_from(self, pod: &str, since: u64, timeout: Duration) -> Option<u64> {
        let first = || {
            self.answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|(at, from)| *at >= since && from == pod)
                .map(|(at, _)| *at)
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut found = first();
        while found.is_none() && std::time::Instant::now() < deadline && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            found = first();
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        found
    }
}
