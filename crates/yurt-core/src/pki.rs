//! A small certificate authority on top of `rcgen`: the cluster CA, serving and client
//! certificates for every component, and bare key pairs (service-account signing).
//!
//! Keys are ECDSA P-256, which every Kubernetes component since 1.8 accepts for serving,
//! client and service-account keys.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PKI failures. Every variant names the certificate it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key generation, parsing or signing failed.
    #[error("certificate {subject:?}: {source}")]
    Crypto {
        /// Common name of the certificate or key being handled.
        subject: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// More than two organizations (groups) were asked for.
    #[error("certificate {subject:?}: at most two organizations are supported")]
    TooManyOrganizations {
        /// Common name of the certificate.
        subject: String,
    },
    /// A DNS name in a certificate request is not a valid IA5 string.
    #[error("certificate {subject:?}: invalid DNS name {name:?}")]
    InvalidDnsName {
        /// Common name of the certificate.
        subject: String,
        /// The rejected name.
        name: String,
    },
}

/// Result alias for PKI operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsage {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// Both (for example a kubelet that serves and dials).
    ServerAndClient,
}

/// A request for one leaf certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Subject common name (Kubernetes user name for client certificates).
    pub common_name: String,
    /// Subject organizations (Kubernetes groups for client certificates).
    pub organizations: Vec<String>,
    /// Key usage.
    pub usage: CertUsage,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// How long the certificate is valid from now.
    pub validity: Duration,
}

impl CertSpec {
    /// A client certificate for `common_name` in the given groups, valid ten years.
    pub fn client(common_name: impl Into<String>, organizations: &[&str]) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: organizations.iter().map(|o| (*o).to_owned()).collect(),
            usage: CertUsage::Client,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            validity: TEN_YEARS,
        }
    }

    /// A serving certificate for the given names and addresses, valid ten years.
    pub fn server(common_name: impl Into<String>, dns_names: &[&str], ips: &[IpAddr]) -> Self {
        Self {
            common_name: common_name.into(),
            organizations: Vec::new(),
            usage: CertUsage::Server,
            dns_names: dns_names.iter().map(|d| (*d).to_owned()).collect(),
            ip_addresses: ips.to_vec(),
            validity: TEN_YEARS,
        }
    }
}

/// The OID of the X.520 organizationName attribute.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start an hour in the past so that small clock differences between
/// hosts do not make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(3600);

/// A PEM-encoded certificate and its PEM-encoded (PKCS#8) private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A PEM-encoded key pair without a certificate (service-account token signing).
#[derive(Debug, Clone)]
pub struct KeyPairPem {
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    /// The public key, PKIX PEM.
    pub public_pem: String,
}

