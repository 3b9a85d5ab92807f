//! Pure parts of a container's environment: `$(VAR)` expansion with Kubernetes' rules, the
//! downward API, `resourceFieldRef` quantities and references to Secrets and ConfigMaps (fetched
//! beforehand by the caller, so that everything here is testable without an API server).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, ObjectFieldSelector, Pod, ResourceFieldSelector,
};

/// Expands `$(NAME)` references the way the kubelet does (its vendored `expansion` package):
/// `$$` is an escaped `$`, a reference to an unknown name stays as written, and a `$` that does
/// not start a reference is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // Keep `$` and the following character (which may be multi-byte).
                    let ch = rest.chars().next().unwrap_or_default();
                    out.push('$');
                    out.push(ch);
                    ch.len_utf8()
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// Why a container's environment (or a downward API value) cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} \"{name}\" not found")]
    ObjectNotFound { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {name}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("env {0}: unsupported valueFrom source")]
    UnsupportedValueFrom(String),
    #[error("unsupported fieldRef path {0}")]
    UnsupportedFieldPath(String),
    #[error("unsupported resourceFieldRef {0}")]
    UnsupportedResource(String),
    #[error("bad quantity {0}")]
    BadQuantity(String),
    #[error("bad divisor {0}")]
    BadDivisor(String),
    #[error("divisor must be positive")]
    NonPositiveDivisor,
}

