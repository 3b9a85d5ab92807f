//! A paused group (a member carries `hapod.io/paused=true`): no promotion, no demotion, no
//! kill, whatever happens to its pods; a pod without a role is still labeled standby, and the
//! labeled active keeps its grant. Once no member carries the annotation, the rules apply at
//! once.

use super::lease::leased;
use super::*;

/// Active "a" (epoch 3) and standby "b", settled, then both annotated paused (as
/// `kubectl hapod pause` does), every write answered.
fn paused_pair(config: hapod_core::Config) -> Ctl {
    let (mut ctl, first) = Ctl::acting_with(config, [active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    for name in ["a", "b"] {
        let ev = ctl.api.modify(name, |p| p.paused = true).unwrap();
        let actions = ctl.feed(ev);
        assert!(writes(&actions).is_empty(), "{actions:?}");
    }
    ctl
}

/// Lifts the pause from every pod; what the group does then, until it settles.
fn resume(ctl: &mut Ctl) -> Vec<Action> {
    let mut all = Vec::new();
    for name in ctl.api.paused() {
        let ev = ctl.api.modify(&name, |p| p.paused = false).unwrap();
        let actions = ctl.feed(ev);
        all.extend(ctl.settle(actions));
    }
    all
}

/// Feeds `ev` and lets time pass (a resync): the group must not write anything.
fn assert_no_write_after(ctl: &mut Ctl, ev: Event, what: &str) {
    let mut actions = ctl.feed(ev);
    ctl.now += Duration::from_secs(60);
    actions.extend(ctl.feed(Event::Tick));
    assert!(writes(&actions).is_empty(), "{what}: {actions:?}");
}

#[test]
fn a_paused_group_promotes_nobody_when_its_active_is_force_deleted() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    let ev = ctl.api.modify("a", force_deleting).unwrap();
    assert_no_write_after(&mut ctl, ev, "a force delete seen");
    let gone = ctl.api.remove("a").unwrap();
    assert_no_write_after(&mut ctl, gone, "the active gone");
    assert!(ctl.api.actives().is_empty());
    assert_eq!(ctl.state.actives(), Vec::<&str>::new());
}

#[test]
fn a_paused_group_kills_no_pod_whose_critical_container_died() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    for name in ["a", "b"] {
        let ev = ctl
            .api
            .modify(name, |p| p.critical[0].terminated = true)
            .unwrap();
        assert_no_write_after(&mut ctl, ev, &format!("{name}'s critical container dead"));
    }
    assert_eq!(ctl.api.actives(), ["a"]);
    assert_eq!(ctl.api.pods.len(), 2);
}

/// Every failover trigger of an active that still exists: with a ready standby beside it,
/// nothing moves while paused.
#[test]
fn a_paused_group_moves_the_role_for_no_trigger() {
    type Trigger = (&'static str, fn(&mut hapod_core::PodView));
    let triggers: [Trigger; 6] = [
        ("not ready", |p| p.ready = false),
        ("terminating", |p| p.deleting = true),
        ("failed", |p| p.phase = Phase::Failed),
        ("no IP", |p| p.pod_ips.clear()),
        ("drained", |p| p.drained = true),
        ("restarted", |p| p.critical[0].restart_count = 1),
    ];
    for (what, change) in triggers {
        let mut ctl = paused_pair(hapod_core::Config::default());
        let ev = ctl.api.modify("a", change).unwrap();
        assert_no_write_after(&mut ctl, ev, what);
        assert_eq!(ctl.api.actives(), ["a"], "{what}");
    }
}

/// A pod without a role changes no role when labeled standby: that goes on while paused.
#[test]
fn a_paused_group_still_labels_a_new_pod_standby() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    let mut newcomer = pod("c", 3);
    newcomer.role_label = None;
    let ev = ctl.api.put(newcomer);
    let repair = single_write(&ctl.feed(ev));
    assert!(is_set_role(&repair, "c", Role::Standby), "{repair:?}");
    assert!(matches!(
        repair.kind,
        WriteKind::SetRole {
            purpose: Purpose::Repair,
            ..
        }
    ));
}

