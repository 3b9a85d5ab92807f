//! Command-line options shared by the binaries that embed the agent (`hapod-agent`,
//! `hapod-demo serve`); every flag also reads the environment variable shown in `--help`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hapod_protocol::{Key, KeyError};

use crate::{AgentConfig, DEFAULT_PORT};

/// Where and what the agent receives.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Address to bind (the pod IP from the downward API; never a wildcard).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: IpAddr,
    /// UDP port of the notifications.
    #[arg(long, env = "HAPOD_NOTIFY_PORT", default_value_t = DEFAULT_PORT)]
    pub notify_port: u16,
    /// This pod's name; notifications for other pods are dropped.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// File holding the shared HMAC key (a mounted Secret); without it nothing is verified.
    #[arg(long, env = "HAPOD_NOTIFY_KEY_FILE")]
    pub notify_key_file: Option<PathBuf>,
    /// Also accept the original, UNAUTHENTICATED `GoActiveDuringFailover` datagram as
    /// "become active": anyone who can reach the port can then make this pod active.
    #[arg(long, env = "HAPOD_ACCEPT_LEGACY")]
    pub accept_legacy: bool,
    /// This pod's UID (downward API `metadata.uid`); orders naming another UID are dropped.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// File keeping the last applied epoch across restarts (put it in an emptyDir volume).
    #[arg(long, env = "HAPOD_EPOCH_FILE")]
    pub epoch_file: Option<PathBuf>,
    /// Clock rate error allowed against the controller's clock, in parts per million: grants
    /// are shortened by this share.
    #[arg(long, env = "HAPOD_DRIFT_PPM", default_value_t = crate::lease::DEFAULT_DRIFT_PPM,
          value_parser = clap::value_parser!(u32).range(0..100_000))]
    pub drift_ppm: u32,
}

impl AgentArgs {
    /// The agent configuration, reading the key file if one is given.
    pub fn config(&self) -> Result<AgentConfig, KeyError> {
        let key = self
            .notify_key_file
            .as_ref()
            .map(Key::from_file)
            .transpose()?;
        Ok(AgentConfig {
            bind: SocketAddr::new(self.pod_ip, self.notify_port),
            pod_name: self.pod_name.clone(),
            key,
            accept_legacy: self.accept_legacy,
            pod_uid: self.pod_uid.clone(),
            epoch_file: self.epoch_file.clone(),
            drift_ppm: self.drift_ppm,
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs to stderr with timestamps; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
