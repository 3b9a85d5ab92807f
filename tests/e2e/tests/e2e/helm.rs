//! The Helm chart installed for real: a second release of `deploy/helm/hapod` next to the
//! `deploy/base` controller, with its own controller, Lease and sample app, selecting pods the
//! first never selects (`app=second` in a namespace of its own). Its controller acts, its group
//! gets one active and one standby, `helm test` passes (the hook Pod runs
//! `kubectl-hapod status --require-active` on the process node under its own ServiceAccount)
//! and fails once no controller replica holds the Lease; `helm uninstall` removes it all, and
//! the `deploy/base` group keeps its active pod throughout.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{
    APP_GROUP, APP_NAMESPACE, APP_REPLICAS, CONTROLLER_GROUP, CONTROLLER_NAME, CONTROLLER_REPLICAS,
    Settled, Testbed, pod_epoch, pod_phase,
};
use hapod_testkit::{helm, workspace_root};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::common::{PROMOTIONS, WAIT};

/// The release, its namespace (the controller's) and the sample app's.
const RELEASE: &str = "second";
const NAMESPACE: &str = "hapod-second";
const APP_NS: &str = "hapod-second-demo";
/// The release's group label value, selector and Lease: `deploy/base`'s controller selects
/// `app=hapod` in every namespace and holds Lease `hapod-system/hapod-controller`.
const GROUP: &str = "second";
const LEASE: &str = "second-controller";
/// The chart's test hook Pod (`<release>-test`), its ServiceAccount, its first container.
const TEST_POD: &str = "second-test";
const TEST_CONTAINER: &str = "status-0";
/// Bound of one `helm` command (it waits for the test Pod itself).
const HELM_TIMEOUT: Duration = Duration::from_secs(90);

/// What a user sets to run a second release beside `deploy/base` (docs/deploy.md, "Several
/// releases"): the demo on, in a namespace of its own, its pods and the controller's selector
/// on a group label value of their own, the controller watching that namespace only, a Lease
/// of its own (in its own namespace already; named apart all the same).
fn values() -> Vec<String> {
    [
        "sampleApp.enabled=true".to_string(),
        format!("sampleApp.namespace={APP_NS}"),
        format!("sampleApp.podLabels.app={GROUP}"),
        format!("controller.selector=app={GROUP}"),
        format!("controller.namespaces={{{APP_NS}}}"),
        format!("controller.leaseName={LEASE}"),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_string(), v])
    .collect()
}

pub(crate) async fn release_installs_and_tests(tb: &Testbed) -> Result<()> {
    let base = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    let result = install_and_test(tb).await;
    if result.is_err() {
        println!("  before removing the release:\n{}", release_pods(tb).await);
    }
    // Gone for the next scenarios, whatever happened.
    let removed = uninstall(tb, result.is_ok()).await;
    result?;
    removed.context("removing the release")?;
    let after = tb
        .wait_settled(APP_NAMESPACE, APP_GROUP, APP_REPLICAS, WAIT)
        .await?;
    ensure!(
        after.active.uid() == base.active.uid()
            && pod_epoch(&after.active) == pod_epoch(&base.active),
        "the deploy/base group's active changed: {} at epoch {:?} before, {} at epoch {:?} after",
        base.active.name_any(),
        pod_epoch(&base.active),
        after.active.name_any(),
        pod_epoch(&after.active)
    );
    Ok(())
}

