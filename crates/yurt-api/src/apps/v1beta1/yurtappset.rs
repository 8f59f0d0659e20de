//! YurtAppSet `v1beta1` (the storage version): one workload per selected NodePool, with
//! per-pool tweaks (replicas, images, JSON patches).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadTemplate;
use crate::common::{ConditionStatus, string_enum};

/// Desired state of a `v1beta1` YurtAppSet. Pools are the union of `nodepoolSelector` and
/// `pools`.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1beta1",
    kind = "YurtAppSet",
    namespaced,
    status = "YurtAppSetStatus",
    shortname = "yas",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A workload replicated into selected node pools, tweaked per pool (apps.openyurt.io/v1beta1).",
    printcolumn(
        name = "TOTAL",
        type_ = "integer",
        json_path = ".status.totalWorkloads",
        description = "Workloads in total"
    ),
    printcolumn(
        name = "READY",
        type_ = "integer",
        json_path = ".status.readyWorkloads",
        description = "Ready workloads"
    ),
    printcolumn(
        name = "UPDATED",
        type_ = "integer",
        json_path = ".status.updatedWorkloads",
        description = "Workloads on the current revision"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppSetSpec {
    /// The workload template and its per-pool tweaks.
    pub workload: Workload,
    /// NodePools (by their labels) that get a workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodepool_selector: Option<LabelSelector>,
    /// NodePools (by name) that get a workload; `nodepoolSelector` is preferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    /// How many old ControllerRevisions to keep (upstream defaults to 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
}

/// The workload a `v1beta1` YurtAppSet stamps out, and how it differs per pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// The workload (StatefulSet or Deployment; the kind is immutable).
    pub workload_template: WorkloadTemplate,
    /// Per-pool differences, applied in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_tweaks: Option<Vec<WorkloadTweak>>,
}

/// Tweaks applied to the workloads of the pools this entry selects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTweak {
    /// NodePools (by their labels) whose workloads are tweaked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodepool_selector: Option<LabelSelector>,
    /// NodePools (by name) whose workloads are tweaked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    /// What changes.
    pub tweaks: Tweaks,
}

/// Changes to one workload: replicas and images first, then JSON patches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tweaks {
    /// Replicas of the pool's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Container images to replace, by container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_images: Option<Vec<ImageTweak>>,
    /// JSON-patch operations on the workload template; `{{nodepool-name}}` in a value is
    /// replaced by the pool's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patches: Option<Vec<PatchTweak>>,
}

/// Replace one container's image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTweak {
    /// The container's name.
    pub name: String,
    /// The image to run instead.
    pub target_image: String,
}

/// The JSON-patch operations a tweak may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchOperation {
    /// Add a value at the path.
    Add,
    /// Remove the value at the path.
    Remove,
    /// Replace the value at the path.
    Replace,
}

/// One JSON-patch operation on the workload template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PatchTweak {
    /// JSON pointer into the workload template.
    pub path: String,
    /// What to do at `path`.
    pub operation: PatchOperation,
    /// The value to add or replace with (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub value: Option<serde_json::Value>,
}

/// Observed state of a `v1beta1` YurtAppSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppSetStatus {
    /// The generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash-collision counter used to name the newest ControllerRevision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The ControllerRevision the workloads are converging to.
    pub current_revision: String,
    /// Latest observations of the set's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<YurtAppSetCondition>>,
    /// Workloads whose pods are all ready.
    pub ready_workloads: i32,
    /// Workloads on the current revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_workloads: Option<i32>,
    /// Workloads in total.
    pub total_workloads: i32,
}

string_enum! {
    /// Condition types of a `v1beta1` YurtAppSet.
    pub enum YurtAppSetConditionType {
        /// Every expected workload was created.
        AppDispatched => "AppDispatched",
        /// Every unexpected workload was deleted.
        AppDeleted => "AppDeleted",
        /// Every workload was updated to the current revision.
        AppUpdated => "AppUpdated",
        /// Every workload is ready.
        AppReady => "AppReady",
        /// Every selected NodePool exists.
        PoolFound => "PoolFound",
    }
}

/// One observation of a `v1beta1` YurtAppSet's state.
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
