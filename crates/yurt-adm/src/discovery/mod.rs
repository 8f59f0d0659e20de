//! Token discovery, the first phase of a join, as `kubeadm join` 1.20 does it: read
//! `kube-public/cluster-info` anonymously, trust its kubeconfig only if the bootstrap
//! signer's detached JWS for our token ID verifies with our token's secret, pin the CA
//! it carries by the SHA-256 of its SubjectPublicKeyInfo (`--discovery-token-ca-cert-hash`),
//! then read it again over TLS verified against that CA and require the same bytes.
//!
//! Transient failures (connection refused, a restarting API server, a signature the
//! signer has not written yet) are retried until the deadline; a failure that cannot
//! mend itself (a signature that does not verify, a CA that is not pinned, a server that
//! does not speak TLS) ends discovery at once. Every error names what it waited for.

pub mod jws;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::Kubeconfig;
use tokio::time::Instant;

use crate::token::TokenString;

/// Where the bootstrap signer's ConfigMap lives.
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
/// The ConfigMap discovery reads.
pub const CLUSTER_INFO: &str = "cluster-info";
/// Its key holding the kubeconfig (server and CA, no credentials).
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Its keys holding one signature per signing token.
pub const JWS_KEY_PREFIX: &str = "jws-kubeconfig-";
/// kubeadm's default for how long discovery may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// kubeadm's pause between attempts (the longest; see [`FIRST_RETRY`]).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The first pause between attempts, doubled after each until the retry interval.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The pauses between discovery's attempts. A token created a moment ago (`token create
/// --print-join-command`, then the join) is signed by kube-controller-manager's
/// bootstrapsigner within a second, so the first pauses are short, doubling up to
/// `longest` (kubeadm waits its 5 s at once).
fn pauses(longest: Duration) -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(FIRST_RETRY.min(longest)), move |p| {
        Some((*p * 2).min(longest))
    })
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A `--discovery-token-ca-cert-hash` that is not `sha256:` and 64 hex digits.
    #[error(
        "CA certificate hash {0:?} is malformed: expected \"sha256:\" followed by 64 hexadecimal digits"
    )]
    MalformedHash(String),
    /// Neither a pin nor an explicit choice to skip verification.
    #[error(
        "no CA certificate hash: pass --discovery-token-ca-cert-hash sha256:<hash> (printed by `kubeadm token create --print-join-command`), or knowingly --discovery-token-unsafe-skip-ca-verification"
    )]
    NoPins,
    /// An API server address that is not `host:port` or an `https://` URL.
    #[error("API server address {address:?}: {reason}")]
    Endpoint {
        /// What was given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate that cannot be read.
    #[error("cluster-info's CA certificate: {0}")]
    Certificate(String),
    /// The server's TLS failed in a way retrying cannot mend.
    #[error("discovery: {server} {reason}")]
    Tls {
        /// The API server.
        server: String,
        /// What the TLS layer said.
        reason: String,
    },
    /// The deadline passed before cluster-info could be read.
    #[error(
        "discovery: could not read {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} from {server} within {waited:?}: {last}"
    )]
    Unreachable {
        /// The API server.
        server: String,
        /// How long discovery tried.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
    /// The deadline passed with no signature for our token: an unknown, expired,
    /// deleted token, or one without the `signing` usage.
    #[error(
        "discovery: token ID {id:?} is not valid for this cluster: {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} carries no {JWS_KEY_PREFIX}{id} signature after {waited:?} (the token is unknown, expired, deleted or lacks the signing usage; make one with `yurt adm token create` or `kubeadm token create`)"
    )]
    NotSigned {
        /// The token ID.
        id: String,
        /// How long discovery waited.
        waited: Duration,
    },
    /// cluster-info has no kubeconfig.
    #[error(
        "discovery: {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} has no {KUBECONFIG_KEY:?} key: this API server is not set up for token bootstrapping"
    )]
    NoKubeconfig,
    /// The signature does not verify: the secret is wrong or the server is not trusted.
    #[error(
        "discovery: the {JWS_KEY_PREFIX}{id} signature of {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} does not verify ({reason}): the token's secret is wrong, or this API server cannot be trusted"
    )]
    BadSignature {
        /// The token ID.
        id: String,
        /// What did not verify.
        reason: jws::JwsError,
    },
    /// The kubeconfig in cluster-info is not one cluster with a server and a CA.
    #[error("discovery: the kubeconfig in {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} {0}")]
    BadKubeconfig(String),
    /// None of the CA certificates has a pinned public key.
    #[error(
        "discovery: the cluster CA in {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} has public key hash {actual}, which is not pinned (pinned: {pinned})"
    )]
    NotPinned {
        /// The hashes of the CA certificates found.
        actual: String,
        /// The pins given.
        pinned: String,
    },
    /// The second read, over verified TLS, returned other bytes.
    #[error(
        "discovery: {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} read again over TLS verified against the pinned CA differs from the first read"
    )]
    Changed,
}

