//! The upstream processes of each host, their configuration files and command lines,
//! and how to tell that each is ready.
//!
//! Cloud host: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, yurt
//! manager, the tunnel server, the image registry (a pull and a push process,
//! [`crate::registry`]) and, with `yurt up --prometheus`, Prometheus.
//! Edge host: containerd, kubelet, kube-proxy.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::image;
use crate::paths::{FleetPaths, HostPaths};
use crate::pki::{Identity, PkiPaths};
use crate::probe::Probe;
use crate::spec::{EdgeApi, HostId, Plan, Timings, WorkerPlan, net};
use crate::upstream::{Binary, UpstreamBinaries};

/// Where agents connect to the tunnel server (OpenYurt's port).
pub const TUNNEL_AGENT_PORT: u16 = 10262;
/// The tunnel server's `/healthz`, `/readyz` and `/metrics` (loopback of the cloud host).
pub const TUNNEL_SERVER_ADMIN_PORT: u16 = 10265;
/// The tunnel agent's `/healthz`, `/readyz` and `/metrics` (loopback of its host).
pub const TUNNEL_AGENT_ADMIN_PORT: u16 = 10266;
/// Prometheus' web UI and API, on the cloud host's end of its link to this machine.
pub const PROMETHEUS_PORT: u16 = 9090;
/// The second API server's port (`yurt up --second-api-server`).
pub const API_REPLICA_PORT: u16 = 6444;
/// Where agents connect to the second tunnel server.
pub const TUNNEL_AGENT_REPLICA_PORT: u16 = 10263;
/// The second tunnel server's admin endpoints (loopback of the cloud host).
pub const TUNNEL_SERVER_REPLICA_ADMIN_PORT: u16 = 10268;

/// The route controller's admin endpoints (loopback of the router).
pub const ROUTE_CONTROLLER_ADMIN_PORT: u16 = 10280;

/// A process the fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// etcd (cloud).
    Etcd,
    /// kube-apiserver (cloud).
    KubeApiserver,
    /// A second kube-apiserver (cloud, with `yurt up --second-api-server`): same etcd
    /// and certificates, port 6444, its `cluster` egress through its own tunnel server,
    /// as on a second control-plane machine.
    KubeApiserverReplica,
    /// kube-controller-manager (cloud).
    KubeControllerManager,
    /// kube-scheduler (cloud).
    KubeScheduler,
    /// containerd (edge).
    Containerd,
    /// yurt hub (edge): kubelet and kube-proxy reach the API server only through it.
    YurtHub,
    /// kubelet (edge).
    Kubelet,
    /// kube-proxy (edge).
    KubeProxy,
    /// yurt manager (cloud): OpenYurt's controllers and webhooks.
    YurtManager,
    /// The image registry's read-only process (cloud): what every host pulls from.
    Registry,
    /// The image registry's push process (cloud): password-protected, for this machine.
    RegistryPush,
    /// The tunnel server (cloud): kube-apiserver's `cluster` egress, carried to agents.
    TunnelServer,
    /// The second API server's tunnel server (cloud, with `yurt up
    /// --second-api-server`): every agent holds a connection to it as well.
    TunnelServerReplica,
    /// The tunnel agent (edge): dials out to the tunnel server.
    TunnelAgent,
    /// Prometheus (cloud, with `yurt up --prometheus`): scrapes every kubelet through
    /// the API server's node proxy, so through the tunnel.
    Prometheus,
    /// The fleet's route controller (router, while the fleet has added hosts): routes
    /// each added host's pod CIDR, as its Node gets one, in the router and on its pool
    /// peers, the part a cloud provider's route controller plays (ADR 008).
    RouteController,
}

impl Component {
    /// Cloud-host processes in start order.
    pub const CLOUD: [Component; 14] = [
        Component::Etcd,
        Component::KubeApiserver,
        Component::KubeApiserverReplica,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::YurtManager,
        Component::TunnelServer,
        Component::TunnelServerReplica,
        Component::Registry,
        Component::RegistryPush,
        Component::Prometheus,
        // The cloud host's own node, in a bare fleet (`Plan::cloud_worker`).
        Component::Containerd,
        Component::Kubelet,
        Component::KubeProxy,
    ];
    /// What makes a host a Kubernetes node, in start order.
    pub const NODE: [Component; 3] = [
        Component::Containerd,
        Component::Kubelet,
        Component::KubeProxy,
    ];
    /// OpenYurt's own processes (none runs in a fleet started with `yurt up --bare`).
    pub const OPENYURT: [Component; 5] = [
        Component::YurtManager,
        Component::TunnelServer,
        Component::TunnelServerReplica,
        Component::TunnelAgent,
        Component::YurtHub,
    ];
    /// Edge-host processes in start order.
    pub const EDGE: [Component; 5] = [
        Component::Containerd,
        Component::YurtHub,
        Component::Kubelet,
        Component::KubeProxy,
        Component::TunnelAgent,
    ];

    /// Router processes.
    pub const ROUTER: [Component; 1] = [Component::RouteController];

    /// The process name (also its log and pid file name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::KubeApiserver => "kube-apiserver",
            Self::KubeApiserverReplica => "kube-apiserver-2",
            Self::KubeControllerManager => "kube-controller-manager",
            Self::KubeScheduler => "kube-scheduler",
            Self::Containerd => "containerd",
            Self::YurtHub => "yurt-hub",
            Self::Kubelet => "kubelet",
            Self::KubeProxy => "kube-proxy",
            Self::YurtManager => "yurt-manager",
            Self::Registry => "registry",
            Self::RegistryPush => "registry-push",
            Self::TunnelServer => "yurt-tunnel-server",
            Self::TunnelServerReplica => "yurt-tunnel-server-2",
            Self::TunnelAgent => "yurt-tunnel-agent",
            Self::Prometheus => "prometheus",
            Self::RouteController => "route-controller",
        }
    }

    /// The processes of `host`, in start order.
    pub fn of(host: &HostId) -> &'static [Component] {
        match host {
            HostId::Cloud => &Self::CLOUD,
            HostId::Edge(_) => &Self::EDGE,
            HostId::Router => &Self::ROUTER,
        }
    }

    /// How long a SIGTERM may take before SIGKILL.
    pub fn stop_grace(self) -> Duration {
        match self {
            Self::Etcd | Self::KubeApiserver | Self::KubeApiserverReplica => {
                Duration::from_secs(10)
            }
            _ => Duration::from_secs(5),
        }
    }

    /// How long the process may take to become ready.
    pub fn start_timeout(self) -> Duration {
        match self {
            Self::KubeApiserver | Self::KubeApiserverReplica => Duration::from_secs(90),
            _ => Duration::from_secs(60),
        }
    }

    /// The readiness probe, run inside the host.
    pub fn probe(self, host: &HostPaths, plan: &Plan) -> Probe {
        let local = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        match self {
            Self::Etcd => Probe::Http(local(2379), "/health"),
            Self::KubeApiserver => Probe::Tcp(local(net::API_PORT)),
            Self::KubeApiserverReplica => Probe::Tcp(local(API_REPLICA_PORT)),
            Self::KubeControllerManager => Probe::Tcp(local(10257)),
            Self::KubeScheduler => Probe::Tcp(local(10259)),
            Self::Containerd => Probe::Unix(host.containerd_socket()),
            Self::YurtHub => Probe::Http(local(10267), "/v1/readyz"),
            Self::Kubelet => Probe::Http(local(10248), "/healthz"),
            Self::KubeProxy => Probe::Http(local(10256), "/healthz"),
            Self::YurtManager => Probe::Http(local(10272), "/readyz"),
            Self::Registry => Probe::Tcp(local(crate::registry::PULL_PORT)),
            Self::RegistryPush => Probe::Tcp(local(crate::registry::PUSH_PORT)),
            Self::TunnelServer => Probe::Http(local(TUNNEL_SERVER_ADMIN_PORT), "/readyz"),
            Self::TunnelServerReplica => {
                Probe::Http(local(TUNNEL_SERVER_REPLICA_ADMIN_PORT), "/readyz")
            }
            // Alive, not connected: an agent of a site cut off from the cloud starts
            // and keeps trying.
            Self::TunnelAgent => Probe::Http(local(TUNNEL_AGENT_ADMIN_PORT), "/healthz"),
            Self::Prometheus => Probe::Http(prometheus_address(plan), "/-/ready"),
            // Alive, not ready: its rounds wait while hosts change (add-host starts it so).
            Self::RouteController => Probe::Http(local(ROUTE_CONTROLLER_ADMIN_PORT), "/healthz"),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::CLOUD
            .iter()
            .chain(Self::EDGE.iter())
            .chain(Self::ROUTER.iter())
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::Unknown {
                kind: "process",
                name: s.to_owned(),
                known: Self::CLOUD
                    .iter()
                    .chain(Self::EDGE.iter())
                    .chain(Self::ROUTER.iter())
                    .map(|c| c.name())
                    // The node processes are both the cloud's and the edge's.
                    .fold(Vec::new(), |mut names, n| {
                        if !names.contains(&n) {
                            names.push(n);
                        }
                        names
                    })
                    .join(", "),
            })
    }
}

