//! `cargo xtask shell -- CMD`: runs CMD in the local cluster's network namespace, where the
//! pod IPs are, with `KUBECONFIG` and `PATH` set for its kubectl.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context as _, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct Cli {
    /// The command and its arguments (default: `$SHELL`, else `sh`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        let dir = super::state_dir()?;
        let (pid, state) = super::running(&dir)?;
        let command = if self.command.is_empty() {
            vec![std::env::var("SHELL").unwrap_or_else(|_| "sh".into())]
        } else {
            self.command
        };
        let path = std::env::join_paths(std::iter::once(state.kubectl_dir.clone()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))?;
        // Only the network namespace changes: files, cwd and the user stay the caller's.
        let error = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("--")
            .args(&command)
            .env("KUBECONFIG", &state.inside_kubeconfig)
            .env("PATH", path)
            .exec();
        Err(error).context("running nsenter (util-linux; needs root)")
    }
}
