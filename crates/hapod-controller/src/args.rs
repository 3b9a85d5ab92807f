//! Command line (every flag has an environment variable; docs/contracts.md lists them).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hapod_core::{ApplicationLease, Config};
use hapod_election::ElectionArgs;
use hapod_protocol::{Key, KeyError, LeaseTerms};

const ABOUT: &str = "Keeps exactly one pod of each application group labeled active and fails over to a ready standby when it is lost.";

const LONG_ABOUT: &str = "\
Keeps exactly one pod of each application group labeled active and fails over to a ready
standby when it is lost.

Pods matching --selector are grouped by namespace and the value of --group-label. In each
group the controller keeps one eligible pod labeled <role-label>=<active-value> and every
other pod <role-label>=<standby-value>. Eligible: phase Running, condition Ready=True, no
deletionTimestamp, a pod IP, and no critical container dead. A container is critical when
its env has <critical-env>=<critical-value> (name exact; value compared after trimming ASCII
whitespace, ignoring ASCII case). A dead critical container (state.terminated, waiting in
CrashLoopBackOff, or any restart: restartCount > 0) gets its pod deleted with grace period 0
and a UID precondition, after failing over if it was active; pods already terminating or
Failed/Succeeded are not deleted again. An active that is only not Ready keeps the role until
a standby can take over.

Failover: demote (relabel standby) the old active if it still exists, then label the chosen
standby active; each write is a merge patch with metadata.resourceVersion as precondition.
The promoted pod gets annotation hapod.io/epoch=<epoch>, epoch = (controller term << 32) |
sequence, the term coming from the election Lease (annotation hapod.io/term). After each
label write the pod is notified over UDP at <pod IP>:<notify-port>.

A group whose pods carry the annotation hapod.io/service=<name> gets the EndpointSlice
<name>-hapod of the selector-less Service <name> written by the controller, listing the pod
labeled active alone, as soon as its promotion is acknowledged (docs/endpoints.md).

Only the replica holding the Lease (--lease-name in --pod-namespace) writes; it labels the
controller pods (--controller-selector) <role-label>=<active-value>|<standby-value>.

HTTP on <listen-ip>:<http-port>: /metrics (Prometheus), /healthz, /readyz.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "hapod-controller", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Kubeconfig file(s) (colon separated). Default: in-cluster config, then the usual
    /// kubeconfig search (~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// Namespaces to watch, comma separated; empty: all namespaces.
    #[arg(
        long,
        env = "HAPOD_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub matching: PodMatching,
    /// UDP port of the pods' notification receiver.
    #[arg(long, env = "HAPOD_NOTIFY_PORT", default_value_t = 10001)]
    pub notify_port: u16,
    /// File with the HMAC-SHA256 key shared with the agents; none: unauthenticated messages.
    /// Repeat it (or separate with commas) during a key rotation: the first key signs, a
    /// reply signed with any of them is accepted.
    #[arg(long, env = "HAPOD_NOTIFY_KEY_FILE", value_delimiter = ',')]
    pub notify_key_file: Vec<PathBuf>,
    /// Accept the public placeholder key of deploy/base (demos and tests only).
    #[arg(long, env = "HAPOD_ALLOW_DEMO_KEY")]
    pub allow_demo_key: bool,
    /// Also send the original 22-byte "GoActiveDuringFailover" datagram on promotion.
    #[arg(long, env = "HAPOD_NOTIFY_LEGACY")]
    pub notify_legacy: bool,
    /// Resend a notification until its ACK or this many ms.
    #[arg(long, env = "HAPOD_NOTIFY_DEADLINE_MS", default_value_t = 2000)]
    pub notify_deadline_ms: u64,
    /// Application lease (protocol version 2, see docs/fencing.md): how long a grant lets the
    /// active application act without renewal, in ms. Unset: version 1 notifications only.
    #[arg(long, env = "HAPOD_APPLICATION_LEASE_MS")]
    pub application_lease_ms: Option<u64>,
    /// Application lease: interval of the orders that renew the active's grant and tell every
    /// other pod to stand by, in ms.
    #[arg(long, env = "HAPOD_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Application lease: clock rate error allowed between hosts, in parts per million (the
    /// agents' --drift-ppm must be the same).
    #[arg(long, env = "HAPOD_DRIFT_PPM", default_value_t = 1000)]
    pub drift_ppm: u32,
    /// Application lease: a pod whose agent has not reported for this long, while another
    /// agent of its group has, is unresponsive (an active one is replaced), in ms. Unset:
    /// three heartbeats; 0: off (pods are judged by the API's view alone).
    #[arg(long, env = "HAPOD_REPORT_TIMEOUT_MS")]
    pub report_timeout_ms: Option<u64>,
    /// Requests of all groups to the API server in flight at once (writes and re-reads; each
    /// holds a connection). More wait for a free one, within the write's deadline.
    #[arg(long, env = "HAPOD_MAX_API_REQUESTS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_api_requests: u32,
    /// Period of the re-planning of every group from its full cached state, in seconds.
    #[arg(long, env = "HAPOD_RESYNC_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Address for HTTP and the notification socket (manifests pass $(POD_IP)).
    #[arg(long, env = "HAPOD_LISTEN_IP", default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,
    /// HTTP port of /metrics, /healthz, /readyz.
    #[arg(long, env = "HAPOD_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Log format.
    #[arg(long, env = "HAPOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub election: ElectionArgs,
}

