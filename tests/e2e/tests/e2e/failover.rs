//! The sample app's group: steady state and each way its active pod fails over.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    self, ACTIVE, APP_CONTAINER, APP_GROUP, APP_HTTP_PORT, APP_NAMESPACE, APP_REPLICAS,
    APP_SERVICE, CONTROLLER_NAMESPACE, CRITICAL_CONTAINER, EPOCH_ANNOTATION, NONCRITICAL_CONTAINER,
    Testbed, Trigger, pod_epoch, pod_ip, pod_ready, pod_role, restart_count,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::common::{PROMOTIONS, WAIT, check_failover, failover_acked, promotions};

/// Both pods of the ReplicaSet come up, exactly one is active, the Service's
/// EndpointSlice lists only it, and the demo app applied its notification.
pub(crate) async fn steady_state(tb: &Testbed) -> Result<()> {
    let s = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    println!("{}", view.table());
    ensure!(view.pods.len() == 2, "{} pods, want 2", view.pods.len());
    ensure!(view.active().len() == 1, "{} active", view.active().len());
    let ip = pod_ip(&s.active).context("active has no IP")?;
    ensure!(
        testbed::allowed_address(ip.parse()?),
        "pod IP {ip} is neither loopback nor a pod IP of the private network namespace"
    );
    // Every address of the Service's EndpointSlices, ready or not: only the active pod.
    let all = all_service_addresses(tb).await?;
    ensure!(
        all == vec![ip.clone()],
        "EndpointSlice addresses {all:?}, want [{ip}]"
    );
    // The app received and applied its notification: role active, the pod's epoch.
    let epoch = pod_epoch(&s.active).context("active pod has no epoch annotation")?;
    let st = tb.app_state(&s.active).await?;
    ensure!(
        st.role.as_deref() == Some(ACTIVE) && st.epoch == Some(epoch),
        "active app /state {st:?}, want role active epoch {epoch}"
    );
    ensure!(st.message_id.is_some(), "no message id in {st:?}");
    // The agent's own metrics say the same: the active acts, the standbys do not.
    let acting = |pod| tb.app_metric(pod, "hapod_receiver_acting", &[]);
    ensure!(
        acting(&s.active).await? == 1.0,
        "the active's agent metrics say it does not act"
    );
    ensure!(
        st.pod.as_deref().is_none_or(|p| p == s.active.name_any()),
        "app state names pod {:?}",
        st.pod
    );
    for sb in &s.standbys {
        let st = tb.app_state(sb).await?;
        ensure!(
            st.role.as_deref() != Some(ACTIVE),
            "standby {} app believes it is active: {st:?}",
            sb.name_any()
        );
        let active = [("role", ACTIVE)];
        ensure!(
            acting(sb).await? == 0.0
                && tb.app_metric(sb, "hapod_receiver_role", &active).await? == 0.0,
            "standby {}'s agent metrics say it is active",
            sb.name_any()
        );
    }
    // "The Service", reached through its EndpointSlice: the active pod answers.
    let (code, body) = testbed::http_get(&ip, APP_HTTP_PORT, "/", Duration::from_secs(2)).await?;
    ensure!(code == 200, "GET / answered {code}");
    ensure!(
        body.contains(&format!("pod={}", s.active.name_any())) && body.contains("role=active"),
        "GET / via the endpoint answered {body:?}"
    );
    // The controller replicas: two, one acting and holding the Lease.
    let c = tb.wait_controllers_settled(WAIT).await?;
    println!(
        "  acting controller {}, standby {:?}",
        c.active.name_any(),
        c.standbys.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    heartbeat_counted(tb, &c.active, &c.standbys).await
}

/// The application lease's heartbeat, on the controllers' counters: the acting replica sends
/// an order to each pod of the group per heartbeat and hears a report for each; a standby
/// replica sends none.
async fn heartbeat_counted(tb: &Testbed, acting: &Pod, standbys: &[Pod]) -> Result<()> {
    const SENT: &str = "hapod_lease_orders_sent_total";
    const RECEIVED: &str = "hapod_lease_reports_received_total";
    let counters = |pod: &Pod| {
        let pod = pod.clone();
        async move {
            let sent = tb.controller_metric(&pod, SENT, &[]).await?;
            let received = tb.controller_metric(&pod, RECEIVED, &[]).await?;
            anyhow::Ok((sent, received))
        }
    };
    let before = counters(acting).await?;
    let idle_before = futures::future::try_join_all(standbys.iter().map(counters)).await?;
    // Two heartbeats' worth (deploy/base beats every 100 ms) to every pod, each answered.
    let want = 2.0 * APP_REPLICAS as f64;
    let what = format!(
        "{SENT} and {RECEIVED} of {} to grow by {want}",
        acting.name_any()
    );
    let after = await_condition(what, WAIT, Duration::from_millis(100), || async {
        let now = counters(acting).await?;
        Ok(if now.0 - before.0 >= want && now.1 - before.1 >= want {
            Check::Done(now)
        } else {
            Check::NotYet(format!("{now:?} from {before:?}"))
        })
    })
    .await?;
    println!(
        "  heartbeat: {:?} -> {after:?} (orders sent, reports received)",
        before
    );
    let idle_after = futures::future::try_join_all(standbys.iter().map(counters)).await?;
    ensure!(
        idle_after.iter().zip(&idle_before).all(|(a, b)| a.0 == b.0),
        "a standby controller replica sent orders: {idle_before:?} -> {idle_after:?}"
    );
    Ok(())
}

/// Force delete (grace 0) of the active pod.
pub(crate) async fn force_delete(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover_old_gone(tb, &f, "force-deleted").await
}

/// Graceful delete of the active pod: the failover happens at the deletionTimestamp,
/// while the old pod still runs out its grace period, not when it is finally gone.
pub(crate) async fn graceful_delete(tb: &Testbed) -> Result<()> {
    // The app relinquishes its role on SIGTERM; the controller learns of the delete from that
    // report or from the deletionTimestamp, whichever comes first.
    const REASONS: [&str; 2] = ["terminating", "relinquished"];
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = promotions(tb, &ctrl, &REASONS).await?;
    let f = failover_acked(tb, Trigger::GracefulDelete).await?;
    // The controller promoted at the start of the deletion, not at the DELETED event.
    let after = promotions(tb, &ctrl, &REASONS).await?;
    ensure!(
        after > before,
        "the acting controller counted no promotion for a terminating or relinquishing \
         active ({PROMOTIONS}{{reason=\"terminating\"|\"relinquished\"}} stayed at {before})"
    );
    // Promotion happened before the old pod's final deletion event.
    let records = tb.history.pod_records();
    // Its last promotion: an earlier scenario may have made the same pod active before.
    let new_uid = f.new.uid().unwrap_or_default();
    let promoted_rv = records
        .iter()
        .filter(|r| r.uid == new_uid)
        .scan(false, |was_active, r| {
            let promoted = r.is_active() && !*was_active;
            *was_active = r.is_active();
            Some(promoted.then_some(r.rv))
        })
        .flatten()
        .last()
        .context("no promotion record of the new active")?;
    let old_uid = f.old.uid().unwrap_or_default();
    let terminating_rv = records
        .iter()
        .find(|r| r.uid == old_uid && r.terminating)
        .map(|r| r.rv)
        .context("the watch never showed the old pod with a deletionTimestamp")?;
    let deleted_rv = records
        .iter()
        .find(|r| r.uid == old_uid && r.deleted)
        .map(|r| r.rv);
    println!(
        "  old pod terminating at rv {terminating_rv}, new active at rv {promoted_rv}, old pod gone at rv {deleted_rv:?}"
    );
    ensure!(
        promoted_rv > terminating_rv,
        "promotion (rv {promoted_rv}) before the deletionTimestamp (rv {terminating_rv})?"
    );
    let grace = f
        .old
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30) as u64;
    if let Some(p) = f.timeline.promoted_unix_nanos {
        let after = Duration::from_nanos(p.saturating_sub(f.timeline.trigger_unix_nanos));
        ensure!(
            after < Duration::from_secs(grace),
            "promotion came {after:?} after the delete call, not before the {grace} s grace period ended"
        );
    }
    // The old app got SIGTERM during its grace period and relinquished its role: it stood
    // down and told the controller, rather than leaving it to wait out the grant.
    let old_log = tb.container_log(&f.old, APP_CONTAINER)?;
    ensure!(
        old_log.contains("role relinquished"),
        "the old active's app never relinquished its role; its log ends:\n{}",
        old_log
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    check_failover(tb, &f).await?;
    Ok(())
}

/// `/tmp/killme` in the critical container: it really aborts, its pod is deleted, the
/// standby takes over.
pub(crate) async fn critical_crash(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::KillCritical).await?;
    let old_uid = f.old.uid().unwrap_or_default();
    // The critical container really stopped running (as reported by the node).
    let crashed = tb
        .history
        .pod_records()
        .into_iter()
        .any(|r| r.uid == old_uid && r.not_running.iter().any(|c| c == CRITICAL_CONTAINER));
    ensure!(
        crashed,
        "the watch never showed {} of {} not running",
        CRITICAL_CONTAINER,
        f.old.name_any()
    );
    // The old pod is deleted by the controller.
    wait_gone(tb, APP_NAMESPACE, &f.old, WAIT).await?;
    check_failover_old_gone(tb, &f, "crashed").await
}

