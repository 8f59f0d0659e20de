//! What a fleet is made of ([`FleetSpec`]) and the address plan derived from it
//! ([`Plan`]): host names, pools, network namespaces, interfaces, addresses and routes.
//!
//! Everything here is pure; the plan is recomputed from the spec and the fleet's slot
//! every time, so it never drifts from what was provisioned.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use yurt_core::{NodeName, PoolName};

use crate::error::{Error, Result};

/// How the edge sites connect to the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// The cloud can open connections to edge hosts (a flat, routed network).
    #[default]
    Routed,
    /// Edge sites sit behind NAT: they reach the cloud, the cloud cannot reach them.
    Nat,
}

impl FromStr for NetMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "routed" => Ok(Self::Routed),
            "nat" => Ok(Self::Nat),
            other => Err(Error::Invalid(format!(
                "unknown network mode '{other}': use 'routed' or 'nat'"
            ))),
        }
    }
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Routed => "routed",
            Self::Nat => "nat",
        })
    }
}

/// How an edge host's kubelet and kube-proxy reach the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeApi {
    /// Through the node's hub at 127.0.0.1:10261 (OpenYurt's way; the default).
    #[default]
    ThroughHub,
    /// Straight to the API server with their own certificates; no hub runs on the host.
    /// For measuring what the hub costs or saves (`yurt bench hub`).
    Direct,
}

impl FromStr for EdgeApi {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "through-hub" => Ok(Self::ThroughHub),
            "direct" => Ok(Self::Direct),
            other => Err(Error::Invalid(format!(
                "unknown edge API path '{other}': use 'through-hub' or 'direct'"
            ))),
        }
    }
}

impl fmt::Display for EdgeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ThroughHub => "through-hub",
            Self::Direct => "direct",
        })
    }
}

/// Failure-detection timings of the control plane and kubelets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// Upstream defaults (node grace period 40 s, eviction after 300 s).
    #[default]
    Standard,
    /// Shortened for tests (node grace period 16 s, eviction after 30 s).
    Fast,
}

impl FromStr for Timing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "standard" => Ok(Self::Standard),
            "fast" => Ok(Self::Fast),
            other => Err(Error::Invalid(format!(
                "unknown timing '{other}': use 'standard' or 'fast'"
            ))),
        }
    }
}

/// The concrete durations behind a [`Timing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// kubelet `nodeLeaseDurationSeconds` (it renews every quarter of it).
    pub node_lease: Duration,
    /// kubelet `nodeStatusUpdateFrequency`.
    pub node_status_update: Duration,
    /// kube-controller-manager `--node-monitor-period`.
    pub node_monitor_period: Duration,
    /// kube-controller-manager `--node-monitor-grace-period`: silence before NotReady.
    pub node_grace: Duration,
    /// Default NoExecute toleration for not-ready/unreachable nodes (API server flags).
    pub eviction_toleration: Duration,
    /// The hub's health-probe interval.
    pub hub_heartbeat: Duration,
    /// How long one attempt of the hub's health probe may take.
    pub hub_heartbeat_timeout: Duration,
    /// The hub's connections to the API server (real-WAN values for `standard`).
    pub hub_upstream: HubUpstreamTimings,
    /// How often the fleet's route controller reconciles added hosts' pod routes
    /// (a cloud provider's `--route-reconciliation-period`, 10 s by default).
    pub route_reconcile: Duration,
}

/// The hub's upstream timeouts (its `--upstream-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubUpstreamTimings {
    /// TCP+TLS connect timeout.
    pub connect: Duration,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 ping timeout.
    pub keepalive_timeout: Duration,
    /// How long a GET or LIST waits for response headers before the cache answers.
    pub read: Duration,
}

