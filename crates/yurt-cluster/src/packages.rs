//! Debian packages the fleet runs on (containerd, runc, CNI plugins, etcd, iptables,
//! busybox, curl) or builds with (Go, make, rsync), installed idempotently with apt-get.

use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::progress::{Reporter, Step};

/// Packages the running fleet needs.
pub const RUNTIME_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // The fleet's image registry (CNCF distribution 2.8).
    "docker-registry",
    "etcd-server",
    "iptables",
    "iproute2",
    "conntrack",
    "ebtables",
    "ethtool",
    "socat",
    "util-linux",
    // The pods' TLS client: copied with its libraries into the `yurt.local/curl:1` image.
    "curl",
    // The MQTT broker the device tests drive devices through (not run by fleets), and
    // the clients they publish and subscribe with.
    "mosquitto",
    "mosquitto-clients",
    // The device tests' pymodbus venv.
    "python3-venv",
];

/// Packages needed to build the upstream Kubernetes binaries.
pub const BUILD_PACKAGES: &[&str] = &[
    "golang-go",
    "make",
    "rsync",
    "tar",
    "gzip",
    "apt",
    // Go 1.18+-compatible reflect2, swapped into the vendored tree (see upstream.rs).
    "golang-github-modern-go-reflect2-dev",
];

/// Whether `package` is installed, per dpkg.
pub fn is_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with("installed"))
        .unwrap_or(false)
}

/// Installs whichever of `packages` are missing. Does nothing when all are present.
///
/// # Errors
/// [`Error::Packages`] with the end of apt-get's output.
pub fn ensure(packages: &[&str], reporter: &dyn Reporter) -> Result<()> {
    let missing: Vec<String> = packages
        .iter()
        .filter(|p| !is_installed(p))
        .map(|p| (*p).to_owned())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let step = Step::start(
        reporter,
        format!("installing Debian packages: {}", missing.join(" ")),
    );
    let install = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing);
        cmd::output(&mut c)
    };
    let mut out = install()?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet: refresh them once and retry.
        step.detail("apt-get update");
        let update = cmd::output(Command::new("apt-get").args(["update", "-q"]))?;
        if !update.status.success() {
            return Err(Error::Packages {
                packages: missing,
                detail: cmd::tail(&String::from_utf8_lossy(&update.stderr), 5),
            });
        }
        out = install()?;
    }
    if !out.status.success() {
        return Err(Error::Packages {
            packages: missing,
            detail: cmd::tail(&String::from_utf8_lossy(&out.stderr), 5),
        });
    }
    step.finish();
    Ok(())
}
