//! Detection beyond the API: failures the API learns of late (a hung process, a partition
//! between the controller and the active pod) are found from the agents' reports, and the
//! applications' own journals show the old one stopped acting before the new one started.

use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::testbed::{
    APP_GROUP, APP_NAMESPACE, APP_REPLICAS, Fault, Journals, STANDBY, Testbed, monotonic_nanos,
    pod_ip, pod_ready, pod_role,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::common::{PROMOTIONS, WAIT, promotions};

/// Every process of the active app pod is stopped (SIGSTOP): its agent stops reporting while
/// the standby's still answers, so the controller replaces it (reason `unresponsive`) once
/// its grant is over, usually before the readiness probe times out (on a loaded machine the
/// probe may win the race: reason `not_ready`). After the processes continue, the old pod
/// rejoins as standby; the journals show no overlap.
pub(crate) async fn hung_active_is_replaced(tb: &Testbed) -> Result<()> {
    unresponsive_active_is_replaced(tb, &["unresponsive", "not_ready"], |_, active| {
        let fault = Fault::hang(active)?;
        if let Fault::Hang { stopped, .. } = &fault {
            println!(
                "  stopped every process of the active {} (pids {:?})",
                active.name_any(),
                stopped.pids()
            );
        }
        Ok(fault)
    })
    .await
}

/// The acting controller and the active app pod are cut from each other (every packet between
/// their addresses dropped inside the testbed's network namespace; the API still sees the pod
/// Ready): the active's reports stop while the standby's come, so it is replaced once its
/// grant is over, and the cut-off application stops acting by itself although no standby
/// order reaches it. Healed, it rejoins as standby.
pub(crate) async fn partitioned_active_is_replaced(tb: &Testbed) -> Result<()> {
    unresponsive_active_is_replaced(tb, &["unresponsive"], |ctrl, active| {
        println!(
            "  cutting the acting controller {} ({}) from the active {} ({})",
            ctrl.name_any(),
            pod_ip(ctrl).unwrap_or_default(),
            active.name_any(),
            pod_ip(active).unwrap_or_default()
        );
        Fault::cut(ctrl, active)
    })
    .await
}

/// Inflicts a fault on the active app pod (given the acting controller and that pod), checks
/// that another pod becomes active for one of `reasons` while it lasts, ends it, and checks
/// that the old pod rejoins as standby and that the applications never acted at once.
async fn unresponsive_active_is_replaced(
    tb: &Testbed,
    reasons: &[&str],
    inflict: impl FnOnce(&Pod, &Pod) -> Result<Fault>,
) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let promoted_before = promotions(tb, &ctrl, reasons).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let old_uid = old.uid().context("the active pod has no UID")?;
    let started = monotonic_nanos();
    let t0 = Instant::now();
    let fault = inflict(&ctrl, &old)?;
    let new = tb
        .wait_new_active(APP_NAMESPACE, APP_GROUP, &old_uid, WAIT)
        .await;
    let labeled = t0.elapsed();
    // The API's view of the old pod when the role moved.
    let old_then = tb.pod(APP_NAMESPACE, &old.name_any()).await;
    let ended = fault.end();
    let new = new.context("no new active while the fault lasted")?;
    ended?;
    let old_ready_then = old_then?.as_ref().is_some_and(pod_ready);
    println!(
        "  {} labeled active {:.0} ms after the fault (the old pod still Ready in the API: \
         {old_ready_then})",
        new.name_any(),
        labeled.as_secs_f64() * 1000.0
    );
    let promoted = promotions(tb, &ctrl, reasons).await?;
    ensure!(
        promoted > promoted_before,
        "the acting controller counted no promotion for reasons {reasons:?} \
         ({PROMOTIONS} stayed at {promoted_before})"
    );

    // The old pod was not deleted: it rejoins as standby.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not settle after the fault ended")?;
    ensure!(
        settled.active.uid() == new.uid(),
        "the role moved again after the fault ended: {} is active",
        settled.active.name_any()
    );
    let old_now = settled
        .standbys
        .iter()
        .find(|p| p.uid().as_deref() == Some(old_uid.as_str()))
        .with_context(|| format!("{} did not rejoin as standby", old.name_any()))?;
    ensure!(pod_role(old_now) == Some(STANDBY));

    // The applications' own evidence: the new one acted only after the old one stopped.
    let (last_old, first_new) = handover_after(&tb.journals()?, &old_uid, started)?;
    println!(
        "  the old app's last step {:.0} ms after the fault, the new app's first {:.0} ms \
         after it (no app acting for {:.0} ms)",
        (last_old - started) as f64 / 1e6,
        (first_new - started) as f64 / 1e6,
        (first_new - last_old) as f64 / 1e6,
    );
    Ok(())
}

/// The old pod's last step and the first step of another pod of its group after `since`;
/// fails on any overlap in the group.
pub(crate) fn handover_after(
    journals: &Journals,
    old_uid: &str,
    since: i128,
) -> Result<(i128, i128)> {
    let overlaps = journals.overlaps();
    ensure!(
        overlaps.is_empty(),
        "applications acted at once: {}",
        overlaps[0]
    );
    let last_old = journals
        .steps_of(old_uid)
        .map(|s| s.at_nanos)
        .max()
        .context("the old active's journal has no step")?;
    let group = format!("{APP_NAMESPACE}/{APP_GROUP}");
    let first_new = journals
        .groups
        .get(&group)
        .into_iter()
        .flatten()
        .find(|s| s.uid != old_uid && s.at_nanos > since)
        .map(|s| s.at_nanos)
        .context("no other app of the group acted after the fault")?;
    ensure!(
        last_old < first_new,
        "the old app acted at {last_old} ns, after the new one started at {first_new} ns"
    );
    Ok((last_old, first_new))
}
