//! The EndpointSlice mode (docs/endpoints.md): for a group whose pods name a Service
//! (`hapod.io/service`), the acting replica writes that Service's EndpointSlice itself. The
//! slice lists the pod labeled active and nothing else, written as soon as the promotion is
//! acknowledged: traffic moves in one write of the controller's, without waiting for
//! kube-controller-manager to see the label (which, when its cache is behind, retries a
//! second later).
//!
//! One task per group writes the newest route it was given and skips the ones overtaken
//! meanwhile; every call runs under the leadership that allowed it, like the label writes.

use std::collections::BTreeMap;
use std::time::Duration;

use hapod_core::{Endpoint, Route};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use crate::metrics::{Metrics, SliceLabels, Stage, Verb};
use crate::router::GroupKey;
use crate::writer::{Writer, status_code};

/// `endpointslice.kubernetes.io/managed-by` of hapod's slices: kube-controller-manager leaves
/// slices managed by others alone.
pub const MANAGED_BY: &str = "controller.hapod.io";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service read is reused for this long: its ports and UID rarely change, and reading it
/// on every failover would put a request before the one that moves traffic.
const SERVICE_MAX_AGE: Duration = Duration::from_secs(30);
/// First retry delay after a failed write; doubles per failure up to `RETRY_MAX`.
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Name of hapod's slice of `service`.
pub fn slice_name(service: &str) -> String {
    format!("{service}-hapod")
}

/// Why a Service cannot be given hapod's slice. The operator must fix the Service: nothing is
/// written until then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    #[error("Service {0} does not exist")]
    NoService(String),
    #[error(
        "Service {0} has a selector: kube-controller-manager maintains its endpoints, so a slice of hapod's would add a second endpoint; remove spec.selector"
    )]
    HasSelector(String),
    #[error("Service {0} is of type ExternalName: it has no endpoints")]
    ExternalName(String),
    #[error(
        "Service {service} port {port:?} has the named targetPort {target:?}: give the container port's number"
    )]
    NamedTargetPort {
        service: String,
        port: String,
        target: String,
    },
    #[error("EndpointSlice {0} exists and is not managed by {MANAGED_BY}")]
    Foreign(String),
}

/// What the slice is built from: the Service as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFacts {
    pub name: String,
    pub uid: String,
    pub ipv6: bool,
    pub ports: Vec<EndpointPort>,
}

impl ServiceFacts {
    /// Checks that `service` can take hapod's slice and keeps what the slice needs.
    pub fn read(service: &Service) -> Result<ServiceFacts, Unroutable> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.clone().unwrap_or_default();
        if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(Unroutable::HasSelector(name));
        }
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err(Unroutable::ExternalName(name));
        }
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let port = match &p.target_port {
                    None => p.port,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(target)) => {
                        return Err(Unroutable::NamedTargetPort {
                            service: name.clone(),
                            port: p.name.clone().unwrap_or_default(),
                            target: target.clone(),
                        });
                    }
                };
                Ok(EndpointPort {
                    name: p.name,
                    port: Some(port),
                    protocol: p.protocol,
                    app_protocol: p.app_protocol,
                })
            })
            .collect::<Result<_, _>>()?;
        let ipv6 = spec
            .ip_families
            .as_ref()
            .and_then(|f| f.first())
            .is_some_and(|f| f == "IPv6");
        Ok(ServiceFacts {
            uid: service.metadata.uid.clone().unwrap_or_default(),
            name,
            ipv6,
            ports,
        })
    }
}

