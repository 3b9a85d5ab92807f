//! The label-history recorder and checker: every pod change and EndpointSlice change of a
//! run as our watches received them, replayed in resourceVersion order to find two active
//! pods of one group, and failover timelines built from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::http::AppState;
use super::names::ACTIVE;
use super::pods::{
    not_running_containers, pod_epoch, pod_group, pod_ip, pod_ready, pod_role,
    ready_slice_addresses, restarted_containers,
};
use super::{now_unix_nanos, unix_nanos};
use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

/// One observed pod state (recorded when anything listed here changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// resourceVersion of the event (etcd revision of the write).
    pub rv: u64,
    /// When our watch received it (UNIX nanos).
    pub seen_unix_nanos: u64,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub group: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub ip: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// The Delete event.
    pub deleted: bool,
    pub not_running: Vec<String>,
    /// Containers that restarted at least once (`restartCount` > 0).
    pub restarted: Vec<String>,
    /// From a (re-)list rather than a watch event, or a deletion a re-list revealed: changes
    /// of the pod since its record before may have been missed (the watch restarted).
    pub listed: bool,
}

impl PodRecord {
    fn from_pod(p: &Pod, deleted: bool, listed: bool, seen: u64) -> Option<PodRecord> {
        Some(PodRecord {
            rv: p.resource_version()?.parse().ok()?,
            seen_unix_nanos: seen,
            namespace: p.namespace().unwrap_or_default(),
            pod: p.name_any(),
            uid: p.uid().unwrap_or_default(),
            group: pod_group(p).map(String::from),
            role: pod_role(p).map(String::from),
            epoch: pod_epoch(p),
            ip: pod_ip(p),
            ready: pod_ready(p),
            terminating: p.metadata.deletion_timestamp.is_some(),
            deleted,
            not_running: not_running_containers(p),
            restarted: restarted_containers(p),
            listed,
        })
    }
    fn same_state(&self, o: &PodRecord) -> bool {
        (
            &self.group,
            &self.role,
            self.epoch,
            &self.ip,
            self.ready,
            self.terminating,
            self.deleted,
            &self.not_running,
            &self.restarted,
        ) == (
            &o.group,
            &o.role,
            o.epoch,
            &o.ip,
            o.ready,
            o.terminating,
            o.deleted,
            &o.not_running,
            &o.restarted,
        )
    }
    /// Labeled active and not deleted (terminating pods count: they are still selected).
    pub fn is_active(&self) -> bool {
        !self.deleted && self.role.as_deref() == Some(ACTIVE)
    }
}

/// One observed state of a Service's endpoints (merged over its slices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointsRecord {
    pub rv: u64,
    pub seen_unix_nanos: u64,
    pub namespace: String,
    pub service: String,
    pub ready_ips: Vec<String>,
}

#[derive(Default)]
struct HistoryInner {
    pods: Vec<PodRecord>,
    last: HashMap<String, PodRecord>,
    endpoints: Vec<EndpointsRecord>,
    slices: HashMap<(String, String), (String, Vec<String>)>,
    watch_restarts: Vec<String>,
    /// Pods a scenario itself brought into a group while labeled active: (UID, rv).
    injected_actives: Vec<(String, u64)>,
    /// The pod (re-)list in progress.
    pod_list: Option<PodList>,
}

/// A pod (re-)list in progress.
struct PodList {
    /// The highest resourceVersion recorded before it (0 before the first list).
    gap_start: u64,
    /// The UIDs it listed so far.
    listed: HashSet<String>,
    /// The pods it showed changed since their record before: changed in the gap.
    changed: usize,
}

/// Recorder of every pod change (resourceVersion, pod, group, role, readiness, deletion)
/// and every EndpointSlice change of the run, replayable in resourceVersion order.
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<HistoryInner>>,
}

/// A pair of pods of one group that were active at the same resourceVersion.
#[derive(Clone, Debug)]
pub struct DoubleActive {
    pub rv: u64,
    pub namespace: String,
    pub group: String,
    pub pods: Vec<String>,
    /// Every pod that was active there was terminating except one.
    pub only_terminating_overlap: bool,
}

impl History {
    /// Starts the pod and EndpointSlice watches (all namespaces).
    pub fn start(&self, client: Client) -> Vec<JoinHandle<()>> {
        vec![
            self.spawn_watch(Api::all(client.clone()), "pod", Self::on_pod_event),
            self.spawn_watch(Api::all(client), "endpointslice", Self::on_slice_event),
        ]
    }

