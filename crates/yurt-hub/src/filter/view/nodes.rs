//! This node's own Node, whole and by name: its pool label and pod CIDRs. (The pool's
//! other members are in [`super::pool`].)

use std::sync::Arc;

use tokio::sync::watch;

use super::feed::{self, FeedEvent};
use super::{ClusterView, POOL_LABEL, objects};
use crate::codec::RawObject;

pub(super) fn pool_label(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(POOL_LABEL).cloned()
}

/// Keeps this node's own pool and pod CIDRs from its Node (whole: the CIDRs are in its
/// spec), and tells `pool` (when the pool is not configured) when its label changes.
/// Watched by name as kubelet watches it, so the hub shares kubelet's upstream watch.
pub(super) async fn watch_own_node(
    view: Arc<ClusterView>,
    client: kube::Client,
    node: String,
    pool: Option<watch::Sender<Option<String>>>,
) {
    let learn = |n: Option<&RawObject>| {
        let label = n.and_then(|n| n.info.labels.get(POOL_LABEL).cloned());
        view.set_node_pool(&node, label.as_deref());
        view.set_node_pod_cidrs(&node, &n.map(objects::pod_cidrs).unwrap_or_default());
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
    let own = feed::Collection {
        path: "/api/v1/nodes".into(),
        field_selector: Some(format!("metadata.name={node}")),
    };
    let is_own = |n: &RawObject| n.info.name == node;
    feed::follow(client, own, |event| match event {
        // A Node deleted while the watch was down shows only as its absence from the
        // next list.
        FeedEvent::Listed(items) => learn(items.iter().find(|n| is_own(n))),
        FeedEvent::Applied(n) if is_own(&n) => learn(Some(&n)),
        FeedEvent::Deleted(n) if is_own(&n) => learn(None),
        FeedEvent::Applied(_) | FeedEvent::Deleted(_) => {}
    })
    .await;
}
