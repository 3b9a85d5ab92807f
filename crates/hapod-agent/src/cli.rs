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
    /// Repeat it (or separate with commas) during a key rotation: the first key signs this
    /// agent's ACKs and reports, a datagram signed with any of them is accepted.
    #[arg(long, env = "HAPOD_NOTIFY_KEY_FILE", value_delimiter = ',')]
    pub notify_key_file: Vec<PathBuf>,
    /// Accept the public placeholder key of deploy/base (demos and tests only).
    #[arg(long, env = "HAPOD_ALLOW_DEMO_KEY")]
    pub allow_demo_key: bool,
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
    /// The agent configuration, reading the key files if any are given.
    pub fn config(&self) -> Result<AgentConfig, KeyError> {
        let key = Key::from_files(&self.notify_key_file, self.allow_demo_key)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn config(extra: &[&str]) -> Result<AgentConfig, KeyError> {
        let base = ["agent", "--pod-ip", "127.0.0.1", "--pod-name", "p"];
        Cli::try_parse_from(base.iter().chain(extra))
            .unwrap()
            .agent
            .config()
    }

    #[test]
    fn key_files_are_a_list_and_the_placeholder_needs_the_demo_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (current, previous, demo) = (
            dir.path().join("key"),
            dir.path().join("previous"),
            dir.path().join("demo"),
        );
        std::fs::write(&current, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::write(&previous, "fedcba9876543210fedcba9876543210").unwrap();
        std::fs::write(&demo, hapod_protocol::DEMO_KEY).unwrap();
        let (current, previous, demo) = (
            current.display().to_string(),
            previous.display().to_string(),
            demo.display().to_string(),
        );
        assert!(config(&[]).unwrap().key.is_none());
        let both = config(&[
            "--notify-key-file",
            &current,
            "--notify-key-file",
            &previous,
        ]);
        assert!(both.unwrap().key.is_some_and(|k| !k.is_demo()));

        let err = config(&["--notify-key-file", &demo]).unwrap_err();
        assert!(matches!(&err, KeyError::Demo(p) if *p == demo), "{err}");
        assert!(err.to_string().contains("--allow-demo-key"), "{err}");
        let allowed = config(&["--notify-key-file", &demo, "--allow-demo-key"]).unwrap();
        assert!(allowed.key.is_some_and(|k| k.is_demo()));

        let missing = dir.path().join("missing").display().to_string();
        let err = config(&["--notify-key-file", &missing]).unwrap_err();
        assert!(err.to_string().contains(&missing), "{err}");
    }
}