/// Which of the cloud's API server and tunnel server pairs a process belongs to: the
/// first, or the second of `yurt up --second-api-server` (as on a second control-plane
/// machine: its own port, egress socket and agent port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ControlPlaneReplica {
    First,
    Second,
}

impl Component {
    /// The API server and tunnel server pair a component belongs to: the replicas are
    /// the second pair, everything else the first.
    fn control_plane_replica(self) -> ControlPlaneReplica {
        match self {
            Self::KubeApiserverReplica | Self::TunnelServerReplica => ControlPlaneReplica::Second,
            _ => ControlPlaneReplica::First,
        }
    }
}

impl ControlPlaneReplica {
    fn api_port(self) -> u16 {
        match self {
            Self::First => net::API_PORT,
            Self::Second => API_REPLICA_PORT,
        }
    }

    fn agent_port(self) -> u16 {
        match self {
            Self::First => TUNNEL_AGENT_PORT,
            Self::Second => TUNNEL_AGENT_REPLICA_PORT,
        }
    }

    fn admin_port(self) -> u16 {
        match self {
            Self::First => TUNNEL_SERVER_ADMIN_PORT,
            Self::Second => TUNNEL_SERVER_REPLICA_ADMIN_PORT,
        }
    }

    fn egress_socket(self, hp: &HostPaths) -> PathBuf {
        match self {
            Self::First => hp.egress_socket(),
            Self::Second => hp.replica_egress_socket(),
        }
    }

    fn egress_config_name(self) -> &'static str {
        match self {
            Self::First => "egress-selector.yaml",
            Self::Second => "egress-selector-2.yaml",
        }
    }
}

/// Everything needed to render a host's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The network plan.
    pub plan: &'a Plan,
    /// The data folder.
    pub paths: &'a FleetPaths,
    /// Certificates.
    pub pki: &'a PkiPaths,
    /// Upstream binaries.
    pub bins: &'a UpstreamBinaries,
    /// Failure-detection timings.
    pub timings: Timings,
    /// The `yurt` binary (runs the hub).
    pub yurt_binary: &'a Path,
    /// How kubelet and kube-proxy reach the API server.
    pub edge_api: EdgeApi,
    /// Whether the API server writes an audit log.
    pub api_audit_log: bool,
    /// Whether the cloud runs a second API server and tunnel server, which every agent
    /// connects to as well.
    pub second_api_server: bool,
    /// How long kube-controller-manager's certificates are valid, seconds (`None`: its
    /// default).
    pub cluster_signing_duration: Option<u64>,
    /// Whether the fleet runs upstream Kubernetes only (`yurt up --bare`).
    pub bare: bool,
}

/// The API server's audit log (when the fleet has one): one JSON event per line.
pub fn api_audit_log(paths: &FleetPaths) -> PathBuf {
    paths.host(&HostId::Cloud).log("kube-apiserver-audit")
}

/// The audit policy: every request at level Metadata (user, user agent, source
/// addresses, verb, resource, response code; no bodies), once when its response
/// starts (watches) and once when it completes.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"#;

/// Where Prometheus listens: the cloud host's end of its link to this machine, so this
/// machine reaches it and no edge host does (the router has no route to that link).
pub fn prometheus_address(plan: &Plan) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        plan.cloud_host_side_ip().addr,
        PROMETHEUS_PORT,
    ))
}

/// Prometheus' configuration: two jobs, each kubelet's `/metrics` and its
/// `/metrics/cadvisor`, fetched from the API server's node proxy with Prometheus' own
/// client certificate. Debian's Prometheus has no Kubernetes discovery, so the nodes
/// come from `targets` (file discovery: rewriting it changes the targets without a
/// restart); each target's `node` label names its node.
fn prometheus_config(pki: &PkiPaths, targets: &Path) -> Result<String> {
    let stem = Identity::Prometheus.stem();
    let tls = serde_json::json!({
        "ca_file": p(&pki.ca_cert()),
        "cert_file": p(&pki.cert(&stem)),
        "key_file": p(&pki.key(&stem)),
    });
    let job = |name: &str, path: &str| {
        serde_json::json!({
            "job_name": name,
            "scheme": "https",
            "tls_config": tls,
            "file_sd_configs": [{"files": [p(targets)]}],
            "relabel_configs": [
                {"source_labels": ["node"], "target_label": "__metrics_path__",
                 "replacement": format!("/api/v1/nodes/$1/proxy{path}")},
                {"source_labels": ["node"], "target_label": "instance"},
            ],
        })
    };
    yaml(&serde_json::json!({
        "global": {"scrape_interval": "10s", "scrape_timeout": "8s"},
        "scrape_configs": [job("kubelet", "/metrics"), job("kubelet-cadvisor", "/metrics/cadvisor")],
    }))
}

/// Prometheus' file-discovery targets: the API server once per node, labelled with the
/// node's name.
fn prometheus_targets(plan: &Plan) -> Result<String> {
    let groups: Vec<_> = plan
        .edges
        .iter()
        .map(|e| {
            serde_json::json!({
                "targets": [format!("127.0.0.1:{}", net::API_PORT)],
                "labels": {"node": e.name.as_str()},
            })
        })
        .collect();
    serde_json::to_string_pretty(&groups).map_err(|e| Error::Invalid(format!("targets: {e}")))
}

/// Where agents reach the tunnel servers the cloud runs (with the second API server,
/// a second tunnel server): the cloud host's fleet address, each server's agent port.
pub fn tunnel_server_addresses(second_api_server: bool) -> Vec<SocketAddrV4> {
    let replicas: &[ControlPlaneReplica] = if second_api_server {
        &[ControlPlaneReplica::First, ControlPlaneReplica::Second]
    } else {
        &[ControlPlaneReplica::First]
    };
    replicas
        .iter()
        .map(|r| SocketAddrV4::new(net::CLOUD_IP.addr, r.agent_port()))
        .collect()
}

/// A program, its arguments and environment (what a unit holds).
pub use yurt_core::units::CommandLine;

