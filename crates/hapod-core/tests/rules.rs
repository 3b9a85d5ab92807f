//! One test (or a few) per rule of the controller's behaviour.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::{Ctl, active, pod, single_write, writes};
use hapod_core::{
    Action, Event, Health, Notify, Phase, PromotionReason, Purpose, RecordKind, Role, WriteKind,
    WriteOutcome, epoch,
};

fn promoted(actions: &[Action]) -> Vec<(String, u64, PromotionReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) => match &r.kind {
                RecordKind::Promoted { epoch, reason, .. } => {
                    Some((r.pod.as_ref()?.name.clone(), *epoch, *reason))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn notifies(actions: &[Action]) -> Vec<&Notify> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn is_set_role(w: &hapod_core::Write, pod: &str, role: Role) -> bool {
    w.pod == pod && matches!(&w.kind, WriteKind::SetRole { role: r, .. } if *r == role)
}

#[test]
fn initial_choice_is_the_oldest_eligible_ties_by_name() {
    let (mut ctl, first) = Ctl::acting([pod("c", 5), pod("b", 3), pod("a", 3)]);
    let w = single_write(&first);
    assert!(is_set_role(&w, "a", Role::Active));
    let all = ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["a"]);
    assert_eq!(
        promoted(&all),
        [("a".into(), epoch::compose(1, 1), PromotionReason::Initial)]
    );
    let n = notifies(&all);
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].pod.as_str(), n[0].role), ("a", Role::Active));
    assert!(all.contains(&Action::Health(Health::Active)));
}

#[test]
fn promotion_write_carries_precondition_and_epoch() {
    let (_, first) = Ctl::acting([pod("a", 1)]);
    let w = single_write(&first);
    assert_eq!(w.uid, "a-uid");
    assert_eq!(
        w.kind,
        WriteKind::SetRole {
            resource_version: "1".into(),
            role: Role::Active,
            epoch: Some(epoch::compose(1, 1)),
            purpose: Purpose::Promote(PromotionReason::Initial),
        }
    );
}

#[test]
fn restart_keeps_the_current_eligible_active_even_if_not_oldest() {
    let (mut ctl, first) = Ctl::acting([pod("old", 1), active(pod("young", 9), Some(5))]);
    assert!(writes(&first).is_empty());
    // The new replica re-announces the kept active with its epoch.
    let n = notifies(&first);
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].pod.as_str(), n[0].epoch), ("young", 5));
    assert!(
        ctl.settle(first)
            .iter()
            .all(|a| !matches!(a, Action::Write(_)))
    );
}

#[test]
fn never_promotes_an_ineligible_pod_and_reports_it_once() {
    let mut pending = pod("pending", 1);
    pending.phase = Phase::Pending;
    let mut unready = pod("unready", 2);
    unready.ready = false;
    let mut no_ip = pod("noip", 3);
    no_ip.pod_ips.clear();
    let mut dying = pod("dying", 4);
    dying.deleting = true;
    let (mut ctl, first) = Ctl::acting([pending, unready, no_ip, dying]);
    assert!(writes(&first).is_empty());
    assert!(first.contains(&Action::Health(Health::NoActive { eligible: false })));
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::Record(r) if r.kind == RecordKind::NoEligible))
    );
    // Another uneventful change: no second report.
    let ev = ctl.api.modify("pending", |p| p.ready = false).unwrap();
    assert!(ctl.feed(ev).is_empty());
    // Promote as soon as one becomes eligible.
    let ev = ctl.api.modify("unready", |p| p.ready = true).unwrap();
    let actions = ctl.feed(ev);
    assert!(is_set_role(
        &single_write(&actions),
        "unready",
        Role::Active
    ));
}

