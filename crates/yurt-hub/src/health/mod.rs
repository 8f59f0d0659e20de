//! Cloud health, as OpenYurt judges it: the hub renews the node's Lease itself, every
//! interval, against one server after another (`lease.rs`: one PUT per renewal, from the
//! copy the server last returned, as kubelet's lease controller does). A server is unhealthy after one failed
//! probe (all retries failed) and healthy again after `healthy_threshold` successes in a
//! row (one at start). A request that cannot reach its server at all (no connection, no
//! answer in time) marks the server unhealthy at once, so the next requests are answered
//! from the cache without waiting. A request that fails on a live connection (a reset
//! stream, a connection dropped after a missed HTTP/2 ping on a loaded machine) only
//! makes the prober check now: one hiccup must not take the whole node offline (writes
//! refused, kubelet's authorization checks failing) until two probes have passed.
//!
//! kubelet's own lease traffic is answered locally; if kubelet stays silent longer than
//! the grace period, the hub stops renewing the lease for it (so a dead kubelet still
//! makes the node NotReady) and only checks that the server answers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::HealthConfig;
use crate::metrics::{HubMetrics, ServerLabel};
use crate::upstream::Backend;

mod lease;

use lease::LeaseRenewer;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

struct ServerState {
    url: String,
    healthy: AtomicBool,
    streak: AtomicU32,
}

/// Health of every API server.
pub struct Health {
    servers: Vec<ServerState>,
    any: watch::Sender<bool>,
    kubelet_seen: Mutex<Option<Instant>>,
    started: Instant,
    metrics: HubMetrics,
    probe_now: Notify,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("any", &*self.any.borrow())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Health for `urls`, all unknown (unhealthy) until probed.
    pub fn new(urls: &[String], metrics: HubMetrics) -> Self {
        Self {
            servers: urls
                .iter()
                .map(|u| ServerState {
                    url: u.clone(),
                    healthy: AtomicBool::new(false),
                    streak: AtomicU32::new(0),
                })
                .collect(),
            any: watch::channel(false).0,
            kubelet_seen: Mutex::new(None),
            started: Instant::now(),
            metrics,
            probe_now: Notify::new(),
        }
    }

    /// Whether server `index` is healthy.
    pub fn is_healthy(&self, index: usize) -> bool {
        self.servers
            .get(index)
            .is_some_and(|s| s.healthy.load(Ordering::Acquire))
    }

    /// Whether any server is healthy (the hub is online).
    pub fn online(&self) -> bool {
        *self.any.borrow()
    }

    /// Follows [`Health::online`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.any.subscribe()
    }

    /// Sets server `index`'s health as a probe would (tests of what follows it).
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, index: usize, healthy: bool) {
        self.set(index, healthy);
    }

    fn set(&self, index: usize, healthy: bool) {
        if let Some(s) = self.servers.get(index) {
            let was = s.healthy.swap(healthy, Ordering::AcqRel);
            if was != healthy {
                tracing::info!(server = %s.url, healthy, "server health changed");
            }
            self.metrics
                .server_healthy
                .get_or_create(&ServerLabel {
                    server: s.url.clone(),
                })
                .set(i64::from(healthy));
        }
        let any = self
            .servers
            .iter()
            .any(|s| s.healthy.load(Ordering::Acquire));
        self.any.send_if_modified(|v| {
            let changed = *v != any;
            *v = any;
            changed
        });
    }

    /// A request to server `index` failed at the transport level: treat it as unhealthy
    /// until the prober sees it healthy again.
    pub fn transport_failed(&self, index: usize) {
        if let Some(s) = self.servers.get(index) {
            s.streak.store(0, Ordering::Release);
        }
        self.set(index, false);
    }

    /// A request to a server failed on a live connection: probe every server now
    /// instead of at the next interval.
    pub fn request_failed(&self) {
        self.probe_now.notify_one();
    }

    fn probe_result(&self, index: usize, ok: bool, threshold: u32) {
        let Some(s) = self.servers.get(index) else {
            return;
        };
        if ok {
            let streak = s.streak.fetch_add(1, Ordering::AcqRel) + 1;
            if streak >= threshold {
                self.set(index, true);
            }
        } else {
            s.streak.store(0, Ordering::Release);
            self.set(index, false);
        }
    }

    /// kubelet touched its lease through the hub.
    pub fn kubelet_seen(&self) {
        if let Ok(mut t) = self.kubelet_seen.lock() {
            *t = Some(Instant::now());
        }
    }

    /// Whether kubelet has talked to the hub within `grace` (counting from hub start).
    fn kubelet_alive(&self, grace: Duration) -> bool {
        let last = self
            .kubelet_seen
            .lock()
            .ok()
            .and_then(|t| *t)
            .unwrap_or(self.started);
        last.elapsed() <= grace
    }
}

async fn server_answers(client: &kube::Client) -> Result<(), kube::Error> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(drop)
}

/// One probe of the server behind `client` (at `url`): up to `retries` attempts, each
/// bounded by `timeout`; a renewal of the node's Lease if `renew`, else a check that the
/// server answers.
async fn probe(
    client: &kube::Client,
    url: &http::Uri,
    lease: &mut LeaseRenewer,
    cfg: &HealthConfig,
    renew: bool,
) -> bool {
    for attempt in 0..cfg.retries.max(1) {
        let fut = async {
            if renew {
                lease.renew(client).await
            } else {
                server_answers(client).await
            }
        };
        match tokio::time::timeout(cfg.timeout, fut).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::debug!(server = %url, attempt, error = %e, "health probe failed")
            }
            Err(_) => tracing::debug!(server = %url, attempt, "health probe timed out"),
        }
    }
    false
}