fn arg(a: impl Into<String>) -> OsString {
    OsString::from(a.into())
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The tunnel's keepalive: PINGs as often as the hub's heartbeat, so a cut link is
/// noticed about as fast as the node's health is.
fn tunnel_keepalive(t: Timings) -> Vec<OsString> {
    let interval = t.hub_heartbeat.as_secs().max(1);
    vec![
        arg(format!("--keepalive-interval-seconds={interval}")),
        arg(format!("--keepalive-timeout-seconds={}", interval * 2)),
    ]
}

/// How long an agent may wait between reconnection attempts: about a heartbeat, so a
/// restored link carries `kubectl logs` again within seconds.
fn tunnel_agent_backoff(t: Timings) -> OsString {
    arg(format!(
        "--max-backoff-seconds={}",
        t.hub_heartbeat.as_secs().max(1)
    ))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    crate::state::write_atomic(path, contents.as_bytes())
}

impl Context<'_> {
    /// kube-apiserver's egress selection: `cluster` traffic (kubelets, pods,
    /// Service-addressed webhooks) as HTTP CONNECT on the tunnel server's socket.
    fn egress_config(&self, hp: &HostPaths, replica: ControlPlaneReplica) -> Result<PathBuf> {
        let path = hp.config().join(replica.egress_config_name());
        let config =
            yurt_tunnel::install::egress_selector_configuration(&replica.egress_socket(hp));
        write(&path, &yaml(&config)?)?;
        Ok(path)
    }

    /// The agent's `--tunnelserver-addr` flags: one per tunnel server the cloud runs.
    fn tunnel_servers(&self) -> Vec<OsString> {
        tunnel_server_addresses(self.second_api_server)
            .into_iter()
            .map(|a| arg(format!("--tunnelserver-addr={a}")))
            .collect()
    }

    /// The API server's audit flags (none unless the fleet asked for an audit log);
    /// writes the policy file.
    fn audit_flags(&self, hp: &HostPaths) -> Result<Vec<OsString>> {
        if !self.api_audit_log {
            return Ok(Vec::new());
        }
        let policy = hp.config().join("audit-policy.yaml");
        write(&policy, AUDIT_POLICY)?;
        Ok(vec![
            arg(format!("--audit-policy-file={}", p(&policy))),
            arg(format!(
                "--audit-log-path={}",
                p(&api_audit_log(self.paths))
            )),
            arg("--audit-log-format=json"),
            // Written synchronously, so a reader sees every request that was answered.
            arg("--audit-log-mode=blocking"),
        ])
    }

    /// Writes the configuration of `component` on `host` and returns its command line.
    ///
    /// # Errors
    /// I/O errors writing configuration files.
    pub fn command_line(&self, component: Component, host: &HostId) -> Result<CommandLine> {
        let hp = self.paths.host(host);
        let edge = match host {
            HostId::Edge(name) => self.plan.edge(name.as_str()),
            _ => None,
        };
        let need_edge = || {
            edge.ok_or_else(|| {
                Error::Invalid(format!("{component} runs on edge hosts, not on {host}"))
            })
        };
        let worker = self.plan.worker(host);
        let need_worker = || {
            worker
                .as_ref()
                .ok_or_else(|| Error::Invalid(format!("{component} runs on nodes; {host} is none")))
        };
        let pki = self.pki;
        let cert = |stem: &str| p(&pki.cert(stem));
        let key = |stem: &str| p(&pki.key(stem));
        let t = self.timings;
        Ok(match component {
            Component::Etcd => {
                let url = "http://127.0.0.1";
                CommandLine {
                    program: "/usr/bin/etcd".into(),
                    args: vec![
                        arg("--name=cloud"),
                        arg(format!("--data-dir={}", p(&hp.etcd_data()))),
                        arg(format!("--listen-client-urls={url}:2379")),
                        arg(format!("--advertise-client-urls={url}:2379")),
                        arg(format!("--listen-peer-urls={url}:2380")),
                        arg(format!("--initial-advertise-peer-urls={url}:2380")),
                        arg(format!("--initial-cluster=cloud={url}:2380")),
                        arg("--quota-backend-bytes=2147483648"),
                        arg("--logger=zap"),
                    ],
                    env: Vec::new(),
                }
            }
            Component::KubeApiserver | Component::KubeApiserverReplica => {
                let replica = component.control_plane_replica();
                // The second writes no audit log and leaves the `kubernetes` Service's
                // endpoints to the first (each would write its own port there).
                let replica_flags = match replica {
                    ControlPlaneReplica::First => self.audit_flags(&hp)?,
                    ControlPlaneReplica::Second => vec![arg("--endpoint-reconciler-type=none")],
                };
                // Without a tunnel server (a bare fleet) `cluster` traffic goes direct.
                let egress = if self.bare {
                    Vec::new()
                } else {
                    vec![arg(format!(
                        "--egress-selector-config-file={}",
                        p(&self.egress_config(&hp, replica)?)
                    ))]
                };
                CommandLine {
                    program: self.bins.path(Binary::KubeApiserver),
                    args: [
                        arg("--etcd-servers=http://127.0.0.1:2379"),
                        arg("--bind-address=0.0.0.0"),
                        arg(format!("--secure-port={}", replica.api_port())),
                        arg(format!("--advertise-address={}", net::CLOUD_IP.addr)),
                        arg(format!("--tls-cert-file={}", cert("apiserver"))),
                        arg(format!("--tls-private-key-file={}", key("apiserver"))),
                        arg(format!("--client-ca-file={}", p(&pki.ca_cert()))),
                        arg(format!("--service-cluster-ip-range={}", net::SERVICE_CIDR)),
                        arg("--authorization-mode=Node,RBAC"),
                        // Hosts join with bootstrap tokens, as on a kubeadm cluster.
                        arg("--enable-bootstrap-token-auth=true"),
                        arg("--enable-admission-plugins=NodeRestriction"),
                        arg("--allow-privileged=true"),
                        arg(format!("--service-account-key-file={}", p(&pki.sa_pub()))),
                        arg(format!(
                            "--service-account-signing-key-file={}",
                            p(&pki.sa_key())
                        )),
                        arg("--service-account-issuer=https://kubernetes.default.svc"),
                        arg(format!(
                            "--kubelet-client-certificate={}",
                            cert("apiserver-kubelet-client")
                        )),
                        arg(format!(
                            "--kubelet-client-key={}",
                            key("apiserver-kubelet-client")
                        )),
                        arg("--kubelet-preferred-address-types=InternalIP,Hostname"),
                        // TLS to kubelets stays end to end through the tunnel, so their
                        // serving certificates are checked.
                        arg(format!(
                            "--kubelet-certificate-authority={}",
                            p(&pki.ca_cert())
                        )),
                        // Service-addressed webhooks and aggregated APIs are dialled at an
                        // endpoint's address, not the ClusterIP: an endpoint on an edge node
                        // is then routed to its agent like any pod (the cloud host runs no
                        // kube-proxy to resolve a ClusterIP anyway).
                        arg("--enable-aggregator-routing=true"),
                        arg(format!(
                            "--default-not-ready-toleration-seconds={}",
                            t.eviction_toleration.as_secs()
                        )),
                        arg(format!(
                            "--default-unreachable-toleration-seconds={}",
                            t.eviction_toleration.as_secs()
                        )),
                        arg("--profiling=false"),
                        arg("--v=1"),
                    ]
                    .into_iter()
                    .chain(replica_flags)
                    .chain(egress)
                    .collect(),
                    env: Vec::new(),
                }
            }
            Component::KubeControllerManager => {
                let kc = p(&pki.kubeconfig(&Identity::ControllerManager.stem()));
                CommandLine {
                    program: self.bins.path(Binary::KubeControllerManager),
                    args: vec![
                        arg(format!("--kubeconfig={kc}")),
                        arg(format!("--authentication-kubeconfig={kc}")),
                        arg(format!("--authorization-kubeconfig={kc}")),
                        arg("--bind-address=127.0.0.1"),
                        arg("--leader-elect=false"),
                        // kubeadm's: the default controllers, plus signing `cluster-info`
                        // with each bootstrap token and deleting expired tokens.
                        arg("--controllers=*,bootstrapsigner,tokencleaner"),
                        arg(format!(
                            "--service-account-private-key-file={}",
                            p(&pki.sa_key())
                        )),
                        arg(format!("--root-ca-file={}", p(&pki.ca_cert()))),
                        arg("--use-service-account-credentials=true"),
                        arg(format!("--cluster-signing-cert-file={}", p(&pki.ca_cert()))),
                        arg(format!("--cluster-signing-key-file={}", p(&pki.ca_key()))),
                        arg(format!(
                            "--cluster-signing-duration={}s",
                            self.cluster_signing_duration.unwrap_or(365 * 24 * 3600)
                        )),
                        // ADR 008: the allocator gives a /24 to a Node that registers
                        // without one (a joined kubelet); the planned Nodes are created
                        // with theirs and keep them.
                        arg("--allocate-node-cidrs=true"),
                        arg(format!("--cluster-cidr={}", net::CLUSTER_CIDR)),
                        arg("--node-cidr-mask-size=24"),
                        arg(format!("--service-cluster-ip-range={}", net::SERVICE_CIDR)),
                        arg(format!(
                            "--node-monitor-period={}",
                            secs(t.node_monitor_period)
                        )),
                        arg(format!(
                            "--node-monitor-grace-period={}",
                            secs(t.node_grace)
                        )),
                        arg("--profiling=false"),
                        arg("--v=1"),
                    ],
                    env: Vec::new(),
                }
            }
            Component::KubeScheduler => {
                let kc = p(&pki.kubeconfig(&Identity::Scheduler.stem()));
                CommandLine {
                    program: self.bins.path(Binary::KubeScheduler),
                    args: vec![
                        arg(format!("--kubeconfig={kc}")),
                        arg(format!("--authentication-kubeconfig={kc}")),
                        arg(format!("--authorization-kubeconfig={kc}")),
                        arg("--bind-address=127.0.0.1"),
                        arg("--leader-elect=false"),
                        arg("--profiling=false"),
                        arg("--v=1"),
                    ],
                    env: Vec::new(),
                }
            }
            Component::YurtManager => CommandLine {
                program: self.yurt_binary.to_owned(),
                args: vec![
                    arg("manager"),
                    arg(format!(
                        "--kubeconfig={}",
                        p(&pki.kubeconfig(&Identity::Manager.stem()))
                    )),
                    // The manager runs as a process of the cloud host, not in a pod:
                    // the API server reaches its webhooks at the host's address.
                    arg(format!("--webhook-host={}", net::CLOUD_IP.addr)),
                    arg(format!(
                        "--node-servant-image={}",
                        crate::image::BUSYBOX_IMAGE
                    )),
                    // Its client certificate's CN: the user its node webhook lets set
                    // is-edge-worker besides the node itself.
                    arg(format!("--manager-username={}", crate::pki::MANAGER_USER)),
                    arg("--metrics-addr=127.0.0.1:10271"),
                    arg("--health-probe-addr=127.0.0.1:10272"),
                    // A node NotReady for longer than a missed lease (the silence the
                    // node lifecycle controller allows) is offline to rollouts.
                    arg(format!("--unready-node-grace={}", t.node_grace.as_secs())),
                ],
                env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
            },
            Component::TunnelServer | Component::TunnelServerReplica => {
                let replica = component.control_plane_replica();
                CommandLine {
                    program: self.yurt_binary.to_owned(),
                    args: vec![
                        arg("tunnel-server"),
                        arg(format!(
                            "--kubeconfig={}",
                            p(&pki.kubeconfig(&Identity::TunnelServer.stem()))
                        )),
                        arg(format!(
                            "--egress-socket={}",
                            p(&replica.egress_socket(&hp))
                        )),
                        arg(format!(
                            "--agent-bind-address={}:{}",
                            net::CLOUD_IP.addr,
                            replica.agent_port()
                        )),
                        arg(format!(
                            "--admin-address=127.0.0.1:{}",
                            replica.admin_port()
                        )),
                        arg(format!("--ca-file={}", p(&pki.ca_cert()))),
                        arg(format!(
                            "--cert-file={}",
                            cert(crate::pki::TUNNEL_SERVING_STEM)
                        )),
                        arg(format!(
                            "--key-file={}",
                            key(crate::pki::TUNNEL_SERVING_STEM)
                        )),
                    ]
                    .into_iter()
                    .chain(tunnel_keepalive(t))
                    .collect(),
                    env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
                }
            }
            Component::TunnelAgent => {
                let edge = need_edge()?;
                let node = Identity::Node(edge.name.clone()).stem();
                CommandLine {
                    program: self.yurt_binary.to_owned(),
                    args: vec![
                        arg("tunnel-agent"),
                        arg(format!("--node-name={}", edge.name)),
                        arg(format!("--server-name={}", crate::pki::TUNNEL_SERVER_NAME)),
                        arg(format!("--node-ip={}", edge.ip)),
                        arg(format!("--pod-cidr={}", edge.pod_cidr)),
                        arg(format!(
                            "--admin-address=127.0.0.1:{TUNNEL_AGENT_ADMIN_PORT}"
                        )),
                        arg(format!("--ca-file={}", p(&pki.ca_cert()))),
                        arg(format!("--cert-file={}", cert(&node))),
                        arg(format!("--key-file={}", key(&node))),
                        tunnel_agent_backoff(t),
                    ]
                    .into_iter()
                    .chain(self.tunnel_servers())
                    .chain(tunnel_keepalive(t))
                    .collect(),
                    env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
                }
            }
            Component::Prometheus => {
                let dir = hp.prometheus_data();
                let targets = hp.config().join("prometheus-targets.json");
                write(&targets, &prometheus_targets(self.plan)?)?;
                let config = hp.config().join("prometheus.yml");
                write(&config, &prometheus_config(pki, &targets)?)?;
                CommandLine {
                    program: "/usr/bin/prometheus".into(),
                    args: vec![
                        arg(format!("--config.file={}", p(&config))),
                        arg(format!("--storage.tsdb.path={}", p(&dir))),
                        arg("--storage.tsdb.retention.time=2d"),
                        arg(format!(
                            "--web.listen-address={}",
                            prometheus_address(self.plan)
                        )),
                    ],
                    env: Vec::new(),
                }
            }
            Component::Registry | Component::RegistryPush => {
                let role = if component == Component::Registry {
                    crate::registry::Role::Pull
                } else {
                    crate::registry::Role::Push
                };
                let files = crate::registry::RegistryFiles {
                    storage: hp.registry_data(),
                    cert: pki.cert(crate::pki::REGISTRY_STEM),
                    key: pki.key(crate::pki::REGISTRY_STEM),
                    htpasswd: crate::registry::htpasswd_file(pki.dir()),
                };
                std::fs::create_dir_all(&files.storage)
                    .map_err(|e| Error::io(&files.storage, e))?;
                let config = hp.config().join(format!("{}.yml", component.name()));
                write(&config, &crate::registry::config(role, &files))?;
                CommandLine {
                    program: "/usr/bin/docker-registry".into(),
                    args: vec![arg("serve"), arg(p(&config))],
                    env: Vec::new(),
                }
            }
            Component::RouteController => {
                if *host != HostId::Router {
                    return Err(Error::Invalid(format!(
                        "{component} runs on the router, not on {host}"
                    )));
                }
                CommandLine {
                    program: self.yurt_binary.to_owned(),
                    args: vec![
                        arg(format!("--data-dir={}", p(self.paths.root()))),
                        arg("fleet"),
                        arg("follow-routes"),
                        arg(format!(
                            "--kubeconfig={}",
                            p(&pki.kubeconfig(&Identity::RouteController.stem()))
                        )),
                        arg(format!("--period={}s", t.route_reconcile.as_secs())),
                        arg(format!(
                            "--admin-address=127.0.0.1:{ROUTE_CONTROLLER_ADMIN_PORT}"
                        )),
                    ],
                    env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
                }
            }
            Component::Containerd => {
                let edge = need_worker()?;
                let config = hp.config().join("containerd.toml");
                write(&config, &containerd_config(&hp, None))?;
                for (file, text) in crate::registry::containerd_hosts(&pki.ca_cert()) {
                    write(&hp.containerd_certs_d().join(file), &text)?;
                }
                write(
                    &hp.cni_conf().join("10-yurt-bridge.conflist"),
                    &cni_config(&hp, &edge.pod_cidr.to_string()),
                )?;
                CommandLine {
                    program: "/usr/bin/containerd".into(),
                    args: vec![arg("--config"), arg(p(&config))],
                    env: Vec::new(),
                }
            }
            Component::YurtHub => {
                let edge = need_edge()?;
                let pool = &self.plan.pools[edge.pool];
                let hub_stem = Identity::Hub(edge.name.clone()).stem();
                let serving = PkiPaths::hub_serving(&edge.name);
                let up = t.hub_upstream;
                CommandLine {
                    program: self.yurt_binary.to_owned(),
                    args: vec![
                        arg("hub"),
                        arg(format!("--node-name={}", edge.name)),
                        arg(format!("--nodepool-name={}", pool.name)),
                        arg(format!("--server-addr={}", self.plan.api_url_in_fleet())),
                        arg(format!("--ca-file={}", p(&pki.ca_cert()))),
                        arg(format!("--client-cert={}", cert(&hub_stem))),
                        arg(format!("--client-key={}", key(&hub_stem))),
                        arg(format!("--serving-cert={}", cert(&serving))),
                        arg(format!("--serving-key={}", key(&serving))),
                        arg(format!("--disk-cache-path={}", p(&hp.hub_cache()))),
                        arg(format!(
                            "--heartbeat-interval-seconds={}",
                            t.hub_heartbeat.as_secs()
                        )),
                        arg(format!(
                            "--heartbeat-timeout-seconds={}",
                            t.hub_heartbeat_timeout.as_secs()
                        )),
                        arg(format!(
                            "--kubelet-health-grace-period={}",
                            t.node_lease.as_secs()
                        )),
                        arg(format!(
                            "--upstream-connect-timeout={}ms",
                            up.connect.as_millis()
                        )),
                        arg(format!(
                            "--upstream-keepalive-interval={}ms",
                            up.keepalive_interval.as_millis()
                        )),
                        arg(format!(
                            "--upstream-keepalive-timeout={}ms",
                            up.keepalive_timeout.as_millis()
                        )),
                        arg(format!("--upstream-read-timeout={}ms", up.read.as_millis())),
                    ],
                    env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
                }
            }
            Component::Kubelet => {
                let worker = need_worker()?;
                let config = hp.config().join("kubelet.yaml");
                write(&config, &kubelet_config(self, host, &hp, worker)?)?;
                // Through the hub: plain HTTP on the node, no credentials of its own.
                // Direct (and the cloud's own node): the node's own certificate.
                let kubeconfig = pki.kubeconfig(&match self.edge_api {
                    EdgeApi::ThroughHub if !self.bare && worker.pool.is_some() => {
                        crate::pki::HUB_LOCAL.to_owned()
                    }
                    _ => Identity::Node(worker.name.clone()).stem(),
                });
                // A bare fleet's workers are plain: no pool, not edge.
                let labels = match worker.pool {
                    Some(pool) if !self.bare => format!(
                        "{}={},{}=true",
                        yurt_api::labels::NODE_POOL,
                        self.plan.pools[pool].name,
                        yurt_api::labels::IS_EDGE_WORKER
                    ),
                    _ => String::new(),
                };
                CommandLine {
                    program: self.bins.path(Binary::Kubelet),
                    args: self.kubelet_args(
                        &hp,
                        &config,
                        &kubeconfig,
                        &worker.name,
                        worker.ip,
                        &labels,
                    ),
                    env: Vec::new(),
                }
            }
            Component::KubeProxy => {
                let worker = need_worker()?;
                let through_hub =
                    self.edge_api == EdgeApi::ThroughHub && !self.bare && worker.pool.is_some();
                let config = hp.config().join("kube-proxy.yaml");
                write(&config, &kube_proxy_config(pki, &worker.name, through_hub)?)?;
                CommandLine {
                    program: self.bins.path(Binary::KubeProxy),
                    args: vec![arg(format!("--config={}", p(&config))), arg("--v=1")],
                    env: Vec::new(),
                }
            }
        })
    }
}

