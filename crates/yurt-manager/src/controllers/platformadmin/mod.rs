//! The platformadmin controller: a PlatformAdmin (`iot.openyurt.io/v1beta1`, as upstream
//! writes it: `platform: edgex`, a version, pools) runs the device agent (`yurt iot
//! agent`, in place of EdgeX and yurt-iot-dock) once in each of its pools, as a
//! YurtAppSet with one replica per pool, each told its pool.
//!
//! Components map onto the agent: `yurt-iot-dock` is the agent itself (always run, as
//! upstream always adds it), `edgex-device-virtual` turns on its virtual driver and
//! registers EdgeX's five Random devices in each pool. EdgeX's own services need no
//! counterpart (devices are driven natively); any other component named in
//! `spec.components` is not run, and the `ComponentsSupported` condition names it.
//!
//! Each pool's agent has an identity of its own: a ServiceAccount per PlatformAdmin and
//! pool ([`agent_account`], labelled with the pool), bound in the PlatformAdmin's
//! namespace to the ClusterRole [`AGENT_ROLE`] (installed with the manager), and to
//! [`VIRTUAL_DEVICES_ROLE`] when it asks for the virtual devices. RBAC cannot tell
//! pools apart, so the device webhook confines each such account to the Devices of its
//! pool: a node that gives its agent's token away cannot write another pool's devices.
//! (Upstream runs every pool's yurt-iot-dock under one account.) All are owned by the
//! PlatformAdmin and go with it; a pool taken off it keeps its account and bindings
//! until then (still confined to that pool; the manager may not delete accounts).
//! Upstream's finalizer is kept: it comes off once the PlatformAdmin is being deleted
//! (its owned objects are then collected).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1beta1::YurtAppSet;
use yurt_api::iot::PLATFORM_ADMIN_FINALIZER;
use yurt_api::iot::v1beta1::PlatformAdmin;
use yurt_api::labels::NODE_POOL;

use crate::install::manifests::BINARY_IN_IMAGE;
use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "platformadmin";

/// The ClusterRole the agents are bound to in their PlatformAdmin's namespace (installed
/// with the manager: the manager may only bind it, not hold its rights).
pub const AGENT_ROLE: &str = "openyurt:yurt-iot-dock";
/// The ClusterRole that lets agents create the virtual devices, bound only for a
/// PlatformAdmin with `edgex-device-virtual`.
pub const VIRTUAL_DEVICES_ROLE: &str = "openyurt:yurt-iot-dock-virtual";
/// Label on what a PlatformAdmin generates (upstream's, with upstream's values).
pub const GENERATE_LABEL: &str = "iot.openyurt.io/generate";
/// Label on what a PlatformAdmin generates, with its name.
pub const PLATFORM_ADMIN_LABEL: &str = "iot.openyurt.io/platformadmin";
/// The component that is the agent.
pub const AGENT_COMPONENT: &str = "yurt-iot-dock";
/// The component that turns on the virtual driver.
pub const VIRTUAL_COMPONENT: &str = "edgex-device-virtual";
/// Where the agents keep their snapshots on their nodes, below a folder per namespace
/// and PlatformAdmin.
pub const STATE_ROOT: &str = "/var/lib/yurt-iot";
/// The agents' health, readiness and metrics port.
pub const AGENT_ADMIN_PORT: u16 = 8081;
/// Condition type: the agents run in every pool.
pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
/// Condition type: every component named is one this platform runs.
pub const COMPONENTS_SUPPORTED: &str = "ComponentsSupported";

const FIELD_MANAGER: &str = "yurt-manager-platformadmin";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// An object that does not decode or encode.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A name still held by an object of a deleted PlatformAdmin.
    #[error("{0} still belongs to a deleted PlatformAdmin; waiting for its removal")]
    Taken(String),
}

struct Ctx {
    client: kube::Client,
    image: String,
    metrics: ManagerMetrics,
}

