//! Helm, built from its Go module through the Go module proxy (it is not among Debian's
//! packages here) and cached outside the repository, keyed by version:
//! `$XDG_CACHE_HOME/hapod/helm/<version>/helm` (default `~/.cache/...`).
//!
//! `HAPOD_HELM=/path/to/helm` uses a given binary instead.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use nix::fcntl::{Flock, FlockArg};

/// The Helm release built. v4 needs Go >= 1.26.0 (its go.mod), which is what is installed.
pub const HELM_VERSION: &str = "v4.3.1";
const HELM_PACKAGE: &str = "helm.sh/helm/v4/cmd/helm";

/// `$XDG_CACHE_HOME/hapod` or `~/.cache/hapod`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("hapod"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("hapod"))
}

/// Path of a working `helm`, building it first if it is not cached yet. Concurrent callers
/// wait for one build (a file lock next to the binary).
pub fn ensure_helm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("HAPOD_HELM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        check_runs(&path)?;
        return Ok(path);
    }
    let dir = version_dir()?;
    let bin = dir.join("helm");
    if bin.is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_file = File::create(dir.join(".lock"))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the helm cache")?;
    if !bin.is_file() {
        build(&dir, &bin)?;
    }
    check_runs(&bin)?;
    Ok(bin)
}

/// Whether a Helm binary is given (`HAPOD_HELM`) or built already.
pub fn is_cached() -> bool {
    std::env::var_os("HAPOD_HELM").is_some_and(|p| !p.is_empty())
        || version_dir().is_ok_and(|dir| dir.join("helm").is_file())
}

fn version_dir() -> Result<PathBuf> {
    Ok(cache_root()?.join("helm").join(HELM_VERSION))
}

fn build(dir: &Path, bin: &Path) -> Result<()> {
    let partial = dir.join(".partial");
    let _ = fs::remove_dir_all(&partial);
    eprintln!(
        "testkit: building helm {HELM_VERSION} from the Go module proxy into {} \
         (first time only; several minutes on 2 cores)",
        dir.display()
    );
    let started = Instant::now();
    let status = Command::new("go")
        .args(["install", "-trimpath"])
        .arg(format!("{HELM_PACKAGE}@{HELM_VERSION}"))
        .env("GOBIN", &partial)
        .env("CGO_ENABLED", "0")
        // A module-aware `go install pkg@version` must not see the caller's go.work/go.mod.
        .env("GOWORK", "off")
        .current_dir(dir)
        .status()
        .context("running `go` (is Go installed?)")?;
    ensure!(
        status.success(),
        "go install {HELM_PACKAGE}@{HELM_VERSION} failed: {status}"
    );
    fs::rename(partial.join("helm"), bin).context("moving the built helm into the cache")?;
    let _ = fs::remove_dir_all(&partial);
    eprintln!(
        "testkit: helm {HELM_VERSION} built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_runs(bin: &Path) -> Result<()> {
    let out = Command::new(bin)
        .args(["version", "--short"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
