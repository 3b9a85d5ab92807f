//! Container probes (exec, tcpSocket, httpGet) with the kubelet's thresholds; only ever against
//! loopback addresses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::command::resolve_program;
use crate::process::{ProcessSpec, Spawner, build_command, signal_group};

/// Why one probe attempt failed (logged at debug level; the verdict counts failures).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("dial tcp {address}: {error}")]
    Dial {
        address: SocketAddr,
        error: io::Error,
    },
    #[error("dial tcp {0}: timeout")]
    DialTimeout(SocketAddr),
    #[error("http probe: timeout")]
    HttpTimeout,
    #[error("HTTP GET to {address}: {error}")]
    Http {
        address: SocketAddr,
        error: hyper::Error,
    },
    #[error("probe path {path:?}: {error}")]
    BadPath { path: String, error: http::Error },
    #[error("probe header {name:?}: {error}")]
    BadHeader { name: String, error: http::Error },
    #[error("HTTP probe failed with statuscode: {0}")]
    HttpStatus(u16),
    #[error("grpc probes are not supported by hapod-node")]
    GrpcUnsupported,
    #[error("probe has no handler")]
    NoHandler,
    #[error("probe host {0} is not an IP address")]
    HostNotAnIp(String),
    #[error("probe host {0} is neither loopback nor the pod's IP; refused")]
    HostRefused(IpAddr),
    #[error("bad port {0}")]
    BadPort(i32),
    #[error("no container port named {0}")]
    NoNamedPort(String),
    #[error("exec probe without a command")]
    ExecWithoutCommand,
    #[error("exec probe: {0}")]
    ExecSetup(io::Error),
    #[error("exec probe {command}: {error}")]
    ExecIo { command: String, error: io::Error },
    #[error("exec probe {command}: {status}")]
    ExecFailed { command: String, status: ExitStatus },
    #[error("exec probe {command}: timed out after {timeout:?}")]
    ExecTimeout { command: String, timeout: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

/// What a probe runs against: the container's pod IP and, for exec probes, its process (whose
/// mount namespace the probe joins) and environment.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    pub container: Container,
    pub pid: u32,
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
    pub spawner: Spawner,
}

