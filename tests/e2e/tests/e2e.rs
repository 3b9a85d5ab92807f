//! End-to-end tests: hapod against a real kube-apiserver, kube-controller-manager (ReplicaSet,
//! EndpointSlice, garbage collector) and kube-scheduler, with the process node running the
//! controller (2 replicas, in-cluster, under the ServiceAccount and RBAC of `deploy/`) and the
//! sample app of `deploy/` as local processes. It all runs inside a private network namespace
//! whose only interface is `lo`: the API server on 127.0.0.1, pod IPs from 10.244.0.0/16 on
//! that `lo` (kube-apiserver refuses loopback pod IPs as EndpointSlice endpoints), no route
//! out. The testbed is `hapod_testkit::testbed` (`tests/kit`).
//!
//! One testbed is shared by every scenario (starting a control plane takes seconds, building
//! it the first time takes many minutes), so the scenarios run one after another in one
//! process, in the order of [`SCENARIOS`]. The harness is `libtest-mimic`: libtest's command
//! line (filters, `--exact`, `--skip`, `--list`) and output, always on one thread. The testbed
//! starts before the first scenario that runs (not for `--list`, nor when the filters select
//! none) and stops after the last. The label-history watcher records the whole run and the
//! last scenario asserts that no two pods of a group were ever active at the same
//! resourceVersion.
//!
//! Run with `cargo xtask test`: it builds the control plane and the binaries (outside, where
//! the package registries are reachable), then runs these tests inside the private network
//! namespace. `cargo test -p hapod-e2e` run directly, outside that namespace, makes every
//! scenario FAIL with the reason (it never skips).

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    self, ACTIVE, APP_CONTAINER, APP_GROUP, APP_HTTP_PORT, APP_NAMESPACE, APP_REPLICAS,
    APP_SERVICE, CONTROLLER_GROUP, CONTROLLER_NAMESPACE, CONTROLLER_REPLICAS,
    CONTROLLER_SERVICE_ACCOUNT, CRITICAL_CONTAINER, EPOCH_ANNOTATION, GROUP_LABEL,
    NONCRITICAL_CONTAINER, STANDBY, Testbed, Trigger, pod_epoch, pod_group, pod_ip, pod_role,
    restart_count,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};

/// Bound of every wait in a scenario (failover, settle, ...).
const WAIT: Duration = Duration::from_secs(60);
/// The controller's Deployment in `deploy/base`.
const CONTROLLER_DEPLOYMENT: &str = "hapod-controller";
/// The election term annotation on the Lease.
const TERM_ANNOTATION: &str = "hapod.io/term";
/// Bound of one whole scenario.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

type ScenarioFn =
    for<'a> fn(
        &'a Testbed,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;

macro_rules! scenario {
    ($name:literal, $f:path) => {
        ($name, |tb| Box::pin($f(tb)) as _)
    };
}

/// Every scenario, in the order they run (libtest-mimic keeps it on one thread): they share
/// one testbed, and each starts from the group and controller replicas the one before left.
/// `label_history_no_double_active` checks the history of all the scenarios before it, so it
/// stays last; it is selected by the filters like any other.
const SCENARIOS: &[(&str, ScenarioFn)] = &[
    scenario!("steady_state_one_active", steady_state),
    scenario!("rbac_controller_identity", rbac),
    scenario!("force_delete_active", force_delete),
    scenario!("graceful_delete_active", graceful_delete),
    scenario!("critical_container_crash", critical_crash),
    scenario!("active_not_ready", not_ready),
    scenario!(
        "acting_controller_deleted_steady",
        controller_deleted_steady
    ),
    scenario!(
        "acting_controller_deleted_during_failover",
        controller_deleted_during_failover
    ),
    scenario!("controller_sigterm_handover", controller_sigterm_handover),
    scenario!("active_relabeled_out_and_back", relabeled_out_and_back),
    scenario!("far_future_epoch_on_active", far_future_epoch),
    scenario!("duplicate_namespaces", duplicate_namespaces),
    scenario!("noncritical_sidecar_crash", noncritical_crash),
    scenario!("label_history_no_double_active", no_double_active),
];

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One testbed for all: the scenarios run one after another, in the order listed.
    args.test_threads = Some(1);
    let suite = Arc::new(Suite::default());
    let trials = SCENARIOS
        .iter()
        .map(|&(name, f)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || suite.run(name, f))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    suite.stop();
    conclusion.exit_code()
}

/// The testbed and the runtime of its tasks, started by the first scenario that runs.
#[derive(Default)]
struct Suite(Mutex<Option<Started>>);

struct Started {
    rt: tokio::runtime::Runtime,
    /// The testbed, or why it could not start (then every scenario fails with that).
    testbed: Result<Testbed, String>,
}

impl Started {
    fn new() -> Started {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let opts = testbed::Options {
            name: "e2e".into(),
            // `cargo xtask test` builds the workspace just before; building again is a no-op.
            build: std::env::var_os("HAPOD_E2E_NO_BUILD").is_none(),
            ..Default::default()
        };
        let testbed = rt.block_on(Testbed::start(opts)).map_err(|e| {
            format!(
                "the e2e testbed could not start (control plane + process node + deploy/): {e:#}\n\
                 Run the end-to-end tests with `cargo xtask test`, which builds the control plane first."
            )
        });
        Started { rt, testbed }
    }
}

