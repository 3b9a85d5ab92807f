//! The application lease: grants only to the kept active, promotion only once no other pod
//! can act on a grant (its end passed, or its agent stood down), a predecessor's unknown
//! grants waited out, and agents that lost their role reconciled.

use super::*;
use hapod_core::{ApplicationLease, Config, Record, ReportedRole};

const LIVE_SPAN: Duration = Duration::from_millis(300);
const PREDECESSOR_WINDOW: Duration = Duration::from_secs(2);

pub(super) fn leased() -> Config {
    Config {
        application_lease: Some(ApplicationLease {
            live_span: LIVE_SPAN,
            predecessor_window: PREDECESSOR_WINDOW,
            report_timeout: None,
        }),
        ..Config::default()
    }
}

fn wake_after(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::WakeAfter(d) => Some(*d),
        _ => None,
    })
}

/// Active "a" at epoch 3 and standby "b", acting past the predecessor's window, with one
/// heartbeat sent (a holds a grant from that moment).
fn steady() -> Ctl {
    let (mut ctl, first) = Ctl::acting_with(leased(), [active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    ctl.now += PREDECESSOR_WINDOW + LIVE_SPAN;
    let actions = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let granted: Vec<_> = orders(&actions).into_iter().filter(|o| o.grant).collect();
    assert_eq!(granted.len(), 1, "{actions:?}");
    assert_eq!((granted[0].pod.as_str(), granted[0].epoch), ("a", 3));
    ctl
}

/// a's agent relinquishes: standby at the epoch of its grant, unasked, 5 ms on.
fn relinquish_a(ctl: &mut Ctl) -> Vec<Action> {
    ctl.now += Duration::from_millis(5);
    ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 3,
        incarnation: 1,
    })
}

fn delete_a(ctl: &mut Ctl) -> Vec<Action> {
    ctl.now += Duration::from_millis(10);
    let gone = ctl.api.remove("a").unwrap();
    ctl.feed(gone)
}

#[test]
fn a_new_acting_replica_promotes_nobody_before_its_predecessor_could_have_stopped_granting() {
    let (mut ctl, first) = Ctl::acting_with(leased(), [pod("a", 1), pod("b", 2)]);
    assert!(writes(&first).is_empty(), "{first:?}");
    assert_eq!(wake_after(&first), Some(PREDECESSOR_WINDOW + LIVE_SPAN));
    ctl.now += PREDECESSOR_WINDOW + LIVE_SPAN;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "a", Role::Active));
    // The promotion is announced by an order that carries the grant.
    let (after, _) = ctl.answer(&promote);
    let told = orders(&after);
    assert_eq!(told.len(), 1);
    assert!(told[0].grant && told[0].role == Role::Active && told[0].pod == "a");
    assert!(notifies(&after).is_empty(), "no version 1 notification");
}

#[test]
fn heartbeats_grant_only_the_kept_active_and_tell_the_others_its_epoch() {
    let mut ctl = steady();
    let actions = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let b = orders(&actions).into_iter().find(|o| o.pod == "b").unwrap();
    assert_eq!((b.role, b.epoch, b.grant), (Role::Standby, 3, false));
}

#[test]
fn a_lost_active_is_replaced_only_once_its_grant_is_over() {
    let mut ctl = steady();
    let actions = delete_a(&mut ctl);
    assert!(writes(&actions).is_empty(), "{actions:?}");
    let wait = wake_after(&actions).expect("woken when the grant ends");
    assert_eq!(wait, LIVE_SPAN - Duration::from_millis(10));
    // A heartbeat meanwhile still tells the departed pod to stand by, and grants nobody.
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    assert!(orders(&beat).iter().all(|o| !o.grant));
    assert!(
        orders(&beat)
            .iter()
            .any(|o| o.pod == "a" && o.role == Role::Standby)
    );
    ctl.now += wait;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "b", Role::Active));
}

#[test]
fn a_standby_report_of_the_old_active_lets_the_promotion_go_at_once() {
    let mut ctl = steady();
    assert!(writes(&delete_a(&mut ctl)).is_empty());
    let stood_down = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 3,
        incarnation: 1,
    });
    let promote = single_write(&stood_down);
    assert!(is_set_role(&promote, "b", Role::Active));
    // Its epoch is above every epoch an agent reported.
    let WriteKind::SetRole { epoch, .. } = promote.kind else {
        unreachable!()
    };
    assert!(epoch.unwrap() > 3);
}

