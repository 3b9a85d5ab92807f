//! Epochs: increasing within and across terms, floors, and epochs that cannot be legitimate.

use super::*;

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

/// One active carrying an epoch of a term above the acting one (nobody can have
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

/// A recreated group continues above the epochs issued before.
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
