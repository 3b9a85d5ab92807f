//! Carrying out the schedule: one worker per group injecting its application faults one after
//! another, one worker injecting controller faults, one injecting control plane faults, all at
//! once. Every wait is bounded; a group that does not recover within its bound is a liveness
//! violation.
//!
//! The run's own API requests (reading a pod, deleting it, the controller replicas' state)
//! would fail while the control plane is down, which says nothing about hapod: a control plane
//! fault waits until none is in flight and holds the others off until the control plane
//! serves again (`Run::plane`). The recoveries the workers wait for read our watch's history
//! and overlap the control plane faults freely.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hapod_testkit::controlplane::Component;
use kube::ResourceExt;
use nix::sys::signal::Signal;
use tokio::sync::RwLock;

use super::check::{self, Violation, settled, single_eligible_active};
use super::groups;
use super::schedule::{
    self, AppFault, AppStep, CtlSignal, CtlStep, PlaneFault, PlaneStep, Replica,
};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    APP_CONTAINER, APP_GROUP, APP_REPLICAS, CRITICAL_CONTAINER, Handover, NONCRITICAL_CONTAINER,
    PodRecord, Testbed, Trigger, monotonic_nanos, now_unix_nanos, partition_pods,
};

/// How long a group may take to have exactly one eligible active pod again after a fault
/// that moves the role (also while a controller replica is down or frozen: its takeover,
/// 3 s of waiting for its predecessor's grants and a 2 s readiness probe fit many times).
pub const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// How long a group may take to be back in its steady state (a replacement pod scheduled,
/// started and Ready) before its next fault.
pub const SETTLE_BOUND: Duration = Duration::from_secs(120);

/// How long after the watch shows a pod's deletion the apiserver's audit log says by then who
/// deleted it (the log is written as the delete request completes).
pub const AUDIT_LAG: Duration = Duration::from_secs(2);

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// The group (none for a controller or control plane fault).
    pub group: Option<usize>,
    pub kind: String,
    pub trigger_unix_nanos: u64,
    /// Trigger to another eligible pod being the only active one, when the role moved.
    pub recovery_ms: Option<f64>,
    /// For a control plane fault: trigger to the control plane serving again.
    pub plane_ms: Option<f64>,
    /// The pod hit (the component, for a control plane fault).
    pub pod: String,
}

/// What the workers share.
pub struct Run<'a> {
    pub tb: &'a Testbed,
    pub seed: u64,
    /// Least gap between controller faults (ms).
    pub controller_gap_ms: u64,
    /// Least gap between control plane faults (ms); 0: none.
    pub plane_gap_ms: u64,
    stop: AtomicBool,
    /// Read-held by a worker while it makes API requests; write-held by a control plane fault
    /// until the control plane serves again.
    plane: RwLock<()>,
    /// UIDs of pods the run deleted itself (the kill check leaves them out).
    deliberate: Mutex<HashSet<String>>,
    faults: Mutex<Vec<FaultRecord>>,
    violations: Mutex<Vec<Violation>>,
}

