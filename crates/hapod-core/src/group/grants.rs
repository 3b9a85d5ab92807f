//! The application lease on the controller's side (`docs/fencing.md`): what each agent was
//! told, which grants may still be live, and which agents proved they cannot act. Promotion
//! waits on [`Grants::blocking`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::types::ReportedRole;
use crate::pod::Role;

/// A grant sent to a pod that may still let its application act.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct LiveGrant {
    /// End of the grant on this clock: one live span after the order was made.
    pub(super) until: Instant,
    /// Epoch of the grant: a standby report at this epoch or later ends it early.
    pub(super) epoch: u64,
    /// Where the pod was, so that it can be told to stand by even after it left the group.
    pub(super) pod: String,
    pub(super) ip: IpAddr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Grants {
    /// The last order to each pod (by UID): heartbeats repeat it.
    pub(super) told: BTreeMap<String, (Role, u64)>,
    /// Grants that may still be live, by pod UID.
    pub(super) live: BTreeMap<String, LiveGrant>,
    /// Latest report of each agent: its role and epoch.
    pub(super) reported: BTreeMap<String, (Option<ReportedRole>, u64)>,
    /// No promotion before this: the grants of a previous acting replica are unknown.
    pub(super) inherited_until: Option<Instant>,
    /// When each agent was last heard from (its latest report), or first told when it has
    /// not answered yet in this term.
    pub(super) contact: BTreeMap<String, Contact>,
    /// Pods granted (when) and not heard from since. A grant echoes the agent's latest
    /// report, so another before a new report could not extend the agent's lease: it is not
    /// sent, and the count of a silent agent's grant stops within one heartbeat.
    pub(super) awaiting_report: BTreeMap<String, Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Contact {
    pub(super) at: Instant,
    /// `at` is a report (not only the first order).
    pub(super) reported: bool,
}

impl Grants {
    /// This replica starts acting: whatever the previous acting replica granted may be live
    /// until `until`.
    pub(super) fn take_over(&mut self, until: Instant) {
        self.told.clear();
        self.contact.clear();
        self.awaiting_report.clear();
        self.inherited_until = Some(until);
    }

    /// An order is sent to `uid` now: its agent's silence counts from here if it never
    /// answered.
    pub(super) fn ordered(&mut self, uid: &str, now: Instant) {
        self.contact.entry(uid.to_owned()).or_insert(Contact {
            at: now,
            reported: false,
        });
    }

    pub(super) fn granted(&mut self, uid: &str, grant: LiveGrant, now: Instant) {
        self.told
            .insert(uid.to_owned(), (Role::Active, grant.epoch));
        self.live.insert(uid.to_owned(), grant);
        self.awaiting_report.insert(uid.to_owned(), now);
    }

    pub(super) fn report(
        &mut self,
        uid: &str,
        role: Option<ReportedRole>,
        epoch: u64,
        now: Instant,
    ) {
        self.reported.insert(uid.to_owned(), (role, epoch));
        self.heard(uid, now);
    }

    /// The pod's agent was heard at `at` (a report received then). Silence never counts from
    /// before this term's first order to it: a report older than that is no sign of
    /// silence, the agent had nothing to answer.
    pub(super) fn heard(&mut self, uid: &str, at: Instant) {
        let contact = self
            .contact
            .entry(uid.to_owned())
            .or_insert(Contact { at, reported: true });
        if at >= contact.at {
            *contact = Contact { at, reported: true };
        }
        if self
            .awaiting_report
            .get(uid)
            .is_some_and(|granted| *granted <= at)
        {
            self.awaiting_report.remove(uid);
        }
    }

    /// Whether the pod's agent reported within `timeout`.
    pub(super) fn heard_within(&self, uid: &str, timeout: Duration, now: Instant) -> bool {
        self.contact
            .get(uid)
            .is_some_and(|c| c.reported && now.duration_since(c.at) < timeout)
    }

    /// Of `group` (the UIDs of one group's pods), those whose agents have been silent for
    /// `timeout`, provided another agent of the group reported within it. `None` with nobody
    /// answering: the fault may be this replica's own path, and no pod is judged.
    pub(super) fn silent<'a>(
        &self,
        group: &[&'a str],
        timeout: Duration,
        now: Instant,
    ) -> Option<Vec<&'a str>> {
        let quiet = |uid: &str| {
            self.contact
                .get(uid)
                .is_some_and(|c| now.duration_since(c.at) >= timeout)
        };
        let answering = group.iter().any(|uid| {
            self.contact
                .get(*uid)
                .is_some_and(|c| c.reported && now.duration_since(c.at) < timeout)
        });
        answering.then(|| group.iter().copied().filter(|uid| quiet(uid)).collect())
    }

    /// Whether the pod's agent proved it cannot act on any order of `epoch` or older: it
    /// applied a standby order at that epoch or later (within an epoch an agent only moves
    /// toward standby), or restarted past it without applying anything since. A lapsed
    /// grant proves nothing: a grant still in flight would revive it.
    pub(super) fn stood_down(&self, uid: &str, epoch: u64) -> bool {
        stood_down(&self.reported, uid, epoch)
    }

    /// Until when a pod other than `candidate` may still act on a grant (the latest such
    /// end), or `None` when the candidate may be promoted now.
    pub(super) fn blocking(&self, candidate: &str, now: Instant) -> Option<Instant> {
        self.inherited(now).max(self.others_live(candidate, now))
    }

    /// Whether `uid` may be granted at `epoch` now. Not while another pod may act on a grant
    /// this replica sent. While a predecessor's grants may be live, only the pod that acts
    /// already may be granted: this replica granted it in this term, or its agent reported
    /// acting at that epoch (at most one pod acts at a time, so it is the one the
    /// predecessor granted). Any other pod waits until the predecessor's grants are over.
    /// And a pod granted since its agent last reported waits for the next report. A pod told
    /// to stand by at `epoch` or later is not granted at `epoch`: its agent cannot take it
    /// (within an epoch an agent only moves toward standby), and its standby answer must not
    /// read as a relinquish of that grant.
    pub(super) fn may_grant(&self, uid: &str, epoch: u64, now: Instant) -> bool {
        if self.others_live(uid, now).is_some() || self.awaiting_report.contains_key(uid) {
            return false;
        }
        if matches!(self.told.get(uid), Some((Role::Standby, told)) if *told >= epoch) {
            return false;
        }
        self.inherited(now).is_none()
            || self.told.get(uid) == Some(&(Role::Active, epoch))
            || self.reported.get(uid) == Some(&(Some(ReportedRole::Active), epoch))
    }

    fn inherited(&self, now: Instant) -> Option<Instant> {
        self.inherited_until.filter(|until| now < *until)
    }

    /// The latest end of a grant this replica sent to a pod other than `candidate` that may
    /// still let it act.
    fn others_live(&self, candidate: &str, now: Instant) -> Option<Instant> {
        self.live
            .iter()
            .filter(|(uid, grant)| {
                uid.as_str() != candidate && now < grant.until && !self.stood_down(uid, grant.epoch)
            })
            .map(|(_, grant)| grant.until)
            .max()
    }

    /// Forgets grants that are over and pods that are gone with nothing live.
    pub(super) fn prune(&mut self, now: Instant, present: impl Fn(&str) -> bool) {
        let reported = &self.reported;
        self.live
            .retain(|uid, grant| now < grant.until && !stood_down(reported, uid, grant.epoch));
        let live = &self.live;
        self.told
            .retain(|uid, _| present(uid) || live.contains_key(uid));
        self.reported
            .retain(|uid, _| present(uid) || live.contains_key(uid));
        self.contact
            .retain(|uid, _| present(uid) || live.contains_key(uid));
        self.awaiting_report
            .retain(|uid, _| present(uid) || live.contains_key(uid));
        if self.inherited_until.is_some_and(|until| until <= now) {
            self.inherited_until = None;
        }
    }
}

fn stood_down(
    reported: &BTreeMap<String, (Option<ReportedRole>, u64)>,
    uid: &str,
    epoch: u64,
) -> bool {
    reported.get(uid).is_some_and(|(role, reported)| {
        *reported >= epoch && matches!(role, None | Some(ReportedRole::Standby))
    })
}
