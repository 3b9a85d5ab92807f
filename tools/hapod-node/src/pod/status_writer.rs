//! Writing the pod status: built from the node's view (`crate::status`) and patched only when
//! it changed.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::{HOST_IP, Message, PodWorker, now};
use crate::status::{ContainerView, PodFacts, build_status};

impl PodWorker {
    pub(super) fn gate_status(&self) -> Vec<(String, bool)> {
        let conditions = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        self.pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .map(|g| {
                let ok = conditions
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == g.condition_type && c.status == "True");
                (g.condition_type.clone(), ok)
            })
            .collect()
    }

    /// Writes the status if it changed since the last write.
    pub(super) async fn flush(&mut self) {
        let Some(since) = self.dirty_since.take() else {
            return;
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let facts = PodFacts {
            spec: &spec,
            pod_ip: Some(self.ip.to_string()),
            host_ip: HOST_IP.into(),
            start_time: self.start_time,
            gate_status: self.gate_status(),
            sandbox_error: self.sandbox_error.clone(),
        };
        let views: Vec<ContainerView> = self.containers.iter().map(|c| c.view.clone()).collect();
        let status = build_status(&facts, &views, &mut self.clock, now());
        if self.last_written.as_ref() == Some(&status) {
            return;
        }
        let patch = status_patch(&status);
        match self
            .api()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(
                    pod = %self.key(),
                    phase = status.phase.as_deref().unwrap_or_default(),
                    at = %now(),
                    since_change_ms = since.elapsed().as_secs_f64() * 1000.0,
                    "status written"
                );
                self.last_written = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "status write failed; retrying");
                self.after(Duration::from_millis(500), Message::FlushStatus);
            }
        }
    }
}

/// The status as a strategic merge patch. Conditions merge by type, so a condition that
/// became True must clear its old reason and message explicitly (null deletes a field).
pub fn status_patch(status: &PodStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(conditions) = value.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
            for field in ["reason", "message"] {
                c.entry(field).or_insert(Value::Null);
            }
        }
    }
    json!({ "status": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_stale_condition_fields() {
        let status = PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let patch = status_patch(&status);
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["reason"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("message"));
    }
}
