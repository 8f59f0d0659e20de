//! `yurt bench manager`: the manager at scale on a one-node fleet plus plain Node
//! objects (no kubelet behind them): how fast a pool's label and taint reach all its
//! nodes, how fast a YurtAppSet across many pools gets all its workloads, and the
//! manager's memory and CPU at that size.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use yurt_cluster::MachineConfig;
use yurt_cluster::progress::{Reporter, Step};
use yurt_cluster::spec::HostId;

use super::bench::percentile;
use crate::progress::SpinnerReporter;

/// `yurt bench manager` options.
#[derive(Debug, Args)]
pub struct BenchManagerArgs {
    /// NodePools to create.
    #[arg(long, default_value_t = 1000)]
    pub pools: usize,
    /// Plain Node objects per pool.
    #[arg(long, default_value_t = 10)]
    pub nodes_per_pool: usize,
    /// Pool label/taint changes to time.
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
    /// Pools the YurtAppSet spans.
    #[arg(long, default_value_t = 100)]
    pub appset_pools: usize,
    /// Folder for the benchmark's fleet (removed afterwards).
    #[arg(long, default_value = "/var/lib/yurt/bench-manager")]
    pub bench_dir: PathBuf,
}

fn pool_name(i: usize) -> String {
    format!("bench-{i:04}")
}

/// (resident MiB, CPU seconds) of a process.
pub(crate) fn usage(pid: i32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((rss_kib / 1024.0, ticks / 100.0))
}

