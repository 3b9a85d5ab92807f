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

/// A worker of group `ns/hapod` acting in term 1 with a 300 ms application lease, its
/// agents' socket and the mock API behind its writer.
struct Leased {
    metrics: hapod_controller::metrics::Metrics,
    agent: UdpSocket,
    handle: Handle,
    tx: mpsc::UnboundedSender<(Event, Instant)>,
    running: tokio::task::JoinHandle<()>,
}

async fn leased(report_timeout: Option<Duration>) -> Leased {
    let terms = LeaseTerms {
        lease: Duration::from_millis(300),
        drift_ppm: 1_000,
    };
    let config = Config {
        application_lease: Some(ApplicationLease {
            live_span: terms.live_span(),
            predecessor_window: Duration::ZERO,
            report_timeout,
        }),
        ..Config::default()
    };
    let metrics = metrics();
    let (shared, _notes, agent) =
        shared_with(config, Some((terms, HEARTBEAT)), metrics.clone()).await;
    let (client, handle) = mock();
    let key = GroupKey {
        namespace: "ns".into(),
        group: "hapod".into(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(key, writer(client, Some(1), metrics.clone()), shared)
        .with_reports_to(tx.downgrade());
    let running = tokio::spawn(worker.run(rx));
    Leased {
        metrics,
        agent,
        handle,
        tx,
        running,
    }
}

/// A worker acting, with one pod "b" labeled active at an epoch of this term: nothing to
/// write while its agent agrees, so the mock API stays silent. Returns it with b's first
/// order and that order's sender.
async fn acting_with_active_b() -> (Leased, Order, std::net::SocketAddr) {
    let leased = leased(None).await;
    let mut b = pod_json("b", "6", "active", "127.0.0.1");
    b["metadata"]["annotations"] = json!({"hapod.io/epoch": epoch::compose(1, 1).to_string()});
    let pods = vec![view(b)];
    leased
        .tx
        .send((Event::Resync { pods }, Instant::now()))
        .unwrap();
    leased
        .tx
        .send((Event::Leadership(Some(1)), Instant::now()))
        .unwrap();
    let (order, from) = next_order_for(&leased.agent, "b").await;
    (leased, order, from)
}

#[tokio::test]
async fn heartbeats_carry_a_grant_once_the_agent_reported_and_reports_reach_the_group() {
    let Leased {
        metrics,
        agent,
        mut handle,
        tx,
        running,
    } = leased(None).await;

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

#[tokio::test]
async fn a_pod_no_longer_ordered_loses_its_report_route_and_series() {
    // b's agent agrees with its label. (A disagreeing report would make the worker write a
    // fresh epoch and wait on the silent mock, racing the re-list below.)
    let (
        Leased {
            metrics,
            agent,
            handle: _handle,
            tx,
            running,
        },
        order,
        controller,
    ) = acting_with_active_b().await;
    let report = Report {
        message_id: order.message_id,
        epoch: order.epoch,
        role: Some(AgentRole::Active),
        incarnation: 5,
        stamp_nanos: 1,
        grant_remaining_millis: 0,
        pod_uid: "b-uid".into(),
    };
    agent
        .send_to(&encode_report(&report, None).unwrap(), controller)
        .await
        .unwrap();
    let series = || {
        let labels = AgentLabels {
            group: "ns/hapod".into(),
            pod: "b".into(),
            role: "active".into(),
        };
        metrics.agent_roles.get(&labels).map(|gauge| gauge.get())
    };
    let until = Instant::now() + Duration::from_secs(5);
    // Polled finely, so the re-list lands before the next heartbeat: the only order b got
    // was the one at the leadership change, not at a heartbeat.
    while series().is_none() {
        assert!(Instant::now() < until, "the report was not counted");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Missing from a re-list: no longer ordered, so its series goes at the next heartbeat.
    tx.send((Event::Resync { pods: Vec::new() }, Instant::now()))
        .unwrap();
    while series().is_some() {
        assert!(
            Instant::now() < until,
            "the series of a pod gone from the re-list stayed"
        );
        tokio::time::sleep(HEARTBEAT).await;
    }
    drop(tx);
    running.await.unwrap();
}

/// The order channel forwards only reports that say something new; a steady agent is still
/// heard at every heartbeat (through the channel's book), so its active keeps being granted,
/// each grant echoing the newest report, and it is never judged silent.
#[tokio::test]
async fn a_steady_agent_keeps_its_grants_and_is_not_judged_silent() {
    let Leased {
        metrics: _,
        agent,
        mut handle,
        tx,
        running,
    } = leased(Some(HEARTBEAT * 3)).await;
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

    // Both agents answer every order with the same role and epoch as before, stamps growing.
    let started = Instant::now();
    let mut stamp = 0;
    let mut echoed = Vec::new();
    let mut buf = [0u8; 2048];
    while started.elapsed() < Duration::from_millis(1500) {
        let (len, from) = timeout(Duration::from_secs(5), agent.recv_from(&mut buf))
            .await
            .expect("an order within 5 s")
            .unwrap();
        let Ok(Message::Order(order)) = decode(&buf[..len], None) else {
            continue;
        };
        if let Some(grant) = order.grant {
            echoed.push(grant.stamp_nanos);
        }
        stamp += 1;
        let role = if order.role == hapod_protocol::Role::Active {
            AgentRole::Active
        } else {
            AgentRole::Standby
        };
        let report = Report {
            message_id: order.message_id,
            epoch: order.epoch,
            role: Some(role),
            incarnation: 9,
            stamp_nanos: stamp,
            grant_remaining_millis: 300,
            pod_uid: order.pod_uid.clone(),
        };
        agent
            .send_to(&encode_report(&report, None).unwrap(), from)
            .await
            .unwrap();
    }
    // About one grant per heartbeat, each echoing a newer report than the one before.
    assert!(
        echoed.len() >= 20,
        "only {} grants in 1.5 s of 20 ms heartbeats",
        echoed.len()
    );
    assert!(
        echoed.windows(2).all(|w| w[0] < w[1]),
        "grants did not echo newer reports: {echoed:?}"
    );
    // Nobody was judged silent: no label write at all.
    assert!(
        timeout(Duration::from_millis(100), next(&mut handle))
            .await
            .is_err(),
        "a write was issued for a group whose agents all answer"
    );
    drop(tx);
    running.await.unwrap();
}

/// The order channel forwards a report to the group when it says something new: the same
/// role and epoch again is no event, but said by another process of the agent (a restart
/// in place) it is, since the core keeps what that process gave up.
#[tokio::test]
async fn another_process_of_an_agent_is_reported_even_when_it_says_the_same() {
    let (
        Leased {
            metrics,
            agent,
            handle: _handle,
            tx,
            running,
        },
        order,
        controller,
    ) = acting_with_active_b().await;
    let forwarded = || {
        let labels = ReportLabels {
            role: "active".into(),
        };
        metrics
            .reports
            .get(&labels)
            .map_or(0, |counter| counter.get())
    };
    let send = |incarnation: u64, stamp_nanos: u64| {
        let report = Report {
            message_id: order.message_id,
            epoch: order.epoch,
            role: Some(AgentRole::Active),
            incarnation,
            stamp_nanos,
            grant_remaining_millis: 0,
            pod_uid: "b-uid".into(),
        };
        encode_report(&report, None).unwrap()
    };
    let until = Instant::now() + Duration::from_secs(5);
    let mut expected = 0;
    // Only the first and third say something new; the second repeats the first.
    for (incarnation, stamp_nanos, new) in [(5, 1, 1), (5, 2, 0), (6, 1, 1)] {
        agent
            .send_to(&send(incarnation, stamp_nanos), controller)
            .await
            .unwrap();
        expected += new;
        while forwarded() < expected {
            assert!(
                Instant::now() < until,
                "incarnation {incarnation} stamp {stamp_nanos} not forwarded"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(forwarded(), 2, "a repeated report was forwarded");
    drop(tx);
    running.abort();
}
