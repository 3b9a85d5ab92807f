//! The control plane binary: generating `controlplane/go.mod`, building the multi-call binary
//! from `controlplane/` with the Go toolchain and caching it outside the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::gobuild::{Recipe, Step};
use crate::workspace_root;

/// The components the multi-call binary holds; the cache has a symlink named after each.
/// kubelet and kube-proxy run only on the testbed's real node.
pub const COMPONENTS: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
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

/// Returns the cached binaries for the current `controlplane/` sources, building them first
/// if the cache has none (a stat when it has).
pub fn ensure_built() -> Result<Binaries> {
    let (recipe, version) = recipe()?;
    let dir = recipe.ensure_built()?;
    Ok(Binaries { dir, version })
}

/// Whether the binaries of the current `controlplane/` sources are in the cache already
/// (`cargo xtask test` estimates its run time from it).
pub fn is_cached() -> bool {
    recipe().is_ok_and(|(recipe, _)| recipe.is_cached())
}

/// The build of the current `controlplane/` sources: one static binary (CGO off, as upstream's
/// release builds) and a symlink per component.
fn recipe() -> Result<(Recipe, String)> {
    let source = source_dir();
    let go_mod = source.join("go.mod");
    let go_mod =
        fs::read_to_string(&go_mod).with_context(|| format!("reading {}", go_mod.display()))?;
    let version = kubernetes_version(&go_mod)?;
    let recipe = Recipe {
        product: "controlplane",
        title: "Kubernetes control plane",
        source,
        inputs: &INPUTS,
        label: version.clone(),
        steps: vec![Step {
            packages: vec![".".into()],
            output: BINARY.into(),
            cgo: false,
            tags: vec![],
            ldflags: ldflags(&version),
        }],
        links: COMPONENTS
            .iter()
            .map(|component| (component.to_string(), BINARY.to_string()))
            .collect(),
        files: COMPONENTS
            .iter()
            .chain([&BINARY])
            .map(|name| name.to_string())
            .collect(),
        expected_duration: "8-25 min",
    };
    Ok((recipe, version))
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