impl Suite {
    /// Runs one scenario on the shared testbed, starting it first if no scenario did.
    fn run(&self, name: &str, f: ScenarioFn) -> Result<(), Failed> {
        // libtest-mimic printed `test NAME ... `: the scenario's own lines follow.
        println!();
        let t = Instant::now();
        let result = {
            let mut started = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let Started { rt, testbed } = started.get_or_insert_with(Started::new);
            match testbed {
                Ok(tb) => rt.block_on(run_scenario(tb, f)),
                Err(e) => Err(e.clone()),
            }
        };
        // libtest-mimic ends the line with the outcome.
        print!("  {name}: {:.1} s ... ", t.elapsed().as_secs_f64());
        result.map_err(Failed::from)
    }

    /// Stops the testbed, if a scenario started it.
    fn stop(&self) {
        let started = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(Started { rt, testbed }) = started {
            if let Ok(tb) = &testbed {
                println!("testbed logs: {}", tb.run_dir.display());
            }
            // Stop the testbed's tasks before the runtime goes.
            rt.block_on(async move { drop(testbed) });
        }
    }
}

/// One scenario, bounded by [`SCENARIO_TIMEOUT`]; a failure carries the testbed's diagnostics.
async fn run_scenario(tb: &Testbed, f: ScenarioFn) -> Result<(), String> {
    let result = match tokio::time::timeout(SCENARIO_TIMEOUT, f(tb)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("scenario timed out after {SCENARIO_TIMEOUT:?}")),
    };
    if let Err(e) = result {
        let diag = tb.diagnostics().await;
        // Give the next scenario a settled group if at all possible.
        let _ = tb
            .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
            .await;
        return Err(format!("{e:#}\n\n{diag}"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// All endpoint addresses (ready or not) of the sample app's Service.
async fn all_service_addresses(tb: &Testbed) -> Result<Vec<String>> {
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let list = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={APP_SERVICE}")))
        .await?;
    let mut v: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| {
            s.endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.clone())
        })
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// Asserts the invariants after a failover and waits until the ReplicaSet's replacement (or
/// the recovered old pod) joined as standby.
async fn check_failover(tb: &Testbed, f: &testbed::Failover) -> Result<testbed::Settled> {
    let old = f.old.name_any();
    let new = f.new.name_any();
    println!(
        "  {} {old} -> {new}\n{}",
        f.trigger.name(),
        f.timeline.render()
    );
    ensure!(f.old.uid() != f.new.uid(), "the active pod did not change");
    ensure!(
        f.standby_before.iter().any(|p| p.uid() == f.new.uid()),
        "the new active {new} was not the standby before the failover"
    );
    // Exactly one active right now.
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    let active = view.active();
    ensure!(
        active.len() == 1 && active[0].uid() == f.new.uid(),
        "after the failover the active pods are {:?}\n{}",
        active.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        view.table()
    );
    // The Service's endpoints moved to the new pod only.
    let new_ip = pod_ip(&f.new).context("new active has no IP")?;
    let eps = tb.service_endpoints(APP_NAMESPACE, APP_SERVICE).await?;
    ensure!(
        eps == vec![new_ip.clone()],
        "ready endpoints {eps:?}, want [{new_ip}]"
    );
    // The new active's app applied (and so acknowledged) the notification of its promotion,
    // with a newer epoch than the old one's (fencing token).
    let new_pod = tb
        .pod(APP_NAMESPACE, &new)
        .await?
        .context("new active pod vanished")?;
    let epoch = pod_epoch(&new_pod).context("new active has no epoch annotation")?;
    ensure!(
        f.app_state.role.as_deref() == Some(ACTIVE) && f.app_state.epoch == Some(epoch),
        "app state {:?} vs epoch annotation {epoch}",
        f.app_state
    );
    ensure!(
        f.app_state.pod.as_deref().is_none_or(|p| p == new),
        "app state names pod {:?}, want {new}",
        f.app_state.pod
    );
    if let Some(old_epoch) = pod_epoch(&f.old) {
        ensure!(
            epoch > old_epoch,
            "epoch did not increase: old {old_epoch}, new {epoch}"
        );
    }
    // The replacement (or the recovered old pod) joins as standby.
    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("group did not settle after the failover")?;
    ensure!(
        settled.active.uid() == f.new.uid(),
        "the active pod changed again while settling: {}",
        settled.active.name_any()
    );
    for s in &settled.standbys {
        ensure!(
            pod_role(s) == Some(STANDBY),
            "{} is not standby",
            s.name_any()
        );
        let st = tb.app_state(s).await?;
        ensure!(
            st.role.as_deref() != Some(ACTIVE),
            "standby {}'s app believes it is active: {st:?}",
            s.name_any()
        );
    }
    Ok(settled)
}

const ACKED_ACTIVE: [(&str, &str); 2] = [("role", "active"), ("outcome", "acked")];
const NOTIFICATIONS: &str = "hapod_notifications_total";
/// Pods labeled active by a controller replica, by `reason`.
const PROMOTIONS: &str = "hapod_promotions_total";

/// Runs a failover of the sample app and checks, on the acting controller's own metrics,
/// that the new active pod acknowledged its notification (ACK received by the controller).
async fn failover_acked(tb: &Testbed, trigger: Trigger) -> Result<testbed::Failover> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .controller_metric(&ctrl, NOTIFICATIONS, &ACKED_ACTIVE)
        .await?;
    let f = tb.failover(trigger, WAIT).await?;
    let what = format!(
        "the acting controller {} to count an acknowledged become-active notification \
         ({NOTIFICATIONS} acked/active above {before})",
        ctrl.name_any()
    );
    await_condition(what, WAIT, Duration::from_millis(100), || async {
        let now = tb
            .controller_metric(&ctrl, NOTIFICATIONS, &ACKED_ACTIVE)
            .await?;
        Ok(if now > before {
            Check::Done(())
        } else {
            Check::NotYet(format!("still {now}"))
        })
    })
    .await?;
    Ok(f)
}

/// Waits until a pod is gone (by name and UID).
async fn wait_gone(tb: &Testbed, ns: &str, pod: &Pod, timeout: Duration) -> Result<()> {
    let what = format!("pod {ns}/{} to be gone", pod.name_any());
    await_condition(what, timeout, Duration::from_millis(100), || async {
        Ok(match tb.pod(ns, &pod.name_any()).await? {
            Some(p) if p.uid() == pod.uid() => Check::NotYet("it still exists".into()),
            _ => Check::Done(()),
        })
    })
    .await
}

/// Waits until the Lease is held by another replica than `old`, and returns the holder.
async fn wait_lease_moved(tb: &Testbed, old: &str, timeout: Duration) -> Result<String> {
    let what = format!("the Lease to move away from {old}");
    await_condition(what, timeout, Duration::from_millis(50), || async {
        Ok(match tb.lease_holder().await? {
            Some(h) if h != old => Check::Done(h),
            h => Check::NotYet(format!("held by {h:?}")),
        })
    })
    .await
}

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Scenarios
// ------------------------------------------------------------------------------------------

/// Both pods of the ReplicaSet come up, exactly one is active, the Service's
/// EndpointSlice lists only it, and the demo app applied its notification.
async fn steady_state(tb: &Testbed) -> Result<()> {
    let s = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    println!("{}", view.table());
    ensure!(view.pods.len() == 2, "{} pods, want 2", view.pods.len());
    ensure!(view.active().len() == 1, "{} active", view.active().len());
    let ip = pod_ip(&s.active).context("active has no IP")?;
    ensure!(
        testbed::allowed_address(ip.parse()?),
        "pod IP {ip} is neither loopback nor a pod IP of the private network namespace"
    );
    // Every address of the Service's EndpointSlices, ready or not: only the active pod.
    let all = all_service_addresses(tb).await?;
    ensure!(
        all == vec![ip.clone()],
        "EndpointSlice addresses {all:?}, want [{ip}]"
    );
    // The app received and applied its notification: role active, the pod's epoch.
    let epoch = pod_epoch(&s.active).context("active pod has no epoch annotation")?;
    let st = tb.app_state(&s.active).await?;
    ensure!(
        st.role.as_deref() == Some(ACTIVE) && st.epoch == Some(epoch),
        "active app /state {st:?}, want role active epoch {epoch}"
    );
    ensure!(st.message_id.is_some(), "no message id in {st:?}");
    ensure!(
        st.pod.as_deref().is_none_or(|p| p == s.active.name_any()),
        "app state names pod {:?}",
        st.pod
    );
    for sb in &s.standbys {
        let st = tb.app_state(sb).await?;
        ensure!(
            st.role.as_deref() != Some(ACTIVE),
            "standby {} app believes it is active: {st:?}",
            sb.name_any()
        );
    }
    // "The Service", reached through its EndpointSlice: the active pod answers.
    let (code, body) = testbed::http_get(&ip, APP_HTTP_PORT, "/", Duration::from_secs(2)).await?;
    ensure!(code == 200, "GET / answered {code}");
    ensure!(
        body.contains(&format!("pod={}", s.active.name_any())) && body.contains("role=active"),
        "GET / via the endpoint answered {body:?}"
    );
    // The controller replicas: two, one acting and holding the Lease.
    let c = tb.wait_controllers_settled(WAIT).await?;
    println!(
        "  acting controller {}, standby {:?}",
        c.active.name_any(),
        c.standbys.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    Ok(())
}

/// The controller's ServiceAccount can do what it needs, and forbidden verbs are
/// really forbidden (real requests with its own token, not just a review).
async fn rbac(tb: &Testbed) -> Result<()> {
    let sa: Client = tb
        .service_account_client(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
        .await?;
    let s = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let app_pods: Api<Pod> = Api::namespaced(sa.clone(), APP_NAMESPACE);
    let all_pods: Api<Pod> = Api::all(sa.clone());
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    // Allowed.
    all_pods
        .list(&ListParams::default().labels("app=hapod"))
        .await
        .context("SA cannot list pods cluster-wide")?;
    app_pods
        .get(&s.active.name_any())
        .await
        .context("SA cannot get a pod")?;
    {
        use futures::StreamExt;
        let wp = kube::api::WatchParams::default().timeout(1);
        let mut w = app_pods
            .watch(&wp, "0")
            .await
            .context("SA cannot watch pods")?
            .boxed();
        if let Some(Err(e)) = w.next().await {
            bail!("SA watch failed: {e}");
        }
    }
    app_pods
        .patch(
            &s.active.name_any(),
            &dry,
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"e2e.hapod.io/rbac": "x"}}}),
            ),
        )
        .await
        .context("SA cannot patch a pod (dry run)")?;
    app_pods
        .delete(
            &s.active.name_any(),
            &DeleteParams {
                dry_run: true,
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .context("SA cannot delete a pod (dry run)")?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(sa.clone(), CONTROLLER_NAMESPACE);
    leases
        .get(testbed::LEASE_NAME)
        .await
        .context("SA cannot get its Lease")?;
    leases
        .patch(
            testbed::LEASE_NAME,
            &dry,
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"e2e.hapod.io/rbac": "x"}}}),
            ),
        )
        .await
        .context("SA cannot patch its Lease (dry run)")?;
    let ctrl_pods: Api<Pod> = Api::namespaced(sa.clone(), CONTROLLER_NAMESPACE);
    ctrl_pods
        .list(&ListParams::default())
        .await
        .context("SA cannot list its own pods")?;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    let ev: k8s_openapi::api::events::v1::Event = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "e2e-rbac-"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "hapod.io/e2e",
        "reportingInstance": "e2e",
        "action": "Check",
        "reason": "RbacCheck",
        "type": "Normal",
        "regarding": {"kind": "Pod", "namespace": APP_NAMESPACE, "name": s.active.name_any()}
    }))?;
    events
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &ev,
        )
        .await
        .context("SA cannot create events (dry run)")?;

    // Forbidden: each must fail with 403.
    let mut forbidden = Vec::new();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let new_pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "e2e-rbac-forbidden"},
        "spec": {"containers": [{"name": "x", "image": "ghcr.io/hapod/hapod-demo:0.1.0"}]}
    }))?;
    forbidden.push((
        "create pods",
        app_pods.create(&pp, &new_pod).await.map(|_| ()),
    ));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    forbidden.push((
        "list secrets",
        secrets.list(&ListParams::default()).await.map(|_| ()),
    ));
    forbidden.push((
        "delete the Lease",
        leases
            .delete(
                testbed::LEASE_NAME,
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
    ));
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(sa.clone(), APP_NAMESPACE);
    forbidden.push((
        "delete replicasets",
        rs.delete(
            "hapod-demo",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
    ));
    let mut pod = app_pods.get(&s.active.name_any()).await?;
    pod.metadata.managed_fields = None;
    forbidden.push((
        "update (PUT) pods",
        app_pods
            .replace(&pod.name_any(), &pp, &pod)
            .await
            .map(|_| ()),
    ));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(sa.clone());
    forbidden.push((
        "list nodes",
        nodes.list(&ListParams::default()).await.map(|_| ()),
    ));
    for (what, res) in forbidden {
        match res {
            Ok(()) => bail!("the controller's ServiceAccount may {what}: RBAC is too broad"),
            Err(e) if api_error_code(&e) == Some(403) => {
                println!("  forbidden as expected: {what}")
            }
            Err(e) => bail!("{what}: expected 403 Forbidden, got {e}"),
        }
    }
    Ok(())
}

/// Force delete (grace 0) of the active pod.
async fn force_delete(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    let settled = check_failover(tb, &f).await?;
    ensure!(
        settled.standbys.iter().all(|p| p.uid() != f.old.uid()),
        "the force-deleted pod is still part of the group"
    );
    Ok(())
}

/// Graceful delete of the active pod: the failover happens at the deletionTimestamp,
/// while the old pod still runs out its grace period, not when it is finally gone.
async fn graceful_delete(tb: &Testbed) -> Result<()> {
    const PROMOTED_AT_TERMINATING: [(&str, &str); 1] = [("reason", "terminating")];
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let before = tb
        .controller_metric(&ctrl, PROMOTIONS, &PROMOTED_AT_TERMINATING)
        .await?;
    let f = failover_acked(tb, Trigger::GracefulDelete).await?;
    // The controller promoted because of the deletionTimestamp, not the DELETED event.
    let after = tb
        .controller_metric(&ctrl, PROMOTIONS, &PROMOTED_AT_TERMINATING)
        .await?;
    ensure!(
        after > before,
        "the acting controller counted no promotion for a terminating active \
         ({PROMOTIONS}{{reason=\"terminating\"}} stayed at {before})"
    );
    // Promotion happened before the old pod's final deletion event.
    let records = tb.history.pod_records();
    let promoted_rv = records
        .iter()
        .find(|r| r.uid == f.new.uid().unwrap_or_default() && r.is_active())
        .map(|r| r.rv)
        .context("no promotion record of the new active")?;
    let old_uid = f.old.uid().unwrap_or_default();
    let terminating_rv = records
        .iter()
        .find(|r| r.uid == old_uid && r.terminating)
        .map(|r| r.rv)
        .context("the watch never showed the old pod with a deletionTimestamp")?;
    let deleted_rv = records
        .iter()
        .find(|r| r.uid == old_uid && r.deleted)
        .map(|r| r.rv);
    println!(
        "  old pod terminating at rv {terminating_rv}, new active at rv {promoted_rv}, old pod gone at rv {deleted_rv:?}"
    );
    ensure!(
        promoted_rv > terminating_rv,
        "promotion (rv {promoted_rv}) before the deletionTimestamp (rv {terminating_rv})?"
    );
    let grace = f
        .old
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30) as u64;
    if let Some(p) = f.timeline.promoted_unix_nanos {
        let after = Duration::from_nanos(p.saturating_sub(f.timeline.trigger_unix_nanos));
        ensure!(
            after < Duration::from_secs(grace),
            "promotion came {after:?} after the delete call, not before the {grace} s grace period ended"
        );
    }
    check_failover(tb, &f).await?;
    Ok(())
}

