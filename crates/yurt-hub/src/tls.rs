//! TLS settings: the client side towards API servers (cluster CA, node certificate) and
//! the server side of the pod-facing HTTPS port.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(path: &Path, e: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] if the file is unreadable or holds no certificate.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] if the file is unreadable or holds no key.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// Client TLS towards API servers: trusts `ca`, presents `cert`/`key` if given. (ALPN is
/// left to the HTTP connector, which offers the protocols it enables.)
///
/// # Errors
/// Unreadable files or a configuration rustls refuses.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    Ok(match identity {
        Some((cert, k)) => builder.with_client_auth_cert(certs(cert)?, key(k)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// Client TLS towards API servers that presents whatever `identity` holds at each
/// handshake (a certificate that rotates), or no certificate.
///
/// # Errors
/// An unreadable CA or a configuration rustls refuses.
pub fn client_config_with(
    ca: &Path,
    identity: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    Ok(match identity {
        Some(resolver) => {
            let mut config = builder.with_client_cert_resolver(resolver);
            // A resumed TLS 1.3 session carries the identity of the session it resumes:
            // after a rotation, new connections must show the new certificate.
            config.resumption = rustls::client::Resumption::disabled();
            config
        }
        None => builder.with_no_client_auth(),
    })
}

/// Server TLS for the pod-facing port: `cert`/`key`, client certificates optional (pods
/// authenticate with bearer tokens), HTTP/1.1 and HTTP/2.
///
/// # Errors
/// Unreadable files or a configuration rustls refuses.
pub fn server_config(cert: &Path, k: &Path, ca: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = server_builder(ca)?.with_single_cert(certs(cert)?, key(k)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Server TLS for the pod-facing port presenting whatever `serving` holds at each
/// handshake (a certificate renewed while the hub runs).
///
/// # Errors
/// An unreadable CA or a configuration rustls refuses.
pub fn server_config_with(
    serving: Arc<dyn rustls::server::ResolvesServerCert>,
    ca: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = server_builder(ca)?.with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn server_builder(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, TlsError>
{
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| pem_err(ca, e))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier))
}
