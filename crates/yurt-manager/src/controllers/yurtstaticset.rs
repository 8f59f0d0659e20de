//! The yurtstaticset controller (reference/openyurt.md §3.5, §5.2): keeps a static pod
//! in step with its YurtStaticSet on every edge node that runs it.
//!
//! The template is rendered into a Pod manifest (name and namespace forced to the
//! set's, annotation `openyurt.io/static-pod-hash` carrying the template hash) and
//! stored in ConfigMap `yurt-static-set-<name>` (owned by the set, so deleting the set
//! deletes it; the static pods stay). Nodes running the static pod are found by their
//! mirror pods, named `<set>-<node>`; a mirror pod whose hash differs is out of date.
//!
//! - `AdvancedRollingUpdate` (the default): on Ready nodes only, a worker pod
//!   `yss-upgrade-worker-<set>-<node>-<hash>` is started on the node; it backs up the
//!   current manifest under `openyurtio-upgrade/` and swaps in the new one atomically
//!   (kubelet then replaces the static pod). At most `maxUnavailable` (default `10%`,
//!   rounded up, at least 1) nodes are unavailable at once: a node counts while its
//!   worker runs and until its static pod is back, Ready, on the new hash, and a node
//!   whose static pod is not Ready counts too. A node that is not Ready is skipped and
//!   upgraded when it comes back. A new version that never becomes Ready stops the
//!   rollout there (upstream's node-servant would also roll the file back; this
//!   version leaves the node for an operator to look at).
//! - `OTA`: out-of-date mirror pods get the condition `PodNeedUpgrade=True` (up-to-date
//!   ones `False`); nothing
//!   changes until the node's owner asks the node's hub (`POST
//!   /openyurt.io/v1/namespaces/<ns>/pods/<pod>/upgrade` on :10267), which writes the
//!   manifest from the ConfigMap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1alpha1::{UpgradeStrategyType, YurtStaticSet};
use yurt_api::labels::{POD_NEED_UPGRADE, STATIC_POD_HASH};

use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "yurtstaticset";

/// Where kubelet reads static pod manifests on an edge node (upstream's fixed path).
pub const STATIC_POD_DIR: &str = "/etc/kubernetes/manifests";

/// Label on upgrade worker pods, with the set's name... truncated to a label value; the
/// owner reference is what ties a worker to its set.
pub const WORKER_LABEL: &str = "openyurt.io/yss-upgrade-worker";

/// Annotation kubelet puts on mirror pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The ConfigMap holding a set's rendered manifest.
pub fn configmap_name(set: &str) -> String {
    format!("yurt-static-set-{set}")
}

/// Checks the fields the controller needs; the message says what is wrong.
///
/// # Errors
/// A missing or unusable manifest name, a missing template, or a bad `maxUnavailable`.
pub fn validate(yss: &YurtStaticSet) -> Result<(), String> {
    let manifest = yss.spec.static_pod_manifest.as_deref().unwrap_or("");
    if manifest.is_empty() {
        return Err("spec.staticPodManifest is required".into());
    }
    if manifest.contains('/') || manifest.starts_with('.') || manifest.len() > 200 {
        return Err(format!(
            "spec.staticPodManifest {manifest:?} must be a plain file name (no '/', not starting with '.')"
        ));
    }
    if yss.spec.template.is_none() {
        return Err("spec.template is required".into());
    }
    if let Some(s) = &yss.spec.upgrade_strategy {
        if let Some(UpgradeStrategyType::Other(t)) = &s.type_ {
            return Err(format!(
                "spec.upgradeStrategy.type {t:?} is not one of AdvancedRollingUpdate, OTA"
            ));
        }
        if let Some(m) = &s.max_unavailable {
            max_unavailable(Some(m), 10)?;
        }
    }
    Ok(())
}

