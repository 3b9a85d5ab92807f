//! Turns raw pod watch events into per-group core events: places pods in groups, turns a
//! re-list (Init .. InitDone) into one `Resync` per group, so a pod deleted during a watch gap
//! is seen as missing, and logs pods without a group label once each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use hapod_core::{Config, Event, PodView};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use crate::metrics::Metrics;
use crate::podview::pod_view;

/// A group: namespace plus the value of the group label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub namespace: String,
    pub group: String,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.group)
    }
}

impl GroupKey {
    fn of(view: &PodView) -> Self {
        Self {
            namespace: view.namespace.clone(),
            group: view.group.clone(),
        }
    }
}

/// Which namespaces one watch stream covers (`None`: all).
pub type Scope = Option<String>;

fn in_scope(scope: &Scope, key: &GroupKey) -> bool {
    scope.as_ref().is_none_or(|ns| *ns == key.namespace)
}

/// Places pods in groups; one per controller, fed by every watch stream.
pub struct Router {
    config: Arc<Config>,
    group_label: String,
    metrics: Metrics,
    /// Group of every placed pod, by UID.
    placed: HashMap<String, GroupKey>,
    /// Number of placed pods per group; a group without any is absent.
    members: HashMap<GroupKey, usize>,
    /// Pods already logged as unplaceable: UID -> namespace (one log line each, not a storm).
    warned: HashMap<String, String>,
    /// Re-lists in progress, per scope (one stream per scope: `Settings` deduplicates them).
    relists: HashMap<Scope, Relist>,
}

/// What a re-list in progress has delivered so far.
#[derive(Default)]
struct Relist {
    views: Vec<PodView>,
    /// UIDs of listed pods that cannot be grouped: warnings about other pods are forgotten.
    unplaceable: HashSet<String>,
}

impl Router {
    pub fn new(config: Arc<Config>, group_label: String, metrics: Metrics) -> Self {
        Self {
            config,
            group_label,
            metrics,
            placed: HashMap::new(),
            members: HashMap::new(),
            warned: HashMap::new(),
            relists: HashMap::new(),
        }
    }

    /// Every group with a placed pod in `scope`.
    pub fn groups_in(&self, scope: &Scope) -> impl Iterator<Item = &GroupKey> {
        self.members.keys().filter(move |k| in_scope(scope, k))
    }

    /// Whether no pod is placed in `key` (its worker may be reaped).
    pub fn is_empty(&self, key: &GroupKey) -> bool {
        !self.members.contains_key(key)
    }

    /// Pods tracked: placed ones and unplaceable ones already warned about.
    pub fn tracked_pods(&self) -> usize {
        self.placed.len() + self.warned.len()
    }

    fn place(&mut self, uid: String, key: GroupKey) {
        if let Some(old) = self.placed.insert(uid, key.clone()) {
            self.leave(&old);
        }
        *self.members.entry(key).or_default() += 1;
    }

    fn unplace(&mut self, uid: &str) -> Option<GroupKey> {
        let key = self.placed.remove(uid)?;
        self.leave(&key);
        Some(key)
    }

    fn leave(&mut self, key: &GroupKey) {
        if let Some(n) = self.members.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.members.remove(key);
            }
        }
    }

    fn view(&mut self, pod: &Pod) -> Option<PodView> {
        match pod_view(pod, &self.config, &self.group_label) {
            Ok(view) => Some(view),
            Err(reason) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                if self.warned.insert(uid, namespace).is_none() {
                    self.metrics.unplaceable_pods.inc();
                    tracing::warn!(
                        namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod = pod.metadata.name.as_deref().unwrap_or(""),
                        %reason,
                        "pod matches the selector but cannot be grouped; ignored"
                    );
                }
                None
            }
        }
    }

    /// Events for the groups affected by one watch event of the stream covering `scope`.
    pub fn route(&mut self, scope: &Scope, event: watcher::Event<Pod>) -> Vec<(GroupKey, Event)> {
        match event {
            watcher::Event::Init => {
                self.relists.insert(scope.clone(), Relist::default());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                let view = self.view(&pod);
                let relist = self.relists.entry(scope.clone()).or_default();
                match view {
                    Some(view) => relist.views.push(view),
                    None => {
                        relist
                            .unplaceable
                            .insert(pod.metadata.uid.clone().unwrap_or_default());
                    }
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let relist = self.relists.remove(scope).unwrap_or_default();
                self.snapshot(scope, relist)
            }
            watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let view = self.view(&pod);
                let mut out = Vec::new();
                let new_key = view.as_ref().map(GroupKey::of);
                // A pod whose group label changed or vanished leaves its old group, at the
                // version of this update (so the group can tell a later return from a replay).
                if self
                    .placed
                    .get(&uid)
                    .is_some_and(|old| Some(old) != new_key.as_ref())
                    && let Some(old) = self.unplace(&uid)
                {
                    out.push((old, left(&pod)));
                }
                if let (Some(view), Some(key)) = (view, new_key) {
                    self.warned.remove(&uid);
                    self.place(uid, key.clone());
                    out.push((key, Event::Applied(view)));
                }
                out
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.warned.remove(&uid);
                match self.unplace(&uid) {
                    Some(key) => vec![(key, left(&pod))],
                    None => Vec::new(),
                }
            }
        }
    }

    /// One `Resync` per group of `scope` from a full list: groups known before but absent
    /// from the list get an empty one (all their pods are gone).
    fn snapshot(&mut self, scope: &Scope, relist: Relist) -> Vec<(GroupKey, Event)> {
        let mut groups: BTreeMap<GroupKey, Vec<PodView>> = self
            .groups_in(scope)
            .map(|k| (k.clone(), Vec::new()))
            .collect();
        let gone: Vec<String> = self
            .placed
            .iter()
            .filter(|(_, k)| in_scope(scope, k))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.unplace(&uid);
        }
        // Unplaceable pods that were not listed again are gone: forget their warnings.
        self.warned.retain(|uid, namespace| {
            scope.as_ref().is_some_and(|ns| ns != namespace) || relist.unplaceable.contains(uid)
        });
        for view in relist.views {
            let key = GroupKey::of(&view);
            self.place(view.uid.clone(), key.clone());
            groups.entry(key).or_default().push(view);
        }
        groups
            .into_iter()
            .map(|(key, pods)| (key, Event::Resync { pods }))
            .collect()
    }
}

