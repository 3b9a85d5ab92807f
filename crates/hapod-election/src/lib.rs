//! Leader election for the hapod controller (design in docs/election.md).
//!
//! - [`decide_leadership`]: the pure decision (lease view + observation + local monotonic now).
//! - [`LeaderElector`] / [`LeaderHandle`]: the kube runtime around it. The controller calls
//!   [`LeaderHandle::fence`] right before every write, follows
//!   [`LeaderHandle::subscribe`] to start and stop acting, and calls
//!   [`LeaderHandle::release`] on SIGTERM.
//! - [`ElectionArgs`]: the clap flags to `#[command(flatten)]`.
//!
//! ```no_run
//! # async fn wire(client: kube::Client, args: hapod_election::ElectionArgs) -> anyhow_free::R {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let cfg = hapod_election::ElectionConfig::new(&args, "role", "active", "standby")?;
//! let (handle, elector) = hapod_election::LeaderElector::new(client, cfg, &mut registry)?;
//! tokio::spawn(elector.run());
//! let mut state = handle.subscribe();
//! // ... on every write: let term = handle.fence()?; epoch = term.epoch(seq) ...
//! // ... on SIGTERM: handle.release().await;
//! # Ok(()) }
//! # mod anyhow_free { pub type R = Result<(), Box<dyn std::error::Error>>; }
//! ```

mod config;
mod leadership;
mod lease;
mod metrics;
mod pods;
mod runtime;

pub use config::{
    ConfigError, DEFAULT_LEASE_DURATION_MS, DEFAULT_RENEW_DEADLINE_MS, DEFAULT_RETRY_PERIOD_MS,
    ElectionArgs, ElectionConfig,
};
pub use leadership::{
    AcquireReason, DeathCause, Decision, Holder, LeaseView, Me, Millis, Observation, PodHealth,
    Term, decide_leadership, term_floor_from_wall_clock,
};
pub use lease::{
    HOLDER_CONTAINER_ANNOTATION, HOLDER_POD_ANNOTATION, HOLDER_POD_UID_ANNOTATION,
    LEASE_DURATION_ANNOTATION, ParsedLease, TERM_ANNOTATION,
};
pub use runtime::{LeaderElector, LeaderHandle, LeaderState, NotLeader};