#[test]
fn critical_death_makes_a_pod_ineligible() {
    let mut crashed = pod("a", 1);
    crashed.critical[0].waiting_reason = Some("CrashLoopBackOff".into());
    let (_, first) = Ctl::acting([crashed, pod("b", 2)]);
    // Failover choice skips "a"; its kill comes after the promotion.
    assert!(is_set_role(&single_write(&first), "b", Role::Active));
}

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
fn failover_on_lost_ip() {
    failover(|p| p.pod_ips.clear(), PromotionReason::NotServing);
}

#[test]
fn failover_on_critical_container_death_then_kill() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("a", |p| p.critical[0].terminated = true)
        .unwrap();
    let first = ctl.feed(ev);
    let all = ctl.settle(first);
    let order: Vec<(String, bool)> = writes(&all)
        .iter()
        .map(|w| (w.pod.clone(), matches!(w.kind, WriteKind::Delete { .. })))
        .collect();
    // Demote a, promote b, then delete a.
    assert_eq!(
        order,
        [("a".into(), false), ("b".into(), false), ("a".into(), true)]
    );
    let Action::Write(kill) = all.iter().rfind(|a| matches!(a, Action::Write(_))).unwrap() else {
        unreachable!()
    };
    assert_eq!(kill.uid, "a-uid");
    assert_eq!(promoted(&all)[0].2, PromotionReason::CriticalDeath);
    assert!(all.iter().any(|a| matches!(a,
        Action::Record(r) if r.kind == RecordKind::Killed { container: "crit".into() })));
    assert_eq!(ctl.api.actives(), ["b"]);
    assert!(!ctl.api.pods.contains_key("a"));
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

#[test]
fn restart_count_rise_with_last_state_terminated_is_a_death() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), pod("s", 2)]);
    assert!(
        ctl.settle(first)
            .iter()
            .all(|a| !matches!(a, Action::Write(_)))
    );
    let ev = ctl
        .api
        .modify("s", |p| {
            p.critical[0].restart_count = 1;
            p.critical[0].last_terminated = true;
        })
        .unwrap();
    let actions = ctl.feed(ev);
    let kill = single_write(&actions);
    assert_eq!(
        kill.kind,
        WriteKind::Delete {
            container: "crit".into()
        }
    );
    assert_eq!((kill.pod.as_str(), kill.uid.as_str()), ("s", "s-uid"));
}

/// Item 8: a critical container never restarts in place, so a restart the controller did not
/// see (it happened while no replica was watching) is a death all the same.
#[test]
fn restart_count_above_zero_on_first_sight_is_a_death() {
    let mut restarted = pod("a", 1);
    restarted.critical[0].restart_count = 4;
    let (mut ctl, first) = Ctl::acting([active(restarted, Some(1)), pod("s", 2)]);
    let demote = single_write(&first);
    assert!(is_set_role(&demote, "a", Role::Standby));
    let all = ctl.settle(first);
    assert_eq!(promoted(&all)[0].2, PromotionReason::CriticalDeath);
    assert!(all.iter().any(|a| matches!(a,
        Action::Record(r) if r.kind == RecordKind::Killed { container: "crit".into() })));
    assert_eq!(ctl.api.actives(), ["s"]);
    assert!(!ctl.api.pods.contains_key("a"));
}

/// Item 8 with item 7: a deleting pod with restarts is not killed again.
#[test]
fn a_deleting_pod_with_restarts_is_not_killed() {
    let mut restarted = pod("s", 2);
    restarted.critical[0].restart_count = 1;
    restarted.deleting = true;
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), restarted]);
    let all = ctl.settle(first);
    assert!(writes(&all).is_empty(), "{all:?}");
    assert!(ctl.api.pods.contains_key("s"));
}

#[test]
fn crash_of_a_standby_kills_it_without_touching_the_active() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), pod("s", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("s", |p| {
            p.critical[0].waiting_reason = Some("CrashLoopBackOff".into())
        })
        .unwrap();
    let actions = ctl.feed(ev);
    assert_eq!(
        single_write(&actions).kind,
        WriteKind::Delete {
            container: "crit".into()
        }
    );
    // Killed once: a delete already acknowledged is not sent again.
    let all = ctl.settle(actions);
    assert_eq!(writes(&all).len(), 1);
}

