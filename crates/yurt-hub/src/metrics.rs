//! The hub's Prometheus metrics, registered under `yurt_hub_` in the registry `main`
//! creates.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-server metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServerLabel {
    /// The API server URL.
    pub server: String,
}

/// Labels of request counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// How the request was answered: `upstream`, `cache`, `local`, `error`.
    pub served_by: &'static str,
    /// The verb.
    pub verb: &'static str,
}

/// The API verbs whose request counts are there from the start ([`HubMetrics::register`]).
pub const REQUEST_VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Labels of request latency histograms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServedByLabel {
    /// `upstream` (the API server answered), `cache` (answered locally), `refused`
    /// (429 at the door).
    pub served_by: &'static str,
}

fn request_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Time from a request's arrival to its response headers, by who answered.
#[derive(Debug, Clone)]
pub struct RequestDurations(pub Family<ServedByLabel, Histogram, fn() -> Histogram>);

impl Default for RequestDurations {
    fn default() -> Self {
        Self(Family::new_with_constructor(request_histogram))
    }
}

impl RequestDurations {
    /// Records one request.
    pub fn observe(&self, served_by: &'static str, seconds: f64) {
        self.0
            .get_or_create(&ServedByLabel { served_by })
            .observe(seconds);
    }
}

/// Labels of cache write error counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why: `disk_full`, `io`, `corrupt` (the database file), `other`, `panic` (an item
    /// skipped), `dropped` (a write given up: the queue stayed full, or too many writes
    /// waited for the disk).
    pub reason: String,
}

/// Every reason a cache write fails for ([`ReasonLabel`]).
pub const CACHE_WRITE_ERROR_REASONS: &[&str] =
    &["disk_full", "io", "corrupt", "other", "panic", "dropped"];

/// How long cache writers waited for room in the write queue.
#[derive(Debug, Clone)]
pub struct WriteWait(pub Histogram);

impl Default for WriteWait {
    fn default() -> Self {
        // 10 µs to about 2.6 s (the longest wait is 1 s by default).
        Self(Histogram::new(exponential_buckets(0.00001, 4.0, 10)))
    }
}

/// Every metric of the hub.
#[derive(Debug, Default, Clone)]
pub struct HubMetrics {
    /// 1 when the server is healthy, 0 otherwise.
    pub server_healthy: Family<ServerLabel, Gauge>,
    /// Requests, by who answered them and verb.
    pub requests: Family<RequestLabels, Counter>,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// Time to response headers, by who answered.
    pub request_duration: RequestDurations,
    /// Objects written to the cache.
    pub cache_writes: Counter,
    /// Objects not written to the cache because it already held them unchanged (the same
    /// resourceVersion, format and bytes: kubelet reading its Node again).
    pub cache_unchanged_skipped: Counter,
    /// Cache transactions that failed, by reason.
    pub cache_write_errors: Family<ReasonLabel, Counter>,
    /// Cache entries found corrupt (checksum mismatch or undecodable) and dropped.
    pub cache_corrupt_entries: Counter,
    /// Times the cache database was unreadable at start and was set aside.
    pub cache_resets: Counter,
    /// Objects in the cache.
    pub cache_objects: Gauge,
    /// Writes waiting in the cache's write queue.
    pub cache_write_queue_depth: Gauge,
    /// Time a cache write waited for room in the queue.
    pub cache_write_wait: WriteWait,
    /// Deletes held in memory because the disk refused them or the queue was full.
    pub cache_pending_deletes: Gauge,
    /// Upserts and lists a full disk refused, held for a retry.
    pub cache_pending_writes: Gauge,
    /// Markers of list shapes made incomplete by dropped writes.
    pub cache_incomplete_shapes: Gauge,
    /// Upstream watches shared by the node's components, open now.
    pub shared_watch_upstreams: Gauge,
    /// Client watches served from shared upstream watches now.
    pub shared_watch_subscribers: Gauge,
    /// Client watches that took an upstream watch of their own, by why (`credentials`,
    /// `path`, `query`, `resource_version`, `selector`, `too_old`, `race`, `request`, `server`).
    pub shared_watch_fallbacks: Family<ReasonLabel, Counter>,
    /// Clients of shared watches ended because they fell behind.
    pub shared_watch_lagged: Counter,
    /// Shared upstream watches opened again after they ended.
    pub shared_watch_reopens: Counter,
}

