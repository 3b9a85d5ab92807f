//! The controller's replicas: takeovers by the standby replica, and its settings.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    self, ACTIVE, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, APP_SERVICE, CONTROLLER_NAME,
    CONTROLLER_NAMESPACE, Testbed, Trigger, pod_ip,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use crate::common::{PROMOTIONS, WAIT, check_failover, failover_acked};

/// The acting controller replica's pod is deleted (grace 0) in steady state: the
/// standby replica takes over, the groups stay correct, and it handles the next failover.
pub(crate) async fn controller_deleted_steady(tb: &Testbed) -> Result<()> {
    let before = tb.wait_controllers_settled(WAIT).await?;
    let app_before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    delete_acting_controller(tb, &before, &DeleteParams::default().grace_period(0)).await?;
    // The app group was not disturbed.
    let app_after = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        app_after.active.uid() == app_before.active.uid(),
        "the controller takeover moved the app's active pod"
    );
    // The new acting replica does its job.
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover(tb, &f).await?;
    Ok(())
}

/// The acting controller replica's pod is deleted right after the active app pod was:
/// the standby replica takes over and finishes the failover.
pub(crate) async fn controller_deleted_during_failover(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = app.active.clone();
    let t0 = tb.trigger(&old, Trigger::ForceDelete).await?;
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(
        &ctrl.active.name_any(),
        &DeleteParams::default().grace_period(0),
    )
    .await?;
    let new = tb
        .wait_new_active(
            APP_NAMESPACE,
            APP_GROUP,
            &old.uid().unwrap_or_default(),
            WAIT,
        )
        .await?;
    let new_ip = pod_ip(&new).context("new active has no IP")?;
    tb.wait_endpoints(APP_NAMESPACE, APP_SERVICE, &[&new_ip], WAIT)
        .await?;
    let state = tb
        .wait_app_role(APP_NAMESPACE, &new.name_any(), ACTIVE, WAIT)
        .await?;
    // The new acting replica promotes after the handover (its predecessor's renew deadline,
    // then one application lease: 3 s), time enough for the ReplicaSet's replacement of the
    // deleted pod to be a Ready standby too; created and Ready within the same second as the
    // other standby, it ties on age and may be the one promoted. Either way a standby.
    let mut standby_before = app.standbys;
    let t0_seconds = t0.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let created_after_trigger = new
        .creation_timestamp()
        .is_some_and(|t| t.0.as_second() >= t0_seconds);
    if created_after_trigger && !standby_before.iter().any(|p| p.uid() == new.uid()) {
        println!(
            "  the replacement {} was promoted (a standby by then)",
            new.name_any()
        );
        standby_before.push(new.clone());
    }
    let f = testbed::Failover {
        trigger: Trigger::ForceDelete,
        timeline: tb
            .history
            .timeline(t0, &old, &new, APP_NAMESPACE, APP_SERVICE, Some(&state)),
        old,
        new,
        standby_before,
        app_state: state,
    };
    check_failover(tb, &f).await?;
    let holder = wait_lease_moved(tb, &ctrl.active.name_any(), WAIT).await?;
    let after = tb.wait_controllers_settled(WAIT).await?;
    ensure!(
        after.active.name_any() == holder,
        "acting replica is not the Lease holder"
    );
    Ok(())
}

/// Graceful handover: the acting replica's pod is deleted gracefully (the node sends
/// SIGTERM), it releases the Lease and the standby replica takes over.
pub(crate) async fn controller_sigterm_handover(tb: &Testbed) -> Result<()> {
    let before = tb.wait_controllers_settled(WAIT).await?;
    // The handover did not wait for the old pod's grace period to run out: the old pod
    // object was still there (terminating) or exited cleanly on SIGTERM.
    let after = delete_acting_controller(tb, &before, &DeleteParams::default()).await?;
    ensure!(
        after.active.uid() != before.active.uid(),
        "the old replica is still acting"
    );
    // The new acting replica does its job.
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover(tb, &f).await?;
    Ok(())
}

