//! The results of a chaos run: `README.md` (what ran, counts, recovery times, violations, the
//! machine) and `faults.csv` (every fault injected) in the output folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::check::Violation;
use super::faults::{FaultRecord, RECOVERY_BOUND};
use super::schedule::{CONTROLLER_PREFIX, PLANE_PREFIX};
use crate::bench::stats::{fmt_ms, summarize};
use crate::bench::sysinfo::Machine;

/// Everything a run found.
pub struct Outcome {
    /// The machine and the commit under test, as at the start.
    pub machine: Machine,
    pub seed: u64,
    /// The command that replays the schedule.
    pub replay: String,
    pub groups: usize,
    /// Build profile of the binaries under test.
    pub profile: &'static str,
    pub failovers: usize,
    /// Per change of the acting application in a group (acting journals): the time from the
    /// last step of one to the first of the next.
    pub handover_gaps_ms: Vec<f64>,
    pub faults: Vec<FaultRecord>,
    pub violations: Vec<Violation>,
    pub fault_phase: Duration,
    /// Seconds after the faults until each group had one eligible active again.
    pub recovered: Vec<f64>,
    pub watch_restarts: Vec<String>,
}

impl Outcome {
    /// Faults by kind, with the recovery times of those that moved the role.
    fn by_kind(&self) -> BTreeMap<&str, (usize, Vec<f64>)> {
        let mut m: BTreeMap<&str, (usize, Vec<f64>)> = BTreeMap::new();
        for f in &self.faults {
            let e = m.entry(f.kind.as_str()).or_default();
            e.0 += 1;
            e.1.extend(f.recovery_ms);
        }
        m
    }

    /// The faults of the controller replicas and of the control plane (the rest hit groups).
    fn shared_faults(&self) -> (usize, usize) {
        let count = |prefix: &str| {
            self.faults
                .iter()
                .filter(|f| f.group.is_none() && f.kind.starts_with(prefix))
                .count()
        };
        (count(CONTROLLER_PREFIX), count(PLANE_PREFIX))
    }

    /// One paragraph for the terminal.
    pub fn summary(&self) -> String {
        let all: Vec<f64> = self.faults.iter().filter_map(|f| f.recovery_ms).collect();
        let rec = summarize(&all).map_or("none".into(), |s| {
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                fmt_ms(s.p50),
                fmt_ms(s.p99),
                fmt_ms(s.max)
            )
        });
        let (controller, plane) = self.shared_faults();
        format!(
            "chaos: seed {}, {} groups, {} faults ({controller} controller, {plane} control \
             plane), {} failovers ({} application handovers) in {:.0} s; recovery {rec}; {} \
             violations; {} watch restarts",
            self.seed,
            self.groups,
            self.faults.len(),
            self.failovers,
            self.handover_gaps_ms.len(),
            self.fault_phase.as_secs_f64(),
            self.violations.len(),
            self.watch_restarts.len()
        )
    }

    fn markdown(&self) -> String {
        let mut md = String::from("# Chaos run\n\n");
        let (controller, plane) = self.shared_faults();
        let _ = writeln!(
            md,
            "`{}`: {} failovers from {} faults ({controller} of the controller replicas, \
             {plane} of the control plane) over {} groups in {:.1} min of faults; \
             **{} violations**.\n",
            self.replay,
            self.failovers,
            self.faults.len(),
            self.groups,
            self.fault_phase.as_secs_f64() / 60.0,
            self.violations.len()
        );
        let _ = writeln!(
            md,
            "Machine: {}; {} build of the binaries under test.\n",
            self.machine.describe(),
            self.profile
        );
        md.push_str(
            "Recovery: from the fault's trigger to another eligible pod being the only one \
             labeled active (watch), for every fault after which another pod took the role.\n\n\
             | fault | count | recoveries | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n",
        );
        let mut all = Vec::new();
        for (kind, (count, rec)) in self.by_kind() {
            all.extend(&rec);
            let _ = writeln!(md, "{}", row(kind, count, &rec));
        }
        let _ = writeln!(md, "{}", row("**all**", self.faults.len(), &all));
        let mut plane: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for f in &self.faults {
            if let Some(ms) = f.plane_ms {
                plane.entry(f.kind.as_str()).or_default().push(ms);
            }
        }
        for (kind, times) in plane {
            if let Some(s) = summarize(&times) {
                let _ = writeln!(
                    md,
                    "\n{kind}: from the trigger to the control plane serving again (`/readyz`) \
                     p50 {} ms, max {} ms.",
                    fmt_ms(s.p50),
                    fmt_ms(s.max)
                );
            }
        }
        let worst = self.recovered.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "\nAfter the faults stopped, every group had one eligible active pod within {worst:.1} s \
             (bound {} s), then its steady state with the apps acting on it.\n",
            RECOVERY_BOUND.as_secs()
        );
        let _ = writeln!(
            md,
            "Applications (their acting journals): {} handovers, no two acting at once unless \
             listed below; time without an acting application per handover: {}.\n",
            self.handover_gaps_ms.len(),
            summarize(&self.handover_gaps_ms).map_or("–".into(), |s| format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                fmt_ms(s.p50),
                fmt_ms(s.p99),
                fmt_ms(s.max)
            ))
        );
        if !self.watch_restarts.is_empty() {
            let _ = writeln!(
                md,
                "Watch restarts (changes in a gap may be missed): {:?}\n",
                self.watch_restarts
            );
        }
        for v in &self.violations {
            let _ = writeln!(
                md,
                "- violation `{}` in {}/{} at rv {:?}: {}",
                v.check, v.namespace, v.group, v.rv, v.detail
            );
        }
        md
    }

    fn csv(&self) -> String {
        let mut csv = String::from("group,fault,pod,trigger_unix_ns,recovery_ms,plane_ms\n");
        for f in &self.faults {
            let ms = |v: Option<f64>| v.map_or(String::new(), |ms| format!("{ms:.3}"));
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{}",
                f.group.map_or(String::new(), |g| g.to_string()),
                f.kind,
                f.pod,
                f.trigger_unix_nanos,
                ms(f.recovery_ms),
                ms(f.plane_ms)
            );
        }
        csv
    }
}

fn row(kind: &str, count: usize, recoveries: &[f64]) -> String {
    let (p50, p99, max) = summarize(recoveries)
        .map_or(("–".into(), "–".into(), "–".into()), |s| {
            (fmt_ms(s.p50), fmt_ms(s.p99), fmt_ms(s.max))
        });
    format!(
        "| {kind} | {count} | {} | {p50} | {p99} | {max} |",
        recoveries.len()
    )
}

/// Writes `README.md` and `faults.csv` into `out`.
pub fn write(out: &Path, outcome: &Outcome) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("README.md"), outcome.markdown())?;
    std::fs::write(out.join("faults.csv"), outcome.csv())?;
    Ok(())
}
