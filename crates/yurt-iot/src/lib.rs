//! Device management at the edge: OpenYurt's `iot.openyurt.io` Devices, DeviceProfiles
//! and DeviceServices driven natively from each node pool (docs/adr/009-devices.md).
//!
//! - [`value`]: EdgeX's value types, parsing, reading format and transforms.
//! - [`driver`]: the one trait each protocol implements, and the drivers.
//! - [`engine`]: one device's loop of polls, writes with read-back and status.
//! - [`agent`]: the pool's agent: watches its Devices and DeviceProfiles through the
//!   node's hub, keeps a local snapshot, runs a loop per device and reports status.

pub mod agent;
pub mod driver;
pub mod engine;
pub mod metrics;
pub mod value;

/// Sleeps `wait`, or returns false when `cancel` fires first.
pub(crate) async fn sleep_or_cancel(
    wait: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
