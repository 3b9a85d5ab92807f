//! Reliable delivery of notifications over UDP: resend with backoff until the matching ACK.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use hapod_protocol::sender::{Delivery, Notifier, NotifierConfig};
//! use hapod_protocol::{Notification, Role};
//!
//! let (notifier, mut outcomes) = Notifier::bind(NotifierConfig::default()).await?;
//! let msg = Notification::new("default/hapod", "hapod-7f9c", Role::Active, 1 << 32 | 1);
//! notifier.notify("10.0.0.7:10001".parse().unwrap(), msg).expect("valid names");
//! while let Some(outcome) = outcomes.recv().await {
//!     if let Delivery::Acked { rtt, attempts } = outcome.delivery {
//!         println!("{} acked after {rtt:?} ({attempts} sends)", outcome.pod);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Each notification is delivered by its own task, so a slow or dead pod never delays another.
//! At most one notification per target (group, pod) is outstanding: a newer one supersedes the
//! older, which stops being resent and is reported as [`Delivery::Superseded`].

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::{
    EncodeError, LEGACY_PAYLOAD, MAX_DATAGRAM_LEN, Message, Notification, Role, decode, encode,
};
use crate::key::Key;

/// How the [`Notifier`] sends and resends.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// HMAC key shared with the agents; `None` sends unauthenticated messages.
    pub key: Option<Key>,
    /// Also send the original 22-byte `GoActiveDuringFailover` datagram (once, with the first
    /// transmission, and only for [`Role::Active`]), for applications of the original system.
    pub legacy: bool,
    /// Delay before the first resend; each further resend doubles it.
    pub first_resend: Duration,
    /// Upper bound of the resend interval.
    pub max_resend_interval: Duration,
    /// Give up (and report [`Delivery::TimedOut`]) this long after the first transmission.
    pub deadline: Duration,
    /// Local address of the IPv4 socket (`None`: IPv4 targets are refused).
    pub bind_v4: Option<SocketAddr>,
    /// Local address of the IPv6 socket (`None`, or binding fails: IPv6 targets are refused).
    pub bind_v6: Option<SocketAddr>,
}

impl Default for NotifierConfig {
    /// No key, no legacy datagram, resends after 3, 6, 12, ... ms capped at 200 ms, 2 s deadline,
    /// ephemeral ports on all addresses.
    fn default() -> Self {
        NotifierConfig {
            key: None,
            legacy: false,
            first_resend: Duration::from_millis(3),
            max_resend_interval: Duration::from_millis(200),
            deadline: Duration::from_millis(2000),
            bind_v4: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            bind_v6: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))),
        }
    }
}

/// The end of one notification's delivery, sent on the outcome channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub group: String,
    pub pod: String,
    pub addr: SocketAddr,
    pub role: Role,
    pub epoch: u64,
    pub message_id: u64,
    pub delivery: Delivery,
}

/// How a delivery ended. `attempts` counts transmissions of the versioned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The matching ACK arrived `rtt` after the first transmission.
    Acked { rtt: Duration, attempts: u32 },
    /// No matching ACK before the deadline.
    TimedOut { attempts: u32 },
    /// A newer notification for the same (group, pod) replaced this one.
    Superseded { attempts: u32 },
}

/// Why [`Notifier::notify`] refused a notification (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("no local socket for the address family of {0}")]
    NoSocket(SocketAddr),
}

/// Sends notifications and tracks their ACKs. Cheap to clone; the receive tasks stop when the
/// last clone is dropped (deliveries in flight still run to their end).
#[derive(Clone, Debug)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    ack_receivers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.ack_receivers {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// The runtime of [`Notifier::bind`], so `notify` works from any thread.
    runtime: tokio::runtime::Handle,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    config: NotifierConfig,
    outstanding: Mutex<Outstanding>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

type Target = (String, String);

#[derive(Debug, Default)]
struct Outstanding {
    by_id: HashMap<u64, Pending>,
    by_target: HashMap<Target, u64>,
}

#[derive(Debug)]
struct Pending {
    target: Target,
    epoch: u64,
    finish: oneshot::Sender<Finish>,
}

