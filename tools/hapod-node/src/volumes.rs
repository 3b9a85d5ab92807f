//! Volumes materialized as host folders of the pod (Secret, ConfigMap, downward API, projected
//! ServiceAccount token, emptyDir, hostPath), then bind-mounted into each container.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::expand::{EnvContext, EnvError, field_value, resource_value};
use crate::path_error::{AtPath, PathError};

/// Why a pod's volumes (or the Secrets and ConfigMaps its environment refers to) cannot be
/// materialized.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("get {kind} {namespace}/{name}: {error}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        error: Box<kube::Error>,
    },
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} \"{name}\" has no key {key}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("TokenRequest for ServiceAccount {namespace}/{service_account}: {error}")]
    TokenRequest {
        namespace: String,
        service_account: String,
        error: Box<kube::Error>,
    },
    #[error(
        "TokenRequest for ServiceAccount {namespace}/{service_account}: no token in the answer"
    )]
    NoToken {
        namespace: String,
        service_account: String,
    },
    #[error("volume {0}: unsupported projected source")]
    UnsupportedProjectedSource(String),
    #[error("volume {0}: unsupported volume type")]
    UnsupportedType(String),
    #[error("downward API item {item}: no container {container}")]
    NoSuchContainer { item: String, container: String },
    #[error("downward API item {0}: no source")]
    NoDownwardSource(String),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("unsafe path {0:?} in volume")]
    UnsafePath(String),
    #[error("hostPath {0}")]
    HostPath(PathError),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// What volumes need from the node besides the pod.
pub struct VolumeContext<'a> {
    pub client: &'a Client,
    pub env: &'a EnvContext,
    /// The API server's CA (PEM), used for `kube-root-ca.crt` when the ConfigMap is not
    /// published (yet) in the pod's namespace.
    pub ca_pem: Option<&'a str>,
}

type Files = Vec<(String, Vec<u8>, Option<i32>)>;

/// Names a failed read of a Secret or ConfigMap.
fn get_failed(
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> VolumeError {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |error| VolumeError::Get {
        kind,
        namespace,
        name,
        error: Box::new(error),
    }
}

/// An object's data as strings (for env vars); bytes that are not UTF-8 are replaced.
fn as_strings(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Reads a Secret's data as strings (for env vars).
pub async fn secret_strings(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
    Ok(secret_bytes(client, namespace, name).await?.map(as_strings))
}

async fn secret_bytes(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(get_failed("Secret", namespace, name))?;
    Ok(secret.map(|s| {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        data
    }))
}

pub async fn config_map_strings(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, VolumeError> {
    Ok(config_map_bytes(client, namespace, name, None)
        .await?
        .map(as_strings))
}

async fn config_map_bytes(
    client: &Client,
    namespace: &str,
    name: &str,
    ca_pem: Option<&str>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(get_failed("ConfigMap", namespace, name))?;
    Ok(match config_map {
        Some(config_map) => {
            let mut data: BTreeMap<String, Vec<u8>> = config_map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in config_map.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            Some(data)
        }
        // The root CA publisher of kube-controller-manager may not have run yet; the node
        // knows the same CA from its own kubeconfig.
        None if name == "kube-root-ca.crt" => {
            ca_pem.map(|pem| [("ca.crt".to_string(), pem.as_bytes().to_vec())].into())
        }
        None => None,
    })
}

fn select(
    kind: &'static str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
) -> Result<Files, VolumeError> {
    let Some(data) = data else {
        return if optional == Some(true) {
            Ok(Vec::new())
        } else {
            Err(VolumeError::NotFound {
                kind,
                name: name.to_string(),
            })
        };
    };
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, None)).collect()),
        Some(items) => items
            .iter()
            .filter_map(|item| match data.get(&item.key) {
                Some(v) => Some(Ok((item.path.clone(), v.clone(), item.mode))),
                None if optional == Some(true) => None,
                None => Some(Err(VolumeError::MissingKey {
                    kind,
                    name: name.to_string(),
                    key: item.key.clone(),
                })),
            })
            .collect(),
    }
}

