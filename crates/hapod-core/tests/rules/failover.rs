//! Failover triggers (deletion, unready, finished, lost IP, force delete) and when an active that is only unready keeps the role.

use super::*;

/// Runs a failover of active "a" (standby "b") caused by `change`; checks the order.
fn failover(change: impl FnOnce(&mut hapod_core::PodView), reason: PromotionReason) {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", change).unwrap();
    let actions = ctl.feed(ev);
    let demote = single_write(&actions);
    assert!(is_set_role(&demote, "a", Role::Standby), "{actions:?}");
    let WriteKind::SetRole {
        resource_version, ..
    } = &demote.kind
    else {
        unreachable!()
    };
    assert_eq!(resource_version, &ctl.api.pods["a"].resource_version);
    // Nothing else happens until the demote is acknowledged.
    assert!(ctl.feed(Event::Tick).is_empty());
    ctl.now += Duration::from_millis(7);
    let (after_demote, echo) = ctl.answer(&demote);
    let promote = single_write(&after_demote);
    assert!(is_set_role(&promote, "b", Role::Active));
    // The demoted pod is told, when it still has an address to be told at.
    let standby_notes = notifies(&after_demote);
    let has_ip = !ctl.api.pods["a"].pod_ips.is_empty();
    assert_eq!(standby_notes.len(), usize::from(has_ip));
    if let Some(n) = standby_notes.first() {
        assert_eq!((n.pod.as_str(), n.role), ("a", Role::Standby));
    }
    ctl.now += Duration::from_millis(5);
    let (after_promote, _) = ctl.answer(&promote);
    let Some(Action::Record(r)) = after_promote
        .iter()
        .find(|a| matches!(a, Action::Record(r) if matches!(r.kind, RecordKind::Promoted { .. })))
    else {
        panic!("no promotion record in {after_promote:?}")
    };
    assert_eq!(
        r.kind,
        RecordKind::Promoted {
            epoch: epoch::compose(1, 2),
            reason,
            latency: Some(Duration::from_millis(12)),
        }
    );
    let n = notifies(&after_promote);
    assert_eq!((n[0].pod.as_str(), n[0].role), ("b", Role::Active));
    assert!(standby_notes.iter().all(|s| n[0].epoch > s.epoch));
    ctl.feed(echo.unwrap());
    ctl.settle(after_promote);
    assert_eq!(ctl.api.actives(), ["b"]);
}

#[test]
fn failover_on_deletion_timestamp() {
    failover(|p| p.deleting = true, PromotionReason::Terminating);
}

#[test]
fn failover_on_not_ready() {
    failover(|p| p.ready = false, PromotionReason::NotReady);
}

#[test]
fn failover_on_failed_and_succeeded_phase() {
    failover(|p| p.phase = Phase::Failed, PromotionReason::Finished);
    failover(|p| p.phase = Phase::Succeeded, PromotionReason::Finished);
}

#[test]
fn failover_on_drain() {
    failover(|p| p.drained = true, PromotionReason::Drained);
}

/// A drained pod is no candidate: with the active gone and only a drained standby, the group
/// waits for an eligible pod; the drain lifted, that pod is promoted.
#[test]
fn a_drained_pod_is_not_promoted_until_the_drain_is_lifted() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("b", |p| p.drained = true).unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["a"]);
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    let all = ctl.settle(actions);
    assert!(ctl.api.actives().is_empty(), "{all:?}");
    let ev = ctl.api.modify("b", |p| p.drained = false).unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["b"]);
}

#[test]
fn failover_on_lost_ip() {
    failover(|p| p.pod_ips.clear(), PromotionReason::NotServing);
}

#[test]
fn failover_on_delete_event_without_demote() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    assert!(is_set_role(&single_write(&actions), "b", Role::Active));
    let all = ctl.settle(actions);
    assert_eq!(promoted(&all)[0].2, PromotionReason::Deleted);
}