impl Context<'_> {
    /// The kubelet of a host added with `yurt fleet add-host`, talking to the API server
    /// directly with `kubeconfig` (as a joined node's kubelet does), labelled into its
    /// pool, serving with a certificate it makes itself. Its configuration is written
    /// under the host's folder.
    ///
    /// # Errors
    /// I/O errors writing the configuration.
    pub fn added_host_kubelet(
        &self,
        host: &crate::spec::AddedHostPlan,
        kubeconfig: &Path,
    ) -> Result<CommandLine> {
        let hp = self.paths.host(&HostId::Edge(host.name.clone()));
        let config = hp.config().join("kubelet.yaml");
        let id = HostId::Edge(host.name.clone());
        write(&config, &node_kubelet_config(self, &id, &hp, None)?)?;
        let pool = &self.plan.pools[host.pool];
        Ok(CommandLine {
            program: self.bins.path(Binary::Kubelet),
            args: self.kubelet_args(
                &hp,
                &config,
                kubeconfig,
                &host.name,
                host.ip,
                &format!("{}={}", yurt_api::labels::NODE_POOL, pool.name),
            ),
            env: Vec::new(),
        })
    }

    fn kubelet_args(
        &self,
        hp: &HostPaths,
        config: &Path,
        kubeconfig: &Path,
        node: &yurt_core::NodeName,
        ip: std::net::Ipv4Addr,
        labels: &str,
    ) -> Vec<OsString> {
        let socket = format!("unix://{}", p(&hp.containerd_socket()));
        [
            arg(format!("--config={}", p(config))),
            arg(format!("--kubeconfig={}", p(kubeconfig))),
            arg("--container-runtime=remote"),
            arg(format!("--container-runtime-endpoint={socket}")),
            arg(format!("--image-service-endpoint={socket}")),
            arg("--runtime-request-timeout=5m"),
            arg(format!(
                "--pod-infra-container-image={}",
                image::PAUSE_IMAGE
            )),
            arg(format!("--root-dir={}", p(&hp.kubelet_root()))),
            arg(format!("--hostname-override={node}")),
            arg(format!("--node-ip={ip}")),
        ]
        .into_iter()
        .chain((!labels.is_empty()).then(|| arg(format!("--node-labels={labels}"))))
        .chain([arg("--v=1")])
        .collect()
    }
}

