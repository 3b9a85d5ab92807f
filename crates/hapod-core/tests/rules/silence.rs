//! Detection beyond the API: an agent that stops reporting while the others of its group
//! still answer is unresponsive, and an unresponsive active is replaced once its grant is
//! over. Nobody answering judges nobody (the fault may be the controller's own path).

use super::*;
use hapod_core::{ApplicationLease, Config, ReportedRole};

const LIVE_SPAN: Duration = Duration::from_millis(300);
const REPORT_TIMEOUT: Duration = Duration::from_millis(150);
const HEARTBEAT: Duration = Duration::from_millis(50);

fn config() -> Config {
    Config {
        application_lease: Some(ApplicationLease {
            live_span: LIVE_SPAN,
            predecessor_window: Duration::ZERO,
            report_timeout: Some(REPORT_TIMEOUT),
        }),
        ..Config::default()
    }
}

fn report(ctl: &mut Ctl, pod: &str, role: ReportedRole, epoch: u64) -> Vec<Action> {
    ctl.feed(Event::Reported {
        uid: format!("{pod}-uid"),
        role: Some(role),
        epoch,
        incarnation: 1,
    })
}

/// Active "a" at epoch 3 holding a grant, standby "b", past the predecessor's window; both
/// agents answered the last heartbeat.
pub(super) fn steady() -> Ctl {
    let (mut ctl, first) = Ctl::acting_with(config(), [active(pod("a", 1), Some(3)), pod("b", 2)]);
    ctl.settle(first);
    ctl.now += LIVE_SPAN;
    report(&mut ctl, "a", ReportedRole::Lapsed, 3);
    report(&mut ctl, "b", ReportedRole::Standby, 3);
    ctl.now += HEARTBEAT;
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    assert!(
        orders(&beat).iter().any(|o| o.pod == "a" && o.grant),
        "{beat:?}"
    );
    report(&mut ctl, "a", ReportedRole::Active, 3);
    report(&mut ctl, "b", ReportedRole::Standby, 3);
    ctl
}

/// `count` heartbeats, each answered by the pods in `answering` only; returns every action.
pub(super) fn beats(ctl: &mut Ctl, count: u32, answering: &[&str]) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..count {
        ctl.now += HEARTBEAT;
        all.extend(ctl.feed(Event::Heartbeat { heard: Vec::new() }));
        for pod in answering {
            all.extend(report(ctl, pod, ReportedRole::Standby, 3));
        }
    }
    all
}

#[test]
fn a_silent_agent_gets_no_second_grant_before_it_reports_again() {
    let mut ctl = steady();
    ctl.now += HEARTBEAT;
    let granted = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    assert!(orders(&granted).iter().any(|o| o.pod == "a" && o.grant));
    // No report since that grant: the next order could not extend the agent's lease.
    ctl.now += HEARTBEAT;
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    let a = orders(&beat).into_iter().find(|o| o.pod == "a").unwrap();
    assert_eq!((a.role, a.grant), (Role::Active, false));
    report(&mut ctl, "a", ReportedRole::Active, 3);
    ctl.now += HEARTBEAT;
    let beat = ctl.feed(Event::Heartbeat { heard: Vec::new() });
    assert!(orders(&beat).iter().any(|o| o.pod == "a" && o.grant));
}

#[test]
fn a_silent_active_is_replaced_once_its_grant_is_over_when_its_group_still_answers() {
    let mut ctl = steady();
    // "a" hangs right after its report: one more grant goes out (the report was new), then
    // none.
    let before_timeout = beats(&mut ctl, 2, &["b"]);
    assert!(writes(&before_timeout).is_empty(), "{before_timeout:?}");
    let last_grant = ctl.now - HEARTBEAT;
    let judged = beats(&mut ctl, 2, &["b"]);
    // Judged unresponsive: demoted at once; "b" waits for the grant to end.
    let demote = single_write(&judged);
    assert!(is_set_role(&demote, "a", Role::Standby), "{judged:?}");
    let (after_demote, _) = ctl.answer(&demote);
    assert!(writes(&after_demote).is_empty(), "{after_demote:?}");
    let grant_end = last_grant + LIVE_SPAN;
    assert!(ctl.now < grant_end);
    ctl.now = grant_end;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "b", Role::Active));
    let (announced, _) = ctl.answer(&promote);
    let reasons: Vec<_> = promoted(&announced).into_iter().map(|p| p.2).collect();
    assert_eq!(reasons, [PromotionReason::Unresponsive]);
}

