//! The fleet's route controller (ADR 008): pod CIDRs of hosts added with `yurt fleet
//! add-host` come from kube-controller-manager's allocator once their Node exists, and
//! the fleet, playing the cloud provider's route controller, routes each such CIDR to
//! its host: in the router and on the host's pool peers (so a site cut off from the
//! cloud still reaches its own pods).
//!
//! Level-triggered, like upstream's route controller (`--route-reconciliation-period`):
//! each round reads the fleet's state, the Nodes and the pod routes every namespace of
//! the fleet has (`via` routes inside the cluster's pod range), and makes them equal to
//! what should be. Planned hosts' routes are part of what should be, so they are never
//! touched; a route to a host that is gone, or to a CIDR its Node no longer has, is
//! deleted. Only the CIDR comes from the Node, and only if it lies in the cluster's pod
//! range and overlaps no other host's; the next hop is the address the fleet gave the
//! host, never an address the node reports about itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::error::{Error, Result};
use crate::netns::ip;
use crate::paths::FleetPaths;
use crate::spec::{HostId, Ipv4Cidr, Plan, net};
use crate::state;

/// One pod route: in the namespace `netns`, `dst` via `via`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// The network namespace.
    pub netns: String,
    /// The pod CIDR.
    pub dst: String,
    /// The host that owns it.
    pub via: Ipv4Addr,
}

/// A change a round made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// A route was added (or its next hop replaced).
    Added(PodRoute),
    /// A route was deleted.
    Deleted(PodRoute),
}

/// What one round saw and did.
#[derive(Debug, Default)]
pub struct Round {
    /// Routes added or deleted.
    pub changes: Vec<RouteChange>,
    /// Added hosts whose Node has a CIDR the controller refuses, and why.
    pub refused: Vec<String>,
    /// Added hosts routed.
    pub routed_hosts: usize,
    /// Whether the round was skipped (hosts were being added, removed or rebooted).
    pub skipped: bool,
}

/// The prefix length of a node's pod CIDR (kube-controller-manager's
/// `--node-cidr-mask-size`).
pub const NODE_CIDR_PREFIX: u8 = 24;

/// Parses `a.b.c.d/n` as a network address (host bits zero).
pub fn parse_cidr(text: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let cidr = Ipv4Cidr { addr, prefix };
    (cidr.contains(addr) && network_address(cidr) == addr).then_some(cidr)
}

fn network_address(cidr: Ipv4Cidr) -> Ipv4Addr {
    let mask = if cidr.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(cidr.prefix))
    };
    Ipv4Addr::from(u32::from(cidr.addr) & mask)
}

fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(b.addr) || b.contains(a.addr)
}

