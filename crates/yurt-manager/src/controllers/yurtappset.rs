//! The yurtappset controller (reference/openyurt.md §3.3, §5.2): one Deployment or
//! StatefulSet per selected NodePool, made from the YurtAppSet's template with the
//! tweaks that apply to that pool, kept up to date, and removed when its pool leaves
//! the selection; status per YurtAppSet.
//!
//! Workloads are named `<yas>-<pool>-<random>` (generateName), labelled with the pool
//! (`apps.openyurt.io/pool-name`, also added to the selector and the pod template),
//! the owner (`apps.openyurt.io/ref-yurtappset`) and the revision
//! (`apps.openyurt.io/controller-revision-hash`), scheduled into the pool through a
//! `nodeSelector` on `apps.openyurt.io/nodepool`, and owned by the YurtAppSet so
//! deleting it deletes them. The revision is a hash of the workload spec (template and
//! tweaks); upstream also records ControllerRevisions, which this version does not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1beta1::YurtAppSet;
use yurt_api::apps::v1beta2::NodePool;
use yurt_api::labels::{
    CONTROLLER_REVISION_HASH, NODE_POOL, POOL_NAME, REF_NODEPOOL, REF_YURTAPPSET,
};

use crate::feed::Feed;
use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "yurtappset";

/// Whether `labels` satisfy a Kubernetes label selector (an empty selector matches all).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// The pools a YurtAppSet targets, by name and by selector: (existing, named but missing).
pub fn target_pools(
    spec_pools: &[String],
    selector: Option<&LabelSelector>,
    pools: &[Arc<NodePool>],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let existing: BTreeMap<String, BTreeMap<String, String>> = pools
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.labels().clone()))
        .collect();
    let mut found = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for name in spec_pools {
        if existing.contains_key(name) {
            found.insert(name.clone());
        } else {
            missing.insert(name.clone());
        }
    }
    if let Some(sel) = selector {
        found.extend(
            existing
                .iter()
                .filter(|(_, labels)| selector_matches(sel, labels))
                .map(|(n, _)| n.clone()),
        );
    }
    (found, missing)
}

pub use yurt_api::apps::v1alpha1::revision;

fn substitute(value: &Value, pool: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{{nodepool-name}}", pool)),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, pool)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute(v, pool)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_labels(target: &mut Value, pointer: &str, extra: &BTreeMap<&str, String>) {
    if target.pointer(pointer).is_none_or(|v| !v.is_object()) {
        // Create the path's last object (parents exist in every template we build).
        if let Some((parent, key)) = pointer.rsplit_once('/')
            && let Some(p) = target.pointer_mut(parent).and_then(Value::as_object_mut)
        {
            p.insert(key.to_owned(), json!({}));
        }
    }
    if let Some(map) = target.pointer_mut(pointer).and_then(Value::as_object_mut) {
        for (k, v) in extra {
            map.insert((*k).to_owned(), json!(v));
        }
    }
}

