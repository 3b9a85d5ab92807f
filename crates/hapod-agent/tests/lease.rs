//! Version 2 orders against the real agent on loopback: grants, their lapse on the agent's own
//! clock, reports, and the epoch file that outlives a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hapod_agent::{Agent, AgentConfig, Source};
use hapod_protocol::{
    AgentReports, AgentRole, Grant, Key, LeaseTerms, Message, Order, Report, Role, decode,
    encode_order,
};
use tokio::net::UdpSocket;

const POD: &str = "hapod-abc";
const UID: &str = "5b1c-uid";

fn key() -> Key {
    Key::new(b"test key, 32 bytes long .......").unwrap()
}

async fn agent(epoch_file: &Path) -> Agent {
    let mut config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), POD);
    config.key = Some(key());
    config.pod_uid = Some(UID.into());
    config.epoch_file = Some(epoch_file.to_path_buf());
    Agent::bind(config).await.unwrap()
}

/// Sends `order` and returns the agent's report, or `None` if none came within 500 ms.
async fn send(socket: &UdpSocket, to: SocketAddr, order: &Order) -> Option<Report> {
    socket
        .send_to(&encode_order(order, Some(&key())).unwrap(), to)
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let (len, _) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    match decode(&buf[..len], Some(&key())).unwrap() {
        Message::Report(report) => Some(report),
        other => panic!("expected a report, got {other:?}"),
    }
}

fn order(role: Role, epoch: u64, grant: Option<Grant>) -> Order {
    Order::new("ns/hapod", POD, UID, role, epoch, grant)
}

fn grant_for(report: &Report, lease_millis: u32) -> Grant {
    Grant {
        incarnation: report.incarnation,
        stamp_nanos: report.stamp_nanos,
        lease_millis,
    }
}

#[tokio::test]
async fn an_active_grant_lapses_on_the_agents_own_clock_without_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir.path().join("epoch")).await;
    let controller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let terms = LeaseTerms {
        lease: Duration::from_millis(300),
        drift_ppm: 1_000,
    };
    let mut book = AgentReports::new(terms);
    let epoch = (3 << 32) | 1;
    let order = |book: &AgentReports| book.order("ns/hapod", POD, UID, Role::Active, epoch, true);

    // No report yet, so no grant: the agent reports, but does not act.
    let first = send(&controller, agent.local_addr(), &order(&book))
        .await
        .expect("a report");
    assert_eq!((first.epoch, first.role), (epoch, Some(AgentRole::Lapsed)));
    assert_eq!(first.pod_uid, UID);
    book.on_report(first, Instant::now());

    // The next order's grant echoes that report.
    let mut state = agent.state();
    let granted = order(&book);
    // The controller counts the grant as live for one live span from making the order.
    let live_until = Instant::now() + terms.live_span();
    let report = send(&controller, agent.local_addr(), &granted)
        .await
        .expect("a report");
    let reported_at = Instant::now();
    assert_eq!(report.role, Some(AgentRole::Active));
    // What the agent has left ends before the controller's count does.
    let remaining = Duration::from_millis(u64::from(report.grant_remaining_millis));
    assert!(remaining > Duration::ZERO && reported_at + remaining <= live_until);
    let granted_state = state.borrow_and_update().clone();
    assert_eq!(granted_state.role, Some(Role::Active));
    // The application sees the end of the grant: past it, it must not act even while the
    // published role still says active (a process frozen past its grant).
    let acting_until = granted_state.acting_until.expect("a grant has an end");
    assert!(acting_until <= live_until);
    assert!(granted_state.acting(Instant::now()));
    assert!(!granted_state.acting(acting_until));

    // A renewal moves the end without waking the application.
    book.on_report(report, reported_at);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewal = send(&controller, agent.local_addr(), &order(&book))
        .await
        .expect("a report");
    assert_eq!(renewal.role, Some(AgentRole::Active));
    assert!(
        !state.has_changed().unwrap(),
        "a renewal woke the application"
    );
    let renewed_until = state.borrow().acting_until.expect("still granted");
    assert!(
        renewed_until > acting_until,
        "the renewal did not extend the grant"
    );

    // Nothing more is sent: the agent steps down by itself.
    tokio::time::timeout(Duration::from_secs(5), state.changed())
        .await
        .expect("the grant lapses")
        .unwrap();
    let lapsed = state.borrow_and_update().clone();
    assert_eq!(
        (lapsed.role, lapsed.source),
        (Some(Role::Standby), Source::Lapsed)
    );
    assert_eq!(agent.counters().lapses, 1);
}

