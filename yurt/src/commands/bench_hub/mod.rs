//! `yurt bench hub`: the hub's figures beside their anchors, measured in one run.
//!
//! - storage: durable cache writes against one-fsync-per-object files;
//! - a hub process against an in-process API server (`online`): the latency its own code
//!   adds, 1,000 watches through it, bytes on its WAN link for a relist with and without
//!   gzip, its RSS;
//! - an offline hub process: cold start to serving a 10,000-object cache, RSS idle and
//!   with 10,000 objects, LIST of 1,000 pods from the cache; idle RSS of the hub-only
//!   `yurt-hub` binary too, each split into anonymous and file-backed pages;
//! - on a fleet: added latency through the hub against a direct TLS client to the same
//!   API server at a fixed request rate, link cut to first answer from the cache, and
//!   an offline reboot's kubelet start to all pods running;
//! - the API server's load per edge node, direct and through hubs (`api_load`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;
use yurt_cluster::progress::{Reporter, Step};
use yurt_cluster::spec::HostId;
use yurt_cluster::{FleetSpec, MachineConfig, NetMode, Timing, UpOptions};
use yurt_hub::codec::{self, Format, ObjectInfo, RawObject};
use yurt_hub::store::{ObjectKey, Shape, Store, StoreConfig};

use super::bench::percentile;

pub(crate) mod api_load;
pub mod bare_proxy;
mod fake_api;
mod online;

/// `yurt bench hub` options.
#[derive(Debug, Args)]
pub struct BenchHubArgs {
    /// Request rates of the latency comparison (requests per second).
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    pub rates: Vec<u32>,
    /// Request rates of the latency comparison against the in-process API server.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub inprocess_rates: Vec<u32>,
    /// Concurrent watches through one hub.
    #[arg(long, default_value_t = 1000)]
    pub watches: usize,
    /// Skip the measurements on a fleet (the in-process and offline ones still run).
    #[arg(long)]
    pub no_fleet: bool,
    /// Skip the API-load section (two fleets: edge nodes direct and through hubs).
    #[arg(long)]
    pub no_api_load: bool,
    /// Run only the API-load section.
    #[arg(long, conflicts_with_all = ["no_api_load", "no_fleet"])]
    pub only_api_load: bool,
    /// API load: edge nodes of each fleet (one pool).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub api_load_edge_nodes: u16,
    /// API load: seconds of the steady-state and churn windows.
    #[arg(long, default_value_t = 60)]
    pub api_load_seconds: u64,
    /// API load: seconds of each far-node window.
    #[arg(long, default_value_t = 30)]
    pub api_load_far_seconds: u64,
    /// API load: plain Nodes (no kubelet) in the pool, one window per figure, cumulative.
    #[arg(long, value_delimiter = ',', default_value = "50,200")]
    pub api_load_pool_nodes: Vec<usize>,
    /// API load: plain Nodes outside the pool, added in a last window (0: none).
    #[arg(long, default_value_t = 200)]
    pub api_load_outside_nodes: usize,
    /// Seconds each side of the latency comparison runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Link cuts to time.
    #[arg(long, default_value_t = 10)]
    pub cuts: usize,
    /// Pods on the node rebooted offline.
    #[arg(long, default_value_t = 10)]
    pub pods: usize,
    /// Folder for the benchmark's fleet and caches (removed afterwards).
    #[arg(long, default_value = "/var/lib/yurt/bench-hub")]
    pub bench_dir: PathBuf,
    /// The hub-only binary whose idle RSS is measured beside `yurt hub`'s (default:
    /// `hub-small/yurt-hub` in this binary's target folder, built by `cargo build
    /// --profile hub-small -p yurt-hub --bin yurt-hub`).
    #[arg(long)]
    pub hub_binary: Option<PathBuf>,
}

use super::bench_table::Table;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A process's resident memory, bytes, from `/proc/PID/status` (0 where unreadable).
struct Resident {
    /// `VmRSS`: all of it.
    total: u64,
    /// `RssAnon`: the process's own memory (heap, stacks).
    anon: u64,
    /// `RssFile`: mapped file pages, mostly the binary's code.
    file: u64,
}

