//! The webhook server's certificates: a CA of its own and a serving certificate,
//! generated once and kept in the Secret `kube-system/yurt-manager-webhook-certs` (as
//! upstream does), so every replica and every restart serves with the same CA and the
//! `caBundle` registered with the API server stays valid.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use yurt_core::pki::{CertSpec, CertificateAuthority};

use crate::ManagerError;

/// Secret holding the webhook CA and serving certificate.
pub const SECRET_NAME: &str = "yurt-manager-webhook-certs";
/// Service name the webhooks are registered under (OpenYurt's).
pub const SERVICE_NAME: &str = "yurt-manager-webhook-service";

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const ADDRESSES: &str = "addresses";

/// The webhook certificates in PEM.
#[derive(Debug, Clone)]
pub struct WebhookCerts {
    /// CA certificate (the `caBundle`).
    pub ca_pem: String,
    /// Serving certificate.
    pub cert_pem: String,
    /// Serving key.
    pub key_pem: String,
}

/// DNS names the serving certificate covers: the Service in every form the API server
/// may use.
fn dns_names(namespace: &str) -> Vec<String> {
    vec![
        SERVICE_NAME.to_owned(),
        format!("{SERVICE_NAME}.{namespace}"),
        format!("{SERVICE_NAME}.{namespace}.svc"),
        format!("{SERVICE_NAME}.{namespace}.svc.cluster.local"),
    ]
}

fn generate(namespace: &str, ips: &[IpAddr]) -> Result<BTreeMap<String, ByteString>, ManagerError> {
    let ca = CertificateAuthority::generate("yurt-manager-webhook-ca")?;
    let addresses = ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let names = dns_names(namespace);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let serving = ca.issue(&CertSpec::server(
        format!("{SERVICE_NAME}.{namespace}.svc"),
        &names,
        ips,
    ))?;
    Ok(BTreeMap::from([
        (
            CA_CERT.to_owned(),
            ByteString(ca.cert_pem().as_bytes().to_vec()),
        ),
        (
            CA_KEY.to_owned(),
            ByteString(ca.key_pem().as_bytes().to_vec()),
        ),
        (
            TLS_CERT.to_owned(),
            ByteString(serving.cert_pem.into_bytes()),
        ),
        (TLS_KEY.to_owned(), ByteString(serving.key_pem.into_bytes())),
        (ADDRESSES.to_owned(), ByteString(addresses.into_bytes())),
    ]))
}

fn field(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| s.contains("-----BEGIN"))
}

fn from_data(data: &BTreeMap<String, ByteString>) -> Option<WebhookCerts> {
    Some(WebhookCerts {
        ca_pem: field(data, CA_CERT)?,
        cert_pem: field(data, TLS_CERT)?,
        key_pem: field(data, TLS_KEY)?,
    })
}

/// Whether the serving certificate in `data` was issued for every address in `ips`
/// (the addresses are recorded beside it when it is generated).
fn covers(data: &BTreeMap<String, ByteString>, ips: &[IpAddr]) -> bool {
    let recorded: Vec<IpAddr> = data
        .get(ADDRESSES)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .map(|s| s.split(',').filter_map(|a| a.trim().parse().ok()).collect())
        .unwrap_or_default();
    ips.iter().all(|ip| recorded.contains(ip))
}

/// Reads the certificates from their Secret, creating it (or replacing an unusable
/// one) when needed. Replicas racing to create it all end up with the winner's.
///
/// # Errors
/// API errors and certificate generation failures.
pub async fn ensure(
    client: &kube::Client,
    namespace: &str,
    ips: &[IpAddr],
) -> Result<WebhookCerts, ManagerError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let existing = secrets
            .get_opt(SECRET_NAME)
            .await
            .map_err(|e| ManagerError::kube("read the webhook certificate Secret", e))?;
        match existing {
            Some(secret) => {
                if let Some(data) = secret.data.as_ref()
                    && let Some(certs) = from_data(data)
                    && covers(data, ips)
                {
                    return Ok(certs);
                }
                tracing::warn!(
                    secret = SECRET_NAME,
                    "webhook certificates unusable or missing an address; replacing them"
                );
                let mut replaced = secret;
                replaced.data = Some(generate(namespace, ips)?);
                match secrets
                    .replace(SECRET_NAME, &PostParams::default(), &replaced)
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => continue,
                    Err(e) => {
                        return Err(ManagerError::kube(
                            "replace the webhook certificate Secret",
                            e,
                        ));
                    }
                }
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(SECRET_NAME.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".to_owned()),
                    data: Some(generate(namespace, ips)?),
                    ..Secret::default()
                };
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(ManagerError::kube(
                            "create the webhook certificate Secret",
                            e,
                        ));
                    }
                }
            }
        }
    }
    Err(ManagerError::Conflict(format!(
        "the Secret {namespace}/{SECRET_NAME} kept changing while reading it"
    )))
}

/// A rustls server configuration for `certs`.
///
/// # Errors
/// The PEM data does not parse.
pub fn server_config(certs: &WebhookCerts) -> Result<rustls::ServerConfig, ManagerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ManagerError::Tls(format!("webhook certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| ManagerError::Tls(format!("webhook key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ManagerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ManagerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_cover_the_service_and_addresses_and_serve() {
        let ip: IpAddr = "10.10.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let data = generate("kube-system", &[ip]).expect("generate");
        let certs = from_data(&data).expect("complete");
        assert!(covers(&data, &[ip]));
        assert!(!covers(&data, &["10.10.0.2".parse().expect("ip")]));
        server_config(&certs).expect("rustls accepts them");
        assert!(from_data(&BTreeMap::new()).is_none());
    }
}
