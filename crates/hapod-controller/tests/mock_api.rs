//! The runtime against a scripted API server (tower_test mock behind a real `kube::Client`):
//! request bodies, preconditions, delete options, error handling, re-list handling, and the
//! notification that follows a promotion (sent over loopback).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hapod_controller::metrics::Metrics;
use hapod_controller::podview::pod_view;
use hapod_controller::router::GroupKey;
use hapod_controller::runtime::{Dispatcher, Settings};
use hapod_controller::worker::{PodNote, Shared, Worker};
use hapod_controller::writer::{Fence, Writer};
use hapod_core::{Config, Event, Purpose, Role, Write, WriteKind, WriteOutcome, epoch};
use hapod_protocol::sender::{Notifier, NotifierConfig};
use hapod_protocol::{Message, decode};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct FixedTerm(Option<u32>);

impl Fence for FixedTerm {
    fn term(&self) -> Option<u32> {
        self.0
    }
}

fn mock() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "ns"), handle)
}

fn metrics() -> Metrics {
    Metrics::register(&mut Registry::default())
}

fn writer(client: kube::Client, term: Option<u32>, metrics: Metrics) -> Writer {
    Writer::new(
        Api::namespaced(client, "ns"),
        Arc::new(Config::default()),
        Arc::new(FixedTerm(term)),
        metrics,
    )
}

fn pod_json(name: &str, rv: &str, role: &str, ip: &str) -> Value {
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

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": reason, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// Next request, its JSON body, and the responder.
async fn next(
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

fn promote_write(op: u64) -> Write {
    Write {
        op,
        pod: "a".into(),
        uid: "a-uid".into(),
        kind: WriteKind::SetRole {
            resource_version: "7".into(),
            role: Role::Active,
            epoch: Some(epoch::compose(1, 1)),
            purpose: Purpose::Promote(hapod_core::PromotionReason::Initial),
        },
    }
}

#[tokio::test]
async fn promotion_is_a_merge_patch_with_resource_version_and_epoch() {
    let (client, mut handle) = mock();
    let w = writer(client, Some(1), metrics());
    let call = tokio::spawn(async move { w.execute(&promote_write(1)).await });
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.method, Method::PATCH);
    assert_eq!(parts.uri.path(), "/api/v1/namespaces/ns/pods/a");
    assert_eq!(
        parts.headers["content-type"],
        "application/merge-patch+json"
    );
    assert_eq!(
        body,
        json!({"metadata": {"resourceVersion": "7", "labels": {"role": "active"},
                            "annotations": {"hapod.io/epoch": "4294967297"}}})
    );
    send.send_response(ok(&pod_json("a", "8", "active", "10.0.0.1")));
    assert_eq!(
        call.await.unwrap(),
        WriteOutcome::Done {
            resource_version: Some("8".into())
        }
    );
}

#[tokio::test]
async fn kill_is_a_delete_with_grace_zero_and_uid_precondition() {
    let (client, mut handle) = mock();
    let w = writer(client, Some(1), metrics());
    let write = Write {
        op: 1,
        pod: "a".into(),
        uid: "a-uid".into(),
        kind: WriteKind::Delete {
            container: "c".into(),
        },
    };
    let call = tokio::spawn(async move { w.execute(&write).await });
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.method, Method::DELETE);
    assert_eq!(parts.uri.path(), "/api/v1/namespaces/ns/pods/a");
    assert_eq!(body["gracePeriodSeconds"], json!(0));
    assert_eq!(body["preconditions"], json!({"uid": "a-uid"}));
    send.send_response(ok(&pod_json("a", "9", "standby", "10.0.0.1")));
    assert!(matches!(
        call.await.unwrap(),
        WriteOutcome::Done {
            resource_version: None
        }
    ));
}

#[tokio::test]
async fn api_errors_map_to_outcomes_and_metrics() {
    let m = metrics();
    for (code, reason, expected) in [
        (409, "Conflict", WriteOutcome::Conflict),
        (404, "NotFound", WriteOutcome::NotFound),
        (403, "Forbidden", WriteOutcome::Rejected { code: 403 }),
        (422, "Invalid", WriteOutcome::Rejected { code: 422 }),
        (500, "InternalError", WriteOutcome::Failed),
    ] {
        let (client, mut handle) = mock();
        let w = writer(client, Some(1), m.clone());
        let call = tokio::spawn(async move { w.execute(&promote_write(1)).await });
        let (_, _, send) = next(&mut handle).await;
        send.send_response(status(code, reason));
        assert_eq!(call.await.unwrap(), expected, "HTTP {code}");
    }
    assert_eq!(m.rejected_writes.get(), 2);
    let labels = hapod_controller::metrics::ApiErrorLabels {
        verb: hapod_controller::metrics::Verb::patch,
        code: 409,
    };
    assert_eq!(m.api_errors.get_or_create(&labels).get(), 1);
}

