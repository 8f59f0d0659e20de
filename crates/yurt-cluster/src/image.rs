//! Container images built here from Debian's static busybox plus any files (and
//! dynamically linked Debian programs with their shared libraries, such as curl):
//! `docker save`-format archives imported into each node's containerd with `ctr`, and
//! the same config and layer pushed to the fleet's registry ([`crate::registry`]).
//!
//! An archive holds `manifest.json`, the image config (`<sha256>.json`) and one
//! uncompressed layer; containerd's importer accepts it as-is. Builds are reproducible:
//! fixed timestamps and sorted entries, so the same inputs give the same image ID.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{Error, Result};

/// Where the static busybox of the `busybox-static` package lives.
pub const BUSYBOX: &str = "/bin/busybox";
/// The pause (sandbox) image every node uses.
pub const PAUSE_IMAGE: &str = "yurt.local/pause:1";
/// A plain busybox image.
pub const BUSYBOX_IMAGE: &str = "yurt.local/busybox:1";
/// Where Debian's curl lives (the `curl` package).
pub const CURL: &str = "/usr/bin/curl";
/// Busybox plus Debian's curl: a TLS client for pods (busybox's own TLS client offers
/// no SHA-2 signature schemes, so it cannot talk to a rustls server such as the hub's
/// pod port).
pub const CURL_IMAGE: &str = "yurt.local/curl:1";

/// Fixed modification time of every entry (reproducible builds).
const MTIME: u64 = 1_600_000_000;

/// A file to put into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path inside the image, relative (`www/index.html`).
    pub path: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Reference, `registry/name:tag` (for example `yurt.local/web:1`).
    pub reference: String,
    /// Entrypoint (`None` for none).
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    pub cmd: Option<Vec<String>>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Extra files on top of busybox.
    pub files: Vec<ImageFile>,
}

impl ImageSpec {
    /// A busybox image named `reference` running `sh` by default.
    pub fn busybox(reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            entrypoint: None,
            cmd: Some(vec!["sh".into()]),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            files: Vec::new(),
        }
    }

    /// [`CURL_IMAGE`]: busybox plus Debian's curl and its shared libraries.
    ///
    /// # Errors
    /// If curl is not installed or a library it needs cannot be read.
    pub fn curl() -> Result<Self> {
        Self::busybox(CURL_IMAGE).with_program(Path::new(CURL))
    }

    /// Adds the dynamically linked `program` at its own path, with the dynamic loader and
    /// every shared library it loads, each at the path `ldd` resolves it to (the
    /// loader's default search folders, so no `ld.so.cache` is needed).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `ldd` fails or a library is not found; I/O errors.
    pub fn with_program(self, program: &Path) -> Result<Self> {
        self.with_program_at(program, program)
    }

    /// As [`Self::with_program`], with the program itself at `dest` in the image.
    ///
    /// # Errors
    /// As [`Self::with_program`].
    pub fn with_program_at(mut self, program: &Path, dest: &Path) -> Result<Self> {
        let what = format!("list the shared libraries of {}", program.display());
        let mut ldd = Command::new("ldd");
        ldd.arg(program);
        let out = cmd::output(&mut ldd)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A statically linked program needs nothing beside it.
        let libraries =
            if said.contains("not a dynamic executable") || said.contains("statically linked") {
                Vec::new()
            } else if out.status.success() {
                shared_libraries(&String::from_utf8_lossy(&out.stdout)).map_err(|line| {
                    Error::Invalid(format!(
                        "{}: shared library not found: {line}",
                        program.display()
                    ))
                })?
            } else {
                return Err(cmd::failed(&what, &ldd, &out));
            };
        let rel = dest.to_string_lossy().trim_start_matches('/').to_owned();
        if self.files.iter().any(|f| f.path == rel) {
            return Err(Error::Invalid(format!(
                "the image already holds a file at /{rel}, where {} would go",
                program.display()
            )));
        }
        let mut paths = vec![(program.to_path_buf(), dest.to_path_buf())];
        paths.extend(
            libraries
                .into_iter()
                .map(|library| (library.clone(), library)),
        );
        for (path, dest) in paths {
            let rel = dest.to_string_lossy().trim_start_matches('/').to_owned();
            // A library the image holds already (another program's) is kept once.
            if self.files.iter().any(|f| f.path == rel) {
                continue;
            }
            self.files.push(ImageFile {
                contents: std::fs::read(&path).map_err(|e| Error::io(&path, e))?,
                path: rel,
                mode: 0o755,
            });
        }
        Ok(self)
    }

    /// The sandbox ("pause") image: a shell that sleeps until told to stop.
    pub fn pause() -> Self {
        Self {
            entrypoint: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done".into(),
            ]),
            cmd: None,
            ..Self::busybox(PAUSE_IMAGE)
        }
    }
}

