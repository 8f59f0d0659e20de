//! This node's own Node, whole and by name: its pool label and pod CIDRs. (The pool's
//! other members are in [`super::pool`].)

use std::sync::Arc;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::{ClusterView, POOL_LABEL};

pub(super) fn pool_label(meta: &kube::api::ObjectMeta) -> Option<String> {
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
