//! Reading and writing the Lease object: annotations with precise values, spec fields kept
//! valid for other tools (`kubectl get lease`, client-go readers).

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::leadership::{Holder, LeaseView, Millis, Term};

/// The last term handed out.
pub const TERM_ANNOTATION: &str = "hapod.io/term";
/// The holder's lease duration in milliseconds.
pub const LEASE_DURATION_ANNOTATION: &str = "hapod.io/lease-duration-ms";
/// The holder's pod name.
pub const HOLDER_POD_ANNOTATION: &str = "hapod.io/holder-pod";
/// The holder's pod UID (a pod re-created with the same name is another pod).
pub const HOLDER_POD_UID_ANNOTATION: &str = "hapod.io/holder-pod-uid";
/// The holder's container in its pod, whose termination means the holder died.
pub const HOLDER_CONTAINER_ANNOTATION: &str = "hapod.io/holder-container";

/// The holder as recorded, with the pod details the standby needs to judge its death.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderRecord {
    pub identity: String,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
}

/// The election-relevant content of a Lease object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLease {
    pub holder: Option<HolderRecord>,
    pub term: Term,
    /// `None` if the Lease records no usable duration (the caller falls back to its own).
    pub lease_duration_ms: Option<u64>,
}

impl ParsedLease {
    /// Tolerant parse: cluster data never makes this fail, missing values become `None`.
    pub fn from_lease(lease: &Lease) -> Self {
        let ann = lease.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
        let spec = lease.spec.as_ref();
        // The annotation is the authority; leaseTransitions (which we keep equal to the term)
        // covers a Lease last written by another tool. The larger one keeps terms monotonic.
        let from_annotation = get(TERM_ANNOTATION).and_then(|s| s.trim().parse::<u32>().ok());
        let from_transitions = spec
            .and_then(|s| s.lease_transitions)
            .and_then(|t| u32::try_from(t).ok());
        let term = Term::new(
            from_annotation
                .unwrap_or(0)
                .max(from_transitions.unwrap_or(0)),
        );
        let lease_duration_ms = get(LEASE_DURATION_ANNOTATION)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .or_else(|| {
                spec.and_then(|s| s.lease_duration_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map(|s| s.saturating_mul(1000))
            });
        let holder = spec
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|id| !id.is_empty())
            .map(|identity| HolderRecord {
                identity: identity.to_owned(),
                pod: get(HOLDER_POD_ANNOTATION).map(str::to_owned),
                pod_uid: get(HOLDER_POD_UID_ANNOTATION).map(str::to_owned),
                container: get(HOLDER_CONTAINER_ANNOTATION).map(str::to_owned),
            });
        ParsedLease {
            holder,
            term,
            lease_duration_ms,
        }
    }

    /// The view `decide` takes.
    pub fn view(&self, default_duration_ms: u64, observed_at: Millis) -> LeaseView {
        LeaseView {
            holder: self.holder.as_ref().map(|h| Holder {
                identity: h.identity.clone(),
                pod: h.pod.clone(),
            }),
            term: self.term,
            lease_duration_ms: self.lease_duration_ms.unwrap_or(default_duration_ms),
            observed_at,
        }
    }
}

/// The new holder record written by an acquisition.
#[derive(Clone, Debug)]
pub struct Acquisition<'a> {
    pub holder: &'a HolderRecord,
    pub term: Term,
    pub lease_duration_ms: u64,
    pub now: jiff::Timestamp,
}

/// A Lease for `Create` or CAS `Replace`: `base` (the observed object, carrying its
/// resourceVersion) updated with the acquisition. `base == None` builds a new object.
pub fn acquired(base: Option<&Lease>, name: &str, namespace: &str, a: &Acquisition) -> Lease {
    let mut lease = base.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let ann = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(TERM_ANNOTATION.into(), a.term.to_string());
    ann.insert(
        LEASE_DURATION_ANNOTATION.into(),
        a.lease_duration_ms.to_string(),
    );
    set_or_remove(ann, HOLDER_POD_ANNOTATION, a.holder.pod.as_deref());
    set_or_remove(ann, HOLDER_POD_UID_ANNOTATION, a.holder.pod_uid.as_deref());
    set_or_remove(
        ann,
        HOLDER_CONTAINER_ANNOTATION,
        a.holder.container.as_deref(),
    );
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(a.holder.identity.clone());
    spec.acquire_time = Some(MicroTime(a.now));
    spec.renew_time = Some(MicroTime(a.now));
    spec.lease_duration_seconds = Some(whole_seconds(a.lease_duration_ms));
    // Other tools read leaseTransitions as the acquisition count: keep it equal to the term.
    spec.lease_transitions = Some(i32::try_from(a.term.get()).unwrap_or(i32::MAX));
    lease
}

