//! The acting journal: evidence, on the host's monotonic clock, of when this application
//! acted active. While it may act (`RoleState::acting`), the demo app performs a stand-in for
//! leader-only work every [`INTERVAL`] and appends one line per step to
//! `<dir>/<namespace>_<pod>_<uid>.acts`: `<CLOCK_MONOTONIC ns> <epoch> <group>`. A test
//! harness on the same host merges the journals of a group: two applications acting at once
//! show up as steps of a lower epoch after steps of a higher one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hapod_agent::RoleState;
use nix::time::{ClockId, clock_gettime};
use tokio::sync::watch;

/// Time between two leader-only steps: the resolution of the evidence.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// The journal file of one pod in `dir`.
pub fn path(dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    dir.join(format!("{namespace}_{pod}_{uid}.acts"))
}

/// Appends a line per step while acting, until the state's sender is gone.
pub async fn run(path: PathBuf, mut state: watch::Receiver<RoleState>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if state.has_changed().is_err() {
            return Ok(());
        }
        // The state first, then the stamp, then the check at a time after the stamp: a step
        // is recorded only if the grant read before it still ran at a time after it.
        let snapshot = state.borrow_and_update().clone();
        let stamp = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
        if snapshot.acting(Instant::now()) {
            let nanos = i128::from(stamp.tv_sec()) * 1_000_000_000 + i128::from(stamp.tv_nsec());
            writeln!(file, "{nanos} {} {}", snapshot.epoch, snapshot.group)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
}
