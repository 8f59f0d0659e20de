//! PlatformAdmin `iot.openyurt.io/v1beta1` (served and stored): the edge platform of
//! node pools, as the components it runs.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A condition of a PlatformAdmin, a component, and the observed state: as in
/// `v1alpha2`.
pub use super::v1alpha2::{Component, PlatformAdminCondition, PlatformAdminStatus};

/// Desired state of a `v1beta1` PlatformAdmin.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.openyurt.io",
    version = "v1beta1",
    kind = "PlatformAdmin",
    namespaced,
    status = "PlatformAdminStatus",
    shortname = "pa",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "The edge platform of node pools (iot.openyurt.io/v1beta1).",
    printcolumn(
        name = "READY",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "Whether the platform is ready"
    ),
    printcolumn(
        name = "ReadyComponentNum",
        type_ = "integer",
        json_path = ".status.readyComponentNum",
        description = "Ready components"
    ),
    printcolumn(
        name = "UnreadyComponentNum",
        type_ = "integer",
        json_path = ".status.unreadyComponentNum",
        description = "Components not ready"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PlatformAdminSpec {
    /// The platform's release (EdgeX's release name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where its images come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    /// The node pools it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodepools: Option<Vec<String>>,
    /// The platform (only `edgex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The components to run besides the platform's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<Component>>,
    /// Whether the platform runs in its secure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<bool>,
}
