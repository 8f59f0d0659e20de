//! A fleet: the hosts, processes and state of one data folder, and the operations on it
//! (up, down, status, cut/restore, reboot, stop/start a process, exec).

mod api;
mod bare;
mod hosts;
mod ops;
pub mod routes;
pub mod service_manager;
mod supervisor;
mod teardown;
mod up;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;

pub use api::{NodeReadiness, admin_client, wait_nodes_ready};
pub use ops::{HostStatus, ProcessState, ProcessStatus, Readiness};
pub use supervisor::{
    RestartBackoff, Supervision, SupervisorEvent, last_report, last_report_file, spawn_supervisor,
    supervision, supervisor_log, supervisor_pid_file, wait_for_supervisor,
};
pub use teardown::{down, down_all};
pub use up::{UpOptions, up};

use crate::cgroup::Cgroups;
use crate::components::Component;
use crate::error::{Error, Result};
use crate::paths::FleetPaths;
use crate::pki::PkiPaths;
use crate::spec::{EdgeApi, HostId, Plan, Slot};
use crate::state::{self, FleetState};
use crate::upstream::{self, Binary, UpstreamBinaries};

/// Machine-wide settings: where caches and the fleet registry live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Cache of built upstream binaries (`/var/cache/yurt`).
    pub cache_dir: PathBuf,
    /// Registry of fleets on this machine (`/var/lib/yurt`).
    pub registry_dir: PathBuf,
    /// The `yurt` binary the fleet runs its own components with (the hub).
    pub yurt_binary: PathBuf,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from("/var/cache/yurt"),
            registry_dir: PathBuf::from("/var/lib/yurt"),
            yurt_binary: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/yurt")),
        }
    }
}

/// The cgroup of a fleet (`yurt-<slot>`).
pub fn fleet_cgroup(slot: Slot) -> String {
    format!("yurt-{}", slot.0)
}

/// The cgroup of one host (`yurt-<slot>/<host>`); kubelet uses it as its cgroup root.
pub fn host_cgroup(slot: Slot, host: &HostId) -> String {
    format!("{}/{host}", fleet_cgroup(slot))
}

/// Where a host's own daemons live, beside kubelet's `kubepods`.
pub fn system_cgroup(slot: Slot, host: &HostId) -> String {
    format!("{}/system", host_cgroup(slot, host))
}

/// Checks that a data folder path is absolute and plain (it is written into configs,
/// scripts and unix socket paths).
///
/// # Errors
/// [`Error::Invalid`] explaining the rule.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    let text = dir.to_string_lossy();
    if !dir.is_absolute() {
        return Err(Error::Invalid(format!(
            "--data-dir must be an absolute path, got {text}"
        )));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        return Err(Error::Invalid(format!(
            "--data-dir may contain only letters, digits and / . _ -, got {text}"
        )));
    }
    // Unix socket paths are limited to 108 bytes; the longest we make is
    // DIR/hosts/<node>/run/containerd.sock.
    if text.len() > 50 {
        return Err(Error::Invalid(format!(
            "--data-dir must be at most 50 characters (unix socket paths inside it are limited), got {} ({text})",
            text.len()
        )));
    }
    Ok(())
}

/// An existing fleet, opened from its data folder.
#[derive(Debug)]
pub struct Fleet {
    machine: MachineConfig,
    paths: FleetPaths,
    state: FleetState,
    plan: Plan,
    cgroups: Cgroups,
    bins: UpstreamBinaries,
    pki: PkiPaths,
    children: Mutex<Vec<Child>>,
}

impl Fleet {
    /// Opens the fleet in `data_dir`.
    ///
    /// # Errors
    /// [`Error::NoFleet`] if there is none; state or cgroup errors.
    pub fn open(machine: &MachineConfig, data_dir: &Path) -> Result<Self> {
        let paths = FleetPaths::new(data_dir);
        let state = state::load(&paths.state_file())?.ok_or_else(|| Error::NoFleet {
            dir: data_dir.to_owned(),
        })?;
        let plan = Plan::new(&state.spec, state.slot)?
            .with_added(&state.added_hosts)?
            .with_cloud_worker(state.bare);
        let bins = upstream::cached(&machine.cache_dir)
            .unwrap_or_else(|| UpstreamBinaries::at(machine.cache_dir.join("kubernetes/missing")));
        Ok(Self {
            machine: machine.clone(),
            pki: PkiPaths::new(&paths),
            paths,
            state,
            plan,
            cgroups: Cgroups::detect()?,
            bins,
            children: Mutex::new(Vec::new()),
        })
    }

    /// The machine-wide settings the fleet was opened with.
    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    /// The data folder layout.
    pub fn paths(&self) -> &FleetPaths {
        &self.paths
    }

    /// The persisted state.
    pub fn state(&self) -> &FleetState {
        &self.state
    }