    /// Feeds `api`'s watch events to `on_event` until the stream ends. An error is recorded as
    /// a restart of the `what` watch, which goes on after 100 ms (once per outage: the
    /// errors while the API server is away, a restart of it, are one restart); so is every
    /// list after the first (a re-list after the watch lost its place).
    fn spawn_watch<K>(
        &self,
        api: Api<K>,
        what: &'static str,
        on_event: fn(&Self, watcher::Event<K>),
    ) -> JoinHandle<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let restart = |why: String| {
                let mut inner = me.inner.lock().unwrap();
                inner.watch_restarts.push(format!("{what} watch {why}"));
            };
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            let mut lists = 0;
            let mut failing = false;
            loop {
                match stream.try_next().await {
                    Ok(Some(ev)) => {
                        failing = false;
                        if matches!(ev, watcher::Event::Init) {
                            lists += 1;
                            if lists > 1 {
                                restart("re-listed (changes in the gap may be missed)".into());
                            }
                        }
                        on_event(&me, ev)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            restart(format!("error: {e}"));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    fn on_pod_event(&self, ev: watcher::Event<Pod>) {
        let seen = now_unix_nanos();
        let mut g = self.inner.lock().unwrap();
        match ev {
            watcher::Event::Init => {
                let gap_start = g.pods.iter().map(|r| r.rv).max().unwrap_or(0);
                g.pod_list = Some(PodList {
                    gap_start,
                    listed: HashSet::new(),
                    changed: 0,
                });
            }
            watcher::Event::InitApply(p) => g.list_pod(&p, seen),
            watcher::Event::InitDone => g.end_pod_list(seen),
            watcher::Event::Apply(p) => g.push_pod(&p, false, false, seen),
            watcher::Event::Delete(p) => g.push_pod(&p, true, false, seen),
        }
    }

    fn on_slice_event(&self, ev: watcher::Event<EndpointSlice>) {
        let seen = now_unix_nanos();
        let mut g = self.inner.lock().unwrap();
        match ev {
            watcher::Event::Init | watcher::Event::InitDone => {}
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                g.push_slice(&s, false, seen)
            }
            watcher::Event::Delete(s) => g.push_slice(&s, true, seen),
        }
    }

    /// Every recorded pod state, in resourceVersion order.
    pub fn pod_records(&self) -> Vec<PodRecord> {
        let mut v = self.inner.lock().unwrap().pods.clone();
        v.sort_by_key(|r| r.rv);
        v
    }

    /// The last recorded state of each pod of a group that is not deleted (name order): what
    /// the watch shows now, without a request to the API server.
    pub fn group_now(&self, ns: &str, group: &str) -> Vec<PodRecord> {
        let inner = self.inner.lock().unwrap();
        let mut v: Vec<PodRecord> = inner
            .last
            .values()
            .filter(|r| !r.deleted && r.namespace == ns && r.group.as_deref() == Some(group))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.pod.cmp(&b.pod));
        v
    }

    /// Every recorded Service endpoints state, in resourceVersion order.
    pub fn endpoint_records(&self) -> Vec<EndpointsRecord> {
        let mut v = self.inner.lock().unwrap().endpoints.clone();
        v.sort_by_key(|r| r.rv);
        v
    }

    /// Watch errors and re-lists (a re-list may hide a change).
    pub fn watch_restarts(&self) -> Vec<String> {
        self.inner.lock().unwrap().watch_restarts.clone()
    }

    /// Declares that a scenario itself put the pod `uid` into a group while it was labeled
    /// active, by a write at resourceVersion `rv` (a pod relabeled back into its group): that
    /// second active is the scenario's doing, not the controller's. From `rv` until the pod's
    /// first record that is not active (the controller demoted it, or it is gone), the
    /// double-active check leaves it out; whether and how fast the controller demotes it is
    /// the scenario's own assertion.
    pub fn injected_active(&self, uid: &str, rv: u64) {
        self.inner
            .lock()
            .unwrap()
            .injected_actives
            .push((uid.to_string(), rv));
    }

    /// The pod records the double-active check replays: every record, in resourceVersion
    /// order, with the actives a scenario injected ([`History::injected_active`]) not active.
    fn controller_written_records(&self) -> Vec<PodRecord> {
        let injected = self.inner.lock().unwrap().injected_actives.clone();
        without_injected_actives(self.pod_records(), &injected)
    }

    /// Replays the pod records in resourceVersion order per group (namespace + group label)
    /// and returns every resourceVersion at which two pods of a group were labeled active
    /// (actives injected by a scenario left out, see [`History::injected_active`]).
    pub fn double_actives(&self) -> Vec<DoubleActive> {
        double_actives(&self.controller_written_records())
    }

    /// Errors when two pods of a group were ever active at the same resourceVersion (actives
    /// injected by a scenario left out); returns how many pod records and groups were
    /// checked.
    pub fn assert_no_double_active(&self) -> Result<(usize, usize)> {
        let records = self.controller_written_records();
        let bad = double_actives(&records);
        if bad.is_empty() {
            let groups: BTreeSet<(String, String)> = records
                .iter()
                .filter_map(|r| r.group.clone().map(|g| (r.namespace.clone(), g)))
                .collect();
            return Ok((records.len(), groups.len()));
        }
        {
            let mut msg = format!("{} double-active resourceVersions:\n", bad.len());
            for d in bad.iter().take(20) {
                let _ = writeln!(msg, "  {d:?}");
            }
            let _ = writeln!(msg, "history of the affected groups:");
            let affected: BTreeSet<(String, String)> = bad
                .iter()
                .map(|d| (d.namespace.clone(), d.group.clone()))
                .collect();
            for r in records.iter().filter(|r| {
                r.group
                    .as_ref()
                    .is_some_and(|g| affected.contains(&(r.namespace.clone(), g.clone())))
            }) {
                let _ = writeln!(
                    msg,
                    "  rv={} {}/{} role={:?} ready={} terminating={} deleted={}",
                    r.rv, r.namespace, r.pod, r.role, r.ready, r.terminating, r.deleted
                );
            }
            bail!(msg);
        }
    }

    /// First pod record at or after `since` matching `f`.
    pub fn first_pod(
        &self,
        since_unix_nanos: u64,
        f: impl Fn(&PodRecord) -> bool,
    ) -> Option<PodRecord> {
        self.pod_records()
            .into_iter()
            .filter(|r| r.seen_unix_nanos >= since_unix_nanos)
            .find(|r| f(r))
    }

    /// Builds a failover timeline from the records after `trigger`.
    pub fn timeline(
        &self,
        trigger: SystemTime,
        old: &Pod,
        new: &Pod,
        ns: &str,
        service: &str,
        app: Option<&AppState>,
    ) -> Timeline {
        let t0 = unix_nanos(trigger);
        let old_uid = old.uid().unwrap_or_default();
        let new_uid = new.uid().unwrap_or_default();
        let new_ip = pod_ip(new);
        let seen = self
            .first_pod(t0, |r| {
                r.uid == old_uid
                    && (r.deleted || r.terminating || !r.ready || !r.not_running.is_empty())
            })
            .map(|r| r.seen_unix_nanos);
        let demoted = self
            .first_pod(t0, |r| r.uid == old_uid && !r.is_active())
            .map(|r| r.seen_unix_nanos);
        let promoted = self
            .first_pod(t0, |r| r.uid == new_uid && r.is_active())
            .map(|r| r.seen_unix_nanos);
        let endpoints = self
            .endpoint_records()
            .into_iter()
            .filter(|r| r.seen_unix_nanos >= t0 && r.namespace == ns && r.service == service)
            .find(|r| {
                new_ip
                    .as_ref()
                    .is_some_and(|ip| r.ready_ips == vec![ip.clone()])
            })
            .map(|r| r.seen_unix_nanos);
        Timeline {
            trigger_unix_nanos: t0,
            seen_unix_nanos: seen,
            demoted_unix_nanos: demoted,
            promoted_unix_nanos: promoted,
            app_applied_unix_nanos: app.and_then(|a| a.applied_at_unix_nanos),
            endpoints_unix_nanos: endpoints,
            traffic_unix_nanos: None,
        }
    }
}

impl HistoryInner {
    /// After a (re-)list: a pod recorded as present that the list did not show was deleted
    /// while the watch was not running, and the watcher sends no Delete for it. Records that
    /// deletion at the first resourceVersion after the last one seen before the gap: the
    /// earliest it can have happened. (Where in the gap it really happened is unknown; placing
    /// it later would report a double active with a pod promoted in the gap that may never
    /// have existed. The re-list itself is reported by [`History::watch_restarts`].)
    fn end_pod_list(&mut self, seen: u64) {
        let Some(PodList {
            gap_start,
            listed,
            changed,
        }) = self.pod_list.take()
        else {
            return;
        };
        let mut gone: Vec<PodRecord> = self
            .last
            .values()
            .filter(|r| !r.deleted && !listed.contains(&r.uid))
            .cloned()
            .collect();
        gone.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        let gone_count = gone.len();
        for mut r in gone {
            r.rv = gap_start + 1;
            r.seen_unix_nanos = seen;
            r.deleted = true;
            r.listed = true;
            self.last.insert(r.uid.clone(), r.clone());
            self.pods.push(r);
        }
        if gap_start > 0 {
            self.watch_restarts.push(format!(
                "pod re-list after rv {gap_start}: {changed} pods changed and {gone_count} gone \
                 in the gap, their steps there unseen"
            ));
        }
    }

