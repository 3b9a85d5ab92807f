//! The chaos groups: copies of the deployed sample app, one per namespace (a group is a
//! namespace plus the `app` label value, so each copy is its own group of the deployed
//! controller, which watches every namespace), with the notification key Secret copied in.

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use hapod_testkit::testbed::create_app_namespace;

/// Prefix of the chaos groups' namespaces.
pub const PREFIX: &str = "chaos-";

/// Namespace of chaos group `i`.
pub fn namespace(i: usize) -> String {
    format!("{PREFIX}{i:03}")
}

/// Creates `groups` namespaces, each with the notification key and a copy of the sample
/// app's ReplicaSet as the testbed deployed it.
pub async fn create(client: &Client, groups: usize) -> Result<()> {
    for i in 0..groups {
        let ns = namespace(i);
        let deployed = create_app_namespace(client, &ns).await?;
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
            .create(&PostParams::default(), &rs)
            .await
            .with_context(|| format!("creating ReplicaSet {} in {ns}", rs.name_any()))?;
    }
    Ok(())
}
