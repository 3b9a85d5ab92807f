//! Names every tool that talks to a hapod deployment shares: the namespaces, groups, labels,
//! annotations, Services, containers and ports of `deploy/base` and of the process node.
//! The testbed, the deploy checks (`cargo xtask deploy`) and the benchmark use these, so a
//! rename in `deploy/` is one edit here.

/// Namespace of the sample application in `deploy/base`.
pub const APP_NAMESPACE: &str = "hapod-demo";
/// Group label value of the sample application (`app=hapod`).
pub const APP_GROUP: &str = "hapod";
/// Name of the sample application's ReplicaSet, Service (and Deployment in the Helm chart).
pub const APP_NAME: &str = "hapod-demo";
/// The sample application's Service.
pub const APP_SERVICE: &str = APP_NAME;
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
/// Name of the controller's Deployment, PodDisruptionBudget, ServiceAccount and Lease.
pub const CONTROLLER_NAME: &str = "hapod-controller";
/// The controller's ServiceAccount.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = CONTROLLER_NAME;
/// The election Lease.
pub const LEASE_NAME: &str = CONTROLLER_NAME;
/// After taking over, the acting controller promotes no pod for its predecessor's renew
/// deadline (2 s, the election's default) plus one application lease (1 s in `deploy/base`):
/// grants its predecessor sent may still be live.
pub const TAKEOVER_PROMOTION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// The Secret holding the notification key, in both namespaces.
pub const NOTIFY_SECRET: &str = "hapod-notify-key";
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
/// ... and each container's log file (stdout and stderr) under this one.
pub const LOG_ANNOTATION_PREFIX: &str = "node.hapod.io/log-";