/// The workload a YurtAppSet wants in `pool`: its kind and its JSON (without name).
///
/// # Errors
/// A template with neither kind, or a tweak patch that does not apply.
pub fn desired_workload(
    yas: &YurtAppSet,
    owner_label: &str,
    pool: &str,
    pool_labels: &BTreeMap<String, String>,
    rev: &str,
) -> Result<(&'static str, Value), String> {
    let template = &yas.spec.workload.workload_template;
    let (kind, mut body) = if let Some(d) = &template.deployment_template {
        (
            "Deployment",
            serde_json::to_value(d).map_err(|e| e.to_string())?,
        )
    } else if let Some(s) = &template.stateful_set_template {
        (
            "StatefulSet",
            serde_json::to_value(s).map_err(|e| e.to_string())?,
        )
    } else {
        return Err(
            "workloadTemplate has neither deploymentTemplate nor statefulSetTemplate".into(),
        );
    };
    let name = yas.name_any();
    let meta = body.get("metadata").cloned().unwrap_or(json!({}));
    let mut workload = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {
            "generateName": format!("{name}-{pool}-"),
            "namespace": yas.namespace().unwrap_or_default(),
            "labels": meta.get("labels").cloned().unwrap_or(json!({})),
            "annotations": meta.get("annotations").cloned().unwrap_or(json!({})),
        },
        "spec": body.get_mut("spec").map(Value::take).unwrap_or(json!({})),
    });
    let ids: BTreeMap<&str, String> = BTreeMap::from([(POOL_NAME, pool.to_owned())]);
    let mut labels = ids.clone();
    labels.insert(owner_label, name.clone());
    labels.insert(CONTROLLER_REVISION_HASH, rev.to_owned());
    merge_labels(&mut workload, "/metadata/labels", &labels);
    merge_labels(
        &mut workload,
        "/metadata/annotations",
        &BTreeMap::from([(REF_NODEPOOL, pool.to_owned())]),
    );
    if workload.pointer("/spec/selector").is_none() {
        workload["spec"]["selector"] = json!({});
    }
    merge_labels(&mut workload, "/spec/selector/matchLabels", &ids);
    if workload.pointer("/spec/template/metadata").is_none() {
        workload["spec"]["template"]["metadata"] = json!({});
    }
    merge_labels(&mut workload, "/spec/template/metadata/labels", &ids);
    if workload.pointer("/spec/template/spec").is_none() {
        workload["spec"]["template"]["spec"] = json!({});
    }
    merge_labels(
        &mut workload,
        "/spec/template/spec/nodeSelector",
        &BTreeMap::from([(NODE_POOL, pool.to_owned())]),
    );
    for tweak in yas.spec.workload.workload_tweaks.iter().flatten() {
        let by_name = tweak.pools.iter().flatten().any(|p| p == pool);
        let by_selector = tweak
            .nodepool_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, pool_labels));
        if !by_name && !by_selector {
            continue;
        }
        let t = &tweak.tweaks;
        if let Some(r) = t.replicas {
            workload["spec"]["replicas"] = json!(r);
        }
        for image in t.container_images.iter().flatten() {
            for list in ["containers", "initContainers"] {
                if let Some(cs) = workload
                    .pointer_mut(&format!("/spec/template/spec/{list}"))
                    .and_then(Value::as_array_mut)
                {
                    for c in cs.iter_mut().filter(|c| c["name"] == json!(image.name)) {
                        c["image"] = json!(image.target_image);
                    }
                }
            }
        }
        let ops: Vec<Value> = t
            .patches
            .iter()
            .flatten()
            .map(|p| {
                let op = serde_json::to_value(p.operation).unwrap_or(json!("replace"));
                let mut o = json!({"op": op, "path": p.path});
                if let Some(v) = &p.value {
                    o["value"] = substitute(v, pool);
                }
                o
            })
            .collect();
        if !ops.is_empty() {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| format!("tweak patches: {e}"))?;
            json_patch::patch(&mut workload, &patch)
                .map_err(|e| format!("tweak patch for pool {pool} does not apply: {e}"))?;
        }
    }
    Ok((kind, workload))
}

/// The API resource of a per-pool workload kind (Deployment or StatefulSet).
fn workload_resource(kind: &str) -> ApiResource {
    let plural = if kind == "StatefulSet" {
        "statefulsets"
    } else {
        "deployments"
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", kind), plural)
}

fn workload_api(client: &kube::Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &workload_resource(kind))
}