/// One server as the prober sees it.
struct ProbeTarget {
    /// Its index in [`Health`].
    index: usize,
    url: http::Uri,
    /// A typed client authenticating as the node.
    client: kube::Client,
}

/// Probes once at start (a single success makes a server healthy), then every interval.
pub async fn run(
    health: std::sync::Arc<Health>,
    backends: Vec<std::sync::Arc<Backend>>,
    node: String,
    cfg: HealthConfig,
    shutdown: CancellationToken,
) {
    let targets = backends
        .iter()
        .map(|b| ProbeTarget {
            index: b.index,
            url: b.url.clone(),
            client: b.kube.clone(),
        })
        .collect();
    run_probes(&health, targets, &node, cfg, &shutdown).await;
}

async fn run_probes(
    health: &Health,
    targets: Vec<ProbeTarget>,
    node: &str,
    cfg: HealthConfig,
    shutdown: &CancellationToken,
) {
    // One Lease for every server: they share one etcd.
    let mut lease = LeaseRenewer::new(node, cfg.kubelet_grace);
    let mut first = true;
    loop {
        for t in &targets {
            let renew = health.kubelet_alive(cfg.kubelet_grace);
            let ok = probe(&t.client, &t.url, &mut lease, &cfg, renew).await;
            let threshold = if first { 1 } else { cfg.healthy_threshold };
            health.probe_result(t.index, ok, threshold);
        }
        first = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(cfg.interval) => {}
            () = health.probe_now.notified() => {
                tracing::debug!("a request failed: probing now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_request_on_a_live_connection_asks_for_a_probe_and_keeps_health() {
        let h = Health::new(&["https://a".into()], HubMetrics::default());
        h.probe_result(0, true, 1);
        h.request_failed();
        assert!(h.is_healthy(0) && h.online(), "one hiccup is not an outage");
        tokio::time::timeout(Duration::from_secs(1), h.probe_now.notified())
            .await
            .expect("the prober is woken");
        h.transport_failed(0);
        assert!(
            !h.is_healthy(0),
            "an unreachable server is unhealthy at once"
        );
    }

    #[test]
    fn one_failure_makes_unhealthy_and_two_successes_make_healthy() {
        let h = Health::new(
            &["https://a".into(), "https://b".into()],
            HubMetrics::default(),
        );
        let rx = h.subscribe();
        assert!(!h.online());
        h.probe_result(0, true, 1);
        assert!(h.is_healthy(0) && h.online() && *rx.borrow());
        h.probe_result(0, false, 2);
        assert!(!h.is_healthy(0) && !h.online());
        h.probe_result(0, true, 2);
        assert!(
            !h.is_healthy(0),
            "one success is not enough after a failure"
        );
        h.probe_result(0, true, 2);
        assert!(h.is_healthy(0));
        h.transport_failed(0);
        assert!(
            !h.online(),
            "a transport failure takes the server out at once"
        );
        h.probe_result(1, true, 1);
        assert!(h.online() && !h.is_healthy(0) && h.is_healthy(1));
    }

    #[test]
    fn kubelet_silence_is_measured_from_start_or_last_touch() {
        let h = Health::new(&[], HubMetrics::default());
        assert!(h.kubelet_alive(Duration::from_secs(40)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!h.kubelet_alive(Duration::from_millis(1)));
        h.kubelet_seen();
        assert!(h.kubelet_alive(Duration::from_secs(1)));
    }

    /// The prober's loop keeps the Lease across rounds and servers: each round is one
    /// PUT per server, the Lease is read once. Rounds after the first are asked for
    /// through `probe_now` (the interval is an hour), so the test knows how many ran.
    #[tokio::test]
    async fn every_round_renews_by_put_and_reads_the_lease_once() {
        use http::Method;
        let fake = lease::fake::FakeLeases::with_lease("edge-a1");
        let targets = (0..2)
            .map(|index| ProbeTarget {
                index,
                url: format!("https://api-{index}.test:6443")
                    .parse()
                    .expect("url"),
                client: fake.client(),
            })
            .collect();
        let h = Health::new(
            &["https://a".into(), "https://b".into()],
            HubMetrics::default(),
        );
        let cfg = HealthConfig {
            interval: Duration::from_secs(3600),
            ..HealthConfig::default()
        };
        let shutdown = CancellationToken::new();
        let prober = run_probes(&h, targets, "edge-a1", cfg, &shutdown);
        tokio::pin!(prober);
        let rounds = async {
            for round in 1..=3 {
                fake.wait_for_puts(2 * round).await;
                if round < 3 {
                    h.request_failed();
                }
            }
        };
        tokio::select! {
            () = &mut prober => panic!("the prober ended on its own"),
            () = rounds => {}
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), prober)
            .await
            .expect("the prober stops on shutdown");
        assert!(h.is_healthy(0) && h.is_healthy(1));
        assert_eq!(
            (fake.count(&Method::GET), fake.count(&Method::PUT)),
            (1, 6),
            "3 rounds of 2 servers: 6 PUTs, 1 GET"
        );
    }
}
