//! Talking HTTP to pods with the kit's client ([`crate::http`]): a bounded GET that refuses
//! any address outside loopback and the private network namespace's pod range, the demo app's
//! `/state`, and the controller's and the demo app's `/metrics`.

use std::time::Duration;

use super::Testbed;
use super::names::{APP_HTTP_PORT, CONTROLLER_HTTP_PORT};
use super::pods::pod_ip;
use crate::http::{Client, url};
use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

pub use crate::http::allowed_address;

impl Testbed {
    /// The demo app's `/state` (its last applied notification).
    pub async fn app_state(&self, pod: &Pod) -> Result<AppState> {
        let body = get_ok(pod, APP_HTTP_PORT, "/state").await?;
        serde_json::from_str(&body).with_context(|| format!("parsing /state: {body}"))
    }

    /// Scrapes a controller replica's `/metrics` (pod IP, port 8080) and returns the sum of
    /// the samples of `metric` whose labels include every `labels` pair.
    pub async fn controller_metric(
        &self,
        pod: &Pod,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Result<f64> {
        pod_metric(pod, CONTROLLER_HTTP_PORT, metric, labels).await
    }

    /// The same from the demo app's `/metrics` (its agent's metrics).
    pub async fn app_metric(
        &self,
        pod: &Pod,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Result<f64> {
        pod_metric(pod, APP_HTTP_PORT, metric, labels).await
    }
}

async fn pod_metric(pod: &Pod, port: u16, metric: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let body = get_ok(pod, port, "/metrics").await?;
    Ok(crate::prom::sum(&body, metric, labels))
}

/// The body of `GET path` on the pod's IP; fails unless it answers 200 within 2 s.
async fn get_ok(pod: &Pod, port: u16, path: &str) -> Result<String> {
    let name = pod.name_any();
    let ip = pod_ip(pod).ok_or_else(|| anyhow!("pod {name} has no IP"))?;
    let (status, body) = http_get(&ip, port, path, Duration::from_secs(2)).await?;
    ensure!(
        status == 200,
        "GET {path} on pod {name} answered {status}: {body}"
    );
    Ok(body)
}

/// A bounded HTTP/1.1 GET (the kit's [`Client`]) to a pod or loopback address (see
/// [`allowed_address`]); returns status and body.
pub async fn http_get(ip: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let ip = ip.parse().with_context(|| format!("bad IP {ip}"))?;
    let response = Client::new(timeout)
        .get(&url("http", ip, port, path))
        .await?;
    Ok((response.status, response.body))
}

/// The demo app's `/state`: its last applied notification (a field it leaves out is `None`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AppState {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub group: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub applied_at_unix_nanos: Option<u64>,
    pub sent_at_unix_nanos: Option<u64>,
    pub message_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_get_refuses_non_loopback() {
        let err = http_get("10.0.0.1", 80, "/", Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("network rule"), "{err:#}");
    }
}
