//! Critical containers: a death makes the pod ineligible and gets it deleted, unless it is leaving already.

use super::*;

#[test]
fn critical_death_makes_a_pod_ineligible() {
    let mut crashed = pod("a", 1);
    crashed.critical[0].waiting_reason = Some("CrashLoopBackOff".into());
    let (_, first) = Ctl::acting([crashed, pod("b", 2)]);
    // Failover choice skips "a"; its kill comes after the promotion.
    assert!(is_set_role(&single_write(&first), "b", Role::Active));
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
    // Demote a, promote b, then delete a.
    assert_eq!(
        write_order(&all),
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

/// A critical container never restarts in place, so a restart the controller did not
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

/// A deleting pod with restarts is not killed again.
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

/// A delete with grace period 0 removes the pod at once, so the watch may deliver its
/// deletion before the delete's answer comes: the kill is recorded all the same (the metric,
/// the log line and the Event of a killed standby were lost that way).
#[test]
fn a_kill_is_recorded_when_the_deletion_is_seen_before_the_answer() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(1)), pod("s", 2)]);
    ctl.settle(first);
    let ev = ctl
        .api
        .modify("s", |p| p.critical[0].terminated = true)
        .unwrap();
    let kill = single_write(&ctl.feed(ev));
    let (outcome, echo) = ctl.api.execute(&kill);
    let mut actions = ctl.feed(echo.expect("the delete's watch event"));
    actions.extend(ctl.feed(Event::Outcome {
        op: kill.op,
        outcome,
    }));
    let killed = actions.iter().any(|a| {
        matches!(a, Action::Record(r) if r.kind == RecordKind::Killed { container: "crit".into() }
            && r.pod.as_ref().is_some_and(|p| (p.name.as_str(), p.uid.as_str()) == ("s", "s-uid")))
    });
    assert!(killed, "{actions:?}");
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

/// A pod already on its way out (terminating, or Failed/Succeeded) whose critical
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
