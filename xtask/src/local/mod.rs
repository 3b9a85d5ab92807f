//! `cargo xtask up | down | shell`: a local cluster to try hapod by hand.
//!
//! `up` starts a detached supervisor process that holds a [`Testbed`] (control plane,
//! process node, `deploy/base`) in a network namespace of its own, and prints the lines to
//! `eval`; the supervisor outlives `up` and stops everything on SIGTERM (`down`). The testbed's
//! API server listens on 127.0.0.1 inside that namespace; the supervisor forwards a loopback
//! port of the namespace `up` ran in to it, so `kubectl` works from the caller's shell.
//! `shell` runs a command in the supervisor's namespace (pod IPs are reachable only there).
//!
//! State lives in one folder (`<target>/hapod-up`, or `$HAPOD_UP_DIR` to run several):
//! `state.json` (written once ready), `supervisor.pid`, `supervisor.log`, `kubeconfig` (the
//! forwarded address) and `run/` (the testbed's logs).
//!
//! [`Testbed`]: hapod_testkit::testbed::Testbed

pub mod down;
pub mod shell;
pub mod up;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use hapod_testkit::target_dir;

const PID_FILE: &str = "supervisor.pid";
const STATE_FILE: &str = "state.json";
const LOG_FILE: &str = "supervisor.log";
/// Marks the supervisor's command line, so a recycled pid is never taken for it.
const SUPERVISE_ARG: &str = "--supervise";

/// What a ready supervisor records for `up` (again), `shell` and `down`.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// Kubeconfig for the caller's namespace (the forwarded port).
    kubeconfig: PathBuf,
    /// Kubeconfig for inside the testbed's namespace (the API server's own address).
    inside_kubeconfig: PathBuf,
    /// The folder of the kubectl that matches the control plane.
    kubectl_dir: PathBuf,
}

impl State {
    fn env_lines(&self) -> String {
        hapod_testkit::controlplane::env_lines(&self.kubeconfig, &self.kubectl_dir)
    }
}

/// The state folder: `$HAPOD_UP_DIR`, else `<target>/hapod-up`.
fn state_dir() -> Result<PathBuf> {
    match std::env::var_os("HAPOD_UP_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(std::path::absolute(dir)?),
        None => Ok(target_dir()?.join("hapod-up")),
    }
}

/// The supervisor recorded in `dir`, if that process is still alive.
fn supervisor(dir: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == SUPERVISE_ARG.as_bytes());
    ours.then_some(Pid::from_raw(pid))
}

/// The state of a ready supervisor (none while it starts).
fn read_state(dir: &Path) -> Result<Option<State>> {
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("reading the local cluster's state")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading the local cluster's state"),
    }
}

/// The running, ready supervisor and its state, or an error that says what to do.
fn running(dir: &Path) -> Result<(Pid, State)> {
    let Some(pid) = supervisor(dir) else {
        bail!(
            "no local cluster is running (state folder {}): start one with `cargo xtask up`",
            dir.display()
        );
    };
    match read_state(dir)? {
        Some(state) => Ok((pid, state)),
        None => bail!(
            "the local cluster (pid {pid}) is still starting; see {}",
            dir.join(LOG_FILE).display()
        ),
    }
}

/// Waits until `pid` has exited; false when `timeout` passed first.
fn wait_gone(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if kill(pid, None).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(pid, None).is_err()
}
