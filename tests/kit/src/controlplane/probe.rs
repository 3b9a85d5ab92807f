//! Health probes over HTTPS to the control plane's loopback ports: a few lines of HTTP/1.1 on
//! rustls instead of an HTTP client stack, since only the status line matters.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::pki::ClientCert;

pub struct Probe {
    config: Arc<ClientConfig>,
}

impl Probe {
    /// A probe trusting the CA in `ca_file` and presenting `client` as its identity.
    pub fn new(ca_file: &Path, client: &ClientCert) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)? {
            roots.add(cert?)?;
        }
        let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?;
        // An explicit provider, so that a process that also links another rustls provider
        // (kube's, say) does not make the process-wide default ambiguous.
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The HTTP status of `GET path` on `https://127.0.0.1:port`.
    pub fn get(&self, port: u16, path: &str) -> Result<u16> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let timeout = Duration::from_secs(2);
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let server_name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let conn = ClientConnection::new(self.config.clone(), server_name)?;
        let mut stream = StreamOwned::new(conn, tcp);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        stream.flush()?;
        let mut status_line = String::new();
        BufReader::new(stream).read_line(&mut status_line)?;
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("malformed HTTP status line {status_line:?}"))
            .with_context(|| format!("GET https://127.0.0.1:{port}{path}"))
    }
}
