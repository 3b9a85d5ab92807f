//! Role labels: more than one active, wrong labels, pods that leave and rejoin, and telling a kept active.

use super::*;

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

/// The active is relabeled out of the group (the group sees it deleted, promotes
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

/// A kept active this replica did not promote is told, even after the replica
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

/// A kept active without an epoch gets one written (fenced as every role write),
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
