//! The view's Nodes: this node's own Node, whole and by name (its pool label and pod
//! CIDRs), and the Nodes of its pool, as metadata only and by label selector, moving
//! with the pool.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::watcher;
use tokio::sync::watch;

use super::{ClusterView, POOL_LABEL};

fn pool_label(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(POOL_LABEL).cloned()
}

/// Keeps this node's own pool and pod CIDRs from its Node (whole: the CIDRs are in its
/// spec), and tells `pool` (when the pool is not configured) when its label changes.
pub(super) async fn watch_own_node(
    view: Arc<ClusterView>,
    api: Api<Node>,
    node: String,
    pool: Option<watch::Sender<Option<String>>>,
) {
    let learn = |n: Option<&Node>| {
        let label = n.and_then(|n| pool_label(&n.metadata));
        view.set_node_pool(&node, label.as_deref());
        let spec = n.and_then(|n| n.spec.as_ref());
        let mut cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        // `podCIDR` is the first of `podCIDRs` when both are set.
        if let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
            && !cidrs.contains(&c)
        {
            cidrs.push(c);
        }
        view.set_node_pod_cidrs(&node, &cidrs);
        if let Some(tx) = &pool {
            tx.send_if_modified(|p| {
                let changed = *p != label;
                if changed {
                    p.clone_from(&label);
                }
                changed
            });
        }
    };
    let selector = format!("metadata.name={node}");
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default().fields(&selector)));
    // Whether the current (re)list had it: a Node deleted while the watch was down
    // shows only as its absence from the next list.
    let mut listed = false;
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Init)) => listed = false,
            Ok(Some(watcher::Event::Apply(n) | watcher::Event::InitApply(n)))
                if n.metadata.name.as_deref() == Some(node.as_str()) =>
            {
                listed = true;
                learn(Some(&n));
            }
            Ok(Some(watcher::Event::InitDone)) if !listed => learn(None),
            Ok(Some(watcher::Event::Delete(n)))
                if n.metadata.name.as_deref() == Some(node.as_str()) =>
            {
                learn(None);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "own node watch");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps the Nodes of the pool `pool` names, following it when it changes.
pub(super) async fn watch_pool_nodes(
    view: Arc<ClusterView>,
    api: Api<PartialObjectMeta<Node>>,
    own: String,
    mut pool: watch::Receiver<Option<String>>,
) {
    loop {
        let current = pool.borrow_and_update().clone();
        view.replace_pool_members(&own, HashMap::new());
        let members = async {
            match &current {
                Some(p) => watch_pool(&view, api.clone(), &own, p).await,
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

/// Keeps the Nodes labelled into `pool`, by name, from their metadata only.
async fn watch_pool(view: &ClusterView, api: Api<PartialObjectMeta<Node>>, own: &str, pool: &str) {
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
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