/// The active pod becomes not-Ready (its readiness probe fails for real).
pub(crate) async fn not_ready(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::Unready).await?;
    let old = tb.pod(APP_NAMESPACE, &f.old.name_any()).await?;
    if let Some(old) = old.filter(|p| p.uid() == f.old.uid()) {
        // The controller kept the pod: it must be demoted; let it recover and rejoin.
        ensure!(
            pod_role(&old) != Some(ACTIVE),
            "the not-Ready pod {} is still labeled active",
            old.name_any()
        );
        tb.remove_in_container(&old, APP_CONTAINER, "unready")?;
    }
    let settled = check_failover(tb, &f).await?;
    println!(
        "  standby after recovery: {:?}",
        settled
            .standbys
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The annotation giving a group its not-Ready grace, in milliseconds.
const NOT_READY_GRACE_ANNOTATION: &str = "hapod.io/not-ready-grace-ms";
/// The grace `active_not_ready_grace` gives the group.
const NOT_READY_GRACE: Duration = Duration::from_millis(3000);

/// Every pod of the group annotated with a not-Ready grace of 3 s, the active made not Ready
/// (as in `active_not_ready`): it keeps the role for 1.5 s after the API shows it not Ready,
/// then the role moves to the standby (not before 2.5 s, reason `not_ready`). The pod recovers
/// and rejoins as standby; the annotation is removed, also when the scenario fails.
pub(crate) async fn not_ready_grace(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let failed_over = graced_failover(tb, &ctrl, before).await;
    // Whatever happened, for the next scenarios: the pod recovers, no pod keeps the grace.
    let recovered = tb.remove_in_container(&old, APP_CONTAINER, "unready");
    let cleared = set_not_ready_grace(tb, None).await;
    let f = failed_over?;
    recovered?;
    cleared?;
    check_failover(tb, &f).await?;
    Ok(())
}

/// The failover of [`not_ready_grace`], from the settled group `before`.
async fn graced_failover(
    tb: &Testbed,
    ctrl: &Pod,
    before: testbed::Settled,
) -> Result<testbed::Failover> {
    let old = before.active.clone();
    let promoted_before = promotions(tb, ctrl, &["not_ready"]).await?;
    let grace_ms = NOT_READY_GRACE.as_millis().to_string();
    set_not_ready_grace(tb, Some(&grace_ms)).await?;
    let traffic = tb.watch_traffic().await?;
    let t = tb.trigger(&old, Trigger::Unready).await?;
    let unready_seen = await_condition(
        format!("{} not Ready", old.name_any()),
        WAIT,
        Duration::from_millis(50),
        || async {
            Ok(match tb.pod(APP_NAMESPACE, &old.name_any()).await? {
                Some(p) if !pod_ready(&p) => Check::Done(std::time::Instant::now()),
                _ => Check::NotYet("still Ready".into()),
            })
        },
    )
    .await?;
    while unready_seen.elapsed() < NOT_READY_GRACE / 2 {
        let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
        let active = view.active();
        ensure!(
            active.len() == 1 && active[0].uid() == old.uid(),
            "the role moved {:?} after the API showed the active not Ready, within the grace \
             of {NOT_READY_GRACE:?}:\n{}",
            unready_seen.elapsed(),
            view.table()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  {} not Ready, still active {:?} later",
        old.name_any(),
        unready_seen.elapsed()
    );
    let (new, app_state, timeline) = tb.await_failover(&old, t, traffic, WAIT).await?;
    let moved_after = unready_seen.elapsed();
    ensure!(
        moved_after >= NOT_READY_GRACE - Duration::from_millis(500),
        "the role moved {moved_after:?} after the API showed the active not Ready, before \
         the grace of {NOT_READY_GRACE:?} was over"
    );
    let promoted = promotions(tb, ctrl, &["not_ready"]).await?;
    ensure!(
        promoted > promoted_before,
        "the acting controller counted no promotion for the not-Ready active \
         ({PROMOTIONS}{{reason=\"not_ready\"}} stayed at {promoted_before})"
    );
    println!(
        "  role moved to {} {moved_after:?} after {} was seen not Ready",
        new.name_any(),
        old.name_any()
    );
    Ok(testbed::Failover {
        trigger: Trigger::Unready,
        old,
        new,
        standby_before: before.standbys,
        app_state,
        timeline,
    })
}

/// Annotates every pod of the group with the not-Ready grace `ms`, or removes the annotation
/// (`None`).
async fn set_not_ready_grace(tb: &Testbed, ms: Option<&str>) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let patch = serde_json::json!({"metadata": {"annotations": {NOT_READY_GRACE_ANNOTATION: ms}}});
    for pod in tb.group_view(APP_NAMESPACE, APP_GROUP).await?.pods {
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("annotating {}", pod.name_any()))?;
    }
    Ok(())
}

