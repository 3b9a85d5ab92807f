//! Scale: N groups of 2 pods on one dedicated controller replica. Cold-start convergence,
//! the controller's RSS and CPU (from /proc), and a storm (the actives of up to 100 groups
//! force-deleted at once).
//!
//! The scale controller is a one-replica copy of deploy/'s controller Deployment (same image,
//! service account, RBAC) that selects only the scale pods (`hapod.io/bench=scale`, group
//! label `hapod.io/bench-group`, namespace `hapod-bench-scale`, its own Lease). The scale pods
//! run a lightweight image (by default `hapod-agent`, the notification receiver alone, which
//! ACKs), one container each, so 2,000 pods fit on a 2-core machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::stats::{Summary, summarize};
use super::sysinfo::{
    ProcSample, find_pid, proc_sample, udp_receive_buffer_drops, udp_socket_drops,
};
use hapod_testkit::testbed::{
    GROUP_LABEL, PodRecord, ROLE_LABEL, STANDBY, Testbed, now_unix_nanos as now_ns,
};

pub const NAMESPACE: &str = "hapod-bench-scale";
pub const SELECTOR_KEY: &str = "hapod.io/bench";
pub const CONTROLLER: &str = "hapod-bench-controller";
pub const CONTROLLER_SELECTOR: &str = "app=icr-bench";

/// How to run the scale pods.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub image: String,
    pub args: Vec<String>,
}

impl Default for PodSpec {
    fn default() -> Self {
        PodSpec {
            image: "ghcr.io/hapod/hapod-agent:0.1.0".into(),
            args: vec!["--role-file=/tmp/role".into()],
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ScaleResult {
    pub groups: usize,
    pub pods_ready_s: f64,
    /// controller Deployment created -> every group has exactly one active
    pub converge_s: f64,
    /// controller process start (from /proc) -> converged
    pub converge_from_process_s: Option<f64>,
    pub rss_peak_mib: f64,
    pub rss_idle_mib: f64,
    pub cpu_converge_s: f64,
    pub cpu_idle_pct: f64,
    /// The heartbeat while idle (`None`: the controller's counters could not be read).
    pub heartbeat: Option<IdleHeartbeat>,
    pub storm_groups: usize,
    /// per group: the storm's first DELETE sent → its new active labeled (watch)
    pub storm_ms: Vec<f64>,
    /// per group, in the order of `storm_ms`: its old active's deletion seen (watch) → its
    /// new active labeled (watch), the failover alone without the time the API took to carry
    /// out the other deletions (`None`: the watch showed no deletion before the new active)
    pub storm_from_deletion_ms: Vec<Option<f64>>,
    /// the scale controller's own `promoted` latency (its watch event → write acked) for the
    /// storm, from its JSON log
    pub storm_ctl_ms: Vec<f64>,
    pub storm_unresolved: usize,
    pub storm_cpu_s: f64,
    pub storm_rss_mib: f64,
    /// perf reports written (cold start, storm)
    pub profiles: Vec<String>,
    pub note: String,
}

/// The application lease's heartbeat over the idle window, when nothing fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleHeartbeat {
    /// order datagrams the controller sent per second
    pub orders_per_s: f64,
    /// agent reports the controller received per second
    pub reports_per_s: f64,
    /// datagrams dropped per second for a full receive buffer, over every socket of the
    /// pods' network namespace (the controller's and the agents'); `None`: not read
    pub buffer_drops_per_s: Option<f64>,
    /// the part of those dropped by the controller's own sockets (the agents' reports)
    pub controller_drops_per_s: Option<f64>,
    /// promotions counted while nothing failed: pods wrongly judged unresponsive
    pub promotions: f64,
    /// agents that reported their grant lapsed while nothing failed (renewals came too late)
    pub lapses: f64,
}

impl IdleHeartbeat {
    /// The share of reports that did not arrive (one report answers each order).
    pub fn reports_lost(&self) -> f64 {
        if self.orders_per_s > 0.0 {
            (1.0 - self.reports_per_s / self.orders_per_s).max(0.0)
        } else {
            0.0
        }
    }
}

impl ScaleResult {
    pub fn storm_summary(&self) -> Option<Summary> {
        summarize(&self.storm_ms)
    }

    pub fn storm_from_deletion_summary(&self) -> Option<Summary> {
        summarize(
            &self
                .storm_from_deletion_ms
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
        )
    }
}

fn pod_manifest(i: usize, member: usize, spec: &PodSpec) -> Result<Pod> {
    let group = format!("g{i:04}");
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{group}-{member}"),
            "namespace": NAMESPACE,
            "labels": { SELECTOR_KEY: "scale", GROUP_LABEL: group, ROLE_LABEL: STANDBY }
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "agent",
                "image": spec.image,
                "args": spec.args,
                "env": [
                    { "name": "pwcriticality", "value": "critical" },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }
                ]
            }]
        }
    }))?)
}

