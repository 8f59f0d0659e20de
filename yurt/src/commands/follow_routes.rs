//! `yurt fleet follow-routes`: the fleet's route controller, which `yurt fleet
//! add-host` starts on the router (see `yurt_cluster::fleet::routes`). It serves
//! `/healthz`, `/readyz` (the last round succeeded) and `/metrics` on the router's
//! loopback only: nothing outside the router's namespace reaches it, and it holds no
//! secret (its rounds are in its log).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yurt_cluster::fleet::routes::{self, RouteChange};
use yurt_cluster::paths::FleetPaths;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

struct Metrics {
    rounds: Family<ResultLabel, Counter>,
    round_seconds: Histogram,
    changes: Family<ActionLabel, Counter>,
    routed_hosts: Gauge,
    refused_hosts: Gauge,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rounds: Family::default(),
            round_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            changes: Family::default(),
            routed_hosts: Gauge::default(),
            refused_hosts: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("yurt_route_controller");
        r.register("rounds", "Reconcile rounds, by result", m.rounds.clone());
        r.register(
            "round_seconds",
            "How long a reconcile round took",
            m.round_seconds.clone(),
        );
        r.register(
            "route_changes",
            "Pod routes added or deleted",
            m.changes.clone(),
        );
        r.register(
            "routed_hosts",
            "Added hosts whose pod CIDR is routed",
            m.routed_hosts.clone(),
        );
        r.register(
            "refused_hosts",
            "Added hosts whose Node's pod CIDR is refused",
            m.refused_hosts.clone(),
        );
        m
    }
}

/// Runs rounds every `period` until SIGTERM or SIGINT.
pub async fn run(
    data_dir: &Path,
    kubeconfig: &Path,
    period: Duration,
    admin_address: SocketAddr,
) -> anyhow::Result<()> {
    let client = yurt_cluster::fleet::admin_client(kubeconfig).await?;
    let paths = FleetPaths::new(data_dir);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let token = CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    let admin = {
        let ready = ready.clone();
        yurt_core::admin::Admin::new(Arc::new(registry)).ready(move || {
            if ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the last round failed (see the log)".into())
            }
        })
    };
    let listener = tokio::net::TcpListener::bind(admin_address).await?;
    let server = tokio::spawn(yurt_core::admin::serve(
        listener,
        admin.router(),
        token.clone(),
    ));
    tracing::info!(period = ?period, "following the pod CIDRs of added hosts");
    let mut refused_before: Vec<String> = Vec::new();
    let mut round_number: u64 = 0;
    while !token.is_cancelled() {
        round_number += 1;
        let started = Instant::now();
        let span = tracing::info_span!("reconcile", round = round_number);
        let outcome = routes::reconcile(&paths, &client)
            .instrument(span.clone())
            .await;
        metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        let _enter = span.enter();
        match outcome {
            Ok(round) if round.skipped => {
                metrics
                    .rounds
                    .get_or_create(&ResultLabel { result: "skipped" })
                    .inc();
                tracing::debug!("hosts are being changed: round skipped");
            }
            Ok(round) => {
                metrics
                    .rounds
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                for change in &round.changes {
                    let (action, r) = match change {
                        RouteChange::Added(r) => ("add", r),
                        RouteChange::Deleted(r) => ("delete", r),
                    };
                    metrics.changes.get_or_create(&ActionLabel { action }).inc();
                    tracing::info!(action, netns = %r.netns, dst = %r.dst, via = %r.via, "pod route");
                }
                // Said once per change of mind, not every round.
                if round.refused != refused_before {
                    for why in &round.refused {
                        tracing::warn!("not routed: {why}");
                    }
                    refused_before = round.refused.clone();
                }
                metrics
                    .routed_hosts
                    .set(i64::try_from(round.routed_hosts).unwrap_or(i64::MAX));
                metrics
                    .refused_hosts
                    .set(i64::try_from(round.refused.len()).unwrap_or(i64::MAX));
                ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                metrics
                    .rounds
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::warn!("round failed, routes left as they are: {e}");
                ready.store(false, Ordering::Relaxed);
            }
        }
        drop(_enter);
        tokio::select! {
            () = token.cancelled() => {}
            () = tokio::time::sleep(period) => {}
        }
    }
    server.await??;
    Ok(())
}
