//! The state of hapod's groups as the API shows it, built from the pods, the controller's
//! `Promoted` Events and its election Lease (no I/O here), and its two renderings: a table as
//! `kubectl get` prints, and the same data as JSON or YAML.
//!
//! The labels are the truth: which pod the Service selects. Nothing is written to publish this
//! view, so reading it costs the failover path nothing and it cannot lag behind the labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hapod_core::{Config, PodView, Role};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use serde::Serialize;

use hapod_controller::podview::{
    NOT_READY_GRACE_ANNOTATION, PAUSE_ANNOTATION, ignored_annotations, pod_view,
};

/// What `kubectl hapod status` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The acting controller replica; none when its Lease could not be read.
    pub controller: Option<Controller>,
    pub groups: Vec<Group>,
}

/// The controller replica holding the election Lease.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Controller {
    /// `namespace/name` of the Lease.
    pub lease: String,
    /// The holder's pod; none while nobody holds the Lease.
    pub pod: Option<String>,
    /// When the holder acquired the Lease (its `acquireTime`): since when it leads.
    pub leader_since: Option<Timestamp>,
    /// The controller term (`hapod.io/term`), the high half of every epoch it writes.
    pub term: Option<u32>,
    /// Seconds since the holder last renewed.
    pub renewed_seconds_ago: Option<f64>,
    /// The holder's last renewal is older than the Lease's duration: it stopped renewing
    /// (killed, its node lost) without releasing the Lease, and no replica acts on it.
    pub expired: bool,
}

/// One group: the pods of one namespace sharing the group label's value.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub namespace: String,
    pub group: String,
    /// A pod of the group carries `hapod.io/paused=true`: the controller changes no role.
    pub paused: bool,
    /// How long an active may stay not Ready before the role moves, the longest
    /// `hapod.io/not-ready-grace-ms` of the group's pods; 0: at once.
    pub not_ready_grace_ms: u128,
    /// The pod labeled active, when exactly one is.
    pub active: Option<Member>,
    pub standbys: Vec<Member>,
    /// What an operator should look at (none in the steady state).
    pub problems: Vec<String>,
}

/// A pod of a group.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub pod: String,
    /// The `hapod.io/epoch` of its promotion (an active pod's).
    pub epoch: Option<u64>,
    /// Could take (or keep) the active role as the API shows it.
    pub eligible: bool,
    /// Why not, in the controller's words (`not_ready`, `terminating`, `critical_death`, …).
    pub unfit: Option<&'static str>,
    /// Its last promotion, from the controller's `Promoted` Event (Events expire, an hour by
    /// default).
    pub promoted: Option<Promotion>,
    /// Its application took the role it has now (the active's epoch, for a standby), from the
    /// controller's `Acknowledged` Event (with the application lease only).
    pub acknowledged: Option<Acknowledgement>,
}

/// One promotion, as the controller's `Promoted` Event says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    pub time: Timestamp,
    pub epoch: u64,
    /// Why the role moved (`deleted`, `not_ready`, `initial`, …).
    pub reason: String,
    /// Trigger seen to the new label stored, when the promotion replaced a lost active.
    pub failover_ms: Option<f64>,
}

/// A pod's application took the role its label says, as the controller's `Acknowledged`
/// Event says: the active acting at its epoch, a standby standing by at the active's.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    pub time: Timestamp,
    /// `active` or `standby`.
    pub role: String,
    pub epoch: u64,
    /// From the controller's first grant at that epoch sent to the agent's report received.
    pub round_trip_ms: Option<f64>,
}

/// Builds the status of the groups in `pods` (those with the group label), with the
/// promotions of `events` and the holder of `lease` (`lease_ref` names it), at `now`.
pub fn build(
    pods: &[Pod],
    events: &[Event],
    lease: Option<(&str, &Lease)>,
    config: &Config,
    group_label: &str,
    now: Timestamp,
) -> Status {
    let promotions = latest_by_pod(events, "Promoted", parse_promoted);
    let acknowledgements = latest_by_pod(events, "Acknowledged", parse_acknowledged);
    let mut groups: BTreeMap<(String, String), Vec<Seen>> = BTreeMap::new();
    for pod in pods {
        let Ok(view) = pod_view(pod, config, group_label) else {
            continue;
        };
        let promoted = promotions.get(view.uid.as_str()).cloned();
        let acknowledged = acknowledgements.get(view.uid.as_str()).cloned();
        // An ignored value reads as absent: say so, its author may think it in force.
        let ignored = ignored_annotations(pod)
            .into_iter()
            .map(|(key, value, why)| format!("{}: {key}={value:?} is ignored ({why})", view.name))
            .collect();
        groups
            .entry((view.namespace.clone(), view.group.clone()))
            .or_default()
            .push(Seen {
                view,
                promoted,
                acknowledged,
                ignored,
            });
    }
    Status {
        controller: lease.map(|(lease_ref, lease)| controller(lease_ref, lease, now)),
        groups: groups
            .into_iter()
            .map(|((namespace, group), members)| group_status(namespace, group, members, config))
            .collect(),
    }
}

