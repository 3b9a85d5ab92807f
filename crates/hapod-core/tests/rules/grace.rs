//! A group's not-Ready grace (`hapod.io/not-ready-grace-ms`, the longest of its members): an
//! active that stops being Ready keeps the role that long, woken when it is over, and the role
//! moves as without a grace (reason `not_ready`) only if it is still not Ready then. Nothing
//! else is graced: a deletion or a dead critical container moves the role at once.

use super::*;

const GRACE: Duration = Duration::from_secs(2);

/// Active "a" (epoch 3) and standby "b" carrying `grace`, settled.
fn graced_pair(grace: Duration) -> Ctl {
    let with_grace = |mut view: hapod_core::PodView| {
        view.not_ready_grace = grace;
        view
    };
    let (mut ctl, first) = Ctl::acting([
        with_grace(active(pod("a", 1), Some(3))),
        with_grace(pod("b", 2)),
    ]);
    ctl.settle(first);
    ctl
}

/// "a" stops being Ready now; what the group does.
fn a_not_ready(ctl: &mut Ctl) -> Vec<Action> {
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    ctl.feed(ev)
}

fn wakes(actions: &[Action]) -> Vec<Duration> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WakeAfter(d) => Some(*d),
            _ => None,
        })
        .collect()
}

/// The promotion the group makes from `first` on, every write answered: the pod, its reason
/// and latency.
fn failover(ctl: &mut Ctl, first: Vec<Action>) -> (String, PromotionReason, Option<Duration>) {
    let all = ctl.settle(first);
    let promotion = all.iter().find_map(|a| match a {
        Action::Record(hapod_core::Record {
            pod: Some(pod),
            kind: RecordKind::Promoted {
                reason, latency, ..
            },
        }) => Some((pod.name.clone(), *reason, *latency)),
        _ => None,
    });
    promotion.unwrap_or_else(|| panic!("no promotion in {all:?}"))
}

#[test]
fn a_grace_of_zero_moves_the_role_at_once_and_a_grace_holds_it() {
    let mut ctl = graced_pair(Duration::ZERO);
    let demote = single_write(&a_not_ready(&mut ctl));
    assert!(is_set_role(&demote, "a", Role::Standby), "{demote:?}");
    let mut ctl = graced_pair(GRACE);
    let held = a_not_ready(&mut ctl);
    assert!(writes(&held).is_empty(), "{held:?}");
    assert_eq!(wakes(&held), [GRACE]);
}

#[test]
fn a_not_ready_active_keeps_the_role_within_the_grace() {
    let mut ctl = graced_pair(GRACE);
    a_not_ready(&mut ctl);
    ctl.now += GRACE - Duration::from_millis(1);
    let tick = ctl.feed(Event::Tick);
    assert!(writes(&tick).is_empty(), "{tick:?}");
    // Woken again for what is left of it.
    assert_eq!(wakes(&tick), [Duration::from_millis(1)]);
    assert_eq!(ctl.api.actives(), ["a"]);
}

/// Once the grace is over the role moves as it does without one; the failover's latency counts
/// from the end of the grace, not from the loss of Ready.
#[test]
fn after_the_grace_the_role_moves_with_reason_not_ready() {
    let mut ctl = graced_pair(GRACE);
    let held = a_not_ready(&mut ctl);
    ctl.now += wakes(&held)[0];
    let tick = ctl.feed(Event::Tick);
    let demote = single_write(&tick);
    assert!(is_set_role(&demote, "a", Role::Standby), "{tick:?}");
    assert_eq!(
        failover(&mut ctl, tick),
        ("b".into(), PromotionReason::NotReady, Some(Duration::ZERO))
    );
    assert_eq!(ctl.api.actives(), ["b"]);
}

/// Ready again within the grace: nothing moves, and the wake of that grace finds nothing to
/// do; a later loss of Ready gets a grace of its own, counted afresh.
#[test]
fn ready_again_within_the_grace_moves_nothing_and_the_next_loss_has_a_full_grace() {
    let mut ctl = graced_pair(GRACE);
    a_not_ready(&mut ctl);
    ctl.now += GRACE / 2;
    let ev = ctl.api.modify("a", |p| p.ready = true).unwrap();
    let back = ctl.feed(ev);
    assert!(
        writes(&back).is_empty() && wakes(&back).is_empty(),
        "{back:?}"
    );
    ctl.now += GRACE / 2;
    let stale_wake = ctl.feed(Event::Tick);
    assert!(writes(&stale_wake).is_empty(), "{stale_wake:?}");
    let again = a_not_ready(&mut ctl);
    assert!(writes(&again).is_empty(), "{again:?}");
    assert_eq!(wakes(&again), [GRACE]);
    ctl.now += GRACE / 2;
    let inside = ctl.feed(Event::Tick);
    assert!(writes(&inside).is_empty(), "{inside:?}");
    ctl.now += GRACE / 2;
    let over = ctl.feed(Event::Tick);
    assert!(is_set_role(&single_write(&over), "a", Role::Standby));
}