/// The pod routes the fleet should have, given the pod CIDR each added host's Node
/// carries (by node name), and the added hosts refused with the reason.
pub fn desired(plan: &Plan, node_cidrs: &BTreeMap<String, String>) -> (Vec<PodRoute>, Vec<String>) {
    // (pool, host address, CIDR, host name) of every host that has a pod network.
    let mut owners: Vec<(usize, Ipv4Addr, Ipv4Cidr, String)> = plan
        .edges
        .iter()
        .map(|e| (e.pool, e.ip, e.pod_cidr, e.name.to_string()))
        .collect();
    // The cloud's own node (a bare fleet's): routed by the router only (no pool).
    let cloud = plan.cloud_worker.as_ref();
    let mut refused = Vec::new();
    let mut candidates = Vec::new();
    for host in &plan.added {
        let Some(text) = node_cidrs.get(host.name.as_str()) else {
            continue;
        };
        let Some(cidr) = parse_cidr(text) else {
            refused.push(format!("{}: pod CIDR {text:?} is not a network", host.name));
            continue;
        };
        // What the allocator hands out: a /24 of the cluster's range. A node that set its
        // own (a registering kubelet may) gets nothing wider or elsewhere.
        if cidr.prefix != NODE_CIDR_PREFIX || !net::CLUSTER_CIDR.contains(cidr.addr) {
            refused.push(format!(
                "{}: pod CIDR {cidr} is not a /{NODE_CIDR_PREFIX} of the cluster's {}",
                host.name,
                net::CLUSTER_CIDR
            ));
            continue;
        }
        let overlapped = owners
            .iter()
            .map(|o| (o.2, o.3.as_str()))
            .chain(cloud.iter().map(|c| (c.pod_cidr, c.name.as_str())))
            .find(|(c, _)| overlaps(*c, cidr));
        if let Some((_, other)) = overlapped {
            refused.push(format!(
                "{}: pod CIDR {cidr} overlaps planned host {other}'s",
                host.name
            ));
            continue;
        }
        candidates.push((host.pool, host.ip, cidr, host.name.to_string()));
    }
    // Two added hosts claiming one range: neither is routed (no name order decides).
    for (i, c) in candidates.iter().enumerate() {
        let rival = candidates
            .iter()
            .enumerate()
            .find(|(j, o)| *j != i && overlaps(o.2, c.2));
        match rival {
            Some((_, o)) => refused.push(format!("{}: pod CIDR {} overlaps {}'s", c.3, c.2, o.3)),
            None => owners.push(c.clone()),
        }
    }
    let router = plan.netns(&HostId::Router);
    let mut routes = Vec::new();
    for (pool, via, cidr, name) in &owners {
        routes.push(PodRoute {
            netns: router.clone(),
            dst: cidr.to_string(),
            via: *via,
        });
        let peers = plan
            .pool_members(*pool)
            .map(|e| &e.name)
            .chain(
                plan.added
                    .iter()
                    .filter(|a| a.pool == *pool)
                    .map(|a| &a.name),
            )
            .filter(|peer| peer.as_str() != name);
        for peer in peers {
            routes.push(PodRoute {
                netns: plan.netns(&HostId::Edge(peer.clone())),
                dst: cidr.to_string(),
                via: *via,
            });
        }
    }
    if let Some(cloud) = cloud {
        routes.push(PodRoute {
            netns: router,
            dst: cloud.pod_cidr.to_string(),
            via: cloud.ip,
        });
    }
    routes.sort();
    (routes, refused)
}

/// Parses `ip -4 -o route show root <range>` of `netns`: its `via` routes.
pub fn parse_routes(netns: &str, text: &str) -> Vec<PodRoute> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dst = *words.first()?;
            let at = words.iter().position(|w| *w == "via")?;
            let via: Ipv4Addr = words.get(at + 1)?.parse().ok()?;
            Some(PodRoute {
                netns: netns.to_owned(),
                dst: dst.to_owned(),
                via,
            })
        })
        .collect()
}

/// The routes to add and to delete to turn `actual` into `desired` (both of one set of
/// namespaces).
pub fn diff(desired: &[PodRoute], actual: &[PodRoute]) -> Vec<RouteChange> {
    let want: BTreeSet<&PodRoute> = desired.iter().collect();
    let have: BTreeSet<&PodRoute> = actual.iter().collect();
    let mut changes: Vec<RouteChange> = have
        .difference(&want)
        // A route whose destination is wanted with another next hop is replaced below.
        .filter(|r| !want.iter().any(|w| w.netns == r.netns && w.dst == r.dst))
        .map(|r| RouteChange::Deleted((*r).clone()))
        .collect();
    changes.extend(
        want.difference(&have)
            .map(|r| RouteChange::Added((*r).clone())),
    );
    changes
}

fn apply(change: &RouteChange) -> Result<()> {
    match change {
        RouteChange::Added(r) => ip(
            Some(&r.netns),
            &["route", "replace", &r.dst, "via", &r.via.to_string()],
        ),
        RouteChange::Deleted(r) => ip(
            Some(&r.netns),
            &["route", "del", &r.dst, "via", &r.via.to_string()],
        ),
    }
    .map(drop)
}