/// How hapod recognizes its pods: the flags the controller and `kubectl hapod` share.
#[derive(clap::Args, Clone, Debug)]
pub struct PodMatching {
    /// Label selector of the application pods.
    #[arg(long, env = "HAPOD_SELECTOR", default_value = "app=hapod")]
    pub selector: String,
    /// Label whose value (with the namespace) names a pod's group; pods without it are ignored.
    #[arg(long, env = "HAPOD_GROUP_LABEL", default_value = "app")]
    pub group_label: String,
    /// Label key carrying the role, on application and controller pods.
    #[arg(long, env = "HAPOD_ROLE_LABEL", default_value = "role")]
    pub role_label: String,
    /// Role value of the serving pod (the Service selects it).
    #[arg(long, env = "HAPOD_ACTIVE_VALUE", default_value = "active")]
    pub active_value: String,
    /// Role value of every other pod.
    #[arg(long, env = "HAPOD_STANDBY_VALUE", default_value = "standby")]
    pub standby_value: String,
    /// Env var name marking a critical container (exact match).
    #[arg(long, env = "HAPOD_CRITICAL_ENV", default_value = "pwcriticality")]
    pub critical_env: String,
    /// Env var value marking a critical container (trimmed, ASCII case-insensitive).
    #[arg(long, env = "HAPOD_CRITICAL_VALUE", default_value = "critical")]
    pub critical_value: String,
}

impl PodMatching {
    /// The core's configuration, with `application_lease`.
    pub fn config(&self, application_lease: Option<ApplicationLease>) -> Config {
        Config {
            role_label: self.role_label.clone(),
            active_value: self.active_value.clone(),
            standby_value: self.standby_value.clone(),
            critical_env: self.critical_env.clone(),
            critical_value: self.critical_value.clone(),
            application_lease,
        }
    }

    /// Refuses names that cannot work, naming the flag: a role that could never be told
    /// apart (an endless relabel loop), a selector matching every pod, names the API would
    /// refuse on every write or list.
    pub fn validate(&self) -> Result<(), String> {
        if self.selector.trim().is_empty() {
            return Err("--selector must not be empty (it would match every pod)".into());
        }
        if let Some(term) = self.selector.split(',').find(|t| t.trim().is_empty())
            && !self.selector.contains('(')
        {
            return Err(format!(
                "--selector {:?} has an empty term {term:?}",
                self.selector
            ));
        }
        for (flag, key) in [
            ("--group-label", &self.group_label),
            ("--role-label", &self.role_label),
            ("--critical-env", &self.critical_env),
        ] {
            if !label_key(key) {
                return Err(format!("{flag} {key:?} is not a valid label key / name"));
            }
        }
        if self.group_label == self.role_label {
            return Err(format!(
                "--role-label and --group-label must differ (both {:?}): relabeling the role would move the pod to another group",
                self.role_label
            ));
        }
        for (flag, value) in [
            ("--active-value", &self.active_value),
            ("--standby-value", &self.standby_value),
        ] {
            if value.is_empty() || !label_value(value) {
                return Err(format!(
                    "{flag} {value:?} is not a valid, non-empty label value"
                ));
            }
        }
        if self.active_value == self.standby_value {
            return Err(format!(
                "--active-value and --standby-value must differ (both {:?})",
                self.active_value
            ));
        }
        Ok(())
    }
}

impl Args {
    /// The keys of `--notify-key-file` (none: unauthenticated messages).
    pub fn notify_key(&self) -> Result<Option<Key>, KeyError> {
        Key::from_files(&self.notify_key_file, self.allow_demo_key)
    }

    /// The core's configuration.
    pub fn core_config(&self) -> Config {
        self.matching
            .config(self.lease_terms().map(|terms| ApplicationLease {
                live_span: terms.live_span(),
                predecessor_window: Duration::from_millis(self.election.renew_deadline_ms),
                report_timeout: self.report_timeout(),
            }))
    }