/// The scale controller: deploy/'s controller Deployment, one replica, re-aimed at the scale
/// pods, without the notification key (the agents run without one).
async fn controller_deployment(client: &Client, base_ns: &str) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), base_ns);
    let base = api
        .get("hapod-controller")
        .await
        .context("reading deploy/'s hapod-controller Deployment")?;
    let mut v = serde_json::to_value(&base)?;
    v["metadata"] = serde_json::json!({
        "name": CONTROLLER,
        "namespace": base_ns,
        "labels": { "app": "icr-bench" }
    });
    v.as_object_mut().map(|o| o.remove("status"));
    v["spec"]["replicas"] = 1.into();
    v["spec"]["selector"] = serde_json::json!({ "matchLabels": { "app": "icr-bench" } });
    v["spec"]["template"]["metadata"]["labels"] =
        serde_json::json!({ GROUP_LABEL: "icr-bench", ROLE_LABEL: STANDBY });
    let c = &mut v["spec"]["template"]["spec"]["containers"][0];
    let mut args: Vec<String> = c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .filter(|s| !s.starts_with("--notify-key-file"))
                .collect()
        })
        .unwrap_or_default();
    args.extend([
        format!("--selector={SELECTOR_KEY}=scale"),
        format!("--namespaces={NAMESPACE}"),
        format!("--lease-name={CONTROLLER}"),
        format!("--controller-selector={CONTROLLER_SELECTOR}"),
    ]);
    if !args.iter().any(|a| a.starts_with("--log-format")) {
        args.push("--log-format=json".into());
    }
    c["args"] = serde_json::to_value(args)?;
    // probes would only slow a bench replica down and the liveness probe could kill it
    // under load
    c.as_object_mut().map(|o| {
        o.remove("livenessProbe");
        o.remove("resources")
    });
    Ok(serde_json::from_value(v)?)
}

async fn ensure_namespace(client: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(NAMESPACE).await?.is_none() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE }
        }))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

