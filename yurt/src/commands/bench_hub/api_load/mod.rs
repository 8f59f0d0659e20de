//! `yurt bench hub`'s API-load section: what a node costs the API server with its
//! kubelet and kube-proxy talking to it directly and through the node's hub.
//!
//! The same fleet shape is brought up twice, once with hubs and once without
//! (`EdgeApi::Direct`), with the API server writing an audit log. Each runs the same
//! script: a steady-state window, a churn window (pods, Services, plain Nodes
//! flapping), then windows with more and more plain Node objects (no kubelet) standing
//! in for far nodes, in the pool and outside it, each flapping once per 10 s.
//!
//! Per edge node, exactly: requests by verb, open watches and successful writes from
//! the audit log (by the node's address), bytes from the API server from the node's
//! port on its site's bridge. Cluster-wide, from the API server's `/metrics`: watch
//! event bytes, LIST/GET response bytes, etcd writes, registered watchers and requests
//! (these include the control plane's own, the same in both fleets).

mod audit;
mod churn;
pub(crate) mod prometheus;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use yurt_cluster::components::Component;
use yurt_cluster::progress::{Reporter, Step};
use yurt_cluster::spec::HostId;
use yurt_cluster::{EdgeApi, FleetSpec, MachineConfig, NetMode, Timing, UpOptions};

use audit::{LogFollower, Tally};
use prometheus::Metrics;

/// Options of the section (flags of `yurt bench hub`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Edge nodes of each fleet (one pool).
    pub edge_nodes: u16,
    /// Seconds of the steady-state and churn windows.
    pub seconds: u64,
    /// Seconds of each far-node window.
    pub far_seconds: u64,
    /// Plain Nodes in the pool for the far-node windows, cumulative (e.g. 50, 200).
    pub pool_nodes: Vec<usize>,
    /// Plain Nodes outside the pool added in a last window (0: none).
    pub outside_nodes: usize,
}

/// Per edge node, one window.
#[derive(Debug, Clone, Default)]
struct NodeFigures {
    /// Requests per second by verb.
    requests: BTreeMap<String, f64>,
    /// Bytes per second towards the node, on the wire.
    wire_bytes: f64,
    /// Successful writes per second.
    writes: f64,
}

/// Cluster-wide, one window, from `/metrics`.
#[derive(Debug, Clone, Default)]
struct ClusterFigures {
    /// Watch event bytes per second, all watchers.
    watch_bytes: f64,
    /// Watch events per second, all watchers.
    watch_events: f64,
    /// Response bytes of LIST and GET per second.
    read_bytes: f64,
    /// etcd writes (create, update, delete) per second.
    etcd_writes: f64,
    /// Registered watchers at the window's end.
    watchers: f64,
    /// Requests per second.
    requests: f64,
}

#[derive(Debug, Clone, Default)]
struct Window {
    node: NodeFigures,
    cluster: ClusterFigures,
    /// Plain Node label patches per second the script made (far-node windows).
    flaps: f64,
}

/// One fleet's results.
#[derive(Debug, Clone, Default)]
struct Results {
    /// By window name.
    windows: Vec<(String, Window)>,
    /// Upstream watches per edge node, by kind.
    watches: BTreeMap<String, f64>,
}

struct Measured {
    client: kube::Client,
    follower: LogFollower,
    tally: Tally,
    /// (node address, its port on the site bridge).
    nodes: Vec<(String, String)>,
    router_ns: String,
}

