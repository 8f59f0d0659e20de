//! The fleet's network: namespaces, links, addresses, routes and (in `nat` mode) the
//! router's NAT rules.
//!
//! ```text
//!  this machine (root netns)  yurt<S>h 10.255.S.1/30
//!        │ veth
//!  cloud netns  host0 10.255.S.2/30 ── wan0 10.10.0.1/30
//!        │ veth                                       routes: 10.20/16, 10.244/16 via router
//!  router netns wan0 10.10.0.2/30
//!        ├─ gw<p> 10.20.p.1/24 ═ gwp<p> ┐             routes: each node's pod /24 via the node
//!        │                              br<p> (site switch of pool p)
//!        └─ e<i> ───────────────────────┘
//!        │ veth
//!  edge netns   eth0 10.20.p.(10+k)/24, default via 10.20.p.1,
//!               same-pool peers' pod /24s via the peer (so a cut-off site still works)
//! ```
//!
//! No namespace has a route to this machine's other interfaces, and nothing is NATed
//! onto them: fleet traffic cannot leave the machine. Cutting a node takes its router
//! port down; cutting a pool takes its site uplink (`gwp<p>`) down, so the site's hosts
//! still reach each other; cutting the cloud takes the router's WAN link down.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::netns::{self, ip};
use crate::spec::{AddedHostPlan, HostId, NetMode, Plan, net};

/// What a cut or restore acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTarget {
    /// One edge host (its router port).
    Node(String),
    /// A whole site (its uplink; the hosts inside still reach each other).
    Pool(String),
    /// The cloud (the router's WAN link): every site loses the cloud.
    Cloud,
}

impl LinkTarget {
    /// Resolves a node, pool or `cloud` name.
    ///
    /// # Errors
    /// [`Error::Unknown`] listing valid names.
    pub fn resolve(plan: &Plan, name: &str) -> Result<Self> {
        if name == "cloud" {
            return Ok(Self::Cloud);
        }
        if plan.edge(name).is_some() || plan.added_host(name).is_some() {
            return Ok(Self::Node(name.to_owned()));
        }
        if plan.pool(name).is_some() {
            return Ok(Self::Pool(name.to_owned()));
        }
        let mut known: Vec<String> = plan.edges.iter().map(|e| e.name.to_string()).collect();
        known.extend(plan.added.iter().map(|a| a.name.to_string()));
        known.extend(plan.pools.iter().map(|p| p.name.to_string()));
        known.push("cloud".into());
        Err(Error::Unknown {
            kind: "node or pool",
            name: name.to_owned(),
            known: known.join(", "),
        })
    }

    /// The name as given.
    pub fn name(&self) -> &str {
        match self {
            Self::Node(n) | Self::Pool(n) => n,
            Self::Cloud => "cloud",
        }
    }

    /// The router interface that carries this link.
    fn router_interface(&self, plan: &Plan) -> Result<String> {
        match self {
            Self::Node(n) => plan
                .edge(n)
                .map(|e| e.router_port.clone())
                .or_else(|| plan.added_host(n).map(|a| a.router_port.clone())),
            Self::Pool(p) => plan.pool(p).map(|p| p.uplink_port.clone()),
            Self::Cloud => Some("wan0".into()),
        }
        .ok_or_else(|| Error::Invalid(format!("no link for {}", self.name())))
    }
}

/// Fails if the host-side link range or interface of this slot is taken on the machine.
///
/// # Errors
/// [`Error::AddressInUse`].
pub fn check_free(plan: &Plan) -> Result<()> {
    let iface = plan.host_link_interface();
    if std::path::Path::new("/sys/class/net").join(&iface).exists() {
        return Err(Error::AddressInUse {
            range: plan.host_link_subnet().to_string(),
            interface: iface,
        });
    }
    let subnet = plan.host_link_subnet();
    let out = ip(None, &["-4", "-o", "addr", "show"])?;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(dev), Some(addr)) = (words.get(1), words.get(3))
            && let Some(a) = addr
                .split('/')
                .next()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            && subnet.contains(a)
        {
            return Err(Error::AddressInUse {
                range: subnet.to_string(),
                interface: (*dev).to_owned(),
            });
        }
    }
    Ok(())
}

fn veth(ns: &str, name: &str, peer_ns: Option<&str>, peer: &str) -> Result<()> {
    let mut args = vec!["link", "add", name, "type", "veth", "peer", "name", peer];
    if let Some(p) = peer_ns {
        args.extend(["netns", p]);
    }
    ip(Some(ns), &args).map(drop)
}

fn up(ns: Option<&str>, dev: &str) -> Result<()> {
    ip(ns, &["link", "set", dev, "up"]).map(drop)
}

fn addr(ns: Option<&str>, dev: &str, cidr: &str) -> Result<()> {
    ip(ns, &["addr", "replace", cidr, "dev", dev]).map(drop)
}

