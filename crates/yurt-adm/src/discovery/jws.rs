//! Detached JWS (RFC 7515 appendix F) with HS256, as kube-controller-manager's bootstrap
//! signer writes `jws-kubeconfig-<token-id>` into `cluster-info`: the protected header
//! `{"alg":"HS256","kid":"<token-id>"}`, an empty payload part, and an HMAC-SHA256 keyed
//! by the token's secret over `<header>.<base64url(kubeconfig)>`.
//!
//! Written here because the JOSE crates bring whole key-management stacks for what is
//! one HMAC; ring (already how this project does TLS) computes and checks it in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// Why a detached signature does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    /// Not `<header>..<signature>` in base64url.
    #[error("the signature is not a detached JWS (<header>..<signature>)")]
    NotDetached,
    /// A header other than HS256 for this token's ID.
    #[error("the signature's header is {0:?}, not HS256 for this token's ID")]
    Header(String),
    /// The MAC does not match: another secret, or other content.
    #[error("the signature does not match the content and the token's secret")]
    Mismatch,
}

/// The protected header the bootstrap signer writes (go-jose orders its keys).
fn header(token_id: &str) -> String {
    serde_json::json!({ "alg": "HS256", "kid": token_id }).to_string()
}

fn signing_input(header_b64: &str, content: &str) -> String {
    format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(content))
}

/// The detached signature of `content` with token `token_id`.`token_secret`, byte for
/// byte what the bootstrap signer stores.
pub fn sign_detached(content: &str, token_id: &str, token_secret: &str) -> String {
    let header_b64 = URL_SAFE_NO_PAD.encode(header(token_id));
    let key = hmac::Key::new(hmac::HMAC_SHA256, token_secret.as_bytes());
    let tag = hmac::sign(&key, signing_input(&header_b64, content).as_bytes());
    format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Checks `signature` over `content` with the token. The header must say HS256 and name
/// this token's ID, and nothing else; the MAC is compared in constant time.
///
/// # Errors
/// [`JwsError`] says which part is wrong.
pub fn verify_detached(
    signature: &str,
    content: &str,
    token_id: &str,
    token_secret: &str,
) -> Result<(), JwsError> {
    let mut parts = signature.split('.');
    let (Some(header_b64), Some(""), Some(mac_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::NotDetached);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwsError::NotDetached)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac_b64)
        .map_err(|_| JwsError::NotDetached)?;
    let parsed: serde_json::Value = serde_json::from_slice(&header_json)
        .map_err(|_| JwsError::Header(String::from_utf8_lossy(&header_json).into_owned()))?;
    let expected = serde_json::json!({ "alg": "HS256", "kid": token_id });
    if parsed != expected {
        return Err(JwsError::Header(
            String::from_utf8_lossy(&header_json).into_owned(),
        ));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, token_secret.as_bytes());
    hmac::verify(&key, signing_input(header_b64, content).as_bytes(), &mac)
        .map_err(|_| JwsError::Mismatch)
}
