//! Node webhooks (reference/openyurt.md §5.3): the legacy `desired-nodepool` label
//! becomes the pool label; a hostNetwork pool's nodes get the hostnetwork label; a
//! node's pool label can be added or removed but not changed in place, and the
//! hostnetwork label cannot change once set.
//!
//! Beyond OpenYurt: `openyurt.io/is-edge-worker` says whether a node runs behind a hub,
//! a fact the conversion controller (this manager) and the node itself establish. An
//! update that adds, removes or changes it is refused to anyone else, cluster admins
//! included: they convert and revert a node with the pool label instead. Creation is
//! not checked (a kubelet registers itself with its labels; an admin may pre-create a
//! Node). Like upstream's, the webhook fails open (`Ignore`) while the manager is down.
//! It also sees `nodes/status`, where 1.20 lets labels change too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::json;
use yurt_api::labels::{DESIRED_NODEPOOL, HOSTNETWORK, IS_EDGE_WORKER, NODE_POOL};

use super::WebhookState;

/// Path of the mutating Node webhook (OpenYurt's).
pub const MUTATE_PATH: &str = "/mutate-core-openyurt-io-v1-node";
/// Path of the validating Node webhook (OpenYurt's).
pub const VALIDATE_PATH: &str = "/validate-core-openyurt-io-v1-node";

fn node(obj: Option<&DynamicObject>) -> Option<Node> {
    serde_json::to_value(obj?)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

/// Escapes a key for a JSON pointer.
fn pointer_key(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// The mutating webhook.
pub async fn mutate(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(n) = node(req.object.as_ref()) else {
        return resp;
    };
    let mut labels = labels(&n);
    let mut changed = false;
    if !labels.contains_key(NODE_POOL)
        && let Some(desired) = labels.get(DESIRED_NODEPOOL).cloned()
        && !desired.is_empty()
    {
        labels.insert(NODE_POOL.to_owned(), desired);
        changed = true;
    }
    if let Some(pool) = labels.get(NODE_POOL)
        && !labels.contains_key(HOSTNETWORK)
        && state.pool_has_host_network(pool)
    {
        labels.insert(HOSTNETWORK.to_owned(), "true".to_owned());
        changed = true;
    }
    if !changed {
        return resp;
    }
    let ops = if n.metadata.labels.is_none() {
        json!([{"op": "add", "path": "/metadata/labels", "value": labels}])
    } else {
        let ops: Vec<_> = [NODE_POOL, HOSTNETWORK]
            .iter()
            .filter(|k| labels.get(**k) != n.metadata.labels.as_ref().and_then(|l| l.get(**k)))
            .map(|k| {
                json!({"op": "add", "path": format!("/metadata/labels/{}", pointer_key(k)), "value": labels[*k]})
            })
            .collect();
        json!(ops)
    };
    match serde_json::from_value::<json_patch::Patch>(ops) {
        Ok(p) => resp.clone().with_patch(p).unwrap_or(resp),
        Err(_) => resp,
    }
}

/// The validating webhook.
pub async fn validate(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if req.operation != Operation::Update {
        return resp;
    }
    let Some(new) = node(req.object.as_ref()) else {
        return resp;
    };
    // The stored Node. Kubernetes 1.20 built with Go 1.19 hands validating webhooks of
    // built-in kinds an `oldObject` equal to the new one, so it comes from the manager's
    // view when that view is at the version the update is based on, else from the API
    // server (a view that lags would compare against an older Node: refusing others'
    // unrelated updates, or letting a change just made be undone). The request's own
    // old object is the last resort.
    let cached = state
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(&req.name))
        .map(|n| (*n).clone());
    let based_on = new.metadata.resource_version.clone();
    let old = match cached {
        Some(n) if based_on.is_some() && n.metadata.resource_version == based_on => Some(n),
        cached => kube::Api::<Node>::all(state.client.clone())
            .get(&req.name)
            .await
            .ok()
            .or(cached)
            .or_else(|| node(req.old_object.as_ref())),
    };
    let Some(old) = old else {
        return resp;
    };
    let (new_labels, old_labels) = (labels(&new), labels(&old));
    if let (Some(o), Some(n)) = (old_labels.get(NODE_POOL), new_labels.get(NODE_POOL))
        && o != n
    {
        return resp.deny(format!(
            "label {NODE_POOL} cannot be changed from {o:?} to {n:?} in place; remove it first, then add the new pool"
        ));
    }
    if let Some(o) = old_labels.get(HOSTNETWORK)
        && new_labels.get(HOSTNETWORK) != Some(o)
    {
        return resp.deny(format!("label {HOSTNETWORK} is immutable once set"));
    }
    if old_labels.get(IS_EDGE_WORKER) != new_labels.get(IS_EDGE_WORKER) {
        let user = req.user_info.username.as_deref().unwrap_or_default();
        if user != format!("system:node:{}", req.name) && user != state.manager_username {
            return resp.deny(format!(
                "label {IS_EDGE_WORKER} is set only by the node itself and the conversion controller ({}), not by {user:?}: add or remove the {NODE_POOL} label to convert or revert the node",
                state.manager_username
            ));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use kube::core::admission::AdmissionReview;

    use super::*;

    fn node_with(labels: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-a1", "labels": labels}})
    }

    fn update_by(user: &str, new: &serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": "Node"},
                "resource": {"group": "", "version": "v1", "resource": "nodes"},
                "name": "edge-a1",
                "operation": "UPDATE",
                "userInfo": {"username": user, "groups": ["system:authenticated"]},
                "object": new,
                // 1.20 hands an oldObject equal to the new one: the store is what counts.
                "oldObject": new,
                "dryRun": false,
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[tokio::test]
    async fn only_the_node_and_the_manager_change_is_edge_worker() {
        let stored: Node = serde_json::from_value(node_with(
            json!({"apps.openyurt.io/nodepool": "pool-a", "openyurt.io/is-edge-worker": "true"}),
        ))
        .unwrap();
        let (state, _) = crate::webhook::test_state(vec![stored], Vec::new());
        let flipped = node_with(
            json!({"apps.openyurt.io/nodepool": "pool-a", "openyurt.io/is-edge-worker": "false"}),
        );
        let removed = node_with(json!({"apps.openyurt.io/nodepool": "pool-a"}));
        let other_label = node_with(json!({
            "apps.openyurt.io/nodepool": "pool-a",
            "openyurt.io/is-edge-worker": "true",
            "team": "blue",
        }));
        for (user, object, allowed) in [
            ("kubernetes-admin", &flipped, false),
            ("kubernetes-admin", &removed, false),
            ("system:node:edge-b1", &flipped, false),
            ("system:serviceaccount:kube-system:default", &removed, false),
            ("system:node:edge-a1", &flipped, true),
            ("openyurt:yurt-manager", &removed, true),
            ("kubernetes-admin", &other_label, true),
        ] {
            let resp = validate(&state, &update_by(user, object)).await;
            assert_eq!(resp.allowed, allowed, "{user} {object}: {:?}", resp.result);
            if !allowed {
                assert!(
                    resp.result.message.contains(user) && resp.result.message.contains(NODE_POOL),
                    "{}",
                    resp.result.message
                );
            }
        }
    }
}
