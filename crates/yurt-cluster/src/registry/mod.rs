//! The fleet's image registry (ADR 005): Debian's `docker-registry` (CNCF distribution
//! 2.8) in the cloud host, run as two processes on one storage folder.
//!
//! | process | address | who may call | what |
//! |---|---|---|---|
//! | `registry` | `CLOUD_IP:5000`, TLS | anyone in the fleet network (nodes, pods) | pull only: the storage is read-only |
//! | `registry-push` | port 5001, TLS | root on this machine: basic authentication, a random password in the fleet's PKI (0600) | push |
//!
//! A pod runs code the cloud admin did not write and reaches the cloud host's address, so
//! the registry every node pulls from must not accept pushes: one pod could replace
//! `busybox` for the whole fleet. The push process's address is no boundary (Linux
//! answers on any local address); its password is.
//!
//! Every host's containerd mirrors `docker.io`, `registry.k8s.io` and `k8s.gcr.io` to the
//! pull process ([`containerd_hosts`]), with the fleet CA as the only trusted root and no
//! other server to fall back to: a manifest keeps its upstream reference and a pull
//! crosses the host's own link, so a cut site cannot pull.

pub mod push;
pub mod source;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::net;

/// The pull process's port.
pub const PULL_PORT: u16 = 5000;
/// The push process's port.
pub const PUSH_PORT: u16 = 5001;
/// The push process's only user.
pub const PUSH_USER: &str = "yurt";
/// The name the registry answers to besides its addresses (in its certificate).
pub const REGISTRY_NAME: &str = "registry.yurt.local";
/// Registry names that resolve to the fleet registry on every host: the upstream ones
/// pods name, and `yurt.local`, the fleet's own images.
pub const MIRRORED: &[&str] = &["docker.io", "registry.k8s.io", "k8s.gcr.io", "yurt.local"];

/// The registry's address inside the fleet (what containerd pulls from).
pub fn pull_host() -> String {
    format!("{}:{PULL_PORT}", net::CLOUD_IP.addr)
}

/// Where an image name lands in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The name in full (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The repository in the registry (`library/busybox`): every registry name in
    /// [`MIRRORED`] shares the one storage.
    pub repository: String,
    /// The tag, if the name has one (a name with neither tag nor digest means `latest`).
    pub tag: Option<String>,
    /// The digest the name pins, if any (`name@sha256:...`).
    pub digest: Option<String>,
}

/// Where `name` (`busybox`, `myorg/app:2`, `registry.k8s.io/pause:3.2`) goes: only the
/// registry names every node resolves through the fleet registry are accepted.
///
/// # Errors
/// A malformed name, or one of a registry the nodes do not reach through the fleet's.
pub fn destination(name: &str) -> Result<Destination> {
    let reference: oci_client::Reference = name
        .parse()
        .map_err(|e| Error::Invalid(format!("{name:?} is not a valid image name: {e}")))?;
    // The distribution spec's path components: lowercase letters and digits, joined by
    // `.`, `_`, `__` or dashes (the parser lets uppercase through; registries do not).
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
    };
    if !reference.repository().split('/').all(component_ok) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a valid image name: repository {:?} must be lowercase letters and digits, separated by '.', '_', '-' or '/'",
            reference.repository()
        )));
    }
    let registry = reference.registry();
    if !MIRRORED.contains(&registry) && registry != pull_host() {
        return Err(Error::Invalid(format!(
            "{name:?} names the registry {registry}, which the fleet's nodes do not pull from; use {} or {}",
            MIRRORED.join(", "),
            pull_host()
        )));
    }
    Ok(Destination {
        name: reference.whole(),
        repository: reference.repository().to_owned(),
        tag: reference.tag().map(str::to_owned),
        digest: reference.digest().map(str::to_owned),
    })
}

/// Which of the two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read-only, unauthenticated, for the fleet.
    Pull,
    /// Read-write, password-protected, for this machine.
    Push,
}

/// Files a registry process is configured with.
#[derive(Debug, Clone)]
pub struct RegistryFiles {
    /// The storage folder (shared by both processes).
    pub storage: PathBuf,
    /// Serving certificate and key (PEM).
    pub cert: PathBuf,
    /// Serving key.
    pub key: PathBuf,
    /// The htpasswd file of the push process.
    pub htpasswd: PathBuf,
}