/// The name of what a PlatformAdmin generates (its agents' YurtAppSet, ServiceAccount
/// and RoleBinding).
pub fn agent_name(pa: &PlatformAdmin) -> String {
    format!("{}-{AGENT_COMPONENT}", pa.name_any())
}

/// The ServiceAccount of `pa`'s agent in `pool`.
pub fn agent_account(pa: &PlatformAdmin, pool: &str) -> String {
    format!("{}-{pool}", agent_name(pa))
}

/// The components named in `spec.components`: whether the virtual driver is on, and
/// those this platform does not run (sorted).
pub fn components(pa: &PlatformAdmin) -> (bool, Vec<String>) {
    let named: BTreeSet<&str> = pa
        .spec
        .components
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let unsupported = named
        .iter()
        .filter(|n| **n != AGENT_COMPONENT && **n != VIRTUAL_COMPONENT)
        .map(|n| (*n).to_owned())
        .collect();
    (named.contains(VIRTUAL_COMPONENT), unsupported)
}

fn labels(pa: &PlatformAdmin) -> Value {
    json!({
        "app.kubernetes.io/name": AGENT_COMPONENT,
        PLATFORM_ADMIN_LABEL: pa.name_any(),
    })
}

/// The YurtAppSet that runs `pa`'s agents: one replica in each pool, told its pool.
pub fn agent_app_set(pa: &PlatformAdmin, image: &str) -> Value {
    let name = agent_name(pa);
    let namespace = pa.namespace().unwrap_or_default();
    let pools = pa.spec.nodepools.clone().unwrap_or_default();
    let (virtual_devices, _) = components(pa);
    let labels = labels(pa);
    let mut args = vec![
        format!("--namespace={namespace}"),
        format!("--state-dir={STATE_ROOT}"),
        format!("--admin-address=0.0.0.0:{AGENT_ADMIN_PORT}"),
    ];
    if virtual_devices {
        args.push("--virtual-devices".to_owned());
    }
    let owner = pa.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {GENERATE_LABEL: "Deployment", PLATFORM_ADMIN_LABEL: pa.name_any()},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "pools": pools,
            "workload": {
                "workloadTemplate": {"deploymentTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "replicas": 1,
                        // One agent per pool drives its devices: never two at once.
                        "strategy": {"type": "Recreate"},
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                // Each pool's account, set by the tweak below; this
                                // one is never created, so a pod that missed the tweak
                                // does not start.
                                "serviceAccountName": name,
                                "containers": [{
                                    "name": AGENT_COMPONENT,
                                    "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": [BINARY_IN_IMAGE, "iot", "agent"],
                                    "args": args,
                                    "ports": [{"name": "admin", "containerPort": AGENT_ADMIN_PORT}],
                                    "livenessProbe": {
                                        "httpGet": {"path": "/healthz", "port": AGENT_ADMIN_PORT},
                                        "periodSeconds": 10,
                                        "failureThreshold": 6,
                                    },
                                    "readinessProbe": {
                                        "httpGet": {"path": "/readyz", "port": AGENT_ADMIN_PORT},
                                        "periodSeconds": 2,
                                    },
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "32Mi"},
                                        "limits": {"cpu": "1", "memory": "256Mi"},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": false,
                                        "readOnlyRootFilesystem": true,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                    "volumeMounts": [{"name": "state", "mountPath": STATE_ROOT}],
                                }],
                                "volumes": [{
                                    "name": "state",
                                    "hostPath": {
                                        "path": format!("{STATE_ROOT}/{namespace}/{}", pa.name_any()),
                                        "type": "DirectoryOrCreate",
                                    },
                                }],
                            },
                        },
                    },
                }},
                "workloadTweaks": [{
                    "pools": pools,
                    "tweaks": {
                        "replicas": 1,
                        "patches": [{
                            "operation": "add",
                            "path": "/spec/template/spec/containers/0/args/-",
                            "value": "--nodepool={{nodepool-name}}",
                        }, {
                            "operation": "replace",
                            "path": "/spec/template/spec/serviceAccountName",
                            "value": format!("{name}-{{{{nodepool-name}}}}"),
                        }],
                    },
                }],
            },
        },
    })
}

