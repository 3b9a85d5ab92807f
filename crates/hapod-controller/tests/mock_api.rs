//! The runtime against a scripted API server (tower_test mock behind a real `kube::Client`):
//! request bodies, preconditions, delete options, error handling, re-list handling, and the
//! notification that follows a promotion (sent over loopback).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hapod_controller::metrics::Metrics;
use hapod_controller::router::GroupKey;
use hapod_controller::runtime::{Dispatcher, Settings};
use hapod_controller::worker::{PodNote, Shared, Worker};
use hapod_controller::writer::{Fence, Writer};
use hapod_core::{Config, Event, Purpose, Role, Write, WriteKind, WriteOutcome, epoch};
use hapod_protocol::{Message, decode};
use http::{Method, Response, StatusCode};
use kube::api::Api;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};

use common::*;

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
                            "annotations": {"hapod.io/epoch": "4294967297",
                                            "controller.kubernetes.io/pod-deletion-cost": "2147483647"}}})
    );
    send.send_response(ok(&pod_json("a", "8", "active", "10.0.0.1")));
    assert_eq!(
        call.await.unwrap(),
        WriteOutcome::Done {
            resource_version: Some("8".into())
        }
    );
}

/// A demotion drops the active's deletion cost in the same patch: a scale-down then takes
/// whichever pod the ReplicaSet ranks first among the standbys, never the active.
#[tokio::test]
async fn demotion_removes_the_deletion_cost_in_the_role_patch() {
    let (client, mut handle) = mock();
    let w = writer(client, Some(1), metrics());
    let demote = Write {
        kind: WriteKind::SetRole {
            resource_version: "7".into(),
            role: Role::Standby,
            epoch: None,
            purpose: Purpose::Demote,
        },
        ..promote_write(1)
    };
    let call = tokio::spawn(async move { w.execute(&demote).await });
    let (_, body, send) = next(&mut handle).await;
    assert_eq!(
        body,
        json!({"metadata": {"resourceVersion": "7", "labels": {"role": "standby"},
                            "annotations": {"controller.kubernetes.io/pod-deletion-cost": null}}})
    );
    send.send_response(ok(&pod_json("a", "8", "standby", "10.0.0.1")));
    assert!(matches!(call.await.unwrap(), WriteOutcome::Done { .. }));
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

#[tokio::test]
async fn pod_missing_from_relist_fails_over_and_notifies() {
    let mut rig = rig().await;
    // "a" listens elsewhere: the agent socket below plays "b" only.
    let mut active = pod_json("a", "5", "active", "127.0.0.9");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": epoch::compose(1, 1).to_string()});
    let active = view(active);
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
        // Taking over re-announces "a", then the re-list without "a" makes "b" active.
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
    assert_eq!(note.epoch, epoch::compose(1, 2));
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
        controller_pod: Some(("hapod-system".into(), "icr-0".into())),
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

/// A resync period no test waits for.
const HOUR: Duration = Duration::from_secs(3600);

/// Polls `f` every 10 ms for up to 2 s.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s: {what}");
}

/// A dispatcher over the mock API, following `term`.
fn dispatcher(
    client: kube::Client,
    shared: Arc<Shared>,
    namespaces: &[&str],
    resync: Duration,
    term: watch::Receiver<Option<u32>>,
) -> Arc<AtomicBool> {
    let ready = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        selector: "app=hapod".into(),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        resync,
        controller_pod: Some(("hapod-system".into(), "icr-0".into())),
    };
    let fence = Arc::new(FixedTerm(Some(1)));
    let dispatcher = Dispatcher::new(client, settings, shared, fence, Arc::clone(&ready));
    tokio::spawn(dispatcher.run(term));
    ready
}

#[tokio::test]
async fn losing_the_leadership_stops_acting_and_regaining_it_lists_again() {
    let (client, mut handle) = mock();
    let metrics = metrics();
    let (shared, _notes, _agent) = shared(metrics.clone()).await;
    let (leader, term) = watch::channel(Some(1));
    dispatcher(client, shared, &[], HOUR, term);
    let mut active = pod_json("a", "5", "active", "127.0.0.1");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": "4294967297"});
    let standby = pod_json("b", "6", "standby", "127.0.0.1");
    let mut held = Vec::new();
    let mut lists = 0;
    // Serves lists and holds watches open until `lists` lists were served.
    let mut serve = async |handle: &mut Handle, until: usize, lists: &mut usize| {
        while *lists < until {
            let (parts, _, send) = next(handle).await;
            if parts.uri.query().is_some_and(|q| q.contains("watch=true")) {
                held.push(send);
            } else {
                *lists += 1;
                send.send_response(pod_list(&[active.clone(), standby.clone()]));
            }
        }
    };
    serve(&mut handle, 1, &mut lists).await;
    eventually("acting in term 1", || metrics.acting.get() == 1).await;
    leader.send_replace(None);
    eventually("standing by after the Lease is lost", || {
        metrics.acting.get() == 0
    })
    .await;
    leader.send_replace(Some(2));
    // A new term acts only after a fresh list.
    serve(&mut handle, 2, &mut lists).await;
    eventually("acting in term 2", || metrics.acting.get() == 1).await;
}