#[test]
fn nobody_answering_judges_nobody() {
    let mut ctl = steady();
    let silence = beats(&mut ctl, 20, &[]);
    assert!(writes(&silence).is_empty(), "{silence:?}");
}

#[test]
fn a_silent_standby_is_not_promoted_and_is_eligible_again_once_heard() {
    let (mut ctl, first) = Ctl::acting_with(
        config(),
        [active(pod("a", 1), Some(3)), pod("b", 2), pod("c", 3)],
    );
    ctl.settle(first);
    ctl.now += LIVE_SPAN;
    report(&mut ctl, "a", ReportedRole::Lapsed, 3);
    for pod in ["b", "c"] {
        report(&mut ctl, pod, ReportedRole::Standby, 3);
    }
    // "b", the oldest standby, falls silent; "a" and "c" answer.
    let mut quiet = Vec::new();
    for _ in 0..4 {
        ctl.now += HEARTBEAT;
        quiet.extend(ctl.feed(Event::Heartbeat { heard: Vec::new() }));
        report(&mut ctl, "a", ReportedRole::Active, 3);
        report(&mut ctl, "c", ReportedRole::Standby, 3);
    }
    assert!(writes(&quiet).is_empty(), "{quiet:?}");
    // The active is lost: "c" is promoted, not the silent "b".
    ctl.now += HEARTBEAT;
    let gone = ctl.api.remove("a").unwrap();
    ctl.feed(gone);
    ctl.now += LIVE_SPAN;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "c", Role::Active), "{promote:?}");
    // Heard again, "b" is a standby like any other.
    let (_, echo) = ctl.answer(&promote);
    if let Some(echo) = echo {
        ctl.feed(echo);
    }
    report(&mut ctl, "b", ReportedRole::Standby, 3);
    let gone = ctl.api.remove("c").unwrap();
    ctl.feed(gone);
    ctl.now += LIVE_SPAN + HEARTBEAT;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "b", Role::Active), "{promote:?}");
}

#[test]
fn a_pod_judged_silent_is_eligible_again_once_heard_through_the_heartbeat() {
    let mut ctl = steady();
    // "b" falls silent while "a" answers: judged unresponsive.
    let mut quiet = Vec::new();
    for _ in 0..4 {
        ctl.now += HEARTBEAT;
        quiet.extend(ctl.feed(Event::Heartbeat { heard: Vec::new() }));
        quiet.extend(report(&mut ctl, "a", ReportedRole::Active, 3));
    }
    assert!(writes(&quiet).is_empty(), "{quiet:?}");
    // Heard again, but only through the heartbeat's book (its report said nothing new).
    ctl.now += HEARTBEAT;
    let heard = vec![("a-uid".to_owned(), ctl.now), ("b-uid".to_owned(), ctl.now)];
    ctl.feed(Event::Heartbeat { heard });
    // The active is lost: "b" is promoted once the grant is over.
    let gone = ctl.api.remove("a").unwrap();
    ctl.feed(gone);
    ctl.now += LIVE_SPAN + HEARTBEAT;
    let promote = single_write(&ctl.feed(Event::Tick));
    assert!(is_set_role(&promote, "b", Role::Active), "{promote:?}");
}

/// A standby judged unresponsive while the active answered, then the active leaves the
/// group: nobody answers any more, so nobody is judged, and the standby's old mark is not
/// kept either: it is promoted, as it would be without the report timeout.
#[test]
fn a_mark_made_while_others_answered_is_dropped_once_nobody_answers() {
    let mut ctl = steady();
    for _ in 0..4 {
        ctl.now += HEARTBEAT;
        ctl.feed(Event::Heartbeat { heard: Vec::new() });
        report(&mut ctl, "a", ReportedRole::Active, 3);
    }
    ctl.now += LIVE_SPAN;
    let gone = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(gone);
    ctl.settle(actions);
    assert!(ctl.api.actives().is_empty(), "b is still marked");
    let all = beats(&mut ctl, 4, &[]);
    let all = ctl.settle(all);
    assert_eq!(ctl.api.actives(), ["b"], "{all:?}");
}