/// A pin of a CA's public key: SHA-256 over its DER SubjectPublicKeyInfo, written
/// `sha256:<64 lowercase hex digits>` as kubeadm prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaCertHash([u8; 32]);

impl CaCertHash {
    /// The pin of the certificate `der`.
    ///
    /// # Errors
    /// [`DiscoveryError::Certificate`] if `der` is not an X.509 certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Self, DiscoveryError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| DiscoveryError::Certificate(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Ok(Self(hash))
    }

    /// The pins of every certificate in a PEM bundle, in order.
    ///
    /// # Errors
    /// [`DiscoveryError::Certificate`] if the bundle holds no certificate or an unreadable one.
    pub fn of_pem_bundle(pem: &str) -> Result<Vec<Self>, DiscoveryError> {
        let ders = certificates_in(pem)?;
        ders.iter().map(|d| Self::of_certificate(d)).collect()
    }
}

/// The DER certificates of a PEM bundle.
/// The DER certificates of a PEM bundle.
///
/// # Errors
/// [`DiscoveryError`] if it holds none or one does not parse.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, DiscoveryError> {
    certificates_in(pem)
}

fn certificates_in(pem: &str) -> Result<Vec<Vec<u8>>, DiscoveryError> {
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| DiscoveryError::Certificate(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            ders.push(block.contents);
        }
    }
    if ders.is_empty() {
        return Err(DiscoveryError::Certificate("no PEM certificate".into()));
    }
    Ok(ders)
}

impl FromStr for CaCertHash {
    type Err = DiscoveryError;
    fn from_str(s: &str) -> Result<Self, DiscoveryError> {
        let malformed = || DiscoveryError::MalformedHash(s.to_owned());
        let (format, hex) = s.split_once(':').ok_or_else(malformed)?;
        if !format.eq_ignore_ascii_case("sha256")
            || hex.len() != 64
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(malformed());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(malformed)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
        }
        Ok(Self(hash))
    }
}

impl fmt::Display for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CaCertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the cluster CA found in cluster-info is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaVerification {
    /// Only if one of its certificates' public keys is pinned.
    Pinned(Vec<CaCertHash>),
    /// Whatever it is, on the strength of the JWS signature alone
    /// (`--discovery-token-unsafe-skip-ca-verification`): anyone who knows the token
    /// can impersonate the API server.
    UnsafeSkip,
}

/// What discovery found and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server URL the cluster advertises (the kubeconfig's server).
    pub server: String,
    /// The cluster CA bundle, PEM: with pins, only its pinned certificates.
    pub ca_pem: String,
    /// The kubeconfig as cluster-info holds it, byte for byte.
    pub kubeconfig: String,
}

/// Discovery's inputs.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The API server to ask, `https://host:port`.
    pub server: http::Uri,
    /// The bootstrap token whose signature is checked.
    pub token: TokenString,
    /// How the CA is trusted.
    pub ca: CaVerification,
    /// When to give up.
    pub timeout: Duration,
    /// The pause between attempts.
    pub retry_interval: Duration,
}