    /// A pod of a (re-)list. Its state may have changed in the gap before the list, at an
    /// unknown resourceVersion up to the listed one: one that ended an active state (the pod
    /// was demoted) is recorded at the first resourceVersion after the gap began, the earliest
    /// the demotion can have happened, for the reason [`HistoryInner::end_pod_list`] places a
    /// deletion there. (At its listed resourceVersion, a pod promoted in the gap would look
    /// active together with this one.) Other states keep their listed resourceVersion.
    fn list_pod(&mut self, p: &Pod, seen: u64) {
        let Some(mut r) = PodRecord::from_pod(p, false, true, seen) else {
            return;
        };
        let Some(list) = self.pod_list.as_mut() else {
            return self.push(r);
        };
        list.listed.insert(r.uid.clone());
        if let Some(prev) = self.last.get(&r.uid) {
            if prev.same_state(&r) {
                return;
            }
            list.changed += 1;
            if prev.is_active() && !r.is_active() {
                r.rv = r.rv.min(list.gap_start + 1);
            }
        }
        self.push(r);
    }

    fn push_pod(&mut self, p: &Pod, deleted: bool, listed: bool, seen: u64) {
        if let Some(r) = PodRecord::from_pod(p, deleted, listed, seen) {
            self.push(r);
        }
    }

