//! The chaos groups: copies of the deployed sample app, one per namespace (a group is a
//! namespace plus the `app` label value, so each copy is its own group of the deployed
//! controller, which watches every namespace), with the notification key Secret copied in.

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use hapod_testkit::testbed::{APP_NAME, APP_NAMESPACE, NOTIFY_SECRET};

/// Prefix of the chaos groups' namespaces.
pub const PREFIX: &str = "chaos-";

/// Namespace of chaos group `i`.
pub fn namespace(i: usize) -> String {
    format!("{PREFIX}{i:03}")
}

/// Creates `groups` namespaces, each with the notification key and a copy of the sample
/// app's ReplicaSet as the testbed deployed it (so the copies carry whatever the applied
/// kustomization added, such as its components' env, not just the raw manifest).
pub async fn create(client: &Client, groups: usize) -> Result<()> {
    let deployed = Api::<ReplicaSet>::namespaced(client.clone(), APP_NAMESPACE)
        .get(APP_NAME)
        .await
        .with_context(|| {
            format!("reading the sample app's ReplicaSet {APP_NAMESPACE}/{APP_NAME}")
        })?;
    let key = Api::<Secret>::namespaced(client.clone(), APP_NAMESPACE)
        .get(NOTIFY_SECRET)
        .await
        .context("reading the notification key Secret of the sample app")?;
    let pp = PostParams::default();
    for i in 0..groups {
        let ns = namespace(i);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&pp, &namespace)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(NOTIFY_SECRET.into()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            data: key.data.clone(),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&pp, &secret)
            .await?;
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: deployed.metadata.name.clone(),
                namespace: Some(ns.clone()),
                labels: deployed.metadata.labels.clone(),
                ..Default::default()
            },
            spec: deployed.spec.clone(),
            status: None,
        };
        Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .create(&pp, &rs)
            .await
            .with_context(|| format!("creating ReplicaSet {} in {ns}", rs.name_any()))?;
    }
    Ok(())
}
