//! `kubectl hapod pause GROUP` and `resume GROUP`: maintenance without failovers. Pausing
//! annotates every pod of the group `hapod.io/paused=true`; while any pod of the group carries
//! it, the controller changes no role and deletes no pod. Resuming removes the annotation from
//! every pod of the group that has it, whatever its value, also from pods that joined since.

use anyhow::{Context as _, Result, bail};
use hapod_controller::podview::{PAUSE_ANNOTATION, paused};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use crate::pods::{Change, pod_gone, set_annotation};

/// Pause or resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
}

/// The pods (name, UID) whose annotation `action` writes: to pause, every pod of the group
/// not paused yet; to resume, every pod that carries the annotation. An error when the group
/// has no pod at all: then the name is likely wrong.
pub fn plan(group: &str, namespace: &str, pods: &[Pod], action: Action) -> Result<Vec<Target>> {
    if pods.is_empty() {
        bail!(
            "group {namespace}/{group} has no pods (is the group's name right? `kubectl hapod status -n {namespace}` lists the groups)"
        );
    }
    Ok(pods
        .iter()
        .filter(|pod| match action {
            Action::Pause => !paused(pod),
            Action::Resume => pod.annotations().contains_key(PAUSE_ANNOTATION),
        })
        .map(|pod| Target {
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        })
        .collect())
}

/// A pod to annotate, named and identified (its UID is the patch's precondition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub uid: String,
}

/// Carries out `action` on `pods` (the group's, as listed); returns what it did, for the
/// operator.
pub async fn run(
    api: &Api<Pod>,
    group: &str,
    namespace: &str,
    pods: &[Pod],
    action: Action,
) -> Result<String> {
    let targets = plan(group, namespace, pods, action)?;
    let change = match action {
        Action::Pause => Change::Set("true"),
        Action::Resume => Change::Remove,
    };
    let mut written = Vec::new();
    for target in &targets {
        match set_annotation(api, &target.name, &target.uid, PAUSE_ANNOTATION, change).await {
            Ok(()) => written.push(target.name.as_str()),
            // Gone since the list: no member any more, nothing to write on it.
            Err(e) if pod_gone(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "writing {PAUSE_ANNOTATION} on {} (done before it: {})",
                        target.name,
                        if written.is_empty() {
                            "none".to_owned()
                        } else {
                            written.join(", ")
                        }
                    )
                });
            }
        }
    }
    let names = if written.is_empty() {
        String::new()
    } else {
        format!(": {}", written.join(", "))
    };
    Ok(match action {
        Action::Pause if written.is_empty() && targets.is_empty() => format!(
            "{namespace}/{group} is paused already (every pod carries {PAUSE_ANNOTATION}=true)"
        ),
        Action::Pause if written.is_empty() => {
            bail!("group {namespace}/{group}: its pods were gone before they could be annotated")
        }
        Action::Pause => format!(
            "{namespace}/{group} paused: {PAUSE_ANNOTATION}=true set on {} pod(s){names}; \
             the controller changes no role until `kubectl hapod resume {group} -n {namespace}`",
            written.len()
        ),
        Action::Resume if targets.is_empty() => format!(
            "{namespace}/{group} was not paused (no pod carries {PAUSE_ANNOTATION}); nothing done"
        ),
        Action::Resume => format!(
            "{namespace}/{group} resumed: {PAUSE_ANNOTATION} removed from {} pod(s){names}; \
             the controller's rules apply again",
            written.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, paused: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "labels": {"app": "db"},
                "annotations": paused.map(|v| serde_json::json!({PAUSE_ANNOTATION: v})),
            },
        }))
        .unwrap()
    }

    fn planned(pods: &[Pod], action: Action) -> Result<Vec<String>, String> {
        plan("db", "shop", pods, action)
            .map(|targets| targets.into_iter().map(|t| t.name).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn pausing_annotates_every_pod_not_paused_yet() {
        let pods = [
            pod("db-a", None),
            pod("db-b", Some("true")),
            pod("db-c", Some("yes")),
        ];
        assert_eq!(planned(&pods, Action::Pause).unwrap(), ["db-a", "db-c"]);
    }

    #[test]
    fn resuming_removes_the_annotation_wherever_it_is() {
        let pods = [
            pod("db-a", Some("true")),
            pod("db-b", None),
            pod("db-c", Some("yes")),
        ];
        assert_eq!(planned(&pods, Action::Resume).unwrap(), ["db-a", "db-c"]);
        assert!(
            planned(&[pod("db-a", None)], Action::Resume)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_group_without_pods_is_refused() {
        for action in [Action::Pause, Action::Resume] {
            let error = planned(&[], action).unwrap_err();
            assert!(error.starts_with("group shop/db has no pods"), "{error}");
        }
    }
}