/// hapod's slice of `service`: `endpoint` (its addresses of the Service's IP family) as the
/// only endpoint, or none.
pub fn slice(
    namespace: &str,
    service: &ServiceFacts,
    endpoint: Option<&Endpoint>,
) -> EndpointSlice {
    let endpoints: Vec<SliceEndpoint> = endpoint
        .and_then(|e| {
            let ip = e.ips.iter().find(|ip| ip.is_ipv6() == service.ipv6)?;
            Some(SliceEndpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: e.node.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(namespace.into()),
                    name: Some(e.pod.name.clone()),
                    uid: Some(e.pod.uid.clone()),
                    ..ObjectReference::default()
                }),
                ..SliceEndpoint::default()
            })
        })
        .into_iter()
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(&service.name)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.into(), service.name.clone()),
                (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
            ])),
            // Removed with its Service by the garbage collector.
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.name.clone(),
                uid: service.uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        address_type: if service.ipv6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: Some(endpoints),
        ports: Some(service.ports.clone()),
    }
}

/// The delay before the next attempt after one more failure in a row.
fn backoff(failures: &mut u32) -> Duration {
    *failures = failures.saturating_add(1);
    RETRY_BASE
        .saturating_mul(1 << (*failures).min(16))
        .min(RETRY_MAX)
}

/// A route to carry out, with when it was decided (the start of the `route` stage).
type Decided = (Route, Instant);

/// The sending side of a group's slice task.
pub struct SliceTask {
    routes: watch::Sender<Decided>,
}

impl SliceTask {
    /// Starts the task of `key`'s group with its first route.
    pub fn start(key: GroupKey, writer: Writer, metrics: Metrics, first: Decided) -> Self {
        let (routes, rx) = watch::channel(first);
        let slices = Slices {
            key,
            slices: writer.api(),
            services: writer.api(),
            writer,
            metrics,
            service: None,
            written: None,
        };
        tokio::spawn(slices.run(rx));
        SliceTask { routes }
    }

    /// Hands over a newer route; one not yet written is overtaken.
    pub fn route(&self, route: Route, decided: Instant) {
        self.routes.send_replace((route, decided));
    }
}

/// What the task last wrote.
struct Written {
    service: String,
    resource_version: String,
    slice: EndpointSlice,
}

/// How one attempt ended.
enum Attempt {
    /// The API holds what the route says; `wrote`: a request of this attempt made it so.
    Done {
        wrote: bool,
    },
    /// Not acting: the next acting term hands a route over again.
    NotLeading,
    Unroutable(Unroutable),
    Failed(String),
}

struct Slices {
    key: GroupKey,
    slices: Api<EndpointSlice>,
    services: Api<Service>,
    writer: Writer,
    metrics: Metrics,
    /// The Service as last read, and when.
    service: Option<(ServiceFacts, Instant)>,
    written: Option<Written>,
}