/// The promotion's watch event may come before the write's answer: the failover latency is
/// still recorded (it was lost, and with it a sample of the latency histogram).
#[test]
fn the_latency_is_recorded_when_the_watch_echo_beats_the_answer() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    let promote = single_write(&actions);
    ctl.now += Duration::from_millis(9);
    let (outcome, echo) = ctl.api.execute(&promote);
    let mut all = ctl.feed(echo.expect("the promotion changes the pod"));
    all.extend(ctl.feed(Event::Outcome {
        op: promote.op,
        outcome,
    }));
    let latencies: Vec<Option<Duration>> = all
        .iter()
        .filter_map(|a| match a {
            Action::Record(hapod_core::Record {
                kind: RecordKind::Promoted { latency, .. },
                ..
            }) => Some(*latency),
            _ => None,
        })
        .collect();
    assert_eq!(latencies, [Some(Duration::from_millis(9))]);
}

#[test]
fn missing_from_relist_counts_as_deleted() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    ctl.api.remove("a");
    let actions = ctl.feed(Event::Resync {
        pods: ctl.api.snapshot(),
    });
    assert!(is_set_role(&single_write(&actions), "b", Role::Active));
    assert_eq!(
        promoted(&ctl.settle(actions))[0].2,
        PromotionReason::Deleted
    );
}

/// An active that is merely unready stays active while no pod can take over, and is
/// replaced as soon as one can; the latency counts from the loss.
#[test]
fn an_unready_active_stays_until_a_successor_can_take_over() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1))]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let actions = ctl.feed(ev);
    assert!(writes(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&Action::Health(Health::NoActive { eligible: false })));
    assert_eq!(ctl.api.actives(), ["a"]);
    ctl.now += Duration::from_millis(40);
    let ev = ctl.api.put(pod("b", 2));
    let actions = ctl.feed(ev);
    assert!(is_set_role(&single_write(&actions), "a", Role::Standby));
    let all = ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["b"]);
    assert!(all.iter().any(|a| matches!(a,
        Action::Record(r) if matches!(r.kind, RecordKind::Promoted {
            reason: PromotionReason::NotReady,
            latency: Some(l),
            ..
        } if l == Duration::from_millis(40)))));
}

/// A hard loss (terminating) is demoted even with no successor.
#[test]
fn a_terminating_active_is_demoted_even_without_successor() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1))]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.deleting = true).unwrap();
    let actions = ctl.feed(ev);
    assert!(is_set_role(&single_write(&actions), "a", Role::Standby));
}

/// Two softly ineligible actives and no successor: one is kept, never both.
#[test]
fn of_two_unready_actives_without_successor_one_is_kept() {
    let mut a = active(pod("a", 1), Some(epoch::compose(1, 2)));
    a.ready = false;
    let mut b = active(pod("b", 2), Some(epoch::compose(1, 3)));
    b.pod_ips.clear();
    let (mut ctl, first) = Ctl::acting([a, b]);
    assert!(is_set_role(&single_write(&first), "a", Role::Standby));
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["b"]);
}

/// A force delete (grace 0, no finalizers) shows the pod terminating, then gone, within the
/// same API request: demoting it would be a write answered 404. The group waits for the pod to
/// vanish instead, and promotes with one write; no instant has two actives.
#[test]
fn a_force_deleted_active_is_not_demoted_but_replaced_once_gone() {
    let (mut ctl, actions) = force_delete_the_active();
    assert!(
        writes(&actions).is_empty(),
        "no write to a vanishing pod: {actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::WakeAfter(_))));
    ctl.now += Duration::from_millis(2);
    let gone = ctl.api.remove("a").unwrap();
    let promote = single_write(&ctl.feed(gone));
    assert!(is_set_role(&promote, "b", Role::Active));
}

/// If the pod does not vanish after all (the delete did not complete), it is demoted as any
/// terminating active.
#[test]
fn a_vanishing_active_that_stays_is_demoted_after_a_short_wait() {
    let (mut ctl, actions) = force_delete_the_active();
    assert!(writes(&actions).is_empty());
    ctl.now += Duration::from_secs(1);
    let demote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&demote, "a", Role::Standby));
}

/// Active "a" (standby "b") seen terminating with grace 0: what the group does about it.
fn force_delete_the_active() -> (Ctl, Vec<Action>) {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", force_deleting).unwrap();
    let actions = ctl.feed(ev);
    (ctl, actions)
}