#[tokio::test]
async fn no_write_leaves_without_the_lease_or_in_another_term() {
    for term in [None, Some(2)] {
        let (client, mut handle) = mock();
        let w = writer(client, term, metrics());
        assert_eq!(w.execute(&promote_write(1)).await, WriteOutcome::Failed);
        assert!(
            timeout(Duration::from_millis(50), handle.next_request())
                .await
                .is_err(),
            "a request left with term {term:?}"
        );
    }
}

struct Rig {
    worker: Worker,
    handle: Handle,
    notes: mpsc::Receiver<PodNote>,
    agent: UdpSocket,
    metrics: Metrics,
}

/// Shared worker context with a loopback notifier and a UDP socket playing the pods' agent.
async fn shared(metrics: Metrics) -> (Arc<Shared>, mpsc::Receiver<PodNote>, UdpSocket) {
    let agent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let (notifier, _outcomes) = Notifier::bind(NotifierConfig {
        bind_v4: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        bind_v6: None,
        ..NotifierConfig::default()
    })
    .await
    .unwrap();
    let (notes_tx, notes) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        config: Arc::new(Config::default()),
        group_label: "app".into(),
        notifier,
        notify_port: agent.local_addr().unwrap().port(),
        notes: notes_tx,
        metrics,
    });
    (shared, notes, agent)
}

async fn rig() -> Rig {
    let (client, handle) = mock();
    let metrics = metrics();
    let (shared, notes, agent) = shared(metrics.clone()).await;
    let key = GroupKey {
        namespace: "ns".into(),
        group: "hapod".into(),
    };
    let worker = Worker::new(key, writer(client, Some(1), metrics.clone()), shared);
    Rig {
        worker,
        handle,
        notes,
        agent,
        metrics,
    }
}

fn view(json: Value) -> hapod_core::PodView {
    let pod: Pod = serde_json::from_value(json).unwrap();
    pod_view(&pod, &Config::default(), "app").unwrap()
}

#[tokio::test]
async fn pod_missing_from_relist_fails_over_and_notifies() {
    let mut rig = rig().await;
    let active = view(pod_json("a", "5", "active", "127.0.0.1"));
    let standby = view(pod_json("b", "6", "standby", "127.0.0.1"));
    let now = Instant::now();
    rig.worker
        .handle((
            Event::Resync {
                pods: vec![active.clone(), standby.clone()],
            },
            now,
        ))
        .await;
    let mut handle = rig.handle;
    let worker = tokio::spawn(async move {
        // Taking over re-announces "a" (no epoch annotation: nothing to announce), then the
        // re-list without "a" makes "b" active.
        rig.worker
            .handle((Event::Leadership(Some(1)), Instant::now()))
            .await;
        rig.worker
            .handle((
                Event::Resync {
                    pods: vec![standby],
                },
                Instant::now(),
            ))
            .await;
        rig.worker
    });
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.uri.path(), "/api/v1/namespaces/ns/pods/b");
    assert_eq!(body["metadata"]["resourceVersion"], "6");
    assert_eq!(body["metadata"]["labels"]["role"], "active");
    send.send_response(ok(&pod_json("b", "10", "active", "127.0.0.1")));
    worker.await.unwrap();

    let mut buf = [0u8; 2048];
    let (n, _) = timeout(Duration::from_secs(5), rig.agent.recv_from(&mut buf))
        .await
        .expect("notification within 5 s")
        .unwrap();
    let Message::Notify(note) = decode(&buf[..n], None).unwrap() else {
        panic!("not a notification")
    };
    assert_eq!(
        (note.pod.as_str(), note.role, note.group.as_str()),
        ("b", hapod_protocol::Role::Active, "ns/hapod")
    );
    assert_eq!(note.epoch, epoch::compose(1, 1));
    let promoted = rig.notes.recv().await.unwrap();
    assert_eq!((promoted.pod.as_str(), promoted.reason), ("b", "Promoted"));
    assert!(promoted.note.contains("reason deleted"));
    let deleted = hapod_controller::metrics::ReasonLabels {
        reason: "deleted".into(),
    };
    assert_eq!(rig.metrics.promotions.get_or_create(&deleted).get(), 1);
}

