//! The checks of device admission, on typed objects and without I/O.

use std::collections::BTreeSet;

use kube::Resource;
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceResource};

use super::EDGEX_NAME_LABEL;

/// EdgeX's value types (compared without regard to case, as users write them both ways).
const VALUE_TYPES: [&str; 27] = [
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
/// EdgeX's read-write modes.
const READ_WRITE: [&str; 4] = ["R", "W", "RW", "WR"];
/// Modbus tables (EdgeX's Modbus driver's names).
const MODBUS_TABLES: [&str; 4] = [
    "COILS",
    "DISCRETES_INPUT",
    "INPUT_REGISTERS",
    "HOLDING_REGISTERS",
];
/// Modbus raw types a register may hold before scaling.
const MODBUS_RAW_TYPES: [&str; 8] = [
    "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64", "FLOAT32", "FLOAT64",
];

/// The object named `name`: by its own name, or by the platform's name yurt-iot-dock
/// labels a synced object with.
pub fn resolve<'a, K: Resource>(objects: &'a [K], name: &str) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .or_else(|| {
            objects.iter().find(|o| {
                o.meta()
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(EDGEX_NAME_LABEL))
                    .is_some_and(|n| n == name)
            })
        })
}

fn one_of(value: &str, allowed: &[&str]) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(value))
}

/// A number as EdgeX's client reads it (also `"1.000000"`, as values synced back from
/// the edge are written).
fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn unsigned(text: &str) -> bool {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).is_ok(),
        None => t.parse::<u64>().is_ok(),
    }
}

fn given(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn resource_problems(at: &str, resource: &DeviceResource, out: &mut Vec<String>) {
    let p = &resource.properties;
    match given(p.value_type.as_ref()) {
        None => out.push(format!("{at}.properties.valueType: Required value")),
        Some(t) if !one_of(t, &VALUE_TYPES) => out.push(format!(
            "{at}.properties.valueType: Unsupported value: {t:?}: EdgeX's types are {}",
            VALUE_TYPES.join(", ")
        )),
        Some(_) => {}
    }
    if let Some(rw) = given(p.read_write.as_ref())
        && !one_of(rw, &READ_WRITE)
    {
        out.push(format!(
            "{at}.properties.readWrite: Unsupported value: {rw:?}: must be R, W or RW"
        ));
    }
    let floats = [
        ("minimum", &p.minimum),
        ("maximum", &p.maximum),
        ("scale", &p.scale),
        ("offset", &p.offset),
        ("base", &p.base),
    ];
    for (field, value) in floats {
        if let Some(v) = given(value.as_ref())
            && number(v).is_none()
        {
            out.push(format!(
                "{at}.properties.{field}: Invalid value: {v:?}: not a number"
            ));
        }
    }
    if let Some(v) = given(p.mask.as_ref())
        && !unsigned(v)
    {
        out.push(format!(
            "{at}.properties.mask: Invalid value: {v:?}: not an unsigned integer"
        ));
    }
    if let Some(v) = given(p.shift.as_ref())
        && v.parse::<i64>().is_err()
    {
        out.push(format!(
            "{at}.properties.shift: Invalid value: {v:?}: not an integer"
        ));
    }
    if let (Some(min), Some(max)) = (
        given(p.minimum.as_ref()).and_then(number),
        given(p.maximum.as_ref()).and_then(number),
    ) && min > max
    {
        out.push(format!(
            "{at}.properties: minimum {min} is above maximum {max}"
        ));
    }
    let attributes = resource.attributes.clone().unwrap_or_default();
    if let Some(table) = attributes.get("primaryTable") {
        if !one_of(table, &MODBUS_TABLES) {
            out.push(format!(
                "{at}.attributes.primaryTable: Unsupported value: {table:?}: must be one of {}",
                MODBUS_TABLES.join(", ")
            ));
        }
        match attributes.get("startingAddress").map(String::as_str) {
            None => out.push(format!(
                "{at}.attributes.startingAddress: Required value: a Modbus resource needs its address"
            )),
            Some(a) => {
                let ok = number(a).is_some_and(|n| n.fract() == 0.0 && (0.0..=65535.0).contains(&n));
                if !ok {
                    out.push(format!(
                        "{at}.attributes.startingAddress: Invalid value: {a:?}: must be a register address, 0 to 65535"
                    ));
                }
            }
        }
        if let Some(raw) = attributes.get("rawType")
            && !one_of(raw, &MODBUS_RAW_TYPES)
        {
            out.push(format!(
                "{at}.attributes.rawType: Unsupported value: {raw:?}: must be one of {}",
                MODBUS_RAW_TYPES.join(", ")
            ));
        }
        for swap in ["isByteSwap", "isWordSwap"] {
            if let Some(v) = attributes.get(swap)
                && !(v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"))
            {
                out.push(format!(
                    "{at}.attributes.{swap}: Invalid value: {v:?}: must be true or false"
                ));
            }
        }
    }
}

/// Problems with a profile on its own.
pub fn profile_problems(profile: &DeviceProfile) -> Vec<String> {
    let mut out = Vec::new();
    let resources = profile.spec.device_resources.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, resource) in resources.iter().enumerate() {
        let at = format!("spec.deviceResources[{i}]");
        if resource.name.trim().is_empty() {
            out.push(format!("{at}.name: Required value"));
        } else if !names.insert(resource.name.as_str()) {
            out.push(format!("{at}.name: Duplicate value: {:?}", resource.name));
        }
        resource_problems(&at, resource, &mut out);
    }
    let mut commands = BTreeSet::new();
    for (i, command) in profile
        .spec
        .device_commands
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let at = format!("spec.deviceCommands[{i}]");
        if !commands.insert(command.name.as_str()) {
            out.push(format!("{at}.name: Duplicate value: {:?}", command.name));
        }
        if !one_of(command.read_write.trim(), &READ_WRITE) {
            out.push(format!(
                "{at}.readWrite: Unsupported value: {:?}: must be R, W or RW",
                command.read_write
            ));
        }
        for (j, op) in command.resource_operations.iter().enumerate() {
            if let Some(name) = given(op.device_resource.as_ref())
                && !names.contains(name)
            {
                out.push(format!(
                    "{at}.resourceOperations[{j}].deviceResource: Not found: {name:?}: not a resource of this profile"
                ));
            }
        }
    }
    out
}