/// The containerd configuration of an edge host.
///
/// With `cni_template`, containerd renders the host's CNI configuration from it once
/// kubelet passes the Node's pod CIDR (`{{.PodCIDR}}`), as on a host that joined the
/// cluster and learns its CIDR from the controller manager's allocator (ADR 008).
pub fn containerd_config(hp: &HostPaths, cni_template: Option<&Path>) -> String {
    let root = p(&hp.containerd_root());
    let template = cni_template
        .map(|t| format!("\n    conf_template = \"{}\"", p(t)))
        .unwrap_or_default();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (-998 for sandboxes) is
  # refused and runc fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"{template}
  # docker.io, registry.k8s.io and k8s.gcr.io resolve to the fleet's registry.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        state = p(&hp.containerd_state()),
        socket = p(&hp.containerd_socket()),
        pause = image::PAUSE_IMAGE,
        cni = p(&hp.cni_conf()),
        certs_d = p(&hp.containerd_certs_d()),
    )
}

/// The containerd of a host added with `yurt fleet add-host`: the same configuration
/// as a planned host's, but the CNI network is a template containerd renders once the
/// host's Node has a pod CIDR; no network configuration exists before.
///
/// # Errors
/// I/O errors writing the configuration files.
pub fn added_host_containerd(hp: &HostPaths, pki: &PkiPaths) -> Result<CommandLine> {
    let template = hp.config().join("cni-template.conflist");
    write(&template, &cni_config(hp, "{{.PodCIDR}}"))?;
    let config = hp.config().join("containerd.toml");
    write(&config, &containerd_config(hp, Some(&template)))?;
    for (file, text) in crate::registry::containerd_hosts(&pki.ca_cert()) {
        write(&hp.containerd_certs_d().join(file), &text)?;
    }
    let conf = hp.cni_conf();
    std::fs::create_dir_all(&conf).map_err(|e| Error::io(&conf, e))?;
    Ok(CommandLine {
        program: "/usr/bin/containerd".into(),
        args: vec![arg("--config"), arg(p(&config))],
        env: Vec::new(),
    })
}

