//! The process node against the real control plane (`xtask::controlplane`): the scheduler
//! binds a pod to the node, which runs it as a process with its own loopback IP, private /tmp
//! and ServiceAccount volume, reports readiness from an exec probe, reports a crash with exit
//! code, lastState and restartCount, refuses to fake an unmapped image, and completes
//! deletions (graceful, and with SIGKILL after the grace period) after killing the processes.
//!
//! Needs root (mount namespaces). The first run of the control plane builds it (minutes);
//! later runs take it from the cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hapod_node::{NodeConfig, NodeHandle, TMP_ANNOTATION_PREFIX};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use xtask::controlplane::{ControlPlane, Options};

const NODE: &str = "it-node";
const NS: &str = "default";

/// The container: writes what it sees into its /tmp, stays up until /tmp/crash exists, then
/// exits with 3. Its readiness probe (exec, inside the container's mount namespace) succeeds
/// once /tmp/ready exists.
const SCRIPT: &str = r#"
echo "started as $POD_NAME"
echo "$POD_IP" > /tmp/ip
echo "$POD_NAME" > /tmp/name
echo "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)" > /tmp/sa-namespace
test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes > /tmp/sa-token
echo "$KUBERNETES_SERVICE_HOST" > /tmp/api-host
echo "$(cat /etc/hapod-node-test/notify-key/key)" > /tmp/key-file
echo "$KEY_ENV" > /tmp/key-env
# `$$` is an escaped `$` in Kubernetes args: `$$$$` reaches the shell as `$$`.
echo $$$$ > /tmp/pid
while [ ! -e /tmp/crash ]; do sleep 0.05; done
exit 3
"#;

fn pod(name: &str, image: &str, script: &str, grace: i64) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "main",
                "image": image,
                "args": ["-c", script],
                "env": [
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "KEY_ENV", "valueFrom": { "secretKeyRef": { "name": "notify-key", "key": "key" } } },
                ],
                "volumeMounts": [{
                    "name": "notify-key",
                    "mountPath": "/etc/hapod-node-test/notify-key",
                    "readOnly": true,
                }],
                "readinessProbe": {
                    "exec": { "command": ["cat", "/tmp/ready"] },
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }],
            "volumes": [{
                "name": "notify-key",
                "secret": { "secretName": "notify-key", "defaultMode": 288 },
            }],
        },
    }))?)
}

async fn wait_for(
    api: &Api<Pod>,
    name: &str,
    timeout: Duration,
    what: &str,
    mut ok: impl FnMut(&Pod) -> bool,
) -> Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = api.get_opt(name).await?
            && ok(&p)
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            let p = api.get_opt(name).await?;
            bail!(
                "timed out after {timeout:?} waiting for {name}: {what}; pod: {}",
                serde_json::to_string_pretty(&p.map(|p| p.status))?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    while api.get_opt(name).await?.is_some() {
        ensure!(
            start.elapsed() < timeout,
            "{name} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(start.elapsed())
}

fn main_status(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn tmp_dir(p: &Pod) -> Result<PathBuf> {
    let key = format!("{TMP_ANNOTATION_PREFIX}main");
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&key))
        .map(PathBuf::from)
        .with_context(|| format!("annotation {key} missing"))
}

async fn read_when_written(path: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return Ok(s.trim().to_string());
        }
        ensure!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signal is delivered asynchronously: the process may take a moment to be gone.
async fn dies_soon(pid: i32) -> bool {
    for _ in 0..40 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; only a running (or sleeping) process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(unsafe_code)]
async fn pods_run_as_processes_against_the_real_control_plane() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the process node needs root for mount namespaces");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hapod_node=debug".into()),
        )
        .with_test_writer()
        .try_init();

    let cp = tokio::task::spawn_blocking(|| ControlPlane::start(Options::default())).await??;
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = Client::try_from(config.clone())?;

    let state = tempfile::tempdir()?;
    let mut cfg = NodeConfig::new(vec![NODE.into()], state.path());
    cfg.images.insert("example.org/test/shell", "/bin/sh");
    cfg.probe_period_scale = 0.2;
    cfg.backoff_initial = Duration::from_millis(300);
    cfg.heartbeat = Duration::from_secs(2);
    cfg.kubelet_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let node = NodeHandle::spawn(config.clone(), cfg.clone());

    let result = scenario(&cp, &client).await;
    let stopped = node.shutdown().await;
    result?;
    stopped?;
    node_restart(&client, config, cfg).await?;
    drop(cp);
    Ok(())
}

