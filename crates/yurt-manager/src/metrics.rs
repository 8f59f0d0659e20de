//! yurt-manager's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// Controller name.
    pub controller: String,
}

/// Labels of a webhook call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// Webhook name.
    pub webhook: String,
    /// `allowed` or `denied`.
    pub result: String,
}

fn reconcile_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// How long reconciles take, per controller.
#[derive(Clone, Debug)]
pub struct ReconcileDurations(pub Family<ControllerLabel, Histogram, fn() -> Histogram>);

impl Default for ReconcileDurations {
    fn default() -> Self {
        Self(Family::new_with_constructor(reconcile_histogram))
    }
}

/// Every metric the manager exports (cheap to clone; clones share values).
#[derive(Clone, Debug, Default)]
pub struct ManagerMetrics {
    /// Successful reconciles per controller.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// Failed reconciles per controller.
    pub reconcile_errors: Family<ControllerLabel, Counter>,
    /// Reconcile latency per controller, failed ones included.
    pub reconcile_duration: ReconcileDurations,
    /// Admission and conversion calls.
    pub webhook_calls: Family<WebhookLabels, Counter>,
    /// 1 while this replica leads.
    pub leader: Gauge,
}

impl ManagerMetrics {
    /// Registers every metric under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Reconciles that completed, per controller",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, per controller",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take, per controller (failed ones included)",
            self.reconcile_duration.0.clone(),
        );
        registry.register(
            "webhook_calls",
            "Webhook calls by webhook and result",
            self.webhook_calls.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            self.leader.clone(),
        );
    }

    /// Counts a completed reconcile.
    pub fn reconciled(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabel {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &str) {
        self.reconcile_errors
            .get_or_create(&ControllerLabel {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Records how long one reconcile of `controller` took.
    pub fn reconcile_took(&self, controller: &str, took: std::time::Duration) {
        self.reconcile_duration
            .0
            .get_or_create(&ControllerLabel {
                controller: controller.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a webhook call.
    pub fn webhook(&self, webhook: &str, allowed: bool) {
        self.webhook_calls
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                result: if allowed { "allowed" } else { "denied" }.to_owned(),
            })
            .inc();
    }
}