impl HubMetrics {
    /// Registers every metric in `registry` (prefix it with `yurt_hub` via a sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "server_healthy",
            "Whether an API server is healthy (1) or not (0)",
            self.server_healthy.clone(),
        );
        // Every API verb's count by upstream, cache and error exists from the start, at
        // zero: a hub just started that has sent no LIST upstream yet says 0, not nothing
        // (a reader cannot tell nothing from a failed scrape).
        for served_by in ["upstream", "cache", "error"] {
            for verb in REQUEST_VERBS {
                drop(
                    self.requests
                        .get_or_create(&RequestLabels { served_by, verb }),
                );
            }
        }
        registry.register(
            "requests",
            "Requests by who answered them and verb",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by who answered",
            self.request_duration.0.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight",
            self.in_flight.clone(),
        );
        registry.register(
            "cache_writes",
            "Objects written to the cache",
            self.cache_writes.clone(),
        );
        registry.register(
            "cache_unchanged_skipped",
            "Objects not written to the cache because it already held them unchanged",
            self.cache_unchanged_skipped.clone(),
        );
        registry.register(
            "cache_write_errors",
            "Cache transactions that failed, by reason",
            self.cache_write_errors.clone(),
        );
        registry.register(
            "cache_corrupt_entries",
            "Cache entries found corrupt and dropped",
            self.cache_corrupt_entries.clone(),
        );
        registry.register(
            "cache_resets",
            "Unreadable cache databases set aside at start",
            self.cache_resets.clone(),
        );
        registry.register(
            "cache_objects",
            "Objects in the cache",
            self.cache_objects.clone(),
        );
        registry.register(
            "cache_write_queue_depth",
            "Writes waiting in the cache's write queue",
            self.cache_write_queue_depth.clone(),
        );
        registry.register(
            "cache_write_wait_seconds",
            "Time a cache write waited for room in the write queue",
            self.cache_write_wait.0.clone(),
        );
        registry.register(
            "cache_pending_deletes",
            "Deletes held in memory until the cache disk takes them",
            self.cache_pending_deletes.clone(),
        );
        registry.register(
            "cache_pending_writes",
            "Writes a full cache disk refused, held for a retry",
            self.cache_pending_writes.clone(),
        );
        registry.register(
            "cache_incomplete_shapes",
            "List shapes made incomplete by dropped cache writes (not served offline until relisted)",
            self.cache_incomplete_shapes.clone(),
        );
        registry.register(
            "shared_watch_upstreams",
            "Upstream watches shared by the node's components, open now",
            self.shared_watch_upstreams.clone(),
        );
        registry.register(
            "shared_watch_subscribers",
            "Client watches served from shared upstream watches now",
            self.shared_watch_subscribers.clone(),
        );
        registry.register(
            "shared_watch_fallbacks",
            "Client watches that took an upstream watch of their own, by why",
            self.shared_watch_fallbacks.clone(),
        );
        registry.register(
            "shared_watch_lagged",
            "Clients of shared watches ended because they fell behind",
            self.shared_watch_lagged.clone(),
        );
        registry.register(
            "shared_watch_reopens",
            "Shared upstream watches opened again after they ended",
            self.shared_watch_reopens.clone(),
        );
    }

    /// Counts a watch that could not be served from a shared watch.
    pub fn shared_watch_fallback(&self, reason: &str) {
        self.shared_watch_fallbacks
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a request.
    pub fn request(&self, served_by: &'static str, verb: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { served_by, verb })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_exist_at_zero_before_any_request() {
        let metrics = HubMetrics::default();
        let mut registry = Registry::with_prefix("yurt_hub");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for served_by in ["upstream", "cache", "error"] {
            for verb in REQUEST_VERBS {
                let line = format!(
                    "yurt_hub_requests_total{{served_by=\"{served_by}\",verb=\"{verb}\"}} 0\n"
                );
                assert!(text.contains(&line), "{line} in {text}");
            }
        }
        metrics.request("upstream", "list");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("yurt_hub_requests_total{served_by=\"upstream\",verb=\"list\"} 1\n"));
    }
}
