//! Device, DeviceService and DeviceProfile `iot.openyurt.io/v1alpha1`, field for field
//! as upstream OpenYurt serves them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AdminState, OperatingState};
use crate::ConditionStatus;

/// A condition of a device or device service (OpenYurt's own type: every field
/// optional, unlike `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCondition {
    /// The condition's type (`DeviceSynced`, `DeviceManaging`, ...).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `True`, `False` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConditionStatus>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Why, in one CamelCase word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// === Device ===

/// Desired state of a Device.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.openyurt.io",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "dev",
    derive = "Default",
    derive = "PartialEq",
    doc = "A device driven from its node pool (iot.openyurt.io/v1alpha1).",
    printcolumn(
        name = "NODEPOOL",
        type_ = "string",
        json_path = ".spec.nodePool",
        description = "The node pool of the device"
    ),
    printcolumn(
        name = "SYNCED",
        type_ = "boolean",
        json_path = ".status.synced",
        description = "Whether the device is synced with the edge"
    ),
    printcolumn(
        name = "MANAGED",
        type_ = "boolean",
        json_path = ".spec.managed",
        priority = 1,
        description = "Whether the cloud manages the device"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// What the device is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `LOCKED` or `UNLOCKED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    /// `UP`, `DOWN` or `UNKNOWN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_state: Option<OperatingState>,
    /// How to reach it, per protocol (`modbus-tcp: {Address, Port, UnitID}`), as EdgeX
    /// names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<BTreeMap<String, BTreeMap<String, String>>>,
    /// EdgeX labels (not Kubernetes labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The DeviceService that drives it, by the platform's name.
    pub service_name: String,
    /// Its DeviceProfile, by the platform's name.
    pub profile_name: String,
    /// Whether the platform announces changes to it.
    pub notify: bool,
    /// Whether the cloud owns it (false: discovered at the edge, never written from the
    /// cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    /// The node pool whose agent drives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// Desired values, by resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_properties: Option<BTreeMap<String, DesiredPropertyState>>,
}

/// A value the device should hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredPropertyState {
    /// The device resource.
    pub name: String,
    /// The platform's URL that writes it.
    #[serde(rename = "putURL", default, skip_serializing_if = "Option::is_none")]
    pub put_url: Option<String>,
    /// The value, as a string whatever its type.
    pub desired_value: String,
}

/// Observed state of a Device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// When the device last answered, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<i64>,
    /// When it last reported, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reported: Option<i64>,
    /// Whether the object is synced with the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// Values read from the device, by resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_properties: Option<BTreeMap<String, ActualPropertyState>>,
    /// The platform's id of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    /// `LOCKED` or `UNLOCKED`, as the edge has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    /// `UP`, `DOWN` or `UNKNOWN`, as the edge saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_state: Option<OperatingState>,
    /// Latest observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<DeviceCondition>>,
}

/// A value read from the device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActualPropertyState {
    /// The device resource.
    pub name: String,
    /// The platform's URL that reads it.
    #[serde(rename = "getURL", default, skip_serializing_if = "Option::is_none")]
    pub get_url: Option<String>,
    /// The value, as a string whatever its type.
    pub actual_value: String,
}

// === DeviceService ===

/// Desired state of a DeviceService.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.openyurt.io",
    version = "v1alpha1",
    kind = "DeviceService",
    namespaced,
    status = "DeviceServiceStatus",
    shortname = "dsvc",
    derive = "Default",
    derive = "PartialEq",
    doc = "A driver of devices in a node pool (iot.openyurt.io/v1alpha1).",
    printcolumn(
        name = "NODEPOOL",
        type_ = "string",
        json_path = ".spec.nodePool",
        description = "The node pool of the device service"
    ),
    printcolumn(
        name = "SYNCED",
        type_ = "boolean",
        json_path = ".status.synced",
        description = "Whether the device service is synced with the edge"
    ),
    printcolumn(
        name = "MANAGED",
        type_ = "boolean",
        json_path = ".spec.managed",
        priority = 1,
        description = "Whether the cloud manages the device service"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceServiceSpec {
    /// Where the service answers.
    pub base_address: String,
    /// What it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// EdgeX labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// `LOCKED` or `UNLOCKED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    /// Whether the cloud owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    /// The node pool it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
}

/// Observed state of a DeviceService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceServiceStatus {
    /// Whether the object is synced with the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// The platform's id of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    /// When it last answered, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<i64>,
    /// When it last reported, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reported: Option<i64>,
    /// `LOCKED` or `UNLOCKED`, as the edge has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    /// Latest observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<DeviceCondition>>,
}

// === DeviceProfile ===

