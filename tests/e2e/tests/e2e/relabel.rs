//! The active pod relabeled out of its group and back.

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::testbed::{
    self, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, GROUP_LABEL, STANDBY, Testbed, pod_epoch,
    pod_group, pod_role,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::common::WAIT;

/// The active pod P is relabeled out of the group (it leaves the selector; the
/// controller promotes the standby Q; the ReplicaSet adds a pod), then back into it, still
/// labeled active. Within one reconcile exactly one pod of the group is active: Q, the highest
/// epoch, and P (unless the ReplicaSet removed it as the surplus pod) is demoted and its app
/// told it is standby.
pub(crate) async fn relabeled_out_and_back(tb: &Testbed) -> Result<()> {
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let p = before.active.clone();
    let result = relabel_out_and_back(tb, &before).await;
    // Whatever happened: P is the pod to drop if it is outside the group or a second active.
    if let Some(now) = tb
        .pod(APP_NAMESPACE, &p.name_any())
        .await?
        .filter(|now| now.uid() == p.uid())
    {
        let actives = tb
            .group_view(APP_NAMESPACE, APP_GROUP)
            .await?
            .active()
            .len();
        if pod_group(&now) != Some(APP_GROUP) || actives > 1 {
            println!("  cleanup: force-deleting {}", p.name_any());
            let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
            api.delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await?;
        }
    }
    tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not return to its normal replicas after the relabeling")?;
    result
}

async fn relabel_out_and_back(tb: &Testbed, before: &testbed::Settled) -> Result<()> {
    const OUTSIDE_GROUP: &str = "hapod-debug";
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let p = &before.active;
    let name = p.name_any();
    let relabel = |group: &'static str| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {GROUP_LABEL: group}}})),
            )
            .await
            .with_context(|| format!("relabeling {name} {GROUP_LABEL}={group}"))
        }
    };

    relabel(OUTSIDE_GROUP).await?;
    let q = tb
        .wait_new_active(APP_NAMESPACE, APP_GROUP, &p.uid().unwrap_or_default(), WAIT)
        .await
        .with_context(|| format!("no new active after {name} left the group"))?;
    ensure!(
        before.standbys.iter().any(|s| s.uid() == q.uid()),
        "the new active {} was not the standby",
        q.name_any()
    );
    // The ReplicaSet's replacement joined as standby.
    let out = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .with_context(|| format!("the group did not settle with {name} outside it"))?;
    ensure!(out.active.uid() == q.uid(), "the active changed again");
    let q_epoch = pod_epoch(&out.active).context("the new active has no epoch")?;
    println!(
        "  {name} left the group: {} active (epoch {q_epoch}), {} standby",
        q.name_any(),
        out.standbys
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let back = relabel(APP_GROUP).await?;
    let rv: u64 = back
        .resource_version()
        .and_then(|v| v.parse().ok())
        .context("the relabeled pod has no resourceVersion")?;
    // This second active is the scenario's own doing; what the controller does about it is
    // asserted below.
    tb.history.injected_active(&p.uid().unwrap_or_default(), rv);
    println!(
        "  {name} back in the group at rv {rv}, labeled {:?}",
        pod_role(&back)
    );

    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .with_context(|| {
            format!(
                "after {name} rejoined the group still labeled active, the group did not \
                 settle to one active (want {} alone, the highest epoch)",
                q.name_any()
            )
        })?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    println!("{}", view.table());
    match view.pods.iter().find(|pod| pod.uid() == q.uid()) {
        Some(_) => ensure!(
            settled.active.uid() == q.uid(),
            "{} is active, want {} (highest epoch {q_epoch})",
            settled.active.name_any(),
            q.name_any()
        ),
        None => ensure!(
            pod_epoch(&settled.active).is_some_and(|e| e > q_epoch),
            "the ReplicaSet removed {}; the active {} has no epoch above {q_epoch}",
            q.name_any(),
            settled.active.name_any()
        ),
    }
    let max_epoch = view.pods.iter().filter_map(pod_epoch).max();
    ensure!(
        pod_epoch(&settled.active) == max_epoch,
        "the active {} does not carry the group's highest epoch {max_epoch:?}",
        settled.active.name_any()
    );
    if settled.standbys.iter().any(|s| s.uid() == p.uid()) {
        let st = tb
            .wait_app_role(APP_NAMESPACE, &name, STANDBY, WAIT)
            .await
            .with_context(|| format!("the app of {name} was never told it is standby"))?;
        println!("  {name} rejoined as standby; its app: {st:?}");
    } else {
        println!("  the ReplicaSet removed {name} as the surplus pod");
    }
    Ok(())
}
