//! The controller's book of agents for the application lease (see `docs/fencing.md`),
//! without I/O: the newest report of each agent, which the next grant to it echoes, and when
//! each was last heard. Which pod may be granted, and until when a grant may be live, is
//! decided by the controller's core; this book only turns that into orders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::codec::Role;
use crate::lease::{Grant, Order, Report};

/// Lease length and drift allowance shared by the controller and its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// How long a grant lets the agent act, from its echoed report.
    pub lease: Duration,
    /// Clock rate error allowed between any two hosts, parts per million.
    pub drift_ppm: u32,
}

impl LeaseTerms {
    /// How long the controller's clock counts a grant as live: `lease × (1 + ρ)`, rounded up.
    pub fn live_span(&self) -> Duration {
        let nanos = self.lease.as_nanos() * (1_000_000 + u128::from(self.drift_ppm));
        Duration::from_nanos(u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Clone)]
struct Heard {
    report: Report,
    at: Instant,
}

/// Newest reports, by pod UID.
#[derive(Debug, Clone)]
pub struct AgentReports {
    terms: LeaseTerms,
    agents: HashMap<String, Heard>,
}

impl AgentReports {
    pub fn new(terms: LeaseTerms) -> Self {
        AgentReports {
            terms,
            agents: HashMap::new(),
        }
    }

    pub fn terms(&self) -> LeaseTerms {
        self.terms
    }

    /// The order to send. With `grant` (only for the active role), it carries a grant echoing
    /// the newest report of the pod's agent; without a report there is none yet (the agent
    /// answers, and the next order has one).
    pub fn order(
        &self,
        group: &str,
        pod: &str,
        pod_uid: &str,
        role: Role,
        epoch: u64,
        grant: bool,
    ) -> Order {
        let grant = self
            .agents
            .get(pod_uid)
            .filter(|_| grant && role == Role::Active)
            .map(|heard| Grant {
                incarnation: heard.report.incarnation,
                stamp_nanos: heard.report.stamp_nanos,
                lease_millis: u32::try_from(self.terms.lease.as_millis()).unwrap_or(u32::MAX),
            });
        Order::new(group, pod, pod_uid, role, epoch, grant)
    }

    /// Takes a report; answers whether it is the agent's newest (a report of a new
    /// incarnation, or a later stamp of the same). Reordered older reports are ignored.
    pub fn on_report(&mut self, report: Report, now: Instant) -> bool {
        let newer = self.agents.get(&report.pod_uid).is_none_or(|old| {
            old.report.incarnation != report.incarnation
                || old.report.stamp_nanos < report.stamp_nanos
        });
        if newer {
            self.agents
                .insert(report.pod_uid.clone(), Heard { report, at: now });
        }
        newer
    }

    /// The pod's newest report.
    pub fn reported(&self, pod_uid: &str) -> Option<&Report> {
        self.agents.get(pod_uid).map(|heard| &heard.report)
    }

    /// When the pod's agent was last heard.
    pub fn heard_at(&self, pod_uid: &str) -> Option<Instant> {
        self.agents.get(pod_uid).map(|heard| heard.at)
    }

    /// Forgets a pod that left.
    pub fn forget(&mut self, pod_uid: &str) {
        self.agents.remove(pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::AgentRole;

    const TERMS: LeaseTerms = LeaseTerms {
        lease: Duration::from_millis(300),
        drift_ppm: 1_000,
    };

    fn report(incarnation: u64, stamp_nanos: u64) -> Report {
        Report {
            message_id: 0,
            epoch: 1,
            role: Some(AgentRole::Standby),
            incarnation,
            stamp_nanos,
            grant_remaining_millis: 0,
            pod_uid: "a-uid".into(),
        }
    }

    #[test]
    fn the_live_span_is_the_lease_stretched_by_the_drift_allowance() {
        assert_eq!(TERMS.live_span(), Duration::from_micros(300_300));
    }

    #[test]
    fn a_granted_order_echoes_the_newest_report() {
        let t0 = Instant::now();
        let mut book = AgentReports::new(TERMS);
        let first = book.order("g", "a", "a-uid", Role::Active, 1, true);
        assert_eq!(first.grant, None, "no report yet: no grant");
        assert!(book.on_report(report(7, 100), t0));
        assert!(!book.on_report(report(7, 50), t0), "reordered, older");
        let grant = book.order("g", "a", "a-uid", Role::Active, 1, true).grant;
        assert_eq!(
            grant.map(|g| (g.incarnation, g.stamp_nanos, g.lease_millis)),
            Some((7, 100, 300))
        );
        assert_eq!(book.heard_at("a-uid"), Some(t0));
    }

    #[test]
    fn no_grant_unless_asked_for_and_active() {
        let mut book = AgentReports::new(TERMS);
        book.on_report(report(7, 1), Instant::now());
        assert_eq!(
            book.order("g", "a", "a-uid", Role::Active, 1, false).grant,
            None
        );
        assert_eq!(
            book.order("g", "a", "a-uid", Role::Standby, 1, true).grant,
            None
        );
    }

    #[test]
    fn a_restarted_agent_is_echoed_with_its_new_incarnation() {
        let t0 = Instant::now();
        let mut book = AgentReports::new(TERMS);
        book.on_report(report(7, 900), t0);
        assert!(book.on_report(report(8, 10), t0));
        let grant = book.order("g", "a", "a-uid", Role::Active, 1, true).grant;
        assert_eq!(grant.map(|g| (g.incarnation, g.stamp_nanos)), Some((8, 10)));
        book.forget("a-uid");
        assert!(book.reported("a-uid").is_none());
    }
}