#[tokio::test]
async fn forbidden_patch_is_reported_once_not_retried_in_a_loop() {
    let mut rig = rig().await;
    let pod = view(pod_json("a", "5", "standby", "127.0.0.1"));
    rig.worker
        .handle((Event::Resync { pods: vec![pod] }, Instant::now()))
        .await;
    let mut handle = rig.handle;
    let mut worker = rig.worker;
    let task = tokio::spawn(async move {
        worker
            .handle((Event::Leadership(Some(1)), Instant::now()))
            .await;
        // Ticks during the pause must not retry.
        for _ in 0..5 {
            worker.handle((Event::Tick, Instant::now())).await;
        }
        worker
    });
    let (_, _, send) = next(&mut handle).await;
    send.send_response(status(403, "Forbidden"));
    // Kept alive so that a retry would reach the mock instead of a closed client.
    let _worker = timeout(Duration::from_secs(5), task)
        .await
        .expect("no retry blocks the worker")
        .unwrap();
    assert!(
        timeout(Duration::from_millis(100), handle.next_request())
            .await
            .is_err()
    );
    let note = rig.notes.recv().await.unwrap();
    assert_eq!(note.reason, "WriteRejected");
    assert!(note.warning && note.note.contains("403"));
    assert_eq!(rig.metrics.rejected_writes.get(), 1);
    assert_eq!(rig.metrics.groups_without_active.get(), 1);
}

fn pod_list(items: &[Value]) -> Response<Body> {
    ok(&json!({"apiVersion": "v1", "kind": "PodList",
               "metadata": {"resourceVersion": "10"}, "items": items}))
}

/// A watch answered with "410 Gone": the watcher must list again.
fn watch_expired() -> Response<Body> {
    let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "message": "too old resource version",
        "reason": "Expired", "code": 410}});
    let mut line = serde_json::to_vec(&event).unwrap();
    line.push(b'\n');
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(line))
        .unwrap()
}

#[tokio::test]
async fn dispatcher_acts_after_the_list_and_a_pod_missing_from_a_relist_is_deleted() {
    let (client, mut handle) = mock();
    let metrics = metrics();
    let (shared, _notes, _agent) = shared(metrics.clone()).await;
    let ready = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        selector: "app=hapod".into(),
        namespaces: vec![],
        resync: Duration::from_secs(3600),
    };
    let fence = Arc::new(FixedTerm(Some(1)));
    let dispatcher = Dispatcher::new(client, settings, shared, fence, Arc::clone(&ready));
    let (_leader, term) = watch::channel(Some(1));
    tokio::spawn(dispatcher.run(term));

    let mut active = pod_json("a", "5", "active", "127.0.0.1");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": "4294967297"});
    let standby = pod_json("b", "6", "standby", "127.0.0.1");
    let mut lists = 0;
    let mut held_watches = Vec::new();
    loop {
        let (parts, body, send) = next(&mut handle).await;
        let watching = parts.uri.query().is_some_and(|q| q.contains("watch=true"));
        match (parts.method.clone(), watching) {
            (Method::GET, false) => {
                assert_eq!(parts.uri.path(), "/api/v1/pods");
                assert!(
                    parts
                        .uri
                        .query()
                        .unwrap()
                        .contains("labelSelector=app%3Dhapod")
                );
                lists += 1;
                if lists == 1 {
                    send.send_response(pod_list(&[active.clone(), standby.clone()]));
                } else {
                    // "a" was deleted during the watch gap.
                    send.send_response(pod_list(std::slice::from_ref(&standby)));
                }
            }
            (Method::GET, true) if lists == 1 => {
                // Listed and acting, and the kept active was not touched.
                assert!(ready.load(Ordering::Acquire));
                send.send_response(watch_expired());
            }
            (Method::GET, true) => held_watches.push(send),
            (Method::PATCH, _) => {
                assert_eq!(lists, 2, "no write before the re-list");
                assert_eq!(parts.uri.path(), "/api/v1/namespaces/ns/pods/b");
                assert_eq!(body["metadata"]["resourceVersion"], "6");
                assert_eq!(body["metadata"]["labels"]["role"], "active");
                // Above the epoch seen on "a": same term, next sequence.
                assert_eq!(
                    body["metadata"]["annotations"]["hapod.io/epoch"],
                    epoch::compose(1, 2).to_string()
                );
                send.send_response(ok(&pod_json("b", "11", "active", "127.0.0.1")));
                break;
            }
            (method, _) => panic!("unexpected {method} {}", parts.uri),
        }
    }
    let deleted = hapod_controller::metrics::ReasonLabels {
        reason: "deleted".into(),
    };
    for _ in 0..100 {
        if metrics.promotions.get_or_create(&deleted).get() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("promotion not recorded");
}
