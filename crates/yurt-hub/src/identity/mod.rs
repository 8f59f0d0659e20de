//! Who is calling on the pod-facing port (ADR 004).
//!
//! A pod authenticates with its service-account token. Online, the API server judges
//! every request; the hub only decides under which identity a response may be cached.
//! Offline, the hub must judge the token itself: it verifies the token's signature with
//! the service-account issuer's public keys (fetched while online from
//! `/openid/v1/jwks`, kept in the cache for offline restarts), its issuer, audience,
//! expiry and claims. A caller is then served only what was read online under its own
//! service account; a request with no token, or with a token the hub cannot prove, is
//! never served from the cache.
//!
//! The `User-Agent` never selects an identity: it only picks filters and whether to
//! cache at all.

mod keys;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

pub use keys::{IssuerKeys, KeysError, keep_keys};

/// Issuer of the legacy, Secret-based service-account tokens (no expiry, no audience).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Most verified tokens remembered (so a token is checked once, not per request).
const MEMO_MAX: usize = 4096;

/// A proven service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pod the token is bound to (bound tokens only).
    pub pod: Option<BoundPod>,
    /// When the token expires (seconds since the epoch; legacy tokens never do).
    pub expires: Option<i64>,
}

impl ServiceAccount {
    /// The Kubernetes user name, `system:serviceaccount:<ns>:<name>`.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The cache owner of what this account reads. User-Agent components never contain
    /// `:` ([`crate::request::component`]), so no client can name this owner.
    pub fn cache_owner(&self) -> String {
        format!("sa:{}:{}", self.namespace, self.name)
    }
}

/// The pod a bound token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    /// Pod name (in the account's namespace).
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// Why a token is not accepted by the hub on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The issuer's keys have never been fetched.
    #[error("the hub has not yet fetched the service-account issuer's keys")]
    NoKeys,
    /// Not a JWT.
    #[error("the token is not a JSON Web Token: {0}")]
    Malformed(String),
    /// No known key verifies the signature.
    #[error("the token's signature does not verify with the service-account issuer's keys")]
    BadSignature,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Issued by someone else.
    #[error("the token's issuer {0:?} is not this cluster's service-account issuer")]
    UnknownIssuer(String),
    /// Meant for someone else.
    #[error("the token's audience is not the API server's")]
    WrongAudience,
    /// Missing or inconsistent service-account claims.
    #[error("the token's claims are incomplete: {0}")]
    Claims(&'static str),
    /// The API server refused this token while online.
    #[error("the API server refused this token")]
    Revoked,
}

/// A caller of the hub.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A node component on the node-local port (forwarded as the node).
    Node,
    /// A pod-port request without a token.
    Anonymous,
    /// A pod-port request whose token the hub verified.
    ServiceAccount(Arc<ServiceAccount>, TokenHash),
    /// A pod-port request with a token the hub cannot prove.
    Unproven(TokenError, TokenHash),
}

/// SHA-256 of a bearer token: how the hub remembers tokens without keeping them.
pub type TokenHash = [u8; 32];

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Verifies service-account tokens and remembers the answers.
#[derive(Debug)]
pub struct Verifier {
    keys: RwLock<Option<Arc<IssuerKeys>>>,
    audiences: Vec<String>,
    memo: Mutex<HashMap<TokenHash, Arc<ServiceAccount>>>,
    revoked: Mutex<HashSet<TokenHash>>,
}

impl Verifier {
    /// A verifier accepting bound tokens for `audiences` (empty: the issuer itself, the
    /// API server's default `--api-audiences`).
    pub fn new(audiences: Vec<String>) -> Self {
        Self {
            keys: RwLock::new(None),
            audiences,
            memo: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
        }
    }

