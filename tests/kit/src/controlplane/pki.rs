//! Certificates, keys and kubeconfigs of a control plane, generated in Rust so that starting
//! one needs no openssl (or cfssl) on the machine.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside `<state dir>/pki`.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CLIENT_CA_CERT: &str = "client-ca.crt";
const CLIENT_CA_KEY: &str = "client-ca.key";
pub const SERVING_CERT: &str = "serving.crt";
pub const SERVING_KEY: &str = "serving.key";
/// ECDSA P-256 key: kube-apiserver signs service-account tokens with it, kube-controller-manager
/// the legacy token secrets.
pub const SERVICE_ACCOUNT_KEY: &str = "service-account.key";
/// Its public half, which kube-apiserver verifies tokens with (it reads no PKCS#8 private key
/// there).
pub const SERVICE_ACCOUNT_PUBLIC_KEY: &str = "service-account.pub";

/// Object identifier of the X.509 organization attribute (RFC 4519), the attribute that
/// Kubernetes reads a client certificate's groups from.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// The `kubernetes` Service's ClusterIP: the first address of
/// [`super::SERVICE_CLUSTER_IP_RANGE`].
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Writes a fresh serving CA, client CA, serving certificate and service-account key into `dir`.
pub fn generate(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params("hapod-ca").self_signed(&ca_key)?;
    let client_ca_key = KeyPair::generate()?;
    let client_ca_cert = ca_params(CLIENT_CA_NAME).self_signed(&client_ca_key)?;

    // One serving certificate for kube-apiserver, kube-controller-manager and kube-scheduler:
    // all of them listen on loopback only. The in-cluster names let a pod that is handed
    // `kubernetes.default.svc` as its server verify the certificate too.
    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving.subject_alt_names.extend([
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        // Where a real node's pods reach kube-apiserver: the `kubernetes` Service's ClusterIP
        // and the address it forwards to.
        SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
        SanType::IpAddress(IpAddr::V4(
            crate::netns::API_ADDRESS
                .parse()
                .expect("a constant IPv4 address"),
        )),
    ]);
    serving
        .distinguished_name
        .push(DnType::CommonName, "hapod-control-plane");
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert =
        serving.signed_by(&serving_key, &Issuer::new(ca_params("hapod-ca"), &ca_key))?;

    write_private(&dir.join(CA_KEY), &ca_key.serialize_pem())?;
    fs::write(dir.join(CA_CERT), ca_cert.pem())?;
    write_private(&dir.join(CLIENT_CA_KEY), &client_ca_key.serialize_pem())?;
    fs::write(dir.join(CLIENT_CA_CERT), client_ca_cert.pem())?;
    write_private(&dir.join(SERVING_KEY), &serving_key.serialize_pem())?;
    fs::write(dir.join(SERVING_CERT), serving_cert.pem())?;
    let service_account_key = KeyPair::generate()?;
    write_private(
        &dir.join(SERVICE_ACCOUNT_KEY),
        &service_account_key.serialize_pem(),
    )?;
    fs::write(
        dir.join(SERVICE_ACCOUNT_PUBLIC_KEY),
        service_account_key.public_key_pem(),
    )?;
    Ok(())
}

const CLIENT_CA_NAME: &str = "hapod-client-ca";

/// The parameters of a CA. Deterministic, so that an issuer can be rebuilt later from the
/// CA's key alone (the subject name and key identifier are all a signature needs).
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A client certificate and key, PEM encoded.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Mints a client certificate signed by the client CA in `pki_dir`: Kubernetes authenticates
/// it as user `user` in `groups` (`system:masters` is the unrestricted admin group).
pub fn mint_client_cert(pki_dir: &Path, user: &str, groups: &[&str]) -> Result<ClientCert> {
    // rcgen keeps one value per attribute type; the organization attribute can appear twice
    // by naming it once as a built-in type and once by its object identifier.
    if groups.len() > 2 {
        bail!("a minted certificate carries at most two groups, got {groups:?}");
    }
    let ca_key_pem = fs::read_to_string(pki_dir.join(CLIENT_CA_KEY))
        .with_context(|| format!("reading the client CA key in {}", pki_dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::new(ca_params(CLIENT_CA_NAME), ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(first) = groups.first() {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *first);
    }
    if let Some(second) = groups.get(1) {
        params
            .distinguished_name
            .push(DnType::CustomDnType(ORGANIZATION_OID.to_vec()), *second);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Client CA certificate path, for `--client-ca-file`.
pub fn client_ca_cert(pki_dir: &Path) -> PathBuf {
    pki_dir.join(CLIENT_CA_CERT)
}

/// Writes a self-contained kubeconfig (certificates embedded, so it can be copied anywhere)
/// for `client` against `server`, trusting the serving CA in `pki_dir`.
pub fn write_kubeconfig(
    path: &Path,
    pki_dir: &Path,
    server: &str,
    user: &str,
    client: &ClientCert,
) -> Result<()> {
    let ca = fs::read(pki_dir.join(CA_CERT))?;
    // JSON strings are valid YAML scalars, which quotes any user name safely.
    let user = serde_json::to_string(user)?;
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: hapod
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: hapod
  context:
    cluster: hapod
    user: {user}
current-context: hapod
",
        ca = BASE64.encode(ca),
        cert = BASE64.encode(&client.cert_pem),
        key = BASE64.encode(&client.key_pem),
    );
    write_private(path, &text)
}

/// Writes a file only its owner can read: it holds a private key.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
