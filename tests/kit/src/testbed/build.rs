//! Building the workspace binaries the testbed runs (the controller, the demo app, the agent,
//! the process node and the kubectl plugin), and the image map the process node uses to run
//! them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use super::Profile;
use crate::{cargo, target_dir, workspace_root};

/// The binaries the testbed builds: what the nodes run (the real node's images hold them, and
/// `hapod-pause` as the pod sandbox), and the kubectl plugin the tests run as an operator would.
pub const BINARIES: [&str; 6] = [
    "hapod-controller",
    "hapod-demo",
    "hapod-agent",
    "hapod-node",
    "hapod-pause",
    "kubectl-hapod",
];
/// Images (last path segment, without tag) the process node maps to built binaries.
pub const IMAGES: [&str; 3] = ["hapod-controller", "hapod-demo", "hapod-agent"];

/// Builds the binaries the testbed runs and returns the folder holding them.
pub fn build_binaries(profile: Profile, verbose: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.arg("build").current_dir(workspace_root());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    for b in BINARIES {
        cmd.args(["--package", b]);
    }
    cmd.arg("--bins");
    if !verbose {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build of the testbed binaries failed"
    );
    let dir = target_dir()?.join(profile.dir());
    for b in BINARIES {
        ensure!(
            dir.join(b).is_file(),
            "binary {} missing after cargo build",
            dir.join(b).display()
        );
    }
    Ok(dir)
}
