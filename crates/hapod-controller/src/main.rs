//! `hapod-controller`: wires the election, the pod watch, the notifier, metrics and HTTP.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use hapod_controller::args::{Args, LogFormat};
use hapod_controller::metrics::Metrics;
use hapod_controller::orders::OrderChannel;
use hapod_controller::runtime::{
    Dispatcher, Settings, http_routes, publish_notes, track_notifications,
};
use hapod_controller::worker::Shared;
use hapod_election::{ElectionConfig, LeaderElector, LeaderState};
use hapod_protocol::Key;
use hapod_protocol::sender::{Notifier, NotifierConfig};
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

/// Kubernetes Events waiting to be published; beyond this they are dropped (logged).
const NOTE_QUEUE: usize = 1024;
/// How long SIGTERM waits for the Lease release.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn notifier_config(args: &Args) -> anyhow::Result<NotifierConfig> {
    let key = args.notify_key()?;
    if key.as_ref().is_some_and(Key::is_demo) {
        tracing::warn!("running with the public placeholder notification key (--allow-demo-key)");
    }
    // Bind the pod IP, never a wildcard, when one is given (pods may share a host).
    let (bind_v4, bind_v6) = match args.listen_ip {
        IpAddr::V4(v4) if v4.is_unspecified() => (
            Some(SocketAddr::new(args.listen_ip, 0)),
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)),
        ),
        IpAddr::V4(_) => (Some(SocketAddr::new(args.listen_ip, 0)), None),
        IpAddr::V6(_) => (None, Some(SocketAddr::new(args.listen_ip, 0))),
    };
    Ok(NotifierConfig {
        key,
        legacy: args.notify_legacy,
        deadline: Duration::from_millis(args.notify_deadline_ms),
        bind_v4,
        bind_v6,
        ..NotifierConfig::default()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(error) = args.validate() {
        // clap's own format: "error: ..." and exit code 2, like any other bad flag.
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, error)
            .exit();
    }
    init_logging(args.log_format);
    let config = Arc::new(args.core_config());
    let client = kube::Client::try_from(
        hapod_controller::client::config(args.kubeconfig.as_deref()).await?,
    )?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let election = ElectionConfig::new(
        &args.election,
        &args.matching.role_label,
        &args.matching.active_value,
        &args.matching.standby_value,
    )?;
    let (leader, elector) = LeaderElector::new(client.clone(), election, &mut registry)?;
    let registry = Arc::new(registry);
    tokio::spawn(elector.run());

    // The dispatcher follows the acting term only.
    let (term_tx, term_rx) = watch::channel(None);
    let mut states = leader.subscribe();
    tokio::spawn(async move {
        loop {
            let term = match &*states.borrow_and_update() {
                LeaderState::Leading { term } => Some(term.get()),
                LeaderState::Standby { .. } => None,
            };
            term_tx.send_replace(term);
            if states.changed().await.is_err() {
                return;
            }
        }
    });

    let notifier_config = notifier_config(&args)?;
    let orders = match args.lease_terms() {
        Some(terms) => {
            let binds = [notifier_config.bind_v4, notifier_config.bind_v6];
            let channel = OrderChannel::bind(
                terms,
                notifier_config.key.clone(),
                args.notify_port,
                binds.into_iter().flatten(),
                metrics.clone(),
            )
            .await
            .context("binding the order socket")?;
            tracing::info!(
                lease_ms = terms.lease.as_millis() as u64,
                heartbeat_ms = args.heartbeat_ms,
                "application lease on (protocol version 2)"
            );
            Some((channel, Duration::from_millis(args.heartbeat_ms)))
        }
        None => None,
    };
    let (notifier, outcomes) = Notifier::bind(notifier_config)
        .await
        .context("binding the notification socket")?;
    tokio::spawn(track_notifications(outcomes, metrics.clone()));
    let (notes_tx, notes_rx) = mpsc::channel(NOTE_QUEUE);
    let reporter = Reporter {
        controller: "hapod-controller".into(),
        instance: Some(args.election.pod_name.clone()),
    };
    tokio::spawn(publish_notes(client.clone(), reporter, notes_rx));

    let ready = Arc::new(AtomicBool::new(false));
    let http_addr = SocketAddr::new(args.listen_ip, args.http_port);
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding HTTP {http_addr}"))?;
    let routes = http_routes(Arc::clone(&registry), Arc::clone(&ready));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, routes).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });

    let shared = Arc::new(Shared {
        config,
        group_label: args.matching.group_label.clone(),
        notifier,
        notify_port: args.notify_port,
        notes: notes_tx,
        metrics,
        epoch_floor: AtomicU64::new(0),
        orders,
        api_requests: Arc::new(tokio::sync::Semaphore::new(args.max_api_requests as usize)),
    });
    let settings = Settings {
        selector: args.matching.selector.clone(),
        namespaces: args.namespace_list(),
        resync: args.resync(),
        controller_pod: Some((
            args.election.pod_namespace.clone(),
            args.election.pod_name.clone(),
        )),
    };
    let dispatcher = Dispatcher::new(client, settings, shared, Arc::new(leader.clone()), ready);
    tracing::info!(selector = %args.matching.selector, namespaces = ?args.namespace_list(), %http_addr, "hapod-controller starting");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = dispatcher.run(term_rx) => anyhow::bail!("pod dispatcher stopped"),
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("terminating: releasing the lease");
    if tokio::time::timeout(RELEASE_TIMEOUT, leader.release())
        .await
        .is_err()
    {
        tracing::warn!("lease release timed out");
    }
    Ok(())
}