impl Measured {
    async fn scrape(&self) -> anyhow::Result<Metrics> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self
            .client
            .request_text(req)
            .await
            .context("GET /metrics")?;
        Metrics::parse(&text)
    }

    async fn watchers_by_kind(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(self
            .scrape()
            .await?
            .sum_by("apiserver_registered_watchers", |l| {
                match l.get("group").map(String::as_str) {
                    None | Some("") => l.get("kind").cloned().unwrap_or_default(),
                    Some(group) => format!("{}.{group}", l.get("kind").map_or("", String::as_str)),
                }
            }))
    }

    /// Registered watchers once their count holds still for 3 s (at most 30 s).
    async fn settled_watchers(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.watchers_by_kind().await?;
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = self.watchers_by_kind().await?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    fn wire_bytes(&self) -> anyhow::Result<Vec<u64>> {
        self.nodes
            .iter()
            .map(|(_, port)| tx_bytes(&self.router_ns, port))
            .collect()
    }

    /// Measures a window of `seconds`.
    async fn window(&mut self, seconds: u64) -> anyhow::Result<Window> {
        self.follower.feed(&mut self.tally)?;
        self.tally.new_window();
        let before = self.scrape().await?;
        let wire_before = self.wire_bytes()?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = self.scrape().await?;
        let wire_after = self.wire_bytes()?;
        let secs = started.elapsed().as_secs_f64();
        // Lines of requests answered in the window may still be in flight to the log
        // (blocking mode writes them before the response ends): one more read.
        self.follower.feed(&mut self.tally)?;
        let n = self.nodes.len() as f64;
        let mut node = NodeFigures::default();
        for (i, (ip, _)) in self.nodes.iter().enumerate() {
            let c = self.tally.client(ip);
            for (verb, count) in c.requests {
                *node.requests.entry(verb).or_insert(0.0) += count as f64 / secs / n;
            }
            node.writes += c.writes as f64 / secs / n;
            node.wire_bytes += wire_after[i].saturating_sub(wire_before[i]) as f64 / secs / n;
        }
        let delta = |name: &str, f: &dyn Fn(&BTreeMap<String, String>) -> bool| {
            (after.sum(name, f) - before.sum(name, f)).max(0.0) / secs
        };
        let cluster = ClusterFigures {
            watch_bytes: delta("apiserver_watch_events_sizes_sum", &|_| true),
            watch_events: delta("apiserver_watch_events_total", &|_| true),
            read_bytes: delta("apiserver_response_sizes_sum", &|l| {
                matches!(l.get("verb").map(String::as_str), Some("LIST" | "GET"))
            }),
            etcd_writes: delta("etcd_request_duration_seconds_count", &|l| {
                matches!(
                    l.get("operation").map(String::as_str),
                    Some("create" | "update" | "delete")
                )
            }),
            watchers: after.sum("apiserver_registered_watchers", |_| true),
            requests: delta("apiserver_request_total", &|_| true),
        };
        Ok(Window {
            node,
            cluster,
            flaps: 0.0,
        })
    }
}

/// Bytes the router sent out of `port` (towards one edge host).
fn tx_bytes(router_ns: &str, port: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", router_ns, "-s", "-j", "link", "show", "dev", port])
        .output()
        .context("run ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip link show {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_tx_bytes(&String::from_utf8_lossy(&out.stdout))
}

/// `stats64.tx.bytes` of `ip -s -j link show dev X`.
fn parse_tx_bytes(json: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json).context("ip -j output")?;
    v.pointer("/0/stats64/tx/bytes")
        .and_then(serde_json::Value::as_u64)
        .context("no stats64.tx.bytes in ip -j output")
}

