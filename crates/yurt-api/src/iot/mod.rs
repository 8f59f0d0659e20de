//! `iot.openyurt.io`: devices declared in the cloud and driven from their node pool.
//! PlatformAdmin (`v1beta1` served and stored; `v1alpha1` and `v1alpha2` kept in the CRD,
//! not served) sets up each pool's platform. Device, DeviceService and DeviceProfile are
//! `v1alpha1` (their only version), in the
//! shape OpenYurt's yurt-iot-dock syncs with EdgeX: every property value is a string,
//! `DeviceResource.attributes` is a map of strings (users quote numbers; values synced
//! from the edge come back as `"1.000000"`), and `managed: false` objects belong to the
//! edge and are never written from the cloud.

use crate::common::string_enum;

pub mod v1alpha1;
pub mod v1alpha2;
pub mod v1beta1;

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
