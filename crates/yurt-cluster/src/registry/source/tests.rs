use std::io::Write;

use super::*;
use crate::image::{self, ImageSpec};

/// A one-layer image with a known config (no busybox needed).
fn built() -> BuiltImage {
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    layer
        .append_data(&mut header, "hello.txt", &b"hello"[..])
        .expect("layer");
    let layer = layer.into_inner().expect("layer");
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
    });
    BuiltImage {
        config: config.to_string().into_bytes(),
        layer,
    }
}

fn docker_archive_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    image::write_archive(
        &ImageSpec::busybox("docker.io/library/hello:1"),
        &built(),
        &path,
    )
    .expect("archive");
    path
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// An OCI layout folder holding `built()` with a gzip layer, optionally behind an index
/// of two platforms.
fn oci_layout_dir(dir: &Path, nested: bool) -> (PathBuf, String) {
    let root = dir.join("layout");
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| {
        let d = sha256_digest(data);
        std::fs::write(blobs.join(&d[7..]), data).expect("blob");
        (d, data.len())
    };
    let b = built();
    let (config, config_size) = put(&b.config);
    let (layer, layer_size) = put(&gzip(&b.layer));
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": layer_size}],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let mut top = json!({"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "annotations": {CONTAINERD_NAME: "docker.io/library/hello:2", OCI_REF_NAME: "2"}});
    if nested {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size,
             "platform": {"os": "linux", "architecture": "arm64"}},
        ]})
        .to_string();
        let (index_digest, index_size) = put(index.as_bytes());
        top = json!({"mediaType": OCI_INDEX, "digest": index_digest, "size": index_size,
            "annotations": {OCI_REF_NAME: "docker.io/library/hello:2"}});
    }
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("w");
    std::fs::write(
        root.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .expect("w");
    (root, manifest_digest)
}

/// `dir` as a tar file.
fn tar_of(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    b.append_dir_all(".", dir).expect("tar");
    b.finish().expect("tar");
}

/// `files` as the tar `out`.
fn write_tar(files: &BTreeMap<String, Bytes>, out: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    for (n, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, &d[..]).expect("append");
    }
    std::fs::write(out, b.into_inner().expect("tar")).expect("w");
}

fn err(path: &Path) -> String {
    load(path).expect_err("refused").to_string()
}

#[test]
fn a_docker_archive_becomes_an_oci_image_with_its_tags() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = load(&docker_archive_file(dir.path(), "a.tar")).expect("load");
    let b = built();
    assert_eq!(image.config.data, b.config);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0].media_type, OCI_LAYER);
    assert_eq!(image.layers[0].digest, sha256_digest(&b.layer));
    assert_eq!(image.names, vec!["docker.io/library/hello:1"]);
    let manifest: Value = serde_json::from_slice(&image.manifest).expect("json");
    assert_eq!(manifest["config"]["digest"], image.config.digest);
    assert_eq!(manifest["layers"][0]["size"], b.layer.len());
    assert_eq!(image.digest(), sha256_digest(&image.manifest));
    // The same as the image `yurt up` pushes from the build itself.
    assert_eq!(
        OciImage::from_built(&b).expect("built").digest(),
        image.digest()
    );
}

#[test]
fn a_gzipped_docker_archive_loads_too() {
    let dir = tempfile::tempdir().expect("tmp");
    let plain = std::fs::read(docker_archive_file(dir.path(), "a.tar")).expect("read");
    let gz = dir.path().join("a.tar.gz");
    std::fs::write(&gz, gzip(&plain)).expect("write");
    assert_eq!(
        load(&gz).expect("load").names,
        vec!["docker.io/library/hello:1"]
    );
}

#[test]
fn an_oci_layout_keeps_its_manifest_and_digest_as_folder_and_as_tar() {
    let dir = tempfile::tempdir().expect("tmp");
    let (root, digest) = oci_layout_dir(dir.path(), false);
    let image = load(&root).expect("folder");
    assert_eq!(image.digest(), digest, "pushed byte for byte");
    assert_eq!(image.layers[0].media_type, OCI_LAYER_GZIP);
    assert_eq!(image.names, vec!["docker.io/library/hello:2"]);
    let tarred = dir.path().join("layout.tar");
    tar_of(&root, &tarred);
    assert_eq!(load(&tarred).expect("tar").digest(), digest);
}

#[test]
fn an_index_of_platforms_gives_its_linux_amd64_image() {
    let dir = tempfile::tempdir().expect("tmp");
    let (root, digest) = oci_layout_dir(dir.path(), true);
    let image = load(&root).expect("load");
    assert_eq!(image.digest(), digest);
    assert_eq!(image.names, vec!["docker.io/library/hello:2"]);
}

#[test]
fn damaged_and_foreign_sources_are_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nothing.tar");
    assert!(err(&missing).contains("no such file"), "{}", err(&missing));

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just some text, not an archive at all").expect("w");
    assert!(err(&text).contains("not a"), "{}", err(&text));

    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).expect("mkdir");
    assert!(err(&plain).contains("yurt image build --from-dir"));

    // A layer changed after the config was written.
    let (root, _) = oci_layout_dir(dir.path(), false);
    let index: Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).expect("r")).expect("j");
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("d")
        .to_owned();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root.join("blobs/sha256").join(&manifest_digest[7..])).expect("r"),
    )
    .expect("j");
    let layer = root
        .join("blobs/sha256")
        .join(&manifest["layers"][0]["digest"].as_str().expect("d")[7..]);
    let mut data = std::fs::read(&layer).expect("r");
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&layer, data).expect("w");
    let e = err(&root);
    assert!(e.contains("damaged") && !e.contains('\n'), "{e}");

    // A docker-archive whose layer does not match the config's diff_id.
    let archive = docker_archive_file(dir.path(), "b.tar");
    let mut files = read_tar(&archive).expect("read");
    let name = files
        .keys()
        .find(|k| k.ends_with("layer.tar"))
        .cloned()
        .expect("layer");
    files.insert(name, Bytes::from_static(b"not the layer"));
    let rebuilt = dir.path().join("rebuilt.tar");
    write_tar(&files, &rebuilt);
    let e = err(&rebuilt);
    assert!(e.contains("does not match the image config"), "{e}");

    // Two images in one archive.
    let two = dir.path().join("two.tar");
    let mut files = read_tar(&archive).expect("read");
    let m: Value = serde_json::from_slice(&files["manifest.json"]).expect("json");
    let doubled = json!([m[0].clone(), m[0].clone()]).to_string();
    files.insert("manifest.json".into(), Bytes::from(doubled));
    write_tar(&files, &two);
    assert!(err(&two).contains("holds 2 images"), "{}", err(&two));
}

#[test]
fn archive_paths_cannot_leave_the_archive() {
    let files = Files::Tar(BTreeMap::from([(
        "manifest.json".to_owned(),
        Bytes::from_static(b"[]"),
    )]));
    assert!(files.read("../etc/passwd").unwrap_err().contains("outside"));
    assert!(files.read("/etc/passwd").unwrap_err().contains("outside"));
    assert_eq!(normalize(Path::new("a/../../b")), None);
    assert_eq!(normalize(Path::new("a/./b/../c")).as_deref(), Some("a/c"));
}