#[tokio::test]
async fn duplicate_namespaces_are_watched_once() {
    let (client, mut handle) = mock();
    let metrics = metrics();
    let (shared, _notes, _agent) = shared(metrics.clone()).await;
    let (_leader, term) = watch::channel(Some(1));
    dispatcher(client, shared, &["ns", "ns", " ns "], HOUR, term);
    let mut lists = 0;
    let mut held = Vec::new();
    let mut active = pod_json("b", "6", "active", "127.0.0.1");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": "4294967297"});
    while let Ok(Some((request, send))) =
        timeout(Duration::from_millis(500), handle.next_request()).await
    {
        assert_eq!(request.uri().path(), "/api/v1/namespaces/ns/pods");
        if request
            .uri()
            .query()
            .is_some_and(|q| q.contains("watch=true"))
        {
            held.push(send);
        } else {
            lists += 1;
            send.send_response(pod_list(std::slice::from_ref(&active)));
        }
    }
    assert_eq!(lists, 1, "one list per distinct namespace");
    assert_eq!(held.len(), 1, "one watch per distinct namespace");
}

#[tokio::test]
async fn a_namespace_that_cannot_be_listed_does_not_stop_the_others() {
    let (client, mut handle) = mock();
    let metrics = metrics();
    let (shared, mut notes, _agent) = shared(metrics.clone()).await;
    let (_leader, term) = watch::channel(Some(1));
    let ready = dispatcher(client, shared, &["ok", "denied"], HOUR, term);
    let mut standby = pod_json("b", "6", "standby", "127.0.0.1");
    standby["metadata"]["namespace"] = json!("ok");
    let mut held = Vec::new();
    // Bounded: the failing namespace is retried (with backoff) for ever.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the listed namespace was not acted on"
        );
        let (parts, body, send) = next(&mut handle).await;
        let path = parts.uri.path().to_owned();
        if path.starts_with("/api/v1/namespaces/denied/") {
            send.send_response(status(403, "Forbidden"));
        } else if parts.uri.query().is_some_and(|q| q.contains("watch=true")) {
            held.push(send);
        } else if parts.method == Method::GET {
            send.send_response(pod_list(std::slice::from_ref(&standby)));
        } else {
            // The group in the listed namespace is acted on while the other keeps failing.
            assert_eq!(
                (parts.method, path.as_str()),
                (Method::PATCH, "/api/v1/namespaces/ok/pods/b")
            );
            assert_eq!(body["metadata"]["labels"]["role"], "active");
            break;
        }
    }
    assert_eq!(metrics.unsynced_scopes.get(), 1);
    // Reported once on the controller's own pod, not once per retry.
    let note = notes.try_recv().expect("an Event about the namespace");
    assert_eq!(
        (note.namespace.as_str(), note.pod.as_str(), note.reason),
        ("hapod-system", "icr-0", "NamespaceNotListed")
    );
    assert!(
        note.warning && note.note.contains("namespace denied"),
        "{}",
        note.note
    );
    assert!(notes.try_recv().is_err());
    assert!(
        !ready.load(Ordering::Acquire),
        "not ready while a namespace fails to list"
    );
}

/// A lease held in term 1 until a fixed instant.
struct HeldUntil(Instant);

impl Fence for HeldUntil {
    fn lease(&self) -> Option<(u32, Instant)> {
        (Instant::now() < self.0).then_some((1, self.0))
    }
}

#[tokio::test]
async fn a_write_is_given_up_at_the_renew_deadline() {
    let (client, mut handle) = mock();
    let until = Instant::now() + Duration::from_millis(300);
    let writer = Writer::new(
        Api::namespaced(client, "ns"),
        Arc::new(Config::default()),
        Arc::new(HeldUntil(until)),
        metrics(),
        request_slots(),
    );
    let write = tokio::spawn(async move { writer.execute(&promote_write(1)).await });
    // The API server takes the request and never answers.
    let (_request, _never_answered) = handle.next_request().await.unwrap();
    let outcome = timeout(Duration::from_secs(3), write)
        .await
        .expect("the write is bounded by the renew deadline")
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Failed);
    assert!(Instant::now() >= until);
}

#[tokio::test]
async fn requests_beyond_the_limit_wait_for_a_free_slot() {
    let (client, mut handle) = mock();
    let until = Instant::now() + Duration::from_secs(30);
    let one_slot = Arc::new(tokio::sync::Semaphore::new(1));
    let writer = Writer::new(
        Api::namespaced(client, "ns"),
        Arc::new(Config::default()),
        Arc::new(HeldUntil(until)),
        metrics(),
        one_slot,
    );
    let first = tokio::spawn({
        let writer = writer.clone();
        async move { writer.execute(&promote_write(1)).await }
    });
    let (_request, send) = handle.next_request().await.unwrap();
    let second = tokio::spawn(async move { writer.execute(&promote_write(2)).await });
    // The second write of another group waits while the first holds the only slot.
    assert!(
        timeout(Duration::from_millis(300), handle.next_request())
            .await
            .is_err(),
        "a second request went out beside the first"
    );
    send.send_response(ok(&pod_json("a", "8", "active", "10.0.0.1")));
    assert!(matches!(first.await.unwrap(), WriteOutcome::Done { .. }));
    let (_request, send) = timeout(Duration::from_secs(3), handle.next_request())
        .await
        .expect("the second request goes out once the slot is free")
        .unwrap();
    send.send_response(ok(&pod_json("a", "9", "active", "10.0.0.1")));
    assert!(matches!(second.await.unwrap(), WriteOutcome::Done { .. }));
}

