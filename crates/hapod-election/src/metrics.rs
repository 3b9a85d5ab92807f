//! Election metrics (prometheus-client).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Handles to the election metrics; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    transitions: Family<Vec<(String, String)>, Counter>,
    is_leader: Gauge,
    term_recoveries: Counter,
    last_renew: Arc<Mutex<Option<Instant>>>,
}

/// Computes "seconds since last renew" at scrape time, so a hung election loop shows a
/// growing value instead of a frozen one.
#[derive(Debug)]
struct SinceRenew(Arc<Mutex<Option<Instant>>>);

impl Collector for SinceRenew {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let last = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        // No renew observed yet: export nothing rather than a made-up number.
        let Some(last) = last else { return Ok(()) };
        let gauge = ConstGauge::new(last.elapsed().as_secs_f64());
        let metric = encoder.encode_descriptor(
            "hapod_election_seconds_since_last_renew",
            "Seconds since this replica last saw the Lease renewed or acquired (its own write or the holder's)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            transitions: Family::default(),
            is_leader: Gauge::default(),
            term_recoveries: Counter::default(),
            last_renew: Arc::default(),
        };
        registry.register(
            "hapod_election_leader_transitions",
            "Times this replica started (to=leader) or stopped (to=standby) acting",
            m.transitions.clone(),
        );
        registry.register(
            "hapod_election_is_leader",
            "1 while this replica holds the Lease and is inside its renew deadline",
            m.is_leader.clone(),
        );
        registry.register(
            "hapod_election_term_recoveries",
            "Acquisitions over a Lease whose term could not grow (hapod.io/term edited to its maximum)",
            m.term_recoveries.clone(),
        );
        registry.register_collector(Box::new(SinceRenew(m.last_renew.clone())));
        m
    }

    pub(crate) fn became(&self, leader: bool) {
        let to = if leader { "leader" } else { "standby" };
        self.transitions
            .get_or_create(&vec![("to".to_owned(), to.to_owned())])
            .inc();
        self.is_leader.set(i64::from(leader));
    }

    pub(crate) fn term_recovered(&self) {
        self.term_recoveries.inc();
    }

    pub(crate) fn renewed_at(&self, at: Instant) {
        *self.last_renew.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn exports_all_three() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        assert!(!out.contains("since_last_renew"));
        m.became(true);
        m.renewed_at(Instant::now());
        let mut out = String::new();
        encode(&mut out, &reg).expect("encode");
        assert!(out.contains("hapod_election_leader_transitions_total{to=\"leader\"} 1"));
        assert!(out.contains("hapod_election_is_leader 1"));
        assert!(out.contains("hapod_election_seconds_since_last_renew "));
    }
}