impl Resident {
    fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Self {
            total: field("VmRSS"),
            anon: field("RssAnon"),
            file: field("RssFile"),
        }
    }

    /// What the total is made of.
    fn parts(&self) -> String {
        format!("RssAnon {} + RssFile {}", mib(self.anon), mib(self.file))
    }
}

fn rss(pid: u32) -> u64 {
    Resident::of(pid).total
}

/// CPU time a process's live threads have had, from each thread's
/// `/proc/PID/task/TID/schedstat` (nanoseconds, unlike `/proc/PID/stat`'s 10 ms ticks).
/// Zero for a process that is gone.
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

// === storage ===

fn config_map(i: u64) -> (ObjectKey, RawObject) {
    let name = format!("cm-{i:08}");
    let data = format!(
        r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"bench","resourceVersion":"{i}"}},"data":{{"v":"{}"}}}}"#,
        "x".repeat(400)
    );
    (
        ObjectKey {
            component: "kubelet".into(),
            gvr: "configmaps.v1.core".into(),
            namespace: "bench".into(),
            name: name.clone(),
        },
        RawObject {
            format: Format::Json,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            info: ObjectInfo {
                name,
                namespace: "bench".into(),
                resource_version: i.to_string(),
                ..ObjectInfo::default()
            },
            data: Bytes::from(data),
        },
    )
}

fn durable_writes(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let n = 100_000u64;
    let store = Store::open(
        &StoreConfig {
            batch_max: 4096,
            // The bench measures the disk: writers wait for room, nothing is dropped.
            write_wait: std::time::Duration::from_secs(600),
            ..StoreConfig::new(dir.join("writes"))
        },
        yurt_hub::metrics::HubMetrics::default(),
    )?;
    let started = Instant::now();
    for i in 0..n {
        let (k, o) = config_map(i);
        store.upsert(k, o)?;
        if i % 4096 == 4095 {
            store.flush()?;
        }
    }
    store.flush()?;
    let ours = n as f64 / started.elapsed().as_secs_f64();
    store.close();
    // Anchor: one file per object, each written and fsynced before the next.
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let m = 2000u64;
    let started = Instant::now();
    for i in 0..m {
        let (_, o) = config_map(i);
        let mut f = std::fs::File::create(files.join(format!("{i}")))?;
        f.write_all(&o.data)?;
        f.sync_all()?;
    }
    let anchor = m as f64 / started.elapsed().as_secs_f64();
    Ok((ours, anchor))
}

