//! Probe tasks of a pod's containers and what their verdicts do to the container (readiness,
//! started, restart on a failed liveness or startup probe). The probes themselves are in
//! [`crate::probe`].

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::Notify;

use super::termination::StopCause;
use super::{Message, PodWorker};
use crate::probe::{self, ProbeKind, ProbeTarget};

impl PodWorker {
    pub(super) fn probe_of(c: &Container, kind: ProbeKind) -> Option<&Probe> {
        match kind {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
        }
    }

    pub(super) fn spawn_probe(&mut self, index: usize, kind: ProbeKind) {
        let c = &self.containers[index];
        let (Some(probe), Some(pid), Some(program)) = (
            Self::probe_of(&c.spec, kind).cloned(),
            c.pid,
            c.program.clone(),
        ) else {
            return;
        };
        let target = ProbeTarget {
            pod_ip: self.ip,
            container: c.spec.clone(),
            pid,
            program,
            env: c.env.clone(),
            spawner: self.node.spawner.clone(),
        };
        let tx = self.tx.clone();
        let instance = c.instance;
        let scale = self.node.config.probe_period_scale;
        let rerun = Arc::new(Notify::new());
        let task = tokio::spawn(probe::run(
            kind,
            probe,
            target,
            scale,
            rerun.clone(),
            move |ok| {
                tx.send(Message::Probe {
                    index,
                    instance,
                    kind,
                    ok,
                })
                .is_ok()
            },
        ));
        let c = &mut self.containers[index];
        c.probes.push(task.abort_handle());
        if kind == ProbeKind::Readiness {
            c.readiness_rerun = Some(rerun);
        }
    }

    /// What the kubelet does whenever it syncs a pod (here: a change to the pod from the API,
    /// a probe's verdict; a started container is probed at once anyway): the readiness probe
    /// of every running container that is not ready probes at once, its period starting again
    /// from there. So a recovered container is Ready at the next sync rather than at its next
    /// period, and the probe's rhythm follows the pod's history as on a real node.
    pub(super) fn rerun_unready_probes(&self) {
        let unready = self
            .containers
            .iter()
            .filter(|c| c.pid.is_some() && c.view.started && !c.view.ready);
        for rerun in unready.filter_map(|c| c.readiness_rerun.as_ref()) {
            rerun.notify_one();
        }
    }

    pub(super) async fn on_probe(
        &mut self,
        index: usize,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
    ) {
        let Some(c) = self
            .containers
            .get_mut(index)
            .filter(|c| c.instance == instance && c.pid.is_some())
        else {
            return;
        };
        self.dirty_since.get_or_insert_with(Instant::now);
        match (kind, ok) {
            (ProbeKind::Readiness, ready) => {
                tracing::info!(pod = %format_args!("{}/{}", self.namespace, self.name), container = %c.view.name, ready, "readiness changed");
                c.view.ready = ready;
            }
            (ProbeKind::Startup, true) => {
                c.view.started = true;
                c.view.ready = c.spec.readiness_probe.is_none();
                self.spawn_probe(index, ProbeKind::Readiness);
                self.spawn_probe(index, ProbeKind::Liveness);
                self.reconcile().await;
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                tracing::info!(pod = %format_args!("{}/{}", self.namespace, self.name), container = %c.view.name, ?kind, "probe failed: restarting the container");
                let probe = Self::probe_of(&c.spec, kind).cloned().unwrap_or_default();
                self.stop_container(index, StopCause::ProbeFailed(&probe));
            }
            (ProbeKind::Liveness, true) => {}
        }
        self.rerun_unready_probes();
    }
}
