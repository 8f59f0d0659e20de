//! `iot.openyurt.io`: devices declared in the cloud and driven from their node pool.
//! PlatformAdmin (`v1beta1` served and stored; `v1alpha1` and `v1alpha2` kept in the CRD,
//! not served) sets up each pool's platform. Device, DeviceService and DeviceProfile are
//! `v1alpha1` (their only version), in the
//! shape OpenYurt's yurt-iot-dock syncs with EdgeX: every property value is a string,
//! `DeviceResource.attributes` is a map of strings (users quote numbers; values synced
//! from the edge come back as `"1.000000"`), and `managed: false` objects belong to the
//! edge and are never written from the cloud.

use crate::common::string_enum;

pub mod edgex;
pub mod mqtt;
pub mod v1alpha1;
pub mod v1alpha2;
pub mod v1beta1;

/// The label yurt-iot-dock gives an object it synced from the platform: the platform's
/// own name, which devices use for their profile and service.
pub const EDGEX_NAME_LABEL: &str = "yurt-iot-dock/edgex-object.name";

/// The platform's name of an object: yurt-iot-dock's label when it has one (a synced
/// object), else its own name (upstream's `getEdgeXName`).
pub fn platform_name<K: kube::Resource>(object: &K) -> &str {
    object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(EDGEX_NAME_LABEL))
        .or(object.meta().name.as_ref())
        .map_or("", String::as_str)
}

/// EdgeX's value types (compared without regard to case, as users write them both ways).
pub const VALUE_TYPES: [&str; 27] = [
    "Bool",
    "String",
    "Uint8",
    "Uint16",
    "Uint32",
    "Uint64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Float32",
    "Float64",
    "Binary",
    "Object",
    "ObjectArray",
    "BoolArray",
    "StringArray",
    "Uint8Array",
    "Uint16Array",
    "Uint32Array",
    "Uint64Array",
    "Int8Array",
    "Int16Array",
    "Int32Array",
    "Int64Array",
    "Float32Array",
    "Float64Array",
];

/// The API group of every kind in this module.
pub const GROUP: &str = "iot.openyurt.io";

string_enum! {
    /// Whether a device or device service may be used (EdgeX's admin state).
    pub enum AdminState {
        /// Commands are refused and desired values are not written.
        Locked => "LOCKED",
        /// In use.
        Unlocked => "UNLOCKED",
    }
}

string_enum! {
    /// Whether a device is reachable, as its driver last saw it (EdgeX's operating state).
    pub enum OperatingState {
        /// Answering.
        Up => "UP",
        /// Not answering.
        Down => "DOWN",
        /// Not known yet.
        Unknown => "UNKNOWN",
    }
}

/// The finalizer OpenYurt puts on a Device.
pub const DEVICE_FINALIZER: &str = "iot.openyurt.io/device";
/// The finalizer OpenYurt puts on a DeviceService.
pub const DEVICE_SERVICE_FINALIZER: &str = "iot.openyurt.io/deviceservice";
/// The finalizer OpenYurt puts on a DeviceProfile.
pub const DEVICE_PROFILE_FINALIZER: &str = "iot.openyurt.io/deviceprofile";

/// The finalizer OpenYurt puts on a PlatformAdmin.
pub const PLATFORM_ADMIN_FINALIZER: &str = "iot.openyurt.io";

/// Condition type: the object is synced with the edge.
pub const DEVICE_SYNCED: &str = "DeviceSynced";
/// Condition type: the edge is managing the device.
pub const DEVICE_MANAGING: &str = "DeviceManaging";
/// Condition type: the service is synced with the edge.
pub const DEVICE_SERVICE_SYNCED: &str = "DeviceServiceSynced";
/// Condition type: the edge is managing the service.
pub const DEVICE_SERVICE_MANAGING: &str = "DeviceServiceManaging";
