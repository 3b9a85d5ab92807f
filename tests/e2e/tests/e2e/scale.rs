//! Scaling the application down removes standbys, never the active pod: the controller gives
//! the active the highest `controller.kubernetes.io/pod-deletion-cost`, which the ReplicaSet
//! controller ranks before readiness age.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    APP_CONTAINER, APP_GROUP, APP_NAME, APP_NAMESPACE, APP_REPLICAS, Testbed, Trigger, pod_ready,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::common::WAIT;

/// Without deletion costs the ReplicaSet removes, among ready pods, the one that became ready
/// last, compared in powers of two of the time since (then by UID). A standby ready this long
/// lands in another power of two than a pod that became ready in the last 8 s.
const STANDBY_READY_FOR: Duration = Duration::from_secs(18);

/// The setup makes the active the pod that became ready last, the one a ReplicaSet removes
/// first without deletion costs: 3 pods (A active, B standby, C a newer standby), B unready
/// and ready again, then A unready so that the oldest eligible pod, B, is promoted. Scaling
/// to 1 removes the unready A and one of B and C: it must be C, and nothing may fail over.
pub(crate) async fn scale_down_keeps_active(tb: &Testbed) -> Result<()> {
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let a = before.active;
    scale(tb, 3)?;
    let three = tb.wait_settled(APP_NAMESPACE, APP_GROUP, 3, WAIT).await?;
    ensure!(three.active.uid() == a.uid(), "scaling up moved the active");
    let mut standbys = three.standbys;
    // Oldest first: the controller promotes the oldest eligible pod.
    standbys.sort_by_key(|p| p.creation_timestamp().map(|t| t.0));
    let [b, c] = &standbys[..] else {
        anyhow::bail!("expected 2 standbys, got {}", standbys.len());
    };
    ready_for(tb, c, STANDBY_READY_FOR).await?;

    tb.trigger(b, Trigger::Unready).await?;
    wait_ready(tb, b, false).await?;
    Testbed::remove_in_container(b, APP_CONTAINER, "unready")?;
    wait_ready(tb, b, true).await?;

    let t = tb.trigger(&a, Trigger::Unready).await?;
    let (active, _, _) = tb.await_failover(&a, t, WAIT).await?;
    ensure!(
        active.uid() == b.uid(),
        "the unready active {} was replaced by {}, not the oldest standby {}",
        a.name_any(),
        active.name_any(),
        b.name_any()
    );
    let b = pod(tb, b).await?;
    let c = pod(tb, c).await?;
    println!(
        "  scale 3 -> 1: active {} ready for {:?}, standby {} ready for {:?}, {} unready",
        b.name_any(),
        ready_age(&b),
        c.name_any(),
        ready_age(&c),
        a.name_any()
    );
    let mark = tb.history.pod_records().last().map_or(0, |r| r.rv);

    scale(tb, 1)?;
    let after = tb.wait_settled(APP_NAMESPACE, APP_GROUP, 1, WAIT).await;
    // Back to the deployed size for the next scenarios, whatever happened.
    scale(tb, APP_REPLICAS)?;
    let after = after?;
    ensure!(
        after.active.uid() == b.uid(),
        "scaling down removed the active {}; {} is active now",
        b.name_any(),
        after.active.name_any()
    );
    let uid = b.uid().unwrap_or_default();
    for r in tb.history.pod_records() {
        let in_group = r.namespace == APP_NAMESPACE && r.group.as_deref() == Some(APP_GROUP);
        if r.rv <= mark || !in_group {
            continue;
        }
        ensure!(
            (r.uid == uid) == r.is_active(),
            "a role moved during the scale-down: {} at resourceVersion {} is {:?}",
            r.pod,
            r.rv,
            r.role
        );
    }
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        settled.active.uid() == b.uid(),
        "scaling up moved the active"
    );
    Ok(())
}

fn scale(tb: &Testbed, replicas: usize) -> Result<()> {
    tb.kubectl(&[
        "-n",
        APP_NAMESPACE,
        "scale",
        "replicaset",
        APP_NAME,
        &format!("--replicas={replicas}"),
    ])?;
    Ok(())
}

async fn pod(tb: &Testbed, p: &Pod) -> Result<Pod> {
    tb.pod(APP_NAMESPACE, &p.name_any())
        .await?
        .with_context(|| format!("{} is gone", p.name_any()))
}

/// How long the pod has been Ready (its Ready condition's last transition).
fn ready_age(p: &Pod) -> Option<Duration> {
    let since = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()?;
    SystemTime::now()
        .duration_since(SystemTime::from(since.0))
        .ok()
}

async fn wait_ready(tb: &Testbed, p: &Pod, ready: bool) -> Result<()> {
    let what = format!("{} Ready={ready}", p.name_any());
    await_condition(what, WAIT, Duration::from_millis(100), || async {
        let now = pod(tb, p).await?;
        Ok(if pod_ready(&now) == ready {
            Check::Done(())
        } else {
            Check::NotYet(format!("Ready={}", pod_ready(&now)))
        })
    })
    .await
}

async fn ready_for(tb: &Testbed, p: &Pod, age: Duration) -> Result<()> {
    let what = format!("{} Ready for {age:?}", p.name_any());
    await_condition(what, WAIT, Duration::from_millis(500), || async {
        let now = pod(tb, p).await?;
        Ok(match ready_age(&now) {
            Some(a) if a >= age => Check::Done(()),
            a => Check::NotYet(format!("Ready for {a:?}")),
        })
    })
    .await
}
