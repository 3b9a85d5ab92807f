//! The kit's one HTTP client: a bounded HTTP/1.1 `GET` on hyper's client connection, in plain
//! text or over rustls (with a client certificate), and only to the addresses the network rule
//! allows ([`allowed_address`]). The testbed reads pods' `/state` and `/metrics` with it, the
//! control plane runner probes its components' health endpoints with it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Whether the kit may send a packet to `addr`: a loopback address, or (inside the testbed's
/// private network namespace, which has no route out) a pod IP of the testbed's nodes or a
/// Service's ClusterIP ([`crate::netns::is_pod_address`], [`crate::netns::is_service_address`]).
pub fn allowed_address(addr: IpAddr) -> bool {
    addr.is_loopback()
        || (crate::netns::inside()
            && matches!(addr, IpAddr::V4(v4)
                if crate::netns::is_pod_address(v4) || crate::netns::is_service_address(v4)))
}

/// The URL of `path` on `ip:port` (brackets around an IPv6 address).
pub fn url(scheme: &str, ip: IpAddr, port: u16, path: &str) -> String {
    format!("{scheme}://{}{path}", SocketAddr::new(ip, port))
}

/// What a `GET` was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The body, decoded (chunked transfer encoding undone), as UTF-8 (lossy).
    pub body: String,
}

/// An HTTP client for `http://` URLs, and for `https://` ones when made [`Client::with_tls`].
/// A URL's host must be an IP address that [`allowed_address`] accepts; each `GET` uses a
/// connection of its own (`Connection: close`) and fails if not answered within the timeout.
#[derive(Clone)]
pub struct Client {
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Client {
    /// A plain-text client.
    pub fn new(timeout: Duration) -> Self {
        Self { tls: None, timeout }
    }

    /// A client that also speaks HTTPS with `config` (its trusted roots, its client
    /// certificate).
    pub fn with_tls(config: Arc<ClientConfig>, timeout: Duration) -> Self {
        Self {
            tls: Some(TlsConnector::from(config)),
            timeout,
        }
    }

    /// `GET url`, whatever the status; fails on a refused URL, a network or protocol error,
    /// or the timeout.
    pub async fn get(&self, url: &str) -> Result<Response> {
        match tokio::time::timeout(self.timeout, self.exchange(url)).await {
            Ok(answer) => answer,
            Err(_) => Err(anyhow!("timeout after {:?}", self.timeout)),
        }
        .with_context(|| format!("GET {url}"))
    }

    async fn exchange(&self, url: &str) -> Result<Response> {
        let uri: Uri = url.parse().context("malformed URL")?;
        let tls = match (uri.scheme_str(), &self.tls) {
            (Some("http"), _) => None,
            (Some("https"), Some(tls)) => Some(tls),
            (Some("https"), None) => bail!("an HTTPS URL for a client without TLS"),
            _ => bail!("neither an http:// nor an https:// URL"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL without a host"))?;
        let host = authority.host();
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("host {host} is not an IP address"))?;
        ensure!(
            allowed_address(ip),
            "network rule: refusing to connect to {ip} (neither loopback nor a pod IP or \
             ClusterIP inside the testbed's private network namespace)"
        );
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority.as_str())
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let tcp = TcpStream::connect((ip, port))
            .await
            .with_context(|| format!("connecting to {}", SocketAddr::new(ip, port)))?;
        match tls {
            None => exchange(tcp, request).await,
            Some(tls) => {
                let stream = tls
                    .connect(ServerName::IpAddress(ip.into()), tcp)
                    .await
                    .context("TLS handshake")?;
                exchange(stream, request).await
            }
        }
    }
}

/// Sends `request` on a fresh HTTP/1.1 connection over `io` and reads the whole answer.
async fn exchange<S>(io: S, request: Request<Empty<Bytes>>) -> Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    let answer = async move {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::pin!(answer);
    // The connection future moves the bytes; the answer is done once its body is in. A
    // connection that ends first has handed over whatever answer it read.
    tokio::select! {
        answer = &mut answer => answer,
        ended = connection => {
            ended?;
            answer.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A server on 127.0.0.1 that, for each of `answers` in turn, accepts one connection,
    /// sends the request head it read to the returned channel and writes the answer (raw
    /// bytes, so the test says exactly what is on the wire). `None`: reads and never answers.
    async fn serve(answers: Vec<Option<&'static str>>) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answer in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0];
                    if socket.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                match answer {
                    Some(answer) => socket.write_all(answer.as_bytes()).await.unwrap(),
                    None => std::future::pending().await,
                }
            }
        });
        (port, received)
    }

    fn client() -> Client {
        Client::new(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn get_sends_path_and_host_and_decodes_a_chunked_body() {
        let (port, mut heads) = serve(vec![Some(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        )])
        .await;
        let response = client()
            .get(&format!("http://127.0.0.1:{port}/state?full=1"))
            .await
            .unwrap();
        assert_eq!(
            response,
            Response {
                status: 200,
                body: "Wikipedia".into()
            }
        );
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /state?full=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn get_returns_other_statuses_with_their_body() {
        let (port, _heads) = serve(vec![Some(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        )])
        .await;
        let response = client()
            .get(&format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap();
        assert_eq!((response.status, response.body.as_str()), (503, "busy"));
    }

    #[tokio::test]
    async fn get_gives_up_after_the_timeout() {
        let (port, _heads) = serve(vec![None]).await;
        let url = format!("http://127.0.0.1:{port}/metrics");
        let err = Client::new(Duration::from_millis(200))
            .get(&url)
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("GET {url}: timeout after 200ms")
        );
    }

    #[tokio::test]
    async fn get_fails_on_a_connection_closed_without_an_answer() {
        let (port, _heads) = serve(vec![Some("")]).await;
        let url = format!("http://127.0.0.1:{port}/");
        let err = client().get(&url).await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("GET {url}: ")),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn get_refuses_addresses_outside_the_network_rule() {
        for url in ["http://10.0.0.1/", "http://192.168.1.1:8080/state"] {
            let err = client().get(url).await.unwrap_err();
            assert!(format!("{err:#}").contains("network rule"), "{err:#}");
        }
        let err = client().get("http://localhost/").await.unwrap_err();
        assert!(format!("{err:#}").contains("not an IP address"), "{err:#}");
        let err = client().get("https://127.0.0.1/").await.unwrap_err();
        assert!(format!("{err:#}").contains("without TLS"), "{err:#}");
    }

    #[test]
    fn url_brackets_ipv6() {
        assert_eq!(
            url("http", "::1".parse().unwrap(), 80, "/x"),
            "http://[::1]:80/x"
        );
        assert_eq!(
            url("https", "127.0.0.1".parse().unwrap(), 6443, "/readyz"),
            "https://127.0.0.1:6443/readyz"
        );
    }
}
