//! The autonomy controller's pod half (OpenYurt's pod-binding controller): pods on an
//! autonomous node get the node's autonomy as the `tolerationSeconds` of their
//! `node.kubernetes.io/not-ready` and `unreachable` NoExecute tolerations (none = never
//! evicted), so the real kube-controller-manager does not evict them while the node is
//! cut off. The originals are kept in pod annotations and restored when the node stops
//! being autonomous. DaemonSet pods (already tolerating forever) and static pods'
//! mirrors are left alone.
//!
//! Kubernetes allows changing an existing toleration's `tolerationSeconds` and adding
//! tolerations on a running pod, which is all this needs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use yurt_api::labels::{
    ORIGINAL_NOT_READY_TOLERATION_DURATION, ORIGINAL_UNREACHABLE_TOLERATION_DURATION,
};

use crate::autonomy::{self, Autonomy};
use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "podbinding";

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    /// Each node's autonomy as last seen on this controller's node watch: the same
    /// stream that triggers the reconcile, so a reconcile never reads an older node.
    autonomy: Arc<Mutex<HashMap<String, Autonomy>>>,
    metrics: ManagerMetrics,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(#[from] kube::Error);

fn skipped(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    let mirror = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let daemon = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    mirror || daemon || meta.deletion_timestamp.is_some()
}

fn seconds_text(s: Option<i64>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

/// Annotation changes: a value to set, or `None` to remove the key.
pub type AnnotationChanges = BTreeMap<String, Option<String>>;

/// The tolerations and annotations `pod` should have on a node with `autonomy`, or
/// `None` when it already has them.
pub fn desired(pod: &Pod, autonomy: Autonomy) -> Option<(Vec<Toleration>, AnnotationChanges)> {
    let mut tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mut annotation_changes = BTreeMap::new();
    let mut changed = false;
    for (key, saved_key) in [
        (NOT_READY, ORIGINAL_NOT_READY_TOLERATION_DURATION),
        (UNREACHABLE, ORIGINAL_UNREACHABLE_TOLERATION_DURATION),
    ] {
        let index = tolerations.iter().position(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some("NoExecute")
                && t.operator.as_deref().unwrap_or("Equal") == "Exists"
        });
        let current = index.and_then(|i| tolerations[i].toleration_seconds);
        let target = match autonomy {
            Autonomy::Forever => None,
            Autonomy::For(d) => Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Autonomy::Off => match annotations.get(saved_key) {
                Some(saved) => saved.parse().ok(),
                None => continue,
            },
        };
        if autonomy != Autonomy::Off && !annotations.contains_key(saved_key) {
            annotation_changes.insert(saved_key.to_owned(), Some(seconds_text(current)));
        }
        if autonomy == Autonomy::Off {
            annotation_changes.insert(saved_key.to_owned(), None);
        }
        match index {
            Some(i) if current != target => {
                tolerations[i].toleration_seconds = target;
                changed = true;
            }
            Some(_) => {}
            None if autonomy != Autonomy::Off => {
                tolerations.push(Toleration {
                    key: Some(key.to_owned()),
                    operator: Some("Exists".to_owned()),
                    effect: Some("NoExecute".to_owned()),
                    toleration_seconds: target,
                    value: None,
                });
                changed = true;
            }
            None => {}
        }
    }
    (changed || !annotation_changes.is_empty()).then_some((tolerations, annotation_changes))
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if skipped(&pod) {
        return Ok(Action::await_change());
    }
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(Action::await_change());
    };
    let seen = ctx
        .autonomy
        .lock()
        .ok()
        .and_then(|m| m.get(&node_name).copied());
    let autonomy = match seen {
        Some(a) => a,
        None => match ctx.nodes.get(&ObjectRef::new(&node_name)) {
            Some(node) => autonomy::of(&node),
            None => return Ok(Action::await_change()),
        },
    };
    let Some((tolerations, annotations)) = desired(&pod, autonomy) else {
        return Ok(Action::await_change());
    };
    let (Some(ns), Some(name)) = (
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "metadata": {"annotations": annotations},
        "spec": {"tolerations": tolerations},
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    ctx.metrics.reconciled(NAME);
    tracing::info!(
        pod = name,
        namespace = ns,
        node = node_name,
        "pod tolerations follow the node's autonomy"
    );
    Ok(Action::await_change())
}

fn error_policy(_pod: Arc<Pod>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let controller = Controller::for_stream(inputs.pods.objects(), inputs.pods.store());
    let pod_store = inputs.pods.store();
    let autonomy_seen = Arc::new(Mutex::new(HashMap::new()));
    let ctx = Arc::new(Ctx {
        client: inputs.client,
        nodes: inputs.nodes.store(),
        autonomy: autonomy_seen.clone(),
        metrics: inputs.metrics,
    });
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .watches_stream(inputs.nodes.objects(), move |node: Node| {
            // Only a change of the node's autonomy concerns its pods (not the
            // status heartbeats and taint updates that make up most node events).
            let name = node.metadata.name.clone().unwrap_or_default();
            let now = autonomy::of(&node);
            let changed = autonomy_seen
                .lock()
                .map(|mut m| m.insert(name.clone(), now) != Some(now))
                .unwrap_or(true);
            if !changed {
                return Vec::new();
            }
            pod_store
                .state()
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
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
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod_with(tolerations: Vec<Toleration>, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn default_toleration(key: &str) -> Toleration {
        Toleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: Some(300),
            value: None,
        }
    }

    #[test]
    fn autonomy_sets_saves_and_restores_toleration_seconds() {
        let fresh = pod_with(
            vec![
                default_toleration(NOT_READY),
                default_toleration(UNREACHABLE),
            ],
            &[],
        );
        let (t, a) = desired(&fresh, Autonomy::Forever).expect("changes");
        assert!(t.iter().all(|t| t.toleration_seconds.is_none()));
        assert_eq!(
            a[ORIGINAL_NOT_READY_TOLERATION_DURATION].as_deref(),
            Some("300")
        );

        let bound = pod_with(
            t,
            &[
                (ORIGINAL_NOT_READY_TOLERATION_DURATION, "300"),
                (ORIGINAL_UNREACHABLE_TOLERATION_DURATION, "300"),
            ],
        );
        assert!(
            desired(&bound, Autonomy::Forever).is_none(),
            "already bound"
        );

        let (t, _) = desired(&bound, Autonomy::For(Duration::from_secs(600))).expect("changes");
        assert!(t.iter().all(|t| t.toleration_seconds == Some(600)));

        let (t, a) = desired(&bound, Autonomy::Off).expect("restores");
        assert!(t.iter().all(|t| t.toleration_seconds == Some(300)));
        assert_eq!(
            a[ORIGINAL_UNREACHABLE_TOLERATION_DURATION], None,
            "annotation removed"
        );

        assert!(
            desired(&fresh, Autonomy::Off).is_none(),
            "not autonomous, nothing saved"
        );

        let bare = pod_with(Vec::new(), &[]);
        let (t, _) = desired(&bare, Autonomy::Forever).expect("adds");
        assert_eq!(t.len(), 2);
    }
}