/// What [`agent_accounts`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountObject {
    /// A pool's agent's ServiceAccount.
    ServiceAccount,
    /// A binding of it to one of the agents' ClusterRoles.
    RoleBinding,
}

/// The identity of `pa`'s agent in each of its pools: a ServiceAccount labelled with the
/// PlatformAdmin and the pool (what the device webhook confines it by), and its
/// RoleBindings, all owned by `pa`. Accounts come before the bindings naming them.
pub fn agent_accounts(pa: &PlatformAdmin) -> Vec<(AccountObject, Value)> {
    let namespace = pa.namespace().unwrap_or_default();
    let owner = pa.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let (virtual_devices, _) = components(pa);
    let mut objects = Vec::new();
    for pool in pa.spec.nodepools.iter().flatten() {
        let account = agent_account(pa, pool);
        let metadata = |name: &str, generated: &str| {
            json!({
                "name": name,
                "namespace": namespace,
                "labels": {
                    GENERATE_LABEL: generated,
                    PLATFORM_ADMIN_LABEL: pa.name_any(),
                    NODE_POOL: pool,
                },
                "ownerReferences": owner.iter().collect::<Vec<_>>(),
            })
        };
        objects.push((
            AccountObject::ServiceAccount,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": metadata(&account, "ServiceAccount")}),
        ));
        let mut roles = vec![(account.clone(), AGENT_ROLE)];
        if virtual_devices {
            roles.push((format!("{account}-virtual"), VIRTUAL_DEVICES_ROLE));
        }
        for (binding, role) in roles {
            objects.push((
                AccountObject::RoleBinding,
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": metadata(&binding, "RoleBinding"),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
                }),
            ));
        }
    }
    objects
}

/// `pa`'s status from its agents' YurtAppSet (`None`: not made yet).
pub fn status(pa: &PlatformAdmin, set: Option<&YurtAppSet>) -> Value {
    let (virtual_devices, unsupported) = components(pa);
    let (total, ready) = set
        .and_then(|s| serde_json::to_value(&s.status).ok())
        .map_or((0, 0), |s| {
            (
                s["totalWorkloads"].as_i64().unwrap_or(0),
                s["readyWorkloads"].as_i64().unwrap_or(0),
            )
        });
    let pools = pa.spec.nodepools.as_ref().map_or(0, Vec::len) as i64;
    let agents_ready = pools > 0 && total == pools && ready == pools;
    let provided = 1 + i64::from(virtual_devices);
    let (ready_num, unready_num) = if agents_ready {
        (provided, unsupported.len() as i64)
    } else {
        (0, provided + unsupported.len() as i64)
    };
    let now = jiff::Timestamp::now().to_string();
    let previous = |t: &str, status: &str| {
        pa.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter().find(|c| {
                    c.type_.as_deref() == Some(t)
                        && c.status.as_ref().map(|s| s.as_str()) == Some(status)
                })
            })
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now))
    };
    let deployment = if agents_ready {
        (
            "True",
            "DeploymentReady",
            format!("the device agent runs in all {pools} pool(s)"),
        )
    } else if set.is_none() {
        (
            "False",
            "DeploymentProvisioning",
            "the device agents' YurtAppSet is being created".to_owned(),
        )
    } else {
        (
            "False",
            "DeploymentProvisioning",
            format!("the device agent is ready in {ready} of {pools} pool(s)"),
        )
    };
    let supported = if unsupported.is_empty() {
        (
            "True",
            "Supported",
            "every component named is run by this platform".to_owned(),
        )
    } else {
        (
            "False",
            "UnsupportedComponents",
            format!(
                "not run by this platform: {} (devices are driven natively by the device agent; it provides {AGENT_COMPONENT} and {VIRTUAL_COMPONENT})",
                unsupported.join(", ")
            ),
        )
    };
    let condition = |t: &str, (status, reason, message): (&str, &str, String)| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": previous(t, status)})
    };
    json!({
        "ready": agents_ready,
        "initialized": set.is_some(),
        "readyComponentNum": ready_num,
        "unreadyComponentNum": unready_num,
        "conditions": [
            condition(DEPLOYMENT_AVAILABLE, deployment),
            condition(COMPONENTS_SUPPORTED, supported),
        ],
    })
}