async fn install_and_test(tb: &Testbed) -> Result<()> {
    let chart = workspace_root().join("deploy/helm/hapod");
    let mut install = vec![
        "install".to_string(),
        RELEASE.into(),
        chart.to_string_lossy().into_owned(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--create-namespace".into(),
    ];
    install.extend(values());
    run_helm(tb, &install).await?;
    let (controller, app) = wait_release_settled(tb).await?;
    let acting = controller.name_any();
    let promotions = tb.controller_metric(&controller, PROMOTIONS, &[]).await?;
    ensure!(
        promotions >= 1.0,
        "the release's acting controller {acting} promoted nobody ({PROMOTIONS} {promotions}), \
         yet {} is labeled active",
        app.active.name_any()
    );
    println!(
        "  release {RELEASE}: controller {acting} holds {NAMESPACE}/{LEASE}; {APP_NS}/{GROUP}: \
         active {}, standby {}",
        app.active.name_any(),
        app.standbys[0].name_any()
    );

    // `helm test` passes, from the hook Pod's own run of the plugin.
    let passed = helm_test(tb).await?;
    ensure!(
        passed.status.success(),
        "helm test failed with the release settled: {}",
        said(&passed)
    );
    let log = test_pod_log(tb, "Succeeded").await?;
    ensure!(
        log.contains(&acting) && log.contains(&app.active.name_any()),
        "the test Pod's status does not name the acting controller {acting} and the active {}:\n\
         {log}",
        app.active.name_any()
    );
    println!("  helm test passed; the hook Pod said:\n{log}");

    // No controller replica: the Lease is released, `helm test` must fail.
    scale_controller(tb, 0)?;
    let result = test_fails_without_controller(tb).await;
    scale_controller(tb, CONTROLLER_REPLICAS)?;
    result?;
    // Restored: the controller acts again and `helm test` passes again.
    wait_release_settled(tb).await?;
    let passed = helm_test(tb).await?;
    ensure!(
        passed.status.success(),
        "helm test failed after the controller came back: {}",
        said(&passed)
    );
    Ok(())
}

/// With the release's controller scaled to 0: once its replicas are gone and the Lease has no
/// holder, `helm test` fails, and the hook Pod says why.
async fn test_fails_without_controller(tb: &Testbed) -> Result<()> {
    let what = format!("the release's controller pods gone and {NAMESPACE}/{LEASE} released");
    await_condition(what, WAIT, Duration::from_millis(200), || async {
        let pods = tb.group_pods(NAMESPACE, CONTROLLER_GROUP).await?;
        let holder = tb.lease_holder_of(NAMESPACE, LEASE).await?;
        Ok(if pods.is_empty() && holder.is_none() {
            Check::Done(())
        } else {
            Check::NotYet(format!("{} pods, holder {holder:?}", pods.len()))
        })
    })
    .await?;
    let failed = helm_test(tb).await?;
    ensure!(
        !failed.status.success(),
        "helm test passed with no controller replica: {}",
        said(&failed)
    );
    let log = test_pod_log(tb, "Failed").await?;
    ensure!(
        log.contains("no controller replica holds the Lease"),
        "the test Pod failed for another reason than the released Lease:\n{log}"
    );
    println!("  helm test failed without a controller, as it must; the hook Pod said:\n{log}");
    Ok(())
}

/// Waits until the release's controller replicas settled with the active one holding the
/// release's Lease, and its sample app has exactly one active and one standby.
async fn wait_release_settled(tb: &Testbed) -> Result<(Pod, Settled)> {
    let what = format!("the release's acting controller to hold {NAMESPACE}/{LEASE}");
    let controller = await_condition(what, WAIT, Duration::from_millis(200), || async {
        let view = tb.group_view(NAMESPACE, CONTROLLER_GROUP).await?;
        if let Some(why) = view.settled_problem(CONTROLLER_REPLICAS) {
            return Ok(Check::NotYet(format!("{why}\n{}", view.table())));
        }
        let active = view.active()[0].clone();
        let holder = tb.lease_holder_of(NAMESPACE, LEASE).await?;
        Ok(if holder.as_deref() == Some(active.name_any().as_str()) {
            Check::Done(active)
        } else {
            Check::NotYet(format!(
                "active controller {} but Lease holder {holder:?}",
                active.name_any()
            ))
        })
    })
    .await?;
    let app = tb.wait_settled(APP_NS, GROUP, APP_REPLICAS, WAIT).await?;
    ensure!(
        app.standbys.len() == 1,
        "{APP_NS}/{GROUP}: one standby expected, got {}",
        app.standbys.len()
    );
    Ok((controller, app))
}

/// `helm test` of the release (the hook Pod's phase decides).
async fn helm_test(tb: &Testbed) -> Result<Output> {
    let timeout = format!("{}s", WAIT.as_secs());
    helm_output(
        tb,
        &["test", RELEASE, "-n", NAMESPACE, "--timeout", &timeout],
    )
    .await
}

/// What the test hook Pod's plugin printed, once the Pod ended in `phase`.
async fn test_pod_log(tb: &Testbed, phase: &str) -> Result<String> {
    let pod = tb
        .pod(NAMESPACE, TEST_POD)
        .await?
        .with_context(|| format!("no test Pod {NAMESPACE}/{TEST_POD}"))?;
    let log = tb.container_log(&pod, TEST_CONTAINER)?;
    ensure!(
        pod_phase(&pod) == phase,
        "the test Pod is {}, {phase} expected; it said:\n{log}",
        pod_phase(&pod)
    );
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref());
    ensure!(
        account == Some(TEST_POD),
        "the test Pod ran as ServiceAccount {account:?}, not {TEST_POD}"
    );
    Ok(log)
}

