//! The controller's side of the application lease, without I/O: which grant each order
//! carries, and until when a grant may still be live on the agent (see `docs/fencing.md`).
//!
//! The ledger answers the one question promotion depends on: "could pod X still be acting
//! active?" A grant counts as live for `lease × (1 + ρ)` on this clock from the moment the
//! order carrying it was made, which is never before the agent's own end of it. Grants made by
//! another controller (before this one took over) are unknown, so a new ledger treats every
//! pod as possibly live until the previous sender was fenced plus one such lease.

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
    /// How long this clock counts a grant as live: `lease × (1 + ρ)`, rounded up.
    pub fn live_span(&self) -> Duration {
        let nanos = self.lease.as_nanos() * (1_000_000 + u128::from(self.drift_ppm));
        Duration::from_nanos(u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }
}

/// What the controller knows of one pod's agent.
#[derive(Debug, Clone, Default)]
struct PodLedger {
    /// Newest report: the stamp that the next grant echoes.
    report: Option<Report>,
    /// When the newest report arrived (for detection: an agent that stopped answering).
    heard_at: Option<Instant>,
    /// End of the latest grant sent, on this clock.
    live_until: Option<Instant>,
}

/// Grants sent and reports received, by pod UID.
#[derive(Debug, Clone)]
pub struct GrantLedger {
    terms: LeaseTerms,
    /// Until when grants sent by a previous controller may be live.
    inherited_until: Instant,
    pods: HashMap<String, PodLedger>,
}

impl GrantLedger {
    /// A ledger for a controller that may act from `now`. `previous_sender_fenced_at` is the
    /// latest time any earlier controller may still have sent a grant (its renew deadline;
    /// `now` when it is known to have stopped): until that plus one live span, every pod is
    /// taken as possibly acting.
    pub fn new(terms: LeaseTerms, previous_sender_fenced_at: Instant, now: Instant) -> Self {
        GrantLedger {
            terms,
            inherited_until: previous_sender_fenced_at.max(now) + terms.live_span(),
            pods: HashMap::new(),
        }
    }

    pub fn terms(&self) -> LeaseTerms {
        self.terms
    }

    /// The order to send now. An active order carries a grant echoing the newest report of
    /// that pod's agent, and is recorded as live for one live span from `now`; without a
    /// report there is no grant (the agent reports and the next order has one).
    pub fn order(
        &mut self,
        group: &str,
        pod: &str,
        pod_uid: &str,
        role: Role,
        epoch: u64,
        now: Instant,
    ) -> Order {
        let entry = self.pods.entry(pod_uid.to_owned()).or_default();
        let grant = match (role, &entry.report) {
            (Role::Active, Some(report)) => {
                entry.live_until = Some(now + self.terms.live_span());
                Some(Grant {
                    incarnation: report.incarnation,
                    stamp_nanos: report.stamp_nanos,
                    lease_millis: u32::try_from(self.terms.lease.as_millis()).unwrap_or(u32::MAX),
                })
            }
            _ => None,
        };
        Order::new(group, pod, pod_uid, role, epoch, grant)
    }

    /// Takes a report: the newest stamp of the newest incarnation is kept for the next grant.
    /// A report from a new incarnation (the agent restarted) replaces the old one.
    pub fn on_report(&mut self, report: Report, now: Instant) {
        let entry = self.pods.entry(report.pod_uid.clone()).or_default();
        let newer = entry.report.as_ref().is_none_or(|old| {
            old.incarnation != report.incarnation || old.stamp_nanos < report.stamp_nanos
        });
        if newer {
            entry.report = Some(report);
            entry.heard_at = Some(now);
        }
    }

    /// Until when pod `pod_uid` may still act active on a grant: the end of the latest grant
    /// sent to it, or of what a previous controller may have sent. `None`: it cannot be.
    pub fn live_until(&self, pod_uid: &str, now: Instant) -> Option<Instant> {
        let sent = self.pods.get(pod_uid).and_then(|pod| pod.live_until);
        let inherited = Some(self.inherited_until);
        sent.max(inherited).filter(|until| now < *until)
    }

    /// Whether the pod's agent has said it stands by at `epoch` or later, so that it acts on
    /// no grant whatever the clocks say.
    pub fn stood_down(&self, pod_uid: &str, epoch: u64) -> bool {
        self.reported(pod_uid)
            .is_some_and(|r| r.epoch >= epoch && r.role != Some(Role::Active))
    }

    /// The pod's newest report.
    pub fn reported(&self, pod_uid: &str) -> Option<&Report> {
        self.pods.get(pod_uid)?.report.as_ref()
    }

    /// When the pod's agent was last heard.
    pub fn heard_at(&self, pod_uid: &str) -> Option<Instant> {
        self.pods.get(pod_uid)?.heard_at
    }

