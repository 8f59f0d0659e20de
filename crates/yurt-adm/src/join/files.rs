//! What a join writes on the host, and where: kubeadm's layout under the host's folder
//! (`etc/kubernetes/...`, `var/lib/kubelet/...`), the hub's under `var/lib/yurthub`, and
//! the units of kubelet, the hub and kube-proxy. Every write is atomic and a rewrite
//! of the same content changes nothing, so a resumed join finds what the last one left.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use yurt_core::host::HostFacts;
use yurt_core::units::{Restart, Unit, write_atomic};

use super::{NodeRole, NodeType};
use crate::discovery::ClusterInfo;

/// The hub's plain proxy for local components.
pub const HUB_LOCAL: &str = "http://127.0.0.1:10261";

/// How kubelet reaches the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletApi {
    /// Directly, bootstrapping its client certificate with the token (kubeadm's
    /// `--bootstrap-kubeconfig`).
    Bootstrap,
    /// Through the hub on 127.0.0.1:10261, its client certificate still rotated in
    /// its certificate folder (the hub follows it).
    ThroughHub,
    /// Directly, with the kubeconfig its bootstrap left (`node-servant revert`).
    Direct,
}

/// The files of a host a join writes and reads.
#[derive(Debug, Clone)]
pub struct HostFiles {
    dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())
}

impl HostFiles {
    /// The files under the host's folder `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The host's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `etc/kubernetes`.
    pub fn kubernetes(&self) -> PathBuf {
        self.dir.join("etc/kubernetes")
    }

    /// The cluster CA.
    pub fn ca(&self) -> PathBuf {
        self.kubernetes().join("pki/ca.crt")
    }

    /// kubelet's bootstrap kubeconfig (the token).
    pub fn bootstrap_kubeconfig(&self) -> PathBuf {
        self.kubernetes().join("bootstrap-kubelet.conf")
    }

