//! `cargo xtask controlplane ...`: build, start, stop, inspect a control plane from the shell.
//! It lives with the runner because `status` reads the state file's private records.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{
    ControlPlane, DEFAULT_KUBERNETES_VERSION, Options, default_dir, ensure_built, gen_gomod,
    process_belongs_to, read_state,
};

/// `cargo xtask controlplane ...`
#[derive(clap::Args)]
pub struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(clap::Args)]
struct DirArg {
    /// State directory of the control plane.
    #[arg(long, default_value_os_t = default_dir())]
    dir: PathBuf,
}

#[derive(clap::Subcommand)]
enum CliCommand {
    /// Build the control plane binary (or find it in the cache) and print its directory.
    Build,
    /// Regenerate controlplane/go.mod and go.sum for a Kubernetes version.
    GenGomod {
        #[arg(long, default_value = DEFAULT_KUBERNETES_VERSION)]
        version: String,
    },
    /// Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler, wait until
    /// they are ready and leave them running.
    Start(DirArg),
    /// Stop every process of the control plane.
    Stop(DirArg),
    /// Show the processes and the apiserver's readiness.
    Status(DirArg),
    /// Mint a kubeconfig with a client certificate for a user and print its path.
    Kubeconfig {
        #[command(flatten)]
        dir: DirArg,
        /// User name (the certificate's CN).
        #[arg(long)]
        user: String,
        /// Group (the certificate's O); repeat for a second group.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Print shell exports for the control plane: `eval "$(cargo xtask controlplane env)"`.
    Env(DirArg),
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            CliCommand::Build => {
                println!("{}", ensure_built()?.dir().display());
            }
            CliCommand::GenGomod { version } => gen_gomod(&version)?,
            CliCommand::Start(DirArg { dir }) => {
                let options = Options {
                    dir: Some(dir),
                    ..Options::default()
                };
                let cp = ControlPlane::start_with(options, true)?;
                print_env(&cp);
                cp.detach();
            }
            CliCommand::Stop(DirArg { dir }) => {
                if read_state(&dir)?.is_none() {
                    eprintln!("no control plane in {}", dir.display());
                    return Ok(());
                }
                ControlPlane::attach(&dir)?.stop()?;
                eprintln!("stopped the control plane in {}", dir.display());
            }
            CliCommand::Status(DirArg { dir }) => {
                let cp = ControlPlane::attach(&dir)?;
                println!(
                    "{} at {} ({})",
                    cp.state.version,
                    cp.server(),
                    cp.dir().display()
                );
                for (name, pid) in cp.processes() {
                    let alive = process_belongs_to(pid, cp.dir());
                    let state = if alive { "running" } else { "not running" };
                    println!("  {name:<24} pid {pid:<8} {state}");
                }
                let running = cp.is_running();
                if running {
                    println!("  kube-apiserver /readyz: {}", cp.readyz());
                }
                // Status only looks; the handle must not stop what it found.
                cp.detach();
                if !running {
                    bail!("the control plane in {} is not running", dir.display());
                }
            }
            CliCommand::Kubeconfig { dir, user, groups } => {
                let cp = ControlPlane::attach(&dir.dir)?;
                let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                let path = cp.mint_kubeconfig(&user, &groups);
                cp.detach();
                println!("{}", path?.display());
            }
            CliCommand::Env(DirArg { dir }) => {
                let cp = ControlPlane::attach(&dir)?;
                print_env(&cp);
                cp.detach();
            }
        }
        Ok(())
    }
}

fn print_env(cp: &ControlPlane) {
    print!("{}", env_lines(&cp.kubeconfig(), cp.binaries().dir()));
}

/// The shell lines to `eval` for a kubeconfig and the folder of the matching kubectl.
pub fn env_lines(kubeconfig: &Path, kubectl_dir: &Path) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    format!(
        "export KUBECONFIG={}\nexport PATH={}:\"$PATH\"\n",
        quote(kubeconfig),
        quote(kubectl_dir)
    )
}
