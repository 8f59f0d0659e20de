//! The servicetopology controller (reference/openyurt.md §5.2): the hub filters a
//! Service's endpoints by its `openyurt.io/topologyKeys` annotation and by pool
//! membership, but an edge client only re-receives endpoints when they change. When a
//! Service's topology annotation changes, or a pool's members change, this controller
//! bumps `openyurt.io/update-trigger` on the affected Endpoints and EndpointSlices so
//! every edge watch gets a MODIFIED event and the hub filters it afresh.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use yurt_api::apps::v1beta2::NodePool;
use yurt_api::labels::{TOPOLOGY_KEYS, UPDATE_TRIGGER};

use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "servicetopology";

/// Topology keys that depend on pool membership.
fn pool_scoped(keys: &str) -> bool {
    keys.split(',')
        .map(str::trim)
        .any(|k| k == "openyurt.io/nodepool" || k == "kubernetes.io/zone")
}

fn trigger_patch() -> Patch<serde_json::Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Patch::Merge(json!({"metadata": {"annotations": {UPDATE_TRIGGER: now.to_string()}}}))
}

/// EndpointSlices: v1 where served (1.21+), v1beta1 on 1.20.
async fn slice_api(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(r) if r.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
        "endpointslices",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Bumps the trigger on a Service's Endpoints and EndpointSlices.
async fn touch(client: &kube::Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    match endpoints
        .patch(name, &PatchParams::default(), &trigger_patch())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e),
    }
    let slices = slice_api(client, namespace).await;
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await?;
    for slice in list.items {
        if let Some(slice_name) = slice.metadata.name.as_deref() {
            slices
                .patch(slice_name, &PatchParams::default(), &trigger_patch())
                .await?;
        }
    }
    Ok(())
}

enum Event {
    Service(Service),
    Pool(NodePool),
}

/// Runs until `shutdown`.
pub async fn run(client: kube::Client, metrics: ManagerMetrics, shutdown: CancellationToken) {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .filter_map(|r| async move { r.ok().map(Event::Service) });
    let pools = watcher(
        Api::<NodePool>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects()
    .filter_map(|r| async move { r.ok().map(Event::Pool) });
    let mut events = Box::pin(futures_util::stream::select(services, pools));
    // What was last seen: a Service's topology keys, a pool's members. First sightings
    // (start-up) trigger nothing.
    let mut keys: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        let mut to_touch: Vec<(String, String)> = Vec::new();
        match event {
            Event::Service(svc) => {
                let id = (
                    svc.metadata.namespace.clone().unwrap_or_default(),
                    svc.metadata.name.clone().unwrap_or_default(),
                );
                let now = svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TOPOLOGY_KEYS))
                    .cloned();
                match keys.insert(id.clone(), now.clone()) {
                    Some(before) if before != now => to_touch.push(id),
                    _ => {}
                }
            }
            Event::Pool(pool) => {
                let name = pool.metadata.name.clone().unwrap_or_default();
                let now = pool
                    .status
                    .as_ref()
                    .and_then(|s| s.nodes.clone())
                    .unwrap_or_default();
                if members
                    .insert(name, now.clone())
                    .is_some_and(|before| before != now)
                {
                    to_touch.extend(
                        keys.iter()
                            .filter(|(_, k)| k.as_deref().is_some_and(pool_scoped))
                            .map(|(id, _)| id.clone()),
                    );
                }
            }
        }
        for (namespace, name) in to_touch {
            let started = Instant::now();
            let span = super::reconcile_span(NAME, &namespace, &name);
            let mut attempt = 0;
            async {
                loop {
                    match touch(&client, &namespace, &name).await {
                        Ok(()) => {
                            metrics.reconciled(NAME);
                            tracing::info!(
                                service = name,
                                namespace,
                                "endpoints re-sent to edge clients"
                            );
                            break;
                        }
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            tracing::debug!(service = name, error = %e, "update trigger failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => {
                            metrics.reconcile_failed(NAME);
                            tracing::warn!(service = name, namespace, error = %e, "update trigger failed");
                            break;
                        }
                    }
                }
            }
            .instrument(span)
            .await;
            metrics.reconcile_took(NAME, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_zone_keys_depend_on_membership() {
        assert!(pool_scoped("openyurt.io/nodepool"));
        assert!(pool_scoped("kubernetes.io/hostname, kubernetes.io/zone"));
        assert!(!pool_scoped("kubernetes.io/hostname"));
        assert!(!pool_scoped(""));
    }
}