    /// Records `r` unless it shows the same state as the pod's record before.
    fn push(&mut self, r: PodRecord) {
        if let Some(prev) = self.last.get(&r.uid)
            && prev.same_state(&r)
        {
            return;
        }
        self.last.insert(r.uid.clone(), r.clone());
        self.pods.push(r);
    }

    fn push_slice(&mut self, s: &EndpointSlice, deleted: bool, seen: u64) {
        let ns = s.namespace().unwrap_or_default();
        let Some(service) = s.labels().get("kubernetes.io/service-name").cloned() else {
            return;
        };
        let Some(rv) = s.resource_version().and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        let key = (ns.clone(), s.name_any());
        if deleted {
            self.slices.remove(&key);
        } else {
            self.slices
                .insert(key, (service.clone(), ready_slice_addresses(s)));
        }
        let mut ips: Vec<String> = self
            .slices
            .iter()
            .filter(|((n, _), (svc, _))| *n == ns && *svc == service)
            .flat_map(|(_, (_, ips))| ips.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ips.sort();
        let last = self
            .endpoints
            .iter()
            .rev()
            .find(|r| r.namespace == ns && r.service == service);
        if last.is_some_and(|l| l.ready_ips == ips) {
            return;
        }
        self.endpoints.push(EndpointsRecord {
            rv,
            seen_unix_nanos: seen,
            namespace: ns,
            service,
            ready_ips: ips,
        });
    }
}

/// `records` (in resourceVersion order) with each injected active `(uid, rv)` shown not
/// active from `rv` up to the pod's first record there that is not active.
fn without_injected_actives(
    mut records: Vec<PodRecord>,
    injected: &[(String, u64)],
) -> Vec<PodRecord> {
    for (uid, from) in injected {
        for r in records
            .iter_mut()
            .filter(|r| r.uid == *uid && r.rv >= *from)
        {
            if !r.is_active() {
                break;
            }
            r.role = None;
        }
    }
    records
}

/// Replays pod records (any order) in resourceVersion order per group; returns every
/// resourceVersion at which two or more pods of one group were labeled active.
pub fn double_actives(records: &[PodRecord]) -> Vec<DoubleActive> {
    let mut sorted: Vec<&PodRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.rv);
    // (namespace, group) -> uid -> (pod name, terminating) of active pods
    let mut active: BTreeMap<(String, String), BTreeMap<String, (String, bool)>> = BTreeMap::new();
    // uid -> group key, to move a pod out of its old group if its group label changes
    let mut group_of: HashMap<String, (String, String)> = HashMap::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let rv = sorted[i].rv;
        let mut touched = BTreeSet::new();
        while i < sorted.len() && sorted[i].rv == rv {
            let r = sorted[i];
            if let Some(old) = group_of.remove(&r.uid)
                && let Some(m) = active.get_mut(&old)
            {
                m.remove(&r.uid);
            }
            if let Some(g) = &r.group {
                let key = (r.namespace.clone(), g.clone());
                if !r.deleted {
                    group_of.insert(r.uid.clone(), key.clone());
                }
                if r.is_active() {
                    active
                        .entry(key.clone())
                        .or_default()
                        .insert(r.uid.clone(), (r.pod.clone(), r.terminating));
                }
                touched.insert(key);
            }
            i += 1;
        }
        for key in touched {
            if let Some(m) = active.get(&key)
                && m.len() > 1
            {
                let live = m.values().filter(|(_, t)| !t).count();
                out.push(DoubleActive {
                    rv,
                    namespace: key.0.clone(),
                    group: key.1.clone(),
                    pods: m.values().map(|(n, _)| n.clone()).collect(),
                    only_terminating_overlap: live <= 1,
                });
            }
        }
    }
    out
}