impl Timing {
    /// The durations for this profile.
    pub fn timings(self) -> Timings {
        match self {
            Self::Standard => Timings {
                node_lease: Duration::from_secs(40),
                node_status_update: Duration::from_secs(10),
                node_monitor_period: Duration::from_secs(5),
                node_grace: Duration::from_secs(40),
                eviction_toleration: Duration::from_secs(300),
                hub_heartbeat: Duration::from_secs(10),
                hub_heartbeat_timeout: Duration::from_secs(10),
                hub_upstream: HubUpstreamTimings {
                    connect: Duration::from_secs(10),
                    keepalive_interval: Duration::from_secs(10),
                    keepalive_timeout: Duration::from_secs(10),
                    read: Duration::from_secs(30),
                },
                route_reconcile: Duration::from_secs(10),
            },
            Self::Fast => Timings {
                node_lease: Duration::from_secs(10),
                node_status_update: Duration::from_secs(4),
                node_monitor_period: Duration::from_secs(2),
                node_grace: Duration::from_secs(16),
                eviction_toleration: Duration::from_secs(30),
                hub_heartbeat: Duration::from_secs(4),
                hub_heartbeat_timeout: Duration::from_secs(2),
                // Lab links: a cut is noticed within a second.
                hub_upstream: HubUpstreamTimings {
                    connect: Duration::from_secs(1),
                    keepalive_interval: Duration::from_millis(300),
                    keepalive_timeout: Duration::from_millis(500),
                    read: Duration::from_secs(10),
                },
                route_reconcile: Duration::from_secs(2),
            },
        }
    }
}

/// The shape of a fleet, as the user asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Number of edge hosts (each a Kubernetes node).
    pub edge_nodes: u16,
    /// Number of node pools the edge hosts are spread over.
    pub pools: u16,
    /// Network mode.
    #[serde(default)]
    pub mode: NetMode,
    /// Failure-detection timings.
    #[serde(default)]
    pub timing: Timing,
    /// Whether to deploy the sample app (a YurtAppSet across the pools, a Service per pool).
    #[serde(default = "default_true")]
    pub sample_app: bool,
}

fn default_true() -> bool {
    true
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            edge_nodes: 4,
            pools: 2,
            mode: NetMode::Nat,
            timing: Timing::Standard,
            sample_app: true,
        }
    }
}

/// Most edge hosts one fleet can have (the pod CIDR plan gives each a /24 of 10.244/16).
pub const MAX_EDGE_NODES: u16 = 250;
/// Most pools one fleet can have (pools are lettered a..z).
pub const MAX_POOLS: u16 = 26;

impl FleetSpec {
    /// Checks the spec.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.edge_nodes == 0 || self.edge_nodes > MAX_EDGE_NODES {
            return Err(Error::Invalid(format!(
                "--edge-nodes must be between 1 and {MAX_EDGE_NODES}, got {}",
                self.edge_nodes
            )));
        }
        if self.pools == 0 || self.pools > MAX_POOLS || self.pools > self.edge_nodes {
            return Err(Error::Invalid(format!(
                "--pools must be between 1 and min({MAX_POOLS}, --edge-nodes={}), got {}",
                self.edge_nodes, self.pools
            )));
        }
        let per_pool = self.edge_nodes.div_ceil(self.pools);
        if per_pool > MAX_NODES_PER_POOL {
            return Err(Error::Invalid(format!(
                "at most {MAX_NODES_PER_POOL} edge nodes per pool: raise --pools (got {per_pool} per pool)"
            )));
        }
        Ok(())
    }
}

/// Most edge hosts in one pool (one /24 per site, hosts from .11).
pub const MAX_NODES_PER_POOL: u16 = 240;

/// A fleet's slot on this machine: it keeps namespace names, interface names and the
/// host-side link address of fleets that run side by side apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot(pub u8);

/// Number of fleet slots on one machine.
pub const SLOTS: usize = 250;

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The network (or interface) address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// `a.b.c.d/prefix`.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self {
            addr: Ipv4Addr::new(a, b, c, d),
            prefix,
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        (u32::from(ip) & mask) == (u32::from(self.addr) & mask)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Cluster-wide address constants.
pub mod net {
    use super::Ipv4Cidr;
    use std::net::Ipv4Addr;