#[test]
fn a_lapsed_or_older_report_is_no_proof() {
    let mut ctl = steady();
    assert!(writes(&delete_a(&mut ctl)).is_empty());
    // Lapsed: a grant still in flight would make it act again.
    let lapsed = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Lapsed),
        epoch: 3,
        incarnation: 1,
    });
    assert!(writes(&lapsed).is_empty(), "{lapsed:?}");
    // Standby, but at an epoch below the grant's.
    let older = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 2,
        incarnation: 1,
    });
    assert!(writes(&older).is_empty(), "{older:?}");
}

#[test]
fn a_kept_active_whose_agent_restarted_gets_a_fresh_epoch_then_a_grant() {
    let mut ctl = steady();
    // Restarted with its epoch file at 3, nothing applied since: it refuses epoch 3.
    let actions = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: None,
        epoch: 3,
        incarnation: 1,
    });
    let adopt = single_write(&actions);
    let WriteKind::SetRole {
        role,
        epoch,
        purpose,
        ..
    } = &adopt.kind
    else {
        unreachable!()
    };
    assert_eq!(
        (adopt.pod.as_str(), *role, *purpose),
        ("a", Role::Active, Purpose::Adopt)
    );
    let fresh = epoch.unwrap();
    assert!(fresh > 3);
    let (after, _) = ctl.answer(&adopt);
    let told = orders(&after);
    assert_eq!(told.len(), 1, "{after:?}");
    assert!(told[0].grant && told[0].epoch == fresh);
}

#[test]
fn a_standby_that_believes_it_is_active_is_told_standby_at_its_own_epoch() {
    let mut ctl = steady();
    // b's agent still acts on an old promotion at a higher epoch of this term.
    let stray = epoch::compose(1, 9);
    ctl.feed(Event::Reported {
        uid: "b-uid".into(),
        role: Some(ReportedRole::Active),
        epoch: stray,
        incarnation: 1,
    });
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let b = orders(&beat).into_iter().find(|o| o.pod == "b").unwrap();
    assert_eq!((b.role, b.epoch, b.grant), (Role::Standby, stray, false));
}

#[test]
fn without_the_lease_nothing_changes_for_version_1() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    assert!(ctl.feed(Event::Heartbeat { heard: Vec::new() }).is_empty());
    let actions = delete_a(&mut ctl);
    assert!(is_set_role(&single_write(&actions), "b", Role::Active));
}

#[test]
fn a_pod_back_in_the_group_labeled_active_is_not_granted_while_another_grant_may_be_live() {
    let mut ctl = steady();
    // a leaves the group (relabeled by hand) holding a live grant; c comes in still labeled
    // active from elsewhere, so it is the group's kept active.
    ctl.now += Duration::from_millis(10);
    let left = ctl.api.leave("a").unwrap();
    ctl.feed(left);
    let back = ctl.api.put(active(pod("c", 0), Some(2)));
    ctl.feed(back);
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let c = orders(&beat).into_iter().find(|o| o.pod == "c").unwrap();
    assert_eq!((c.role, c.grant), (Role::Active, false), "{beat:?}");
    // Once a's grant is over, c is granted.
    ctl.now += LIVE_SPAN;
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let c = orders(&beat).into_iter().find(|o| o.pod == "c").unwrap();
    assert!(c.grant, "{beat:?}");
}

#[test]
fn after_a_takeover_only_the_pod_already_acting_is_granted_before_the_predecessor_window_ends() {
    // A new acting replica: a is labeled active; the predecessor's grants may be live.
    let (mut ctl, first) = Ctl::acting_with(leased(), [active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let a = orders(&beat).into_iter().find(|o| o.pod == "a").unwrap();
    assert!(!a.grant, "a's agent has not said it acts: {beat:?}");
    // Its agent reports acting at its epoch (on the predecessor's grant): it is continued.
    ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Active),
        epoch: 3,
        incarnation: 1,
    });
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let a = orders(&beat).into_iter().find(|o| o.pod == "a").unwrap();
    assert!(a.grant, "{beat:?}");
}

