//! `cargo xtask <command>`: the project's task runner.

use clap::Parser;

/// Declares the subcommands: one line per module, `Variant(module)`, where `module` has a
/// `Cli` (clap `Args`) with `fn run(self) -> anyhow::Result<()>`.
macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident($module:ident),)*) => {
        #[derive(clap::Subcommand)]
        enum Command {
            $($(#[$doc])* $variant(xtask::$module::Cli),)*
        }

        impl Command {
            fn run(self) -> anyhow::Result<()> {
                match self {
                    $(Command::$variant(cli) => cli.run(),)*
                }
            }
        }
    };
}

commands! {
    /// Build, start and stop the Kubernetes control plane for tests.
    Controlplane(controlplane),
    /// Render and validate deploy/ (kustomize, Helm) against a real kube-apiserver.
    Deploy(deploy),
    /// THE CI command: control plane build, cargo build/test, deploy check, e2e, short bench.
    Test(test),
    /// Start a local cluster (control plane, process node, deploy/base) in the background.
    Up(up),
    /// Stop the local cluster of `up` and remove its state.
    Down(down),
    /// Run a command inside the local cluster's network namespace (pod IPs are there).
    Shell(shell),
    /// Start everything, kill the active pod, print the failover timeline, stop.
    Demo(demo),
    /// Failover latency, controller stages, scale and storm benchmark (results/bench/).
    Bench(bench),
    /// Randomized failovers (seeded) on many groups, checked over the whole label history.
    Chaos(chaos),
}

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hapod's task runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> anyhow::Result<()> {
    Cli::parse().command.run()
}
