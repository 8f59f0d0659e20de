//! `yurt bench tunnel`: the tunnel against a raw TCP relay and a TLS-only relay over the
//! same loopback path, in the same run: single-stream throughput, added latency of a
//! 64-byte echo, CONNECT → 200, many concurrent streams, and the agent's memory idle
//! and per idle stream (the agent runs as its own process, `yurt tunnel-agent` and the
//! agent-only `yurt-tunnel-agent`), and what 1,000 agents cost one server.
//!
//! The server, the in-process agent, the relays and the clients share this process's
//! runtime (two worker threads on a 2-core machine): figures are ratios against
//! anchors measured beside them, never absolute goals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use yurt_core::pki::{CertSpec, CertificateAuthority};
use yurt_tunnel::agent::{AgentConfig, AgentState, AllowList};
use yurt_tunnel::metrics::{AgentMetrics, ServerMetrics};
use yurt_tunnel::server::{NodeRoute, Routes, Server, ServerConfig};
use yurt_tunnel::tls::TlsFiles;
use yurt_tunnel::{Keepalive, Windows};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SERVER_NAME: &str = "yurt-tunnel-server";

/// `yurt bench tunnel`.
#[derive(Debug, Args)]
pub struct BenchTunnelArgs {
    /// MiB sent one way for single-stream throughput.
    #[arg(long, default_value_t = 512)]
    pub mib: u64,
    /// Runs of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Round trips of the 64-byte echo.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// Concurrent streams through one agent.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// MiB each concurrent stream sends.
    #[arg(long, default_value_t = 1)]
    pub stream_mib: u64,
    /// Agents connected to one server at once, from another process: the server's
    /// memory and CPU for them; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// The agent-only binary to measure [default: `hub-small/yurt-tunnel-agent` in the
    /// target folder this binary was built in].
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
}

/// The nodes run as agent processes, and their own addresses.
const AGENT_PROCESS_IPS: [(&str, &str); 2] = [("bench-b", "127.0.0.2"), ("bench-c", "127.0.0.3")];

/// Runs `command` (an agent: `yurt tunnel-agent` or `yurt-tunnel-agent`) as `node`,
/// allowed only an echo server on the node's address: its RSS in KiB once idle, and
/// with `streams` idle streams open through it. Stops it before returning.
async fn agent_process_rss(
    tunnel: &Tunnel,
    pki: &Pki,
    mut command: tokio::process::Command,
    node: &str,
    streams: usize,
) -> anyhow::Result<(u64, u64)> {
    let ip: IpAddr = AGENT_PROCESS_IPS
        .iter()
        .find(|(n, _)| *n == node)
        .context("no address for the node")?
        .1
        .parse()?;
    let echo = echo_on(ip).await?;
    let files = pki.files(node);
    let before = tunnel.server_metrics.agents.get();
    let mut child = command
        .arg(format!("--node-name={node}"))
        .arg(format!(
            "--tunnelserver-addr=127.0.0.1:{}",
            tunnel.agent_port
        ))
        .arg(format!("--server-name={SERVER_NAME}"))
        .arg(format!("--node-ip={ip}"))
        .arg(format!("--allowed-ports={}", echo.port()))
        .arg("--admin-address=127.0.0.1:0")
        .arg(format!("--ca-file={}", files.ca.display()))
        .arg(format!("--cert-file={}", files.cert.display()))
        .arg(format!("--key-file={}", files.key.display()))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .context("starting the agent process")?;
    let pid = child.id().context("agent pid")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tunnel.server_metrics.agents.get() <= before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent process did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid);
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = tunnel.connect(echo).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = rss_kib(pid);
    drop(open);
    let _ = child.kill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tunnel.server_metrics.agents.get() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((idle, busy))
}

use super::bench::percentile;
use super::bench_table::Table;

/// Certificates for the server, the in-process agent and the agent processes.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = CertificateAuthority::generate("bench-ca")?;
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem())?;
        let pki = Self { dir, ca };
        pki.write(
            "server",
            &CertSpec::server(SERVER_NAME, &[SERVER_NAME], &[LOCAL]),
        )?;
        for node in ["bench-a", "bench-b", "bench-c"] {
            pki.node(node)?;
        }
        Ok(pki)
    }

    fn write(&self, stem: &str, spec: &CertSpec) -> anyhow::Result<()> {
        let issued = self.ca.issue(spec)?;
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{stem}.crt")), &issued.cert_pem)?;
        std::fs::write(dir.join(format!("{stem}.key")), &issued.key_pem)?;
        Ok(())
    }

    /// A node certificate for `node`, in files named after it.
    fn node(&self, node: &str) -> anyhow::Result<()> {
        self.write(
            node,
            &CertSpec::client(format!("system:node:{node}"), &["system:nodes"]),
        )
    }

    fn files(&self, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: self.dir.path().join("ca.crt"),
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
        }
    }
}