/// A promotion write abandoned at the renew deadline (outcome Failed) may still have been
/// applied by the API server: no other pod may be promoted until that pod is known not to be
/// active, with or without the application lease, whether the watch shows the landed write
/// before or after the outcome. (Found by `cargo xtask chaos --seed 196034552`, at the first
/// promotion of a new group under load: the first pod to be Ready was promoted, the patch
/// landed after the controller gave up on it, meanwhile the other pod, first by name with the
/// same creation second, turned Ready and was promoted before the first was demoted.)
#[test]
fn an_abandoned_promotion_that_landed_is_not_followed_by_another() {
    for (config, echo_first) in [
        (Config::default(), false),
        (Config::default(), true),
        (leased(), false),
        (leased(), true),
    ] {
        let what = format!(
            "lease {}, echo first {echo_first}",
            config.application_lease.is_some()
        );
        let mut b = pod("b", 1);
        b.ready = false;
        let (mut ctl, mut actions) = Ctl::acting_with(config, [pod("a", 2), b]);
        if writes(&actions).is_empty() {
            ctl.now += PREDECESSOR_WINDOW + LIVE_SPAN;
            actions = ctl.feed(Event::Tick);
        }
        let promote = single_write(&actions);
        assert!(is_set_role(&promote, "a", Role::Active), "{what}");
        // Applied, but the controller stopped waiting for the answer.
        let (_, echo) = ctl.api.execute(&promote);
        let echo = echo.expect("the promotion's watch event");
        let b_ready = ctl.api.modify("b", |p| p.ready = true).unwrap();
        let mut actions = ctl.feed(b_ready);
        if echo_first {
            actions.extend(ctl.feed(echo.clone()));
        }
        actions.extend(ctl.feed(Event::Outcome {
            op: promote.op,
            outcome: WriteOutcome::Failed,
        }));
        for _ in 0..3 {
            ctl.now += Duration::from_secs(1);
            actions.extend(ctl.feed(Event::Heartbeat { heard: Vec::new() }));
            actions.extend(ctl.feed(Event::Tick));
        }
        if !echo_first {
            actions.extend(ctl.feed(echo));
        }
        // The fake API panics at a promotion while another pod is active.
        ctl.settle(actions);
        assert_eq!(ctl.api.actives().len(), 1, "{what}");
    }
}

/// An active whose agent relinquished the role (its process got SIGTERM): the standby
/// report at the active's own epoch comes before the watch shows the deletionTimestamp,
/// or without one (a container restart). It is replaced at once, without waiting for its
/// grant, and not given a fresh epoch to act on (it would refuse it, and report again).
#[test]
fn a_relinquishing_active_is_replaced_at_its_report_without_waiting_for_its_grant() {
    let mut ctl = steady();
    let report = relinquish_a(&mut ctl);
    let all = ctl.settle(report);
    assert_eq!(ctl.api.actives(), ["b"], "{all:?}");
    let promotions = promoted(&all);
    assert_eq!(promotions.len(), 1, "{all:?}");
    assert_eq!(
        (promotions[0].0.as_str(), promotions[0].2),
        ("b", PromotionReason::Relinquished)
    );
    assert!(
        !all.iter().any(|a| matches!(a, Action::Write(w)
            if w.pod == "a" && matches!(w.kind, WriteKind::SetRole { role: Role::Active, .. }))),
        "the relinquished pod got a fresh epoch: {all:?}"
    );
    // The deletionTimestamp that follows changes nothing.
    ctl.now += Duration::from_millis(5);
    let ev = ctl.api.modify("a", |p| p.deleting = true).unwrap();
    let after = ctl.feed(ev);
    assert!(writes(&after).is_empty(), "{after:?}");
}

/// Only a pod labeled active can relinquish: a standby (here once active at epoch 2) is told
/// the active's epoch and reports standby at it all the time, and stays a candidate.
#[test]
fn a_standby_reporting_standby_at_the_actives_epoch_stays_eligible() {
    let mut ctl = steady();
    let ev = ctl.api.modify("b", |p| p.epoch = Some(2)).unwrap();
    ctl.feed(ev);
    let report = ctl.feed(Event::Reported {
        uid: "b-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 3,
        incarnation: 1,
    });
    assert!(writes(&report).is_empty(), "{report:?}");
    ctl.now += LIVE_SPAN;
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let actions = ctl.feed(ev);
    let all = ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["b"], "{all:?}");
}

