//! The checkers over the label history of a chaos run (every pod state our watch saw, in
//! resourceVersion order): no two pods of a group labeled active at one resourceVersion,
//! epochs that grow with every promotion, no pod killed while its critical containers were
//! alive; and the group states the liveness waits look for.
//!
//! These look at labels, what the API server stored; the applications' own acting journals
//! are checked by `Run::check_apps`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use hapod_testkit::controlplane::PodDeletion;
use hapod_testkit::testbed::{APP_CONTAINER, CRITICAL_CONTAINER, PodRecord, double_actives};

/// The critical containers of the sample app (env `pwcriticality=critical`).
const CRITICAL: [&str; 2] = [APP_CONTAINER, CRITICAL_CONTAINER];

/// The ReplicaSet controller's identity (kube-controller-manager runs each controller as its
/// own ServiceAccount).
const REPLICASET_CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";

/// A broken invariant, with where in the history it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: &'static str,
    pub namespace: String,
    pub group: String,
    /// The resourceVersion it happened at (none for a liveness timeout).
    pub rv: Option<u64>,
    pub detail: String,
}

/// A critical container is not running or restarted: the pod may be killed.
fn critical_dead(r: &PodRecord) -> bool {
    r.not_running
        .iter()
        .chain(&r.restarted)
        .any(|c| CRITICAL.contains(&c.as_str()))
}

/// Eligible to be active, as the watch showed the pod.
pub fn eligible(r: &PodRecord) -> bool {
    !r.deleted && !r.terminating && r.ready && r.ip.is_some() && !critical_dead(r)
}

/// Exactly one pod of the group is labeled active and it is eligible: that pod.
pub fn single_eligible_active(now: &[PodRecord]) -> Option<&PodRecord> {
    match now.iter().filter(|r| r.is_active()).collect::<Vec<_>>()[..] {
        [one] if eligible(one) => Some(one),
        _ => None,
    }
}

/// The steady state: `replicas` pods, all eligible, exactly one active: the active pod.
pub fn settled(now: &[PodRecord], replicas: usize) -> Option<&PodRecord> {
    let all_eligible = now.len() == replicas && now.iter().all(eligible);
    all_eligible.then(|| single_eligible_active(now)).flatten()
}

/// Fewer than `replicas` pods, each eligible, one the only active: everything hapod does for
/// the group is done, and only the ReplicaSet controller can end the wait for a pod.
pub fn short_of_pods(now: &[PodRecord], replicas: usize) -> bool {
    now.len() < replicas && now.iter().all(eligible) && single_eligible_active(now).is_some()
}

/// A pod labeled active that was not in the record before (of its pod).
struct Promotion<'a> {
    record: &'a PodRecord,
    /// The pod promoted before in its group, if any.
    previous: Option<&'a str>,
}

/// The promotions of every group, in resourceVersion order (`records` sorted by rv).
fn promotions(records: &[PodRecord]) -> Vec<Promotion<'_>> {
    let mut was_active: HashMap<&str, bool> = HashMap::new();
    let mut last_promoted: HashMap<(&str, &str), &str> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        let before = was_active.insert(&r.uid, r.is_active()).unwrap_or(false);
        let Some(group) = r.group.as_deref() else {
            continue;
        };
        if r.is_active() && !before {
            let key = (r.namespace.as_str(), group);
            out.push(Promotion {
                record: r,
                previous: last_promoted.insert(key, &r.uid),
            });
        }
    }
    out
}

/// Promotions of another pod than the group's previous active: the failovers.
pub fn failovers(records: &[PodRecord]) -> usize {
    promotions(records)
        .iter()
        .filter(|p| p.previous.is_some_and(|prev| prev != p.record.uid))
        .count()
}

/// Every promotion carries an epoch larger than any promotion of its group before.
fn epochs(records: &[PodRecord]) -> Vec<Violation> {
    let mut max: BTreeMap<(&str, &str), (u64, &str)> = BTreeMap::new();
    let mut out = Vec::new();
    for p in promotions(records) {
        let r = p.record;
        let group = r.group.as_deref().unwrap_or_default();
        let key = (r.namespace.as_str(), group);
        let Some(epoch) = r.epoch else {
            out.push(violation(
                "epoch",
                r,
                format!("{} promoted without an epoch", r.pod),
            ));
            continue;
        };
        if let Some((before, pod)) = max.get(&key)
            && *before >= epoch
        {
            out.push(violation(
                "epoch",
                r,
                format!(
                    "{} promoted with epoch {epoch}, not above {before} of {pod}",
                    r.pod
                ),
            ));
        }
        if max.get(&key).is_none_or(|(before, _)| *before < epoch) {
            max.insert(key, (epoch, &r.pod));
        }
    }
    out
}