/// A sink: reads a connection to its end, then answers `done` and closes.
async fn sink() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((LOCAL, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                let _ = stream.write_all(b"done").await;
            });
        }
    });
    Ok(addr)
}

/// An echo server on `ip`.
async fn echo_on(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A plain TCP relay to `to`.
async fn raw_relay(to: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((LOCAL, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    Ok(addr)
}

/// Two relays with a TLS 1.3 hop between them (the tunnel's TLS settings, no HTTP/2):
/// plain TCP in, TLS across, plain TCP out to `to`.
async fn tls_relay(pki: &Pki, to: SocketAddr) -> anyhow::Result<SocketAddr> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(yurt_tunnel::tls::server_config(
        &pki.files("server"),
    )?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(yurt_tunnel::tls::client_config(
        &pki.files("bench-a"),
    )?));
    let back = TcpListener::bind((LOCAL, 0)).await?;
    let back_addr = back.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = back.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
            });
        }
    });
    let front = TcpListener::bind((LOCAL, 0)).await?;
    let addr = front.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                let Ok(tcp) = TcpStream::connect(back_addr).await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let _ = inbound.set_nodelay(true);
                let Ok(name) = rustls::pki_types::ServerName::try_from(SERVER_NAME) else {
                    return;
                };
                let Ok(mut tls) = connector.connect(name, tcp).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut tls).await;
            });
        }
    });
    Ok(addr)
}

/// The tunnel: a server with two nodes on 127.0.0.1 and 127.0.0.2, an in-process agent
/// for the first.
struct Tunnel {
    socket: PathBuf,
    agent_port: u16,
    routes: Routes,
    server_metrics: ServerMetrics,
    token: CancellationToken,
}

impl Tunnel {
    async fn start(pki: &Pki) -> anyhow::Result<Self> {
        let socket = pki.dir.path().join("egress.sock");
        let routes = Routes::default();
        let route = |name: &str, ip: &str| -> anyhow::Result<NodeRoute> {
            Ok(NodeRoute {
                name: name.parse()?,
                addresses: vec![ip.parse()?],
                hostnames: Vec::new(),
                pod_cidrs: Vec::new(),
                edge: true,
            })
        };
        routes.replace_all([
            route("bench-a", "127.0.0.1")?,
            route("bench-b", AGENT_PROCESS_IPS[0].1)?,
            route("bench-c", AGENT_PROCESS_IPS[1].1)?,
        ]);
        let server_metrics = ServerMetrics::register(&mut Registry::default());
        let server = Server::bind(
            ServerConfig {
                egress_socket: socket.clone(),
                agent_addr: SocketAddr::new(LOCAL, 0),
                tls: pki.files("server"),
                dial_timeout: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                keepalive: Keepalive::default(),
                windows: Windows::default(),
            },
            routes.clone(),
            server_metrics.clone(),
        )
        .await?;
        let agent_port = server.agent_addr()?.port();
        let agents = server.agents();
        let token = CancellationToken::new();
        tokio::spawn(server.run(token.clone()));
        let config = AgentConfig {
            server_addrs: vec![format!("127.0.0.1:{agent_port}")],
            server_name: SERVER_NAME.into(),
            tls: pki.files("bench-a"),
            allow: AllowList {
                node: "bench-a".parse()?,
                node_ips: vec![LOCAL],
                ports: (1..=u16::MAX).collect(),
                pod_cidrs: Vec::new(),
            },
            dial_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive: Keepalive::default(),
            backoff: (Duration::from_millis(100), Duration::from_secs(1)),
            windows: Windows::default(),
            max_streams: 8192,
            cert_check_interval: Duration::from_secs(60),
        };
        tokio::spawn(yurt_tunnel::agent::run(
            config,
            AgentMetrics::register(&mut Registry::default()),
            AgentState::default(),
            token.clone(),
        ));
        let node = "bench-a".parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while agents.get(&node).is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the in-process agent did not connect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            socket,
            agent_port,
            routes,
            server_metrics,
            token,
        })
    }

    /// A tunnelled connection to `target` (the API server's side of a CONNECT).
    async fn connect(&self, target: SocketAddr) -> anyhow::Result<UnixStream> {
        connect_via(&self.socket, target).await
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn connect_via(socket: &Path, target: SocketAddr) -> anyhow::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(64);
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(
            stream.read(&mut byte).await? == 1,
            "CONNECT answer cut short"
        );
        head.push(byte[0]);
        anyhow::ensure!(head.len() < 4096, "CONNECT answer too long");
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT {target}: {}",
        String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
    );
    Ok(stream)
}

