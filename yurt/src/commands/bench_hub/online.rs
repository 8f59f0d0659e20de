//! A hub process against the in-process API server ([`super::fake_api`]), so the real
//! API server's load is out of the figures:
//!
//! - the latency the hub's own code adds (open-loop GETs through the hub, against the
//!   same GETs sent straight to the in-process server over TLS);
//! - 1,000 concurrent watches through one hub: every event delivered, and the latency
//!   of writes while they run;
//! - bytes on the WAN link (a counting TCP relay between hub and server) for a kubelet +
//!   kube-proxy relist of a 1,000-pod node, with gzip on and off;
//! - the hub's RSS once online and idle.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use yurt_cluster::progress::{Reporter, Step};
use yurt_hub::codec::{self, Format};

use super::fake_api::{self, FakeApi, PODS_PATH, SERVICES_PATH, SLICES_PATH, SMALL_PATH};
use super::{
    BenchHubArgs, HubProcess, Table, cpu_time, h1, hub_process, load, load_requests, mib, rss, us,
};
use crate::commands::bench::percentile;

const PODS: usize = 1000;
const SERVICES: usize = 200;
/// Events sent to every watch.
const EVENTS: usize = 10;
/// Writes per second while the watches run.
const WRITE_RATE: u32 = 200;

async fn plain(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    h1(TokioIo::new(s)).await
}

/// One GET: status, whether the cache answered, body.
async fn fetch(
    addr: SocketAddr,
    path: &str,
    ua: &str,
    accept: &str,
) -> anyhow::Result<(u16, bool, Bytes)> {
    let mut send = plain(addr).await?;
    let req = http::Request::get(path)
        .header(http::header::HOST, "kubernetes")
        .header(http::header::USER_AGENT, ua)
        .header(http::header::ACCEPT, accept)
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await??;
    let status = resp.status().as_u16();
    let cached = resp.headers().contains_key(yurt_hub::proxy::SOURCE_HEADER);
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await??
        .to_bytes();
    Ok((status, cached, body))
}

/// Waits until the hub forwards to the API server.
async fn wait_online(hub: &HubProcess) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if let Ok((200, false, _)) =
            fetch(hub.proxy, SMALL_PATH, "bench/1", "application/json").await
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the hub never went online against the in-process API server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kubelet's and kube-proxy's lists after a restart, in protobuf as they ask.
async fn relist(hub: SocketAddr) -> anyhow::Result<()> {
    let proto = "application/vnd.kubernetes.protobuf, application/json";
    let kubelet = "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19";
    let kube_proxy = "kube-proxy/v1.20.2 (linux/amd64) kubernetes/faecb19";
    for (path, ua) in [
        (PODS_PATH, kubelet),
        (SERVICES_PATH, kubelet),
        (SERVICES_PATH, kube_proxy),
        (SLICES_PATH, kube_proxy),
    ] {
        let (status, cached, body) = fetch(hub, path, ua, proto).await?;
        anyhow::ensure!(
            status == 200 && !cached,
            "{path} as {ua}: {status} (cached {cached})"
        );
        let items = codec::decode_list(Format::Protobuf, &body)?.items.len();
        let want = if path == PODS_PATH { PODS } else { SERVICES };
        anyhow::ensure!(items == want, "{path}: {items} items, not {want}");
    }
    Ok(())
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

async fn tls_to(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    h1(TokioIo::new(connector.connect(name, tcp).await?)).await
}

fn write_request() -> http::Request<Full<Bytes>> {
    http::Request::post("/api/v1/namespaces/default/events")
        .header(http::header::HOST, "kubernetes")
        .header(http::header::USER_AGENT, "bench/1")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"apiVersion":"v1","kind":"Event","metadata":{"generateName":"bench-","namespace":"default"},"reason":"Bench"}"#,
        )))
        .expect("request")
}