/// What `--require-active` refuses: no controller replica holding the Lease (or the Lease
/// unread, or expired), and every group without exactly one pod labeled active.
pub fn unmet(status: &Status) -> Vec<String> {
    let mut unmet = Vec::new();
    match &status.controller {
        Some(Controller {
            pod: Some(pod),
            expired: true,
            ..
        }) => unmet.push(format!(
            "the Lease of {pod} expired: no controller replica renews it"
        )),
        Some(Controller { pod: Some(_), .. }) => {}
        _ => unmet.push("no controller replica holds the Lease".to_owned()),
    }
    for g in status.groups.iter().filter(|g| g.active.is_none()) {
        // Without an active, the first problem says why: none or several labeled active.
        let why = g.problems.first().map_or("no active pod", String::as_str);
        unmet.push(format!("{}/{}: {why}", g.namespace, g.group));
    }
    unmet
}

/// A pod of a group, with its latest promotion and acknowledgement, and what of its
/// annotations is ignored.
struct Seen {
    view: PodView,
    promoted: Option<Promotion>,
    acknowledged: Option<Acknowledgement>,
    ignored: Vec<String>,
}

fn group_status(
    namespace: String,
    group: String,
    mut members: Vec<Seen>,
    config: &Config,
) -> Group {
    members.sort_by(|a, b| a.view.name.cmp(&b.view.name));
    let mut problems = Vec::new();
    let pausing: Vec<&str> = members
        .iter()
        .filter(|m| m.view.paused)
        .map(|m| m.view.name.as_str())
        .collect();
    if !pausing.is_empty() {
        problems.push(format!(
            "paused ({PAUSE_ANNOTATION}=true on {}): the controller changes no role until \
             `kubectl hapod resume`",
            pausing.join(", ")
        ));
    }
    let paused = !pausing.is_empty();
    let not_ready_grace_ms = members
        .iter()
        .map(|m| m.view.not_ready_grace.as_millis())
        .max()
        .unwrap_or_default();
    problems.extend(
        members
            .iter_mut()
            .flat_map(|m| std::mem::take(&mut m.ignored)),
    );
    // `acknowledges`: the role and epoch the pod's application should have taken.
    let member = |Seen {
                      view,
                      promoted,
                      acknowledged,
                      ..
                  }: Seen,
                  acknowledges: Option<(&str, u64)>| {
        let unfit = view.unfit_by_api().map(|r| r.as_str());
        Member {
            pod: view.name,
            epoch: view.epoch,
            eligible: unfit.is_none(),
            unfit,
            // Only the promotion that gave the pod its current epoch is its own, and only an
            // acknowledgement of the role it has now.
            promoted: promoted.filter(|p| Some(p.epoch) == view.epoch),
            acknowledged: acknowledged.filter(|a| acknowledges == Some((a.role.as_str(), a.epoch))),
        }
    };
    let (labeled_active, others): (Vec<_>, Vec<_>) = members
        .into_iter()
        .partition(|m| m.view.role(config) == Role::Active);
    let active = match labeled_active.len() {
        0 => {
            problems.push("no pod is labeled active".to_owned());
            None
        }
        1 => labeled_active.into_iter().next().map(|m| {
            let epoch = m.view.epoch;
            member(m, epoch.map(|e| ("active", e)))
        }),
        n => {
            let names: Vec<&str> = labeled_active
                .iter()
                .map(|m| m.view.name.as_str())
                .collect();
            problems.push(format!("{n} pods labeled active: {}", names.join(", ")));
            None
        }
    };
    if let Some(why) = active.as_ref().and_then(|a| a.unfit) {
        problems.push(format!("the active pod is not eligible ({why})"));
    }
    // A standby is told to stand by at the active's epoch.
    let active_epoch = active.as_ref().and_then(|a| a.epoch);
    let standbys: Vec<Member> = others
        .into_iter()
        .map(|m| member(m, active_epoch.map(|e| ("standby", e))))
        .collect();
    if !standbys.iter().any(|s| s.eligible) {
        problems.push("no eligible standby: a failover now would have no target".to_owned());
    }
    Group {
        namespace,
        group,
        paused,
        not_ready_grace_ms,
        active,
        standbys,
        problems,
    }
}