/// No pod is deleted (or starts terminating) unless the run or the ReplicaSet controller
/// deleted it (`not_hapods` UIDs) or the record before showed a critical container dead. An
/// end learned from a re-list of the watch is left out: what the pod went through in the gap
/// was not seen (the re-list is reported as a watch restart).
fn kills(records: &[PodRecord], not_hapods: &HashSet<String>) -> Vec<Violation> {
    let mut last: HashMap<&str, &PodRecord> = HashMap::new();
    let mut ended: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        if (r.terminating || r.deleted)
            && ended.insert(&r.uid)
            && !not_hapods.contains(&r.uid)
            && !r.listed
        {
            // A pod first seen terminating tells nothing about why.
            if let Some(prev) = last.get(r.uid.as_str())
                && !critical_dead(prev)
                && !critical_dead(r)
            {
                out.push(violation(
                    "kill",
                    r,
                    format!(
                        "{} was deleted with its critical containers alive (last seen rv {})",
                        r.pod, prev.rv
                    ),
                ));
            }
        }
        last.insert(&r.uid, r);
    }
    out
}

fn violation(check: &'static str, r: &PodRecord, detail: String) -> Violation {
    Violation {
        check,
        namespace: r.namespace.clone(),
        group: r.group.clone().unwrap_or_default(),
        rv: Some(r.rv),
        detail,
    }
}

/// The UIDs of the pods in `records` that someone else than hapod deleted: the run
/// (`deliberate`) or, by the apiserver's audit log, the ReplicaSet controller (a surplus pod
/// after a control plane restart). The first accepted delete of a pod is the one that ended
/// it.
pub fn not_hapods(
    records: &[PodRecord],
    deliberate: &HashSet<String>,
    deletions: &[PodDeletion],
) -> HashSet<String> {
    let mut first: HashMap<(&str, &str), &str> = HashMap::new();
    for d in deletions {
        first
            .entry((d.namespace.as_str(), d.pod.as_str()))
            .or_insert(d.user.as_str());
    }
    let by_replicaset = records.iter().filter(|r| {
        first.get(&(r.namespace.as_str(), r.pod.as_str())) == Some(&REPLICASET_CONTROLLER)
    });
    deliberate
        .iter()
        .cloned()
        .chain(by_replicaset.map(|r| r.uid.clone()))
        .collect()
}

/// Every safety checker over `records` (sorted by resourceVersion); `not_hapods` from
/// [`not_hapods`].
pub fn safety(records: &[PodRecord], not_hapods: &HashSet<String>) -> Vec<Violation> {
    let mut out: Vec<Violation> = double_actives(records)
        .into_iter()
        .map(|d| Violation {
            check: "two-active",
            namespace: d.namespace,
            group: d.group,
            rv: Some(d.rv),
            detail: format!(
                "pods {:?} labeled active at once{}",
                d.pods,
                if d.only_terminating_overlap {
                    " (all but one terminating)"
                } else {
                    ""
                }
            ),
        })
        .collect();
    out.extend(epochs(records));
    out.extend(kills(records, not_hapods));
    out
}

