//! The chaos groups: copies of `deploy/base`'s sample app, one per namespace (a group is a
//! namespace plus the `app` label value, so each copy is its own group of the deployed
//! controller, which watches every namespace), with the notification key Secret copied in.

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use hapod_testkit::testbed::{APP_NAMESPACE, NOTIFY_SECRET};
use hapod_testkit::workspace_root;

/// Prefix of the chaos groups' namespaces.
pub const PREFIX: &str = "chaos-";

/// Namespace of chaos group `i`.
pub fn namespace(i: usize) -> String {
    format!("{PREFIX}{i:03}")
}

/// Creates `groups` namespaces, each with the notification key and a copy of the sample
/// app's ReplicaSet.
pub async fn create(client: &Client, groups: usize) -> Result<()> {
    let manifest = workspace_root().join("deploy/base/sample-app/replicaset.yaml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let template: serde_json::Value = serde_norway::from_str(&text)?;
    let key = Api::<Secret>::namespaced(client.clone(), APP_NAMESPACE)
        .get(NOTIFY_SECRET)
        .await
        .context("reading the notification key Secret of the sample app")?;
    let pp = PostParams::default();
    for i in 0..groups {
        let ns = namespace(i);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&pp, &namespace)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
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
        let mut rs = template.clone();
        rs["metadata"]["namespace"] = ns.clone().into();
        let rs: ReplicaSet = serde_json::from_value(rs)?;
        Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .create(&pp, &rs)
            .await
            .with_context(|| format!("creating ReplicaSet {} in {ns}", rs.name_any()))?;
    }
    Ok(())
}
