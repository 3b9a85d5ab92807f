//! The EndpointSlice mode (docs/endpoints.md), switched on and off on the running sample app
//! the way the docs tell an operator to (the testbed's `use_endpoint_slices` and
//! `use_label_selector`, which wait at every step for the Service to list the active alone):
//! a failover in between moves the Service's only slice, hapod's, to the new active.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::testbed::{
    APP_GROUP, APP_NAMESPACE, APP_SERVICE, HAPOD_SLICES, SERVICE_ANNOTATION, Testbed, Trigger,
    pod_ip,
};
use kube::ResourceExt;

use crate::common::{WAIT, failover_acked};
use crate::failover::check_failover_old_gone;

const SLICE_WRITES: &str = "hapod_endpoint_slice_writes_total";

pub(crate) async fn slice_mode_failover(tb: &Testbed) -> Result<()> {
    tb.use_endpoint_slices(WAIT).await?;
    // Nothing brings kube-controller-manager's slice back while the Service has no selector.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slices = tb.app_slices().await?;
    ensure!(
        slices.len() == 1 && slices[0].manager == HAPOD_SLICES,
        "the Service's slices: {slices:?}"
    );

    // A failover moves hapod's slice: only the new active, by address and pod UID.
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover_old_gone(tb, &f, "force-deleted").await?;
    let new_ip = pod_ip(&f.new).context("new active has no IP")?;
    tb.wait_app_slices(&[(HAPOD_SLICES, &new_ip)], WAIT).await?;
    let slices = tb.app_slices().await?;
    let new_uid = f.new.uid().unwrap_or_default();
    ensure!(
        slices[0].pod_uids == [new_uid.clone()],
        "hapod's slice names pods {:?}, want only the new active {new_uid}",
        slices[0].pod_uids
    );
    // The replacement came from the template, which names the Service too.
    let group = tb.group_pods(APP_NAMESPACE, APP_GROUP).await?;
    let named: Vec<(String, Option<String>)> = group
        .iter()
        .map(|p| {
            (
                p.name_any(),
                p.annotations().get(SERVICE_ANNOTATION).cloned(),
            )
        })
        .collect();
    ensure!(
        named.iter().all(|(_, s)| s.as_deref() == Some(APP_SERVICE)),
        "a pod of the group does not name the Service: {named:?}"
    );

    // Back to the label mode: hapod deleted its slice, and counted it.
    tb.use_label_selector(WAIT).await?;
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let written = tb
        .controller_metric(&ctrl, SLICE_WRITES, &[("outcome", "written")])
        .await?;
    let removed = tb
        .controller_metric(&ctrl, SLICE_WRITES, &[("outcome", "removed")])
        .await?;
    println!("  {SLICE_WRITES}: written {written}, removed {removed}");
    ensure!(
        written >= 2.0 && removed >= 1.0,
        "the acting controller counted {written} slice writes and {removed} removals"
    );
    Ok(())
}