/// Stopping the node kills its containers (no orphans); a new node process starts them again
/// as restarts, with the pod's IP kept.
async fn node_restart(client: &Client, config: kube::Config, cfg: NodeConfig) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let node = NodeHandle::spawn(config.clone(), cfg.clone());
    pods.create(
        &PostParams::default(),
        &pod("survivor", "example.org/test/shell", SCRIPT, 5)?,
    )
    .await?;
    let running = |p: &Pod| {
        main_status(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    };
    let p = wait_for(
        &pods,
        "survivor",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await?;
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
    let pid: i32 = read_when_written(&tmp_dir(&p)?.join("pid"))
        .await?
        .parse()?;
    node.shutdown().await?;
    assert!(
        dies_soon(pid).await,
        "a container outlived the node process"
    );

    let node = NodeHandle::spawn(config, cfg);
    let p = wait_for(
        &pods,
        "survivor",
        Duration::from_secs(30),
        "restarted",
        |p| running(p) && main_status(p).is_some_and(|c| c.restart_count == 1),
    )
    .await;
    let result = async {
        let p = p?;
        assert_eq!(p.status.as_ref().and_then(|s| s.pod_ip.clone()), ip);
        pods.delete("survivor", &DeleteParams::default()).await?;
        wait_gone(&pods, "survivor", Duration::from_secs(10)).await?;
        anyhow::Ok(())
    }
    .await;
    node.shutdown().await?;
    result
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = cp.kubectl();
    cmd.args(args);
    Ok(tokio::task::spawn_blocking(move || cmd.output()).await??)
}

async fn scenario(cp: &ControlPlane, client: &Client) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let post = PostParams::default();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "notify-key", "namespace": NS },
        "stringData": { "key": "s3cret" },
    }))?;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&post, &secret)
        .await?;

    // Scheduled by the real scheduler, running with a loopback pod IP, not yet ready. Its
    // readiness probe's period is a minute (scaled): see below what makes it probe sooner.
    let mut web = pod("web", "example.org/test/shell:1.0", SCRIPT, 5)?;
    if let Some(probe) = web
        .spec
        .as_mut()
        .and_then(|s| s.containers[0].readiness_probe.as_mut())
    {
        probe.period_seconds = Some(300);
    }
    pods.create(&post, &web).await?;
    let p = wait_for(&pods, "web", Duration::from_secs(60), "Running", |p| {
        main_status(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await?;
    let spec = p.spec.as_ref().context("spec")?;
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let status = p.status.as_ref().context("status")?;
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ip = status.pod_ip.clone().context("podIP")?;
    assert!(
        ip.starts_with("127.10."),
        "pod IP {ip} is not from the loopback range"
    );
    assert_eq!(
        status.pod_ips.as_ref().map(|v| v[0].ip.clone()),
        Some(ip.clone())
    );
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(!ready(&p));

    // The container saw its downward API env, its ServiceAccount volume and the loopback
    // API server, all through its private /tmp published on the pod.
    let tmp = tmp_dir(&p)?;
    assert_eq!(read_when_written(&tmp.join("ip")).await?, ip);
    assert_eq!(read_when_written(&tmp.join("name")).await?, "web");
    assert_eq!(read_when_written(&tmp.join("sa-namespace")).await?, NS);
    assert_eq!(read_when_written(&tmp.join("sa-token")).await?, "yes");
    assert_eq!(read_when_written(&tmp.join("api-host")).await?, "127.0.0.1");
    assert_eq!(read_when_written(&tmp.join("key-file")).await?, "s3cret");
    assert_eq!(read_when_written(&tmp.join("key-env")).await?, "s3cret");

    // Ready once the exec probe (run inside the container's /tmp) succeeds: as on the
    // kubelet, a change to the pod (here a label) makes a not-ready container's readiness
    // probe run at once rather than at its next period.
    std::fs::write(tmp.join("ready"), "")?;
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "synced": "yes" } } })),
    )
    .await?;
    wait_for(&pods, "web", Duration::from_secs(10), "Ready", ready).await?;

    // `kubectl logs` through the API server and the node's kubelet endpoint; `kubectl exec`
    // fails with a message saying why.
    let logs = kubectl(cp, &["logs", "web", "-c", "main"]).await?;
    let stdout = String::from_utf8_lossy(&logs.stdout);
    assert!(
        stdout.contains("started as web"),
        "kubectl logs: {stdout} {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let exec = kubectl(cp, &["exec", "web", "-c", "main", "--", "true"]).await?;
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(!exec.status.success());
    assert!(
        stderr.contains("does not implement exec"),
        "kubectl exec: {stderr}"
    );

    // A crash: visible with its exit code in lastState, restarted with a fresh /tmp.
    let first_pid: i32 = read_when_written(&tmp.join("pid")).await?.parse()?;
    let crashed_at = Instant::now();
    std::fs::write(tmp.join("crash"), "")?;
    let p = wait_for(
        &pods,
        "web",
        Duration::from_secs(10),
        "crash reported",
        |p| {
            main_status(p).is_some_and(|c| {
                let terminated_now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
                let terminated_last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                terminated_now
                    .or(terminated_last)
                    .is_some_and(|t| t.exit_code == 3)
            })
        },
    )
    .await?;
    eprintln!("crash reported after {:?}", crashed_at.elapsed());
    assert!(!ready(&p), "a crashed container is not ready");
    let p = wait_for(&pods, "web", Duration::from_secs(15), "restarted", |p| {
        main_status(p).is_some_and(|c| {
            c.restart_count == 1 && c.state.as_ref().is_some_and(|s| s.running.is_some())
        })
    })
    .await?;
    let c = main_status(&p).context("container status")?;
    let last = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("lastState.terminated")?;
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(dies_soon(first_pid).await);
    assert_eq!(
        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        Some(ip.clone())
    );

    // Graceful deletion: SIGTERM ends the shell at once; the node completes the deletion.
    let pid: i32 = read_when_written(&tmp.join("pid")).await?.parse()?;
    assert!(alive(pid));
    pods.delete("web", &DeleteParams::default()).await?;
    let took = wait_gone(&pods, "web", Duration::from_secs(10)).await?;
    eprintln!("graceful deletion completed after {took:?}");
    assert!(
        dies_soon(pid).await,
        "the container process outlived its pod"
    );
    assert!(!tmp.exists(), "the pod folder was not cleaned up");

    // A process that ignores SIGTERM is killed when the grace period ends.
    let stubborn = format!("trap '' TERM\n{SCRIPT}");
    pods.create(
        &post,
        &pod("stubborn", "example.org/test/shell", &stubborn, 2)?,
    )
    .await?;
    let p = wait_for(&pods, "stubborn", Duration::from_secs(60), "Running", |p| {
        main_status(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await?;
    let other_ip = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("podIP")?;
    assert_ne!(other_ip, ip, "pod IPs must be unique");
    let tmp = tmp_dir(&p)?;
    let pid: i32 = read_when_written(&tmp.join("pid")).await?.parse()?;
    pods.delete("stubborn", &DeleteParams::default()).await?;
    let took = wait_gone(&pods, "stubborn", Duration::from_secs(15)).await?;
    eprintln!("deletion with SIGKILL completed after {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "grace period not honored: {took:?}"
    );
    assert!(dies_soon(pid).await);

    // A failing liveness probe (exec, inside the container) restarts the container.
    let mut unhealthy = pod("unhealthy", "example.org/test/shell", SCRIPT, 5)?;
    if let Some(c) = unhealthy
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
    {
        c.liveness_probe = serde_json::from_value(serde_json::json!({
            "exec": { "command": ["cat", "/tmp/healthy"] },
            "periodSeconds": 1,
            "failureThreshold": 2,
        }))?;
    }
    pods.create(&post, &unhealthy).await?;
    let p = wait_for(
        &pods,
        "unhealthy",
        Duration::from_secs(60),
        "restart by liveness",
        |p| main_status(p).is_some_and(|c| c.restart_count >= 1),
    )
    .await?;
    let last = main_status(&p)
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .context("lastState.terminated")?;
    assert_eq!((last.exit_code, last.signal), (143, Some(15)), "SIGTERM");
    pods.delete("unhealthy", &DeleteParams::default()).await?;
    wait_gone(&pods, "unhealthy", Duration::from_secs(10)).await?;

    // An image without a binary is reported, never faked.
    pods.create(
        &post,
        &pod("nobinary", "example.org/test/unknown:2", "true", 1)?,
    )
    .await?;
    let p = wait_for(
        &pods,
        "nobinary",
        Duration::from_secs(60),
        "image error",
        |p| {
            main_status(p)
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        },
    )
    .await?;
    let waiting = main_status(&p)
        .and_then(|c| c.state.as_ref()?.waiting.clone())
        .context("waiting")?;
    let message = waiting.message.unwrap_or_default();
    assert!(message.contains("example.org/test/unknown"), "{message}");
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    pods.delete("nobinary", &DeleteParams::default()).await?;
    wait_gone(&pods, "nobinary", Duration::from_secs(10)).await?;
    Ok(())
}