/// `/tmp/killme` in the non-critical `sidecar` container of the active pod: the pod is
/// not deleted (the node restarts the sidecar in place), but it is not Ready meanwhile, so the
/// role moves to the ready standby (reason `not_ready`); the pod rejoins as standby.
pub(crate) async fn noncritical_crash(tb: &Testbed) -> Result<()> {
    const NOT_READY: [(&str, &str); 1] = [("reason", "not_ready")];
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let promoted_before = tb.controller_metric(&ctrl, PROMOTIONS, &NOT_READY).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let restarts_before =
        restart_count(&old, NONCRITICAL_CONTAINER).context("no sidecar container status")?;
    let f = failover_acked(tb, Trigger::KillNonCritical).await;
    // Stop the crash loop, whatever happened.
    tb.remove_in_container(&old, NONCRITICAL_CONTAINER, "killme")?;
    let f = f?;
    ensure!(
        f.old.uid() == old.uid(),
        "the failover started from another pod"
    );
    let promoted = tb.controller_metric(&ctrl, PROMOTIONS, &NOT_READY).await?;
    ensure!(
        promoted > promoted_before,
        "the acting controller counted no promotion for a not-Ready active \
         ({PROMOTIONS}{{reason=\"not_ready\"}} stayed at {promoted_before})"
    );
    let settled = check_failover(tb, &f).await?;
    // Not deleted: the same pod (UID) is back, as standby, its sidecar restarted in place.
    let now = settled
        .standbys
        .iter()
        .find(|p| p.uid() == old.uid())
        .with_context(|| format!("{} (same UID) did not rejoin as standby", old.name_any()))?;
    let restarts = restart_count(now, NONCRITICAL_CONTAINER).unwrap_or_default();
    ensure!(
        restarts > restarts_before,
        "the sidecar's restartCount stayed at {restarts_before}"
    );
    let old_uid = old.uid().unwrap_or_default();
    ensure!(
        !tb.history
            .pod_records()
            .iter()
            .any(|r| r.uid == old_uid && (r.terminating || r.deleted)),
        "{} was deleted after its non-critical container crashed",
        old.name_any()
    );
    println!(
        "  {} stayed (sidecar restarts {restarts_before} -> {restarts}), rejoined as standby",
        old.name_any()
    );
    Ok(())
}

