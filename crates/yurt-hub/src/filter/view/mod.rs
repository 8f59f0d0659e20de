//! What the filters know about the cluster: Service annotations, the Nodes of this
//! node's pool, this node's own pool and pod CIDRs, and the hub's own configuration
//! (`yurt-hub-cfg`). Kept current by watches the hub makes through itself (User-Agent
//! `yurthub`), so they are cached and survive offline restarts.
//!
//! The filters ask two things of Nodes: this node's pool and pod CIDRs, and whether
//! another node is in that pool (servicetopology). So the hub watches its own Node by
//! name, whole, and its pool's members: from the pool's NodePool `status.nodes`, as
//! OpenYurt's newer hubs do, or, where there is no NodePool, from its pool's Nodes by
//! label selector as metadata only (`PartialObjectMetadata`); never all Nodes, whose
//! cost grows with the square of the fleet. When its own Node moves to another pool
//! the pool watch moves with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::cache::Agents;

mod feed;
mod nodes;
mod objects;
mod pool;

/// The ConfigMap of hub settings.
pub const HUB_CONFIGMAP: &str = "yurt-hub-cfg";

/// How long reading `yurt-hub-cfg` may keep failing before the hub says so.
const CONFIG_FAILURE_WARN_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// The node label naming a node's pool.
pub const POOL_LABEL: &str = "apps.openyurt.io/nodepool";

/// Whose view it is.
#[derive(Debug, Clone)]
pub struct Scope {
    /// This node.
    pub node: String,
    /// This node's pool as the hub was told it (`--nodepool-name`): it wins over the
    /// node's label, as in the filters ([`crate::filter::builtin::NodeContext`]).
    pub configured_pool: Option<String>,
    /// The hub's namespace (where `yurt-hub-cfg` is).
    pub namespace: String,
}

/// The filters' view of the cluster.
#[derive(Debug, Default)]
pub struct ClusterView {
    services: RwLock<HashMap<(String, String), BTreeMap<String, String>>>,
    node_pools: RwLock<HashMap<String, String>>,
    node_pod_cidrs: RwLock<HashMap<String, Vec<ipnet::IpNet>>>,
    filter_clients: RwLock<HashMap<String, HashSet<String>>>,
    services_synced: AtomicBool,
}

