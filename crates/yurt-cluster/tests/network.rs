//! The fleet network on its own (no Kubernetes): real namespaces, links, routes and NAT
//! rules, probed with TCP connections opened inside the namespaces. Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use yurt_cluster::network::{self, LinkTarget};
use yurt_cluster::slots::Registry;
use yurt_cluster::spec::{FleetSpec, HostId, NetMode, Plan, Slot};
use yurt_cluster::state::{self, FleetState};
use yurt_cluster::{netns, slots};

const PORT: u16 = 18080;

/// A network-only fleet: a slot claimed in the machine registry, namespaces created,
/// removed on drop.
struct Net {
    plan: Plan,
    dir: tempfile::TempDir,
    registry: slots::Registry,
}

impl Net {
    fn new(mode: NetMode) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new("/var/lib/yurt");
        let in_use = |s: Slot| netns::exists(&format!("yurt{}-cloud", s.0));
        let slot = registry.claim(dir.path(), None, &in_use).unwrap();
        let spec = FleetSpec {
            edge_nodes: 4,
            pools: 2,
            mode,
            ..FleetSpec::default()
        };
        state::save(
            &dir.path().join("fleet.json"),
            &FleetState::new(spec.clone(), slot),
        )
        .unwrap();
        let plan = Plan::new(&spec, slot).unwrap();
        network::check_free(&plan).unwrap();
        network::create(&plan).unwrap();
        Net {
            plan,
            dir,
            registry,
        }
    }

    fn ns(&self, host: &str) -> String {
        self.plan.netns(&self.plan.host(host).unwrap())
    }

    /// Serves "hello <peer address>" on every address of `host`.
    fn serve(&self, host: &str) {
        let handle = std::fs::File::open(netns::path(&self.ns(host))).unwrap();
        let listener = std::thread::spawn(move || {
            setns(&handle, CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).unwrap()
        })
        .join()
        .unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.write_all(format!("hello {peer}").as_bytes());
            }
        });
    }

    /// Connects from `from` to `to`: Ok(greeting) or the error kind.
    fn connect(&self, from: &str, to: Ipv4Addr) -> Result<String, std::io::ErrorKind> {
        let addr = SocketAddr::from((to, PORT));
        let mut s = netns::connect_tcp(&self.ns(from), addr, Duration::from_secs(2))
            .map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.kind())?;
        Ok(text)
    }

    fn ip(&self, host: &str) -> Ipv4Addr {
        self.plan.edge(host).unwrap().ip
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let prefix = self.plan.netns_prefix();
        network::destroy(&prefix, &self.plan.host_link_interface()).unwrap();
        let _ = self.registry.release(self.plan.slot, self.dir.path());
        assert!(
            netns::list().iter().all(|n| !n.starts_with(&prefix)),
            "namespaces with prefix {prefix} left behind"
        );
        assert!(
            !Path::new("/sys/class/net")
                .join(self.plan.host_link_interface())
                .exists()
        );
    }
}

const CLOUD: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// TEST-NET-3: routed nowhere; a fleet namespace must have no way towards it.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

