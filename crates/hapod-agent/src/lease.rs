//! The agent's side of the application lease (protocol version 2), without I/O: which orders
//! to take, what role they leave the application in, and when a grant runs out. See
//! `docs/fencing.md` for why the bounds hold without synchronized clocks.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use hapod_protocol::{AgentRole, Order, Report, Role};

/// Rate error allowed between the agent's and the controller's monotonic clocks, in parts
/// per million: a grant is shortened by this share on the agent's side. NTP slews a clock by
/// at most 500 ppm; 1,000 leaves a margin for virtualised hosts.
pub const DEFAULT_DRIFT_PPM: u32 = 1_000;

/// What an order does to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderVerdict {
    /// A newer epoch: persist it, then [`LeaseHolder::apply`] and report.
    NewEpoch,
    /// The applied epoch again: [`LeaseHolder::apply`] (a renewal, or a move to standby) and
    /// report; nothing to persist.
    SameEpoch,
    /// Names another pod UID (a recreated pod of the same name, or a replay).
    WrongUid,
    /// An epoch older than the applied one (a late or replayed order): dropped.
    Stale,
}

/// The role the application may act in, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseHolder {
    /// Random per process, never 0: grants echo it, so a restarted agent ignores the grants
    /// of its predecessor.
    incarnation: u64,
    /// Base of the stamps sent in reports.
    started: Instant,
    drift_ppm: u32,
    /// This pod's UID when known (the downward API); orders naming another are refused.
    pod_uid: Option<String>,
    /// Highest epoch applied, by this process or (read back from the state file) a previous
    /// one.
    epoch: u64,
    /// Role of the last applied order; `None` before any.
    ordered: Option<Role>,
    /// End of the grant to act active.
    granted_until: Option<Instant>,
    /// Stepped down for good ([`LeaseHolder::relinquish`]): no order makes it active again.
    relinquished: bool,
}

impl LeaseHolder {
    /// `epoch_floor` is the last epoch a previous incarnation applied (0 if none).
    pub fn new(pod_uid: Option<String>, epoch_floor: u64, drift_ppm: u32, now: Instant) -> Self {
        let incarnation = NonZeroU64::new(rand::random::<u64>()).unwrap_or(NonZeroU64::MIN);
        Self::with_incarnation(incarnation, pod_uid, epoch_floor, drift_ppm, now)
    }

