//! `kubectl hapod status`, the plugin binary against the real API with the admin kubeconfig:
//! after a failover it names the new active, its epoch and the promotion's reason and
//! latency, the standby, and the acting controller replica.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{APP_GROUP, APP_NAMESPACE, APP_REPLICAS, Testbed, Trigger, pod_epoch};
use kube::ResourceExt;
use serde_json::Value;

use crate::common::WAIT;

/// Runs `kubectl-hapod COMMAND -n <app namespace> args...` with the admin kubeconfig.
fn plugin(tb: &Testbed, command: &str, args: &[&str]) -> Result<Output> {
    Command::new(tb.bin_dir.join("kubectl-hapod"))
        .args([command, "-n", APP_NAMESPACE])
        .args(args)
        .env("KUBECONFIG", tb.kubeconfig())
        .output()
        .context("running kubectl-hapod")
}

/// Runs `kubectl-hapod status -n <app namespace> args...`; its standard output.
fn plugin_status(tb: &Testbed, args: &[&str]) -> Result<String> {
    let out = plugin(tb, "status", args)?;
    ensure!(
        out.status.success(),
        "kubectl-hapod status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

pub(crate) async fn status_after_failover(tb: &Testbed) -> Result<()> {
    let f = tb.failover(Trigger::ForceDelete, WAIT).await?;
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let controller = tb.wait_controllers_settled(WAIT).await?.active.name_any();
    let active = settled.active.name_any();
    ensure!(
        active == f.new.name_any(),
        "the group moved on after the failover"
    );
    let epoch = pod_epoch(&settled.active).context("the new active has no epoch")?;
    // The controller publishes its Events off the failover path: wait for the promotion's.
    let what = format!("kubectl hapod status to show the promotion of {active}");
    let status: Value = await_condition(what, WAIT, Duration::from_millis(200), || async {
        let status: Value = serde_json::from_str(&plugin_status(tb, &["-o", "json"])?)?;
        Ok(
            if status["groups"][0]["active"]["promoted"]["epoch"] == epoch {
                Check::Done(status)
            } else {
                Check::NotYet(format!("{status:#}"))
            },
        )
    })
    .await?;
    let group = &status["groups"][0];
    ensure!(
        status["groups"].as_array().map(Vec::len) == Some(1)
            && group["namespace"] == APP_NAMESPACE
            && group["group"] == APP_GROUP,
        "not the one group of {APP_NAMESPACE}: {status:#}"
    );
    ensure!(
        group["active"]["pod"] == active.as_str() && group["active"]["epoch"] == epoch,
        "active {active} at epoch {epoch} expected: {status:#}"
    );
    let promoted = &group["active"]["promoted"];
    // The controller sees the pod go, or first its agent relinquish as the process ends.
    ensure!(
        ["deleted", "terminating", "relinquished"]
            .contains(&promoted["reason"].as_str().unwrap_or_default())
            && promoted["failoverMs"].as_f64().is_some_and(|ms| ms > 0.0),
        "a force delete's promotion with its latency expected: {promoted:#}"
    );
    let standbys: Vec<&str> = group["standbys"]
        .as_array()
        .context("no standbys")?
        .iter()
        .filter(|s| s["eligible"] == true)
        .filter_map(|s| s["pod"].as_str())
        .collect();
    let want: Vec<String> = settled.standbys.iter().map(|p| p.name_any()).collect();
    ensure!(
        standbys == want,
        "eligible standbys {want:?} expected: {status:#}"
    );
    ensure!(
        group["problems"].as_array().is_some_and(Vec::is_empty),
        "no problems expected in the steady state: {status:#}"
    );
    ensure!(
        status["controller"]["pod"] == controller.as_str(),
        "the acting controller {controller} expected: {status:#}"
    );
    // The table: the controller line, then the group's row.
    let table = plugin_status(tb, &[])?;
    println!("{table}");
    let mut lines = table.lines();
    ensure!(
        lines
            .next()
            .is_some_and(|l| l.starts_with(&format!("controller: {controller} "))),
        "the table does not start with the acting controller:\n{table}"
    );
    let row = lines.nth(1).unwrap_or_default();
    ensure!(
        row.contains(&active) && want.iter().all(|s| row.contains(s.as_str())),
        "the group's row does not name {active} and {want:?}:\n{table}"
    );
    Ok(())
}

/// `kubectl hapod switchover`: the role moves to the standby without a pod killed, the
/// promotion says `drained`, and the old active is a standby again with its drain lifted.
pub(crate) async fn switchover(tb: &Testbed) -> Result<()> {
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let (old, target) = (before.active.name_any(), before.standbys[0].name_any());
    let out = plugin(tb, "switchover", &[APP_GROUP, "--to", &target])?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.contains(&format!("{target} is active")),
        "switchover failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("  {}", said.trim());
    // Both pods stay (no kill), the roles swapped, the drain lifted.
    let after = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        after.active.name_any() == target && after.standbys[0].name_any() == old,
        "{target} active and {old} standby expected, got {} and {:?}",
        after.active.name_any(),
        after
            .standbys
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
    );
    ensure!(
        !after.standbys[0]
            .annotations()
            .contains_key("hapod.io/drain"),
        "the drain of {old} was not lifted"
    );
    let what = format!("the promotion of {target} for a drain");
    await_condition(what, WAIT, Duration::from_millis(200), || async {
        let status: Value = serde_json::from_str(&plugin_status(tb, &["-o", "json"])?)?;
        let promoted = &status["groups"][0]["active"]["promoted"];
        Ok(if promoted["reason"] == "drained" {
            Check::Done(())
        } else {
            Check::NotYet(format!("{promoted:#}"))
        })
    })
    .await?;
    // A second switchover to a pod that is not a standby is refused, changing nothing.
    let refused = plugin(tb, "switchover", &[APP_GROUP, "--to", &target])?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("is the active pod already"),
        "a switchover to the active pod was not refused: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    Ok(())
}
