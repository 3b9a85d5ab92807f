//! `cargo xtask chaos`: randomized failovers on the real control plane with the process node,
//! checked over the whole label history.
//!
//! It starts the testbed (`deploy/base`: the controller as 2 replicas), deploys `--groups`
//! copies of the sample app (one namespace each), then injects a seeded schedule of faults
//! (`schedule`) into every group at once: pod deletions, crashes, readiness loss, hung
//! pods, killed application containers; meanwhile, SIGKILL, SIGTERM or SIGSTOP of either
//! controller replica; and, every `--plane-gap-ms` or more, a control plane fault: a restart of
//! kube-apiserver (SIGKILL, started again as before; every watch cut) or of etcd, or a SIGSTOP
//! of either for 0.2 to 4 s. Faults stop after `--failovers` failovers or `--minutes`. The
//! checkers
//! (`check`) run every 2 s over the history so far and once more at the end, the check of
//! the applications' acting journals every 30 s and at the end; after the
//! faults, every group must have exactly one eligible active pod again within
//! `faults::RECOVERY_BOUND`. A violation prints the seed and the group's records around it,
//! and the command fails.

mod check;
mod faults;
mod groups;
mod report;
mod schedule;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::future::join_all;

use crate::bench::sysinfo::Machine;
use faults::{RECOVERY_BOUND, Run, SETTLE_BOUND, chaos_records};
use hapod_testkit::testbed::{
    ACTIVE, APP_GROUP, APP_REPLICAS, NodeKind, Options, Profile, STANDBY, Testbed,
};
use kube::ResourceExt;