/// Timing of a probe, scaled for fast tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    /// Kubernetes defaults: period 10 s, timeout 1 s, thresholds 1 and 3; scale applies to
    /// initial delay and period (never below 50 ms, so a tiny scale does not spin).
    pub fn of(probe: &Probe, scale: f64) -> Self {
        let secs = |v: Option<i32>, default: i32| f64::from(v.unwrap_or(default).max(0));
        let scaled = |s: f64| Duration::from_secs_f64((s * scale).max(0.0));
        Self {
            initial_delay: scaled(secs(probe.initial_delay_seconds, 0)),
            period: scaled(secs(probe.period_seconds, 10).max(1.0)).max(Duration::from_millis(50)),
            timeout: Duration::from_secs_f64(secs(probe.timeout_seconds, 1).max(1.0)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Counts consecutive results and says when the probe's verdict changes.
#[derive(Debug, Clone)]
pub struct Verdict {
    current: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Verdict {
    pub fn new() -> Self {
        Self {
            current: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one result; returns the new verdict when it flips (or is first decided).
    pub fn observe(&mut self, ok: bool, timing: &Timing) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= timing.success_threshold && self.current != Some(true) {
                self.current = Some(true);
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= timing.failure_threshold && self.current != Some(false) {
                self.current = Some(false);
                return Some(false);
            }
        }
        None
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a probe until its verdict is final for this container instance (startup: first
/// success or failure; liveness: failure; readiness: never), reporting each verdict change.
/// `rerun` probes at once and restarts the period from there, as the kubelet does for a
/// readiness probe whose container is not ready whenever it syncs the pod.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    scale: f64,
    rerun: Arc<Notify>,
    mut report: impl FnMut(bool) -> bool,
) {
    let timing = Timing::of(&probe, scale);
    tokio::time::sleep(timing.initial_delay).await;
    let mut verdict = Verdict::new();
    let mut ticker = tokio::time::interval(timing.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = rerun.notified() => ticker.reset(),
        }
        let result = probe_once(&probe, &target, timing.timeout).await;
        if let Err(why) = &result {
            tracing::debug!(container = %target.container.name, ?kind, %why, "probe failed");
        }
        if let Some(v) = verdict.observe(result.is_ok(), &timing) {
            if !report(v) {
                return;
            }
            let done = match kind {
                ProbeKind::Startup => true,
                ProbeKind::Liveness => !v,
                ProbeKind::Readiness => false,
            };
            if done {
                return;
            }
        }
    }
}

async fn probe_once(
    probe: &Probe,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), ProbeError> {
    if let Some(exec) = &probe.exec {
        return exec_probe(exec.command.as_deref().unwrap_or_default(), target, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let address = resolve_address(tcp.host.as_deref(), &tcp.port, target)?;
        return match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(ProbeError::Dial { address, error }),
            Err(_) => Err(ProbeError::DialTimeout(address)),
        };
    }
    if let Some(http) = &probe.http_get {
        return match tokio::time::timeout(timeout, http_probe(http, target)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::HttpTimeout),
        };
    }
    if probe.grpc.is_some() {
        return Err(ProbeError::GrpcUnsupported);
    }
    Err(ProbeError::NoHandler)
}

/// Resolves a probe's address; anything but loopback is refused (network rule).
fn resolve_address(
    host: Option<&str>,
    port: &IntOrString,
    target: &ProbeTarget,
) -> Result<SocketAddr, ProbeError> {
    let ip: IpAddr = match host.filter(|h| !h.is_empty()) {
        None => IpAddr::V4(target.pod_ip),
        Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h
            .parse()
            .map_err(|_| ProbeError::HostNotAnIp(h.to_string()))?,
    };
    // The pod's own IP comes from the node's pod range, checked to be confined at start.
    if !ip.is_loopback() && ip != IpAddr::V4(target.pod_ip) {
        return Err(ProbeError::HostRefused(ip));
    }
    let port = match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| ProbeError::BadPort(*p))?,
        IntOrString::String(name) => target
            .container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| ProbeError::NoNamedPort(name.clone()))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// HTTP/1.1 GET (hyper's client connection) with the kubelet's headers, which the probe's
/// `httpHeaders` add to or replace; 200–399 is success, as for the kubelet. HTTPS is
/// approximated by a TCP connect (no TLS client here).
async fn http_probe(http: &HTTPGetAction, target: &ProbeTarget) -> Result<(), ProbeError> {
    let address = resolve_address(http.host.as_deref(), &http.port, target)?;
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| ProbeError::Dial { address, error })?;
    if http.scheme.as_deref() == Some("HTTPS") {
        return Ok(());
    }
    let path = http
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut request = Request::get(path)
        .body(Empty::<Bytes>::new())
        .map_err(|error| ProbeError::BadPath {
            path: path.to_owned(),
            error,
        })?;
    *request.headers_mut() = probe_headers(http, address)?;
    let http_error = |error| ProbeError::Http { address, error };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let response = sender.send_request(request);
    tokio::pin!(response);
    // The connection future moves the bytes and ends when the server closes; by then it has
    // handed over the answer's head, if one came.
    let response = tokio::select! {
        response = &mut response => response,
        ended = connection => match ended {
            Ok(()) => response.await,
            Err(error) => Err(error),
        },
    }
    .map_err(http_error)?;
    let code = response.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus(code))
    }
}

/// The probe's `httpHeaders` (repeated names kept), then the kubelet's `Host`, `User-Agent`
/// and `Accept` where the probe sets none, and `Connection: close`.
fn probe_headers(http: &HTTPGetAction, address: SocketAddr) -> Result<HeaderMap, ProbeError> {
    let mut headers = HeaderMap::new();
    for h in http.http_headers.iter().flatten() {
        let bad = |error: http::Error| ProbeError::BadHeader {
            name: h.name.clone(),
            error,
        };
        let name = HeaderName::try_from(h.name.as_str()).map_err(|e| bad(e.into()))?;
        let value = HeaderValue::try_from(h.value.as_str()).map_err(|e| bad(e.into()))?;
        headers.append(name, value);
    }
    headers.entry(HOST).or_insert_with(|| {
        HeaderValue::try_from(address.to_string()).expect("a socket address is a header value")
    });
    for (name, value) in [(USER_AGENT, "kube-probe/1.36"), (ACCEPT, "*/*")] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(headers)
}

/// Runs the command inside the container's mount namespace with its environment; exit 0 is
/// success.
async fn exec_probe(
    command: &[String],
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let Some((first, rest)) = command.split_first() else {
        return Err(ProbeError::ExecWithoutCommand);
    };
    let spec = ProcessSpec {
        program: resolve_program(first, &target.program),
        args: rest.to_vec(),
        env: target.env.clone(),
        join_mount_ns_of: Some(target.pid),
        ..Default::default()
    };
    let command = build_command(&spec).map_err(ProbeError::ExecSetup)?;
    let io_error = |error| ProbeError::ExecIo {
        command: first.clone(),
        error,
    };
    let mut child = target.spawner.spawn(command).await.map_err(io_error)?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ProbeError::ExecFailed {
            command: first.clone(),
            status,
        }),
        Ok(Err(error)) => Err(io_error(error)),
        Err(_) => {
            if let Some(pid) = child.id() {
                signal_group(pid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(ProbeError::ExecTimeout {
                command: first.clone(),
                timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target on 127.0.0.1 (network probes only).
    fn loopback_target() -> ProbeTarget {
        ProbeTarget {
            pod_ip: Ipv4Addr::LOCALHOST,
            container: Container::default(),
            pid: 0,
            program: PathBuf::new(),
            env: vec![],
            spawner: Spawner::start().unwrap(),
        }
    }

    /// A rerun probes at once: a readiness probe with a one-minute period sees its container
    /// recover at the rerun, not a minute later.
    #[tokio::test]
    async fn rerun_probes_at_once() {
        // A free port, closed again: the probe fails until something listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let probe = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                host: None,
                port: IntOrString::Int(port.into()),
            }),
            period_seconds: Some(60),
            failure_threshold: Some(1),
            ..Default::default()
        };
        let rerun = Arc::new(Notify::new());
        let (verdict, mut verdicts) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            ProbeKind::Readiness,
            probe,
            loopback_target(),
            1.0,
            rerun.clone(),
            move |ok| verdict.send(ok).is_ok(),
        ));
        assert_eq!(verdicts.recv().await, Some(false));
        let _listening = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let next = Duration::from_millis(300);
        assert!(
            tokio::time::timeout(next, verdicts.recv()).await.is_err(),
            "probed again before its period without a rerun"
        );
        rerun.notify_one();
        let after_rerun = tokio::time::timeout(Duration::from_secs(10), verdicts.recv()).await;
        assert_eq!(after_rerun, Ok(Some(true)));
        task.abort();
    }

    #[test]
    fn timing_defaults_and_scale() {
        let t = Timing::of(&Probe::default(), 1.0);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let p = Probe {
            period_seconds: Some(2),
            initial_delay_seconds: Some(4),
            ..Default::default()
        };
        let t = Timing::of(&p, 0.1);
        assert_eq!(t.period, Duration::from_millis(200));
        assert_eq!(t.initial_delay, Duration::from_millis(400));
        assert_eq!(Timing::of(&p, 0.0).period, Duration::from_millis(50));
    }

    #[test]
    fn thresholds() {
        let timing = Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut v = Verdict::new();
        assert_eq!(v.observe(true, &timing), None);
        assert_eq!(v.observe(true, &timing), Some(true));
        assert_eq!(v.observe(true, &timing), None);
        assert_eq!(v.observe(false, &timing), None);
        assert_eq!(v.observe(false, &timing), None);
        assert_eq!(v.observe(true, &timing), None);
        assert_eq!(v.observe(false, &timing), None);
        assert_eq!(v.observe(false, &timing), None);
        assert_eq!(v.observe(false, &timing), Some(false));
        assert_eq!(v.observe(false, &timing), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_loopback() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // One answer per connection, in turn; the last one for any further connection.
            // Connections stay open: an answer's end is its length, or never.
            let answers: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\n\r\n",
                b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 503 NO\r\n\r\n",
            ];
            let mut open = Vec::new();
            for n in 0.. {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let read = s.read(&mut buf).await.unwrap_or(0);
                let _ = heads.send(String::from_utf8_lossy(&buf[..read]).into_owned());
                let _ = s.write_all(answers[n.min(answers.len() - 1)]).await;
                open.push(s);
            }
        });
        let target = loopback_target();
        let http = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Duration::from_secs(1);
        assert!(matches!(probe_once(&http, &target, t).await, Ok(())));
        let head = received.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /readyz http/1.1\r\n"), "{head}");
        for header in [
            format!("host: 127.0.0.1:{port}"),
            "user-agent: kube-probe/1.36".into(),
            "accept: */*".into(),
            "connection: close".into(),
        ] {
            assert!(
                head.contains(&format!("{header}\r\n")),
                "{header} in {head}"
            );
        }
        // A redirect counts as success, and the probe's own headers go along (replacing the
        // kubelet's User-Agent).
        let with_headers = Probe {
            http_get: Some(HTTPGetAction {
                http_headers: Some(vec![
                    k8s_openapi::api::core::v1::HTTPHeader {
                        name: "X-Probe".into(),
                        value: "yes".into(),
                    },
                    k8s_openapi::api::core::v1::HTTPHeader {
                        name: "User-Agent".into(),
                        value: "mine".into(),
                    },
                ]),
                ..http.http_get.clone().unwrap()
            }),
            ..Default::default()
        };
        assert!(matches!(
            probe_once(&with_headers, &target, t).await,
            Ok(())
        ));
        let head = received.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.contains("x-probe: yes\r\n"), "{head}");
        assert!(head.contains("user-agent: mine\r\n"), "{head}");
        assert!(!head.contains("kube-probe"), "{head}");
        // Only the head matters: a body that never ends does not hold the probe up.
        assert!(matches!(probe_once(&http, &target, t).await, Ok(())));
        let err = probe_once(&http, &target, t).await.unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                host: None,
                port: IntOrString::Int(port.into()),
            }),
            ..Default::default()
        };
        assert!(matches!(probe_once(&tcp, &target, t).await, Ok(())));
        let outside = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                host: Some("10.0.0.1".into()),
                port: IntOrString::Int(80),
            }),
            ..Default::default()
        };
        assert!(
            probe_once(&outside, &target, t)
                .await
                .unwrap_err()
                .to_string()
                .contains("refused")
        );
    }
}
