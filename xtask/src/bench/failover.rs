//! Failover scenarios on the deployed system (deploy/base on the real control plane with the
//! process node), run through the shared testbed. Every time stamp is on the bench process's
//! wall clock (the testbed's History stamps each watch event on receipt); the app's receive
//! time comes from the demo app's `/state`, on the same host clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

use hapod_testkit::testbed::{
    self, APP_CONTAINER, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, CONTROLLER_NAMESPACE,
    CRITICAL_CONTAINER, Testbed, Timeline, Trigger,
};

/// The failure kinds the benchmark injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ForceDelete,
    GracefulDelete,
    Crash,
    NotReady,
    ControllerKill,
}

impl Kind {
    /// Order of a run: the controller kill last, so that the controller-side metrics of the
    /// other kinds come from one replica.
    pub const ALL: [Kind; 5] = [
        Kind::ForceDelete,
        Kind::GracefulDelete,
        Kind::Crash,
        Kind::NotReady,
        Kind::ControllerKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ForceDelete => "force-delete",
            Kind::GracefulDelete => "graceful-delete",
            Kind::Crash => "critical-crash",
            Kind::NotReady => "not-ready",
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
                "critical container aborts (trigger: /tmp/killme written in its /tmp; it polls \
                 the file every second)"
            }
            Kind::NotReady => {
                "active app's readiness probe fails (trigger: /tmp/unready written in the app's \
                 /tmp; the probe runs every 2 s)"
            }
            Kind::ControllerKill => {
                "acting controller replica SIGKILLed and its pod force-deleted while the active \
                 app pod is force-deleted (trigger: the app pod's DELETE call)"
            }
        }
    }

    fn trigger(self) -> Option<Trigger> {
        match self {
            Kind::ForceDelete => Some(Trigger::ForceDelete),
            Kind::GracefulDelete => Some(Trigger::GracefulDelete),
            Kind::Crash => Some(Trigger::KillCritical),
            Kind::NotReady => Some(Trigger::Unready),
            Kind::ControllerKill => None,
        }
    }
}

/// The stages of one failover (times since the trigger).
pub const STAGES: [&str; 5] = ["event", "demoted", "labeled", "applied", "slice"];

pub fn stage_describe(stage: &str) -> &'static str {
    match stage {
        "event" => "first watch event showing the failure on the old active",
        "demoted" => "old active no longer labeled active (relabeled or gone), watch",
        "labeled" => "new active labeled, watch",
        "applied" => "new active's app applied the notification (its `/state` applied_at)",
        "slice" => "the Service's EndpointSlice lists only the new pod as ready, watch",
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
    pub note: String,
}

impl Record {
    pub fn stage_ns(&self, i: usize) -> Option<u64> {
        let t = &self.timeline;
        [
            t.seen_unix_nanos,
            t.demoted_unix_nanos,
            t.promoted_unix_nanos,
            t.app_applied_unix_nanos,
            t.endpoints_unix_nanos,
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
fn cleanup(old: &Pod) {
    let _ = Testbed::remove_in_container(old, CRITICAL_CONTAINER, "killme");
    let _ = Testbed::remove_in_container(old, APP_CONTAINER, "unready");
}

/// Runs one failover of `kind` on the sample app and measures it.
pub async fn run_one(tb: &Testbed, kind: Kind, iter: usize, timeout: Duration) -> Result<Record> {
    if let Some(trigger) = kind.trigger() {
        let f = tb.failover(trigger, timeout).await;
        if let Ok(f) = &f {
            cleanup(&f.old);
        }
        let f = f.with_context(|| format!("{} #{iter}", kind.name()))?;
        return Ok(Record {
            kind,
            iter,
            old_pod: f.old.name_any(),
            new_pod: f.new.name_any(),
            epoch: testbed::pod_epoch(&f.new),
            timeline: f.timeline,
            controller_killed: None,
            note: String::new(),
        });
    }
    controller_kill(tb, iter, timeout)
        .await
        .with_context(|| format!("{} #{iter}", kind.name()))
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
        .await_failover(&old, t_trigger, timeout)
        .await
        .with_context(|| format!("no failover after killing controller {ctl_name}"))?;
    Ok(Record {
        kind: Kind::ControllerKill,
        iter,
        old_pod: old.name_any(),
        new_pod: new.name_any(),
        epoch: testbed::pod_epoch(&new),
        timeline,
        controller_killed: Some(t_kill),
        note: if pid.is_none() {
            format!("process of {ctl_name} not found: pod force-deleted only")
        } else {
            format!("killed {ctl_name}")
        },
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