/// A standby report at or above a pod's label epoch is not by itself a relinquish: a second
/// active (here back in the group, labeled active with an older epoch) is told to stand by at
/// the kept active's epoch and says so. It stays a candidate once demoted.
#[test]
fn a_second_active_told_to_stand_by_has_not_relinquished() {
    let (mut ctl, first) = Ctl::acting_with(
        leased(),
        [active(pod("a", 1), Some(3)), active(pod("c", 2), Some(2))],
    );
    ctl.feed(Event::Reported {
        uid: "c-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 3,
        incarnation: 1,
    });
    ctl.settle(first);
    assert_eq!(ctl.api.actives(), ["a"]);
    ctl.now += PREDECESSOR_WINDOW + LIVE_SPAN;
    let gone = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(gone);
    ctl.settle(actions);
    ctl.now += LIVE_SPAN;
    let actions = ctl.feed(Event::Tick);
    let all = ctl.settle(actions);
    assert_eq!(ctl.api.actives(), ["c"], "{all:?}");
}

/// The kept active's agent stood down at an epoch of a far later term (an edited annotation
/// it was told): every epoch this term can give is older, so no fresh one is written (it was
/// a write loop: each fresh epoch stood down too).
#[test]
fn an_agent_standing_down_beyond_the_term_gets_no_endless_fresh_epochs() {
    let mut ctl = steady();
    let report = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: epoch::compose(100, 1),
        incarnation: 1,
    });
    let all = ctl.settle(report);
    let adopts = writes(&all)
        .iter()
        .filter(|w| {
            matches!(
                w.kind,
                WriteKind::SetRole {
                    purpose: Purpose::Adopt,
                    ..
                }
            )
        })
        .count();
    assert!(adopts <= 1, "{adopts} fresh epochs: {all:?}");
}

/// An unready active is told to stand by at its own epoch while a successor stands ready
/// (its demotion is in flight); the successor turns unready too, so the old active is kept
/// again, told active at that epoch before its agent's answer is fed. That answer, standby at
/// the epoch, answers this replica's own standby order: it is no relinquish. The pod stays a
/// candidate, and once Ready again it is the active, with a fresh epoch its agent takes.
/// Found by the chaos run: the pod was marked relinquished for good and its group had no
/// active at all.
#[test]
fn an_active_told_to_stand_by_then_kept_again_has_not_relinquished() {
    let mut ctl = steady();
    ctl.now += Duration::from_millis(5);
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    let demote = single_write(&ctl.feed(ev));
    assert!(is_set_role(&demote, "a", Role::Standby), "{demote:?}");
    // b could take over: a is not kept, and the heartbeat tells it to stand by at 3.
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let to_a = orders(&beat).into_iter().find(|o| o.pod == "a").unwrap();
    assert_eq!((to_a.role, to_a.epoch), (Role::Standby, 3), "{beat:?}");
    // b turns unready while the demotion is in flight: a is kept again.
    ctl.now += Duration::from_millis(5);
    let ev = ctl.api.modify("b", |p| p.ready = false).unwrap();
    ctl.feed(ev);
    // The next heartbeat runs before a's report, still queued, is fed; the order channel's
    // book has heard it already.
    ctl.now += Duration::from_millis(1);
    let heard = vec![("a-uid".to_string(), ctl.now)];
    ctl.now += Duration::from_millis(1);
    ctl.feed(Event::Heartbeat { heard });
    // a's agent answered the standby order: standby at 3.
    let report = ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: 3,
        incarnation: 1,
    });
    let (demoted, echo) = ctl.answer(&demote);
    let mut all = report;
    all.extend(demoted);
    all.extend(echo.map(|echo| ctl.feed(echo)).unwrap_or_default());
    ctl.settle(all);
    ctl.now += LIVE_SPAN;
    let ev = ctl.api.modify("a", |p| p.ready = true).unwrap();
    let actions = ctl.feed(ev);
    let mut all = ctl.settle(actions);
    let tick = ctl.feed(Event::Tick);
    all.extend(ctl.settle(tick));
    assert_eq!(ctl.api.actives(), ["a"], "{all:?}");
    let a = ctl.api.pods.get("a").unwrap();
    assert!(
        a.epoch > Some(3),
        "a has no epoch its agent takes: {a:?}\n{all:?}"
    );
}

/// The active's agent relinquished (its container got SIGTERM), and the container restarted
/// in place instead of the pod going away (a failed liveness probe). The new agent process
/// takes the standby order it is sent and reports standby: it gave nothing up, so the pod is
/// a candidate again and takes over when the active is lost.
#[test]
fn a_restarted_agent_of_a_relinquished_pod_makes_it_a_candidate_again() {
    let mut ctl = steady();
    let report = relinquish_a(&mut ctl);
    ctl.settle(report);
    assert_eq!(ctl.api.actives(), ["b"]);
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let to_a = orders(&beat).into_iter().find(|o| o.pod == "a").unwrap();
    assert_eq!(to_a.role, Role::Standby);
    // A new process of a's agent: it applied that order and says so.
    ctl.feed(Event::Reported {
        uid: "a-uid".into(),
        role: Some(ReportedRole::Standby),
        epoch: to_a.epoch,
        incarnation: 2,
    });
    ctl.now += LIVE_SPAN;
    let gone = ctl.api.remove("b").unwrap();
    let actions = ctl.feed(gone);
    let mut all = ctl.settle(actions);
    ctl.now += LIVE_SPAN;
    let tick = ctl.feed(Event::Tick);
    all.extend(ctl.settle(tick));
    assert_eq!(ctl.api.actives(), ["a"], "{all:?}");
}

