//! The API's own floor, measured in every run next to hapod's figures: what a minimal client
//! needs for the writes a failover cannot do without, on the same kube-apiserver, over the
//! same TLS, at the same moment (samples are taken between the failovers).
//!
//! The client is the kit's kube client (the controller's own library) with the controller's
//! ServiceAccount token, on kept-alive connections: one for the writes, one for a watch. It
//! relabels two scratch pods in a namespace of their own (held unscheduled by a scheduling
//! gate, so nothing runs them and no group sees them) with the controller's kind of write: a
//! merge patch of a label with `metadata.resourceVersion` as precondition.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use hapod_testkit::poll::{Check, await_condition};
use hapod_testkit::testbed::{CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT, Testbed};

use super::failover::Kind;
use super::report::{Results, find_series};
use super::stats::{fmt_ms, summarize};

pub const NAMESPACE: &str = "hapod-bench-floor";
const PODS: [&str; 2] = ["floor-a", "floor-b"];
const LABEL: &str = "hapod.io/floor";
/// Bound of one write and of one wait for its watch event.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A watch ends when the API server says so; it is resumed at most this often per run.
const MAX_WATCHES: usize = 100;

/// What each sample measures (milliseconds).
pub const STAGES: [(&str, &str); 5] = [
    (
        "write",
        "one conditional merge patch of a pod label, sent → acknowledged",
    ),
    (
        "delivery",
        "that change's watch event on the second connection, after the acknowledgement \
         (negative: the event came first)",
    ),
    (
        "write + delivery",
        "the write sent → its watch event received",
    ),
    (
        "two writes",
        "two conditional patches in sequence (two pods, like a demote then a promote), first \
         sent → second acknowledged",
    ),
    (
        "two writes + delivery",
        "the first sent → the second's watch event received",
    ),
];
pub const WRITE: usize = 0;
pub const WRITE_DELIVERED: usize = 2;
pub const TWO_WRITES: usize = 3;
pub const TWO_WRITES_DELIVERED: usize = 4;

/// One floor sample, taken in the run of `kind`.
#[derive(Clone, Debug)]
pub struct Sample {
    pub kind: Kind,
    pub ms: [f64; 5],
}

/// The floor client: its write connection, the watch task and the pods' versions.
pub struct Floor {
    pods: Api<Pod>,
    events: mpsc::UnboundedReceiver<(String, String, Instant)>,
    versions: [String; 2],
    seq: u64,
    watcher: JoinHandle<()>,
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Floor {
    /// Creates the scratch namespace and pods (as admin), then opens the two connections as
    /// the controller's ServiceAccount and warms them up.
    pub async fn start(tb: &Testbed) -> Result<Floor> {
        let namespaces: Api<Namespace> = Api::all(tb.client.clone());
        if namespaces.get_opt(NAMESPACE).await?.is_none() {
            let ns: Namespace =
                serde_json::from_value(json!({ "metadata": { "name": NAMESPACE } }))?;
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        let admin: Api<Pod> = Api::namespaced(tb.client.clone(), NAMESPACE);
        for name in PODS {
            create_pod(&admin, name).await?;
        }
        let account =
            || tb.service_account_client(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT);
        // Two clients, so the watch never shares a connection with the writes.
        let pods: Api<Pod> = Api::namespaced(account().await?, NAMESPACE);
        let list = pods.list(&ListParams::default()).await?;
        let version_of = |name: &str| {
            list.items
                .iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.metadata.resource_version.clone())
                .ok_or_else(|| anyhow!("scratch pod {name} not listed"))
        };
        let versions = [version_of(PODS[0])?, version_of(PODS[1])?];
        let from = list.metadata.resource_version.unwrap_or_default();
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch(account().await?, from, tx));
        let mut floor = Floor {
            pods,
            events,
            versions,
            seq: 0,
            watcher,
        };
        // The first exchange pays for the connections (TLS handshakes, the watch's start).
        floor.sample().await.context("warming up")?;
        Ok(floor)
    }