    /// Service ClusterIP range.
    pub const SERVICE_CIDR: Ipv4Cidr = Ipv4Cidr::new(10, 96, 0, 0, 12);
    /// The `kubernetes` Service's ClusterIP.
    pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
    /// Pod range of the whole cluster; node `i` (0-based) gets `10.244.(i+1).0/24`.
    pub const CLUSTER_CIDR: Ipv4Cidr = Ipv4Cidr::new(10, 244, 0, 0, 16);
    /// Edge site range; pool `p` gets `10.20.p.0/24`.
    pub const EDGE_RANGE: Ipv4Cidr = Ipv4Cidr::new(10, 20, 0, 0, 16);
    /// The cloud host's address on its link to the router (the API server's advertised address).
    pub const CLOUD_IP: Ipv4Cidr = Ipv4Cidr::new(10, 10, 0, 1, 30);
    /// The router's address on its link to the cloud.
    pub const ROUTER_WAN_IP: Ipv4Cidr = Ipv4Cidr::new(10, 10, 0, 2, 30);
    /// API server port.
    pub const API_PORT: u16 = 6443;
}

/// One node pool in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    /// Pool name (`pool-a`, ...).
    pub name: PoolName,
    /// 0-based index.
    pub index: u8,
    /// The site's subnet.
    pub subnet: Ipv4Cidr,
    /// The router's address in the site (the edge hosts' default gateway).
    pub gateway: Ipv4Addr,
    /// Bridge in the router namespace joining the site's hosts.
    pub bridge: String,
    /// Router-side L3 interface of the site (carries the gateway address).
    pub uplink: String,
    /// Bridge port peered with `uplink`; taking it down cuts the site off, while hosts
    /// inside the site still reach each other.
    pub uplink_port: String,
}

/// One edge host in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePlan {
    /// Node name (`edge-a1`, ...).
    pub name: NodeName,
    /// Index of its pool in [`Plan::pools`].
    pub pool: usize,
    /// 0-based index among all edge hosts.
    pub index: u16,
    /// Its address in the site.
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Its port on the site bridge, in the router namespace; taking it down cuts the host off.
    pub router_port: String,
}

/// What the fleet's state records of a host added with `yurt fleet add-host`: its pool
/// and the address and router port it was given (kept, so they never move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedHost {
    /// Its pool's name.
    pub pool: String,
    /// The last octet of its address in the pool's subnet.
    pub address_octet: u8,
    /// The number of its router port (`a<n>`).
    pub port: u16,
}

/// A host added to a running fleet with `yurt fleet add-host`: a bare machine in a
/// site (network, containerd, images), with no certificates, no Node and no pod CIDR
/// of its own until it joins the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedHostPlan {
    /// Its name (the node name it is meant to join as).
    pub name: NodeName,
    /// Index of its pool in [`Plan::pools`].
    pub pool: usize,
    /// Its address in the site.
    pub ip: Ipv4Addr,
    /// Its port on the site bridge, in the router namespace.
    pub router_port: String,
}

/// The lowest last octet an added host's address gets (planned hosts count up from 11).
pub const FIRST_ADDED_OCTET: u8 = 100;

/// A host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostId {
    /// The cloud host: etcd and the control plane.
    Cloud,
    /// The router between the cloud and the edge sites.
    Router,
    /// An edge host, by node name.
    Edge(NodeName),
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cloud => f.write_str("cloud"),
            Self::Router => f.write_str("router"),
            Self::Edge(n) => f.write_str(n.as_str()),
        }
    }
}

/// The full network plan of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The fleet's slot.
    pub slot: Slot,
    /// Network mode.
    pub mode: NetMode,
    /// Pools, in order.
    pub pools: Vec<PoolPlan>,
    /// Edge hosts, ordered by pool then by number.
    pub edges: Vec<EdgePlan>,
    /// Hosts added to the running fleet (`yurt fleet add-host`), by name.
    pub added: Vec<AddedHostPlan>,
    /// The cloud host's own node, in a fleet started with `yurt up --bare` (a
    /// control-plane machine that also runs kubelet, as on a kubeadm cluster): cluster
    /// add-ons installed later (the manager) run there, and the API server reaches
    /// their Services through its kube-proxy.
    pub cloud_worker: Option<WorkerPlan>,
}

/// The node a host's kubelet registers as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    /// Node name.
    pub name: NodeName,
    /// Its address (kubelet's `--node-ip`).
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Index of its pool in [`Plan::pools`] (an edge host's).
    pub pool: Option<usize>,
}

