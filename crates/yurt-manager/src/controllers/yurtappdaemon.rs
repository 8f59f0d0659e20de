//! The yurtappdaemon controller, kept for compatibility (reference/openyurt.md §3.4):
//! YurtAppDaemon `v1alpha1` is deprecated upstream and gone in OpenYurt 1.7, but objects
//! written for it keep working here. A YurtAppDaemon is a YurtAppSet with a
//! `nodepoolSelector` and no tweaks, so it is reconciled by the yurtappset machinery:
//! one Deployment or StatefulSet per matching pool, labelled
//! `apps.openyurt.io/yurtappdaemon=<name>` and owned by the YurtAppDaemon; status
//! `templateType`, `nodepools`, `currentRevision` and a `WorkLoadProvisioned` condition.
//! Every reconcile logs that the kind is deprecated (once per object and generation).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1alpha1::YurtAppDaemon;
use yurt_api::apps::v1beta1::YurtAppSet;
use yurt_api::apps::v1beta2::NodePool;

use crate::controllers::yurtappset::{Dispatch, ReconcileError, dispatch, per_pool_controller};
use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "yurtappdaemon";

/// Label on the workloads of a YurtAppDaemon, with its name.
pub const REF_YURTAPPDAEMON: &str = "apps.openyurt.io/yurtappdaemon";

/// The YurtAppSet that does what `yad` asks.
///
/// # Errors
/// A daemon whose template does not fit a YurtAppSet.
pub fn as_app_set(yad: &YurtAppDaemon) -> Result<YurtAppSet, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps.openyurt.io/v1beta1", "kind": "YurtAppSet",
        "metadata": {
            "name": yad.name_any(),
            "namespace": yad.namespace(),
            "uid": yad.uid(),
            "generation": yad.metadata.generation,
        },
        "spec": {
            "nodepoolSelector": yad.spec.nodepool_selector,
            "workload": {"workloadTemplate": yad.spec.workload_template},
        },
    }))
}

struct Ctx {
    client: kube::Client,
    pools: Store<NodePool>,
    metrics: ManagerMetrics,
    warned: Mutex<HashSet<(String, Option<i64>)>>,
}

async fn reconcile(yad: Arc<YurtAppDaemon>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if yad.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = yad.name_any();
    let namespace = yad.namespace().unwrap_or_default();
    let first = ctx
        .warned
        .lock()
        .map(|mut w| w.insert((format!("{namespace}/{name}"), yad.metadata.generation)))
        .unwrap_or(false);
    if first {
        tracing::warn!(yurtappdaemon = %name, namespace, "YurtAppDaemon is deprecated (removed in OpenYurt 1.7); use a YurtAppSet with nodepoolSelector");
    }
    let set = as_app_set(&yad)?;
    let owner = yad.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let Dispatch {
        rev, pools, errors, ..
    } = dispatch(&ctx.client, &ctx.pools, &set, REF_YURTAPPDAEMON, owner).await?;
    let template_type = if set
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
    let ok = errors.is_empty();
    let status = json!({
        "observedGeneration": yad.metadata.generation,
        "currentRevision": rev,
        "templateType": template_type,
        "nodepools": pools,
        "conditions": [{
            "type": "WorkLoadProvisioned",
            "status": if ok { "True" } else { "False" },
            "reason": if ok { "Provisioned" } else { "TemplateFailed" },
            "message": if ok { format!("{} pool(s) have their workload", pools.len()) } else { errors.join("; ") },
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }],
    });
    let old = serde_json::to_value(&yad.status)?;
    let same = [
        "observedGeneration",
        "currentRevision",
        "templateType",
        "nodepools",
    ]
    .iter()
    .all(|k| old.get(*k) == status.get(*k))
        && old.pointer("/conditions/0/status") == status.pointer("/conditions/0/status");
    if !same {
        let api: Api<YurtAppDaemon> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    ctx.metrics.reconciled(NAME);
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn error_policy(_y: Arc<YurtAppDaemon>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// Runs until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client: inputs.client.clone(),
        pools: inputs.pools.store(),
        metrics: inputs.metrics,
        warned: Mutex::new(HashSet::new()),
    });
    per_pool_controller::<YurtAppDaemon>(
        &inputs.client,
        REF_YURTAPPDAEMON,
        &inputs.pools,
        shutdown,
    )
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

    #[test]
    fn a_daemon_is_a_selector_only_app_set() {
        let yad: YurtAppDaemon = serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "YurtAppDaemon",
            "metadata": {"name": "dns", "namespace": "kube-system", "uid": "u1", "generation": 3},
            "spec": {
                "selector": {"matchLabels": {"app": "dns"}},
                "nodepoolSelector": {"matchLabels": {"tier": "edge"}},
                "workloadTemplate": {"deploymentTemplate": {
                    "metadata": {"labels": {"app": "dns"}},
                    "spec": {"selector": {"matchLabels": {"app": "dns"}}, "template": {"metadata": {"labels": {"app": "dns"}}, "spec": {"containers": []}}},
                }},
            },
        }))
        .expect("yad");
        let set = as_app_set(&yad).expect("as a set");
        assert_eq!(set.name_any(), "dns");
        assert_eq!(set.uid().as_deref(), Some("u1"));
        assert!(set.spec.pools.is_none());
        assert!(set.spec.workload.workload_tweaks.is_none());
        assert!(
            set.spec
                .workload
                .workload_template
                .deployment_template
                .is_some()
        );
        let (kind, w) = crate::controllers::yurtappset::desired_workload(
            &set,
            REF_YURTAPPDAEMON,
            "hz",
            &Default::default(),
            "r",
        )
        .expect("workload");
        assert_eq!(kind, "Deployment");
        assert_eq!(w["metadata"]["labels"][REF_YURTAPPDAEMON], "dns");
        assert!(
            w["metadata"]["labels"]
                .get(yurt_api::labels::REF_YURTAPPSET)
                .is_none()
        );
    }
}