/// Desired state of a DeviceProfile: what a kind of device holds and how to reach it.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.openyurt.io",
    version = "v1alpha1",
    kind = "DeviceProfile",
    namespaced,
    status = "DeviceProfileStatus",
    shortname = "dp",
    derive = "Default",
    derive = "PartialEq",
    doc = "The resources and commands of a kind of device (iot.openyurt.io/v1alpha1).",
    printcolumn(
        name = "NODEPOOL",
        type_ = "string",
        json_path = ".spec.nodePool",
        description = "The node pool of the device profile"
    ),
    printcolumn(
        name = "SYNCED",
        type_ = "boolean",
        json_path = ".status.synced",
        description = "Whether the device profile is synced with the edge"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProfileSpec {
    /// The node pool it is used in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<String>,
    /// What it describes, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who makes the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Which model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// EdgeX labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The values the device holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_resources: Option<Vec<DeviceResource>>,
    /// Named groups of reads and writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_commands: Option<Vec<DeviceCommand>>,
}

/// One value a device holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceResource {
    /// What it is, for people.
    pub description: String,
    /// Its name, unique in the profile.
    pub name: String,
    /// A tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether commands hide it.
    pub is_hidden: bool,
    /// Its type and range.
    pub properties: ResourceProperties,
    /// How the driver addresses it (Modbus `primaryTable`, `startingAddress`, ...), all
    /// strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// A resource's type and range, every field a string as upstream has them (numbers
/// included: the driver parses them).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProperties {
    /// `R`, `W` or `RW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_write: Option<String>,
    /// The smallest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<String>,
    /// The largest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<String>,
    /// The value before any is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
    /// A bit mask applied to what is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// A bit shift applied to what is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<String>,
    /// A factor applied to what is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<String>,
    /// An offset added to what is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// A base raised to what is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// A value the reading must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<String>,
    /// The media type of a binary value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Its units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// EdgeX's value type (`Bool`, `Int16`, `Float32`, `String`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<String>,
}

/// A named group of reads and writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCommand {
    /// Its name.
    pub name: String,
    /// Whether it is hidden.
    pub is_hidden: bool,
    /// `R`, `W` or `RW`.
    pub read_write: String,
    /// The resources it touches, in order.
    pub resource_operations: Vec<ResourceOperation>,
}

/// One resource a command touches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOperation {
    /// The resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_resource: Option<String>,
    /// Values mapped to others on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mappings: Option<BTreeMap<String, String>>,
    /// The value written when none is given.
    pub default_value: String,
}

/// Observed state of a DeviceProfile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProfileStatus {
    /// The platform's id of the profile (upstream's key is `id`, not `edgeId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Whether the object is synced with the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
}

// === PlatformAdmin (neither served nor stored: the CRD keeps its schema) ===
//
// Upstream's schema of this version spells out the embedded DeploymentSpec and
// ServiceSpec in full (9,000 lines of YAML). Ours keeps them as objects stored as given:
// no request can carry this version (it is not served, and v1beta1 is stored), and the
// full schemas would make the CRD too large for `kubectl apply`'s annotation.

/// A condition of a PlatformAdmin (the same shape as a device's).
pub type PlatformAdminCondition = DeviceCondition;

/// Desired state of a `v1alpha1` PlatformAdmin: the edge platform of one pool, with
/// extra Services and Deployments.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iot.openyurt.io",
    version = "v1alpha1",
    kind = "PlatformAdmin",
    namespaced,
    status = "PlatformAdminStatus",
    shortname = "pa",
    category = "yurt",
    derive = "Default",
    derive = "PartialEq",
    doc = "The edge platform of a node pool (iot.openyurt.io/v1alpha1, neither served nor stored).",
    deprecated = "iot.openyurt.io/v1alpha1 PlatformAdmin will be deprecated in future; use iot.openyurt.io/v1alpha2 PlatformAdmin; v1alpha1 PlatformAdmin.Spec.ServiceType only support ClusterIP",
    printcolumn(
        name = "READY",
        type_ = "boolean",
        json_path = ".status.ready",
        description = "Whether the platform is ready"
    ),
    printcolumn(
        name = "Service",
        type_ = "integer",
        json_path = ".status.serviceReplicas",
        description = "Services"
    ),
    printcolumn(
        name = "ReadyService",
        type_ = "integer",
        json_path = ".status.serviceReadyReplicas",
        description = "Ready Services"
    ),
    printcolumn(
        name = "Deployment",
        type_ = "integer",
        json_path = ".status.deploymentReplicas",
        description = "Deployments"
    ),
    printcolumn(
        name = "ReadyDeployment",
        type_ = "integer",
        json_path = ".status.deploymentReadyReplicas",
        description = "Ready Deployments"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PlatformAdminSpec {
    /// The platform's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where its images come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    /// The node pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    /// The type of its Services (only `ClusterIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// More Services to run in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_services: Option<Vec<ServiceTemplateSpec>>,
    /// More Deployments to run in the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_deployments: Option<Vec<DeploymentTemplateSpec>>,
}

/// A Service to create: its metadata and spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceTemplateSpec {
    /// The Service's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_object")]
    pub metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    /// The Service's spec (kept as given in the schema: this version is never served).
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub spec: k8s_openapi::api::core::v1::ServiceSpec,
}

/// A Deployment to create: its metadata and spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DeploymentTemplateSpec {
    /// The Deployment's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_object")]
    pub metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    /// The Deployment's spec (kept as given in the schema: this version is never served).
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub spec: k8s_openapi::api::apps::v1::DeploymentSpec,
}

/// Observed state of a `v1alpha1` PlatformAdmin.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformAdminStatus {
    /// Whether the platform is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Whether it was set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialized: Option<bool>,
    /// Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_replicas: Option<i32>,
    /// Ready Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ready_replicas: Option<i32>,
    /// Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_replicas: Option<i32>,
    /// Ready Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_ready_replicas: Option<i32>,
    /// Latest observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PlatformAdminCondition>>,
}