/// The active pod carries an epoch whose term is far above the acting one, then is
/// force-deleted: the failover still happens, with an epoch of the acting term, and the
/// anomaly is reported (Event `FutureEpoch` on that pod, `hapod_epoch_anomalies_total`).
pub(crate) async fn far_future_epoch(tb: &Testbed) -> Result<()> {
    const FAR_FUTURE_EPOCH: u64 = (4294967294u64 << 32) | 7;
    const EPOCH_ANOMALIES: &str = "hapod_epoch_anomalies_total";
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let anomalies_before = tb.controller_metric(&ctrl, EPOCH_ANOMALIES, &[]).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    api.patch(
        &old.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            EPOCH_ANNOTATION: FAR_FUTURE_EPOCH.to_string()
        }}})),
    )
    .await?;
    let traffic = tb.watch_traffic().await?;
    let t = tb.trigger(&old, Trigger::ForceDelete).await?;
    let (new, app_state, timeline) = match tb.await_failover(&old, t, traffic, WAIT).await {
        Ok(f) => f,
        Err(e) => {
            // Give the next scenarios a working controller: a fresh acting replica.
            println!("  no failover: deleting the acting controller replica to recover");
            let ctrl_api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
            ctrl_api
                .delete(&ctrl.name_any(), &DeleteParams::default().grace_period(0))
                .await?;
            return Err(e).with_context(|| {
                format!(
                    "no failover after force-deleting the active pod {} that carried the \
                     far-future epoch {FAR_FUTURE_EPOCH} (term {})",
                    old.name_any(),
                    FAR_FUTURE_EPOCH >> 32
                )
            });
        }
    };
    let term = acting_term(tb).await?;
    let epoch = pod_epoch(&new).context("the new active has no epoch")?;
    ensure!(
        epoch >> 32 == term,
        "the new active's epoch {epoch} is of term {}, the acting term is {term}",
        epoch >> 32
    );
    // `old` as read before the annotation: its epoch is the one the controller issued, which
    // the new one must exceed.
    let f = testbed::Failover {
        trigger: Trigger::ForceDelete,
        old,
        new,
        standby_before: before.standbys,
        app_state,
        timeline,
    };
    check_failover(tb, &f).await?;

    let what = format!(
        "an Event with reason FutureEpoch about {} (uid {})",
        f.old.name_any(),
        f.old.uid().unwrap_or_default()
    );
    let events = await_condition(what, WAIT, Duration::from_millis(200), || async {
        let events = pod_events(tb, &f.old, "FutureEpoch").await?;
        Ok(if events.is_empty() {
            Check::NotYet("none yet".into())
        } else {
            Check::Done(events)
        })
    })
    .await?;
    println!(
        "  Event FutureEpoch: {:?}",
        events[0].message.as_deref().unwrap_or("")
    );
    let anomalies = tb.controller_metric(&ctrl, EPOCH_ANOMALIES, &[]).await?;
    ensure!(
        anomalies > anomalies_before,
        "the acting controller {} counted no epoch anomaly ({EPOCH_ANOMALIES} stayed at \
         {anomalies_before})",
        ctrl.name_any()
    );
    Ok(())
}

