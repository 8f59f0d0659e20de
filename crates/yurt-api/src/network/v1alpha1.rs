//! PoolService `network.openyurt.io/v1alpha1`: one per (LoadBalancer Service, NodePool)
//! pair; a pool-level load-balancer controller fills its status, and the results are
//! aggregated back into the Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::LoadBalancerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a PoolService.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "network.openyurt.io",
    version = "v1alpha1",
    kind = "PoolService",
    namespaced,
    status = "PoolServiceStatus",
    shortname = "ps",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A LoadBalancer Service's presence in one node pool (network.openyurt.io/v1alpha1).",
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PoolServiceSpec {
    /// The Service's `spec.loadBalancerClass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
}

/// Observed state of a PoolService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolServiceStatus {
    /// The pool's load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::load_balancer_status")]
    pub load_balancer: Option<LoadBalancerStatus>,
    /// Annotations to aggregate into the Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_to_annotations: Option<BTreeMap<String, String>>,
    /// Labels to aggregate into the Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_to_labels: Option<BTreeMap<String, String>>,
    /// Latest observations of the PoolService's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Option<Vec<Condition>>,
}
