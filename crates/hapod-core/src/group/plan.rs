//! Planning: given what the group knows, the next write or notification. Phases in order:
//! demote extra actives, promote, announce a kept active, kill dead critical pods, repair
//! labels; one write at a time (see the parent module).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::grants::LiveGrant;
use super::{
    Action, Endpoint, GroupState, Health, InFlight, Notify, PodEntry, PodRef, PromotionReason,
    Purpose, Record, RecordKind, RoleOrder, Route, VANISH_WAIT, Write, WriteKind,
};
use crate::epoch;
use crate::pod::{Phase, Role};

impl GroupState {
    /// Next epoch for the group in `term`: above every epoch of `term` issued by this process
    /// or carried by an active pod. Older terms' epochs are below it by construction. One of a
    /// newer term cannot be legitimate while this replica holds the Lease: it is reported
    /// (see `report_future_epochs`) and ignored, so failover goes on. Epochs on pods not
    /// labeled active never count: they are left over from earlier promotions. `None` only
    /// when the sequence of `term` is exhausted.
    pub(super) fn allocate_epoch(&mut self, term: u32) -> Option<u64> {
        let config = Arc::clone(&self.config);
        let used = self
            .pods
            .values()
            .filter(|e| e.role(&config) == Role::Active)
            .filter_map(|e| e.view.epoch)
            .chain([self.highest_epoch])
            // An agent that applied an epoch refuses anything not newer.
            .chain(self.grants.reported.values().map(|(_, epoch)| *epoch))
            .filter(|&e| epoch::term_of(e) == term)
            .map(epoch::seq_of)
            .max()
            .unwrap_or(0);
        self.seq = self.seq.max(used).checked_add(1)?;
        let fresh = epoch::compose(term, self.seq);
        self.highest_epoch = self.highest_epoch.max(fresh);
        Some(fresh)
    }

    /// Reports, once per pod and epoch while acting, an active pod whose epoch belongs to a
    /// term above the acting one.
    pub(super) fn report_future_epochs(&mut self, out: &mut Vec<Action>) {
        let Some(term) = self.term else {
            return;
        };
        for entry in self.pods.values() {
            let Some(epoch) = entry.view.epoch else {
                continue;
            };
            if entry.role(&self.config) == Role::Active
                && epoch::term_of(epoch) > term
                && self.future_reported.insert((entry.view.uid.clone(), epoch))
            {
                out.push(Action::Record(Record {
                    pod: Some(entry.pod_ref()),
                    kind: RecordKind::FutureEpoch { epoch },
                }));
            }
        }
    }

    fn issue(&mut self, entry_name: &str, kind: WriteKind, out: &mut Vec<Action>) {
        let Some(entry) = self.pods.get(entry_name) else {
            return;
        };
        let op = self.next_op;
        self.next_op += 1;
        let write = Write {
            op,
            pod: entry.view.name.clone(),
            uid: entry.view.uid.clone(),
            kind,
        };
        self.in_flight = Some(InFlight {
            op,
            pod: write.pod.clone(),
            uid: write.uid.clone(),
            kind: write.kind.clone(),
            trigger_at: self.trigger.map(|t| t.at),
        });
        out.push(Action::Write(write));
    }

    fn set_role(
        &mut self,
        name: &str,
        role: Role,
        epoch: Option<u64>,
        purpose: Purpose,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.pods.get(name) else {
            return;
        };
        let kind = WriteKind::SetRole {
            resource_version: entry.view.resource_version.clone(),
            role,
            epoch,
            purpose,
        };
        self.issue(name, kind, out);
    }

    /// Issues the next write the group needs, most urgent first, so a lost active is always
    /// handled before kills and label repairs. Each phase answers whether the group now waits
    /// (a write issued, or one it must wait for). Nothing while another write is in flight,
    /// while backing off after a failed write, or while standby. In a paused group only what
    /// changes no role: the kept active is announced, pods without a role labeled standby.
    pub(super) fn plan(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(term) = self.term else {
            return;
        };
        if self.in_flight.is_some() || self.backoff_until.is_some_and(|t| now < t) {
            return;
        }
        self.backoff_until = None;
        let keep = self.kept_active(now).map(|e| e.view.name.clone());
        let keep = keep.as_deref();
        if self.is_paused() {
            if !self.announce_kept_active(keep, term, now, out) {
                self.repair_labels(now, out);
            }
            return;
        }
        // Looked at again when the grace of a not-Ready active is over.
        if let Some((_, until)) = self.graced_active(now) {
            out.push(Action::WakeAfter(until - now));
        }
        if self.demote_extra_active(keep, now, out)
            || self.promote(keep, term, now, out)
            || self.announce_kept_active(keep, term, now, out)
            || self.kill_dead_critical(now, out)
        {
            return;
        }
        self.repair_labels(now, out);
    }

