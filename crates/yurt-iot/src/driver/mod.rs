//! The one trait every protocol implements, and the drivers.
//!
//! A device's `spec.protocols` key picks its driver (`modbus-tcp`, `mqtt`, `other` for
//! EdgeX's virtual devices), as EdgeX's device services do. A driver checks a device's protocol
//! properties and its profile's resources once, then opens [`Session`]s that read raw
//! values and write them; the [`engine`](crate::engine) applies transforms, ranges and
//! the reading format around them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use yurt_api::iot::v1alpha1::DeviceResource;

use crate::value::{Range, Transform, Value, ValueError, ValueType};

pub mod modbus;
pub mod mqtt;
pub mod simulated;

/// A device's properties for its protocol (`spec.protocols[<key>]`).
pub type ProtocolProperties = BTreeMap<String, String>;

/// Why a driver could not read or write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// The device cannot be reached (connection refused, reset, closed).
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// The device did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The device answered with an error (a Modbus exception).
    #[error("device refused: {0}")]
    Refused(String),
    /// The device's protocol properties or a resource's attributes are wrong for the
    /// driver.
    #[error("{0}")]
    Config(String),
    /// A value does not fit.
    #[error(transparent)]
    Value(#[from] ValueError),
}

impl DriverError {
    /// Whether the connection is gone (the session is dropped and opened again), as
    /// opposed to one resource failing on a working connection.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }
}

/// Whether a resource may be read or written (EdgeX's `readWrite`: `R`, `W`, `RW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
}

/// A profile's resource, checked and ready for a driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its name (the key of readings and desired values).
    pub name: String,
    /// Its value type.
    pub value_type: ValueType,
    /// Whether it may be read or written.
    pub access: Access,
    /// From raw value to reading and back.
    pub transform: Transform,
    /// What may be written.
    pub range: Range,
    /// The driver's attributes (`primaryTable`, `startingAddress`, ...).
    pub attributes: BTreeMap<String, String>,
    /// Hidden from commands (EdgeX's `isHidden`; still read and written by name).
    pub hidden: bool,
    /// The value a device starts with, when the profile gives one.
    pub default_value: Option<String>,
}

impl Resource {
    /// A profile's resource, refused when its type, access or transforms do not parse.
    pub fn from_profile(resource: &DeviceResource) -> Result<Self, ValueError> {
        let p = &resource.properties;
        let value_type = ValueType::parse(p.value_type.as_deref().unwrap_or(""))?;
        let rw = p.read_write.as_deref().unwrap_or("R").to_ascii_uppercase();
        let (transform, range) = Transform::from_properties(p)?;
        Ok(Self {
            name: resource.name.clone(),
            value_type,
            access: Access {
                read: rw.contains('R'),
                write: rw.contains('W'),
            },
            transform,
            range,
            attributes: resource.attributes.clone().unwrap_or_default(),
            hidden: resource.is_hidden,
            default_value: p.default_value.clone().filter(|v| !v.is_empty()),
        })
    }

    /// An attribute, by EdgeX's name (attribute names are matched without regard to
    /// case, as device services read them through case-insensitive maps).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The outcome of reading several resources: each resource's raw value or error, in the
/// order asked.
pub type Readings = Vec<Result<Value, DriverError>>;

/// A protocol.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The key of `spec.protocols` it serves.
    fn protocol(&self) -> &'static str;

    /// Checks a device's protocol properties and its resources for this driver.
    fn check(
        &self,
        properties: &ProtocolProperties,
        resources: &[Resource],
    ) -> Result<(), DriverError>;

    /// Opens a session with a device (`device` names it, for drivers that keep
    /// per-device state).
    async fn connect(
        &self,
        device: &str,
        properties: &ProtocolProperties,
    ) -> Result<Box<dyn Session>, DriverError>;
}

/// An open connection to one device.
#[async_trait]
pub trait Session: Send {
    /// Reads resources, batching what the protocol allows. A connection error fails the
    /// whole call; a resource's own error is its entry's.
    async fn read(&mut self, resources: &[&Resource]) -> Result<Readings, DriverError>;

    /// Writes a raw value (after the resource's write transform) to a resource.
    async fn write(&mut self, resource: &Resource, raw: Value) -> Result<(), DriverError>;
}

/// The drivers this agent has, by protocol key.
pub struct Drivers {
    drivers: Vec<Arc<dyn Driver>>,
}

impl Drivers {
    /// The built-in drivers: virtual (`other`), Modbus TCP (`modbus-tcp`) and MQTT
    /// (`mqtt`).
    pub fn builtin() -> Self {
        Self {
            drivers: vec![
                Arc::new(simulated::VirtualDriver::default()),
                Arc::new(modbus::ModbusTcpDriver::default()),
                Arc::new(mqtt::MqttDriver::default()),
            ],
        }
    }

    /// The driver for a device's protocols and its properties: exactly one key must name
    /// a driver here.
    pub fn for_protocols<'a>(
        &self,
        protocols: &'a BTreeMap<String, ProtocolProperties>,
    ) -> Result<(&Arc<dyn Driver>, &'a ProtocolProperties), DriverError> {
        let mut found = protocols.iter().filter_map(|(key, props)| {
            self.drivers
                .iter()
                .find(|d| d.protocol().eq_ignore_ascii_case(key))
                .map(|d| (d, props))
        });
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(one),
            (Some(_), Some(_)) => Err(DriverError::Config(format!(
                "spec.protocols names more than one protocol ({})",
                protocols.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            (None, _) => Err(DriverError::Config(format!(
                "spec.protocols names no protocol this agent drives ({}); it drives {}",
                if protocols.is_empty() {
                    "none given".to_owned()
                } else {
                    protocols.keys().cloned().collect::<Vec<_>>().join(", ")
                },
                self.drivers
                    .iter()
                    .map(|d| d.protocol())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A device's `Timeout` property: seconds (a fraction allowed) above 0 and at most an
/// hour, or `default` when not given.
pub fn timeout_property(
    properties: &ProtocolProperties,
    protocol: &str,
    default: Duration,
) -> Result<Duration, DriverError> {
    match property(properties, "Timeout") {
        None => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                DriverError::Config(format!(
                    "{protocol}: Timeout {v:?} is not a number of seconds above 0 (at most 3600)"
                ))
            }),
    }
}

/// A readable and writable resource of `value_type` without transforms or attributes
/// (tests).
#[cfg(test)]
pub(crate) fn test_resource(name: &str, value_type: ValueType) -> Resource {
    Resource {
        name: name.into(),
        value_type,
        access: Access {
            read: true,
            write: true,
        },
        transform: Transform::default(),
        range: Range::default(),
        attributes: BTreeMap::new(),
        hidden: false,
        default_value: None,
    }
}

/// A protocol property, by EdgeX's name, without regard to case.
pub fn property<'a>(properties: &'a ProtocolProperties, name: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}