/// The cloud host's node name in a `yurt up --bare` fleet.
pub const CLOUD_NODE: &str = "cloud";

impl Plan {
    /// Derives the plan of `spec` in `slot`.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the spec is invalid.
    pub fn new(spec: &FleetSpec, slot: Slot) -> Result<Self> {
        spec.validate()?;
        let pools: Vec<PoolPlan> = (0..spec.pools)
            .map(|p| {
                let index = p as u8;
                let letter = char::from(b'a' + index);
                let name = format!("pool-{letter}")
                    .parse()
                    .expect("generated pool names are DNS labels");
                PoolPlan {
                    name,
                    index,
                    subnet: Ipv4Cidr::new(10, 20, index, 0, 24),
                    gateway: Ipv4Addr::new(10, 20, index, 1),
                    bridge: format!("br{index}"),
                    uplink: format!("gw{index}"),
                    uplink_port: format!("gwp{index}"),
                }
            })
            .collect();
        let mut edges: Vec<EdgePlan> = (0..spec.edge_nodes)
            .map(|i| {
                let pool = usize::from(i % spec.pools);
                let number = i / spec.pools + 1;
                let letter = char::from(b'a' + pool as u8);
                let pool_index = pool as u8;
                let cidr_octet = u8::try_from(i + 1).expect("edge_nodes <= 250");
                EdgePlan {
                    name: format!("edge-{letter}{number}")
                        .parse()
                        .expect("generated node names are DNS labels"),
                    pool,
                    index: i,
                    ip: Ipv4Addr::new(
                        10,
                        20,
                        pool_index,
                        u8::try_from(10 + number).expect("at most 245 hosts per pool"),
                    ),
                    pod_cidr: Ipv4Cidr::new(10, 244, cidr_octet, 0, 24),
                    router_port: format!("e{i}"),
                }
            })
            .collect();
        edges.sort_by_key(|e| (e.pool, e.index));
        Ok(Self {
            slot,
            mode: spec.mode,
            pools,
            edges,
            added: Vec::new(),
            cloud_worker: None,
        })
    }

    /// The plan with (or without) the cloud host's own node (`yurt up --bare`): named
    /// [`CLOUD_NODE`], at the cloud's address, with the one pod CIDR of 10.244/16 no edge
    /// host gets (`10.244.0.0/24`).
    pub fn with_cloud_worker(mut self, cloud_worker: bool) -> Self {
        self.cloud_worker = cloud_worker.then(|| WorkerPlan {
            name: CLOUD_NODE.parse().expect("a DNS label"),
            ip: net::CLOUD_IP.addr,
            pod_cidr: Ipv4Cidr::new(10, 244, 0, 0, 24),
            pool: None,
        });
        self
    }

    /// The node `host`'s kubelet registers as, when the plan gives it one: a planned
    /// edge host's, or the cloud worker's. Added hosts get theirs when they join.
    pub fn worker(&self, host: &HostId) -> Option<WorkerPlan> {
        match host {
            HostId::Cloud => self.cloud_worker.clone(),
            HostId::Router => None,
            HostId::Edge(name) => self.edge(name.as_str()).map(|e| WorkerPlan {
                name: e.name.clone(),
                ip: e.ip,
                pod_cidr: e.pod_cidr,
                pool: Some(e.pool),
            }),
        }
    }