    /// Demotes an active pod other than `keep` (a second active, or one that must give up).
    fn demote_extra_active(
        &mut self,
        keep: Option<&str>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(victim) = self
            .pods
            .values()
            .find(|e| e.role(&self.config) == Role::Active && Some(e.view.name.as_str()) != keep)
        else {
            return false;
        };
        // A force-deleted victim is gone a moment later: waiting for that saves a demote the
        // API would answer 404, without ever promoting beside it.
        if victim.view.vanishing
            && let Some(until) = self.trigger.map(|t| t.at + VANISH_WAIT)
            && now < until
        {
            out.push(Action::WakeAfter(until - now));
            return true;
        }
        // A victim that cannot be written now is waited for: promoting meanwhile could make
        // two actives.
        if victim.writable(now) {
            let name = victim.view.name.clone();
            self.set_role(&name, Role::Standby, None, Purpose::Demote, out);
        }
        true
    }

    /// Promotes the oldest eligible pod when no active is kept.
    fn promote(
        &mut self,
        keep: Option<&str>,
        term: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        if keep.is_some() {
            return false;
        }
        let Some(candidate) = self.successor(now) else {
            return false;
        };
        // A stale candidate waits for its refresh rather than handing the role to another
        // pod: the choice stays "the oldest eligible".
        if candidate.stale {
            return true;
        }
        if self.waits_for_grants(&candidate.view.uid, now, out) {
            return true;
        }
        let name = candidate.view.name.clone();
        if self.fence_doubt(&name, term, now, out) {
            return true;
        }
        let Some(epoch) = self.allocate_epoch(term) else {
            return true;
        };
        let reason = self.trigger.map_or(PromotionReason::Initial, |t| t.reason);
        self.record_passed_over(&name, now, out);
        self.set_role(
            &name,
            Role::Active,
            Some(epoch),
            Purpose::Promote(reason),
            out,
        );
        true
    }

    /// Names each pod older than `candidate` and why it is not the one promoted, so that an
    /// operator sees why the choice was not the oldest pod.
    fn record_passed_over(&self, candidate: &str, now: Instant, out: &mut Vec<Action>) {
        let age = self.pods[candidate].view.age_key();
        out.extend(
            self.pods
                .values()
                .filter(|e| e.view.age_key() < age)
                .map(|e| {
                    Action::Record(Record {
                        pod: Some(e.pod_ref()),
                        kind: RecordKind::PassedOver {
                            why: e.unfit_reason(now),
                        },
                    })
                }),
        );
    }

    /// Before promoting `candidate`: a promotion of another pod whose outcome is unknown is
    /// fenced first (see `Purpose::Fence`), waiting while that pod cannot be written.
    fn fence_doubt(
        &mut self,
        candidate: &str,
        term: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(doubt) = self.doubt.clone().filter(|d| d.pod != candidate) else {
            return false;
        };
        if !self.pods.get(&doubt.pod).is_some_and(|e| e.writable(now)) {
            return true;
        }
        let Some(epoch) = self.allocate_epoch(term) else {
            return true;
        };
        self.set_role(&doubt.pod, Role::Standby, Some(epoch), Purpose::Fence, out);
        true
    }

    /// Whether a new epoch for `uid` must wait, because another pod's application may still
    /// act on a grant: until it ends (woken then), or until that agent reports it stands by.
    fn waits_for_grants(&self, uid: &str, now: Instant, out: &mut Vec<Action>) -> bool {
        let Some(until) = self.grants.blocking(uid, now) else {
            return false;
        };
        out.push(Action::WakeAfter(until - now));
        true
    }

