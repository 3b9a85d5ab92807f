//! The label history of the whole run.

use std::time::Duration;

use anyhow::{Result, ensure};
use hapod_testkit::testbed::{
    APP_NAMESPACE, CONTROLLER_GROUP, CONTROLLER_NAMESPACE, CONTROLLER_REPLICAS, Testbed,
};

/// Over the whole run: never two pods of one group labeled active at the same
/// resourceVersion (replayed in resourceVersion order per group), and never two applications
/// of one group acting at once (their own journals, on the host's monotonic clock).
pub(crate) async fn no_double_active(tb: &Testbed) -> Result<()> {
    // Let the watch catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarts = tb.history.watch_restarts();
    ensure!(
        restarts.is_empty(),
        "the label-history watch had gaps, so the history may be incomplete: {restarts:?}"
    );
    let records = tb.history.pod_records();
    let promotions = records
        .iter()
        .filter(|r| r.namespace == APP_NAMESPACE && r.is_active())
        .map(|r| &r.uid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let ctrl_pods = records
        .iter()
        .filter(|r| {
            r.namespace == CONTROLLER_NAMESPACE && r.group.as_deref() == Some(CONTROLLER_GROUP)
        })
        .map(|r| &r.uid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Application groups and the controller replicas alike: never two active at one
    // resourceVersion (a terminating controller replica is demoted before its successor
    // labels itself active).
    let (n, groups) = tb.history.assert_no_double_active()?;
    println!(
        "  {n} pod records, {groups} groups, {promotions} app pods were active at some point, \
         {ctrl_pods} controller pods seen; no double active"
    );
    ensure!(promotions >= 1, "the history saw no active app pod at all");
    let journals = tb.journals()?;
    let overlaps = journals.overlaps();
    ensure!(
        overlaps.is_empty(),
        "{} times two applications acted at once, first: {}",
        overlaps.len(),
        overlaps[0]
    );
    let handovers = journals.handovers();
    ensure!(
        !handovers.is_empty(),
        "the applications' journals show no handover at all (are they written?)"
    );
    let shortest = handovers
        .iter()
        .map(|h| h.gap_ms())
        .fold(f64::INFINITY, f64::min);
    println!(
        "  journals: {} handovers between applications, none overlapping (shortest gap          {shortest:.1} ms)",
        handovers.len()
    );
    ensure!(
        ctrl_pods >= CONTROLLER_REPLICAS,
        "the history saw {ctrl_pods} controller pods"
    );
    Ok(())
}
