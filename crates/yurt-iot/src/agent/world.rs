//! What the agent should be doing, from the Devices and DeviceProfiles of its pool: for
//! each device, the configuration of its loop, or why it cannot be driven.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use yurt_api::iot::v1alpha1::{Device, DeviceProfile};
use yurt_api::iot::{AdminState, platform_name};

use crate::driver::{Drivers, Resource};
use crate::engine::{Desired, DeviceConfig};

/// The annotation that sets a device's poll interval (on the Device, else its profile):
/// seconds, or a Go duration (`500ms`, `2s`, `1m`).
pub const POLL_INTERVAL_ANNOTATION: &str = "iot.openyurt.io/poll-interval";
/// The shortest poll interval an annotation may ask for.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest poll interval an annotation may ask for.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(86_400);

/// A device of the pool, and what to do with it.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Drive it with this configuration.
    Drive(DeviceConfig),
    /// It cannot be driven; the reason goes to its status.
    Stuck {
        /// A CamelCase reason.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A duration as an annotation gives it: seconds, or Go's `ms`, `s`, `m`, `h` suffixes;
/// at least [`MIN_POLL_INTERVAL`], and `None` beyond [`MAX_POLL_INTERVAL`].
pub fn parse_interval(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // Beyond a day is refused (the default applies), not a panic or an overflow.
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= MAX_POLL_INTERVAL)
        .map(|d| d.max(MIN_POLL_INTERVAL))
}

fn annotation<'a, K: kube::Resource>(object: &'a K, key: &str) -> Option<&'a str> {
    object
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The profile of `device` among `profiles` (by the platform's name, in the device's
/// pool, as the webhook resolves it).
pub fn profile_of<'a>(device: &Device, profiles: &'a [DeviceProfile]) -> Option<&'a DeviceProfile> {
    let pool = device.spec.node_pool.as_deref();
    profiles.iter().find(|p| {
        platform_name(*p) == device.spec.profile_name && p.spec.node_pool.as_deref() == pool
    })
}

/// What to do with `device`.
pub fn plan(
    device: &Device,
    profiles: &[DeviceProfile],
    drivers: &Drivers,
    default_interval: Duration,
) -> Plan {
    let Some(profile) = profile_of(device, profiles) else {
        return Plan::Stuck {
            reason: "ProfileNotFound",
            message: format!(
                "no DeviceProfile named {:?} in pool {:?}",
                device.spec.profile_name,
                device.spec.node_pool.as_deref().unwrap_or("")
            ),
        };
    };
    let protocols = device.spec.protocols.clone().unwrap_or_default();
    let (driver, properties) = match drivers.for_protocols(&protocols) {
        Ok((d, p)) => (d, p.clone()),
        Err(e) => {
            return Plan::Stuck {
                reason: "UnsupportedProtocol",
                message: e.to_string(),
            };
        }
    };
    let mut resources = Vec::new();
    for r in profile.spec.device_resources.iter().flatten() {
        match Resource::from_profile(r) {
            Ok(r) => resources.push(r),
            // Arrays, binaries and objects are left out; the rest are still driven.
            Err(crate::value::ValueError::UnsupportedType(_)) => {}
            Err(e) => {
                return Plan::Stuck {
                    reason: "InvalidProfile",
                    message: format!("resource {:?}: {e}", r.name),
                };
            }
        }
    }
    let locked = device.spec.admin_state == Some(AdminState::Locked);
    let managed = device.spec.managed == Some(true);
    let poll_interval = annotation(device, POLL_INTERVAL_ANNOTATION)
        .or_else(|| annotation(profile, POLL_INTERVAL_ANNOTATION))
        .and_then(parse_interval)
        .unwrap_or(default_interval);
    let desired = device
        .spec
        .device_properties
        .iter()
        .flatten()
        .map(|(key, d)| Desired {
            // The entry's name is the resource; the key normally repeats it.
            resource: if d.name.is_empty() {
                key.clone()
            } else {
                d.name.clone()
            },
            text: d.desired_value.clone(),
        })
        .collect();
    Plan::Drive(DeviceConfig {
        // The platform's name: what MQTT topics and the virtual driver's state use.
        name: platform_name(device).to_owned(),
        driver: Arc::clone(driver),
        properties,
        resources,
        desired,
        writes: managed && !locked,
        polls: !locked,
        poll_interval,
    })
}

/// What identifies a device's configuration: its and its profile's spec (their
/// generation, which status writes leave alone) and poll-interval annotations. When it
/// is the same, the device's loop is left as it is.
pub fn fingerprint(device: &Device, profiles: &[DeviceProfile]) -> String {
    fn part<K: kube::Resource>(o: &K) -> String {
        let m = o.meta();
        format!(
            "{}/{}/{}",
            m.uid.as_deref().unwrap_or(""),
            m.generation.unwrap_or_default(),
            annotation(o, POLL_INTERVAL_ANNOTATION).unwrap_or("")
        )
    }
    format!(
        "{}|{}",
        part(device),
        profile_of(device, profiles).map_or_else(String::new, part)
    )
}

/// The devices of the pool that the agent drives, by name (objects being deleted and
/// other pools' are left out).
pub fn pool_devices<'a>(
    devices: &'a BTreeMap<String, Device>,
    pool: &str,
) -> impl Iterator<Item = (&'a String, &'a Device)> {
    devices.iter().filter(move |(_, d)| drives(d, pool))
}

/// Whether the agent of `pool` drives `device`: one of its pool, not being deleted.
pub fn drives(device: &Device, pool: &str) -> bool {
    device.spec.node_pool.as_deref() == Some(pool) && device.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_within_bounds_and_never_panic() {
        assert_eq!(parse_interval("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_interval("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_interval("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("1ms"), Some(MIN_POLL_INTERVAL));
        assert_eq!(parse_interval("25h"), None);
        assert_eq!(parse_interval("20000000000000000000"), None);
        assert_eq!(parse_interval("1e300h"), None);
        assert_eq!(parse_interval("-1s"), None);
        assert_eq!(parse_interval("soon"), None);
    }
}
