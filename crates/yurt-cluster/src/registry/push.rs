//! Pushing an image to the fleet registry's push process with `oci-client` (ADR 005):
//! blobs the registry already holds are not sent again, then the manifest is put by
//! its digest and under each tag.

use http::HeaderValue;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::PushCredentials;
use super::source::{Blob, OciImage};
use crate::error::{Error, Result};

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// `host:port` of the push process.
    pub registry: String,
    /// The fleet CA (PEM): the only root the client trusts.
    pub ca_pem: Vec<u8>,
    /// The push process's user and password.
    pub credentials: PushCredentials,
}

impl PushTarget {
    /// The push process of the fleet in `paths`.
    ///
    /// # Errors
    /// The fleet CA or the push password cannot be read (no fleet was ever started
    /// there).
    pub fn for_fleet(paths: &crate::paths::FleetPaths, plan: &crate::spec::Plan) -> Result<Self> {
        let pki = crate::pki::PkiPaths::new(paths);
        let ca = pki.ca_cert();
        Ok(Self {
            registry: format!("{}:{}", plan.cloud_host_side_ip().addr, super::PUSH_PORT),
            ca_pem: std::fs::read(&ca).map_err(|e| Error::io(&ca, e))?,
            credentials: super::push_credentials(pki.dir())?,
        })
    }
}

/// A client for `target` (`Client::new` would fall back to the system's roots when the
/// configuration is refused; `try_from` says why instead).
fn client(target: &PushTarget) -> Result<Client> {
    // reqwest builds its TLS from the process's default provider: ring, as everywhere
    // else in yurt (an error means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(ClientConfig {
        protocol: ClientProtocol::Https,
        tls_certs_only: vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: target.ca_pem.clone(),
        }],
        ..ClientConfig::default()
    })
    .map_err(|e| failed(&target.registry, e))
}

fn failed(reference: &str, e: impl Into<Failure>) -> Error {
    let what = match e.into() {
        Failure::Client(e) => describe(&e),
        Failure::Other(s) => s,
    };
    // One line, whatever the registry put in its message.
    let what = what.split_whitespace().collect::<Vec<_>>().join(" ");
    Error::Invalid(format!("pushing {reference}: {what}"))
}

/// Why a push failed: the client's error, or another one.
enum Failure {
    Client(OciDistributionError),
    Other(String),
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Self {
        Self::Client(e)
    }
}

impl From<oci_client::ParseError> for Failure {
    fn from(e: oci_client::ParseError) -> Self {
        Self::Other(e.to_string())
    }
}

impl From<http::header::InvalidHeaderValue> for Failure {
    fn from(e: http::header::InvalidHeaderValue) -> Self {
        Self::Other(e.to_string())
    }
}

/// The registry's own words for a failure (its error envelope's details: "no space left
/// on device"), not the client's rendering with the upload URL and its state token.
fn describe(e: &OciDistributionError) -> String {
    let envelope_words = |body: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let words: Vec<String> = v["errors"]
            .as_array()?
            .iter()
            .map(|e| match e["detail"].as_str() {
                Some(d) if !d.is_empty() => d.to_owned(),
                _ => e["message"].as_str().unwrap_or("unknown error").to_owned(),
            })
            .collect();
        (!words.is_empty()).then(|| words.join("; "))
    };
    match e {
        OciDistributionError::ServerError { code, message, .. } => format!(
            "the registry answered {code}: {}",
            envelope_words(message).unwrap_or_else(|| message.clone())
        ),
        OciDistributionError::RegistryError { envelope, .. } => {
            let words: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| match e.detail.as_str() {
                    Some(d) if !d.is_empty() => format!("{} ({d})", e.message),
                    _ => e.message.clone(),
                })
                .collect();
            format!("the registry refused: {}", words.join("; "))
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            "the registry refused the fleet's push password".to_owned()
        }
        OciDistributionError::RequestError(r) => {
            let mut text = r.to_string();
            let mut source = std::error::Error::source(r);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            format!(
                "the registry does not answer ({text}); is the fleet up? `yurt fleet status` says"
            )
        }
        other => other.to_string(),
    }
}

/// Pushes `image` to `target` as `repository` (`library/busybox`) with each of `tags`
/// (none: by digest only); returns the manifest's digest (`sha256:...`), the same for
/// every tag. Blobs the registry holds already are not sent again. `progress` hears of
/// each blob.
///
/// # Errors
/// The registry refused (bad credentials, full disk) or could not be reached; a bad
/// repository or tag.
pub async fn push(
    target: &PushTarget,
    image: &OciImage,
    repository: &str,
    tags: &[&str],
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<String> {
    let client = client(target)?;
    let auth = RegistryAuth::Basic(
        target.credentials.user.clone(),
        target.credentials.password.clone(),
    );
    let digest = image.digest();
    let by_digest = format!("{}/{repository}@{digest}", target.registry);
    let reference: Reference = by_digest.parse().map_err(|e| failed(&by_digest, e))?;
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| failed(&by_digest, e))?;
    let blobs: Vec<&Blob> = std::iter::once(&image.config)
        .chain(&image.layers)
        .collect();
    for (i, blob) in blobs.iter().enumerate() {
        let present = client
            .blob_exists(&reference, &blob.digest)
            .await
            .map_err(|e| failed(&by_digest, e))?;
        let short = blob.digest.get(7..19).unwrap_or(&blob.digest);
        if present {
            progress(&format!(
                "{repository}: blob {}/{} {short} already there",
                i + 1,
                blobs.len()
            ));
            continue;
        }
        progress(&format!(
            "{repository}: blob {}/{} {short} ({})",
            i + 1,
            blobs.len(),
            human_size(blob.data.len())
        ));
        client
            .push_blob(&reference, blob.data.clone(), &blob.digest)
            .await
            .map_err(|e| failed(&by_digest, e))?;
    }
    let content_type =
        HeaderValue::from_str(&image.manifest_media_type).map_err(|e| failed(&by_digest, e))?;
    let mut references = vec![reference];
    for tag in tags {
        let name = format!("{}/{repository}:{tag}", target.registry);
        references.push(name.parse().map_err(|e| failed(&name, e))?);
    }
    // By digest first: a tag never points at a manifest the registry does not hold.
    for r in &references {
        client
            .push_manifest_raw(r, image.manifest.clone(), content_type.clone())
            .await
            .map_err(|e| failed(&r.whole(), e))?;
    }
    Ok(digest)
}

/// `12.3 MiB`.
pub fn human_size(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_failure_is_told_in_one_line_in_the_registry_s_words() {
        let full = OciDistributionError::ServerError {
            code: 500,
            url: "https://10.255.0.2:5001/v2/e2e/big/blobs/uploads/42e1?_state=T7cs".into(),
            message: "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"unknown error\",\"detail\":\"write /r/data: no space left on device\"}]}\n".into(),
        };
        let e = failed("reg:5001/e2e/big@sha256:00", full).to_string();
        assert_eq!(
            e,
            "pushing reg:5001/e2e/big@sha256:00: the registry answered 500: write /r/data: no space left on device"
        );
        let refused = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert!(failed("r", refused).to_string().contains("push password"));
        let odd = OciDistributionError::ServerError {
            code: 502,
            url: "u".into(),
            message: "bad\ngateway".into(),
        };
        assert_eq!(
            failed("r", odd).to_string(),
            "pushing r: the registry answered 502: bad gateway"
        );
    }
}
