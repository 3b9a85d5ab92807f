//! `cargo xtask bench`: failover latency on the real control plane with the process node,
//! the controller-side stage breakdown, scale (1, 100, 1,000 groups) and a 100-group storm.
//!
//! Results (Markdown tables, raw CSVs, a PNG plot, the machine and the commit measured) go to
//! `results/bench/` (full run) or `<target>/bench-quick/` (`--quick`, used by CI so it cannot
//! rot). Nothing is asserted on timings: the benchmark reports, the reader judges.

pub mod failover;
pub mod floor;
pub mod logs;
pub mod plot;
pub mod promhist;
pub mod report;
pub mod scale;
pub mod stats;
pub mod sysinfo;
pub mod writes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use failover::Kind;
use hapod_testkit::testbed::{self, NodeKind, Options, Profile, Testbed};
use report::Results;
use stats::{fmt_ms, summarize};

/// `cargo xtask bench [--quick] [--iterations N] [--kinds k1,k2] [--scale 1,100,1000] ...`
#[derive(clap::Args, Clone, Debug)]
pub struct Cli {
    /// A few failovers of each kind and a small scale point (CI; a couple of minutes).
    #[arg(long)]
    pub quick: bool,
    /// Failovers per kind (default 20; quick 2, and 1 of hang, partition and node-loss, which
    /// wait for a grant to run out).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Failure kinds (comma list): force-delete, graceful-delete, critical-crash, not-ready,
    /// hang, partition, node-loss, controller-killed. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Option<Vec<String>>,
    /// Scale points in groups of 2 pods (comma list; default 1,100,1000; quick 10; 0 = none).
    #[arg(long, value_delimiter = ',')]
    pub scale: Option<Vec<usize>>,
    /// Groups whose actives the storm deletes at once (default 100, quick 10).
    #[arg(long)]
    pub storm: Option<usize>,
    /// Skip the failover scenarios (scale only).
    #[arg(long)]
    pub no_failover: bool,
    /// Output folder (default results/bench; with --quick, bench-quick in cargo's target folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not build the binaries first.
    #[arg(long)]
    pub no_build: bool,
    /// Build profile of the binaries measured (default release; with --quick, debug: the
    /// quick run checks that the benchmark works and reuses the test build).
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Profile the scale controller with `perf` during the storms (default on in a full run
    /// when perf works).
    #[arg(long)]
    pub perf: Option<bool>,
    /// Image of the scale pods (the process node maps its last path segment to a binary).
    #[arg(long, default_value = "ghcr.io/hapod/hapod-agent:0.1.0")]
    pub scale_image: String,
    /// Arguments of the scale pods' container (comma list).
    #[arg(long, value_delimiter = ',', default_value = "--role-file=/tmp/role")]
    pub scale_args: Vec<String>,
    /// Timeout of one failover (seconds).
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// A flag for the controller in place of deploy/'s (repeatable, `--name=value`): set on
    /// its Deployment before anything is measured, and so on the scale controller too. For
    /// example `--controller-arg=--application-lease-ms=300`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    pub controller_args: Vec<String>,
    /// etcd syncs every commit to disk, as in production (`--etcd-fsync=false`: off, as in
    /// the tests).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub etcd_fsync: bool,
    /// Run the failovers with the sample app in the EndpointSlice mode (docs/endpoints.md):
    /// hapod's controller writes the Service's slice, not kube-controller-manager.
    #[arg(long)]
    pub endpoint_slices: bool,
    /// What runs the pods. On the real node the kinds are those the API or the kubelet
    /// reports (force-delete, graceful-delete, critical-crash, not-ready, hang,
    /// controller-killed) and there is no scale point (its thousands of pods fit only the
    /// process node).
    #[arg(long, value_enum, default_value_t)]
    pub node: NodeKind,
    /// The real node's kube-proxy `nftables.minSyncPeriod` in ms (default: kube-proxy's own,
    /// 1 s): how soon after its last sync it applies a changed EndpointSlice.
    #[arg(long)]
    pub kube_proxy_min_sync_ms: Option<u64>,
}

/// Floor samples taken before each failover: enough for a p99 over a full run, a few seconds
/// in a quick one.
const FLOOR_PER_FAILOVER: usize = 3;

impl Cli {
    pub fn run(self) -> Result<()> {
        self.check_node()?;
        hapod_testkit::testbed::enter_private_network(self.profile(), self.node)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(self.run_async())
    }

