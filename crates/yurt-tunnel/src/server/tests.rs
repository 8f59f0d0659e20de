//! The server and agents together on loopback, with real TLS and real sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use yurt_core::pki::{CertSpec, CertificateAuthority};

use super::*;
use crate::agent::{self, AgentConfig, AgentState, AllowList};
use crate::metrics::{AgentMetrics, ReasonLabel};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(20);

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: CertificateAuthority::generate("test-ca").unwrap(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.crt");
        std::fs::write(&path, self.ca.cert_pem()).unwrap();
        path
    }

    fn files(&self, stem: &str, spec: &CertSpec, ca: Option<&CertificateAuthority>) -> TlsFiles {
        let issued = ca.unwrap_or(&self.ca).issue(spec).unwrap();
        let cert = self.dir.path().join(format!("{stem}.crt"));
        let key = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        TlsFiles {
            ca: self.ca_file(),
            cert,
            key,
        }
    }

    fn node(&self, name: &str) -> TlsFiles {
        self.files(
            name,
            &CertSpec::client(format!("system:node:{name}"), &["system:nodes"]),
            None,
        )
    }
}

struct Fleet {
    pki: Pki,
    routes: Routes,
    socket: PathBuf,
    agent_addr: SocketAddr,
    agents: Agents,
    metrics: ServerMetrics,
    token: CancellationToken,
}