fn is_ready(w: &DynamicObject) -> bool {
    let replicas = w
        .data
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = w
        .data
        .pointer("/status/readyReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let observed = w
        .data
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    ready >= replicas && observed == w.metadata.generation
}

struct Ctx {
    client: kube::Client,
    pools: Store<NodePool>,
    metrics: ManagerMetrics,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serde(#[from] serde_json::Error),
}

/// What dispatching a set's workloads found.
pub(crate) struct Dispatch {
    /// The revision of the workload spec.
    pub rev: String,
    /// Pools selected.
    pub pools: BTreeSet<String>,
    /// Pools named but missing.
    pub missing: BTreeSet<String>,
    /// Workloads on the current revision.
    pub updated: usize,
    /// ... and ready.
    pub ready: usize,
    /// Pools whose workload could not be made.
    pub errors: Vec<String>,
}

/// Creates, updates and deletes the per-pool workloads of `yas`, found by
/// `owner_label=<name>` and owned through `owner` (YurtAppSet, or a YurtAppDaemon
/// expressed as one).
pub(crate) async fn dispatch(
    client: &kube::Client,
    pool_store: &Store<NodePool>,
    yas: &YurtAppSet,
    owner_label: &str,
    owner: Option<OwnerReference>,
) -> Result<Dispatch, ReconcileError> {
    let name = yas.name_any();
    let namespace = yas.namespace().unwrap_or_default();
    let spec_json = serde_json::to_value(&yas.spec.workload)?;
    let rev = revision(&spec_json);
    let (pools, missing) = target_pools(
        yas.spec.pools.as_deref().unwrap_or(&[]),
        yas.spec.nodepool_selector.as_ref(),
        &pool_store.state(),
    );
    let mut errors = Vec::new();
    let mut workloads = Vec::new();
    for kind in ["Deployment", "StatefulSet"] {
        let api = workload_api(client, &namespace, kind);
        let list = api
            .list(&ListParams::default().labels(&format!("{owner_label}={name}")))
            .await?;
        workloads.extend(list.items.into_iter().map(|w| (kind, w)));
    }
    // Keep one workload per selected pool, of the template's kind; delete the rest.
    let mut kept: BTreeMap<String, (&str, DynamicObject)> = BTreeMap::new();
    for (kind, w) in workloads {
        let pool = w.labels().get(POOL_NAME).cloned().unwrap_or_default();
        let wanted_kind = if yas
            .spec
            .workload
            .workload_template
            .stateful_set_template
            .is_some()
        {
            "StatefulSet"
        } else {
            "Deployment"
        };
        if pools.contains(&pool) && kind == wanted_kind && !kept.contains_key(&pool) {
            kept.insert(pool, (kind, w));
        } else {
            let api = workload_api(client, &namespace, kind);
            let wname = w.name_any();
            match api.delete(&wname, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(
                        yurtappset = name,
                        workload = wname,
                        pool,
                        "workload of a pool that left removed"
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut ready = 0;
    let mut updated = 0;
    for pool in &pools {
        let pool_labels = pool_store
            .get(&ObjectRef::new(pool))
            .map(|p| p.labels().clone())
            .unwrap_or_default();
        let (kind, mut desired) = match desired_workload(yas, owner_label, pool, &pool_labels, &rev)
        {
            Ok(x) => x,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(o) = &owner {
            desired["metadata"]["ownerReferences"] = json!([o]);
        }
        let api = workload_api(client, &namespace, kind);
        match kept.get(pool) {
            None => {
                let obj: DynamicObject = serde_json::from_value(desired)?;
                let created = api.create(&PostParams::default(), &obj).await?;
                tracing::info!(
                    yurtappset = name,
                    pool,
                    workload = created.name_any(),
                    "workload created"
                );
            }
            Some((_, existing)) => {
                let current_rev = existing.labels().get(CONTROLLER_REVISION_HASH);
                if current_rev.map(String::as_str) != Some(rev.as_str()) {
                    let patch = json!({
                        "metadata": {
                            "labels": desired["metadata"]["labels"],
                            "annotations": desired["metadata"]["annotations"],
                        },
                        "spec": desired["spec"],
                    });
                    api.patch(
                        &existing.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
                    tracing::info!(
                        yurtappset = name,
                        pool,
                        workload = existing.name_any(),
                        "workload updated to the new revision"
                    );
                } else {
                    updated += 1;
                    if is_ready(existing) {
                        ready += 1;
                    }
                }
            }
        }
    }
    Ok(Dispatch {
        rev,
        pools,
        missing,
        updated,
        ready,
        errors,
    })
}

async fn reconcile(yas: Arc<YurtAppSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if yas.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = yas.name_any();
    let namespace = yas.namespace().unwrap_or_default();
    let owner = yas.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let Dispatch {
        rev,
        pools,
        missing,
        updated,
        ready,
        errors,
    } = dispatch(&ctx.client, &ctx.pools, &yas, REF_YURTAPPSET, owner).await?;
    let condition = |t: &str, ok: bool, reason: &str, message: String| {
        json!({"type": t, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
               "lastTransitionTime": jiff::Timestamp::now().to_string()})
    };
    let conditions = vec![
        condition(
            "PoolFound",
            missing.is_empty(),
            if missing.is_empty() {
                "PoolsFound"
            } else {
                "PoolsMissing"
            },
            if missing.is_empty() {
                format!("{} pool(s) selected", pools.len())
            } else {
                format!(
                    "pools not found: {}",
                    missing.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            },
        ),
        condition(
            "AppDispatched",
            errors.is_empty(),
            if errors.is_empty() {
                "Dispatched"
            } else {
                "TweakFailed"
            },
            if errors.is_empty() {
                "every selected pool has its workload".to_owned()
            } else {
                errors.join("; ")
            },
        ),
    ];
    let status = json!({
        "observedGeneration": yas.metadata.generation,
        "currentRevision": rev,
        "totalWorkloads": pools.len(),
        "readyWorkloads": ready,
        "updatedWorkloads": updated,
        "conditions": conditions,
    });
    let old = serde_json::to_value(&yas.status)?;
    let same = [
        "observedGeneration",
        "currentRevision",
        "totalWorkloads",
        "readyWorkloads",
        "updatedWorkloads",
    ]
    .iter()
    .all(|k| old.get(*k) == status.get(*k))
        && old
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .map(|c| (&c["type"], &c["status"], &c["message"]))
                    .collect::<Vec<_>>()
                    == conditions
                        .iter()
                        .map(|c| (&c["type"], &c["status"], &c["message"]))
                        .collect::<Vec<_>>()
            });
    if !same {
        let api: Api<YurtAppSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    ctx.metrics.reconciled(NAME);
    // Workload readiness changes arrive as owned-object events; poll slowly as well.
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn error_policy(_y: Arc<YurtAppSet>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// Remembers each pool's labels: only a new pool or a label change can change which
/// pools a selector picks (status writes, most pool events at scale, change neither).
#[derive(Default)]
struct PoolLabelChanges(std::sync::Mutex<HashMap<String, BTreeMap<String, String>>>);

impl PoolLabelChanges {
    /// Whether `pool` is new, relabelled or being deleted since last seen.
    fn changed(&self, pool: &NodePool) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if pool.metadata.deletion_timestamp.is_some() {
            seen.remove(&pool.name_any());
            return true;
        }
        let labels = pool.labels().clone();
        seen.insert(pool.name_any(), labels.clone()) != Some(labels)
    }
}

/// A controller for a kind that stamps out one workload per pool (YurtAppSet,
/// YurtAppDaemon): reconciled when it changes, when one of its Deployments or
/// StatefulSets (labelled `owner_label`) changes, and when a pool appears, is
/// relabelled or is deleted. The pool trigger comes from the feed whose store the
/// reconcile reads, so it never sees an older picture than the event (ADR 003).
pub(crate) fn per_pool_controller<K>(
    client: &kube::Client,
    owner_label: &str,
    pools: &Feed<NodePool>,
    shutdown: CancellationToken,
) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    let owned = watcher::Config::default().labels(owner_label);
    let label_changes = PoolLabelChanges::default();
    let mut controller = controller.graceful_shutdown_on(shutdown.cancelled_owned());
    for kind in ["Deployment", "StatefulSet"] {
        let resource = workload_resource(kind);
        controller = controller.owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            resource,
            owned.clone(),
        );
    }
    controller.watches_stream(pools.objects(), move |pool: NodePool| {
        if !label_changes.changed(&pool) {
            return Vec::new();
        }
        store
            .state()
            .iter()
            .map(|s| ObjectRef::from_obj(&**s))
            .collect::<Vec<_>>()
    })
}

/// Runs until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: inputs.client.clone(),
        pools: inputs.pools.store(),
        metrics: inputs.metrics,
    });
    per_pool_controller::<YurtAppSet>(&inputs.client, REF_YURTAPPSET, &inputs.pools, shutdown)
        .run(
            super::instrumented(NAME, ctx.metrics.clone(), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|r| super::log_stream_error(NAME, r))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yas(tweaks: Value) -> YurtAppSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1beta1", "kind": "YurtAppSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {
                "pools": ["hz"],
                "workload": {
                    "workloadTemplate": {"deploymentTemplate": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": {"app": "web"}},
                            "template": {
                                "metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "web", "image": "nginx:1"}]},
                            },
                        },
                    }},
                    "workloadTweaks": tweaks,
                },
            },
        }))
        .expect("valid YurtAppSet")
    }

    #[test]
    fn a_pools_workload_carries_its_identity_and_tweaks() {
        let set = yas(json!([{
            "pools": ["hz"],
            "tweaks": {
                "replicas": 3,
                "containerImages": [{"name": "web", "targetImage": "nginx:2"}],
                "patches": [{"operation": "add", "path": "/spec/template/metadata/labels/site", "value": "{{nodepool-name}}"}],
            },
        }]));
        let (kind, w) =
            desired_workload(&set, REF_YURTAPPSET, "hz", &BTreeMap::new(), "r1").expect("workload");
        assert_eq!(kind, "Deployment");
        assert_eq!(w["metadata"]["generateName"], "web-hz-");
        assert_eq!(w["metadata"]["labels"][POOL_NAME], "hz");
        assert_eq!(w["metadata"]["labels"][REF_YURTAPPSET], "web");
        assert_eq!(w["metadata"]["labels"]["app"], "web");
        assert_eq!(w["spec"]["selector"]["matchLabels"][POOL_NAME], "hz");
        assert_eq!(w["spec"]["template"]["metadata"]["labels"][POOL_NAME], "hz");
        assert_eq!(
            w["spec"]["template"]["spec"]["nodeSelector"][NODE_POOL],
            "hz"
        );
        assert_eq!(w["spec"]["replicas"], 3);
        assert_eq!(
            w["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        assert_eq!(w["spec"]["template"]["metadata"]["labels"]["site"], "hz");
        // Another pool gets no tweaks.
        let (_, other) =
            desired_workload(&set, REF_YURTAPPSET, "sh", &BTreeMap::new(), "r1").expect("workload");
        assert_eq!(other["spec"]["replicas"], 1);
        assert_eq!(
            other["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1"
        );
    }

    #[test]
    fn a_tweak_that_does_not_apply_is_reported() {
        let set = yas(
            json!([{"pools": ["hz"], "tweaks": {"patches": [{"operation": "replace", "path": "/spec/nothing/here", "value": 1}]}}]),
        );
        assert!(desired_workload(&set, REF_YURTAPPSET, "hz", &BTreeMap::new(), "r").is_err());
    }

    #[test]
    fn pools_are_selected_by_name_and_selector() {
        let pool = |name: &str, labels: Value| -> Arc<NodePool> {
            Arc::new(
                serde_json::from_value(json!({
                    "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
                    "metadata": {"name": name, "labels": labels}, "spec": {},
                }))
                .expect("pool"),
            )
        };
        let pools = vec![
            pool("a", json!({"tier": "edge"})),
            pool("b", json!({"tier": "cloud"})),
            pool("c", json!({})),
        ];
        let sel: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge"]}]}),
        )
        .expect("sel");
        let (found, missing) = target_pools(&["c".into(), "zz".into()], Some(&sel), &pools);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), vec!["a", "c"]);
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), vec!["zz"]);
        assert_ne!(revision(&json!({"a": 1})), revision(&json!({"a": 2})));
    }

    #[test]
    fn a_deleted_pool_is_a_change_and_a_recreated_one_is_new() {
        let changes = PoolLabelChanges::default();
        let mut pool: NodePool = serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
            "metadata": {"name": "hz", "labels": {"site": "1"}},
            "spec": {"type": "Edge"},
        }))
        .expect("pool");
        assert!(changes.changed(&pool), "new");
        assert!(!changes.changed(&pool), "a status write changes nothing");
        pool.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(changes.changed(&pool), "deleted");
        pool.metadata.deletion_timestamp = None;
        assert!(changes.changed(&pool), "recreated with the same labels");
    }
}