async fn one_fleet(
    machine: &MachineConfig,
    dir: &Path,
    edge_api: EdgeApi,
    options: &Options,
    reporter: &dyn Reporter,
) -> anyhow::Result<Results> {
    let step = Step::start(
        reporter,
        format!(
            "a {}-node fleet, kubelets and kube-proxies {}",
            options.edge_nodes,
            match edge_api {
                EdgeApi::Direct => "talking to the API server directly",
                EdgeApi::ThroughHub => "behind hubs",
            }
        ),
    );
    let spec = FleetSpec {
        edge_nodes: options.edge_nodes,
        pools: 1,
        mode: NetMode::Routed,
        timing: Timing::Standard,
        sample_app: false,
    };
    let fleet = yurt_cluster::up(
        machine,
        dir,
        UpOptions {
            spec: Some(spec),
            edge_api: Some(edge_api),
            api_audit_log: Some(true),
            prometheus: Some(false),
            second_api_server: Some(false),
            ..UpOptions::default()
        },
        Arc::new(super::super::bench::Quiet),
    )
    .await?;
    step.finish();
    let plan = fleet.plan().clone();
    let client = fleet.client().await?;
    let mut m = Measured {
        client: client.clone(),
        follower: LogFollower::new(&yurt_cluster::components::api_audit_log(fleet.paths())),
        tally: Tally::new(plan.edges.iter().map(|e| e.ip.to_string()).collect()),
        nodes: plan
            .edges
            .iter()
            .map(|e| (e.ip.to_string(), e.router_port.clone()))
            .collect(),
        router_ns: plan.netns(&HostId::Router),
    };
    let pool = plan.pools[0].name.to_string();
    let mut results = Results::default();

    // Start-up lists and the first status updates settle first.
    let step = Step::start(reporter, "settling (30 s)");
    churn::prepare(&client).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    step.finish();

    let step = Step::start(reporter, format!("steady state ({} s)", options.seconds));
    results
        .windows
        .push(("steady".into(), m.window(options.seconds).await?));
    step.finish();

    let step = Step::start(
        reporter,
        format!(
            "churn: pods, Services, 10 + 10 plain Nodes flapping ({} s)",
            options.seconds
        ),
    );
    let mut flappers = churn::create_plain_nodes(&client, "churn-in", 0..10, Some(&pool)).await?;
    flappers.extend(churn::create_plain_nodes(&client, "churn-out", 0..10, None).await?);
    let stop = CancellationToken::new();
    let pods = tokio::spawn(churn::pods_and_services(client.clone(), stop.clone()));
    let flap = tokio::spawn(churn::flap_nodes(
        client.clone(),
        flappers.clone(),
        Duration::from_secs(5),
        stop.clone(),
    ));
    let churned = m.window(options.seconds).await;
    stop.cancel();
    pods.await??;
    flap.await??;
    results.windows.push(("churn".into(), churned?));
    churn::delete_nodes(&client, &flappers).await?;
    step.finish();

    // Far nodes: plain Nodes in the pool, then outside it, all flapping.
    let mut far: Vec<String> = Vec::new();
    let mut windows: Vec<(usize, usize)> = options.pool_nodes.iter().map(|&p| (p, 0)).collect();
    if options.outside_nodes > 0 {
        let last = options.pool_nodes.last().copied().unwrap_or(0);
        windows.push((last, options.outside_nodes));
    }
    let (mut in_pool, mut outside) = (0, 0);
    for (want_in, want_out) in windows {
        let step = Step::start(
            reporter,
            format!(
                "{want_in} plain Nodes in the pool, {want_out} outside, flapping ({} s)",
                options.far_seconds
            ),
        );
        if want_in > in_pool {
            far.extend(
                churn::create_plain_nodes(&client, "far-in", in_pool..want_in, Some(&pool)).await?,
            );
            in_pool = want_in;
        }
        if want_out > outside {
            far.extend(
                churn::create_plain_nodes(&client, "far-out", outside..want_out, None).await?,
            );
            outside = want_out;
        }
        // The hubs' lists of the new Nodes are not part of the steady figure.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stop = CancellationToken::new();
        let flap = tokio::spawn(churn::flap_nodes(
            client.clone(),
            far.clone(),
            Duration::from_secs(10),
            stop.clone(),
        ));
        let started = Instant::now();
        let measured = m.window(options.far_seconds).await;
        stop.cancel();
        let patches = flap.await??;
        let measured = measured.map(|mut w| {
            w.flaps = patches as f64 / started.elapsed().as_secs_f64();
            w
        });
        results
            .windows
            .push((format!("+{in_pool} in pool, +{outside} outside"), measured?));
        step.finish();
    }
    let step = Step::start(
        reporter,
        "upstream watches: stopping the edge hosts' kubelets, kube-proxies and hubs",
    );
    let before = m.watchers_by_kind().await?;
    let mut fleet = fleet;
    for edge in &plan.edges {
        let host = HostId::Edge(edge.name.clone());
        for c in [Component::Kubelet, Component::KubeProxy, Component::YurtHub] {
            if fleet.runs(&host, c) {
                fleet.stop_process(edge.name.as_str(), c.name())?;
            }
        }
    }
    let after = m.settled_watchers().await?;
    let n = plan.edges.len() as f64;
    for (kind, count) in before {
        let gone = count - after.get(&kind).copied().unwrap_or(0.0);
        if gone > 0.0 {
            results.watches.insert(kind, gone / n);
        }
    }
    step.finish();
    Ok(results)
}

