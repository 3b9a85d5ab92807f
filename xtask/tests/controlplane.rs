//! The control plane from `cargo xtask controlplane` is a real one: the apiserver serves,
//! RBAC denies what it should, and the controller manager and scheduler act on objects.
//! The first run builds the binaries (minutes); later runs take them from the cache.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xtask::controlplane::{ControlPlane, Options};

fn run(mut command: Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("{command:?}"))?;
    Ok(output)
}

fn stdout_of(command: Command) -> Result<String> {
    let description = format!("{command:?}");
    let output = run(command)?;
    ensure!(
        output.status.success(),
        "{description} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Polls `condition` until it holds or `timeout` passes.
fn eventually(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const REPLICA_SET: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: cp-test
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: cp-test
  template:
    metadata:
      labels:
        app: cp-test
    spec:
      containers:
      - name: main
        image: ghcr.io/hapod/hapod-demo:0.1.0
"#;

#[test]
fn control_plane_serves_enforces_rbac_and_runs_controllers() -> Result<()> {
    let cp = ControlPlane::start(Options::default())?;

    // Ready, and stamped with the version it was built from.
    let mut readyz = cp.kubectl();
    readyz.args(["get", "--raw", "/readyz"]);
    assert_eq!(stdout_of(readyz)?.trim(), "ok");
    let mut version = cp.kubectl();
    version.args(["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&stdout_of(version)?)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"].as_str(),
        Some(cp.binaries().version())
    );

    // RBAC: a user nobody granted anything may not list pods; the admin may.
    let bob = cp.mint_kubeconfig("bob", &["hapod:testers"])?;
    let mut as_bob = Command::new(cp.binaries().path("kubectl"));
    as_bob
        .arg("--kubeconfig")
        .arg(&bob)
        .args(["get", "pods", "-n", "default"]);
    let denied = run(as_bob)?;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "bob listed pods: {stderr}");
    assert!(
        stderr.contains("Forbidden") && stderr.contains(r#"User "bob""#),
        "unexpected error for bob: {stderr}"
    );
    let mut can_i = Command::new(cp.binaries().path("kubectl"));
    can_i
        .arg("--kubeconfig")
        .arg(&bob)
        .args(["auth", "whoami", "-o", "json"]);
    let whoami: serde_json::Value = serde_json::from_str(&stdout_of(can_i)?)?;
    let groups = &whoami["status"]["userInfo"]["groups"];
    assert!(
        groups
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "hapod:testers")),
        "bob's groups: {groups}"
    );
    let mut as_admin = cp.kubectl();
    as_admin.args(["get", "pods", "-n", "default"]);
    stdout_of(as_admin)?;

    // The ReplicaSet controller creates the pods; the scheduler finds no node for them, so
    // they stay Pending and unschedulable (no kubelet here).
    let mut apply = cp.kubectl();
    apply
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = apply.spawn()?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(REPLICA_SET.as_bytes())?;
    ensure!(child.wait()?.success(), "kubectl apply failed");
    eventually(
        Duration::from_secs(60),
        "2 pods owned by the ReplicaSet, unschedulable",
        || {
            let mut get = cp.kubectl();
            get.args([
                "get",
                "pods",
                "-n",
                "default",
                "-l",
                "app=cp-test",
                "-o",
                "json",
            ]);
            let pods: serde_json::Value = serde_json::from_str(&stdout_of(get)?)?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            Ok(items.len() == 2
                && items.iter().all(|pod| {
                    pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
                        && pod["status"]["phase"] == "Pending"
                        && pod["status"]["conditions"]
                            .as_array()
                            .is_some_and(|conditions| {
                                conditions.iter().any(|c| {
                                    c["type"] == "PodScheduled" && c["reason"] == "Unschedulable"
                                })
                            })
                }))
        },
    )?;

    let dir = cp.dir().to_path_buf();
    cp.stop()?;
    assert!(!dir.exists(), "the temporary state directory outlived stop");
    Ok(())
}