fn controller(lease_ref: &str, lease: &Lease, now: Timestamp) -> Controller {
    let annotation = |key: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let spec = lease.spec.as_ref();
    let held = spec.and_then(|s| s.holder_identity.as_deref()).is_some();
    let renewed_ago = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| now.duration_since(t.0));
    let duration = hapod_election::ParsedLease::from_lease(lease).lease_duration_ms;
    Controller {
        lease: lease_ref.to_owned(),
        pod: annotation(hapod_election::HOLDER_POD_ANNOTATION).filter(|_| held),
        leader_since: spec
            .and_then(|s| s.acquire_time.as_ref())
            .map(|t| t.0)
            .filter(|_| held),
        term: annotation(hapod_election::TERM_ANNOTATION).and_then(|t| t.parse().ok()),
        renewed_seconds_ago: renewed_ago.map(|d| d.as_secs_f64()),
        expired: held
            && renewed_ago.zip(duration).is_some_and(|(ago, ms)| {
                ago > SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
            }),
    }
}

/// Of the Events with `reason`, the latest of each pod (by UID) whose note `parse` reads (it
/// is given the Event's time).
fn latest_by_pod<'a, T>(
    events: &'a [Event],
    reason: &str,
    parse: fn(&str, Timestamp) -> Option<T>,
) -> BTreeMap<&'a str, T> {
    let mut latest: BTreeMap<&str, (Timestamp, T)> = BTreeMap::new();
    for event in events {
        if event.reason.as_deref() != Some(reason) {
            continue;
        }
        let (Some(uid), Some(time)) = (event.involved_object.uid.as_deref(), event_time(event))
        else {
            continue;
        };
        let Some(parsed) = event.message.as_deref().and_then(|note| parse(note, time)) else {
            continue;
        };
        if latest.get(uid).is_none_or(|(seen, _)| *seen <= time) {
            latest.insert(uid, (time, parsed));
        }
    }
    latest.into_iter().map(|(uid, (_, t))| (uid, t)).collect()
}

/// When an Event last happened: its series' last observation, its event time (events.k8s.io),
/// or its last timestamp (core/v1), whichever it has.
fn event_time(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(event.first_timestamp.as_ref().map(|t| t.0))
}

/// Reads the controller's note `promoted to active, epoch E, reason R[, failover X ms]`; none
/// for anything else.
fn parse_promoted(note: &str, time: Timestamp) -> Option<Promotion> {
    let mut parts = note.split(", ");
    if parts.next()? != "promoted to active" {
        return None;
    }
    let epoch = parts.next()?.strip_prefix("epoch ")?.parse().ok()?;
    let reason = parts.next()?.strip_prefix("reason ")?.to_owned();
    let failover_ms = optional_ms(parts.next(), "failover ")?;
    Some(Promotion {
        time,
        epoch,
        reason,
        failover_ms,
    })
}

/// Reads the controller's note `application acts active, epoch E[, round trip X ms]` or
/// `application stands by, epoch E`; none for anything else.
fn parse_acknowledged(note: &str, time: Timestamp) -> Option<Acknowledgement> {
    let mut parts = note.split(", ");
    let role = match parts.next()? {
        "application acts active" => "active",
        "application stands by" => "standby",
        _ => return None,
    };
    let epoch = parts.next()?.strip_prefix("epoch ")?.parse().ok()?;
    let round_trip_ms = optional_ms(parts.next(), "round trip ")?;
    Some(Acknowledgement {
        time,
        role: role.to_owned(),
        epoch,
        round_trip_ms,
    })
}

/// A note's optional last part `<name>X ms`: `Some(None)` when absent, `None` when malformed.
fn optional_ms(part: Option<&str>, name: &str) -> Option<Option<f64>> {
    match part {
        Some(part) => Some(Some(
            part.strip_prefix(name)?.strip_suffix(" ms")?.parse().ok()?,
        )),
        None => Some(None),
    }
}

