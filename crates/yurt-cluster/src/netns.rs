//! Network namespaces (`ip netns`), commands run inside them, and sockets opened inside
//! them without a helper process.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::cmd;
use crate::error::{Error, Result};

/// Where `ip netns` keeps namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// The handle path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Every named namespace on the machine.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates namespace `name` with its loopback up.
///
/// # Errors
/// If `ip netns add` fails.
pub fn add(name: &str) -> Result<()> {
    if !exists(name) {
        cmd::run(
            &format!("create network namespace {name}"),
            Command::new("ip").args(["netns", "add", name]),
        )?;
    }
    ip(Some(name), &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `name`; missing namespaces are fine.
///
/// # Errors
/// If `ip netns delete` fails for another reason.
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    cmd::run(
        &format!("delete network namespace {name}"),
        Command::new("ip").args(["netns", "delete", name]),
    )?;
    Ok(())
}

/// Runs `ip [-n ns] args...`.
///
/// # Errors
/// If the command fails.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(args);
    let what = format!(
        "ip {}{}",
        args.join(" "),
        ns.map(|n| format!(" in {n}")).unwrap_or_default()
    );
    cmd::run(&what, &mut c)
}

/// A command that runs `program` inside namespace `ns`.
///
/// This uses `nsenter --net`, not `ip netns exec`: the latter remounts /sys, which
/// hides /sys/fs/cgroup from kubelet and containerd.
pub fn command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path(ns).display()))
        .arg("--")
        .arg(program);
    c
}

/// Runs `program args...` inside `ns` and fails unless it succeeds.
///
/// # Errors
/// If the command fails.
pub fn run_in(ns: &str, what: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut c = command(ns, program);
    c.args(args);
    cmd::run(what, &mut c)
}

/// Sets a sysctl under /proc/sys inside `ns` (for example `net/ipv4/ip_forward`).
/// Missing keys (a module not loaded) are skipped when `optional`.
///
/// # Errors
/// If the write fails.
pub fn sysctl(ns: &str, key: &str, value: &str, optional: bool) -> Result<()> {
    let file = format!("/proc/sys/{key}");
    let script = if optional {
        format!("[ ! -e {file} ] || echo {value} > {file}")
    } else {
        format!("echo {value} > {file}")
    };
    run_in(
        ns,
        &format!("set {key}={value} in {ns}"),
        "sh",
        &["-c", &script],
    )
    .map(drop)
}

/// Opens a TCP connection from inside namespace `ns`.
///
/// A short-lived thread joins the namespace (network namespaces are per thread) and
/// connects; the socket keeps its namespace after the thread ends.
///
/// # Errors
/// If the namespace cannot be entered or the connection fails.
pub fn connect_tcp(ns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    in_namespace(ns, move || TcpStream::connect_timeout(&addr, timeout))
}

/// Listens on `addr` inside the namespace `ns` (as [`connect_tcp`]: a short-lived thread
/// joins the namespace and binds; the socket stays in it).
///
/// # Errors
/// If the namespace cannot be entered or the address cannot be bound.
pub fn listen_tcp(ns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    in_namespace(ns, move || std::net::TcpListener::bind(addr))
}

/// Runs `make` on a short-lived thread that has joined the network namespace `ns`
/// (namespaces are per thread); a socket it makes keeps that namespace.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let handle = std::fs::File::open(path(ns))?;
    std::thread::spawn(move || {
        setns(&handle, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        make()
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Checks that namespaces can be created on this machine.
///
/// # Errors
/// [`Error::MissingFeature`] if the kernel lacks network namespaces.
pub fn check_support() -> Result<()> {
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Err(Error::MissingFeature {
            feature: "network namespaces".into(),
            hint: "use a kernel built with CONFIG_NET_NS".into(),
        });
    }
    Ok(())
}
