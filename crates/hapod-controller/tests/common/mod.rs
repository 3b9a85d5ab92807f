//! What the runtime tests share: a scripted API server behind a real `kube::Client`, a
//! writer with a fixed term, pod objects, and a worker context with a loopback notifier.

#![allow(dead_code)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hapod_controller::metrics::Metrics;
use hapod_controller::orders::OrderChannel;
use hapod_controller::podview::pod_view;
use hapod_controller::worker::{PodNote, Shared};
use hapod_controller::writer::{Fence, Writer};
use hapod_core::Config;
use hapod_protocol::LeaseTerms;
use hapod_protocol::sender::{Notifier, NotifierConfig};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct FixedTerm(pub Option<u32>);

impl Fence for FixedTerm {
    fn lease(&self) -> Option<(u32, Instant)> {
        self.0
            .map(|t| (t, Instant::now() + Duration::from_secs(3600)))
    }
}

pub fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "ns"), handle)
}

pub fn metrics() -> Metrics {
    Metrics::register(&mut Registry::default())
}

pub fn writer(client: kube::Client, term: Option<u32>, metrics: Metrics) -> Writer {
    Writer::new(
        Api::namespaced(client, "ns"),
        Arc::new(Config::default()),
        Arc::new(FixedTerm(term)),
        metrics,
        request_slots(),
    )
}

/// The API request slots of a test's writers (the controller's default count).
pub fn request_slots() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(32))
}

pub fn pod_json(name: &str, rv: &str, role: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                     "resourceVersion": rv, "labels": {"app": "hapod", "role": role},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

pub fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": reason, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// Next request, its JSON body, and the responder.
pub async fn next(
    handle: &mut Handle,
) -> (
    http::request::Parts,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5 s")
        .expect("service alive");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (parts, json, send)
}

/// Shared worker context with a loopback notifier and a UDP socket playing the pods' agent.
pub async fn shared(metrics: Metrics) -> (Arc<Shared>, mpsc::Receiver<PodNote>, UdpSocket) {
    shared_with(Config::default(), None, metrics).await
}

/// [`shared`] with a configuration, and with the application lease's orders (sent over
/// loopback to the agent socket, at this heartbeat) when `lease` is given.
pub async fn shared_with(
    config: Config,
    lease: Option<(LeaseTerms, Duration)>,
    metrics: Metrics,
) -> (Arc<Shared>, mpsc::Receiver<PodNote>, UdpSocket) {
    let agent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let agent_port = agent.local_addr().unwrap().port();
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (notifier, _outcomes) = Notifier::bind(NotifierConfig {
        bind_v4: Some(loopback),
        bind_v6: None,
        ..NotifierConfig::default()
    })
    .await
    .unwrap();
    let orders = match lease {
        Some((terms, heartbeat)) => {
            let channel = OrderChannel::bind(terms, None, agent_port, [loopback], metrics.clone())
                .await
                .unwrap();
            Some((channel, heartbeat))
        }
        None => None,
    };
    let (notes_tx, notes) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        config: Arc::new(config),
        group_label: "app".into(),
        notifier,
        notify_port: agent_port,
        notes: notes_tx,
        metrics,
        epoch_floor: Default::default(),
        orders,
        api_requests: request_slots(),
    });
    (shared, notes, agent)
}

pub fn view(json: Value) -> hapod_core::PodView {
    let pod: Pod = serde_json::from_value(json).unwrap();
    pod_view(&pod, &Config::default(), "app").unwrap()
}
