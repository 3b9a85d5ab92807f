//! `hapod-demo`: the demo application of hapod.
//!
//! - `serve` embeds the agent (notifications on `POD_IP:10001`), logs every role change with
//!   its latency from the controller's send time, and answers HTTP on `POD_IP:8080`:
//!   `/` (pod, namespace, role, epoch), `/readyz` (503 while `--unready-file` exists) and
//!   `/state` (JSON of the last applied notification).
//! - With `--journal-dir`, it keeps an acting journal (see [`journal`]) for test harnesses.
//! - `crash` plays the original system's crash container: it aborts (SIGABRT) as soon as
//!   `--file` exists.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};
use hapod_agent::cli::{AgentArgs, LogFormat, init_logging};
use hapod_agent::{Agent, RoleState};
use tokio::sync::watch;

mod journal;

#[derive(Debug, Parser)]
#[command(name = "hapod-demo", version, about)]
struct Cli {
    #[arg(
        long,
        env = "HAPOD_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive role notifications and serve the role over HTTP.
    Serve(ServeArgs),
    /// Abort (SIGABRT) when a file appears, like the original crash container.
    Crash(CrashArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    agent: AgentArgs,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: String,
    /// TCP port of the HTTP endpoint (bound on the pod IP).
    #[arg(long, env = "HAPOD_DEMO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// `/readyz` answers 503 while this file exists.
    #[arg(long, env = "HAPOD_DEMO_UNREADY_FILE", default_value = "/tmp/unready")]
    unready_file: PathBuf,
    /// Keep an acting journal in this folder (a line every 10 ms while acting active, for
    /// test harnesses that check no two applications act at once). Needs `--pod-uid`.
    #[arg(long, env = "HAPOD_DEMO_JOURNAL_DIR")]
    journal_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CrashArgs {
    /// Abort as soon as this file exists.
    #[arg(long, env = "HAPOD_DEMO_KILL_FILE", default_value = "/tmp/killme")]
    file: PathBuf,
    /// How often to look for the file (the original looked every 5000 ms).
    #[arg(long, env = "HAPOD_DEMO_INTERVAL_MS", default_value_t = 1000)]
    interval_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => tokio::runtime::Runtime::new()?.block_on(serve(args)),
        Command::Crash(args) => crash(&args.file, Duration::from_millis(args.interval_ms)),
    }
}

fn crash(file: &Path, interval: Duration) -> ! {
    tracing::info!(file = %file.display(), ?interval, "crash mode: aborting when the file exists");
    loop {
        if file.exists() {
            tracing::error!(file = %file.display(), "kill file found, aborting");
            std::process::abort();
        }
        std::thread::sleep(interval);
    }
}

/// What the HTTP handlers read.
struct App {
    pod: String,
    namespace: String,
    unready_file: PathBuf,
    state: watch::Receiver<RoleState>,
}

/// Body of `GET /state` (field names fixed by docs/contracts.md).
#[derive(Debug, serde::Serialize)]
struct StateBody {
    pod: String,
    namespace: String,
    group: String,
    role: &'static str,
    epoch: u64,
    applied_at_unix_nanos: u64,
    sent_at_unix_nanos: u64,
    message_id: u64,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.agent.config()?;
    let journal = match (&args.journal_dir, &args.agent.pod_uid) {
        (Some(dir), Some(uid)) => Some(journal::path(
            dir,
            &args.pod_namespace,
            &args.agent.pod_name,
            uid,
        )),
        (Some(_), None) => anyhow::bail!("--journal-dir needs --pod-uid (POD_UID)"),
        (None, _) => None,
    };
    let pod_ip: IpAddr = args.agent.pod_ip;
    let notify_addr = config.bind;
    let agent = Arc::new(
        Agent::bind(config)
            .await
            .with_context(|| format!("cannot bind {notify_addr}"))?,
    );
    let mut changes = agent.changes();
    tokio::spawn(async move {
        // Ends when the agent is dropped at exit; a lagging log only skips lines.
        while let Ok(change) = changes.recv().await {
            change.log();
        }
    });
    if let Some(path) = journal {
        let state = agent.state();
        tokio::spawn(async move {
            if let Err(error) = journal::run(path, state).await {
                tracing::error!(error = format!("{error:#}"), "acting journal stopped");
            }
        });
    }
    let app = Arc::new(App {
        pod: args.agent.pod_name,
        namespace: args.pod_namespace,
        unready_file: args.unready_file,
        state: agent.state(),
    });
    let router = Router::new()
        .route("/", get(root))
        .route("/readyz", get(readyz))
        .route("/state", get(state))
        .with_state(app)
        .merge(hapod_agent::metrics::router(&agent));
    let http_addr = SocketAddr::new(pod_ip, args.http_port);
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot bind {http_addr}"))?;
    tracing::info!(%http_addr, %notify_addr, "hapod demo serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Stop acting and tell the controller, so the standby takes over without
            // waiting for this pod's grant to run out.
            agent.relinquish().await;
        })
        .await?;
    Ok(())
}

async fn root(State(app): State<Arc<App>>) -> String {
    let state = app.state.borrow();
    format!(
        "pod={} namespace={} role={} epoch={}\n",
        app.pod,
        app.namespace,
        state.role_name(),
        state.epoch
    )
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.unready_file.exists() {
        (StatusCode::SERVICE_UNAVAILABLE, "unready\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn state(State(app): State<Arc<App>>) -> Json<StateBody> {
    let state = app.state.borrow();
    Json(StateBody {
        pod: app.pod.clone(),
        namespace: app.namespace.clone(),
        group: state.group.clone(),
        role: state.role_name(),
        epoch: state.epoch,
        applied_at_unix_nanos: state.applied_at_unix_nanos,
        sent_at_unix_nanos: state.sent_at_unix_nanos,
        message_id: state.message_id,
    })
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("terminating");
}
