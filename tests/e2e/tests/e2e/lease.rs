//! The application lease (docs/fencing.md): the active application stops acting on its own
//! when the grants stop coming.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::testbed::{
    ACTIVE, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, STANDBY, Testbed, pod_role,
};
use kube::ResourceExt;

use crate::common::WAIT;

/// The lease of `deploy/base` (`--application-lease-ms`).
const LEASE: Duration = Duration::from_millis(1000);

/// How long the app may take to step down after the last renewal could have reached it:
/// one lease, with generous slack for a noisy machine (polling, scheduling, a loaded CI).
const LAPSE_BOUND: Duration = Duration::from_secs(5);

/// Every process of the acting controller replica is stopped (SIGSTOP), which stops its
/// heartbeats at once while the election notices only after its renew deadline: the active
/// application must report itself no longer active (`standby` in `/state`, the lapsed grant)
/// within about one lease. Once the processes continue, the group ends with exactly one
/// active label and an active application again. The processes are always continued, also
/// when an assertion fails, so that the later scenarios find a working controller.
pub(crate) async fn application_stops_when_grants_stop(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let active = app.active.clone();
    let pids = Testbed::pod_processes(&ctrl.active)?;
    ensure!(
        !pids.is_empty(),
        "no process found for the acting controller {}",
        ctrl.active.name_any()
    );
    println!(
        "  stopping the acting controller {} (pids {pids:?}); active app pod {}",
        ctrl.active.name_any(),
        active.name_any()
    );
    let stopped = Testbed::stop_processes(pids)?;
    let lapse = wait_app_not_active(tb, &active, LAPSE_BOUND + Duration::from_secs(5)).await;
    let resumed = stopped.resume();
    let (lapse, state) = lapse?;
    resumed?;
    println!(
        "  the active app stepped down {:.0} ms after the controller stopped (lease {} ms): {state:?}",
        lapse.as_secs_f64() * 1000.0,
        LEASE.as_millis()
    );
    ensure!(
        lapse <= LAPSE_BOUND,
        "the active app stepped down only {lapse:?} after the controller stopped (bound {LAPSE_BOUND:?})"
    );
    ensure!(
        state.role.as_deref() == Some(STANDBY),
        "the app stepped down to {:?}, want {STANDBY} (the lapsed grant)",
        state.role
    );

    // The controller continues (or the other replica takes over): one active label, and its
    // app active again with the pod's epoch.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not settle after the controller continued")?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    ensure!(
        view.active().len() == 1,
        "active pods after the stall: {}",
        view.table()
    );
    for s in &settled.standbys {
        ensure!(
            pod_role(s) == Some(STANDBY),
            "{} is not standby",
            s.name_any()
        );
    }
    println!(
        "  after the stall: active app pod {} ({}), app state {:?}",
        settled.active.name_any(),
        if settled.active.uid() == active.uid() {
            "the same"
        } else {
            "another"
        },
        settled.app_state
    );
    tb.wait_controllers_settled(WAIT).await?;
    Ok(())
}

/// Polls the pod's `/state` until the app no longer says active; returns the time from the
/// call and the state seen.
async fn wait_app_not_active(
    tb: &Testbed,
    pod: &k8s_openapi::api::core::v1::Pod,
    timeout: Duration,
) -> Result<(Duration, hapod_testkit::testbed::AppState)> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < timeout {
        match tb.app_state(pod).await {
            Ok(state) if state.role.as_deref() != Some(ACTIVE) => {
                return Ok((t0.elapsed(), state));
            }
            Ok(state) => last = Some(format!("{state:?}")),
            Err(e) => last = Some(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!(
        "the app of {} still acted active {timeout:?} after the controller stopped; last: {}",
        pod.name_any(),
        last.unwrap_or_default()
    )
}
