//! The application lease (docs/fencing.md): the active application stops acting on its own
//! when the grants stop coming, an agent killed in the active or a standby pod, and a lost
//! order to stand by.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    ACTIVE, APP_CONTAINER, APP_GROUP, APP_NAME, APP_NAMESPACE, APP_REPLICAS, STANDBY, Testbed,
    Trigger, create_app_namespace, monotonic_nanos, now_unix_nanos, partition_pods, pod_epoch,
    pod_ip, pod_ready, pod_role, restart_count,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::common::{PROMOTIONS, WAIT, failover_acked, promotions};
use crate::detection::handover_after;
use crate::failover::{check_failover_old_gone, wait_gone};
use crate::status::run_plugin;

/// What each pod's agent last reported, by the acting controller.
const AGENT_ROLE: &str = "hapod_agent_role";

/// The lease of `deploy/base` (`--application-lease-ms`).
const LEASE: Duration = Duration::from_millis(1000);

/// How long the app may take to step down after the last renewal could have reached it:
/// one lease, with generous slack for a noisy machine (polling, scheduling, a loaded CI).
const LAPSE_BOUND: Duration = Duration::from_secs(5);

/// Every process of the acting controller replica is stopped (SIGSTOP), which stops its
/// heartbeats at once while the election notices only after its renew deadline: the active
/// application must report itself no longer active (`standby` in `/state`, the lapsed grant)
/// within about one lease. Once the processes continue, the group ends with exactly one
/// active label and an active application again. The processes are always continued, also
/// when an assertion fails, so that the later scenarios find a working controller.
pub(crate) async fn application_stops_when_grants_stop(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let active = app.active.clone();
    let pids = Testbed::pod_processes(&ctrl.active)?;
    ensure!(
        !pids.is_empty(),
        "no process found for the acting controller {}",
        ctrl.active.name_any()
    );
    println!(
        "  stopping the acting controller {} (pids {pids:?}); active app pod {}",
        ctrl.active.name_any(),
        active.name_any()
    );
    let stopped = Testbed::stop_processes(pids)?;
    let lapse = wait_app_not_active(tb, &active, LAPSE_BOUND + Duration::from_secs(5)).await;
    let resumed = stopped.resume();
    let (lapse, state) = lapse?;
    resumed?;
    println!(
        "  the active app stepped down {:.0} ms after the controller stopped (lease {} ms): {state:?}",
        lapse.as_secs_f64() * 1000.0,
        LEASE.as_millis()
    );
    ensure!(
        lapse <= LAPSE_BOUND,
        "the active app stepped down only {lapse:?} after the controller stopped (bound {LAPSE_BOUND:?})"
    );
    ensure!(
        state.role.as_deref() == Some(STANDBY),
        "the app stepped down to {:?}, want {STANDBY} (the lapsed grant)",
        state.role
    );

    // The controller continues (or the other replica takes over): one active label, and its
    // app active again with the pod's epoch.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not settle after the controller continued")?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    ensure!(
        view.active().len() == 1,
        "active pods after the stall: {}",
        view.table()
    );
    for s in &settled.standbys {
        ensure!(
            pod_role(s) == Some(STANDBY),
            "{} is not standby",
            s.name_any()
        );
    }
    println!(
        "  after the stall: active app pod {} ({}), app state {:?}",
        settled.active.name_any(),
        if settled.active.uid() == active.uid() {
            "the same"
        } else {
            "another"
        },
        settled.app_state
    );
    tb.wait_controllers_settled(WAIT).await?;
    Ok(())
}

