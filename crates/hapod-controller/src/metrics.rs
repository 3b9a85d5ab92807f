//! Prometheus metrics of the controller (prometheus-client, one registry shared with the
//! election). Updating a metric is a few atomic operations: safe on the hot path.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// API verb of a failed call.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are lower case
pub enum Verb {
    patch,
    delete,
    get,
    list,
    create,
    update,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    pub verb: Verb,
    /// HTTP status, or `0` when no response came back.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub role: String,
    /// `acked`, `timed_out`, `superseded`, `refused`, `fenced` (not sent: leadership lost).
    pub outcome: String,
}

/// One pod's agent and the role it reported (application lease).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// `<namespace>/<group>`.
    pub group: String,
    pub pod: String,
    /// `active`, `standby`, `lapsed` or `unknown`.
    pub role: String,
}

/// One group (`hapod_group_paused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// `<namespace>/<group>`, as in `hapod_agent_role`: a label named `namespace` would clash
    /// with the one a scrape adds (the controller pod's), and be renamed.
    pub group: String,
}

/// What an agent said of itself in a report that changed it (application lease).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// What the agent said of itself: `active`, `standby`, `lapsed` or `unknown`.
    pub role: String,
}

/// Stage of a failover, measured from the previous one (see `Stage`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are lower case
pub enum Stage {
    /// Event received -> decision made.
    decide,
    /// Decision made -> write sent (fence checked).
    send,
    /// Write sent -> write acknowledged.
    ack,
    /// Write acknowledged -> notification handed to the sender.
    notify,
    /// Notification sent -> the pod's ACK.
    notify_ack,
    /// EndpointSlice mode: the route decided -> the slice write acknowledged.
    route,
}

/// How a group's EndpointSlice write ended (EndpointSlice mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SliceLabels {
    /// `written`, `removed`, `refused` (the Service cannot take it: see the log), `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: Stage,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// `hapod_build_info{version, git_commit} 1`. The commit comes from `HAPOD_GIT_COMMIT` at
/// build time (the images pass it), else `unknown`: no build script runs git.
fn build_info() -> Info<Vec<(&'static str, &'static str)>> {
    Info::new(vec![
        ("version", env!("CARGO_PKG_VERSION")),
        (
            "git_commit",
            option_env!("HAPOD_GIT_COMMIT").unwrap_or("unknown"),
        ),
    ])
}

