//! Stopping containers and pods: SIGTERM then SIGKILL after the grace period, killing at once,
//! and finishing a pod's deletion once its processes are gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Probe};
use kube::api::{Api, DeleteParams, Preconditions};
use nix::sys::signal::Signal;

use super::{Message, PodWorker};
use crate::process::signal_group;
use crate::retry::{API_WAITS, until_done};

/// Why a running container is stopped: decides which grace period applies.
#[derive(Debug, Clone, Copy)]
pub(super) enum StopCause<'a> {
    /// The pod is being deleted (it has a deletionTimestamp).
    PodDeleted,
    /// A liveness or startup probe failed: the container is restarted.
    ProbeFailed(&'a Probe),
}

/// Seconds between SIGTERM and SIGKILL when neither the deletion, the probe nor the pod says.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The grace period between SIGTERM and SIGKILL, chosen as the kubelet does: the deletion's
/// `deletionGracePeriodSeconds` (for a deleted pod) or the probe's own
/// `terminationGracePeriodSeconds` (for a failed probe), else the pod's
/// `terminationGracePeriodSeconds`, else 30 s. Negative values count as 0.
pub(super) fn grace_period(pod: &Pod, cause: StopCause<'_>) -> Duration {
    let first_choice = match cause {
        StopCause::PodDeleted => pod.metadata.deletion_grace_period_seconds,
        StopCause::ProbeFailed(probe) => probe.termination_grace_period_seconds,
    };
    let seconds = first_choice
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Deletes the pod object with grace 0 once nothing of it runs any more, with a UID
/// precondition so that a new pod of the same name is never deleted by mistake.
pub(crate) async fn delete_finished_pod(api: &Api<Pod>, name: &str, uid: &str) -> kube::Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    api.delete(name, &params).await.map(drop)
}

impl PodWorker {
    /// SIGTERM now, SIGKILL once the grace period for `cause` is over: the one place that
    /// stops a running container gracefully.
    pub(super) fn stop_container(&mut self, index: usize, cause: StopCause<'_>) {
        let grace = grace_period(&self.pod, cause);
        let c = &mut self.containers[index];
        let Some(pid) = c.pid else { return };
        c.stop_probes();
        c.stopping = true;
        signal_group(pid, Signal::SIGTERM);
        let instance = c.instance;
        self.after(grace, Message::Kill { index, instance });
    }

    /// The grace period of a stopped container is over: SIGKILL, unless that instance has
    /// exited already.
    pub(super) fn on_grace_over(&self, index: usize, instance: u64) {
        if let Some(c) = self
            .containers
            .get(index)
            .filter(|c| c.instance == instance)
            && let Some(pid) = c.pid
        {
            tracing::info!(pod = %self.key(), container = %c.view.name, "grace period over: SIGKILL");
            signal_group(pid, Signal::SIGKILL);
        }
    }

    pub(super) fn begin_termination(&mut self) {
        self.terminating = true;
        let grace = grace_period(&self.pod, StopCause::PodDeleted);
        tracing::info!(pod = %self.key(), grace_seconds = grace.as_secs(), "pod deleted: stopping its containers");
        for index in 0..self.containers.len() {
            self.stop_container(index, StopCause::PodDeleted);
        }
        self.mark();
    }

    pub(super) fn kill_all(&mut self) {
        for c in &mut self.containers {
            c.stop_probes();
            if let Some(pid) = c.pid.take() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    pub(super) fn cleanup(&mut self) {
        self.node.pod_ips.release(self.ip);
        self.remove_folder();
    }

    fn remove_folder(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the pod folder");
        }
    }

    /// All processes are gone: the final status, the pod's folder removed, then the deletion
    /// with grace 0 (UID precondition, so that a new pod of the same name is never deleted by
    /// mistake). The folder goes first as with the kubelet, whose final delete waits for the
    /// pod's volumes to be reclaimed: a pod gone from the API has left no files on the node.
    /// Its IP is released last, so that no other pod takes it while this one is listed.
    pub(super) async fn finish_deletion(&mut self) {
        self.flush().await;
        self.remove_folder();
        let api = self.api();
        let delete = || delete_finished_pod(&api, &self.name, &self.uid);
        match until_done(delete, &API_WAITS, &[404, 409]).await {
            Ok(()) => tracing::info!(pod = %self.key(), "deletion finished"),
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final delete failed"),
        }
        self.node.pod_ips.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    #[test]
    fn grace_period_follows_the_kubelet_order() {
        let mut pod = Pod::default();
        let probe = Probe::default();
        let secs = |pod: &Pod, cause| grace_period(pod, cause).as_secs();
        assert_eq!(secs(&pod, StopCause::PodDeleted), 30);
        assert_eq!(secs(&pod, StopCause::ProbeFailed(&probe)), 30);
        pod.spec = Some(PodSpec {
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        });
        assert_eq!(secs(&pod, StopCause::PodDeleted), 5);
        assert_eq!(secs(&pod, StopCause::ProbeFailed(&probe)), 5);
        pod.metadata.deletion_grace_period_seconds = Some(2);
        let short = Probe {
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        };
        assert_eq!(secs(&pod, StopCause::PodDeleted), 2);
        assert_eq!(secs(&pod, StopCause::ProbeFailed(&probe)), 5);
        assert_eq!(secs(&pod, StopCause::ProbeFailed(&short)), 1);
        pod.metadata.deletion_grace_period_seconds = Some(-1);
        assert_eq!(secs(&pod, StopCause::PodDeleted), 0);
    }
}