fn route(ns: &str, dst: &str, via: Ipv4Addr) -> Result<()> {
    ip(
        Some(ns),
        &["route", "replace", dst, "via", &via.to_string()],
    )
    .map(drop)
}

/// Creates every namespace, link, address, route and rule of the plan.
/// Expects none of them to exist (remove leftovers with [`destroy`] first).
///
/// # Errors
/// The first `ip`/`iptables` command that fails.
pub fn create(plan: &Plan) -> Result<()> {
    let cloud = plan.netns(&HostId::Cloud);
    let router = plan.netns(&HostId::Router);
    for host in plan.hosts() {
        netns::add(&plan.netns(&host))?;
    }

    // this machine <-> cloud
    let host_if = plan.host_link_interface();
    crate::cmd::run(
        "create the link from this machine to the cloud host",
        std::process::Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", "host0", "netns", &cloud,
        ]),
    )?;
    addr(None, &host_if, &plan.host_link_ip().to_string())?;
    up(None, &host_if)?;
    addr(
        Some(&cloud),
        "host0",
        &plan.cloud_host_side_ip().to_string(),
    )?;
    up(Some(&cloud), "host0")?;

    // cloud <-> router
    veth(&cloud, "wan0", Some(&router), "wan0")?;
    addr(Some(&cloud), "wan0", &net::CLOUD_IP.to_string())?;
    up(Some(&cloud), "wan0")?;
    addr(Some(&router), "wan0", &net::ROUTER_WAN_IP.to_string())?;
    up(Some(&router), "wan0")?;
    route(
        &cloud,
        &net::EDGE_RANGE.to_string(),
        net::ROUTER_WAN_IP.addr,
    )?;
    route(
        &cloud,
        &net::CLUSTER_CIDR.to_string(),
        net::ROUTER_WAN_IP.addr,
    )?;
    if plan.cloud_worker.is_some() {
        // The cloud's own node (a bare fleet) runs kube-proxy, and its host-network pods
        // dial Services (the in-cluster `kubernetes` address among them): the kernel
        // needs a route to the service range before kube-proxy's rule rewrites the
        // address, as a real machine's default route gives. Nothing answers there.
        route(
            &cloud,
            &net::SERVICE_CIDR.to_string(),
            net::ROUTER_WAN_IP.addr,
        )?;
    }
    netns::sysctl(&router, "net/ipv4/ip_forward", "1", false)?;
    // The site bridges live in the router: keep bridged frames out of its iptables.
    netns::sysctl(&router, "net/bridge/bridge-nf-call-iptables", "0", true)?;

    // sites
    for pool in &plan.pools {
        ip(
            Some(&router),
            &["link", "add", &pool.bridge, "type", "bridge"],
        )?;
        up(Some(&router), &pool.bridge)?;
        veth(&router, &pool.uplink, None, &pool.uplink_port)?;
        ip(
            Some(&router),
            &["link", "set", &pool.uplink_port, "master", &pool.bridge],
        )?;
        up(Some(&router), &pool.uplink_port)?;
        addr(Some(&router), &pool.uplink, &format!("{}/24", pool.gateway))?;
        up(Some(&router), &pool.uplink)?;
    }

    // edge hosts
    for edge in &plan.edges {
        let ns = plan.netns(&HostId::Edge(edge.name.clone()));
        let pool = &plan.pools[edge.pool];
        veth(&router, &edge.router_port, Some(&ns), "eth0")?;
        ip(
            Some(&router),
            &["link", "set", &edge.router_port, "master", &pool.bridge],
        )?;
        up(Some(&router), &edge.router_port)?;
        addr(Some(&ns), "eth0", &format!("{}/24", edge.ip))?;
        up(Some(&ns), "eth0")?;
        ip(
            Some(&ns),
            &[
                "route",
                "replace",
                "default",
                "via",
                &pool.gateway.to_string(),
            ],
        )?;
        route(&router, &edge.pod_cidr.to_string(), edge.ip)?;
        for peer in plan.pool_members(edge.pool).filter(|p| p.name != edge.name) {
            route(&ns, &peer.pod_cidr.to_string(), peer.ip)?;
        }
        netns::sysctl(&ns, "net/ipv4/ip_forward", "1", false)?;
        netns::sysctl(&ns, "net/bridge/bridge-nf-call-iptables", "1", true)?;
    }

    // The cloud's own node (`yurt up --bare`): its pods (the cluster's add-ons) are
    // reachable from the sites, as a flat pod network has them. The cloud host routes
    // the rest of the pod range to the router already.
    if let Some(cloud) = &plan.cloud_worker {
        route(&router, &cloud.pod_cidr.to_string(), cloud.ip)?;
    }

    if plan.mode == NetMode::Nat {
        nat_rules(plan)?;
    }
    Ok(())
}

