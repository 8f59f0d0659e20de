//! Pushing an image to the fleet registry's push process with `oci-client` (ADR 005):
//! blobs the registry already holds are not sent again, then the manifest is put by
//! its digest and under each tag.

use http::HeaderValue;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
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

fn failed(reference: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("pushing {reference}: {e}"))
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
