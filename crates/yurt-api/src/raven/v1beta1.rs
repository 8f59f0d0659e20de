//! Gateway `raven.openyurt.io/v1beta1` (the storage version): separate proxy (layer 7,
//! cloud to edge) and tunnel (layer 3, VPN) endpoints, each with its own replica count.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::ExposeType;
use crate::common::string_enum;

/// Desired state of a `v1beta1` Gateway.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "raven.openyurt.io",
    version = "v1beta1",
    kind = "Gateway",
    status = "GatewayStatus",
    shortname = "gw",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "The nodes that carry traffic between node groups (raven.openyurt.io/v1beta1)."
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Nodes this gateway serves (the controller also matches `raven.openyurt.io/gateway=<name>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The layer-7 proxy that carries cloud-to-edge requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_config: Option<ProxyConfiguration>,
    /// The layer-3 tunnel between gateways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_config: Option<TunnelConfiguration>,
    /// Candidate gateway nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    /// How the gateway is reachable; exposed gateways must not be under NAT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_type: Option<ExposeType>,
}

/// Settings of a gateway's layer-7 proxy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ProxyConfiguration {
    /// How many proxy endpoints are active (upstream's JSON key is capitalised).
    #[serde(rename = "Replicas")]
    #[schemars(schema_with = "crate::schema::integer")]
    pub replicas: i32,
    /// Comma-separated kubelet-side HTTP ports to proxy (e.g. `10255,9445`).
    #[serde(rename = "proxyHTTPPort", skip_serializing_if = "Option::is_none")]
    pub proxy_http_port: Option<String>,
    /// Comma-separated kubelet-side HTTPS ports to proxy (e.g. `10250,9100`).
    #[serde(rename = "proxyHTTPSPort", skip_serializing_if = "Option::is_none")]
    pub proxy_https_port: Option<String>,
}

/// Settings of a gateway's layer-3 tunnel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TunnelConfiguration {
    /// How many tunnel endpoints are active, at most 1 (upstream's JSON key is capitalised).
    #[serde(rename = "Replicas")]
    #[schemars(schema_with = "crate::schema::integer")]
    pub replicas: i32,
}

string_enum! {
    /// What an endpoint carries.
    pub enum EndpointType {
        /// Layer-7 proxying (cloud to edge requests).
        Proxy => "proxy",
        /// A layer-3 tunnel.
        Tunnel => "tunnel",
    }
}

/// A node that can act as one of the gateway's proxy or tunnel endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The node's name.
    pub node_name: String,
    /// What the endpoint carries.
    #[serde(rename = "type")]
    pub type_: EndpointType,
    /// The port it listens on (upstream defaults: 10262 proxy, 4500 tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::integer")]
    pub port: Option<i32>,
    /// The node sits behind NAT.
    #[serde(rename = "underNAT", skip_serializing_if = "Option::is_none")]
    pub under_nat: Option<bool>,
    /// The kind of NAT in front of the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_type: Option<String>,
    /// The node's public IP.
    #[serde(rename = "publicIP", skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// The public port mapped to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::integer")]
    pub public_port: Option<i32>,
    /// Driver settings for this endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
}

/// Observed state of a `v1beta1` Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The nodes this gateway serves, with their addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeInfo>>,
    /// The endpoints currently active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_endpoints: Option<Vec<Endpoint>>,
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
    /// Subnets routed to the node (pod CIDRs plus any extra allowed source CIDRs).
    pub subnets: Vec<String>,
}