    /// Makes sure the kept active knows it is active, once per (pod, epoch) in this term: the
    /// previous replica may have stopped between write and send, or the pod became the kept
    /// active without this replica promoting it (a second active kept, a pod that rejoined).
    /// One without an epoch first gets one written, so its agent can order its orders. Only
    /// an eligible active is told.
    fn announce_kept_active(
        &mut self,
        keep: Option<&str>,
        term: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(entry) = keep.map(|name| &self.pods[name]).filter(|e| e.eligible()) else {
            return false;
        };
        // Without an epoch, or with one its agent can no longer act on (it stood down at
        // it, or restarted past it), the kept active gets a fresh epoch written first.
        let usable = entry
            .view
            .epoch
            .filter(|epoch| !self.grants.stood_down(&entry.view.uid, *epoch));
        let Some(epoch) = usable else {
            if !entry.writable(now) {
                return false;
            }
            // Its agent stood down at an epoch of a later term than this one (an edited
            // annotation: `report_future_epochs`): it refuses every epoch this term can give,
            // so a fresh one would only be followed by another, a write loop.
            let beyond_term = self
                .grants
                .reported
                .get(&entry.view.uid)
                .is_some_and(|(_, reported)| epoch::term_of(*reported) > term);
            if beyond_term {
                return false;
            }
            if self.waits_for_grants(&entry.view.uid, now, out) {
                return true;
            }
            let name = entry.view.name.clone();
            let Some(epoch) = self.allocate_epoch(term) else {
                return false;
            };
            self.set_role(&name, Role::Active, Some(epoch), Purpose::Adopt, out);
            return true;
        };
        if !self.announced.contains(&(entry.view.uid.clone(), epoch)) {
            let (pod, ip) = (entry.pod_ref(), entry.view.primary_ip());
            self.announce(&pod, ip, epoch, now, out);
        }
        false
    }

    /// Tells `pod` it is active with `epoch` (when it has an address to be told at).
    pub(super) fn announce(
        &mut self,
        pod: &PodRef,
        ip: Option<IpAddr>,
        epoch: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.announced.insert((pod.uid.clone(), epoch));
        if let Some(ip) = ip {
            self.tell(pod, ip, Role::Active, epoch, now, out);
        }
    }

    /// Tells one pod its role: a version 1 notification, or with the application lease an
    /// order. An active order carries a grant, recorded as live for one live span from
    /// `now`, only when no other pod may be acting (`Grants::may_grant`); without one the
    /// agent holds the role without acting, and a later heartbeat grants it.
    pub(super) fn tell(
        &mut self,
        pod: &PodRef,
        ip: IpAddr,
        role: Role,
        epoch: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(lease) = self.config.application_lease else {
            out.push(Action::Notify(Notify {
                pod: pod.name.clone(),
                ip,
                role,
                epoch,
            }));
            return;
        };
        self.grants.ordered(&pod.uid, now);
        let grant = role == Role::Active && self.grants.may_grant(&pod.uid, epoch, now);
        if grant {
            let live = LiveGrant {
                until: now + lease.live_span,
                epoch,
                pod: pod.name.clone(),
                ip,
            };
            self.grants.granted(&pod.uid, live, now);
        } else if role == Role::Standby {
            self.grants.told.insert(pod.uid.clone(), (role, epoch));
        }
        out.push(Action::Order(RoleOrder {
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            ip,
            role,
            epoch,
            grant,
        }));
    }

    /// Application lease: repeats every pod's order. The kept active (with an epoch of this
    /// or an older term that its agent can still act on) is granted; every other pod, and
    /// any pod that left the group while a grant to it may be live, is told to stand by at
    /// an epoch its agent takes: the last it was told, its label's, the active's or the one
    /// it reported, whichever is highest.
    pub(super) fn heartbeat(
        &mut self,
        heard: &[(String, Instant)],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (Some(term), Some(_)) = (self.term, self.config.application_lease) else {
            return;
        };
        for (uid, at) in heard {
            self.grants.heard(uid, *at);
        }
        let pods = &self.pods;
        self.grants
            .prune(now, |uid| pods.values().any(|e| e.view.uid == uid));
        self.judge_silence(now);
        let acting_term = |epoch: &u64| epoch::term_of(*epoch) <= term;
        let kept = self
            .kept_active(now)
            .and_then(|e| Some((e.view.uid.clone(), e.view.epoch.filter(acting_term)?)))
            .filter(|(uid, epoch)| !self.grants.stood_down(uid, *epoch));
        let active_epoch = kept.as_ref().map_or(0, |(_, epoch)| *epoch);
        let mut targets: Vec<(PodRef, IpAddr, Option<u64>)> = self
            .pods
            .values()
            .filter_map(|e| Some((e.pod_ref(), e.view.primary_ip()?, e.view.epoch)))
            .collect();
        targets.extend(
            self.grants
                .live
                .iter()
                .filter(|(uid, _)| !targets.iter().any(|(pod, _, _)| pod.uid == **uid))
                .map(|(uid, grant)| {
                    let pod = PodRef {
                        name: grant.pod.clone(),
                        uid: uid.clone(),
                    };
                    (pod, grant.ip, Some(grant.epoch))
                })
                .collect::<Vec<_>>(),
        );
        for (pod, ip, label_epoch) in targets {
            if let Some((_, epoch)) = kept.as_ref().filter(|(uid, _)| *uid == pod.uid) {
                self.tell(&pod, ip, Role::Active, *epoch, now, out);
                continue;
            }
            let told = self.grants.told.get(&pod.uid).map(|(_, epoch)| *epoch);
            let reported = self.grants.reported.get(&pod.uid).map(|(_, epoch)| *epoch);
            let epoch = [told, label_epoch, Some(active_epoch), reported]
                .into_iter()
                .flatten()
                .filter(acting_term)
                .max()
                .unwrap_or(0);
            self.tell(&pod, ip, Role::Standby, epoch, now, out);
        }
    }