/// The event telling a group that `pod` left it (deleted, or relabeled out of it).
fn left(pod: &Pod) -> Event {
    Event::Deleted {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        resource_version: pod.metadata.resource_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use serde_json::json;

    fn pod(name: &str, group: Option<&str>) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(g) = group {
            labels.insert("app".into(), json!(g));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                         "resourceVersion": "5", "labels": labels},
        }))
        .unwrap()
    }

    fn router() -> Router {
        let metrics = Metrics::register(&mut Registry::default());
        Router::new(Arc::new(Config::default()), "app".into(), metrics)
    }

    fn key(group: &str) -> GroupKey {
        GroupKey {
            namespace: "ns".into(),
            group: group.into(),
        }
    }

    #[test]
    fn relist_missing_pod_becomes_resync_without_it() {
        let mut r = router();
        let all: Scope = None;
        assert_eq!(
            r.route(&all, watcher::Event::Apply(pod("a", Some("g"))))
                .len(),
            1
        );
        r.route(&all, watcher::Event::Apply(pod("b", Some("g"))));
        r.route(&all, watcher::Event::Apply(pod("c", Some("h"))));
        // Watch gap: "a" and all of group "h" were deleted meanwhile.
        assert!(r.route(&all, watcher::Event::Init).is_empty());
        assert!(
            r.route(&all, watcher::Event::InitApply(pod("b", Some("g"))))
                .is_empty()
        );
        let out = r.route(&all, watcher::Event::InitDone);
        assert_eq!(out.len(), 2);
        let Event::Resync { pods } = &out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!(out[0].0, key("g"));
        assert_eq!(
            pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(out[1], (key("h"), Event::Resync { pods: vec![] }));
        // A later delete of a pod not placed any more is not routed.
        assert!(
            r.route(&all, watcher::Event::Delete(pod("c", Some("h"))))
                .is_empty()
        );
    }

    #[test]
    fn missing_group_label_is_ignored_and_relabel_moves_the_pod() {
        let mut r = router();
        let all: Scope = None;
        for _ in 0..3 {
            assert!(
                r.route(&all, watcher::Event::Apply(pod("x", None)))
                    .is_empty()
            );
        }
        assert_eq!(r.metrics.unplaceable_pods.get(), 1);
        r.route(&all, watcher::Event::Apply(pod("a", Some("g"))));
        let out = r.route(&all, watcher::Event::Apply(pod("a", Some("h"))));
        assert_eq!(
            out.iter()
                .map(|(k, _)| k.group.as_str())
                .collect::<Vec<_>>(),
            ["g", "h"]
        );
        assert!(matches!(out[0].1, Event::Deleted { .. }));
        let out = r.route(&all, watcher::Event::Apply(pod("a", None)));
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].1, Event::Deleted { .. }));
    }

    #[test]
    fn relist_of_one_namespace_leaves_other_namespaces_alone() {
        let mut r = router();
        r.route(&None, watcher::Event::Apply(pod("a", Some("g"))));
        let other: Scope = Some("other".into());
        r.route(&other, watcher::Event::Init);
        assert!(r.route(&other, watcher::Event::InitDone).is_empty());
        assert_eq!(r.groups_in(&None).count(), 1);
    }

    #[test]
    fn churn_leaves_nothing_behind() {
        let mut r = router();
        let all: Scope = None;
        for round in 0..100 {
            let group = format!("g{round}");
            r.route(
                &all,
                watcher::Event::Apply(pod(&format!("p{round}"), Some(&group))),
            );
            r.route(&all, watcher::Event::Apply(pod(&format!("x{round}"), None)));
            r.route(
                &all,
                watcher::Event::Delete(pod(&format!("p{round}"), Some(&group))),
            );
        }
        assert_eq!(r.groups_in(&all).count(), 0);
        assert!(r.is_empty(&key("g7")));
        // The unplaceable pods vanished during a watch gap: the re-list forgets them.
        r.route(&all, watcher::Event::Init);
        r.route(&all, watcher::Event::InitApply(pod("x99", None)));
        r.route(&all, watcher::Event::InitDone);
        assert_eq!(r.tracked_pods(), 1);
        assert_eq!(r.metrics.unplaceable_pods.get(), 100);
    }
}
