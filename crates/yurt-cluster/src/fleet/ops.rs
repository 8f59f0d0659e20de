//! Operations on a running fleet: starting processes, status, cutting and restoring
//! links, rebooting an edge host, stopping and starting one process, running a command
//! inside a host.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Fleet, host_cgroup, system_cgroup};
use crate::cmd;
use crate::components::{Component, Context};
use crate::error::{Error, Result};
use crate::image;
use crate::lock;
use crate::mountns;
use crate::netns;
use crate::network::{self, LinkTarget};
use crate::paths::HostPaths;
use crate::probe;
use crate::process::{self, Launch, PidRecord};
use crate::spec::HostId;
use crate::units::Unit;

/// Whether a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Running.
    Running,
    /// Stopped on purpose (`yurt fleet stop`).
    Stopped,
    /// Not running although it should.
    Dead,
}

/// One process of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    /// The process.
    pub component: Component,
    /// Its state.
    pub state: ProcessState,
    /// Its pid, when running.
    pub pid: Option<i32>,
    /// Its log.
    pub log: PathBuf,
}

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// The host.
    pub host: HostId,
    /// Its network namespace.
    pub netns: String,
    /// Its address inside the fleet.
    pub address: Ipv4Addr,
    /// Its pool (edge hosts).
    pub pool: Option<String>,
    /// Whether its link to the cloud is up (edge hosts; false when its node, pool or
    /// the cloud link is cut).
    pub connected: Option<bool>,
    /// Its processes.
    pub processes: Vec<ProcessStatus>,
}

/// Whether `component` on `host` runs in the host's mount namespace: everything of an
/// edge host, and the cloud host's node processes (its control plane does not).
fn in_mount_ns(host: &HostId, component: Component) -> bool {
    matches!(host, HostId::Edge(_)) || Component::NODE.contains(&component)
}

/// Environment every process on a fleet host gets: the hosts are not cloud instances.
pub const NO_INSTANCE_METADATA: (&str, &str) = ("AWS_EC2_METADATA_DISABLED", "true");