/// Deletes every scale pod and the scale controller, and waits until they are gone.
pub async fn teardown(client: &Client, ctl_ns: &str, pods: &Pods<'_>, count: usize) -> Result<()> {
    let dapi: Api<Deployment> = Api::namespaced(client.clone(), ctl_ns);
    let _ = dapi
        .delete(CONTROLLER, &DeleteParams::default().grace_period(0))
        .await;
    let cpods: Api<Pod> = Api::namespaced(client.clone(), ctl_ns);
    let _ = cpods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels(CONTROLLER_SELECTOR),
        )
        .await;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = api
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels(&format!("{SELECTOR_KEY}=scale")),
        )
        .await;
    let timeout = teardown_timeout(count);
    pods.wait_state(timeout, |c| c.is_empty())
        .await
        .ok_or_else(|| anyhow!("scale pods not gone after {timeout:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cpods
        .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            bail!("scale controller pod not gone");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The scale namespace's pods as the testbed's History recorded them.
pub struct Pods<'a> {
    pub tb: &'a Testbed,
}

impl Pods<'_> {
    /// Every record of the scale namespace, in resourceVersion order.
    pub fn log(&self) -> Vec<PodRecord> {
        let mut v = self.tb.history.pod_records();
        v.retain(|r| r.namespace == NAMESPACE);
        v
    }

    /// The latest record of every pod that exists.
    pub fn current(&self) -> Vec<PodRecord> {
        let mut last: BTreeMap<String, PodRecord> = BTreeMap::new();
        for r in self.log() {
            last.insert(r.uid.clone(), r);
        }
        last.into_values().filter(|r| !r.deleted).collect()
    }

    /// Polls the recorded state until `pred` holds (bounded). The figures come from the
    /// records' receive times, not from when this loop notices.
    pub async fn wait_state(
        &self,
        timeout: Duration,
        pred: impl Fn(&[PodRecord]) -> bool,
    ) -> Option<Vec<PodRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let cur = self.current();
            if pred(&cur) {
                return Some(cur);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn alive(r: &PodRecord) -> bool {
    !r.deleted && !r.terminating
}

fn actives_by_group(cur: &[PodRecord]) -> BTreeMap<String, Vec<&PodRecord>> {
    let mut m: BTreeMap<String, Vec<&PodRecord>> = BTreeMap::new();
    for p in cur.iter().filter(|p| alive(p)) {
        let e = m.entry(p.group.clone().unwrap_or_default()).or_default();
        if p.is_active() {
            e.push(p);
        }
    }
    m
}

fn converged(cur: &[PodRecord], groups: usize) -> bool {
    let m = actives_by_group(cur);
    m.len() == groups && m.values().all(|v| v.len() == 1)
}

/// Replays a pod log; the time of the first event after which every group has exactly one
/// active pod.
pub fn first_converged(log: &[PodRecord], groups: usize) -> Option<u64> {
    let mut pod: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut exactly_one = 0usize;
    for o in log {
        let g = o.group.clone().unwrap_or_default();
        let now_active = alive(o) && o.is_active();
        let was = pod.get(&o.uid).map(|(_, a)| *a).unwrap_or(false);
        if o.deleted {
            pod.remove(&o.uid);
        } else {
            pod.insert(o.uid.clone(), (g.clone(), now_active));
        }
        if was != now_active {
            let c = count.entry(g).or_default();
            let before = *c == 1;
            if now_active {
                *c += 1;
            } else {
                *c -= 1;
            }
            let after = *c == 1;
            match (before, after) {
                (false, true) => exactly_one += 1,
                (true, false) => exactly_one -= 1,
                _ => {}
            }
        }
        if exactly_one == groups {
            return Some(o.seen_unix_nanos);
        }
    }
    None
}

/// /proc start time of a process as unix ns: now − (uptime − start ticks / USER_HZ); both
/// have 10 ms resolution (btime has only whole seconds).
fn process_start_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let now = now_ns();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let age_ns = ((uptime - start_ticks / 100.0) * 1e9).max(0.0) as u64;
    Some(now.saturating_sub(age_ns))
}

/// Samples a process's RSS and CPU every 100 ms until `fut` resolves; peak RSS and the last
/// sample.
struct Sampler {
    peak_kib: u64,
    last: Option<ProcSample>,
}

async fn sample_until<F: std::future::Future>(pid: u32, fut: F) -> (F::Output, Sampler) {
    let mut s = Sampler {
        peak_kib: 0,
        last: proc_sample(pid),
    };
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut fut => {
                s.last = proc_sample(pid).or(s.last);
                if let Some(l) = s.last { s.peak_kib = s.peak_kib.max(l.rss_kib); }
                return (out, s);
            }
            _ = tick.tick() => {
                if let Some(p) = proc_sample(pid) {
                    s.peak_kib = s.peak_kib.max(p.rss_kib);
                    s.last = Some(p);
                }
            }
        }
    }
}

pub struct ScaleOpts {
    pub spec: PodSpec,
    pub storm: usize,
    pub controller_namespace: String,
    pub profile: bool,
    pub profile_dir: std::path::PathBuf,
}

/// Runs one scale point.
pub async fn run(tb: &Testbed, groups: usize, o: &ScaleOpts) -> Result<ScaleResult> {
    let client = &tb.client;
    ensure_namespace(client).await?;
    let pods = Pods { tb };
    let out = run_inner(client, groups, o, &pods).await;
    let td = teardown(client, &o.controller_namespace, &pods, groups * 2).await;
    measured_despite_teardown(out, td)
}

/// A teardown that fails (the API still deleting pods, say) keeps what the point measured:
/// the failure becomes its note (the next point then starts with those pods left).
fn measured_despite_teardown(out: Result<ScaleResult>, td: Result<()>) -> Result<ScaleResult> {
    let mut r = out?;
    if let Err(e) = td {
        let note = format!("teardown: {e:#}");
        r.note = if r.note.is_empty() {
            note
        } else {
            format!("{}; {note}", r.note)
        };
    }
    Ok(r)
}

/// How long the API may take to delete `pods` scale pods: it deleted ~20 a second at
/// 10,000 on a 2-core machine.
fn teardown_timeout(pods: usize) -> Duration {
    Duration::from_millis(100 * pods as u64).max(Duration::from_secs(300))
}