async fn service_account_token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<Vec<u8>, VolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).or(Some(Vec::new())),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .map_err(|error| VolumeError::TokenRequest {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            error: Box::new(error),
        })?;
    response
        .status
        .and_then(|s| s.token)
        .map(String::into_bytes)
        .ok_or_else(|| VolumeError::NoToken {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
}

async fn volume_files(
    context: &VolumeContext<'_>,
    pod: &Pod,
    volume: &Volume,
) -> Result<(Files, Option<i32>), VolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let client = context.client;
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret_bytes(client, namespace, &name).await?;
        return Ok((
            select("Secret", &name, data, s.items.as_ref(), s.optional)?,
            s.default_mode,
        ));
    }
    if let Some(c) = &volume.config_map {
        let data = config_map_bytes(client, namespace, &c.name, context.ca_pem).await?;
        return Ok((
            select("ConfigMap", &c.name, data, c.items.as_ref(), c.optional)?,
            c.default_mode,
        ));
    }
    if let Some(d) = &volume.downward_api {
        let files = downward_files(pod, context.env, d.items.as_deref())?;
        return Ok((files, d.default_mode));
    }
    if let Some(p) = &volume.projected {
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let token =
                    service_account_token(client, pod, t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                files.push((t.path.clone(), token, None));
            } else if let Some(c) = &source.config_map {
                let data = config_map_bytes(client, namespace, &c.name, context.ca_pem).await?;
                files.extend(select(
                    "ConfigMap",
                    &c.name,
                    data,
                    c.items.as_ref(),
                    c.optional,
                )?);
            } else if let Some(s) = &source.secret {
                let data = secret_bytes(client, namespace, &s.name).await?;
                files.extend(select(
                    "Secret",
                    &s.name,
                    data,
                    s.items.as_ref(),
                    s.optional,
                )?);
            } else if let Some(d) = &source.downward_api {
                files.extend(downward_files(pod, context.env, d.items.as_deref())?);
            } else {
                return Err(VolumeError::UnsupportedProjectedSource(volume.name.clone()));
            }
        }
        return Ok((files, p.default_mode));
    }
    Err(VolumeError::UnsupportedType(volume.name.clone()))
}

/// The files of a downward API volume or projection.
fn downward_files(
    pod: &Pod,
    env: &EnvContext,
    items: Option<&[DownwardAPIVolumeFile]>,
) -> Result<Files, VolumeError> {
    items
        .into_iter()
        .flatten()
        .map(|item| Ok((item.path.clone(), downward_item(pod, env, item)?, item.mode)))
        .collect()
}

fn downward_item(
    pod: &Pod,
    env: &EnvContext,
    item: &DownwardAPIVolumeFile,
) -> Result<Vec<u8>, VolumeError> {
    if let Some(f) = &item.field_ref {
        return Ok(field_value(pod, f, env)?.into_bytes());
    }
    if let Some(r) = &item.resource_field_ref {
        let name = r.container_name.as_deref().unwrap_or_default();
        let container = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == name)
            .ok_or_else(|| VolumeError::NoSuchContainer {
                item: item.path.clone(),
                container: name.to_string(),
            })?;
        return Ok(resource_value(container, r, env)?.into_bytes());
    }
    Err(VolumeError::NoDownwardSource(item.path.clone()))
}

/// A relative path that stays inside its folder (the API validates this too; the node does not
/// trust it to).
fn safe_relative(p: &str) -> Result<&Path, VolumeError> {
    let path = Path::new(p);
    if path.components().all(|c| matches!(c, Component::Normal(_))) && !p.is_empty() {
        Ok(path)
    } else {
        Err(VolumeError::UnsafePath(p.to_string()))
    }
}

/// Writes the files of a volume, each atomically (write then rename) so that a refresh never
/// shows a half-written token.
fn write_files(dir: &Path, files: &Files, default_mode: Option<i32>) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).at(dir)?;
    for (rel, data, mode) in files {
        let path = dir.join(safe_relative(rel)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        let tmp = path.with_extension("hapod-node-tmp");
        std::fs::write(&tmp, data).at(&tmp)?;
        let mode = mode.or(default_mode).unwrap_or(0o644) as u32 & 0o7777;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
    }
    Ok(())
}

/// Materializes every volume of the pod below `dir`; returns the host path of each volume.
pub async fn materialize(
    context: &VolumeContext<'_>,
    pod: &Pod,
    dir: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let mut paths = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let host = dir.join(safe_relative(&volume.name)?);
        if let Some(h) = &volume.host_path {
            let p = PathBuf::from(&h.path);
            if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&p)
                    .at(&p)
                    .map_err(VolumeError::HostPath)?;
            }
            paths.insert(volume.name.clone(), p);
            continue;
        }
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&host).at(&host)?;
            std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).at(&host)?;
            paths.insert(volume.name.clone(), host);
            continue;
        }
        let (files, default_mode) = volume_files(context, pod, volume).await?;
        write_files(&host, &files, default_mode)?;
        paths.insert(volume.name.clone(), host);
    }
    Ok(paths)
}

/// Whether a volume holds a ServiceAccount token that expires and must be refreshed.
pub fn has_token(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .any(|s| s.service_account_token.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        assert!(safe_relative("token").is_ok());
        assert!(safe_relative("a/b").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn items_select_keys_and_modes() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let all = select("Secret", "s", Some(data.clone()), None, None).unwrap();
        assert_eq!(all.len(), 2);
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o600),
        }];
        let some = select("Secret", "s", Some(data), Some(&items), None).unwrap();
        assert_eq!(
            some,
            vec![("sub/b.txt".to_string(), b"2".to_vec(), Some(0o600))]
        );
        assert!(
            select("Secret", "s", None, None, None)
                .unwrap_err()
                .to_string()
                .contains("not found")
        );
        assert!(
            select("Secret", "s", None, None, Some(true))
                .unwrap()
                .is_empty()
        );

        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &some, Some(0o644)).unwrap();
        let meta = std::fs::metadata(dir.path().join("sub/b.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