    /// The network plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The admin kubeconfig for clients on this machine.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.paths.admin_kubeconfig()
    }

    /// The upstream binaries the fleet runs.
    pub fn binaries(&self) -> &UpstreamBinaries {
        &self.bins
    }

    /// A `kubectl` 1.20 command pointed at this fleet.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bins.path(Binary::Kubectl));
        c.env("KUBECONFIG", self.admin_kubeconfig());
        c
    }

    /// A Kubernetes client with admin rights.
    ///
    /// # Errors
    /// If the kubeconfig cannot be loaded.
    pub async fn client(&self) -> Result<kube::Client> {
        admin_client(&self.admin_kubeconfig()).await
    }

    /// Whether the fleet's hosts exist (it was brought up and not brought down).
    pub fn is_up(&self) -> bool {
        crate::netns::exists(&self.plan.netns(&HostId::Cloud))
    }

    fn require_up(&self) -> Result<()> {
        if self.is_up() {
            Ok(())
        } else {
            Err(Error::NotRunning {
                dir: self.paths.root().to_owned(),
            })
        }
    }

    /// Reaps exited child processes this handle started (keeps zombies from piling up).
    pub fn reap(&self) {
        if let Ok(mut children) = self.children.lock() {
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
    }

    fn keep_child(&self, child: Child) {
        if let Ok(mut children) = self.children.lock() {
            children.push(child);
        }
    }

    /// Whether `component` runs on `host` in this fleet (an edge host of a fleet whose
    /// kubelets talk to the API server directly runs no hub; Prometheus and the second
    /// API server and tunnel server run only in a fleet started with them; a bare
    /// fleet runs none of OpenYurt's processes, and a kubelet on its cloud host).
    pub fn runs(&self, host: &HostId, component: Component) -> bool {
        if self.joins_itself(host) {
            // Such a host runs what its units say (containerd's come with the host,
            // whoever joins or converts it writes the rest).
            return Component::EDGE.contains(&component)
                && self.unit_file(host, component).exists();
        }
        if *host == HostId::Cloud && Component::NODE.contains(&component) {
            return self.plan.cloud_worker.is_some();
        }
        Component::of(host).contains(&component)
            && !(self.state.bare && Component::OPENYURT.contains(&component))
            && (component != Component::RouteController || !self.plan.added.is_empty())
            && !(component == Component::YurtHub && self.state.edge_api == EdgeApi::Direct)
            && (component != Component::Prometheus || self.state.prometheus)
            && (!matches!(
                component,
                Component::KubeApiserverReplica | Component::TunnelServerReplica
            ) || self.state.second_api_server)
    }

    /// Whether `host` is an edge host whose kubelet, kube-proxy and hub units are
    /// written by the tools that run on it (`yurt adm join`, the node servant), not by
    /// `yurt up`: a host added with `yurt fleet add-host`, and every edge host of a bare
    /// fleet (`yurt up` joins them with a bootstrap token, as kubeadm joins workers).
    pub fn joins_itself(&self, host: &HostId) -> bool {
        match host {
            HostId::Edge(name) => {
                self.plan.added_host(name.as_str()).is_some()
                    || (self.state.bare && self.plan.edge(name.as_str()).is_some())
            }
            _ => false,
        }
    }

    /// The processes of `host` in this fleet, in start order.
    pub fn components_of<'a>(&'a self, host: &'a HostId) -> impl Iterator<Item = Component> + 'a {
        Component::of(host)
            .iter()
            .copied()
            .filter(move |&c| self.runs(host, c))
    }

    /// Processes that should be running but are not (their unit restarts them):
    /// `(host, process, log)`.
    pub fn crashed(&self) -> Vec<(HostId, Component, PathBuf)> {
        let mut out = Vec::new();
        for host in self.plan.hosts() {
            let hp = self.paths.host(&host);
            for c in self.components_of(&host) {
                if self.state.is_stopped(&host.to_string(), c.name()) {
                    continue;
                }
                let alive = crate::process::PidRecord::read(&hp.pid_file(c.name()))
                    .is_some_and(|r| r.is_alive());
                // A unit that says `restart = "no"` may end: it is not restarted.
                let may_end = || {
                    crate::units::Unit::load(&self.unit_file(&host, c))
                        .is_ok_and(|u| u.restart == crate::units::Restart::No)
                };
                if !alive && !may_end() {
                    out.push((host.clone(), c, hp.log(c.name())));
                }
            }
        }
        out
    }

    /// Reads the fleet's state again (another process added a host, stopped a
    /// process, cut a link).
    ///
    /// # Errors
    /// The state cannot be read.
    pub fn refresh(&mut self) -> Result<()> {
        self.reload_state()
    }

    fn reload_state(&mut self) -> Result<()> {
        if let Some(s) = state::load(&self.paths.state_file())? {
            self.plan = Plan::new(&s.spec, s.slot)?
                .with_added(&s.added_hosts)?
                .with_cloud_worker(s.bare);
            self.state = s;
        }
        Ok(())
    }

    /// The unit file of `component` on `host`.
    pub fn unit_file(&self, host: &HostId, component: Component) -> PathBuf {
        crate::units::file(
            &crate::units::dir(self.paths.host(host).root()),
            component.name(),
        )
    }

    fn save_state(&self) -> Result<()> {
        state::save(&self.paths.state_file(), &self.state)
    }
}