impl Slices {
    async fn run(mut self, mut routes: watch::Receiver<Decided>) {
        let mut failures = 0u32;
        loop {
            let (route, decided) = routes.borrow_and_update().clone();
            let retry = match self.apply(&route).await {
                Attempt::Done { wrote } => {
                    failures = 0;
                    if wrote {
                        self.metrics.stage(Stage::route, decided.elapsed());
                    }
                    None
                }
                Attempt::NotLeading => None,
                Attempt::Unroutable(why) => {
                    self.count("refused");
                    tracing::error!(group = %self.key, %why, "EndpointSlice not written");
                    // Read again at the retry: the operator may have fixed it.
                    self.service = None;
                    Some(backoff(&mut failures))
                }
                Attempt::Failed(error) => {
                    self.count("failed");
                    let delay = backoff(&mut failures);
                    tracing::warn!(group = %self.key, %error, retry_ms = delay.as_millis() as u64, "EndpointSlice write failed");
                    Some(delay)
                }
            };
            let changed = match retry {
                None => routes.changed().await.is_ok(),
                Some(delay) => tokio::select! {
                    changed = routes.changed() => changed.is_ok(),
                    () = sleep(delay) => true,
                },
            };
            if !changed {
                // The group's worker is gone.
                return;
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .slice_writes
            .get_or_create(&SliceLabels { outcome })
            .inc();
    }

    /// Makes the API hold what `route` says: the slice of the Service it names lists its
    /// endpoint alone, and a slice written before for another Service is gone.
    async fn apply(&mut self, route: &Route) -> Attempt {
        let Some((_, until)) = self.writer.lease() else {
            return Attempt::NotLeading;
        };
        if let Some(old) = self
            .written
            .take_if(|w| route.service.as_ref() != Some(&w.service))
            && let Err(attempt) = self.remove(&old, until).await
        {
            self.written = Some(old);
            return attempt;
        }
        let Some(service) = &route.service else {
            return Attempt::Done { wrote: false };
        };
        let facts = match self.service_facts(service, until).await {
            Ok(facts) => facts,
            Err(attempt) => return attempt,
        };
        let wanted = slice(&self.key.namespace, &facts, route.endpoint.as_ref());
        if self
            .written
            .as_ref()
            .is_some_and(|w| w.service == *service && w.slice == wanted)
        {
            return Attempt::Done { wrote: false };
        }
        // A conflict (another writer, or a slice this task did not know) is met by reading
        // the slice again; twice in a row means something else keeps writing it.
        for _ in 0..2 {
            let known = match &self.written {
                Some(w) if w.service == *service => Some(w.resource_version.clone()),
                _ => match self.read_slice(service, until).await {
                    Ok(rv) => rv,
                    Err(attempt) => return attempt,
                },
            };
            let mut body = wanted.clone();
            body.metadata.resource_version = known.clone();
            let name = slice_name(service);
            let params = PostParams::default();
            let (verb, result) = match &known {
                Some(_) => (
                    Verb::update,
                    self.writer
                        .within(until, self.slices.replace(&name, &params, &body))
                        .await,
                ),
                None => (
                    Verb::create,
                    self.writer
                        .within(until, self.slices.create(&params, &body))
                        .await,
                ),
            };
            match result {
                Ok(Ok(stored)) => {
                    self.count("written");
                    self.written = Some(Written {
                        service: service.clone(),
                        resource_version: stored.metadata.resource_version.unwrap_or_default(),
                        slice: wanted,
                    });
                    return Attempt::Done { wrote: true };
                }
                Ok(Err(error)) if matches!(status_code(&error), 404 | 409) => {
                    self.metrics.api_error(verb, status_code(&error));
                    self.written = None;
                }
                Ok(Err(error)) => return self.failed(verb, &error),
                Err(_elapsed) => return self.abandoned(verb),
            }
        }
        Attempt::Failed(format!(
            "EndpointSlice {} changed under every write",
            slice_name(service)
        ))
    }

    fn abandoned(&self, verb: Verb) -> Attempt {
        self.metrics.api_error(verb, 0);
        Attempt::Failed("abandoned at the renew deadline".into())
    }

    /// A request the API answered with an error: counted, and retried later.
    fn failed(&self, verb: Verb, error: &kube::Error) -> Attempt {
        self.metrics.api_error(verb, status_code(error));
        Attempt::Failed(error.to_string())
    }

    /// The Service's facts, read again when older than `SERVICE_MAX_AGE` or of another name.
    async fn service_facts(&mut self, name: &str, until: Instant) -> Result<ServiceFacts, Attempt> {
        if let Some((facts, at)) = &self.service
            && facts.name == name
            && at.elapsed() < SERVICE_MAX_AGE
        {
            return Ok(facts.clone());
        }
        let service = match self.writer.within(until, self.services.get_opt(name)).await {
            Ok(Ok(Some(service))) => service,
            Ok(Ok(None)) => return Err(Attempt::Unroutable(Unroutable::NoService(name.into()))),
            Ok(Err(error)) => return Err(self.failed(Verb::get, &error)),
            Err(_elapsed) => return Err(self.abandoned(Verb::get)),
        };
        let facts = ServiceFacts::read(&service).map_err(Attempt::Unroutable)?;
        self.service = Some((facts.clone(), Instant::now()));
        Ok(facts)
    }

    /// The resourceVersion of the Service's slice of hapod's, `None` when there is none.
    async fn read_slice(&self, service: &str, until: Instant) -> Result<Option<String>, Attempt> {
        let name = slice_name(service);
        match self.writer.within(until, self.slices.get_opt(&name)).await {
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(found))) => {
                let managed = found
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_BY_LABEL))
                    .is_some_and(|m| m == MANAGED_BY);
                if !managed {
                    return Err(Attempt::Unroutable(Unroutable::Foreign(name)));
                }
                Ok(found.metadata.resource_version)
            }
            Ok(Err(error)) => Err(self.failed(Verb::get, &error)),
            Err(_elapsed) => Err(self.abandoned(Verb::get)),
        }
    }

    /// Deletes the slice written for a Service the group no longer names (precondition: the
    /// version written, so a slice someone else rewrote since is left alone).
    async fn remove(&self, old: &Written, until: Instant) -> Result<(), Attempt> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(old.resource_version.clone()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let name = slice_name(&old.service);
        match self
            .writer
            .within(until, self.slices.delete(&name, &params))
            .await
        {
            Ok(Ok(_)) => {
                self.count("removed");
                Ok(())
            }
            Ok(Err(error)) if matches!(status_code(&error), 404 | 409) => Ok(()),
            Ok(Err(error)) => Err(self.failed(Verb::delete, &error)),
            Err(_elapsed) => Err(self.abandoned(Verb::delete)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapod_core::PodRef;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "svc-uid"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn endpoint(ready: bool) -> Endpoint {
        Endpoint {
            pod: PodRef {
                name: "web-1".into(),
                uid: "pod-uid".into(),
            },
            ips: vec!["10.244.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            node: Some("node-a".into()),
            ready,
            serving: true,
            terminating: !ready,
        }
    }

    #[test]
    fn the_slice_lists_the_endpoint_alone_with_the_services_ports_and_owner() {
        let facts = ServiceFacts::read(&service(json!({
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "grpc", "port": 9090, "appProtocol": "grpc"},
            ],
        })))
        .unwrap();
        let slice = slice("shop", &facts, Some(&endpoint(true)));
        let body = serde_json::to_value(&slice).unwrap();
        assert_eq!(body["metadata"]["name"], "web-hapod");
        assert_eq!(
            body["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        assert_eq!(
            body["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            MANAGED_BY
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
        assert_eq!(body["addressType"], "IPv4");
        assert_eq!(
            body["endpoints"],
            json!([{
                "addresses": ["10.244.0.7"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "pod-uid"},
            }])
        );
        assert_eq!(
            body["ports"],
            json!([
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "grpc", "port": 9090, "appProtocol": "grpc"},
            ])
        );
    }

    #[test]
    fn an_ipv6_service_takes_the_pods_ipv6_address_and_none_lists_nobody() {
        let facts =
            ServiceFacts::read(&service(json!({"ipFamilies": ["IPv6"], "ports": []}))).unwrap();
        let body = serde_json::to_value(slice("shop", &facts, Some(&endpoint(false)))).unwrap();
        assert_eq!(body["addressType"], "IPv6");
        assert_eq!(body["endpoints"][0]["addresses"], json!(["fd00::7"]));
        assert_eq!(body["endpoints"][0]["conditions"]["ready"], false);
        let empty = serde_json::to_value(slice("shop", &facts, None)).unwrap();
        assert_eq!(empty["endpoints"], json!([]));
    }

    #[test]
    fn services_that_cannot_take_the_slice_are_refused_with_the_reason() {
        let selected = service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        assert_eq!(
            ServiceFacts::read(&selected),
            Err(Unroutable::HasSelector("web".into()))
        );
        let named = service(json!({"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        assert!(matches!(
            ServiceFacts::read(&named),
            Err(Unroutable::NamedTargetPort { target, .. }) if target == "http"
        ));
        let external = service(json!({"type": "ExternalName", "externalName": "example.org"}));
        assert_eq!(
            ServiceFacts::read(&external),
            Err(Unroutable::ExternalName("web".into()))
        );
        // An empty selector selects nothing: kube-controller-manager leaves it alone.
        assert!(ServiceFacts::read(&service(json!({"selector": {}}))).is_ok());
    }
}