async fn run_inner(
    client: &Client,
    groups: usize,
    o: &ScaleOpts,
    pods: &Pods<'_>,
) -> Result<ScaleResult> {
    let mut r = ScaleResult {
        groups,
        ..Default::default()
    };
    // clean slate
    teardown(client, &o.controller_namespace, pods, pods.current().len()).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let t_create = Instant::now();
    let t_start = now_ns();
    let manifests: Vec<Pod> = (0..groups)
        .flat_map(|g| (0..2).map(move |m| (g, m)))
        .map(|(g, m)| pod_manifest(g, m, &o.spec))
        .collect::<Result<_>>()?;
    futures::stream::iter(manifests.into_iter().map(|p| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &p).await }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await
    .context("creating scale pods")?;
    let ready_timeout = Duration::from_secs(120 + groups as u64 / 2);
    pods.wait_state(ready_timeout, |c| {
        c.iter().filter(|p| alive(p) && p.ready).count() == groups * 2
    })
    .await
    .ok_or_else(|| {
        anyhow!(
            "{} of {} scale pods ready after {ready_timeout:?}",
            pods.current().iter().filter(|p| p.ready).count(),
            groups * 2
        )
    })?;
    r.pods_ready_s = t_create.elapsed().as_secs_f64();
    println!(
        "  {groups} groups: {} pods ready in {:.1} s",
        groups * 2,
        r.pods_ready_s
    );

    // cold start: the controller starts with every group already running, all standby
    let dep = controller_deployment(client, &o.controller_namespace).await?;
    let dapi: Api<Deployment> = Api::namespaced(client.clone(), &o.controller_namespace);
    let t0 = now_ns();
    dapi.create(&PostParams::default(), &dep).await?;
    let cpods: Api<Pod> = Api::namespaced(client.clone(), &o.controller_namespace);
    // find the controller process (bounded)
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let list = cpods
            .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
            .await?;
        if let Some(pid) = list
            .items
            .iter()
            .find_map(|p| find_pid("hapod-controller", &p.name_any()))
        {
            break pid;
        }
        if Instant::now() > deadline {
            bail!("scale controller process not found");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let conv_perf = if o.profile {
        start_perf(pid, &o.profile_dir, &format!("converge-{groups}"))
    } else {
        None
    };
    let conv_timeout = Duration::from_secs(60 + groups as u64 / 5);
    let (conv, s) =
        sample_until(pid, pods.wait_state(conv_timeout, |c| converged(c, groups))).await;
    let t_conv = now_ns();
    if let Some(p) = conv_perf {
        r.profiles.extend(finish_perf(
            p,
            &o.profile_dir,
            &format!("converge-{groups}"),
        ));
    }
    if conv.is_none() {
        let m = actives_by_group(&pods.current())
            .values()
            .filter(|v| v.len() == 1)
            .count();
        bail!("{groups} groups: only {m} with exactly one active after {conv_timeout:?}");
    }
    // when did every group first have exactly one active? (replay of the stamped log)
    let last_label = first_converged(
        &pods
            .log()
            .into_iter()
            .filter(|r| r.seen_unix_nanos >= t_start)
            .collect::<Vec<_>>(),
        groups,
    )
    .unwrap_or(t_conv);
    r.converge_s = (last_label.saturating_sub(t0)) as f64 / 1e9;
    r.converge_from_process_s =
        process_start_ns(pid).map(|ps| (last_label.saturating_sub(ps)) as f64 / 1e9);
    // the process started for this run: its whole CPU time is the cold start
    r.cpu_converge_s = s.last.map_or(f64::NAN, |b| b.cpu_seconds);
    let mut peak = s.peak_kib;
    println!(
        "  {groups} groups: converged {:.2} s after the controller was created ({:?} s after its process started)",
        r.converge_s, r.converge_from_process_s
    );
    // idle: 5 s with nothing happening but the heartbeat
    let ctl_pod = cpods
        .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
        .await?
        .items
        .into_iter()
        .find(|p| find_pid("hapod-controller", &p.name_any()) == Some(pid))
        .context("the scale controller's pod")?;
    let lease_counters = || heartbeat_counters(pods.tb, &ctl_pod);
    let drops = || (udp_receive_buffer_drops(pid), udp_socket_drops(pid));
    let (a, counted_a, drops_a) = (proc_sample(pid), lease_counters().await, drops());
    tokio::time::sleep(IDLE_WINDOW).await;
    let (b, counted_b, drops_b) = (proc_sample(pid), lease_counters().await, drops());
    if let (Some(a), Some(b)) = (a, b) {
        r.cpu_idle_pct = (b.cpu_seconds - a.cpu_seconds) / IDLE_WINDOW.as_secs_f64() * 100.0;
        r.rss_idle_mib = b.rss_kib as f64 / 1024.0;
        peak = peak.max(b.rss_kib);
    }
    if let (Some(a), Some(b)) = (counted_a, counted_b) {
        let per_s = |from: f64, to: f64| (to - from) / IDLE_WINDOW.as_secs_f64();
        let count_per_s = |from: Option<u64>, to: Option<u64>| {
            from.zip(to).map(|(from, to)| per_s(from as f64, to as f64))
        };
        let idle = IdleHeartbeat {
            orders_per_s: per_s(a.orders, b.orders),
            reports_per_s: per_s(a.reports, b.reports),
            buffer_drops_per_s: count_per_s(drops_a.0, drops_b.0),
            controller_drops_per_s: count_per_s(drops_a.1, drops_b.1),
            promotions: b.promotions - a.promotions,
            lapses: b.lapses - a.lapses,
        };
        println!(
            "  {groups} groups idle: {:.0} orders/s sent, {:.0} reports/s received ({:.1} % \
             lost), {} datagrams/s dropped for full receive buffers ({} by the controller), {} \
             promotions, {} lapses, CPU {:.1} %",
            idle.orders_per_s,
            idle.reports_per_s,
            idle.reports_lost() * 100.0,
            idle.buffer_drops_per_s
                .map_or("?".into(), |d| format!("{d:.0}")),
            idle.controller_drops_per_s
                .map_or("?".into(), |d| format!("{d:.0}")),
            idle.promotions,
            idle.lapses,
            r.cpu_idle_pct
        );
        r.heartbeat = Some(idle);
    }

    // storm
    let cur = pods.current();
    let actives: Vec<PodRecord> = cur
        .iter()
        .filter(|p| alive(p) && p.is_active())
        .take(o.storm.min(groups))
        .cloned()
        .collect();
    r.storm_groups = actives.len();
    let uids: BTreeSet<String> = actives.iter().map(|p| p.uid.clone()).collect();
    let stormed: BTreeSet<String> = actives.iter().filter_map(|p| p.group.clone()).collect();
    let perf = if o.profile {
        start_perf(pid, &o.profile_dir, &format!("storm-{groups}"))
    } else {
        None
    };
    let before = proc_sample(pid);
    let ts = now_ns();
    let dels = futures::future::join_all(actives.iter().map(|p| {
        let api = api.clone();
        let name = p.pod.clone();
        async move {
            api.delete(&name, &DeleteParams::default().grace_period(0))
                .await
        }
    }));
    let wait_all = async {
        dels.await;
        pods.wait_state(Duration::from_secs(60), |c| {
            let m = actives_by_group(c);
            stormed.iter().all(|g| {
                m.get(g)
                    .is_some_and(|v| v.len() == 1 && !uids.contains(&v[0].uid))
            })
        })
        .await
    };
    let (done, s2) = sample_until(pid, wait_all).await;
    let after = proc_sample(pid);
    if let (Some(a), Some(b)) = (before, after) {
        r.storm_cpu_s = b.cpu_seconds - a.cpu_seconds;
    }
    r.storm_rss_mib = s2.peak_kib as f64 / 1024.0;
    peak = peak.max(s2.peak_kib);
    r.rss_peak_mib = peak as f64 / 1024.0;
    if let Some(p) = perf {
        r.profiles
            .extend(finish_perf(p, &o.profile_dir, &format!("storm-{groups}")));
    }
    // per group: first watch event labeling a new (other) pod active, and the first showing
    // its old active deleted or terminating
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    let mut deleted: BTreeMap<String, u64> = BTreeMap::new();
    for ob in pods.log().into_iter().filter(|r| r.seen_unix_nanos >= ts) {
        let Some(g) = ob.group.as_ref().filter(|g| stormed.contains(*g)) else {
            continue;
        };
        if uids.contains(&ob.uid) {
            if ob.deleted || ob.terminating {
                deleted.entry(g.clone()).or_insert(ob.seen_unix_nanos);
            }
        } else if alive(&ob) && ob.is_active() {
            first.entry(g.clone()).or_insert(ob.seen_unix_nanos);
        }
    }
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    r.storm_ms = first.values().map(|t| ms(ts, *t)).collect();
    r.storm_from_deletion_ms = first
        .iter()
        .map(|(g, t)| Some(ms(*deleted.get(g)?, *t)))
        .collect();
    r.storm_unresolved = stormed.len() - first.len();
    // the controller's own view of the storm, from its log (before teardown removes it)
    let ctl_pods = cpods
        .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
        .await?;
    for p in &ctl_pods.items {
        if let Some(log) = p.annotations().get("node.hapod.io/log-controller") {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            r.storm_ctl_ms.extend(
                text.lines()
                    .flat_map(super::logs::line_stages)
                    .filter(|s| s.t >= ts && s.stage == "promoted.latency")
                    .map(|s| s.ms),
            );
        }
    }
    if done.is_none() {
        r.note = format!("storm: {} groups unresolved after 60 s", r.storm_unresolved);
    }
    if let Some(s) = r.storm_summary() {
        println!(
            "  {groups} groups: storm of {}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms; RSS peak {:.1} MiB",
            r.storm_groups, s.p50, s.p99, s.max, r.rss_peak_mib
        );
    }
    Ok(r)
}

/// The idle window: nothing happens but the application lease's heartbeat.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// The controller's counters that the idle window compares.
struct LeaseCounters {
    orders: f64,
    reports: f64,
    promotions: f64,
    lapses: f64,
}

/// The controller's heartbeat, promotion and lapse counters; `None` when its `/metrics` cannot be
/// read (the idle figures then stay empty, the run goes on).
async fn heartbeat_counters(tb: &Testbed, controller: &Pod) -> Option<LeaseCounters> {
    let read = |metric, labels| tb.controller_metric(controller, metric, labels);
    let counters = async {
        Ok::<_, anyhow::Error>(LeaseCounters {
            orders: read("hapod_lease_orders_sent_total", &[]).await?,
            reports: read("hapod_lease_reports_received_total", &[]).await?,
            promotions: read("hapod_promotions_total", &[]).await?,
            lapses: read("hapod_agent_reports_total", &[("role", "lapsed")]).await?,
        })
    };
    counters
        .await
        .inspect_err(|error| println!("  heartbeat counters not read: {error:#}"))
        .ok()
}

struct Perf {
    child: std::process::Child,
    data: std::path::PathBuf,
}

/// Samples the controller with `perf record` during the storm, when perf is usable.
fn start_perf(pid: u32, dir: &std::path::Path, what: &str) -> Option<Perf> {
    let data = std::env::temp_dir().join(format!("hapod-bench-perf-{what}.data"));
    let _ = std::fs::create_dir_all(dir);
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "1999", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // perf needs a moment to attach
    std::thread::sleep(Duration::from_millis(300));
    Some(Perf { child, data })
}

fn finish_perf(mut p: Perf, dir: &std::path::Path, what: &str) -> Option<String> {
    // SIGINT makes perf write its data and exit
    let _ = std::process::Command::new("kill")
        .args(["-INT", &p.child.id().to_string()])
        .status();
    let _ = p.child.wait();
    let out = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0.5",
            "-i",
        ])
        .arg(&p.data)
        .args(["--sort", "dso,symbol", "-g", "none"])
        .output()
        .ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    // where the time goes by binary (controller code, libc, kernel)
    if let Ok(o) = std::process::Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso", "-i"])
        .arg(&p.data)
        .output()
    {
        text.push_str("\n# by shared object\n");
        text.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    let _ = std::fs::remove_file(&p.data);
    if text.trim().is_empty() {
        return None;
    }
    let path = dir.join(format!("profile-{what}.txt"));
    std::fs::write(&path, &text).ok()?;
    Some(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_teardown_keeps_the_measurement_as_a_note() {
        let measured = || {
            Ok(ScaleResult {
                groups: 5000,
                rss_peak_mib: 216.6,
                ..Default::default()
            })
        };
        let r = measured_despite_teardown(measured(), Err(anyhow!("pods not gone"))).unwrap();
        assert_eq!((r.groups, r.rss_peak_mib), (5000, 216.6));
        assert_eq!(r.note, "teardown: pods not gone");
        assert!(
            measured_despite_teardown(measured(), Ok(()))
                .unwrap()
                .note
                .is_empty()
        );
        let failed = measured_despite_teardown(Err(anyhow!("no convergence")), Ok(()));
        assert!(failed.is_err());
    }

    #[test]
    fn the_teardown_waits_longer_for_more_pods() {
        assert_eq!(teardown_timeout(200), Duration::from_secs(300));
        assert_eq!(teardown_timeout(10_000), Duration::from_secs(1000));
    }
}
