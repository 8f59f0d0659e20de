//! `apps.openyurt.io`: NodePool, NodeBucket, YurtAppSet, YurtAppDaemon and YurtStaticSet.
//!
//! One module per API version, as upstream serves them. NodePool's storage version is
//! `v1beta2` and YurtAppSet's is `v1beta1`; the other kinds exist only in `v1alpha1`.
//! Types that are identical in every version (the NodePool type, the workload templates)
//! live here and are re-exported by each version module.

use k8s_openapi::api::apps::v1::{DeploymentSpec, StatefulSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::string_enum;

pub mod v1alpha1;
pub mod v1beta1;
pub mod v1beta2;

/// The API group of every kind in this module.
pub const GROUP: &str = "apps.openyurt.io";

string_enum! {
    /// Whether a NodePool holds edge or cloud nodes.
    pub enum NodePoolType {
        /// Edge nodes, possibly cut off from the cloud (the default the webhook fills in).
        Edge => "Edge",
        /// Nodes in the cloud next to the control plane.
        Cloud => "Cloud",
    }
}

string_enum! {
    /// Which workload kind a YurtAppSet or YurtAppDaemon stamps out per pool.
    pub enum TemplateType {
        /// One StatefulSet per pool.
        StatefulSet => "StatefulSet",
        /// One Deployment per pool.
        Deployment => "Deployment",
    }
}

/// The workload stamped out once per selected pool: exactly one of the two templates is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTemplate {
    /// A StatefulSet per pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stateful_set_template: Option<StatefulSetTemplateSpec>,
    /// A Deployment per pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_template: Option<DeploymentTemplateSpec>,
}

/// Metadata and spec of the StatefulSet created in each pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct StatefulSetTemplateSpec {
    /// Labels and annotations for each pool's StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub metadata: Option<ObjectMeta>,
    /// The StatefulSet spec every pool starts from (tweaks apply on top).
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub spec: StatefulSetSpec,
}

/// Metadata and spec of the Deployment created in each pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DeploymentTemplateSpec {
    /// Labels and annotations for each pool's Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub metadata: Option<ObjectMeta>,
    /// The Deployment spec every pool starts from (tweaks apply on top).
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub spec: DeploymentSpec,
}