impl Fleet {
    pub(super) fn context(&self) -> Context<'_> {
        Context {
            plan: &self.plan,
            paths: &self.paths,
            pki: &self.pki,
            bins: &self.bins,
            timings: self.state.spec.timing.timings(),
            yurt_binary: &self.machine.yurt_binary,
            edge_api: self.state.edge_api,
            api_audit_log: self.state.api_audit_log,
            second_api_server: self.state.second_api_server,
            cluster_signing_duration: self.state.cluster_signing_duration,
            bare: self.state.bare,
        }
    }

    /// Starts `component` on `host` and waits until it is ready.
    ///
    /// # Errors
    /// [`Error::ProcessExited`] if it dies while starting, [`Error::NotReady`] on timeout.
    pub(crate) async fn start_component(&self, host: &HostId, component: Component) -> Result<()> {
        let record = self.spawn_component(host, component)?;
        self.wait_ready(host, component, record).await
    }

    /// Waits until `component`, spawned on `host` as `record`, is ready: its probe, and
    /// for kube-apiserver its `/readyz` as well (the port opens before it serves).
    async fn wait_ready(
        &self,
        host: &HostId,
        component: Component,
        record: PidRecord,
    ) -> Result<()> {
        self.readiness(host, component, record).wait().await?;
        if component == Component::KubeApiserver {
            let hp = self.paths.host(host);
            let (log, pid_file) = (hp.log(component.name()), hp.pid_file(component.name()));
            let failed = exited_while_starting(host, component, &record, &log, &pid_file);
            let client = self.client().await?;
            probe::wait_until(
                &format!("{component} on {host}"),
                component.start_timeout(),
                Some(&log),
                &failed,
                || super::api::api_ready(&client),
            )
            .await?;
        }
        Ok(())
    }

    /// How to tell that `component`, just spawned on `host` as `record`, is ready: a
    /// wait that needs nothing of the fleet, so it can run after its locks are released.
    pub(crate) fn readiness(
        &self,
        host: &HostId,
        component: Component,
        record: PidRecord,
    ) -> Readiness {
        let hp = self.paths.host(host);
        Readiness {
            host: host.clone(),
            component,
            record,
            netns: self.plan.netns(host),
            log: hp.log(component.name()),
            pid_file: hp.pid_file(component.name()),
            check: component.probe(&hp, &self.plan),
        }
    }

    /// Spawns `component` on `host` from its unit (and the host's environment,
    /// [`NO_INSTANCE_METADATA`]), not waiting for anything.
    ///
    /// # Errors
    /// Unit and spawn errors.
    fn spawn_component(&self, host: &HostId, component: Component) -> Result<PidRecord> {
        let line = self.unit(host, component)?.command_line()?;
        let hp = self.paths.host(host);
        let mut env = line.env;
        // A fleet host is no cloud instance: without this, the AWS SDK in kubelet's
        // in-tree ECR credential provider spends 4 s of every kubelet start trying
        // 169.254.169.254, which no host can reach. A unit may still say otherwise.
        if !env.iter().any(|(k, _)| k == NO_INSTANCE_METADATA.0) {
            env.push((
                NO_INSTANCE_METADATA.0.to_owned(),
                NO_INSTANCE_METADATA.1.to_owned(),
            ));
        }
        let launch = Launch {
            program: line.program,
            args: line.args,
            env,
            netns: Some(netns::path(&self.plan.netns(host))),
            mountns: in_mount_ns(host, component).then(|| hp.mount_ns()),
            cgroup_procs: self
                .cgroups
                .procs_files(&system_cgroup(self.plan.slot, host)),
        };
        let (record, child) = process::spawn(
            &launch,
            &hp.log(component.name()),
            &hp.pid_file(component.name()),
        )?;
        self.keep_child(child);
        Ok(record)
    }

    /// The unit `component` on `host` starts from. A planned host's unit is rendered
    /// from the fleet's configuration when it has none yet ([`Fleet::install_units`]
    /// renders them all afresh at `yurt up`); an added host has only the units written
    /// for it.
    ///
    /// # Errors
    /// A missing unit of an added host, an unreadable unit, rendering errors.
    pub fn unit(&self, host: &HostId, component: Component) -> Result<Unit> {
        let path = self.unit_file(host, component);
        if path.exists() || self.joins_itself(host) {
            return Ok(Unit::load(&path)?);
        }
        self.install_unit(host, component)
    }

    fn install_unit(&self, host: &HostId, component: Component) -> Result<Unit> {
        let line = self.context().command_line(component, host)?;
        let unit = Unit::of(
            format!("{component} on {host}, installed by yurt up"),
            &line,
        );
        unit.save(&self.unit_file(host, component))?;
        Ok(unit)
    }

    /// Renders and writes the units of every process a planned host runs (`yurt up`
    /// does this before it starts the host; later starts read the files).
    ///
    /// # Errors
    /// Rendering or I/O errors.
    pub(crate) fn install_units(&self, host: &HostId) -> Result<()> {
        if self.is_added(host) {
            return Ok(());
        }
        if self.joins_itself(host) {
            // A bare fleet's edge host: a machine with containerd, joined later.
            self.install_unit(host, Component::Containerd)?;
            return Ok(());
        }
        for c in self.components_of(host).collect::<Vec<_>>() {
            self.install_unit(host, c)?;
        }
        Ok(())
    }

    /// Whether `host` was added with `yurt fleet add-host`.
    pub fn is_added(&self, host: &HostId) -> bool {
        matches!(host, HostId::Edge(n) if self.plan.added_host(n.as_str()).is_some())
    }

    /// Brings up one edge host from its units, as a machine boots: its mount
    /// namespace, containerd (with the fleet's images), then whatever else it runs (the
    /// hub, kubelet, kube-proxy and the tunnel agent of a planned host).
    pub(crate) async fn start_host(&self, host: &HostId) -> Result<()> {
        let all = self.components_of(host).collect();
        self.start_host_with(host, all).await
    }

    /// [`Fleet::start_host`] for `components` only (of those the host runs), in order.
    pub(crate) async fn start_host_with(
        &self,
        host: &HostId,
        components: Vec<Component>,
    ) -> Result<()> {
        let hp = self.paths.host(host);
        let images = self.paths.images();
        {
            let (hp, yurt) = (hp.clone(), self.machine.yurt_binary.clone());
            blocking(move || mountns::create(&hp, &yurt)).await?;
        }
        for c in components {
            self.start_component(host, c).await?;
            if c == Component::Containerd {
                let socket = hp.containerd_socket();
                let images = images.clone();
                blocking(move || import_all(&socket, &images)).await?;
            }
        }
        Ok(())
    }

    /// Starts the cloud host's own node (a bare fleet's): its mount namespace,
    /// containerd (with the fleet's images), kubelet and kube-proxy.
    pub(crate) async fn start_cloud_worker(&self) -> Result<()> {
        let host = HostId::Cloud;
        let node: Vec<Component> = Component::NODE
            .into_iter()
            .filter(|&c| self.runs(&host, c))
            .collect();
        if node.is_empty() {
            return Ok(());
        }
        self.start_host_with(&host, node).await
    }

    /// Waits until every edge host's tunnel agent holds a connection to every tunnel
    /// server of the fleet (its `yurt_tunnel_agent_connected` gauge), so `kubectl
    /// logs/exec` reach every node through any API server.
    ///
    /// # Errors
    /// [`Error::NotReady`] naming the first agent still short of connections after
    /// `timeout`.
    pub(crate) async fn wait_tunnel_agents(&self, timeout: Duration) -> Result<()> {
        let addr = std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            crate::components::TUNNEL_AGENT_ADMIN_PORT,
        ));
        let servers = if self.state.second_api_server { 2 } else { 1 };
        for edge in &self.plan.edges {
            let host = HostId::Edge(edge.name.clone());
            let ns = self.plan.netns(&host);
            let log = self.paths.host(&host).log(Component::TunnelAgent.name());
            let what = format!(
                "{} on {host} connected to {servers} tunnel server(s)",
                Component::TunnelAgent
            );
            probe::wait_until(&what, timeout, Some(&log), &|| None, || async {
                probe::http_get(&ns, addr, "/metrics")
                    .await
                    .ok()
                    .and_then(|(_, body)| probe::metric_value(&body, "yurt_tunnel_agent_connected"))
                    .is_some_and(|connected| connected >= f64::from(servers))
            })
            .await?;
        }
        Ok(())
    }

    /// One round of a supervisor: unless a reboot, stop or start is under way (it holds
    /// the operations lock; the round is then skipped), re-reads which processes were
    /// stopped on purpose and restarts the crashed ones `allow` lets through. Returns
    /// what was restarted and how it went.
    ///
    /// # Errors
    /// The lock or state file cannot be read.
    pub async fn supervise(
        &mut self,
        allow: impl Fn(&HostId, Component) -> bool,
    ) -> Result<Vec<(HostId, Component, Result<()>)>> {
        let ops = self.paths.ops_lock();
        let Ok(_guard) = blocking(move || lock::try_exclusive(&ops)).await? else {
            return Ok(Vec::new());
        };
        self.with_state_lock(|_| Ok(()))?;
        let mut done = Vec::new();
        for (host, component, _) in self.crashed() {
            if allow(&host, component) {
                let result = self.restart(&host, component).await;
                done.push((host, component, result));
            }
        }
        Ok(done)
    }

    async fn restart(&self, host: &HostId, component: Component) -> Result<()> {
        if in_mount_ns(host, component) {
            let (hp, yurt) = (self.paths.host(host), self.machine.yurt_binary.clone());
            blocking(move || mountns::create(&hp, &yurt)).await?;
        }
        self.start_component(host, component).await?;
        if component == Component::Containerd {
            let socket = self.paths.host(host).containerd_socket();
            let images = self.paths.images();
            blocking(move || import_all(&socket, &images)).await?;
        }
        Ok(())
    }

    /// Starts again every process that should run but does not (it crashed or was
    /// killed), in start order, like a service manager with `Restart=always`. Processes
    /// stopped on purpose stay stopped. Returns what was restarted and how it went.
    pub async fn restart_crashed(&self) -> Vec<(HostId, Component, Result<()>)> {
        let mut done = Vec::new();
        for (host, component, _) in self.crashed() {
            let result = self.restart(&host, component).await;
            done.push((host, component, result));
        }
        done
    }

    /// The status of every host and process.
    pub fn status(&self) -> Vec<HostStatus> {
        self.plan
            .hosts()
            .into_iter()
            .map(|host| {
                let hp = self.paths.host(&host);
                // (name, pool index, address) of an edge host, planned or added.
                let edge = match &host {
                    HostId::Edge(n) => self
                        .plan
                        .edge(n.as_str())
                        .map(|e| (&e.name, e.pool, e.ip))
                        .or_else(|| {
                            self.plan
                                .added_host(n.as_str())
                                .map(|a| (&a.name, a.pool, a.ip))
                        }),
                    _ => None,
                };
                let address = match &host {
                    HostId::Cloud => crate::spec::net::CLOUD_IP.addr,
                    HostId::Router => crate::spec::net::ROUTER_WAN_IP.addr,
                    HostId::Edge(_) => edge.map(|e| e.2).unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let connected = edge.map(|(name, pool, _)| {
                    let pool = &self.plan.pools[pool];
                    [
                        LinkTarget::Node(name.to_string()),
                        LinkTarget::Pool(pool.name.to_string()),
                        LinkTarget::Cloud,
                    ]
                    .iter()
                    .all(|t| network::link_is_up(&self.plan, t).unwrap_or(false))
                });
                let processes = self
                    .components_of(&host)
                    .map(|c| self.process_status(&host, &hp, c))
                    .collect();
                HostStatus {
                    netns: self.plan.netns(&host),
                    pool: edge.map(|e| self.plan.pools[e.1].name.to_string()),
                    host,
                    address,
                    connected,
                    processes,
                }
            })
            .collect()
    }

    fn process_status(&self, host: &HostId, hp: &HostPaths, c: Component) -> ProcessStatus {
        let record = PidRecord::read(&hp.pid_file(c.name())).filter(PidRecord::is_alive);
        let state = match record {
            Some(_) => ProcessState::Running,
            None if self.state.is_stopped(&host.to_string(), c.name()) => ProcessState::Stopped,
            None => ProcessState::Dead,
        };
        ProcessStatus {
            component: c,
            state,
            pid: record.map(|r| r.pid),
            log: hp.log(c.name()),
        }
    }

    pub(super) fn with_state_lock<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let _guard = lock::exclusive(&self.paths.state_lock())?;
        self.reload_state()?;
        let out = f(self)?;
        self.save_state()?;
        Ok(out)
    }

    /// Resident memory of every process on `host` (daemons, shims and containers), in bytes.
    pub fn host_rss_bytes(&self, host: &HostId) -> u64 {
        self.cgroups
            .pids(&host_cgroup(self.plan.slot, host))
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .sum::<u64>()
            * 1024
    }

    /// Cuts the link between the cloud and a node, a pool or (`cloud`) every site.
    /// The hosts keep running.
    ///
    /// # Errors
    /// Unknown target, fleet not running, `ip` failure.
    pub fn cut(&mut self, target: &str) -> Result<LinkTarget> {
        self.set_link(target, false)
    }

    /// Restores a link cut with [`Fleet::cut`].
    ///
    /// # Errors
    /// Unknown target, fleet not running, `ip` failure.
    pub fn restore(&mut self, target: &str) -> Result<LinkTarget> {
        self.set_link(target, true)
    }

    fn set_link(&mut self, target: &str, connected: bool) -> Result<LinkTarget> {
        self.require_up()?;
        let t = LinkTarget::resolve(&self.plan, target)?;
        self.with_state_lock(|f| {
            network::set_link(&f.plan, &t, connected)?;
            if connected {
                f.state.cut.remove(t.name());
            } else {
                f.state.cut.insert(t.name().to_owned());
            }
            Ok(t.clone())
        })
    }

    fn component_on(&self, host: &str, process: &str) -> Result<(HostId, Component)> {
        let host = self.plan.host(host)?;
        let c: Component = process.parse()?;
        if !self.runs(&host, c) {
            return Err(Error::Unknown {
                kind: "process",
                name: format!("{c} on {host}"),
                known: self
                    .components_of(&host)
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok((host, c))
    }

    /// Stops one process on a host (SIGTERM, then SIGKILL after its grace period) and
    /// records that it was stopped on purpose. Its children (a containerd's containers)
    /// keep running, as with `systemctl stop`.
    ///
    /// # Errors
    /// Unknown host or process, fleet not running.
    pub fn stop_process(&mut self, host: &str, process: &str) -> Result<()> {
        self.end_process(host, process, false)
    }

    /// Kills one process on a host at once (SIGKILL, as in a crash: no drain, no
    /// goodbye to its peers) and records that it was stopped on purpose, so it stays
    /// down until `start` and is not reported as crashed.
    ///
    /// # Errors
    /// Unknown host or process, fleet not running.
    pub fn kill_process(&mut self, host: &str, process: &str) -> Result<()> {
        self.end_process(host, process, true)
    }

    fn end_process(&mut self, host: &str, process: &str, kill: bool) -> Result<()> {
        self.require_up()?;
        let _ops = lock::exclusive(&self.paths.ops_lock())?;
        if let Some((r, grace)) = self.record_stopped(host, process)? {
            if kill {
                process::kill_now(r);
            } else {
                process::stop(r, grace);
            }
        }
        Ok(())
    }

    /// Records `process` on `host` as stopped on purpose (first: a supervisor must not
    /// see its death as a crash); its pid record, if any, and how long it may take to
    /// stop. The caller holds the operations lock.
    fn record_stopped(
        &mut self,
        host: &str,
        process: &str,
    ) -> Result<Option<(PidRecord, Duration)>> {
        let (host, c) = self.component_on(host, process)?;
        let hp = self.paths.host(&host);
        self.with_state_lock(|f| {
            f.state.set_stopped(&host.to_string(), c.name(), true);
            Ok(())
        })?;
        Ok(PidRecord::read(&hp.pid_file(c.name())).map(|r| (r, c.stop_grace())))
    }

    /// [`Fleet::stop_process`] for async callers serving several hosts at once (the
    /// service manager): the operations lock is waited for, and the process's exit
    /// awaited, off the runtime's workers. Waiting on them would hold a worker while
    /// another request, holding the lock, awaits a readiness probe on it: with a
    /// request per worker, none could finish.
    ///
    /// # Errors
    /// Unknown host or process, fleet not running.
    pub async fn stop_process_async(&mut self, host: &str, process: &str) -> Result<()> {
        self.require_up()?;
        let ops = self.paths.ops_lock();
        let _ops = blocking(move || lock::exclusive(&ops)).await?;
        if let Some((r, grace)) = self.record_stopped(host, process)? {
            blocking(move || {
                process::stop(r, grace);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Starts one process on a host (if it is not running) and waits until it is ready.
    /// The fleet's operations lock is held only while it is spawned: a slow start (a hub
    /// whose link is cut) holds up no reboot, stop or start of another process.
    ///
    /// # Errors
    /// Unknown host or process, fleet not running, start failures.
    pub async fn start_process(&mut self, host: &str, process: &str) -> Result<()> {
        match self.begin_start(host, process).await? {
            Some(readiness) => readiness.wait().await,
            None => Ok(()),
        }
    }

    /// Starts one process on a host (if it is not running) without waiting for it to be
    /// ready (`systemctl --no-block`); only a process that cannot be spawned fails
    /// (containerd and kube-apiserver are still waited for, [`Fleet::begin_start`]).
    ///
    /// # Errors
    /// Unknown host or process, fleet not running, spawn failures.
    pub async fn launch_process(&mut self, host: &str, process: &str) -> Result<()> {
        self.begin_start(host, process).await.map(drop)
    }

    /// Spawns one process on a host if it is not running, under the fleet's operations
    /// lock, and gives the wait for its readiness, to be run with no lock held (`None`:
    /// it was running, or is ready already). containerd (the images are imported into
    /// it) and kube-apiserver (its `/readyz`) are waited for here, under the lock. A
    /// start that finds the process running answers at once, as it did before, even if
    /// another start of it is still waiting for its readiness (systemd would wait).
    ///
    /// # Errors
    /// Unknown host or process, fleet not running, spawn failures.
    pub async fn begin_start(&mut self, host: &str, process: &str) -> Result<Option<Readiness>> {
        self.require_up()?;
        let ops = self.paths.ops_lock();
        let _ops = blocking(move || lock::exclusive(&ops)).await?;
        let (host, c) = self.component_on(host, process)?;
        let hp = self.paths.host(&host);
        // Asked to run from now on: a start that fails leaves a crashed process (which a
        // supervisor retries and a crash report names), not one stopped on purpose.
        let name = host.to_string();
        self.with_state_lock(|f| {
            f.state.set_stopped(&name, c.name(), false);
            Ok(())
        })?;
        let running = PidRecord::read(&hp.pid_file(c.name())).is_some_and(|r| r.is_alive());
        if running {
            return Ok(None);
        }
        if c == Component::Kubelet || c == Component::KubeProxy || c == Component::Containerd {
            let (hp2, yurt) = (hp.clone(), self.machine.yurt_binary.clone());
            blocking(move || mountns::create(&hp2, &yurt)).await?;
        }
        let record = self.spawn_component(&host, c)?;
        match c {
            Component::Containerd => {
                self.wait_ready(&host, c, record).await?;
                let socket = hp.containerd_socket();
                let images = self.paths.images();
                blocking(move || import_all(&socket, &images)).await?;
                Ok(None)
            }
            // Its readiness needs the fleet's client: waited for here (the cloud's
            // API server is restarted by hand, not by a service manager).
            Component::KubeApiserver => self.wait_ready(&host, c, record).await.map(|()| None),
            _ => Ok(Some(self.readiness(&host, c, record))),
        }
    }

    /// Reboots an edge host: every process on it dies at once (containers included, as
    /// in a power loss), its volatile state (`/run`, mounts, pod networks, iptables rules)
    /// is lost, then containerd, kubelet and kube-proxy start again. Its link state is kept.
    ///
    /// # Errors
    /// Unknown or non-edge host, fleet not running, start failures.
    pub async fn reboot(&mut self, host: &str) -> Result<()> {
        self.require_up()?;
        let host = self.plan.host(host)?;
        let HostId::Edge(name) = &host else {
            return Err(Error::Invalid(format!(
                "only edge hosts can be rebooted, not {host}"
            )));
        };
        let _ = name;
        // Held until every process is up again: a supervisor must not restart what the
        // reboot is about to start.
        let ops = self.paths.ops_lock();
        let _ops = blocking(move || lock::exclusive(&ops)).await?;
        {
            let cgroups = self.cgroups.clone();
            let cg = host_cgroup(self.plan.slot, &host);
            let hp = self.paths.host(&host);
            let ns = self.plan.netns(&host);
            blocking(move || power_off(&cgroups, &cg, &hp, &ns)).await?;
        }
        let name = host.to_string();
        self.with_state_lock(|f| {
            f.state.stopped.remove(&name);
            Ok(())
        })?;
        self.start_host(&host).await
    }

    /// A command that runs `argv` inside `host` (its network namespace, its mount
    /// namespace if it has one, and its cgroup, so a reboot ends it too).
    ///
    /// # Errors
    /// Unknown host, empty command, fleet not running.
    pub fn exec_command(&self, host: &str, argv: &[String]) -> Result<Command> {
        self.require_up()?;
        let host = self.plan.host(host)?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Invalid("no command given: use -- CMD [ARGS...]".into()))?;
        let hp = self.paths.host(&host);
        let mut env: Vec<(String, String)> = std::env::var("TERM")
            .map(|t| vec![("TERM".to_owned(), t)])
            .unwrap_or_default();
        // Where the host keeps its files (yurt_core::host): tools that run on it find its
        // facts and units there.
        env.push((
            yurt_core::host::HOST_DIR_ENV.to_owned(),
            hp.root().display().to_string(),
        ));
        // Every host has the fleet's `yurt` installed, as it runs its hub from it.
        if let Some(dir) = self.machine.yurt_binary.parent() {
            env.push((
                "PATH".to_owned(),
                format!("{}:{}", dir.display(), crate::process::PATH),
            ));
        }
        let launch = Launch {
            program: program.into(),
            args: args.iter().map(Into::into).collect(),
            env,
            netns: Some(netns::path(&self.plan.netns(&host))),
            // An edge host's, or a bare fleet's cloud node's.
            mountns: mountns::exists(&hp).then(|| hp.mount_ns()),
            cgroup_procs: self
                .cgroups
                .procs_files(&system_cgroup(self.plan.slot, &host)),
        };
        Ok(launch.command())
    }
}

/// Kills everything in a host's cgroup, drops its mount namespace and volatile state,
/// and resets its network namespace to what it had at "power on" (its uplink only).
fn power_off(
    cgroups: &crate::cgroup::Cgroups,
    cgroup: &str,
    hp: &HostPaths,
    ns: &str,
) -> Result<()> {
    cgroups.kill_all(cgroup, Duration::from_secs(30))?;
    mountns::destroy(hp)?;
    let run = hp.run();
    if run.exists() {
        std::fs::remove_dir_all(&run).map_err(|e| Error::io(&run, e))?;
    }
    // Pod network namespaces die with the mount namespace; give the kernel a moment to
    // release their links, then drop whatever else the host had built (cni0, ...).
    for _ in 0..50 {
        let links = netns::ip(Some(ns), &["-o", "link", "show"])?;
        let extra: Vec<String> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|n| n != "lo" && n != "eth0" && !n.is_empty())
            .collect();
        if extra.is_empty() {
            break;
        }
        for link in extra {
            let _ = netns::ip(Some(ns), &["link", "delete", &link]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for table in ["filter", "nat", "mangle", "raw"] {
        for tool in ["iptables", "ip6tables"] {
            let _ = netns::run_in(ns, "flush rules", tool, &["-w", "-t", table, "-F"]);
            let _ = netns::run_in(ns, "delete chains", tool, &["-w", "-t", table, "-X"]);
        }
    }
    let _ = netns::run_in(ns, "flush conntrack", "conntrack", &["-F"]);
    Ok(())
}

/// Imports every image archive in `dir` into the containerd at `socket`.
pub(crate) fn import_all(socket: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut archives: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    archives.sort();
    for archive in archives {
        image::import(socket, &archive)?;
    }
    Ok(())
}

/// Runs a blocking closure on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("background task failed: {e}")))?
}

/// A readiness wait for a process just spawned ([`Fleet::readiness`]).
#[derive(Debug)]
pub struct Readiness {
    host: HostId,
    component: Component,
    record: PidRecord,
    netns: String,
    log: PathBuf,
    pid_file: PathBuf,
    check: probe::Probe,
}

impl Readiness {
    /// Waits until the process answers its probe.
    ///
    /// # Errors
    /// [`Error::ProcessExited`] if it dies first (stopped by another operation, or
    /// crashed), [`Error::NotReady`] on timeout.
    pub async fn wait(self) -> Result<()> {
        let failed = exited_while_starting(
            &self.host,
            self.component,
            &self.record,
            &self.log,
            &self.pid_file,
        );
        probe::wait_until(
            &format!("{} on {}", self.component, self.host),
            self.component.start_timeout(),
            Some(&self.log),
            &failed,
            || probe::check(&self.netns, &self.check),
        )
        .await?;
        Ok(())
    }
}

/// The error for `component` on `host` (`record`) no longer running while it starts,
/// unless another start (a reboot's, once no lock is held) put a live one in its place
/// (`pid_file`), whose readiness is then waited for instead.
fn exited_while_starting<'a>(
    host: &HostId,
    component: Component,
    record: &'a PidRecord,
    log: &'a Path,
    pid_file: &'a Path,
) -> impl Fn() -> Option<Error> + Sync + 'a {
    let host = host.to_string();
    move || {
        let replaced = || PidRecord::read(pid_file).is_some_and(|r| r.is_alive());
        (!record.is_alive() && !replaced()).then(|| Error::ProcessExited {
            host: host.clone(),
            process: component.name().to_owned(),
            status: "exited while starting".into(),
            log: log.to_owned(),
            tail: cmd::tail_file(log, 8),
        })
    }
}