/// `maxUnavailable` against `total` nodes: a count, or a percentage rounded up; at
/// least 1 so a rollout always moves.
///
/// # Errors
/// A value that is neither an integer nor `N%`, or a negative one.
pub fn max_unavailable(value: Option<&IntOrString>, total: usize) -> Result<usize, String> {
    let n = match value {
        None => total.div_ceil(10),
        Some(IntOrString::Int(i)) => {
            usize::try_from(*i).map_err(|_| format!("maxUnavailable {i} must not be negative"))?
        }
        Some(IntOrString::String(s)) => {
            let pct: usize = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("maxUnavailable {s:?} must be an integer or a percentage like \"10%\"")
                })?;
            (total * pct).div_ceil(100)
        }
    };
    Ok(n.max(1))
}

/// The template hash: a new hash means a new version to roll out.
pub fn template_hash(yss: &YurtStaticSet) -> String {
    yss.template_hash()
}

/// The static pod manifest for `yss` (JSON, which kubelet reads as YAML).
pub fn render_manifest(yss: &YurtStaticSet, hash: &str) -> String {
    yss.render_manifest(hash)
}

pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn condition_status<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.as_str())
}

pub(crate) fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.annotations().get(STATIC_POD_HASH).map(String::as_str)
}

/// Each node's readiness as this controller last saw it, and since when.
///
/// Only a change of readiness (a node lost or back) is worth reconciling rollouts for,
/// not the heartbeats that make up most node events. The time of the change tells a
/// blip (a kubelet that missed its lease under load, for which the node lifecycle
/// controller also marks every pod on the node NotReady) from an outage: rollouts keep
/// counting a NotReady node's pods for a grace period and skip the node only after it.
/// The time is this process's own monotonic clock, not the Ready condition's
/// `lastTransitionTime`, so another host's clock cannot shorten or stretch the grace.
#[derive(Default)]
pub(crate) struct NodeReadiness(Mutex<HashMap<String, (bool, Instant)>>);

impl NodeReadiness {
    /// Whether `node` is new or its readiness changed since last seen.
    pub(crate) fn changed(&self, node: &Node) -> bool {
        self.changed_at(node, Instant::now())
    }

    fn changed_at(&self, node: &Node, now: Instant) -> bool {
        let ready = is_node_ready(node);
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        match seen.get(&node.name_any()) {
            Some((was, _)) if *was == ready => false,
            _ => {
                seen.insert(node.name_any(), (ready, now));
                true
            }
        }
    }

    /// Whether a rollout may stop counting the pods on the node `name` (`node` as the
    /// store has it): the node is gone, or NotReady for at least `grace`.
    pub(crate) fn offline(&self, name: &str, node: Option<&Node>, grace: Duration) -> bool {
        self.offline_at(name, node, grace, Instant::now())
    }

    fn offline_at(&self, name: &str, node: Option<&Node>, grace: Duration, now: Instant) -> bool {
        let Some(node) = node else {
            return true;
        };
        if is_node_ready(node) {
            return false;
        }
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        let since = match seen.get(name) {
            Some((false, since)) => *since,
            // Not seen NotReady before (the store is ahead of the event stream).
            _ => {
                seen.insert(name.to_owned(), (false, now));
                now
            }
        };
        now.saturating_duration_since(since) >= grace
    }
}

/// One node's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The node is Ready.
    pub node_ready: bool,
    /// The node is gone or NotReady for longer than the grace period: its static pod
    /// no longer counts as unavailable.
    pub node_offline: bool,
    /// The mirror pod's hash, if the node runs the static pod.
    pub pod_hash: Option<String>,
    /// The static pod is Ready.
    pub pod_ready: bool,
    /// An upgrade worker for the current hash is still at work.
    pub worker_active: bool,
}

