//! Failover scenarios on the deployed system (deploy/base on the real control plane with the
//! process node), run through the shared testbed. Every time stamp is on the bench process's
//! wall clock (the testbed's History stamps each watch event on receipt); the app's receive
//! time comes from the demo app's `/state`, on the same host clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

use hapod_testkit::testbed::{
    self, APP_CONTAINER, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, CONTROLLER_NAMESPACE,
    CRITICAL_CONTAINER, Fault, SECOND_NODE, Testbed, Timeline, Trigger, pod_node,
};

/// The failure kinds the benchmark injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ForceDelete,
    GracefulDelete,
    Crash,
    NotReady,
    Hang,
    Partition,
    NodeLoss,
    ControllerKill,
}

impl Kind {
    /// Order of a run: the controller kill last, so that the controller-side metrics of the
    /// other kinds come from one replica.
    pub const ALL: [Kind; 8] = [
        Kind::ForceDelete,
        Kind::GracefulDelete,
        Kind::Crash,
        Kind::NotReady,
        Kind::Hang,
        Kind::Partition,
        Kind::NodeLoss,
        Kind::ControllerKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ForceDelete => "force-delete",
            Kind::GracefulDelete => "graceful-delete",
            Kind::Crash => "critical-crash",
            Kind::NotReady => "not-ready",
            Kind::Hang => "hang",
            Kind::Partition => "partition",
            Kind::NodeLoss => "node-loss",
            Kind::ControllerKill => "controller-killed",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::ForceDelete => "active pod deleted with grace 0 (trigger: the DELETE call)",
            Kind::GracefulDelete => {
                "active pod deleted with its grace period, 10 s (trigger: the DELETE call)"
            }
            Kind::Crash => {
                "critical container aborts (trigger: /tmp/killme written in its /tmp, at a \
                 random point of the second in which the container polls the file)"
            }
            Kind::NotReady => {
                "active app's readiness probe fails (trigger: /tmp/unready written in the app's \
                 /tmp, at a random point of the probe's 2 s period)"
            }
            Kind::Hang => {
                "every process of the active app pod stopped with SIGSTOP, continued once the \
                 failover is measured; the API still shows the pod Ready until its probe times \
                 out (trigger: the first SIGSTOP)"
            }
            Kind::Partition => {
                "acting controller and active app pod cut from each other (every packet between \
                 their addresses dropped), healed once the failover is measured; the API still \
                 shows the pod Ready (trigger: the cut)"
            }
            Kind::NodeLoss => {
                "the active app pod alone on a second node, whose node process and every \
                 process of its pods are stopped with SIGSTOP, continued once the failover is \
                 measured; the API still shows the node and the pod Ready (trigger: the first \
                 SIGSTOP)"
            }
            Kind::ControllerKill => {
                "acting controller replica SIGKILLed and its pod force-deleted while the active \
                 app pod is force-deleted (trigger: the app pod's DELETE call)"
            }
        }
    }

    /// Whether the API shows the failure (a watch event the controller acts on); a hang, a
    /// partition or a lost node is found from the missing reports instead.
    pub fn api_sees_failure(self) -> bool {
        !matches!(self, Kind::Hang | Kind::Partition | Kind::NodeLoss)
    }

    /// Whether the real node can run it: not a partition (policy routing on `lo`, where only
    /// the process node's pods are) nor a lost node (a second process node).
    pub fn runs_on_real_node(self) -> bool {
        !matches!(self, Kind::Partition | Kind::NodeLoss)
    }

    /// How often what finds this failure looks for it, where that polls: the app container's
    /// readiness probe (its `periodSeconds`, Kubernetes' default 10 s) or the crash program
    /// (`hapod-demo crash`, every second by default, as in deploy/base).
    fn poll_period(self, active: &Pod) -> Option<Duration> {
        match self {
            Kind::NotReady => {
                let app = active
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .find(|c| c.name == APP_CONTAINER)?;
                let seconds = app.readiness_probe.as_ref()?.period_seconds.unwrap_or(10);
                Some(Duration::from_secs(u64::try_from(seconds).ok()?.max(1)))
            }
            Kind::Crash => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    fn trigger(self) -> Option<Trigger> {
        match self {
            Kind::ForceDelete => Some(Trigger::ForceDelete),
            Kind::GracefulDelete => Some(Trigger::GracefulDelete),
            Kind::Crash => Some(Trigger::KillCritical),
            Kind::NotReady => Some(Trigger::Unready),
            Kind::Hang | Kind::Partition | Kind::NodeLoss | Kind::ControllerKill => None,
        }
    }
}

/// The stages of one failover (times since the trigger).
pub const STAGES: [&str; 6] = ["event", "demoted", "labeled", "applied", "slice", "traffic"];

pub fn stage_describe(stage: &str) -> &'static str {
    match stage {
        "event" => {
            "first watch event showing the failure on the old active (a hang or a partition may \
             show none: not observed)"
        }
        "demoted" => "old active no longer labeled active (relabeled or gone), watch",
        "labeled" => "new active labeled, watch",
        "applied" => "new active's app applied the notification (its `/state` applied_at)",
        "slice" => "the Service's EndpointSlice lists only the new pod as ready, watch",
        "traffic" => {
            "first answer from the new pod to a request sent to the Service's ClusterIP (a new \
             connection every 2 ms from inside the namespace; the real node only, where \
             kube-proxy forwards ClusterIPs)"
        }
        _ => "",
    }
}

