//! The service-account issuer's public keys: parsed from the API server's discovery
//! documents (`/.well-known/openid-configuration` and `/openid/v1/jwks`, served by
//! Kubernetes 1.20+ with `--service-account-issuer`), and kept current while online.
//!
//! The hub fetches them through itself as a cache agent, so they are in the durable
//! cache and an offline restart still verifies tokens.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio_util::sync::CancellationToken;

use super::{ServiceAccount, TokenError, Verifier, service_account_of};

/// Path of the issuer's discovery document.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
/// Path of the issuer's key set.
pub const JWKS: &str = "/openid/v1/jwks";

/// Why the issuer's documents are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Not the expected JSON.
    #[error("{document}: {reason}")]
    Document {
        /// Which document.
        document: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Could not be fetched.
    #[error("fetching {document}: {source}")]
    Fetch {
        /// Which document.
        document: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The issuer and its verification keys.
pub struct IssuerKeys {
    issuer: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn doc_err(document: &'static str, reason: impl ToString) -> KeysError {
    KeysError::Document {
        document,
        reason: reason.to_string(),
    }
}

impl IssuerKeys {
    /// Parses the discovery document and the key set. Keys of a kind the hub cannot
    /// use are skipped; a set with no usable key is an error.
    ///
    /// # Errors
    /// [`KeysError::Document`] for malformed documents or no usable key.
    pub fn from_documents(openid_configuration: &[u8], jwks: &[u8]) -> Result<Self, KeysError> {
        let config: serde_json::Value = serde_json::from_slice(openid_configuration)
            .map_err(|e| doc_err(OPENID_CONFIGURATION, e))?;
        let issuer = config
            .get("issuer")
            .and_then(serde_json::Value::as_str)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| doc_err(OPENID_CONFIGURATION, "no issuer"))?
            .to_owned();
        let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| doc_err(JWKS, e))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                    (AlgorithmParameters::RSA(_), _) => Algorithm::RS256,
                    (AlgorithmParameters::EllipticCurve(ec), _) => match ec.curve {
                        EllipticCurve::P256 => Algorithm::ES256,
                        EllipticCurve::P384 => Algorithm::ES384,
                        _ => return None,
                    },
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    id: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(doc_err(JWKS, "no usable RSA or ECDSA key"));
        }
        Ok(Self { issuer, keys })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token`'s signature and claims.
    ///
    /// # Errors
    /// The [`TokenError`] that refuses it.
    pub fn verify(
        &self,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<ServiceAccount, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.id) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        for k in candidates {
            let mut validation = Validation::new(k.algorithm);
            // Legacy tokens carry neither expiry nor audience: the claims check below
            // decides what each issuer's tokens must carry.
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_aud = false;
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &validation) {
                Ok(data) => return service_account_of(&data.claims, &self.issuer, audiences, now),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                }
                Err(e) => return Err(TokenError::Malformed(e.to_string())),
            }
        }
        Err(TokenError::BadSignature)
    }
}

async fn fetch(client: &kube::Client, document: &'static str) -> Result<Vec<u8>, KeysError> {
    let request = http::Request::get(document)
        .body(Vec::new())
        .map_err(|e| doc_err(document, e))?;
    client
        .request_text(request)
        .await
        .map(String::into_bytes)
        .map_err(|source| KeysError::Fetch { document, source })
}

/// Fetches the issuer's keys into `verifier` now and every `refresh` until `shutdown`,
/// retrying every `retry` until the first success. `client` talks to the hub itself,
/// so the documents are cached and available offline.
pub async fn keep_keys(
    verifier: Arc<Verifier>,
    client: kube::Client,
    refresh: Duration,
    retry: Duration,
    shutdown: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let result = async {
            let config = fetch(&client, OPENID_CONFIGURATION).await?;
            let jwks = fetch(&client, JWKS).await?;
            IssuerKeys::from_documents(&config, &jwks)
        }
        .await;
        let wait = match result {
            Ok(keys) => {
                if last_error.take().is_some() || !verifier.has_keys() {
                    tracing::info!(
                        issuer = keys.issuer(),
                        keys = keys.keys.len(),
                        "service-account issuer keys loaded"
                    );
                }
                verifier.set_keys(keys);
                refresh
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "service-account issuer keys not loaded; pod tokens cannot be verified offline until they are");
                }
                last_error = Some(message);
                if verifier.has_keys() {
                    refresh.min(retry * 6)
                } else {
                    retry
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