/// The section's results, both fleets.
pub struct Report {
    options: Options,
    direct: Results,
    hub: Results,
}

impl Report {
    /// Prints the tables.
    pub fn print(&self) {
        print(&self.options, &self.direct, &self.hub);
    }
}

/// Runs the section: both fleets, one after the other, each taken down afterwards.
pub async fn section(
    machine: &MachineConfig,
    bench_dir: &Path,
    options: &Options,
    reporter: &dyn Reporter,
) -> anyhow::Result<Report> {
    let mut sides = Vec::new();
    for (edge_api, name) in [
        (EdgeApi::Direct, "api-load-direct"),
        (EdgeApi::ThroughHub, "api-load-hub"),
    ] {
        let dir = bench_dir.join(name);
        let result = one_fleet(machine, &dir, edge_api, options, reporter).await;
        let (m, d) = (machine.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            yurt_cluster::down(&m, &d, true, &yurt_cluster::progress::LineReporter)
        })
        .await??;
        sides.push(result?);
    }
    let [direct, hub] =
        <[Results; 2]>::try_from(sides).map_err(|_| anyhow::anyhow!("two fleets measured"))?;
    Ok(Report {
        options: options.clone(),
        direct,
        hub,
    })
}

fn ratio(hub: f64, direct: f64) -> String {
    if direct > 0.0 {
        format!("{:.2}×", hub / direct)
    } else if hub > 0.0 {
        "∞".into()
    } else {
        "–".into()
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn kib(bytes_per_s: f64) -> String {
    format!("{:.1} KiB/s", bytes_per_s / 1024.0)
}

const VERBS: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn print(options: &Options, direct: &Results, hub: &Results) {
    println!(
        "\nyurt bench hub — API load per edge node ({} edge nodes in 1 pool; direct = kubelet and \
         kube-proxy to the API server, no hub; steady and churn windows {} s, far-node windows \
         {} s, plain Nodes flapping once per 10 s)",
        options.edge_nodes, options.seconds, options.far_seconds
    );
    println!("| window | measure, per edge node | direct | through hub | hub / direct | how |");
    println!("|---|---|---:|---:|---:|---|");
    const AUDIT: &str = "audit log, requests from the node's address (a watch counts when it ends)";
    let (wd, wh) = (
        direct.watches.values().sum::<f64>(),
        hub.watches.values().sum::<f64>(),
    );
    let kinds = |w: &BTreeMap<String, f64>| {
        w.iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| end | upstream watches | {wd:.1} | {wh:.1} | {} | apiserver_registered_watchers that went away when the edge hosts' kubelets, kube-proxies (and hubs) stopped, per node; direct: {}; through hub: {} |",
        ratio(wh, wd),
        kinds(&direct.watches),
        kinds(&hub.watches)
    );
    for (i, ((name, d), (_, h))) in direct.windows.iter().zip(&hub.windows).enumerate() {
        // Steady state and churn in full; the far-node windows in brief.
        let full = i < 2;
        let row = |what: &str, dv: String, hv: String, r: String, how: &str| {
            println!("| {name} | {what} | {dv} | {hv} | {r} | {how} |");
        };
        let all = |w: &Window| w.node.requests.values().fold(0.0, |a, b| a + b);
        row(
            "requests/s, all verbs",
            rate(all(d)),
            rate(all(h)),
            ratio(all(h), all(d)),
            AUDIT,
        );
        for verb in VERBS.iter().filter(|_| full) {
            let dv = d.node.requests.get(*verb).copied().unwrap_or(0.0);
            let hv = h.node.requests.get(*verb).copied().unwrap_or(0.0);
            if dv > 0.0 || hv > 0.0 {
                row(
                    &format!("requests/s: {verb}"),
                    rate(dv),
                    rate(hv),
                    ratio(hv, dv),
                    AUDIT,
                );
            }
        }
        row(
            "bytes from the API server",
            kib(d.node.wire_bytes),
            kib(h.node.wire_bytes),
            ratio(h.node.wire_bytes, d.node.wire_bytes),
            "bytes sent to the node by its site's bridge (TLS on the wire)",
        );
        row(
            "etcd writes/s (the node's successful writes)",
            rate(d.node.writes),
            rate(h.node.writes),
            ratio(h.node.writes, d.node.writes),
            "audit log: create/update/patch/delete answered 2xx",
        );
        if !full {
            row(
                "plain Node flaps/s, all plain Nodes",
                rate(d.flaps),
                rate(h.flaps),
                ratio(h.flaps, d.flaps),
                "label patches the bench made (aim: each plain Node once per 10 s)",
            );
            row(
                "cluster: watch event bytes/s",
                kib(d.cluster.watch_bytes),
                kib(h.cluster.watch_bytes),
                ratio(h.cluster.watch_bytes, d.cluster.watch_bytes),
                &format!(
                    "apiserver_watch_events_sizes_sum, all clients; (hub − direct) / edge nodes = {}",
                    kib((h.cluster.watch_bytes - d.cluster.watch_bytes)
                        / f64::from(options.edge_nodes))
                ),
            );
            continue;
        }
        let n = f64::from(options.edge_nodes);
        let cluster = |what: &str, dv: f64, hv: f64, fmt: &dyn Fn(f64) -> String, how: &str| {
            row(
                &format!("cluster: {what}"),
                fmt(dv),
                fmt(hv),
                ratio(hv, dv),
                &format!(
                    "{how}; all clients; (hub − direct) / edge nodes = {}",
                    fmt((hv - dv) / n)
                ),
            );
        };
        cluster(
            "watch event bytes/s",
            d.cluster.watch_bytes,
            h.cluster.watch_bytes,
            &kib,
            "apiserver_watch_events_sizes_sum",
        );
        cluster(
            "watch events/s",
            d.cluster.watch_events,
            h.cluster.watch_events,
            &rate,
            "apiserver_watch_events_total",
        );
        cluster(
            "LIST/GET response bytes/s",
            d.cluster.read_bytes,
            h.cluster.read_bytes,
            &kib,
            "apiserver_response_sizes_sum{verb=LIST|GET}",
        );
        cluster(
            "etcd writes/s",
            d.cluster.etcd_writes,
            h.cluster.etcd_writes,
            &rate,
            "etcd_request_duration_seconds_count{operation=create|update|delete}",
        );
        cluster(
            "registered watchers",
            d.cluster.watchers,
            h.cluster.watchers,
            &|v| format!("{v:.0}"),
            "apiserver_registered_watchers at the window's end",
        );
        cluster(
            "requests/s",
            d.cluster.requests,
            h.cluster.requests,
            &rate,
            "apiserver_request_total",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_json_gives_the_ports_tx_bytes() {
        let out = r#"[{"ifindex":7,"ifname":"e0p1","flags":["BROADCAST","UP"],"mtu":1500,"operstate":"UP","stats64":{"rx":{"bytes":1200,"packets":10,"errors":0,"dropped":0,"over_errors":0,"multicast":0},"tx":{"bytes":987654321,"packets":20,"errors":0,"dropped":0,"carrier_errors":0,"collisions":0}}}]"#;
        assert_eq!(parse_tx_bytes(out).unwrap(), 987_654_321);
        assert!(parse_tx_bytes("[]").is_err());
        assert!(parse_tx_bytes("nope").is_err());
    }

    #[test]
    fn ratios_name_missing_anchors() {
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "∞");
        assert_eq!(ratio(0.0, 0.0), "–");
    }
}