fn route(name: &str, ip: &str, cidr: &str) -> NodeRoute {
    NodeRoute {
        name: name.parse().unwrap(),
        addresses: vec![ip.parse().unwrap()],
        hostnames: Vec::new(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        edge: true,
    }
}

async fn start(routes: Vec<NodeRoute>) -> Fleet {
    start_with(routes, Keepalive::default()).await
}

async fn start_with(routes: Vec<NodeRoute>, keepalive: Keepalive) -> Fleet {
    let pki = Pki::new();
    let tls = pki.files(
        "server",
        &CertSpec::server("yurt-tunnel-server", &["yurt-tunnel-server"], &[LOCAL]),
        None,
    );
    let socket = pki.dir.path().join("run/egress.sock");
    let config = ServerConfig {
        egress_socket: socket.clone(),
        agent_addr: SocketAddr::new(LOCAL, 0),
        tls,
        dial_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        keepalive,
        windows: Windows::default(),
    };
    let table = Routes::default();
    table.replace_all(routes);
    let metrics = ServerMetrics::register(&mut Registry::default());
    let server = Server::bind(config, table.clone(), metrics.clone())
        .await
        .unwrap();
    let agent_addr = server.agent_addr().unwrap();
    let agents = server.agents();
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    Fleet {
        pki,
        routes: table,
        socket,
        agent_addr,
        agents,
        metrics,
        token,
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Fleet {
    fn agent_config(&self, tls: TlsFiles, node: &str, node_ip: &str) -> AgentConfig {
        AgentConfig {
            server_addrs: vec![self.agent_addr.to_string()],
            server_name: "yurt-tunnel-server".into(),
            tls,
            allow: AllowList {
                node: node.parse().unwrap(),
                node_ips: vec![node_ip.parse().unwrap()],
                ports: (1..=u16::MAX).collect(),
                pod_cidrs: Vec::new(),
            },
            dial_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            keepalive: Keepalive::default(),
            backoff: (Duration::from_millis(50), Duration::from_millis(200)),
            windows: Windows::default(),
            max_streams: 4096,
            cert_check_interval: Duration::from_millis(100),
        }
    }

    fn run_agent(&self, config: AgentConfig) -> (AgentState, AgentMetrics) {
        let state = AgentState::default();
        let metrics = AgentMetrics::register(&mut Registry::default());
        tokio::spawn(agent::run(
            config,
            metrics.clone(),
            state.clone(),
            self.token.child_token(),
        ));
        (state, metrics)
    }

    async fn agent_for(&self, node: &str, node_ip: &str) {
        let config = self.agent_config(self.pki.node(node), node, node_ip);
        self.run_agent(config);
        let node: NodeName = node.parse().unwrap();
        wait_for(|| self.agents.get(&node).is_some(), "the agent connected").await;
    }

    /// Sends a CONNECT and returns the status line and the open stream.
    async fn connect(&self, target: &str) -> (String, UnixStream) {
        connect_on(&self.socket, target).await
    }

    fn refusals(&self, reason: &'static str) -> u64 {
        self.metrics
            .agent_refusals
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Another server replica with the same CA and nodes: its egress socket, agent
    /// address and agents; it stops with `stop`.
    async fn replica(&self, stop: &CancellationToken) -> (PathBuf, SocketAddr, Agents) {
        let tls = self.pki.files(
            "server-2",
            &CertSpec::server("yurt-tunnel-server", &["yurt-tunnel-server"], &[LOCAL]),
            None,
        );
        self.replica_with(stop, tls, "run/egress-2.sock").await
    }

    /// Another server with the same nodes serving `tls`, its egress socket at `socket`
    /// in the test's folder.
    async fn replica_with(
        &self,
        stop: &CancellationToken,
        tls: TlsFiles,
        socket: &str,
    ) -> (PathBuf, SocketAddr, Agents) {
        let socket = self.pki.dir.path().join(socket);
        let config = ServerConfig {
            egress_socket: socket.clone(),
            agent_addr: SocketAddr::new(LOCAL, 0),
            tls,
            dial_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            keepalive: Keepalive::default(),
            windows: Windows::default(),
        };
        let metrics = ServerMetrics::register(&mut Registry::default());
        let server = Server::bind(config, self.routes.clone(), metrics)
            .await
            .unwrap();
        let addr = server.agent_addr().unwrap();
        let agents = server.agents();
        tokio::spawn(server.run(stop.clone()));
        (socket, addr, agents)
    }
}

/// Sends a CONNECT on `socket` and returns the status line and the open stream.
async fn connect_on(socket: &Path, target: &str) -> (String, UnixStream) {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = tokio::time::timeout(WAIT, read_head(&mut stream))
        .await
        .expect("an answer to the CONNECT");
    (head.lines().next().unwrap_or_default().to_owned(), stream)
}

/// Reads a response head byte by byte, so nothing after it is consumed.
async fn read_head(stream: &mut UnixStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP echo server on loopback.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A server that sends `bytes` of a pattern to each connection, then closes.
async fn source(bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connect_to_a_node_goes_through_its_agent_both_ways_with_half_close() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    fleet.agent_for("edge-a1", "127.0.0.1").await;
    let backend = echo().await;
    let (status, mut stream) = fleet.connect(&backend.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let receive = async { r.read_to_end(&mut back).await.unwrap() };
    tokio::time::timeout(WAIT, async { tokio::join!(send, receive) })
        .await
        .expect("the echo comes back and the stream ends");
    assert!(
        back == payload,
        "the echo differs ({} bytes back)",
        back.len()
    );
    let ok = fleet
        .metrics
        .connects
        .get_or_create(&crate::metrics::StreamLabels {
            route: "agent",
            code: 200,
        })
        .get();
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn an_edge_node_without_an_agent_gets_a_502_naming_it_at_once() {
    let fleet = start(vec![route("edge-b1", "10.10.2.2", "10.244.3.0/24")]).await;
    let started = std::time::Instant::now();
    let (status, _) = fleet.connect("10.10.2.2:10250").await;
    assert_eq!(
        status,
        "HTTP/1.1 502 node edge-b1 has no tunnel agent connected; its kubelet and pods are out of reach"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _) = fleet.connect("10.244.3.7:8080").await;
    assert!(status.starts_with("HTTP/1.1 502 node edge-b1 "), "{status}");
}

#[tokio::test]
async fn a_target_two_nodes_claim_is_refused_naming_both() {
    // edge-x reports edge-b1's address as its own (a node writes its own status).
    let mut hostile = route("edge-x", "10.10.9.9", "10.244.9.0/24");
    hostile.addresses.push("10.10.2.2".parse().unwrap());
    let fleet = start(vec![
        route("edge-b1", "10.10.2.2", "10.244.3.0/24"),
        hostile,
    ])
    .await;
    let (status, _) = fleet.connect("10.10.2.2:10250").await;
    assert!(
        status.starts_with(
            "HTTP/1.1 502 10.10.2.2:10250 is claimed by nodes edge-b1, edge-x (their addresses, names or pod CIDRs)"
        ),
        "{status}"
    );
    // Its own address still reaches it (or says it has no agent).
    let (status, _) = fleet.connect("10.10.9.9:10250").await;
    assert!(
        status.starts_with("HTTP/1.1 502 node edge-x has no tunnel agent"),
        "{status}"
    );
}

#[tokio::test]
async fn malformed_requests_get_a_400_and_the_server_keeps_serving() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"CONNECT nowhere HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        "CONNECT h\u{e9}:1 HTTP/1.1\r\n\r\n".as_bytes(),
    ] {
        let mut stream = UnixStream::connect(&fleet.socket).await.unwrap();
        stream.write_all(bad).await.unwrap();
        let head = tokio::time::timeout(WAIT, read_head(&mut stream))
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "), "{bad:?}: {head}");
    }
    // Cut off half-way through a head: the connection just ends.
    let mut stream = UnixStream::connect(&fleet.socket).await.unwrap();
    stream.write_all(b"CONNECT 127.0.0.1:1").await.unwrap();
    drop(stream);
    fleet.agent_for("edge-a1", "127.0.0.1").await;
    let backend = echo().await;
    let (status, _) = fleet.connect(&backend.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
}

#[tokio::test]
async fn agents_with_foreign_or_non_node_certificates_or_unknown_nodes_are_refused() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let foreign_ca = CertificateAuthority::generate("another-ca").unwrap();
    let foreign = fleet.pki.files(
        "foreign",
        &CertSpec::client("system:node:edge-a1", &["system:nodes"]),
        Some(&foreign_ca),
    );
    let admin = fleet.pki.files(
        "admin",
        &CertSpec::client("kubernetes-admin", &["system:masters"]),
        None,
    );
    let node_without_group = fleet.pki.files(
        "nogroup",
        &CertSpec::client("system:node:edge-a1", &[]),
        None,
    );
    let ghost = fleet.pki.node("ghost");
    for (tls, reason) in [
        (foreign, "tls"),
        (admin, "identity"),
        (node_without_group, "identity"),
        (ghost, "unknown_node"),
    ] {
        let before = fleet.refusals(reason);
        fleet.run_agent(fleet.agent_config(tls, "edge-a1", "127.0.0.1"));
        wait_for(|| fleet.refusals(reason) > before, reason).await;
    }
    assert!(
        fleet.agents.nodes().is_empty(),
        "{:?}",
        fleet.agents.nodes()
    );
    // Node edge-a1 is still unreachable: none of those agents became it.
    let (status, _) = fleet.connect("127.0.0.1:10250").await;
    assert!(
        status.starts_with("HTTP/1.1 502 node edge-a1 has no tunnel agent"),
        "{status}"
    );
}

#[tokio::test]
async fn the_agent_connects_only_its_own_node_and_reports_dial_failures() {
    // The server believes 127.0.0.2 is edge-a1's too; the agent knows only 127.0.0.1.
    let mut a1 = route("edge-a1", "127.0.0.1", "10.244.1.0/24");
    a1.addresses.push("127.0.0.2".parse().unwrap());
    let fleet = start(vec![a1]).await;
    fleet.agent_for("edge-a1", "127.0.0.1").await;
    let backend = echo().await;
    let (status, _) = fleet
        .connect(&format!("127.0.0.2:{}", backend.port()))
        .await;
    assert!(
        status.starts_with("HTTP/1.1 403 node edge-a1: the agent does not connect 127.0.0.2:"),
        "{status}"
    );
    // A closed port: 502 with the agent's reason.
    let closed = TcpListener::bind((LOCAL, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, _) = fleet.connect(&closed.to_string()).await;
    assert!(
        status.starts_with(&format!("HTTP/1.1 502 node edge-a1: dialing {closed}: ")),
        "{status}"
    );
}

#[tokio::test]
async fn a_stalled_reader_does_not_slow_another_stream_of_the_same_agent() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    fleet.agent_for("edge-a1", "127.0.0.1").await;
    // A backend that would send 1 GiB to a reader who never reads.
    let endless = source(1 << 30).await;
    let (status, stalled) = fleet.connect(&endless.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    // Let the stalled stream fill every buffer it can.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another stream carries 64 MiB: twice the connection's window, so it
    // finishes only if the stalled stream holds no more than its own stream window.
    let wanted = 64usize << 20;
    let flowing = source(wanted).await;
    let (status, mut stream) = fleet.connect(&flowing.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
    })
    .await
    .expect("the second stream flows while the first is stalled");
    assert_eq!(got, wanted);
    drop(stalled);
}

#[tokio::test]
async fn the_agent_reconnects_when_its_connection_is_dropped() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let config = fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1");
    // Through a relay we can cut: the agent's link to the server.
    let relay = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let server = fleet.agent_addr;
    // Cancelling the current token cuts the connections relayed so far, not later ones.
    let cut = std::sync::Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let relay_cut = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            let cut = relay_cut.lock().unwrap().clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                tokio::select! {
                    () = cut.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
    let (state, metrics) = fleet.run_agent(AgentConfig {
        server_addrs: vec![relay_addr.to_string()],
        ..config
    });
    let node: NodeName = "edge-a1".parse().unwrap();
    // The server registers the agent once it has the agent's HTTP/2 preface, which can
    // be before the agent's own handshake returns and counts the connection: wait for both.
    wait_for(
        || fleet.agents.get(&node).is_some() && state.connected(),
        "first connection, seen by the server and the agent",
    )
    .await;
    std::mem::take(&mut *cut.lock().unwrap()).cancel();
    let ok = |m: &AgentMetrics| {
        m.connects
            .get_or_create(&ReasonLabel { reason: "ok" })
            .get()
    };
    wait_for(|| ok(&metrics) >= 2, "a second connection").await;
    let backend = echo().await;
    let (status, mut stream) = fleet.connect(&backend.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn the_egress_socket_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/egress.sock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"stale").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let _listener = bind_private_socket(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn an_agent_that_comes_before_its_node_is_registered_gets_in_once_the_node_exists() {
    let fleet = start(Vec::new()).await;
    let table_owner = fleet.routes.clone();
    fleet.run_agent(fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fleet.agents.nodes().is_empty());
    table_owner.upsert(route("edge-a1", "127.0.0.1", "10.244.1.0/24"));
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent connected").await;
    assert_eq!(fleet.refusals("unknown_node"), 0);
}

/// A TCP relay to `to` whose connections can be frozen: still open, carrying nothing
/// (a link cut without a reset). Freezing affects the connections relayed so far.
async fn freezable_relay(
    to: SocketAddr,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<CancellationToken>>,
) {
    let relay = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let freeze = std::sync::Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let handle = freeze.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            let frozen = handle.lock().unwrap().clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                tokio::select! {
                    () = frozen.cancelled() => {
                        let _held = (inbound, outbound);
                        std::future::pending::<()>().await;
                    }
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
    (addr, freeze)
}

#[tokio::test]
async fn streams_end_at_both_ends_when_the_agents_link_goes_silent() {
    let keepalive = Keepalive {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(400),
    };
    let fleet = start_with(
        vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")],
        keepalive,
    )
    .await;
    let (relay, freeze) = freezable_relay(fleet.agent_addr).await;
    let config = AgentConfig {
        server_addrs: vec![relay.to_string()],
        keepalive,
        ..fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1")
    };
    let (_state, metrics) = fleet.run_agent(config);
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent connected").await;
    // A backend that keeps sending, like a `logs -f`.
    let endless = source(1 << 30).await;
    let (status, mut stream) = fleet.connect(&endless.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    let mut buf = vec![0u8; 64 * 1024];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(metrics.open_streams.get(), 1);
    std::mem::take(&mut *freeze.lock().unwrap()).cancel();
    // The server's side of the stream ends (the API server's connection closes) ...
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream still carries data after its link went silent"
    );
    // ... and so does the agent's (its connection to the target closes).
    wait_for(
        || metrics.open_streams.get() == 0,
        "the agent's stream ended",
    )
    .await;
}

#[tokio::test]
async fn an_agent_serves_through_every_replica_and_keeps_working_when_one_dies() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let stop_second = CancellationToken::new();
    let (second_socket, second_addr, second_agents) = fleet.replica(&stop_second).await;
    let config = AgentConfig {
        server_addrs: vec![fleet.agent_addr.to_string(), second_addr.to_string()],
        ..fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1")
    };
    let (state, metrics) = fleet.run_agent(config);
    let node: NodeName = "edge-a1".parse().unwrap();
    // Each end counts the connection after its own handshake: wait for both ends.
    wait_for(
        || {
            state.connections() == 2
                && fleet.agents.get(&node).is_some()
                && second_agents.get(&node).is_some()
        },
        "connections to both replicas",
    )
    .await;
    assert_eq!(metrics.connected.get(), 2);
    let backend = echo().await;
    let echo_through = |socket: PathBuf| async move {
        let (status, mut stream) = connect_on(&socket, &backend.to_string()).await;
        assert_eq!(status, "HTTP/1.1 200 Connection established");
        stream.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"hello");
    };
    echo_through(fleet.socket.clone()).await;
    echo_through(second_socket).await;
    // One replica dies: the agent keeps serving through the other.
    stop_second.cancel();
    wait_for(|| state.connections() == 1, "one connection left").await;
    echo_through(fleet.socket.clone()).await;
}

#[tokio::test]
async fn an_agent_refuses_a_server_with_another_name_or_from_another_ca() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    // Someone on the path with a certificate of the right name from another CA.
    let impostor_ca = CertificateAuthority::generate("impostor-ca").unwrap();
    let impostor_tls = fleet.pki.files(
        "impostor",
        &CertSpec::server("yurt-tunnel-server", &["yurt-tunnel-server"], &[LOCAL]),
        Some(&impostor_ca),
    );
    let stop = CancellationToken::new();
    let (_, impostor_addr, impostor_agents) = fleet
        .replica_with(&stop, impostor_tls, "run/impostor.sock")
        .await;
    let config = fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1");
    let tls_refusals = |m: &AgentMetrics| {
        m.connects
            .get_or_create(&ReasonLabel { reason: "tls" })
            .get()
    };
    for (what, config) in [
        // The real server, but the agent was told to expect another name.
        (
            "a server with another name",
            AgentConfig {
                server_name: "tunnel.example.org".into(),
                ..config.clone()
            },
        ),
        (
            "a server from another CA",
            AgentConfig {
                server_addrs: vec![impostor_addr.to_string()],
                ..config.clone()
            },
        ),
    ] {
        let (state, metrics) = fleet.run_agent(config);
        wait_for(|| tls_refusals(&metrics) >= 2, what).await;
        assert_eq!(state.connections(), 0, "{what}");
    }
    assert!(
        fleet.agents.nodes().is_empty(),
        "{:?}",
        fleet.agents.nodes()
    );
    assert!(impostor_agents.nodes().is_empty());
    // The same agent with the right name and server gets in.
    fleet.run_agent(config);
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent connected").await;
    stop.cancel();
}

#[tokio::test]
async fn a_renewed_certificate_gets_a_new_connection_and_the_old_one_drains() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let tls = fleet.pki.node("edge-a1");
    let (state, metrics) = fleet.run_agent(fleet.agent_config(tls.clone(), "edge-a1", "127.0.0.1"));
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent connected").await;
    let backend = echo().await;
    let (status, mut across) = fleet.connect(&backend.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    echoes(&mut across, b"before").await;
    // New streams all the while, more often than the agent looks for a renewal.
    // None may fail across the switch to the new connection.
    let refused = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let churn = {
        let (socket, refused) = (fleet.socket.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let (status, stream) = connect_on(&socket, &backend.to_string()).await;
                if status != "HTTP/1.1 200 Connection established" {
                    refused.lock().unwrap().push(status);
                }
                drop(stream);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Renewed in place, as kubelet does: a new key and certificate (valid one day).
    let mut spec = CertSpec::client("system:node:edge-a1", &["system:nodes"]);
    spec.validity = Duration::from_secs(24 * 3600);
    let renewed = fleet.pki.ca.issue(&spec).unwrap();
    std::fs::write(&tls.key, &renewed.key_pem).unwrap();
    std::fs::write(&tls.cert, &renewed.cert_pem).unwrap();
    let ok = |m: &AgentMetrics| {
        m.connects
            .get_or_create(&ReasonLabel { reason: "ok" })
            .get()
    };
    wait_for(
        || ok(&metrics) >= 2,
        "a connection with the renewed certificate",
    )
    .await;
    // A little more churn on the new connection, then none may have been refused.
    let seen = ok(&metrics);
    tokio::time::sleep(Duration::from_millis(300)).await;
    churn.abort();
    assert_eq!(ok(&metrics), seen, "no further reconnection");
    assert!(
        refused.lock().unwrap().is_empty(),
        "{:?}",
        refused.lock().unwrap()
    );
    let expiry = u64::try_from(metrics.certificate_expiry.get()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry.abs_diff(now + 24 * 3600) < 120,
        "the new connection's certificate expires at {expiry}"
    );
    // The stream opened before the renewal carries on over the old connection; new
    // streams use the new one.
    assert_eq!(state.connections(), 2);
    echoes(&mut across, b"after").await;
    let (status, mut fresh) = fleet.connect(&backend.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    echoes(&mut fresh, b"new").await;
    // Once its last stream ends, the old connection is gone.
    drop(across);
    wait_for(|| state.connections() == 1, "the old connection drained").await;
    echoes(&mut fresh, b"still").await;
}

#[tokio::test]
async fn the_server_ends_an_agent_connection_when_its_certificate_expires() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let mut spec = CertSpec::client("system:node:edge-a1", &["system:nodes"]);
    spec.validity = Duration::from_secs(3);
    let short_lived = fleet.pki.files("short-lived", &spec, None);
    let before = fleet.refusals("tls");
    fleet.run_agent(fleet.agent_config(short_lived, "edge-a1", "127.0.0.1"));
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent connected").await;
    // At expiry the connection ends, and the agent's next attempts are refused.
    wait_for(
        || fleet.refusals("tls") > before,
        "the expired certificate refused",
    )
    .await;
    assert!(fleet.agents.get(&node).is_none());
    let (status, _) = fleet.connect("127.0.0.1:10250").await;
    assert!(
        status.starts_with("HTTP/1.1 502 node edge-a1 has no tunnel agent"),
        "{status}"
    );
}

/// Writes `word` on `stream` and expects it back (from an echo backend).
async fn echoes(stream: &mut UnixStream, word: &[u8]) {
    stream.write_all(word).await.unwrap();
    let mut back = vec![0u8; word.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, word);
}

/// HTTP/2 by hand, for peers that misbehave (the h2 crate only writes well-formed frames).
mod raw {
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// What an HTTP/2 client sends first.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// One frame: a 9-byte header (length, type, flags, stream) and the payload.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Reads one frame: type, flags, stream and payload.
    pub async fn read_frame(
        r: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        r.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload).await?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok((head[3], head[4], stream, payload))
    }

    /// A frame for fuzzing: any type (unknown ones too), flags, a stream among the few in
    /// play or any other, and a short payload.
    pub fn any_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (
            0u8..12,
            any::<u8>(),
            prop_oneof![Just(0u32), Just(1), Just(2), Just(3), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(kind, flags, stream, payload)| frame(kind, flags, stream, &payload))
    }
}

type TlsClient = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A hand-made agent of `node`: TLS with the node's own certificate to `addr`, and no
/// HTTP/2 yet: the test writes the frames.
async fn raw_agent(pki: &Pki, node: &str, addr: SocketAddr) -> TlsClient {
    let config = crate::tls::client_config(&pki.node(node)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("yurt-tunnel-server").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Reads frames from the server until a request (HEADERS) opens a stream, answering its
/// SETTINGS on the way; returns the stream.
async fn next_request(agent: &mut TlsClient) -> u32 {
    loop {
        let (kind, flags, stream, _) = tokio::time::timeout(WAIT, raw::read_frame(agent))
            .await
            .expect("a frame from the server")
            .unwrap();
        if kind == raw::SETTINGS && flags & raw::ACK == 0 {
            agent
                .write_all(&raw::frame(raw::SETTINGS, raw::ACK, 0, &[]))
                .await
                .unwrap();
        }
        if kind == raw::HEADERS {
            return stream;
        }
    }
}

#[tokio::test]
async fn a_malformed_answer_from_an_agent_fails_only_its_own_stream() {
    let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
    let mut agent = raw_agent(&fleet.pki, "edge-a1", fleet.agent_addr).await;
    let node: NodeName = "edge-a1".parse().unwrap();
    wait_for(|| fleet.agents.get(&node).is_some(), "the agent admitted").await;
    let mut preface = [0u8; 24];
    agent.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, raw::PREFACE);
    agent
        .write_all(&raw::frame(raw::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();

    // The first stream's answer is malformed: a 200 (entry 8 of HPACK's static table)
    // with a connection-specific header, which HTTP/2 forbids (RFC 9113 §8.2.2). That
    // stream fails with a 502 that says so. (A header block HPACK cannot decode, such as
    // a status that is no number, breaks the connection's header table: that is a
    // connection error, which costs this node its streams and nobody else's; the fuzzing
    // below covers it.)
    let socket = fleet.socket.clone();
    let first = tokio::spawn(async move { connect_on(&socket, "127.0.0.1:10250").await.0 });
    let stream = next_request(&mut agent).await;
    let mut malformed = vec![0x88, 0x00, 10];
    malformed.extend_from_slice(b"connection");
    malformed.push(5);
    malformed.extend_from_slice(b"close");
    agent
        .write_all(&raw::frame(
            raw::HEADERS,
            raw::END_HEADERS,
            stream,
            &malformed,
        ))
        .await
        .unwrap();
    let status = first.await.unwrap();
    assert!(
        status.starts_with("HTTP/1.1 502 node edge-a1: tunnel stream failed"),
        "{status}"
    );

    // The connection is still the node's and carries the next stream both ways.
    let socket = fleet.socket.clone();
    let second = tokio::spawn(async move {
        let (status, mut stream) = connect_on(&socket, "127.0.0.1:10250").await;
        stream.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        (status, back)
    });
    let next = next_request(&mut agent).await;
    assert!(next > stream, "stream {next} after {stream}");
    // `:status: 200` is entry 8 of the static table.
    agent
        .write_all(&raw::frame(raw::HEADERS, raw::END_HEADERS, next, &[0x88]))
        .await
        .unwrap();
    let payload = loop {
        let (kind, _, id, payload) = raw::read_frame(&mut agent).await.unwrap();
        if kind == raw::DATA && id == next && !payload.is_empty() {
            break payload;
        }
    };
    agent
        .write_all(&raw::frame(raw::DATA, 0, next, &payload))
        .await
        .unwrap();
    let (status, back) = second.await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    assert_eq!(&back, b"hello");
    assert!(fleet.agents.get(&node).is_some());
    agent
        .write_all(&raw::frame(raw::DATA, raw::END_STREAM, next, &[]))
        .await
        .unwrap();
}

/// Bounded fuzzing of what an agent connection may carry: an agent with a valid
/// certificate sends any frames. Whatever it sends, the server keeps serving other
/// nodes, drops that connection once it closes, and answers a CONNECT for its node
/// with a 502 at once.
#[test]
fn any_frames_from_an_agent_leave_the_server_serving_everyone_else() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fleet = rt.block_on(async {
        let fleet = start(vec![
            route("edge-a1", "127.0.0.2", "10.244.1.0/24"),
            route("edge-b1", "127.0.0.1", "10.244.2.0/24"),
        ])
        .await;
        fleet.agent_for("edge-b1", "127.0.0.1").await;
        fleet
    });
    let backend = rt.block_on(echo());
    let (node, other): (NodeName, NodeName) =
        ("edge-a1".parse().unwrap(), "edge-b1".parse().unwrap());
    let frames = proptest::collection::vec(raw::any_frame(), 0..12);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(proptest::bool::ANY, frames),
            |(settings_first, frames)| {
                rt.block_on(async {
                    let mut agent = raw_agent(&fleet.pki, "edge-a1", fleet.agent_addr).await;
                    // Admitted before the frames: the check below that it is gone must
                    // not pass before the server even took it.
                    wait_for(
                        || fleet.agents.get(&node).is_some(),
                        "the fuzzing agent admitted",
                    )
                    .await;
                    if settings_first {
                        let _ = agent.write_all(&raw::frame(raw::SETTINGS, 0, 0, &[])).await;
                    }
                    for frame in &frames {
                        if agent.write_all(frame).await.is_err() {
                            break;
                        }
                    }
                    let _ = agent.flush().await;
                    // Another node's agent is untouched.
                    let (status, mut stream) = fleet.connect(&backend.to_string()).await;
                    assert_eq!(status, "HTTP/1.1 200 Connection established");
                    echoes(&mut stream, b"still here").await;
                    assert!(fleet.agents.get(&other).is_some());
                    drop(agent);
                    wait_for(
                        || fleet.agents.get(&node).is_none(),
                        "the fuzzed connection dropped",
                    )
                    .await;
                    let (status, _) = fleet.connect("127.0.0.2:10250").await;
                    assert!(
                        status.starts_with("HTTP/1.1 502 node edge-a1 has no tunnel agent"),
                        "{status}"
                    );
                });
                Ok(())
            },
        )
        .unwrap();
}

/// A server replica that, once TLS is up, speaks garbage HTTP/2 to each agent that
/// connects: the client preface, then some of `frames`. Returns its address and how many
/// agent connections it has taken.
async fn garbage_server(
    fleet: &Fleet,
    frames: Vec<Vec<u8>>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let tls = fleet.pki.files(
        "garbage",
        &CertSpec::server("yurt-tunnel-server", &["yurt-tunnel-server"], &[LOCAL]),
        None,
    );
    let config = crate::tls::server_config(&tls).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        let mut round = 0usize;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut out = raw::PREFACE.to_vec();
            out.extend(frames.iter().cycle().skip(round).take(6).flatten());
            round += 1;
            tokio::spawn(async move {
                let _ = tls.write_all(&out).await;
                let mut sink = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), tls.read(&mut sink)).await
                {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, taken)
}

/// Bounded fuzzing of the agent's side: a second server replica sends any frames on every
/// connection. The agent keeps reconnecting to it and keeps serving through the real one.
#[test]
fn any_frames_from_a_server_leave_the_agent_serving_through_the_others() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::deterministic();
    let frames = proptest::collection::vec(raw::any_frame(), 24)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    rt.block_on(async {
        let fleet = start(vec![route("edge-a1", "127.0.0.1", "10.244.1.0/24")]).await;
        let (garbage, taken) = garbage_server(&fleet, frames).await;
        let config = AgentConfig {
            server_addrs: vec![garbage.to_string(), fleet.agent_addr.to_string()],
            ..fleet.agent_config(fleet.pki.node("edge-a1"), "edge-a1", "127.0.0.1")
        };
        let (state, _) = fleet.run_agent(config);
        let node: NodeName = "edge-a1".parse().unwrap();
        wait_for(
            || fleet.agents.get(&node).is_some(),
            "the agent on the real server",
        )
        .await;
        let backend = echo().await;
        // Rounds of garbage from the other replica, each on a new connection.
        for round in 1..=12u64 {
            wait_for(
                || taken.load(std::sync::atomic::Ordering::Relaxed) > round,
                "another garbage round",
            )
            .await;
            let (status, mut stream) = fleet.connect(&backend.to_string()).await;
            assert_eq!(
                status, "HTTP/1.1 200 Connection established",
                "round {round}"
            );
            echoes(&mut stream, b"through the real server").await;
        }
        assert!(state.connections() >= 1);
    });
}