/// Failover time stamps (UNIX nanos, one host clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Right before the trigger (API call or file write).
    pub trigger_unix_nanos: u64,
    /// First watch event showing the failure on the old active pod.
    pub seen_unix_nanos: Option<u64>,
    /// Old active no longer labeled active (or gone).
    pub demoted_unix_nanos: Option<u64>,
    /// New active labeled (watch).
    pub promoted_unix_nanos: Option<u64>,
    /// The new active app applied the notification (its own clock, same host).
    pub app_applied_unix_nanos: Option<u64>,
    /// The Service's ready endpoints (its EndpointSlice) are exactly the new active pod.
    pub endpoints_unix_nanos: Option<u64>,
    /// The first answer from the new active to a request sent to the Service's ClusterIP
    /// (only where kube-proxy forwards ClusterIPs: the real node).
    pub traffic_unix_nanos: Option<u64>,
}

impl Timeline {
    /// (stage name, milliseconds since the trigger) for each stage that was observed.
    pub fn stages_ms(&self) -> Vec<(&'static str, Option<f64>)> {
        let ms = |t: Option<u64>| t.map(|t| (t as f64 - self.trigger_unix_nanos as f64) / 1e6);
        vec![
            ("failure seen (watch)", ms(self.seen_unix_nanos)),
            ("old active demoted", ms(self.demoted_unix_nanos)),
            ("new active labeled", ms(self.promoted_unix_nanos)),
            ("app applied notification", ms(self.app_applied_unix_nanos)),
            ("EndpointSlice moved", ms(self.endpoints_unix_nanos)),
        ]
        .into_iter()
        .chain(
            self.traffic_unix_nanos
                .map(|t| ("traffic switched (ClusterIP)", ms(Some(t)))),
        )
        .collect()
    }