    /// As [`LeaseHolder::new`], with a given incarnation instead of a random one: for
    /// deterministic simulations (the model check replays the same steps to the same states).
    /// A real process must not use it: two processes of one pod must never share an
    /// incarnation, or the restarted one would take its predecessor's grants.
    #[doc(hidden)]
    pub fn with_incarnation(
        incarnation: NonZeroU64,
        pod_uid: Option<String>,
        epoch_floor: u64,
        drift_ppm: u32,
        now: Instant,
    ) -> Self {
        LeaseHolder {
            incarnation: incarnation.get(),
            started: now,
            drift_ppm: drift_ppm.min(999_999),
            pod_uid,
            epoch: epoch_floor,
            ordered: None,
            granted_until: None,
            relinquished: false,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// [`LeaseHolder::relinquish`] was called.
    pub fn relinquished(&self) -> bool {
        self.relinquished
    }

    /// The role the application may act in at `now`: active only under a live grant.
    pub fn role(&self, now: Instant) -> Option<Role> {
        match self.ordered {
            Some(Role::Active) if self.granted_until.is_some_and(|until| now < until) => {
                Some(Role::Active)
            }
            Some(_) => Some(Role::Standby),
            None => None,
        }
    }

    /// The role as reported to the controller: a lapsed grant is told apart from standby.
    pub fn agent_role(&self, now: Instant) -> Option<AgentRole> {
        match (self.ordered?, self.role(now)?) {
            (Role::Active, Role::Active) => Some(AgentRole::Active),
            (Role::Active, Role::Standby) => Some(AgentRole::Lapsed),
            (Role::Standby, _) => Some(AgentRole::Standby),
        }
    }

    /// When the role changes by itself (the grant runs out), if it will.
    pub fn expires_at(&self, now: Instant) -> Option<Instant> {
        self.granted_until
            .filter(|until| now < *until && self.ordered == Some(Role::Active))
    }

    /// Judges an order already checked for this pod's name and authenticity.
    pub fn judge(&self, order: &Order) -> OrderVerdict {
        if self
            .pod_uid
            .as_ref()
            .is_some_and(|uid| *uid != order.pod_uid)
        {
            return OrderVerdict::WrongUid;
        }
        match order.epoch {
            e if e > self.epoch => OrderVerdict::NewEpoch,
            e if e == self.epoch && self.ordered.is_some() => OrderVerdict::SameEpoch,
            // The floor read back from the state file, nothing applied since: an order to stand
            // by at it is taken (within an epoch the role only moves toward standby, so no later
            // order of the epoch can make this agent act), or a restarted standby would refuse
            // every order its controller sends it and stay without a role.
            e if e == self.epoch && order.role == Role::Standby => OrderVerdict::SameEpoch,
            // An order to act at the floor: the order that set it was applied by a previous
            // incarnation and is not taken again.
            _ => OrderVerdict::Stale,
        }
    }

    /// Applies an order judged `NewEpoch` or `SameEpoch` (the caller persisted a new epoch
    /// first). Within one epoch the role only moves towards standby, and a grant only
    /// extends the lease.
    pub fn apply(&mut self, order: &Order) {
        let new_epoch = order.epoch > self.epoch;
        if new_epoch {
            self.epoch = order.epoch;
            self.ordered = Some(order.role);
            self.granted_until = None;
        } else if order.role == Role::Standby {
            self.ordered = Some(Role::Standby);
            self.granted_until = None;
        }
        if self.relinquished {
            self.ordered = Some(Role::Standby);
        }
        if self.ordered != Some(Role::Active) {
            return;
        }
        if let Some(until) = order.grant.and_then(|grant| self.grant_end(&grant)) {
            self.granted_until = Some(self.granted_until.map_or(until, |old| old.max(until)));
        }
    }

    /// Stops acting for good, before the process exits: standby at the applied epoch, and
    /// no later order, of this epoch or a newer one, makes it active again. Its reports then
    /// tell the controller that no grant of this agent is live, so a successor need not
    /// wait for the grant to run out.
    pub fn relinquish(&mut self) {
        self.relinquished = true;
        self.granted_until = None;
        if self.ordered.is_some() {
            self.ordered = Some(Role::Standby);
        }
    }

    /// End of a grant on this agent's clock: the echoed stamp plus the lease shortened by the
    /// drift allowance. `None` for another incarnation's grant or a stamp never sent.
    fn grant_end(&self, grant: &hapod_protocol::Grant) -> Option<Instant> {
        if grant.incarnation != self.incarnation {
            return None;
        }
        let stamped = self
            .started
            .checked_add(Duration::from_nanos(grant.stamp_nanos))?;
        let lease = grant.lease();
        let allowance = lease.mul_f64(f64::from(self.drift_ppm) / 1e6);
        stamped.checked_add(lease.saturating_sub(allowance))
    }

    /// The report answering `message_id` (0 for none) at `now`.
    pub fn report(&self, message_id: u64, now: Instant) -> Report {
        let remaining = self
            .expires_at(now)
            .map_or(Duration::ZERO, |until| until - now);
        Report {
            message_id,
            epoch: self.epoch,
            role: self.agent_role(now),
            incarnation: self.incarnation,
            stamp_nanos: u64::try_from(now.duration_since(self.started).as_nanos())
                .unwrap_or(u64::MAX),
            grant_remaining_millis: u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX),
            pod_uid: self.pod_uid.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapod_protocol::Grant;
    use proptest::prelude::*;

    const UID: &str = "uid-1";

    fn holder(now: Instant) -> LeaseHolder {
        LeaseHolder::new(Some(UID.into()), 0, DEFAULT_DRIFT_PPM, now)
    }

    fn order(role: Role, epoch: u64, grant: Option<Grant>) -> Order {
        Order::new("g", "p", UID, role, epoch, grant)
    }

    /// A grant echoing `holder`'s report sent at `stamped`.
    fn grant(holder: &LeaseHolder, stamped: Instant, lease_millis: u32) -> Grant {
        let report = holder.report(1, stamped);
        Grant {
            incarnation: report.incarnation,
            stamp_nanos: report.stamp_nanos,
            lease_millis,
        }
    }

    fn take(holder: &mut LeaseHolder, order: &Order) -> OrderVerdict {
        let verdict = holder.judge(order);
        if matches!(verdict, OrderVerdict::NewEpoch | OrderVerdict::SameEpoch) {
            holder.apply(order);
        }
        verdict
    }

    #[test]
    fn an_active_order_with_a_grant_acts_until_the_grant_ends() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        let g = grant(&h, t0, 300);
        let at = t0 + Duration::from_millis(5);
        assert_eq!(
            take(&mut h, &order(Role::Active, 1, Some(g))),
            OrderVerdict::NewEpoch
        );
        assert_eq!(h.role(at), Some(Role::Active));
        // measured from the report's stamp, shortened by the drift allowance
        let end = t0 + Duration::from_millis(300) - Duration::from_micros(300);
        assert_eq!(h.expires_at(at), Some(end));
        assert_eq!(h.role(end - Duration::from_nanos(1)), Some(Role::Active));
        assert_eq!(h.role(end), Some(Role::Standby));
        assert_eq!(h.report(0, end).role, Some(AgentRole::Lapsed));
    }

    #[test]
    fn an_active_order_without_a_grant_does_not_act() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        take(&mut h, &order(Role::Active, 1, None));
        assert_eq!(h.role(t0), Some(Role::Standby));
        // the next order of the same epoch brings the grant
        let g = grant(&h, t0, 300);
        let renewal = order(Role::Active, 1, Some(g));
        assert_eq!(take(&mut h, &renewal), OrderVerdict::SameEpoch);
        assert_eq!(h.role(t0), Some(Role::Active));
    }

    #[test]
    fn renewals_extend_and_never_shorten_the_grant() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        let late = t0 + Duration::from_millis(100);
        let g = grant(&h, late, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        let until = h.expires_at(late).unwrap();
        // an older echo arriving late (reordered datagram) does not shorten it
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        assert_eq!(h.expires_at(late), Some(until));
    }

    #[test]
    fn a_grant_of_another_incarnation_is_worthless() {
        let t0 = Instant::now();
        let before_restart = holder(t0);
        let stolen = grant(&before_restart, t0, 60_000);
        let mut restarted = holder(t0);
        take(&mut restarted, &order(Role::Active, 1, Some(stolen)));
        assert_eq!(restarted.role(t0), Some(Role::Standby));
    }

    #[test]
    fn a_standby_order_ends_the_grant_at_once_even_in_the_same_epoch() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        assert_eq!(
            take(&mut h, &order(Role::Standby, 1, None)),
            OrderVerdict::SameEpoch
        );
        assert_eq!(h.role(t0), Some(Role::Standby));
        // and an active order of that epoch (late or replayed) does not bring it back
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        assert_eq!(h.role(t0), Some(Role::Standby));
    }

