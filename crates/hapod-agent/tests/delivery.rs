//! Notifier (controller side) against the real agent on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use hapod_agent::{Agent, AgentConfig, Source};
use hapod_protocol::sender::{Delivery, Notifier, NotifierConfig, Outcome};
use hapod_protocol::{Key, LEGACY_PAYLOAD, MAX_DATAGRAM_LEN, Notification, Role, encode};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;

const POD: &str = "hapod-abc";

fn key() -> Key {
    Key::new(b"test key, 32 bytes long .......").unwrap()
}

async fn agent(bind: &str, key: Option<Key>) -> Agent {
    let mut config = AgentConfig::new(bind.parse().unwrap(), POD);
    config.key = key;
    Agent::bind(config).await.unwrap()
}

async fn notifier(key: Option<Key>, deadline_ms: u64) -> (Notifier, UnboundedReceiver<Outcome>) {
    Notifier::bind(NotifierConfig {
        key,
        deadline: Duration::from_millis(deadline_ms),
        ..NotifierConfig::default()
    })
    .await
    .unwrap()
}

async fn next_outcome(outcomes: &mut UnboundedReceiver<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
        .await
        .expect("an outcome within the deadline")
        .expect("notifier alive")
}

async fn round_trip(bind: &str) {
    let agent = agent(bind, Some(key())).await;
    let (notifier, mut outcomes) = notifier(Some(key()), 2000).await;
    let mut state = agent.state();
    let msg = Notification::new("ns/hapod", POD, Role::Active, (1 << 32) | 1);
    notifier.notify(agent.local_addr(), msg.clone()).unwrap();
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.message_id, msg.message_id);
    assert!(
        matches!(outcome.delivery, Delivery::Acked { .. }),
        "{outcome:?}"
    );
    // The agent publishes before it acknowledges.
    assert!(state.has_changed().unwrap());
    let applied = state.borrow_and_update().clone();
    assert_eq!(applied.role, Some(Role::Active));
    assert_eq!(applied.epoch, msg.epoch);
    assert_eq!(applied.group, "ns/hapod");
    assert_eq!(applied.message_id, msg.message_id);
    assert_eq!(applied.sent_at_unix_nanos, msg.sent_at_unix_nanos);
    assert_eq!(applied.source, Source::Notification);
    assert_eq!(agent.counters().applied, 1);
}

#[tokio::test]
async fn round_trip_ipv4() {
    round_trip("127.0.0.1:0").await;
}

#[tokio::test]
async fn round_trip_ipv6() {
    if let Err(error) = std::net::UdpSocket::bind("[::1]:0") {
        println!("skipping IPv6 round trip: cannot bind [::1]: {error}");
        return;
    }
    round_trip("[::1]:0").await;
}

#[tokio::test]
async fn wrong_key_is_rejected_and_times_out() {
    let agent = agent("127.0.0.1:0", Some(key())).await;
    let (notifier, mut outcomes) = notifier(Some(Key::new(b"not the key").unwrap()), 100).await;
    let msg = Notification::new("g", POD, Role::Active, 7);
    notifier.notify(agent.local_addr(), msg).unwrap();
    let outcome = next_outcome(&mut outcomes).await;
    assert!(
        matches!(outcome.delivery, Delivery::TimedOut { .. }),
        "{outcome:?}"
    );
    let counters = agent.counters();
    assert!(counters.dropped_unauthenticated >= 1, "{counters:?}");
    assert_eq!(counters.applied, 0);
    assert_eq!(agent.state().borrow().role, None);
}

#[tokio::test]
async fn stale_epoch_is_rejected() {
    let agent = agent("127.0.0.1:0", Some(key())).await;
    let (notifier, mut outcomes) = notifier(Some(key()), 100).await;
    let addr = agent.local_addr();
    notifier
        .notify(addr, Notification::new("g", POD, Role::Active, 10))
        .unwrap();
    let first = next_outcome(&mut outcomes).await;
    assert!(
        matches!(first.delivery, Delivery::Acked { .. }),
        "{first:?}"
    );
    notifier
        .notify(addr, Notification::new("g", POD, Role::Standby, 9))
        .unwrap();
    let stale = next_outcome(&mut outcomes).await;
    assert!(
        matches!(stale.delivery, Delivery::TimedOut { .. }),
        "{stale:?}"
    );
    let state = agent.state().borrow().clone();
    assert_eq!((state.role, state.epoch), (Some(Role::Active), 10));
    let counters = agent.counters();
    assert!(counters.dropped_stale >= 1, "{counters:?}");
    assert_eq!(counters.applied, 1);
}

