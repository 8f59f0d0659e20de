//! Hosts added to and removed from a running fleet: `yurt fleet add-host` makes a bare
//! machine in a site (its namespace, port on the site's switch, address and routes,
//! mount namespace, containerd with the fleet's images and a CNI template), with no
//! certificates and no Node, ready for `yurt adm join`; `yurt fleet remove-host` takes
//! it away again, leaving no process, mount, route, cgroup or file of it.

use super::ops::blocking;
use super::{Fleet, host_cgroup, system_cgroup};
use crate::components::{self, Component};
use crate::error::{Error, Result};
use crate::spec::HostId;
use crate::units::Unit;
use crate::{lock, mountns, mounts, network, process};

impl Fleet {
    /// Adds a bare host named `name` to the site of `pool` and starts its containerd.
    /// The fleet's route controller (on the router) starts with the first added host.
    ///
    /// The host is recorded before anything is built, so a failure half-way leaves
    /// something [`Fleet::remove_host`] can clean up (the error says so).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a taken or invalid name, [`Error::Unknown`] for an unknown
    /// pool, the fleet not running, and the first step that fails.
    pub async fn add_host(&mut self, name: &str, pool: &str) -> Result<HostId> {
        self.require_up()?;
        let ops = self.paths.ops_lock();
        let _ops = blocking(move || lock::exclusive(&ops)).await?;
        let (name, pool) = (name.to_owned(), pool.to_owned());
        self.with_state_lock(|f| {
            let record = f.plan.allocate_added(&name, &pool)?;
            f.state.added_hosts.insert(name.clone(), record);
            Ok(())
        })?;
        self.reload_state()?;
        let host = self.plan.host(&name)?;
        self.build_added_host(&host).await.map_err(|e| {
            Error::Invalid(format!(
                "adding {name} failed: {e} (run `yurt fleet remove-host {name}` to clean up)"
            ))
        })?;
        Ok(host)
    }

    async fn build_added_host(&self, host: &HostId) -> Result<()> {
        let added = self
            .plan
            .added_host(&host.to_string())
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("{host} is not an added host")))?;
        self.cgroups.create(&system_cgroup(self.plan.slot, host))?;
        {
            let plan = self.plan.clone();
            let added = added.clone();
            blocking(move || network::add_host(&plan, &added)).await?;
        }
        let hp = self.paths.host(host);
        self.save_host_facts(host, added.ip)?;
        let line = components::added_host_containerd(&hp, &self.pki)?;
        Unit::of(
            format!("containerd on {host}, installed by yurt fleet add-host"),
            &line,
        )
        .save(&self.unit_file(host, Component::Containerd))?;
        self.start_host(host).await?;
        super::api::apply_route_controller_rbac(&self.client().await?).await?;
        let router = HostId::Router;
        let running = process::PidRecord::read(
            &self
                .paths
                .host(&router)
                .pid_file(Component::RouteController.name()),
        )
        .is_some_and(|r| r.is_alive());
        if !running {
            self.start_component(&router, Component::RouteController)
                .await?;
        }
        Ok(())
    }

    /// Writes what tools running on `host` (join, reset, the servant) need to know of
    /// the machine (`yurt_core::host::HostFacts`): its name and address, where the
    /// binaries, containerd's socket, its cgroup and CNI folders are.
    pub(crate) fn save_host_facts(&self, host: &HostId, ip: std::net::Ipv4Addr) -> Result<()> {
        let hp = self.paths.host(host);
        let facts = yurt_core::host::HostFacts {
            name: host.to_string(),
            address: std::net::IpAddr::V4(ip),
            kubelet: self.bins.path(crate::upstream::Binary::Kubelet),
            kube_proxy: self.bins.path(crate::upstream::Binary::KubeProxy),
            yurt: self.machine.yurt_binary.clone(),
            container_runtime_endpoint: format!("unix://{}", hp.containerd_socket().display()),
            cgroup_root: format!("/{}", host_cgroup(self.plan.slot, host)),
            pause_image: crate::image::PAUSE_IMAGE.to_owned(),
            cni_config_dir: hp.cni_conf(),
            cni_state_dirs: vec![hp.cni_ipam(), hp.cni_cache()],
        };
        facts
            .save(hp.root())
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// The command line of a kubelet for the added host `name` that talks to the API
    /// server directly with `kubeconfig` (see `Context::added_host_kubelet`).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `name` is not an added host; I/O errors.
    pub fn added_host_kubelet(
        &self,
        name: &str,
        kubeconfig: &std::path::Path,
    ) -> Result<components::CommandLine> {
        let host = self
            .plan
            .added_host(name)
            .ok_or_else(|| Error::Invalid(format!("{name} is not an added host")))?;
        self.context().added_host_kubelet(host, kubeconfig)
    }

    /// Removes a host added with [`Fleet::add_host`]: everything in it dies at once (as
    /// in a power loss), then its mounts, routes, namespace, cgroup, files and record go.
    /// Its Node, if it joined, stays (as when a machine is unplugged); delete it with
    /// kubectl or `yurt adm reset --delete-node` first. The route controller stops with
    /// the last added host.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a host `yurt up` planned, [`Error::Unknown`] for an
    /// unknown one, the fleet not running, and the first step that fails.
    pub async fn remove_host(&mut self, name: &str) -> Result<()> {
        self.require_up()?;
        let host = self.plan.host(name)?;
        let Some(added) = self.plan.added_host(name).cloned() else {
            return Err(Error::Invalid(format!(
                "{host} was planned by yurt up; only hosts added with `yurt fleet add-host` can be removed"
            )));
        };
        let ops = self.paths.ops_lock();
        let _ops = blocking(move || lock::exclusive(&ops)).await?;
        {
            let cgroups = self.cgroups.clone();
            let cgroup = host_cgroup(self.plan.slot, &host);
            let hp = self.paths.host(&host);
            let plan = self.plan.clone();
            blocking(move || {
                if cgroups.exists(&cgroup) {
                    cgroups.kill_all(&cgroup, std::time::Duration::from_secs(30))?;
                }
                mountns::destroy(&hp)?;
                mounts::unmount_under(hp.root())?;
                super::routes::remove_routes_via(&plan, added.ip)?;
                network::remove_host(&plan, &added)?;
                cgroups.remove(&cgroup)?;
                let root = hp.root().to_owned();
                if root.exists() {
                    std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
                }
                Ok(())
            })
            .await?;
        }
        let key = name.to_owned();
        self.with_state_lock(|f| {
            f.state.added_hosts.remove(&key);
            f.state.stopped.remove(&key);
            f.state.cut.remove(&key);
            Ok(())
        })?;
        self.reload_state()?;
        if self.plan.added.is_empty() {
            let pid_file = self
                .paths
                .host(&HostId::Router)
                .pid_file(Component::RouteController.name());
            if let Some(r) = process::PidRecord::read(&pid_file) {
                process::stop(r, Component::RouteController.stop_grace());
            }
        }
        Ok(())
    }
}
