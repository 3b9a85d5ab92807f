//! Write outcomes and leadership: conflicts, stale events, refusals, backoff, and a standby replica that never writes.

use super::*;

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

/// A deletion older than the view already held (a re-read of the pod back in the group
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
