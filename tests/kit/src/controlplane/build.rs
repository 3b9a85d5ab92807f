//! The control plane binary: generating `controlplane/go.mod`, building the multi-call binary
//! from `controlplane/` with the Go toolchain and caching it outside the repository.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::workspace_root;

/// The components the multi-call binary holds; the cache has a symlink named after each.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Kubernetes version that `gen-gomod` writes when not told otherwise: the newest 1.36 patch
/// whose module the Go checksum database serves (v1.36.5 is on the proxy but not in sumdb).
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.36.4";

/// Name of the multi-call binary inside a cache entry.
const BINARY: &str = "controlplane";

/// Files whose content determines the binary, hence the cache key.
const INPUTS: [&str; 3] = ["go.mod", "go.sum", "main.go"];

/// The Go source of the binary, in the repository.
fn source_dir() -> PathBuf {
    workspace_root().join("controlplane")
}

/// The built components of one Kubernetes version.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
    version: String,
}

impl Binaries {
    pub(super) fn new(dir: PathBuf, version: String) -> Self {
        Self { dir, version }
    }

    /// Path of a component (one of [`COMPONENTS`]), a symlink to the multi-call binary.
    pub fn path(&self, component: &str) -> PathBuf {
        self.dir.join(component)
    }

    /// The cache entry holding the binary and its symlinks; suitable for `PATH`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kubernetes version the binaries were built from, like `v1.36.4`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Root of the binary cache: `${XDG_CACHE_HOME:-$HOME/.cache}/hapod/controlplane`.
fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    Ok(base.join("hapod").join("controlplane"))
}

/// Returns the cached binaries for the current `controlplane/` sources, building them first
/// if the cache has none (a stat when it has).
pub fn ensure_built() -> Result<Binaries> {
    let binaries = expected()?;
    if is_complete(&binaries) {
        return Ok(binaries);
    }
    build_into_cache(binaries)
}

/// Whether the binaries of the current `controlplane/` sources are in the cache already
/// (`cargo xtask test` estimates its run time from it).
pub fn is_cached() -> bool {
    expected().is_ok_and(|binaries| is_complete(&binaries))
}

/// Where the binaries of the current `controlplane/` sources are cached.
fn expected() -> Result<Binaries> {
    let source = source_dir();
    let mut hasher = Sha256::new();
    // Build flags are part of what makes the binary; changing them must miss the cache.
    hasher.update(build_flags_fingerprint());
    let mut go_mod = String::new();
    for name in INPUTS {
        let path = source.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        if name == "go.mod" {
            go_mod = String::from_utf8(bytes)?;
        }
    }
    let version = kubernetes_version(&go_mod)?;
    let hash: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Binaries {
        dir: cache_root()?.join(format!("{version}-{hash}")),
        version,
    })
}

fn build_into_cache(binaries: Binaries) -> Result<Binaries> {
    let root = cache_root()?;
    let source = source_dir();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // One build at a time per cache: a second caller (another test binary, another
    // engineer's xtask) waits and then finds the binary built.
    let lock_file = File::create(root.join(".build.lock"))?;
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            eprintln!(
                "waiting for another build of the control plane (lock {})",
                root.join(".build.lock").display()
            );
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)?
        }
    };
    if is_complete(&binaries) {
        return Ok(binaries);
    }
    // Holding the lock, any staging directory left is from a build that was killed.
    for entry in fs::read_dir(&root)? {
        let path = entry?.path();
        if path.is_dir()
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        {
            fs::remove_dir_all(&path)?;
        }
    }
    build(&source, &binaries)?;
    Ok(binaries)
}

fn is_complete(binaries: &Binaries) -> bool {
    COMPONENTS
        .iter()
        .chain([&BINARY])
        .all(|name| binaries.dir.join(name).is_file())
}