/// The CNI network of an edge host: a bridge with the host's pod CIDR. Pod addresses
/// are not masqueraded: the fleet routes every pod CIDR, so pods see real peers.
pub fn cni_config(hp: &HostPaths, pod_cidr: &str) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "yurt",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": p(&hp.cni_ipam()),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

fn yaml(value: &serde_json::Value) -> Result<String> {
    serde_yaml::to_string(value).map_err(|e| Error::Invalid(format!("render YAML: {e}")))
}

/// The kubelet configuration of a planned node (an edge host's or the cloud worker's).
///
/// # Errors
/// Only if YAML rendering fails.
pub fn kubelet_config(
    ctx: &Context<'_>,
    host: &HostId,
    hp: &HostPaths,
    worker: &WorkerPlan,
) -> Result<String> {
    let serving = PkiPaths::kubelet_serving(&worker.name);
    let pair = (ctx.pki.cert(&serving), ctx.pki.key(&serving));
    node_kubelet_config(ctx, host, hp, Some(&pair))
}

/// The kubelet configuration of `host` (its folder `hp`), serving with `serving`
/// (certificate, key) or, without, a certificate kubelet makes itself.
///
/// # Errors
/// Only if YAML rendering or writing its resolver file fails.
pub fn node_kubelet_config(
    ctx: &Context<'_>,
    host: &HostId,
    hp: &HostPaths,
    serving: Option<&(PathBuf, PathBuf)>,
) -> Result<String> {
    let t = ctx.timings;
    let resolv = hp.config().join("resolv.conf");
    // Pods get no upstream resolver: nothing in the fleet may reach outside the machine.
    write(&resolv, "# yurt fleet: no upstream DNS\n")?;
    let manifests = hp.manifests();
    std::fs::create_dir_all(&manifests).map_err(|e| Error::io(&manifests, e))?;
    let mut config = yurt_adm::join::base_kubelet_config(
        &ctx.pki.ca_cert(),
        &format!("/{}", crate::fleet::host_cgroup(ctx.plan.slot, host)),
        &resolv,
        // Bind-mounted from the host's folder in its mount namespace (mountns.rs), at
        // the path OpenYurt's static pod tooling expects.
        crate::mountns::STATIC_POD_DIR,
    );
    config["nodeLeaseDurationSeconds"] = t.node_lease.as_secs().into();
    config["nodeStatusUpdateFrequency"] = secs(t.node_status_update).into();
    config["maxPods"] = 110.into();
    // 1.20 defaults to 5 requests/s towards the API: with a few dozen pods starting at
    // once, their status updates queue behind it for tens of seconds.
    config["kubeAPIQPS"] = 50.into();
    config["kubeAPIBurst"] = 100.into();
    if let Some((cert, key)) = serving {
        config["tlsCertFile"] = p(cert).into();
        config["tlsPrivateKeyFile"] = p(key).into();
    }
    yaml(&config)
}