#[derive(Debug)]
enum Finish {
    Acked(Instant),
    Superseded,
}

impl Outstanding {
    /// Registers `id` for `target`, superseding whatever was outstanding for it.
    fn insert(&mut self, id: u64, pending: Pending) {
        if let Some(old) = self.by_target.insert(pending.target.clone(), id)
            && let Some(old) = self.by_id.remove(&old)
        {
            let _ = old.finish.send(Finish::Superseded);
        }
        if let Some(clash) = self.by_id.insert(id, pending) {
            // Same message id reused for another target: that delivery can no longer be matched.
            self.forget_target(&clash.target, id);
            let _ = clash.finish.send(Finish::Superseded);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        self.forget_target(&pending.target, id);
        Some(pending)
    }

    fn forget_target(&mut self, target: &Target, id: u64) {
        if self.by_target.get(target) == Some(&id) {
            self.by_target.remove(target);
        }
    }
}

impl Notifier {
    /// Binds the sockets and starts the ACK receivers; must run inside a tokio runtime.
    ///
    /// Returns the notifier and the channel on which every notification's [`Outcome`] is
    /// reported exactly once. Dropping the receiver is allowed (outcomes are then discarded).
    /// Fails if the IPv4 socket cannot be bound; an IPv6 bind failure only disables IPv6.
    pub async fn bind(
        config: NotifierConfig,
    ) -> io::Result<(Notifier, mpsc::UnboundedReceiver<Outcome>)> {
        let v4 = match config.bind_v4 {
            Some(addr) => Some(Arc::new(UdpSocket::bind(addr).await?)),
            None => None,
        };
        let v6 = match config.bind_v6 {
            Some(addr) => match UdpSocket::bind(addr).await {
                Ok(socket) => Some(Arc::new(socket)),
                Err(error) => {
                    tracing::warn!(%addr, %error, "IPv6 notification socket unavailable");
                    None
                }
            },
            None => None,
        };
        let (outcomes, outcome_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            runtime: tokio::runtime::Handle::current(),
            v4,
            v6,
            config,
            outstanding: Mutex::default(),
            outcomes,
        });
        let ack_receivers = [&shared.v4, &shared.v6]
            .into_iter()
            .flatten()
            .map(|socket| tokio::spawn(receive_acks(shared.clone(), socket.clone())))
            .collect();
        let inner = Arc::new(Inner {
            shared,
            ack_receivers,
        });
        Ok((Notifier { inner }, outcome_rx))
    }

