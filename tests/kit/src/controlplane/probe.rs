//! Health probes over HTTPS to the control plane's loopback ports, with the kit's HTTP client
//! ([`crate::http`]). The control plane runner is synchronous (a plain thread or
//! `spawn_blocking`), so a probe carries a small runtime of its own to run the client on.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio::runtime::Runtime;

use super::pki::ClientCert;
use crate::http::{Client, url};

pub struct Probe {
    client: Client,
    runtime: Runtime,
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
            client: Client::with_tls(Arc::new(config), Duration::from_secs(2)),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// The HTTP status of `GET path` on `https://127.0.0.1:port` (2 s at most).
    pub fn get(&self, port: u16, path: &str) -> Result<u16> {
        let url = url("https", Ipv4Addr::LOCALHOST.into(), port, path);
        Ok(self.runtime.block_on(self.client.get(&url))?.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::pki;
    use rustls::ServerConfig;
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A TLS server on 127.0.0.1 with the control plane's serving certificate that requires a
    /// client certificate of the client CA, answers 200 to `GET /readyz` and 404 to anything
    /// else, on `runtime`; returns its port.
    fn serve(runtime: &Runtime, pki_dir: &Path) -> Result<u16> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki::client_ca_cert(pki_dir))? {
            client_roots.add(cert?)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(client_roots.into(), provider.clone())
                .build()?;
        let chain = CertificateDer::pem_file_iter(pki_dir.join(pki::SERVING_CERT))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki_dir.join(pki::SERVING_KEY))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = [0; 64];
                let n = tls.read(&mut head).await.unwrap_or(0);
                let answer = if head[..n].starts_with(b"GET /readyz HTTP/1.1\r\n") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        Ok(port)
    }

    #[test]
    fn probe_speaks_https_with_its_client_certificate() -> Result<()> {
        let dir = tempfile::tempdir()?;
        pki::generate(dir.path())?;
        let runtime = Runtime::new()?;
        let port = serve(&runtime, dir.path())?;
        let ca_file = dir.path().join(pki::CA_CERT);

        let admin = pki::mint_client_cert(dir.path(), "admin", &["system:masters"])?;
        let probe = Probe::new(&ca_file, &admin)?;
        assert_eq!(probe.get(port, "/readyz")?, 200);
        assert_eq!(probe.get(port, "/healthz")?, 404);
        // As the testbed runs it: on a blocking thread of another runtime.
        let status =
            runtime.block_on(runtime.spawn_blocking(move || probe.get(port, "/readyz")))??;
        assert_eq!(status, 200);

        // A client certificate of another client CA is refused by the server.
        let other = tempfile::tempdir()?;
        pki::generate(other.path())?;
        let stranger = pki::mint_client_cert(other.path(), "admin", &["system:masters"])?;
        let err = Probe::new(&ca_file, &stranger)?
            .get(port, "/readyz")
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("GET https://127.0.0.1:{port}/readyz: ")),
            "{err:#}"
        );
        // And a server the CA file does not vouch for is refused by the probe.
        let err = Probe::new(&other.path().join(pki::CA_CERT), &admin)?
            .get(port, "/readyz")
            .unwrap_err();
        assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
        Ok(())
    }
}