    /// What the real node cannot run: partitions (policy routing on `lo`, where only the
    /// process node's pods are), a lost node (a second process node), the scale points.
    fn check_node(&self) -> Result<()> {
        if self.node == NodeKind::Real {
            let kinds = self.kinds()?;
            if let Some(kind) = kinds.iter().find(|k| !k.runs_on_real_node()) {
                bail!("--node real: {} runs on the process node only", kind.name());
            }
            if self
                .scale
                .as_ref()
                .is_some_and(|s| s.iter().any(|&n| n > 0))
            {
                bail!("--node real: the scale points run on the process node only (--scale 0)");
            }
        }
        Ok(())
    }

    fn kinds(&self) -> Result<Vec<Kind>> {
        match &self.kinds {
            None if self.node == NodeKind::Real => Ok(Kind::ALL
                .into_iter()
                .filter(|k| k.runs_on_real_node())
                .collect()),
            None => Ok(Kind::ALL.to_vec()),
            Some(list) => {
                let mut v = Vec::new();
                for k in list {
                    match Kind::parse(k) {
                        Some(k) => v.push(k),
                        None => bail!("unknown kind {k}"),
                    }
                }
                v.sort();
                Ok(v)
            }
        }
    }

    /// Failovers of `kind`: a quick run measures one of each kind the API does not see (hang,
    /// partition, node loss), each of which waits for the old active's grant to run out.
    fn iterations_of(&self, kind: Kind) -> usize {
        match self.iterations {
            Some(n) => n,
            None if !self.quick => 20,
            None if kind.api_sees_failure() => 2,
            None => 1,
        }
    }

    fn scale_points(&self) -> Vec<usize> {
        self.scale
            .clone()
            .unwrap_or_else(|| {
                if self.node == NodeKind::Real {
                    vec![]
                } else if self.quick {
                    vec![10]
                } else {
                    vec![1, 100, 1000]
                }
            })
            .into_iter()
            .filter(|n| *n > 0)
            .collect()
    }

    fn profile(&self) -> Profile {
        self.profile.unwrap_or(if self.quick {
            Profile::Debug
        } else {
            Profile::Release
        })
    }

    fn max_groups(&self) -> usize {
        self.scale_points().into_iter().max().unwrap_or(0)
    }

    pub fn out_dir(&self) -> Result<PathBuf> {
        Ok(match &self.out {
            Some(d) => d.clone(),
            None if self.quick => hapod_testkit::target_dir()?.join("bench-quick"),
            None => hapod_testkit::workspace_root().join("results/bench"),
        })
    }

