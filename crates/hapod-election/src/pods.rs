//! The controller pods as seen through the watch: who is dead, which role labels are wrong.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use crate::leadership::{DeathCause, PodHealth};
use crate::lease::HolderRecord;

/// kubectl's annotation naming a pod's main container.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// A cache of the controller pods fed by raw watcher events.
#[derive(Debug, Default)]
pub struct PodTracker {
    pods: BTreeMap<String, Pod>,
    /// A re-list in progress: pods missing from it were deleted during a watch gap.
    relist: Option<BTreeMap<String, Pod>>,
    synced: bool,
    /// UIDs of pods this cache saw leave (deleted, or missing from a re-list), newest last.
    /// Only these count as dead when absent: a holder pod the cache never saw (a selector
    /// that misses the controller pods, a watch that lags the Lease) is unknown, and the
    /// lease expiry covers it, so two replicas never steal the Lease from each other.
    departed: VecDeque<String>,
}

/// Controller pods are few; remembering the last departures is enough.
const DEPARTED_MEMORY: usize = 64;

impl PodTracker {
    /// Feed one watcher event.
    pub fn apply(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(relist), Some(name)) =
                    (self.relist.as_mut(), pod.metadata.name.clone())
                {
                    relist.insert(name, pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    let old = std::mem::replace(&mut self.pods, relist);
                    for (name, pod) in old {
                        if !self.pods.contains_key(&name) {
                            self.depart(&pod);
                        }
                    }
                }
                self.synced = true;
            }
            watcher::Event::Apply(pod) => self.upsert(pod),
            watcher::Event::Delete(pod) => {
                if let Some(name) = pod.metadata.name.as_deref() {
                    self.pods.remove(name);
                }
                self.depart(&pod);
            }
        }
    }

    fn depart(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.clone() {
            if self.departed.len() == DEPARTED_MEMORY {
                self.departed.pop_front();
            }
            self.departed.push_back(uid);
        }
    }

    /// Record a pod returned by our own write (fresher than the watch, same object).
    pub fn upsert(&mut self, pod: Pod) {
        if let Some(name) = pod.metadata.name.clone() {
            self.pods.insert(name, pod);
        }
    }

    /// Whether the holder's pod is alive, as far as this cache knows.
    pub fn health(&self, holder: &HolderRecord) -> PodHealth {
        let Some(pod_name) = holder.pod.as_deref() else {
            return PodHealth::Unknown;
        };
        if !self.synced {
            return PodHealth::Unknown;
        }
        let Some(pod) = self.pods.get(pod_name) else {
            let seen_leaving = holder
                .pod_uid
                .as_ref()
                .is_some_and(|uid| self.departed.contains(uid));
            return if seen_leaving {
                PodHealth::Dead(DeathCause::Deleted)
            } else {
                PodHealth::Unknown
            };
        };
        if let (Some(want), Some(have)) = (holder.pod_uid.as_deref(), pod.metadata.uid.as_deref())
            && want != have
        {
            return PodHealth::Dead(DeathCause::Deleted);
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return PodHealth::Dead(DeathCause::Terminating);
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        ) {
            return PodHealth::Dead(DeathCause::ContainerTerminated);
        }
        if let Some(container) = holder.container.as_deref() {
            let cs = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|all| all.iter().find(|c| c.name == container));
            if let Some(cs) = cs {
                let state = cs.state.as_ref();
                let terminated = state.is_some_and(|s| s.terminated.is_some());
                // Waiting after a previous run = crash-loop back-off: no process is running.
                let waiting_after_crash = state.is_some_and(|s| s.waiting.is_some())
                    && cs
                        .last_state
                        .as_ref()
                        .is_some_and(|s| s.terminated.is_some());
                if terminated || waiting_after_crash {
                    return PodHealth::Dead(DeathCause::ContainerTerminated);
                }
            }
        }
        PodHealth::Alive
    }

    /// Whether the given pod has a `deletionTimestamp` (this replica is being shut down).
    pub fn terminating(&self, pod_name: &str) -> bool {
        self.pods
            .get(pod_name)
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    }

    /// UID and main container of a pod, for the holder record.
    pub fn identity_of(&self, pod_name: &str) -> (Option<String>, Option<String>) {
        let Some(pod) = self.pods.get(pod_name) else {
            return (None, None);
        };
        let from_annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
            .cloned();
        // Kubernetes' own convention: without the annotation the first container is the main one.
        let container = from_annotation.or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
        });
        (pod.metadata.uid.clone(), container)
    }

    /// Role label patches the acting replica `me` must make: `(pod, resourceVersion, value)`.
    /// Terminating pods are left alone: they are on their way out.
    pub fn wrong_roles(
        &self,
        me: &str,
        key: &str,
        active: &str,
        standby: &str,
    ) -> Vec<(String, String, String)> {
        let role = |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
        // Demote before promote, as for application pods: this replica labels itself active
        // only once no other pod (a terminating predecessor included) still says active.
        let others_active = self
            .pods
            .iter()
            .any(|(name, p)| name != me && role(p).as_deref() == Some(active));
        self.pods
            .iter()
            .filter_map(|(name, p)| {
                let terminating = p.metadata.deletion_timestamp.is_some();
                let want = if name == me && !terminating {
                    if others_active {
                        return None;
                    }
                    active
                } else {
                    standby
                };
                let rv = p.metadata.resource_version.clone()?;
                (role(p).as_deref() != Some(want)).then(|| (name.clone(), rv, want.to_owned()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, uid: &str, role: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                resource_version: Some("1".into()),
                labels: role.map(|r| BTreeMap::from([("role".to_owned(), r.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "controller".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn with_state(mut p: Pod, state: ContainerState, last: Option<ContainerState>) -> Pod {
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "controller".into(),
                state: Some(state),
                last_state: last,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    fn holder(pod: &str, uid: &str) -> HolderRecord {
        HolderRecord {
            identity: format!("{pod}_1"),
            pod: Some(pod.into()),
            pod_uid: Some(uid.into()),
            container: Some("controller".into()),
        }
    }

    fn synced(pods: Vec<Pod>) -> PodTracker {
        let mut t = PodTracker::default();
        t.apply(watcher::Event::Init);
        for p in pods {
            t.apply(watcher::Event::InitApply(p));
        }
        t.apply(watcher::Event::InitDone);
        t
    }

    #[test]
    fn unknown_until_synced() {
        let mut t = PodTracker::default();
        t.apply(watcher::Event::Init);
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Unknown);
    }

    #[test]
    fn classifies_death_signals() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        };
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..ContainerState::default()
        };
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting::default()),
            ..ContainerState::default()
        };
        let t = synced(vec![with_state(pod("a", "u", None), running, None)]);
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Alive);
        assert_eq!(
            t.health(&holder("a", "other")),
            PodHealth::Dead(DeathCause::Deleted)
        );
        // Never seen at all: unknown (see a_holder_pod_never_seen_is_unknown_not_dead).
        assert_eq!(t.health(&holder("b", "u")), PodHealth::Unknown);

        let mut deleting = pod("a", "u", None);
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let t = synced(vec![deleting]);
        assert_eq!(
            t.health(&holder("a", "u")),
            PodHealth::Dead(DeathCause::Terminating)
        );
        assert!(t.terminating("a"));

        let t = synced(vec![with_state(
            pod("a", "u", None),
            terminated.clone(),
            None,
        )]);
        assert_eq!(
            t.health(&holder("a", "u")),
            PodHealth::Dead(DeathCause::ContainerTerminated)
        );
        let t = synced(vec![with_state(
            pod("a", "u", None),
            waiting.clone(),
            Some(terminated),
        )]);
        assert_eq!(
            t.health(&holder("a", "u")),
            PodHealth::Dead(DeathCause::ContainerTerminated)
        );
        // Waiting before the first start (image pull) is not a death of a running holder.
        let t = synced(vec![with_state(pod("a", "u", None), waiting, None)]);
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Alive);
    }

    #[test]
    fn relist_drops_pods_deleted_during_a_gap_and_delete_events_remove() {
        let mut t = synced(vec![pod("a", "u", None), pod("b", "v", None)]);
        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(pod("b", "v", None)));
        // Until the re-list completes, the old view stands.
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Alive);
        t.apply(watcher::Event::InitDone);
        assert_eq!(
            t.health(&holder("a", "u")),
            PodHealth::Dead(DeathCause::Deleted)
        );
        t.apply(watcher::Event::Delete(pod("b", "v", None)));
        assert_eq!(
            t.health(&holder("b", "v")),
            PodHealth::Dead(DeathCause::Deleted)
        );
    }

    #[test]
    fn a_holder_pod_never_seen_is_unknown_not_dead() {
        // A selector that misses the controller pods, or a Lease event ahead of the pod's
        // watch event: stealing the Lease on absence alone made replicas flap.
        let mut t = synced(vec![pod("b", "v", None)]);
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Unknown);
        t.apply(watcher::Event::Apply(pod("a", "u", None)));
        assert_eq!(t.health(&holder("a", "u")), PodHealth::Alive);
        t.apply(watcher::Event::Delete(pod("a", "u", None)));
        assert_eq!(
            t.health(&holder("a", "u")),
            PodHealth::Dead(DeathCause::Deleted)
        );
        // A replacement pod of the same name that this cache has not seen yet is unknown.
        assert_eq!(t.health(&holder("a", "u2")), PodHealth::Unknown);
    }

    #[test]
    fn a_terminating_predecessor_is_demoted_before_this_replica_says_active() {
        let mut old = pod("b", "v", Some("active"));
        old.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut t = synced(vec![pod("a", "u", Some("standby")), old.clone()]);
        assert_eq!(
            t.wrong_roles("a", "role", "active", "standby"),
            vec![("b".to_owned(), "1".to_owned(), "standby".to_owned())]
        );
        old.metadata.labels = Some([("role".to_owned(), "standby".to_owned())].into());
        t.upsert(old);
        assert_eq!(
            t.wrong_roles("a", "role", "active", "standby"),
            vec![("a".to_owned(), "1".to_owned(), "active".to_owned())]
        );
    }

    #[test]
    fn roles_to_fix_and_identity() {
        let t = synced(vec![
            pod("a", "u", Some("standby")),
            pod("b", "v", Some("standby")),
            pod("c", "w", None),
        ]);
        assert_eq!(
            t.wrong_roles("a", "role", "active", "standby"),
            vec![
                ("a".to_owned(), "1".to_owned(), "active".to_owned()),
                ("c".to_owned(), "1".to_owned(), "standby".to_owned()),
            ]
        );
        assert_eq!(
            t.identity_of("a"),
            (Some("u".to_owned()), Some("controller".to_owned()))
        );
        assert_eq!(t.identity_of("zz"), (None, None));
    }
}