/// Runs creations with at most `parallel` in flight.
async fn bounded<F, Fut>(count: usize, parallel: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut stream = futures_util::stream::iter(0..count)
        .map(f)
        .buffer_unordered(parallel);
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

/// Runs `yurt bench manager`.
pub async fn run(machine: &MachineConfig, args: BenchManagerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.pools > 0 && args.nodes_per_pool > 0,
        "--pools and --nodes-per-pool must be positive"
    );
    anyhow::ensure!(
        args.appset_pools <= args.pools,
        "--appset-pools cannot exceed --pools"
    );
    let reporter: Arc<dyn Reporter> = SpinnerReporter::for_stderr();
    super::bench::on_one_node_fleet(
        machine,
        &args.bench_dir.join("fleet"),
        "a one-node fleet with the manager",
        reporter.as_ref(),
        async |fleet| measure(fleet, &args, reporter.as_ref()).await,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    fleet: &yurt_cluster::Fleet,
    args: &BenchManagerArgs,
    reporter: &dyn Reporter,
) -> anyhow::Result<()> {
    let client = fleet.client().await?;
    let pid_file = fleet.paths().host(&HostId::Cloud).pid_file("yurt-manager");
    let manager =
        yurt_cluster::process::PidRecord::read(&pid_file).context("the manager's pid file")?;
    let (rss_start, cpu_start) = usage(manager.pid).context("the manager's /proc entry")?;
    let np = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps.openyurt.io", "v1beta2", "NodePool"),
        "nodepools",
    );
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &np);
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();

    let step = Step::start(
        reporter,
        format!(
            "{} NodePools and {} Node objects",
            args.pools,
            args.pools * args.nodes_per_pool
        ),
    );
    bounded(args.pools, 16, |i| {
        let pools = pools.clone();
        async move {
            let labels = if i < args.appset_pools {
                json!({"bench.openyurt.io/appset": "yes"})
            } else {
                json!({})
            };
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
                "metadata": {"name": pool_name(i), "labels": labels},
                "spec": {"type": "Edge"},
            }))?;
            match pools.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    let total = args.pools * args.nodes_per_pool;
    bounded(total, 16, |i| {
        let nodes = nodes.clone();
        let pool = pool_name(i / args.nodes_per_pool);
        async move {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("{pool}-n{:02}", i % args.nodes_per_pool), "labels": {"apps.openyurt.io/nodepool": pool}},
            }))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    step.finish();
    let setup = started.elapsed();

    // Let the manager catch up: every pool lists its nodes.
    let step = Step::start(
        reporter,
        "waiting for every pool's status to list its nodes",
    );
    let converge_begin = Instant::now();
    loop {
        let list = pools.list(&ListParams::default()).await?;
        let settled = list
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("bench-"))
            })
            .filter(|p| {
                p.data
                    .pointer("/status/nodes")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|n| n.len() == args.nodes_per_pool)
            })
            .count();
        step.detail(&format!("{settled}/{} pools", args.pools));
        if settled == args.pools {
            break;
        }
        anyhow::ensure!(
            converge_begin.elapsed() < Duration::from_secs(600),
            "only {settled} of {} pools list their nodes after 600 s",
            args.pools
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged = started.elapsed();
    step.finish();

    // From here on kube-controller-manager is marking the kubelet-less nodes NotReady and
    // tainting them (it starts after its grace period and, at 10,000 nodes, takes longer
    // than the rest of the run): the changes below are timed under that load, which no
    // fleet of live kubelets produces.
    // Pool label + taint change → every node of the pool carries both.
    let step = Step::start(
        reporter,
        format!("{} pool label and taint changes", args.changes),
    );
    let mut latencies = Vec::new();
    let mut watch_errors = 0usize;
    for c in 0..args.changes {
        let pool = pool_name((c * 7919) % args.pools);
        let value = format!("v{c}");
        let carries = |node: &Node| {
            let labelled = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("bench.openyurt.io/change"))
                == Some(&value);
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| {
                    t.iter().any(|t| {
                        t.key == "bench.openyurt.io/change"
                            && t.value.as_deref() == Some(value.as_str())
                    })
                });
            labelled && tainted
        };
        let mut events = Box::pin(
            watcher(
                nodes.clone(),
                watcher::Config::default().labels(&format!("apps.openyurt.io/nodepool={pool}")),
            )
            .default_backoff(),
        );
        // The watch is established (its initial list done) before the change is made,
        // so the time measured is the manager's, not the watch's start-up.
        let init_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(init_deadline, events.next()).await {
                Ok(Some(Ok(watcher::Event::InitDone))) => break,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) => watch_errors += 1,
                Ok(None) | Err(_) => {
                    anyhow::bail!("pool {pool}: the node watch did not start within 120 s")
                }
            }
        }
        let begin = Instant::now();
        pools
            .patch(
                &pool,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {
                    "labels": {"bench.openyurt.io/change": value},
                    "taints": [{"key": "bench.openyurt.io/change", "value": value, "effect": "PreferNoSchedule"}],
                }})),
            )
            .await?;
        let mut done = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while done.len() < args.nodes_per_pool {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)))) => {
                    if carries(&node) {
                        done.insert(node.metadata.name.clone().unwrap_or_default());
                    }
                }
                Ok(Some(Ok(_))) => {}
                // The watcher retries on its own; count the hiccup and keep going.
                Ok(Some(Err(_))) => watch_errors += 1,
                Ok(None) | Err(_) => anyhow::bail!(
                    "pool {pool}: only {} of {} nodes got the change within 120 s",
                    done.len(),
                    args.nodes_per_pool
                ),
            }
        }
        latencies.push(begin.elapsed());
    }
    latencies.sort();
    step.finish();

    // A YurtAppSet across many pools: create → every workload created.
    let step = Step::start(
        reporter,
        format!("a YurtAppSet across {} pools", args.appset_pools),
    );
    let yas_res = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps.openyurt.io", "v1beta1", "YurtAppSet"),
        "yurtappsets",
    );
    let sets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &yas_res);
    let yas: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps.openyurt.io/v1beta1", "kind": "YurtAppSet",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "nodepoolSelector": {"matchLabels": {"bench.openyurt.io/appset": "yes"}},
            "workload": {"workloadTemplate": {"deploymentTemplate": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "bench"}},
                    "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [{"name": "c", "image": "yurt.local/busybox:1"}]}},
                },
            }}},
        },
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let begin = Instant::now();
    sets.create(&PostParams::default(), &yas).await?;
    let appset_time = loop {
        let n = deployments
            .list(&ListParams::default().labels("apps.openyurt.io/ref-yurtappset=bench"))
            .await?
            .items
            .len();
        if n >= args.appset_pools {
            break begin.elapsed();
        }
        anyhow::ensure!(
            begin.elapsed() < Duration::from_secs(300),
            "only {n} of {} workloads after 300 s",
            args.appset_pools
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    step.finish();
    let (rss_end, cpu_end) = usage(manager.pid).context("the manager's /proc entry")?;
    let wall = started.elapsed().as_secs_f64();

    println!(
        "\nyurt bench manager ({} pools x {} nodes, plain Node objects)",
        args.pools, args.nodes_per_pool
    );
    println!("| measure | yurt manager | note |");
    println!("|---|---:|---|");
    println!(
        "| creating {} pools + {} nodes through the API | {:.1} s | API server bound |",
        args.pools,
        total,
        setup.as_secs_f64()
    );
    println!(
        "| ... until every pool's status lists its nodes | {:.1} s | |",
        converged.as_secs_f64()
    );
    println!(
        "| pool label+taint change -> all {} nodes carry it: p50 / p99 ({} changes right after creation, overlapping kube-controller-manager's NotReady marking of the kubelet-less nodes) | {:.0} ms / {:.0} ms | {watch_errors} watch retries |",
        args.nodes_per_pool,
        args.changes,
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0
    );
    println!(
        "| YurtAppSet across {} pools: create -> all workloads created | {:.2} s | |",
        args.appset_pools,
        appset_time.as_secs_f64()
    );
    println!("| manager RSS at start / at this size | {rss_start:.1} MiB / {rss_end:.1} MiB | |");
    println!(
        "| manager CPU during the run | {:.1} s over {:.0} s ({:.0}% of one core) | |",
        cpu_end - cpu_start,
        wall,
        100.0 * (cpu_end - cpu_start) / wall
    );
    Ok(())
}
