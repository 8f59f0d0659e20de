//! Persistent mount namespaces for edge hosts.
//!
//! containerd and kubelet of one host share a private mount namespace in which
//! `/var/log` (kubelet hard-codes `/var/log/pods`), `/var/lib/cni`, `/run/netns`,
//! `/run/containerd`, `/etc/kubernetes/manifests` and `/run/yurt-host` (the host
//! contract's links, `yurt_core::host::HOST_LINKS`) are the host's own, so hosts never see or clean up each other's
//! pods. The namespace is kept alive by a bind mount of its nsfs file (`ns/mnt`), the way
//! `ip netns` keeps network namespaces, so processes can be started into it at any time.
//!
//! Every namespace handle copied in from the machine (other hosts' mount and network
//! namespaces) is unmounted inside the new namespace at once: a copy would keep the
//! other namespace alive after its owner deleted it, and two hosts holding each other's
//! handles would never be freed.

use std::path::PathBuf;
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::mounts;
use crate::paths::HostPaths;

/// kubelet's static pod folder inside an edge host (upstream's path, which the
/// YurtStaticSet upgrade workers and the hub's OTA endpoint write to).
pub const STATIC_POD_DIR: &str = "/etc/kubernetes/manifests";

/// What the host's private view replaces.
pub fn private_mounts(host: &HostPaths) -> Vec<(PathBuf, &'static str)> {
    vec![
        (host.var_log(), "/var/log"),
        (host.cni_cache(), "/var/lib/cni"),
        (host.manifests(), STATIC_POD_DIR),
    ]
}

/// Whether the host's mount namespace exists.
pub fn exists(host: &HostPaths) -> bool {
    mounts::is_mount_point(&host.mount_ns())
}

/// Creates the host's persistent mount namespace (if it does not exist) and sets up its
/// private mounts.
///
/// # Errors
/// If a mount or the namespace creation fails.
pub fn create(host: &HostPaths, yurt: &std::path::Path) -> Result<()> {
    if exists(host) {
        return Ok(());
    }
    let dir = host.mount_ns_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The namespace file must sit on a private mount, or the bind mount of the namespace
    // is refused (EINVAL): make the folder its own private mount.
    if !mounts::is_mount_point(&dir) {
        cmd::run(
            "bind the mount namespace folder",
            Command::new("mount").arg("--bind").arg(&dir).arg(&dir),
        )?;
    }
    cmd::run(
        "make the namespace folder private",
        Command::new("mount").arg("--make-private").arg(&dir),
    )?;
    let file = host.mount_ns();
    std::fs::write(&file, b"").map_err(|e| Error::io(&file, e))?;
    for (source, target) in private_mounts(host) {
        std::fs::create_dir_all(&source).map_err(|e| Error::io(&source, e))?;
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    for dir in ["/run/netns", "/run/containerd", yurt_core::host::HOST_LINKS] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    cmd::run(
        "create the host's mount namespace",
        Command::new("unshare")
            .arg(format!("--mount={}", file.display()))
            .args(["--propagation", "private", "/bin/true"]),
    )?;
    let mut script = String::from(
        "set -e\n\
         grep ' - nsfs ' /proc/self/mountinfo | cut -d' ' -f5 | sort -r | while read -r m; do umount -l \"$m\" || true; done\n\
         mount -t tmpfs -o mode=755 tmpfs /run/netns\n\
         mount -t tmpfs -o mode=711 tmpfs /run/containerd\n",
    );
    for (source, target) in private_mounts(host) {
        script.push_str(&format!("mount --bind '{}' {target}\n", source.display()));
    }
    // The host contract's links (yurt_core::host::HOST_LINKS), for tools that enter
    // the host's `/` from a pod.
    let links = yurt_core::host::HOST_LINKS;
    script.push_str(&format!(
        "mount -t tmpfs -o mode=755 tmpfs {links}\nln -s '{}' {links}/dir\nln -s '{}' {links}/yurt\n",
        host.root().display(),
        yurt.display()
    ));
    let result = cmd::run(
        "set up the host's private mounts",
        Command::new("nsenter")
            .arg(format!("--mount={}", file.display()))
            .args(["--", "/bin/sh", "-c", &script]),
    );
    if result.is_err() {
        let _ = destroy(host);
    }
    result.map(drop)
}

/// Releases the host's mount namespace (its mounts vanish once no process is inside).
///
/// # Errors
/// If unmounting fails.
pub fn destroy(host: &HostPaths) -> Result<()> {
    mounts::unmount_under(&host.mount_ns_dir())
}