    /// Forgets a pod that is gone, unless a grant to it may still be live.
    pub fn forget(&mut self, pod_uid: &str, now: Instant) {
        if self.live_until(pod_uid, now).is_none() {
            self.pods.remove(pod_uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMS: LeaseTerms = LeaseTerms {
        lease: Duration::from_millis(300),
        drift_ppm: 1_000,
    };

    fn report(incarnation: u64, stamp_nanos: u64, role: Option<Role>, epoch: u64) -> Report {
        Report {
            message_id: 0,
            epoch,
            role,
            incarnation,
            stamp_nanos,
            grant_remaining_millis: 0,
            pod_uid: "a-uid".into(),
        }
    }

    /// A ledger whose predecessor's grants are over at `t0`.
    fn fresh(t0: Instant) -> GrantLedger {
        GrantLedger::new(TERMS, t0 - TERMS.live_span(), t0 - TERMS.live_span())
    }

    #[test]
    fn the_live_span_is_the_lease_stretched_by_the_drift_allowance() {
        assert_eq!(TERMS.live_span(), Duration::from_micros(300_300));
    }

    #[test]
    fn an_active_order_echoes_the_newest_report_and_counts_as_live() {
        let t0 = Instant::now();
        let mut ledger = fresh(t0);
        let first = ledger.order("g", "a", "a-uid", Role::Active, 1, t0);
        assert_eq!(first.grant, None, "no report yet: no grant");
        assert_eq!(ledger.live_until("a-uid", t0), None);
        ledger.on_report(report(7, 100, Some(Role::Standby), 1), t0);
        ledger.on_report(report(7, 50, Some(Role::Standby), 1), t0); // reordered, older
        let second = ledger.order("g", "a", "a-uid", Role::Active, 1, t0);
        let grant = second.grant.unwrap();
        assert_eq!(
            (grant.incarnation, grant.stamp_nanos, grant.lease_millis),
            (7, 100, 300)
        );
        assert_eq!(ledger.live_until("a-uid", t0), Some(t0 + TERMS.live_span()));
        assert_eq!(ledger.live_until("a-uid", t0 + TERMS.live_span()), None);
    }

    #[test]
    fn a_restarted_agent_is_echoed_with_its_new_incarnation() {
        let t0 = Instant::now();
        let mut ledger = fresh(t0);
        ledger.on_report(report(7, 900, None, 0), t0);
        ledger.on_report(report(8, 10, None, 0), t0);
        let grant = ledger.order("g", "a", "a-uid", Role::Active, 1, t0).grant;
        assert_eq!(grant.map(|g| (g.incarnation, g.stamp_nanos)), Some((8, 10)));
    }

    #[test]
    fn standby_orders_carry_no_grant_and_do_not_extend_one() {
        let t0 = Instant::now();
        let mut ledger = fresh(t0);
        ledger.on_report(report(7, 1, None, 0), t0);
        ledger.order("g", "a", "a-uid", Role::Active, 1, t0);
        let later = t0 + Duration::from_millis(100);
        let standby = ledger.order("g", "a", "a-uid", Role::Standby, 2, later);
        assert_eq!(standby.grant, None);
        assert_eq!(
            ledger.live_until("a-uid", later),
            Some(t0 + TERMS.live_span())
        );
    }

    #[test]
    fn a_new_controller_takes_every_pod_as_live_until_its_predecessor_could_have_stopped() {
        let t0 = Instant::now();
        let fenced = t0 + Duration::from_secs(2);
        let ledger = GrantLedger::new(TERMS, fenced, t0);
        assert_eq!(
            ledger.live_until("never-seen", t0),
            Some(fenced + TERMS.live_span())
        );
        assert_eq!(
            ledger.live_until("never-seen", fenced + TERMS.live_span()),
            None
        );
    }

    #[test]
    fn standing_down_is_a_standby_or_unknown_report_at_the_epoch_or_later() {
        let t0 = Instant::now();
        let mut ledger = fresh(t0);
        ledger.on_report(report(7, 1, Some(Role::Active), 5), t0);
        assert!(!ledger.stood_down("a-uid", 5));
        ledger.on_report(report(7, 2, Some(Role::Standby), 4), t0);
        assert!(
            !ledger.stood_down("a-uid", 5),
            "an older epoch proves nothing"
        );
        ledger.on_report(report(7, 3, Some(Role::Standby), 5), t0);
        assert!(ledger.stood_down("a-uid", 5));
    }

    #[test]
    fn a_pod_is_forgotten_only_once_its_grant_is_over() {
        let t0 = Instant::now();
        let mut ledger = fresh(t0);
        ledger.on_report(report(7, 1, None, 0), t0);
        ledger.order("g", "a", "a-uid", Role::Active, 1, t0);
        ledger.forget("a-uid", t0);
        assert!(ledger.reported("a-uid").is_some());
        ledger.forget("a-uid", t0 + TERMS.live_span());
        assert!(ledger.reported("a-uid").is_none());
    }
}