    /// One sample: a write and its delivery, then two writes in sequence and the delivery of
    /// the second.
    pub async fn sample(&mut self) -> Result<[f64; 5]> {
        let sent = Instant::now();
        let version = self.write(0).await?;
        let acked = Instant::now();
        let seen = self.delivered(0, &version).await?;
        let pair_sent = Instant::now();
        self.write(0).await?;
        let version = self.write(1).await?;
        let pair_acked = Instant::now();
        let pair_seen = self.delivered(1, &version).await?;
        Ok([
            ms(sent, acked),
            ms(acked, seen),
            ms(sent, seen),
            ms(pair_sent, pair_acked),
            ms(pair_sent, pair_seen),
        ])
    }

    /// Relabels pod `i` on its last known version; returns the new one.
    async fn write(&mut self, i: usize) -> Result<String> {
        self.seq += 1;
        let body = json!({ "metadata": {
            "resourceVersion": self.versions[i],
            "labels": { LABEL: self.seq.to_string() },
        }});
        let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
        let call = self.pods.patch(PODS[i], &params, &patch);
        let pod = tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("patching {}", PODS[i]))?;
        let version = pod
            .metadata
            .resource_version
            .ok_or_else(|| anyhow!("patched pod without resourceVersion"))?;
        self.versions[i].clone_from(&version);
        Ok(version)
    }

    /// When the watch received pod `i` at `version` (earlier events are passed over).
    async fn delivered(&mut self, i: usize, version: &str) -> Result<Instant> {
        let wait = async {
            while let Some((name, v, at)) = self.events.recv().await {
                if name == PODS[i] && v == version {
                    return Ok(at);
                }
            }
            Err(anyhow!("the floor's watch ended"))
        };
        tokio::time::timeout(TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("no watch event of {} {version} within {TIMEOUT:?}", PODS[i]))?
    }
}

/// Milliseconds from `a` to `b`, negative when `b` came first.
fn ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a - b).as_secs_f64() * 1e3,
    }
}

/// A pod that no scheduler binds and no node runs.
async fn create_pod(api: &Api<Pod>, name: &str) -> Result<()> {
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { LABEL: "0" } },
        "spec": {
            "schedulingGates": [{ "name": LABEL }],
            "automountServiceAccountToken": false,
            "containers": [{ "name": "none", "image": "hapod.io/floor:none" }],
        },
    }))?;
    // A fresh namespace's default ServiceAccount appears a moment after the namespace, and
    // the admission of a pod needs it.
    await_condition(
        format!("scratch pod {name} created"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            Ok(match api.create(&PostParams::default(), &pod).await {
                Ok(_) => Check::Done(()),
                Err(e) => Check::NotYet(e.to_string()),
            })
        },
    )
    .await
}

/// Sends (pod, resourceVersion, time received) of every pod event in the scratch namespace.
async fn watch(
    client: Client,
    mut from: String,
    tx: mpsc::UnboundedSender<(String, String, Instant)>,
) {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    for _ in 0..MAX_WATCHES {
        let Ok(stream) = api.watch(&WatchParams::default(), &from).await else {
            return;
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            let pod = match event {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p)) => p,
                Ok(WatchEvent::Bookmark(_)) => continue,
                // An expired version: the samples waiting time out and say so.
                Ok(WatchEvent::Error(_)) | Err(_) => return,
            };
            let version = pod.metadata.resource_version.clone().unwrap_or_default();
            if tx.send((pod.name_any(), version.clone(), at)).is_err() {
                return;
            }
            from = version;
        }
    }
}

// --- report -----------------------------------------------------------------------------------

/// Writes a failover of `kind` needs at least: a force-deleted active is gone, so only the
/// promotion; any other active is demoted first.
pub fn writes_needed(kind: Kind) -> usize {
    match kind {
        Kind::ForceDelete | Kind::ControllerKill => 1,
        Kind::GracefulDelete
        | Kind::Crash
        | Kind::NotReady
        | Kind::Hang
        | Kind::Partition
        | Kind::NodeLoss => 2,
    }
}

