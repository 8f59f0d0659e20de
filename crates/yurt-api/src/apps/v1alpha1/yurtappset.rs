//! YurtAppSet `v1alpha1`: one workload per listed pool, each pool with its own node
//! selector, tolerations, replica count and patch (deprecated upstream; `v1beta1` is the
//! storage version).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{TemplateType, WorkloadTemplate};
use crate::common::{ConditionStatus, string_enum};

/// Desired state of a `v1alpha1` YurtAppSet.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1alpha1",
    kind = "YurtAppSet",
    namespaced,
    status = "YurtAppSetStatus",
    shortname = "yas",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A workload replicated into a list of node pools (apps.openyurt.io/v1alpha1, deprecated).",
    printcolumn(
        name = "READY",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready pods"
    ),
    printcolumn(
        name = "WorkloadTemplate",
        type_ = "string",
        json_path = ".status.templateType",
        description = "Kind of workload stamped out per pool"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    printcolumn(
        name = "OverriderRef",
        type_ = "string",
        json_path = ".status.overriderRef",
        description = "YurtAppOverrider bound to this set"
    ),
    deprecated = "apps.openyurt.io/v1alpha1 YurtAppSet is deprecated; use apps.openyurt.io/v1beta1 YurtAppSet; v1alpha1 YurtAppSet.Status.WorkloadSummary should not be used",
    storage = false
)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppSetSpec {
    /// Pods the set counts as its own; must match the template's labels.
    pub selector: LabelSelector,
    /// The workload stamped out in each pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_template: Option<WorkloadTemplate>,
    /// The pools to deploy into and their per-pool settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// How many old ControllerRevisions to keep (upstream defaults to 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
}

/// The pools a `v1alpha1` YurtAppSet deploys into.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Topology {
    /// One entry per pool; names are unique within the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<Pool>>,
}

/// One pool of a `v1alpha1` YurtAppSet and how its workload differs from the template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The NodePool's name; also part of the workload's generated name.
    pub name: String,
    /// Nodes the pool's pods may run on (immutable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector_term: Option<NodeSelectorTerm>,
    /// Tolerations added to the pool's pods (immutable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Replicas of the pool's workload.
    pub replicas: i32,
    /// A strategic-merge patch applied to the pool's workload template; wins over `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub patch: Option<RawExtension>,
}

/// Observed state of a `v1alpha1` YurtAppSet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppSetStatus {
    /// The generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash-collision counter used to name the newest ControllerRevision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The ControllerRevision the pools are converging to.
    pub current_revision: String,
    /// Latest observations of the set's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<YurtAppSetCondition>>,
    /// Pods across all pools.
    pub replicas: i32,
    /// Ready pods across all pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Replicas per pool name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_replicas: Option<BTreeMap<String, i32>>,
    /// Kind of workload stamped out per pool.
    pub template_type: TemplateType,
    /// Per-workload replica summary (upstream asks not to rely on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_summary: Option<Vec<WorkloadSummary>>,
    /// Name of the YurtAppOverrider bound to this set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrider_ref: Option<String>,
}

string_enum! {
    /// Condition types of a `v1alpha1` YurtAppSet.
    pub enum YurtAppSetConditionType {
        /// Every expected pool exists and no unexpected one does.
        PoolProvisioned => "PoolProvisioned",
        /// Every pool runs the current revision.
        PoolUpdated => "PoolUpdated",
        /// Reconciling some pool failed.
        PoolFailure => "PoolFailure",
    }
}

/// One observation of a `v1alpha1` YurtAppSet's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppSetCondition {
    /// What the condition is about.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<YurtAppSetConditionType>,
    /// Whether it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ConditionStatus>,
    /// When `status` last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Machine-readable reason for the last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Replica counts of one workload a YurtAppSet or YurtAppDaemon created.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSummary {
    /// The workload's `Available` condition status.
    pub available_condition: ConditionStatus,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// The workload's name.
    pub workload_name: String,
}