/// The controller runs with the app namespace listed twice (`HAPOD_NAMESPACES=a,a`, two
/// watches of one namespace). A few rounds of: a force-delete failover promotes the standby
/// (the acting replica knew it) and leaves exactly one active; a takeover by the other replica
/// (which re-lists both watches) neither loses the active pod nor promotes another. The
/// controller's settings are restored afterwards.
pub(crate) async fn duplicate_namespaces(tb: &Testbed) -> Result<()> {
    const NAMESPACES_ENV: &str = "HAPOD_NAMESPACES";
    /// Each takeover is one more chance for the two re-lists to interleave.
    const ROUNDS: usize = 3;
    let twice = format!("{APP_NAMESPACE},{APP_NAMESPACE}");
    let result = async {
        set_controller_env(tb, NAMESPACES_ENV, Some(&twice)).await?;
        for round in 1..=ROUNDS {
            let f = failover_acked(tb, Trigger::ForceDelete).await?;
            check_failover(tb, &f)
                .await
                .with_context(|| format!("failover of round {round}/{ROUNDS}"))?;
            takeover_keeps_active(tb)
                .await
                .with_context(|| format!("takeover of round {round}/{ROUNDS}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        // The replicas that ran with the duplicate namespaces are gone after the restore.
        println!(
            "  before restoring the controller's namespaces:\n{}",
            tb.diagnostics().await
        );
    }
    let restored = set_controller_env(tb, NAMESPACES_ENV, None).await;
    result?;
    restored.context("restoring the controller's namespaces")?;
    tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    Ok(())
}

/// Deletes the acting controller replica (grace 0): another replica takes over, which
/// (re-)lists its watches. The app's active pod stays the same, alone, and the new acting
/// replica promotes nobody.
async fn takeover_keeps_active(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let mut promotions_before = Vec::new();
    for standby in &ctrl.standbys {
        let counted = tb.controller_metric(standby, PROMOTIONS, &[]).await?;
        promotions_before.push((standby.name_any(), counted));
    }
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let acting = delete_acting_controller(tb, &ctrl, &DeleteParams::default().grace_period(0))
        .await?
        .active;
    assert_active_stays(tb, &app.active, Duration::from_secs(3))
        .await
        .context("the takeover moved the app's active pod")?;
    let holder = acting.name_any();
    // A replica started after the deletion counts from 0.
    let before = promotions_before
        .iter()
        .find_map(|(name, counted)| (*name == holder).then_some(*counted))
        .unwrap_or(0.0);
    let promotions = tb.controller_metric(&acting, PROMOTIONS, &[]).await?;
    ensure!(
        promotions == before,
        "the new acting replica {holder} promoted a pod after re-listing \
         ({PROMOTIONS} {before} -> {promotions})"
    );
    Ok(())
}

/// Deletes the acting controller replica's pod (`params`: grace 0, or graceful) and waits
/// until another replica holds the Lease and acts; returns the replicas settled after that
/// takeover. That replica is usually the standby of `before`, but may be the deleted one's
/// replacement: when the deleted replica releases the Lease while the standby's takeover
/// write is in flight, the standby's write conflicts, and a replacement that has just started
/// may take the released Lease first. Either is a correct takeover.
async fn delete_acting_controller(
    tb: &Testbed,
    before: &testbed::Settled,
    params: &DeleteParams,
) -> Result<testbed::Settled> {
    let acting = before.active.name_any();
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(&acting, params).await?;
    let holder = wait_lease_moved(tb, &acting, WAIT).await?;
    if !before.standbys.iter().any(|p| p.name_any() == holder) {
        println!("  the Lease went to {holder}, a replica started after the deletion");
    }
    let after = tb.wait_controllers_settled(WAIT).await?;
    ensure!(
        after.active.name_any() == holder,
        "acting replica {} but Lease holder {holder}",
        after.active.name_any()
    );
    Ok(after)
}

/// Sets (`Some`) or removes (`None`) an environment variable of the controller Deployment's
/// container and waits until the rollout finished and the replicas settled again.
async fn set_controller_env(tb: &Testbed, name: &str, value: Option<&str>) -> Result<()> {
    let assignment = match value {
        Some(v) => format!("{name}={v}"),
        None => format!("{name}-"),
    };
    let deployment = format!("deployment/{CONTROLLER_NAME}");
    tokio::task::block_in_place(|| {
        tb.kubectl(&[
            "-n",
            CONTROLLER_NAMESPACE,
            "set",
            "env",
            &deployment,
            &assignment,
        ])
    })
    .with_context(|| format!("setting the controller's {assignment}"))?;
    let settled = tb.roll_out_controller(2 * WAIT).await?;
    for p in std::iter::once(&settled.active).chain(&settled.standbys) {
        let got = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref());
        ensure!(
            got == value,
            "controller pod {} has {name}={got:?} after the rollout, want {value:?}",
            p.name_any()
        );
    }
    Ok(())
}

/// Waits until the Lease is held by another replica than `old`, and returns the holder.
async fn wait_lease_moved(tb: &Testbed, old: &str, timeout: Duration) -> Result<String> {
    let what = format!("the Lease to move away from {old}");
    await_condition(what, timeout, Duration::from_millis(50), || async {
        Ok(match tb.lease_holder().await? {
            Some(h) if h != old => Check::Done(h),
            h => Check::NotYet(format!("held by {h:?}")),
        })
    })
    .await
}

/// Waits until the active app pod stays the same pod, alone, for `window`.
async fn assert_active_stays(tb: &Testbed, active: &Pod, window: Duration) -> Result<()> {
    let until = Instant::now() + window;
    while Instant::now() < until {
        let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
        let now = view.active();
        ensure!(
            now.len() == 1 && now[0].uid() == active.uid(),
            "the active pod was {}; now the active pods are {:?}\n{}",
            active.name_any(),
            now.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            view.table()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