#[test]
fn non_critical_restarts_are_ignored() {
    let mut p = pod("s", 2);
    p.critical.clear();
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), p]);
    ctl.settle(first);
    let ev = ctl.api.modify("s", |p| p.ready = false).unwrap();
    assert!(writes(&ctl.feed(ev)).is_empty());
}

#[test]
fn two_actives_keep_the_highest_epoch() {
    let (mut ctl, first) = Ctl::acting([
        active(pod("a", 1), Some(epoch::compose(1, 1))),
        active(pod("b", 2), Some(epoch::compose(2, 1))),
    ]);
    assert!(is_set_role(&single_write(&first), "a", Role::Standby));
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["b"]);
}

#[test]
fn two_actives_without_epochs_keep_the_oldest() {
    let (mut ctl, first) = Ctl::acting([active(pod("b", 2), None), active(pod("a", 3), None)]);
    assert!(is_set_role(&single_write(&first), "a", Role::Standby));
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["b"]);
}

#[test]
fn manual_second_active_is_demoted() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("b", |p| p.role_label = Some("active".into()))
        .unwrap();
    let actions = ctl.feed(ev);
    assert!(is_set_role(&single_write(&actions), "b", Role::Standby));
}

#[test]
fn wrong_labels_are_repaired_but_not_on_dying_pods() {
    let mut missing = pod("m", 2);
    missing.role_label = None;
    let mut odd = pod("o", 3);
    odd.role_label = Some("Active ".into());
    let mut dying = pod("d", 4);
    dying.role_label = None;
    dying.deleting = true;
    let (mut ctl, first) = Ctl::acting([pod("a", 1), missing, odd, dying]);
    let all = ctl.settle(first);
    let repaired: Vec<&str> = writes(&all)
        .iter()
        .filter(|w| {
            matches!(
                w.kind,
                WriteKind::SetRole {
                    purpose: Purpose::Repair,
                    ..
                }
            )
        })
        .map(|w| w.pod.as_str())
        .collect();
    assert_eq!(repaired, ["m", "o"]);
    assert_eq!(ctl.api.pods["d"].role_label, None);
}

#[test]
fn conflict_rereads_instead_of_retrying() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    let promote = single_write(&first);
    // The kubelet updated "a" after our view: the write meets a 409.
    let touched = ctl.api.modify("a", |_| {}).unwrap();
    let (actions, _) = ctl.answer(&promote);
    // No blind retry with the same version, and no other choice meanwhile.
    assert_eq!(
        actions,
        [Action::Refresh {
            pod: "a".into(),
            uid: "a-uid".into()
        }]
    );
    let retry = single_write(&ctl.feed(touched));
    assert!(is_set_role(&retry, "a", Role::Active));
    assert!(matches!(&retry.kind,
        WriteKind::SetRole { resource_version, .. } if *resource_version == ctl.api.pods["a"].resource_version));
}

#[test]
fn conflict_on_demote_blocks_promotion_until_reread() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let demote = single_write(&ctl.feed(ev));
    let newer = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let (actions, _) = ctl.answer(&demote);
    let refresh = Action::Refresh {
        pod: "a".into(),
        uid: "a-uid".into(),
    };
    assert_eq!(actions, std::slice::from_ref(&refresh));
    // Until the re-read arrives, a tick only asks for it again.
    assert_eq!(ctl.feed(Event::Tick), [refresh]);
    let retry = single_write(&ctl.feed(newer));
    assert!(is_set_role(&retry, "a", Role::Standby));
}

#[test]
fn stale_watch_event_does_not_undo_an_acknowledged_write() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    let old_view = ctl.api.pods["a"].clone();
    ctl.settle(first);
    // A delayed event from before the promotion arrives after it.
    let actions = ctl.feed(Event::Applied(old_view));
    assert!(writes(&actions).is_empty());
    assert_eq!(ctl.state.actives(), ["a"]);
}

