//! The controller's ServiceAccount: what it may do, and what it must not.

use anyhow::{Context as _, Result, bail};
use hapod_testkit::testbed::{
    self, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT,
    Testbed,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::common::WAIT;

/// The controller's ServiceAccount can do what it needs, and forbidden verbs are
/// really forbidden (real requests with its own token, not just a review).
pub(crate) async fn rbac(tb: &Testbed) -> Result<()> {
    let sa: Client = tb
        .service_account_client(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
        .await?;
    let s = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let app_pods: Api<Pod> = Api::namespaced(sa.clone(), APP_NAMESPACE);
    let all_pods: Api<Pod> = Api::all(sa.clone());
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    // Allowed.
    all_pods
        .list(&ListParams::default().labels("app=hapod"))
        .await
        .context("SA cannot list pods cluster-wide")?;
    app_pods
        .get(&s.active.name_any())
        .await
        .context("SA cannot get a pod")?;
    {
        use futures::StreamExt;
        let wp = kube::api::WatchParams::default().timeout(1);
        let mut w = app_pods
            .watch(&wp, "0")
            .await
            .context("SA cannot watch pods")?
            .boxed();
        if let Some(Err(e)) = w.next().await {
            bail!("SA watch failed: {e}");
        }
    }
    app_pods
        .patch(
            &s.active.name_any(),
            &dry,
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"e2e.hapod.io/rbac": "x"}}}),
            ),
        )
        .await
        .context("SA cannot patch a pod (dry run)")?;
    app_pods
        .delete(
            &s.active.name_any(),
            &DeleteParams {
                dry_run: true,
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .context("SA cannot delete a pod (dry run)")?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(sa.clone(), CONTROLLER_NAMESPACE);
    leases
        .get(testbed::LEASE_NAME)
        .await
        .context("SA cannot get its Lease")?;
    leases
        .patch(
            testbed::LEASE_NAME,
            &dry,
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"e2e.hapod.io/rbac": "x"}}}),
            ),
        )
        .await
        .context("SA cannot patch its Lease (dry run)")?;
    let ctrl_pods: Api<Pod> = Api::namespaced(sa.clone(), CONTROLLER_NAMESPACE);
    ctrl_pods
        .list(&ListParams::default())
        .await
        .context("SA cannot list its own pods")?;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    let ev: k8s_openapi::api::events::v1::Event = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "e2e-rbac-"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "hapod.io/e2e",
        "reportingInstance": "e2e",
        "action": "Check",
        "reason": "RbacCheck",
        "type": "Normal",
        "regarding": {"kind": "Pod", "namespace": APP_NAMESPACE, "name": s.active.name_any()}
    }))?;
    events
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &ev,
        )
        .await
        .context("SA cannot create events (dry run)")?;

    // Forbidden: each must fail with 403.
    let mut forbidden = Vec::new();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let new_pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "e2e-rbac-forbidden"},
        "spec": {"containers": [{"name": "x", "image": "ghcr.io/hapod/hapod-demo:0.1.0"}]}
    }))?;
    forbidden.push((
        "create pods",
        app_pods.create(&pp, &new_pod).await.map(|_| ()),
    ));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    forbidden.push((
        "list secrets",
        secrets.list(&ListParams::default()).await.map(|_| ()),
    ));
    forbidden.push((
        "delete the Lease",
        leases
            .delete(
                testbed::LEASE_NAME,
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
    ));
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    forbidden.push((
        "delete replicasets",
        rs.delete(
            "hapod-demo",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
    ));
    let mut pod = app_pods.get(&s.active.name_any()).await?;
    pod.metadata.managed_fields = None;
    forbidden.push((
        "update (PUT) pods",
        app_pods
            .replace(&pod.name_any(), &pp, &pod)
            .await
            .map(|_| ()),
    ));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(sa.clone());
    forbidden.push((
        "list nodes",
        nodes.list(&ListParams::default()).await.map(|_| ()),
    ));
    for (what, res) in forbidden {
        match res {
            Ok(()) => bail!("the controller's ServiceAccount may {what}: RBAC is too broad"),
            Err(e) if api_error_code(&e) == Some(403) => {
                println!("  forbidden as expected: {what}")
            }
            Err(e) => bail!("{what}: expected 403 Forbidden, got {e}"),
        }
    }
    Ok(())
}

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
