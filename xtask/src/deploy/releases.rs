//! What a Helm release must leave alone: another release installed next to it, and its own
//! workloads' selectors when the user changes values on upgrade.

use std::collections::BTreeSet;

use serde_json::Value;

use super::problems::Problems;
use super::render::{Render, object_id, str_at};

/// Two releases (other names, namespaces and Leases) install side by side: no object of one
/// has the kind, namespace and name of an object of the other (cluster-scoped ones
/// included), and every binding of each refers to a role and ServiceAccounts of its own.
pub(crate) fn side_by_side(p: &mut Problems, [a, b]: &[Render; 2]) {
    let shared: Vec<String> = a.ids().intersection(&b.ids()).cloned().collect();
    p.expect(shared.is_empty(), || {
        format!(
            "{} and {} would collide: both render {shared:?}",
            a.label, b.label
        )
    });
    for r in [a, b] {
        own_bindings(p, r);
    }
}

/// Every RoleBinding and ClusterRoleBinding of `r` binds a role `r` renders, to
/// ServiceAccounts of the namespace `r`'s controller runs in.
fn own_bindings(p: &mut Problems, r: &Render) {
    let ids = r.ids();
    let release_ns = r
        .objects
        .iter()
        .find(|o| str_at(o, "/kind") == "Deployment" && o.pointer("/spec/template").is_some())
        .map_or("", |d| str_at(d, "/metadata/namespace"));
    for binding in r
        .objects
        .iter()
        .filter(|o| matches!(str_at(o, "/kind"), "RoleBinding" | "ClusterRoleBinding"))
    {
        let id = object_id(binding);
        let role_kind = str_at(binding, "/roleRef/kind");
        let role_ns = match role_kind {
            "Role" => str_at(binding, "/metadata/namespace"),
            _ => "",
        };
        let role = format!("{role_kind}/{role_ns}/{}", str_at(binding, "/roleRef/name"));
        p.expect(ids.contains(&role), || {
            format!(
                "{}: {id} refers to {role}, not a role of this release",
                r.label
            )
        });
        for subject in binding
            .pointer("/subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ns = str_at(subject, "/namespace");
            p.expect(
                str_at(subject, "/kind") != "ServiceAccount" || ns == release_ns,
                || {
                    format!(
                        "{}: {id} binds ServiceAccount {ns}/{}, not one of this release's \
                         namespace {release_ns}",
                        r.label,
                        str_at(subject, "/name")
                    )
                },
            );
        }
    }
}

/// Changing the labels and names a user may change on upgrade (`renamed`) leaves every
/// workload's and disruption budget's selector as in `before` (a selector cannot change:
/// the upgrade would fail), while the pods still carry the changed labels.
pub(crate) fn selectors_fixed(p: &mut Problems, before: &Render, renamed: &Render) {
    let selecting = |r: &Render| -> Vec<(String, Value)> {
        r.objects
            .iter()
            .filter(|o| {
                o.pointer("/spec/template").is_some() || str_at(o, "/kind") == "PodDisruptionBudget"
            })
            .map(|o| (kind_namespace(o), o.clone()))
            .collect()
    };
    let (old, new) = (selecting(before), selecting(renamed));
    let kinds = |v: &[(String, Value)]| v.iter().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>();
    p.expect_eq(
        &format!(
            "{} vs {}: workloads (kind/namespace)",
            before.label, renamed.label
        ),
        kinds(&new),
        kinds(&old),
    );
    for (key, was) in &old {
        let Some((_, now)) = new.iter().find(|(k, _)| k == key) else {
            continue;
        };
        p.expect_same(
            &format!(
                "{}: {key} selector after a change of labels and names",
                renamed.label
            ),
            now.pointer("/spec/selector"),
            was.pointer("/spec/selector"),
        );
        let (Some(Value::Object(selector)), Some(Value::Object(labels))) = (
            now.pointer("/spec/selector/matchLabels"),
            now.pointer("/spec/template/metadata/labels"),
        ) else {
            continue;
        };
        p.expect(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            || {
                format!(
                    "{}: {key}: the selector does not select its own pods",
                    renamed.label
                )
            },
        );
        p.expect(labels.get("tier").is_some(), || {
            format!(
                "{}: {key}: the pods lost the changed podLabels",
                renamed.label
            )
        });
    }
}

fn kind_namespace(o: &Value) -> String {
    format!(
        "{}/{}",
        str_at(o, "/kind"),
        str_at(o, "/metadata/namespace")
    )
}