/// The floor's samples of one stage, all kinds (the reference of every ratio).
pub fn stage(samples: &[Sample], i: usize) -> Vec<f64> {
    samples.iter().map(|s| s.ms[i]).collect()
}

/// p50, p99, max of one side of a comparison (max NaN when only bounded, as for histograms).
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Figures {
    pub fn of(samples: &[f64]) -> Option<Figures> {
        summarize(samples).map(|s| Figures {
            p50: s.p50,
            p99: s.p99,
            max: s.max,
            count: s.count,
        })
    }
}

/// One hapod figure over the floor figure it is held against.
pub struct Ratio {
    pub kind: Kind,
    pub hapod: &'static str,
    pub floor: usize,
    pub h: Figures,
    pub f: Figures,
}

impl Ratio {
    pub fn p50(&self) -> f64 {
        self.h.p50 / self.f.p50
    }
    pub fn p99(&self) -> f64 {
        self.h.p99 / self.f.p99
    }
    fn max(&self) -> f64 {
        self.h.max / self.f.max
    }

    /// The row: kind, hapod's stage, n and its p50/p99/max, the floor's stage and its
    /// p50/p99/max, the three ratios (with `decimals`). `grouped` (a table): each p50/p99/max
    /// in one cell.
    fn cells(&self, ms: impl Fn(f64) -> String, decimals: usize, grouped: bool) -> Vec<String> {
        let number = |x: f64, f: &dyn Fn(f64) -> String| match (x.is_finite(), grouped) {
            (true, _) => f(x),
            (false, true) => "–".to_string(),
            (false, false) => String::new(),
        };
        let triple = |v: [f64; 3], f: &dyn Fn(f64) -> String| -> Vec<String> {
            let cells: Vec<String> = v.iter().map(|x| number(*x, f)).collect();
            if grouped {
                vec![cells.join(" / ")]
            } else {
                cells
            }
        };
        let ratio = |x: f64| format!("{x:.decimals$}");
        let (floor, n) = (STAGES[self.floor].0.to_string(), self.h.count.to_string());
        let hapod = triple([self.h.p50, self.h.p99, self.h.max], &ms);
        let floor_ms = triple([self.f.p50, self.f.p99, self.f.max], &ms);
        let ratios = [self.p50(), self.p99(), self.max()].map(|x| number(x, &ratio));
        // A table reads hapod's side, then the floor's; the CSV names both stages first.
        let middle = if grouped {
            [vec![n], hapod, vec![floor], floor_ms].concat()
        } else {
            [vec![floor, n], hapod, floor_ms].concat()
        };
        [
            vec![self.kind.name().to_string(), self.hapod.to_string()],
            middle,
            ratios.to_vec(),
        ]
        .concat()
    }
}

pub const CONTROLLER_STAGE: &str = "controller: event → promotion acked";
const ACK_STAGE: &str = "controller: each write sent → acked";
const OUTSIDE_STAGE: &str = "watch: event → new active labeled";

/// hapod/floor ratios of one run, per kind and stage: the controller's own event → promotion
/// acked (its JSON logs) over the writes the kind needs; each controller write (its `ack`
/// histogram) over one write; the bench's watch view (failure seen → new label seen) over the
/// writes the kind needs plus one delivery.
pub fn ratios(r: &Results) -> Vec<Ratio> {
    let mut out = Vec::new();
    let floor = |i: usize| Figures::of(&stage(&r.floor, i));
    for kind in r.kinds() {
        let (writes, delivered) = if writes_needed(kind) == 1 {
            (WRITE, WRITE_DELIVERED)
        } else {
            (TWO_WRITES, TWO_WRITES_DELIVERED)
        };
        let logged = r
            .controller_log_stages
            .iter()
            .find(|(k, s, _)| *k == kind && s == "promoted.latency")
            .and_then(|(_, _, v)| Figures::of(v));
        let acks = r
            .controller
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, s)| find_series(s, &["stage_seconds", "\"ack\""]))
            .map(|(_, h)| Figures {
                p50: h.quantile(0.5) * 1e3,
                p99: h.quantile(0.99) * 1e3,
                max: f64::NAN,
                count: h.count as usize,
            });
        let outside = Figures::of(&r.between(kind, 0, 2));
        for (hapod, h, f) in [
            (CONTROLLER_STAGE, logged, writes),
            (ACK_STAGE, acks, WRITE),
            (OUTSIDE_STAGE, outside, delivered),
        ] {
            if let (Some(h), Some(fl)) = (h, floor(f)) {
                out.push(Ratio {
                    kind,
                    hapod,
                    floor: f,
                    h,
                    f: fl,
                });
            }
        }
    }
    out
}