/// Checks an image reference: `host/name[/more]:tag`, lowercase name parts.
///
/// # Errors
/// [`Error::Invalid`] explaining the expected form.
pub fn check_reference(reference: &str) -> Result<()> {
    let bad = || {
        Error::Invalid(format!(
            "invalid image reference '{reference}': expected registry/name:tag, e.g. yurt.local/web:1"
        ))
    };
    let (name, tag) = reference.rsplit_once(':').ok_or_else(bad)?;
    let name_ok = name.contains('/')
        && name.split('/').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name_ok && tag_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Reads every regular file under `dir` as image files placed under `prefix`.
///
/// # Errors
/// I/O errors.
pub fn files_from_dir(dir: &Path, prefix: &str) -> Result<Vec<ImageFile>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let prefix = prefix.trim_matches('/');
                out.push(ImageFile {
                    path: if prefix.is_empty() {
                        rel
                    } else {
                        format!("{prefix}/{rel}")
                    },
                    contents: std::fs::read(&path).map_err(|e| Error::io(&path, e))?,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The absolute paths in `ldd`'s output (libraries and the loader), or the first line
/// naming a library that was not found. The vDSO has no file and is skipped.
fn shared_libraries(ldd: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(line.to_owned());
        }
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())
}

fn add_file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data)
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, path, target)
}

/// Lowercase hex of the SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The upstream version of a busybox binary (`1.35.0` from `BusyBox v1.35.0 (Debian
/// ...)`), the tag its image gets besides `latest`.
///
/// # Errors
/// If busybox cannot run or names no version.
pub fn busybox_version(busybox: &Path) -> Result<String> {
    let out = cmd::run(
        "read the busybox version",
        Command::new(busybox).arg("--help"),
    )?;
    parse_busybox_version(&out)
        .ok_or_else(|| Error::Invalid(format!("{}: no version in its help", busybox.display())))
}

fn parse_busybox_version(help: &str) -> Option<String> {
    let word = help.split_whitespace().find(|w| w.starts_with('v'))?;
    let version = word.trim_start_matches('v');
    let valid = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| version.to_owned())
}

/// The applets of a busybox binary (`busybox --list`).
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = cmd::run("list busybox applets", Command::new(busybox).arg("--list"))?;
    let mut list: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    list.sort();
    list.dedup();
    Ok(list)
}

fn layer(spec: &ImageSpec, busybox: &Path) -> Result<Vec<u8>> {
    let io = |e| Error::Invalid(format!("building image {}: {e}", spec.reference));
    let mut b = tar::Builder::new(Vec::new());
    let base = [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
        ("var/www", 0o755),
    ];
    for (dir, mode) in base {
        add_dir(&mut b, dir, mode).map_err(io)?;
    }
    let bb = std::fs::read(busybox).map_err(|e| Error::io(busybox, e))?;
    add_file(&mut b, "bin/busybox", 0o755, &bb).map_err(io)?;
    for applet in applets(busybox)? {
        add_symlink(&mut b, &format!("bin/{applet}"), "busybox").map_err(io)?;
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io)?;
    add_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n").map_err(io)?;
    // Folders of the base layout are not made twice for the files put into them.
    let mut made_dirs: std::collections::BTreeSet<String> =
        base.iter().map(|(d, _)| (*d).to_owned()).collect();
    for f in &spec.files {
        let path = f.path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        let mut parents = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            parents.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for p in parents.into_iter().rev() {
            if made_dirs.insert(p.clone()) {
                add_dir(&mut b, &p, 0o755).map_err(io)?;
            }
        }
        add_file(&mut b, path, f.mode, &f.contents).map_err(io)?;
    }
    b.into_inner().map_err(io)
}

/// A built image: its config and its one uncompressed layer, as a registry stores them.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The image config (JSON).
    pub config: Vec<u8>,
    /// The layer (an uncompressed tar); its digest is the config's only `diff_id`.
    pub layer: Vec<u8>,
}

