//! `cargo xtask down`: stops the local cluster of `cargo xtask up` and removes its state.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};

/// The supervisor stops the node (15 s grace) and the control plane (10 s) in turn.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct Cli {}

impl Cli {
    pub fn run(self) -> Result<()> {
        let dir = super::state_dir()?;
        if let Some(pid) = super::supervisor(&dir) {
            eprintln!("stopping the local cluster (supervisor pid {pid})");
            kill(pid, Signal::SIGTERM).context("signalling the supervisor")?;
            if !super::wait_gone(pid, STOP_TIMEOUT) {
                bail!(
                    "the supervisor (pid {pid}) did not stop within {STOP_TIMEOUT:?}; see {}",
                    dir.join(super::LOG_FILE).display()
                );
            }
        } else if !dir.exists() {
            eprintln!("no local cluster in {}", dir.display());
            return Ok(());
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        eprintln!("stopped; removed {}", dir.display());
        Ok(())
    }
}
