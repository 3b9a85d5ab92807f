//! Talking HTTP to pods: a bounded GET that refuses any address outside loopback and the
//! private network namespace's pod range, the demo app's `/state`, and the controller's
//! `/metrics`.

use std::net::IpAddr;
use std::time::Duration;

use super::Testbed;
use super::names::{APP_HTTP_PORT, CONTROLLER_HTTP_PORT};
use super::pods::pod_ip;
use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Testbed {
    /// The demo app's `/state` (its last applied notification).
    pub async fn app_state(&self, pod: &Pod) -> Result<AppState> {
        let ip = pod_ip(pod).ok_or_else(|| anyhow!("pod {} has no IP", pod.name_any()))?;
        let (status, body) = http_get(&ip, APP_HTTP_PORT, "/state", Duration::from_secs(2))
            .await
            .with_context(|| format!("GET http://{ip}:{APP_HTTP_PORT}/state"))?;
        ensure!(
            status == 200,
            "GET /state on {} answered {status}: {body}",
            pod.name_any()
        );
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
        let ip = pod_ip(pod).ok_or_else(|| anyhow!("pod {} has no IP", pod.name_any()))?;
        let (status, body) = http_get(
            &ip,
            CONTROLLER_HTTP_PORT,
            "/metrics",
            Duration::from_secs(2),
        )
        .await
        .with_context(|| format!("GET http://{ip}:{CONTROLLER_HTTP_PORT}/metrics"))?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(crate::prom::sum(&body, metric, labels))
    }
}

/// The demo app's `/state`: its last applied notification.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AppState {
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub applied_at_unix_nanos: Option<u64>,
    #[serde(default)]
    pub sent_at_unix_nanos: Option<u64>,
    #[serde(default)]
    pub message_id: Option<u64>,
}

/// Whether the testbed may send a packet to `addr`: a loopback address, or (inside the
/// testbed's private network namespace, whose only interface is `lo`) a pod IP of
/// [`crate::netns::POD_CIDR`].
pub fn allowed_address(addr: IpAddr) -> bool {
    addr.is_loopback()
        || (crate::netns::inside()
            && matches!(addr, IpAddr::V4(v4) if v4.octets()[0] == 10 && v4.octets()[1] == 244))
}

/// A bounded HTTP/1.1 GET to a pod or loopback address (see [`allowed_address`]); returns
/// status and body.
pub async fn http_get(ip: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr: IpAddr = ip.parse().with_context(|| format!("bad IP {ip}"))?;
    ensure!(
        allowed_address(addr),
        "network rule: refusing to connect to {addr} (neither loopback nor a pod IP inside \
         the testbed's private network namespace)"
    );
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((addr, port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("timeout after {timeout:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: {text}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_decodes() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }

    #[test]
    fn http_get_refuses_non_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(http_get("10.0.0.1", 80, "/", Duration::from_millis(10)))
            .unwrap_err();
        assert!(err.to_string().contains("network rule"));
    }
}