    /// Installs the issuer's current keys.
    pub fn set_keys(&self, keys: IssuerKeys) {
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::new(keys));
        }
        if let Ok(mut m) = self.memo.lock() {
            m.clear();
        }
    }

    /// Whether keys are known.
    pub fn has_keys(&self) -> bool {
        self.keys.read().is_ok_and(|k| k.is_some())
    }

    /// Who a pod-port request is, from its `Authorization` header.
    pub fn caller(&self, authorization: Option<&str>, now: i64) -> Caller {
        let Some(token) = bearer(authorization) else {
            return Caller::Anonymous;
        };
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        match self.verify(token, &hash, now) {
            Ok(sa) => Caller::ServiceAccount(sa, hash),
            Err(e) => Caller::Unproven(e, hash),
        }
    }

    fn verify(
        &self,
        token: &str,
        hash: &TokenHash,
        now: i64,
    ) -> Result<Arc<ServiceAccount>, TokenError> {
        if self.revoked.lock().is_ok_and(|r| r.contains(hash)) {
            return Err(TokenError::Revoked);
        }
        if let Some(sa) = self.memo.lock().ok().and_then(|m| m.get(hash).cloned()) {
            return match sa.expires {
                Some(exp) if exp <= now => Err(TokenError::Expired),
                _ => Ok(sa),
            };
        }
        let keys = self
            .keys
            .read()
            .ok()
            .and_then(|k| k.clone())
            .ok_or(TokenError::NoKeys)?;
        let sa = Arc::new(keys.verify(token, &self.audiences, now)?);
        if let Ok(mut m) = self.memo.lock() {
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(*hash, sa.clone());
        }
        Ok(sa)
    }

    /// Records that the API server refused a token (a deleted Secret or account): the
    /// hub refuses it offline from now on.
    pub fn revoke(&self, hash: &TokenHash) {
        if let Ok(mut m) = self.memo.lock() {
            m.remove(hash);
        }
        if let Ok(mut r) = self.revoked.lock() {
            if r.len() >= MEMO_MAX {
                r.clear();
            }
            r.insert(*hash);
        }
    }
}

/// Reads a service account out of verified claims.
///
/// # Errors
/// The [`TokenError`] naming what does not fit.
pub fn service_account_of(
    claims: &serde_json::Value,
    issuer: &str,
    audiences: &[String],
    now: i64,
) -> Result<ServiceAccount, TokenError> {
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let iss = claims.get("iss").and_then(text).unwrap_or_default();
    let expires = claims.get("exp").and_then(serde_json::Value::as_i64);
    if expires.is_some_and(|e| e <= now) {
        return Err(TokenError::Expired);
    }
    let sa = if iss == LEGACY_ISSUER {
        let claim = |k: &str| {
            claims
                .get(format!("kubernetes.io/serviceaccount/{k}"))
                .and_then(text)
        };
        claim("secret.name").ok_or(TokenError::Claims("secret.name"))?;
        ServiceAccount {
            namespace: claim("namespace").ok_or(TokenError::Claims("namespace"))?,
            name: claim("service-account.name")
                .ok_or(TokenError::Claims("service-account.name"))?,
            pod: None,
            expires,
        }
    } else if iss == issuer {
        let aud: Vec<String> = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let accepted = |a: &String| {
            if audiences.is_empty() {
                a == issuer
            } else {
                audiences.contains(a)
            }
        };
        if !aud.iter().any(accepted) {
            return Err(TokenError::WrongAudience);
        }
        if expires.is_none() {
            return Err(TokenError::Claims("exp"));
        }
        let k8s = claims
            .get("kubernetes.io")
            .ok_or(TokenError::Claims("kubernetes.io"))?;
        let pod = match k8s.get("pod") {
            Some(p) => Some(BoundPod {
                name: p
                    .get("name")
                    .and_then(text)
                    .ok_or(TokenError::Claims("pod.name"))?,
                uid: p
                    .get("uid")
                    .and_then(text)
                    .ok_or(TokenError::Claims("pod.uid"))?,
            }),
            None => None,
        };
        ServiceAccount {
            namespace: k8s
                .get("namespace")
                .and_then(text)
                .ok_or(TokenError::Claims("namespace"))?,
            name: k8s
                .get("serviceaccount")
                .and_then(|s| s.get("name"))
                .and_then(text)
                .ok_or(TokenError::Claims("serviceaccount.name"))?,
            pod,
            expires,
        }
    } else {
        return Err(TokenError::UnknownIssuer(iss));
    };
    if claims.get("sub").and_then(text).as_deref() != Some(sa.user().as_str()) {
        return Err(TokenError::Claims("sub"));
    }
    Ok(sa)
}

#[cfg(test)]
mod tests;
