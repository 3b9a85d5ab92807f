//! Carries out the core's writes against the API: fenced, with preconditions, and with every
//! error classified into the outcome the core understands.

use std::sync::Arc;
use std::time::Duration;

use hapod_core::{Config, Role, Write, WriteKind, WriteOutcome, epoch};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout, timeout_at};

use crate::metrics::{Metrics, Verb};
use crate::podview::EPOCH_ANNOTATION;

/// Bound of a re-read: a stalled connection must not hold a group's worker.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The leadership check made right before every write. Implemented by the election's
/// `LeaderHandle`; the seam exists so the runtime can be tested without a Lease.
pub trait Fence: Send + Sync {
    /// While this replica may write: the current controller term and the instant until which
    /// its leadership is certain (the renew deadline). Else `None`.
    fn lease(&self) -> Option<(u32, Instant)>;
}

impl Fence for hapod_election::LeaderHandle {
    fn lease(&self) -> Option<(u32, Instant)> {
        self.fence_until().ok().map(|(t, until)| (t.get(), until))
    }
}

/// The ReplicaSet controller removes the pods of lowest cost first when it scales down (after
/// unscheduled, pending and unready ones), so the active pod outlasts every ready standby.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The active's cost: the highest the API accepts (an int32).
const ACTIVE_DELETION_COST: i32 = i32::MAX;

/// Merge patch setting the role label (and the epoch annotation), with the resourceVersion
/// the decision was based on as precondition: the API answers 409 when the pod changed since.
/// The active pod gets the highest deletion cost, any other pod none (`null` removes it).
pub fn role_patch(
    config: &Config,
    resource_version: &str,
    role: Role,
    epoch: Option<u64>,
) -> Value {
    let (value, cost) = match role {
        Role::Active => (
            &config.active_value,
            json!(ACTIVE_DELETION_COST.to_string()),
        ),
        _ => (&config.standby_value, Value::Null),
    };
    let mut annotations = json!({ DELETION_COST_ANNOTATION: cost });
    if let Some(epoch) = epoch {
        annotations[EPOCH_ANNOTATION] = json!(epoch.to_string());
    }
    json!({ "metadata": {
        "resourceVersion": resource_version,
        "labels": { config.role_label.as_str(): value },
        "annotations": annotations,
    } })
}

/// Immediate delete of exactly the pod with `uid` (a replacement reusing the name is safe).
pub fn kill_params(uid: &str) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

/// HTTP status of a failed call, `0` when none came back.
pub fn status_code(error: &kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        _ => 0,
    }
}

/// The outcome the core gets for a failed write.
pub fn classify(error: &kube::Error) -> WriteOutcome {
    match status_code(error) {
        409 => WriteOutcome::Conflict,
        404 => WriteOutcome::NotFound,
        // Bad request, forbidden, invalid: retrying the same write cannot help.
        code @ (400 | 403 | 422) => WriteOutcome::Rejected { code },
        _ => WriteOutcome::Failed,
    }
}

/// Writes of one namespace.
#[derive(Clone)]
pub struct Writer {
    pods: Api<Pod>,
    config: Arc<Config>,
    fence: Arc<dyn Fence>,
    metrics: Metrics,
    /// Requests to the API server in flight at once, shared by every group: each one
    /// outstanding holds an HTTP/1 connection of its own (a TLS session and its buffers,
    /// kept in the pool afterwards), so a thousand groups converging at once would open a
    /// thousand.
    requests: Arc<Semaphore>,
}

impl Writer {
    pub fn new(
        pods: Api<Pod>,
        config: Arc<Config>,
        fence: Arc<dyn Fence>,
        metrics: Metrics,
        requests: Arc<Semaphore>,
    ) -> Self {
        Self {
            pods,
            config,
            fence,
            metrics,
            requests,
        }
    }

    /// Whether this replica may write (and notify) now.
    pub fn leading(&self) -> bool {
        self.fence.lease().is_some()
    }

    /// The current controller term and the instant until which its leadership is certain,
    /// while this replica may write.
    pub fn lease(&self) -> Option<(u32, Instant)> {
        self.fence.lease()
    }

    /// The API of another namespaced kind, in this writer's namespace and client.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        let namespace = self.pods.namespace().unwrap_or_default().to_owned();
        Api::namespaced(self.pods.clone().into_client(), &namespace)
    }

    /// Runs `request` in one of the shared request slots, given up at `until` (the renew
    /// deadline of the leadership that allowed it).
    pub async fn within<T>(
        &self,
        until: Instant,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>, tokio::time::error::Elapsed> {
        timeout_at(until, self.limited(request)).await
    }

    /// Fences, then performs `write`, given up when the leadership stops being certain: no
    /// write of this replica is waited for past its renew deadline (the API client does not
    /// retry on its own either). A write whose epoch belongs to another term than the one held
    /// now is not sent: the leadership change reaches the group next.
    pub async fn execute(&self, write: &Write) -> WriteOutcome {
        let Some((term, until)) = self.fence.lease() else {
            tracing::debug!(pod = %write.pod, "write skipped: not the acting leader");
            return WriteOutcome::Failed;
        };
        let (verb, result) = match &write.kind {
            WriteKind::SetRole {
                resource_version,
                role,
                epoch: stamped,
                ..
            } => {
                if stamped.is_some_and(|e| epoch::term_of(e) != term) {
                    return WriteOutcome::Failed;
                }
                let body = role_patch(&self.config, resource_version, *role, *stamped);
                let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
                let call = self.pods.patch(&write.pod, &params, &patch);
                let result = self
                    .within(until, call)
                    .await
                    .map(|r| r.map(|pod| pod.metadata.resource_version));
                (Verb::patch, result)
            }
            WriteKind::Delete { .. } => {
                let params = kill_params(&write.uid);
                let call = self.pods.delete(&write.pod, &params);
                let result = self.within(until, call).await.map(|r| r.map(|_| None));
                (Verb::delete, result)
            }
        };
        match result {
            Ok(Ok(resource_version)) => WriteOutcome::Done { resource_version },
            Err(_elapsed) => {
                self.metrics.api_error(verb, 0);
                tracing::warn!(pod = %write.pod, ?verb, "write abandoned at the renew deadline");
                WriteOutcome::Failed
            }
            Ok(Err(error)) => {
                let code = status_code(&error);
                self.metrics.api_error(verb, code);
                let outcome = classify(&error);
                if let WriteOutcome::Rejected { .. } = outcome {
                    self.metrics.rejected_writes.inc();
                }
                tracing::warn!(pod = %write.pod, ?verb, code, %error, ?outcome, "write failed");
                outcome
            }
        }
    }

    /// Runs `request` once one of the shared request slots is free (a wait that counts
    /// against the caller's deadline).
    async fn limited<T>(&self, request: impl Future<Output = T>) -> T {
        // The semaphore is never closed.
        let _slot = self.requests.acquire().await;
        request.await
    }

    /// Reads a pod again after a conflict; `Ok(None)` when it is gone.
    pub async fn read(&self, name: &str) -> Result<Option<Pod>, ReadError> {
        match timeout(READ_TIMEOUT, self.limited(self.pods.get_opt(name))).await {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(error)) => {
                self.metrics.api_error(Verb::get, status_code(&error));
                Err(ReadError::Api(error))
            }
            Err(_) => {
                self.metrics.api_error(Verb::get, 0);
                Err(ReadError::TimedOut(READ_TIMEOUT))
            }
        }
    }
}

/// A re-read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Api(kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}
