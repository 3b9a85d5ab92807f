//! `kubectl hapod`, the plugin binary against the real API: after a failover `status` names
//! the new active, its epoch and the promotion's reason and latency, the standby, and the
//! acting controller replica; `switchover` moves the role without a kill; `pause` stops
//! failovers until `resume`; the shipped roles for its users allow what they say and no more.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    APP_GROUP, APP_NAMESPACE, APP_REPLICAS, CONTROLLER_NAMESPACE, Testbed, Trigger, pod_epoch,
};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::Value;

use crate::common::{PROMOTIONS, WAIT};

/// The annotation `kubectl hapod pause` sets.
const PAUSE_ANNOTATION: &str = "hapod.io/paused";

/// Runs `kubectl-hapod COMMAND -n <app namespace> args...` with the admin kubeconfig.
fn plugin(tb: &Testbed, command: &str, args: &[&str]) -> Result<Output> {
    plugin_as(tb, tb.kubeconfig(), command, args)
}

/// Runs `kubectl-hapod COMMAND -n <app namespace> args...` with `kubeconfig`.
fn plugin_as(tb: &Testbed, kubeconfig: &Path, command: &str, args: &[&str]) -> Result<Output> {
    Command::new(tb.bin_dir.join("kubectl-hapod"))
        .args([command, "-n", APP_NAMESPACE])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
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
    // The controller publishes its Events off the failover path: wait for the promotion's,
    // and for those saying the applications took their roles at the new epoch (the
    // application lease is on in deploy/base).
    let what = format!(
        "kubectl hapod status to show the promotion of {active}, acknowledged by every app"
    );
    let status: Value = await_condition(what, WAIT, Duration::from_millis(200), || async {
        let status: Value = serde_json::from_str(&plugin_status(tb, &["-o", "json"])?)?;
        let group = &status["groups"][0];
        let active = &group["active"];
        let acked = |member: &Value, role: &str| {
            member["acknowledged"]["epoch"] == epoch && member["acknowledged"]["role"] == role
        };
        let standbys_acked = group["standbys"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| acked(s, "standby")));
        Ok(
            if active["promoted"]["epoch"] == epoch && acked(active, "active") && standbys_acked {
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
    ensure!(
        row.contains("yes ("),
        "the group's row does not say the active's application acknowledged:\n{table}"
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

/// `kubectl hapod pause`: every pod of the group is annotated, the status says paused and a
/// `Paused` Event is published; the active pod force-deleted, no pod of the group is labeled
/// active for 5 s and the acting controller promotes nobody (its replacement is still labeled
/// standby). `resume`: the annotation is gone, a new active follows within the usual wait,
/// a `Resumed` Event, the group settles.
pub(crate) async fn pause(tb: &Testbed) -> Result<()> {
    let result = paused_group_fails_over_on_resume(tb).await;
    if result.is_err() {
        // The next scenarios need a group the controller manages.
        let _ = plugin(tb, "resume", &[APP_GROUP]);
    }
    result
}

async fn paused_group_fails_over_on_resume(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let promotions_before = tb.controller_metric(&ctrl, PROMOTIONS, &[]).await?;
    let said = run_plugin(tb, "pause", &[APP_GROUP])?;
    ensure!(said.contains("paused"), "pause said: {said}");
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    ensure!(
        view.pods
            .iter()
            .all(|p| p.annotations().get(PAUSE_ANNOTATION).map(String::as_str) == Some("true")),
        "not every pod carries {PAUSE_ANNOTATION}=true:\n{}",
        view.table()
    );
    let status: Value = serde_json::from_str(&plugin_status(tb, &["-o", "json"])?)?;
    ensure!(
        status["groups"][0]["paused"] == true,
        "the status does not say paused: {status:#}"
    );
    wait_event(tb, "Paused").await?;
    let gauge = paused_gauge(tb, &ctrl).await?;
    ensure!(
        gauge == 1.0,
        "{PAUSED_GAUGE} of the group is {gauge}, 1 expected"
    );

    tb.trigger(&old, Trigger::ForceDelete).await?;
    // For 5 s (the replacement pod joins meanwhile): nobody labeled active.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
        ensure!(
            view.active().iter().all(|p| p.uid() == old.uid()),
            "a pod was labeled active in the paused group:\n{}",
            view.table()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promotions = tb.controller_metric(&ctrl, PROMOTIONS, &[]).await?;
    ensure!(
        promotions == promotions_before,
        "the acting controller {} promoted while paused ({PROMOTIONS} {promotions_before} -> \
         {promotions})",
        ctrl.name_any()
    );
    println!(
        "  paused: no active for 5 s after the force delete of {}",
        old.name_any()
    );

    let said = run_plugin(tb, "resume", &[APP_GROUP])?;
    ensure!(said.contains("resumed"), "resume said: {said}");
    let old_uid = old.uid().unwrap_or_default();
    let new = tb
        .wait_new_active(APP_NAMESPACE, APP_GROUP, &old_uid, WAIT)
        .await
        .context("no new active after the resume")?;
    println!("  resumed: {} is active", new.name_any());
    wait_event(tb, "Resumed").await?;
    let gauge = paused_gauge(tb, &ctrl).await?;
    ensure!(
        gauge == 0.0,
        "{PAUSED_GAUGE} of the group is {gauge} after the resume"
    );
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        settled
            .standbys
            .iter()
            .chain([&settled.active])
            .all(|p| !p.annotations().contains_key(PAUSE_ANNOTATION)),
        "{PAUSE_ANNOTATION} is left on a pod after the resume"
    );
    let status: Value = serde_json::from_str(&plugin_status(tb, &["-o", "json"])?)?;
    ensure!(
        status["groups"][0]["paused"] == false,
        "the status still says paused: {status:#}"
    );
    Ok(())
}

/// The acting controller's gauge of paused groups.
const PAUSED_GAUGE: &str = "hapod_group_paused";

/// The sample app's group's series of [`PAUSED_GAUGE`] on controller replica `ctrl` (0 when
/// it exports none).
async fn paused_gauge(tb: &Testbed, ctrl: &k8s_openapi::api::core::v1::Pod) -> Result<f64> {
    let group = format!("{APP_NAMESPACE}/{APP_GROUP}");
    tb.controller_metric(ctrl, PAUSED_GAUGE, &[("group", &group)])
        .await
}

/// Runs `kubectl-hapod COMMAND -n <app namespace> args...`, which must succeed; what it said.
pub(crate) fn run_plugin(tb: &Testbed, command: &str, args: &[&str]) -> Result<String> {
    let out = plugin(tb, command, args)?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kubectl-hapod {command} failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("  {}", said.trim());
    Ok(said)
}

/// Waits for a controller Event with `reason` in the app's namespace.
async fn wait_event(tb: &Testbed, reason: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let what = format!("an Event with reason {reason} in {APP_NAMESPACE}");
    await_condition(what, WAIT, Duration::from_millis(200), || async {
        let list = api
            .list(&ListParams::default().fields(&format!("reason={reason}")))
            .await?;
        Ok(match list.items.first() {
            Some(event) => {
                println!(
                    "  Event {reason}: {}",
                    event.message.as_deref().unwrap_or_default()
                );
                Check::Done(())
            }
            None => Check::NotYet("none yet".into()),
        })
    })
    .await
}

/// The shipped roles for people who run the plugin, bound to a user of their own: with
/// `hapod-viewer`, `status` works and `switchover` is refused by the API (nothing changes);
/// with `hapod-operator`, `switchover` works too.
pub(crate) async fn operator_roles(tb: &Testbed) -> Result<()> {
    let sre = tb.control_plane()?.mint_kubeconfig("sre", &[])?;
    let controller = tb.wait_controllers_settled(WAIT).await?.active.name_any();
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    bind(tb, "hapod-viewer", true).await?;
    let status = plugin_as(tb, &sre, "status", &["-o", "json"])?;
    let shown: Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    ensure!(
        status.status.success()
            && shown["controller"]["pod"] == controller.as_str()
            && shown["groups"][0]["active"]["pod"] == before.active.name_any().as_str(),
        "hapod-viewer cannot read the status: {shown:#} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let refused = plugin_as(tb, &sre, "switchover", &[APP_GROUP])?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("forbidden"),
        "hapod-viewer could switch over: {said}"
    );
    let unchanged = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    ensure!(
        unchanged
            .active()
            .iter()
            .map(|p| p.uid())
            .collect::<Vec<_>>()
            == [before.active.uid()]
            && unchanged
                .pods
                .iter()
                .all(|p| !p.annotations().contains_key("hapod.io/drain")),
        "a refused switchover changed the group"
    );
    bind(tb, "hapod-viewer", false).await?;
    bind(tb, "hapod-operator", true).await?;
    let moved = plugin_as(tb, &sre, "switchover", &[APP_GROUP])?;
    bind(tb, "hapod-operator", false).await?;
    ensure!(
        moved.status.success(),
        "hapod-operator could not switch over: {}",
        String::from_utf8_lossy(&moved.stderr)
    );
    tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    Ok(())
}

/// Binds (or unbinds) ClusterRole `role` to user `sre` in the app's and the controller's
/// namespace, as the roles' own comment says to.
async fn bind(tb: &Testbed, role: &str, bound: bool) -> Result<()> {
    for ns in [APP_NAMESPACE, CONTROLLER_NAMESPACE] {
        let api: Api<RoleBinding> = Api::namespaced(tb.client.clone(), ns);
        let name = format!("sre-{role}");
        if bound {
            let binding: RoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "sre"}],
            }))?;
            api.create(&PostParams::default(), &binding).await?;
        } else {
            api.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}