/// One measured failover. Times are unix ns on the bench's clock.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub iter: usize,
    pub old_pod: String,
    pub new_pod: String,
    pub epoch: Option<u64>,
    pub timeline: Timeline,
    /// when the acting controller was SIGKILLed (controller-killed kind)
    pub controller_killed: Option<u64>,
    /// the trigger on the host's CLOCK_MONOTONIC, the applications' journals' clock
    pub trigger_monotonic_nanos: i128,
    /// time two applications of the group acted at once after this trigger, from their
    /// journals (None: not read)
    pub overlap_ms: Option<f64>,
    pub note: String,
}

impl Record {
    fn new(kind: Kind, iter: usize, old: &Pod, new: &Pod, timeline: Timeline) -> Record {
        Record {
            kind,
            iter,
            old_pod: old.name_any(),
            new_pod: new.name_any(),
            epoch: testbed::pod_epoch(new),
            timeline,
            controller_killed: None,
            trigger_monotonic_nanos: 0,
            overlap_ms: None,
            note: String::new(),
        }
    }

    /// A record of pods `a` → `b` with no overlap, for the report's tests.
    #[cfg(test)]
    pub fn synthetic(kind: Kind, iter: usize, timeline: Timeline) -> Record {
        Record {
            kind,
            iter,
            old_pod: "a".into(),
            new_pod: "b".into(),
            epoch: None,
            trigger_monotonic_nanos: i128::from(timeline.trigger_unix_nanos),
            timeline,
            controller_killed: None,
            overlap_ms: Some(0.0),
            note: String::new(),
        }
    }

    pub fn stage_ns(&self, i: usize) -> Option<u64> {
        let t = &self.timeline;
        [
            t.seen_unix_nanos,
            t.demoted_unix_nanos,
            t.promoted_unix_nanos,
            t.app_applied_unix_nanos,
            t.endpoints_unix_nanos,
            t.traffic_unix_nanos,
        ][i]
    }