/// 100 µs .. ~100 s: failovers are milliseconds, node losses a minute.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub promotions: Family<ReasonLabels, Counter>,
    pub demotions: Counter,
    pub kills: Counter,
    pub failover_latency: Histogram,
    pub stages: HistogramFamily<StageLabels>,
    pub groups: Gauge,
    pub groups_without_active: Gauge,
    pub api_errors: Family<ApiErrorLabels, Counter>,
    pub rejected_writes: Counter,
    pub notifications: Family<NotificationLabels, Counter>,
    pub reports: Family<ReportLabels, Counter>,
    pub orders_sent: Counter,
    pub reports_received: Counter,
    pub unplaceable_pods: Counter,
    pub acting: Gauge,
    pub unsynced_scopes: Gauge,
    pub epoch_anomalies: Counter,
    pub agent_roles: Family<AgentLabels, Gauge>,
    pub groups_paused: Family<GroupLabels, Gauge>,
    pub slice_writes: Family<SliceLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            promotions: Family::default(),
            demotions: Counter::default(),
            kills: Counter::default(),
            failover_latency: latency_histogram(),
            stages: Family::new_with_constructor(latency_histogram),
            groups: Gauge::default(),
            groups_without_active: Gauge::default(),
            api_errors: Family::default(),
            rejected_writes: Counter::default(),
            notifications: Family::default(),
            reports: Family::default(),
            orders_sent: Counter::default(),
            reports_received: Counter::default(),
            unplaceable_pods: Counter::default(),
            acting: Gauge::default(),
            unsynced_scopes: Gauge::default(),
            epoch_anomalies: Counter::default(),
            agent_roles: Family::default(),
            groups_paused: Family::default(),
            slice_writes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("hapod");
        r.register(
            "promotions",
            "Pods labeled active, by reason",
            m.promotions.clone(),
        );
        r.register(
            "demotions",
            "Active pods labeled standby",
            m.demotions.clone(),
        );
        r.register(
            "critical_kills",
            "Pods deleted because a critical container died",
            m.kills.clone(),
        );
        r.register(
            "failover_latency_seconds",
            "From the failover trigger being observed to the promotion write being acknowledged",
            m.failover_latency.clone(),
        );
        r.register(
            "failover_stage_seconds",
            "Duration of each stage of a role change, from the previous stage",
            m.stages.clone(),
        );
        r.register("groups", "Groups with at least one pod", m.groups.clone());
        r.register(
            "groups_without_active",
            "Groups with no eligible pod labeled active",
            m.groups_without_active.clone(),
        );
        r.register(
            "api_errors",
            "Failed API calls, by verb and HTTP status (0: no response)",
            m.api_errors.clone(),
        );
        r.register(
            "rejected_writes",
            "Writes the API refused for good (403, 422), retried only after a long pause",
            m.rejected_writes.clone(),
        );
        r.register(
            "notifications",
            "Role notifications by role and outcome",
            m.notifications.clone(),
        );
        r.register(
            "agent_reports",
            "Application lease: agent reports that changed what an agent says of itself (role or epoch), by the role reported",
            m.reports.clone(),
        );
        r.register(
            "lease_orders_sent",
            "Application lease: order datagrams sent (every heartbeat sends one to each pod of a group), the cost of the heartbeat with hapod_lease_reports_received",
            m.orders_sent.clone(),
        );
        r.register(
            "lease_reports_received",
            "Application lease: authentic agent reports received (an agent answers every order)",
            m.reports_received.clone(),
        );
        r.register(
            "unplaceable_pods",
            "Pods matching the selector but lacking the group label (logged once each)",
            m.unplaceable_pods.clone(),
        );
        r.register(
            "acting",
            "1 while this replica acts (holds the Lease and its pod lists are current), else 0",
            m.acting.clone(),
        );
        r.register(
            "unsynced_scopes",
            "Watched namespaces (or the all-namespaces watch) whose pod list has not completed",
            m.unsynced_scopes.clone(),
        );
        r.register(
            "epoch_anomalies",
            "Active pods seen carrying an epoch of a term above the acting one (ignored)",
            m.epoch_anomalies.clone(),
        );
        r.register(
            "agent_role",
            "Application lease: 1 for the role each pod's agent last reported (active, standby, lapsed, unknown)",
            m.agent_roles.clone(),
        );
        r.register(
            "group_paused",
            "1 for each group an operator paused (hapod.io/paused=true): no role changes there; exported by the acting replica",
            m.groups_paused.clone(),
        );
        r.register(
            "endpoint_slice_writes",
            "EndpointSlice mode: the groups' slice writes and removals, by outcome",
            m.slice_writes.clone(),
        );
        r.register(
            "build",
            "This binary: its version and the git commit it was built from",
            build_info(),
        );
        m
    }

    pub fn stage(&self, stage: Stage, d: Duration) {
        self.stages
            .get_or_create(&StageLabels { stage })
            .observe(d.as_secs_f64());
    }

    pub fn api_error(&self, verb: Verb, code: u16) {
        self.api_errors
            .get_or_create(&ApiErrorLabels { verb, code })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_the_version_and_commit() {
        let mut registry = Registry::default();
        Metrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("hapod_build_info{"))
            .unwrap_or_else(|| panic!("no hapod_build_info in:\n{text}"));
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(line.contains(&version), "{line}");
        assert!(line.contains("git_commit=\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
