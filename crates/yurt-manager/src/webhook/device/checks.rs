//! The checks of device admission, on typed objects and without I/O.

use std::collections::BTreeSet;

use kube::Resource;
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceResource};

use yurt_api::iot::edgex::modbus_starting_address;
use yurt_api::iot::mqtt::{json_pointer, topic_problem};
use yurt_api::iot::platform_name;

/// EdgeX's read-write modes.
const READ_WRITE: [&str; 4] = ["R", "W", "RW", "WR"];
/// Modbus tables (EdgeX's Modbus driver's names).
const MODBUS_TABLES: [&str; 4] = [
    "COILS",
    "DISCRETES_INPUT",
    "INPUT_REGISTERS",
    "HOLDING_REGISTERS",
];
/// Modbus raw types a register may hold before scaling (device-modbus reads 16-bit
/// raw values only).
const MODBUS_RAW_TYPES: [&str; 2] = ["INT16", "UINT16"];

/// The object of `pool` whose platform name is `name` (each pool's dock keeps its own
/// copy of a platform object, under the same label value). With no pool, any.
pub fn resolve<'a, K: Resource>(
    objects: &'a [K],
    name: &str,
    pool: Option<&str>,
    pool_of: impl Fn(&K) -> Option<&str>,
) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| platform_name(*o) == name && pool.is_none_or(|p| pool_of(o) == Some(p)))
}

fn one_of(value: &str, allowed: &[&str]) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(value))
}

/// A number as EdgeX's client reads it (Go's `ParseFloat`: no surrounding space).
fn number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A boolean as Go's `ParseBool` (and `cast.ToBoolE`) reads it.
fn go_bool(text: &str) -> bool {
    matches!(
        text,
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    )
}

/// A field that is set (Go leaves an empty string unset).
fn given(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.is_empty())
}

fn resource_problems(at: &str, resource: &DeviceResource, out: &mut Vec<String>) {
    let p = &resource.properties;
    match given(p.value_type.as_ref()) {
        None => out.push(format!("{at}.properties.valueType: Required value")),
        Some(t) if !one_of(t, &yurt_api::iot::VALUE_TYPES) => out.push(format!(
            "{at}.properties.valueType: Unsupported value: {t:?}: EdgeX's types are {}",
            yurt_api::iot::VALUE_TYPES.join(", ")
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
    // yurt-iot-dock converts the mask with a base-10 `ParseUint` (a hex mask is
    // dropped silently there).
    if let Some(v) = given(p.mask.as_ref())
        && v.parse::<u64>().is_err()
    {
        out.push(format!(
            "{at}.properties.mask: Invalid value: {v:?}: not an unsigned decimal integer"
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
            Some(a) if modbus_starting_address(a).is_none() => out.push(format!(
                "{at}.attributes.startingAddress: Invalid value: {a:?}: must be a register address, 0 to 65535 (or register.bit)"
            )),
            Some(_) => {}
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
                && !go_bool(v)
            {
                out.push(format!(
                    "{at}.attributes.{swap}: Invalid value: {v:?}: must be true or false"
                ));
            }
        }
    }
    // MQTT values on a device's own topics (yurt_api::iot::mqtt).
    if let Some(topic) = attributes.get("topic")
        && let Some(problem) = topic_problem(topic)
    {
        out.push(format!(
            "{at}.attributes.topic: Invalid value: {topic:?}: {problem}"
        ));
    }
    if let Some(path) = attributes.get("jsonPath")
        && let Err(problem) = json_pointer(path)
    {
        out.push(format!(
            "{at}.attributes.jsonPath: Invalid value: {problem}"
        ));
    }
}

/// Problems with a profile on its own.
pub fn profile_problems(profile: &DeviceProfile) -> Vec<String> {
    let mut out = Vec::new();
    let resources = profile.spec.device_resources.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, resource) in resources.iter().enumerate() {
        let at = format!("spec.deviceResources[{i}]");
        if resource.name.is_empty() {
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
        if !one_of(&command.read_write, &READ_WRITE) {
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

/// The bit size and signedness of an integer value type.
fn integer_type(value_type: &str) -> Option<(u32, bool)> {
    Some(match value_type.to_ascii_lowercase().as_str() {
        "int8" => (8, true),
        "int16" => (16, true),
        "int32" => (32, true),
        "int64" => (64, true),
        "uint8" => (8, false),
        "uint16" => (16, false),
        "uint32" => (32, false),
        "uint64" => (64, false),
        _ => return None,
    })
}

/// Whether `text` is a value of the integer type, as device-sdk reads one (Go's base-10
/// `ParseInt`/`ParseUint` with the type's bit size), and its value.
fn typed_integer(text: &str, bits: u32, signed: bool) -> Option<f64> {
    if signed {
        let n = text.parse::<i64>().ok()?;
        let limit = 1i128 << (bits - 1);
        (i128::from(n) >= -limit && i128::from(n) < limit)
            .then_some(n)
            // Bounds comparison only: a float near 2^63 is close enough.
            .map(|n| n as f64)
    } else {
        let n = text.strip_prefix('+').unwrap_or(text).parse::<u64>().ok()?;
        (bits == 64 || n < (1u64 << bits))
            .then_some(n)
            .map(|n| n as f64)
    }
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
        let value = desired.desired_value.as_str();
        if value.is_empty() {
            // Upstream treats an empty desired value as "none".
            continue;
        }
        let value_type = p.value_type.as_deref().unwrap_or("");
        let wrong_type = || {
            format!(
                "{at}.desiredValue: Invalid value: {value:?}: {} is a {value_type}",
                resource.name
            )
        };
        let n = if value_type.eq_ignore_ascii_case("bool") {
            if !go_bool(value) {
                out.push(format!("{} (true or false)", wrong_type()));
            }
            continue;
        } else if let Some((bits, signed)) = integer_type(value_type) {
            match typed_integer(value, bits, signed) {
                Some(n) => n,
                None => {
                    out.push(wrong_type());
                    continue;
                }
            }
        } else if value_type.eq_ignore_ascii_case("float32")
            || value_type.eq_ignore_ascii_case("float64")
        {
            let limit = if value_type.eq_ignore_ascii_case("float32") {
                f64::from(f32::MAX)
            } else {
                f64::MAX
            };
            match number(value).filter(|n| n.abs() <= limit) {
                Some(n) => n,
                None => {
                    out.push(wrong_type());
                    continue;
                }
            }
        } else {
            // Strings, arrays, binaries and objects: the driver decides.
            continue;
        };
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
