//! The apiserver's audit log, kept for one question: who deleted a pod. A check over a chaos
//! run must tell a pod hapod deleted (only allowed once a critical container died) from one
//! the ReplicaSet controller deleted as surplus (it can create one pod too many after a
//! control plane restart, then deletes one).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The audit policy file, next to the state file.
pub(super) const POLICY: &str = "audit-policy.yaml";
/// The audit log (JSON lines), under `logs/`.
pub(super) const LOG: &str = "logs/audit.log";

/// Pod deletions at the Metadata level (who, which pod, the answer); nothing else.
pub(super) const POLICY_YAML: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted, Panic]
rules:
  - level: Metadata
    verbs: [delete]
    resources:
      - group: \"\"
        resources: [pods]
  - level: None
";

/// A pod delete request the apiserver accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDeletion {
    pub namespace: String,
    pub pod: String,
    /// The authenticated user, e.g. `system:serviceaccount:kube-system:replicaset-controller`.
    pub user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    verb: String,
    user: User,
    object_ref: Option<ObjectRef>,
    response_status: Option<Status>,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    code: Option<u16>,
}

/// The accepted pod deletions in `log`, in the order the apiserver logged them; none if there
/// is no log yet. A line that is not an audit event is an error: the log is ours alone.
pub(super) fn pod_deletions(log: &Path) -> Result<Vec<PodDeletion>> {
    let text = match fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
    };
    // A line still being written is left for the next read.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut out = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        let event: Event = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", log.display(), i + 1))?;
        let accepted = event
            .response_status
            .and_then(|s| s.code)
            .is_some_and(|code| (200..300).contains(&code));
        let Some(object) = event.object_ref else {
            continue;
        };
        if event.verb == "delete"
            && accepted
            && object.resource.as_deref() == Some("pods")
            && object.subresource.is_none()
            && let (Some(namespace), Some(pod)) = (object.namespace, object.name)
        {
            out.push(PodDeletion {
                namespace,
                pod,
                user: event.user.username,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_pod_deletions_are_read_and_the_rest_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        assert!(pod_deletions(&log).unwrap().is_empty());
        let event = |verb: &str, user: &str, name: &str, code: u16| {
            format!(
                r#"{{"kind":"Event","level":"Metadata","stage":"ResponseComplete","verb":"{verb}","user":{{"username":"{user}","groups":["g"]}},"objectRef":{{"resource":"pods","namespace":"ns","name":"{name}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":{code}}}}}"#
            )
        };
        let rs = "system:serviceaccount:kube-system:replicaset-controller";
        let text = [
            event("delete", rs, "a", 200),
            event("delete", "hapod", "b", 404),
            event("get", "hapod", "c", 200),
            event("delete", "hapod", "d", 200),
        ]
        .join("\n");
        // The last line has no newline yet: still being written.
        fs::write(
            &log,
            format!("{text}\n{}", &event("delete", rs, "e", 200)[..40]),
        )
        .unwrap();
        let got = pod_deletions(&log).unwrap();
        let who: Vec<(&str, &str)> = got
            .iter()
            .map(|d| (d.pod.as_str(), d.user.as_str()))
            .collect();
        assert_eq!(who, [("a", rs), ("d", "hapod")]);
        fs::write(&log, "not json\n").unwrap();
        assert!(pod_deletions(&log).is_err());
    }
}