/// Opens `n` watches through the hub; each task returns how many events it received
/// (up to [`EVENTS`]).
async fn open_watches(
    hub: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<usize>>> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut send = plain(hub).await?;
        let req = http::Request::get(format!(
            "/api/v1/namespaces/{}/configmaps?watch=true&resourceVersion=1&w={i}",
            fake_api::WATCH_NAMESPACE
        ))
        .header(http::header::HOST, "kubernetes")
        .header(http::header::USER_AGENT, "bench-watch/1")
        .body(Full::new(Bytes::new()))?;
        tasks.push(tokio::spawn(async move {
            let Ok(resp) = send.send_request(req).await else {
                return 0;
            };
            let mut body = resp.into_body();
            let mut events = 0;
            while events < EVENTS {
                match body.frame().await {
                    Some(Ok(f)) => {
                        events += f
                            .into_data()
                            .map_or(0, |d| d.iter().filter(|b| **b == b'\n').count());
                    }
                    _ => break,
                }
            }
            events.min(EVENTS)
        }));
    }
    Ok(tasks)
}

/// The size of the future `handler` returns, without calling it.
fn future_size<A, B, C, F: Future>(_handler: fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// What one load turn cost: the CPU of the process under load and of the one idling.
struct CpuTurn {
    busy: Duration,
    idle: Duration,
    wall: Duration,
}

impl CpuTurn {
    /// Runs `turn` against `busy` and reads what it and `idle` spent meanwhile.
    async fn measure<T>(
        busy: &HubProcess,
        idle: &HubProcess,
        turn: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<(T, Self)> {
        let (busy_before, idle_before) = (cpu_time(busy.child.id()), cpu_time(idle.child.id()));
        let started = std::time::Instant::now();
        let out = turn.await?;
        let cost = Self {
            busy: cpu_time(busy.child.id()).saturating_sub(busy_before),
            idle: cpu_time(idle.child.id()).saturating_sub(idle_before),
            wall: started.elapsed(),
        };
        Ok((out, cost))
    }
}

/// CPU a process spent while another took the load: its cost of merely running.
#[derive(Debug, Default)]
struct Idle {
    cpu: Duration,
    wall: Duration,
}

impl Idle {
    fn add(&mut self, cpu: Duration, wall: Duration) {
        self.cpu += cpu;
        self.wall += wall;
    }

    /// CPU seconds per second of wall time.
    fn per_second(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.cpu.as_secs_f64() / self.wall.as_secs_f64()
        }
    }
}

/// One turn's p50 and p99 through the hub minus through the bare proxy, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TurnDifference {
    p50: f64,
    p99: f64,
}

impl TurnDifference {
    fn of(mut hub: Vec<Duration>, mut bare: Vec<Duration>) -> Self {
        hub.sort();
        bare.sort();
        let d =
            |q: f64| (percentile(&hub, q).as_secs_f64() - percentile(&bare, q).as_secs_f64()) * 1e6;
        Self {
            p50: d(50.0),
            p99: d(99.0),
        }
    }
}

/// The median of `values` (0 for none): a few turns hit by the machine's other work
/// move it less than they move pooled percentiles.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `a − b` in microseconds, with its sign (on a noisy machine the difference of two
/// percentiles can be negative).
fn signed_us(a: Duration, b: Duration) -> String {
    let d = a.as_secs_f64() - b.as_secs_f64();
    format!("{:+.0} µs", d * 1e6)
}

