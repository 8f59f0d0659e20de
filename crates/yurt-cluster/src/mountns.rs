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
    let kubelet_root = host.kubelet_root();
    std::fs::create_dir_all(&kubelet_root).map_err(|e| Error::io(&kubelet_root, e))?;
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
    // kubelet's root folder is a shared mount of its own before kubelet starts, as it is
    // on a real host where `/` is shared. Otherwise kubelet bind-mounts the folder onto
    // itself at start, while its pod-resources server renames its socket into a folder
    // below: a rename that races a mount on a parent fails with EXDEV and kubelet exits.
    script.push_str(&format!(
        "mount --bind '{0}' '{0}'\nmount --make-rshared '{0}'\n",
        kubelet_root.display()
    ));
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::paths::FleetPaths;
    use crate::spec::HostId;

    /// kubelet makes its root folder a shared mount at start unless it already is one,
    /// by bind-mounting the folder onto itself, while its pod-resources server renames a
    /// socket into a folder below it at the same moment: a rename that races a mount on
    /// a parent fails with EXDEV, and kubelet exits.
    #[test]
    fn kubelets_root_is_a_shared_mount_before_kubelet_starts() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let host = FleetPaths::new(dir.path()).host(&HostId::Cloud);
        create(&host, Path::new("/bin/true")).expect("the host's mount namespace");
        let seen = Command::new("nsenter")
            .arg(format!("--mount={}", host.mount_ns().display()))
            .args(["--", "cat", "/proc/self/mountinfo"])
            .output();
        destroy(&host).expect("the namespace released");
        let seen = seen.expect("nsenter runs");
        let table = mounts::parse_mountinfo(&String::from_utf8_lossy(&seen.stdout));
        let root = table.iter().find(|m| m.target == host.kubelet_root());
        assert!(
            root.is_some_and(|m| m.shared),
            "kubelet's root in the host's namespace: {root:?}"
        );
    }
}