    /// The application lease's terms, when it is on.
    pub fn lease_terms(&self) -> Option<LeaseTerms> {
        self.application_lease_ms.map(|ms| LeaseTerms {
            lease: Duration::from_millis(ms),
            drift_ppm: self.drift_ppm,
        })
    }

    /// `--report-timeout-ms` with its default applied; `None` when off.
    fn report_timeout(&self) -> Option<Duration> {
        match self.report_timeout_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_millis(self.heartbeat_ms.saturating_mul(3))),
        }
    }

    /// Namespaces to watch, blanks and duplicates dropped (empty: all).
    pub fn namespace_list(&self) -> Vec<String> {
        crate::runtime::distinct_namespaces(&self.namespaces)
    }

    /// Refuses settings that cannot work, naming the flag: a role that could never be told
    /// apart (an endless relabel loop), a selector matching every pod, names the API would
    /// refuse on every write or list, lease timings outside the election's safety margins.
    pub fn validate(&self) -> Result<(), String> {
        self.matching.validate()?;
        if let Some(ns) = self.namespace_list().iter().find(|ns| !dns_label(ns)) {
            return Err(format!(
                "--namespaces: {ns:?} is not a namespace name (lower case letters, digits, '-', at most 63)"
            ));
        }
        if let Some(lease_ms) = self.application_lease_ms {
            if !(MIN_APPLICATION_LEASE_MS..=MAX_APPLICATION_LEASE_MS).contains(&lease_ms) {
                return Err(format!(
                    "--application-lease-ms must be within {MIN_APPLICATION_LEASE_MS}..={MAX_APPLICATION_LEASE_MS}"
                ));
            }
            // At least three renewals per lease, so that two lost in a row do not end it.
            if self.heartbeat_ms == 0 || self.heartbeat_ms.saturating_mul(3) > lease_ms {
                return Err(format!(
                    "--heartbeat-ms must be above 0 and at most a third of --application-lease-ms ({lease_ms})"
                ));
            }
            if self.drift_ppm >= 100_000 {
                return Err("--drift-ppm must be below 100000 (10 %)".into());
            }
            // One late report must not make a pod unresponsive.
            if let Some(timeout) = self.report_timeout()
                && timeout < Duration::from_millis(self.heartbeat_ms.saturating_mul(2))
            {
                return Err(format!(
                    "--report-timeout-ms must be 0 (off) or at least two heartbeats ({} ms)",
                    self.heartbeat_ms.saturating_mul(2)
                ));
            }
        }
        if self.notify_deadline_ms == 0 || self.notify_deadline_ms > MAX_NOTIFY_DEADLINE_MS {
            return Err(format!(
                "--notify-deadline-ms must be within 1..={MAX_NOTIFY_DEADLINE_MS}"
            ));
        }
        hapod_election::ElectionConfig::new(
            &self.election,
            &self.matching.role_label,
            &self.matching.active_value,
            &self.matching.standby_value,
        )
        .map(drop)
        .map_err(|e| e.to_string())
    }

    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds)
    }
}

/// A notification resent for longer than this is useless: the failover is long over.
/// Bounds of `--application-lease-ms`: below 30 ms a scheduling hiccup ends grants; above a
/// minute a lost active blocks failover for too long.
const MIN_APPLICATION_LEASE_MS: u64 = 30;
const MAX_APPLICATION_LEASE_MS: u64 = 60_000;
const MAX_NOTIFY_DEADLINE_MS: u64 = 60_000;