/// The records of `v`'s group around it (the 12 before, the 6 after; the last 18 for a
/// violation without a resourceVersion), one line each.
pub fn excerpt(records: &[PodRecord], v: &Violation) -> String {
    let of_group: Vec<&PodRecord> = records
        .iter()
        .filter(|r| r.namespace == v.namespace && r.group.as_deref() == Some(v.group.as_str()))
        .collect();
    let at =
        v.rv.map_or(of_group.len(), |rv| of_group.partition_point(|r| r.rv < rv));
    let window = &of_group[at.saturating_sub(12)..(at + 6).min(of_group.len())];
    let t0 = window.first().map_or(0, |r| r.seen_unix_nanos);
    let mut out = String::new();
    for r in window {
        let _ = writeln!(
            out,
            "  rv={} +{:.0}ms {} role={} epoch={} ready={} ip={}{}{} not_running={:?} restarted={:?}",
            r.rv,
            r.seen_unix_nanos.saturating_sub(t0) as f64 / 1e6,
            r.pod,
            r.role.as_deref().unwrap_or("-"),
            r.epoch.map_or("-".into(), |e| e.to_string()),
            r.ready,
            r.ip.as_deref().unwrap_or("-"),
            if r.terminating { " terminating" } else { "" },
            if r.deleted { " deleted" } else { "" },
            r.not_running,
            r.restarted,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of group `g` in `ns` from `RV POD ROLE EPOCH [FLAG...]` entries (comma
    /// separated; EPOCH `-` for none), FLAG `terminating`, `deleted`, `unready`, `dead` (the
    /// critical crash container not running) or `listed` (from a re-list).
    fn records(timeline: &str) -> Vec<PodRecord> {
        timeline
            .split(',')
            .map(|entry| {
                let w: Vec<&str> = entry.split_whitespace().collect();
                let flag = |f: &str| w[4..].contains(&f);
                PodRecord {
                    rv: w[0].parse().unwrap(),
                    seen_unix_nanos: 0,
                    namespace: "ns".into(),
                    pod: w[1].into(),
                    uid: format!("uid-{}", w[1]),
                    group: Some("g".into()),
                    role: Some(w[2].into()),
                    epoch: w[3].parse().ok(),
                    ip: Some("10.244.0.1".into()),
                    ready: !flag("unready"),
                    terminating: flag("terminating"),
                    deleted: flag("deleted"),
                    not_running: if flag("dead") {
                        vec![CRITICAL_CONTAINER.into()]
                    } else {
                        vec![]
                    },
                    restarted: vec![],
                    listed: flag("listed"),
                }
            })
            .collect()
    }

    fn checks(timeline: &str, deliberate: &[&str]) -> Vec<&'static str> {
        let deliberate = deliberate.iter().map(|p| format!("uid-{p}")).collect();
        safety(&records(timeline), &deliberate)
            .iter()
            .map(|v| v.check)
            .collect()
    }

    #[test]
    fn a_clean_history_passes_and_counts_its_failovers() {
        let t = "1 a active 5, 2 b standby -, 3 a active 5 terminating, 4 a standby 5 terminating, \
                 5 b active 6, 6 a standby 5 deleted, 7 c standby -, 8 c standby - dead, \
                 9 c standby - dead terminating, 10 b standby 6, 11 b active 7";
        assert!(checks(t, &["a"]).is_empty(), "{:?}", checks(t, &["a"]));
        // b took over from a; b again after its own demotion is no failover.
        assert_eq!(failovers(&records(t)), 1);
    }

    #[test]
    fn an_epoch_not_above_the_last_promotion_is_caught() {
        assert_eq!(
            checks("1 a active 5, 2 a standby 5, 3 b active 5", &[]),
            ["epoch"]
        );
        assert_eq!(checks("1 a active -", &[]), ["epoch"]);
    }

    #[test]
    fn a_kill_with_live_critical_containers_is_caught() {
        let t = "1 a active 5, 2 a standby 5, 3 a standby 5 terminating";
        assert_eq!(checks(t, &[]), ["kill"]);
        assert!(checks(t, &["a"]).is_empty());
        // Learned from a re-list: its critical container may have died in the gap.
        let relisted = "1 a active 5, 2 a standby 5, 3 a standby 5 terminating listed";
        assert!(checks(relisted, &[]).is_empty());
    }

    #[test]
    fn a_surplus_pod_the_replicaset_deleted_is_no_kill() {
        let t = "1 a active 5, 2 b standby -, 3 c standby -, 4 c standby - terminating";
        let records = records(t);
        let deleted_by = |user: &str| {
            let deletions = [PodDeletion {
                namespace: "ns".into(),
                pod: "c".into(),
                user: user.into(),
            }];
            let not_hapods = not_hapods(&records, &HashSet::new(), &deletions);
            safety(&records, &not_hapods)
                .iter()
                .map(|v| v.check)
                .collect::<Vec<_>>()
        };
        assert!(deleted_by(REPLICASET_CONTROLLER).is_empty());
        let hapod = "system:serviceaccount:hapod-system:hapod-controller";
        assert_eq!(deleted_by(hapod), ["kill"]);
    }

    #[test]
    fn two_actives_are_caught_and_shown_with_their_neighbours() {
        let r = records("1 a active 5, 2 b standby -, 3 b active 6, 4 a standby 5");
        let v = safety(&r, &HashSet::new());
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].check, v[0].rv), ("two-active", Some(3)));
        let shown = excerpt(&r, &v[0]);
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(shown.contains("rv=3 +0ms b role=active epoch=6"), "{shown}");
    }

    #[test]
    fn group_states() {
        let now = records("1 a active 5, 2 b standby -");
        assert_eq!(settled(&now, 2).map(|r| r.pod.as_str()), Some("a"));
        assert!(settled(&now, 3).is_none());
        let unready_standby = records("1 a active 5, 2 b standby - unready");
        assert!(settled(&unready_standby, 2).is_none());
        let alone = records("1 a active 5");
        assert!(short_of_pods(&alone, 2));
        assert!(!short_of_pods(&now, 2));
        assert!(!short_of_pods(&unready_standby, 3));
        assert!(!short_of_pods(&records("1 a standby 5"), 2));
        assert!(single_eligible_active(&unready_standby).is_some());
        assert!(single_eligible_active(&records("1 a active 5, 2 b active 6")).is_none());
        assert!(single_eligible_active(&records("1 a active 5 dead")).is_none());
    }
}