/// The nodes to upgrade now under `AdvancedRollingUpdate`, given every node's state,
/// the current hash and the allowance.
pub fn plan_rolling_update(
    nodes: &BTreeMap<String, NodeState>,
    hash: &str,
    max_unavailable: usize,
) -> Vec<String> {
    let current = |s: &NodeState| s.pod_hash.as_deref() == Some(hash);
    let unavailable = nodes
        .values()
        // An upgrade in flight counts wherever it is: its node may look NotReady only
        // for a moment, and skipping it then would start a second one. So does a down
        // static pod on a node that went NotReady only lately (a blip marks every pod
        // on the node NotReady). A node offline for longer does not count, so offline
        // nodes do not stall the rollout.
        .filter(|s| s.worker_active || !s.node_offline && s.pod_hash.is_some() && !s.pod_ready)
        .count();
    let mut budget = max_unavailable.saturating_sub(unavailable);
    let mut chosen = Vec::new();
    // Static pods that are down already cost nothing more to upgrade: take them first.
    for (name, s) in nodes {
        if s.node_ready && !s.worker_active && s.pod_hash.is_some() && !current(s) && !s.pod_ready {
            chosen.push(name.clone());
        }
    }
    for (name, s) in nodes {
        if budget == 0 {
            break;
        }
        if s.node_ready && !s.worker_active && s.pod_hash.is_some() && !current(s) && s.pod_ready {
            chosen.push(name.clone());
            budget -= 1;
        }
    }
    chosen
}

/// The worker pod that swaps the manifest on `node`.
pub fn worker_pod(yss: &YurtStaticSet, node: &str, hash: &str, image: &str) -> Value {
    let set = yss.name_any();
    let manifest = yss.spec.static_pod_manifest.clone().unwrap_or_default();
    let owner = yss.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let label_value: String = set.chars().take(63).collect();
    // Backup first, then an atomic rename: kubelet never reads a half-written file.
    let script = format!(
        "set -e\n\
         m=/manifests/{manifest}.yaml\n\
         mkdir -p /manifests/openyurtio-upgrade\n\
         if [ -f \"$m\" ]; then cp \"$m\" /manifests/openyurtio-upgrade/{manifest}.yaml.bak; fi\n\
         cp /data/{manifest} /manifests/.{manifest}.yaml.tmp\n\
         mv /manifests/.{manifest}.yaml.tmp \"$m\"\n\
         echo upgraded {set} on {node} to {hash}\n"
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("yss-upgrade-worker-{set}-{node}-{hash}"),
            "namespace": yss.namespace().unwrap_or_default(),
            "labels": {WORKER_LABEL: label_value},
            "annotations": {STATIC_POD_HASH: hash, "openyurt.io/yss-upgrade-node": node},
            "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default(),
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "upgrade",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [
                    {"name": "manifests", "mountPath": "/manifests"},
                    {"name": "data", "mountPath": "/data", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "manifests", "hostPath": {"path": STATIC_POD_DIR, "type": "Directory"}},
                {"name": "data", "configMap": {"name": configmap_name(&set)}},
            ],
        },
    })
}

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    readiness: Arc<NodeReadiness>,
    unready_node_grace: Duration,
    metrics: ManagerMetrics,
    worker_image: String,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serde(#[from] serde_json::Error),
}

pub(crate) fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn set_need_upgrade(
    pods: &Api<Pod>,
    pod: &Pod,
    need: bool,
    message: &str,
) -> Result<(), kube::Error> {
    let condition = json!({
        "type": POD_NEED_UPGRADE,
        "status": if need { "True" } else { "False" },
        "reason": if need { "NewVersionAvailable" } else { "UpToDate" },
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    });
    let patch = json!({"status": {"conditions": [condition]}});
    ignore_not_found(
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await,
    )
}

