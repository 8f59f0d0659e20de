//! What `yurt image push` reads, checked before anything is sent: a docker-archive
//! (`docker save`, `yurt image build`), or an OCI image layout (a folder, or a tar of
//! one, as `skopeo copy ... oci:` / `oci-archive:` write), either one gzip-compressed or
//! not. Every blob is checked against its digest and every layer against the config's
//! `diff_ids`, so a damaged archive is refused with one line here rather than failing
//! later, on a node, as an unpack error.
//!
//! The image is read into memory: images for a fleet on one machine are small, and the
//! push client sends blobs from memory anyway.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::image::BuiltImage;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2 (what registries and containerd also take).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotations that name an image in a layout (containerd's carries the whole reference;
/// the OCI one often only a tag).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One blob and how the manifest describes it.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The content.
    pub data: Bytes,
}

impl Blob {
    fn new(media_type: &str, data: Bytes) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&data),
            data,
        }
    }
}

/// An image ready to push: its manifest (pushed byte for byte, so its digest is the one
/// the source had, if it had one), config and layers.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The manifest as pushed.
    pub manifest: Bytes,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The config blob.
    pub config: Blob,
    /// The layer blobs, bottom first.
    pub layers: Vec<Blob>,
    /// Names the source gives the image (a docker-archive's `RepoTags`, a layout's name
    /// annotations).
    pub names: Vec<String>,
}

impl OciImage {
    /// The manifest's digest: what `name@sha256:...` pulls.
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// The bytes of every blob together.
    pub fn size(&self) -> usize {
        self.config.data.len() + self.layers.iter().map(|l| l.data.len()).sum::<usize>()
    }

    /// An image made by [`crate::image::build_image`].
    ///
    /// # Errors
    /// None in practice (the manifest is built here); kept for a uniform signature.
    pub fn from_built(built: &BuiltImage) -> Result<Self> {
        let config = Blob::new(OCI_CONFIG, Bytes::from(built.config.clone()));
        let layer = Blob::new(OCI_LAYER, Bytes::from(built.layer.clone()));
        Ok(Self::assemble(config, vec![layer], Vec::new()))
    }

    /// An OCI manifest for `config` and `layers`.
    fn assemble(config: Blob, layers: Vec<Blob>, names: Vec<String>) -> Self {
        let descriptor =
            |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.data.len()});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(&config),
            "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
        });
        Self {
            manifest: Bytes::from(manifest.to_string()),
            manifest_media_type: OCI_MANIFEST.to_owned(),
            config,
            layers,
            names,
        }
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", crate::image::sha256_hex(data))
}

/// Reads the image at `path`: an OCI layout folder, or a (gzip-compressed or plain) tar
/// holding a docker-archive or an OCI layout.
///
/// # Errors
/// One line naming `path` and what is wrong with it.
pub fn load(path: &Path) -> Result<OciImage> {
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    let files = if path.is_dir() {
        Files::Dir(path.to_owned())
    } else if path.is_file() {
        Files::Tar(read_tar(path).map_err(|e| {
            bad(format!(
                "neither a docker-archive nor an OCI image layout tar ({e})"
            ))
        })?)
    } else {
        return Err(bad("no such file or folder".into()));
    };
    if files.has("manifest.json") {
        docker_archive(&files)
    } else if files.has("oci-layout") && files.has("index.json") {
        oci_layout(&files)
    } else if path.is_dir() {
        Err(
            "not an OCI image layout (no oci-layout and index.json); to make an image of a folder's files use `yurt image build --from-dir`"
                .to_owned(),
        )
    } else {
        Err("neither a docker-archive (no manifest.json) nor an OCI image layout (no oci-layout and index.json)".to_owned())
    }
    .map_err(bad)
}

/// The source's files: a folder, or a tar read into memory (paths without `./`).
enum Files {
    Dir(PathBuf),
    Tar(BTreeMap<String, Bytes>),
}

impl Files {
    fn has(&self, name: &str) -> bool {
        match self {
            Self::Dir(d) => d.join(name).is_file(),
            Self::Tar(m) => m.contains_key(name),
        }
    }