#[test]
fn duplicate_event_after_delete_does_not_resurrect() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), pod("b", 2)]);
    ctl.settle(first);
    let old = ctl.api.pods["a"].clone();
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert!(writes(&ctl.feed(Event::Applied(old))).is_empty());
    assert_eq!(ctl.state.actives(), ["b"]);
}

#[test]
fn forbidden_is_reported_and_not_retried_at_once() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1)]);
    let w = single_write(&first);
    let actions = ctl.feed(Event::Outcome {
        op: w.op,
        outcome: WriteOutcome::Rejected { code: 403 },
    });
    assert!(actions.iter().any(|a| matches!(a,
        Action::Record(r) if r.kind == RecordKind::Rejected { delete: false, code: 403 })));
    assert!(actions.contains(&Action::WakeAfter(Duration::from_secs(30))));
    assert!(writes(&actions).is_empty());
    assert!(writes(&ctl.feed(Event::Tick)).is_empty());
    ctl.now += Duration::from_secs(30);
    assert_eq!(writes(&ctl.feed(Event::Tick)).len(), 1);
}

#[test]
fn a_refused_pod_does_not_block_the_group() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    let w = single_write(&first);
    assert_eq!(w.pod, "a");
    let actions = ctl.feed(Event::Outcome {
        op: w.op,
        outcome: WriteOutcome::Rejected { code: 422 },
    });
    // The next candidate is promoted at once.
    assert!(is_set_role(&single_write(&actions), "b", Role::Active));
}

#[test]
fn transient_errors_back_off_exponentially() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1)]);
    let mut w = single_write(&first);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let actions = ctl.feed(Event::Outcome {
            op: w.op,
            outcome: WriteOutcome::Failed,
        });
        let Some(Action::WakeAfter(d)) = actions.iter().find(|a| matches!(a, Action::WakeAfter(_)))
        else {
            panic!("no wake in {actions:?}")
        };
        delays.push(*d);
        ctl.now += *d;
        w = single_write(&ctl.feed(Event::Tick));
    }
    assert!(delays.windows(2).all(|d| d[1] > d[0]), "{delays:?}");
    let (actions, _) = ctl.answer(&w);
    assert_eq!(promoted(&actions).len(), 1);
}

#[test]
fn not_found_on_promote_picks_the_next_pod() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    let w = single_write(&first);
    ctl.api.remove("a");
    let (actions, _) = ctl.answer(&w);
    assert!(is_set_role(&single_write(&actions), "b", Role::Active));
}

#[test]
fn standby_replica_never_writes_and_takes_over_on_leadership() {
    let (mut ctl, _) = Ctl::acting([pod("a", 1)]);
    let mut standby = hapod_core::GroupState::new(Default::default());
    let now = ctl.now;
    let mut actions = hapod_core::decide(
        &mut standby,
        Event::Resync {
            pods: ctl.api.snapshot(),
        },
        now,
    );
    actions.extend(hapod_core::decide(&mut standby, Event::Tick, now));
    assert!(writes(&actions).is_empty());
    let actions = hapod_core::decide(&mut standby, Event::Leadership(Some(2)), now);
    let w = single_write(&actions);
    assert!(
        matches!(w.kind, WriteKind::SetRole { epoch: Some(e), .. } if e == epoch::compose(2, 1))
    );
    // Losing leadership drops the in-flight write: its late outcome changes nothing.
    ctl.feed(Event::Leadership(None));
    let late = hapod_core::decide(&mut standby, Event::Leadership(None), now);
    assert!(writes(&late).is_empty());
    let late = hapod_core::decide(
        &mut standby,
        Event::Outcome {
            op: w.op,
            outcome: WriteOutcome::Done {
                resource_version: Some("9".into()),
            },
        },
        now,
    );
    assert!(
        late.iter()
            .all(|a| !matches!(a, Action::Notify(_) | Action::Write(_)))
    );
}

