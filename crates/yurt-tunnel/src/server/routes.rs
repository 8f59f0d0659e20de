//! Which node owns a CONNECT target: the server's index of Nodes (addresses, host
//! names, pod CIDRs), kept by a watch. Node names are never resolved through DNS.
//!
//! A Node's addresses are what its kubelet reports: a hostile node can claim another
//! node's address, a pod address of another node's range or another node's host name,
//! to have the API server's connections for it (logs, exec, webhooks) carried to its own
//! agent. So a target claimed by more than one Node (as an address, a name, or inside a
//! pod CIDR) goes to none of them: the CONNECT is refused naming the claimants, a
//! denial the cluster's admin sees, never a silent hijack.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use yurt_core::NodeName;

use crate::connect::Host;

/// What the index knows of one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    /// The node.
    pub name: NodeName,
    /// `status.addresses` that are IPs.
    pub addresses: Vec<IpAddr>,
    /// `status.addresses` that are names (Hostname, InternalDNS, ExternalDNS), lowercase.
    pub hostnames: Vec<String>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// Labelled `openyurt.io/is-edge-worker=true`: reached only through its agent.
    pub edge: bool,
}

impl NodeRoute {
    /// The route of a Node object, if it has a valid name.
    pub fn of(node: &Node) -> Option<Self> {
        let name: NodeName = node.metadata.name.as_deref()?.parse().ok()?;
        let edge = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(yurt_api::labels::IS_EDGE_WORKER))
            .is_some_and(|v| v == "true");
        let mut route = Self {
            name,
            addresses: Vec::new(),
            hostnames: Vec::new(),
            pod_cidrs: Vec::new(),
            edge,
        };
        if let Some(status) = &node.status {
            for a in status.addresses.iter().flatten() {
                match a.address.parse::<IpAddr>() {
                    Ok(ip) => route.addresses.push(ip),
                    Err(_) => route.hostnames.push(a.address.to_ascii_lowercase()),
                }
            }
        }
        if let Some(spec) = &node.spec {
            let cidrs = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
            for cidr in cidrs {
                if let Ok(net) = cidr.parse::<IpNet>()
                    && !route.pod_cidrs.contains(&net)
                {
                    route.pod_cidrs.push(net);
                }
            }
        }
        Some(route)
    }
}

/// Where a target goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To a node: through its agent if it has one; an edge node must.
    Node {
        /// The node.
        node: NodeName,
        /// Whether it is an edge node.
        edge: bool,
    },
    /// Not a node's: dialled directly from the server's host.
    Direct,
    /// Claimed by several nodes: refused.
    Contested {
        /// The claimants, sorted.
        nodes: Vec<NodeName>,
    },
}

#[derive(Debug, Default)]
struct Index {
    nodes: HashMap<NodeName, NodeRoute>,
    /// Every node claiming each address (sorted, no repeats).
    by_ip: HashMap<IpAddr, Vec<NodeName>>,
    /// Every node claiming each name (its own, or a host name it reports).
    by_name: HashMap<String, Vec<NodeName>>,
    cidrs: Vec<(IpNet, NodeName)>,
    synced: bool,
}

fn claim<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<NodeName>>, key: K, node: &NodeName) {
    let claimants = map.entry(key).or_default();
    if !claimants.contains(node) {
        claimants.push(node.clone());
        claimants.sort();
    }
}

impl Index {
    fn rebuild(&mut self) {
        self.by_ip.clear();
        self.by_name.clear();
        self.cidrs.clear();
        for (name, route) in &self.nodes {
            for ip in &route.addresses {
                claim(&mut self.by_ip, *ip, name);
            }
            claim(&mut self.by_name, name.as_str().to_owned(), name);
            for host in &route.hostnames {
                claim(&mut self.by_name, host.clone(), name);
            }
            for net in &route.pod_cidrs {
                self.cidrs.push((*net, name.clone()));
            }
        }
    }

    /// Every node claiming `ip`: as one of its addresses or inside one of its pod CIDRs.
    fn claimants_of_ip(&self, ip: &IpAddr) -> Vec<NodeName> {
        let mut nodes = self.by_ip.get(ip).cloned().unwrap_or_default();
        for (net, node) in &self.cidrs {
            if net.contains(ip) && !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        nodes.sort();
        nodes
    }
}

/// The index, shared by the front door and the agent listener.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    index: Arc<RwLock<Index>>,
}

impl Routes {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces one node.
    pub fn upsert(&self, route: NodeRoute) {
        let mut index = self.write();
        index.nodes.insert(route.name.clone(), route);
        index.rebuild();
    }

    /// Forgets a node.
    pub fn remove(&self, name: &NodeName) {
        let mut index = self.write();
        index.nodes.remove(name);
        index.rebuild();
    }

    /// Replaces every node at once and marks the index synced.
    pub fn replace_all(&self, routes: impl IntoIterator<Item = NodeRoute>) {
        let mut index = self.write();
        index.nodes = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        index.synced = true;
        index.rebuild();
    }

    /// Whether the first full list has arrived.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// Whether the node exists.
    pub fn contains(&self, name: &NodeName) -> bool {
        self.read().nodes.contains_key(name)
    }

