//! The real node's container runtime, built from `noderuntime/` (Go module proxy only) and
//! cached like the control plane: containerd with its runc shim and `ctr`, runc, and the CNI
//! plugins of the node's pod network. kubelet and kube-proxy come with the control plane's
//! multi-call binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::gobuild::{Recipe, Step};
use crate::workspace_root;

/// containerd's binaries, built from one module.
const CONTAINERD: [&str; 3] = ["containerd", "containerd-shim-runc-v2", "ctr"];
/// The CNI plugins the node's network configuration calls, with their packages.
const CNI_PLUGINS: [&str; 4] = [
    "plugins/main/bridge",
    "plugins/ipam/host-local",
    "plugins/main/loopback",
    "plugins/meta/portmap",
];
/// Debian packages the build and the node need: libseccomp's headers (runc's seccomp
/// filters, which `seccompProfile: RuntimeDefault` asks for, are built by libseccomp) and
/// `nft` (kube-proxy's nftables mode runs it).
pub const DEBIAN_PACKAGES: [(&str, &str); 2] = [
    ("libseccomp-dev", "/usr/include/seccomp.h"),
    ("nftables", "/usr/sbin/nft"),
];

/// The cached runtime: one folder with every binary; the CNI plugins in `cni/`.
#[derive(Debug, Clone)]
pub struct Runtime {
    dir: PathBuf,
}

impl Runtime {
    /// Path of one of the runtime's binaries (`containerd`, `runc`, ...).
    pub fn path(&self, binary: &str) -> PathBuf {
        self.dir.join(binary)
    }

    /// The folder holding the CNI plugins (containerd's `bin_dirs`).
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// The folder holding containerd, its shim and runc (first on the node's `PATH`: the
    /// shim looks runc up there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn source_dir() -> PathBuf {
    workspace_root().join("noderuntime")
}

/// The version `noderuntime/go.mod` requires of `module`.
fn required_version(go_mod: &str, module: &str) -> Result<String> {
    go_mod
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(module))
                .then(|| fields.next())
                .flatten()
                .map(str::to_owned)
        })
        .with_context(|| format!("noderuntime/go.mod does not require {module}"))
}

fn recipe() -> Result<Recipe> {
    let source = source_dir();
    let go_mod_path = source.join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let containerd = required_version(&go_mod, "github.com/containerd/containerd/v2")?;
    let runc = required_version(&go_mod, "github.com/opencontainers/runc")?;
    let plugins = required_version(&go_mod, "github.com/containernetworking/plugins")?;
    let static_build = |packages: Vec<String>, output: &str, ldflags: String| Step {
        packages,
        output: output.into(),
        cgo: false,
        tags: vec![],
        ldflags,
    };
    let steps = vec![
        static_build(
            CONTAINERD
                .iter()
                .map(|name| format!("github.com/containerd/containerd/v2/cmd/{name}"))
                .collect(),
            ".",
            format!("-s -w -X github.com/containerd/containerd/v2/version.Version={containerd}"),
        ),
        static_build(
            CNI_PLUGINS
                .iter()
                .map(|path| format!("github.com/containernetworking/plugins/{path}"))
                .collect(),
            "cni/",
            format!(
                "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={plugins}"
            ),
        ),
        // runc needs cgo (its namespace setup runs C before the Go runtime starts) and
        // libseccomp.
        Step {
            packages: vec!["github.com/opencontainers/runc".into()],
            output: "runc".into(),
            cgo: true,
            tags: vec!["seccomp".into()],
            ldflags: format!("-s -w -X main.version={}", runc.trim_start_matches('v')),
        },
    ];
    let mut files: Vec<String> = CONTAINERD.iter().map(|name| name.to_string()).collect();
    files.push("runc".into());
    files.extend(
        CNI_PLUGINS
            .iter()
            .map(|path| format!("cni/{}", path.rsplit('/').next().unwrap_or(path))),
    );
    Ok(Recipe {
        product: "noderuntime",
        title: "real node's container runtime",
        source,
        inputs: &["go.mod", "go.sum"],
        label: format!("containerd-{containerd}"),
        steps,
        links: vec![],
        files,
        expected_duration: "5-10 min",
    })
}

/// Whether the runtime of the current `noderuntime/` sources is cached.
pub fn is_cached() -> bool {
    recipe().is_ok_and(|recipe| recipe.is_cached())
}

/// The cached runtime, built first if needed (the Debian packages it needs are installed
/// first when missing).
pub fn ensure_built() -> Result<Runtime> {
    ensure_debian_packages()?;
    Ok(Runtime {
        dir: recipe()?.ensure_built()?,
    })
}

/// Installs [`DEBIAN_PACKAGES`] that are missing, with apt (the project's machines run Debian
/// as root and reach its package mirror).
pub fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "installing {} (Debian packages the real node needs)",
        missing.join(" ")
    );
    for args in [
        vec!["update", "-qq"],
        [
            vec!["install", "-y", "-qq", "--no-install-recommends"],
            missing.clone(),
        ]
        .concat(),
    ] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); the real node needs {}",
                args.join(" "),
                missing.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_version_comes_from_the_go_mod() {
        let go_mod = std::fs::read_to_string(source_dir().join("go.mod")).unwrap();
        for module in [
            "github.com/containerd/containerd/v2",
            "github.com/opencontainers/runc",
            "github.com/containernetworking/plugins",
        ] {
            assert!(required_version(&go_mod, module).unwrap().starts_with('v'));
        }
        assert!(required_version(&go_mod, "example.com/none").is_err());
        let recipe = recipe().unwrap();
        assert!(recipe.label.starts_with("containerd-v2."));
        assert!(recipe.files.contains(&"cni/host-local".to_string()));
    }
}
