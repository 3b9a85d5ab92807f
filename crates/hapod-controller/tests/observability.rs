//! The shipped alert rules and dashboard query only metrics the controller exports: every
//! `hapod_*` name in them must be a sample name of the registry built as `main` builds it
//! (the controller's metrics and the election's), so renaming a metric breaks this test.
//! Not checkable, so not used in those files: the election's series that exist only once it
//! has run (`hapod_election_leader_transitions_total`, `..._seconds_since_last_renew`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use hapod_controller::args::Args;
use hapod_controller::metrics::{
    AgentLabels, GroupLabels, Metrics, NotificationLabels, ReasonLabels, ReportLabels, SliceLabels,
    Stage, Verb,
};
use hapod_election::{ElectionConfig, LeaderElector};
use http::{Request, Response};
use kube::client::Body;
use prometheus_client::registry::Registry;

/// Files (from the repository root) whose `hapod_*` names must all be exported.
const FILES: &[&str] = &[
    "deploy/observability/prometheus-rules.yaml",
    "deploy/observability/grafana-dashboard.json",
    "deploy/helm/hapod/templates/prometheusrule.yaml",
];

/// Every sample name the registry exports, as a query names it: `_total` on counters,
/// `_bucket`/`_sum`/`_count` on histograms, `_info` on info metrics.
async fn exported() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let m = Metrics::register(&mut registry);
    // A family exports its name only once it has a series: give each one.
    let label = || "x".to_string();
    let _ = m
        .promotions
        .get_or_create(&ReasonLabels { reason: label() });
    m.stage(Stage::decide, Duration::ZERO);
    m.api_error(Verb::get, 0);
    let _ = m.notifications.get_or_create(&NotificationLabels {
        role: label(),
        outcome: label(),
    });
    let _ = m.reports.get_or_create(&ReportLabels { role: label() });
    let _ = m.agent_roles.get_or_create(&AgentLabels {
        group: label(),
        pod: label(),
        role: label(),
    });
    let _ = m
        .groups_paused
        .get_or_create(&GroupLabels { group: label() });
    let _ = m
        .slice_writes
        .get_or_create(&SliceLabels { outcome: "refused" });
    let args = Args::try_parse_from(["hapod-controller", "--pod-name=p", "--pod-namespace=n"])
        .expect("args");
    let election = ElectionConfig::new(
        &args.election,
        &args.matching.role_label,
        &args.matching.active_value,
        &args.matching.standby_value,
    )
    .expect("election config");
    // The election registers its metrics when built; it never runs here.
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "n");
    let _elector = LeaderElector::new(client, election, &mut registry).expect("elector");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Every `hapod_[a-z_]+` in `text` that does not continue a longer identifier.
fn metric_names(text: &str) -> BTreeSet<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices("hapod_")
        .filter(|(at, _)| !text[..*at].ends_with(is_ident))
        .map(|(at, _)| {
            let rest = &text[at..];
            let len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..len]
        })
        .collect()
}

#[tokio::test]
async fn rules_and_dashboard_use_only_exported_metrics() {
    let exported = exported().await;
    assert!(
        exported.contains("hapod_promotions_total")
            && exported.contains("hapod_election_is_leader"),
        "the registry did not export the expected names: {exported:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut unknown = Vec::new();
    for file in FILES {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} names only {used:?}");
        unknown.extend(
            used.into_iter()
                .filter(|n| !exported.contains(*n))
                .map(|n| format!("{file}: {n}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "metrics not exported by the controller:\n  {}\nexported: {exported:?}",
        unknown.join("\n  ")
    );
    let dashboard = root.join("deploy/observability/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard"))
            .expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}

#[test]
fn names_are_found_whole() {
    let names = metric_names(
        r#"sum(rate(hapod_promotions_total{reason!="initial"}[5m])) / my_hapod_x + hapod_acting"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["hapod_promotions_total", "hapod_acting"])
    );
}