#[test]
fn epochs_increase_within_and_across_terms() {
    // A standby's epoch (left from an earlier promotion) does not count.
    let (mut ctl, first) = Ctl::acting([pod("a", 1), {
        let mut b = pod("b", 2);
        b.epoch = Some(epoch::compose(1, 7));
        b
    }]);
    ctl.settle(first);
    assert_eq!(ctl.api.promotions, [epoch::compose(1, 1)]);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    // Standby notification took 1.2, the promotion 1.3.
    assert_eq!(
        ctl.api.promotions,
        [epoch::compose(1, 1), epoch::compose(1, 3)]
    );
    // New term after a controller failover.
    ctl.feed(Event::Leadership(Some(2)));
    let ev = ctl.api.modify("a", |p| p.ready = true).unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    let ev = ctl.api.modify("b", |p| p.deleting = true).unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["a"]);
    assert!(ctl.api.promotions.last().unwrap() >> 32 == 2);
    assert!(ctl.api.promotions.windows(2).all(|e| e[1] > e[0]));
}

#[test]
fn epochs_stay_above_those_of_deleted_pods() {
    let (mut ctl, first) =
        Ctl::acting([active(pod("a", 1), Some(epoch::compose(1, 5))), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.promotions, [epoch::compose(1, 6)]);
}

#[test]
fn an_epoch_on_a_standby_never_raises_the_floor() {
    let mut b = pod("b", 2);
    b.epoch = Some(epoch::compose(5, 1));
    let (mut ctl, first) = Ctl::acting([pod("a", 1), b]);
    ctl.settle(first);
    assert_eq!(ctl.api.promotions, [epoch::compose(1, 1)]);
}

/// Item 5: one active carrying an epoch of a term above the acting one (nobody can have
/// issued it while this replica holds the Lease) is reported once; failover goes on with
/// epochs of the acting term.
#[test]
fn a_future_epoch_on_the_active_is_reported_and_failover_goes_on() {
    let future = epoch::compose(9, 1);
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(future)), pod("b", 2)]);
    let mut all = ctl.settle(first);
    all.extend(ctl.feed(Event::Tick));
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let actions = ctl.feed(ev);
    all.extend(ctl.settle(actions));
    assert_eq!(ctl.api.actives(), ["b"]);
    assert_eq!(ctl.api.promotions, [epoch::compose(1, 2)]);
    let reports: Vec<_> = all
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) if matches!(r.kind, RecordKind::FutureEpoch { .. }) => {
                Some((r.pod.as_ref().unwrap().name.as_str(), r.kind.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(reports, [("a", RecordKind::FutureEpoch { epoch: future })]);
}

/// Contract item 5: a recreated group continues above the epochs issued before.
#[test]
fn a_recreated_group_continues_above_its_epoch_floor() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1)]);
    ctl.settle(first);
    let floor = ctl.state.highest_epoch();
    assert_eq!(floor, epoch::compose(1, 1));
    let mut fresh = hapod_core::GroupState::new(Default::default()).with_epoch_floor(floor);
    let now = ctl.now;
    hapod_core::decide(
        &mut fresh,
        Event::Resync {
            pods: vec![pod("b", 2)],
        },
        now,
    );
    let w = single_write(&hapod_core::decide(
        &mut fresh,
        Event::Leadership(Some(1)),
        now,
    ));
    assert!(
        matches!(w.kind, WriteKind::SetRole { epoch: Some(e), .. } if e == epoch::compose(1, 2))
    );
    assert_eq!(fresh.highest_epoch(), epoch::compose(1, 2));
}

#[test]
fn ipv6_and_group_sizes() {
    let mut v6 = pod("a", 1);
    v6.pod_ips = vec![IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let (mut ctl, first) = Ctl::acting([v6]);
    let all = ctl.settle(first);
    assert_eq!(notifies(&all)[0].ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(ctl.api.actives(), ["a"]);

    let pods: Vec<_> = (0..10).map(|i| pod(&format!("p{i}"), 100 - i)).collect();
    let (mut ctl, first) = Ctl::acting(pods);
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["p9"]);
    let ev = ctl.api.remove("p9").unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["p8"]);
}

