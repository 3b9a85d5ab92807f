//! Flags and configuration of the election.

use std::time::Duration;

/// Default lease duration: a standby takes over a hung or partitioned leader after this long
/// without an observed renew (docs/election.md explains the numbers).
pub const DEFAULT_LEASE_DURATION_MS: u64 = 3000;
/// Default renew deadline: the leader stops acting this long after the start of its last
/// successful renew.
pub const DEFAULT_RENEW_DEADLINE_MS: u64 = 2000;
/// Default retry period: renew cadence, and the bound for a standby's reaction to a release.
pub const DEFAULT_RETRY_PERIOD_MS: u64 = 500;

/// Longest lease accepted: beyond it a hung leader stalls every failover for minutes, which no
/// user of millisecond failover wants (and the Lease's seconds field has a limit too).
pub const MAX_LEASE_DURATION_MS: u64 = 600_000;

/// The election flags, to `#[command(flatten)]` into the controller's arguments.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ElectionArgs {
    /// Name of the coordination.k8s.io/v1 Lease (in --pod-namespace).
    #[arg(long, env = "HAPOD_LEASE_NAME", default_value = "hapod-controller")]
    pub lease_name: String,
    /// Lease duration in ms: a standby takes over after this long without an observed renew.
    #[arg(long, env = "HAPOD_LEASE_DURATION_MS", default_value_t = DEFAULT_LEASE_DURATION_MS)]
    pub lease_duration_ms: u64,
    /// Renew deadline in ms: the leader stops acting this long after its last successful
    /// renew started. Must be below the lease duration.
    #[arg(long, env = "HAPOD_RENEW_DEADLINE_MS", default_value_t = DEFAULT_RENEW_DEADLINE_MS)]
    pub renew_deadline_ms: u64,
    /// Retry period in ms between renews and acquisition attempts.
    #[arg(long, env = "HAPOD_RETRY_PERIOD_MS", default_value_t = DEFAULT_RETRY_PERIOD_MS)]
    pub retry_period_ms: u64,
    /// Label selector of the controller's own pods (in --pod-namespace).
    #[arg(long, env = "HAPOD_CONTROLLER_SELECTOR", default_value = "app=icr")]
    pub controller_selector: String,
    /// This replica's pod name (downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// This replica's namespace (downward API); the Lease lives here.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: String,
}

/// Invalid timing or names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--retry-period-ms must be > 0")]
    ZeroRetryPeriod,
    #[error("--retry-period-ms ({retry_ms}) must be below --renew-deadline-ms ({renew_ms})")]
    RetryNotBelowDeadline { retry_ms: u64, renew_ms: u64 },
    #[error(
        "--renew-deadline-ms ({renew_ms}) must be below --lease-duration-ms ({lease_ms}), with a margin of at least 1/8 of the lease duration for clock drift and in-flight writes"
    )]
    DeadlineTooCloseToLease { renew_ms: u64, lease_ms: u64 },
    #[error(
        "--lease-duration-ms ({0}) is above {MAX_LEASE_DURATION_MS}: a hung leader would stop failovers for that long"
    )]
    LeaseTooLong(u64),
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

/// Everything the election runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    pub pod_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub controller_selector: String,
    /// Role label key on the controller pods (`--role-label`).
    pub role_label: String,
    /// Role value of the acting replica (`--active-value`).
    pub active_value: String,
    /// Role value of the other replicas (`--standby-value`).
    pub standby_value: String,
}

impl ElectionConfig {
    /// Build from the flags plus the controller's role label settings, and validate.
    pub fn new(
        args: &ElectionArgs,
        role_label: &str,
        active_value: &str,
        standby_value: &str,
    ) -> Result<Self, ConfigError> {
        let cfg = ElectionConfig {
            lease_name: args.lease_name.clone(),
            namespace: args.pod_namespace.clone(),
            pod_name: args.pod_name.clone(),
            lease_duration: Duration::from_millis(args.lease_duration_ms),
            renew_deadline: Duration::from_millis(args.renew_deadline_ms),
            retry_period: Duration::from_millis(args.retry_period_ms),
            controller_selector: args.controller_selector.clone(),
            role_label: role_label.to_owned(),
            active_value: active_value.to_owned(),
            standby_value: standby_value.to_owned(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the timing relations the safety argument relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("--lease-name", &self.lease_name),
            ("--pod-namespace", &self.namespace),
            ("--pod-name", &self.pod_name),
            ("--role-label", &self.role_label),
            ("--active-value", &self.active_value),
            ("--standby-value", &self.standby_value),
        ] {
            if v.is_empty() {
                return Err(ConfigError::Empty(name));
            }
        }
        let lease_ms = millis(self.lease_duration);
        let renew_ms = millis(self.renew_deadline);
        let retry_ms = millis(self.retry_period);
        if retry_ms == 0 {
            return Err(ConfigError::ZeroRetryPeriod);
        }
        if retry_ms >= renew_ms {
            return Err(ConfigError::RetryNotBelowDeadline { retry_ms, renew_ms });
        }
        // The margin lease - deadline absorbs clock-rate drift and a write that passed fence()
        // just before the deadline but reaches the API server later (docs/election.md).
        if renew_ms.saturating_add(lease_ms / 8) > lease_ms {
            return Err(ConfigError::DeadlineTooCloseToLease { renew_ms, lease_ms });
        }
        if lease_ms > MAX_LEASE_DURATION_MS {
            return Err(ConfigError::LeaseTooLong(lease_ms));
        }
        Ok(())
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        election: ElectionArgs,
    }

    #[test]
    fn flags_have_contract_defaults() {
        let cli = Cli::try_parse_from(["x", "--pod-name", "icr-a", "--pod-namespace", "ns"])
            .expect("parse");
        let a = cli.election;
        assert_eq!(a.lease_name, "hapod-controller");
        assert_eq!(a.controller_selector, "app=icr");
        assert_eq!(
            (a.lease_duration_ms, a.renew_deadline_ms, a.retry_period_ms),
            (3000, 2000, 500)
        );
        let cfg = ElectionConfig::new(&a, "role", "active", "standby").expect("valid defaults");
        assert_eq!(cfg.namespace, "ns");
    }

    #[test]
    fn rejects_unsafe_timings() {
        let mut a = ElectionArgs {
            lease_name: "l".into(),
            lease_duration_ms: 3000,
            renew_deadline_ms: 3000,
            retry_period_ms: 500,
            controller_selector: "app=icr".into(),
            pod_name: "p".into(),
            pod_namespace: "n".into(),
        };
        assert!(matches!(
            ElectionConfig::new(&a, "role", "active", "standby"),
            Err(ConfigError::DeadlineTooCloseToLease { .. })
        ));
        a.renew_deadline_ms = 400;
        assert!(matches!(
            ElectionConfig::new(&a, "role", "active", "standby"),
            Err(ConfigError::RetryNotBelowDeadline { .. })
        ));
        a.retry_period_ms = 0;
        assert_eq!(
            ElectionConfig::new(&a, "role", "active", "standby"),
            Err(ConfigError::ZeroRetryPeriod)
        );
    }
}