    /// A printable timeline.
    pub fn render(&self) -> String {
        let mut out = String::from("  t=0          trigger\n");
        for (name, ms) in self.stages_ms() {
            match ms {
                Some(ms) => {
                    let _ = writeln!(out, "  +{ms:>9.1} ms {name}");
                }
                None => {
                    let _ = writeln!(out, "  {:>12} {name}", "(not seen)");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::STANDBY;

    fn pod(name: &str, role: &str, rv: u64) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "resourceVersion": rv.to_string(),
                "labels": {"app": "g", "role": role},
            },
        }))
        .unwrap()
    }

    /// A history that listed `a` active (rv 10) and `b` standby (rv 11), then, after its
    /// watch broke, re-listed `relisted`.
    fn relisted(relisted: Vec<Pod>) -> History {
        let h = History::default();
        let list = |pods: Vec<Pod>| {
            let items = pods.into_iter().map(watcher::Event::InitApply);
            [watcher::Event::Init]
                .into_iter()
                .chain(items)
                .chain([watcher::Event::InitDone])
        };
        let first = vec![pod("a", ACTIVE, 10), pod("b", STANDBY, 11)];
        for ev in list(first).chain(list(relisted)) {
            h.on_pod_event(ev);
        }
        h
    }

    #[test]
    fn pod_missing_from_a_relist_is_deleted() {
        // Meanwhile `a` was deleted and `b` promoted. The re-list only shows `b`, active.
        let h = relisted(vec![pod("b", ACTIVE, 15)]);
        assert!(h.double_actives().is_empty(), "{:?}", h.double_actives());
        assert_eq!(h.watch_restarts().len(), 1, "{:?}", h.watch_restarts());
        let a = h.pod_records().into_iter().rfind(|r| r.pod == "a").unwrap();
        assert!(a.deleted && a.listed, "{a:?}");
        assert!(a.rv > 11 && a.rv <= 15, "{a:?}");
        // A pod that is still listed stays.
        assert!(!h.pod_records().iter().any(|r| r.pod == "b" && r.deleted));
    }

    #[test]
    fn a_demotion_a_relist_reveals_is_placed_before_the_gap_promotions() {
        // In the gap: `a` demoted (rv 13), `b` promoted (rv 14), `a` written again (rv 16, a
        // status update). The re-list shows only the last writes.
        let h = relisted(vec![pod("a", STANDBY, 16), pod("b", ACTIVE, 14)]);
        assert!(h.double_actives().is_empty(), "{:?}", h.double_actives());
        let a = h.pod_records().into_iter().rfind(|r| r.pod == "a").unwrap();
        assert_eq!((a.rv, a.listed), (12, true), "{a:?}");
        assert!(h.watch_restarts()[0].contains("2 pods changed"));
    }

    /// Pod records from a timeline: comma-separated `RV POD ROLE [FLAG...]` entries of group
    /// `g` in namespace `ns`, FLAG being `terminating`, `deleted` or `group=NAME`.
    fn records(timeline: &str) -> Vec<PodRecord> {
        timeline
            .split(',')
            .map(|entry| {
                let mut words = entry.split_whitespace();
                let mut next = || words.next().expect("RV POD ROLE");
                let (rv, pod, role) = (next().parse().unwrap(), next(), next());
                let mut record = PodRecord {
                    rv,
                    seen_unix_nanos: rv,
                    namespace: "ns".into(),
                    pod: pod.into(),
                    uid: format!("uid-{pod}"),
                    group: Some("g".into()),
                    role: Some(role.into()),
                    epoch: None,
                    ip: None,
                    ready: true,
                    terminating: false,
                    deleted: false,
                    not_running: vec![],
                    restarted: vec![],
                    listed: false,
                };
                for flag in words {
                    match (flag, flag.strip_prefix("group=")) {
                        ("terminating", _) => record.terminating = true,
                        ("deleted", _) => record.deleted = true,
                        (_, Some(group)) => record.group = Some(group.into()),
                        _ => panic!("unknown flag {flag} in {entry:?}"),
                    }
                }
                record
            })
            .collect()
    }

    #[test]
    fn timelines_without_double_active() {
        for timeline in [
            // A clean failover: `a` is demoted (terminating) before `b` is promoted.
            "10 a active, 11 b standby, 12 a active terminating, 13 a standby terminating, \
             14 b active, 15 a standby terminating deleted",
            // A deleted pod stops counting.
            "10 a active, 11 a active deleted, 12 b active",
            // Other groups do not interfere.
            "10 a active, 11 b active group=other",
        ] {
            let d = double_actives(&records(timeline));
            assert!(d.is_empty(), "{timeline}: {d:?}");
        }
    }

    #[test]
    fn promotion_before_demotion_is_double_active() {
        let d = double_actives(&records(
            "14 b active, 10 a active, 11 b standby, 15 a standby",
        ));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].rv, 14);
        assert_eq!(d[0].pods, vec!["a".to_string(), "b".to_string()]);
        assert!(!d[0].only_terminating_overlap);
    }

    #[test]
    fn injected_active_is_left_out_until_demoted() {
        let r = records("10 a active, 11 b active, 12 b standby, 13 b active");
        let injected = [("uid-b".to_string(), 11)];
        let d = double_actives(&without_injected_actives(r.clone(), &injected));
        // Injected at 11, demoted at 12; active again at 13 is the controller's doing.
        assert_eq!(d.iter().map(|d| d.rv).collect::<Vec<_>>(), vec![13]);
        assert_eq!(double_actives(&r).len(), 2);
    }
}
