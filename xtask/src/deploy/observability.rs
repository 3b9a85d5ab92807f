//! The chart's Prometheus Operator objects (off by default) and `deploy/observability/`: the
//! PodMonitor scrapes the rendered controller pods' HTTP port, and the plain rule file is the
//! chart's PrometheusRule at its default thresholds. (The metric names these files use are
//! checked against the controller's registry by `crates/hapod-controller/tests/observability.rs`.)

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use hapod_testkit::testbed::{CONTROLLER_NAME, CONTROLLER_NAMESPACE};

use super::problems::Problems;
use super::render::{Render, parse_documents, str_at};

/// The plain rule file, for Prometheus without the Operator.
pub(crate) const RULES_FILE: &str = "deploy/observability/prometheus-rules.yaml";

/// The Helm values that render the monitoring objects.
pub(crate) const MONITORING_SETS: &[&str] = &[
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
];

/// `RULES_FILE` as it must be: the rule groups of the chart's PrometheusRule in `r`.
pub(crate) fn rules_file(r: &Render) -> Result<String> {
    let rule = r.find("PrometheusRule", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let groups = rule.pointer("/spec/groups").context("no spec.groups")?;
    let mut out = String::new();
    for line in [
        "# Prometheus alerting rules of hapod, for Prometheus without the Operator: list this file",
        "# under `rule_files:` in prometheus.yml. The Helm chart renders the same rules as a",
        "# PrometheusRule (monitoring.prometheusRule.enabled=true, thresholds as values).",
        "# What each alert means and what to do: docs/deploy.md, \"Alerts\".",
        "# Generated from the chart: cargo xtask deploy rules > deploy/observability/prometheus-rules.yaml",
    ] {
        writeln!(out, "{line}")?;
    }
    out.push_str(&serde_norway::to_string(&json!({ "groups": groups }))?);
    Ok(out)
}

/// The monitoring render: the PodMonitor selects the controller pods and scrapes a port they
/// declare, every alert is complete, and `RULES_FILE` holds the same groups.
pub(crate) fn monitoring(r: &Render) -> Result<()> {
    let mut p = Problems::default();
    let dep = r.find("Deployment", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let monitor = r.find("PodMonitor", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let labels = dep
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .context("no controller pod labels")?;
    let selected = monitor
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    p.expect(selected, || {
        format!("PodMonitor selector does not select the controller pods {labels:?}")
    });
    p.expect_eq(
        "PodMonitor namespaceSelector",
        monitor.pointer("/spec/namespaceSelector/matchNames"),
        Some(&json!([CONTROLLER_NAMESPACE])),
    );
    let port = str_at(monitor, "/spec/podMetricsEndpoints/0/port");
    let declared = dep
        .pointer("/spec/template/spec/containers/0/ports")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|x| str_at(x, "/name") == port));
    p.expect(declared, || {
        format!("PodMonitor port {port:?} is not a controller container port")
    });
    p.expect_eq(
        "PodMonitor path",
        str_at(monitor, "/spec/podMetricsEndpoints/0/path"),
        "/metrics",
    );

    let rule = r.find("PrometheusRule", CONTROLLER_NAMESPACE, CONTROLLER_NAME)?;
    let rules: Vec<&Value> = rule
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|g| {
            g.pointer("/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    p.expect(!rules.is_empty(), || "PrometheusRule has no rules".into());
    for x in rules {
        let name = str_at(x, "/alert");
        p.expect(!name.is_empty() && !str_at(x, "/expr").is_empty(), || {
            format!("rule without alert or expr: {x}")
        });
        p.expect(
            matches!(str_at(x, "/labels/severity"), "critical" | "warning"),
            || format!("{name}: severity is not critical or warning"),
        );
        for a in ["summary", "description", "runbook_url"] {
            p.expect(!str_at(x, &format!("/annotations/{a}")).is_empty(), || {
                format!("{name}: no {a} annotation")
            });
        }
        let anchor = format!("#{}", name.to_lowercase());
        p.expect(
            str_at(x, "/annotations/runbook_url").ends_with(&anchor),
            || format!("{name}: runbook_url does not end with {anchor}"),
        );
    }

    let path = hapod_testkit::workspace_root().join(RULES_FILE);
    let plain = std::fs::read_to_string(&path).with_context(|| format!("reading {RULES_FILE}"))?;
    let plain = parse_documents(&plain).with_context(|| format!("parsing {RULES_FILE}"))?;
    p.expect_same(
        &format!(
            "{RULES_FILE} vs the chart's PrometheusRule (regenerate: cargo xtask deploy rules > {RULES_FILE})"
        ),
        plain.first().and_then(|f| f.pointer("/groups")),
        rule.pointer("/spec/groups"),
    );
    p.finish("helm monitoring render")
}