fn pod(i: usize) -> RawObject {
    let p = core::Pod {
        metadata: Some(ObjectMeta {
            name: Some(format!("pod-{i:05}")),
            namespace: Some("bench".into()),
            uid: Some(format!("00000000-0000-0000-0000-{i:012}")),
            resource_version: Some((i + 1).to_string()),
            labels: [("app".to_owned(), "bench".to_owned())].into(),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            node_name: Some("ghost".into()),
            containers: vec![core::Container {
                name: Some("c".into()),
                image: Some("yurt.local/busybox:1".into()),
                command: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(format!("10.244.{}.{}", i / 250, i % 250)),
            ..Default::default()
        }),
    };
    codec::proto_from_message("v1", "Pod", Bytes::from(p.encode_to_vec())).expect("encoded pod")
}

/// A cache holding 1,000 pods listed by kubelet (protobuf) and `extra` ConfigMaps.
fn prepared_cache(dir: &Path, extra: u64) -> anyhow::Result<()> {
    let store = Store::open(
        &StoreConfig {
            batch_max: 4096,
            // The bench measures the disk: writers wait for room, nothing is dropped.
            write_wait: std::time::Duration::from_secs(600),
            ..StoreConfig::new(dir.to_owned())
        },
        yurt_hub::metrics::HubMetrics::default(),
    )?;
    let pods: Vec<RawObject> = (0..1000).map(pod).collect();
    store.replace_list(
        "kubelet",
        "pods.v1.core",
        Shape {
            namespace: String::new(),
            label_selector: String::new(),
            field_selector: "spec.nodeName=ghost".into(),
        },
        yurt_hub::store::ListMeta {
            api_version: "v1".into(),
            kind: "PodList".into(),
            resource_version: 0,
        },
        pods,
    )?;
    for i in 0..extra {
        let (k, o) = config_map(i);
        store.upsert(k, o)?;
    }
    store.flush()?;
    store.close();
    Ok(())
}

// === an offline hub process ===

struct HubProcess {
    child: std::process::Child,
    proxy: SocketAddr,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_identity(dir: &Path) -> anyhow::Result<()> {
    use yurt_core::pki::{CertSpec, CertificateAuthority};
    let ca = CertificateAuthority::generate("bench-ca")?;
    let client = ca.issue(&CertSpec::client("system:node:ghost", &["system:nodes"]))?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    std::fs::write(dir.join("hub.crt"), &client.cert_pem)?;
    std::fs::write(dir.join("hub.key"), &client.key_pem)?;
    let server = ca.issue(&CertSpec::server(
        "kube-apiserver",
        &["localhost"],
        &[std::net::IpAddr::from([127, 0, 0, 1])],
    ))?;
    std::fs::write(dir.join("server.crt"), &server.cert_pem)?;
    std::fs::write(dir.join("server.key"), &server.key_pem)?;
    Ok(())
}

/// Starts `yurt hub` pointed at a server that refuses connections, so it serves from cache.
fn offline_hub(pki: &Path, cache: &Path, port: u16) -> anyhow::Result<HubProcess> {
    hub_process(pki, cache, port, "https://127.0.0.1:1", &[])
}

/// Starts `yurt hub` for node `ghost` towards `server`, with `extra` flags.
fn hub_process(
    pki: &Path,
    cache: &Path,
    port: u16,
    server: &str,
    extra: &[&str],
) -> anyhow::Result<HubProcess> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("hub");
    spawn_hub(command, pki, cache, port, server, extra)
}

/// Starts `program` (`yurt hub` or the hub-only `yurt-hub`) for node `ghost` towards
/// `server`, with `extra` flags.
fn spawn_hub(
    mut program: Command,
    pki: &Path,
    cache: &Path,
    port: u16,
    server: &str,
    extra: &[&str],
) -> anyhow::Result<HubProcess> {
    let child = program
        .args(["--node-name", "ghost", "--server-addr", server])
        .args(extra)
        .arg("--ca-file")
        .arg(pki.join("ca.crt"))
        .arg("--client-cert")
        .arg(pki.join("hub.crt"))
        .arg("--client-key")
        .arg(pki.join("hub.key"))
        .args([
            "--proxy-port",
            &port.to_string(),
            "--serve-port",
            &(port + 6).to_string(),
            "--proxy-secure-port",
            "0",
        ])
        .arg("--disk-cache-path")
        .arg(cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(HubProcess {
        child,
        proxy: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

async fn get(stream: tokio::net::TcpStream, path: &str, ua: &str) -> anyhow::Result<(u16, Bytes)> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::USER_AGENT, ua)
        .header(
            http::header::ACCEPT,
            "application/vnd.kubernetes.protobuf, */*",
        )
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, body))
}

/// Where an edge-only binary (`yurt-hub`, `yurt-tunnel-agent`) is: `flag`, or
/// `hub-small/<name>` in the target folder this binary was built in
/// (`target/release/yurt` → `target/hub-small/yurt-hub`).
pub(crate) fn edge_only_binary(flag: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("this binary is not in a target folder")?;
    Ok(target.join("hub-small").join(name))
}

/// Idle RSS of the hub-only binary, beside `yurt hub`'s: how much of the figure is the
/// other roles' code mapped from the `yurt` binary.
async fn idle_hub_only(
    pki: &Path,
    dir: &Path,
    binary: &Path,
    table: &mut Table,
) -> anyhow::Result<()> {
    const WHAT: &str = "RSS, idle, hub-only binary (`yurt-hub`)";
    let Ok(meta) = std::fs::metadata(binary) else {
        table.row(
            WHAT,
            "not built".into(),
            format!(
                "no {}: build it with `cargo build --profile hub-small -p yurt-hub --bin \
                 yurt-hub` or pass --hub-binary PATH",
                binary.display()
            ),
        );
        return Ok(());
    };
    let mut hub = spawn_hub(
        Command::new(binary),
        pki,
        &dir.join("empty-cache-hub-only"),
        40311,
        "https://127.0.0.1:1",
        &[],
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = hub.child.try_wait()? {
        anyhow::bail!("{} exited while idle: {status}", binary.display());
    }
    let resident = Resident::of(hub.child.id());
    table.row(
        WHAT,
        mib(resident.total),
        format!(
            "{}; {} is {:.1} MB; ≤ 10 MiB target",
            resident.parts(),
            binary.display(),
            meta.len() as f64 / 1e6
        ),
    );
    Ok(())
}

async fn offline_section(
    dir: &Path,
    hub_binary: Option<&Path>,
    table: &mut Table,
) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    write_identity(&pki)?;
    let list_path = "/api/v1/pods?fieldSelector=spec.nodeName%3Dghost";

    // Idle: an empty cache.
    let empty = dir.join("empty-cache");
    let hub = offline_hub(&pki, &empty, 40261)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resident = Resident::of(hub.child.id());
    table.row(
        "RSS, idle (`yurt hub`, the full binary)",
        mib(resident.total),
        format!(
            "{}; ≤ 10 MiB target; YurtHub 30–40 MB (reported)",
            resident.parts()
        ),
    );
    drop(hub);
    idle_hub_only(&pki, dir, &edge_only_binary(hub_binary, "yurt-hub")?, table).await?;

    // Cold start to serving a 10,000-object cache.
    let full = dir.join("full-cache");
    prepared_cache(&full, 9000)?;
    let started = Instant::now();
    let hub = offline_hub(&pki, &full, 40271)?;
    let cold = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(hub.proxy).await
            && let Ok((200, _)) = get(s, list_path, "kubelet/bench").await
        {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the offline hub never served its cache"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    table.row(
        "cold start → first LIST served from a 10,000-object cache",
        ms(cold),
        "≤ 150 ms target; YurtHub ≈ 1.5 s (reported)".into(),
    );
    // LIST of 1,000 pods from the cache, offline.
    let mut lat = Vec::new();
    for _ in 0..200 {
        let s = tokio::net::TcpStream::connect(hub.proxy).await?;
        let t = Instant::now();
        let (status, body) = get(s, list_path, "kubelet/bench").await?;
        lat.push(t.elapsed());
        anyhow::ensure!(status == 200, "offline LIST answered {status}");
        anyhow::ensure!(
            codec::decode_list(Format::Protobuf, &body)?.items.len() == 1000,
            "not 1,000 pods"
        );
    }
    lat.sort();
    table.row(
        "LIST of 1,000 pods (protobuf) from the cache, offline: p50 / p99",
        format!(
            "{} / {}",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0))
        ),
        "p99 ≤ 5 ms target".into(),
    );
    table.row(
        "RSS with 10,000 cached objects (after serving the lists)",
        mib(rss(hub.child.id())),
        "≤ 40 MiB target".into(),
    );
    Ok(())
}

