//! NodePool `v1beta1`: members join by the `apps.openyurt.io/nodepool` node label; the pool
//! may run without a CNI (`hostNetwork`). Served; stored as `v1beta2`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NodePoolType;

/// Desired state of a `v1beta1` NodePool.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1beta1",
    kind = "NodePool",
    status = "NodePoolStatus",
    shortname = "np",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A group of nodes managed as one unit (apps.openyurt.io/v1beta1).",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Edge or Cloud"
    ),
    printcolumn(
        name = "ReadyNodes",
        type_ = "integer",
        json_path = ".status.readyNodeNum",
        description = "Ready nodes in the pool"
    ),
    printcolumn(
        name = "NotReadyNodes",
        type_ = "integer",
        json_path = ".status.unreadyNodeNum"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    storage = false
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// Whether the pool holds edge or cloud nodes (immutable).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<NodePoolType>,
    /// The pool's nodes run no CNI and their pods use the host network (immutable, edge only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// Labels written onto every member node, overwriting the same keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations written onto every member node, overwriting the same keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Taints added to every member node (a taint is identified by key and effect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
}

/// Observed state of a `v1beta1` NodePool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// How many member nodes are Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_node_num: Option<i32>,
    /// How many member nodes are not Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unready_node_num: Option<i32>,
    /// Names of the member nodes, sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}
