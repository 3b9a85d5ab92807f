//! What the scenarios share: the wait bound, the failover checks, the controller's metrics.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    self, ACTIVE, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, APP_SERVICE, STANDBY, Testbed, Trigger,
    pod_epoch, pod_ip, pod_role,
};
use kube::ResourceExt;

/// Bound of every wait in a scenario (failover, settle, ...).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Asserts the invariants after a failover and waits until the ReplicaSet's replacement (or
/// the recovered old pod) joined as standby.
pub(crate) async fn check_failover(
    tb: &Testbed,
    f: &testbed::Failover,
) -> Result<testbed::Settled> {
    let old = f.old.name_any();
    let new = f.new.name_any();
    println!(
        "  {} {old} -> {new}\n{}",
        f.trigger.name(),
        f.timeline.render()
    );
    ensure!(f.old.uid() != f.new.uid(), "the active pod did not change");
    ensure!(
        f.standby_before.iter().any(|p| p.uid() == f.new.uid()),
        "the new active {new} was not the standby before the failover"
    );
    // Exactly one active right now.
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    let active = view.active();
    ensure!(
        active.len() == 1 && active[0].uid() == f.new.uid(),
        "after the failover the active pods are {:?}\n{}",
        active.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        view.table()
    );
    // The Service's endpoints moved to the new pod only.
    let new_ip = pod_ip(&f.new).context("new active has no IP")?;
    let eps = tb.service_endpoints(APP_NAMESPACE, APP_SERVICE).await?;
    ensure!(
        eps == vec![new_ip.clone()],
        "ready endpoints {eps:?}, want [{new_ip}]"
    );
    // Where kube-proxy forwards the ClusterIP (the real node), the Service's clients reached
    // the new active.
    ensure!(
        tb.node_kind() == testbed::NodeKind::Process || f.timeline.traffic_unix_nanos.is_some(),
        "no request to the Service's ClusterIP was answered by the new active {new}"
    );
    // The new active's app applied (and so acknowledged) the notification of its promotion,
    // with a newer epoch than the old one's (fencing token).
    let new_pod = tb
        .pod(APP_NAMESPACE, &new)
        .await?
        .context("new active pod vanished")?;
    let epoch = pod_epoch(&new_pod).context("new active has no epoch annotation")?;
    ensure!(
        f.app_state.role.as_deref() == Some(ACTIVE) && f.app_state.epoch == Some(epoch),
        "app state {:?} vs epoch annotation {epoch}",
        f.app_state
    );
    ensure!(
        f.app_state.pod.as_deref().is_none_or(|p| p == new),
        "app state names pod {:?}, want {new}",
        f.app_state.pod
    );
    if let Some(old_epoch) = pod_epoch(&f.old) {
        ensure!(
            epoch > old_epoch,
            "epoch did not increase: old {old_epoch}, new {epoch}"
        );
    }
    // The replacement (or the recovered old pod) joins as standby.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("group did not settle after the failover")?;
    ensure!(
        settled.active.uid() == f.new.uid(),
        "the active pod changed again while settling: {}",
        settled.active.name_any()
    );
    for s in &settled.standbys {
        ensure!(
            pod_role(s) == Some(STANDBY),
            "{} is not standby",
            s.name_any()
        );
        let st = tb.app_state(s).await?;
        ensure!(
            st.role.as_deref() != Some(ACTIVE),
            "standby {}'s app believes it is active: {st:?}",
            s.name_any()
        );
    }
    Ok(settled)
}

pub(crate) const ACKED_ACTIVE: [(&str, &str); 2] = [("role", "active"), ("outcome", "acked")];

pub(crate) const NOTIFICATIONS: &str = "hapod_notifications_total";

/// Application lease: agent reports that changed what an agent says, by the role reported.
pub(crate) const REPORTS: &str = "hapod_agent_reports_total";

pub(crate) const REPORTED_ACTIVE: [(&str, &str); 1] = [("role", "active")];

/// Pods labeled active by a controller replica, by `reason`.
pub(crate) const PROMOTIONS: &str = "hapod_promotions_total";

/// How many times the acting controller heard an agent take the active role: acknowledged
/// become-active notifications (version 1) plus reports of an agent acting active at a new
/// epoch (the application lease, on in `deploy/base`: orders replace notifications).
async fn active_taken(tb: &Testbed, ctrl: &k8s_openapi::api::core::v1::Pod) -> Result<f64> {
    let acked = tb
        .controller_metric(ctrl, NOTIFICATIONS, &ACKED_ACTIVE)
        .await?;
    let reported = tb
        .controller_metric(ctrl, REPORTS, &REPORTED_ACTIVE)
        .await?;
    Ok(acked + reported)
}

/// Runs a failover of the sample app and checks, on the acting controller's own metrics,
/// that the new active pod took its role (its ACK or its report received by the controller).
pub(crate) async fn failover_acked(tb: &Testbed, trigger: Trigger) -> Result<testbed::Failover> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = active_taken(tb, &ctrl).await?;
    let f = tb.failover(trigger, WAIT).await?;
    let what = format!(
        "the acting controller {} to hear the new active take its role \
         ({NOTIFICATIONS} acked/active + {REPORTS} active above {before})",
        ctrl.name_any()
    );
    await_condition(what, WAIT, Duration::from_millis(100), || async {
        let now = active_taken(tb, &ctrl).await?;
        Ok(if now > before {
            Check::Done(())
        } else {
            Check::NotYet(format!("still {now}"))
        })
    })
    .await?;
    Ok(f)
}

/// The acting controller's promotions for any of `reasons`.
pub(crate) async fn promotions(
    tb: &Testbed,
    ctrl: &k8s_openapi::api::core::v1::Pod,
    reasons: &[&str],
) -> Result<f64> {
    let mut sum = 0.0;
    for reason in reasons {
        sum += tb
            .controller_metric(ctrl, PROMOTIONS, &[("reason", reason)])
            .await?;
    }
    Ok(sum)
}
