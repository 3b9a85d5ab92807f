//! The EndpointSlice mode's writer against a scripted API server: the requests it makes, the
//! preconditions they carry, what it does on a conflict, and what it leaves alone.

mod common;

use std::time::Duration;

use hapod_controller::endpoints::{MANAGED_BY, SliceTask};
use hapod_controller::router::GroupKey;
use hapod_core::{Endpoint, PodRef, Route};
use http::Method;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use common::*;
use hapod_controller::metrics::Metrics;

const SLICE_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-hapod";

fn key() -> GroupKey {
    GroupKey {
        namespace: "ns".into(),
        group: "web".into(),
    }
}

fn route(pod: Option<&str>) -> Route {
    Route {
        service: Some("web".into()),
        endpoint: pod.map(|name| Endpoint {
            pod: PodRef {
                name: name.into(),
                uid: format!("{name}-uid"),
            },
            ips: vec!["10.0.0.7".parse().unwrap()],
            node: None,
            ready: true,
            serving: true,
            terminating: false,
        }),
    }
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "resourceVersion": "1"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

fn stored_slice(rv: &str, manager: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-hapod", "namespace": "ns", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": manager}},
        "addressType": "IPv4", "endpoints": [],
    })
}

/// Answers the Service read and the slice read of a task's first write.
async fn answer_reads(handle: &mut Handle, slice_rv: &str, manager: &str) {
    let (parts, _, send) = next(handle).await;
    assert_eq!(
        (parts.method, parts.uri.path()),
        (Method::GET, "/api/v1/namespaces/ns/services/web")
    );
    send.send_response(ok(&service()));
    let (parts, _, send) = next(handle).await;
    assert_eq!((parts.method, parts.uri.path()), (Method::GET, SLICE_PATH));
    send.send_response(ok(&stored_slice(slice_rv, manager)));
}

/// A slice task for route `a` under a replica holding `term` (`None`: not acting).
fn started(term: Option<u32>) -> (SliceTask, Handle, Metrics) {
    let (client, handle) = mock();
    let metrics = metrics();
    let task = SliceTask::start(
        key(),
        writer(client, term, metrics.clone()),
        metrics.clone(),
        (route(Some("a")), Instant::now()),
    );
    (task, handle, metrics)
}

fn addresses(body: &Value) -> Vec<String> {
    body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_conflict_is_met_by_reading_the_slice_again_and_the_next_route_reuses_its_version() {
    let (task, mut handle, _) = started(Some(1));
    answer_reads(&mut handle, "5", MANAGED_BY).await;
    // The update carries the version read; another writer got there first.
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!((parts.method, parts.uri.path()), (Method::PUT, SLICE_PATH));
    assert_eq!(body["metadata"]["resourceVersion"], "5");
    assert_eq!(addresses(&body), ["10.0.0.7"]);
    send.send_response(status(409, "Conflict"));
    // Read again, updated with the version read now.
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!((parts.method, parts.uri.path()), (Method::GET, SLICE_PATH));
    send.send_response(ok(&stored_slice("6", MANAGED_BY)));
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.method, Method::PUT);
    assert_eq!(body["metadata"]["resourceVersion"], "6");
    send.send_response(ok(&stored_slice("7", MANAGED_BY)));
    // The next route goes straight to an update at the version this write returned.
    task.route(route(None), Instant::now());
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(parts.method, Method::PUT);
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert!(addresses(&body).is_empty(), "{body}");
    send.send_response(ok(&stored_slice("8", MANAGED_BY)));
    drop(task);
}

#[tokio::test]
async fn a_slice_of_another_manager_is_never_overwritten() {
    let (_task, mut handle, metrics) = started(Some(1));
    answer_reads(&mut handle, "5", "endpointslice-controller.k8s.io").await;
    // Refused: the next request is the retry's reading of the Service, not a write.
    let (parts, _, send) = next(&mut handle).await;
    assert_eq!(
        (parts.method, parts.uri.path()),
        (Method::GET, "/api/v1/namespaces/ns/services/web")
    );
    drop(send);
    let refused = metrics
        .slice_writes
        .get_or_create(&hapod_controller::metrics::SliceLabels { outcome: "refused" })
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test]
async fn a_replica_that_does_not_act_sends_nothing() {
    let (_task, mut handle, _) = started(None);
    assert!(
        timeout(Duration::from_millis(300), handle.next_request())
            .await
            .is_err(),
        "a request left without the lease"
    );
}

#[tokio::test]
async fn a_service_no_longer_named_loses_its_slice_with_the_version_written() {
    let (task, mut handle, _) = started(Some(1));
    answer_reads(&mut handle, "5", MANAGED_BY).await;
    let (_, _, send) = next(&mut handle).await;
    send.send_response(ok(&stored_slice("6", MANAGED_BY)));
    task.route(
        Route {
            service: None,
            endpoint: None,
        },
        Instant::now(),
    );
    let (parts, body, send) = next(&mut handle).await;
    assert_eq!(
        (parts.method, parts.uri.path()),
        (Method::DELETE, SLICE_PATH)
    );
    assert_eq!(body["preconditions"]["resourceVersion"], "6");
    send.send_response(ok(&stored_slice("6", MANAGED_BY)));
}