    /// kubelet's kubeconfig, written by kubelet once its certificate is issued.
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.kubernetes().join("kubelet.conf")
    }

    /// The kubeconfig of kubelet and kube-proxy behind the hub.
    pub fn hub_kubeconfig(&self) -> PathBuf {
        self.kubernetes().join("kubelet-through-hub.conf")
    }

    /// kubelet's root folder (`/var/lib/kubelet`).
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("var/lib/kubelet")
    }

    /// kubelet's certificate folder.
    pub fn kubelet_pki(&self) -> PathBuf {
        self.kubelet_root().join("pki")
    }

    /// kubelet's rotating client certificate and key (one file).
    pub fn kubelet_client_pem(&self) -> PathBuf {
        self.kubelet_pki().join("kubelet-client-current.pem")
    }

    /// The hub's folder.
    pub fn yurthub(&self) -> PathBuf {
        self.dir.join("var/lib/yurthub")
    }

    /// The unit file of `process`.
    pub fn unit(&self, process: &str) -> PathBuf {
        yurt_core::units::file(&yurt_core::units::dir(&self.dir), process)
    }

    /// Written when a join finished, holding the node name.
    pub fn joined_marker(&self) -> PathBuf {
        self.dir.join("etc/yurt/joined")
    }

    /// Whether kubelet's TLS bootstrap is done: its kubeconfig exists and names its
    /// certificate file, which holds a certificate.
    pub fn kubelet_bootstrapped(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.kubelet_kubeconfig()) else {
            return false;
        };
        text.contains("kubelet-client-current.pem")
            && std::fs::read_to_string(self.kubelet_client_pem())
                .is_ok_and(|pem| pem.contains("BEGIN CERTIFICATE"))
    }

    /// The subject of kubelet's current client certificate (`system:node:<name>`), if
    /// it has one.
    pub fn kubelet_identity(&self) -> Option<String> {
        let pem = std::fs::read(self.kubelet_client_pem()).ok()?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let cert = block.parse_x509().ok()?;
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_owned)
    }

    /// The cluster CA.
    ///
    /// # Errors
    /// A write failed.
    pub fn write_ca(&self, cluster: &ClusterInfo) -> Result<(), String> {
        write(&self.ca(), &cluster.ca_pem)
    }

    /// The bootstrap kubeconfig (the token; readable by root only).
    ///
    /// # Errors
    /// A write failed.
    pub fn write_bootstrap_kubeconfig(
        &self,
        cluster: &ClusterInfo,
        token: &str,
    ) -> Result<(), String> {
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&cluster.ca_pem),
            }}],
            "users": [{"name": "tls-bootstrap-token-user", "user": {"token": token}}],
            "contexts": [{"name": "tls-bootstrap", "context": {"cluster": "cluster", "user": "tls-bootstrap-token-user"}}],
            "current-context": "tls-bootstrap",
        });
        write_private(&self.bootstrap_kubeconfig(), &kubeconfig.to_string())
    }

    /// Removes the bootstrap kubeconfig (once kubelet has its own).
    ///
    /// # Errors
    /// It exists and cannot be removed.
    pub fn remove_bootstrap_kubeconfig(&self) -> Result<(), String> {
        match std::fs::remove_file(self.bootstrap_kubeconfig()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", self.bootstrap_kubeconfig().display()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the kubelet configuration this host has asks for a serving certificate
    /// by CSR (false without one).
    pub fn kubelet_serves_by_csr(&self) -> bool {
        std::fs::read_to_string(self.kubelet_root().join("config.yaml"))
            .ok()
            .and_then(|text| super::serves_by_csr(&text).ok())
            .unwrap_or(false)
    }

    /// kubelet's configuration, flags and unit for `api`; returns whether the unit
    /// changed (a running kubelet then needs a restart).
    ///
    /// # Errors
    /// A write failed.
    pub fn write_kubelet(
        &self,
        facts: &HostFacts,
        options: &NodeRole,
        api: KubeletApi,
        serving_by_csr: bool,
    ) -> Result<bool, String> {
        let config = self.kubelet_root().join("config.yaml");
        write(
            &config,
            &kubelet_config(facts, &self.ca(), &self.dir, serving_by_csr),
        )?;
        let mut labels = Vec::new();
        if let Some(pool) = &options.pool {
            labels.push(format!("{}={pool}", yurt_api_labels::NODE_POOL));
        }
        labels.push(format!(
            "{}={}",
            yurt_api_labels::IS_EDGE_WORKER,
            options.node_type == NodeType::Edge
        ));
        // kubeadm's kubeadm-flags.env: what differs per host.
        let flags = self.kubelet_root().join("kubeadm-flags.env");
        write(
            &flags,
            &format!(
                "KUBELET_KUBEADM_ARGS=\"--container-runtime=remote --container-runtime-endpoint={rt} --image-service-endpoint={rt} --pod-infra-container-image={pause} --node-ip={ip} --hostname-override={node} --node-labels={labels}\"\n",
                rt = facts.container_runtime_endpoint,
                pause = facts.pause_image,
                ip = facts.address,
                node = options.node,
                labels = labels.join(","),
            ),
        )?;
        let mut exec = vec![
            facts.kubelet.display().to_string(),
            format!("--config={}", config.display()),
            format!("--root-dir={}", self.kubelet_root().display()),
            format!("--cert-dir={}", self.kubelet_pki().display()),
        ];
        match api {
            KubeletApi::Bootstrap => exec.extend([
                format!(
                    "--bootstrap-kubeconfig={}",
                    self.bootstrap_kubeconfig().display()
                ),
                format!("--kubeconfig={}", self.kubelet_kubeconfig().display()),
            ]),
            KubeletApi::ThroughHub => {
                write(&self.hub_kubeconfig(), &hub_kubeconfig())?;
                exec.push(format!("--kubeconfig={}", self.hub_kubeconfig().display()));
            }
            KubeletApi::Direct => {
                exec.push(format!(
                    "--kubeconfig={}",
                    self.kubelet_kubeconfig().display()
                ));
            }
        }
        exec.extend([
            "--runtime-request-timeout=5m".to_owned(),
            "--v=1".to_owned(),
            "$KUBELET_KUBEADM_ARGS".to_owned(),
        ]);
        let unit = Unit {
            description: format!("kubelet of {}, written by yurt adm", options.node),
            exec,
            environment: Default::default(),
            environment_files: vec![flags],
            restart: Restart::Always,
        };
        unit.save(&self.unit("kubelet")).map_err(|e| e.to_string())
    }

    /// The hub's unit: from kubelet's rotating certificate, asking for its own client
    /// and serving certificates.
    ///
    /// # Errors
    /// A write failed.
    pub fn write_hub(
        &self,
        facts: &HostFacts,
        server: &str,
        options: &NodeRole,
    ) -> Result<bool, String> {
        let hub = self.yurthub();
        let cache = hub.join("cache");
        std::fs::create_dir_all(&cache).map_err(io(&cache))?;
        let client = self.kubelet_client_pem().display().to_string();
        let mut exec = vec![
            facts.yurt.display().to_string(),
            "hub".to_owned(),
            format!("--node-name={}", options.node),
            format!("--server-addr={server}"),
            format!("--ca-file={}", self.ca().display()),
            format!("--client-cert={client}"),
            format!("--client-key={client}"),
            "--request-client-certificate".to_owned(),
            format!("--cert-dir={}", hub.join("pki").display()),
            format!("--disk-cache-path={}", cache.display()),
        ];
        if let Some(pool) = &options.pool {
            exec.push(format!("--nodepool-name={pool}"));
        }
        let unit = Unit {
            description: format!("yurt hub of {}, written by yurt adm", options.node),
            exec,
            environment: [("RUST_LOG".to_owned(), "info".to_owned())].into(),
            environment_files: Vec::new(),
            restart: Restart::Always,
        };
        unit.save(&self.unit("yurt-hub")).map_err(|e| e.to_string())
    }

    /// kube-proxy's configuration and unit: an edge node's through the hub, a plain
    /// node's with kubelet's credentials (which the cluster must let read what
    /// kube-proxy reads: `system:node-proxier`, bound to `system:nodes` in every fleet).
    ///
    /// # Errors
    /// A write failed.
    pub fn write_kube_proxy(&self, facts: &HostFacts, options: &NodeRole) -> Result<bool, String> {
        let config = self.dir.join("var/lib/kube-proxy/config.yaml");
        let kubeconfig = match options.node_type {
            super::NodeType::Edge => self.hub_kubeconfig(),
            super::NodeType::Plain => self.kubelet_kubeconfig(),
        };
        let text = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig.display().to_string()},
            "hostnameOverride": options.node.as_str(),
            "bindAddress": "0.0.0.0",
            "mode": "iptables",
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            // Leave the machine-wide nf_conntrack_max alone.
            "conntrack": {"maxPerCore": 0},
        });
        write(&config, &text.to_string())?;
        let unit = Unit {
            description: format!("kube-proxy of {}, written by yurt adm", options.node),
            exec: vec![
                facts.kube_proxy.display().to_string(),
                format!("--config={}", config.display()),
                "--v=1".to_owned(),
            ],
            environment: Default::default(),
            environment_files: Vec::new(),
            restart: Restart::Always,
        };
        unit.save(&self.unit("kube-proxy"))
            .map_err(|e| e.to_string())
    }

    /// Every file and folder a join writes (units aside).
    pub fn written(&self) -> Vec<PathBuf> {
        [
            "etc/kubernetes",
            "etc/yurt",
            "etc/resolv.conf",
            "var/lib/kubelet",
            "var/lib/yurthub",
            "var/lib/kube-proxy",
        ]
        .iter()
        .map(|p| self.dir.join(p))
        .collect()
    }

    /// Records that the join finished.
    ///
    /// # Errors
    /// A write failed.
    pub fn mark_joined(&self, node: &str) -> Result<(), String> {
        write(&self.joined_marker(), &format!("{node}\n"))
    }

    /// Where the first run of a join records whether the Node already existed.
    fn node_origin(&self) -> PathBuf {
        self.dir.join("etc/yurt/node-existed-before-join")
    }

    /// Records whether Node `node` existed before the join began, so a rollback deletes
    /// only a Node the join made. A resumed run (`resumed`: this host's kubelet already
    /// holds `node`'s certificate) keeps the first run's answer; any other run writes
    /// its own.
    ///
    /// # Errors
    /// A write failed.
    pub fn record_node_origin(
        &self,
        node: &str,
        existed: bool,
        resumed: bool,
    ) -> Result<(), String> {
        if resumed && self.node_origin().exists() {
            return Ok(());
        }
        let answer = if existed { "existed" } else { "made" };
        write(&self.node_origin(), &format!("{node} {answer}\n"))
    }

    /// Whether this join made Node `node`: recorded so for that name. Unknown (no
    /// record, another name, an unreadable one) counts as not made, so nothing is
    /// deleted.
    pub fn join_made_node(&self, node: &str) -> bool {
        std::fs::read_to_string(self.node_origin())
            .is_ok_and(|s| s.trim() == format!("{node} made"))
    }
}

