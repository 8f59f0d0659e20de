//! The members of this node's pool, from the pool's NodePool (`apps.openyurt.io`) when
//! there is one, else from the Nodes' pool label.
//!
//! NodePool `status.nodes` (kept by yurt-manager's nodepool controller from the same
//! label) changes only when membership or readiness changes, where a label-selected
//! watch of the pool's Nodes, even as metadata only, carries every status update of
//! every member (each bumps `resourceVersion` and `managedFields`): with the NodePool a
//! hub's cost no longer grows with the size of its pool. Upstream's newer hubs read
//! `status.nodes` as well.
//!
//! Which source is used is decided per pool: the NodePool while it can be read, the
//! label watch when the NodePool API is not served (a cluster without yurt-manager's
//! CRDs: 404), the hub may not read it, or the pool has no NodePool or one whose status
//! lists no nodes (no controller keeps it, or not yet). On the label the NodePool is
//! watched too when it can be read, and looked for again every [`NODEPOOL_RECHECK`]
//! when it cannot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::watcher;
use tokio::sync::watch;

use super::nodes::pool_label;
use super::{ClusterView, POOL_LABEL};

/// How often, on the label, a NodePool that could not be read is looked for again.
const NODEPOOL_RECHECK: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(300)
};

/// The NodePool version read: the storage version, as upstream's current hubs read it
/// (a cluster serving only older versions is a 404: the label is used there).
type NodePool = yurt_api::apps::v1beta2::NodePool;

/// The clients of both sources.
#[derive(Clone)]
pub(super) struct PoolApis {
    nodepools: Api<DynamicObject>,
    nodes: Api<PartialObjectMeta<Node>>,
}

impl PoolApis {
    /// Both, cluster-wide, through `client`.
    pub(super) fn new(client: &kube::Client) -> Self {
        Self {
            nodepools: Api::all_with(client.clone(), &ApiResource::erase::<NodePool>(&())),
            nodes: Api::all(client.clone()),
        }
    }
}

/// Keeps the members of the pool `pool` names, following it when it changes.
pub(super) async fn watch_pool_members(
    view: Arc<ClusterView>,
    apis: PoolApis,
    own: String,
    mut pool: watch::Receiver<Option<String>>,
) {
    loop {
        let current = pool.borrow_and_update().clone();
        view.replace_pool_members(&own, HashMap::new());
        let members = async {
            match &current {
                Some(p) => follow_pool(&view, &apis, &own, p).await,
                // No pool: the filters scope to this node alone.
                None => std::future::pending().await,
            }
        };
        let mut members = std::pin::pin!(members);
        tokio::select! {
            () = &mut members => return,
            changed = pool.changed() => {
                if changed.is_err() {
                    // The pool is configured, or its source has stopped: it stays.
                    members.await;
                    return;
                }
                tracing::info!(from = ?current, to = ?*pool.borrow(), "this node moved: the view follows its pool");
            }
        }
    }
}

/// Keeps `pool`'s members from its NodePool while it can be read, else from its Nodes'
/// label until the NodePool is found.
async fn follow_pool(view: &ClusterView, apis: &PoolApis, own: &str, pool: &str) {
    loop {
        match watch_nodepool(view, apis.nodepools.clone(), own, pool).await {
            NodePoolWatch::Ended => return,
            NodePoolWatch::Unavailable(why) => {
                tracing::info!(pool, why, "pool members from the Nodes' pool label");
            }
        }
        tokio::select! {
            () = watch_labelled_nodes(view, apis.nodes.clone(), own, pool) => return,
            () = nodepool_appears(&apis.nodepools, pool) => {
                tracing::info!(pool, "pool members from its NodePool");
            }
        }
    }
}

