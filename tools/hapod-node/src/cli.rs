//! Command line of the `hapod-node` binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{ImageMap, NodeConfig};
use crate::ip_allocator::PodCidr;

/// Kubelet stand-in: registers Nodes and runs the pods bound to them as local processes.
#[derive(Debug, Parser)]
#[command(name = "hapod-node", version)]
pub struct Args {
    /// Kubeconfig of the node (default: the usual search). The API server must be on loopback.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Node name to register (repeatable).
    #[arg(long = "node-name")]
    pub node_names: Vec<String>,
    /// Register N nodes named `<prefix>-0` .. `<prefix>-(N-1)` (in addition to --node-name).
    #[arg(long, default_value_t = 0)]
    pub nodes: usize,
    #[arg(long, default_value = "hapod-node")]
    pub node_prefix: String,
    /// Image to binary mapping, IMAGE=PATH (repeatable). IMAGE may be a full reference (tag
    /// ignored) or the image's last path segment.
    #[arg(long = "image", value_parser = ImageMap::parse_entry)]
    pub images: Vec<(String, PathBuf)>,
    /// Directory whose files are binaries named like images' last path segments (repeatable).
    #[arg(long = "bin-dir")]
    pub bin_dirs: Vec<PathBuf>,
    /// Range pod IPs are taken from: loopback, or any range on `lo` of a private network
    /// namespace whose only interface is `lo` (checked at start).
    #[arg(long, default_value = "127.10.0.0/16")]
    pub pod_cidr: PodCidr,
    /// Per-pod folders: volumes, each container's /tmp, logs.
    #[arg(long, default_value = "/var/lib/hapod-node")]
    pub state_dir: PathBuf,
    /// First crash-loop backoff; doubles up to --backoff-max-ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_initial_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Multiplies probes' periodSeconds and initialDelaySeconds (1 = as in the spec).
    #[arg(long, default_value_t = 1.0)]
    pub probe_period_scale: f64,
    /// Node Lease renewal and status heartbeat interval.
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u64,
    /// How often the node looks for containers that exited by themselves (the kubelet's PLEG
    /// relists every 1000 ms); 0 = report an exit at once.
    #[arg(long, default_value_t = 1000)]
    pub relist_period_ms: u64,
    #[arg(long, default_value = "4")]
    pub cpu: String,
    #[arg(long, default_value = "8Gi")]
    pub memory: String,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Extra node label KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_parser = parse_key_value)]
    pub node_labels: Vec<(String, String)>,
    /// Environment variable KEY=VALUE added to every container that does not set KEY itself
    /// (repeatable): how a test harness points applications at its own instrumentation.
    #[arg(long = "container-env", value_parser = parse_key_value)]
    pub container_env: Vec<(String, String)>,
    /// Port of the kubelet endpoint on 127.0.0.1 (`kubectl logs` through the API server;
    /// `kubectl exec` answered as unsupported); 0 = none. One per node process.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

/// A `--node-label` or `--container-env` that is not `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("{0}: expected KEY=VALUE")]
pub struct MalformedKeyValue(String);

fn parse_key_value(s: &str) -> Result<(String, String), MalformedKeyValue> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| MalformedKeyValue(s.to_string()))
}

impl Args {
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut names = self.node_names.clone();
        names.extend((0..self.nodes).map(|i| format!("{}-{i}", self.node_prefix)));
        if names.is_empty() {
            names.push(self.node_prefix.clone());
        }
        let mut node_config = NodeConfig::new(names, &self.state_dir);
        for (image, path) in &self.images {
            node_config.images.insert(image.clone(), path.clone());
        }
        for dir in &self.bin_dirs {
            node_config.images.add_dir(dir.clone());
        }
        node_config.pod_cidr = self.pod_cidr;
        node_config.backoff_initial = Duration::from_millis(self.backoff_initial_ms);
        node_config.backoff_max =
            Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms));
        anyhow::ensure!(
            self.probe_period_scale >= 0.0,
            "--probe-period-scale must not be negative"
        );
        node_config.probe_period_scale = self.probe_period_scale;
        node_config.heartbeat = Duration::from_millis(self.heartbeat_ms.max(100));
        node_config.relist_period = Duration::from_millis(self.relist_period_ms);
        node_config.cpu = self.cpu.clone();
        node_config.memory = self.memory.clone();
        node_config.max_pods = self.max_pods;
        node_config.node_labels = self.node_labels.clone();
        node_config.container_env = self.container_env.clone();
        node_config.kubelet_port = self.kubelet_port;
        Ok(node_config)
    }
}

/// Loads the kubeconfig given or the usual one.
pub async fn kube_config(path: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)
        }
        None => Ok(kube::Config::infer().await?),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the node until SIGTERM or SIGINT, then kills every container process.
pub async fn main(args: Args) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let node_config = args.node_config()?;
    let config = kube_config(args.kubeconfig.as_ref()).await?;
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: stopping");
        stop.cancel();
    });
    Ok(crate::node::run(config, node_config, token).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let args = Args::try_parse_from([
            "hapod-node",
            "--nodes",
            "2",
            "--node-name",
            "extra",
            "--image",
            "ghcr.io/hapod/hapod-demo=/bin/true",
            "--pod-cidr",
            "127.11.0.0/16",
            "--node-label",
            "zone=a",
            "--container-env",
            "JOURNAL=/run/j=1",
        ])
        .unwrap();
        let node_config = args.node_config().unwrap();
        assert_eq!(
            node_config.node_names,
            ["extra", "hapod-node-0", "hapod-node-1"]
        );
        assert_eq!(
            node_config
                .images
                .resolve("ghcr.io/hapod/hapod-demo:0.1.0")
                .unwrap(),
            PathBuf::from("/bin/true")
        );
        assert_eq!(
            node_config.node_labels,
            [("zone".to_string(), "a".to_string())]
        );
        // Only the first `=` splits: values may contain more.
        assert_eq!(
            node_config.container_env,
            [("JOURNAL".to_string(), "/run/j=1".to_string())]
        );
        for bad in ["JOURNAL", "=value"] {
            let error = Args::try_parse_from(["hapod-node", "--container-env", bad]).unwrap_err();
            assert!(error.to_string().contains("expected KEY=VALUE"), "{error}");
        }
        // Any range parses; a non-loopback one is only accepted at start inside a private
        // network namespace (PodCidr::check_confined).
        assert!(Args::try_parse_from(["hapod-node", "--pod-cidr", "10.0.0.0/24"]).is_ok());
        assert!(Args::try_parse_from(["hapod-node", "--pod-cidr", "10.0.0.0"]).is_err());
    }
}