fn scale_controller(tb: &Testbed, replicas: usize) -> Result<()> {
    tb.kubectl(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment",
        CONTROLLER_NAME,
        &format!("--replicas={replicas}"),
    ])?;
    Ok(())
}

/// `helm uninstall` (which must succeed when the scenario did), the namespaces deleted and,
/// after a failure, whatever cluster-scoped object of the release is left however far the
/// install got; waits until both namespaces, their pods and those objects are gone.
async fn uninstall(tb: &Testbed, scenario_ok: bool) -> Result<()> {
    let out = helm_output(tb, &["uninstall", RELEASE, "-n", NAMESPACE]).await;
    let uninstalled = match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(anyhow::anyhow!("helm uninstall failed: {}", said(&out))),
        Err(e) => Err(e),
    };
    let namespaces: Api<Namespace> = Api::all(tb.client.clone());
    for ns in [NAMESPACE, APP_NS] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    let instance = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let roles: Api<ClusterRole> = Api::all(tb.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(tb.client.clone());
    if !scenario_ok {
        let _ = roles
            .delete_collection(&DeleteParams::default(), &instance)
            .await;
        let _ = bindings
            .delete_collection(&DeleteParams::default(), &instance)
            .await;
    }
    let what =
        format!("namespaces {NAMESPACE} and {APP_NS} and the release's cluster objects gone");
    await_condition(what, WAIT * 2, Duration::from_millis(500), || async {
        let mut left = Vec::new();
        for ns in [NAMESPACE, APP_NS] {
            let pods = Api::<Pod>::namespaced(tb.client.clone(), ns);
            left.extend(listed(&pods, &ListParams::default(), &format!("pod {ns}/")).await?);
            if namespaces.get_opt(ns).await?.is_some() {
                left.push(format!("namespace {ns}"));
            }
        }
        left.extend(listed(&roles, &instance, "ClusterRole ").await?);
        left.extend(listed(&bindings, &instance, "ClusterRoleBinding ").await?);
        Ok(if left.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("left: {left:?}"))
        })
    })
    .await?;
    if scenario_ok {
        uninstalled?;
    }
    Ok(())
}

/// `prefix` and the name of every object `api` lists with `lp`.
async fn listed<K>(api: &Api<K>, lp: &ListParams, prefix: &str) -> Result<Vec<String>>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(lp).await?;
    Ok(list
        .items
        .iter()
        .map(|o| format!("{prefix}{}", o.name_any()))
        .collect())
}

/// Runs the project's `helm` against the testbed's API server (admin kubeconfig), with its
/// cache, config and data under the run folder; fails when helm cannot run or times out,
/// returns its output whatever its exit status.
async fn helm_output<S: AsRef<std::ffi::OsStr>>(tb: &Testbed, args: &[S]) -> Result<Output> {
    let bin = helm::ensure_helm()?;
    let home = tb.run_dir.join("helm");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .env("KUBECONFIG", tb.kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let out = tokio::time::timeout(HELM_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("helm {} timed out after {HELM_TIMEOUT:?}", shown.join(" ")))?
        .context("running helm")?;
    Ok(out)
}

/// [`helm_output`], which must succeed.
async fn run_helm(tb: &Testbed, args: &[String]) -> Result<()> {
    let out = helm_output(tb, args).await?;
    ensure!(
        out.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        said(&out)
    );
    Ok(())
}

/// A command's standard output and error.
fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The release's pods, for a failure report.
async fn release_pods(tb: &Testbed) -> String {
    let mut out = String::new();
    for (ns, group) in [(NAMESPACE, CONTROLLER_GROUP), (APP_NS, GROUP)] {
        match tb.group_view(ns, group).await {
            Ok(view) => out.push_str(&view.table()),
            Err(e) => out.push_str(&format!("{ns}/{group}: {e:#}\n")),
        }
    }
    if let Ok(Some(pod)) = tb.pod(NAMESPACE, TEST_POD).await {
        out.push_str(&format!(
            "test Pod {}: {}\n",
            pod_phase(&pod),
            tb.container_log(&pod, TEST_CONTAINER)
                .unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    out
}
