//! Detection beyond the API: failures the API learns of late (a hung process, a partition
//! between the controller and the active pod, the loss of the active pod's whole node or of
//! its network) are found from the agents' reports, and the applications' own journals show
//! the old one stopped acting before the new one started.

use std::time::SystemTime;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::testbed::{
    APP_GROUP, APP_NAMESPACE, APP_REPLICAS, FIRST_NODE, Fault, Journals, SECOND_NODE, STANDBY,
    SecondNode, Testbed, monotonic_nanos, pod_ip, pod_names, pod_node, pod_ready, pod_role,
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
    unresponsive_active_is_replaced(tb, &["unresponsive", "not_ready"], async |_, active| {
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
    .map(drop)
}

/// The acting controller and the active app pod are cut from each other (every packet between
/// their addresses dropped inside the testbed's network namespace; the API still sees the pod
/// Ready): the active's reports stop while the standby's come, so it is replaced once its
/// grant is over, and the cut-off application stops acting by itself although no standby
/// order reaches it. Healed, it rejoins as standby.
pub(crate) async fn partitioned_active_is_replaced(tb: &Testbed) -> Result<()> {
    unresponsive_active_is_replaced(tb, &["unresponsive"], async |ctrl, active| {
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
    .map(drop)
}

/// The active app pod's whole node is lost: its `hapod-node` process and every process of
/// every pod bound to it stopped (SIGSTOP), the API still showing them Ready (no
/// node-lifecycle controller here, and a real one would take 40 s). The active's agent stops
/// reporting while the standby's, on the other node, still answers: the controller replaces
/// it (reason `unresponsive`: the stopped node probes nothing) once its grant is over. After
/// the node continues, it is Ready again and the old pod rejoins as standby.
pub(crate) async fn node_lost_active_is_replaced(tb: &Testbed) -> Result<()> {
    active_on_lost_node_is_replaced(tb, async |node, _, pods| {
        let fault = Fault::node_lost(node.pid(), pods)?;
        if let Fault::Hang { stopped, .. } = &fault {
            println!(
                "  stopped {SECOND_NODE} (hapod-node pid {}) and every process of its pods \
                 {:?} (pids {:?})",
                node.pid(),
                pod_names(pods),
                stopped.pids()
            );
        }
        Ok(fault)
    })
    .await
}

/// The active app pod's node loses its agent-facing network: every packet between the acting
/// controller and every pod bound to that node dropped (the node itself still reaches the
/// API, and shows its pods Ready). The active is replaced as when the whole node is lost,
/// and rejoins as standby once healed.
pub(crate) async fn node_network_lost_active_is_replaced(tb: &Testbed) -> Result<()> {
    active_on_lost_node_is_replaced(tb, async |_, ctrl, pods| {
        println!(
            "  cutting the acting controller {} ({}) from every pod of {SECOND_NODE}: {:?}",
            ctrl.name_any(),
            pod_ip(ctrl).unwrap_or_default(),
            pods.iter()
                .map(|p| format!("{} ({})", p.name_any(), pod_ip(p).unwrap_or_default()))
                .collect::<Vec<_>>()
        );
        Fault::cut_from(ctrl, pods)
    })
    .await
}

/// Starts a second node, places the sample app's active pod alone on it (the standby and the
/// controller replicas on the first node, which is never lost), inflicts a fault on that
/// node (given the node, the acting controller and the pods bound to the node) and checks as
/// [`unresponsive_active_is_replaced`] does; then checks that the node is Ready again and
/// removes it: the ReplicaSet replaces its pod on the first node, and the group settles there
/// for the scenarios after.
async fn active_on_lost_node_is_replaced(
    tb: &Testbed,
    inflict: impl AsyncFnOnce(&SecondNode, &Pod, &[Pod]) -> Result<Fault>,
) -> Result<()> {
    let mut node = tb.start_second_node().await?;
    let checked = async {
        let placed = tb.place_active_on_second_node(WAIT).await?;
        println!(
            "  placed: the active {} on {SECOND_NODE}, the standby {:?} on {FIRST_NODE}",
            placed.active.name_any(),
            pod_names(&placed.standbys)
        );
        let ended = unresponsive_active_is_replaced(tb, &["unresponsive"], async |ctrl, active| {
            ensure!(
                pod_node(ctrl) != Some(SECOND_NODE),
                "the acting controller {} is on the node to be lost",
                ctrl.name_any()
            );
            let pods = tb.node_pods(SECOND_NODE).await?;
            ensure!(
                pods.iter().any(|p| p.uid() == active.uid()),
                "the active {} is not on {SECOND_NODE}, whose pods are {:?}",
                active.name_any(),
                pod_names(&pods)
            );
            inflict(&node, ctrl, &pods).await
        })
        .await?;
        node.wait_ready_since(ended)
            .await
            .with_context(|| format!("{SECOND_NODE} is not Ready again after the fault"))?;
        println!("  {SECOND_NODE} Ready again (a heartbeat after the fault ended)");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let removed = node.remove();
    checked?;
    removed.with_context(|| format!("removing {SECOND_NODE}"))?;
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .with_context(|| format!("the group did not settle once {SECOND_NODE} was removed"))?;
    let elsewhere: Vec<String> = std::iter::once(&settled.active)
        .chain(&settled.standbys)
        .filter(|p| pod_node(p) != Some(FIRST_NODE))
        .map(|p| p.name_any())
        .collect();
    ensure!(
        elsewhere.is_empty(),
        "pods {elsewhere:?} are not on {FIRST_NODE} once {SECOND_NODE} was removed"
    );
    Ok(())
}

/// Inflicts a fault on the active app pod (given the acting controller and that pod), checks
/// that another pod becomes the only active one for one of `reasons` while it lasts, ends it,
/// and checks that the old pod rejoins as standby and that the applications never acted at
/// once. Returns when the fault ended.
async fn unresponsive_active_is_replaced(
    tb: &Testbed,
    reasons: &[&str],
    inflict: impl AsyncFnOnce(&Pod, &Pod) -> Result<Fault>,
) -> Result<SystemTime> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let promoted_before = promotions(tb, &ctrl, reasons).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let old_uid = old.uid().context("the active pod has no UID")?;
    let started = monotonic_nanos();
    let fault = inflict(&ctrl, &old).await?;
    let new = tb
        .wait_new_active(APP_NAMESPACE, APP_GROUP, &old_uid, WAIT)
        .await;
    // From the fault itself, after whatever `inflict` looked up first.
    let labeled = fault.started().elapsed().unwrap_or_default();
    // The API's view of the group when the role moved.
    let then = tb.group_view(APP_NAMESPACE, APP_GROUP).await;
    let ended_at = SystemTime::now();
    let ended = fault.end();
    let new = new.context("no new active while the fault lasted")?;
    ended?;
    let then = then?;
    let active_then = pod_names(then.active());
    ensure!(
        active_then == [new.name_any()],
        "while the fault lasted, the pods labeled active were {active_then:?}\n{}",
        then.table()
    );
    let old_ready_then = then
        .pods
        .iter()
        .any(|p| p.uid().as_deref() == Some(old_uid.as_str()) && pod_ready(p));
    println!(
        "  {} (on {}) labeled active {:.0} ms after the fault, the only active pod; the old \
         {} (on {}) still Ready in the API: {old_ready_then}",
        new.name_any(),
        pod_node(&new).unwrap_or("-"),
        labeled.as_secs_f64() * 1000.0,
        old.name_any(),
        pod_node(&old).unwrap_or("-"),
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
    Ok(ended_at)
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