/// The labels join sets (the same keys as `yurt_api::labels`; yurt-adm talks to the
/// cluster only through the API and does not link the manager's types).
mod yurt_api_labels {
    pub const NODE_POOL: &str = "apps.openyurt.io/nodepool";
    pub const IS_EDGE_WORKER: &str = "openyurt.io/is-edge-worker";
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    yurt_core::units::write_atomic_private(path, text.as_bytes()).map_err(|e| e.to_string())
}

fn hub_kubeconfig() -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hub", "cluster": {"server": HUB_LOCAL}}],
        "users": [{"name": "hub", "user": {}}],
        "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "hub"}}],
        "current-context": "hub",
    })
    .to_string()
}

/// kubelet's configuration on a joined host: kubeadm's defaults where they matter
/// (webhook authentication and authorization, client CA, certificate rotation), with
/// the host's cgroup root and nothing that reaches outside the machine.
///
/// With `serving_by_csr` kubelet asks for its serving certificate by CSR (signer
/// `kubernetes.io/kubelet-serving`), which yurt-manager's approver signs off for the
/// node's own addresses. Every edge node does: it needs the manager anyway (its hub's
/// certificates), and an API server that checks kubelets' certificates
/// (`--kubelet-certificate-authority`, as every `yurt up` fleet's does) refuses a
/// self-signed one, so `kubectl logs/exec` to it would fail with x509. A plain node does
/// what the cluster's kubelet configuration says
/// ([`super::cluster_kubelets_serve_by_csr`]), else keeps kubeadm's default, a
/// certificate kubelet makes itself: on a cluster without OpenYurt's manager nothing
/// would approve the CSR, and kubelet would serve no TLS at all.
pub fn kubelet_config(
    facts: &HostFacts,
    ca: &Path,
    host_dir: &Path,
    serving_by_csr: bool,
) -> String {
    let resolv = host_dir.join("etc/resolv.conf");
    // Pods get no upstream resolver: nothing in a fleet may reach outside the machine.
    let _ = write(&resolv, "# no upstream DNS\n");
    let mut config =
        base_kubelet_config(ca, &facts.cgroup_root, &resolv, "/etc/kubernetes/manifests");
    config["rotateCertificates"] = true.into();
    config["serverTLSBootstrap"] = serving_by_csr.into();
    config.to_string()
}

/// What every kubelet of ours runs with, joined or planned by `yurt up` (which adds its
/// timings and certificates): kubeadm's defaults where they matter (webhook
/// authentication and authorization against the cluster CA `ca`, no anonymous access,
/// no read-only port, health on loopback), the host's cgroup root under the cgroupfs
/// driver, the resolver file `resolv_conf`, static pods from `static_pod_path`, and
/// images never garbage-collected (they come from no registry).
pub fn base_kubelet_config(
    ca: &Path,
    cgroup_root: &str,
    resolv_conf: &Path,
    static_pod_path: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "0.0.0.0",
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ca.display().to_string()},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": true,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": false,
        "clusterDomain": "cluster.local",
        "resolvConf": resolv_conf.display().to_string(),
        "staticPodPath": static_pod_path,
        "serializeImagePulls": false,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
    })
}
