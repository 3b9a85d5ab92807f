//! `hapod-agent`: sidecar for applications that do not embed the agent library. It receives
//! the controller's notifications on `POD_IP:10001`, keeps the role in a file and runs a hook
//! command on every role change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hapod_agent::Agent;
use hapod_agent::cli::{AgentArgs, LogFormat, init_logging};
use hapod_agent::sidecar::{Hook, Sidecar};

#[derive(Debug, Parser)]
#[command(name = "hapod-agent", version, about)]
struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// File that holds `active`, `standby` or `unknown` (replaced atomically on every change).
    #[arg(long, env = "HAPOD_ROLE_FILE", default_value = "/run/hapod/role")]
    role_file: PathBuf,
    /// Shell command run on every role change, with HAPOD_ROLE, HAPOD_PREVIOUS_ROLE,
    /// HAPOD_EPOCH and HAPOD_GROUP in its environment.
    #[arg(long, env = "HAPOD_HOOK")]
    hook: Option<String>,
    /// A hook still running after this long is killed.
    #[arg(long, env = "HAPOD_HOOK_TIMEOUT_MS", default_value_t = 30_000)]
    hook_timeout_ms: u64,
    #[arg(long, env = "HAPOD_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// Serve the agent's Prometheus metrics on http://ADDR/metrics (e.g. the pod IP and a
    /// port of its own); none when unset.
    #[arg(long, env = "HAPOD_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let config = args.agent.config()?;
    let bind = config.bind;
    let agent = Agent::bind(config)
        .await
        .with_context(|| format!("cannot bind {bind}"))?;
    if let Some(addr) = args.metrics_addr {
        hapod_agent::metrics::serve(&agent, addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let sidecar = Sidecar {
        role_file: args.role_file,
        hook: args.hook.map(|command| Hook {
            command,
            timeout: Duration::from_millis(args.hook_timeout_ms),
        }),
    };
    tokio::select! {
        result = sidecar.run(&agent) => {
            result.with_context(|| format!("cannot write {}", sidecar.role_file.display()))
        }
        signal = shutdown_signal() => {
            signal?;
            // Tell the application and the controller before going: the controller can
            // then promote a successor without waiting for this pod's grant to run out.
            tracing::info!("terminating: relinquishing the role");
            sidecar
                .relinquish(&agent)
                .await
                .with_context(|| format!("cannot write {}", sidecar.role_file.display()))
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c?,
    }
    Ok(())
}