fn with_dead_critical_container(mut pod: Value) -> Value {
    pod["spec"]["containers"] =
        json!([{"name": "c", "env": [{"name": "pwcriticality", "value": "critical"}]}]);
    pod["status"]["containerStatuses"] = json!([{"name": "c", "ready": false, "restartCount": 0,
        "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 1}}}]);
    pod
}

/// The worker of group ns/hapod on its own task, fed through the returned channel.
async fn running_worker() -> (
    Handle,
    mpsc::UnboundedSender<hapod_controller::worker::Input>,
) {
    let rig = rig().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(rig.worker.run(rx));
    (rig.handle, tx)
}

#[tokio::test]
async fn a_lost_active_goes_before_the_rest_of_a_chain_of_writes() {
    let (mut handle, tx) = running_worker().await;
    let mut active = pod_json("a", "5", "active", "127.0.0.1");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": epoch::compose(1, 1).to_string()});
    let mut unlabeled = pod_json("d", "8", "standby", "127.0.0.4");
    unlabeled["metadata"]["labels"] = json!({"app": "hapod"});
    let pods = vec![
        view(active),
        view(pod_json("b", "6", "standby", "127.0.0.2")),
        view(with_dead_critical_container(pod_json(
            "c",
            "7",
            "standby",
            "127.0.0.3",
        ))),
        view(unlabeled),
    ];
    tx.send((Event::Resync { pods }, Instant::now())).unwrap();
    tx.send((Event::Leadership(Some(1)), Instant::now()))
        .unwrap();
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!(
        (parts.method, parts.uri.path()),
        (Method::DELETE, "/api/v1/namespaces/ns/pods/c")
    );
    // The active is deleted while the kill is in flight.
    tx.send((
        Event::Deleted {
            name: "a".into(),
            uid: "a-uid".into(),
            resource_version: Some("9".into()),
        },
        Instant::now(),
    ))
    .unwrap();
    send.send_response(ok(&pod_json("c", "10", "standby", "127.0.0.3")));
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(
        (parts.method, parts.uri.path()),
        (Method::PATCH, "/api/v1/namespaces/ns/pods/b"),
        "the failover comes before the label repair"
    );
    assert_eq!(body["metadata"]["labels"]["role"], "active");
    send.send_response(ok(&pod_json("b", "11", "active", "127.0.0.2")));
}

#[tokio::test(start_paused = true)]
async fn failed_rereads_back_off_exponentially() {
    let (mut handle, tx) = running_worker().await;
    let pods = vec![view(pod_json("b", "6", "standby", "127.0.0.2"))];
    tx.send((Event::Resync { pods }, Instant::now())).unwrap();
    tx.send((Event::Leadership(Some(1)), Instant::now()))
        .unwrap();
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!(parts.method, Method::PATCH);
    send.send_response(status(409, "Conflict"));
    // The API is down for 10 s: every re-read fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rereads = 0;
    while let Ok(Some((request, send))) =
        tokio::time::timeout_at(deadline, handle.next_request()).await
    {
        assert_eq!(request.method(), Method::GET);
        rereads += 1;
        send.send_response(status(503, "ServiceUnavailable"));
    }
    assert!((3..=8).contains(&rereads), "{rereads} re-reads in 10 s");
}

#[tokio::test]
async fn a_group_without_pods_is_reaped_and_leaves_every_gauge() {
    let (client, mut handle) = mock();
    let metrics = metrics();
    let (shared, _notes, _agent) = shared(metrics.clone()).await;
    let (_leader, term) = watch::channel(Some(1));
    dispatcher(client, shared, &[], Duration::from_millis(100), term);
    let mut active = pod_json("a", "5", "active", "127.0.0.9");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": epoch::compose(1, 1).to_string()});
    let mut lists = 0;
    let mut held = Vec::new();
    while lists < 2 {
        let (parts, _, send) = next(&mut handle).await;
        if !parts.uri.query().is_some_and(|q| q.contains("watch=true")) {
            lists += 1;
            // Every pod of the group is gone by the second list.
            let items = if lists == 1 {
                vec![active.clone()]
            } else {
                vec![]
            };
            send.send_response(pod_list(&items));
        } else if lists == 1 {
            eventually("the group has a worker", || metrics.groups.get() == 1).await;
            send.send_response(watch_expired());
        } else {
            held.push(send);
        }
    }
    eventually("the empty group's worker is stopped", || {
        metrics.groups.get() == 0
    })
    .await;
    assert_eq!(metrics.groups_without_active.get(), 0);
}