/// The range of an integer value type.
fn integer_range(value_type: &str) -> Option<(f64, f64)> {
    let t = value_type.to_ascii_lowercase();
    Some(match t.as_str() {
        "int8" => (f64::from(i8::MIN), f64::from(i8::MAX)),
        "int16" => (f64::from(i16::MIN), f64::from(i16::MAX)),
        "int32" => (f64::from(i32::MIN), f64::from(i32::MAX)),
        // Beyond 2^53 a float cannot tell neighbours apart; the bounds still hold.
        #[allow(clippy::cast_precision_loss)]
        "int64" => (i64::MIN as f64, i64::MAX as f64),
        "uint8" => (0.0, f64::from(u8::MAX)),
        "uint16" => (0.0, f64::from(u16::MAX)),
        "uint32" => (0.0, f64::from(u32::MAX)),
        #[allow(clippy::cast_precision_loss)]
        "uint64" => (0.0, u64::MAX as f64),
        _ => return None,
    })
}

/// Problems with a device's desired values against its profile.
pub fn device_problems(device: &Device, profile: &DeviceProfile) -> Vec<String> {
    let mut out = Vec::new();
    let resources = profile.spec.device_resources.as_deref().unwrap_or_default();
    for (key, desired) in device.spec.device_properties.iter().flatten() {
        let at = format!("spec.deviceProperties[{key}]");
        let Some(resource) = resources.iter().find(|r| r.name == desired.name) else {
            out.push(format!(
                "{at}.name: Not found: {:?}: not a resource of profile {:?}",
                desired.name,
                profile.metadata.name.as_deref().unwrap_or_default()
            ));
            continue;
        };
        let p = &resource.properties;
        let writable =
            given(p.read_write.as_ref()).is_some_and(|rw| rw.to_ascii_uppercase().contains('W'));
        if !writable {
            out.push(format!(
                "{at}: Forbidden: resource {:?} is read-only (readWrite {:?})",
                resource.name,
                p.read_write.as_deref().unwrap_or("")
            ));
            continue;
        }
        let value = desired.desired_value.trim();
        if value.is_empty() {
            // Upstream treats an empty desired value as "none".
            continue;
        }
        let value_type = p.value_type.as_deref().unwrap_or("").trim();
        let is_float = value_type.eq_ignore_ascii_case("float32")
            || value_type.eq_ignore_ascii_case("float64");
        let range = integer_range(value_type);
        if value_type.eq_ignore_ascii_case("bool") {
            if !(value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")) {
                out.push(format!(
                    "{at}.desiredValue: Invalid value: {value:?}: {} is a Bool (true or false)",
                    resource.name
                ));
            }
            continue;
        }
        if !is_float && range.is_none() {
            // Strings, arrays, binaries and objects: the driver decides.
            continue;
        }
        let Some(n) = number(value) else {
            out.push(format!(
                "{at}.desiredValue: Invalid value: {value:?}: {} is a {value_type}",
                resource.name
            ));
            continue;
        };
        if let Some((lo, hi)) = range
            && (n.fract() != 0.0 || n < lo || n > hi)
        {
            out.push(format!(
                "{at}.desiredValue: Invalid value: {value:?}: {} is a {value_type}",
                resource.name
            ));
            continue;
        }
        let min = given(p.minimum.as_ref()).and_then(number);
        let max = given(p.maximum.as_ref()).and_then(number);
        if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
            out.push(format!(
                "{at}.desiredValue: Invalid value: {value:?}: outside {}'s range [{}, {}]",
                resource.name,
                p.minimum.as_deref().unwrap_or("-inf"),
                p.maximum.as_deref().unwrap_or("inf")
            ));
        }
    }
    out
}
