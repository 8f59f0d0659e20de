//! `yurt bench fleet`: how long a cold `yurt up` takes, what an edge host costs in
//! memory, and how fast pods start, printed as a table.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use yurt_cluster::progress::Step;
use yurt_cluster::spec::HostId;
use yurt_cluster::{FleetSpec, MachineConfig, UpOptions};

use crate::cli::{BenchCommand, BenchFleetArgs};
use crate::progress::SpinnerReporter;

/// Runs `yurt bench ...`.
pub async fn run(machine: &MachineConfig, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Fleet(args) => fleet(machine, args).await,
        BenchCommand::Hub(args) => super::bench_hub::run(machine, args).await,
        BenchCommand::Manager(args) => super::bench_manager::run(machine, args).await,
        BenchCommand::Adm(args) => super::bench_adm::run(machine, args).await,
        BenchCommand::Tunnel(args) => super::bench_tunnel::run(args).await,
        BenchCommand::Iot(args) => super::bench_iot::run(machine, args).await,
        BenchCommand::IotAgents(args) => super::bench_iot::agents(args).await,
        BenchCommand::BareProxy(args) => super::bench_hub::bare_proxy::run(args).await,
        BenchCommand::TunnelAgents(args) => super::bench_tunnel::many_agents(args).await,
    }
}

/// Brings up a one-node `routed` fleet (no sample app) in `dir`, runs `measure` on it and
/// removes the fleet whatever the outcome.
pub(crate) async fn on_one_node_fleet<T>(
    machine: &MachineConfig,
    dir: &std::path::Path,
    what: &str,
    reporter: &dyn yurt_cluster::progress::Reporter,
    measure: impl AsyncFnOnce(&yurt_cluster::Fleet) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let step = Step::start(reporter, what.to_owned());
    let fleet = yurt_cluster::up(
        machine,
        dir,
        UpOptions {
            spec: Some(FleetSpec {
                edge_nodes: 1,
                pools: 1,
                mode: yurt_cluster::NetMode::Routed,
                timing: yurt_cluster::Timing::Standard,
                sample_app: false,
            }),
            ..UpOptions::default()
        },
        Arc::new(Quiet),
    )
    .await?;
    step.finish();
    let result = measure(&fleet).await;
    let step = Step::start(reporter, "removing the benchmark fleet");
    let (m, d) = (machine.clone(), dir.to_owned());
    tokio::task::spawn_blocking(move || yurt_cluster::down(&m, &d, true, &Quiet)).await??;
    step.finish();
    result
}

struct Row {
    edge_nodes: u16,
    cold_up: Duration,
    warm_up: Option<Duration>,
    edge_rss_mib: f64,
    cloud_rss_mib: f64,
}