/// Starts the bare proxy ([`super::bare_proxy`]) on `port` towards `api` and waits until
/// it answers.
async fn bare_proxy(ca: &Path, api: SocketAddr, port: u16) -> anyhow::Result<HubProcess> {
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "bare-proxy", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--upstream")
        .arg(api.to_string())
        .arg("--ca-file")
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let proxy = HubProcess {
        child,
        proxy: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let started = std::time::Instant::now();
    loop {
        if let Ok((200, _, _)) = fetch(proxy.proxy, SMALL_PATH, "bench/1", "application/json").await
        {
            return Ok(proxy);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the bare proxy never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn watches(
    api: &FakeApi,
    hub: &HubProcess,
    args: &BenchHubArgs,
    table: &mut Table,
) -> anyhow::Result<()> {
    let connect = || plain(hub.proxy);
    let (quiet, quiet_err) =
        load_requests(WRITE_RATE, args.seconds, 4, connect, write_request).await?;
    let before = api.connections();
    let tasks = open_watches(hub.proxy, args.watches).await?;
    let started = std::time::Instant::now();
    while api.watches() < args.watches {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {} watches reached the API server",
            api.watches(),
            args.watches
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = api.connections() - before;
    let spacing = Duration::from_millis(args.seconds * 1000 / EVENTS as u64);
    let events = async {
        for k in 0..EVENTS {
            tokio::time::sleep(spacing).await;
            api.send_event(Bytes::from(format!(
                "{{\"type\":\"ADDED\",\"object\":{{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"e{k}\",\"namespace\":\"{}\",\"resourceVersion\":\"{}\"}}}}}}\n",
                fake_api::WATCH_NAMESPACE,
                k + 2
            )));
        }
    };
    let (busy, _) = tokio::join!(
        load_requests(WRITE_RATE, args.seconds, 4, connect, write_request),
        events
    );
    let (busy, busy_err) = busy?;
    let mut delivered = 0;
    for t in tasks {
        delivered += tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
    }
    table.row(
        &format!(
            "{} watches through one hub: events delivered; writes at {WRITE_RATE}/s meanwhile: p50 / p99 (errors)",
            args.watches
        ),
        format!(
            "{delivered} / {}; {} / {} ({busy_err})",
            args.watches * EVENTS,
            us(percentile(&busy, 50.0)),
            us(percentile(&busy, 99.0)),
        ),
        format!(
            "writes with no watches: {} / {} ({quiet_err}); the watches took {opened} new upstream connections (≤ 100 streams each; server allows 250)",
            us(percentile(&quiet, 50.0)),
            us(percentile(&quiet, 99.0)),
        ),
    );
    Ok(())
}

/// Runs the section.
pub(super) async fn section(
    dir: &Path,
    args: &BenchHubArgs,
    reporter: &dyn Reporter,
    table: &mut Table,
) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    super::write_identity(&pki)?;
    let step = Step::start(reporter, "a hub process against an in-process API server");
    let api = fake_api::start(&pki, PODS, SERVICES).await?;
    // Hubs for the WAN figures reach the server through counting relays; the hub for the
    // latency figures reaches it directly, as the direct anchor does.
    let wan_gzip = fake_api::relay(api.addr).await?;
    let wan_plain = fake_api::relay(api.addr).await?;
    let hub_gzip = hub_process(
        &pki,
        &dir.join("cache-gzip"),
        40281,
        &format!("https://{}", wan_gzip.addr),
        &[],
    )?;
    let hub_plain = hub_process(
        &pki,
        &dir.join("cache-plain"),
        40291,
        &format!("https://{}", wan_plain.addr),
        &["--upstream-gzip=false"],
    )?;
    wait_online(&hub_gzip).await?;
    wait_online(&hub_plain).await?;
    step.finish();

    // Bytes on the WAN link for a relist, gzip on and off.
    let step = Step::start(reporter, "a kubelet + kube-proxy relist, gzip on and off");
    let b = wan_gzip.bytes();
    relist(hub_gzip.proxy).await?;
    let gz = wan_gzip.bytes() - b;
    let b = wan_plain.bytes();
    relist(hub_plain.proxy).await?;
    let pl = wan_plain.bytes() - b;
    step.finish();
    table.row(
        &format!("WAN bytes, kubelet + kube-proxy relist of a {PODS}-pod node (pods, services ×2, endpointslices; protobuf): gzip on"),
        kib(gz),
        format!(
            "gzip off: {} ({:.1}× more); bodies {}",
            kib(pl),
            pl as f64 / gz.max(1) as f64,
            kib(api.relist_plain_bytes() as u64)
        ),
    );
    drop((hub_gzip, hub_plain));

    let hub = hub_process(
        &pki,
        &dir.join("cache"),
        40301,
        &format!("https://{}", api.addr),
        &[],
    )?;
    wait_online(&hub).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    table.row(
        "RSS, online and idle (against the in-process API server)",
        mib(rss(hub.child.id())),
        "≤ 10 MiB target".into(),
    );

    table.row(
        "size of the future of one request through the hub (hyper moves it into place for each request)",
        format!("{} bytes", future_size(yurt_hub::proxy::handle)),
        "its offline, lease, upgrade and shared-watch branches are boxed".into(),
    );

    // Added latency of the hub's code.
    let pki_ca = pki.join("ca.crt");
    let bare = bare_proxy(&pki_ca, api.addr, 40321).await?;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(yurt_hub::tls::client_config(&pki_ca, None)?));
    for &rate in &args.inprocess_rates {
        let step = Step::start(
            reporter,
            format!("in-process API server: GETs at {rate}/s, through the hub and direct"),
        );
        let conns = 32;
        // One-second turns, round-robin over the four paths, so the machine's background
        // noise falls on all of them alike.
        let (mut pass, mut cached, mut bare_lat, mut direct) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut pass_err, mut cached_err, mut bare_err, mut direct_err) = (0, 0, 0, 0);
        // Each turn's hub − bare proxy difference, its two sides a second apart.
        let mut paired = Vec::new();
        // CPU time the hub and the bare proxy spent in their pass-through turns, and the
        // requests those turns made: a figure the machine's noise moves far less than a
        // latency percentile. Each also idles through the other's turn: what it spends
        // then (health probes, timers) is taken off per second of load, so only the
        // requests' own cost remains.
        let (mut hub_cpu, mut bare_cpu, mut hub_requests, mut bare_requests) =
            (Duration::ZERO, Duration::ZERO, 0usize, 0usize);
        let (mut hub_idle, mut bare_idle) = (Idle::default(), Idle::default());
        for _ in 0..args.seconds {
            let ((l, e), turn) = CpuTurn::measure(
                &hub,
                &bare,
                load(rate, 1, conns, || plain(hub.proxy), SMALL_PATH, "bench/1"),
            )
            .await?;
            hub_cpu += turn.busy;
            bare_idle.add(turn.idle, turn.wall);
            hub_requests += l.len() + e;
            let turn_pass = l.clone();
            pass.extend(l);
            pass_err += e;
            let (l, e) = load(
                rate,
                1,
                conns,
                || plain(hub.proxy),
                SMALL_PATH,
                "kubelet/bench",
            )
            .await?;
            cached.extend(l);
            cached_err += e;
            let ((l, e), turn) = CpuTurn::measure(
                &bare,
                &hub,
                load(rate, 1, conns, || plain(bare.proxy), SMALL_PATH, "bench/1"),
            )
            .await?;
            bare_cpu += turn.busy;
            hub_idle.add(turn.idle, turn.wall);
            bare_requests += l.len() + e;
            paired.push(TurnDifference::of(turn_pass, l.clone()));
            bare_lat.extend(l);
            bare_err += e;
            let (l, e) = load(
                rate,
                1,
                conns,
                || tls_to(connector.clone(), api.addr),
                SMALL_PATH,
                "bench/1",
            )
            .await?;
            direct.extend(l);
            direct_err += e;
        }
        for l in [&mut pass, &mut cached, &mut bare_lat, &mut direct] {
            l.sort();
        }
        step.finish();
        let p = |l: &[Duration], q: f64| percentile(l, q);
        table.row(
            &format!("in-process API server, GET at {rate} req/s (open loop): p50 / p99 (errors), through the hub"),
            format!("{} / {} ({pass_err})", us(p(&pass, 50.0)), us(p(&pass, 99.0))),
            format!(
                "direct TLS client: {} / {} ({direct_err}); through the hub as kubelet (teed into the cache): {} / {} ({cached_err})",
                us(p(&direct, 50.0)),
                us(p(&direct, 99.0)),
                us(p(&cached, 50.0)),
                us(p(&cached, 99.0)),
            ),
        );
        table.row(
            &format!("in-process API server, GET at {rate} req/s: through a bare proxy process (the hub's stack and hop, none of its code)"),
            format!("{} / {} ({bare_err})", us(p(&bare_lat, 50.0)), us(p(&bare_lat, 99.0))),
            format!(
                "the hop itself (bare proxy − direct): {} / {}",
                us(p(&bare_lat, 50.0).saturating_sub(p(&direct, 50.0))),
                us(p(&bare_lat, 99.0).saturating_sub(p(&direct, 99.0)))
            ),
        );
        table.row(
            &format!("added latency of the hub's code at {rate} req/s, the median over {} one-second turns of (hub − bare proxy) in the same turn: p50 / p99", paired.len()),
            format!(
                "{:+.0} µs / {:+.0} µs",
                median(paired.iter().map(|d| d.p50).collect()),
                median(paired.iter().map(|d| d.p99).collect())
            ),
            format!(
                "≤ 50 µs / ≤ 200 µs target; the turns' p99 differences range {:+.0} µs to {:+.0} µs (the machine's noise)",
                paired.iter().map(|d| d.p99).fold(f64::INFINITY, f64::min),
                paired.iter().map(|d| d.p99).fold(f64::NEG_INFINITY, f64::max)
            ),
        );
        // The turns last about one second each: the idle rate is taken off per turn.
        let turns = args.seconds as f64;
        let per_request = |cpu: Duration, idle: &Idle, n: usize| {
            (cpu.as_secs_f64() - idle.per_second() * turns).max(0.0) * 1e6 / n.max(1) as f64
        };
        let (hub_per, bare_per) = (
            per_request(hub_cpu, &hub_idle, hub_requests),
            per_request(bare_cpu, &bare_idle, bare_requests),
        );
        table.row(
            &format!("CPU time per request at {rate} req/s, through the hub (all its threads, pass-through turns, its idle rate taken off)"),
            format!("{hub_per:.1} µs"),
            format!(
                "bare proxy: {bare_per:.1} µs; the hub's code: {:+.1} µs per request ({:.2}×); idle: hub {:.1} ms/s, bare proxy {:.1} ms/s",
                hub_per - bare_per,
                hub_per / bare_per.max(f64::EPSILON),
                hub_idle.per_second() * 1e3,
                bare_idle.per_second() * 1e3,
            ),
        );
        table.row(
            &format!("added latency of the hub's code at {rate} req/s (hub − bare proxy, all turns pooled): p50 / p99"),
            format!(
                "{} / {}",
                signed_us(p(&pass, 50.0), p(&bare_lat, 50.0)),
                signed_us(p(&pass, 99.0), p(&bare_lat, 99.0))
            ),
            format!(
                "≤ 50 µs / ≤ 200 µs target; as kubelet (teed into the cache): {} / {}; hub − direct: {} / {}",
                signed_us(p(&cached, 50.0), p(&bare_lat, 50.0)),
                signed_us(p(&cached, 99.0), p(&bare_lat, 99.0)),
                signed_us(p(&pass, 50.0), p(&direct, 50.0)),
                signed_us(p(&pass, 99.0), p(&direct, 99.0))
            ),
        );
    }

    let step = Step::start(
        reporter,
        format!("{} watches through one hub", args.watches),
    );
    watches(&api, &hub, args, table).await?;
    step.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![5.0, -100.0, 7.0]), 5.0);
        assert_eq!(median(vec![900.0, 1.0, 3.0, -2000.0]), 2.0);
    }

    #[test]
    fn a_turn_difference_is_hub_minus_bare_at_each_percentile() {
        let us = |v: u64| Duration::from_micros(v);
        let hub: Vec<_> = (1..=100).map(|i| us(100 + i)).rev().collect();
        let bare: Vec<_> = (1..=100).map(us).collect();
        let d = TurnDifference::of(hub, bare);
        assert_eq!((d.p50.round(), d.p99.round()), (100.0, 100.0));
    }

    #[test]
    fn the_idle_rate_is_cpu_per_second_of_wall_time() {
        let mut idle = Idle::default();
        assert_eq!(idle.per_second(), 0.0, "nothing seen yet");
        idle.add(Duration::from_millis(3), Duration::from_secs(1));
        idle.add(Duration::from_millis(1), Duration::from_secs(1));
        assert!((idle.per_second() - 0.002).abs() < 1e-12);
    }

    #[test]
    fn a_process_cpu_time_grows_with_its_work_and_is_zero_once_gone() {
        let me = std::process::id();
        let before = cpu_time(me);
        assert!(before > Duration::ZERO, "a live process has run");
        // Spin until the figure shows 20 ms more; a reading that never grows fails at
        // the wall limit, however busy the machine is.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time(me).saturating_sub(before) < Duration::from_millis(20) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "CPU time did not grow while this thread spun"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
    }
}