    /// Deletes a pod with a dead critical container, unless it is already on its way out.
    fn kill_dead_critical(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        let doomed = self.pods.values().find_map(|e| match &e.dead_container {
            Some(c) if !e.kill_sent && !e.leaving() && !e.refused(now) => {
                Some((e.view.name.clone(), c.clone()))
            }
            _ => None,
        });
        let Some((name, container)) = doomed else {
            return false;
        };
        self.issue(&name, WriteKind::Delete { container }, out);
        true
    }

    /// Labels standby a live pod whose role label is missing or wrong.
    fn repair_labels(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mislabeled = self
            .pods
            .values()
            .find(|e| {
                e.role(&self.config) == Role::Other
                    && !e.view.deleting
                    && e.dead_container.is_none()
                    && e.writable(now)
            })
            .map(|e| e.view.name.clone());
        if let Some(name) = mislabeled {
            self.set_role(&name, Role::Standby, None, Purpose::Repair, out);
        }
    }

    /// The pod to promote when no active is kept: the oldest eligible one that the API has
    /// not refused.
    pub(super) fn successor(&self, now: Instant) -> Option<&PodEntry> {
        self.pods
            .values()
            .filter(|e| e.eligible() && !e.refused(now))
            .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
    }

    /// Reports a change of health; the no-eligible record only from the acting replica, and
    /// never for an empty group (nothing there to be eligible).
    pub(super) fn report_health(&mut self, out: &mut Vec<Action>) {
        let health = if self.pods.is_empty() {
            Health::Empty
        } else if self.eligible_active().is_some() {
            Health::Active
        } else {
            Health::NoActive {
                eligible: self.pods.values().any(PodEntry::eligible),
            }
        };
        if self.health == Some(health) {
            return;
        }
        self.health = Some(health);
        out.push(Action::Health(health));
        if health == (Health::NoActive { eligible: false }) && self.term.is_some() {
            let pod = self
                .pods
                .values()
                .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
                .map(PodEntry::pod_ref);
            out.push(Action::Record(Record {
                pod,
                kind: RecordKind::NoEligible,
            }));
        }
    }

    /// Emits where the group's traffic goes when that changed, while acting: the pod labeled
    /// active (the kept one of two), after this replica's own acknowledged writes, so the
    /// slice moves in the same step as the promotion's answer. Groups whose pods never named
    /// a Service emit nothing.
    pub(super) fn report_route(&mut self, out: &mut Vec<Action>) {
        if self.term.is_none() {
            return;
        }
        let service = self
            .pods
            .values()
            .filter(|e| e.view.routing.is_some())
            .min_by(|a, b| a.view.age_key().cmp(&b.view.age_key()))
            .and_then(|e| Some(e.view.routing.as_ref()?.service.clone()));
        let route = match service {
            // Nothing to route (the label mode), or the removal already said: the endpoint
            // is not built on every event of every group.
            None if self.route.as_ref().is_none_or(|r| r.service.is_none()) => return,
            None => Route {
                service: None,
                endpoint: None,
            },
            Some(service) => Route {
                service: Some(service),
                endpoint: self.endpoint(),
            },
        };
        if self.route.as_ref() != Some(&route) {
            self.route = Some(route.clone());
            out.push(Action::Route(route));
        }
    }

    /// The slice's one endpoint: the pod labeled active (the kept one of two), if it has an IP.
    fn endpoint(&self) -> Option<Endpoint> {
        let entry = self
            .eligible_active()
            .or_else(|| self.best_active(|_| true))
            .filter(|entry| !entry.view.pod_ips.is_empty())?;
        let view = &entry.view;
        Some(Endpoint {
            pod: entry.pod_ref(),
            ips: view.pod_ips.clone(),
            node: view.routing.as_ref().and_then(|r| r.node.clone()),
            ready: view.serving() && entry.dead_container.is_none(),
            serving: view.ready && view.phase == Phase::Running,
            terminating: view.deleting,
        })
    }
}