/// `/tmp/killme` in the critical container: it really aborts, its pod is deleted, the
/// standby takes over.
async fn critical_crash(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::KillCritical).await?;
    let old_uid = f.old.uid().unwrap_or_default();
    // The critical container really stopped running (as reported by the node).
    let crashed = tb
        .history
        .pod_records()
        .into_iter()
        .any(|r| r.uid == old_uid && r.not_running.iter().any(|c| c == CRITICAL_CONTAINER));
    ensure!(
        crashed,
        "the watch never showed {} of {} not running",
        CRITICAL_CONTAINER,
        f.old.name_any()
    );
    // The old pod is deleted by the controller.
    wait_gone(tb, APP_NAMESPACE, &f.old, WAIT).await?;
    let settled = check_failover(tb, &f).await?;
    ensure!(
        settled.standbys.iter().all(|p| p.uid() != f.old.uid()),
        "the crashed pod is still part of the group"
    );
    Ok(())
}

/// The active pod becomes not-Ready (its readiness probe fails for real).
async fn not_ready(tb: &Testbed) -> Result<()> {
    let f = failover_acked(tb, Trigger::Unready).await?;
    let old = tb.pod(APP_NAMESPACE, &f.old.name_any()).await?;
    if let Some(old) = old.filter(|p| p.uid() == f.old.uid()) {
        // The controller kept the pod: it must be demoted; let it recover and rejoin.
        ensure!(
            pod_role(&old) != Some(ACTIVE),
            "the not-Ready pod {} is still labeled active",
            old.name_any()
        );
        Testbed::remove_in_container(&old, APP_CONTAINER, "unready")?;
    }
    let settled = check_failover(tb, &f).await?;
    println!(
        "  standby after recovery: {:?}",
        settled
            .standbys
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The acting controller replica's pod is deleted (grace 0) in steady state: the
/// standby replica takes over, the groups stay correct, and it handles the next failover.
async fn controller_deleted_steady(tb: &Testbed) -> Result<()> {
    let before = tb.wait_controllers_settled(WAIT).await?;
    let app_before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let acting = before.active.clone();
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(&acting.name_any(), &DeleteParams::default().grace_period(0))
        .await?;
    let holder = wait_lease_moved(tb, &acting.name_any(), WAIT).await?;
    ensure!(
        before.standbys.iter().any(|p| p.name_any() == holder),
        "the Lease went to {holder}, not to the standby replica"
    );
    let after = tb.wait_controllers_settled(WAIT).await?;
    ensure!(
        after.active.name_any() == holder,
        "acting replica {} but Lease holder {holder}",
        after.active.name_any()
    );
    // The app group was not disturbed.
    let app_after = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        app_after.active.uid() == app_before.active.uid(),
        "the controller takeover moved the app's active pod"
    );
    // The new acting replica does its job.
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover(tb, &f).await?;
    Ok(())
}

/// The acting controller replica's pod is deleted right after the active app pod was:
/// the standby replica takes over and finishes the failover.
async fn controller_deleted_during_failover(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = app.active.clone();
    let t0 = tb.trigger(&old, Trigger::ForceDelete).await?;
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(
        &ctrl.active.name_any(),
        &DeleteParams::default().grace_period(0),
    )
    .await?;
    let new = tb
        .wait_new_active(
            APP_NAMESPACE,
            APP_GROUP,
            &old.uid().unwrap_or_default(),
            WAIT,
        )
        .await?;
    let new_ip = pod_ip(&new).context("new active has no IP")?;
    tb.wait_endpoints(APP_NAMESPACE, APP_SERVICE, &[&new_ip], WAIT)
        .await?;
    let state = tb
        .wait_app_role(APP_NAMESPACE, &new.name_any(), ACTIVE, WAIT)
        .await?;
    let f = testbed::Failover {
        trigger: Trigger::ForceDelete,
        timeline: tb
            .history
            .timeline(t0, &old, &new, APP_NAMESPACE, APP_SERVICE, Some(&state)),
        old,
        new,
        standby_before: app.standbys,
        app_state: state,
    };
    check_failover(tb, &f).await?;
    let holder = wait_lease_moved(tb, &ctrl.active.name_any(), WAIT).await?;
    let after = tb.wait_controllers_settled(WAIT).await?;
    ensure!(
        after.active.name_any() == holder,
        "acting replica is not the Lease holder"
    );
    Ok(())
}

/// Graceful handover: the acting replica's pod is deleted gracefully (the node sends
/// SIGTERM), it releases the Lease and the standby replica takes over.
async fn controller_sigterm_handover(tb: &Testbed) -> Result<()> {
    let before = tb.wait_controllers_settled(WAIT).await?;
    let acting = before.active.clone();
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(&acting.name_any(), &DeleteParams::default())
        .await?;
    let holder = wait_lease_moved(tb, &acting.name_any(), WAIT).await?;
    ensure!(
        before.standbys.iter().any(|p| p.name_any() == holder),
        "the Lease went to {holder}, not to the standby replica"
    );
    // The handover did not wait for the old pod's grace period to run out: the old pod
    // object was still there (terminating) or exited cleanly on SIGTERM.
    let after = tb.wait_controllers_settled(WAIT).await?;
    ensure!(
        after.active.name_any() == holder,
        "acting replica is not the Lease holder"
    );
    ensure!(
        after.active.uid() != acting.uid(),
        "the old replica is still acting"
    );
    // The new acting replica does its job.
    let f = failover_acked(tb, Trigger::ForceDelete).await?;
    check_failover(tb, &f).await?;
    Ok(())
}

/// Sets (`Some`) or removes (`None`) an environment variable of the controller Deployment's
/// container and waits until the rollout finished and the replicas settled again.
async fn set_controller_env(tb: &Testbed, name: &str, value: Option<&str>) -> Result<()> {
    let assignment = match value {
        Some(v) => format!("{name}={v}"),
        None => format!("{name}-"),
    };
    let deployment = format!("deployment/{CONTROLLER_DEPLOYMENT}");
    let rollout_timeout = format!("--timeout={}s", (2 * WAIT).as_secs());
    tokio::task::block_in_place(|| {
        tb.kubectl(&[
            "-n",
            CONTROLLER_NAMESPACE,
            "set",
            "env",
            &deployment,
            &assignment,
        ])?;
        tb.kubectl(&[
            "-n",
            CONTROLLER_NAMESPACE,
            "rollout",
            "status",
            &deployment,
            &rollout_timeout,
        ])
    })
    .with_context(|| format!("rolling out the controller with {assignment}"))?;
    let settled = tb.wait_controllers_settled(2 * WAIT).await?;
    for p in std::iter::once(&settled.active).chain(&settled.standbys) {
        let got = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref());
        ensure!(
            got == value,
            "controller pod {} has {name}={got:?} after the rollout, want {value:?}",
            p.name_any()
        );
    }
    Ok(())
}