    /// Number of nodes known.
    pub fn len(&self) -> usize {
        self.read().nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route of `host`: a node address, a node's name, or an address in a node's
    /// pod CIDR; anything no node claims is direct, anything several claim is contested.
    pub fn resolve(&self, host: &Host) -> Route {
        let index = self.read();
        let mut claimants = match host {
            Host::Ip(ip) => index.claimants_of_ip(ip),
            Host::Name(name) => index.by_name.get(name).cloned().unwrap_or_default(),
        };
        match claimants.len() {
            0 => Route::Direct,
            1 => match index.nodes.get(&claimants[0]) {
                Some(route) => Route::Node {
                    node: route.name.clone(),
                    edge: route.edge,
                },
                None => Route::Direct,
            },
            _ => {
                claimants.dedup();
                Route::Contested { nodes: claimants }
            }
        }
    }
}

/// Keeps `routes` in step with the cluster's Nodes until `token` is cancelled,
/// retrying with backoff after errors (kube-runtime's default).
pub async fn watch_nodes(client: kube::Client, routes: Routes, token: CancellationToken) {
    use kube::runtime::WatchStreamExt as _;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let mut pending: Vec<NodeRoute> = Vec::new();
    let stream = watcher(nodes, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "watching Nodes"),
            Some(Ok(watcher::Event::Init)) => pending.clear(),
            Some(Ok(watcher::Event::InitApply(node))) => pending.extend(NodeRoute::of(&node)),
            Some(Ok(watcher::Event::InitDone)) => {
                routes.replace_all(std::mem::take(&mut pending));
                tracing::info!(nodes = routes.len(), "node index synced");
            }
            Some(Ok(watcher::Event::Apply(node))) => {
                if let Some(route) = NodeRoute::of(&node) {
                    routes.upsert(route);
                }
            }
            Some(Ok(watcher::Event::Delete(node))) => {
                if let Some(route) = NodeRoute::of(&node) {
                    routes.remove(&route.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str, edge: bool) -> NodeRoute {
        NodeRoute {
            name: name.parse().unwrap(),
            addresses: vec![ip.parse().unwrap()],
            hostnames: vec![name.to_owned()],
            pod_cidrs: vec![cidr.parse().unwrap()],
            edge,
        }
    }

    #[test]
    fn targets_resolve_by_address_name_and_pod_cidr() {
        let routes = Routes::default();
        routes.replace_all([
            node("edge-a1", "10.10.1.2", "10.244.1.0/24", true),
            node("cloud-1", "10.10.0.5", "10.244.0.0/24", false),
        ]);
        let to = |node: &str, edge| Route::Node {
            node: node.parse().unwrap(),
            edge,
        };
        assert_eq!(
            routes.resolve(&Host::Ip("10.10.1.2".parse().unwrap())),
            to("edge-a1", true)
        );
        assert_eq!(
            routes.resolve(&Host::Name("edge-a1".into())),
            to("edge-a1", true)
        );
        assert_eq!(
            routes.resolve(&Host::Ip("10.244.1.77".parse().unwrap())),
            to("edge-a1", true)
        );
        assert_eq!(
            routes.resolve(&Host::Ip("10.244.0.3".parse().unwrap())),
            to("cloud-1", false)
        );
        assert_eq!(
            routes.resolve(&Host::Ip("10.10.0.1".parse().unwrap())),
            Route::Direct
        );
        assert_eq!(
            routes.resolve(&Host::Name("example.com".into())),
            Route::Direct
        );
        routes.remove(&"edge-a1".parse().unwrap());
        assert_eq!(
            routes.resolve(&Host::Ip("10.244.1.77".parse().unwrap())),
            Route::Direct
        );
    }

    #[test]
    fn a_target_two_nodes_claim_goes_to_neither() {
        let routes = Routes::default();
        let mut hostile = node("edge-x", "10.10.0.5", "10.244.9.0/24", true);
        // Another node's address, a pod address in another node's range, and another
        // node's name, all reported as its own.
        hostile.addresses.push("10.244.0.7".parse().unwrap());
        hostile.hostnames.push("cloud-1".to_owned());
        routes.replace_all([
            node("cloud-1", "10.10.0.5", "10.244.0.0/24", false),
            hostile,
        ]);
        let contested = Route::Contested {
            nodes: vec!["cloud-1".parse().unwrap(), "edge-x".parse().unwrap()],
        };
        for target in [
            Host::Ip("10.10.0.5".parse().unwrap()),
            Host::Ip("10.244.0.7".parse().unwrap()),
            Host::Name("cloud-1".into()),
        ] {
            assert_eq!(routes.resolve(&target), contested, "{target:?}");
        }
        // A pod range claimed inside another node's: contested too.
        routes.upsert(node("edge-y", "10.10.3.3", "10.244.0.128/25", true));
        assert!(matches!(
            routes.resolve(&Host::Ip("10.244.0.200".parse().unwrap())),
            Route::Contested { .. }
        ));
        // What only one node claims still routes to it.
        assert_eq!(
            routes.resolve(&Host::Ip("10.244.0.3".parse().unwrap())),
            Route::Node {
                node: "cloud-1".parse().unwrap(),
                edge: false
            }
        );
        // The claim withdrawn: the owner has its address back.
        routes.remove(&"edge-x".parse().unwrap());
        assert_eq!(
            routes.resolve(&Host::Ip("10.10.0.5".parse().unwrap())),
            Route::Node {
                node: "cloud-1".parse().unwrap(),
                edge: false
            }
        );
    }

    #[test]
    fn a_node_object_gives_its_route() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge-b1", "labels": {"openyurt.io/is-edge-worker": "true"}},
            "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24", "fd00:3::/64"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.10.2.2"},
                {"type": "Hostname", "address": "Edge-B1"}
            ]}
        }))
        .unwrap();
        let route = NodeRoute::of(&node).unwrap();
        assert!(route.edge);
        assert_eq!(
            route.addresses,
            vec!["10.10.2.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(route.hostnames, vec!["edge-b1".to_owned()]);
        assert_eq!(route.pod_cidrs.len(), 2);
    }
}
