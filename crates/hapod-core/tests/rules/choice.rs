//! Which pod is active when nothing is failing: the initial choice, eligibility, odd pods and group sizes.

use super::*;

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

/// Two pods created in the same second (a replacement and the standby it joins): the one
/// ready longer is the older, whatever the names say.
#[test]
fn among_pods_created_in_the_same_second_the_one_ready_longer_is_chosen() {
    let mut standby = pod("warm", 3);
    standby.ready_since_unix_seconds = 3;
    let mut replacement = pod("fresh", 3);
    replacement.ready_since_unix_seconds = 5;
    let (mut ctl, first) = Ctl::acting([replacement, standby]);
    assert!(is_set_role(&single_write(&first), "warm", Role::Active));
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["warm"]);
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
    // The older pod it was chosen over is named, with why; the younger ones are not.
    let passed_over: Vec<(&str, &str)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(hapod_core::Record {
                pod: Some(pod),
                kind: RecordKind::PassedOver { why },
            }) => Some((pod.name.as_str(), *why)),
            _ => None,
        })
        .collect();
    assert_eq!(passed_over, [("pending", "not_ready")]);
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

/// A group whose pods are all gone is empty, not "without active".
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