/// `cargo xtask chaos [--seed S] [--failovers N] [--groups G] [--minutes M]`
#[derive(clap::Args, Clone, Debug)]
pub struct Cli {
    /// Seed of the fault schedule (default: taken from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop the faults after this many failovers (default 10000; with --quick 300).
    #[arg(long)]
    pub failovers: Option<usize>,
    /// Copies of the sample app, faulted concurrently.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// Stop the faults after this many minutes at the latest (default 600; with --quick 5).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Least gap between two controller faults, after the replicas settled (ms).
    #[arg(long, default_value_t = 4000)]
    pub controller_gap_ms: u64,
    /// Least gap between two control plane faults (restart or SIGSTOP of kube-apiserver or
    /// etcd), after the previous one recovered and the controller replicas settled (ms); 0: no
    /// control plane faults.
    #[arg(long, default_value_t = 15000)]
    pub plane_gap_ms: u64,
    /// The short run of `cargo xtask test` (300 failovers, results in cargo's target folder).
    #[arg(long)]
    pub quick: bool,
    /// Output folder (default results/chaos; with --quick, chaos-quick in cargo's target
    /// folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Build profile of the binaries under test.
    #[arg(long, value_enum, default_value = "debug")]
    pub profile: Profile,
    /// Do not build the binaries first.
    #[arg(long)]
    pub no_build: bool,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        hapod_testkit::testbed::enter_private_network(self.profile, NodeKind::Process)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(self.run_async())
    }

    fn failovers(&self) -> usize {
        self.failovers
            .unwrap_or(if self.quick { 300 } else { 10_000 })
    }

    fn deadline(&self) -> Duration {
        let minutes = self.minutes.unwrap_or(if self.quick { 5.0 } else { 600.0 });
        Duration::from_secs_f64(minutes * 60.0)
    }

    fn out_dir(&self) -> Result<PathBuf> {
        Ok(match &self.out {
            Some(d) => d.clone(),
            None if self.quick => hapod_testkit::target_dir()?.join("chaos-quick"),
            None => hapod_testkit::workspace_root().join("results/chaos"),
        })
    }

    async fn run_async(self) -> Result<()> {
        let seed = self
            .seed
            .unwrap_or_else(|| hapod_testkit::testbed::now_unix_nanos() % 1_000_000_000);
        let replay = format!(
            "cargo xtask chaos --seed {seed} --groups {} --failovers {} --controller-gap-ms {} \
             --plane-gap-ms {}",
            self.groups,
            self.failovers(),
            self.controller_gap_ms,
            self.plane_gap_ms
        );
        println!("chaos: seed {seed} (replay the schedule: {replay})");
        let machine = Machine::detect(&hapod_testkit::workspace_root());
        let tb = Testbed::start(Options {
            profile: self.profile,
            build: !self.no_build,
            name: "chaos".into(),
            // Room for every group's pods and their replacements on the one node.
            node_args: vec![
                "--cpu=64".into(),
                "--memory=64Gi".into(),
                format!("--max-pods={}", 4 * self.groups + 50),
            ],
            ..Options::default()
        })
        .await?;
        let started = Instant::now();
        groups::create(&tb.client, self.groups).await?;
        let run = Run::new(&tb, seed, self.controller_gap_ms, self.plane_gap_ms);
        for g in 0..self.groups {
            let bound = SETTLE_BOUND + Duration::from_secs(self.groups as u64);
            run.wait_group(
                &groups::namespace(g),
                "the first steady state",
                bound,
                |now| check::settled(now, APP_REPLICAS).map(drop),
            )
            .await?;
        }
        println!(
            "chaos: {} groups settled in {:.1} s; faults until {} failovers or {:.1} min",
            self.groups,
            started.elapsed().as_secs_f64(),
            self.failovers(),
            self.deadline().as_secs_f64() / 60.0
        );
        let faults_started = Instant::now();
        let (workers, controller, plane, monitor) = tokio::join!(
            join_all((0..self.groups).map(|g| run.group_worker(g))),
            run.controller_worker(),
            run.plane_worker(),
            self.monitor(&run, faults_started),
        );
        let fault_phase = faults_started.elapsed();
        // The faults are over: stopped processes were continued, the control plane serves;
        // now every group must recover.
        run.refresh_after_plane_faults().await?;
        let recovered = self.recover(&run).await;
        tokio::time::sleep(faults::AUDIT_LAG).await;
        let failovers = run.check_now()?;
        let handovers = run.check_apps()?;
        let outcome = report::Outcome {
            machine,
            seed,
            replay,
            groups: self.groups,
            profile: self.profile.dir(),
            failovers,
            handover_gaps_ms: handovers.iter().map(|h| h.gap_ms()).collect(),
            faults: run.faults(),
            violations: run.violations(),
            fault_phase,
            recovered,
            watch_restarts: tb.history.watch_restarts(),
        };
        let out = self.out_dir()?;
        report::write(&out, &outcome)?;
        println!("{}", outcome.summary());
        println!("results: {}", out.display());
        if !outcome.violations.is_empty() {
            let records = chaos_records(&tb);
            for v in &outcome.violations {
                println!(
                    "\nVIOLATION {} in {}/{}: {}\n{}",
                    v.check,
                    v.namespace,
                    v.group,
                    v.detail,
                    check::excerpt(&records, v)
                );
            }
            bail!(
                "chaos: {} violations (seed {seed}; {})",
                outcome.violations.len(),
                outcome.replay
            );
        }
        for r in workers.into_iter().chain([controller, plane, monitor]) {
            r.map_err(|e| anyhow::anyhow!("chaos (seed {seed}): {e:#}"))?;
        }
        Ok(())
    }

    /// Every 2 s: the safety checks over the history so far; stops the faults at a
    /// violation, after enough failovers or at the deadline.
    async fn monitor(&self, run: &Run<'_>, started: Instant) -> Result<()> {
        let mut last_print = Instant::now();
        let mut last_apps = Instant::now();
        while !run.stopped() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let failovers = run.check_now()?;
            // The journals grow by a line every 10 ms per acting app: read less often.
            if last_apps.elapsed() >= Duration::from_secs(30) {
                last_apps = Instant::now();
                run.check_apps()?;
            }
            if failovers >= self.failovers() || started.elapsed() >= self.deadline() {
                run.stop();
            }
            if last_print.elapsed() >= Duration::from_secs(20) || run.stopped() {
                last_print = Instant::now();
                println!(
                    "chaos: {:.0} s, {failovers} failovers, {} faults, {} violations",
                    started.elapsed().as_secs_f64(),
                    run.faults().len(),
                    run.violations().len()
                );
            }
        }
        Ok(())
    }

    /// After the faults: the controller replicas settle, then every group has exactly one
    /// eligible active pod within [`RECOVERY_BOUND`] and its app acting on it; returns the
    /// seconds each group took (liveness violations recorded).
    async fn recover(&self, run: &Run<'_>) -> Vec<f64> {
        let t = Instant::now();
        if let Err(e) = run.tb.wait_controllers_settled(SETTLE_BOUND).await {
            run.violate(vec![faults::liveness_violation("hapod-system", e)]);
        }
        let mut took = Vec::new();
        for g in 0..self.groups {
            let ns = groups::namespace(g);
            let active = run
                .wait_group(&ns, "one eligible active", RECOVERY_BOUND, |now| {
                    check::single_eligible_active(now).map(drop)
                })
                .await;
            took.push(t.elapsed().as_secs_f64());
            let settled = match active {
                Ok(()) => self.apps_settled(run, &ns).await,
                Err(e) => Err(e),
            };
            if let Err(e) = settled {
                run.violate(vec![faults::liveness_violation(&ns, e)]);
            }
        }
        took
    }

    /// The group's steady state, and its applications acting on it: the active pod's app
    /// active with the pod's epoch, the standby's app standby.
    async fn apps_settled(&self, run: &Run<'_>, ns: &str) -> Result<()> {
        let tb = run.tb;
        let settled = tb
            .wait_settled(ns, APP_GROUP, APP_REPLICAS, SETTLE_BOUND)
            .await?;
        tb.wait_app_role(ns, &settled.active.name_any(), ACTIVE, SETTLE_BOUND)
            .await?;
        for standby in &settled.standbys {
            tb.wait_app_role(ns, &standby.name_any(), STANDBY, SETTLE_BOUND)
                .await?;
        }
        Ok(())
    }
}
