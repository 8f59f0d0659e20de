//! The manager's controllers and the `--controllers` selection (upstream's syntax:
//! `*` for all default controllers, `name` to add one, `-name` to remove one).

pub mod csrapprover;
pub mod daemonpodupdater;
pub mod nodepool;
pub mod podbinding;
pub mod servicetopology;
pub mod yurtappdaemon;
pub mod yurtappset;
pub mod yurtstaticset;

use std::collections::BTreeSet;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller;
use tokio_util::sync::CancellationToken;
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
    /// The hubs' pod-facing address, allowed in every node's serving certificate.
    pub hub_pod_address: std::net::IpAddr,
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
    (nodepool::NAME, |i, t| Box::pin(nodepool::run(i, t))),
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
        "podbinding" | "pod-binding-controller" | "autonomy" => Some(podbinding::NAME),
        "servicetopology"
        | "service-topology-endpoints-controller"
        | "service-topology-endpointslice-controller" => Some(servicetopology::NAME),
        "csrapprover" | "csr-approver-controller" => Some(csrapprover::NAME),
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
