//! Stopping containers and pods: SIGTERM then SIGKILL after the grace period, killing at once,
//! and finishing a pod's deletion once its processes are gone.

use std::time::Duration;

use kube::api::{DeleteParams, Preconditions};
use nix::sys::signal::Signal;

use super::{Msg, PodWorker};
use crate::process::signal_group;

impl PodWorker {
    /// SIGTERM now, SIGKILL after the grace period.
    pub(super) fn stop_container(&mut self, idx: usize, grace_seconds: i64) {
        let c = &mut self.ctrs[idx];
        let Some(pid) = c.pid else { return };
        c.stop_probes();
        signal_group(pid, Signal::SIGTERM);
        let inst = c.inst;
        self.after(
            Duration::from_secs(grace_seconds.max(0) as u64),
            Msg::Kill { idx, inst },
        );
    }

    pub(super) fn begin_termination(&mut self) {
        self.terminating = true;
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        tracing::info!(pod = %self.key(), grace, "pod deleted: stopping its containers");
        for idx in 0..self.ctrs.len() {
            self.stop_container(idx, grace);
        }
        self.mark();
    }

    pub(super) fn kill_all(&mut self) {
        for c in &mut self.ctrs {
            c.stop_probes();
            if let Some(pid) = c.pid.take() {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    pub(super) fn cleanup(&mut self) {
        self.ctx.ips.release(self.ip);
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
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "deletion finished"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final delete failed"),
        }
        self.cleanup();
    }
}