/// The `Acknowledged` records among `actions`: the pod, its role, the epoch and the round trip.
fn acknowledged(actions: &[Action]) -> Vec<(String, Role, u64, Option<Duration>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(Record {
                pod: Some(pod),
                kind:
                    RecordKind::Acknowledged {
                        role,
                        epoch,
                        round_trip,
                    },
            }) => Some((pod.name.clone(), *role, *epoch, *round_trip)),
            _ => None,
        })
        .collect()
}

fn report(ctl: &mut Ctl, uid: &str, role: ReportedRole, epoch: u64) -> Vec<Action> {
    ctl.feed(Event::Reported {
        uid: uid.into(),
        role: Some(role),
        epoch,
        incarnation: 1,
    })
}

#[test]
fn the_actives_application_taking_its_role_is_recorded_once_with_the_round_trip() {
    let mut ctl = steady();
    // a's agent answers the grant sent with the heartbeat 2 ms ago.
    ctl.now += Duration::from_millis(2);
    assert_eq!(
        acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Active, 3)),
        [(
            "a".to_owned(),
            Role::Active,
            3,
            Some(Duration::from_millis(2))
        )]
    );
    // Saying the same again records nothing.
    ctl.feed(Event::Heartbeat { heard: Vec::new() });
    ctl.now += Duration::from_millis(1);
    assert!(acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Active, 3)).is_empty());
    // Its grant lapsed, then taken again: the application took the role anew.
    assert!(acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Lapsed, 3)).is_empty());
    assert_eq!(
        acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Active, 3))
            .into_iter()
            .map(|(pod, _, epoch, _)| (pod, epoch))
            .collect::<Vec<_>>(),
        [("a".to_owned(), 3)]
    );
}

#[test]
fn a_report_of_acting_before_the_watch_shows_its_epoch_is_recorded_once_the_label_is_seen() {
    let mut ctl = steady();
    // a's agent acts at epoch 4 before the watch shows a labeled with it (the report of the
    // grant that followed the promotion can beat the promotion's watch event).
    assert!(acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Active, 4)).is_empty());
    let ev = ctl.api.modify("a", |p| p.epoch = Some(4)).unwrap();
    assert_eq!(
        acknowledged(&ctl.feed(ev))
            .into_iter()
            .map(|(pod, role, epoch, _)| (pod, role, epoch))
            .collect::<Vec<_>>(),
        [("a".to_owned(), Role::Active, 4)]
    );
    // Once.
    assert!(acknowledged(&ctl.feed(Event::Heartbeat { heard: Vec::new() })).is_empty());
}

#[test]
fn a_standby_standing_by_at_the_epoch_it_was_told_is_recorded_once() {
    let mut ctl = steady();
    // The heartbeat told b to stand by at the active's epoch 3.
    assert_eq!(
        acknowledged(&report(&mut ctl, "b-uid", ReportedRole::Standby, 3)),
        [("b".to_owned(), Role::Standby, 3, None)]
    );
    assert!(acknowledged(&report(&mut ctl, "b-uid", ReportedRole::Standby, 3)).is_empty());
}

#[test]
fn a_role_other_than_the_label_or_at_another_epoch_is_no_acknowledgement() {
    let mut ctl = steady();
    // a's agent still acts on an older promotion; b's believes it is active, or stands by at
    // an epoch it was not told.
    assert!(acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Active, 2)).is_empty());
    assert!(acknowledged(&report(&mut ctl, "b-uid", ReportedRole::Active, 3)).is_empty());
    assert!(acknowledged(&report(&mut ctl, "b-uid", ReportedRole::Standby, 2)).is_empty());
    // The labeled active standing by acknowledges nothing.
    assert!(acknowledged(&report(&mut ctl, "a-uid", ReportedRole::Standby, 3)).is_empty());
}