/// Polls the pod's `/state` until the app no longer says active; returns the time from the
/// call and the state seen.
async fn wait_app_not_active(
    tb: &Testbed,
    pod: &Pod,
    timeout: Duration,
) -> Result<(Duration, hapod_testkit::testbed::AppState)> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < timeout {
        match tb.app_state(pod).await {
            Ok(state) if state.role.as_deref() != Some(ACTIVE) => {
                return Ok((t0.elapsed(), state));
            }
            Ok(state) => last = Some(format!("{state:?}")),
            Err(e) => last = Some(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!(
        "the app of {} still acted active {timeout:?} after the fault; last: {}",
        pod.name_any(),
        last.unwrap_or_default()
    )
}

/// The agent of the active pod is killed (SIGKILL to the `app` container's process, which
/// embeds it, so it cannot relinquish its role). In `deploy/base` that container is critical,
/// and a critical container never restarts in place (docs/controller.md): the role moves to
/// the standby with a newer epoch and the pod is deleted, however fast the node restarts the
/// container. The promotion's reason is whichever sign of the death the controller gets
/// first: the node's report of the exit (`critical_death`, at its next relist, up to a second
/// later as on the kubelet), the agent's silence (`unresponsive`) or the failing readiness
/// probe (`not_ready`). The applications' journals show the old one stopped before the new
/// one started.
pub(crate) async fn agent_restart_in_active(tb: &Testbed) -> Result<()> {
    const REASONS: [&str; 3] = ["critical_death", "unresponsive", "not_ready"];
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let promoted_before = promotions(tb, &ctrl, &REASONS).await?;
    let started = monotonic_nanos();
    let f = failover_acked(tb, Trigger::KillAgent).await?;
    let promoted = promotions(tb, &ctrl, &REASONS).await?;
    ensure!(
        promoted > promoted_before,
        "the acting controller counted no promotion for the killed agent's critical container \
         ({PROMOTIONS} for {REASONS:?} stayed at {promoted_before})"
    );
    wait_gone(tb, APP_NAMESPACE, &f.old, WAIT)
        .await
        .context("the pod whose agent was killed was not deleted")?;
    check_failover_old_gone(tb, &f, "agent-killed").await?;
    let old_uid = f.old.uid().context("the old active has no UID")?;
    let (last_old, first_new) = handover_after(&tb.journals()?, &old_uid, started)?;
    println!(
        "  the old app's last step {:.0} ms before the new app's first",
        (first_new - last_old) as f64 / 1e6
    );
    Ok(())
}

/// The agent of the standby pod is killed (SIGKILL, as above): a critical death of a standby,
/// so the pod is deleted and the ReplicaSet's replacement joins as standby, its agent
/// reporting standby to the controller. The role does not move: the same pod stays labeled
/// active at the same epoch throughout, no promotion is counted, and its application keeps
/// acting.
pub(crate) async fn agent_restart_in_standby(tb: &Testbed) -> Result<()> {
    const CRITICAL_KILLS: &str = "hapod_critical_kills_total";
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let promotions_before = tb.controller_metric(&ctrl, PROMOTIONS, &[]).await?;
    let kills_before = tb.controller_metric(&ctrl, CRITICAL_KILLS, &[]).await?;
    let active = before.active.clone();
    let active_uid = active.uid().context("the active pod has no UID")?;
    let epoch = pod_epoch(&active).context("the active pod has no epoch")?;
    let standby = before.standbys[0].clone();
    println!(
        "  killing the agent of the standby {} (active {} at epoch {epoch})",
        standby.name_any(),
        active.name_any()
    );
    let since = now_unix_nanos();
    tb.trigger(&standby, Trigger::KillAgent).await?;
    wait_gone(tb, APP_NAMESPACE, &standby, WAIT)
        .await
        .context("the standby whose agent was killed was not deleted")?;
    let gone = monotonic_nanos();
    let after = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not settle after the standby's agent was killed")?;
    ensure!(
        after.active.uid() == active.uid() && pod_epoch(&after.active) == Some(epoch),
        "the role moved: {} is active at epoch {:?}, was {} at {epoch}",
        after.active.name_any(),
        pod_epoch(&after.active),
        active.name_any()
    );
    let replacement = &after.standbys[0];
    ensure!(
        replacement.uid() != standby.uid(),
        "{} (same UID) is still in the group",
        standby.name_any()
    );
    tb.wait_app_role(APP_NAMESPACE, &replacement.name_any(), STANDBY, WAIT)
        .await?;
    wait_agent_reported(tb, &ctrl, replacement, STANDBY).await?;
    stayed_active(tb, &active_uid, since)?;
    let promoted = tb.controller_metric(&ctrl, PROMOTIONS, &[]).await?;
    ensure!(
        promoted == promotions_before,
        "the acting controller promoted ({PROMOTIONS} {promotions_before} -> {promoted})"
    );
    let kills = tb.controller_metric(&ctrl, CRITICAL_KILLS, &[]).await?;
    ensure!(
        kills > kills_before,
        "the acting controller counted no kill of the standby ({CRITICAL_KILLS} stayed at \
         {kills_before})"
    );
    let journals = tb.journals()?;
    let overlaps = journals.overlaps();
    ensure!(
        overlaps.is_empty(),
        "applications acted at once: {}",
        overlaps[0]
    );
    ensure!(
        journals.steps_of(&active_uid).any(|s| s.at_nanos > gone),
        "the active app did not act after the standby was replaced"
    );
    println!(
        "  {} replaced by {}, which reports standby; {} stayed active at epoch {epoch}",
        standby.name_any(),
        replacement.name_any(),
        active.name_any()
    );
    Ok(())
}

/// The standby order to a demoted active is lost: the acting controller and the active pod
/// are cut from each other (every packet between them dropped), then `kubectl hapod
/// switchover` drains the active. The controller demotes it in the API, but its order to
/// stand by cannot arrive, so the promotion waits until the old grant is over. While still
/// cut: the standby is the only pod labeled active, the old application no longer acts (its
/// grant ran out on its own clock) and the controller has heard no standby from its agent.
/// Healed: the old agent takes the standby order of the next heartbeat and reports standby
/// (repair by reconciliation), the group settles with one active, and the journals show the
/// old application stopped before the new one started. The cut heals when dropped and the
/// plugin lifts the drain itself, also on failure.
pub(crate) async fn lost_standby_order(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let old_uid = old.uid().context("the active pod has no UID")?;
    let target = before.standbys[0].name_any();
    println!(
        "  cutting the acting controller {} ({}) from the active {} ({}), then a switchover \
         to {target}",
        ctrl.name_any(),
        pod_ip(&ctrl).unwrap_or_default(),
        old.name_any(),
        pod_ip(&old).unwrap_or_default()
    );
    let started = monotonic_nanos();
    let cut = partition_pods(&ctrl, &old)?;
    run_plugin(tb, "switchover", &[APP_GROUP, "--to", &target])?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    ensure!(
        matches!(view.active()[..], [one] if one.name_any() == target),
        "after the switchover {target} is not the only active pod:\n{}",
        view.table()
    );
    let (_, state) = wait_app_not_active(tb, &old, LAPSE_BOUND).await?;
    // A demotion comes with a fresh epoch: still at its active epoch, the app stepped down
    // on its own (the lapsed grant), not on an order.
    ensure!(
        state.epoch.is_some() && state.epoch == pod_epoch(&old),
        "the old app is at epoch {:?}, its active epoch was {:?}: an order reached it",
        state.epoch,
        pod_epoch(&old)
    );
    let heard = agent_reported(tb, &ctrl, &old, STANDBY).await?;
    ensure!(
        !heard,
        "the acting controller heard {} report standby through the cut",
        old.name_any()
    );
    println!("  while cut: the old app says {state:?}, the controller heard no standby from it");
    cut.heal()?;
    wait_agent_reported(tb, &ctrl, &old, STANDBY)
        .await
        .context("the old active's agent was not repaired to standby after the heal")?;
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not settle after the heal")?;
    ensure!(
        settled.active.name_any() == target,
        "the role moved again after the heal: {} is active",
        settled.active.name_any()
    );
    ensure!(
        settled
            .standbys
            .iter()
            .any(|p| p.uid().as_deref() == Some(old_uid.as_str()) && pod_role(p) == Some(STANDBY)),
        "{} did not stay in the group as standby",
        old.name_any()
    );
    let (last_old, first_new) = handover_after(&tb.journals()?, &old_uid, started)?;
    println!(
        "  the old app's last step {:.0} ms after the cut, the new app's first {:.0} ms after it",
        (last_old - started) as f64 / 1e6,
        (first_new - started) as f64 / 1e6,
    );
    Ok(())
}

/// The acting controller's `hapod_agent_role`: whether the agent of `pod` last reported
/// `role`.
async fn agent_reported(tb: &Testbed, ctrl: &Pod, pod: &Pod, role: &str) -> Result<bool> {
    let group = format!(
        "{}/{APP_GROUP}",
        pod.namespace().as_deref().unwrap_or(APP_NAMESPACE)
    );
    let name = pod.name_any();
    let labels = [("group", group.as_str()), ("pod", &name), ("role", role)];
    Ok(tb.controller_metric(ctrl, AGENT_ROLE, &labels).await? == 1.0)
}

/// Waits until the acting controller's `hapod_agent_role` says the agent of `pod` reported
/// `role`.
async fn wait_agent_reported(tb: &Testbed, ctrl: &Pod, pod: &Pod, role: &str) -> Result<()> {
    let what = format!(
        "the agent of {} to report {role} to {}",
        pod.name_any(),
        ctrl.name_any()
    );
    await_condition(what, WAIT, Duration::from_millis(100), || async {
        Ok(if agent_reported(tb, ctrl, pod, role).await? {
            Check::Done(())
        } else {
            Check::NotYet(format!("{AGENT_ROLE} of {} is not {role}", pod.name_any()))
        })
    })
    .await
}

/// Every record of the pod `uid` the label history saw since `since` (UNIX nanoseconds) says
/// active.
fn stayed_active(tb: &Testbed, uid: &str, since: u64) -> Result<()> {
    let demoted = tb
        .history
        .pod_records()
        .into_iter()
        .find(|r| r.uid == uid && r.seen_unix_nanos >= since && !r.is_active());
    ensure!(
        demoted.is_none(),
        "the active pod lost its label after the standby's agent was killed: {demoted:?}"
    );
    Ok(())
}

/// Namespace of the copy of the sample app whose agent's container is not critical.
const IN_PLACE_NAMESPACE: &str = "hapod-agent-restart";

/// The agent restarted in place: a copy of the sample app in a namespace of its own, whose
/// `app` container (which carries the agent) is not critical, so the node restarts it in the
/// same pod, with its epoch file on the pod's `emptyDir`. The standby's agent is killed: the
/// restarted process (same pod UID, the container's restartCount up) has applied nothing, and
/// the controller's heartbeat must bring it to standby within the wait (its `/state`, and the
/// acting controller's `hapod_agent_role`), while the active pod keeps its label and epoch.
/// The namespace is deleted afterwards, also on failure.
pub(crate) async fn agent_restart_in_place_standby(tb: &Testbed) -> Result<()> {
    let result = restarted_standby_agent_repaired(tb).await;
    let namespaces = Api::<Namespace>::all(tb.client.clone());
    let _ = namespaces
        .delete(IN_PLACE_NAMESPACE, &DeleteParams::default())
        .await;
    result
}

async fn restarted_standby_agent_repaired(tb: &Testbed) -> Result<()> {
    let ns = IN_PLACE_NAMESPACE;
    let deployed = create_app_namespace(&tb.client, ns).await?;
    let mut spec = deployed
        .spec
        .context("the sample app's ReplicaSet has no spec")?;
    let app = spec
        .template
        .as_mut()
        .and_then(|t| t.spec.as_mut())
        .and_then(|s| s.containers.iter_mut().find(|c| c.name == APP_CONTAINER))
        .context("the sample app has no app container")?;
    let criticality = app
        .env
        .iter_mut()
        .flatten()
        .find(|e| e.name == "pwcriticality")
        .context("the app container has no pwcriticality")?;
    criticality.value = Some("noncritical".into());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(APP_NAME.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    Api::<ReplicaSet>::namespaced(tb.client.clone(), ns)
        .create(&PostParams::default(), &rs)
        .await
        .context("creating the ReplicaSet")?;
    let settled = tb.wait_settled(ns, APP_GROUP, APP_REPLICAS, WAIT).await?;
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let active = settled.active;
    let active_uid = active.uid().context("the active pod has no UID")?;
    let epoch = pod_epoch(&active).context("the active pod has no epoch")?;
    let standby = settled.standbys[0].clone();
    let name = standby.name_any();
    tb.wait_app_role(ns, &name, STANDBY, WAIT).await?;
    let restarts_before = restart_count(&standby, APP_CONTAINER).unwrap_or_default();
    println!("  killing the agent of the standby {ns}/{name} (not critical)");
    let since = now_unix_nanos();
    tb.trigger(&standby, Trigger::KillAgent).await?;
    let what = format!("{ns}/{name} to run its app container again, restarted in place");
    let restarted = await_condition(what, WAIT, Duration::from_millis(50), || async {
        let Some(pod) = tb.pod(ns, &name).await? else {
            anyhow::bail!("{ns}/{name} is gone: it was not restarted in place");
        };
        ensure!(pod.uid() == standby.uid(), "{ns}/{name} was replaced");
        let restarts = restart_count(&pod, APP_CONTAINER).unwrap_or_default();
        Ok(if restarts > restarts_before && pod_ready(&pod) {
            Check::Done(pod)
        } else {
            Check::NotYet(format!(
                "restartCount {restarts}, ready {}",
                pod_ready(&pod)
            ))
        })
    })
    .await?;
    let state = tb
        .wait_app_role(ns, &name, STANDBY, WAIT)
        .await
        .context("the restarted agent of the standby did not become standby")?;
    wait_agent_reported(tb, &ctrl, &restarted, STANDBY).await?;
    let view = tb.group_view(ns, APP_GROUP).await?;
    ensure!(
        matches!(view.active()[..], [one] if one.uid() == active.uid()
            && pod_epoch(one) == Some(epoch)),
        "the role moved after the standby's agent restarted:\n{}",
        view.table()
    );
    stayed_active(tb, &active_uid, since)?;
    let overlaps = tb.journals()?.overlaps();
    ensure!(
        overlaps.is_empty(),
        "applications acted at once: {}",
        overlaps[0]
    );
    println!("  the restarted agent of {name} is standby again: {state:?}");
    Ok(())
}