/// Plugs an added host into its site: its namespace, its port on the site bridge, its
/// address and default route, and routes to its planned pool peers' pod CIDRs (an
/// added host's own pod CIDR comes from its Node, and [`crate::fleet::routes`] follows
/// it). Leftovers of an earlier attempt are replaced.
///
/// # Errors
/// The first `ip` command that fails.
pub fn add_host(plan: &Plan, host: &AddedHostPlan) -> Result<()> {
    let router = plan.netns(&HostId::Router);
    let ns = plan.netns(&HostId::Edge(host.name.clone()));
    let pool = &plan.pools[host.pool];
    if !netns::exists(&ns) {
        netns::add(&ns)?;
    }
    let _ = ip(Some(&router), &["link", "delete", &host.router_port]);
    let _ = ip(Some(&ns), &["link", "delete", "eth0"]);
    veth(&router, &host.router_port, Some(&ns), "eth0")?;
    ip(
        Some(&router),
        &["link", "set", &host.router_port, "master", &pool.bridge],
    )?;
    up(Some(&router), &host.router_port)?;
    up(Some(&ns), "lo")?;
    addr(Some(&ns), "eth0", &format!("{}/24", host.ip))?;
    up(Some(&ns), "eth0")?;
    ip(
        Some(&ns),
        &[
            "route",
            "replace",
            "default",
            "via",
            &pool.gateway.to_string(),
        ],
    )?;
    for peer in plan.pool_members(host.pool) {
        route(&ns, &peer.pod_cidr.to_string(), peer.ip)?;
    }
    netns::sysctl(&ns, "net/ipv4/ip_forward", "1", false)?;
    netns::sysctl(&ns, "net/bridge/bridge-nf-call-iptables", "1", true)?;
    Ok(())
}

/// Unplugs an added host: its router port and its namespace. Its processes must be gone.
///
/// # Errors
/// If the namespace cannot be deleted.
pub fn remove_host(plan: &Plan, host: &AddedHostPlan) -> Result<()> {
    let router = plan.netns(&HostId::Router);
    let _ = ip(Some(&router), &["link", "delete", &host.router_port]);
    let ns = plan.netns(&HostId::Edge(host.name.clone()));
    if netns::exists(&ns) {
        netns::delete(&ns)?;
    }
    Ok(())
}

/// Edge sites behind NAT: their traffic to the cloud leaves with the router's address,
/// and connections opened towards a site from outside it are refused.
fn nat_rules(plan: &Plan) -> Result<()> {
    let router = plan.netns(&HostId::Router);
    let mut rules = vec!["-t nat -A POSTROUTING -o wan0 -j MASQUERADE".to_owned()];
    for pool in &plan.pools {
        let new_into_site = format!("-A FORWARD -o {} -m conntrack --ctstate NEW", pool.uplink);
        rules.push(format!(
            "{new_into_site} -p tcp -j REJECT --reject-with tcp-reset"
        ));
        rules.push(format!(
            "{new_into_site} -j REJECT --reject-with icmp-port-unreachable"
        ));
    }
    for rule in rules {
        let args: Vec<&str> = std::iter::once("-w")
            .chain(rule.split_whitespace())
            .collect();
        netns::run_in(&router, "add a NAT rule in the router", "iptables", &args)?;
    }
    Ok(())
}

/// Takes a link down (`cut`) or up (`restore`).
///
/// # Errors
/// If the target is unknown or `ip` fails.
pub fn set_link(plan: &Plan, target: &LinkTarget, connected: bool) -> Result<()> {
    let dev = target.router_interface(plan)?;
    let state = if connected { "up" } else { "down" };
    ip(
        Some(&plan.netns(&HostId::Router)),
        &["link", "set", &dev, state],
    )
    .map(drop)
}

/// Whether a link is up.
///
/// # Errors
/// If `ip` fails.
pub fn link_is_up(plan: &Plan, target: &LinkTarget) -> Result<bool> {
    let dev = target.router_interface(plan)?;
    let out = ip(
        Some(&plan.netns(&HostId::Router)),
        &["-o", "link", "show", &dev],
    )?;
    Ok(out.contains(",UP") || out.contains("<UP"))
}

/// Deletes every namespace whose name starts with `prefix` and this slot's
/// root-namespace interface. The processes inside must be gone.
///
/// # Errors
/// If a namespace cannot be deleted.
pub fn destroy(prefix: &str, host_interface: &str) -> Result<()> {
    for name in netns::list().into_iter().filter(|n| n.starts_with(prefix)) {
        netns::delete(&name)?;
    }
    if std::path::Path::new("/sys/class/net")
        .join(host_interface)
        .exists()
    {
        let _ = ip(None, &["link", "delete", host_interface]);
    }
    Ok(())
}