/// What the environment of a container depends on besides the pod itself.
#[derive(Debug, Clone, Default)]
pub struct EnvContext {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    /// `KUBERNETES_SERVICE_HOST` and friends, pointing at the real API server's loopback address.
    pub service_env: Vec<(String, String)>,
    /// Node allocatable, used by `resourceFieldRef` when the container sets no limit.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

/// Secrets and ConfigMaps of the pod's namespace, fetched before the environment is built;
/// `None` means the object does not exist.
#[derive(Debug, Clone, Default)]
pub struct ReferencedData {
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// Names of the Secrets and ConfigMaps that a container's env and envFrom refer to.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    for from in container.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            secrets.push(s.name.clone());
        }
        if let Some(c) = &from.config_map_ref {
            config_maps.push(c.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(source) = &var.value_from else {
            continue;
        };
        if let Some(s) = &source.secret_key_ref {
            secrets.push(s.name.clone());
        }
        if let Some(c) = &source.config_map_key_ref {
            config_maps.push(c.name.clone());
        }
    }
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    (secrets, config_maps)
}

/// Builds a container's environment in the kubelet's order: envFrom, then env (each value
/// expanded against what came before and the service variables), then the service variables
/// that the pod did not define itself.
pub fn build_env(
    pod: &Pod,
    container: &Container,
    context: &EnvContext,
    references: &ReferencedData,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        if let Some(slot) = env.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            env.push((key, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(s) = &from.secret_ref {
            (
                "Secret",
                &s.name,
                s.optional,
                references.secrets.get(&s.name),
            )
        } else if let Some(c) = &from.config_map_ref {
            (
                "ConfigMap",
                &c.name,
                c.optional,
                references.config_maps.get(&c.name),
            )
        } else {
            continue;
        };
        match data.and_then(Option::as_ref) {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(EnvError::ObjectNotFound {
                    kind,
                    name: name.clone(),
                });
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(pod, container, var, context, references, &env)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    for (k, v) in &context.service_env {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.clone(), v.clone()));
        }
    }
    Ok(env)
}

fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    context: &EnvContext,
    references: &ReferencedData,
    so_far: &[(String, String)],
) -> Result<Option<String>, EnvError> {
    let Some(source) = &var.value_from else {
        let raw = var.value.clone().unwrap_or_default();
        let lookup = |name: &str| {
            so_far
                .iter()
                .chain(context.service_env.iter())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        return Ok(Some(expand(&raw, lookup)));
    };
    if let Some(field) = &source.field_ref {
        return field_value(pod, field, context).map(Some);
    }
    if let Some(resource) = &source.resource_field_ref {
        return resource_value(container, resource, context).map(Some);
    }
    if let Some(selector) = &source.secret_key_ref {
        return key_value(
            "Secret",
            &references.secrets,
            &selector.name,
            &selector.key,
            selector.optional,
        );
    }
    if let Some(selector) = &source.config_map_key_ref {
        return key_value(
            "ConfigMap",
            &references.config_maps,
            &selector.name,
            &selector.key,
            selector.optional,
        );
    }
    Err(EnvError::UnsupportedValueFrom(var.name.clone()))
}

fn key_value(
    kind: &'static str,
    objects: &HashMap<String, Option<BTreeMap<String, String>>>,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, EnvError> {
    let found = objects
        .get(name)
        .and_then(Option::as_ref)
        .and_then(|data| data.get(key));
    match found {
        Some(v) => Ok(Some(v.clone())),
        None if optional == Some(true) => Ok(None),
        None => Err(EnvError::MissingKey {
            kind,
            name: name.to_string(),
            key: key.to_string(),
        }),
    }
}

/// The downward API's `fieldRef` paths that the kubelet supports for env vars and volumes.
pub fn field_value(
    pod: &Pod,
    field: &ObjectFieldSelector,
    context: &EnvContext,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let path = field.field_path.as_str();
    let from_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => context.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => context.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => context.host_ip.clone(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => from_map(&meta.labels, "metadata.labels['")
            .or_else(|| from_map(&meta.annotations, "metadata.annotations['"))
            .ok_or_else(|| EnvError::UnsupportedFieldPath(path.to_string()))?,
    };
    Ok(value)
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `resourceFieldRef`: the container's limit (or request for `requests.*`), falling back to the
/// node's allocatable like the kubelet does for unset limits, divided by the divisor and
/// rounded up.
pub fn resource_value(
    container: &Container,
    selector: &ResourceFieldSelector,
    context: &EnvContext,
) -> Result<String, EnvError> {
    let resources = container.resources.as_ref();
    let (map, name) = match selector.resource.split_once('.') {
        Some(("limits", name)) => (resources.and_then(|r| r.limits.as_ref()), name),
        Some(("requests", name)) => (resources.and_then(|r| r.requests.as_ref()), name),
        _ => {
            return Err(EnvError::UnsupportedResource(selector.resource.clone()));
        }
    };
    let fallback = match name {
        "cpu" => context.node_cpu_millis as f64 / 1000.0,
        "memory" | "ephemeral-storage" => context.node_memory_bytes as f64,
        _ => {
            return Err(EnvError::UnsupportedResource(selector.resource.clone()));
        }
    };
    let value = match map.and_then(|m| m.get(name)) {
        Some(q) => parse_quantity(&q.0).ok_or_else(|| EnvError::BadQuantity(q.0.clone()))?,
        None if selector.resource.starts_with("requests.") && name == "cpu" => 0.0,
        None => fallback,
    };
    let divisor = match &selector.divisor {
        Some(d) => parse_quantity(&d.0).ok_or_else(|| EnvError::BadDivisor(d.0.clone()))?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(EnvError::NonPositiveDivisor);
    }
    // The kubelet reports at least 1 for a CPU limit so that a sub-core limit is never 0.
    let result = (value / divisor)
        .ceil()
        .max(if name == "cpu" { 1.0 } else { 0.0 });
    Ok(format!("{}", result as i64))
}

/// Parses a Kubernetes quantity (`500m`, `2`, `1Gi`, `1e3`, `64M`) into a plain number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let base: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(base * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvFromSource, EnvVarSource, PodSpec, ResourceRequirements,
        SecretEnvSource,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = map(&[("POD_IP", "127.10.0.5"), ("A", "x")]);
        let look = |n: &str| vars.get(n).cloned();
        assert_eq!(
            expand("--listen=$(POD_IP):8080", look),
            "--listen=127.10.0.5:8080"
        );
        assert_eq!(expand("$(A)$(A)", look), "xx");
        assert_eq!(expand("$$(A)", look), "$(A)");
        assert_eq!(expand("$(MISSING)", look), "$(MISSING)");
        assert_eq!(expand("$(A", look), "$(A");
        assert_eq!(expand("cost $5 and $", look), "cost $5 and $");
        assert_eq!(expand("é$é", look), "é$é");
        assert_eq!(expand("", look), "");
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn test_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("demo-1".into()),
                namespace: Some("apps".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "hapod".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("hapod-controller".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn context() -> EnvContext {
        EnvContext {
            pod_ip: "127.10.0.7".into(),
            host_ip: "127.0.0.1".into(),
            node_name: "node-a".into(),
            service_env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
                ("KUBERNETES_SERVICE_PORT".into(), "6443".into()),
            ],
            node_cpu_millis: 4000,
            node_memory_bytes: 8 << 30,
        }
    }

    #[test]
    fn downward_api_and_expansion_in_order() {
        let container = Container {
            name: "app".into(),
            env: Some(vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_UID", "metadata.uid"),
                field("POD_IP", "status.podIP"),
                field("HOST_IP", "status.hostIP"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("APP", "metadata.labels['app']"),
                plain("URL", "http://$(POD_IP):8080/$(LATER)"),
                plain(
                    "API",
                    "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)",
                ),
                plain("LATER", "late"),
            ]),
            ..Default::default()
        };
        let env = build_env(
            &test_pod(),
            &container,
            &context(),
            &ReferencedData::default(),
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("demo-1"));
        assert_eq!(get("POD_NAMESPACE"), Some("apps"));
        assert_eq!(get("POD_UID"), Some("u-1"));
        assert_eq!(get("POD_IP"), Some("127.10.0.7"));
        assert_eq!(get("HOST_IP"), Some("127.0.0.1"));
        assert_eq!(get("NODE"), Some("node-a"));
        assert_eq!(get("SA"), Some("hapod-controller"));
        assert_eq!(get("APP"), Some("hapod"));
        // A variable defined later is not visible to an earlier one, as in the kubelet.
        assert_eq!(get("URL"), Some("http://127.10.0.7:8080/$(LATER)"));
        assert_eq!(get("API"), Some("127.0.0.1:6443"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
    }

    #[test]
    fn secret_and_config_map_references() {
        let mut references = ReferencedData::default();
        references.secrets.insert(
            "notify".into(),
            Some([("key".to_string(), "s3cret".to_string())].into()),
        );
        references.config_maps.insert("missing".into(), None);
        let container = Container {
            name: "app".into(),
            env_from: Some(vec![EnvFromSource {
                prefix: Some("N_".into()),
                secret_ref: Some(SecretEnvSource {
                    name: "notify".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            env: Some(vec![EnvVar {
                name: "OPT".into(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "missing".into(),
                        key: "k".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let env = build_env(&test_pod(), &container, &context(), &references).unwrap();
        assert!(env.contains(&("N_key".into(), "s3cret".into())));
        assert!(!env.iter().any(|(k, _)| k == "OPT"));
        assert_eq!(
            referenced_objects(&container),
            (vec!["notify".into()], vec!["missing".into()])
        );

        let mut required = container.clone();
        if let Some(env) = required.env.as_mut()
            && let Some(src) = env[0].value_from.as_mut()
            && let Some(selector) = src.config_map_key_ref.as_mut()
        {
            selector.optional = None;
        }
        let err = build_env(&test_pod(), &required, &context(), &references)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("couldn't find key k in ConfigMap missing"),
            "{err}"
        );
    }

    #[test]
    fn resource_field_refs() {
        let container = Container {
            name: "app".into(),
            resources: Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let selector = |r: &str, d: Option<&str>| ResourceFieldSelector {
            resource: r.into(),
            divisor: d.map(|d| Quantity(d.into())),
            container_name: None,
        };
        let c = context();
        assert_eq!(
            resource_value(&container, &selector("limits.memory", Some("1Mi")), &c).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&container, &selector("requests.cpu", Some("1m")), &c).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&container, &selector("requests.cpu", None), &c).unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&container, &selector("limits.cpu", None), &c).unwrap(),
            "4"
        );
        assert!(resource_value(&container, &selector("limits.gpu", None), &c).is_err());
        assert_eq!(
            parse_quantity("1.5Gi"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("abc"), None);
    }
}