    fn read(&self, name: &str) -> std::result::Result<Bytes, String> {
        if name.split('/').any(|c| c == "..") || name.starts_with('/') {
            return Err(format!("refers to {name:?} outside the archive"));
        }
        match self {
            Self::Dir(d) => std::fs::read(d.join(name))
                .map(Bytes::from)
                .map_err(|e| format!("{name}: {e}")),
            Self::Tar(m) => m
                .get(name.trim_start_matches("./"))
                .cloned()
                .ok_or_else(|| format!("{name} is missing")),
        }
    }

    fn json(&self, name: &str) -> std::result::Result<Value, String> {
        let data = self.read(name)?;
        serde_json::from_slice(&data).map_err(|e| format!("{name} is not valid JSON: {e}"))
    }
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Every regular file of the tar at `path` (gunzipped first if need be); symbolic links
/// (`docker save` links layers it holds twice) resolve to their target's content.
fn read_tar(path: &Path) -> std::result::Result<BTreeMap<String, Bytes>, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let data = if is_gzip(&raw) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("not a valid gzip file: {e}"))?;
        out
    } else {
        raw
    };
    let mut files = BTreeMap::new();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(data.as_slice());
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a valid tar archive: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("not a valid tar archive: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut content = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| format!("not a valid tar archive ({name}): {e}"))?;
                files.insert(name, Bytes::from(content));
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().into_owned();
                    links.push((name, target, entry.header().entry_type()));
                }
            }
            _ => {}
        }
    }
    for (name, target, kind) in links {
        // A symlink is relative to its own folder; a hard link names an archive path.
        let resolved = if kind == tar::EntryType::Symlink {
            let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
            normalize(&dir.join(&target))
        } else {
            Some(target.trim_start_matches("./").to_owned())
        };
        if let Some(content) = resolved.and_then(|t| files.get(&t).cloned()) {
            files.insert(name, content);
        }
    }
    if files.is_empty() {
        return Err("not a tar archive, or an empty one".into());
    }
    Ok(files)
}

/// `a/b/../c` as `a/c`; `None` if it climbs out of the archive.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// The config's `rootfs.diff_ids`: one per layer, the digest of its uncompressed tar.
fn check_layers(config: &Blob, layers: &[Blob]) -> std::result::Result<(), String> {
    let parsed: Value = serde_json::from_slice(&config.data)
        .map_err(|e| format!("the image config is not valid JSON: {e}"))?;
    let diff_ids: Vec<&str> = parsed["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "the image config lists {} layers (rootfs.diff_ids), the manifest {}",
            diff_ids.len(),
            layers.len()
        ));
    }
    for (i, (layer, want)) in layers.iter().zip(diff_ids).enumerate() {
        let got = if is_gzip(&layer.data) {
            let mut hasher = Sha256::new();
            let mut decoder = flate2::read::GzDecoder::new(&layer.data[..]);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = decoder
                    .read(&mut buf)
                    .map_err(|e| format!("layer {} is not valid gzip: {e}", i + 1))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256:{hex}")
        } else {
            sha256_digest(&layer.data)
        };
        if got != want {
            return Err(format!(
                "layer {} does not match the image config (diff_id {want}, content {got}): the archive is damaged",
                i + 1
            ));
        }
    }
    Ok(())
}

/// `docker save`'s format: `manifest.json` lists each image's config and layer files.
fn docker_archive(files: &Files) -> std::result::Result<OciImage, String> {
    let manifest = files.json("manifest.json")?;
    let images = manifest
        .as_array()
        .ok_or("manifest.json is not a list of images")?;
    let image = match images.as_slice() {
        [one] => one,
        [] => return Err("manifest.json lists no image".into()),
        more => {
            return Err(format!(
                "holds {} images; push one archive per image",
                more.len()
            ));
        }
    };
    let config_file = image["Config"]
        .as_str()
        .ok_or("manifest.json has no Config")?;
    let config = Blob::new(OCI_CONFIG, files.read(config_file)?);
    let layer_files = image["Layers"]
        .as_array()
        .ok_or("manifest.json has no Layers")?;
    let mut layers = Vec::new();
    for l in layer_files {
        let name = l
            .as_str()
            .ok_or("manifest.json has a Layers entry that is not a string")?;
        let data = files.read(name)?;
        let media_type = if is_gzip(&data) {
            OCI_LAYER_GZIP
        } else {
            OCI_LAYER
        };
        layers.push(Blob::new(media_type, data));
    }
    check_layers(&config, &layers)?;
    let names = image["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(OciImage::assemble(config, layers, names))
}

/// A blob of a layout, checked against `descriptor`'s digest and size.
fn layout_blob(files: &Files, descriptor: &Value) -> std::result::Result<Blob, String> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or("a descriptor without a digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported digest {digest:?} (sha256 only)"))?;
    let data = files.read(&format!("blobs/sha256/{hex}"))?;
    let got = sha256_digest(&data);
    if got != digest {
        return Err(format!(
            "blob {digest} has other content ({got}): the layout is damaged"
        ));
    }
    if let Some(size) = descriptor["size"].as_u64()
        && size != data.len() as u64
    {
        return Err(format!(
            "blob {digest} is {} bytes, its descriptor says {size}",
            data.len()
        ));
    }
    let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
    Ok(Blob {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        data,
    })
}

