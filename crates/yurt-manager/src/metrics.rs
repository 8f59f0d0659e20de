//! yurt-manager's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Every metric the manager exports (cheap to clone; clones share values).
#[derive(Clone, Debug, Default)]
pub struct ManagerMetrics {
    /// Successful reconciles per controller.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// Failed reconciles per controller.
    pub reconcile_errors: Family<ControllerLabel, Counter>,
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
