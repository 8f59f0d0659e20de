//! `apps.openyurt.io/v1beta2` NodePool, the storage version: `v1beta1` plus pool-level
//! leader hubs (election strategy, replicas, pool-scoped metadata) and inter-connectivity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::NodePoolType;
pub use crate::common::ConditionStatus;
use crate::common::string_enum;

/// Desired state of a `v1beta2` NodePool.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1beta2",
    kind = "NodePool",
    status = "NodePoolStatus",
    shortname = "np",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "A group of nodes managed as one unit, with optional leader hubs (apps.openyurt.io/v1beta2).",
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
        name = "LeaderNodes",
        type_ = "integer",
        json_path = ".status.leaderNum",
        description = "Elected leader hubs"
    ),
    printcolumn(
        name = "LeaderElectionAge",
        type_ = "date",
        json_path = ".status.leaderLastElectedTime",
        description = "Time since the last leader election"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
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
    /// The pool's nodes reach each other at layer 2 or 3, so pool-level list/watch sharing
    /// applies (immutable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inter_connectivity: Option<bool>,
    /// How leader hubs are chosen (upstream default `random`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_election_strategy: Option<LeaderElectionStrategy>,
    /// Under the `mark` strategy, only nodes with these labels can lead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_node_label_selector: Option<BTreeMap<String, String>>,
    /// Elect leader hubs for this pool (upstream default false); the leader fields apply
    /// only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_leader_election: Option<bool>,
    /// How many leader hubs to elect (upstream default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_replicas: Option<i32>,
    /// Resources a pool's nodes or leaders aggregate pool-wide (upstream default: v1
    /// services and discovery.k8s.io/v1 endpointslices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_scope_metadata: Option<Vec<GroupVersionResource>>,
}

string_enum! {
    /// How a pool elects its leader hubs.
    pub enum LeaderElectionStrategy {
        /// Any ready node, at random.
        Random => "random",
        /// A ready node matching `leaderNodeLabelSelector`.
        Mark => "mark",
    }
}

/// Names one API resource (`group` empty for the core group).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct GroupVersionResource {
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural) name.
    pub resource: String,
}

/// Observed state of a `v1beta2` NodePool.
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
    /// Where the elected leader hubs listen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_endpoints: Option<Vec<LeaderEndpoint>>,
    /// How many leader hubs are elected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_num: Option<i32>,
    /// When the leaders were last elected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_last_elected_time: Option<Time>,
    /// Latest observations of the pool's state (leader election).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<NodePoolCondition>>,
}

/// An elected leader hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderEndpoint {
    /// The leader's node.
    pub node_name: String,
    /// The leader hub's address.
    pub address: String,
}

string_enum! {
    /// Condition types of a NodePool.
    pub enum NodePoolConditionType {
        /// Whether the pool's leader hubs are elected.
        LeaderReady => "LeaderReady",
    }
}

/// One observation of a NodePool's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolCondition {
    /// What the condition is about.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<NodePoolConditionType>,
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
