//! The application lease on the wire (protocol version 2, `docs/fencing.md`): the core's
//! orders go out as datagrams with the grant echo of [`AgentReports`], and the agents' reports
//! come back to the worker of the pod's group as [`Event::Reported`] whenever an agent's role
//! or epoch changed, or another process of it reported.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hapod_core::{Event, ReportedRole, Role, RoleOrder};
use hapod_protocol::{
    AgentReports, AgentRole, Key, LeaseTerms, MAX_DATAGRAM_LEN, Message, decode, encode_order,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::WeakUnboundedSender;

use crate::metrics::{AgentLabels, Metrics, ReportLabels};
use crate::worker::Input;

/// What an agent's report says that the core cares about: its role and epoch, and which
/// process of it spoke (a new one gave nothing up).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Said {
    role: Option<AgentRole>,
    epoch: u64,
    incarnation: u64,
}

/// Where a pod's reports go, and what its agent last said.
struct Route {
    worker: WeakUnboundedSender<Input>,
    /// The pod's series of `hapod_agent_role` (its role label is what was said last).
    labels: AgentLabels,
    said: Option<Said>,
}

struct Inner {
    /// Each socket with whether it is IPv4, known at bind (no lookup per order).
    sockets: Vec<(bool, Arc<UdpSocket>)>,
    key: Option<Key>,
    port: u16,
    book: Mutex<AgentReports>,
    routes: Mutex<HashMap<String, Route>>,
    metrics: Metrics,
}

/// Sends orders and routes reports. Cheap to clone.
#[derive(Clone)]
pub struct OrderChannel {
    inner: Arc<Inner>,
}

impl OrderChannel {
    /// Binds one socket per given local address and starts receiving reports on each.
    pub async fn bind(
        terms: LeaseTerms,
        key: Option<Key>,
        port: u16,
        binds: impl IntoIterator<Item = SocketAddr>,
        metrics: Metrics,
    ) -> io::Result<Self> {
        let mut sockets = Vec::new();
        for bind in binds {
            sockets.push((bind.is_ipv4(), Arc::new(UdpSocket::bind(bind).await?)));
        }
        let inner = Arc::new(Inner {
            sockets,
            key,
            port,
            book: Mutex::new(AgentReports::new(terms)),
            routes: Mutex::new(HashMap::new()),
            metrics,
        });
        for (_, socket) in &inner.sockets {
            tokio::spawn(receive(Arc::clone(socket), Arc::downgrade(&inner)));
        }
        Ok(OrderChannel { inner })
    }

    /// Sends `order` to its pod; its reports go to `worker`.
    pub async fn send(
        &self,
        group: &str,
        order: &RoleOrder,
        worker: &WeakUnboundedSender<Input>,
    ) -> Result<(), String> {
        let role = wire_role(order.role);
        let datagram = {
            let book = self
                .inner
                .book
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let message = book.order(
                group,
                &order.pod,
                &order.uid,
                role,
                order.epoch,
                order.grant,
            );
            encode_order(&message, self.inner.key.as_ref()).map_err(|e| e.to_string())?
        };
        self.inner
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(order.uid.clone())
            .or_insert_with(|| Route {
                worker: worker.clone(),
                labels: AgentLabels {
                    group: group.to_owned(),
                    pod: order.pod.clone(),
                    role: String::new(),
                },
                said: None,
            })
            .worker = worker.clone();
        let to = SocketAddr::new(order.ip, self.inner.port);
        let socket = self
            .inner
            .sockets
            .iter()
            .find_map(|(v4, socket)| (*v4 == to.is_ipv4()).then_some(socket))
            .ok_or_else(|| format!("no local socket for the address family of {to}"))?;
        socket
            .send_to(&datagram, to)
            .await
            .map_err(|e| format!("sending to {to}: {e}"))?;
        self.inner.metrics.orders_sent.inc();
        Ok(())
    }

    /// When each of `uids`' agents was last heard (those heard at all).
    pub fn heard<'a>(&self, uids: impl Iterator<Item = &'a str>) -> Vec<(String, Instant)> {
        let book = self
            .inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        uids.filter_map(|uid| Some((uid.to_owned(), book.heard_at(uid)?)))
            .collect()
    }

    /// Forgets a pod that left: its route, its agent's reports and its metric series.
    pub fn forget(&self, uid: &str) {
        let route = self
            .inner
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
        if let Some(route) = route {
            self.inner.metrics.agent_roles.remove(&route.labels);
        }
        self.inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget(uid);
    }
}

/// The role on the wire for a role the core decided (anything but active is standby).
pub(crate) fn wire_role(role: Role) -> hapod_protocol::Role {
    match role {
        Role::Active => hapod_protocol::Role::Active,
        _ => hapod_protocol::Role::Standby,
    }
}

async fn receive(socket: Arc<UdpSocket>, inner: std::sync::Weak<Inner>) {
    let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            // Avoid spinning on a persistent error.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let report = match decode(&buf[..len], inner.key.as_ref()) {
            Ok(Message::Report(report)) => report,
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(%from, %error, "invalid datagram on the order socket");
                continue;
            }
        };
        inner.metrics.reports_received.inc();
        let now = Instant::now();
        let said = Said {
            role: report.role,
            epoch: report.epoch,
            incarnation: report.incarnation,
        };
        let uid = report.pod_uid.clone();
        let newest = inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_report(report, now);
        if !newest {
            continue;
        }
        let mut routes = inner.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(route) = routes.get_mut(&uid).filter(|r| r.said != Some(said)) else {
            continue;
        };
        route.said = Some(said);
        // One series per pod: the role reported last.
        inner.metrics.agent_roles.remove(&route.labels);
        let role = said.role.map_or("unknown", AgentRole::as_str);
        route.labels.role = role.to_owned();
        inner
            .metrics
            .agent_roles
            .get_or_create(&route.labels)
            .set(1);
        inner
            .metrics
            .reports
            .get_or_create(&ReportLabels { role: role.into() })
            .inc();
        let event = Event::Reported {
            uid,
            role: said.role.map(|role| match role {
                AgentRole::Active => ReportedRole::Active,
                AgentRole::Standby => ReportedRole::Standby,
                AgentRole::Lapsed => ReportedRole::Lapsed,
            }),
            epoch: said.epoch,
            incarnation: said.incarnation,
        };
        if let Some(worker) = route.worker.upgrade() {
            let _ = worker.send((event, tokio::time::Instant::from_std(now)));
        }
    }
}
