//! The manager's controllers and the `--controllers` selection (upstream's syntax:
//! `*` for all default controllers, `name` to add one, `-name` to remove one).

pub mod csrapprover;
pub mod daemonpodupdater;
pub mod nodeconversion;
pub mod nodepool;
pub mod platformadmin;
pub mod podbinding;
pub mod servicetopology;
pub mod yurtappdaemon;
pub mod yurtappset;
pub mod yurtstaticset;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Resource;
use kube::runtime::controller::{self, Action};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use yurt_api::apps::v1beta2::NodePool;

use crate::feed::Feed;
use crate::metrics::ManagerMetrics;

/// What every controller may draw on: one client, the shared watches, the metrics.
#[derive(Clone)]
pub struct Inputs {
    /// The manager's client.
    pub client: kube::Client,
    /// Every Node, one watch for the whole manager.
    pub nodes: Feed<Node>,
    /// Every Pod, one watch for the whole manager.
    pub pods: Feed<Pod>,
    /// Every NodePool, one watch for the whole manager.
    pub pools: Feed<NodePool>,
    /// The image that runs YurtStaticSet upgrade workers.
    pub node_servant_image: String,
    /// The image of the device agent a PlatformAdmin deploys.
    pub iot_agent_image: String,
    /// The hubs' pod-facing address, allowed in every node's serving certificate.
    pub hub_pod_address: std::net::IpAddr,
    /// How long a NotReady node's pods still count as unavailable in rolling updates
    /// (`--unready-node-grace`).
    pub unready_node_grace: std::time::Duration,
    /// How long a conversion Job's servant may take (`--node-conversion-timeout`).
    pub node_conversion_timeout: std::time::Duration,
    /// The manager's metrics.
    pub metrics: ManagerMetrics,
}

type Run = fn(Inputs, CancellationToken) -> BoxFuture<'static, ()>;

/// Every controller this manager has, by `--controllers` name, and how to run it until
/// its token is cancelled.
pub const ALL: &[(&str, Run)] = &[
    (csrapprover::NAME, |i, t| Box::pin(csrapprover::run(i, t))),
    (daemonpodupdater::NAME, |i, t| {
        Box::pin(daemonpodupdater::run(i, t))
    }),
    (nodeconversion::NAME, |i, t| {
        Box::pin(nodeconversion::run(i, t))
    }),
    (nodepool::NAME, |i, t| Box::pin(nodepool::run(i, t))),
    (platformadmin::NAME, |i, t| {
        Box::pin(platformadmin::run(i, t))
    }),
    (podbinding::NAME, |i, t| Box::pin(podbinding::run(i, t))),
    (servicetopology::NAME, |i, t| {
        Box::pin(servicetopology::run(i.client, i.metrics, t))
    }),
    (yurtappdaemon::NAME, |i, t| {
        Box::pin(yurtappdaemon::run(i, t))
    }),
    (yurtappset::NAME, |i, t| Box::pin(yurtappset::run(i, t))),
    (yurtstaticset::NAME, |i, t| {
        Box::pin(yurtstaticset::run(i, t))
    }),
];

/// Every controller's name.
fn names() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|(name, _)| *name)
}

/// A controller's reconcile, wrapped by [`instrumented`].
pub(crate) type Reconcile<K, C, E> =
    Box<dyn FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>> + Send>;

/// The span of one reconcile of `controller` for the object `namespace`/`name`
/// (`namespace` is empty for cluster-scoped objects).
pub(crate) fn reconcile_span(controller: &'static str, namespace: &str, name: &str) -> Span {
    tracing::info_span!(
        "reconcile",
        controller,
        object.namespace = namespace,
        object.name = name,
    )
}

/// Wraps controller `name`'s reconcile so that every run of it happens inside a
/// `reconcile` span (`controller`, `object.namespace`, `object.name`) and its latency,
/// failures included, lands in `yurt_manager_reconcile_duration_seconds{controller}`.
/// Every controller passes its reconcile through here: spans and latencies are made in
/// one place.
pub(crate) fn instrumented<K, C, E, F, Fut>(
    name: &'static str,
    metrics: ManagerMetrics,
    mut reconcile: F,
) -> Reconcile<K, C, E>
where
    K: Resource + 'static,
    C: 'static,
    F: FnMut(Arc<K>, Arc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    Box::new(move |object, ctx| {
        let meta = object.meta();
        let span = reconcile_span(
            name,
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or(""),
        );
        let metrics = metrics.clone();
        let run = reconcile(object, ctx);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = run.await;
                metrics.reconcile_took(name, started.elapsed());
                result
            }
            .instrument(span),
        )
    })
}

/// Logs what a controller's run stream reports besides reconciles: a failing watch
/// (the watcher retries on its own, but a kind the manager cannot list or decode
/// would otherwise fail silently). Reconcile errors are logged by each error policy.
pub(crate) async fn log_stream_error<T, E1, E2>(
    name: &'static str,
    result: Result<T, controller::Error<E1, E2>>,
) where
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    match result {
        Err(controller::Error::QueueError(e)) => {
            tracing::warn!(controller = name, error = %e, "watch failed; retrying");
        }
        Err(controller::Error::RunnerError(e)) => {
            tracing::warn!(controller = name, error = %e, "controller runner failed");
        }
        _ => {}
    }
}