// === on a fleet ===

/// Open-loop load: requests scheduled at `rate`/s for `seconds` over `conns` connections
/// made by `connect`; latency counts from each request's scheduled time (or, when the
/// connection was free before it, from when the timer woke the sender).
async fn load<C, F>(
    rate: u32,
    seconds: u64,
    conns: usize,
    connect: C,
    path: &'static str,
    user_agent: &'static str,
) -> anyhow::Result<(Vec<Duration>, usize)>
where
    C: Fn() -> F,
    F: Future<Output = anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
{
    load_requests(rate, seconds, conns, connect, move || {
        http::Request::get(path)
            .header(http::header::HOST, "kubernetes")
            .header(http::header::USER_AGENT, user_agent)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .expect("request")
    })
    .await
}

/// Open-loop load of the requests `make` builds (see [`load`]).
async fn load_requests<C, F, M>(
    rate: u32,
    seconds: u64,
    conns: usize,
    connect: C,
    make: M,
) -> anyhow::Result<(Vec<Duration>, usize)>
where
    C: Fn() -> F,
    F: Future<Output = anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    M: Fn() -> http::Request<Full<Bytes>> + Clone + Send + 'static,
{
    let total = (u64::from(rate) * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut send = connect().await?;
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = c;
            while i < total {
                let due = start + interval * i as u32;
                // Ahead of schedule: sleep, and count from the wake-up (the timer's
                // lateness, up to its 1 ms tick, is the bench's, not the server's).
                // Behind schedule: count from the due time, so waiting for the previous
                // request counts too (no coordinated omission).
                let began = if tokio::time::Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    tokio::time::Instant::now()
                } else {
                    due
                };
                let req = make();
                // The connection takes the next request once it has finished the last.
                let sent = match send.ready().await {
                    Ok(()) => send.send_request(req).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                        lat.push(tokio::time::Instant::now() - began);
                    }
                    _ => errors += 1,
                }
                i += conns;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    Ok((all, errors))
}