impl<'a> Run<'a> {
    pub fn new(tb: &'a Testbed, seed: u64, controller_gap_ms: u64, plane_gap_ms: u64) -> Self {
        Run {
            tb,
            seed,
            controller_gap_ms,
            plane_gap_ms,
            stop: AtomicBool::new(false),
            plane: RwLock::new(()),
            deliberate: Mutex::default(),
            faults: Mutex::default(),
            violations: Mutex::default(),
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `ms` in slices, so that a stop is not held up by a long gap; false once the run
    /// stopped.
    async fn gap(&self, ms: u64) -> bool {
        for _ in 0..ms / 100 {
            if self.stopped() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        !self.stopped()
    }

    fn deliberate(&self) -> HashSet<String> {
        self.deliberate.lock().unwrap().clone()
    }

    pub fn faults(&self) -> Vec<FaultRecord> {
        self.faults.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.violations.lock().unwrap().clone()
    }

    /// Records violations (each once) and stops the faults.
    pub fn violate(&self, found: Vec<Violation>) {
        if found.is_empty() {
            return;
        }
        let mut known = self.violations.lock().unwrap();
        for v in found {
            if !known.contains(&v) {
                known.push(v);
            }
        }
        self.stop();
    }

    fn liveness(&self, ns: &str, e: anyhow::Error) {
        self.violate(vec![liveness_violation(ns, e)]);
    }

    /// Waits, on the watch's view of group `ns` (no API request), until `f` finds what it
    /// looks for.
    pub async fn wait_group<T>(
        &self,
        ns: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[PodRecord]) -> Option<T>,
    ) -> Result<T> {
        let f = &f;
        await_condition(
            format!("{what} in {ns}"),
            timeout,
            Duration::from_millis(20),
            || async move {
                let now = self.tb.history.group_now(ns, APP_GROUP);
                Ok(match f(&now) {
                    Some(t) => Check::Done(t),
                    None => Check::NotYet(format!("pods now:\n{}", table(&now))),
                })
            },
        )
        .await
    }

    /// The faults of group `group`, one after another, until the run stops.
    pub async fn group_worker(&self, group: usize) -> Result<()> {
        let ns = groups::namespace(group);
        let mut back_to_back = false;
        for step in schedule::group_steps(self.seed, group) {
            if self.stopped() {
                break;
            }
            let ready = if back_to_back {
                self.wait_group(&ns, "one eligible active", RECOVERY_BOUND, |now| {
                    single_eligible_active(now).map(|_| now.to_vec())
                })
                .await
            } else {
                self.wait_steady(&ns).await
            };
            let now = match ready {
                Ok(now) => now,
                Err(e) => {
                    self.liveness(&ns, e);
                    break;
                }
            };
            back_to_back = step.back_to_back;
            if let Some(record) = self.app_fault(&ns, group, &now, step).await? {
                self.faults.lock().unwrap().push(record);
            }
        }
        Ok(())
    }

    /// Waits for group `ns`'s steady state. A group short of a pod with nothing left for
    /// hapod to do ([`check::short_of_pods`]) waits for the ReplicaSet controller only: that
    /// one is refreshed once and waited for again.
    async fn wait_steady(&self, ns: &str) -> Result<Vec<PodRecord>> {
        let steady = |now: &[PodRecord]| settled(now, APP_REPLICAS).map(|_| now.to_vec());
        match self
            .wait_group(ns, "the steady state", SETTLE_BOUND, steady)
            .await
        {
            Err(e)
                if check::short_of_pods(
                    &self.tb.history.group_now(ns, APP_GROUP),
                    APP_REPLICAS,
                ) =>
            {
                let why = format!("{ns} has waited {SETTLE_BOUND:?} for a replacement pod");
                self.refresh_replicaset_controller(&why).await?;
                let again = self.wait_group(ns, "the steady state", SETTLE_BOUND, steady);
                again.await.map_err(|again| again.context(format!("{e:#}")))
            }
            ready => ready,
        }
    }

    /// Injects `step` on group `ns` (pods `now`), waits for the recovery it needs.
    async fn app_fault(
        &self,
        ns: &str,
        group: usize,
        now: &[PodRecord],
        step: AppStep,
    ) -> Result<Option<FaultRecord>> {
        let Some(active) = single_eligible_active(now) else {
            return Ok(None);
        };
        let target = if step.fault == AppFault::StandbyDelete {
            match now.iter().find(|r| r.uid != active.uid && !r.terminating) {
                Some(standby) => standby,
                None => return Ok(None),
            }
        } else {
            active
        };
        let Some((pod, t0)) = self.inject_on(ns, target, step).await? else {
            return Ok(None);
        };
        let old = active.uid.clone();
        let sidecar = NONCRITICAL_CONTAINER.to_string();
        // A crash of the sidecar shows on the pod first: it restarts in place within about
        // two seconds, so the active may be Ready again before the handover is done, and
        // then it rightly keeps the role.
        let crashed = |now: &[PodRecord]| match now.iter().find(|r| r.uid == target.uid) {
            Some(r) => r.not_running.contains(&sidecar) || r.restarted.contains(&sidecar),
            None => true,
        };
        let must_move = step.fault.moves_role();
        let recovered = self
            .wait_group(
                ns,
                "exactly one eligible active after the fault",
                RECOVERY_BOUND,
                |now| {
                    let seen = step.fault != AppFault::SidecarCrash || crashed(now);
                    single_eligible_active(now)
                        .filter(|a| seen && (a.uid != old || !must_move))
                        .map(|a| (a.uid != old).then_some(a.seen_unix_nanos))
                },
            )
            .await;
        let recovery_ms = match recovered {
            Ok(moved) => moved.map(|seen| seen.saturating_sub(t0) as f64 / 1e6),
            Err(e) => {
                self.liveness(ns, e);
                None
            }
        };
        // The pod may come back as a standby (it is gone after the other faults).
        let _ = self.tb.remove_in_container(&pod, APP_CONTAINER, "unready");
        let _ = self
            .tb
            .remove_in_container(&pod, NONCRITICAL_CONTAINER, "killme");
        Ok(Some(FaultRecord {
            group: Some(group),
            kind: step.fault.name().into(),
            trigger_unix_nanos: t0,
            recovery_ms,
            plane_ms: None,
            pod: target.pod.clone(),
        }))
    }

    /// Injects `step` on the pod of `target` if it is still that pod; returns the pod and the
    /// time of the fault, none if the pod has gone. No control plane fault meanwhile.
    async fn inject_on(
        &self,
        ns: &str,
        target: &PodRecord,
        step: AppStep,
    ) -> Result<Option<(k8s_openapi::api::core::v1::Pod, u64)>> {
        let _plane = self.plane.read().await;
        // Gone meanwhile (a previous fault's pod deleted by the controller): next step.
        let Some(pod) = self.tb.pod(ns, &target.pod).await? else {
            return Ok(None);
        };
        if pod.uid().as_deref() != Some(target.uid.as_str()) {
            return Ok(None);
        }
        // A partition cuts the acting controller off: found before the clock starts (the
        // replicas may take a while to settle after a controller fault).
        let controller = if step.fault == AppFault::Partition {
            match self.tb.wait_controllers_settled(SETTLE_BOUND).await {
                Ok(settled) => Some(settled.active),
                Err(e) => {
                    self.liveness("hapod-system", e);
                    return Ok(None);
                }
            }
        } else {
            None
        };
        let t0 = now_unix_nanos();
        if let Err(e) = self.inject(&pod, step, controller.as_ref()).await {
            // The pod may have gone, or started going, between the look and the fault (its
            // controller-side kill or its grace period; the node may have removed its
            // folders already): nothing was injected.
            let now = self.tb.pod(ns, &target.pod).await?;
            let leaving = now.is_none_or(|p| {
                p.uid().as_deref() != Some(target.uid.as_str())
                    || p.metadata.deletion_timestamp.is_some()
            });
            if leaving {
                return Ok(None);
            }
            return Err(e.context(format!("{} of {ns}/{}", step.fault.name(), target.pod)));
        }
        Ok(Some((pod, t0)))
    }

    /// Injects `step` on `pod`; a partition cuts it from `controller`.
    async fn inject(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        step: AppStep,
        controller: Option<&k8s_openapi::api::core::v1::Pod>,
    ) -> Result<()> {
        let deliberate = || self.deliberate.lock().unwrap().extend(pod.uid());
        match step.fault {
            AppFault::ForceDelete | AppFault::StandbyDelete => {
                deliberate();
                self.tb.trigger(pod, Trigger::ForceDelete).await?;
            }
            AppFault::GracefulDelete => {
                deliberate();
                self.tb.trigger(pod, Trigger::GracefulDelete).await?;
            }
            AppFault::CriticalCrash => {
                self.tb
                    .touch_in_container(pod, CRITICAL_CONTAINER, "killme")?;
            }
            AppFault::NotReady => {
                self.tb.trigger(pod, Trigger::Unready).await?;
            }
            AppFault::SidecarCrash => {
                self.tb.trigger(pod, Trigger::KillNonCritical).await?;
            }
            AppFault::AgentKill => {
                let pids = Testbed::container_processes(pod, APP_CONTAINER)?;
                Testbed::signal_processes(&pids, Signal::SIGKILL)?;
            }
            AppFault::Hang => {
                stop_for(Testbed::pod_processes(pod)?, step.lasts_ms).await?;
            }
            AppFault::Partition => {
                let controller = controller.context("a partition needs the acting controller")?;
                let cut = partition_pods(controller, pod)?;
                tokio::time::sleep(Duration::from_millis(step.lasts_ms)).await;
                cut.heal()?;
            }
        }
        Ok(())
    }

    /// Controller faults, `gap_ms` apart after the replicas settled, until the run stops.
    pub async fn controller_worker(&self) -> Result<()> {
        for step in schedule::controller_steps(self.seed, self.controller_gap_ms) {
            if !self.gap(step.gap_ms).await {
                return Ok(());
            }
            if let Some(record) = self.controller_fault(step).await? {
                self.faults.lock().unwrap().push(record);
            }
        }
        Ok(())
    }

    async fn controller_fault(&self, step: CtlStep) -> Result<Option<FaultRecord>> {
        let _plane = self.plane.read().await;
        let settled = match self.tb.wait_controllers_settled(SETTLE_BOUND).await {
            Ok(s) => s,
            Err(e) => {
                self.liveness("hapod-system", e);
                return Ok(None);
            }
        };
        let pod = match step.replica {
            Replica::Acting => settled.active,
            Replica::Standby => match settled.standbys.into_iter().next() {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let pids = Testbed::pod_processes(&pod)?;
        let t0 = now_unix_nanos();
        match step.signal {
            CtlSignal::Kill => Testbed::signal_processes(&pids, Signal::SIGKILL)?,
            CtlSignal::Term => Testbed::signal_processes(&pids, Signal::SIGTERM)?,
            CtlSignal::Stop(ms) => stop_for(pids, ms).await?,
        }
        Ok(Some(FaultRecord {
            group: None,
            kind: step.kind(),
            trigger_unix_nanos: t0,
            recovery_ms: None,
            plane_ms: None,
            pod: pod.name_any(),
        }))
    }

    /// Restarts kube-controller-manager, saying `why`. A restarted apiserver refuses
    /// watches for a moment (its RBAC not loaded yet); the ReplicaSet controller then can work
    /// from a stale pod cache: it created a surplus pod and deleted one, and once did not
    /// replace a deleted pod for minutes. The checks are about hapod, which needs the
    /// ReplicaSets to keep their pods.
    async fn refresh_replicaset_controller(&self, why: &str) -> Result<()> {
        let took = self
            .tb
            .with_control_plane(|cp| cp.restart(Component::KubeControllerManager))
            .await?;
        println!(
            "chaos: kube-controller-manager restarted ({:.1} s): {why}",
            took.as_secs_f64()
        );
        Ok(())
    }

    /// After control plane faults, before the recovery checks: a fresh ReplicaSet
    /// controller (see [`Run::refresh_replicaset_controller`]).
    pub async fn refresh_after_plane_faults(&self) -> Result<()> {
        let plane_faults = self
            .faults()
            .iter()
            .filter(|f| f.plane_ms.is_some())
            .count();
        if plane_faults == 0 {
            return Ok(());
        }
        let why = format!("{plane_faults} control plane faults are over");
        self.refresh_replicaset_controller(&why).await
    }

    /// Control plane faults, `gap_ms` apart after the previous one recovered and the controller
    /// replicas settled, until the run stops; none with a gap of 0.
    pub async fn plane_worker(&self) -> Result<()> {
        if self.plane_gap_ms == 0 {
            return Ok(());
        }
        for step in schedule::plane_steps(self.seed, self.plane_gap_ms) {
            if !self.gap(step.gap_ms).await {
                return Ok(());
            }
            if let Some(record) = self.plane_fault(step).await? {
                self.faults.lock().unwrap().push(record);
            }
        }
        Ok(())
    }

    /// Injects `step` once the controller replicas settled and no request of the run is in
    /// flight; returns when the control plane serves again.
    async fn plane_fault(&self, step: PlaneStep) -> Result<Option<FaultRecord>> {
        if let Err(e) = self.tb.wait_controllers_settled(SETTLE_BOUND).await {
            self.liveness("hapod-system", e);
            return Ok(None);
        }
        let _plane = self.plane.write().await;
        if self.stopped() {
            return Ok(None);
        }
        let component = step.component();
        let t0 = now_unix_nanos();
        match step.fault {
            PlaneFault::Restart(c) => {
                self.tb.with_control_plane(move |cp| cp.restart(c)).await?;
            }
            PlaneFault::Stop(c, ms) => {
                stop_component(self.tb, c, ms).await?;
                self.tb
                    .with_control_plane(move |cp| {
                        cp.wait_ready(c, std::time::Instant::now() + SETTLE_BOUND)
                    })
                    .await?;
            }
        }
        Ok(Some(FaultRecord {
            group: None,
            kind: step.kind(),
            trigger_unix_nanos: t0,
            recovery_ms: None,
            plane_ms: Some(now_unix_nanos().saturating_sub(t0) as f64 / 1e6),
            pod: component.name().into(),
        }))
    }

    /// The applications' own evidence so far (their acting journals): no two of a group acted
    /// at once; recorded as violations, shown with the label records from that moment.
    /// Returns every handover between two applications of a chaos group.
    pub fn check_apps(&self) -> Result<Vec<Handover>> {
        let journals = self.tb.journals()?;
        let records = chaos_records(self.tb);
        // The journals' clock (CLOCK_MONOTONIC) against the records' (wall clock).
        let offset = i128::from(now_unix_nanos()) - monotonic_nanos();
        let ours = |group: &str| group.starts_with(groups::PREFIX);
        let found = journals.overlaps().into_iter().filter(|o| ours(&o.group));
        self.violate(
            found
                .map(|o| {
                    let at = u64::try_from(o.late.at_nanos + offset).unwrap_or(0);
                    let (namespace, group) = o.group.split_once('/').unwrap_or_default();
                    Violation {
                        check: "two-acting",
                        namespace: namespace.into(),
                        group: group.into(),
                        rv: records
                            .iter()
                            .find(|r| r.seen_unix_nanos >= at)
                            .map(|r| r.rv),
                        detail: o.to_string(),
                    }
                })
                .collect(),
        );
        let mut handovers = journals.handovers();
        handovers.retain(|h| ours(&h.group));
        Ok(handovers)
    }

    /// Safety checks over the history so far, recorded as violations; returns the failovers.
    /// A record the watch saw less than [`AUDIT_LAG`] ago waits for the next check: who
    /// deleted its pod may not be in the audit log yet.
    pub fn check_now(&self) -> Result<usize> {
        let mut records = chaos_records(self.tb);
        let deletions = self.tb.control_plane()?.pod_deletions()?;
        let failovers = check::failovers(&records);
        let judged_until = now_unix_nanos().saturating_sub(AUDIT_LAG.as_nanos() as u64);
        records.retain(|r| r.seen_unix_nanos <= judged_until);
        let not_hapods = check::not_hapods(&records, &self.deliberate(), &deletions);
        self.violate(check::safety(&records, &not_hapods));
        Ok(failovers)
    }
}

/// A group (or the controller replicas) that did not recover within its bound.
pub fn liveness_violation(ns: &str, e: anyhow::Error) -> Violation {
    Violation {
        check: "liveness",
        namespace: ns.into(),
        group: APP_GROUP.into(),
        rv: None,
        detail: format!("{e:#}"),
    }
}

/// Every pod record of the chaos groups, in resourceVersion order.
pub fn chaos_records(tb: &Testbed) -> Vec<PodRecord> {
    let mut records = tb.history.pod_records();
    records.retain(|r| r.namespace.starts_with(groups::PREFIX));
    records
}

/// SIGSTOPs `pids`, SIGCONTs them `ms` later (also when the wait is cancelled).
async fn stop_for(pids: Vec<i32>, ms: u64) -> Result<()> {
    paused(ms, move |signal| Testbed::signal_processes(&pids, signal)).await
}

/// SIGSTOPs the control plane's `component`, SIGCONTs it `ms` later (also when the wait is
/// cancelled).
async fn stop_component(tb: &Testbed, component: Component, ms: u64) -> Result<()> {
    paused(ms, |signal| tb.control_plane()?.signal(component, signal)).await
}

/// Sends SIGSTOP with `send`, then SIGCONT `ms` later (also when the wait is cancelled).
async fn paused(ms: u64, send: impl Fn(Signal) -> Result<()>) -> Result<()> {
    struct Continue<F: Fn(Signal) -> Result<()>>(F);
    impl<F: Fn(Signal) -> Result<()>> Drop for Continue<F> {
        fn drop(&mut self) {
            let _ = (self.0)(Signal::SIGCONT);
        }
    }
    send(Signal::SIGSTOP)?;
    let stopped = Continue(send);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    drop(stopped);
    Ok(())
}

fn table(now: &[PodRecord]) -> String {
    now.iter()
        .map(|r| {
            format!(
                "  {} role={} ready={} terminating={} not_running={:?}\n",
                r.pod,
                r.role.as_deref().unwrap_or("-"),
                r.ready,
                r.terminating,
                r.not_running
            )
        })
        .collect()
}