/// A DNS-1123 label (namespace names; a Service name is one that starts with a letter).
pub(crate) fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A label value: at most 63 characters, alphanumerics with '-', '_', '.' inside.
fn label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A label key: an optional DNS subdomain prefix and '/', then a non-empty name.
fn label_key(s: &str) -> bool {
    let (prefix, name) = s.rsplit_once('/').unwrap_or(("", s));
    !name.is_empty()
        && label_value(name)
        && (s.len() == name.len()
            || (!prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(dns_label)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_contract() {
        let a = Args::try_parse_from([
            "hapod-controller",
            "--pod-name",
            "p",
            "--pod-namespace",
            "n",
        ])
        .unwrap();
        assert_eq!(a.matching.selector, "app=hapod");
        assert!(a.namespace_list().is_empty());
        assert_eq!(a.core_config(), Config::default());
        assert_eq!(
            (a.notify_port, a.http_port, a.resync_seconds),
            (10001, 8080, 30)
        );
        assert_eq!(a.notify_deadline_ms, 2000);
        assert!(!a.notify_legacy);
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.listen_ip.to_string(), "0.0.0.0");
    }

    #[test]
    fn namespaces_are_a_comma_list() {
        let a = Args::try_parse_from([
            "hapod-controller",
            "--pod-name",
            "p",
            "--pod-namespace",
            "n",
            "--namespaces",
            "a, b,,c",
            "--notify-legacy",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.namespace_list(), ["a", "b", "c"]);
        assert!(a.validate().is_ok());
        assert!(a.notify_legacy);
        assert_eq!(a.log_format, LogFormat::Json);
    }

    #[test]
    fn notify_keys_are_a_list_and_the_placeholder_needs_the_demo_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (own, old, demo) = (
            dir.path().join("own"),
            dir.path().join("old"),
            dir.path().join("demo"),
        );
        std::fs::write(&own, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::write(&old, "fedcba9876543210fedcba9876543210").unwrap();
        std::fs::write(&demo, hapod_protocol::DEMO_KEY).unwrap();
        let parse = |extra: &[&str]| {
            let base = [
                "hapod-controller",
                "--pod-name",
                "p",
                "--pod-namespace",
                "n",
            ];
            Args::try_parse_from(base.iter().chain(extra)).unwrap()
        };
        let files = format!("{},{}", own.display(), old.display());
        let a = parse(&["--notify-key-file", &files]);
        assert_eq!(a.notify_key_file, [own.clone(), old]);
        assert!(a.notify_key().unwrap().is_some_and(|k| !k.is_demo()));
        assert!(parse(&[]).notify_key().unwrap().is_none());

        let demo = demo.display().to_string();
        let err = parse(&["--notify-key-file", &demo])
            .notify_key()
            .unwrap_err();
        assert!(err.to_string().contains("--allow-demo-key"), "{err}");
        let allowed = parse(&["--notify-key-file", &demo, "--allow-demo-key"]);
        assert!(allowed.notify_key().unwrap().is_some_and(|k| k.is_demo()));
    }

    #[test]
    fn help_documents_labels_annotations_and_env() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "hapod.io/epoch",
            "HAPOD_SELECTOR",
            "pwcriticality",
            "[default: role]",
            "POD_NAME",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}");
        }
    }

    fn validated(extra: &[&str]) -> Result<(), String> {
        let mut argv = vec![
            "hapod-controller",
            "--pod-name",
            "p",
            "--pod-namespace",
            "n",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().validate()
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        for (extra, flag) in [
            (
                &["--active-value", "standby"][..],
                "--active-value and --standby-value",
            ),
            (
                &["--role-label", "app"][..],
                "--role-label and --group-label",
            ),
            (&["--selector", " "][..], "--selector"),
            (&["--selector", "app=hapod,"][..], "--selector"),
            (&["--namespaces", "a,Bad_Name"][..], "--namespaces"),
            (&["--group-label", "a b"][..], "--group-label"),
            (&["--active-value", ""][..], "--active-value"),
            (&["--notify-deadline-ms", "0"][..], "--notify-deadline-ms"),
            (
                &[
                    "--lease-duration-ms",
                    "31536000000",
                    "--renew-deadline-ms",
                    "2000",
                ][..],
                "--lease-duration-ms",
            ),
            (&["--retry-period-ms", "5000"][..], "--retry-period-ms"),
            (
                &["--application-lease-ms", "300", "--report-timeout-ms", "99"][..],
                "--report-timeout-ms",
            ),
        ] {
            let error = validated(extra).expect_err(&format!("{extra:?} accepted"));
            assert!(error.contains(flag), "{extra:?}: {error}");
        }
        assert_eq!(validated(&["--namespaces", "a,a, a"]), Ok(()));
        assert_eq!(validated(&["--group-label", "example.com/group"]), Ok(()));
        assert_eq!(validated(&["--selector", "app in (a,b),tier"]), Ok(()));
        assert_eq!(
            validated(&["--application-lease-ms", "300", "--report-timeout-ms", "0"]),
            Ok(())
        );
    }

    #[test]
    fn the_report_timeout_defaults_to_three_heartbeats_and_zero_turns_it_off() {
        let lease = |extra: &[&str]| {
            let mut argv = vec!["c", "--pod-name", "p", "--pod-namespace", "n"];
            argv.extend_from_slice(extra);
            let args = Args::try_parse_from(argv).unwrap();
            args.core_config().application_lease.unwrap().report_timeout
        };
        let on = ["--application-lease-ms", "300", "--heartbeat-ms", "40"];
        assert_eq!(lease(&on), Some(Duration::from_millis(120)));
        let off = [&on[..], &["--report-timeout-ms", "0"]].concat();
        assert_eq!(lease(&off), None);
        let set = [&on[..], &["--report-timeout-ms", "200"]].concat();
        assert_eq!(lease(&set), Some(Duration::from_millis(200)));
    }
}
