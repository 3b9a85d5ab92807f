//! Prometheus metrics of the agent, read from its state and counters at each scrape: what this
//! pod believes of its role, seen from the pod. (The controller's `hapod_agent_role` is the
//! same belief as the controller last heard it; the two differ while reports are lost.)
//!
//! Serve them with [`router`] (a `/metrics` route to merge into an application's own axum
//! router) or [`serve`] (a server of their own, the sidecar's `--metrics-addr`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{Agent, AtomicCounters, Counters, RoleState};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The roles `hapod_receiver_role` has a series for, one of them 1.
const ROLES: [&str; 3] = ["active", "standby", "unknown"];

/// A `/metrics` route serving the agent's metrics (OpenMetrics text).
pub fn router(agent: &Agent) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        state: agent.state(),
        counters: agent.counters.clone(),
    }));
    let registry = Arc::new(registry);
    let scrape = move || {
        let registry = registry.clone();
        async move {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
    };
    Router::new().route("/metrics", get(scrape))
}

/// Serves [`router`] on `addr` in a task of its own, for as long as the runtime runs;
/// returns the bound address (`addr` may have port 0). Fails if `addr` cannot be bound.
pub async fn serve(agent: &Agent, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "agent metrics serving");
    let router = router(agent);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "agent metrics server stopped");
        }
    });
    Ok(bound)
}

#[derive(Debug)]
struct AgentCollector {
    state: watch::Receiver<RoleState>,
    counters: Arc<AtomicCounters>,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.borrow().clone();
        let now = Instant::now();
        let mut role = encoder.encode_descriptor(
            "hapod_receiver_role",
            "The role this pod's agent holds (1 for the current one)",
            None,
            MetricType::Gauge,
        )?;
        for name in ROLES {
            let value = i64::from(state.role_name() == name);
            ConstGauge::new(value).encode(role.encode_family(&[("role", name)])?)?;
        }
        gauge(
            &mut encoder,
            "hapod_receiver_acting",
            "1 while the application may act active: role active under a live grant",
            i64::from(state.acting(now)),
        )?;
        gauge(
            &mut encoder,
            "hapod_receiver_epoch",
            "Epoch of the last applied notification or order",
            i64::try_from(state.epoch).unwrap_or(i64::MAX),
        )?;
        let grant = state.acting_until.map_or(0.0, |until| {
            until.saturating_duration_since(now).as_secs_f64()
        });
        let grant_gauge = ConstGauge::new(grant);
        grant_gauge.encode(encoder.encode_descriptor(
            "hapod_receiver_grant_remaining_seconds",
            "Time left of the grant to act active (0 without one)",
            None,
            MetricType::Gauge,
        )?)?;

        let c = self.counters.snapshot();
        for (name, help, value) in counted(&c) {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut dropped = encoder.encode_descriptor(
            "hapod_receiver_datagrams_dropped",
            "Datagrams dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in dropped_by_reason(&c) {
            ConstCounter::new(value).encode(dropped.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// (name, help, value) of the plain counters (the text encoding adds `_total`).
fn counted(c: &Counters) -> [(&'static str, &'static str, u64); 8] {
    [
        (
            "hapod_receiver_datagrams_received",
            "Datagrams received on the notification port",
            c.received,
        ),
        (
            "hapod_receiver_applied",
            "Notifications and orders that changed the role or epoch",
            c.applied,
        ),
        (
            "hapod_receiver_duplicates",
            "Repeats of the current epoch, acknowledged again",
            c.duplicates,
        ),
        (
            "hapod_receiver_renewals",
            "Orders of the applied epoch (heartbeats, grant renewals)",
            c.renewals,
        ),
        (
            "hapod_receiver_lapses",
            "Grants that ran out without renewal (the agent stood down by itself)",
            c.lapses,
        ),
        (
            "hapod_receiver_legacy_accepted",
            "Legacy (unauthenticated) datagrams accepted",
            c.legacy_accepted,
        ),
        (
            "hapod_receiver_replies_sent",
            "Acknowledgements and reports sent to the controller",
            c.acks_sent,
        ),
        (
            "hapod_receiver_reply_send_errors",
            "Acknowledgements and reports that could not be sent",
            c.ack_send_errors,
        ),
    ]
}

fn dropped_by_reason(c: &Counters) -> [(&'static str, u64); 9] {
    [
        ("oversized", c.dropped_oversized),
        ("malformed", c.dropped_malformed),
        ("unauthenticated", c.dropped_unauthenticated),
        ("wrong_pod", c.dropped_wrong_pod),
        ("wrong_uid", c.dropped_wrong_uid),
        ("not_recorded", c.dropped_not_recorded),
        ("stale", c.dropped_stale),
        ("legacy_disabled", c.dropped_legacy_disabled),
        ("unexpected_ack", c.dropped_unexpected_ack),
    ]
}