impl BuiltImage {
    /// The image ID: `sha256:<config digest>`.
    pub fn id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.config))
    }
}

/// Builds the image of `spec`: busybox plus its files in one layer, and its config.
///
/// # Errors
/// Invalid reference, unreadable busybox.
pub fn build_image(spec: &ImageSpec, busybox: &Path) -> Result<BuiltImage> {
    check_reference(&spec.reference)?;
    let layer = layer(spec, busybox)?;
    let layer_sha = sha256_hex(&layer);
    let created = "2020-09-13T12:26:40Z";
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": spec.env,
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_sha}")]},
        "history": [{"created": created, "created_by": "yurt image build (busybox-static)"}],
    });
    let config = serde_json::to_vec(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(BuiltImage { config, layer })
}

/// Builds the image archive `out` (docker-archive format, for `ctr import`); returns the
/// image ID (`sha256:<config digest>`).
///
/// # Errors
/// Invalid reference, unreadable busybox, I/O errors.
pub fn build(spec: &ImageSpec, busybox: &Path, out: &Path) -> Result<String> {
    let built = build_image(spec, busybox)?;
    write_archive(spec, &built, out)?;
    Ok(built.id())
}

/// Writes `built` as the docker-archive `out`, tagged with `spec`'s reference.
///
/// # Errors
/// I/O errors.
pub fn write_archive(spec: &ImageSpec, built: &BuiltImage, out: &Path) -> Result<()> {
    let (config_bytes, layer) = (&built.config, &built.layer);
    let layer_sha = sha256_hex(layer);
    let config_sha = sha256_hex(config_bytes);
    let (repo, tag) = spec
        .reference
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(spec.reference.clone()))?;
    let manifest = serde_json::json!([{
        "Config": format!("{config_sha}.json"),
        "RepoTags": [spec.reference],
        "Layers": [format!("{layer_sha}/layer.tar")],
    }]);
    let repositories = serde_json::json!({ repo: { tag: layer_sha } });
    let io = |e| Error::Invalid(format!("building image {}: {e}", spec.reference));
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, &format!("{config_sha}.json"), 0o644, config_bytes).map_err(io)?;
    add_dir(&mut b, &layer_sha, 0o755).map_err(io)?;
    add_file(&mut b, &format!("{layer_sha}/VERSION"), 0o644, b"1.0").map_err(io)?;
    add_file(&mut b, &format!("{layer_sha}/layer.tar"), 0o644, layer).map_err(io)?;
    add_file(
        &mut b,
        "manifest.json",
        0o644,
        manifest.to_string().as_bytes(),
    )
    .map_err(io)?;
    add_file(
        &mut b,
        "repositories",
        0o644,
        repositories.to_string().as_bytes(),
    )
    .map_err(io)?;
    let archive = b.into_inner().map_err(io)?;
    crate::state::write_atomic(out, &archive)
}

/// Imports an image archive into the containerd listening on `socket` (CRI namespace).
///
/// # Errors
/// If `ctr` fails.
pub fn import(socket: &Path, archive: &Path) -> Result<()> {
    cmd::run(
        &format!("import image {}", archive.display()),
        Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive),
    )
    .map(drop)
}