/// Sends `bytes` down `stream`, half-closes, and waits for the sink's `done`.
async fn push<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    bytes: u64,
) -> anyhow::Result<Duration> {
    // One pattern shared by every pusher: a thousand streams must not cost the
    // benchmark's own clients a thousand buffers (the tunnel's cost is what is measured).
    static CHUNK: [u8; 64 * 1024] = [0xa5; 64 * 1024];
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK.len() as u64) as usize;
        w.write_all(&CHUNK[..n]).await?;
        left -= n as u64;
    }
    w.shutdown().await?;
    let mut done = [0u8; 4];
    r.read_exact(&mut done).await?;
    anyhow::ensure!(&done == b"done", "the sink answered {done:?}");
    Ok(started.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Round trips of 64 bytes over `stream`, sorted.
async fn echo_round_trips<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    round_trips: usize,
) -> anyhow::Result<Vec<Duration>> {
    let ping = [0x42u8; 64];
    let mut pong = [0u8; 64];
    let mut times = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_default()
}

/// Runs `yurt bench tunnel`.
pub async fn run(args: BenchTunnelArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        args.runs > 0 && args.mib > 0,
        "--runs and --mib must be positive"
    );
    let pki = Pki::new()?;
    let sink = sink().await?;
    let echo = echo_on(LOCAL).await?;
    let tunnel = Tunnel::start(&pki).await?;
    let raw = raw_relay(sink).await?;
    let tls = tls_relay(&pki, sink).await?;
    let mut table = Table::new("yurt bench tunnel", "tunnel", "anchor (same run)").with_progress();
    // First, while this process's heap holds nothing the other measurements left.
    if args.agents > 0 {
        many_agents_on_one_server(&tunnel, &pki, args.agents, &mut table).await?;
    }
    let bytes = args.mib << 20;

    // Single-stream throughput, interleaved runs, medians.
    println!(
        "single stream: {} MiB one way, {} runs each",
        args.mib, args.runs
    );
    let (mut raw_rates, mut tls_rates, mut tunnel_rates) = (Vec::new(), Vec::new(), Vec::new());
    let rate = |d: Duration| args.mib as f64 / d.as_secs_f64();
    for _ in 0..args.runs {
        let s = TcpStream::connect(raw).await?;
        s.set_nodelay(true)?;
        raw_rates.push(rate(push(s, bytes).await?));
        let s = TcpStream::connect(tls).await?;
        s.set_nodelay(true)?;
        tls_rates.push(rate(push(s, bytes).await?));
        tunnel_rates.push(rate(push(tunnel.connect(sink).await?, bytes).await?));
    }
    let (raw_rate, tls_rate, tunnel_rate) =
        (median(raw_rates), median(tls_rates), median(tunnel_rates));
    table.row(
        "single-stream throughput",
        format!("{tunnel_rate:.0} MiB/s"),
        format!(
            "raw TCP relay {raw_rate:.0} MiB/s ({:.2}×); TLS-only relay {tls_rate:.0} MiB/s ({:.2}×)",
            tunnel_rate / raw_rate,
            tunnel_rate / tls_rate
        ),
    );

    // Latency of a 64-byte echo.
    println!("64-byte echo: {} round trips each", args.round_trips);
    let s = TcpStream::connect(raw_relay(echo).await?).await?;
    s.set_nodelay(true)?;
    let raw_times = echo_round_trips(s, args.round_trips).await?;
    let tunnel_times = echo_round_trips(tunnel.connect(echo).await?, args.round_trips).await?;
    let added = |p: f64| {
        percentile(&tunnel_times, p).as_secs_f64() - percentile(&raw_times, p).as_secs_f64()
    };
    table.row(
        "64-byte echo round trip p50 / p99",
        format!(
            "{} / {}",
            us(percentile(&tunnel_times, 50.0)),
            us(percentile(&tunnel_times, 99.0))
        ),
        format!(
            "raw relay {} / {}; added {:+.0} µs / {:+.0} µs",
            us(percentile(&raw_times, 50.0)),
            us(percentile(&raw_times, 99.0)),
            added(50.0) * 1e6,
            added(99.0) * 1e6
        ),
    );

    // CONNECT → 200 through the agent, against a TCP connect through the raw relay.
    let relay = raw_relay(echo).await?;
    let (mut connects, mut tcp_connects) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let started = Instant::now();
        let s = tunnel.connect(echo).await?;
        connects.push(started.elapsed());
        drop(s);
        let started = Instant::now();
        let mut s = TcpStream::connect(relay).await?;
        s.write_all(&[1]).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        tcp_connects.push(started.elapsed());
    }
    connects.sort();
    tcp_connects.sort();
    table.row(
        "CONNECT → 200 through an agent, p50 / p99 (500)",
        format!(
            "{} / {}",
            us(percentile(&connects, 50.0)),
            us(percentile(&connects, 99.0))
        ),
        format!(
            "TCP connect + first byte through the raw relay {} / {}",
            us(percentile(&tcp_connects, 50.0)),
            us(percentile(&tcp_connects, 99.0))
        ),
    );

    // Many streams through one agent at once, as many runs as the single stream had
    // (the median is reported, as there).
    println!(
        "{} concurrent streams of {} MiB, {} runs",
        args.streams, args.stream_mib, args.runs
    );
    let per = args.stream_mib << 20;
    let mut aggregates = Vec::with_capacity(args.runs);
    let mut spreads = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let mut streams = Vec::with_capacity(args.streams);
        for _ in 0..args.streams {
            streams.push(tunnel.connect(sink).await?);
        }
        let started = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|s| tokio::spawn(push(s, per)))
            .collect();
        let mut times = Vec::with_capacity(tasks.len());
        for t in tasks {
            times.push(t.await.context("a stream task")??);
        }
        let wall = started.elapsed();
        times.sort();
        aggregates.push((args.streams as u64 * args.stream_mib) as f64 / wall.as_secs_f64());
        let (fastest, slowest) = (
            times.first().copied().unwrap_or_default(),
            times.last().copied().unwrap_or_default(),
        );
        spreads.push(slowest.as_secs_f64() / fastest.as_secs_f64());
    }
    let aggregate = median(aggregates);
    let spread = spreads.iter().copied().fold(0.0, f64::max);
    table.row(
        &format!("{} concurrent streams: aggregate", args.streams),
        format!("{aggregate:.0} MiB/s"),
        format!(
            "{:.2}× single-stream; slowest/fastest stream {spread:.1}× (worst run)",
            aggregate / tunnel_rate
        ),
    );

    // The agent as its own process, idle and with idle streams open: `yurt
    // tunnel-agent`, and the agent-only binary if it was built.
    let exe = std::env::current_exe()?;
    let mut full = tokio::process::Command::new(&exe);
    full.arg("tunnel-agent");
    let (idle, busy) = agent_process_rss(&tunnel, &pki, full, "bench-b", args.streams).await?;
    table.row(
        "agent process RSS idle (`yurt tunnel-agent`)",
        format!("{:.1} MiB", idle as f64 / 1024.0),
        "the whole `yurt` binary".into(),
    );
    table.row(
        &format!("agent RSS per idle stream ({} open)", args.streams),
        format!(
            "{:.1} KiB",
            busy.saturating_sub(idle) as f64 / args.streams as f64
        ),
        format!("{:.1} MiB with them open", busy as f64 / 1024.0),
    );
    const SMALL: &str = "agent process RSS idle (`yurt-tunnel-agent`)";
    let small =
        super::bench_hub::edge_only_binary(args.agent_binary.as_deref(), "yurt-tunnel-agent")?;
    if small.is_file() {
        let command = tokio::process::Command::new(&small);
        let (idle, busy) =
            agent_process_rss(&tunnel, &pki, command, "bench-c", args.streams).await?;
        table.row(
            SMALL,
            format!("{:.1} MiB", idle as f64 / 1024.0),
            format!(
                "goal ≤ 10 MiB; {:.1} KiB per idle stream",
                busy.saturating_sub(idle) as f64 / args.streams as f64
            ),
        );
    } else {
        table.row(
            SMALL,
            "not built".into(),
            format!(
                "no {}: build it with `cargo build --profile hub-small -p yurt-tunnel --bin \
                 yurt-tunnel-agent` or pass --agent-binary PATH",
                small.display()
            ),
        );
    }
    table.print();
    Ok(std::process::ExitCode::SUCCESS)
}