/// Every namespace of the fleet that carries pod routes: the router and the edge hosts.
fn route_namespaces(plan: &Plan) -> Vec<String> {
    plan.hosts()
        .iter()
        .filter(|h| **h != HostId::Cloud)
        .map(|h| plan.netns(h))
        .filter(|ns| crate::netns::exists(ns))
        .collect()
}

/// Reads the pod routes of every namespace of the fleet and applies `desired`.
///
/// # Errors
/// The first `ip` command that fails.
pub fn converge(plan: &Plan, desired: &[PodRoute]) -> Result<Vec<RouteChange>> {
    let range = net::CLUSTER_CIDR.to_string();
    let mut actual = Vec::new();
    let namespaces = route_namespaces(plan);
    for ns in &namespaces {
        let text = ip(Some(ns), &["-4", "-o", "route", "show", "root", &range])?;
        actual.extend(parse_routes(ns, &text));
    }
    let desired: Vec<PodRoute> = desired
        .iter()
        .filter(|r| namespaces.contains(&r.netns))
        .cloned()
        .collect();
    let changes = diff(&desired, &actual);
    for change in &changes {
        apply(change)?;
    }
    Ok(changes)
}

/// One round: the fleet's state, its Nodes' pod CIDRs, then [`converge`]. Nothing is
/// changed when the Nodes cannot be read (a cut cloud keeps the routes as they are).
///
/// # Errors
/// The state cannot be read, the Nodes cannot be listed, an `ip` command fails.
pub async fn reconcile(paths: &FleetPaths, client: &kube::Client) -> Result<Round> {
    // Hosts are added and removed under the operations lock: a round holds it from its
    // read of the state to its last route, so it never puts back a route a removal just
    // took away. A round that finds it held is skipped.
    let ops = paths.ops_lock();
    let Ok(_ops) = tokio::task::spawn_blocking(move || crate::lock::try_exclusive(&ops))
        .await
        .map_err(|e| Error::Invalid(format!("lock task failed: {e}")))??
    else {
        return Ok(Round {
            skipped: true,
            ..Round::default()
        });
    };
    let state = state::load(&paths.state_file())?.ok_or_else(|| Error::NoFleet {
        dir: paths.root().to_owned(),
    })?;
    let plan = Plan::new(&state.spec, state.slot)?.with_added(&state.added_hosts)?;
    let mut node_cidrs = BTreeMap::new();
    if !plan.added.is_empty() {
        let nodes: Api<Node> = Api::all(client.clone());
        // Served from the API server's watch cache: no quorum read per round.
        let list = nodes
            .list(&ListParams::default().match_any())
            .await
            .map_err(|e| Error::Invalid(format!("list Nodes: {e}")))?;
        for node in list {
            if let (Some(name), Some(cidr)) = (
                node.metadata.name,
                node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()),
            ) && plan.added_host(&name).is_some()
            {
                node_cidrs.insert(name, cidr);
            }
        }
    }
    let (want, refused) = desired(&plan, &node_cidrs);
    let routed_hosts = node_cidrs.len().saturating_sub(refused.len());
    let changes = tokio::task::spawn_blocking(move || converge(&plan, &want))
        .await
        .map_err(|e| Error::Invalid(format!("route task failed: {e}")))??;
    Ok(Round {
        changes,
        refused,
        routed_hosts,
        skipped: false,
    })
}