/// Why a NodePool watch stopped.
enum NodePoolWatch {
    /// Its stream ended (the view stops).
    Ended,
    /// The NodePool cannot be read or does not exist.
    Unavailable(&'static str),
}

fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// The members a NodePool's `status.nodes` lists, if it lists any. One that lists none
/// is not kept by a controller (yet): this node is labelled into the pool, so a kept
/// NodePool lists at least this node.
fn members_of(np: &DynamicObject, pool: &str) -> Option<HashMap<String, String>> {
    let members: HashMap<String, String> = np.data["status"]["nodes"]
        .as_array()?
        .iter()
        .filter_map(|n| n.as_str())
        .map(|n| (n.to_owned(), pool.to_owned()))
        .collect();
    (!members.is_empty()).then_some(members)
}

/// Keeps `pool`'s members from its NodePool's `status.nodes`, selected by name, until
/// it is deleted or lists no nodes, its API goes (404), or, before it has been read
/// once, any error (so a hub that may not read NodePools, or an offline hub that never
/// cached one, falls back to the label).
async fn watch_nodepool(
    view: &ClusterView,
    api: Api<DynamicObject>,
    own: &str,
    pool: &str,
) -> NodePoolWatch {
    let selector = format!("metadata.name={pool}");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default().fields(&selector)));
    let mut fresh: Option<HashMap<String, String>> = None;
    let mut read = false;
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Init)) => fresh = None,
            Ok(Some(watcher::Event::InitApply(np)))
                if np.metadata.name.as_deref() == Some(pool) =>
            {
                fresh = members_of(&np, pool);
            }
            Ok(Some(watcher::Event::InitDone)) => match fresh.take() {
                Some(members) => {
                    read = true;
                    view.replace_pool_members(own, members);
                }
                None => {
                    return NodePoolWatch::Unavailable(
                        "the pool has no NodePool listing its nodes",
                    );
                }
            },
            Ok(Some(watcher::Event::Apply(np))) if np.metadata.name.as_deref() == Some(pool) => {
                match members_of(&np, pool) {
                    Some(members) => view.replace_pool_members(own, members),
                    None => return NodePoolWatch::Unavailable("its NodePool lists no nodes"),
                }
            }
            Ok(Some(watcher::Event::Delete(np))) if np.metadata.name.as_deref() == Some(pool) => {
                return NodePoolWatch::Unavailable("its NodePool was deleted");
            }
            Ok(Some(_)) => {}
            Ok(None) => return NodePoolWatch::Ended,
            Err(e) if not_found(&e) => {
                return NodePoolWatch::Unavailable("the NodePool API is not served");
            }
            Err(e) if !read => {
                tracing::debug!(error = %e, pool, "nodepool watch");
                return NodePoolWatch::Unavailable("its NodePool cannot be read");
            }
            Err(e) => {
                tracing::debug!(error = %e, pool, "nodepool watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Returns once `pool`'s NodePool lists nodes: watched while it can be read (its
/// status may be filled any moment, as when the hub starts with its cluster, and one
/// NodePool's watch costs little), else looked for again every [`NODEPOOL_RECHECK`].
async fn nodepool_appears(api: &Api<DynamicObject>, pool: &str) {
    let selector = format!("metadata.name={pool}");
    loop {
        let mut stream = std::pin::pin!(watcher(
            api.clone(),
            watcher::Config::default().fields(&selector)
        ));
        loop {
            match stream.try_next().await {
                Ok(Some(watcher::Event::Apply(np) | watcher::Event::InitApply(np)))
                    if np.metadata.name.as_deref() == Some(pool)
                        && members_of(&np, pool).is_some() =>
                {
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, pool, "nodepool watch, while on the label");
                    break;
                }
            }
        }
        tokio::time::sleep(NODEPOOL_RECHECK).await;
    }
}

/// Keeps the Nodes labelled into `pool`, by name, from their metadata only.
async fn watch_labelled_nodes(
    view: &ClusterView,
    api: Api<PartialObjectMeta<Node>>,
    own: &str,
    pool: &str,
) {
    let selector = format!("{POOL_LABEL}={pool}");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default().labels(&selector)));
    let mut fresh: Option<HashMap<String, String>> = None;
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Init)) => fresh = Some(HashMap::new()),
            Ok(Some(watcher::Event::InitApply(n))) => {
                if let (Some(f), Some(name), Some(label)) = (
                    fresh.as_mut(),
                    n.metadata.name.clone(),
                    pool_label(&n.metadata),
                ) {
                    f.insert(name, label);
                }
            }
            Ok(Some(watcher::Event::InitDone)) => {
                view.replace_pool_members(own, fresh.take().unwrap_or_default());
            }
            Ok(Some(watcher::Event::Apply(n))) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if name != own {
                    view.set_node_pool(&name, pool_label(&n.metadata).as_deref());
                }
            }
            Ok(Some(watcher::Event::Delete(n))) => {
                // Deleted, or relabelled out of the pool.
                let name = n.metadata.name.clone().unwrap_or_default();
                if name != own {
                    view.set_node_pool(&name, None);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, pool, "pool node watch");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