/// The nearest-rank percentile `p` of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn fleet(machine: &MachineConfig, args: BenchFleetArgs) -> anyhow::Result<ExitCode> {
    let reporter = SpinnerReporter::for_stderr();
    let mut rows = Vec::new();
    let mut latencies: Vec<PodRun> = Vec::new();
    let mut pull_rows = Vec::new();
    // Binaries and packages first, so the timings below are cold fleets, not a build.
    {
        let (m, r) = (machine.clone(), reporter.clone());
        tokio::task::spawn_blocking(move || {
            yurt_cluster::upstream::ensure(&m.cache_dir, r.as_ref())
        })
        .await??;
    }
    for (i, &size) in args.sizes.iter().enumerate() {
        let dir = args.bench_dir.join(format!("n{size}"));
        remove(machine, &dir).await?;
        let measured = measure(machine, &dir, size, i == 0, &args, reporter.as_ref()).await;
        // The fleet goes, whatever happened while measuring it.
        remove(machine, &dir).await?;
        let (row, pod_runs, pull) = measured?;
        rows.push(row);
        latencies.extend(pod_runs);
        pull_rows.extend(pull);
    }
    println!(
        "\nyurt bench fleet (Kubernetes {}, upstream binaries cached)",
        yurt_cluster::upstream::KUBERNETES_VERSION
    );
    println!(
        "| edge nodes | cold up → Ready + sample serving | warm up (data kept) | RSS per edge host | RSS cloud host |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} s | {} | {:.0} MiB | {:.0} MiB |",
            r.edge_nodes,
            r.cold_up.as_secs_f64(),
            r.warm_up
                .map_or("-".to_owned(), |w| format!("{:.1} s", w.as_secs_f64())),
            r.edge_rss_mib,
            r.cloud_rss_mib
        );
    }
    for p in &pull_rows {
        println!(
            "\nan image of {:.0} MiB reaching {} edge nodes at once (median of 3; push to the registry once: {:.1} s)",
            p.image_bytes as f64 / (1024.0 * 1024.0),
            p.nodes,
            p.push.as_secs_f64()
        );
        println!(
            "| pulled through the fleet registry | ctr import of the archive (anchor) | ratio |"
        );
        println!("|---:|---:|---:|");
        println!(
            "| {:.2} s | {:.2} s | {:.2}× |",
            p.pull.as_secs_f64(),
            p.import.as_secs_f64(),
            p.pull.as_secs_f64() / p.import.as_secs_f64().max(1e-9)
        );
    }
    if !latencies.is_empty() {
        let nodes = rows.first().map_or(0, |r| r.edge_nodes);
        println!(
            "\npod create → Running (watch), {} pods on {nodes} edge nodes (Kubernetes SLO: p99 ≤ 5 s)",
            args.pods
        );
        println!("| created | p50 | p99 | max | all Running after |");
        println!("|---|---:|---:|---:|---:|");
        for (what, mut l, total) in latencies {
            l.sort();
            println!(
                "| {what} | {:.2} s | {:.2} s | {:.2} s | {:.1} s |",
                percentile(&l, 50.0).as_secs_f64(),
                percentile(&l, 99.0).as_secs_f64(),
                l.last().copied().unwrap_or_default().as_secs_f64(),
                total.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One pod-start run: how pods were created, each pod's latency, time until all ran.
type PodRun = (String, Vec<Duration>, Duration);

async fn remove(machine: &MachineConfig, dir: &std::path::Path) -> anyhow::Result<()> {
    let (m, d) = (machine.clone(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        yurt_cluster::down(&m, &d, true, &yurt_cluster::progress::LineReporter)
    })
    .await??;
    Ok(())
}

/// Brings one fleet up cold and measures it (and, for the first size, pod starts).
async fn measure(
    machine: &MachineConfig,
    dir: &std::path::Path,
    size: u16,
    first: bool,
    args: &BenchFleetArgs,
    reporter: &dyn yurt_cluster::progress::Reporter,
) -> anyhow::Result<(Row, Vec<PodRun>, Option<super::bench_pull::PullRow>)> {
    let step = Step::start(reporter, format!("cold yurt up with {size} edge nodes"));
    let spec = FleetSpec {
        edge_nodes: size,
        pools: size.min(2),
        ..FleetSpec::default()
    };
    let started = Instant::now();
    let fleet = yurt_cluster::up(
        machine,
        dir,
        UpOptions {
            spec: Some(spec),
            ..UpOptions::default()
        },
        Arc::new(Quiet),
    )
    .await?;
    let cold_up = started.elapsed();
    step.finish();
    // Let the nodes settle before reading memory.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let edge_total: u64 = fleet
        .plan()
        .edges
        .iter()
        .map(|e| fleet.host_rss_bytes(&HostId::Edge(e.name.clone())))
        .sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut row = Row {
        edge_nodes: size,
        cold_up,
        warm_up: None,
        edge_rss_mib: mib(edge_total) / f64::from(size),
        cloud_rss_mib: mib(fleet.host_rss_bytes(&HostId::Cloud)),
    };
    let mut runs = Vec::new();
    if first && args.pods > 0 {
        let client = fleet.client().await?;
        // Paced first: the burst leaves a hundred containers to tear down behind it.
        for rate in [Some(args.paced_rate), None] {
            let what = rate.map_or("all at once".to_owned(), |r| format!("{r} per second"));
            let step = Step::start(reporter, format!("starting {} pods, {what}", args.pods));
            let started = Instant::now();
            let measured = pod_start_latencies(&client, args.pods, rate).await?;
            runs.push((what, measured, started.elapsed()));
            step.finish();
        }
    }
    let mut pull = None;
    if first && args.pull_mib > 0 {
        pull = Some(
            super::bench_pull::measure(&fleet, dir, usize::from(args.pull_mib), reporter).await?,
        );
    }
    if first && args.warm_up {
        let step = Step::start(reporter, format!("warm yurt up with {size} edge nodes"));
        drop(fleet);
        let (m, d) = (machine.clone(), dir.to_owned());
        tokio::task::spawn_blocking(move || {
            yurt_cluster::down(&m, &d, false, &yurt_cluster::progress::LineReporter)
        })
        .await??;
        let started = Instant::now();
        let again = yurt_cluster::up(machine, dir, UpOptions::default(), Arc::new(Quiet)).await?;
        row.warm_up = Some(started.elapsed());
        drop(again);
        step.finish();
    }
    Ok((row, runs, pull))
}

/// Creates `count` pods one after another and measures, for each, the time from its
/// create call to the watch event that shows it Running.
async fn pod_start_latencies(
    client: &kube::Client,
    count: usize,
    rate: Option<f64>,
) -> anyhow::Result<Vec<Duration>> {
    const NS: &str = "yurt-bench";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let watch_pods = pods.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watcher = tokio::spawn(async move {
        let params = WatchParams::default().labels("app=yurt-bench").timeout(290);
        let Ok(stream) = watch_pods.watch(&params, "0").await else {
            return;
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = event
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && let Some(name) = p.metadata.name
                && tx.send((name, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut created = HashMap::new();
    let began = Instant::now();
    for i in 0..count {
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = began + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let name = format!("bench-{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app": "yurt-bench"}},
            "spec": {
                "containers": [{"name": "c", "image": yurt_cluster::image::BUSYBOX_IMAGE, "command": ["sleep", "3600"],
                                "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}],
                "terminationGracePeriodSeconds": 0,
                "tolerations": [{"operator": "Exists"}],
            }
        }))?;
        created.insert(name, Instant::now());
        pods.create(&PostParams::default(), &pod).await?;
    }
    let mut latencies = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((name, at))) => {
                if seen.insert(name.clone())
                    && let Some(t0) = created.get(&name)
                {
                    latencies.push(at.saturating_duration_since(*t0));
                }
            }
            _ => anyhow::bail!(
                "only {} of {count} pods reached Running within 5 minutes",
                seen.len()
            ),
        }
    }
    watcher.abort();
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &kube::api::ListParams::default(),
        )
        .await;
    wait_gone(&pods).await;
    Ok(latencies)
}

/// Waits (up to two minutes) until the benchmark's pods are deleted, so the next run
/// starts on idle nodes.
async fn wait_gone(pods: &Api<Pod>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match pods.list(&kube::api::ListParams::default()).await {
            Ok(l) if l.items.is_empty() => return,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Swallows the progress of the fleet under measurement (the bench prints its own).
pub struct Quiet;

impl yurt_cluster::progress::Reporter for Quiet {
    fn begin(&self, _: &str) {}
    fn detail(&self, _: &str) {}
    fn done(&self, _: &str, _: Duration) {}
    fn warn(&self, message: &str) {
        eprintln!("! {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