/// Deletes every pod route of the fleet that leads to `via` (a host being removed).
///
/// # Errors
/// The first `ip` command that fails.
pub fn remove_routes_via(plan: &Plan, via: Ipv4Addr) -> Result<()> {
    let range = net::CLUSTER_CIDR.to_string();
    for ns in route_namespaces(plan) {
        let text = ip(Some(&ns), &["-4", "-o", "route", "show", "root", &range])?;
        for route in parse_routes(&ns, &text)
            .into_iter()
            .filter(|r| r.via == via)
        {
            apply(&RouteChange::Deleted(route))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AddedHost, FleetSpec, Slot};

    fn plan_with(added: &[(&str, &str, u8)]) -> Plan {
        let records: BTreeMap<String, AddedHost> = added
            .iter()
            .enumerate()
            .map(|(i, (name, pool, octet))| {
                (
                    (*name).to_owned(),
                    AddedHost {
                        pool: (*pool).to_owned(),
                        address_octet: *octet,
                        port: i as u16,
                    },
                )
            })
            .collect();
        Plan::new(&FleetSpec::default(), Slot(3))
            .expect("plan")
            .with_added(&records)
            .expect("added")
    }

    #[test]
    fn cidrs_parse_only_as_networks() {
        assert_eq!(
            parse_cidr("10.244.5.0/24"),
            Some(Ipv4Cidr::new(10, 244, 5, 0, 24))
        );
        for bad in [
            "10.244.5.1/24",
            "10.244.5.0",
            "10.244.5.0/33",
            "x/24",
            "10.244.5.0/-1",
            "",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_added_hosts_cidr_is_routed_in_the_router_and_on_its_pool_peers_only() {
        let plan = plan_with(&[("edge-x", "pool-a", 100), ("edge-y", "pool-b", 100)]);
        let cidrs = BTreeMap::from([("edge-x".to_owned(), "10.244.9.0/24".to_owned())]);
        let (routes, refused) = desired(&plan, &cidrs);
        assert!(refused.is_empty(), "{refused:?}");
        let to_x: Vec<&str> = routes
            .iter()
            .filter(|r| r.dst == "10.244.9.0/24")
            .map(|r| r.netns.as_str())
            .collect();
        // pool-a holds edge-a1 and edge-a2 in the default plan.
        assert_eq!(to_x, vec!["yurt3-edge-a1", "yurt3-edge-a2", "yurt3-router"]);
        assert!(
            routes
                .iter()
                .filter(|r| r.dst == "10.244.9.0/24")
                .all(|r| r.via == Ipv4Addr::new(10, 20, 0, 100))
        );
        // The added host reaches its planned peers, and edge-y (no CIDR yet) gets nothing
        // routed to it but still learns its peers' routes.
        assert!(
            routes
                .iter()
                .any(|r| r.netns == "yurt3-edge-x" && r.dst == "10.244.1.0/24")
        );
        assert!(
            routes
                .iter()
                .any(|r| r.netns == "yurt3-edge-y" && r.dst == "10.244.2.0/24")
        );
        assert!(
            !routes
                .iter()
                .any(|r| r.via == Ipv4Addr::new(10, 20, 1, 100))
        );
        assert!(
            !routes
                .iter()
                .any(|r| r.netns == "yurt3-edge-x" && r.dst == "10.244.9.0/24")
        );
    }

    #[test]
    fn a_cidr_outside_the_range_wider_than_a_node_or_overlapping_another_hosts_is_refused() {
        let plan = plan_with(&[
            ("edge-x", "pool-a", 100),
            ("edge-y", "pool-a", 101),
            ("edge-z", "pool-b", 100),
            ("edge-w", "pool-b", 101),
            ("edge-v", "pool-b", 102),
            ("edge-u", "pool-a", 102),
            ("edge-t", "pool-b", 103),
        ]);
        let cidrs = BTreeMap::from([
            ("edge-x".to_owned(), "10.244.1.0/24".to_owned()), // edge-a1's
            ("edge-y".to_owned(), "10.10.0.0/24".to_owned()),  // the WAN
            ("edge-z".to_owned(), "10.244.128.0/17".to_owned()), // future allocations
            ("edge-w".to_owned(), "10.244.77.0/24".to_owned()),
            // Two added hosts claiming one range: neither gets it.
            ("edge-v".to_owned(), "10.244.90.0/24".to_owned()),
            ("edge-u".to_owned(), "10.244.90.0/24".to_owned()),
            ("edge-t".to_owned(), "10.244.91.128/25".to_owned()),
        ]);
        let (routes, refused) = desired(&plan, &cidrs);
        assert_eq!(refused.len(), 6, "{refused:?}");
        let said = |host: &str, words: &str| {
            refused
                .iter()
                .any(|r| r.starts_with(&format!("{host}:")) && r.contains(words))
        };
        assert!(
            said("edge-x", "overlaps planned host edge-a1"),
            "{refused:?}"
        );
        assert!(said("edge-y", "is not a /24"), "{refused:?}");
        assert!(said("edge-z", "is not a /24"), "{refused:?}");
        assert!(said("edge-t", "is not a /24"), "{refused:?}");
        assert!(said("edge-v", "overlaps edge-u"), "{refused:?}");
        assert!(said("edge-u", "overlaps edge-v"), "{refused:?}");
        assert!(routes.iter().any(|r| r.dst == "10.244.77.0/24"));
        assert!(!routes.iter().any(|r| r.dst == "10.244.90.0/24"));
        assert!(
            routes
                .iter()
                .filter(|r| r.via.octets()[3] >= 100)
                .all(|r| r.dst == "10.244.77.0/24"),
            "only edge-w is routed: {routes:?}"
        );
    }

    #[test]
    fn a_bare_fleets_cloud_node_is_routed_by_the_router_and_its_cidr_is_nobody_elses() {
        let plan = plan_with(&[("edge-x", "pool-a", 100)]).with_cloud_worker(true);
        let cidrs = BTreeMap::from([("edge-x".to_owned(), "10.244.0.0/24".to_owned())]);
        let (routes, refused) = desired(&plan, &cidrs);
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("edge-x:") && r.contains("overlaps planned host cloud")),
            "{refused:?}"
        );
        let to_cloud: Vec<&PodRoute> = routes.iter().filter(|r| r.dst == "10.244.0.0/24").collect();
        assert_eq!(
            to_cloud,
            [&PodRoute {
                netns: plan.netns(&HostId::Router),
                dst: "10.244.0.0/24".to_owned(),
                via: net::CLOUD_IP.addr,
            }],
            "the router only: every site reaches the cloud through it"
        );
        // Without the cloud's node, nothing routes its range.
        let (routes, _) = desired(&plan_with(&[]), &BTreeMap::new());
        assert!(!routes.iter().any(|r| r.dst == "10.244.0.0/24"));
    }

    #[test]
    fn routes_of_ip_parse_and_the_diff_adds_replaces_and_deletes() {
        let text = "10.244.1.0/24 via 10.20.0.11 dev eth0 \n\
                    10.244.3.0/24 dev cni0 proto kernel scope link src 10.244.3.1 \n\
                    10.244.9.0/24 via 10.20.0.101 dev eth0 \n\
                    10.244.8.0/24 via 10.20.0.100 dev eth0 \n";
        let actual = parse_routes("ns", text);
        assert_eq!(actual.len(), 3, "the kernel's own route is not a pod route");
        let r = |dst: &str, via: [u8; 4]| PodRoute {
            netns: "ns".into(),
            dst: dst.into(),
            via: Ipv4Addr::from(via),
        };
        let desired = vec![
            r("10.244.1.0/24", [10, 20, 0, 11]),
            r("10.244.9.0/24", [10, 20, 0, 100]),
            r("10.244.12.0/24", [10, 20, 0, 102]),
        ];
        let changes = diff(&desired, &actual);
        assert_eq!(
            changes,
            vec![
                RouteChange::Deleted(r("10.244.8.0/24", [10, 20, 0, 100])),
                RouteChange::Added(r("10.244.12.0/24", [10, 20, 0, 102])),
                RouteChange::Added(r("10.244.9.0/24", [10, 20, 0, 100])),
            ]
        );
        assert!(diff(&desired, &desired).is_empty());
    }
}
