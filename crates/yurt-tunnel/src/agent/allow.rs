//! What an agent connects: only its own node. The server already sends node X's
//! traffic only to X's agent; this is the second wall, should the server be wrong or
//! not ours.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use yurt_core::NodeName;

use crate::connect::{Host, Target};

/// The node's addresses and ports the agent connects, and its pod CIDRs.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// The node's name: a target naming it goes to its first address.
    pub node: NodeName,
    /// The node's own addresses (its InternalIP and any other it reports).
    pub node_ips: Vec<IpAddr>,
    /// Ports allowed on those addresses (kubelet's 10250 by default).
    pub ports: Vec<u16>,
    /// The node's pod CIDRs: any address and port in them (pods' own ports, for the
    /// API server's `pods/proxy` and webhooks served by pods).
    pub pod_cidrs: Vec<IpNet>,
}

impl AllowList {
    /// The address to connect for `target`, if it is the node's own.
    pub fn address_of(&self, target: &Target) -> Option<SocketAddr> {
        let ip = match &target.host {
            Host::Ip(ip) => *ip,
            Host::Name(name) if name == self.node.as_str() => *self.node_ips.first()?,
            Host::Name(_) => return None,
        };
        let own_port = self.node_ips.contains(&ip) && self.ports.contains(&target.port);
        let pod = self.pod_cidrs.iter().any(|net| net.contains(&ip));
        (own_port || pod).then(|| SocketAddr::new(ip, target.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList {
            node: "edge-a1".parse().unwrap(),
            node_ips: vec!["10.10.1.2".parse().unwrap()],
            ports: vec![10250],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        }
    }

    fn target(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    #[test]
    fn only_the_nodes_own_ports_and_pods_are_connected() {
        let allow = list();
        assert_eq!(
            allow.address_of(&target("10.10.1.2:10250")),
            Some("10.10.1.2:10250".parse().unwrap())
        );
        assert_eq!(
            allow.address_of(&target("edge-a1:10250")),
            Some("10.10.1.2:10250".parse().unwrap())
        );
        assert_eq!(
            allow.address_of(&target("10.244.1.9:8080")),
            Some("10.244.1.9:8080".parse().unwrap())
        );
        for refused in [
            "10.10.1.2:22",
            "10.10.1.3:10250",
            "127.0.0.1:10250",
            "127.0.0.1:10261",
            "10.244.2.9:8080",
            "10.10.0.1:6443",
            "edge-a2:10250",
            "localhost:10250",
        ] {
            assert_eq!(allow.address_of(&target(refused)), None, "{refused}");
        }
    }
}
