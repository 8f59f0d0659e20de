//! Stopping a fleet and removing everything it made on the machine: processes
//! (including containers and shims), mount namespaces, network namespaces (and with
//! them every interface, route and iptables rule inside), cgroups and the root-namespace
//! link. The data folder (keys, etcd, images, logs) stays unless `purge` is asked for.
//!
//! Teardown works from the slot and the data folder alone, so it also cleans up after a
//! `yurt up` that was killed with SIGKILL, or a state file that is unreadable.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{MachineConfig, fleet_cgroup};
use crate::cgroup::Cgroups;
use crate::error::{Error, Result};
use crate::lock;
use crate::mounts;
use crate::network;
use crate::paths::FleetPaths;
use crate::process::PidRecord;
use crate::progress::{Reporter, Step};
use crate::slots::Registry;
use crate::spec::{Slot, netns_prefix};
use crate::state;

/// Host folders present in a data folder.
fn host_dirs(paths: &FleetPaths) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(paths.root().join("hosts"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Stops every process of slot `slot` whose data folder is `paths`, then removes what
/// the fleet made on the machine. Idempotent.
pub(crate) fn teardown_runtime(cgroups: &Cgroups, paths: &FleetPaths, slot: Slot) -> Result<()> {
    // Ask daemons to stop (etcd flushes, kubelet and containerd close cleanly)...
    let mut records = Vec::new();
    for host in host_dirs(paths) {
        if let Ok(pids) = std::fs::read_dir(host.join("run/pids")) {
            for pid_file in pids.flatten() {
                if let Some(r) = PidRecord::read(&pid_file.path()).filter(PidRecord::is_alive) {
                    let _ = kill(Pid::from_raw(r.pid), Signal::SIGTERM);
                    records.push(r);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.iter().any(PidRecord::is_alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...then kill whatever is left in the fleet's cgroups: containers, shims, stragglers.
    let cg = fleet_cgroup(slot);
    if cgroups.exists(&cg) {
        cgroups.kill_all(&cg, Duration::from_secs(30))?;
    }
    // Mount namespaces first (their mounts pin pod network namespaces), then networks.
    for host in host_dirs(paths) {
        mounts::unmount_under(&host.join("ns"))?;
    }
    network::destroy(&netns_prefix(slot), &format!("yurt{}h", slot.0))?;
    mounts::unmount_under(paths.root())?;
    if cgroups.exists(&cg) {
        cgroups.remove(&cg)?;
    }
    // Volatile state (pids, sockets, IPAM leases) does not survive a stop, like /run.
    for host in host_dirs(paths) {
        let run = host.join("run");
        if run.exists() {
            std::fs::remove_dir_all(&run).map_err(|e| Error::io(&run, e))?;
        }
    }
    Ok(())
}

/// Stops the fleet in `data_dir` and removes everything it made on the machine.
/// With `purge`, also deletes the data folder and frees its slot.
///
/// If a `yurt up` holds the fleet, it is asked to stop (SIGTERM) first.
///
/// # Errors
/// If something cannot be removed.
pub fn down(
    machine: &MachineConfig,
    data_dir: &Path,
    purge: bool,
    reporter: &dyn Reporter,
) -> Result<()> {
    let paths = FleetPaths::new(data_dir);
    let step = Step::start(
        reporter,
        format!("stopping the fleet in {}", data_dir.display()),
    );
    if let Some(pid) = lock::holder(&paths.up_lock())? {
        step.detail(&format!("asking yurt up (pid {pid}) to stop"));
        if pid > 0 && pid != std::process::id() as i32 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(120);
            while lock::holder(&paths.up_lock())?.is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let registry = Registry::new(&machine.registry_dir);
    let slot = match state::load(&paths.state_file()) {
        Ok(Some(s)) => Some(s.slot),
        Ok(None) | Err(_) => registry
            .entries()?
            .into_iter()
            .find(|(_, d)| d == data_dir)
            .map(|(s, _)| s),
    };
    let cgroups = Cgroups::detect()?;
    if let Some(slot) = slot {
        teardown_runtime(&cgroups, &paths, slot)?;
        if purge {
            registry.release(slot, data_dir)?;
        }
    } else {
        mounts::unmount_under(data_dir)?;
    }
    if purge && data_dir.exists() {
        std::fs::remove_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    }
    step.finish();
    Ok(())
}

/// Brings down every fleet registered on this machine, then sweeps anything a fleet
/// left behind without a registry entry (namespaces `yurt<N>-*`, cgroups `yurt-<N>`,
/// interfaces `yurt<N>h`).
///
/// # Errors
/// If something cannot be removed.
pub fn down_all(machine: &MachineConfig, purge: bool, reporter: &dyn Reporter) -> Result<()> {
    let registry = Registry::new(&machine.registry_dir);
    for (_, dir) in registry.entries()? {
        down(machine, &dir, purge, reporter)?;
    }
    let cgroups = Cgroups::detect()?;
    let mut slots: Vec<u8> = crate::netns::list()
        .iter()
        .filter_map(|n| n.strip_prefix("yurt")?.split_once('-')?.0.parse().ok())
        .collect();
    slots.extend(
        cgroups
            .top_level("yurt-")
            .iter()
            .filter_map(|n| n.strip_prefix("yurt-")?.parse::<u8>().ok()),
    );
    if let Ok(ifaces) = std::fs::read_dir("/sys/class/net") {
        slots.extend(ifaces.flatten().filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("yurt")?
                .strip_suffix('h')?
                .parse::<u8>()
                .ok()
        }));
    }
    slots.sort_unstable();
    slots.dedup();
    // Mount namespaces of data folders that are no longer registered.
    for m in mounts::mounts() {
        let t = m.target.to_string_lossy();
        if m.fstype == "nsfs"
            && t.ends_with("/ns/mnt")
            && t.contains("/hosts/")
            && let Some(ns_dir) = m.target.parent()
        {
            mounts::unmount_under(ns_dir)?;
        }
    }
    if !slots.is_empty() {
        let step = Step::start(
            reporter,
            format!("removing leftovers of fleet slots {slots:?}"),
        );
        for slot in slots {
            let cg = fleet_cgroup(Slot(slot));
            if cgroups.exists(&cg) {
                cgroups.kill_all(&cg, Duration::from_secs(30))?;
            }
            network::destroy(&netns_prefix(Slot(slot)), &format!("yurt{slot}h"))?;
            if cgroups.exists(&cg) {
                cgroups.remove(&cg)?;
            }
        }
        step.finish();
    }
    Ok(())
}