#[tokio::test]
async fn duplicate_is_reacknowledged_but_applied_once() {
    let agent = agent("127.0.0.1:0", Some(key())).await;
    let mut changes = agent.changes();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let msg = Notification::new("g", POD, Role::Active, 3);
    let datagram = encode(&msg, Some(&key())).unwrap();
    let expected_ack = hapod_protocol::encode_ack(&msg.ack(), Some(&key()));
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    for _ in 0..2 {
        peer.send_to(&datagram, agent.local_addr()).await.unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..len], expected_ack.as_slice());
    }
    let counters = agent.counters();
    assert_eq!((counters.applied, counters.duplicates), (1, 1));
    assert_eq!(changes.recv().await.unwrap().current.epoch, 3);
    assert!(changes.try_recv().is_err(), "exactly one change");
}

/// Forwards datagrams between the notifier and the agent, dropping the first `drop_first`
/// datagrams from the notifier; returns the address the notifier should send to.
async fn lossy_relay(agent: SocketAddr, drop_first: usize) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut notifier = None;
        let mut dropped = 0;
        let mut from_notifier = [0u8; MAX_DATAGRAM_LEN + 1];
        let mut from_agent = [0u8; MAX_DATAGRAM_LEN + 1];
        loop {
            tokio::select! {
                Ok((len, from)) = front.recv_from(&mut from_notifier) => {
                    notifier = Some(from);
                    if dropped < drop_first {
                        dropped += 1;
                    } else {
                        let _ = back.send_to(&from_notifier[..len], agent).await;
                    }
                }
                Ok((len, _)) = back.recv_from(&mut from_agent) => {
                    if let Some(notifier) = notifier {
                        let _ = front.send_to(&from_agent[..len], notifier).await;
                    }
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn resend_recovers_from_loss_and_applies_once() {
    let agent = agent("127.0.0.1:0", Some(key())).await;
    let mut changes = agent.changes();
    let relay = lossy_relay(agent.local_addr(), 3).await;
    let (notifier, mut outcomes) = notifier(Some(key()), 2000).await;
    notifier
        .notify(relay, Notification::new("g", POD, Role::Active, 42))
        .unwrap();
    let outcome = next_outcome(&mut outcomes).await;
    let Delivery::Acked { attempts, rtt } = outcome.delivery else {
        panic!("{outcome:?}");
    };
    assert!(attempts >= 4, "3 dropped, so at least 4 sends: {attempts}");
    // Resends at 3, 6 and 12 ms after the previous one: about 21 ms without load.
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    assert_eq!(agent.counters().applied, 1);
    assert_eq!(changes.recv().await.unwrap().current.epoch, 42);
    assert!(changes.try_recv().is_err(), "applied once");
}

#[tokio::test]
async fn other_pods_and_garbage_are_dropped_without_harm() {
    let agent = agent("127.0.0.1:0", Some(key())).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = agent.local_addr();
    let other = encode(
        &Notification::new("g", "other", Role::Active, 1),
        Some(&key()),
    )
    .unwrap();
    let junk: [&[u8]; 5] = [b"", b"HAPD", &other, LEGACY_PAYLOAD, &[0xff; 1500]];
    for datagram in junk {
        peer.send_to(datagram, addr).await.unwrap();
    }
    let (notifier, mut outcomes) = notifier(Some(key()), 2000).await;
    notifier
        .notify(addr, Notification::new("g", POD, Role::Standby, 1))
        .unwrap();
    let outcome = next_outcome(&mut outcomes).await;
    assert!(
        matches!(outcome.delivery, Delivery::Acked { .. }),
        "{outcome:?}"
    );
    let counters = agent.counters();
    assert_eq!(counters.dropped_wrong_pod, 1);
    assert_eq!(counters.dropped_legacy_disabled, 1);
    assert_eq!(counters.dropped_oversized, 1);
    assert_eq!(counters.dropped_malformed, 2);
    assert_eq!(agent.state().borrow().role, Some(Role::Standby));
}

#[tokio::test]
async fn legacy_datagram_makes_a_legacy_agent_active() {
    let mut config = AgentConfig::new("127.0.0.1:0".parse().unwrap(), POD);
    config.accept_legacy = true;
    let agent = Agent::bind(config).await.unwrap();
    let mut state = agent.state();
    // A notifier in legacy mode sends the versioned message and the original datagram.
    let (notifier, _outcomes) = Notifier::bind(NotifierConfig {
        legacy: true,
        ..NotifierConfig::default()
    })
    .await
    .unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    notifier
        .notify(
            peer.local_addr().unwrap(),
            Notification::new("g", POD, Role::Active, 1),
        )
        .unwrap();
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let mut saw_legacy = false;
    for _ in 0..2 {
        let (len, _) = peer.recv_from(&mut buf).await.unwrap();
        saw_legacy |= &buf[..len] == LEGACY_PAYLOAD;
    }
    assert!(saw_legacy);
    peer.send_to(LEGACY_PAYLOAD, agent.local_addr())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), state.changed())
        .await
        .unwrap()
        .unwrap();
    let applied = state.borrow().clone();
    assert_eq!(
        (applied.role, applied.source),
        (Some(Role::Active), Source::Legacy)
    );
}
