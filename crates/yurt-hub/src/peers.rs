//! Who may connect to the pod-facing port: pods of this node (addresses in the node's
//! pod CIDRs, from its Node object) and the host itself (any address of its own,
//! loopback included, which hostNetwork pods use too). With Linux's weak-host model a
//! LAN neighbour could route the hub's link-local address to this host; such a
//! connection is closed before TLS.

use std::net::IpAddr;
use std::sync::Arc;

use crate::filter::view::ClusterView;

/// The pod-facing port's admission rule.
#[derive(Debug, Clone)]
pub struct LocalPeers {
    node: String,
    view: Arc<ClusterView>,
}

impl LocalPeers {
    /// The rule for `node`, whose pod CIDRs `view` learns.
    pub fn new(node: String, view: Arc<ClusterView>) -> Self {
        Self { node, view }
    }

    /// Whether `peer` is a pod of this node or this host.
    pub fn allows(&self, peer: IpAddr) -> bool {
        peer.is_loopback()
            || self
                .view
                .pod_cidrs_of(&self.node)
                .iter()
                .any(|c| c.contains(&peer))
            || is_own_address(peer)
    }
}

/// Whether `ip` is an address of one of this host's interfaces.
fn is_own_address(ip: IpAddr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.filter_map(|a| a.address).any(|a| {
        a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())) == Some(ip)
            || a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())) == Some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_of_this_node_and_the_host_are_local_others_are_not() {
        let view = Arc::new(ClusterView::default());
        view.set_node_pod_cidrs("edge-a1", &["10.244.1.0/24".to_owned()]);
        view.set_node_pod_cidrs("edge-a2", &["10.244.2.0/24".to_owned()]);
        let peers = LocalPeers::new("edge-a1".into(), view);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(peers.allows(ip("10.244.1.7")), "a pod of this node");
        assert!(peers.allows(ip("127.0.0.1")));
        assert!(!peers.allows(ip("10.244.2.7")), "a pod of another node");
        assert!(!peers.allows(ip("10.20.1.12")), "a LAN neighbour");
    }
}
