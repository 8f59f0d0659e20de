//! Gateway `raven.openyurt.io/v1alpha1`: endpoints chosen among the nodes a selector
//! matches, one of them active. Served; stored as `v1beta1`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::ExposeType;

/// Desired state of a `v1alpha1` Gateway.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "raven.openyurt.io",
    version = "v1alpha1",
    kind = "Gateway",
    status = "GatewayStatus",
    shortname = "gw",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "The nodes that carry traffic between node groups (raven.openyurt.io/v1alpha1).",
    printcolumn(
        name = "ActiveEndpoint",
        type_ = "string",
        json_path = ".status.activeEndpoint.nodeName"
    ),
    storage = false
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Nodes this gateway serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Candidate gateway nodes.
    pub endpoints: Vec<Endpoint>,
    /// How the gateway is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_type: Option<ExposeType>,
}

/// A node that can act as the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The node's name.
    pub node_name: String,
    /// The node sits behind NAT.
    #[serde(rename = "underNAT", skip_serializing_if = "Option::is_none")]
    pub under_nat: Option<bool>,
    /// The node's public IP.
    #[serde(rename = "publicIP", skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Tunnel-driver settings for this endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
}

/// Observed state of a `v1alpha1` Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The nodes this gateway serves, with their addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeInfo>>,
    /// The endpoint currently acting as the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_endpoint: Option<Endpoint>,
}

/// A node served by a gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's name.
    pub node_name: String,
    /// The node's private IP.
    #[serde(rename = "privateIP")]
    pub private_ip: String,
    /// Pod subnets routed to the node.
    pub subnets: Vec<String>,
}