/// The version of k8s.io/kubernetes that `go.mod` requires.
fn kubernetes_version(go_mod: &str) -> Result<String> {
    go_mod
        .lines()
        .map(|line| line.trim().trim_start_matches("require").trim())
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some("k8s.io/kubernetes"))
                .then(|| fields.next())
                .flatten()
                .filter(|v| v.starts_with('v'))
                .map(str::to_owned)
        })
        .context("controlplane/go.mod does not require k8s.io/kubernetes")
}

/// `-ldflags`: strip symbol tables (smaller binary, faster link; Go keeps what stack traces
/// need) and stamp the version, else `/version` and `kubectl version` say v0.0.0.
fn ldflags(version: &str) -> String {
    let minor = version.split('.').nth(1).unwrap_or_default();
    let mut flags = String::from("-s -w");
    for package in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        flags += &format!(
            " -X {package}.gitVersion={version} -X {package}.gitMajor=1 \
             -X {package}.gitMinor={minor} -X {package}.gitTreeState=clean"
        );
    }
    flags
}

/// The `go build` arguments besides `-o`. CGO off, as upstream's release builds: a static
/// binary that does not depend on the machine's C toolchain or libc. No VCS stamping: the
/// state of the hapod checkout says nothing about the binary.
fn build_args(version: &str) -> Vec<String> {
    vec![
        "build".into(),
        "-v".into(),
        "-trimpath".into(),
        "-buildvcs=false".into(),
        format!("-ldflags={}", ldflags(version)),
    ]
}

fn build_flags_fingerprint() -> String {
    format!("CGO_ENABLED=0 {}", build_args("").join(" "))
}

fn build(source: &Path, binaries: &Binaries) -> Result<()> {
    let parent = binaries.dir.parent().context("cache entry has no parent")?;
    let staging = parent.join(format!(
        ".tmp-{}-{}",
        binaries
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        std::process::id()
    ));
    fs::create_dir_all(&staging)?;
    let log_path = parent.join(format!(
        "{}.build.log",
        binaries
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    eprintln!(
        "building the Kubernetes {} control plane (kube-apiserver, kube-controller-manager, \
         kube-scheduler, etcd, kubectl) from {}; the first build takes 10-25 min on 2 cores, \
         later runs reuse {}\n  log: {}",
        binaries.version,
        source.display(),
        binaries.dir.display(),
        log_path.display()
    );
    let started = Instant::now();
    let mut child = Command::new("go")
        .args(build_args(&binaries.version))
        .arg("-o")
        .arg(staging.join(BINARY))
        .arg(".")
        .current_dir(source)
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `go build` (is Go >= 1.26 installed and on PATH?)")?;

    // `go build -v` names every package as it compiles it; the count and the latest name
    // make the progress line, the whole output goes to the log.
    #[derive(Default)]
    struct Progress {
        packages: usize,
        last: String,
        tail: Vec<String>,
    }
    let progress = Arc::new(Mutex::new(Progress::default()));
    let log = Arc::new(Mutex::new(File::create(&log_path)?));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().context("no stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("no stderr")?),
    ]
    .into_iter()
    .map(|pipe| {
        let progress = progress.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                // A failing log write must not stop the build; the progress still counts.
                let _ = writeln!(log.lock().expect("log lock"), "{line}");
                let mut p = progress.lock().expect("progress lock");
                if !line.starts_with('#') && !line.contains(' ') {
                    p.packages += 1;
                    p.last = line.clone();
                }
                p.tail.push(line);
                if p.tail.len() > 40 {
                    p.tail.remove(0);
                }
            }
        })
    })
    .collect();

    let mut next_report = Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= next_report {
            let p = progress.lock().expect("progress lock");
            let doing = match p.packages {
                // Every package came from Go's build cache: only the link is left.
                0 => "linking".to_owned(),
                n => format!("{n} packages compiled, last {}", p.last),
            };
            eprintln!(
                "  still building the control plane: {} s ({doing})",
                started.elapsed().as_secs()
            );
            next_report += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for reader in readers {
        // The reader threads end at EOF, right after the process exits.
        let _ = reader.join();
    }
    if !status.success() {
        let tail = progress.lock().expect("progress lock").tail.join("\n");
        let _ = fs::remove_dir_all(&staging);
        bail!(
            "go build of the control plane failed ({status}); last lines (full log {}):\n{tail}",
            log_path.display()
        );
    }
    for component in COMPONENTS {
        std::os::unix::fs::symlink(BINARY, staging.join(component))?;
    }
    // The entry appears complete or not at all, whatever else runs concurrently.
    if binaries.dir.exists() {
        fs::remove_dir_all(&binaries.dir)?;
    }
    fs::rename(&staging, &binaries.dir)?;
    eprintln!(
        "built the control plane in {} s: {}",
        started.elapsed().as_secs(),
        binaries.dir.display()
    );
    Ok(())
}