    /// Starts delivering `msg` to `addr` and returns at once (callable from any thread; the
    /// delivery runs on the runtime that bound the notifier).
    ///
    /// The message is encoded once (with the MAC when a key is configured) and resent unchanged
    /// until an ACK with the same message id and epoch arrives (from any address: an agent
    /// bound to a wildcard address may answer from another of its addresses), the deadline
    /// passes, or a newer notification for the same (group, pod) supersedes it.
    pub fn notify(&self, addr: SocketAddr, msg: Notification) -> Result<(), NotifyError> {
        let shared = &self.inner.shared;
        let socket = match addr {
            SocketAddr::V4(_) => shared.v4.clone(),
            SocketAddr::V6(_) => shared.v6.clone(),
        }
        .ok_or(NotifyError::NoSocket(addr))?;
        let datagram = encode(&msg, shared.config.key.as_ref())?;
        let (finish, finished) = oneshot::channel();
        shared.lock().insert(
            msg.message_id,
            Pending {
                target: (msg.group.clone(), msg.pod.clone()),
                epoch: msg.epoch,
                finish,
            },
        );
        // The first transmission happens here rather than in the task, so the failover latency
        // does not include scheduling the task; only a full send buffer defers it.
        let first = FirstTransmission {
            at: Instant::now(),
            datagram_sent: try_send_now(&socket, &datagram, addr),
            legacy_sent: !(shared.config.legacy && msg.role == Role::Active)
                || try_send_now(&socket, LEGACY_PAYLOAD, addr),
        };
        let task = DeliveryTask {
            shared: shared.clone(),
            socket,
            addr,
            msg,
            datagram,
            finished,
        };
        shared.runtime.spawn(task.run(first));
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Notifier::notify`] already sent.
struct FirstTransmission {
    at: Instant,
    /// `false` when the socket's send buffer was full.
    datagram_sent: bool,
    /// `true` also when no legacy datagram is wanted.
    legacy_sent: bool,
}

/// One message's resend loop, run as its own task.
struct DeliveryTask {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
    msg: Notification,
    datagram: Vec<u8>,
    finished: oneshot::Receiver<Finish>,
}

impl DeliveryTask {
    async fn run(mut self, first: FirstTransmission) {
        let config = &self.shared.config;
        let deadline = first.at + config.deadline;
        let mut interval = config.first_resend;
        let mut attempts = 1u32;
        if !first.datagram_sent {
            send(&self.socket, &self.datagram, self.addr).await;
        }
        if !first.legacy_sent {
            send(&self.socket, LEGACY_PAYLOAD, self.addr).await;
        }
        let delivery = loop {
            let next = (Instant::now() + interval).min(deadline);
            tokio::select! {
                biased;
                finish = &mut self.finished => break match finish {
                    Ok(Finish::Acked(at)) => Delivery::Acked { rtt: at - first.at, attempts },
                    // Every removal from `Outstanding` sends a `Finish`, so a closed channel
                    // cannot happen; treat it like a replacement.
                    Ok(Finish::Superseded) | Err(_) => Delivery::Superseded { attempts },
                },
                () = tokio::time::sleep_until(next) => {}
            }
            if Instant::now() >= deadline {
                if self.shared.lock().remove(self.msg.message_id).is_some() {
                    break Delivery::TimedOut { attempts };
                }
                // An ACK or a newer message won the race; its `Finish` is ready.
                continue;
            }
            send(&self.socket, &self.datagram, self.addr).await;
            attempts += 1;
            interval = (interval * 2).min(config.max_resend_interval);
        };
        let msg = self.msg;
        tracing::debug!(pod = %msg.pod, addr = %self.addr, epoch = msg.epoch, ?delivery, "notification finished");
        let _ = self.shared.outcomes.send(Outcome {
            group: msg.group,
            pod: msg.pod,
            addr: self.addr,
            role: msg.role,
            epoch: msg.epoch,
            message_id: msg.message_id,
            delivery,
        });
    }
}

/// Sends without waiting; `false` only when the send buffer is full (a hard error is handled
/// like a lost datagram and counts as sent).
fn try_send_now(socket: &UdpSocket, datagram: &[u8], addr: SocketAddr) -> bool {
    match socket.try_send_to(datagram, addr) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
        Err(error) => {
            tracing::debug!(%addr, %error, "notification send failed");
            true
        }
        Ok(_) => true,
    }
}

/// A failed send is handled like a lost datagram: the resend schedule covers both.
async fn send(socket: &UdpSocket, datagram: &[u8], addr: SocketAddr) {
    if let Err(error) = socket.send_to(datagram, addr).await {
        tracing::debug!(%addr, %error, "notification send failed");
    }
}

async fn receive_acks(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    // One byte more than the longest valid datagram, so oversized ones are detected.
    let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "notification socket receive failed");
                // Avoid spinning on a persistent error.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let arrived = Instant::now();
        let ack = match decode(&buf[..len], shared.config.key.as_ref()) {
            Ok(Message::Ack(ack)) => ack,
            // Orders are sent, never received; reports answer orders, which this sender
            // (version 1) does not send.
            Ok(Message::Notify(_) | Message::Order(_) | Message::Report(_)) => continue,
            Err(error) => {
                tracing::debug!(%from, %error, "invalid datagram on notification socket");
                continue;
            }
        };
        let mut outstanding = shared.lock();
        let matches = outstanding
            .by_id
            .get(&ack.message_id)
            .is_some_and(|pending| pending.epoch == ack.epoch);
        if matches && let Some(pending) = outstanding.remove(ack.message_id) {
            let _ = pending.finish.send(Finish::Acked(arrived));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_ack;

    fn quick(key: Option<Key>) -> NotifierConfig {
        NotifierConfig {
            key,
            deadline: Duration::from_millis(60),
            bind_v6: None,
            ..NotifierConfig::default()
        }
    }

    async fn silent_peer() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn only_the_matching_authentic_ack_completes() {
        let key = Key::new(b"k").unwrap();
        let (notifier, mut outcomes) = Notifier::bind(quick(Some(key.clone()))).await.unwrap();
        let peer = silent_peer().await;
        let msg = Notification::new("g", "p", Role::Active, 9);
        notifier
            .notify(peer.local_addr().unwrap(), msg.clone())
            .unwrap();
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let (len, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            decode(&buf[..len], Some(&key)),
            Ok(Message::Notify(msg.clone()))
        );
        // A forged ACK and one for another epoch must be ignored.
        let forged = encode_ack(&msg.ack(), Some(&Key::new(b"x").unwrap()));
        peer.send_to(&forged, from).await.unwrap();
        let mut wrong_epoch = msg.ack();
        wrong_epoch.epoch += 1;
        peer.send_to(&encode_ack(&wrong_epoch, Some(&key)), from)
            .await
            .unwrap();
        peer.send_to(&encode_ack(&msg.ack(), Some(&key)), from)
            .await
            .unwrap();
        let outcome = outcomes.recv().await.unwrap();
        assert_eq!(outcome.message_id, msg.message_id);
        assert!(
            matches!(outcome.delivery, Delivery::Acked { .. }),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn resends_until_deadline_then_times_out() {
        let (notifier, mut outcomes) = Notifier::bind(NotifierConfig {
            deadline: Duration::from_millis(100),
            ..quick(None)
        })
        .await
        .unwrap();
        let peer = silent_peer().await;
        let addr = peer.local_addr().unwrap();
        notifier
            .notify(addr, Notification::new("g", "p", Role::Standby, 1))
            .unwrap();
        let outcome = outcomes.recv().await.unwrap();
        let Delivery::TimedOut { attempts } = outcome.delivery else {
            panic!("{outcome:?}");
        };
        // Sends at 0, 3, 9, 21, 45 and 93 ms; fewer when the machine is loaded and timers fire late.
        assert!((2..=6).contains(&attempts), "{attempts} attempts");
    }

    #[tokio::test]
    async fn newer_message_supersedes_older_for_same_pod_only() {
        let (notifier, mut outcomes) = Notifier::bind(quick(None)).await.unwrap();
        let peer = silent_peer().await;
        let addr = peer.local_addr().unwrap();
        let old = Notification::new("g", "p", Role::Active, 1);
        let other_pod = Notification::new("g", "q", Role::Standby, 1);
        let new = Notification::new("g", "p", Role::Standby, 2);
        notifier.notify(addr, old.clone()).unwrap();
        notifier.notify(addr, other_pod.clone()).unwrap();
        notifier.notify(addr, new.clone()).unwrap();
        let mut results = HashMap::new();
        for _ in 0..3 {
            let outcome = outcomes.recv().await.unwrap();
            results.insert(outcome.message_id, outcome.delivery);
        }
        assert!(matches!(
            results[&old.message_id],
            Delivery::Superseded { .. }
        ));
        assert!(matches!(
            results[&other_pod.message_id],
            Delivery::TimedOut { .. }
        ));
        assert!(matches!(
            results[&new.message_id],
            Delivery::TimedOut { .. }
        ));
    }

    #[tokio::test]
    async fn refuses_family_without_socket_and_bad_names() {
        let (notifier, _outcomes) = Notifier::bind(quick(None)).await.unwrap();
        let v6: SocketAddr = "[::1]:10001".parse().unwrap();
        let msg = Notification::new("g", "p", Role::Active, 1);
        assert_eq!(notifier.notify(v6, msg), Err(NotifyError::NoSocket(v6)));
        let nameless = Notification::new("g", "", Role::Active, 1);
        let v4: SocketAddr = "127.0.0.1:10001".parse().unwrap();
        assert_eq!(
            notifier.notify(v4, nameless),
            Err(NotifyError::Encode(EncodeError::EmptyPod))
        );
    }
}