/// All endpoint addresses (ready or not) of the sample app's Service.
async fn all_service_addresses(tb: &Testbed) -> Result<Vec<String>> {
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let list = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={APP_SERVICE}")))
        .await?;
    let mut v: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| {
            s.endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.clone())
        })
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// [`check_failover`], and the old active pod (`what`: how it went) did not rejoin the
/// group.
pub(crate) async fn check_failover_old_gone(
    tb: &Testbed,
    f: &testbed::Failover,
    what: &str,
) -> Result<()> {
    let settled = check_failover(tb, f).await?;
    ensure!(
        settled.standbys.iter().all(|p| p.uid() != f.old.uid()),
        "the {what} pod is still part of the group"
    );
    Ok(())
}

/// Waits until a pod is gone (by name and UID).
pub(crate) async fn wait_gone(tb: &Testbed, ns: &str, pod: &Pod, timeout: Duration) -> Result<()> {
    let what = format!("pod {ns}/{} to be gone", pod.name_any());
    await_condition(what, timeout, Duration::from_millis(100), || async {
        Ok(match tb.pod(ns, &pod.name_any()).await? {
            Some(p) if p.uid() == pod.uid() => Check::NotYet("it still exists".into()),
            _ => Check::Done(()),
        })
    })
    .await
}

/// The election term annotation on the Lease.
const TERM_ANNOTATION: &str = "hapod.io/term";

/// The election term of the acting controller replica (the Lease's `hapod.io/term`).
async fn acting_term(tb: &Testbed) -> Result<u64> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    let lease = api.get(testbed::LEASE_NAME).await?;
    lease
        .annotations()
        .get(TERM_ANNOTATION)
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("the Lease has no numeric {TERM_ANNOTATION} annotation"))
}

/// Core v1 Events about a pod (by UID) with `reason`.
async fn pod_events(
    tb: &Testbed,
    pod: &Pod,
    reason: &str,
) -> Result<Vec<k8s_openapi::api::core::v1::Event>> {
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let uid = pod.uid().unwrap_or_default();
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}