/// `yurt bench tunnel-agents` (started by `yurt bench tunnel`): many agents in one
/// process, each with its own node certificate and connection.
#[derive(Debug, Args)]
pub struct ManyAgentsArgs {
    /// The server's agent port, `host:port`.
    #[arg(long)]
    pub server: String,
    /// The name the server's certificate carries.
    #[arg(long)]
    pub server_name: String,
    /// The folder with `ca.crt` and `many-<i>.crt`/`.key` for each agent.
    #[arg(long)]
    pub dir: PathBuf,
    /// How many agents (`many-0` ...).
    #[arg(long)]
    pub count: usize,
}

/// Runs `yurt bench tunnel-agents` until SIGTERM or SIGINT.
pub async fn many_agents(args: ManyAgentsArgs) -> anyhow::Result<std::process::ExitCode> {
    let token = CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    for i in 0..args.count {
        let node = format!("many-{i}");
        let config = AgentConfig {
            server_addrs: vec![args.server.clone()],
            server_name: args.server_name.clone(),
            tls: TlsFiles {
                ca: args.dir.join("ca.crt"),
                cert: args.dir.join(format!("{node}.crt")),
                key: args.dir.join(format!("{node}.key")),
            },
            allow: AllowList {
                node: node.parse()?,
                node_ips: Vec::new(),
                ports: Vec::new(),
                pod_cidrs: Vec::new(),
            },
            dial_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(60),
            keepalive: Keepalive::default(),
            backoff: (Duration::from_secs(1), Duration::from_secs(5)),
            windows: Windows::default(),
            max_streams: 16,
            cert_check_interval: Duration::from_secs(3600),
        };
        tokio::spawn(yurt_tunnel::agent::run(
            config,
            AgentMetrics::register(&mut Registry::default()),
            AgentState::default(),
            token.clone(),
        ));
    }
    token.cancelled().await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `count` agents cost the server: they connect from a child process (`yurt
/// bench tunnel-agents`) while this process, the server's, is measured: the time for
/// all to be admitted, the resident memory they add, and CPU while they idle (PINGs
/// both ways every 15 s).
async fn many_agents_on_one_server(
    tunnel: &Tunnel,
    pki: &Pki,
    count: usize,
    table: &mut Table,
) -> anyhow::Result<()> {
    const IDLE: Duration = Duration::from_secs(30);
    println!("{count} agents on one server (certificates, connections, {IDLE:?} idle)");
    for i in 0..count {
        let node = format!("many-{i}");
        pki.node(&node)?;
        let octets = u16::try_from(i)?.to_be_bytes();
        tunnel.routes.upsert(NodeRoute {
            name: node.parse()?,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 99, octets[0], octets[1]))],
            hostnames: Vec::new(),
            pod_cidrs: Vec::new(),
            edge: true,
        });
    }
    let me = i32::try_from(std::process::id())?;
    let usage = || super::bench_manager::usage(me).context("this process's /proc entry");
    let before_agents = tunnel.server_metrics.agents.get();
    let (rss_before, _) = usage()?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "tunnel-agents"])
        .arg(format!("--server=127.0.0.1:{}", tunnel.agent_port))
        .arg(format!("--server-name={SERVER_NAME}"))
        .arg(format!("--dir={}", pki.dir.path().display()))
        .arg(format!("--count={count}"))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .context("starting yurt bench tunnel-agents")?;
    let started = Instant::now();
    let wanted = before_agents + i64::try_from(count)?;
    while tunnel.server_metrics.agents.get() < wanted {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "only {} of {count} agents connected",
            tunnel.server_metrics.agents.get() - before_agents
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admitted = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_connected, cpu_start) = usage()?;
    tokio::time::sleep(IDLE).await;
    let (_, cpu_end) = usage()?;
    let connected_now = tunnel.server_metrics.agents.get() - before_agents;
    let _ = child.kill().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tunnel.server_metrics.agents.get() > before_agents && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        connected_now == i64::try_from(count)?,
        "{connected_now} of {count} agents stayed connected"
    );
    let added = (rss_connected - rss_before).max(0.0);
    table.row(
        &format!("{count} agents on one server: all admitted"),
        format!("{:.2} s", admitted.as_secs_f64()),
        "TLS 1.3 with client certificates, HTTP/2, from another process".into(),
    );
    table.row(
        &format!("{count} agents: server RSS added"),
        format!("{added:.1} MiB"),
        format!("{:.1} KiB per agent", added * 1024.0 / count as f64),
    );
    table.row(
        &format!("{count} agents idle: server CPU"),
        format!(
            "{:.2}% of a core",
            100.0 * (cpu_end - cpu_start) / IDLE.as_secs_f64()
        ),
        "keepalive PINGs both ways every 15 s".into(),
    );
    Ok(())
}