/// The election term of the acting controller replica (the Lease's `hapod.io/term`).
async fn acting_term(tb: &Testbed) -> Result<u64> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    let lease = api.get(testbed::LEASE_NAME).await?;
    lease
        .annotations()
        .get(TERM_ANNOTATION)
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("the Lease has no numeric {TERM_ANNOTATION} annotation"))
}

/// Core v1 Events about a pod (by UID) with `reason`.
async fn pod_events(
    tb: &Testbed,
    pod: &Pod,
    reason: &str,
) -> Result<Vec<k8s_openapi::api::core::v1::Event>> {
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let uid = pod.uid().unwrap_or_default();
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}

/// Waits until the active app pod stays the same pod, alone, for `window`.
async fn assert_active_stays(tb: &Testbed, active: &Pod, window: Duration) -> Result<()> {
    let until = Instant::now() + window;
    while Instant::now() < until {
        let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
        let now = view.active();
        ensure!(
            now.len() == 1 && now[0].uid() == active.uid(),
            "the active pod was {}; now the active pods are {:?}\n{}",
            active.name_any(),
            now.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            view.table()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The active pod P is relabeled out of the group (it leaves the selector; the
/// controller promotes the standby Q; the ReplicaSet adds a pod), then back into it, still
/// labeled active. Within one reconcile exactly one pod of the group is active: Q, the highest
/// epoch, and P (unless the ReplicaSet removed it as the surplus pod) is demoted and its app
/// told it is standby.
async fn relabeled_out_and_back(tb: &Testbed) -> Result<()> {
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let p = before.active.clone();
    let result = relabel_out_and_back(tb, &before).await;
    // Whatever happened: P is the pod to drop if it is outside the group or a second active.
    if let Some(now) = tb
        .pod(APP_NAMESPACE, &p.name_any())
        .await?
        .filter(|now| now.uid() == p.uid())
    {
        let actives = tb
            .group_view(APP_NAMESPACE, APP_GROUP)
            .await?
            .active()
            .len();
        if pod_group(&now) != Some(APP_GROUP) || actives > 1 {
            println!("  cleanup: force-deleting {}", p.name_any());
            let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
            api.delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await?;
        }
    }
    tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .context("the group did not return to its normal replicas after the relabeling")?;
    result
}

async fn relabel_out_and_back(tb: &Testbed, before: &testbed::Settled) -> Result<()> {
    const OUTSIDE_GROUP: &str = "hapod-debug";
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    let p = &before.active;
    let name = p.name_any();
    let relabel = |group: &'static str| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {GROUP_LABEL: group}}})),
            )
            .await
            .with_context(|| format!("relabeling {name} {GROUP_LABEL}={group}"))
        }
    };

    relabel(OUTSIDE_GROUP).await?;
    let q = tb
        .wait_new_active(APP_NAMESPACE, APP_GROUP, &p.uid().unwrap_or_default(), WAIT)
        .await
        .with_context(|| format!("no new active after {name} left the group"))?;
    ensure!(
        before.standbys.iter().any(|s| s.uid() == q.uid()),
        "the new active {} was not the standby",
        q.name_any()
    );
    // The ReplicaSet's replacement joined as standby.
    let out = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .with_context(|| format!("the group did not settle with {name} outside it"))?;
    ensure!(out.active.uid() == q.uid(), "the active changed again");
    let q_epoch = pod_epoch(&out.active).context("the new active has no epoch")?;
    println!(
        "  {name} left the group: {} active (epoch {q_epoch}), {} standby",
        q.name_any(),
        out.standbys
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let back = relabel(APP_GROUP).await?;
    let rv: u64 = back
        .resource_version()
        .and_then(|v| v.parse().ok())
        .context("the relabeled pod has no resourceVersion")?;
    // This second active is the scenario's own doing; what the controller does about it is
    // asserted below.
    tb.history.injected_active(&p.uid().unwrap_or_default(), rv);
    println!(
        "  {name} back in the group at rv {rv}, labeled {:?}",
        pod_role(&back)
    );

    let settled = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await
        .with_context(|| {
            format!(
                "after {name} rejoined the group still labeled active, the group did not \
                 settle to one active (want {} alone, the highest epoch)",
                q.name_any()
            )
        })?;
    let view = tb.group_view(APP_NAMESPACE, APP_GROUP).await?;
    println!("{}", view.table());
    match view.pods.iter().find(|pod| pod.uid() == q.uid()) {
        Some(_) => ensure!(
            settled.active.uid() == q.uid(),
            "{} is active, want {} (highest epoch {q_epoch})",
            settled.active.name_any(),
            q.name_any()
        ),
        None => ensure!(
            pod_epoch(&settled.active).is_some_and(|e| e > q_epoch),
            "the ReplicaSet removed {}; the active {} has no epoch above {q_epoch}",
            q.name_any(),
            settled.active.name_any()
        ),
    }
    let max_epoch = view.pods.iter().filter_map(pod_epoch).max();
    ensure!(
        pod_epoch(&settled.active) == max_epoch,
        "the active {} does not carry the group's highest epoch {max_epoch:?}",
        settled.active.name_any()
    );
    if settled.standbys.iter().any(|s| s.uid() == p.uid()) {
        let st = tb
            .wait_app_role(APP_NAMESPACE, &name, STANDBY, WAIT)
            .await
            .with_context(|| format!("the app of {name} was never told it is standby"))?;
        println!("  {name} rejoined as standby; its app: {st:?}");
    } else {
        println!("  the ReplicaSet removed {name} as the surplus pod");
    }
    Ok(())
}

/// The active pod carries an epoch whose term is far above the acting one, then is
/// force-deleted: the failover still happens, with an epoch of the acting term, and the
/// anomaly is reported (Event `FutureEpoch` on that pod, `hapod_epoch_anomalies_total`).
async fn far_future_epoch(tb: &Testbed) -> Result<()> {
    const FAR_FUTURE_EPOCH: u64 = (4294967294u64 << 32) | 7;
    const EPOCH_ANOMALIES: &str = "hapod_epoch_anomalies_total";
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let anomalies_before = tb.controller_metric(&ctrl, EPOCH_ANOMALIES, &[]).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), APP_NAMESPACE);
    api.patch(
        &old.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            EPOCH_ANNOTATION: FAR_FUTURE_EPOCH.to_string()
        }}})),
    )
    .await?;
    let t = tb.trigger(&old, Trigger::ForceDelete).await?;
    let (new, app_state, timeline) = match tb.await_failover(&old, t, WAIT).await {
        Ok(f) => f,
        Err(e) => {
            // Give the next scenarios a working controller: a fresh acting replica.
            println!("  no failover: deleting the acting controller replica to recover");
            let ctrl_api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
            ctrl_api
                .delete(&ctrl.name_any(), &DeleteParams::default().grace_period(0))
                .await?;
            return Err(e).with_context(|| {
                format!(
                    "no failover after force-deleting the active pod {} that carried the \
                     far-future epoch {FAR_FUTURE_EPOCH} (term {})",
                    old.name_any(),
                    FAR_FUTURE_EPOCH >> 32
                )
            });
        }
    };
    let term = acting_term(tb).await?;
    let epoch = pod_epoch(&new).context("the new active has no epoch")?;
    ensure!(
        epoch >> 32 == term,
        "the new active's epoch {epoch} is of term {}, the acting term is {term}",
        epoch >> 32
    );
    // `old` as read before the annotation: its epoch is the one the controller issued, which
    // the new one must exceed.
    let f = testbed::Failover {
        trigger: Trigger::ForceDelete,
        old,
        new,
        standby_before: before.standbys,
        app_state,
        timeline,
    };
    check_failover(tb, &f).await?;

    let what = format!(
        "an Event with reason FutureEpoch about {} (uid {})",
        f.old.name_any(),
        f.old.uid().unwrap_or_default()
    );
    let events = await_condition(what, WAIT, Duration::from_millis(200), || async {
        let events = pod_events(tb, &f.old, "FutureEpoch").await?;
        Ok(if events.is_empty() {
            Check::NotYet("none yet".into())
        } else {
            Check::Done(events)
        })
    })
    .await?;
    println!(
        "  Event FutureEpoch: {:?}",
        events[0].message.as_deref().unwrap_or("")
    );
    let anomalies = tb.controller_metric(&ctrl, EPOCH_ANOMALIES, &[]).await?;
    ensure!(
        anomalies > anomalies_before,
        "the acting controller {} counted no epoch anomaly ({EPOCH_ANOMALIES} stayed at \
         {anomalies_before})",
        ctrl.name_any()
    );
    Ok(())
}

