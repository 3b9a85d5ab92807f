//! The chart and kustomize must install the same thing.

use serde_json::Value;

use super::invariants::ALLOW_DEMO_KEY;
use super::problems::Problems;
use super::render::{Render, object_id, str_at};

/// The chart and kustomize must install the same thing.
pub(crate) fn parity(p: &mut Problems, kz: &Render, hm: &Render) {
    let (a, b) = (kz.ids(), hm.ids());
    let only_kz: Vec<_> = a.difference(&b).collect();
    let only_hm: Vec<_> = b.difference(&a).collect();
    p.expect(only_kz.is_empty() && only_hm.is_empty(), || {
        format!(
            "{} vs {}: objects differ; only in kustomize: {only_kz:?}; only in helm: {only_hm:?}",
            kz.label, hm.label
        )
    });
    for o in &kz.objects {
        let id = object_id(o);
        let Some(h) = hm.objects.iter().find(|h| object_id(h) == id) else {
            continue;
        };
        let what = format!("{} vs {}: {id}", kz.label, hm.label);
        for ptr in [
            "/rules",
            "/roleRef",
            "/subjects",
            "/spec/replicas",
            "/spec/selector",
            "/spec/ports",
            "/spec/minAvailable",
            "/spec/strategy",
            "/spec/minReadySeconds",
            "/spec/template/metadata/labels/app",
            "/spec/template/metadata/labels/role",
            "/spec/template/spec/serviceAccountName",
            "/spec/template/spec/automountServiceAccountToken",
            "/spec/template/spec/terminationGracePeriodSeconds",
            "/spec/template/spec/securityContext",
            "/spec/template/spec/affinity",
            "/metadata/labels/pod-security.kubernetes.io~1enforce",
            "/spec/podSelector",
            "/spec/policyTypes",
            "/spec/ingress",
        ] {
            p.expect_same(&format!("{what} {ptr}"), h.pointer(ptr), o.pointer(ptr));
        }
        let containers = |x: &Value| -> Vec<Value> {
            x.pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut c = c.clone();
                    // The chart passes every flag explicitly, kustomize only non-defaults.
                    if str_at(&c, "/name") == "controller" {
                        c.as_object_mut().map(|m| m.remove("args"));
                    }
                    // Mounts are a set; kustomize patches may reorder them.
                    sort_by_key(c.get_mut("volumeMounts"), "mountPath");
                    // Only kustomize ships the placeholder key, and so allows it.
                    if let Some(Value::Array(env)) = c.get_mut("env") {
                        env.retain(|e| str_at(e, "/name") != ALLOW_DEMO_KEY);
                    }
                    c
                })
                .collect()
        };
        let (hv, kv) = (volumes(h), volumes(o));
        p.expect_same(&format!("{what} volumes"), hv.as_ref(), kv.as_ref());
        let (hc, kc) = (Value::Array(containers(h)), Value::Array(containers(o)));
        p.expect_same(&format!("{what} containers"), Some(&hc), Some(&kc));
    }
}

/// The pod template's volumes, ordered by name (a set; kustomize patches may reorder it).
fn volumes(o: &Value) -> Option<Value> {
    let mut v = o.pointer("/spec/template/spec/volumes").cloned();
    sort_by_key(v.as_mut(), "name");
    v
}

fn sort_by_key(list: Option<&mut Value>, key: &str) {
    if let Some(Value::Array(items)) = list {
        items.sort_by(|a, b| a[key].to_string().cmp(&b[key].to_string()));
    }
}
