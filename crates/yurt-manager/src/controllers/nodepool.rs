//! The nodepool controller (reference/openyurt.md §5.2): a pool's `labels`,
//! `annotations` and `taints` are kept on its member nodes (membership by the
//! `apps.openyurt.io/nodepool` label), with what was applied remembered in the node's
//! `nodepool.openyurt.io/previous-attributes` annotation, so keys dropped from the
//! pool, or a node leaving the pool, are cleaned up and nothing else on the node is
//! touched; and the pool's status lists its nodes and counts the ready ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1beta2::NodePool;
use yurt_api::labels::{NODE_POOL, PREVIOUS_ATTRIBUTES};

use crate::autonomy::is_ready;
use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "nodepool";

/// What a pool puts on its nodes (also the previous-attributes annotation's JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Taints (identity: key and effect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

impl Attributes {
    /// The attributes a pool's spec asks for.
    pub fn of_pool(pool: &NodePool) -> Self {
        let spec = serde_json::to_value(&pool.spec).unwrap_or(Value::Null);
        let field = |k: &str| spec.get(k).cloned().unwrap_or(Value::Null);
        Self {
            labels: serde_json::from_value(field("labels")).unwrap_or_default(),
            annotations: serde_json::from_value(field("annotations")).unwrap_or_default(),
            taints: serde_json::from_value(field("taints")).unwrap_or_default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty() && self.taints.is_empty()
    }
}

fn same_taint(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

/// What a node's labels, annotations and taints become, given what its pool wants now
/// and what was applied before. `None` when nothing changes.
pub fn plan(node: &Node, desired: &Attributes) -> Option<(Value, Option<Vec<Taint>>)> {
    let meta = &node.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    let previous: Attributes = annotations
        .get(PREVIOUS_ATTRIBUTES)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut label_patch = serde_json::Map::new();
    for key in previous.labels.keys() {
        if !desired.labels.contains_key(key) && labels.contains_key(key) {
            label_patch.insert(key.clone(), Value::Null);
        }
    }
    for (k, v) in &desired.labels {
        if labels.get(k) != Some(v) {
            label_patch.insert(k.clone(), json!(v));
        }
    }
    let mut annotation_patch = serde_json::Map::new();
    for key in previous.annotations.keys() {
        if !desired.annotations.contains_key(key) && annotations.contains_key(key) {
            annotation_patch.insert(key.clone(), Value::Null);
        }
    }
    for (k, v) in &desired.annotations {
        if annotations.get(k) != Some(v) {
            annotation_patch.insert(k.clone(), json!(v));
        }
    }
    let record = if desired.is_empty() {
        None
    } else {
        serde_json::to_string(desired).ok()
    };
    if annotations.get(PREVIOUS_ATTRIBUTES) != record.as_ref() {
        annotation_patch.insert(PREVIOUS_ATTRIBUTES.to_owned(), json!(record));
    }
    let current_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints: Vec<Taint> = current_taints
        .iter()
        .filter(|t| {
            let was_ours = previous.taints.iter().any(|p| same_taint(p, t));
            let still_wanted = desired.taints.iter().any(|d| same_taint(d, t));
            !was_ours || still_wanted
        })
        .cloned()
        .collect();
    for d in &desired.taints {
        match taints.iter_mut().find(|t| same_taint(t, d)) {
            Some(t) => {
                if t.value != d.value {
                    t.value = d.value.clone();
                }
            }
            None => taints.push(d.clone()),
        }
    }
    let taints_changed = taints != current_taints;
    if label_patch.is_empty() && annotation_patch.is_empty() && !taints_changed {
        return None;
    }
    let mut metadata = serde_json::Map::new();
    if !label_patch.is_empty() {
        metadata.insert("labels".to_owned(), Value::Object(label_patch));
    }
    if !annotation_patch.is_empty() {
        metadata.insert("annotations".to_owned(), Value::Object(annotation_patch));
    }
    Some((Value::Object(metadata), taints_changed.then_some(taints)))
}

/// The status a pool should show, from its members and their readiness.
pub fn status_of(members: &BTreeMap<String, bool>) -> Value {
    let ready = members.values().filter(|r| **r).count();
    json!({
        "readyNodeNum": ready,
        "unreadyNodeNum": members.len() - ready,
        "nodes": members.keys().collect::<Vec<_>>(),
    })
}

/// Which pool each node is in and whether it is Ready, as last seen on the node watch.
/// A pool finds its members here without scanning every node, and a node event that
/// changes neither its pool nor its readiness (most of them: heartbeats, taints) costs
/// no pool reconcile.
#[derive(Debug, Default)]
pub struct Membership {
    nodes: HashMap<String, (Option<String>, bool)>,
    pools: HashMap<String, BTreeMap<String, bool>>,
    relisted: Option<HashSet<String>>,
}

impl Membership {
    fn set_pool_member(&mut self, pool: &str, node: &str, ready: Option<bool>) {
        match ready {
            Some(r) => {
                self.pools
                    .entry(pool.to_owned())
                    .or_default()
                    .insert(node.to_owned(), r);
            }
            None => {
                if let Some(m) = self.pools.get_mut(pool) {
                    m.remove(node);
                    if m.is_empty() {
                        self.pools.remove(pool);
                    }
                }
            }
        }
    }

    /// Records a node as seen; returns the pools whose status changes.
    pub fn observe(&mut self, node: &str, pool: Option<String>, ready: bool) -> Vec<String> {
        if let Some(seen) = self.relisted.as_mut() {
            seen.insert(node.to_owned());
        }
        let new = (pool.clone(), ready);
        let old = self.nodes.insert(node.to_owned(), new);
        if old.as_ref().is_some_and(|o| o.0 == pool && o.1 == ready) {
            return Vec::new();
        }
        let mut affected = Vec::new();
        if let Some((Some(was), _)) = old
            && Some(&was) != pool.as_ref()
        {
            self.set_pool_member(&was, node, None);
            affected.push(was);
        }
        if let Some(p) = pool {
            self.set_pool_member(&p, node, Some(ready));
            affected.push(p);
        }
        affected
    }

    /// Forgets a deleted node; returns the pool it left.
    pub fn forget(&mut self, node: &str) -> Vec<String> {
        match self.nodes.remove(node) {
            Some((Some(pool), _)) => {
                self.set_pool_member(&pool, node, None);
                vec![pool]
            }
            _ => Vec::new(),
        }
    }

    /// A relist starts: nodes it does not list again were deleted meanwhile.
    pub fn relist_started(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    /// The relist is complete; forgets the nodes it did not list.
    pub fn relist_done(&mut self) -> Vec<String> {
        let Some(seen) = self.relisted.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        gone.iter().flat_map(|n| self.forget(n)).collect()
    }

    /// A pool's members and their readiness.
    pub fn members(&self, pool: &str) -> BTreeMap<String, bool> {
        self.pools.get(pool).cloned().unwrap_or_default()
    }
}

struct Ctx {
    client: kube::Client,
    pools: Store<NodePool>,
    /// Each pool's attributes as last seen on the watch that triggers node reconciles,
    /// so a reconcile never plans from an older copy of the pool than its trigger.
    attributes: Arc<Mutex<HashMap<String, Attributes>>>,
    membership: Arc<Mutex<Membership>>,
    metrics: ManagerMetrics,
}

impl Ctx {
    fn attributes(&self, pool: &str) -> Attributes {
        let seen = self
            .attributes
            .lock()
            .ok()
            .and_then(|m| m.get(pool).cloned());
        seen.or_else(|| {
            self.pools
                .get(&ObjectRef::new(pool))
                .map(|p| Attributes::of_pool(&p))
        })
        .unwrap_or_default()
    }

    fn members(&self, pool: &str) -> BTreeMap<String, bool> {
        self.membership
            .lock()
            .map(|m| m.members(pool))
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(#[from] kube::Error);

async fn reconcile_node(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let Some(name) = node.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    let pool = pool_of(&node);
    let desired = pool
        .as_deref()
        .map(|p| ctx.attributes(p))
        .unwrap_or_default();
    let Some((metadata, taints)) = plan(&node, &desired) else {
        return Ok(Action::await_change());
    };
    let mut patch = json!({"metadata": metadata});
    // The resourceVersion makes the patch conditional: a node changed since we read it
    // is re-read and re-planned instead of overwritten.
    patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
    if let Some(t) = taints {
        patch["spec"] = json!({"taints": t});
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    ctx.metrics.reconciled(NAME);
    tracing::info!(node = name, pool = ?pool, "node attributes follow its pool");
    Ok(Action::await_change())
}

async fn reconcile_pool(pool: Arc<NodePool>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let Some(name) = pool.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let desired = status_of(&ctx.members(name));
    let current = pool.status.as_ref();
    let want_nodes: Vec<String> =
        serde_json::from_value(desired["nodes"].clone()).unwrap_or_default();
    let same = current.is_some_and(|s| {
        s.nodes.clone().unwrap_or_default() == want_nodes
            && i64::from(s.ready_node_num.unwrap_or(0))
                == desired["readyNodeNum"].as_i64().unwrap_or(0)
            && i64::from(s.unready_node_num.unwrap_or(0))
                == desired["unreadyNodeNum"].as_i64().unwrap_or(0)
    });
    if same {
        return Ok(Action::await_change());
    }
    let api: Api<NodePool> = Api::all(ctx.client.clone());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": desired})),
    )
    .await?;
    ctx.metrics.reconciled(NAME);
    tracing::info!(pool = name, status = %desired, "pool status updated");
    Ok(Action::await_change())
}

fn node_error(_n: Arc<Node>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    // A conflict means the node changed under us (kube-controller-manager writes taints
    // too): re-plan as soon as the watch has delivered the new version.
    if matches!(&error.0, kube::Error::Api(s) if s.code == 409) {
        tracing::debug!(controller = NAME, error = %error, "node changed while patching; re-planning");
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(controller = NAME, error = %error, "node reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn pool_error(_p: Arc<NodePool>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "pool reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn pool_of(node: &Node) -> Option<String> {
    node.metadata.labels.as_ref()?.get(NODE_POOL).cloned()
}

/// Runs both halves (nodes follow pools; pool status follows nodes) until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let super::Inputs {
        client,
        nodes,
        pools,
        metrics,
        ..
    } = inputs;
    let node_controller = Controller::for_stream(nodes.objects(), nodes.store());
    let pool_controller = Controller::for_stream(pools.objects(), pools.store());
    let pool_store = pools.store();
    let membership = Arc::new(Mutex::new(Membership::default()));
    let attributes = Arc::new(Mutex::new(HashMap::new()));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pools: pool_store,
        attributes: attributes.clone(),
        membership: membership.clone(),
        metrics,
    });

    // A pool's spec changed (its generation moved): its members re-plan. Status writes
    // (the pool's own, every few seconds at scale) leave the generation alone.
    let members_of = {
        let membership = membership.clone();
        let generations: Mutex<HashMap<String, Option<i64>>> = Mutex::new(HashMap::new());
        move |pool: NodePool| {
            let name = pool.metadata.name.clone().unwrap_or_default();
            if let Ok(mut a) = attributes.lock() {
                a.insert(name.clone(), Attributes::of_pool(&pool));
            }
            let unchanged = generations
                .lock()
                .map(|mut g| {
                    g.insert(name.clone(), pool.metadata.generation)
                        == Some(pool.metadata.generation)
                })
                .unwrap_or(false);
            if unchanged {
                return Vec::new();
            }
            membership
                .lock()
                .map(|m| m.members(&name))
                .unwrap_or_default()
                .into_keys()
                .map(|n| ObjectRef::<Node>::new(&n))
                .collect::<Vec<_>>()
        }
    };
    let nodes_half = node_controller
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .watches_stream(pools.objects(), members_of)
        .run(
            super::instrumented(NAME, ctx.metrics.clone(), reconcile_node),
            node_error,
            ctx.clone(),
        )
        .for_each(|r| super::log_stream_error(NAME, r));

    // Pool status follows membership and readiness, kept from the node feed's events
    // (deletions and relists included, which a plain trigger mapping cannot see).
    let membership_events = nodes.events().flat_map(move |event| {
        let pools = match membership.lock() {
            Ok(mut m) => match &*event {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    m.observe(&n.name_any(), pool_of(n), is_ready(n))
                }
                watcher::Event::Delete(n) => m.forget(&n.name_any()),
                watcher::Event::Init => {
                    m.relist_started();
                    Vec::new()
                }
                watcher::Event::InitDone => m.relist_done(),
            },
            Err(_) => Vec::new(),
        };
        futures_util::stream::iter(pools.into_iter().map(|p| ObjectRef::<NodePool>::new(&p)))
    });
    let pools_half = pool_controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .reconcile_on(membership_events)
        .run(
            super::instrumented(NAME, ctx.metrics.clone(), reconcile_pool),
            pool_error,
            ctx,
        )
        .for_each(|r| super::log_stream_error(NAME, r));
    tokio::join!(nodes_half, pools_half);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.to_owned(),
            value: Some(value.to_owned()),
            effect: effect.to_owned(),
            time_added: None,
        }
    }

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn attrs(labels: &[(&str, &str)], taints: Vec<Taint>) -> Attributes {
        Attributes {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
            taints,
        }
    }

    #[test]
    fn a_pools_attributes_are_applied_and_recorded() {
        let n = node(
            &[(NODE_POOL, "p")],
            &[],
            vec![taint("user", "x", "NoSchedule")],
        );
        let want = attrs(&[("site", "hz")], vec![taint("pool", "1", "NoSchedule")]);
        let (meta, taints) = plan(&n, &want).expect("changes");
        assert_eq!(meta["labels"]["site"], "hz");
        let recorded: Attributes = serde_json::from_str(
            meta["annotations"][PREVIOUS_ATTRIBUTES]
                .as_str()
                .expect("text"),
        )
        .expect("json");
        assert_eq!(recorded, want);
        let taints = taints.expect("taints change");
        assert_eq!(taints.len(), 2, "the user's taint stays: {taints:?}");
    }

    #[test]
    fn keys_dropped_from_the_pool_are_removed_and_others_kept() {
        let before = attrs(
            &[("site", "hz"), ("tier", "a")],
            vec![taint("pool", "1", "NoSchedule")],
        );
        let n = node(
            &[
                (NODE_POOL, "p"),
                ("site", "hz"),
                ("tier", "a"),
                ("mine", "1"),
            ],
            &[(
                PREVIOUS_ATTRIBUTES,
                &serde_json::to_string(&before).expect("json"),
            )],
            vec![
                taint("pool", "1", "NoSchedule"),
                taint("user", "x", "NoExecute"),
            ],
        );
        let now = attrs(&[("site", "sh")], Vec::new());
        let (meta, taints) = plan(&n, &now).expect("changes");
        assert_eq!(meta["labels"]["site"], "sh");
        assert_eq!(meta["labels"]["tier"], Value::Null, "removed");
        assert!(meta["labels"].get("mine").is_none(), "untouched");
        assert_eq!(taints.expect("changed").len(), 1);
        // Leaving the pool removes everything it applied, and the record.
        let (meta, _) = plan(&n, &Attributes::default()).expect("changes");
        assert_eq!(meta["annotations"][PREVIOUS_ATTRIBUTES], Value::Null);
        assert_eq!(meta["labels"]["site"], Value::Null);
    }

    #[test]
    fn an_up_to_date_node_needs_no_patch() {
        let want = attrs(&[("site", "hz")], vec![taint("pool", "1", "NoSchedule")]);
        let n = node(
            &[(NODE_POOL, "p"), ("site", "hz")],
            &[(
                PREVIOUS_ATTRIBUTES,
                &serde_json::to_string(&want).expect("json"),
            )],
            vec![taint("pool", "1", "NoSchedule")],
        );
        assert!(plan(&n, &want).is_none());
        assert!(plan(&node(&[], &[], Vec::new()), &Attributes::default()).is_none());
    }

    #[test]
    fn membership_tracks_moves_readiness_and_deletions() {
        let mut m = Membership::default();
        assert_eq!(m.observe("b-node", Some("p".into()), true), vec!["p"]);
        assert_eq!(m.observe("a-node", Some("p".into()), false), vec!["p"]);
        assert_eq!(m.observe("c-node", Some("q".into()), true), vec!["q"]);
        // Nothing that matters changed: no pool reconcile.
        assert!(m.observe("a-node", Some("p".into()), false).is_empty());
        assert_eq!(
            status_of(&m.members("p")),
            json!({"readyNodeNum": 1, "unreadyNodeNum": 1, "nodes": ["a-node", "b-node"]})
        );
        assert_eq!(m.observe("a-node", Some("p".into()), true), vec!["p"]);
        // A move touches both pools; leaving a pool touches it.
        assert_eq!(m.observe("a-node", Some("q".into()), true), vec!["p", "q"]);
        assert_eq!(m.observe("c-node", None, true), vec!["q"]);
        assert_eq!(m.forget("b-node"), vec!["p"]);
        assert!(m.members("p").is_empty());
        // A relist forgets what it no longer lists.
        m.relist_started();
        assert!(m.observe("a-node", Some("q".into()), true).is_empty());
        assert_eq!(m.relist_done(), Vec::<String>::new());
        m.relist_started();
        assert_eq!(m.relist_done(), vec!["q"]);
        assert!(m.members("q").is_empty());
    }
}