/// The floor's section of the results' README.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    if r.floor.is_empty() {
        return md;
    }
    let _ = writeln!(md, "## The API's floor, and hapod over it\n");
    let _ = writeln!(
        md,
        "Measured between the failovers of this run ({} samples) by a minimal client: the \
         kit's kube client (kube-rs, the controller's library) with the controller's \
         ServiceAccount token, on kept-alive connections to the same kube-apiserver (one for \
         the writes, one for a watch), relabeling scratch pods in a namespace of their own \
         with the controller's kind of write (a merge patch of a label with \
         `metadata.resourceVersion` as precondition). Raw samples in `floor.csv`, ratios in \
         `floor-ratios.csv`.\n",
        r.floor.len()
    );
    let _ = writeln!(md, "| floor stage | what | count | p50 | p99 | max |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for (i, (name, what)) in STAGES.iter().enumerate() {
        if let Some(f) = Figures::of(&stage(&r.floor, i)) {
            let _ = writeln!(
                md,
                "| {name} | {what} | {} | {} | {} | {} |",
                f.count,
                fmt_ms(f.p50),
                fmt_ms(f.p99),
                fmt_ms(f.max)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nhapod over the floor (p50 / p99 / max in ms; a ratio of 1 is the API's own \
         speed). A force delete needs one write (the promotion), the other kinds two (demote, \
         then promote); the controller's writes are histogram estimates (no max).\n"
    );
    let _ = writeln!(
        md,
        "| kind | hapod | n | hapod ms | floor | floor ms | ratio p50 | ratio p99 | ratio max |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|---:|---:|---:|---:|");
    for x in ratios(r) {
        let _ = writeln!(md, "| {} |", x.cells(fmt_ms, 2, true).join(" | "));
    }
    let _ = writeln!(md);
    md
}

/// `floor.csv` (raw samples) and `floor-ratios.csv`.
pub fn write_csv(dir: &Path, r: &Results) -> Result<()> {
    if r.floor.is_empty() {
        return Ok(());
    }
    let mut csv = String::from(
        "kind,write_ms,delivery_ms,write_delivered_ms,two_writes_ms,two_writes_delivered_ms\n",
    );
    for s in &r.floor {
        let v: Vec<String> = s.ms.iter().map(|x| format!("{x:.3}")).collect();
        let _ = writeln!(csv, "{},{}", s.kind.name(), v.join(","));
    }
    std::fs::write(dir.join("floor.csv"), csv)?;
    let mut csv = String::from(
        "kind,hapod,floor,hapod_n,hapod_p50_ms,hapod_p99_ms,hapod_max_ms,floor_p50_ms,floor_p99_ms,floor_max_ms,ratio_p50,ratio_p99,ratio_max\n",
    );
    let num = |x: f64| format!("{x:.3}");
    for x in ratios(r) {
        let _ = writeln!(csv, "{}", x.cells(num, 3, false).join(","));
    }
    std::fs::write(dir.join("floor-ratios.csv"), csv)?;
    Ok(())
}

/// The targets against the floor, with the figures measured.
pub fn targets(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    for x in ratios(r) {
        // A failure the API does not show is acted on when the agent's silence is judged and
        // its grant is over: the lease, not the writes, sets that time (docs/fencing.md).
        if x.hapod != CONTROLLER_STAGE || !x.kind.api_sees_failure() {
            continue;
        }
        let (bound_p50, bound_p99) = if writes_needed(x.kind) == 1 {
            (1.3, Some(1.5))
        } else {
            (1.3, None)
        };
        let met = x.p50() <= bound_p50 && bound_p99.is_none_or(|b| x.p99() <= b);
        let bound = match bound_p99 {
            Some(b) => format!("≤ {bound_p50}× at p50 and ≤ {b}× at p99"),
            None => format!("≤ {bound_p50}× at p50"),
        };
        out.push(format!(
            "{}: controller-side event → promotion acked {bound} the floor's {}: {} \
             (p50 {} ms = {:.2}×, p99 {} ms = {:.2}×, n={})",
            x.kind.name(),
            STAGES[x.floor].0,
            super::report::verdict(met),
            fmt_ms(x.h.p50),
            x.p50(),
            fmt_ms(x.h.p99),
            x.p99(),
            x.h.count
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose floor write takes 10 ms (two: 20 ms) and whose controller promotes in
    /// 12 ms after a force delete, 30 ms after a graceful one and 600 ms after a hang (the
    /// agent's silence judged, its grant waited out).
    fn run() -> Results {
        let mut r = Results::default();
        for i in 0..100 {
            let jitter = f64::from(i) / 100.0;
            r.floor.push(Sample {
                kind: Kind::ForceDelete,
                ms: [10.0 + jitter, 1.0, 11.0, 20.0 + jitter, 21.0],
            });
        }
        for (kind, ms) in [
            (Kind::ForceDelete, 12.0),
            (Kind::GracefulDelete, 30.0),
            (Kind::Hang, 600.0),
        ] {
            r.records.push(crate::bench::failover::Record::synthetic(
                kind,
                0,
                Default::default(),
            ));
            r.controller_log_stages
                .push((kind, "promoted.latency".into(), vec![ms]));
        }
        r
    }

    #[test]
    fn holds_each_kind_against_the_writes_it_needs() {
        let r = run();
        let ratios = ratios(&r);
        let controller: Vec<(Kind, usize, f64)> = ratios
            .iter()
            .filter(|x| x.hapod == CONTROLLER_STAGE)
            .map(|x| (x.kind, x.floor, (x.p50() * 100.0).round() / 100.0))
            .collect();
        assert_eq!(
            controller,
            [
                // over the floor's nearest-rank p50: 10.49 and 20.49 ms
                (Kind::ForceDelete, WRITE, 1.14),
                (Kind::GracefulDelete, TWO_WRITES, 1.46),
                (Kind::Hang, TWO_WRITES, 29.28)
            ]
        );
        // The hang's time is the lease's, not the writes': no target against the floor.
        let t = targets(&r);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(
            t[0].starts_with("force-delete") && t[0].contains("**met**"),
            "{}",
            t[0]
        );
        assert!(t[1].contains("**missed**"), "{}", t[1]);
    }

    #[test]
    fn reports_tables_and_csvs() {
        let r = run();
        let md = markdown(&r);
        assert!(md.contains("| write | "), "{md}");
        assert!(
            md.contains("| force-delete | controller: event → promotion acked | 1 |"),
            "{md}"
        );
        let dir = tempfile::tempdir().unwrap();
        write_csv(dir.path(), &r).unwrap();
        let raw = std::fs::read_to_string(dir.path().join("floor.csv")).unwrap();
        assert_eq!(raw.lines().count(), 101);
        let ratios = std::fs::read_to_string(dir.path().join("floor-ratios.csv")).unwrap();
        assert!(
            ratios.contains("force-delete,controller: event → promotion acked,write,1,12.000,")
        );
        assert!(markdown(&Results::default()).is_empty());
    }

    #[test]
    fn signed_milliseconds() {
        let a = Instant::now();
        let b = a + Duration::from_millis(3);
        assert_eq!(ms(a, b), 3.0);
        assert_eq!(ms(b, a), -3.0);
    }
}
