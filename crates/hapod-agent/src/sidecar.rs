//! The sidecar's job for applications that do not embed the agent: keep the role in a file and
//! run a hook command on every change, like keepalived's notify scripts.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hapod_protocol::Role;
use tokio::sync::broadcast::error::RecvError;

use crate::{Agent, RoleChange, RoleState};

/// A shell command (`sh -c`) run on every role change with `HAPOD_ROLE`,
/// `HAPOD_PREVIOUS_ROLE`, `HAPOD_EPOCH` and `HAPOD_GROUP` in its environment.
#[derive(Debug, Clone)]
pub struct Hook {
    pub command: String,
    /// The hook is killed when it runs longer, so one stuck hook cannot hold back the next.
    pub timeout: Duration,
}

/// Where the sidecar keeps the role and what it runs on a change.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Holds `active`, `standby` or `unknown` and a newline; replaced atomically.
    pub role_file: PathBuf,
    pub hook: Option<Hook>,
}

impl Sidecar {
    /// Follows `agent` until it stops: writes the role file at once and after every change,
    /// then runs the hook, one change at a time and in order.
    pub async fn run(&self, agent: &Agent) -> io::Result<()> {
        let mut changes = agent.changes();
        // Subscribed first, so a change applied before this point is in `current` (and is
        // announced below) and every later one arrives on `changes`.
        let current = agent.state().borrow().clone();
        self.write_role_file(&current)?;
        if current.role.is_some() {
            self.announce(&RoleChange {
                previous: None,
                current,
            })
            .await?;
        }
        loop {
            match changes.recv().await {
                Ok(change) => self.announce(&change).await?,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "role changes missed; announcing the current state");
                    let current = agent.state().borrow().clone();
                    self.announce(&RoleChange {
                        previous: None,
                        current,
                    })
                    .await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// On shutdown: relinquishes the role ([`Agent::relinquish`]) and, if that changed it,
    /// announces standby (role file, then hook) before the process exits.
    pub async fn relinquish(&self, agent: &Agent) -> io::Result<()> {
        let previous = agent.state().borrow().role;
        agent.relinquish().await;
        let current = agent.state().borrow().clone();
        if current.role != previous {
            self.announce(&RoleChange { previous, current }).await?;
        }
        Ok(())
    }

    async fn announce(&self, change: &RoleChange) -> io::Result<()> {
        change.log();
        self.write_role_file(&change.current)?;
        if let Some(hook) = &self.hook {
            run_hook(hook, change).await;
        }
        Ok(())
    }

    fn write_role_file(&self, state: &RoleState) -> io::Result<()> {
        write_atomically(
            &self.role_file,
            format!("{}\n", state.role_name()).as_bytes(),
        )
    }
}

/// Writes a temporary file next to `path` and renames it over `path`, so a reader sees the
/// old or the new content, never a partial one.
pub fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "role file has no name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

async fn run_hook(hook: &Hook, change: &RoleChange) {
    let state = &change.current;
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&hook.command)
        .env("HAPOD_ROLE", state.role_name())
        .env(
            "HAPOD_PREVIOUS_ROLE",
            change.previous.map_or("unknown", Role::as_str),
        )
        .env("HAPOD_EPOCH", state.epoch.to_string())
        .env("HAPOD_GROUP", &state.group)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(%error, command = %hook.command, "cannot start hook");
            return;
        }
    };
    match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(%status, command = %hook.command, "hook failed"),
        Ok(Err(error)) => tracing::warn!(%error, command = %hook.command, "hook wait failed"),
        Err(_) => {
            tracing::warn!(timeout = ?hook.timeout, command = %hook.command, "hook timed out, killing it");
            // `kill_on_drop` kills it; reap it so no zombie is left.
            let _ = child.kill().await;
        }
    }
}