impl ClusterView {
    /// Annotations of Service `namespace/name`, if known.
    pub fn service_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<BTreeMap<String, String>> {
        self.services
            .read()
            .ok()?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The pool of `node`, if known.
    pub fn pool_of(&self, node: &str) -> Option<String> {
        self.node_pools.read().ok()?.get(node).cloned()
    }

    /// The pod CIDRs of `node`, if known.
    pub fn pod_cidrs_of(&self, node: &str) -> Vec<ipnet::IpNet> {
        self.node_pod_cidrs
            .read()
            .ok()
            .and_then(|m| m.get(node).cloned())
            .unwrap_or_default()
    }

    /// Records a node's pod CIDRs (unparsable ones are skipped; none forgets the node).
    pub fn set_node_pod_cidrs(&self, node: &str, cidrs: &[String]) {
        let parsed: Vec<ipnet::IpNet> = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
        if let Ok(mut m) = self.node_pod_cidrs.write() {
            if parsed.is_empty() {
                m.remove(node);
            } else {
                m.insert(node.to_owned(), parsed);
            }
        }
    }

    /// Components added to `filter` by `yurt-hub-cfg`.
    pub fn extra_clients(&self, filter: &str, component: &str) -> bool {
        self.filter_clients
            .read()
            .map(|m| m.get(filter).is_some_and(|s| s.contains(component)))
            .unwrap_or(false)
    }

    /// Whether the Services have been listed once.
    pub fn services_synced(&self) -> bool {
        self.services_synced.load(Ordering::Acquire)
    }

    /// Records a Service (tests and watchers).
    pub fn set_service(&self, namespace: &str, name: &str, annotations: BTreeMap<String, String>) {
        if let Ok(mut s) = self.services.write() {
            s.insert((namespace.to_owned(), name.to_owned()), annotations);
        }
    }

    /// Records a node's pool (tests and watchers).
    pub fn set_node_pool(&self, node: &str, pool: Option<&str>) {
        if let Ok(mut n) = self.node_pools.write() {
            match pool {
                Some(p) => n.insert(node.to_owned(), p.to_owned()),
                None => n.remove(node),
            };
        }
    }

    /// Forgets every node's pool but `own`'s (which its own watch keeps), then records
    /// `members` (node → pool).
    fn replace_pool_members(&self, own: &str, members: HashMap<String, String>) {
        if let Ok(mut n) = self.node_pools.write() {
            n.retain(|name, _| name == own);
            n.extend(members.into_iter().filter(|(name, _)| name != own));
        }
    }

    fn apply_config(&self, data: &BTreeMap<String, String>, agents: &Agents) {
        agents.set_configured(data.get("cache_agents").map_or("", String::as_str));
        let mut clients = HashMap::new();
        for filter in super::FILTER_NAMES {
            if let Some(list) = data.get(*filter) {
                let set: HashSet<String> = list
                    .split(',')
                    .map(|c| c.trim().to_lowercase())
                    .filter(|c| !c.is_empty())
                    .collect();
                clients.insert((*filter).to_owned(), set);
            }
        }
        if let Ok(mut f) = self.filter_clients.write() {
            *f = clients;
        }
    }
}

/// Keeps `view` current until `shutdown`. `client` talks to the hub itself.
pub async fn run(
    view: std::sync::Arc<ClusterView>,
    agents: std::sync::Arc<Agents>,
    client: kube::Client,
    scope: Scope,
    shutdown: CancellationToken,
) {
    let Scope {
        node,
        configured_pool,
        namespace,
    } = scope;
    let services = {
        let view = view.clone();
        let services = feed::Collection {
            path: "/api/v1/services".into(),
            field_selector: None,
        };
        feed::follow(client.clone(), services, move |event| match event {
            feed::FeedEvent::Listed(items) => {
                let fresh = items
                    .iter()
                    .map(|s| {
                        let key = (s.info.namespace.clone(), s.info.name.clone());
                        (key, objects::annotations(s))
                    })
                    .collect();
                if let Ok(mut s) = view.services.write() {
                    *s = fresh;
                }
                view.services_synced.store(true, Ordering::Release);
            }
            feed::FeedEvent::Applied(s) => {
                view.set_service(&s.info.namespace, &s.info.name, objects::annotations(&s));
            }
            feed::FeedEvent::Deleted(s) => {
                if let Ok(mut m) = view.services.write() {
                    m.remove(&(s.info.namespace.clone(), s.info.name.clone()));
                }
            }
        })
    };
    // The pool whose Nodes the view holds: the configured one, else its own Node's label.
    let (pool_tx, pool_rx) = tokio::sync::watch::channel(configured_pool.clone());
    let own_node = nodes::watch_own_node(
        view.clone(),
        client.clone(),
        node.clone(),
        configured_pool.is_none().then_some(pool_tx),
    );
    let pool_members =
        pool::watch_pool_members(view.clone(), pool::PoolApis::new(&client), node, pool_rx);
    let config = {
        let view = view.clone();
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        // Selected by name: the hubs may read only this ConfigMap (RBAC `resourceNames`),
        // and the API server allows a list or watch under `resourceNames` only when the
        // request pins `metadata.name`.
        let selector = format!("metadata.name={HUB_CONFIGMAP}");
        async move {
            let cfg = watcher::Config::default().fields(&selector);
            // A lasting failure (a cluster whose RBAC does not let hubs read it: 403)
            // must not cost the API server a request per second from every hub.
            let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
            // A failure at start (the hub's own port not serving yet, or offline with
            // nothing cached) is normal; one that lasts is said once.
            let mut failing_since: Option<std::time::Instant> = None;
            let mut warned = false;
            loop {
                let event = stream.try_next().await;
                if event.is_ok() && failing_since.take().is_some() && warned {
                    tracing::info!("{HUB_CONFIGMAP} readable again");
                    warned = false;
                }
                match event {
                    Ok(Some(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))
                        if c.metadata.name.as_deref() == Some(HUB_CONFIGMAP) =>
                    {
                        view.apply_config(&c.data.clone().unwrap_or_default(), &agents);
                    }
                    Ok(Some(watcher::Event::Delete(c)))
                        if c.metadata.name.as_deref() == Some(HUB_CONFIGMAP) =>
                    {
                        view.apply_config(&BTreeMap::new(), &agents);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                        if !warned && since.elapsed() >= CONFIG_FAILURE_WARN_AFTER {
                            tracing::warn!(
                                error = %e,
                                namespace = %namespace,
                                "cannot read {HUB_CONFIGMAP}: cache agents and filters keep what they have until it can be read (retried with backoff)"
                            );
                            warned = true;
                        } else {
                            tracing::debug!(error = %e, "{HUB_CONFIGMAP} watch");
                        }
                    }
                }
            }
        }
    };
    tokio::select! {
        () = services => {}
        () = own_node => {}
        () = pool_members => {}
        () = config => {}
        () = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;