/// The kube-proxy configuration of node `node`, reaching the API server through the
/// node's hub or directly.
///
/// # Errors
/// Only if YAML rendering fails.
pub fn kube_proxy_config(
    pki: &PkiPaths,
    node: &yurt_core::NodeName,
    through_hub: bool,
) -> Result<String> {
    let kubeconfig = if through_hub {
        crate::pki::HUB_LOCAL.to_owned()
    } else {
        Identity::KubeProxy.stem()
    };
    yaml(&serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": p(&pki.kubeconfig(&kubeconfig))},
        "hostnameOverride": node.as_str(),
        "bindAddress": "0.0.0.0",
        "clusterCIDR": net::CLUSTER_CIDR.to_string(),
        "mode": "iptables",
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        // Leave the machine-wide nf_conntrack_max alone.
        "conntrack": {"maxPerCore": 0},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FleetSpec, Slot, Timing};

    fn context<'a>(
        plan: &'a Plan,
        paths: &'a FleetPaths,
        pki: &'a PkiPaths,
        bins: &'a UpstreamBinaries,
    ) -> Context<'a> {
        Context {
            plan,
            paths,
            pki,
            bins,
            timings: Timing::Fast.timings(),
            yurt_binary: Path::new("/usr/local/bin/yurt"),
            edge_api: EdgeApi::ThroughHub,
            api_audit_log: false,
            second_api_server: false,
            cluster_signing_duration: None,
            bare: false,
        }
    }

    fn fixture() -> (
        tempfile::TempDir,
        Plan,
        FleetPaths,
        PkiPaths,
        UpstreamBinaries,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(&FleetSpec::default(), Slot(1)).unwrap();
        let paths = FleetPaths::new(dir.path());
        let pki = PkiPaths::new(&paths);
        let bins = crate::upstream::UpstreamBinaries::at(dir.path().join("bin"));
        (dir, plan, paths, pki, bins)
    }

    #[test]
    fn kubelet_gets_pool_labels_node_ip_and_own_cgroup_root() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = context(&plan, &paths, &pki, &bins);
        let host = plan.host("edge-b1").unwrap();
        let line = ctx.command_line(Component::Kubelet, &host).unwrap();
        let args: Vec<String> = line
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.contains(&"--node-ip=10.20.1.11".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(
                &"--node-labels=apps.openyurt.io/nodepool=pool-b,openyurt.io/is-edge-worker=true"
                    .to_owned()
            )
        );
        let config: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(paths.host(&host).config().join("kubelet.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["cgroupRoot"].as_str(), Some("/yurt-1/edge-b1"));
        assert_eq!(config["nodeLeaseDurationSeconds"].as_u64(), Some(10));
        // The base every kubelet of ours shares, then the fleet's own settings.
        assert_eq!(config["kind"].as_str(), Some("KubeletConfiguration"));
        assert_eq!(config["readOnlyPort"].as_u64(), Some(0));
        assert_eq!(
            config["authentication"]["anonymous"]["enabled"].as_bool(),
            Some(false)
        );
        assert!(
            config["authentication"]["x509"]["clientCAFile"]
                .as_str()
                .is_some_and(|f| f.ends_with("/pki/ca.crt"))
        );
        assert_eq!(
            config["staticPodPath"].as_str(),
            Some(crate::mountns::STATIC_POD_DIR)
        );
        assert_eq!(config["kubeAPIQPS"].as_u64(), Some(50));
        assert_eq!(config["maxPods"].as_u64(), Some(110));
        assert!(
            config["tlsCertFile"]
                .as_str()
                .is_some_and(|f| f.ends_with(".crt"))
        );
        // A planned node's serving certificate is minted: it asks for none.
        assert!(config.get("serverTLSBootstrap").is_none());
    }

    #[test]
    fn cni_uses_the_planned_pod_cidr_without_masquerade() {
        let (_d, plan, paths, _pki, _bins) = fixture();
        let edge = plan.edge("edge-a2").unwrap();
        let cni: serde_json::Value = serde_json::from_str(&cni_config(
            &paths.host(&HostId::Edge(edge.name.clone())),
            &edge.pod_cidr.to_string(),
        ))
        .unwrap();
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(cni["plugins"][0]["ipMasq"], false);
    }

    #[test]
    fn an_added_hosts_containerd_renders_its_network_from_a_template() {
        let (_d, _plan, paths, pki, _bins) = fixture();
        let hp = paths.host(&HostId::Edge("edge-x".parse().unwrap()));
        let line = added_host_containerd(&hp, &pki).unwrap();
        assert_eq!(line.program, PathBuf::from("/usr/bin/containerd"));
        let config = std::fs::read_to_string(hp.config().join("containerd.toml")).unwrap();
        let parsed: toml::Value = toml::from_str(&config).unwrap();
        let cni = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["cni"];
        let template = hp.config().join("cni-template.conflist");
        assert_eq!(cni["conf_template"].as_str(), Some(p(&template).as_str()));
        assert_eq!(cni["conf_dir"].as_str(), Some(p(&hp.cni_conf()).as_str()));
        // containerd renders the template only while no network is configured.
        assert_eq!(std::fs::read_dir(hp.cni_conf()).unwrap().count(), 0);
        let text = std::fs::read_to_string(&template).unwrap();
        let rendered: serde_json::Value =
            serde_json::from_str(&text.replace("{{.PodCIDR}}", "10.244.9.0/24")).unwrap();
        assert_eq!(
            rendered["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.9.0/24"
        );
        // A planned host's containerd has no template.
        assert!(!containerd_config(&hp, None).contains("conf_template"));
    }

    #[test]
    fn controller_manager_uses_the_timing_profile() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = context(&plan, &paths, &pki, &bins);
        let line = ctx
            .command_line(Component::KubeControllerManager, &HostId::Cloud)
            .unwrap();
        let args: Vec<String> = line
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.contains(&"--node-monitor-grace-period=16s".to_owned()),
            "{args:?}"
        );
    }

    #[test]
    fn the_hub_gets_the_timing_profiles_upstream_settings() {
        let (_d, plan, paths, pki, bins) = fixture();
        let host = plan.host("edge-a1").unwrap();
        let cases = [
            // Real WANs: 500 ms+ round trips and some loss.
            (
                Timing::Standard,
                ["10000ms", "10000ms", "10000ms", "30000ms"],
                "--heartbeat-interval-seconds=10",
                "--heartbeat-timeout-seconds=10",
            ),
            // Lab links: a cut is noticed within a second.
            (
                Timing::Fast,
                ["1000ms", "300ms", "500ms", "10000ms"],
                "--heartbeat-interval-seconds=4",
                "--heartbeat-timeout-seconds=2",
            ),
        ];
        for (timing, [connect, ping, ping_timeout, read], heartbeat, probe_timeout) in cases {
            let ctx = Context {
                timings: timing.timings(),
                ..context(&plan, &paths, &pki, &bins)
            };
            let line = ctx.command_line(Component::YurtHub, &host).unwrap();
            let args: Vec<String> = line
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            for want in [
                format!("--upstream-connect-timeout={connect}"),
                format!("--upstream-keepalive-interval={ping}"),
                format!("--upstream-keepalive-timeout={ping_timeout}"),
                format!("--upstream-read-timeout={read}"),
                heartbeat.to_owned(),
                probe_timeout.to_owned(),
                "--server-addr=https://10.10.0.1:6443".to_owned(),
            ] {
                assert!(args.contains(&want), "{timing:?}: no {want} in {args:?}");
            }
        }
    }

    fn args_of(line: &CommandLine) -> Vec<String> {
        line.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn direct_edges_use_their_own_kubeconfigs_and_the_default_goes_through_the_hub() {
        let (_d, plan, paths, pki, bins) = fixture();
        let host = plan.host("edge-a1").unwrap();
        let proxy_config = || {
            let text = std::fs::read_to_string(paths.host(&host).config().join("kube-proxy.yaml"))
                .unwrap();
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            v["clientConnection"]["kubeconfig"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let ctx = context(&plan, &paths, &pki, &bins);
        let kubelet = args_of(&ctx.command_line(Component::Kubelet, &host).unwrap());
        let hub_local = format!("--kubeconfig={}", p(&pki.kubeconfig("hub-local")));
        assert!(kubelet.contains(&hub_local), "{kubelet:?}");
        ctx.command_line(Component::KubeProxy, &host).unwrap();
        assert_eq!(proxy_config(), p(&pki.kubeconfig("hub-local")));

        let direct = Context {
            edge_api: EdgeApi::Direct,
            ..context(&plan, &paths, &pki, &bins)
        };
        let kubelet = args_of(&direct.command_line(Component::Kubelet, &host).unwrap());
        let own = format!("--kubeconfig={}", p(&pki.kubeconfig("kubelet-edge-a1")));
        assert!(kubelet.contains(&own), "{kubelet:?}");
        direct.command_line(Component::KubeProxy, &host).unwrap();
        assert_eq!(proxy_config(), p(&pki.kubeconfig("kube-proxy")));
    }

    #[test]
    fn the_api_servers_cluster_egress_goes_through_the_tunnel_servers_socket() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = context(&plan, &paths, &pki, &bins);
        let cloud = paths.host(&HostId::Cloud);
        let api = args_of(
            &ctx.command_line(Component::KubeApiserver, &HostId::Cloud)
                .unwrap(),
        );
        let want = format!("--kubelet-certificate-authority={}", p(&pki.ca_cert()));
        assert!(api.contains(&want), "{api:?}");
        assert!(
            api.contains(&"--enable-aggregator-routing=true".to_owned()),
            "{api:?}"
        );
        let file = api
            .iter()
            .find_map(|a| a.strip_prefix("--egress-selector-config-file="))
            .expect("an egress selector file");
        let config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let selection = &config["egressSelections"][0];
        assert_eq!(selection["name"].as_str(), Some("cluster"));
        assert_eq!(
            selection["connection"]["proxyProtocol"].as_str(),
            Some("HTTPConnect")
        );
        let socket = p(&cloud.egress_socket());
        assert_eq!(
            selection["connection"]["transport"]["uds"]["udsName"].as_str(),
            Some(socket.as_str())
        );
        // A Unix socket path must fit in sun_path (108 bytes) for any data folder
        // a test or a user is likely to pick.
        assert!(socket.len() < 100, "{socket}");
        let server = args_of(
            &ctx.command_line(Component::TunnelServer, &HostId::Cloud)
                .unwrap(),
        );
        assert!(
            server.contains(&format!("--egress-socket={socket}")),
            "{server:?}"
        );
        let edge = plan.host("edge-b1").unwrap();
        let agent = args_of(&ctx.command_line(Component::TunnelAgent, &edge).unwrap());
        for want in [
            "--node-name=edge-b1",
            "--node-ip=10.20.1.11",
            "--tunnelserver-addr=10.10.0.1:10262",
            "--server-name=yurt-tunnel-server",
        ] {
            assert!(agent.contains(&want.to_owned()), "{want}: {agent:?}");
        }
        assert!(
            agent.contains(&format!("--cert-file={}", p(&pki.cert("kubelet-edge-b1")))),
            "{agent:?}"
        );
        assert!(
            ctx.command_line(Component::TunnelAgent, &HostId::Cloud)
                .is_err()
        );
    }

    fn egress_socket_of(api: &[String]) -> String {
        let file = api
            .iter()
            .find_map(|a| a.strip_prefix("--egress-selector-config-file="))
            .expect("an egress selector file");
        let config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        config["egressSelections"][0]["connection"]["transport"]["uds"]["udsName"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_second_api_server_has_its_own_port_and_tunnel_server_and_agents_dial_both() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = Context {
            second_api_server: true,
            cluster_signing_duration: None,
            api_audit_log: true,
            ..context(&plan, &paths, &pki, &bins)
        };
        let cloud = HostId::Cloud;
        let first = args_of(&ctx.command_line(Component::KubeApiserver, &cloud).unwrap());
        let second = args_of(
            &ctx.command_line(Component::KubeApiserverReplica, &cloud)
                .unwrap(),
        );
        assert!(
            first.contains(&"--secure-port=6443".to_owned()),
            "{first:?}"
        );
        assert!(
            second.contains(&"--secure-port=6444".to_owned()),
            "{second:?}"
        );
        // Only the first keeps the `kubernetes` endpoints and writes the audit log.
        assert!(
            second.contains(&"--endpoint-reconciler-type=none".to_owned()),
            "{second:?}"
        );
        assert!(!first.iter().any(|a| a.starts_with("--endpoint-reconciler")));
        assert!(
            !second.iter().any(|a| a.starts_with("--audit")),
            "{second:?}"
        );
        let (socket_1, socket_2) = (egress_socket_of(&first), egress_socket_of(&second));
        assert_ne!(socket_1, socket_2);
        let servers = [
            (Component::TunnelServer, &socket_1, "10262", "10265"),
            (Component::TunnelServerReplica, &socket_2, "10263", "10268"),
        ];
        for (component, socket, agent_port, admin_port) in servers {
            let server = args_of(&ctx.command_line(component, &cloud).unwrap());
            for want in [
                format!("--egress-socket={socket}"),
                format!("--agent-bind-address=10.10.0.1:{agent_port}"),
                format!("--admin-address=127.0.0.1:{admin_port}"),
            ] {
                assert!(
                    server.contains(&want),
                    "{component}: no {want} in {server:?}"
                );
            }
        }
        let edge = plan.host("edge-a1").unwrap();
        let agent = args_of(&ctx.command_line(Component::TunnelAgent, &edge).unwrap());
        let dialled: Vec<&String> = agent
            .iter()
            .filter(|a| a.starts_with("--tunnelserver-addr="))
            .collect();
        assert_eq!(
            dialled,
            [
                "--tunnelserver-addr=10.10.0.1:10262",
                "--tunnelserver-addr=10.10.0.1:10263"
            ],
            "{agent:?}"
        );
        // Without it, one tunnel server.
        let single = context(&plan, &paths, &pki, &bins);
        let agent = args_of(&single.command_line(Component::TunnelAgent, &edge).unwrap());
        let count = agent
            .iter()
            .filter(|a| a.starts_with("--tunnelserver-addr="))
            .count();
        assert_eq!(count, 1, "{agent:?}");
    }

    #[test]
    fn the_api_server_audits_only_when_asked() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = context(&plan, &paths, &pki, &bins);
        let plain = args_of(
            &ctx.command_line(Component::KubeApiserver, &HostId::Cloud)
                .unwrap(),
        );
        assert!(!plain.iter().any(|a| a.starts_with("--audit")), "{plain:?}");
        let audited = Context {
            api_audit_log: true,
            ..context(&plan, &paths, &pki, &bins)
        };
        let args = args_of(
            &audited
                .command_line(Component::KubeApiserver, &HostId::Cloud)
                .unwrap(),
        );
        let want = format!("--audit-log-path={}", p(&api_audit_log(&paths)));
        assert!(args.contains(&want), "{args:?}");
        let policy = args
            .iter()
            .find_map(|a| a.strip_prefix("--audit-policy-file="))
            .expect("a policy file");
        let policy: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(policy).unwrap()).unwrap();
        assert_eq!(policy["rules"][0]["level"].as_str(), Some("Metadata"));
    }

    #[test]
    fn node_components_refuse_a_cloud_host_that_is_no_node() {
        let (_d, plan, paths, pki, bins) = fixture();
        let ctx = context(&plan, &paths, &pki, &bins);
        for c in Component::NODE {
            let err = ctx.command_line(c, &HostId::Cloud).unwrap_err();
            assert!(err.to_string().contains("cloud is none"), "{err}");
        }
        let err = ctx
            .command_line(Component::YurtHub, &HostId::Cloud)
            .unwrap_err();
        assert!(err.to_string().contains("runs on edge hosts"), "{err}");
    }

    #[test]
    fn a_bare_fleets_cloud_is_a_node_its_edges_are_plain_and_its_api_server_has_no_tunnel() {
        let (_d, plan, paths, pki, bins) = fixture();
        let plan = plan.with_cloud_worker(true);
        let ctx = Context {
            bare: true,
            edge_api: EdgeApi::Direct,
            ..context(&plan, &paths, &pki, &bins)
        };
        let cloud = args_of(
            &ctx.command_line(Component::Kubelet, &HostId::Cloud)
                .unwrap(),
        );
        assert!(
            cloud.contains(&"--hostname-override=cloud".to_owned()),
            "{cloud:?}"
        );
        assert!(
            cloud.contains(&"--node-ip=10.10.0.1".to_owned()),
            "{cloud:?}"
        );
        assert!(
            cloud.contains(&format!(
                "--kubeconfig={}",
                p(&pki.kubeconfig(&Identity::Node("cloud".parse().unwrap()).stem()))
            )),
            "its own certificate: {cloud:?}"
        );
        assert!(
            !cloud.iter().any(|a| a.starts_with("--node-labels")),
            "{cloud:?}"
        );
        let hp = paths.host(&HostId::Cloud);
        let config: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(hp.config().join("kubelet.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["cgroupRoot"].as_str(), Some("/yurt-1/cloud"));
        ctx.command_line(Component::Containerd, &HostId::Cloud)
            .unwrap();
        let cni: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(hp.cni_conf().join("10-yurt-bridge.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.0.0/24",
            "the one /24 no edge host gets"
        );
        ctx.command_line(Component::KubeProxy, &HostId::Cloud)
            .unwrap();
        let proxy = std::fs::read_to_string(hp.config().join("kube-proxy.yaml")).unwrap();
        assert!(proxy.contains("hostnameOverride: cloud"), "{proxy}");
        assert!(!proxy.contains(crate::pki::HUB_LOCAL), "{proxy}");

        let edge = plan.host("edge-a1").unwrap();
        let kubelet = args_of(&ctx.command_line(Component::Kubelet, &edge).unwrap());
        assert!(
            !kubelet.iter().any(|a| a.starts_with("--node-labels")),
            "plain: {kubelet:?}"
        );
        let api = args_of(
            &ctx.command_line(Component::KubeApiserver, &HostId::Cloud)
                .unwrap(),
        );
        assert!(
            !api.iter()
                .any(|a| a.starts_with("--egress-selector-config-file")),
            "no tunnel server to send `cluster` traffic to: {api:?}"
        );
        assert!(api.contains(&"--enable-bootstrap-token-auth=true".to_owned()));
    }

    #[test]
    fn process_names_parse() {
        assert_eq!("kubelet".parse::<Component>().unwrap(), Component::Kubelet);
        let err = "kubelett".parse::<Component>().unwrap_err().to_string();
        assert!(err.contains("known: etcd, kube-apiserver"), "{err}");
    }
}