/// Upstream names and short aliases accepted for ours.
fn canonical(name: &str) -> Option<&'static str> {
    match name {
        "nodepool" | "nodepool-controller" => Some(nodepool::NAME),
        "yurtnodeconversion" | "yurt-node-conversion-controller" | "nodeconversion" => {
            Some(nodeconversion::NAME)
        }
        "podbinding" | "pod-binding-controller" | "autonomy" => Some(podbinding::NAME),
        "servicetopology"
        | "service-topology-endpoints-controller"
        | "service-topology-endpointslice-controller" => Some(servicetopology::NAME),
        "csrapprover" | "csr-approver-controller" => Some(csrapprover::NAME),
        "platformadmin" | "platform-admin-controller" | "platformadmin-controller" => {
            Some(platformadmin::NAME)
        }
        "daemonpodupdater" | "daemon-pod-updater-controller" => Some(daemonpodupdater::NAME),
        "yurtappset" | "yurt-app-set-controller" => Some(yurtappset::NAME),
        "yurtappdaemon" | "yurt-app-daemon-controller" => Some(yurtappdaemon::NAME),
        "yurtstaticset" | "yurt-static-set-controller" => Some(yurtstaticset::NAME),
        _ => None,
    }
}

/// The controllers a `--controllers` list enables.
///
/// # Errors
/// An unknown controller name.
pub fn select(list: &[String]) -> Result<BTreeSet<&'static str>, String> {
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            on.extend(names());
            continue;
        }
        let (negated, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        let name = canonical(name).ok_or_else(|| {
            format!(
                "unknown controller {name:?}; known: {}",
                names().collect::<Vec<_>>().join(", ")
            )
        })?;
        if negated {
            off.insert(name);
        } else {
            on.insert(name);
        }
    }
    Ok(on.difference(&off).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// Records every span's name and fields as `name{field=value ...}`.
    #[derive(Clone, Default)]
    struct SpanLog(Arc<Mutex<Vec<String>>>);

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: Context<'_, S>,
        ) {
            let mut fields = Fields(String::new());
            attrs.record(&mut fields);
            if let Ok(mut log) = self.0.lock() {
                log.push(format!("{}{{{} }}", attrs.metadata().name(), fields.0));
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed on purpose")]
    struct Failed;

    fn config_map(namespace: &str, name: &str) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(namespace.into());
        cm.metadata.name = Some(name.into());
        Arc::new(cm)
    }

    #[tokio::test]
    async fn every_reconcile_runs_in_a_span_and_its_latency_is_recorded() {
        let spans = SpanLog::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
        let metrics = ManagerMetrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(registry.sub_registry_with_prefix("yurt_manager"));
        let mut reconcile = instrumented(
            "test-controller",
            metrics.clone(),
            |cm: Arc<ConfigMap>, _ctx: Arc<()>| async move {
                let inside = Span::current().metadata().map(|m| m.name());
                assert_eq!(inside, Some("reconcile"), "the reconcile runs in its span");
                if cm.metadata.name.as_deref() == Some("bad") {
                    Err(Failed)
                } else {
                    Ok(Action::await_change())
                }
            },
        );
        let within = Duration::from_secs(5);
        let ok = tokio::time::timeout(within, reconcile(config_map("ns-a", "good"), Arc::new(())))
            .await
            .expect("reconciled within 5 s");
        assert!(ok.is_ok());
        let failed =
            tokio::time::timeout(within, reconcile(config_map("ns-b", "bad"), Arc::new(())))
                .await
                .expect("reconciled within 5 s");
        assert!(failed.is_err());

        let spans = spans.0.lock().expect("span log").clone();
        assert_eq!(
            spans,
            [
                "reconcile{ controller=test-controller object.namespace=ns-a object.name=good }",
                "reconcile{ controller=test-controller object.namespace=ns-b object.name=bad }",
            ]
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "yurt_manager_reconcile_duration_seconds_count{controller=\"test-controller\"} 2"
            ),
            "failed reconciles are timed too: {text}"
        );
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection_follows_upstream_syntax() {
        assert_eq!(select(&s(&["*"])).expect("ok").len(), ALL.len());
        let some = select(&s(&["*", "-nodepool"])).expect("ok");
        assert!(!some.contains(nodepool::NAME));
        assert!(some.contains(podbinding::NAME));
        let one = select(&s(&["nodepool-controller"])).expect("ok");
        assert_eq!(one.into_iter().collect::<Vec<_>>(), vec![nodepool::NAME]);
        assert!(select(&s(&["*", "bogus"])).is_err());
        assert!(select(&s(&[])).expect("ok").is_empty());
    }
}