#[test]
fn pod_without_containers_or_ip_is_handled() {
    let mut bare = pod("a", 1);
    bare.critical.clear();
    bare.pod_ips.clear();
    let (mut ctl, first) = Ctl::acting([bare]);
    assert!(writes(&first).is_empty());
    let ev = ctl
        .api
        .modify("a", |p| p.pod_ips = vec!["10.1.2.3".parse().unwrap()])
        .unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["a"]);
}

/// Item 14: a group whose pods are all gone is empty, not "without active".
#[test]
fn a_group_without_pods_is_empty_not_without_active() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1))]);
    ctl.settle(first);
    assert!(!ctl.state.is_empty());
    let ev = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(ev);
    assert!(ctl.state.is_empty());
    assert_eq!(actions, [Action::Health(Health::Empty)]);
    // A new replica that lists an empty group says so at once.
    let (_, first) = Ctl::acting([]);
    assert_eq!(first, [Action::Health(Health::Empty)]);
}

/// Item 7: a pod already on its way out (terminating, or Failed/Succeeded) whose critical
/// container exits is not force-deleted (that would cut its grace period); it still loses the
/// active role.
#[test]
fn no_kill_for_a_terminating_or_finished_pod() {
    let exits_while = |change: fn(&mut hapod_core::PodView)| {
        let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
        ctl.settle(first);
        let ev = ctl
            .api
            .modify("a", |p| {
                change(p);
                p.critical[0].terminated = true;
            })
            .unwrap();
        let first = ctl.feed(ev);
        let all = ctl.settle(first);
        assert!(
            writes(&all)
                .iter()
                .all(|w| !matches!(w.kind, WriteKind::Delete { .. })),
            "{all:?}"
        );
        assert_eq!(ctl.api.actives(), ["b"]);
        assert_eq!(ctl.api.pods["a"].role_label.as_deref(), Some("standby"));
    };
    exits_while(|p| p.deleting = true);
    exits_while(|p| p.phase = Phase::Failed);
    exits_while(|p| p.phase = Phase::Succeeded);
}

/// Item 1: the active is relabeled out of the group (the group sees it deleted, promotes
/// another) and back in with the same UID: it rejoins and is demoted next to the new active.
#[test]
fn an_active_that_leaves_and_rejoins_the_group_is_demoted() {
    let (mut ctl, first) = Ctl::acting([pod("p", 1), pod("q", 2)]);
    ctl.settle(first);
    let left = ctl.api.pods["p"].clone();
    let ev = ctl.api.remove("p").unwrap();
    let actions = ctl.feed(ev);
    ctl.settle(actions);
    assert_eq!(ctl.state.actives(), ["q"]);
    // A late duplicate from before it left is still dropped.
    assert!(ctl.feed(Event::Applied(left.clone())).is_empty());
    let back = ctl.api.put(left);
    let actions = ctl.feed(back);
    let demote = single_write(&actions);
    assert!(is_set_role(&demote, "p", Role::Standby), "{actions:?}");
    let all = ctl.settle(actions);
    let n = notifies(&all);
    assert_eq!(n.len(), 1, "{all:?}");
    assert_eq!((n[0].pod.as_str(), n[0].role), ("p", Role::Standby));
    assert_eq!(ctl.api.actives(), ["q"]);
    assert_eq!(ctl.state.actives(), ["q"]);
}

/// Item 9: an active that is merely unready stays active while no pod can take over, and is
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

/// Item 9: a hard loss (terminating) is demoted even with no successor.
#[test]
fn a_terminating_active_is_demoted_even_without_successor() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1))]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.deleting = true).unwrap();
    let actions = ctl.feed(ev);
    assert!(is_set_role(&single_write(&actions), "a", Role::Standby));
}

/// Item 9: two softly ineligible actives and no successor: one is kept, never both.
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