/// One paused pod is enough: resuming the other leaves the group paused.
#[test]
fn the_group_stays_paused_while_any_member_is_annotated() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    let ev = ctl.api.modify("b", |p| p.paused = false).unwrap();
    ctl.feed(ev);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    assert_no_write_after(&mut ctl, ev, "a not ready, a still paused");
    assert_eq!(ctl.api.actives(), ["a"]);
}

/// Resumed, the group promotes at once; the failover counts from the resume, not from the
/// loss the pause held back.
#[test]
fn a_resumed_group_replaces_its_lost_active_at_once() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    let gone = ctl.api.remove("a").unwrap();
    assert_no_write_after(&mut ctl, gone, "the active gone");
    ctl.now += Duration::from_secs(3600);
    let all = resume(&mut ctl);
    assert_eq!(ctl.api.actives(), ["b"]);
    assert_eq!(promoted(&all)[0].2, PromotionReason::Deleted);
    let latency = all.iter().find_map(|a| match a {
        Action::Record(hapod_core::Record {
            kind: RecordKind::Promoted { latency, .. },
            ..
        }) => *latency,
        _ => None,
    });
    assert_eq!(latency, Some(Duration::ZERO), "{all:?}");
}

/// What the pause held back happens on resume, in the usual order: demote, promote, kill.
#[test]
fn a_resumed_group_fails_over_from_a_dead_active_and_kills_it() {
    let mut ctl = paused_pair(hapod_core::Config::default());
    let ev = ctl
        .api
        .modify("a", |p| p.critical[0].terminated = true)
        .unwrap();
    assert_no_write_after(&mut ctl, ev, "a's critical container dead");
    let all = resume(&mut ctl);
    assert_eq!(
        write_order(&all),
        [("a".into(), false), ("b".into(), false), ("a".into(), true)]
    );
    assert_eq!(ctl.api.actives(), ["b"]);
}

/// Application lease: the labeled active keeps being granted while paused, also when it is
/// not ready beside a ready standby (nothing is promoted, so nobody else may act); the
/// standby is told to stand by.
#[test]
fn while_paused_the_labeled_active_keeps_its_grant() {
    let mut ctl = paused_pair(leased());
    ctl.now += Duration::from_secs(3);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    assert_no_write_after(&mut ctl, ev, "a not ready");
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let told: Vec<(&str, Role, bool)> = orders(&beat)
        .iter()
        .map(|o| (o.pod.as_str(), o.role, o.grant))
        .collect();
    assert_eq!(
        told,
        [("a", Role::Active, true), ("b", Role::Standby, false)],
        "{beat:?}"
    );
}

/// The `Paused` and `Resumed` records among `actions`: the pod each is about, and which.
fn pause_records(actions: &[Action]) -> Vec<(String, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) => {
                let which = match r.kind {
                    RecordKind::Paused => "paused",
                    RecordKind::Resumed => "resumed",
                    _ => return None,
                };
                Some((r.pod.as_ref()?.name.clone(), which))
            }
            _ => None,
        })
        .collect()
}

/// Changes pod `name` and returns the pause records of what the group does.
fn pause_records_after(
    ctl: &mut Ctl,
    name: &str,
    change: fn(&mut hapod_core::PodView),
) -> Vec<(String, &'static str)> {
    let ev = ctl.api.modify(name, change).unwrap();
    pause_records(&ctl.feed(ev))
}

/// The acting replica records each change once: `Paused` on the pod carrying the annotation,
/// `Resumed` on the group's oldest pod; nothing in between, nothing from a replica that does
/// not act.
#[test]
fn a_pause_and_its_end_are_recorded_once_each() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let paused = pause_records_after(&mut ctl, "b", |p| p.paused = true);
    assert_eq!(paused, [("b".to_owned(), "paused")]);
    for (name, change) in [
        ("a", (|p| p.paused = true) as fn(&mut hapod_core::PodView)),
        ("a", |p| p.ready = false),
        ("b", |p| p.paused = false),
    ] {
        assert!(pause_records_after(&mut ctl, name, change).is_empty());
    }
    let resumed = pause_records_after(&mut ctl, "a", |p| p.paused = false);
    assert_eq!(resumed, [("a".to_owned(), "resumed")]);
    ctl.feed(Event::Leadership(None));
    assert!(pause_records_after(&mut ctl, "b", |p| p.paused = true).is_empty());
}
