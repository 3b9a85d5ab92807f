//! Scaling the application down removes standbys, never the active pod: the controller gives
//! the active the highest `controller.kubernetes.io/pod-deletion-cost`, which the ReplicaSet
//! controller ranks before readiness age. So a Deployment's rolling update replaces the
//! standbys first and moves the role once, onto an updated pod.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    APP_CONTAINER, APP_GROUP, APP_NAME, APP_NAMESPACE, APP_REPLICAS, Testbed, Trigger,
    create_app_namespace, pod_ready,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

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
    tb.remove_in_container(b, APP_CONTAINER, "unready")?;
    wait_ready(tb, b, true).await?;

    let t = tb.trigger(&a, Trigger::Unready).await?;
    let (active, _, _) = tb.await_failover(&a, t, None, WAIT).await?;
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

/// The operator's drain of the role (`kubectl hapod switchover` sets it).
const DRAIN_ANNOTATION: &str = "hapod.io/drain";

/// Namespace of the Deployment copy of the sample app.
const ROLLOUT_NAMESPACE: &str = "hapod-rollout";

/// The sample app as a Deployment (rolling update: one pod added before one is removed, as in
/// the `deployment-app` overlay) in a namespace of its own; a change of its pod template rolls
/// both pods. The role must move exactly once, from an old pod to an updated one: the old
/// ReplicaSet is scaled down one pod at a time, and the active's deletion cost makes it remove
/// the old standby first. As in the scale-down scenario, the active is first made the pod a
/// ReplicaSet removes first without deletion costs (the one Ready last): the standby B turns
/// unready and Ready again, then the role is drained from A to B.
pub(crate) async fn rollout_moves_role_once(tb: &Testbed) -> Result<()> {
    let result = rollout_once(tb).await;
    // Gone for the next scenarios, whatever happened (the history check still sees it).
    let namespaces = Api::<Namespace>::all(tb.client.clone());
    let _ = namespaces
        .delete(ROLLOUT_NAMESPACE, &DeleteParams::default())
        .await;
    result
}

async fn rollout_once(tb: &Testbed) -> Result<()> {
    let ns = ROLLOUT_NAMESPACE;
    let deployed = create_app_namespace(&tb.client, ns).await?;
    let spec = deployed
        .spec
        .context("the sample app's ReplicaSet has no spec")?;
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(APP_NAME.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: spec.replicas,
            selector: spec.selector,
            template: spec
                .template
                .context("the sample app has no pod template")?,
            min_ready_seconds: Some(2),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let deployments = Api::<Deployment>::namespaced(tb.client.clone(), ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .context("creating the Deployment")?;
    let settled = tb.wait_settled(ns, APP_GROUP, APP_REPLICAS, WAIT).await?;
    let (a, b) = match &settled.standbys[..] {
        [b] => (settled.active.clone(), b.clone()),
        other => anyhow::bail!("expected 1 standby, got {}", other.len()),
    };
    ready_for(tb, &a, STANDBY_READY_FOR).await?;
    tb.trigger(&b, Trigger::Unready).await?;
    wait_ready(tb, &b, false).await?;
    tb.remove_in_container(&b, APP_CONTAINER, "unready")?;
    wait_ready(tb, &b, true).await?;
    let pods = Api::<Pod>::namespaced(tb.client.clone(), ns);
    let drain = |on: bool| {
        let value = on.then_some("true");
        serde_json::json!({"metadata": {"annotations": {DRAIN_ANNOTATION: value}}})
    };
    pods.patch(
        &a.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&drain(true)),
    )
    .await
    .context("draining the active")?;
    let moved = tb
        .wait_new_active(ns, APP_GROUP, &a.uid().unwrap_or_default(), WAIT)
        .await;
    pods.patch(
        &a.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&drain(false)),
    )
    .await
    .context("lifting the drain")?;
    ensure!(
        moved?.uid() == b.uid(),
        "the drain did not move the role to the standby {}",
        b.name_any()
    );
    let before = tb.wait_settled(ns, APP_GROUP, APP_REPLICAS, WAIT).await?;
    let old: Vec<String> = std::iter::once(&before.active)
        .chain(&before.standbys)
        .filter_map(|p| p.uid())
        .collect();
    let mark = tb.history.pod_records().last().map_or(0, |r| r.rv);

    let restart = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        "hapod.io/restarted-by": "rollout_moves_role_once"}}}}});
    deployments
        .patch(APP_NAME, &PatchParams::default(), &Patch::Merge(&restart))
        .await
        .context("changing the pod template")?;
    await_condition(
        "the rollout to finish",
        2 * WAIT,
        Duration::from_millis(200),
        || async {
            let d = deployments.get(APP_NAME).await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            let st = d.status.unwrap_or_default();
            let done = st.observed_generation.unwrap_or(0) >= generation
                && st.updated_replicas == Some(want)
                && st.available_replicas == Some(want)
                && st.replicas == Some(want);
            Ok(if done {
                Check::Done(())
            } else {
                Check::NotYet(format!("status {st:?}"))
            })
        },
    )
    .await?;
    let after = tb.wait_settled(ns, APP_GROUP, APP_REPLICAS, WAIT).await?;
    for p in std::iter::once(&after.active).chain(&after.standbys) {
        ensure!(
            !old.contains(&p.uid().unwrap_or_default()),
            "{} of the old template is still in the group after the rollout",
            p.name_any()
        );
    }

    // Every change of the active pod in the group since the template changed.
    let mut active: Option<String> = before.active.uid();
    let mut moves = Vec::new();
    for r in tb.history.pod_records() {
        let in_group = r.namespace == ns && r.group.as_deref() == Some(APP_GROUP);
        if r.rv > mark && in_group && r.is_active() && active.as_deref() != Some(&r.uid) {
            moves.push(format!("{} at resourceVersion {}", r.pod, r.rv));
            active = Some(r.uid.clone());
        }
    }
    println!("  the role moved to: {moves:?}");
    ensure!(
        moves.len() == 1,
        "the rollout moved the role {} times, want once: {moves:?}",
        moves.len()
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
    let ns = p.namespace().unwrap_or_else(|| APP_NAMESPACE.into());
    tb.pod(&ns, &p.name_any())
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