/// Creates `object` unless it exists (its content never changes). One of its name left
/// by a deleted PlatformAdmin of the same name is waited for: the garbage collector
/// removes it, and the next try creates ours.
async fn create_once<K>(api: Api<K>, object: Value, owner_uid: &str) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&object.name_any()).await?;
            if existing
                .owner_references()
                .iter()
                .any(|o| o.uid == owner_uid)
            {
                Ok(())
            } else {
                Err(ReconcileError::Taken(object.name_any()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets the PlatformAdmin's finalizers to its own with ours added or removed, at the
/// resourceVersion read (a conflict retries from a fresh read, so no one else's
/// finalizer is lost).
async fn set_finalizer(
    api: &Api<PlatformAdmin>,
    pa: &PlatformAdmin,
    present: bool,
) -> Result<(), kube::Error> {
    let mut finalizers: Vec<String> = pa
        .finalizers()
        .iter()
        .filter(|f| *f != PLATFORM_ADMIN_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(PLATFORM_ADMIN_FINALIZER.to_owned());
    }
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": pa.resource_version(),
    }});
    api.patch(
        &pa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

async fn reconcile(pa: Arc<PlatformAdmin>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let namespace = pa.namespace().unwrap_or_default();
    let api: Api<PlatformAdmin> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = pa
        .finalizers()
        .iter()
        .any(|f| f == PLATFORM_ADMIN_FINALIZER);
    if pa.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            set_finalizer(&api, &pa, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        set_finalizer(&api, &pa, true).await?;
        return Ok(Action::await_change());
    }
    let uid = pa.uid().unwrap_or_default();
    for (kind, object) in agent_accounts(&pa) {
        match kind {
            AccountObject::ServiceAccount => {
                create_once(
                    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &namespace),
                    object,
                    &uid,
                )
                .await?;
            }
            AccountObject::RoleBinding => {
                create_once(
                    Api::<RoleBinding>::namespaced(ctx.client.clone(), &namespace),
                    object,
                    &uid,
                )
                .await?;
            }
        }
    }
    let name = agent_name(&pa);
    let sets: Api<YurtAppSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let set = sets
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&agent_app_set(&pa, &ctx.image)),
        )
        .await?;
    let next = status(&pa, Some(&set));
    let old = serde_json::to_value(&pa.status)?;
    let same = [
        "ready",
        "initialized",
        "readyComponentNum",
        "unreadyComponentNum",
    ]
    .iter()
    .all(|k| old.get(*k) == next.get(*k))
        && (0..2).all(|i| {
            let at = |v: &Value, f: &str| v.pointer(&format!("/conditions/{i}/{f}")).cloned();
            ["type", "status", "reason", "message"]
                .iter()
                .all(|f| at(&old, f) == at(&next, f))
        });
    if !same {
        api.patch_status(
            &pa.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": next})),
        )
        .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_pa: Arc<PlatformAdmin>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// Runs until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let client = inputs.client;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        image: inputs.iot_agent_image,
        metrics: inputs.metrics,
    });
    Controller::new(
        Api::<PlatformAdmin>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .owns(
        Api::<YurtAppSet>::all(client),
        watcher::Config::default().labels(PLATFORM_ADMIN_LABEL),
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
mod tests;
