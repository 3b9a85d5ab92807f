//! End-to-end tests: hapod against a real kube-apiserver, kube-controller-manager (ReplicaSet,
//! EndpointSlice, garbage collector) and kube-scheduler, with the process node running the
//! controller (2 replicas, in-cluster, under the ServiceAccount and RBAC of `deploy/`) and the
//! sample app of `deploy/` as local processes. It all runs inside a private network namespace
//! whose only interface is `lo`: the API server on 127.0.0.1, pod IPs from 10.244.0.0/16 (and
//! 10.245.0.0/16 on the second node some scenarios start) on that `lo` (kube-apiserver refuses
//! loopback pod IPs as EndpointSlice endpoints), no route out. The testbed is
//! `hapod_testkit::testbed` (`tests/kit`).
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

#[path = "e2e/common.rs"]
mod common;
#[path = "e2e/controller.rs"]
mod controller;
#[path = "e2e/detection.rs"]
mod detection;
#[path = "e2e/endpoints.rs"]
mod endpoints;
#[path = "e2e/failover.rs"]
mod failover;
#[path = "e2e/helm.rs"]
mod helm;
#[path = "e2e/history.rs"]
mod history;
#[path = "e2e/lease.rs"]
mod lease;
#[path = "e2e/rbac.rs"]
mod rbac;
#[path = "e2e/relabel.rs"]
mod relabel;
#[path = "e2e/scale.rs"]
mod scale;
#[path = "e2e/status.rs"]
mod status;

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use hapod_testkit::testbed::{self, APP_GROUP, APP_NAMESPACE, APP_REPLICAS, Testbed};
use libtest_mimic::{Arguments, Failed, Trial};

use common::WAIT;

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
    scenario!("steady_state_one_active", failover::steady_state),
    scenario!("rbac_controller_identity", rbac::rbac),
    scenario!("force_delete_active", failover::force_delete),
    scenario!("graceful_delete_active", failover::graceful_delete),
    scenario!("critical_container_crash", failover::critical_crash),
    scenario!("active_not_ready", failover::not_ready),
    scenario!("active_not_ready_grace", failover::not_ready_grace),
    scenario!(
        "acting_controller_deleted_steady",
        controller::controller_deleted_steady
    ),
    scenario!(
        "acting_controller_deleted_during_failover",
        controller::controller_deleted_during_failover
    ),
    scenario!(
        "controller_sigterm_handover",
        controller::controller_sigterm_handover
    ),
    scenario!(
        "active_relabeled_out_and_back",
        relabel::relabeled_out_and_back
    ),
    scenario!("far_future_epoch_on_active", failover::far_future_epoch),
    scenario!("duplicate_namespaces", controller::duplicate_namespaces),
    scenario!("noncritical_sidecar_crash", failover::noncritical_crash),
    scenario!(
        "application_stops_when_grants_stop",
        lease::application_stops_when_grants_stop
    ),
    scenario!(
        "hung_active_app_replaced",
        detection::hung_active_is_replaced
    ),
    scenario!(
        "partitioned_active_app_replaced",
        detection::partitioned_active_is_replaced
    ),
    scenario!(
        "node_lost_active_is_replaced",
        detection::node_lost_active_is_replaced
    ),
    scenario!(
        "node_network_lost_active_is_replaced",
        detection::node_network_lost_active_is_replaced
    ),
    scenario!("agent_restart_in_active", lease::agent_restart_in_active),
    scenario!("agent_restart_in_standby", lease::agent_restart_in_standby),
    scenario!("lost_standby_order", lease::lost_standby_order),
    scenario!(
        "agent_restart_in_place_standby",
        lease::agent_restart_in_place_standby
    ),
    scenario!(
        "endpoint_slice_mode_failover",
        endpoints::slice_mode_failover
    ),
    scenario!("scale_down_keeps_active", scale::scale_down_keeps_active),
    scenario!("rollout_moves_role_once", scale::rollout_moves_role_once),
    scenario!("kubectl_hapod_status", status::status_after_failover),
    scenario!("kubectl_hapod_switchover", status::switchover),
    scenario!("kubectl_hapod_pause", status::pause),
    scenario!("kubectl_hapod_operator_roles", status::operator_roles),
    scenario!(
        "helm_release_installs_and_tests",
        helm::release_installs_and_tests
    ),
    scenario!("label_history_no_double_active", history::no_double_active),
];

/// The scenarios that also run on the real node (`HAPOD_E2E_NODE=real`; the others are
/// ignored there): steady state, each failure of the active pod that the kubelet itself
/// reports, a hung active (the kubelet's probe then times out too), the acting controller
/// deleted, a failover in the EndpointSlice mode (kube-proxy then follows hapod's own slice),
/// and the history check over all of them. The rest need what only the process node offers
/// (a second node, partitions by policy routing on `lo`) or test nothing node-specific.
const REAL_NODE_SCENARIOS: [&str; 10] = [
    "steady_state_one_active",
    "force_delete_active",
    "graceful_delete_active",
    "critical_container_crash",
    "active_not_ready",
    "acting_controller_deleted_steady",
    "noncritical_sidecar_crash",
    "hung_active_app_replaced",
    "endpoint_slice_mode_failover",
    "label_history_no_double_active",
];

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One testbed for all: the scenarios run one after another, in the order listed.
    args.test_threads = Some(1);
    let real_node = node_kind() == Ok(testbed::NodeKind::Real);
    let suite = Arc::new(Suite::default());
    let trials = SCENARIOS
        .iter()
        .map(|&(name, f)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || suite.run(name, f))
                .with_ignored_flag(real_node && !REAL_NODE_SCENARIOS.contains(&name))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    suite.stop();
    conclusion.exit_code()
}

/// What runs the pods: `HAPOD_E2E_NODE`, `process` (the default) or `real`.
fn node_kind() -> Result<testbed::NodeKind, String> {
    match std::env::var("HAPOD_E2E_NODE").as_deref() {
        Err(_) | Ok("process") => Ok(testbed::NodeKind::Process),
        Ok("real") => Ok(testbed::NodeKind::Real),
        Ok(other) => Err(format!(
            "HAPOD_E2E_NODE={other:?}: the node is \"process\" (the default) or \"real\""
        )),
    }
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
        let node = match node_kind() {
            Ok(node) => node,
            Err(why) => {
                return Started {
                    rt,
                    testbed: Err(why),
                };
            }
        };
        let opts = testbed::Options {
            name: format!("e2e-{node:?}").to_lowercase(),
            // `cargo xtask test` builds the workspace just before; building again is a no-op.
            build: std::env::var_os("HAPOD_E2E_NO_BUILD").is_none(),
            node,
            ..Default::default()
        };
        let testbed = rt.block_on(Testbed::start(opts)).map_err(|e| {
            format!(
                "the e2e testbed could not start (control plane + {node:?} node + deploy/): {e:#}\n\
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
