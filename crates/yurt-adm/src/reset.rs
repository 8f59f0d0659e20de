//! `yurt adm reset`: undoes `yurt adm join` on the host it runs on, as `kubeadm reset`
//! does, and more thoroughly where a later join would trip over what is left: the
//! join's processes stop (kubelet first, so it does not restart what is killed next),
//! every pod's processes die, kubelet's mounts and the pods' network namespaces are
//! unmounted, the pod network (the CNI configuration containerd rendered for this
//! node's CIDR, its address allocations, the `cni0` bridge), kube-proxy's rules and the
//! hub's dummy interface go, and so does every file join wrote, units included. The
//! host's own containerd keeps running. With `--delete-node` the Node is deleted first,
//! with kubelet's own credentials (a node may delete itself).
//!
//! Idempotent: each step does nothing when there is nothing to undo, so a reset that was
//! interrupted is finished by running it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yurt_core::host::ServiceRequest;

use crate::join::{Host, HostFiles};

/// The processes join adds, in the order they are stopped.
pub const JOIN_PROCESSES: [&str; 4] = ["kubelet", "kube-proxy", "yurt-hub", crate::tunnel::AGENT];

/// The hub's dummy interface.
pub(crate) const HUB_DUMMY: &str = "hub-dummy0";
/// The bridge of the pod network.
const POD_BRIDGE: &str = "cni0";

/// Reset failures, each naming its step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct ResetError {
    /// The step.
    pub step: &'static str,
    /// What went wrong.
    pub reason: String,
}

fn step(step: &'static str) -> impl Fn(String) -> ResetError {
    move |reason| ResetError { step, reason }
}

/// What a reset did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The Node deleted, if asked and it existed.
    pub deleted_node: Option<String>,
    /// Pod processes killed.
    pub killed: usize,
    /// Mounts removed.
    pub unmounted: usize,
    /// What could not be undone but does not stop a later join (said, not failed).
    pub warnings: Vec<String>,
}

/// Resets the host.
///
/// # Errors
/// [`ResetError`] naming the step that failed.
pub async fn reset<H: Host + Sync>(
    host: &H,
    delete_node: bool,
    progress: crate::join::Progress<'_>,
) -> Result<Reset, ResetError> {
    let files = host.files();
    let mut done = Reset::default();
    if delete_node {
        progress("deleting the Node with kubelet's credentials");
        done.deleted_node = delete_own_node(files).await.map_err(|e| ResetError {
            reason: format!(
                "{} (delete it with kubectl, then reset without --delete-node)",
                e.reason
            ),
            ..e
        })?;
    }
    progress("stopping kubelet, kube-proxy, yurt hub and the tunnel agent");
    for process in JOIN_PROCESSES {
        if files.unit(process).exists() {
            host.request(ServiceRequest::Stop(process.to_owned()))
                .await
                .map_err(step("stopping the node's processes"))?;
        }
    }
    progress("killing the pods' processes");
    done.killed = kill_pods(&host.facts().cgroup_root).map_err(step("killing the pods"))?;
    progress("unmounting kubelet's volumes and the pods' network namespaces");
    // kubelet's root may itself be a mount (kubelet makes it shared); /run/netns is the
    // host's own and stays, the pods' namespaces under it go.
    done.unmounted = unmount_under(&[
        (files.kubelet_root(), true),
        (PathBuf::from("/run/netns"), false),
    ])
    .map_err(step("unmounting"))?;
    progress("removing the pod network, kube-proxy's rules and the hub's interface");
    let facts = host.facts();
    for dir in std::iter::once(&facts.cni_config_dir).chain(&facts.cni_state_dirs) {
        remove_contents(dir).map_err(step("removing the pod network"))?;
    }
    for link in [POD_BRIDGE, HUB_DUMMY] {
        delete_link(link).map_err(step("removing the pod network"))?;
    }
    if facts.kube_proxy.exists()
        && let Err(e) = run(&facts.kube_proxy.display().to_string(), &["--cleanup"])
    {
        done.warnings.push(format!("kube-proxy --cleanup: {e}"));
    }
    progress("removing what join wrote");
    for process in JOIN_PROCESSES {
        remove(&files.unit(process)).map_err(step("removing the units"))?;
    }
    for path in files.written() {
        remove(&path).map_err(step("removing join's files"))?;
    }
    Ok(done)
}