/// A loss the grace does not cover, seen while the active is within its grace: the role
/// moves at once, with that loss's reason.
#[test]
fn a_deletion_or_critical_death_within_the_grace_moves_the_role_at_once() {
    type Loss = (&'static str, fn(&mut hapod_core::PodView), PromotionReason);
    let losses: [Loss; 4] = [
        (
            "terminating",
            |p| p.deleting = true,
            PromotionReason::Terminating,
        ),
        (
            "critical container dead",
            |p| p.critical[0].terminated = true,
            PromotionReason::CriticalDeath,
        ),
        ("drained", |p| p.drained = true, PromotionReason::NotReady),
        ("no IP", |p| p.pod_ips.clear(), PromotionReason::NotReady),
    ];
    for (what, change, reason) in losses {
        let mut ctl = graced_pair(GRACE);
        a_not_ready(&mut ctl);
        ctl.now += GRACE / 4;
        let ev = ctl.api.modify("a", change).unwrap();
        let lost = ctl.feed(ev);
        let demote = single_write(&lost);
        assert!(is_set_role(&demote, "a", Role::Standby), "{what}: {lost:?}");
        let (promoted, why, _) = failover(&mut ctl, lost);
        assert_eq!((promoted.as_str(), why), ("b", reason), "{what}");
    }
}

#[test]
fn a_force_deleted_active_within_the_grace_is_replaced_once_gone() {
    let mut ctl = graced_pair(GRACE);
    a_not_ready(&mut ctl);
    ctl.now += GRACE / 4;
    let ev = ctl.api.modify("a", force_deleting).unwrap();
    ctl.feed(ev);
    let gone = ctl.api.remove("a").unwrap();
    let replaced = ctl.feed(gone);
    let promote = single_write(&replaced);
    assert!(is_set_role(&promote, "b", Role::Active), "{replaced:?}");
    // The reason is the first loss seen that the grace does not cover.
    let (_, reason, _) = failover(&mut ctl, replaced);
    assert_eq!(reason, PromotionReason::Terminating);
}

/// Application lease: an active whose agent falls silent while the group answers is judged
/// unresponsive and replaced as without a grace, within it.
#[test]
fn a_silent_active_within_the_grace_is_demoted_once_judged() {
    let mut ctl = silence::steady();
    let ev = ctl.api.modify("b", |p| p.not_ready_grace = GRACE).unwrap();
    ctl.feed(ev);
    let unready_at = ctl.now;
    let held = a_not_ready(&mut ctl);
    assert!(writes(&held).is_empty(), "{held:?}");
    let judged = silence::beats(&mut ctl, 4, &["b"]);
    assert!(ctl.now < unready_at + GRACE);
    let demote = single_write(&judged);
    assert!(is_set_role(&demote, "a", Role::Standby), "{judged:?}");
}

/// Members that disagree: the longest grace any of them carries is the group's.
#[test]
fn the_longest_grace_of_the_group_counts() {
    let mut ctl = graced_pair(Duration::ZERO);
    let ev = ctl.api.modify("b", |p| p.not_ready_grace = GRACE).unwrap();
    ctl.feed(ev);
    let held = a_not_ready(&mut ctl);
    assert!(writes(&held).is_empty(), "{held:?}");
    assert_eq!(wakes(&held), [GRACE]);
}

/// A replica that first sees the active not Ready (started, or re-listed) counts the grace
/// from the Ready condition's last transition: no fresh grace after a restart.
#[test]
fn a_replica_counts_the_grace_from_the_ready_conditions_transition() {
    let unready_for = |for_: Duration| {
        let mut a = active(pod("a", 1), Some(3));
        a.not_ready_grace = GRACE;
        a.ready = false;
        a.unready_for = Some(for_);
        a
    };
    // Not Ready for longer than the grace already: replaced at once.
    let (mut ctl, first) = Ctl::acting([unready_for(GRACE * 3), pod("b", 2)]);
    assert!(
        is_set_role(&single_write(&first), "a", Role::Standby),
        "{first:?}"
    );
    let (promoted, reason, _) = failover(&mut ctl, first);
    assert_eq!(
        (promoted.as_str(), reason),
        ("b", PromotionReason::NotReady)
    );
    // For part of it: what is left of it.
    let (_, first) = Ctl::acting([unready_for(GRACE / 4), pod("b", 2)]);
    assert!(writes(&first).is_empty(), "{first:?}");
    assert_eq!(wakes(&first), [GRACE * 3 / 4]);
}