/// Regenerates `controlplane/go.mod` for Kubernetes `version` (like `v1.36.4`): requires
/// k8s.io/kubernetes at that version and replaces each staging module that its own go.mod
/// requires at v0.0.0 (they resolve to `./staging/...` inside the Kubernetes repository only)
/// with the published `v0.<minor>.<patch>`; then `go mod tidy` completes go.mod and go.sum.
pub fn gen_gomod(version: &str) -> Result<()> {
    let Some(rest) = version.strip_prefix("v1.") else {
        bail!("expected a Kubernetes version like v1.36.4, got {version}");
    };
    let staging_version = format!("v0.{rest}");
    let source = source_dir();

    let output = Command::new("go")
        .args(["mod", "download", "-json"])
        .arg(format!("k8s.io/kubernetes@{version}"))
        .current_dir(&source)
        .stderr(Stdio::inherit())
        .output()
        .context("running `go mod download`")?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("parsing the output of `go mod download -json`")?;
    if let Some(error) = info.get("Error").and_then(|e| e.as_str()) {
        bail!("go mod download k8s.io/kubernetes@{version}: {error}");
    }
    let upstream_go_mod = info
        .get("GoMod")
        .and_then(|p| p.as_str())
        .context("`go mod download -json` gave no GoMod path")?;
    let upstream = fs::read_to_string(upstream_go_mod)?;
    let staging: Vec<&str> = upstream
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [path, "v0.0.0"] if path.starts_with("k8s.io/") => Some(path),
                _ => None,
            },
        )
        .collect();
    if staging.is_empty() {
        bail!("found no staging modules at v0.0.0 in {upstream_go_mod}");
    }

    let mut go_mod = format!(
        "// Code generated by `cargo xtask controlplane gen-gomod`; DO NOT EDIT.

module hapod.io/controlplane

go 1.26.0

require k8s.io/kubernetes {version}

// k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
// ./staging/...; outside its repository they must point at their published versions.
replace (
"
    );
    for path in &staging {
        go_mod += &format!("\t{path} => {path} {staging_version}\n");
    }
    go_mod += ")\n";
    fs::write(source.join("go.mod"), go_mod)?;

    let status = Command::new("go")
        .args(["mod", "tidy"])
        .current_dir(&source)
        .status()
        .context("running `go mod tidy`")?;
    if !status.success() {
        bail!("go mod tidy failed ({status})");
    }
    eprintln!(
        "wrote {} for Kubernetes {version} ({} staging modules replaced with {staging_version})",
        source.join("go.mod").display(),
        staging.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_kubernetes_version_in_a_tidied_go_mod() {
        let go_mod =
            "module x\n\nrequire (\n\tgithub.com/a/b v1.0.0\n\tk8s.io/kubernetes v1.36.4\n)\n";
        assert_eq!(kubernetes_version(go_mod).unwrap(), "v1.36.4");
        assert_eq!(
            kubernetes_version("require k8s.io/kubernetes v1.36.4\n").unwrap(),
            "v1.36.4"
        );
        assert!(kubernetes_version("module x\n").is_err());
    }

    #[test]
    fn ldflags_stamp_the_version() {
        let flags = ldflags("v1.36.4");
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.36.4"));
        assert!(flags.contains("-X k8s.io/component-base/version.gitMinor=36"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMajor=1"));
    }
}