async fn reconcile(yss: Arc<YurtStaticSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if yss.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = yss.name_any();
    let namespace = yss.namespace().unwrap_or_default();
    if let Err(e) = validate(&yss) {
        tracing::warn!(yurtstaticset = %name, namespace, error = %e, "invalid YurtStaticSet; not reconciled");
        return Ok(Action::await_change());
    }
    let hash = template_hash(&yss);
    let manifest_name = yss.spec.static_pod_manifest.clone().unwrap_or_default();
    let owner = yss.controller_owner_ref(&());

    // The rendered manifest, for worker pods and hubs.
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(&name),
            "namespace": namespace,
            "annotations": {STATIC_POD_HASH: hash},
            "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default(),
        },
        "data": {manifest_name.clone(): render_manifest(&yss, &hash)},
    });
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    cms.patch(
        &configmap_name(&name),
        &PatchParams::apply("yurt-manager").force(),
        &Patch::Apply(&cm),
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let all = pods.list(&ListParams::default()).await?.items;
    let uid = yss.uid().unwrap_or_default();
    let mut mirrors: BTreeMap<String, Pod> = BTreeMap::new();
    let mut workers: Vec<Pod> = Vec::new();
    for pod in all {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let owned = pod.owner_references().iter().any(|o| o.uid == uid);
        if owned && pod.labels().contains_key(WORKER_LABEL) {
            workers.push(pod);
        } else if !node.is_empty()
            && pod.annotations().contains_key(MIRROR_ANNOTATION)
            && pod.name_any() == format!("{name}-{node}")
        {
            mirrors.insert(node, pod);
        }
    }
    let total = mirrors.len();
    let ready = mirrors.values().filter(|p| is_pod_ready(p)).count();
    let upgraded = mirrors
        .values()
        .filter(|p| pod_hash(p) == Some(hash.as_str()))
        .count();

    let strategy = yss
        .spec
        .upgrade_strategy
        .as_ref()
        .and_then(|s| s.type_.clone())
        .unwrap_or(UpgradeStrategyType::AdvancedRollingUpdate);
    let mut in_progress = false;
    match strategy {
        UpgradeStrategyType::Ota => {
            for w in &workers {
                ignore_not_found(
                    pods.delete(&w.name_any(), &DeleteParams::background())
                        .await,
                )?;
            }
            for pod in mirrors.values() {
                let need = pod_hash(pod) != Some(hash.as_str());
                let has = condition_status(pod, POD_NEED_UPGRADE);
                if need && has != Some("True") {
                    let msg = format!(
                        "static pod hash {} differs from {hash}",
                        pod_hash(pod).unwrap_or("none")
                    );
                    set_need_upgrade(&pods, pod, true, &msg).await?;
                    tracing::info!(yurtstaticset = %name, pod = %pod.name_any(), "pod marked for an OTA upgrade");
                } else if !need && has != Some("False") {
                    // Every pod of an OTA set says where it stands, new ones included.
                    set_need_upgrade(&pods, pod, false, "static pod is up to date").await?;
                }
            }
        }
        _ => {
            let mut states: BTreeMap<String, NodeState> = BTreeMap::new();
            for (node, pod) in &mirrors {
                states.insert(
                    node.clone(),
                    NodeState {
                        node_ready: false,
                        node_offline: true,
                        pod_hash: pod_hash(pod).map(str::to_owned),
                        pod_ready: is_pod_ready(pod),
                        worker_active: false,
                    },
                );
            }
            for w in &workers {
                let node = w
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let phase = w
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let current = pod_hash(w) == Some(hash.as_str());
                let done = states
                    .get(&node)
                    .is_some_and(|s| s.pod_hash.as_deref() == Some(hash.as_str()) && s.pod_ready);
                let finished = phase == "Succeeded" || phase == "Failed";
                if phase == "Failed" {
                    tracing::warn!(yurtstaticset = %name, node, worker = %w.name_any(), "upgrade worker failed; retrying");
                }
                if !current && finished
                    || done
                    || phase == "Failed"
                    || ctx.nodes.get(&ObjectRef::new(&node)).is_none()
                {
                    ignore_not_found(
                        pods.delete(&w.name_any(), &DeleteParams::background())
                            .await,
                    )?;
                    continue;
                }
                let s = states.entry(node).or_insert(NodeState {
                    node_ready: false,
                    node_offline: true,
                    pod_hash: None,
                    pod_ready: false,
                    worker_active: false,
                });
                s.worker_active = true;
            }
            for (name, s) in &mut states {
                let node = ctx.nodes.get(&ObjectRef::new(name));
                s.node_ready = node.as_deref().is_some_and(is_node_ready);
                s.node_offline =
                    ctx.readiness
                        .offline(name, node.as_deref(), ctx.unready_node_grace);
            }
            let allowed = max_unavailable(
                yss.spec
                    .upgrade_strategy
                    .as_ref()
                    .and_then(|s| s.max_unavailable.as_ref()),
                total,
            )
            .unwrap_or(1);
            for node in plan_rolling_update(&states, &hash, allowed) {
                let worker: Pod =
                    serde_json::from_value(worker_pod(&yss, &node, &hash, &ctx.worker_image))?;
                match pods.create(&PostParams::default(), &worker).await {
                    Ok(_) => {
                        tracing::info!(yurtstaticset = %name, node, hash, "upgrade worker started")
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            in_progress = states
                .values()
                .any(|s| s.worker_active || s.pod_hash.as_deref() != Some(hash.as_str()));
        }
    }

    let status = json!({
        "observedGeneration": yss.metadata.generation,
        "totalNumber": total,
        "readyNumber": ready,
        "upgradedNumber": upgraded,
    });
    let old = serde_json::to_value(&yss.status)?;
    if [
        "observedGeneration",
        "totalNumber",
        "readyNumber",
        "upgradedNumber",
    ]
    .iter()
    .any(|k| old.get(*k) != status.get(*k))
    {
        let api: Api<YurtStaticSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    ctx.metrics.reconciled(NAME);
    Ok(Action::requeue(if in_progress {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    }))
}

fn error_policy(_y: Arc<YurtStaticSet>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// Runs until `shutdown`. `worker_image` runs the upgrade workers (a shell with `cp`
/// and `mv` is all it needs).
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let sets: Api<YurtStaticSet> = Api::all(inputs.client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let by_pod = controller.store();
    let by_node = controller.store();
    let readiness = Arc::new(NodeReadiness::default());
    let ctx = Arc::new(Ctx {
        client: inputs.client,
        nodes: inputs.nodes.store(),
        readiness: readiness.clone(),
        unready_node_grace: inputs.unready_node_grace,
        metrics: inputs.metrics,
        worker_image: inputs.node_servant_image,
    });
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .watches_stream(inputs.pods.objects(), move |pod: Pod| {
            // Mirror pods `<set>-<node>` and the sets' workers.
            let ns = pod.namespace().unwrap_or_default();
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let owners: Vec<String> = pod
                .owner_references()
                .iter()
                .filter(|o| o.kind == "YurtStaticSet")
                .map(|o| o.name.clone())
                .collect();
            let mirror = pod.annotations().contains_key(MIRROR_ANNOTATION);
            let pod_name = pod.name_any();
            by_pod
                .state()
                .iter()
                .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                .filter(|s| {
                    owners.contains(&s.name_any())
                        || (mirror && pod_name == format!("{}-{node}", s.name_any()))
                })
                .map(|s| ObjectRef::from_obj(&**s))
                .collect::<Vec<_>>()
        })
        .watches_stream(inputs.nodes.objects(), move |node: Node| {
            if readiness.changed(&node) {
                by_node
                    .state()
                    .iter()
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            } else {
                Vec::new()
            }
        })
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

    fn yss(strategy: Value) -> YurtStaticSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "YurtStaticSet",
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u1"},
            "spec": {
                "staticPodManifest": "agent",
                "upgradeStrategy": strategy,
                "template": {
                    "metadata": {"name": "ignored", "labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "a", "image": "busybox:1"}]},
                },
            },
        }))
        .expect("valid YurtStaticSet")
    }

    #[test]
    fn the_manifest_takes_the_sets_name_and_carries_the_hash() {
        let set = yss(json!({}));
        let hash = template_hash(&set);
        let pod: Value = serde_json::from_str(&render_manifest(&set, &hash)).expect("json");
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "agent");
        assert_eq!(pod["metadata"]["namespace"], "kube-system");
        assert_eq!(pod["metadata"]["labels"]["app"], "agent");
        assert_eq!(pod["metadata"]["annotations"][STATIC_POD_HASH], json!(hash));
        assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1");
        let mut changed = set.clone();
        if let Some(t) = changed.spec.template.as_mut() {
            t.metadata.get_or_insert_default().labels =
                Some(BTreeMap::from([("v".into(), "2".into())]));
        }
        assert_ne!(template_hash(&changed), hash);
    }

    #[test]
    fn max_unavailable_counts_and_percentages() {
        assert_eq!(max_unavailable(None, 25), Ok(3));
        assert_eq!(max_unavailable(None, 0), Ok(1));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(2)), 25), Ok(2));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 25), Ok(1));
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("50%".into())), 5),
            Ok(3)
        );
        assert!(max_unavailable(Some(&IntOrString::String("half".into())), 5).is_err());
        assert!(max_unavailable(Some(&IntOrString::Int(-1)), 5).is_err());
    }

    #[test]
    fn invalid_sets_are_named() {
        let mut set = yss(json!({}));
        assert_eq!(validate(&set), Ok(()));
        set.spec.static_pod_manifest = Some("../etc/passwd".into());
        assert!(validate(&set).unwrap_err().contains("plain file name"));
        set.spec.static_pod_manifest = None;
        assert!(
            validate(&set)
                .unwrap_err()
                .contains("staticPodManifest is required")
        );
        let odd = yss(json!({"type": "Sideways"}));
        assert!(validate(&odd).unwrap_err().contains("Sideways"));
        let bad = yss(json!({"maxUnavailable": "lots"}));
        assert!(validate(&bad).unwrap_err().contains("lots"));
    }

    fn state(node_ready: bool, hash: &str, pod_ready: bool, worker: bool) -> NodeState {
        NodeState {
            node_ready,
            node_offline: !node_ready,
            pod_hash: Some(hash.into()),
            pod_ready,
            worker_active: worker,
        }
    }

    #[test]
    fn a_rolling_update_stays_within_its_allowance_and_skips_unready_nodes() {
        let mut nodes = BTreeMap::from([
            ("a".to_owned(), state(true, "old", true, false)),
            ("b".to_owned(), state(true, "old", true, false)),
            ("c".to_owned(), state(false, "old", true, false)),
            ("d".to_owned(), state(true, "new", true, false)),
        ]);
        assert_eq!(plan_rolling_update(&nodes, "new", 1), vec!["a"]);
        // a is being upgraded: nothing else starts.
        nodes.insert("a".into(), state(true, "old", true, true));
        assert!(plan_rolling_update(&nodes, "new", 1).is_empty());
        // a came back on the new version, not Ready yet: still counts.
        nodes.insert("a".into(), state(true, "new", false, false));
        assert!(plan_rolling_update(&nodes, "new", 1).is_empty());
        nodes.insert("a".into(), state(true, "new", true, false));
        // c is not Ready: skipped until it returns.
        assert_eq!(plan_rolling_update(&nodes, "new", 1), vec!["b"]);
        assert_eq!(plan_rolling_update(&nodes, "new", 5), vec!["b"]);
        nodes.insert("c".into(), state(true, "old", true, false));
        assert_eq!(plan_rolling_update(&nodes, "new", 5), vec!["b", "c"]);
        // A static pod that is down already is upgraded without waiting.
        nodes.insert("b".into(), state(true, "old", false, false));
        assert_eq!(plan_rolling_update(&nodes, "new", 1), vec!["b"]);
    }

    #[test]
    fn a_down_static_pod_on_a_node_that_just_went_not_ready_counts_until_it_is_offline() {
        let blip = NodeState {
            node_ready: false,
            node_offline: false,
            pod_hash: Some("new".into()),
            pod_ready: false,
            worker_active: false,
        };
        let mut nodes = BTreeMap::from([
            ("a".to_owned(), blip.clone()),
            ("b".to_owned(), state(true, "old", true, false)),
        ]);
        assert!(plan_rolling_update(&nodes, "new", 1).is_empty());
        nodes.insert(
            "a".into(),
            NodeState {
                node_offline: true,
                ..blip
            },
        );
        assert_eq!(plan_rolling_update(&nodes, "new", 1), vec!["b"]);
    }

    fn node(name: &str, ready: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "Unknown" }}]},
        }))
        .expect("node")
    }

    #[test]
    fn a_node_is_offline_once_not_ready_for_the_grace_period_or_gone() {
        let readiness = NodeReadiness::default();
        let grace = Duration::from_secs(40);
        let t0 = Instant::now();
        assert!(readiness.changed_at(&node("a", true), t0), "new node");
        assert!(!readiness.changed_at(&node("a", true), t0), "a heartbeat");
        assert!(!readiness.offline_at("a", Some(&node("a", true)), grace, t0));
        assert!(readiness.offline_at("a", None, grace, t0), "gone");

        let t1 = t0 + Duration::from_secs(100);
        assert!(readiness.changed_at(&node("a", false), t1), "lost");
        let down = node("a", false);
        assert!(!readiness.offline_at("a", Some(&down), grace, t1));
        assert!(!readiness.offline_at("a", Some(&down), grace, t1 + Duration::from_secs(39)));
        assert!(readiness.offline_at("a", Some(&down), grace, t1 + Duration::from_secs(40)));
        // Another NotReady event does not restart the grace period.
        assert!(!readiness.changed_at(&down, t1 + Duration::from_secs(45)));
        assert!(readiness.offline_at("a", Some(&down), grace, t1 + Duration::from_secs(46)));
        // Back and lost again: a new grace period.
        let t2 = t1 + Duration::from_secs(60);
        assert!(readiness.changed_at(&node("a", true), t2));
        assert!(readiness.changed_at(&down, t2 + Duration::from_secs(1)));
        assert!(!readiness.offline_at("a", Some(&down), grace, t2 + Duration::from_secs(2)));
        // Seen NotReady in the store before its event: the grace starts now.
        let b = node("b", false);
        assert!(!readiness.offline_at("b", Some(&b), grace, t2));
        assert!(readiness.offline_at("b", Some(&b), grace, t2 + grace));
    }

    #[test]
    fn an_upgrade_in_flight_counts_even_if_its_node_looks_not_ready() {
        let mut nodes = BTreeMap::from([
            ("a".to_owned(), state(false, "old", false, true)),
            ("b".to_owned(), state(true, "old", true, false)),
        ]);
        assert!(plan_rolling_update(&nodes, "new", 1).is_empty());
        nodes.insert("a".into(), state(false, "old", false, false));
        assert_eq!(
            plan_rolling_update(&nodes, "new", 1),
            vec!["b"],
            "a node that went away without an upgrade in flight does not count"
        );
    }

    #[test]
    fn the_worker_mounts_the_manifest_folder_and_the_configmap() {
        let set = yss(json!({}));
        let w = worker_pod(&set, "edge-1", "abc", "busybox:1");
        assert_eq!(w["metadata"]["name"], "yss-upgrade-worker-agent-edge-1-abc");
        assert_eq!(w["spec"]["nodeName"], "edge-1");
        assert_eq!(w["spec"]["volumes"][0]["hostPath"]["path"], STATIC_POD_DIR);
        assert_eq!(
            w["spec"]["volumes"][1]["configMap"]["name"],
            "yurt-static-set-agent"
        );
        assert_eq!(w["metadata"]["ownerReferences"][0]["uid"], "u1");
        let script = w["spec"]["containers"][0]["command"][2]
            .as_str()
            .expect("script");
        assert!(script.contains("mv /manifests/.agent.yaml.tmp"));
        assert!(serde_json::from_value::<Pod>(w).is_ok());
    }
}