fn is_linux_amd64(d: &Value) -> bool {
    d["platform"]["os"] == "linux" && d["platform"]["architecture"] == "amd64"
}

/// The one image of a list of descriptors: the only one, or the only linux/amd64 one.
fn pick<'a>(descriptors: &'a [Value], what: &str) -> std::result::Result<&'a Value, String> {
    match descriptors {
        [one] => Ok(one),
        [] => Err(format!("{what} lists no image")),
        many => {
            let amd64: Vec<&Value> = many.iter().filter(|d| is_linux_amd64(d)).collect();
            match amd64.as_slice() {
                [one] => Ok(one),
                _ => Err(format!(
                    "{what} lists {} images and not exactly one for linux/amd64; push one layout per image",
                    many.len()
                )),
            }
        }
    }
}

fn names_of(descriptor: &Value) -> Vec<String> {
    let a = &descriptor["annotations"];
    let mut names = Vec::new();
    if let Some(n) = a[CONTAINERD_NAME].as_str() {
        names.push(n.to_owned());
    }
    // Often only a tag ("latest"): a name only if it has a repository in it.
    if let Some(n) = a[OCI_REF_NAME].as_str()
        && (n.contains('/') || n.contains(':'))
        && !names.iter().any(|m| m == n)
    {
        names.push(n.to_owned());
    }
    names
}

/// An OCI image layout: `index.json` points at an image manifest, or at an index of
/// them (one per platform: linux/amd64 is taken).
fn oci_layout(files: &Files) -> std::result::Result<OciImage, String> {
    let layout = files.json("oci-layout")?;
    if layout["imageLayoutVersion"].as_str().is_none() {
        return Err("oci-layout has no imageLayoutVersion".into());
    }
    let index = files.json("index.json")?;
    let listed = index["manifests"].as_array().cloned().unwrap_or_default();
    let mut descriptor = pick(&listed, "index.json")?.clone();
    let names = names_of(&descriptor);
    // One level of nesting: an index of per-platform manifests.
    for _ in 0..2 {
        let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
        if media_type != OCI_INDEX && media_type != DOCKER_LIST {
            break;
        }
        let nested = layout_blob(files, &descriptor)?;
        let parsed: Value = serde_json::from_slice(&nested.data)
            .map_err(|e| format!("image index {} is not valid JSON: {e}", nested.digest))?;
        let listed = parsed["manifests"].as_array().cloned().unwrap_or_default();
        descriptor = pick(&listed, &format!("image index {}", nested.digest))?.clone();
    }
    let manifest_blob = layout_blob(files, &descriptor)?;
    let manifest: Value = serde_json::from_slice(&manifest_blob.data)
        .map_err(|e| format!("manifest {} is not valid JSON: {e}", manifest_blob.digest))?;
    let media_type = manifest["mediaType"]
        .as_str()
        .or(descriptor["mediaType"].as_str())
        .unwrap_or(OCI_MANIFEST)
        .to_owned();
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(format!(
            "manifest {} is a {media_type}, not an image manifest",
            manifest_blob.digest
        ));
    }
    let config = layout_blob(files, &manifest["config"])?;
    let mut layers = Vec::new();
    for d in manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        layers.push(layout_blob(files, d)?);
    }
    check_layers(&config, &layers)?;
    Ok(OciImage {
        manifest: manifest_blob.data,
        manifest_media_type: media_type,
        config,
        layers,
        names,
    })
}

#[cfg(test)]
mod tests;