/// The distribution 2.8 configuration (YAML) of one process.
pub fn config(role: Role, files: &RegistryFiles) -> String {
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    let (addr, readonly, purge, auth) = match role {
        Role::Pull => (
            format!("0.0.0.0:{PULL_PORT}"),
            true,
            // A read-only process deletes nothing, not even stale uploads.
            false,
            String::new(),
        ),
        Role::Push => (
            format!("0.0.0.0:{PUSH_PORT}"),
            false,
            true,
            format!(
                "auth:\n  htpasswd:\n    realm: yurt-registry-push\n    path: {}\n",
                q(&files.htpasswd)
            ),
        ),
    };
    // No blob-descriptor cache: the pull process must see what the push process wrote
    // at once.
    format!(
        r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: {delete}
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: {purge}
      age: 168h
      interval: 24h
      dryrun: false
    readonly:
      enabled: {readonly}
http:
  addr: {addr}
  tls:
    certificate: {cert}
    key: {key}
  headers:
    X-Content-Type-Options: [nosniff]
{auth}"#,
        storage = q(&files.storage),
        delete = role == Role::Push,
        cert = q(&files.cert),
        key = q(&files.key),
    )
}

/// containerd's registry host configuration (`config_path` folder): for each mirrored
/// upstream name and for the registry's own address, the file `<name>/hosts.toml` and
/// its contents. Both the host entry and the server are the pull process itself, so
/// there is no Internet fallback to try (and no misleading error from one). containerd
/// 1.6 refuses a file without a `host` table ("invalid `host` tree"), hence both.
pub fn containerd_hosts(ca: &Path) -> Vec<(String, String)> {
    let server = format!("https://{}", pull_host());
    let ca = ca.display().to_string();
    let text = format!(
        "# Written by yurt: every pull of this registry name goes to the fleet registry.\n\
         server = {server:?}\n\
         ca = {ca:?}\n\
         capabilities = [\"pull\", \"resolve\"]\n\
         \n\
         [host.{server:?}]\n\
         \x20 ca = {ca:?}\n\
         \x20 capabilities = [\"pull\", \"resolve\"]\n",
    );
    MIRRORED
        .iter()
        .map(|n| (*n).to_owned())
        .chain([pull_host()])
        .map(|name| (format!("{name}/hosts.toml"), text.clone()))
        .collect()
}

/// The push process's credentials: created once with the fleet's PKI.
#[derive(Debug, Clone)]
pub struct PushCredentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

/// Where the push password lives (0600).
pub fn password_file(pki_dir: &Path) -> PathBuf {
    pki_dir.join("registry-push.password")
}

/// Where the push process's htpasswd file lives.
pub fn htpasswd_file(pki_dir: &Path) -> PathBuf {
    pki_dir.join("registry-push.htpasswd")
}

/// The bcrypt cost of the htpasswd entry. The registry checks it on every request, and
/// at the usual cost (12) that is a quarter of a second each: seconds per push. The
/// lowest cost loses nothing here: the password is 192 random bits, which no guessing
/// reaches whatever the hash costs.
const HTPASSWD_COST: u32 = 4;

/// Creates the push password if it is missing, and its htpasswd (bcrypt) entry if that
/// is missing or hashed at another cost.
///
/// # Errors
/// I/O errors; no randomness.
pub fn ensure_push_credentials(pki_dir: &Path) -> Result<()> {
    let (pw, ht) = (password_file(pki_dir), htpasswd_file(pki_dir));
    let password = match std::fs::read_to_string(&pw) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            let mut random = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
                .map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
            let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
            // Created 0600 (a new temporary file's mode) and renamed into place.
            crate::state::write_atomic(&pw, password.as_bytes())?;
            let _ = std::fs::remove_file(&ht);
            password
        }
    };
    let current = std::fs::read_to_string(&ht).unwrap_or_default();
    let entry_ok = current
        .trim()
        .strip_prefix(&format!("{PUSH_USER}:"))
        .is_some_and(|hash| {
            hash.starts_with(&format!("$2b${HTPASSWD_COST:02}$"))
                && bcrypt::verify(&password, hash).unwrap_or(false)
        });
    if entry_ok {
        return Ok(());
    }
    let hash = bcrypt::hash(&password, HTPASSWD_COST)
        .map_err(|e| Error::Invalid(format!("hashing the registry push password: {e}")))?;
    crate::state::write_atomic(&ht, format!("{PUSH_USER}:{hash}\n").as_bytes())
}

/// Reads the push credentials.
///
/// # Errors
/// The password file is missing or unreadable.
pub fn push_credentials(pki_dir: &Path) -> Result<PushCredentials> {
    let path = password_file(pki_dir);
    let password = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(PushCredentials {
        user: PUSH_USER.to_owned(),
        password: password.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests;
