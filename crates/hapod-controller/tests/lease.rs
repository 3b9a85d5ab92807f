//! The application lease at run time: a worker sends every pod an order at each heartbeat,
//! routes the agents' reports back into its group, and grants the active pod only once it
//! has a report of that agent to echo.

mod common;

use std::time::Duration;

use hapod_controller::metrics::{AgentLabels, ReportLabels};
use hapod_controller::router::GroupKey;
use hapod_controller::worker::Worker;
use hapod_core::{ApplicationLease, Config, Event, epoch};
use hapod_protocol::{AgentRole, LeaseTerms, Message, Order, Report, decode, encode_report};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use common::*;

const HEARTBEAT: Duration = Duration::from_millis(20);

/// The next order for `pod` arriving at the agent socket, and where it came from.
async fn next_order_for(agent: &UdpSocket, pod: &str) -> (Order, std::net::SocketAddr) {
    let mut buf = [0u8; 2048];
    loop {
        let (len, from) = timeout(Duration::from_secs(5), agent.recv_from(&mut buf))
            .await
            .expect("an order within 5 s")
            .unwrap();
        if let Ok(Message::Order(order)) = decode(&buf[..len], None)
            && order.pod == pod
        {
            return (order, from);
        }
    }
}

#[tokio::test]
async fn heartbeats_carry_a_grant_once_the_agent_reported_and_reports_reach_the_group() {
    let terms = LeaseTerms {
        lease: Duration::from_millis(300),
        drift_ppm: 1_000,
    };
    let config = Config {
        application_lease: Some(ApplicationLease {
            live_span: terms.live_span(),
            predecessor_window: Duration::ZERO,
            report_timeout: None,
        }),
        ..Config::default()
    };
    let metrics = metrics();
    let (shared, _notes, agent) =
        shared_with(config, Some((terms, HEARTBEAT)), metrics.clone()).await;
    let (client, mut handle) = mock();
    let key = GroupKey {
        namespace: "ns".into(),
        group: "hapod".into(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(key, writer(client, Some(1), metrics.clone()), shared)
        .with_reports_to(tx.downgrade());
    let running = tokio::spawn(worker.run(rx));

    let active_epoch = epoch::compose(1, 1);
    let mut active = pod_json("a", "5", "active", "127.0.0.1");
    active["metadata"]["annotations"] = json!({"hapod.io/epoch": active_epoch.to_string()});
    let pods = vec![
        view(active),
        view(pod_json("b", "6", "standby", "127.0.0.9")),
    ];
    tx.send((Event::Resync { pods }, Instant::now())).unwrap();
    tx.send((Event::Leadership(Some(1)), Instant::now()))
        .unwrap();

    // No report of a's agent yet: its orders name it active but carry no grant.
    let (first, controller) = next_order_for(&agent, "a").await;
    assert_eq!(
        (first.role, first.epoch),
        (hapod_protocol::Role::Active, active_epoch)
    );
    assert_eq!(first.pod_uid, "a-uid");
    assert_eq!(first.grant, None);

    // The agent reports; the following heartbeats echo it in a grant.
    let report = Report {
        message_id: first.message_id,
        epoch: active_epoch,
        role: Some(AgentRole::Lapsed),
        incarnation: 77,
        stamp_nanos: 1_234,
        grant_remaining_millis: 0,
        pod_uid: "a-uid".into(),
    };
    agent
        .send_to(&encode_report(&report, None).unwrap(), controller)
        .await
        .unwrap();
    let started = Instant::now();
    let granted = loop {
        let (order, _) = next_order_for(&agent, "a").await;
        if let Some(grant) = order.grant {
            break grant;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no grant after the report"
        );
    };
    assert_eq!(
        (
            granted.incarnation,
            granted.stamp_nanos,
            granted.lease_millis
        ),
        (77, 1_234, 300)
    );
    // The agent's state is exported, one series per pod.
    let series = |role: &str| {
        let labels = AgentLabels {
            group: "ns/hapod".into(),
            pod: "a".into(),
            role: role.into(),
        };
        metrics.agent_roles.get(&labels).map(|gauge| gauge.get())
    };
    assert_eq!(series("lapsed"), Some(1));
    let reports = |role: &str| {
        let labels = ReportLabels { role: role.into() };
        metrics.reports.get(&labels).map(|counter| counter.get())
    };
    assert_eq!(reports("lapsed"), Some(1));

    // Heartbeats keep coming without any other event.
    let before = Instant::now();
    next_order_for(&agent, "a").await;
    next_order_for(&agent, "a").await;
    assert!(before.elapsed() < Duration::from_secs(2));

    // The agent restarted past its epoch: the report reaches the group's core, which gives
    // the active a fresh epoch (a label write) so that it can act again.
    let restarted = Report {
        role: None,
        incarnation: 78,
        stamp_nanos: 10,
        ..report
    };
    agent
        .send_to(&encode_report(&restarted, None).unwrap(), controller)
        .await
        .unwrap();
    let (parts, body, _send) = next(&mut handle).await;
    assert_eq!(parts.uri.path(), "/api/v1/namespaces/ns/pods/a");
    let written: u64 = body["metadata"]["annotations"]["hapod.io/epoch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(written > active_epoch, "{body}");
    assert_eq!((series("unknown"), series("lapsed")), (Some(1), None));
    drop(tx);
    running.abort();
}
