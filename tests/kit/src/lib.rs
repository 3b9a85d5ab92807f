//! hapod's test kit: everything the end-to-end tests (`tests/e2e`), `cargo xtask demo` and
//! `cargo xtask bench` share to run hapod against a real Kubernetes control plane on this
//! machine.
//!
//! - [`controlplane`]: builds (from `controlplane/`, cached) and runs etcd, kube-apiserver,
//!   kube-controller-manager and kube-scheduler as local processes on loopback ports;
//! - [`netns`]: the private network namespace the testbed runs in (pod IPs from
//!   [`netns::POD_CIDR`] on its `lo`, no route out);
//! - [`testbed`]: control plane + process node (`tools/hapod-node`) + hapod deployed from
//!   `deploy/base`, with the waits, pod accessors, failure triggers and the label-history
//!   checker the scenarios use;
//! - [`helm`]: the cached `helm` binary of the deploy checks;
//! - [`http`]: the one HTTP client (hyper, rustls), bounded and held to the network rule;
//! - [`poll`]: the bounded poll ([`poll::await_condition`]) every wait uses;
//! - [`prom`]: the Prometheus text parser (controller `/metrics`, benchmark histograms).
//!
//! `xtask` is the command line over this library; the end-to-end tests use it directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, anyhow, ensure};

pub mod controlplane;
pub mod gobuild;
pub mod helm;
pub mod http;
pub mod netns;
pub mod poll;
pub mod prom;
pub mod realnode;
pub mod testbed;

/// The repository root (this crate lives in `<root>/tests/kit`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the test kit lives in <workspace>/tests/kit")
        .to_path_buf()
}

/// Cargo's target directory for this workspace: `$CARGO_TARGET_DIR` (relative to the
/// workspace root when relative), else what `cargo metadata` says (honours cargo's config).
pub fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Ok(workspace_root().join(dir));
    }
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = meta["target_directory"]
        .as_str()
        .ok_or_else(|| anyhow!("cargo metadata has no target_directory"))?;
    Ok(PathBuf::from(dir))
}

/// The cargo that runs us (`$CARGO`), else `cargo` from `PATH`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("tests/kit/Cargo.toml").is_file());
        assert!(root.join("controlplane").is_dir());
    }
}