    async fn run_async(self) -> Result<()> {
        let out = self.out_dir()?;
        let tb = Testbed::start(Options {
            profile: self.profile(),
            build: !self.no_build,
            name: if self.quick { "bench-quick" } else { "bench" }.into(),
            // the scale runs bring their own controller and pods
            wait_settled: !self.no_failover,
            // room for the largest scale point (2 pods per group) next to deploy/'s pods
            node_args: vec![format!("--max-pods={}", 2 * self.max_groups() + 200)],
            etcd_fsync: self.etcd_fsync,
            node: self.node,
            kube_proxy_min_sync: self.kube_proxy_min_sync_ms.map(Duration::from_millis),
            ..Options::default()
        })
        .await
        .context("starting the testbed")?;
        let r = self.run_on(&tb).await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}", tb.diagnostics().await);
                return Err(e);
            }
        };
        let m = sysinfo::Machine::detect(&hapod_testkit::workspace_root());
        report::write_all(&out, &m, &r)?;
        print_summary(&r);
        println!("results written to {}", out.display());
        Ok(())
    }

    /// Runs the benchmark on a running testbed (also usable from `cargo xtask test`).
    pub async fn run_on(&self, tb: &Testbed) -> Result<Results> {
        let started = Instant::now();
        let mut r = Results {
            mode: if self.quick { "quick" } else { "full" }.into(),
            profile: self.profile().dir().into(),
            started_utc: utc_now(),
            etcd_fsync: self.etcd_fsync,
            controller_args: self.controller_args.clone(),
            endpoint_slices: self.endpoint_slices,
            real_node: self.node == NodeKind::Real,
            kube_proxy_min_sync_ms: self.kube_proxy_min_sync_ms,
            ..Default::default()
        };
        let timeout = Duration::from_secs(self.timeout_s);
        if !self.controller_args.is_empty() {
            println!("bench: the controller with {:?}", self.controller_args);
            tb.set_controller_args(&self.controller_args, timeout)
                .await
                .context("setting the controller's flags")?;
        }
        if self.endpoint_slices && !self.no_failover {
            println!("bench: the sample app in the EndpointSlice mode");
            tb.use_endpoint_slices(timeout)
                .await
                .context("switching the sample app to the EndpointSlice mode")?;
        }
        if !self.no_failover {
            // controller logs are read after every kind: a killed replica's log goes with its pod
            let mut log_samples: Vec<logs::LogSample> = Vec::new();
            let mut floor = match floor::Floor::start(tb).await {
                Ok(f) => Some(f),
                Err(e) => {
                    println!("  the floor client did not start: {e:#}");
                    r.notes.push(format!("floor not measured: {e:#}"));
                    None
                }
            };
            for kind in self.kinds()? {
                let iterations = self.iterations_of(kind);
                println!("bench: {} × {iterations}", kind.name());
                let before = failover::scrape_controller(tb).await.ok();
                let measured = r.records.len();
                let mut consecutive_failures = 0;
                for i in 0..iterations {
                    if let Some(f) = floor.as_mut()
                        && let Err(e) = sample_floor(f, kind, &mut r).await
                    {
                        println!("  the floor client failed: {e:#}");
                        r.notes.push(format!("floor sampling stopped: {e:#}"));
                        floor = None;
                    }
                    match failover::run_one(tb, kind, i, timeout).await {
                        Ok(rec) => {
                            consecutive_failures = 0;
                            println!(
                                "  #{i} {} → {}: event {} labeled {} applied {} slice {} ms{}{}",
                                rec.old_pod,
                                rec.new_pod,
                                fmt_ms(rec.ms(0)),
                                fmt_ms(rec.ms(2)),
                                fmt_ms(rec.ms(3)),
                                fmt_ms(rec.ms(4)),
                                rec.timeline
                                    .traffic_unix_nanos
                                    .map_or(String::new(), |_| format!(
                                        " (traffic {} ms)",
                                        fmt_ms(rec.ms(5))
                                    )),
                                if rec.note.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", rec.note)
                                }
                            );
                            r.records.push(rec);
                        }
                        Err(e) => {
                            println!("  #{i} failed: {e:#}");
                            r.failures.push(format!("{} #{i}: {e:#}", kind.name()));
                            consecutive_failures += 1;
                            if consecutive_failures >= 3 {
                                println!("  three failures in a row: next kind");
                                break;
                            }
                        }
                    }
                }
                if let Ok(s) = logs::controller_samples(&tb.run_dir) {
                    log_samples.extend(s);
                }
                // the controller that handled this kind (a killed one's counters are gone)
                if kind != Kind::ControllerKill
                    && let Some((before, counted)) = before
                    && let Ok((after, counts)) = failover::scrape_controller(tb).await
                {
                    let d = promhist::diff(&after, &before);
                    let n = r.records.len() - measured;
                    r.writes
                        .extend(writes::Writes::per_failover(kind, n, &d, &counts, &counted));
                    if !d.is_empty() {
                        r.controller.push((kind, d));
                    }
                }
            }
            // The applications' own evidence, once the last fault is over and its old active
            // has rejoined as standby (an app acting late would do it by then).
            if let Err(e) = tb
                .wait_settled(
                    testbed::APP_NAMESPACE,
                    testbed::APP_GROUP,
                    testbed::APP_REPLICAS,
                    timeout,
                )
                .await
            {
                r.notes.push(format!(
                    "the group did not settle after the last failover: {e:#}"
                ));
            }
            match tb.journals() {
                Ok(j) => {
                    let group = format!("{}/{}", testbed::APP_NAMESPACE, testbed::APP_GROUP);
                    let outside = attribute_overlaps(&mut r.records, &j.overlap_spans(), &group);
                    if outside > 0.0 {
                        r.notes.push(format!(
                            "applications acted at once for {} ms before the first failover",
                            fmt_ms(outside)
                        ));
                    }
                }
                Err(e) => r
                    .notes
                    .push(format!("application overlap not measured: {e:#}")),
            }
            log_samples.sort_by(|a, b| (a.t, &a.stage).cmp(&(b.t, &b.stage)));
            log_samples.dedup();
            r.controller_log_stages = attribute(&r.records, &log_samples, timeout);
        }
        let points = self.scale_points();
        let perf = self.perf.unwrap_or(!self.quick) && perf_works();
        let opts = scale::ScaleOpts {
            spec: scale::PodSpec {
                image: self.scale_image.clone(),
                args: self.scale_args.clone(),
            },
            storm: self.storm.unwrap_or(if self.quick { 10 } else { 100 }),
            controller_namespace: testbed::CONTROLLER_NAMESPACE.into(),
            profile: perf,
            profile_dir: self.out_dir()?,
        };
        for n in points {
            println!("bench: scale {n} groups");
            match scale::run(tb, n, &opts).await {
                Ok(s) => {
                    for p in &s.profiles {
                        r.profile_notes.push(profile_note(n, p));
                    }
                    r.scale.push(s)
                }
                Err(e) => {
                    println!("  scale {n} failed: {e:#}");
                    r.notes.push(format!("scale {n} groups failed: {e:#}"));
                }
            }
        }
        r.duration_s = started.elapsed().as_secs_f64();
        Ok(r)
    }
}