/// Item 13: a kept active this replica did not promote is told, even after the replica
/// announced another pod in the same term.
#[test]
fn a_kept_active_not_promoted_here_is_notified() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    ctl.settle(first);
    // Another writer labels "b" active with a higher epoch: "b" is kept, "a" demoted.
    let later = epoch::compose(1, 5);
    let ev = ctl
        .api
        .modify("b", |p| {
            p.role_label = Some("active".into());
            p.epoch = Some(later);
        })
        .unwrap();
    let actions = ctl.feed(ev);
    let all = ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["b"]);
    let told: Vec<_> = notifies(&all)
        .iter()
        .map(|n| (n.pod.as_str(), n.role, n.epoch))
        .filter(|n| n.1 == Role::Active)
        .collect();
    assert_eq!(told, [("b", Role::Active, later)]);
}

/// Item 13: a kept active without an epoch gets one written (fenced as every role write),
/// then is told.
#[test]
fn a_kept_active_without_epoch_is_adopted() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), None), pod("b", 2)]);
    let w = single_write(&first);
    assert_eq!(
        w.kind,
        WriteKind::SetRole {
            resource_version: ctl.api.pods["a"].resource_version.clone(),
            role: Role::Active,
            epoch: Some(epoch::compose(1, 1)),
            purpose: Purpose::Adopt,
        }
    );
    let (actions, _) = ctl.answer(&w);
    let n = notifies(&actions);
    assert_eq!(n.len(), 1);
    assert_eq!(
        (n[0].pod.as_str(), n[0].role, n[0].epoch),
        ("a", Role::Active, epoch::compose(1, 1))
    );
    assert!(actions.iter().any(|a| matches!(a,
        Action::Record(r) if r.kind == RecordKind::Adopted { epoch: epoch::compose(1, 1) })));
    assert_eq!(ctl.api.pods["a"].epoch, Some(epoch::compose(1, 1)));
    assert!(writes(&ctl.settle(actions)).is_empty());
    assert_eq!(ctl.api.actives(), ["a"]);
}

/// Item 1: a deletion older than the view already held (a re-read of the pod back in the group
/// overtook the watch event of it leaving) is stale: the pod stays, so a promotion of it that
/// lands is not mistaken for nothing.
#[test]
fn a_deletion_older_than_the_view_is_ignored() {
    let (mut ctl, first) = Ctl::acting([pod("a", 1), pod("b", 2)]);
    let promote = single_write(&first);
    let view = ctl.api.pods["a"].clone();
    let left = ctl.api.remove("a").unwrap();
    let Event::Applied(back) = ctl.api.put(view) else {
        unreachable!()
    };
    let (actions, _) = ctl.answer(&promote);
    assert_eq!(writes(&actions).len(), 0);
    // The re-read (pod back in the group) arrives before the watch event of it leaving.
    let retry = single_write(&ctl.feed(Event::Applied(back)));
    assert!(is_set_role(&retry, "a", Role::Active));
    assert!(ctl.feed(left).is_empty());
    let all = ctl.settle(vec![Action::Write(retry)]);
    assert_eq!(ctl.api.actives(), ["a"]);
    assert_eq!(promoted(&all).len(), 1, "{all:?}");
}

/// A force delete (grace 0, no finalizers) shows the pod terminating, then gone, within the
/// same API request: demoting it would be a write answered 404. The group waits for the pod to
/// vanish instead, and promotes with one write; no instant has two actives.
#[test]
fn a_force_deleted_active_is_not_demoted_but_replaced_once_gone() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("a", |p| {
            p.deleting = true;
            p.vanishing = true;
        })
        .unwrap();
    let actions = ctl.feed(ev);
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
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("a", |p| {
            p.deleting = true;
            p.vanishing = true;
        })
        .unwrap();
    assert!(writes(&ctl.feed(ev)).is_empty());
    ctl.now += Duration::from_secs(1);
    let demote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&demote, "a", Role::Standby));
}
