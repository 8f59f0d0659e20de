//! The layout of a fleet's data folder. Everything a fleet writes lives under it, so
//! one folder holds a fleet's whole state and `rm -rf` of it (after `yurt down`) is complete.
//!
//! ```text
//! DIR/fleet.json             spec, slot, cut links, stopped processes
//! DIR/admin.kubeconfig       kubeconfig for this machine
//! DIR/up.lock                held by the `yurt up` that runs the fleet
//! DIR/pki/                   CA, certificates, keys, component kubeconfigs
//! DIR/images/                image archives imported into every node
//! DIR/hosts/<host>/          per host: config, persistent state, logs
//! DIR/hosts/<host>/run/      per host volatile state (pids, sockets): wiped by a reboot
//! DIR/hosts/<host>/ns/mnt    the host's persistent mount namespace (edge hosts)
//! ```

use std::path::{Path, PathBuf};

use crate::spec::HostId;

/// Paths inside a fleet's data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPaths {
    root: PathBuf,
}

impl FleetPaths {
    /// Paths for the data folder `root` (made absolute by the caller).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The fleet's state file.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("fleet.json")
    }

    /// Lock held by the `yurt up` that runs the fleet.
    pub fn up_lock(&self) -> PathBuf {
        self.root.join("up.lock")
    }

    /// Lock held while processes are deliberately started or stopped (a reboot, a stop,
    /// a start) and while a supervisor restarts crashed ones: one owner at a time, so a
    /// reboot and the supervisor never both start a host's processes.
    pub fn ops_lock(&self) -> PathBuf {
        self.root.join("ops.lock")
    }

    /// Lock serialising changes to the state file.
    pub fn state_lock(&self) -> PathBuf {
        self.root.join("state.lock")
    }

    /// The admin kubeconfig for clients on this machine.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }

    /// Certificates, keys and component kubeconfigs.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// Image archives imported into every node.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Per-host paths.
    pub fn host(&self, host: &HostId) -> HostPaths {
        HostPaths {
            root: self.root.join("hosts").join(host.to_string()),
        }
    }
}

/// Paths of one host inside the data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    root: PathBuf,
}

impl HostPaths {
    /// The host's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Log folder.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The log of process `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }

    /// Volatile state (what a reboot clears): pid files, sockets, IPAM leases.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Prometheus' database (cloud host).
    pub fn prometheus_data(&self) -> PathBuf {
        self.root.join("prometheus")
    }

    /// The tunnel server's egress socket (cloud host): kube-apiserver's `cluster`
    /// egress connects to it.
    pub fn egress_socket(&self) -> PathBuf {
        self.run().join("tunnel").join("egress.sock")
    }

    /// The second tunnel server's egress socket (cloud host, `yurt up
    /// --second-api-server`): the second kube-apiserver's `cluster` egress.
    pub fn replica_egress_socket(&self) -> PathBuf {
        self.run().join("tunnel-2").join("egress.sock")
    }

    /// The pid file of process `name`.
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.run().join("pids").join(format!("{name}.pid"))
    }

    /// Generated configuration files.
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }

    /// Folder whose bind mount holds the persistent mount namespace.
    pub fn mount_ns_dir(&self) -> PathBuf {
        self.root.join("ns")
    }

    /// The persistent mount namespace file.
    pub fn mount_ns(&self) -> PathBuf {
        self.mount_ns_dir().join("mnt")
    }

    /// etcd data (cloud host).
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }

    /// The image registry's storage (cloud host; both registry processes share it).
    pub fn registry_data(&self) -> PathBuf {
        self.root.join("registry")
    }

    /// containerd's registry host configuration (`config_path`).
    pub fn containerd_certs_d(&self) -> PathBuf {
        self.config().join("certs.d")
    }

    /// containerd's persistent root.
    pub fn containerd_root(&self) -> PathBuf {
        self.root.join("containerd")
    }

    /// containerd's volatile state.
    pub fn containerd_state(&self) -> PathBuf {
        self.run().join("containerd")
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.run().join("containerd.sock")
    }

    /// CNI configuration folder.
    pub fn cni_conf(&self) -> PathBuf {
        self.config().join("cni")
    }

    /// CNI IPAM leases (volatile, like /run).
    pub fn cni_ipam(&self) -> PathBuf {
        self.run().join("cni-ipam")
    }

    /// Bind-mounted over /var/lib/cni inside the host (libcni's result cache).
    pub fn cni_cache(&self) -> PathBuf {
        self.run().join("cni-cache")
    }

    /// kubelet's root dir.
    pub fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }

    /// The hub's cache (persistent: it is what keeps the node working offline).
    pub fn hub_cache(&self) -> PathBuf {
        self.root.join("yurthub")
    }

    /// Static pod manifests.
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// Bind-mounted over /var/log inside the host (kubelet hard-codes /var/log/pods).
    pub fn var_log(&self) -> PathBuf {
        self.root.join("var-log")
    }
}