/// The status as a table, like `kubectl get`: the controller first, then a row per group,
/// then each group's problems.
pub fn table(status: &Status, now: Timestamp) -> String {
    let mut out = String::new();
    match &status.controller {
        Some(c) => {
            let since = c.leader_since.map_or("-".into(), |t| {
                format!(
                    "{} ({} ago)",
                    t.round(jiff::Unit::Second).unwrap_or(t),
                    age(now.duration_since(t))
                )
            });
            let _ = writeln!(
                out,
                "controller: {} (leader since {since}; Lease {}, term {}, renewed {} ago{})",
                c.pod.as_deref().unwrap_or("<no holder>"),
                c.lease,
                c.term.map_or("-".into(), |t| t.to_string()),
                c.renewed_seconds_ago
                    .map_or("-".into(), |s| age(SignedDuration::from_secs_f64(s))),
                if c.expired { ", EXPIRED" } else { "" },
            );
        }
        None => out.push_str("controller: unknown (its Lease could not be read)\n"),
    }
    if status.groups.is_empty() {
        out.push_str("no hapod groups found\n");
        return out;
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "GROUP",
            "PAUSED",
            "ACTIVE",
            "EPOCH",
            "PROMOTED",
            "REASON",
            "FAILOVER",
            "ACKED",
            "STANDBYS",
        ]
        .map(String::from),
    ];
    for g in &status.groups {
        let promoted = g.active.as_ref().and_then(|a| a.promoted.as_ref());
        rows.push([
            g.namespace.clone(),
            g.group.clone(),
            if g.paused { "yes" } else { "no" }.into(),
            g.active.as_ref().map_or("<none>".into(), |a| a.pod.clone()),
            g.active
                .as_ref()
                .and_then(|a| a.epoch)
                .map_or("-".into(), |e| e.to_string()),
            promoted.map_or("-".into(), |p| {
                format!("{} ago", age(now.duration_since(p.time)))
            }),
            promoted.map_or("-".into(), |p| p.reason.clone()),
            promoted
                .and_then(|p| p.failover_ms)
                .map_or("-".into(), |ms| format!("{ms:.1}ms")),
            g.active
                .as_ref()
                .and_then(|a| a.acknowledged.as_ref())
                .map_or("-".into(), |a| {
                    a.round_trip_ms
                        .map_or("yes".into(), |ms| format!("yes ({ms:.1}ms)"))
                }),
            standbys(&g.standbys),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    for g in status.groups.iter().filter(|g| g.not_ready_grace_ms > 0) {
        let _ = writeln!(
            out,
            "{}/{}: not-Ready grace {}ms ({NOT_READY_GRACE_ANNOTATION}): an active not Ready keeps \
             the role that long",
            g.namespace, g.group, g.not_ready_grace_ms
        );
    }
    for g in &status.groups {
        for p in &g.problems {
            let _ = writeln!(out, "{}/{}: {p}", g.namespace, g.group);
        }
    }
    out
}

/// `a, b (not_ready)`: the standbys, each with why it is not eligible.
fn standbys(members: &[Member]) -> String {
    if members.is_empty() {
        return "<none>".into();
    }
    members
        .iter()
        .map(|m| match m.unfit {
            Some(why) => format!("{} ({why})", m.pod),
            None => m.pod.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A duration as `kubectl get` prints ages: `850ms`, `42s`, `5m12s`, `3h4m`, `2d5h`.
fn age(d: SignedDuration) -> String {
    let ms = d.as_millis().max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn pod(name: &str, role: &str, epoch: Option<u64>, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "labels": {"app": "db", "role": role},
                "annotations": epoch.map(|e| serde_json::json!({"hapod.io/epoch": e.to_string()})),
            },
            "status": {
                "phase": "Running", "podIP": "10.244.0.9",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    fn annotated(mut pod: Pod, key: &str, value: &str) -> Pod {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        pod
    }

    /// Active "db-a" (epoch 7) and standby "db-b", Ready, annotated `key` with a value each.
    fn annotated_pair(key: &str, active: &str, standby: &str) -> [Pod; 2] {
        [
            annotated(pod("db-a", "active", Some(7), true), key, active),
            annotated(pod("db-b", "standby", None, true), key, standby),
        ]
    }

    fn promoted(name: &str, note: &str, at: Timestamp) -> Event {
        event("Promoted", name, note, at)
    }

    fn event(reason: &str, name: &str, note: &str, at: Timestamp) -> Event {
        Event {
            reason: Some(reason.into()),
            message: Some(note.into()),
            event_time: Some(MicroTime(at)),
            involved_object: ObjectReference {
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_group_shows_its_active_with_its_promotion_and_its_standbys() {
        let pods = [
            pod("db-b", "standby", None, false),
            pod("db-a", "active", Some(7), true),
        ];
        let events = [
            promoted("db-a", "promoted to active, epoch 5, reason initial", at(0)),
            promoted(
                "db-a",
                "promoted to active, epoch 7, reason deleted, failover 12.5 ms",
                at(30),
            ),
        ];
        let status = build(&pods, &events, None, &Config::default(), "app", at(90));
        let g = &status.groups[0];
        let active = g.active.as_ref().unwrap();
        assert_eq!((active.pod.as_str(), active.epoch), ("db-a", Some(7)));
        let promotion = active.promoted.as_ref().unwrap();
        assert_eq!(
            (
                promotion.reason.as_str(),
                promotion.failover_ms,
                promotion.time
            ),
            ("deleted", Some(12.5), at(30))
        );
        assert_eq!(g.standbys[0].unfit, Some("not_ready"));
        assert_eq!(
            g.problems,
            ["no eligible standby: a failover now would have no target"]
        );
        let shown = table(&status, at(90));
        assert!(shown.contains("controller: unknown"), "{shown}");
        let row = shown.lines().nth(2).unwrap();
        for cell in [
            "shop",
            "db",
            "db-a",
            "7",
            "1m0s ago",
            "deleted",
            "12.5ms",
            "db-b (not_ready)",
        ] {
            assert!(row.contains(cell), "{cell:?} not in {row:?}");
        }
    }

    #[test]
    fn two_actives_or_none_are_problems_and_a_stale_promotion_is_not_shown() {
        let two = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "active", Some(8), true),
        ];
        let status = build(&two, &[], None, &Config::default(), "app", at(0));
        assert!(status.groups[0].active.is_none());
        assert_eq!(
            status.groups[0].problems[0],
            "2 pods labeled active: db-a, db-b"
        );
        let none = [pod("db-a", "standby", None, true)];
        let status = build(&none, &[], None, &Config::default(), "app", at(0));
        assert_eq!(status.groups[0].problems, ["no pod is labeled active"]);
        // An Event of an earlier promotion says nothing of the current epoch.
        let pods = [
            pod("db-a", "active", Some(9), true),
            pod("db-b", "standby", None, true),
        ];
        let events = [promoted(
            "db-a",
            "promoted to active, epoch 7, reason initial",
            at(0),
        )];
        let status = build(&pods, &events, None, &Config::default(), "app", at(5));
        assert!(status.groups[0].active.as_ref().unwrap().promoted.is_none());
        assert!(status.groups[0].problems.is_empty());
    }

    #[test]
    fn a_paused_group_says_so_and_an_ignored_pause_value_is_named() {
        let pods = annotated_pair(PAUSE_ANNOTATION, "true", "yes");
        let status = build(&pods, &[], None, &Config::default(), "app", at(0));
        let g = &status.groups[0];
        assert!(g.paused);
        assert_eq!(
            g.problems,
            [
                "paused (hapod.io/paused=true on db-a): the controller changes no role until \
                 `kubectl hapod resume`",
                "db-b: hapod.io/paused=\"yes\" is ignored (only \"true\" counts)",
            ]
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["groups"][0]["paused"], true);
        let shown = table(&status, at(0));
        let mut lines = shown.lines().skip(1);
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!((header[2], row[2]), ("PAUSED", "yes"), "{shown}");
        // Not paused: the odd value alone pauses nothing.
        let status = build(&pods[1..], &[], None, &Config::default(), "app", at(0));
        assert!(!status.groups[0].paused);
    }

    #[test]
    fn the_not_ready_grace_is_shown_and_an_ignored_value_named() {
        let pods = annotated_pair(NOT_READY_GRACE_ANNOTATION, "3000", "5s");
        let status = build(&pods, &[], None, &Config::default(), "app", at(0));
        let g = &status.groups[0];
        assert_eq!(g.not_ready_grace_ms, 3000);
        assert_eq!(
            g.problems,
            [
                "db-b: hapod.io/not-ready-grace-ms=\"5s\" is ignored (not a whole number of \
                 milliseconds)"
            ]
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["groups"][0]["notReadyGraceMs"], 3000);
        let shown = table(&status, at(0));
        assert!(
            shown.contains("shop/db: not-Ready grace 3000ms (hapod.io/not-ready-grace-ms)"),
            "{shown}"
        );
        // Without it, no line about it.
        let status = build(&pods[1..], &[], None, &Config::default(), "app", at(0));
        assert_eq!(status.groups[0].not_ready_grace_ms, 0);
        assert!(!table(&status, at(0)).contains("not-Ready grace"));
    }

    #[test]
    fn only_the_controllers_own_notes_are_read() {
        assert_eq!(
            parse_promoted(
                "promoted to active, epoch 4294967297, reason not_ready",
                at(0)
            )
            .map(|p| (p.epoch, p.reason, p.failover_ms)),
            Some((4294967297, "not_ready".into(), None))
        );
        assert_eq!(
            parse_acknowledged("application acts active, epoch 9, round trip 0.8 ms", at(0))
                .map(|a| (a.epoch, a.round_trip_ms)),
            Some((9, Some(0.8)))
        );
        for odd in [
            "",
            "relabeled standby",
            "promoted to active, epoch x, reason deleted",
            "promoted to active, epoch 3",
            "promoted to active, epoch 3, reason deleted, failover fast",
        ] {
            assert_eq!(parse_promoted(odd, at(0)), None, "{odd:?}");
            assert_eq!(parse_acknowledged(odd, at(0)), None, "{odd:?}");
        }
        for odd in [
            "application acts active",
            "application acts active, epoch 3, round trip quick",
            "application acts standby, epoch 3",
        ] {
            assert_eq!(parse_acknowledged(odd, at(0)), None, "{odd:?}");
        }
    }

    #[test]
    fn the_active_shows_an_acknowledgement_of_its_own_epoch_only() {
        let pods = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "standby", None, true),
        ];
        let ack = |epoch: u64, at: Timestamp| {
            event(
                "Acknowledged",
                "db-a",
                &format!("application acts active, epoch {epoch}, round trip 1.5 ms"),
                at,
            )
        };
        let acked = |events: &[Event]| {
            let status = build(&pods, events, None, &Config::default(), "app", at(60));
            let shown = table(&status, at(60));
            let acknowledged = status.groups[0]
                .active
                .as_ref()
                .unwrap()
                .acknowledged
                .clone();
            (
                acknowledged.map(|a| (a.epoch, a.round_trip_ms, a.time)),
                shown,
            )
        };
        // Only an older epoch's acknowledgement: the current one is not acknowledged.
        let (none, shown) = acked(&[ack(5, at(10))]);
        assert_eq!(none, None);
        let cells = |line: usize| -> Vec<String> {
            shown
                .lines()
                .nth(line)
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let column = cells(1).iter().position(|h| h == "ACKED").unwrap();
        assert_eq!(cells(2)[column], "-", "{shown}");
        // The latest of the current epoch's.
        let (seen, shown) = acked(&[ack(5, at(10)), ack(7, at(20)), ack(7, at(30))]);
        assert_eq!(seen, Some((7, Some(1.5), at(30))));
        assert!(
            shown.lines().nth(2).unwrap().contains("yes (1.5ms)"),
            "{shown}"
        );
    }

    #[test]
    fn a_standby_shows_its_acknowledgement_of_the_actives_epoch_only() {
        let pods = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "standby", Some(5), true),
        ];
        let standby_ack = |note: &str| {
            let events = [event("Acknowledged", "db-b", note, at(10))];
            let status = build(&pods, &events, None, &Config::default(), "app", at(60));
            status.groups[0].standbys[0]
                .acknowledged
                .clone()
                .map(|a| (a.role, a.epoch))
        };
        assert_eq!(
            standby_ack("application stands by, epoch 7"),
            Some(("standby".to_owned(), 7))
        );
        // Standing by at its own old epoch, or acting: not what it was told.
        assert_eq!(standby_ack("application stands by, epoch 5"), None);
        assert_eq!(standby_ack("application acts active, epoch 7"), None);
    }

    #[test]
    fn the_lease_names_the_acting_replica_and_its_term() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {
                "hapod.io/holder-pod": "hapod-controller-0", "hapod.io/term": "12"}},
            "spec": {"holderIdentity": "hapod-controller-0_abc",
                     "acquireTime": "2027-01-15T06:55:59.700000Z",
                     "renewTime": "2027-01-15T08:00:00.000000Z"},
        }))
        .unwrap();
        let now: Timestamp = "2027-01-15T08:00:00.25Z".parse().unwrap();
        let c = controller("hapod-system/hapod-controller", &lease, now);
        assert_eq!(c.pod.as_deref(), Some("hapod-controller-0"));
        assert_eq!(
            c.leader_since,
            Some("2027-01-15T06:55:59.7Z".parse().unwrap())
        );
        assert_eq!(c.term, Some(12));
        assert_eq!(c.renewed_seconds_ago, Some(0.25));
        let status = Status {
            controller: Some(c),
            groups: Vec::new(),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["controller"]["leaderSince"], "2027-01-15T06:55:59.7Z");
        assert_eq!(
            table(&status, now).lines().next().unwrap(),
            "controller: hapod-controller-0 (leader since 2027-01-15T06:56:00Z (1h4m ago); \
             Lease hapod-system/hapod-controller, term 12, renewed 250ms ago)"
        );
        let released = Lease {
            spec: Some(Default::default()),
            ..lease
        };
        let c = controller("l", &released, now);
        assert_eq!((c.pod, c.leader_since), (None, None));
    }

    #[test]
    fn require_active_wants_a_lease_holder_and_one_active_per_group() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"hapod.io/holder-pod": "hapod-controller-0"}},
            "spec": {"holderIdentity": "hapod-controller-0_abc"},
        }))
        .unwrap();
        let held = Some(("hapod-system/hapod-controller", &lease));
        let healthy = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "standby", None, false),
        ];
        let status = build(&healthy, &[], held, &Config::default(), "app", at(0));
        assert!(unmet(&status).is_empty(), "{:?}", unmet(&status));
        // No groups at all is not a failure: nothing to keep active.
        assert!(unmet(&build(&[], &[], held, &Config::default(), "app", at(0))).is_empty());

        let none = [pod("db-a", "standby", None, true)];
        let status = build(&none, &[], None, &Config::default(), "app", at(0));
        assert_eq!(
            unmet(&status),
            [
                "no controller replica holds the Lease",
                "shop/db: no pod is labeled active"
            ]
        );
        let two = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "active", Some(8), true),
        ];
        let status = build(&two, &[], held, &Config::default(), "app", at(0));
        assert_eq!(
            unmet(&status),
            ["shop/db: 2 pods labeled active: db-a, db-b"]
        );
    }

    #[test]
    fn a_lease_its_holder_stopped_renewing_is_expired_and_fails_require_active() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {
                "hapod.io/holder-pod": "hapod-controller-0", "hapod.io/lease-duration-ms": "2000"}},
            "spec": {"holderIdentity": "hapod-controller-0_abc", "leaseDurationSeconds": 2,
                     "renewTime": "2027-01-15T08:00:00.000000Z"},
        }))
        .unwrap();
        let renewed: Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        let healthy = [
            pod("db-a", "active", Some(7), true),
            pod("db-b", "standby", None, true),
        ];
        let at = |ms: i64| renewed + SignedDuration::from_millis(ms);
        let status_at = |now: Timestamp| {
            let held = Some(("hapod-system/hapod-controller", &lease));
            build(&healthy, &[], held, &Config::default(), "app", now)
        };
        // Within its duration: held.
        let fresh = status_at(at(1999));
        assert!(unmet(&fresh).is_empty(), "{:?}", unmet(&fresh));
        assert!(!table(&fresh, at(1999)).contains("EXPIRED"));
        // Past it, the holder killed without releasing it: nobody acts.
        let stale = status_at(at(2001));
        assert_eq!(
            unmet(&stale),
            ["the Lease of hapod-controller-0 expired: no controller replica renews it"]
        );
        let shown = table(&stale, at(2001));
        assert!(
            shown
                .lines()
                .next()
                .unwrap()
                .ends_with("renewed 2s ago, EXPIRED)"),
            "{shown}"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0.85, "850ms"),
            (42.0, "42s"),
            (312.0, "5m12s"),
            (11040.0, "3h4m"),
            (190800.0, "2d5h"),
        ];
        for (secs, shown) in cases {
            assert_eq!(age(SignedDuration::from_secs_f64(secs)), shown);
        }
    }
}
