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
/// Upstream registries whose names resolve to the fleet registry on every host.
pub const MIRRORED: &[&str] = &["docker.io", "registry.k8s.io", "k8s.gcr.io"];

/// The registry's address inside the fleet (what containerd pulls from).
pub fn pull_host() -> String {
    format!("{}:{PULL_PORT}", net::CLOUD_IP.addr)
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

/// Creates the push password and its htpasswd (bcrypt) entry if either is missing.
///
/// # Errors
/// I/O errors; no randomness.
pub fn ensure_push_credentials(pki_dir: &Path) -> Result<()> {
    let (pw, ht) = (password_file(pki_dir), htpasswd_file(pki_dir));
    if pw.exists() && ht.exists() {
        return Ok(());
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| Error::io(Path::new("/dev/urandom"), e))?;
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let hash = bcrypt::hash(&password, bcrypt::DEFAULT_COST)
        .map_err(|e| Error::Invalid(format!("hashing the registry push password: {e}")))?;
    // Both files are created 0600 (a new temporary file's mode) and renamed into place.
    crate::state::write_atomic(&ht, format!("{PUSH_USER}:{hash}\n").as_bytes())?;
    crate::state::write_atomic(&pw, password.as_bytes())
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