/// Takes the floor's samples before a failover of `kind`.
async fn sample_floor(f: &mut floor::Floor, kind: Kind, r: &mut Results) -> Result<()> {
    for _ in 0..FLOOR_PER_FAILOVER {
        let ms = f.sample().await?;
        r.floor.push(floor::Sample { kind, ms });
    }
    Ok(())
}

/// Attributes controller log samples to the failover whose window [trigger, trigger +
/// timeout] holds the line's time stamp (same host clock).
fn attribute(
    records: &[failover::Record],
    samples: &[logs::LogSample],
    timeout: Duration,
) -> Vec<(Kind, String, Vec<f64>)> {
    let mut by: std::collections::BTreeMap<(Kind, String), Vec<f64>> = Default::default();
    let mut triggers: Vec<(u64, Kind)> = records
        .iter()
        .map(|r| (r.timeline.trigger_unix_nanos, r.kind))
        .collect();
    triggers.sort();
    for s in samples {
        let i = triggers.partition_point(|(t, _)| *t <= s.t);
        if i == 0 {
            continue;
        }
        let (t, kind) = triggers[i - 1];
        if s.t - t <= timeout.as_nanos() as u64 {
            by.entry((kind, s.stage.clone())).or_default().push(s.ms);
        }
    }
    by.into_iter().map(|((k, s), v)| (k, s, v)).collect()
}

