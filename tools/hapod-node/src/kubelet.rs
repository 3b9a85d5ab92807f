//! The node's kubelet endpoint (HTTPS on loopback, the port in the Node's daemonEndpoints), so
//! that `kubectl logs` works through the API server and `kubectl exec`/`attach`/`port-forward`
//! fail with a clear message instead of a connection error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const UNSUPPORTED: &str = "hapod-node runs pods as local processes and does not implement exec, \
attach, port-forward or run. To put a file into a container's /tmp, write it into the host \
folder named by the pod's annotation node.hapod.io/tmp-<container>.\n";

/// Why the kubelet endpoint cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubelet endpoint certificate: {0}")]
    Certificate(rcgen::Error),
    #[error("kubelet endpoint TLS setup: {0}")]
    Tls(rustls::Error),
    #[error("bind 127.0.0.1:{port} for the kubelet endpoint: {error}")]
    Bind { port: u16, error: std::io::Error },
    #[error("kubelet endpoint accept: {0}")]
    Accept(std::io::Error),
}

/// What a request to the kubelet endpoint gets: status code and body.
pub fn respond(state_dir: &Path, target: &str) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => (200, "ok".into()),
        ["containerLogs", namespace, pod, container] => {
            match log_file(state_dir, namespace, pod, container) {
                Some(file) => match std::fs::read(&file) {
                    Ok(bytes) => (200, tail(&String::from_utf8_lossy(&bytes), query)),
                    Err(e) => (500, format!("{}: {e}\n", file.display())),
                },
                None => (
                    404,
                    format!(
                        "no logs of container {container} of pod {namespace}/{pod} on this node\n"
                    ),
                ),
            }
        }
        ["exec" | "attach" | "portForward" | "run", ..] => (501, UNSUPPORTED.into()),
        _ => (404, format!("{path}: not served by hapod-node\n")),
    }
}

/// `tailLines=N` keeps the last N lines.
fn tail(text: &str, query: &str) -> String {
    let lines = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("tailLines="))
        .and_then(|n| n.parse::<usize>().ok());
    match lines {
        Some(n) => {
            let all: Vec<&str> = text.lines().collect();
            let mut out = all[all.len().saturating_sub(n)..].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
        None => text.to_string(),
    }
}

/// Log folders are `logs/<namespace>_<name>_<uid>`; namespaces and names never contain
/// `_`. They outlast their pods: of several pods of one name, the one that logged last.
fn log_file(state_dir: &Path, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{pod}_");
    std::fs::read_dir(state_dir.join("logs"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(format!("{container}.log")))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

/// Serves on 127.0.0.1:`port` with a self-signed certificate (the API server does not verify
/// kubelet certificates unless told to) until `stop` fires.
pub async fn serve(
    port: u16,
    state_dir: PathBuf,
    stop: CancellationToken,
) -> Result<(), KubeletError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(KubeletError::Certificate)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(KubeletError::Tls)?
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
    .map_err(KubeletError::Tls)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|error| KubeletError::Bind { port, error })?;
    tracing::info!(
        port,
        "kubelet endpoint (logs; exec reported as unsupported) listening"
    );
    let state_dir = Arc::new(state_dir);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted.map_err(KubeletError::Accept)?,
        };
        let acceptor = acceptor.clone();
        let state_dir = state_dir.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = respond(&state_dir, target);
            tracing::debug!(target, code, "kubelet endpoint request");
            let answer = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                reason(code),
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_exec_and_unknown_paths() {
        let dir = tempfile::tempdir().unwrap();
        // An older pod of the same name, gone: its logs are kept, the newer pod's are served.
        let gone = dir.path().join("logs/ns1_web_old");
        std::fs::create_dir_all(&gone).unwrap();
        std::fs::write(gone.join("main.log"), "old\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let logs = dir.path().join("logs/ns1_web_abc");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("main.log"), "a\nb\nc\n").unwrap();
        assert_eq!(
            respond(dir.path(), "/containerLogs/ns1/web/main"),
            (200, "a\nb\nc\n".into())
        );
        assert_eq!(
            respond(
                dir.path(),
                "/containerLogs/ns1/web/main?follow=true&tailLines=2"
            ),
            (200, "b\nc\n".into())
        );
        assert_eq!(respond(dir.path(), "/containerLogs/ns1/web/other").0, 404);
        assert_eq!(respond(dir.path(), "/containerLogs/ns1/we/main").0, 404);
        let (code, body) = respond(dir.path(), "/exec/ns1/web/main?command=sh");
        assert_eq!(code, 501);
        assert!(body.contains("node.hapod.io/tmp-"));
        assert_eq!(respond(dir.path(), "/healthz").0, 200);
        assert_eq!(respond(dir.path(), "/pods").0, 404);
    }
}