/// The API server URL of `address`: `host:port` (kubeadm's form) or `https://host:port`.
///
/// # Errors
/// [`DiscoveryError::Endpoint`] for another scheme, a path, or no port.
pub fn api_server_url(address: &str) -> Result<http::Uri, DiscoveryError> {
    let bad = |reason: &str| DiscoveryError::Endpoint {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let with_scheme = if address.contains("://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|_| bad("expected host:port or https://host:port"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "discovery needs HTTPS; expected host:port or https://host:port",
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("expected host:port or https://host:port"))?;
    if authority.port_u16().is_none() {
        return Err(bad("no port (the API server's is usually 6443)"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials do not belong in the address"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("expected no path"));
    }
    Ok(uri)
}

impl Discovery {
    /// Runs discovery; see the module's documentation.
    ///
    /// # Errors
    /// [`DiscoveryError`], naming what failed or what was waited for.
    pub async fn run(&self) -> Result<ClusterInfo, DiscoveryError> {
        if self.ca == CaVerification::Pinned(Vec::new()) {
            return Err(DiscoveryError::NoPins);
        }
        let deadline = Instant::now() + self.timeout;
        let insecure = self.client(None)?;
        let first = self.signed_kubeconfig(&insecure, deadline).await?;
        let info = parse_kubeconfig(&first)?;
        let CaVerification::Pinned(pins) = &self.ca else {
            tracing::warn!(
                server = %self.server,
                "cluster-info's signature verifies; its CA is trusted without a pin, as asked"
            );
            return Ok(info);
        };
        let ders = certificates_in(&info.ca_pem)?;
        let hashes = ders
            .iter()
            .map(|d| CaCertHash::of_certificate(d))
            .collect::<Result<Vec<_>, _>>()?;
        // Only pinned certificates are trusted. kubeadm trusts the whole bundle once one of
        // them is pinned, so whoever knows the token could sign a cluster-info that adds
        // a CA of their own beside the real one, and then be the API server.
        let pinned: Vec<Vec<u8>> = ders
            .into_iter()
            .zip(&hashes)
            .filter(|(_, h)| pins.contains(h))
            .map(|(d, _)| d)
            .collect();
        if pinned.is_empty() {
            return Err(DiscoveryError::NotPinned {
                actual: join(&hashes),
                pinned: join(pins),
            });
        }
        let all_pinned = pinned.len() == hashes.len();
        let secure = self.client(Some(pinned.clone()))?;
        let second = self.signed_kubeconfig(&secure, deadline).await?;
        if second != first {
            return Err(DiscoveryError::Changed);
        }
        Ok(if all_pinned {
            info
        } else {
            ClusterInfo {
                ca_pem: pem_bundle(&pinned),
                ..info
            }
        })
    }

    /// An anonymous client: verifying the server against `roots`, or not at all.
    fn client(&self, roots: Option<Vec<Vec<u8>>>) -> Result<kube::Client, DiscoveryError> {
        let mut config = kube::Config::new(self.server.clone());
        config.accept_invalid_certs = roots.is_none();
        config.root_cert = roots;
        // Each attempt is bounded by what is left of the deadline instead.
        config.connect_timeout = Some(self.retry_interval.max(Duration::from_secs(10)));
        config.read_timeout = Some(self.retry_interval.max(Duration::from_secs(30)));
        kube::Client::try_from(config).map_err(|e| DiscoveryError::Tls {
            server: self.server.to_string(),
            reason: e.to_string(),
        })
    }

    /// cluster-info's kubeconfig once our token's signature is there and verifies.
    async fn signed_kubeconfig(
        &self,
        client: &kube::Client,
        deadline: Instant,
    ) -> Result<String, DiscoveryError> {
        let api: kube::Api<ConfigMap> =
            kube::Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
        let started = Instant::now();
        let id = self.token.id();
        let mut pauses = pauses(self.retry_interval);
        loop {
            let pause = pauses.next().unwrap_or(self.retry_interval);
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left, api.get(CLUSTER_INFO)).await;
            let last = match attempt {
                Ok(Ok(map)) => {
                    let data = map.data.unwrap_or_default();
                    let kubeconfig = data
                        .get(KUBECONFIG_KEY)
                        .filter(|k| !k.is_empty())
                        .ok_or(DiscoveryError::NoKubeconfig)?;
                    match data.get(&format!("{JWS_KEY_PREFIX}{id}")) {
                        Some(signature) => {
                            jws::verify_detached(signature, kubeconfig, id, self.token.secret())
                                .map_err(|reason| DiscoveryError::BadSignature {
                                    id: id.to_owned(),
                                    reason,
                                })?;
                            return Ok(kubeconfig.clone());
                        }
                        None => None,
                    }
                }
                Ok(Err(e)) => {
                    if let Some(reason) = permanent_tls_failure(&e) {
                        return Err(DiscoveryError::Tls {
                            server: self.server.to_string(),
                            reason,
                        });
                    }
                    Some(e.to_string())
                }
                Err(_) => Some("no answer before the deadline".to_owned()),
            };
            tracing::info!(
                server = %self.server,
                error = last.as_deref().unwrap_or("no signature for this token yet"),
                "discovery: will try again"
            );
            if Instant::now() + pause >= deadline {
                let waited = started.elapsed();
                return Err(match last {
                    None => DiscoveryError::NotSigned {
                        id: id.to_owned(),
                        waited,
                    },
                    Some(last) => DiscoveryError::Unreachable {
                        server: self.server.to_string(),
                        waited,
                        last,
                    },
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Certificates as a PEM bundle (64 characters a line).
fn pem_bundle(ders: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        for line in text.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn join(hashes: &[CaCertHash]) -> String {
    hashes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A TLS failure no retry mends: the server speaks no TLS, or (verifying) presents a
/// certificate the pinned CA did not sign.
fn permanent_tls_failure(error: &kube::Error) -> Option<String> {
    match rustls_error_in(error)? {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            Some("does not speak TLS: is it an HTTPS API server?".to_owned())
        }
        rustls::Error::InvalidCertificate(reason) => Some(format!(
            "presents a certificate the cluster CA does not verify: {reason:?}"
        )),
        other => Some(format!("TLS failed: {other}")),
    }
}

/// The rustls error behind `error`, through sources and the `io::Error`s hyper wraps it
/// in (whose `source()` skips the error they hold).
fn rustls_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return rustls_error_in(inner);
    }
    rustls_error_in(error.source()?)
}

/// The server and CA of cluster-info's kubeconfig, which must name exactly one cluster.
/// What `kubeadm token create --print-join-command` prints after `join`: the API server
/// cluster-info advertises (`host:port`) and the pin of each CA certificate it carries,
/// read with `client` (an administrator's).
///
/// # Errors
/// cluster-info cannot be read or is malformed.
pub async fn join_endpoint(
    client: &kube::Client,
) -> Result<(String, Vec<CaCertHash>), DiscoveryError> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), CLUSTER_INFO_NAMESPACE);
    let cm = api
        .get(CLUSTER_INFO)
        .await
        .map_err(|e| DiscoveryError::BadKubeconfig(format!("could not be read: {e}")))?;
    let text = cm
        .data
        .and_then(|d| d.get("kubeconfig").cloned())
        .ok_or_else(|| DiscoveryError::BadKubeconfig("is missing".into()))?;
    let info = parse_kubeconfig(&text)?;
    let server = info
        .server
        .strip_prefix("https://")
        .unwrap_or(&info.server)
        .trim_end_matches('/')
        .to_owned();
    Ok((server, CaCertHash::of_pem_bundle(&info.ca_pem)?))
}

fn parse_kubeconfig(text: &str) -> Result<ClusterInfo, DiscoveryError> {
    let bad = |what: &str| DiscoveryError::BadKubeconfig(what.to_owned());
    let config = Kubeconfig::from_yaml(text).map_err(|e| bad(&format!("does not parse: {e}")))?;
    let [named] = config.clusters.as_slice() else {
        return Err(bad(&format!(
            "has {} clusters; expected exactly one",
            config.clusters.len()
        )));
    };
    let cluster = named
        .cluster
        .as_ref()
        .ok_or_else(|| bad("has an empty cluster"))?;
    let server = cluster
        .server
        .clone()
        .filter(|s| s.starts_with("https://"))
        .ok_or_else(|| bad("has no https:// server"))?;
    let ca_b64 = cluster
        .certificate_authority_data
        .as_deref()
        .ok_or_else(|| bad("has no certificate-authority-data"))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .map_err(|_| bad("has certificate-authority-data that is not base64"))?;
    let ca_pem = String::from_utf8(ca).map_err(|_| bad("has a CA that is not PEM"))?;
    certificates_in(&ca_pem)?;
    Ok(ClusterInfo {
        server,
        ca_pem,
        kubeconfig: text.to_owned(),
    })
}
