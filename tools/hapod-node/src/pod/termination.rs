//! Stopping containers and pods: SIGTERM then SIGKILL after the grace period, killing at once,
//! and finishing a pod's deletion once its processes are gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Probe};
use kube::api::{Api, DeleteParams, Preconditions};
use nix::sys::signal::Signal;

use super::{Message, PodWorker};
use crate::process::signal_group;

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

/// Waits between attempts of the final delete. The API server may be restarting, or etcd
/// stopped behind it: the pod would stay terminating for good after one failed attempt (a
/// kubelet keeps trying too). Bounded (about a minute in all), so that a pod the API never
/// lets go does not hold its worker.
const FINAL_DELETE_WAITS: [Duration; 8] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

/// Runs `attempt` until it succeeds or the pod is gone (404) or not this one any more (409),
/// waiting `waits` between failed attempts; the last error when they are used up.
async fn until_deleted<F, Fut>(mut attempt: F, waits: &[Duration]) -> kube::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<()>>,
{
    let mut waits = waits.iter();
    loop {
        match attempt().await {
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::debug!(error = %e, ?wait, "final delete failed; trying again");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(e),
            },
            Ok(()) => return Ok(()),
        }
    }
}

impl PodWorker {
    /// SIGTERM now, SIGKILL once the grace period for `cause` is over: the one place that
    /// stops a running container gracefully.
    pub(super) fn stop_container(&mut self, index: usize, cause: StopCause<'_>) {
        let grace = grace_period(&self.pod, cause);
        let c = &mut self.containers[index];
        let Some(pid) = c.pid else { return };
        c.stop_probes();
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
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the pod folder");
        }
    }

    /// All processes are gone: the final status, then the deletion with grace 0 (UID
    /// precondition, so that a new pod of the same name is never deleted by mistake).
    pub(super) async fn finish_deletion(&mut self) {
        self.flush().await;
        let api = self.api();
        let delete = || delete_finished_pod(&api, &self.name, &self.uid);
        match until_deleted(delete, &FINAL_DELETE_WAITS).await {
            Ok(()) => tracing::info!(pod = %self.key(), "deletion finished"),
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final delete failed"),
        }
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("test", "Test")
                .with_code(code)
                .boxed(),
        )
    }

    /// The final delete fails while the API server cannot reach etcd: it is tried again
    /// until it goes through (one attempt left the pod terminating for good), and a pod
    /// already gone ends it; with every wait used up, the last error is returned.
    #[tokio::test]
    async fn the_final_delete_is_retried_until_the_pod_is_gone() {
        for (answers, done) in [
            (vec![503, 503, 200], true),
            (vec![500, 404], true),
            (vec![503; 4], false),
        ] {
            let mut left = answers.clone().into_iter();
            let mut attempts = 0;
            let result = until_deleted(
                || {
                    attempts += 1;
                    let code = left.next().expect("no attempt beyond the waits");
                    async move {
                        if code == 200 {
                            Ok(())
                        } else {
                            Err(api_error(code))
                        }
                    }
                },
                &[Duration::from_millis(1); 3],
            )
            .await;
            assert_eq!(result.is_ok(), done, "{answers:?}");
            assert_eq!(attempts, answers.len(), "{answers:?}");
        }
    }

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
