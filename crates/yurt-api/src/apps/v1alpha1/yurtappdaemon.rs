//! YurtAppDaemon `v1alpha1`: one workload in every pool a selector matches (deprecated
//! upstream and removed in OpenYurt 1.7; YurtAppSet `v1beta1` with `nodepoolSelector` does
//! the same; the CRD is still shipped).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{TemplateType, WorkloadSummary, WorkloadTemplate};
use crate::common::{ConditionStatus, string_enum};

/// Desired state of a YurtAppDaemon.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1alpha1",
    kind = "YurtAppDaemon",
    namespaced,
    status = "YurtAppDaemonStatus",
    shortname = "yad",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A workload stamped out in every matching node pool (apps.openyurt.io/v1alpha1, deprecated).",
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
        description = "YurtAppOverrider bound to this daemon"
    ),
    deprecated = "apps.openyurt.io/v1alpha1 YurtAppDaemon is deprecated; use apps.openyurt.io/v1beta1 YurtAppSet;"
)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppDaemonSpec {
    /// Pods the daemon counts as its own; must match the template's labels.
    pub selector: LabelSelector,
    /// The workload stamped out in each pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_template: Option<WorkloadTemplate>,
    /// NodePools (by their labels) that get a workload.
    pub nodepool_selector: LabelSelector,
    /// How many old ControllerRevisions to keep (upstream defaults to 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
}

/// Observed state of a YurtAppDaemon.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppDaemonStatus {
    /// The generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Hash-collision counter used to name the newest ControllerRevision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The ControllerRevision the workloads are converging to.
    pub current_revision: String,
    /// Latest observations of the daemon's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<YurtAppDaemonCondition>>,
    /// Name of the YurtAppOverrider bound to this daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrider_ref: Option<String>,
    /// Per-workload replica summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_summary: Option<Vec<WorkloadSummary>>,
    /// Kind of workload stamped out per pool.
    pub template_type: TemplateType,
    /// Names of the pools that currently have a workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodepools: Option<Vec<String>>,
}

string_enum! {
    /// Condition types of a YurtAppDaemon.
    pub enum YurtAppDaemonConditionType {
        /// Every expected workload exists.
        WorkLoadProvisioned => "WorkLoadProvisioned",
        /// Every workload runs the current revision.
        WorkLoadUpdated => "WorkLoadUpdated",
        /// Reconciling some workload failed.
        WorkLoadFailure => "WorkLoadFailure",
    }
}

/// One observation of a YurtAppDaemon's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtAppDaemonCondition {
    /// What the condition is about.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<YurtAppDaemonConditionType>,
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