/// The controller runs with the app namespace listed twice (`HAPOD_NAMESPACES=a,a`, two
/// watches of one namespace). A few rounds of: a force-delete failover promotes the standby
/// (the acting replica knew it) and leaves exactly one active; a takeover by the other replica
/// (which re-lists both watches) neither loses the active pod nor promotes another. The
/// controller's settings are restored afterwards.
async fn duplicate_namespaces(tb: &Testbed) -> Result<()> {
    const NAMESPACES_ENV: &str = "HAPOD_NAMESPACES";
    /// Each takeover is one more chance for the two re-lists to interleave.
    const ROUNDS: usize = 3;
    let twice = format!("{APP_NAMESPACE},{APP_NAMESPACE}");
    let result = async {
        set_controller_env(tb, NAMESPACES_ENV, Some(&twice)).await?;
        for round in 1..=ROUNDS {
            let f = failover_acked(tb, Trigger::ForceDelete).await?;
            check_failover(tb, &f)
                .await
                .with_context(|| format!("failover of round {round}/{ROUNDS}"))?;
            takeover_keeps_active(tb)
                .await
                .with_context(|| format!("takeover of round {round}/{ROUNDS}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        // The replicas that ran with the duplicate namespaces are gone after the restore.
        println!(
            "  before restoring the controller's namespaces:\n{}",
            tb.diagnostics().await
        );
    }
    let restored = set_controller_env(tb, NAMESPACES_ENV, None).await;
    result?;
    restored.context("restoring the controller's namespaces")?;
    tb.wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    Ok(())
}

/// Deletes the acting controller replica (grace 0): the standby replica takes over, which
/// restarts and re-lists its watches. The app's active pod stays the same, alone, and the new
/// acting replica promotes nobody.
async fn takeover_keeps_active(tb: &Testbed) -> Result<()> {
    let ctrl = tb.wait_controllers_settled(WAIT).await?;
    let standby = ctrl.standbys.first().context("no standby controller")?;
    let promotions_before = tb.controller_metric(standby, PROMOTIONS, &[]).await?;
    let app = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let api: Api<Pod> = Api::namespaced(tb.client.clone(), CONTROLLER_NAMESPACE);
    api.delete(
        &ctrl.active.name_any(),
        &DeleteParams::default().grace_period(0),
    )
    .await?;
    let holder = wait_lease_moved(tb, &ctrl.active.name_any(), WAIT).await?;
    ensure!(
        holder == standby.name_any(),
        "the Lease went to {holder}, not to the standby replica"
    );
    tb.wait_controllers_settled(WAIT).await?;
    assert_active_stays(tb, &app.active, Duration::from_secs(3))
        .await
        .context("the takeover moved the app's active pod")?;
    let promotions = tb.controller_metric(standby, PROMOTIONS, &[]).await?;
    ensure!(
        promotions == promotions_before,
        "the new acting replica {holder} promoted a pod after re-listing \
         ({PROMOTIONS} {promotions_before} -> {promotions})"
    );
    Ok(())
}

/// `/tmp/killme` in the non-critical `sidecar` container of the active pod: the pod is
/// not deleted (the node restarts the sidecar in place), but it is not Ready meanwhile, so the
/// role moves to the ready standby (reason `not_ready`); the pod rejoins as standby.
async fn noncritical_crash(tb: &Testbed) -> Result<()> {
    const NOT_READY: [(&str, &str); 1] = [("reason", "not_ready")];
    let ctrl = tb.wait_controllers_settled(WAIT).await?.active;
    let promoted_before = tb.controller_metric(&ctrl, PROMOTIONS, &NOT_READY).await?;
    let before = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let old = before.active.clone();
    let restarts_before =
        restart_count(&old, NONCRITICAL_CONTAINER).context("no sidecar container status")?;
    let f = failover_acked(tb, Trigger::KillNonCritical).await;
    // Stop the crash loop, whatever happened.
    Testbed::remove_in_container(&old, NONCRITICAL_CONTAINER, "killme")?;
    let f = f?;
    ensure!(
        f.old.uid() == old.uid(),
        "the failover started from another pod"
    );
    let promoted = tb.controller_metric(&ctrl, PROMOTIONS, &NOT_READY).await?;
    ensure!(
        promoted > promoted_before,
        "the acting controller counted no promotion for a not-Ready active \
         ({PROMOTIONS}{{reason=\"not_ready\"}} stayed at {promoted_before})"
    );
    let settled = check_failover(tb, &f).await?;
    // Not deleted: the same pod (UID) is back, as standby, its sidecar restarted in place.
    let now = settled
        .standbys
        .iter()
        .find(|p| p.uid() == old.uid())
        .with_context(|| format!("{} (same UID) did not rejoin as standby", old.name_any()))?;
    let restarts = restart_count(now, NONCRITICAL_CONTAINER).unwrap_or_default();
    ensure!(
        restarts > restarts_before,
        "the sidecar's restartCount stayed at {restarts_before}"
    );
    let old_uid = old.uid().unwrap_or_default();
    ensure!(
        !tb.history
            .pod_records()
            .iter()
            .any(|r| r.uid == old_uid && (r.terminating || r.deleted)),
        "{} was deleted after its non-critical container crashed",
        old.name_any()
    );
    println!(
        "  {} stayed (sidecar restarts {restarts_before} -> {restarts}), rejoined as standby",
        old.name_any()
    );
    Ok(())
}

/// Over the whole run: never two pods of one group labeled active at the same
/// resourceVersion (replayed in resourceVersion order per group).
async fn no_double_active(tb: &Testbed) -> Result<()> {
    // Let the watch catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarts = tb.history.watch_restarts();
    ensure!(
        restarts.is_empty(),
        "the label-history watch had gaps, so the history may be incomplete: {restarts:?}"
    );
    let records = tb.history.pod_records();
    let promotions = records
        .iter()
        .filter(|r| r.namespace == APP_NAMESPACE && r.is_active())
        .map(|r| &r.uid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let ctrl_pods = records
        .iter()
        .filter(|r| {
            r.namespace == CONTROLLER_NAMESPACE && r.group.as_deref() == Some(CONTROLLER_GROUP)
        })
        .map(|r| &r.uid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Application groups and the controller replicas alike: never two active at one
    // resourceVersion (a terminating controller replica is demoted before its successor
    // labels itself active).
    let (n, groups) = tb.history.assert_no_double_active()?;
    println!(
        "  {n} pod records, {groups} groups, {promotions} app pods were active at some point, \
         {ctrl_pods} controller pods seen; no double active"
    );
    ensure!(promotions >= 1, "the history saw no active app pod at all");
    ensure!(
        ctrl_pods >= CONTROLLER_REPLICAS,
        "the history saw {ctrl_pods} controller pods"
    );
    Ok(())
}