    #[test]
    fn a_relinquished_holder_reports_standby_and_takes_no_grant_again() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        h.relinquish();
        assert_eq!(h.role(t0), Some(Role::Standby));
        let r = h.report(0, t0);
        assert_eq!((r.epoch, r.role), (1, Some(AgentRole::Standby)));
        assert_eq!(r.grant_remaining_millis, 0);
        // neither a renewal of its epoch nor a newer epoch makes it act again
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 1, Some(g)));
        assert_eq!(h.role(t0), Some(Role::Standby));
        let g = grant(&h, t0, 300);
        assert_eq!(
            take(&mut h, &order(Role::Active, 2, Some(g))),
            OrderVerdict::NewEpoch
        );
        assert_eq!(h.role(t0), Some(Role::Standby));
        assert_eq!(h.report(0, t0).epoch, 2);
    }

    #[test]
    fn a_restarted_agent_stands_by_at_its_floor_but_does_not_act_on_it() {
        let t0 = Instant::now();
        let mut h = LeaseHolder::new(Some(UID.into()), 5, DEFAULT_DRIFT_PPM, t0);
        assert_eq!(h.agent_role(t0), None);
        assert_eq!(
            take(&mut h, &order(Role::Standby, 5, None)),
            OrderVerdict::SameEpoch
        );
        assert_eq!(h.agent_role(t0), Some(AgentRole::Standby));
        assert_eq!(h.epoch(), 5);
        // an order to act at that epoch, even with this incarnation's grant, does not
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 5, Some(g)));
        assert_eq!(h.role(t0), Some(Role::Standby));
    }

    #[test]
    fn older_epochs_other_uids_and_the_persisted_floor_are_refused() {
        let t0 = Instant::now();
        let mut h = LeaseHolder::new(Some(UID.into()), 5, DEFAULT_DRIFT_PPM, t0);
        // the order that set the floor, replayed into the restarted agent
        assert_eq!(h.judge(&order(Role::Active, 5, None)), OrderVerdict::Stale);
        assert_eq!(h.judge(&order(Role::Active, 4, None)), OrderVerdict::Stale);
        let other = Order::new("g", "p", "uid-of-a-recreated-pod", Role::Active, 6, None);
        assert_eq!(h.judge(&other), OrderVerdict::WrongUid);
        assert_eq!(
            take(&mut h, &order(Role::Standby, 6, None)),
            OrderVerdict::NewEpoch
        );
        assert_eq!(h.epoch(), 6);
    }

    #[test]
    fn a_report_states_the_role_epoch_and_what_is_left_of_the_grant() {
        let t0 = Instant::now();
        let mut h = holder(t0);
        assert_eq!(h.report(9, t0).role, None);
        let g = grant(&h, t0, 300);
        take(&mut h, &order(Role::Active, 3, Some(g)));
        let r = h.report(9, t0 + Duration::from_millis(100));
        assert_eq!(
            (r.message_id, r.epoch, r.role),
            (9, 3, Some(AgentRole::Active))
        );
        assert_eq!(r.grant_remaining_millis, 199);
        assert_eq!(r.stamp_nanos, 100_000_000);
        assert_eq!(r.pod_uid, UID);
    }

    proptest! {
        /// The bound of `docs/fencing.md`: however late the order arrives and however the
        /// clocks drift within the allowance, the agent stops acting no later (in real time)
        /// than the controller's own count of the grant, which starts when it sends the order.
        #[test]
        fn the_agent_stops_before_the_controller_counts_the_grant_as_over(
            report_to_order_ms in 0u64..1_000,
            order_delay_ms in 0u64..1_000,
            lease_millis in 1u32..5_000,
            agent_rate_ppm in -1_000i64..=1_000,
            controller_rate_ppm in -1_000i64..=1_000,
        ) {
            // Real time 0: the agent sends its report. The controller sends the order
            // `report_to_order_ms` later (it cannot send it before the report arrived) and
            // counts the grant as live for lease × (1 + drift) on its clock, which runs at
            // 1 + controller_rate in real time.
            let lease = f64::from(lease_millis);
            let drift = f64::from(DEFAULT_DRIFT_PPM) / 1e6;
            let controller_rate = 1.0 + controller_rate_ppm as f64 / 1e6;
            let controller_end = report_to_order_ms as f64 + lease * (1.0 + drift) / controller_rate;
            // The agent's clock runs at 1 + agent_rate; it ends the grant when its clock has
            // advanced the shortened lease from the stamp.
            let agent_rate = 1.0 + agent_rate_ppm as f64 / 1e6;
            let t0 = Instant::now();
            let mut h = holder(t0);
            let g = grant(&h, t0, lease_millis);
            let arrival = t0 + Duration::from_millis(report_to_order_ms + order_delay_ms);
            take(&mut h, &order(Role::Active, 1, Some(g)));
            if let Some(until) = h.expires_at(arrival) {
                let agent_clock_span = (until - t0).as_secs_f64() * 1e3;
                let agent_end = agent_clock_span / agent_rate;
                prop_assert!(agent_end <= controller_end + 1e-5,
                    "agent acts until {agent_end} ms, controller counts until {controller_end} ms");
            }
        }
    }
}