    /// Milliseconds from the trigger to stage `i` (NaN when not observed).
    pub fn ms(&self, i: usize) -> f64 {
        self.stage_ns(i).map_or(f64::NAN, |t| {
            (t as f64 - self.timeline.trigger_unix_nanos as f64) / 1e6
        })
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Removes the trigger files from the old pod so it can come back as a standby (a no-op once
/// the pod is gone).
fn cleanup(tb: &Testbed, old: &Pod) {
    let _ = tb.remove_in_container(old, CRITICAL_CONTAINER, "killme");
    let _ = tb.remove_in_container(old, APP_CONTAINER, "unready");
}

/// Runs one failover of `kind` on the sample app and measures it.
pub async fn run_one(tb: &Testbed, kind: Kind, iter: usize, timeout: Duration) -> Result<Record> {
    let rec = match kind.trigger() {
        Some(trigger) => triggered(tb, kind, trigger, iter, timeout).await,
        None if kind == Kind::ControllerKill => controller_kill(tb, iter, timeout).await,
        None => unresponsive(tb, kind, iter, timeout).await,
    };
    let mut rec = rec.with_context(|| format!("{} #{iter}", kind.name()))?;
    // the trigger on the journals' clock: now on both clocks, less the time since the trigger
    let since = testbed::now_unix_nanos() as i128 - rec.timeline.trigger_unix_nanos as i128;
    rec.trigger_monotonic_nanos = testbed::monotonic_nanos() - since;
    Ok(rec)
}

/// A failover through one of the testbed's [`Trigger`]s.
async fn triggered(
    tb: &Testbed,
    kind: Kind,
    trigger: Trigger,
    iter: usize,
    timeout: Duration,
) -> Result<Record> {
    // The bench triggers as soon as the group settles, which a probe decides: left alone, it
    // would hit the same point of a polled failure's period every time. A random wait of up
    // to one period spreads the triggers over it, as failures come in production.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
        .await
        .context("group not settled before the failover")?;
    if let Some(period) = kind.poll_period(&settled.active) {
        tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    }
    let f = tb.failover(trigger, timeout).await;
    if let Ok(f) = &f {
        cleanup(tb, &f.old);
    }
    let f = f?;
    Ok(Record::new(kind, iter, &f.old, &f.new, f.timeline))
}

/// A failure the API learns of late (hang, partition, node loss): the [`Fault`] lasts until
/// the failover is measured, then ends (the processes continue, the partition heals) and the
/// old pod rejoins as standby before the next iteration. A lost node is a second process
/// node, started for the iteration with the active alone on it, Ready again after the fault
/// and then removed: the group settles on the first node again.
async fn unresponsive(tb: &Testbed, kind: Kind, iter: usize, timeout: Duration) -> Result<Record> {
    if kind != Kind::NodeLoss {
        return faulted(tb, kind, iter, timeout, |ctrl, old| match kind {
            Kind::Hang => Fault::hang(old),
            _ => Fault::cut(ctrl, old),
        })
        .await
        .map(|(record, _)| record);
    }
    let mut node = tb.start_second_node().await?;
    let measured = async {
        tb.place_active_on_second_node(timeout).await?;
        let pods = tb.node_pods(SECOND_NODE).await?;
        let (record, ended_at) = faulted(tb, kind, iter, timeout, |ctrl, _| {
            ensure!(
                pod_node(ctrl) != Some(SECOND_NODE),
                "the acting controller {} is on the node to be lost",
                ctrl.name_any()
            );
            Fault::node_lost(node.pid(), &pods)
        })
        .await?;
        node.wait_ready_since(ended_at)
            .await
            .with_context(|| format!("{SECOND_NODE} is not Ready again after the fault"))?;
        Ok::<_, anyhow::Error>(record)
    }
    .await;
    let removed = node.remove();
    let record = measured?;
    removed.with_context(|| format!("removing {SECOND_NODE}"))?;
    Ok(record)
}

/// Inflicts `fault` (given the acting controller and the active app pod) on a settled group,
/// measures the failover and ends the fault; returns the record and when the fault ended.
async fn faulted(
    tb: &Testbed,
    kind: Kind,
    iter: usize,
    timeout: Duration,
    fault: impl FnOnce(&Pod, &Pod) -> Result<Fault>,
) -> Result<(Record, SystemTime)> {
    let ctrl = tb
        .wait_controllers_settled(timeout)
        .await
        .context("controllers not settled")?
        .active;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
        .await
        .context("group not settled before the failover")?;
    let old = before.active.clone();
    let traffic = tb.watch_traffic().await?;
    let fault = fault(&ctrl, &old)?;
    let t_trigger = fault.started();
    let measured = tb.await_failover(&old, t_trigger, traffic, timeout).await;
    let ended_at = SystemTime::now();
    let ended = fault.end();
    let (new, _, timeline) = measured
        .with_context(|| format!("no failover while {} was {}", old.name_any(), kind.name()))?;
    ended.context("ending the fault")?;
    Ok((Record::new(kind, iter, &old, &new, timeline), ended_at))
}

/// The acting controller replica dies at the moment a failover starts: it is SIGKILLed (its
/// process found through /proc) and its pod force-deleted, concurrently with the force delete
/// of the active app pod. The standby replica must take over and finish the failover.
async fn controller_kill(tb: &Testbed, iter: usize, timeout: Duration) -> Result<Record> {
    tb.wait_controllers_settled(timeout)
        .await
        .context("controllers not settled")?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, timeout)
        .await
        .context("group not settled before the failover")?;
    let old = before.active.clone();
    let ctl = tb.active_controller(timeout).await?;
    let ctl_name = ctl.name_any();
    let pid = super::sysinfo::find_pid("hapod-controller", &ctl_name);
    let app_api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let ctl_api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    let grace0 = DeleteParams::default().grace_period(0);
    let traffic = tb.watch_traffic().await?;
    let kill = async {
        let t = testbed::now_unix_nanos();
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = ctl_api.delete(&ctl_name, &grace0).await;
        t
    };
    let del = async {
        let t = SystemTime::now();
        let r = app_api.delete(&old.name_any(), &grace0).await;
        (t, r)
    };
    let (t_kill, (t_trigger, r)) = tokio::join!(kill, del);
    r.context("deleting the active app pod")?;
    let (new, _, timeline) = tb
        .await_failover(&old, t_trigger, traffic, timeout)
        .await
        .with_context(|| format!("no failover after killing controller {ctl_name}"))?;
    Ok(Record {
        controller_killed: Some(t_kill),
        note: if pid.is_none() {
            format!("process of {ctl_name} not found: pod force-deleted only")
        } else {
            format!("killed {ctl_name}")
        },
        ..Record::new(Kind::ControllerKill, iter, &old, &new, timeline)
    })
}

/// Scrapes the acting controller's `/metrics` (pod IP, port 8080): its histograms and its
/// counters.
pub async fn scrape_controller(
    tb: &Testbed,
) -> Result<(super::promhist::Scrape, super::writes::Counters)> {
    let ctl = tb.active_controller(Duration::from_secs(30)).await?;
    let ip = testbed::pod_ip(&ctl).ok_or_else(|| anyhow!("controller has no IP"))?;
    let (status, body) = testbed::http_get(&ip, 8080, "/metrics", Duration::from_secs(5)).await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok((
        super::promhist::parse(&body),
        super::writes::counters(&body),
    ))
}

/// `unix_ns` for callers that hold a SystemTime.
pub fn ns(t: SystemTime) -> u64 {
    unix_ns(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with_readiness_period(period_seconds: Option<i32>) -> Pod {
        let probe = period_seconds.map(|p| serde_json::json!({ "periodSeconds": p }));
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "spec": { "containers": [
                { "name": "other", "readinessProbe": { "periodSeconds": 7 } },
                { "name": APP_CONTAINER, "readinessProbe": probe },
            ] },
        }))
        .unwrap()
    }

    #[test]
    fn poll_period_is_the_app_probes_or_the_crash_programs() {
        let pod = pod_with_readiness_period(Some(3));
        assert_eq!(
            Kind::NotReady.poll_period(&pod),
            Some(Duration::from_secs(3))
        );
        assert_eq!(Kind::Crash.poll_period(&pod), Some(Duration::from_secs(1)));
        assert_eq!(Kind::ForceDelete.poll_period(&pod), None);
        assert_eq!(Kind::Hang.poll_period(&pod), None);
        // No probe, no readiness to lose; a probe without a period runs every 10 s.
        assert_eq!(
            Kind::NotReady.poll_period(&pod_with_readiness_period(None)),
            None
        );
        let mut defaulted = pod_with_readiness_period(Some(3));
        defaulted.spec.as_mut().unwrap().containers[1]
            .readiness_probe
            .as_mut()
            .unwrap()
            .period_seconds = None;
        assert_eq!(
            Kind::NotReady.poll_period(&defaulted),
            Some(Duration::from_secs(10))
        );
    }
}