/// Sets every record's application overlap: each of the group's merged overlap `spans`
/// (host CLOCK_MONOTONIC) goes to the last record triggered before it began (0 ms for a
/// record without one). Returns the overlap that began before the first trigger (ms).
fn attribute_overlaps(
    records: &mut [failover::Record],
    spans: &[(String, i128, i128)],
    group: &str,
) -> f64 {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| records[i].trigger_monotonic_nanos);
    let mut outside = 0.0;
    for &i in &order {
        records[i].overlap_ms = Some(0.0);
    }
    for (_, start, end) in spans.iter().filter(|(g, _, _)| g == group) {
        let ms = (end - start) as f64 / 1e6;
        let at = order.partition_point(|&i| records[i].trigger_monotonic_nanos <= *start);
        match at.checked_sub(1) {
            Some(k) => *records[order[k]].overlap_ms.get_or_insert(0.0) += ms,
            None => outside += ms,
        }
    }
    outside
}

/// A short note on one perf report: the file and its top symbols.
fn profile_note(groups: usize, path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let clean = |l: &str| {
        let words: Vec<&str> = l.split_whitespace().filter(|w| *w != "-").collect();
        let line = words.join(" ");
        format!("    {}", line.chars().take(150).collect::<String>())
    };
    let (symbols, dsos) = text.split_once("# by shared object").unwrap_or((&text, ""));
    let pick = |t: &str, n: usize| -> Vec<String> {
        t.lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains('%'))
            .take(n)
            .map(clean)
            .collect()
    };
    let mut top = pick(symbols, 12);
    let by_dso = pick(dsos, 5);
    if !by_dso.is_empty() {
        top.push("    -- by shared object --".into());
        top.extend(by_dso);
    }
    format!(
        "`perf record -F 1999` of the scale controller ({groups} groups), `{file}`; top symbols:\n\n{}",
        top.join("\n")
    )
}

fn perf_works() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-e", "task-clock", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn print_summary(r: &Results) {
    println!("\nkind / stage: count p50 p90 p99 max (ms since trigger)");
    for kind in r.kinds() {
        for (i, s) in failover::STAGES.iter().enumerate() {
            if let Some(x) = summarize(&r.samples(kind, i)) {
                println!(
                    "{:>18} {:>8}: {:>3} {:>8} {:>8} {:>8} {:>8}",
                    kind.name(),
                    s,
                    x.count,
                    fmt_ms(x.p50),
                    fmt_ms(x.p90),
                    fmt_ms(x.p99),
                    fmt_ms(x.max)
                );
            }
        }
    }
    for kind in r.kinds() {
        if let Some(line) = r.overlap_line(kind) {
            println!("{:>18} {line}", kind.name());
        }
    }
    for t in report::targets(r) {
        println!("target: {t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapod_testkit::testbed::Timeline;

    fn record(kind: Kind, trigger_monotonic_nanos: i128) -> failover::Record {
        failover::Record {
            trigger_monotonic_nanos,
            overlap_ms: None,
            ..failover::Record::synthetic(kind, 0, Timeline::default())
        }
    }

    #[test]
    fn overlaps_go_to_the_failover_before_them() {
        let mut records = vec![
            record(Kind::Partition, 3_000_000),
            record(Kind::Hang, 1_000_000),
        ];
        let spans = vec![
            ("ns/demo".to_owned(), 500_000, 1_500_000),
            ("ns/demo".to_owned(), 2_000_000, 2_250_000),
            ("ns/other".to_owned(), 2_000_000, 9_000_000),
        ];
        let outside = attribute_overlaps(&mut records, &spans, "ns/demo");
        assert_eq!(outside, 1.0);
        assert_eq!(records[1].overlap_ms, Some(0.25));
        assert_eq!(records[0].overlap_ms, Some(0.0));
    }
}