/// Generates a bare ECDSA P-256 key pair.
///
/// # Errors
/// Fails only if the system's random source fails.
pub fn generate_key_pair(purpose: &str) -> Result<KeyPairPem> {
    let key = KeyPair::generate().map_err(|source| Error::Crypto {
        subject: purpose.to_owned(),
        source,
    })?;
    Ok(KeyPairPem {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

/// A certificate authority that can issue leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn now_minus(backdate: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - backdate
}

impl CertificateAuthority {
    /// Creates a new self-signed CA named `common_name`, valid ten years.
    ///
    /// # Errors
    /// Fails if key generation or signing fails.
    pub fn generate(common_name: &str) -> Result<Self> {
        let crypto = |source| Error::Crypto {
            subject: common_name.to_owned(),
            source,
        };
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = ca_params(common_name);
        params.not_before = now_minus(BACKDATE);
        params.not_after = params.not_before + TEN_YEARS;
        let cert = params.self_signed(&key).map_err(crypto)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Loads a CA made by [`CertificateAuthority::generate`] with the same `common_name`.
    ///
    /// Only the key is parsed; the issuer name is rebuilt from `common_name`, so it must
    /// be the name the CA was generated with.
    ///
    /// # Errors
    /// Fails if the key PEM cannot be parsed.
    pub fn from_pem(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| Error::Crypto {
            subject: common_name.to_owned(),
            source,
        })?;
        Ok(Self {
            issuer: Issuer::new(ca_params(common_name), key),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with a fresh key.
    ///
    /// # Errors
    /// Fails if a DNS name is not a valid IA5 string, or if signing fails.
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert> {
        let crypto = |source| Error::Crypto {
            subject: spec.common_name.clone(),
            source,
        };
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // rcgen keeps one value per attribute type; Kubernetes reads every O attribute as
        // a group. A second organization goes in under the same OID as a custom type.
        match spec.organizations.as_slice() {
            [] => {}
            [one] => dn.push(DnType::OrganizationName, one.as_str()),
            [one, two] => {
                dn.push(DnType::OrganizationName, one.as_str());
                dn.push(
                    DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
                    two.as_str(),
                );
            }
            _ => {
                return Err(Error::TooManyOrganizations {
                    subject: spec.common_name.clone(),
                });
            }
        }
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        params.not_before = now_minus(BACKDATE);
        params.not_after = params.not_before + spec.validity + BACKDATE;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match spec.usage {
            CertUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            CertUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            CertUsage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        for name in &spec.dns_names {
            let ia5 = name.clone().try_into().map_err(|_| Error::InvalidDnsName {
                subject: spec.common_name.clone(),
                name: name.clone(),
            })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &spec.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        Arc::new(roots)
    }

    /// Runs a mutual-TLS handshake in memory and exchanges one message.
    fn handshake(
        client_ca: &CertificateAuthority,
        server_ca: &CertificateAuthority,
        server: &IssuedCert,
        client: &IssuedCert,
        server_name: &str,
    ) -> Result<Vec<u8>, rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(server_ca), provider())
            .build()
            .unwrap();
        let server_cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(client_ca))
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut c = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server_cfg)).unwrap();
        c.writer().write_all(b"ping").unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
            }
            c.process_new_packets()?;
        }
        let mut got = Vec::new();
        let _ = s.reader().read_to_end(&mut got);
        Ok(got)
    }

    #[test]
    fn issued_certificates_complete_mutual_tls_for_their_names() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let ip: IpAddr = "10.10.0.1".parse().unwrap();
        let server = ca
            .issue(&CertSpec::server(
                "apiserver",
                &["kubernetes.default"],
                &[ip],
            ))
            .unwrap();
        let client = ca
            .issue(&CertSpec::client("admin", &["system:masters"]))
            .unwrap();
        for name in ["kubernetes.default", "10.10.0.1"] {
            let got = handshake(&ca, &ca, &server, &client, name).unwrap();
            assert_eq!(got, b"ping", "name {name}");
        }
        let err = handshake(&ca, &ca, &server, &client, "other.example").unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "wrong name must be rejected, got {err:?}"
        );
    }

    #[test]
    fn reloaded_ca_issues_certificates_that_chain_to_the_original() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let reloaded =
            CertificateAuthority::from_pem("test-ca", ca.cert_pem(), ca.key_pem()).unwrap();
        let server = reloaded
            .issue(&CertSpec::server("s", &["localhost"], &[]))
            .unwrap();
        let client = ca.issue(&CertSpec::client("c", &[])).unwrap();
        assert_eq!(
            handshake(&ca, &ca, &server, &client, "localhost").unwrap(),
            b"ping"
        );
    }

    #[test]
    fn certificates_from_a_foreign_ca_are_rejected() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let other = CertificateAuthority::generate("other-ca").unwrap();
        let server = ca
            .issue(&CertSpec::server("s", &["localhost"], &[]))
            .unwrap();
        let client = other.issue(&CertSpec::client("c", &[])).unwrap();
        let err = handshake(&ca, &ca, &server, &client, "localhost").unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn two_organizations_both_reach_the_subject() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let cert = ca
            .issue(&CertSpec::client(
                "system:node:n1",
                &["system:nodes", "openyurt:yurthub"],
            ))
            .unwrap();
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let has = |s: &str| der.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(has("system:nodes") && has("openyurt:yurthub") && has("system:node:n1"));
        // Both are encoded as organizationName (2.5.4.10) attributes.
        let oid = [0x06, 0x03, 0x55, 0x04, 0x0a];
        assert_eq!(der.windows(5).filter(|w| *w == oid).count(), 2);
        let err = ca
            .issue(&CertSpec::client("x", &["a", "b", "c"]))
            .unwrap_err();
        assert!(matches!(err, Error::TooManyOrganizations { .. }));
    }

    #[test]
    fn key_pairs_are_pem_encoded() {
        let kp = generate_key_pair("sa").unwrap();
        assert!(kp.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(kp.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn invalid_dns_names_are_reported() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let err = ca
            .issue(&CertSpec::server("s", &["bad\u{e9}name"], &[]))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidDnsName { .. }), "{err:?}");
    }
}