/// Image references present in the containerd listening on `socket`.
///
/// # Errors
/// If `ctr` fails.
pub fn list(socket: &Path) -> Result<Vec<String>> {
    let out = cmd::run(
        "list images",
        Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "ls", "-q"]),
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The archive path for `reference` inside `dir`.
pub fn archive_path(dir: &Path, reference: &str) -> PathBuf {
    let safe: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.tar"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_busybox_version_comes_from_its_help_line() {
        assert_eq!(
            parse_busybox_version(
                "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\nUsage: ..."
            )
            .as_deref(),
            Some("1.35.0")
        );
        assert_eq!(
            parse_busybox_version("BusyBox (no version) multi-call"),
            None
        );
        assert_eq!(parse_busybox_version("BusyBox vx.1 multi-call"), None);
        assert_eq!(parse_busybox_version(""), None);
    }

    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn archive_is_consistent_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ImageSpec::busybox("yurt.local/test:1");
        spec.files.push(ImageFile {
            path: "app/run.sh".into(),
            contents: b"#!/bin/sh\necho hi\n".to_vec(),
            mode: 0o755,
        });
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let id_a = build(&spec, Path::new(BUSYBOX), &a).unwrap();
        let id_b = build(&spec, Path::new(BUSYBOX), &b).unwrap();
        assert_eq!(id_a, id_b);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        let files = entries(&std::fs::read(&a).unwrap());
        let get = |n: &str| files.iter().find(|(p, _)| p == n).map(|(_, d)| d.clone());
        let manifest: serde_json::Value =
            serde_json::from_slice(&get("manifest.json").unwrap()).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "yurt.local/test:1");
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let config = get(config_name).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&config)), id_a);
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = get(layer_name).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0].as_str().unwrap(),
            format!("sha256:{}", sha256_hex(&layer))
        );
        let layer_files = entries(&layer);
        let names: Vec<&str> = layer_files.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/httpd",
            "etc/passwd",
            "app",
            "app/run.sh",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} missing"
            );
        }
    }

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibcurl.so.4 => /lib/x86_64-linux-gnu/libcurl.so.4 (0x00007fb8)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007fb9)\n";
        assert_eq!(
            shared_libraries(ldd).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libcurl.so.4"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = "\tlibfoo.so.1 => not found\n";
        assert_eq!(
            shared_libraries(missing).unwrap_err(),
            "libfoo.so.1 => not found"
        );
    }

    #[test]
    fn curl_image_carries_curl_its_libraries_and_the_loader() {
        let spec = ImageSpec::curl().unwrap();
        assert_eq!(spec.reference, CURL_IMAGE);
        let names: Vec<&str> = spec.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names[0], "usr/bin/curl");
        assert!(names.iter().any(|n| n.contains("libcurl.so")), "{names:?}");
        assert!(
            names.iter().any(|n| n.contains("ld-linux")),
            "the dynamic loader: {names:?}"
        );
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no file twice: {names:?}");
    }

    #[test]
    fn a_program_can_sit_elsewhere_in_the_image_with_its_libraries_where_ldd_finds_them() {
        let program = Path::new("/bin/true");
        let original = std::fs::read(program).unwrap();
        let spec = ImageSpec::busybox("yurt.local/t:1")
            .with_program_at(program, Path::new("/usr/local/bin/probe"))
            .unwrap();
        assert_eq!(spec.files[0].path, "usr/local/bin/probe");
        assert_eq!(spec.files[0].contents, original);
        assert_eq!(spec.files[0].mode, 0o755);
        let names: Vec<&str> = spec.files.iter().map(|f| f.path.as_str()).collect();
        assert!(!names.contains(&"bin/true"), "{names:?}");
        assert!(names.iter().any(|n| n.contains("libc.so")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("ld-linux")), "{names:?}");

        // A statically linked program comes alone.
        let spec = ImageSpec::busybox("yurt.local/t:1")
            .with_program_at(Path::new(BUSYBOX), Path::new("/usr/local/bin/bb"))
            .unwrap();
        assert_eq!(spec.files.len(), 1);
        assert_eq!(spec.files[0].path, "usr/local/bin/bb");
        // A file already at the program's place is not silently kept.
        let err = spec
            .with_program_at(program, Path::new("/usr/local/bin/bb"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already holds a file at /usr/local/bin/bb"),
            "{err}"
        );
    }

    #[test]
    fn references_are_checked() {
        for ok in ["yurt.local/web:1", "yurt.local/a/b:v1.2-x"] {
            assert!(check_reference(ok).is_ok(), "{ok}");
        }
        for bad in [
            "web:1",
            "yurt.local/Web:1",
            "yurt.local/web",
            "yurt.local/web:",
            "yurt.local//w:1",
        ] {
            let err = check_reference(bad).unwrap_err().to_string();
            assert!(err.contains("expected registry/name:tag"), "{bad}: {err}");
        }
    }

    #[test]
    fn files_from_dir_keeps_modes_and_prefix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/run.sh"), b"x").unwrap();
        std::fs::set_permissions(
            dir.path().join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let files = files_from_dir(dir.path(), "/app").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "app/sub/run.sh");
        assert_eq!(files[0].mode, 0o750);
        let files = files_from_dir(dir.path(), "").unwrap();
        assert_eq!(files[0].path, "sub/run.sh");
    }
}