/// Deletes this host's Node with kubelet's client certificate, if kubelet has one.
pub(crate) async fn delete_own_node(files: &HostFiles) -> Result<Option<String>, ResetError> {
    let fail = step("deleting the Node");
    let Some(identity) = files.kubelet_identity() else {
        return Err(fail(
            "kubelet has no client certificate here (never joined, or reset already): delete the Node with kubectl".into(),
        ));
    };
    let node = identity
        .strip_prefix("system:node:")
        .ok_or_else(|| {
            fail(format!(
                "kubelet's certificate names {identity:?}, not a node"
            ))
        })?
        .to_owned();
    let kubeconfig = kube::config::Kubeconfig::read_from(files.kubelet_kubeconfig())
        .map_err(|e| fail(format!("{}: {e}", files.kubelet_kubeconfig().display())))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    match nodes.delete(&node, &Default::default()).await {
        Ok(_) => Ok(Some(node)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(fail(format!("deleting Node {node}: {e}"))),
    }
}

/// Kills every process under the pods' cgroups (`<cgroup root>/kubepods` in every
/// hierarchy) until none is left; how many were killed.
fn kill_pods(cgroup_root: &str) -> Result<usize, String> {
    let relative = Path::new(cgroup_root.trim_start_matches('/')).join("kubepods");
    let tops: Vec<PathBuf> = cgroup_mounts()?
        .into_iter()
        .map(|m| m.join(&relative))
        .filter(|p| p.is_dir())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut killed = 0;
    loop {
        let mut pids = Vec::new();
        for top in &tops {
            collect_pids(top, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            return Ok(killed);
        }
        if Instant::now() >= deadline {
            return Err(format!("processes {pids:?} are still running after 30 s"));
        }
        for pid in pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mount points of every cgroup hierarchy.
fn cgroup_mounts() -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.point)
        .collect())
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), out);
            }
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub point: PathBuf,
    /// Its filesystem type.
    pub fstype: String,
}

/// Parses `/proc/self/mountinfo` (mount points unescaped: `\040` is a space).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            let point = unescape(words.get(4)?);
            let dash = words.iter().position(|w| *w == "-")?;
            let fstype = (*words.get(dash + 1)?).to_owned();
            Some(MountEntry {
                point: PathBuf::from(point),
                fstype,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let mut out = String::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(char::from(code));
            i += 4;
            continue;
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

/// Unmounts (lazily, deepest first) everything mounted under each root, the root itself
/// too where its flag says so, until nothing is (a point may carry stacked mounts); how
/// many.
fn unmount_under(roots: &[(PathBuf, bool)]) -> Result<usize, String> {
    let mut total = 0;
    for _ in 0..16 {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mut points: Vec<PathBuf> = parse_mountinfo(&text)
            .into_iter()
            .map(|m| m.point)
            .filter(|p| {
                roots
                    .iter()
                    .any(|(r, itself)| p.starts_with(r) && (*itself || p != r))
            })
            .collect();
        if points.is_empty() {
            return Ok(total);
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for point in &points {
            run("umount", &["-l", &point.display().to_string()])?;
        }
        total += points.len();
    }
    Err("mounts are still there after 16 rounds of unmounting".into())
}

/// Deletes the link `name` of this network namespace, if it has one. Over netlink
/// (`ip`), not looked up in `/sys/class/net`: sysfs shows the links of the namespace
/// that mounted it, which on a host entered with `setns` is not this one (a reset once
/// left `cni0` with the old node's address, and the next join's pods could not start).
pub(crate) fn delete_link(name: &str) -> Result<(), String> {
    match run("ip", &["link", "delete", "dev", name]) {
        Err(e) if e.contains("Cannot find device") || e.contains("does not exist") => Ok(()),
        other => other,
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn remove(path: &Path) -> Result<(), String> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_contents(dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        remove(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_their_point_and_type() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 36 0:35 / /sys/fs/cgroup/cpu rw shared:7 - cgroup cgroup rw,cpu\n\
                    41 36 0:36 / /run/netns/cni-1 rw - nsfs nsfs rw\n\
                    garbage\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].point, PathBuf::from("/mnt/a b"));
        assert_eq!(entries[0].fstype, "ext3");
        assert_eq!(entries[1].fstype, "cgroup");
        assert_eq!(entries[2].point, PathBuf::from("/run/netns/cni-1"));
    }

    #[test]
    fn removing_what_is_not_there_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove(&dir.path().join("none")).unwrap();
        remove_contents(&dir.path().join("none")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        remove_contents(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