#[test]
fn routed_fleet_hosts_reach_each_other_and_cuts_isolate_as_documented() {
    let net = Net::new(NetMode::Routed);
    for host in ["cloud", "edge-a1", "edge-a2", "edge-b1"] {
        net.serve(host);
    }
    let (a1, a2, b1) = (net.ip("edge-a1"), net.ip("edge-a2"), net.ip("edge-b1"));
    assert_eq!(
        net.connect("edge-a1", CLOUD),
        Ok(format!("hello {a1}")),
        "edge sees the cloud, cloud sees the edge's own address"
    );
    assert_eq!(net.connect("cloud", a1), Ok("hello 10.10.0.1".into()));
    assert_eq!(net.connect("edge-b1", a1), Ok(format!("hello {b1}")));

    // This machine reaches the cloud host over its own link.
    let mut s = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((net.plan.cloud_host_side_ip().addr, PORT)),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert_eq!(text, format!("hello {}", net.plan.host_link_ip().addr));

    // A pool cut off from the cloud still works inside.
    network::set_link(&net.plan, &LinkTarget::Pool("pool-a".into()), false).unwrap();
    assert!(net.connect("edge-a1", CLOUD).is_err());
    assert!(net.connect("cloud", a2).is_err());
    assert_eq!(
        net.connect("edge-a1", a2),
        Ok(format!("hello {a1}")),
        "inside the pool"
    );
    assert!(
        net.connect("edge-b1", CLOUD).is_ok(),
        "other pools are unaffected"
    );
    assert!(!network::link_is_up(&net.plan, &LinkTarget::Pool("pool-a".into())).unwrap());
    network::set_link(&net.plan, &LinkTarget::Pool("pool-a".into()), true).unwrap();
    assert!(net.connect("edge-a1", CLOUD).is_ok(), "restored");

    // A node cut is cut from everything, its pool included.
    network::set_link(&net.plan, &LinkTarget::Node("edge-a1".into()), false).unwrap();
    assert!(net.connect("edge-a2", a1).is_err());
    assert!(net.connect("edge-a1", CLOUD).is_err());
    network::set_link(&net.plan, &LinkTarget::Node("edge-a1".into()), true).unwrap();
    assert!(net.connect("edge-a2", a1).is_ok());

    // Cutting the cloud cuts every site.
    network::set_link(&net.plan, &LinkTarget::Cloud, false).unwrap();
    assert!(net.connect("edge-b1", CLOUD).is_err());
    network::set_link(&net.plan, &LinkTarget::Cloud, true).unwrap();
    assert!(net.connect("edge-b1", CLOUD).is_ok());
}

#[test]
fn no_fleet_namespace_has_a_route_off_the_machine() {
    let net = Net::new(NetMode::Routed);
    for host in net.plan.hosts() {
        let ns = net.plan.netns(&host);
        if host == HostId::Cloud || host == HostId::Router {
            let err = netns::ip(Some(&ns), &["route", "get", &OUTSIDE.to_string()]).unwrap_err();
            assert!(err.to_string().contains("unreachable"), "{host}: {err}");
        }
        // Edge hosts hand everything to the router, which has nowhere to send it: the
        // attempt fails at once instead of leaving.
        let started = Instant::now();
        let addr = SocketAddr::from((OUTSIDE, 80));
        let err = netns::connect_tcp(&ns, addr, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
            ),
            "{host}: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{host}: the attempt should fail fast, not time out"
        );
    }
    // Nothing in the fleet is NATed onto this machine's interfaces: the root namespace's
    // only route into the fleet is the link to the cloud host.
    let routes = netns::ip(None, &["-4", "route", "show"]).unwrap();
    for fleet_range in ["10.20.", "10.244.", "10.10.0."] {
        assert!(
            !routes.contains(fleet_range),
            "root namespace routes {fleet_range}: {routes}"
        );
    }
}

#[test]
fn nat_mode_lets_edges_out_and_refuses_connections_in() {
    let net = Net::new(NetMode::Nat);
    for host in ["cloud", "edge-a1", "edge-b1"] {
        net.serve(host);
    }
    assert_eq!(
        net.connect("edge-a1", CLOUD),
        Ok("hello 10.10.0.2".into()),
        "the cloud sees the router's address, not the edge's"
    );
    assert_eq!(
        net.connect("cloud", net.ip("edge-a1")),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        net.connect("edge-b1", net.ip("edge-a1")),
        Err(std::io::ErrorKind::ConnectionRefused),
        "another site cannot open connections into this one"
    );
    assert_eq!(
        net.connect("edge-a2", net.ip("edge-a1")),
        Ok(format!("hello {}", net.ip("edge-a2"))),
        "inside a site"
    );
}

#[test]
fn a_taken_host_link_range_is_reported() {
    let net = Net::new(NetMode::Routed);
    let err = network::check_free(&net.plan).unwrap_err().to_string();
    assert!(
        err.contains(&net.plan.host_link_subnet().to_string()),
        "{err}"
    );
    assert!(err.contains("already in use"), "{err}");
}