#[tokio::test]
async fn a_relinquishing_agent_stops_acting_and_tells_the_last_sender_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir.path().join("epoch")).await;
    let controller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let lease_millis = 60_000;
    let epoch = (4 << 32) | 2;
    let first = send(
        &controller,
        agent.local_addr(),
        &order(Role::Active, epoch, None),
    )
    .await
    .expect("a report");
    let granted = order(Role::Active, epoch, Some(grant_for(&first, lease_millis)));
    let report = send(&controller, agent.local_addr(), &granted)
        .await
        .expect("a report");
    assert_eq!(report.role, Some(AgentRole::Active));

    // Far from the end of its grant, the process shuts down.
    agent.relinquish().await;
    let state = agent.state().borrow().clone();
    assert_eq!(
        (state.role, state.source),
        (Some(Role::Standby), Source::Relinquished)
    );
    assert!(!state.acting(Instant::now()));
    // The controller hears it without asking: standby at the grant's epoch.
    let mut buf = [0u8; 1024];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), controller.recv_from(&mut buf))
        .await
        .expect("an unsolicited report")
        .unwrap();
    let Message::Report(told) = decode(&buf[..len], Some(&key())).unwrap() else {
        panic!("expected a report");
    };
    assert_eq!(
        (
            told.message_id,
            told.epoch,
            told.role,
            told.grant_remaining_millis
        ),
        (0, epoch, Some(AgentRole::Standby), 0)
    );
    // A late renewal, or a newer epoch, does not bring it back.
    let newer = order(
        Role::Active,
        epoch + 1,
        Some(grant_for(&told, lease_millis)),
    );
    let after = send(&controller, agent.local_addr(), &newer)
        .await
        .expect("a report");
    assert_eq!(
        (after.epoch, after.role),
        (epoch + 1, Some(AgentRole::Standby))
    );
    assert!(!agent.state().borrow().acting(Instant::now()));
}

#[tokio::test]
async fn a_restarted_agent_refuses_replays_and_grants_of_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("epoch");
    let controller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let epoch = (4 << 32) | 2;
    let (captured, first) = {
        let before = agent(&file).await;
        let first = send(
            &controller,
            before.local_addr(),
            &order(Role::Active, epoch, None),
        )
        .await
        .expect("a report");
        let captured = order(Role::Active, epoch, Some(grant_for(&first, 60_000)));
        let report = send(&controller, before.local_addr(), &captured).await;
        assert_eq!(report.expect("a report").role, Some(AgentRole::Active));
        (captured, first)
    };
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        epoch.to_string()
    );

    let restarted = agent(&file).await;
    // The captured order, replayed: its epoch was applied before the restart, so it changes
    // nothing; the report tells the sender which epoch the agent is at.
    let answer = send(&controller, restarted.local_addr(), &captured)
        .await
        .expect("a report");
    assert_eq!((answer.epoch, answer.role), (epoch, None));
    assert_eq!(restarted.state().borrow().role, None);
    assert_eq!(restarted.counters().dropped_stale, 1);
    // A newer epoch applies, but a grant echoing the predecessor's report is worthless.
    let newer = order(Role::Active, epoch + 1, Some(grant_for(&first, 60_000)));
    let report = send(&controller, restarted.local_addr(), &newer)
        .await
        .expect("a report");
    assert_ne!(report.incarnation, first.incarnation);
    assert_eq!(report.role, Some(AgentRole::Lapsed));
    assert_eq!(restarted.state().borrow().role, Some(Role::Standby));
}