    /// The plan with the hosts recorded as added (`yurt fleet add-host`).
    ///
    /// # Errors
    /// [`Error::Invalid`] if a record names an unknown pool, an invalid or taken name, an
    /// address outside the added range or taken, or a taken router port.
    pub fn with_added<'a>(
        mut self,
        added: impl IntoIterator<Item = (&'a String, &'a AddedHost)>,
    ) -> Result<Self> {
        for (name, host) in added {
            let plan = self.added_plan(name, host)?;
            let clash = self
                .edges
                .iter()
                .any(|e| e.name == plan.name || e.ip == plan.ip)
                || self.added.iter().any(|a| {
                    a.name == plan.name || a.ip == plan.ip || a.router_port == plan.router_port
                });
            if clash || matches!(name.as_str(), "cloud" | "router") {
                return Err(Error::Invalid(format!(
                    "added host {name}: its name, address or router port is taken"
                )));
            }
            self.added.push(plan);
        }
        Ok(self)
    }

    fn added_plan(&self, name: &str, host: &AddedHost) -> Result<AddedHostPlan> {
        let bad = |why: String| Error::Invalid(format!("added host {name}: {why}"));
        let name: NodeName = name.parse().map_err(|e| bad(format!("{e}")))?;
        let pool = self
            .pools
            .iter()
            .position(|p| p.name.as_str() == host.pool)
            .ok_or_else(|| bad(format!("no pool {}", host.pool)))?;
        if host.address_octet < FIRST_ADDED_OCTET || host.address_octet == 255 {
            return Err(bad(format!(
                "address octet {} out of range",
                host.address_octet
            )));
        }
        let p = &self.pools[pool];
        let [a, b, c, _] = p.subnet.addr.octets();
        Ok(AddedHostPlan {
            name,
            pool,
            ip: Ipv4Addr::new(a, b, c, host.address_octet),
            router_port: format!("a{}", host.port),
        })
    }

    /// What to record for a new host `name` in `pool`: the lowest free address (from
    /// `.100`) and router port.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the name is not a node name or is taken, the pool unknown, or
    /// the pool has no address left.
    pub fn allocate_added(&self, name: &str, pool: &str) -> Result<AddedHost> {
        let node: NodeName = name
            .parse()
            .map_err(|e| Error::Invalid(format!("host name {name:?}: {e}")))?;
        if matches!(name, "cloud" | "router") || self.host(node.as_str()).is_ok() {
            return Err(Error::Invalid(format!(
                "the fleet already has a host named {name}"
            )));
        }
        let index = self
            .pools
            .iter()
            .position(|p| p.name.as_str() == pool)
            .ok_or_else(|| Error::Unknown {
                kind: "pool",
                name: pool.to_owned(),
                known: self
                    .pools
                    .iter()
                    .map(|p| p.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let taken: Vec<Ipv4Addr> = self
            .pool_members(index)
            .map(|e| e.ip)
            .chain(self.added.iter().filter(|a| a.pool == index).map(|a| a.ip))
            .collect();
        let [a, b, c, _] = self.pools[index].subnet.addr.octets();
        let octet = (FIRST_ADDED_OCTET..255)
            .find(|o| !taken.contains(&Ipv4Addr::new(a, b, c, *o)))
            .ok_or_else(|| Error::Invalid(format!("pool {pool} has no address left")))?;
        let port = (0..u16::MAX)
            .find(|n| !self.added.iter().any(|h| h.router_port == format!("a{n}")))
            .ok_or_else(|| Error::Invalid("no router port left".into()))?;
        Ok(AddedHost {
            pool: pool.to_owned(),
            address_octet: octet,
            port,
        })
    }

    /// The added host named `name`.
    pub fn added_host(&self, name: &str) -> Option<&AddedHostPlan> {
        self.added.iter().find(|a| a.name.as_str() == name)
    }

    /// The network namespace of `host`.
    pub fn netns(&self, host: &HostId) -> String {
        format!("{}{}", self.netns_prefix(), host)
    }

    /// The prefix every namespace of this fleet has (`yurt<slot>-`).
    pub fn netns_prefix(&self) -> String {
        netns_prefix(self.slot)
    }

    /// The root-namespace end of the host↔cloud link.
    pub fn host_link_interface(&self) -> String {
        format!("yurt{}h", self.slot.0)
    }

    /// The host↔cloud link subnet: `10.255.<slot>.0/30`.
    pub fn host_link_subnet(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(10, 255, self.slot.0, 0, 30)
    }

    /// The root namespace's address on the host↔cloud link.
    pub fn host_link_ip(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(10, 255, self.slot.0, 1, 30)
    }

    /// The cloud's address on the host↔cloud link: where this machine reaches the API server.
    pub fn cloud_host_side_ip(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(10, 255, self.slot.0, 2, 30)
    }

    /// The API server URL for clients on this machine (outside the fleet).
    pub fn api_url_from_host(&self) -> String {
        format!(
            "https://{}:{}",
            self.cloud_host_side_ip().addr,
            net::API_PORT
        )
    }

    /// The API server URL for clients inside the fleet (edge hosts).
    pub fn api_url_in_fleet(&self) -> String {
        format!("https://{}:{}", net::CLOUD_IP.addr, net::API_PORT)
    }

    /// The edge host named `name`.
    pub fn edge(&self, name: &str) -> Option<&EdgePlan> {
        self.edges.iter().find(|e| e.name.as_str() == name)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolPlan> {
        self.pools.iter().find(|p| p.name.as_str() == name)
    }

    /// The edge hosts of pool `pool`.
    pub fn pool_members(&self, pool: usize) -> impl Iterator<Item = &EdgePlan> {
        self.edges.iter().filter(move |e| e.pool == pool)
    }

    /// Every host with a network namespace, cloud first.
    pub fn hosts(&self) -> Vec<HostId> {
        let mut hosts = vec![HostId::Cloud, HostId::Router];
        hosts.extend(self.edges.iter().map(|e| HostId::Edge(e.name.clone())));
        hosts.extend(self.added.iter().map(|a| HostId::Edge(a.name.clone())));
        hosts
    }

    /// Resolves a host name given on the command line.
    ///
    /// # Errors
    /// [`Error::Unknown`] listing the valid names.
    pub fn host(&self, name: &str) -> Result<HostId> {
        match name {
            "cloud" => Ok(HostId::Cloud),
            "router" => Ok(HostId::Router),
            _ => self
                .edge(name)
                .map(|e| HostId::Edge(e.name.clone()))
                .or_else(|| self.added_host(name).map(|a| HostId::Edge(a.name.clone())))
                .ok_or_else(|| Error::Unknown {
                    kind: "host",
                    name: name.to_owned(),
                    known: self
                        .hosts()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }
}

/// The netns prefix of a slot.
pub fn netns_prefix(slot: Slot) -> String {
    format!("yurt{}-", slot.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(edge_nodes: u16, pools: u16) -> FleetSpec {
        FleetSpec {
            edge_nodes,
            pools,
            ..FleetSpec::default()
        }
    }

    #[test]
    fn default_plan_spreads_four_nodes_over_two_pools() {
        let plan = Plan::new(&FleetSpec::default(), Slot(3)).unwrap();
        let names: Vec<_> = plan.edges.iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, ["edge-a1", "edge-a2", "edge-b1", "edge-b2"]);
        let pools: Vec<_> = plan.pools.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(pools, ["pool-a", "pool-b"]);
        let a2 = plan.edge("edge-a2").unwrap();
        assert_eq!(a2.ip, Ipv4Addr::new(10, 20, 0, 12));
        assert_eq!(a2.pod_cidr.to_string(), "10.244.3.0/24");
        assert!(plan.pools[a2.pool].subnet.contains(a2.ip));
        assert_eq!(plan.netns(&HostId::Cloud), "yurt3-cloud");
        assert_eq!(plan.host_link_interface(), "yurt3h");
        assert_eq!(plan.api_url_from_host(), "https://10.255.3.2:6443");
    }

    #[test]
    fn addresses_and_interfaces_are_unique() {
        let plan = Plan::new(&spec(250, 26), Slot(249)).unwrap();
        let mut ips: Vec<_> = plan.edges.iter().map(|e| e.ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 250);
        let mut cidrs: Vec<_> = plan.edges.iter().map(|e| e.pod_cidr.addr).collect();
        cidrs.sort();
        cidrs.dedup();
        assert_eq!(cidrs.len(), 250);
        for e in &plan.edges {
            assert!(net::CLUSTER_CIDR.contains(e.pod_cidr.addr));
            assert!(net::EDGE_RANGE.contains(e.ip));
            assert!(e.router_port.len() <= 15);
        }
        assert!(plan.host_link_interface().len() <= 15);
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_flag_name() {
        for (n, p, needle) in [
            (0, 1, "--edge-nodes"),
            (251, 2, "--edge-nodes"),
            (4, 0, "--pools"),
            (2, 3, "--pools"),
            (100, 27, "--pools"),
            (250, 1, "--pools"),
        ] {
            let err = Plan::new(&spec(n, p), Slot(0)).unwrap_err().to_string();
            assert!(err.contains(needle), "{n}/{p}: {err}");
        }
    }

    #[test]
    fn hosts_resolve_by_name() {
        let plan = Plan::new(&FleetSpec::default(), Slot(0)).unwrap();
        assert_eq!(plan.host("cloud").unwrap(), HostId::Cloud);
        assert_eq!(
            plan.host("edge-b2").unwrap(),
            HostId::Edge("edge-b2".parse().unwrap())
        );
        let err = plan.host("edge-z9").unwrap_err().to_string();
        assert!(err.contains("known: cloud, router, edge-a1"), "{err}");
    }

    #[test]
    fn cidr_contains() {
        let c = Ipv4Cidr::new(10, 244, 0, 0, 16);
        assert!(c.contains(Ipv4Addr::new(10, 244, 200, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert!(Ipv4Cidr::new(0, 0, 0, 0, 0).contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn spec_modes_parse() {
        assert_eq!("nat".parse::<NetMode>().unwrap(), NetMode::Nat);
        assert!("bridged".parse::<NetMode>().is_err());
        assert_eq!("fast".parse::<Timing>().unwrap(), Timing::Fast);
    }

    #[test]
    fn added_hosts_get_the_lowest_free_address_and_port_and_keep_them() {
        let plan = Plan::new(&FleetSpec::default(), Slot(2)).unwrap();
        let x = plan.allocate_added("edge-x", "pool-a").unwrap();
        assert_eq!((x.address_octet, x.port), (FIRST_ADDED_OCTET, 0));
        let mut records = std::collections::BTreeMap::new();
        records.insert("edge-x".to_owned(), x);
        let plan = Plan::new(&FleetSpec::default(), Slot(2))
            .unwrap()
            .with_added(&records)
            .unwrap();
        let added = plan.added_host("edge-x").unwrap();
        assert_eq!(added.ip, Ipv4Addr::new(10, 20, 0, 100));
        assert_eq!(added.router_port, "a0");
        assert_eq!(
            plan.host("edge-x").unwrap(),
            HostId::Edge("edge-x".parse().unwrap())
        );
        assert!(
            plan.hosts()
                .contains(&HostId::Edge("edge-x".parse().unwrap()))
        );
        // The next one in the same pool takes .101 and port a1; another pool starts at .100.
        let y = plan.allocate_added("edge-y", "pool-a").unwrap();
        assert_eq!((y.address_octet, y.port), (101, 1));
        let z = plan.allocate_added("edge-z", "pool-b").unwrap();
        assert_eq!((z.address_octet, z.port), (100, 1));
        // Taken, invalid and reserved names, unknown pools.
        for (name, pool, says) in [
            ("edge-x", "pool-a", "already has a host named edge-x"),
            ("edge-a1", "pool-b", "already has a host named edge-a1"),
            ("router", "pool-a", "already has a host named router"),
            ("Edge_Y", "pool-a", "Edge_Y"),
            ("edge-w", "pool-q", "pool-a, pool-b"),
        ] {
            let err = plan.allocate_added(name, pool).unwrap_err().to_string();
            assert!(err.contains(says), "{name} {pool}: {err}");
        }
        // A record naming an unknown pool or a planned address range is refused.
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(
            "edge-q".to_owned(),
            AddedHost {
                pool: "pool-a".into(),
                address_octet: 11,
                port: 9,
            },
        );
        assert!(
            Plan::new(&FleetSpec::default(), Slot(2))
                .unwrap()
                .with_added(&bad)
                .is_err()
        );
        // Two records with one address, or one router port: refused, not both planned.
        for (octet, port) in [(100, 1), (101, 0)] {
            let mut clash = std::collections::BTreeMap::new();
            clash.insert(
                "edge-p".to_owned(),
                AddedHost {
                    pool: "pool-a".into(),
                    address_octet: 100,
                    port: 0,
                },
            );
            clash.insert(
                "edge-q".to_owned(),
                AddedHost {
                    pool: "pool-a".into(),
                    address_octet: octet,
                    port,
                },
            );
            let err = Plan::new(&FleetSpec::default(), Slot(2))
                .unwrap()
                .with_added(&clash)
                .unwrap_err()
                .to_string();
            assert!(err.contains("taken"), "{err}");
        }
    }
}
