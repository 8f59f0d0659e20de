//! Pushing a built image to the fleet registry's push process with `oci-client` (ADR
//! 005): blobs the registry already holds are not sent again, then the manifest is put
//! under each tag.

use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer,
};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::PushCredentials;
use crate::error::{Error, Result};
use crate::image::BuiltImage;

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

/// Pushes `image` to `target` as `repository` (`library/busybox`) with each of `tags`;
/// returns the manifest's digest (`sha256:...`), the same for every tag.
///
/// # Errors
/// The registry refused (bad credentials, full disk) or could not be reached; a bad
/// repository or tag.
pub async fn push(
    target: &PushTarget,
    image: &BuiltImage,
    repository: &str,
    tags: &[&str],
) -> Result<String> {
    let client = client(target)?;
    let auth = RegistryAuth::Basic(
        target.credentials.user.clone(),
        target.credentials.password.clone(),
    );
    let layer = ImageLayer::new(image.layer.clone(), IMAGE_LAYER_MEDIA_TYPE.to_owned(), None);
    let config = Config::new(
        image.config.clone(),
        IMAGE_CONFIG_MEDIA_TYPE.to_owned(),
        None,
    );
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    let mut digest = String::new();
    for (i, tag) in tags.iter().enumerate() {
        let name = format!("{}/{repository}:{tag}", target.registry);
        let reference: Reference = name.parse().map_err(|e| failed(&name, e))?;
        if i == 0 {
            client
                .auth(&reference, &auth, RegistryOperation::Push)
                .await
                .map_err(|e| failed(&name, e))?;
            let blobs = [
                (&manifest.layers[0].digest, &image.layer),
                (&manifest.config.digest, &image.config),
            ];
            for (blob_digest, data) in blobs {
                let present = client
                    .blob_exists(&reference, blob_digest)
                    .await
                    .map_err(|e| failed(&name, e))?;
                if !present {
                    client
                        .push_blob(&reference, data.clone(), blob_digest)
                        .await
                        .map_err(|e| failed(&name, e))?;
                }
            }
        }
        client
            .push_manifest(&reference, &OciManifest::Image(manifest.clone()))
            .await
            .map_err(|e| failed(&name, e))?;
        if digest.is_empty() {
            digest = client
                .fetch_manifest_digest(&reference, &auth)
                .await
                .map_err(|e| failed(&name, e))?;
        }
    }
    Ok(digest)
}