async fn netns_stream(ns: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let ns = ns.to_owned();
    let s = tokio::task::spawn_blocking(move || {
        yurt_cluster::netns::connect_tcp(&ns, addr, Duration::from_secs(2))
    })
    .await??;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    Ok(tokio::net::TcpStream::from_std(s)?)
}

async fn h1(
    io: impl hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn fleet_section(
    machine: &MachineConfig,
    args: &BenchHubArgs,
    reporter: &dyn Reporter,
    table: &mut Table,
) -> anyhow::Result<()> {
    let dir = args.bench_dir.join("fleet");
    let step = Step::start(reporter, "a one-node fleet for the hub measurements");
    let spec = FleetSpec {
        edge_nodes: 1,
        pools: 1,
        mode: NetMode::Routed,
        timing: Timing::Fast,
        sample_app: false,
    };
    let mut fleet = yurt_cluster::up(
        machine,
        &dir,
        UpOptions {
            spec: Some(spec),
            ..UpOptions::default()
        },
        Arc::new(super::bench::Quiet),
    )
    .await?;
    step.finish();
    let node = "edge-a1";
    let ns = fleet.plan().netns(&HostId::Edge(node.parse()?));
    let kubectl_bin = fleet
        .binaries()
        .path(yurt_cluster::upstream::Binary::Kubectl);
    let kubeconfig = fleet.admin_kubeconfig();
    let kubectl = |a: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&kubectl_bin)
            .env("KUBECONFIG", &kubeconfig)
            .args(a)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {a:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // A small object the node's identity may read (the hubs' RBAC allows this one
    // ConfigMap and no other); created if the fleet has none.
    if kubectl(&["-n", "kube-system", "get", "configmap", "yurt-hub-cfg"]).is_err() {
        kubectl(&[
            "-n",
            "kube-system",
            "create",
            "configmap",
            "yurt-hub-cfg",
            "--from-literal=bench=1",
        ])?;
    }
    const PATH: &str = "/api/v1/namespaces/kube-system/configmaps/yurt-hub-cfg";

    // Added latency: the same GET through the hub and straight to the API server.
    let hub_addr = SocketAddr::from(([127, 0, 0, 1], 10261));
    let pki = fleet.paths().pki();
    let tls = yurt_hub::tls::client_config(
        &pki.join("ca.crt"),
        Some((
            &pki.join(format!("yurthub-{node}.crt")),
            &pki.join(format!("yurthub-{node}.key")),
        )),
    )?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let api = SocketAddr::from(([10, 10, 0, 1], 6443));
    for &rate in &args.rates {
        let step = Step::start(
            reporter,
            format!("latency at {rate} requests/s, through the hub and direct"),
        );
        let (hub_lat, hub_err) = load(
            rate,
            args.seconds,
            16,
            || async { h1(TokioIo::new(netns_stream(&ns, hub_addr).await?)).await },
            PATH,
            "kubelet/bench",
        )
        .await?;
        // The same through the hub from a client it does not cache for: the proxy alone.
        let (pass_lat, pass_err) = load(
            rate,
            args.seconds,
            16,
            || async { h1(TokioIo::new(netns_stream(&ns, hub_addr).await?)).await },
            PATH,
            "bench/1",
        )
        .await?;
        let (direct_lat, direct_err) = load(
            rate,
            args.seconds,
            16,
            || {
                let connector = connector.clone();
                let ns = ns.clone();
                async move {
                    let tcp = netns_stream(&ns, api).await?;
                    let name = rustls::pki_types::ServerName::try_from("10.10.0.1")?;
                    h1(TokioIo::new(connector.connect(name, tcp).await?)).await
                }
            },
            PATH,
            "bench/1",
        )
        .await?;
        step.finish();
        let (h50, h99, d50, d99) = (
            percentile(&hub_lat, 50.0),
            percentile(&hub_lat, 99.0),
            percentile(&direct_lat, 50.0),
            percentile(&direct_lat, 99.0),
        );
        table.row(
            &format!("GET at {rate} req/s: p50 / p99 (errors)"),
            format!("{} / {} ({hub_err})", us(h50), us(h99)),
            format!(
                "direct TLS client: {} / {} ({direct_err}); through the hub, not cached: {} / {} ({pass_err})",
                us(d50),
                us(d99),
                us(percentile(&pass_lat, 50.0)),
                us(percentile(&pass_lat, 99.0)),
            ),
        );
        table.row(
            &format!("added latency through the hub at {rate} req/s: p50 / p99"),
            format!(
                "{} / {}",
                us(h50.saturating_sub(d50)),
                us(h99.saturating_sub(d99))
            ),
            "≤ 50 µs / ≤ 200 µs target (at 2,000 req/s)".into(),
        );
    }

    // Link cut → first request answered from the cache.
    let step = Step::start(reporter, format!("{} link cuts", args.cuts));
    let mut cut_lat = Vec::new();
    for _ in 0..args.cuts {
        let cut_at = Instant::now();
        fleet.cut(node)?;
        let served = loop {
            let s = netns_stream(&ns, hub_addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            let driver = tokio::spawn(conn);
            let req = http::Request::get(PATH)
                .header(http::header::USER_AGENT, "kubelet/bench")
                .body(Empty::<Bytes>::new())?;
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await
                && r.headers().get(yurt_hub::proxy::SOURCE_HEADER).is_some()
                && r.status().is_success()
            {
                driver.abort();
                break cut_at.elapsed();
            }
            driver.abort();
            anyhow::ensure!(
                cut_at.elapsed() < Duration::from_secs(30),
                "never answered from the cache after a cut"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        cut_lat.push(served);
        fleet.restore(node)?;
        // Wait until the hub trusts the cloud again before the next cut.
        let back = Instant::now();
        loop {
            let s = netns_stream(&ns, hub_addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            let driver = tokio::spawn(conn);
            let req = http::Request::get(PATH)
                .header(http::header::USER_AGENT, "kubelet/bench")
                .body(Empty::<Bytes>::new())?;
            let online = matches!(send.send_request(req).await, Ok(r) if r.headers().get(yurt_hub::proxy::SOURCE_HEADER).is_none());
            driver.abort();
            if online {
                break;
            }
            anyhow::ensure!(
                back.elapsed() < Duration::from_secs(60),
                "the hub never went back online"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    step.finish();
    cut_lat.sort();
    table.row(
        &format!(
            "link cut → first answer from the cache ({} cuts): p50 / p99",
            args.cuts
        ),
        format!(
            "{} / {}",
            ms(percentile(&cut_lat, 50.0)),
            ms(percentile(&cut_lat, 99.0))
        ),
        "p99 ≤ 1 s target".into(),
    );

    // Offline reboot: kubelet start → every pod running again.
    let step = Step::start(reporter, format!("offline reboot with {} pods", args.pods));
    let manifest = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench-reboot", "namespace": "default"},
        "spec": {
            "replicas": args.pods,
            "selector": {"matchLabels": {"app": "bench-reboot"}},
            "template": {
                "metadata": {"labels": {"app": "bench-reboot"}},
                "spec": {
                    "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
                    "dnsPolicy": "Default",
                    "containers": [{"name": "web", "image": "yurt.local/busybox:1", "command": ["sleep", "3600"]}],
                    "terminationGracePeriodSeconds": 0,
                }
            }
        }
    });
    let file = args.bench_dir.join("reboot.json");
    std::fs::write(&file, manifest.to_string())?;
    kubectl(&["apply", "-f", file.to_str().context("path")?])?;
    kubectl(&[
        "rollout",
        "status",
        "deployment/bench-reboot",
        "--timeout=180s",
    ])?;
    fleet.cut(node)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.reboot(node).await?;
    let host = HostId::Edge(node.parse()?);
    let socket = fleet.paths().host(&host).containerd_socket();
    let kubelet_pid =
        yurt_cluster::process::PidRecord::read(&fleet.paths().host(&host).pid_file("kubelet"))
            .context("kubelet pid")?;
    let kubelet_started = process_start(kubelet_pid.start_time);
    let all_running = loop {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()?;
        let running = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("RUNNING"))
            .count();
        // One sandbox and one container per pod.
        if running >= 2 * args.pods {
            break std::time::SystemTime::now();
        }
        anyhow::ensure!(
            kubelet_started.elapsed().unwrap_or_default() < Duration::from_secs(180),
            "pods did not come back ({running} tasks running)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    step.finish();
    table.row(
        &format!(
            "offline reboot, {} pods: kubelet start → all running",
            args.pods
        ),
        format!(
            "{:.1} s",
            all_running
                .duration_since(kubelet_started)
                .unwrap_or_default()
                .as_secs_f64()
        ),
        "≤ 20 s target; OpenYurt 49.9 s (reported)".into(),
    );
    fleet.restore(node)?;
    Ok(())
}

/// Wall-clock time of a process start given in clock ticks since boot.
fn process_start(ticks: u64) -> std::time::SystemTime {
    let hz = 100.0; // USER_HZ on Linux
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let since_start = uptime - ticks as f64 / hz;
    std::time::SystemTime::now() - Duration::from_secs_f64(since_start.max(0.0))
}

/// Runs `yurt bench hub`.
pub async fn run(
    machine: &MachineConfig,
    args: BenchHubArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let reporter = crate::progress::SpinnerReporter::for_stderr();
    let _ = std::fs::remove_dir_all(&args.bench_dir);
    std::fs::create_dir_all(&args.bench_dir)?;
    let mut table = Table::new(
        "yurt bench hub",
        "yurt hub",
        "anchor (same run unless noted)",
    );
    let api_load_options = api_load::Options {
        edge_nodes: args.api_load_edge_nodes,
        seconds: args.api_load_seconds,
        far_seconds: args.api_load_far_seconds,
        pool_nodes: args.api_load_pool_nodes.clone(),
        outside_nodes: args.api_load_outside_nodes,
    };
    if args.only_api_load {
        let report = api_load::section(
            machine,
            &args.bench_dir,
            &api_load_options,
            reporter.as_ref(),
        )
        .await?;
        report.print();
        let _ = std::fs::remove_dir_all(&args.bench_dir);
        return Ok(std::process::ExitCode::SUCCESS);
    }

    let step = Step::start(
        reporter.as_ref(),
        "durable cache writes (100,000 objects) and one-fsync-per-object files",
    );
    let dir = args.bench_dir.clone();
    let (ours, anchor) = tokio::task::spawn_blocking(move || durable_writes(&dir)).await??;
    step.finish();
    table.row(
        "durable cache writes",
        format!("{ours:.0} objects/s"),
        format!("one fsync per object file: {anchor:.0} objects/s (≥ 50,000/s target)"),
    );

    let step = Step::start(reporter.as_ref(), "an offline hub process");
    offline_section(
        &args.bench_dir.join("offline"),
        args.hub_binary.as_deref(),
        &mut table,
    )
    .await?;
    step.finish();

    online::section(
        &args.bench_dir.join("online"),
        &args,
        reporter.as_ref(),
        &mut table,
    )
    .await?;
    if args.no_fleet {
        table.print();
        let _ = std::fs::remove_dir_all(&args.bench_dir);
        return Ok(std::process::ExitCode::SUCCESS);
    }

    let fleet_dir = args.bench_dir.join("fleet");
    let result = fleet_section(machine, &args, reporter.as_ref(), &mut table).await;
    let (m, d) = (machine.clone(), fleet_dir.clone());
    tokio::task::spawn_blocking(move || {
        yurt_cluster::down(&m, &d, true, &yurt_cluster::progress::LineReporter)
    })
    .await??;
    result?;
    let api_load = if args.no_api_load {
        None
    } else {
        Some(
            api_load::section(
                machine,
                &args.bench_dir,
                &api_load_options,
                reporter.as_ref(),
            )
            .await?,
        )
    };
    table.print();
    if let Some(report) = api_load {
        report.print();
    }
    let _ = std::fs::remove_dir_all(&args.bench_dir);
    Ok(std::process::ExitCode::SUCCESS)
}