#[tokio::test]
async fn orders_for_another_uid_are_dropped_without_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir.path().join("epoch")).await;
    let controller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = Order::new("ns/hapod", POD, "uid-of-the-old-pod", Role::Active, 9, None);
    assert_eq!(send(&controller, agent.local_addr(), &other).await, None);
    assert_eq!(agent.counters().dropped_wrong_uid, 1);
    assert_eq!(agent.state().borrow().role, None);
}

#[tokio::test]
async fn an_unreadable_epoch_file_stops_the_agent_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("epoch");
    std::fs::write(&file, "not a number").unwrap();
    let mut config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), POD);
    config.epoch_file = Some(file);
    let error = Agent::bind(config).await.unwrap_err();
    assert!(error.to_string().contains("not a decimal epoch"), "{error}");
}

/// GET /metrics over a plain TCP connection (HTTP/1.0: the server closes when done).
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

/// The value of the sample `series` (name with labels, as the text format writes it).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_agents_metrics_show_its_role_its_grant_and_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir.path().join("epoch")).await;
    let metrics = hapod_agent::metrics::serve(&agent, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let before = scrape(metrics).await;
    assert_eq!(
        sample(&before, r#"hapod_receiver_role{role="unknown"}"#),
        1.0
    );
    assert_eq!(sample(&before, "hapod_receiver_acting"), 0.0);

    let controller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    controller
        .send_to(b"not a datagram of any version", agent.local_addr())
        .await
        .unwrap();
    let terms = LeaseTerms {
        lease: Duration::from_millis(400),
        drift_ppm: 1_000,
    };
    let mut book = AgentReports::new(terms);
    let epoch = (5 << 32) | 2;
    let order = |book: &AgentReports| book.order("ns/hapod", POD, UID, Role::Active, epoch, true);
    let first = send(&controller, agent.local_addr(), &order(&book))
        .await
        .expect("a report");
    book.on_report(first, Instant::now());
    let granted = send(&controller, agent.local_addr(), &order(&book))
        .await
        .expect("a report");
    assert_eq!(granted.role, Some(AgentRole::Active));

    let acting = scrape(metrics).await;
    assert_eq!(
        sample(&acting, r#"hapod_receiver_role{role="active"}"#),
        1.0
    );
    assert_eq!(
        sample(&acting, r#"hapod_receiver_role{role="unknown"}"#),
        0.0
    );
    assert_eq!(sample(&acting, "hapod_receiver_acting"), 1.0);
    assert_eq!(sample(&acting, "hapod_receiver_epoch"), epoch as f64);
    let left = sample(&acting, "hapod_receiver_grant_remaining_seconds");
    assert!(left > 0.0 && left <= 0.4, "{left}");
    assert_eq!(
        sample(&acting, "hapod_receiver_datagrams_received_total"),
        3.0
    );
    let malformed = r#"hapod_receiver_datagrams_dropped_total{reason="malformed"}"#;
    assert_eq!(sample(&acting, malformed), 1.0);
    assert_eq!(sample(&acting, "hapod_receiver_replies_sent_total"), 2.0);

    // Nothing more is sent: the grant lapses, and the metrics say so.
    let mut state = agent.state();
    tokio::time::timeout(Duration::from_secs(5), async {
        while state.borrow_and_update().acting_until.is_some() {
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("the grant lapses");
    let lapsed = scrape(metrics).await;
    assert_eq!(
        sample(&lapsed, r#"hapod_receiver_role{role="standby"}"#),
        1.0
    );
    assert_eq!(sample(&lapsed, "hapod_receiver_acting"), 0.0);
    assert_eq!(
        sample(&lapsed, "hapod_receiver_grant_remaining_seconds"),
        0.0
    );
    assert_eq!(sample(&lapsed, "hapod_receiver_lapses_total"), 1.0);
}
