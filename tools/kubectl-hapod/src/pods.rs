//! The plugin's access to pods: lists by label selector, and its only writes, an annotation
//! of one pod set or removed by a merge patch whose precondition is the pod's UID, so that a
//! new pod that took the name is never touched.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// The pods `api` lists with label `selector`.
pub async fn list(api: &Api<Pod>, selector: &str) -> Result<Vec<Pod>> {
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the pods matching {selector:?}"))?
        .items)
}

/// What to do with an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Set(&'a str),
    Remove,
}

/// Sets or removes annotation `key` of exactly the pod `name` with `uid`.
pub async fn set_annotation(
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    key: &str,
    change: Change<'_>,
) -> Result<(), kube::Error> {
    let value = match change {
        Change::Set(value) => Some(value),
        // A merge patch removes a key set to null.
        Change::Remove => None,
    };
    let patch = json!({"metadata": {"uid": uid, "annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Whether a write failed because the pod is gone: deleted (404), or its name taken by a new
/// pod (409: the UID precondition failed).
pub fn pod_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404 || status.code == 409)
}