/// The observed Lease with a fresh renew time (CAS on its resourceVersion).
pub fn renewed(base: &Lease, lease_duration_ms: u64, now: jiff::Timestamp) -> Lease {
    let mut lease = base.clone();
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            LEASE_DURATION_ANNOTATION.into(),
            lease_duration_ms.to_string(),
        );
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(whole_seconds(lease_duration_ms));
    lease
}

/// Fill in the holder's pod UID and container if they were unknown at acquisition time (the
/// pod cache was not synced yet), so standbys get the precise death signals from now on.
pub fn complete_holder(lease: &mut Lease, pod_uid: Option<&str>, container: Option<&str>) {
    let ann = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (HOLDER_POD_UID_ANNOTATION, pod_uid),
        (HOLDER_CONTAINER_ANNOTATION, container),
    ] {
        if let Some(v) = value {
            ann.entry(key.to_owned()).or_insert_with(|| v.to_owned());
        }
    }
}

/// The observed Lease with the holder cleared, term kept (CAS on its resourceVersion).
pub fn released(base: &Lease) -> Lease {
    let mut lease = base.clone();
    if let Some(ann) = lease.metadata.annotations.as_mut() {
        for k in [
            HOLDER_POD_ANNOTATION,
            HOLDER_POD_UID_ANNOTATION,
            HOLDER_CONTAINER_ANNOTATION,
        ] {
            ann.remove(k);
        }
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.acquire_time = None;
    }
    lease
}

fn set_or_remove(ann: &mut BTreeMap<String, String>, key: &str, value: Option<&str>) {
    match value {
        Some(v) => ann.insert(key.to_owned(), v.to_owned()),
        None => ann.remove(key),
    };
}

/// `leaseDurationSeconds` for readers that only know seconds: rounded up, at least 1, so such
/// a reader never expires the lease earlier than we do.
fn whole_seconds(ms: u64) -> i32 {
    i32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> HolderRecord {
        HolderRecord {
            identity: "icr-a_00ff".into(),
            pod: Some("icr-a".into()),
            pod_uid: Some("uid-a".into()),
            container: Some("controller".into()),
        }
    }

    #[test]
    fn acquire_renew_release_round_trip() {
        let now: jiff::Timestamp = "2026-11-22T04:00:00.123456Z".parse().expect("ts");
        let a = Acquisition {
            holder: &holder(),
            term: Term::new(7),
            lease_duration_ms: 2500,
            now,
        };
        let lease = acquired(None, "hapod-controller", "ns", &a);
        let spec = lease.spec.as_ref().expect("spec");
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_eq!(spec.lease_transitions, Some(7));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        let parsed = ParsedLease::from_lease(&lease);
        assert_eq!(parsed.holder, Some(holder()));
        assert_eq!(parsed.term, Term::new(7));
        assert_eq!(parsed.lease_duration_ms, Some(2500));

        let later = now + jiff::SignedDuration::from_millis(500);
        let r = renewed(&lease, 2500, later);
        assert_eq!(
            r.spec.as_ref().and_then(|s| s.renew_time.clone()),
            Some(MicroTime(later))
        );
        assert_eq!(ParsedLease::from_lease(&r), parsed);

        let mut partial = acquired(
            None,
            "l",
            "ns",
            &Acquisition {
                holder: &HolderRecord {
                    pod_uid: None,
                    container: None,
                    ..holder()
                },
                ..a
            },
        );
        complete_holder(&mut partial, Some("uid-a"), Some("controller"));
        assert_eq!(ParsedLease::from_lease(&partial).holder, Some(holder()));

        let rel = ParsedLease::from_lease(&released(&r));
        assert_eq!(rel.holder, None);
        assert_eq!(rel.term, Term::new(7));
    }

    #[test]
    fn tolerates_foreign_and_garbage_leases() {
        let lease = Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    TERM_ANNOTATION.to_owned(),
                    "not-a-number".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }),
        };
        let p = ParsedLease::from_lease(&lease);
        assert_eq!(p.holder, None);
        assert_eq!(p.term, Term::new(4));
        assert_eq!(p.lease_duration_ms, Some(15_000));
        let empty = ParsedLease::from_lease(&Lease::default());
        assert_eq!(empty.term, Term::new(0));
        assert_eq!(empty.view(3000, 9).lease_duration_ms, 3000);
    }
}
