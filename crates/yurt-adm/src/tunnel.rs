//! The tunnel agent of an edge node that `yurt adm join` makes (OpenYurt runs it as a
//! DaemonSet on edge nodes; here it is a unit of the host, like the hub). The agent dials
//! out to every tunnel server, so the API server reaches the node's kubelet (`kubectl
//! logs/exec/port-forward`) behind NAT. Agents find the servers as OpenYurt's do, through
//! Service `kube-system/x-tunnel-server-svc`: its Endpoints name each server's agent
//! address. A cluster without that Service has no tunnel, and the node runs no agent.
//!
//! The agent connects with kubelet's rotating client certificate (`system:node:<node>`,
//! which the server takes as the node's identity) and checks the servers against the
//! cluster CA; it connects only this node's address (kubelet's port) and its pod CIDRs.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Node};
use kube::api::Api;
use yurt_core::host::HostFacts;
use yurt_core::units::{Restart, Unit};

use crate::join::HostFiles;

/// The Service whose Endpoints name the tunnel servers.
pub const SERVICE: (&str, &str) = ("kube-system", "x-tunnel-server-svc");

/// The agent's process (its unit's name).
pub const AGENT: &str = "yurt-tunnel-agent";

/// Every `address:port` the Endpoints of the tunnel's Service name, in order; `None`
/// when the cluster has no such Endpoints (no tunnel).
///
/// # Errors
/// The read failed (other than not found).
pub async fn server_addresses(client: &kube::Client) -> Result<Option<Vec<String>>, kube::Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), SERVICE.0);
    Ok(api.get_opt(SERVICE.1).await?.map(|e| addresses_of(&e)))
}

/// `address:port` for every address and port of every subset (IPv6 in brackets).
pub fn addresses_of(endpoints: &Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for address in subset.addresses.iter().flatten() {
            for port in subset.ports.iter().flatten() {
                let target = match address.ip.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", port.port),
                    _ => format!("{}:{}", address.ip, port.port),
                };
                if !out.contains(&target) {
                    out.push(target);
                }
            }
        }
    }
    out
}

/// The pod CIDRs of `node` (what its pods' addresses come from).
///
/// # Errors
/// The read failed.
pub async fn pod_cidrs_of(client: &kube::Client, node: &str) -> Result<Vec<String>, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let spec = nodes.get(node).await?.spec.unwrap_or_default();
    let mut cidrs = spec.pod_cidrs.unwrap_or_default();
    if cidrs.is_empty() {
        cidrs.extend(spec.pod_cidr);
    }
    Ok(cidrs)
}

/// The agent's unit for `node` on this host: to `servers`, with kubelet's client
/// certificate, allowed to connect the host's address and `pod_cidrs`.
pub fn agent_unit(
    files: &HostFiles,
    facts: &HostFacts,
    node: &str,
    servers: &[String],
    pod_cidrs: &[String],
) -> Unit {
    let client = files.kubelet_client_pem().display().to_string();
    let mut exec = vec![
        facts.yurt.display().to_string(),
        "tunnel-agent".to_owned(),
        format!("--node-name={node}"),
        format!("--node-ip={}", facts.address),
        format!("--ca-file={}", files.ca().display()),
        format!("--cert-file={client}"),
        format!("--key-file={client}"),
    ];
    exec.extend(servers.iter().map(|s| format!("--tunnelserver-addr={s}")));
    if !pod_cidrs.is_empty() {
        exec.push(format!("--pod-cidr={}", pod_cidrs.join(",")));
    }
    Unit {
        description: format!("tunnel agent of {node}, written by yurt adm"),
        exec,
        environment: [("RUST_LOG".to_owned(), "info".to_owned())].into(),
        environment_files: Vec::new(),
        restart: Restart::Always,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};

    fn subset(ips: &[&str], ports: &[i32]) -> EndpointSubset {
        EndpointSubset {
            addresses: Some(
                ips.iter()
                    .map(|ip| EndpointAddress {
                        ip: (*ip).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn every_address_and_port_of_every_subset_is_a_server_once() {
        let endpoints = Endpoints {
            subsets: Some(vec![
                subset(&["10.10.0.1"], &[10262]),
                subset(&["10.10.0.1", "fd00::1"], &[10272, 10262]),
            ]),
            ..Default::default()
        };
        assert_eq!(
            addresses_of(&endpoints),
            [
                "10.10.0.1:10262",
                "10.10.0.1:10272",
                "[fd00::1]:10272",
                "[fd00::1]:10262"
            ]
        );
        assert!(addresses_of(&Endpoints::default()).is_empty());
        // Not-ready addresses are not servers to dial.
        let not_ready = Endpoints {
            subsets: Some(vec![EndpointSubset {
                not_ready_addresses: Some(vec![EndpointAddress {
                    ip: "10.10.0.1".into(),
                    ..Default::default()
                }]),
                ports: Some(vec![EndpointPort {
                    port: 10262,
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(addresses_of(&not_ready).is_empty());
    }

    #[test]
    fn the_agent_uses_kubelets_certificate_and_connects_only_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::new(dir.path());
        let facts = crate::join::tests::facts();
        let unit = agent_unit(
            &files,
            &facts,
            "edge-x",
            &["10.10.0.1:10262".to_owned(), "10.10.0.1:10272".to_owned()],
            &["10.244.9.0/24".to_owned()],
        );
        let pem = files.kubelet_client_pem().display().to_string();
        for want in [
            "tunnel-agent".to_owned(),
            "--node-name=edge-x".to_owned(),
            format!("--node-ip={}", facts.address),
            format!("--cert-file={pem}"),
            format!("--key-file={pem}"),
            format!("--ca-file={}", files.ca().display()),
            "--tunnelserver-addr=10.10.0.1:10262".to_owned(),
            "--tunnelserver-addr=10.10.0.1:10272".to_owned(),
            "--pod-cidr=10.244.9.0/24".to_owned(),
        ] {
            assert!(unit.exec.contains(&want), "{want} in {:?}", unit.exec);
        }
        assert_eq!(unit.exec[0], facts.yurt.display().to_string());
        assert_eq!(unit.restart, Restart::Always);
        let no_cidr = agent_unit(&files, &facts, "edge-x", &["a:1".to_owned()], &[]);
        assert!(!no_cidr.exec.iter().any(|a| a.starts_with("--pod-cidr")));
    }
}
