//! TLS between agents and the server: TLS 1.3 only, mutual certificates from the
//! cluster's CA, ALPN `yurt-tunnel/1`; and the node identity an agent's certificate
//! carries (`CN=system:node:<name>`, `O=system:nodes`, like a kubelet's).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use yurt_core::NodeName;

/// The ALPN protocol both sides require.
pub const ALPN: &[u8] = b"yurt-tunnel/1";

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Why a verified certificate does not name a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No certificate was presented.
    #[error("no client certificate")]
    Missing,
    /// The certificate does not parse.
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    /// Its subject is not a node's.
    #[error("certificate subject {0:?} is not system:node:<name> in group system:nodes")]
    NotANode(String),
}

fn pem_err(path: &Path, e: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// Unreadable file, or none in it.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| pem_err(path, e))?;
    certs_from_pem(path, &pem)
}

/// Every certificate of `pem`, the bytes of file `path` (named in errors).
///
/// # Errors
/// Unparsable PEM, or no certificate in it.
pub fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// Files of one side's identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signs both sides' certificates.
    pub ca: std::path::PathBuf,
    /// This side's certificate (chain).
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

/// The server's side: requires a client certificate from `files.ca`.
///
/// # Errors
/// Unreadable files or a configuration rustls refuses.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The agent's side: trusts `files.ca` for the server and presents the node's certificate.
///
/// # Errors
/// Unreadable files or a configuration rustls refuses.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(files, certs(&files.cert)?)
}

/// Like [`client_config`], presenting `chain` (already read from `files.cert`, so a
/// caller that checked it presents exactly what it checked).
///
/// # Errors
/// Unreadable CA or key files, or a configuration rustls refuses.
pub fn client_config_with(
    files: &TlsFiles,
    chain: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(chain, key(&files.key)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// When `cert` stops being valid.
///
/// # Errors
/// [`IdentityError::Unreadable`] if it does not parse.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<std::time::SystemTime, IdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The node a verified client certificate belongs to: its subject must be exactly
/// `CN=system:node:<name>` with `O=system:nodes`, as the API server's Node
/// authorizer reads a kubelet's. Nothing the agent says can change it.
///
/// # Errors
/// See [`IdentityError`].
pub fn node_of(cert: Option<&CertificateDer<'_>>) -> Result<NodeName, IdentityError> {
    let cert = cert.ok_or(IdentityError::Missing)?;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let subject = parsed.subject();
    let text = || subject.to_string();
    let cns: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let in_nodes = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .any(|o| o == "system:nodes");
    match cns.as_slice() {
        [cn] if in_nodes => cn
            .strip_prefix("system:node:")
            .and_then(|n| n.parse::<NodeName>().ok())
            .ok_or_else(|| IdentityError::NotANode(text())),
        _ => Err(IdentityError::NotANode(text())),
    }
}
