//! EdgeX's five virtual devices (device-virtual's Random-Boolean, -Integer,
//! -UnsignedInteger, -Float and -Binary devices with their profiles and service),
//! registered in a pool the way yurt-iot-dock syncs objects from EdgeX: named
//! `<pool>-<lowercased EdgeX name>`, labelled with the EdgeX name, `managed: false`
//! (the edge owns them), polled at device-virtual's auto-event intervals.

use serde_json::{Value, json};
use yurt_api::iot::EDGEX_NAME_LABEL;
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceService};

use super::world::POLL_INTERVAL_ANNOTATION;
use crate::driver::simulated::RANDOMIZATION_PREFIX;

/// The EdgeX name of the virtual devices' service.
pub const SERVICE: &str = "device-virtual";

/// Each device: EdgeX name, its resources' value types (arrays kept in the profile, as
/// EdgeX's; the agent drives the scalar ones), its address, its auto-event interval.
const DEVICES: [(&str, &[&str], &str, &str); 5] = [
    (
        "Random-Boolean-Device",
        &["Bool", "BoolArray"],
        "device-virtual-bool-01",
        "10s",
    ),
    (
        "Random-Integer-Device",
        &[
            "Int8",
            "Int16",
            "Int32",
            "Int64",
            "Int8Array",
            "Int16Array",
            "Int32Array",
            "Int64Array",
        ],
        "device-virtual-int-01",
        "15s",
    ),
    (
        "Random-UnsignedInteger-Device",
        &[
            "Uint8",
            "Uint16",
            "Uint32",
            "Uint64",
            "Uint8Array",
            "Uint16Array",
            "Uint32Array",
            "Uint64Array",
        ],
        "device-virtual-uint-01",
        "20s",
    ),
    (
        "Random-Float-Device",
        &["Float32", "Float64", "Float32Array", "Float64Array"],
        "device-virtual-float-01",
        "30s",
    ),
    (
        "Random-Binary-Device",
        &["Binary"],
        "device-virtual-binary-01",
        "30s",
    ),
];

/// An object's name as yurt-iot-dock gives it: `<pool>-<EdgeX name, lowercased, '_' as '-'>`.
pub fn synced_name(pool: &str, edgex_name: &str) -> String {
    format!("{pool}-{}", edgex_name.to_lowercase().replace('_', "-"))
}

fn metadata(pool: &str, namespace: &str, edgex_name: &str) -> Value {
    json!({
        "name": synced_name(pool, edgex_name),
        "namespace": namespace,
        "labels": {EDGEX_NAME_LABEL: edgex_name},
    })
}

fn resources(types: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for t in types {
        if *t == "Binary" {
            out.push(json!({
                "name": t, "description": "Generate random binary value", "isHidden": false,
                "properties": {"valueType": t, "readWrite": "R", "mediaType": "random"},
            }));
            continue;
        }
        let default = match (*t, t.ends_with("Array")) {
            ("Bool", _) => "true",
            ("BoolArray", _) => "[true]",
            (_, true) => "[0]",
            _ => "0",
        };
        out.push(json!({
            "name": t, "description": format!("Generate random {t} value"), "isHidden": false,
            "properties": {"valueType": t, "readWrite": "RW", "defaultValue": default},
        }));
        out.push(json!({
            "name": format!("{RANDOMIZATION_PREFIX}{t}"),
            "description": format!("Used to decide whether to re-generate a random {t} value"),
            "isHidden": true,
            "properties": {"valueType": "Bool", "readWrite": "W", "defaultValue": "true"},
        }));
    }
    out
}

fn commands(types: &[&str]) -> Vec<Value> {
    types
        .iter()
        .filter(|t| **t != "Binary")
        .map(|t| {
            json!({
                "name": format!("Write{t}Value"), "isHidden": false, "readWrite": "W",
                "resourceOperations": [
                    {"deviceResource": t, "defaultValue": ""},
                    {"deviceResource": format!("{RANDOMIZATION_PREFIX}{t}"), "defaultValue": "false"},
                ],
            })
        })
        .collect()
}

/// The virtual devices' objects for `pool` in `namespace`: the service, the five
/// profiles, the five devices (in the order they must be created).
pub fn objects(
    pool: &str,
    namespace: &str,
) -> Result<(DeviceService, Vec<DeviceProfile>, Vec<Device>), serde_json::Error> {
    let service = serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
        "metadata": metadata(pool, namespace, SERVICE),
        "spec": {
            "baseAddress": format!("yurt-iot-agent://{pool}/virtual"),
            "description": "EdgeX's virtual devices, driven by the pool's device agent",
            "adminState": "UNLOCKED", "managed": false, "nodePool": pool,
        },
    }))?;
    let mut profiles = Vec::new();
    let mut devices = Vec::new();
    for (name, types, address, interval) in DEVICES {
        let mut meta = metadata(pool, namespace, name);
        profiles.push(serde_json::from_value(json!({
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
            "metadata": meta,
            "spec": {
                "nodePool": pool,
                "description": format!("Example of {name}"),
                "manufacturer": "IOTech", "model": "Device-Virtual-01",
                "labels": ["device-virtual-example"],
                "deviceResources": resources(types),
                "deviceCommands": commands(types),
            },
        }))?);
        meta["annotations"] = json!({POLL_INTERVAL_ANNOTATION: interval});
        devices.push(serde_json::from_value(json!({
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
            "metadata": meta,
            "spec": {
                "description": format!("Example of {name}"),
                "adminState": "UNLOCKED", "operatingState": "UP",
                "protocols": {"other": {"Address": address, "Port": "300"}},
                "labels": ["device-virtual-example"],
                "serviceName": SERVICE, "profileName": name,
                "notify": true, "managed": false, "nodePool": pool,
            },
        }))?);
    }
    Ok((service, profiles, devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::world;
    use crate::driver::Drivers;
    use kube::ResourceExt;

    #[test]
    fn five_devices_resolve_their_profiles_and_are_driven_by_the_virtual_driver() {
        let (service, profiles, devices) = objects("hangzhou", "default").expect("objects");
        assert_eq!(service.name_any(), "hangzhou-device-virtual");
        assert_eq!(devices.len(), 5);
        assert_eq!(devices[0].name_any(), "hangzhou-random-boolean-device");
        assert_eq!(
            devices[0]
                .labels()
                .get(EDGEX_NAME_LABEL)
                .map(String::as_str),
            Some("Random-Boolean-Device")
        );
        let drivers = Drivers::builtin();
        for d in &devices {
            assert_eq!(d.spec.managed, Some(false));
            match world::plan(d, &profiles, &drivers, std::time::Duration::from_secs(5)) {
                world::Plan::Drive(c) => {
                    assert_eq!(c.driver.protocol(), "other");
                    assert!(!c.writes, "the edge owns them");
                    assert!(c.poll_interval >= std::time::Duration::from_secs(10));
                }
                world::Plan::Stuck { reason, message } => panic!("{reason}: {message}"),
            }
        }
        let integer = &profiles[1];
        let names: Vec<&str> = integer
            .spec
            .device_resources
            .iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect();
        assert!(names.contains(&"Int16") && names.contains(&"EnableRandomization_Int16"));
    }
}
