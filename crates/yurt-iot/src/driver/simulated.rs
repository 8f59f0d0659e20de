//! The virtual driver: EdgeX's device-virtual, in process (protocol key `other`).
//!
//! Every resource reads a fresh random value of its type (within its minimum and
//! maximum, else the type's range) until a value is written to it; then it holds that
//! value. A resource `EnableRandomization_<name>` (write-only in EdgeX's profiles) turns
//! randomization of `<name>` back on or off. State is kept per device across sessions,
//! as device-virtual keeps it per device for its lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Driver, DriverError, ProtocolProperties, Readings, Resource, Session};
use crate::value::{Value, ValueType};

/// The prefix of the resources that switch randomization.
pub const RANDOMIZATION_PREFIX: &str = "EnableRandomization_";

#[derive(Debug, Default)]
struct Held {
    value: Option<Value>,
    /// Randomization switched off (by a write or by its switch).
    fixed: bool,
}

type DeviceState = HashMap<String, Held>;

/// The virtual driver.
#[derive(Debug, Clone, Default)]
pub struct VirtualDriver {
    devices: Arc<Mutex<HashMap<String, DeviceState>>>,
}

#[async_trait]
impl Driver for VirtualDriver {
    fn protocol(&self) -> &'static str {
        "other"
    }

    fn check(&self, _: &ProtocolProperties, _: &[Resource]) -> Result<(), DriverError> {
        Ok(())
    }

    async fn connect(
        &self,
        device: &str,
        _: &ProtocolProperties,
    ) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(VirtualSession {
            device: device.to_owned(),
            devices: Arc::clone(&self.devices),
        }))
    }
}

struct VirtualSession {
    device: String,
    devices: Arc<Mutex<HashMap<String, DeviceState>>>,
}

impl VirtualSession {
    fn with_state<T>(&self, f: impl FnOnce(&mut DeviceState) -> T) -> Result<T, DriverError> {
        // A poisoned lock means a panic elsewhere mid-update: the state is still a map of
        // plain values, so it is used as it is.
        let mut devices = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(devices.entry(self.device.clone()).or_default()))
    }
}

/// A random value of the resource's type within its range (EdgeX's device-virtual draws
/// a signed range as a random negative part plus a random positive part).
fn random_value(resource: &Resource) -> Value {
    let t = resource.value_type;
    let (type_low, type_high) = match t {
        ValueType::Bool => return Value::Bool(fastrand::bool()),
        ValueType::String => return Value::String(format!("{:016x}", fastrand::u64(..))),
        ValueType::Float32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
        ValueType::Float64 => (f64::MIN, f64::MAX),
        integer => match integer.integer() {
            Some((bits, true)) => (
                -(2f64.powi(bits as i32 - 1)),
                2f64.powi(bits as i32 - 1) - 1.0,
            ),
            Some((bits, false)) => (0.0, 2f64.powi(bits as i32) - 1.0),
            None => (0.0, 0.0),
        },
    };
    let mut low = resource.range.minimum.unwrap_or(type_low).max(type_low);
    let mut high = resource.range.maximum.unwrap_or(type_high).min(type_high);
    if high < low {
        (low, high) = (type_low, type_high);
    }
    let drawn = if low < 0.0 && high > 0.0 {
        fastrand::f64() * low + fastrand::f64() * high
    } else {
        low + fastrand::f64() * (high - low)
    };
    // Rounding cannot leave the range's integers; clamping keeps the float's.
    Value::Float(drawn.clamp(low, high))
        .fitted(t)
        .unwrap_or(Value::Float(0.0))
}

#[async_trait]
impl Session for VirtualSession {
    async fn read(&mut self, resources: &[&Resource]) -> Result<Readings, DriverError> {
        self.with_state(|state| {
            resources
                .iter()
                .map(|r| {
                    if let Some(target) = r.name.strip_prefix(RANDOMIZATION_PREFIX) {
                        let fixed = state.get(target).is_some_and(|h| h.fixed);
                        return Ok(Value::Bool(!fixed));
                    }
                    let held = state.entry(r.name.clone()).or_default();
                    if held.fixed
                        && let Some(v) = &held.value
                    {
                        return Ok(v.clone());
                    }
                    let v = random_value(r);
                    held.value = Some(v.clone());
                    Ok(v)
                })
                .collect()
        })
    }

    async fn write(&mut self, resource: &Resource, raw: Value) -> Result<(), DriverError> {
        let value = raw.fitted(resource.value_type)?;
        self.with_state(|state| {
            if let Some(target) = resource.name.strip_prefix(RANDOMIZATION_PREFIX) {
                let on = matches!(value, Value::Bool(true));
                state.entry(target.to_owned()).or_default().fixed = !on;
            } else {
                let held = state.entry(resource.name.clone()).or_default();
                held.value = Some(value);
                held.fixed = true;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Range;

    fn resource(name: &str, value_type: ValueType, range: Range) -> Resource {
        Resource {
            range,
            ..crate::driver::test_resource(name, value_type)
        }
    }

    #[tokio::test]
    async fn random_until_written_then_held_and_randomization_switches_back() {
        let driver = VirtualDriver::default();
        let mut session = driver
            .connect("Random-Integer-Device", &Default::default())
            .await
            .expect("connects");
        let int8 = resource(
            "Int8",
            ValueType::Int8,
            Range {
                minimum: Some(-10.0),
                maximum: Some(10.0),
            },
        );
        let switch = resource(
            "EnableRandomization_Int8",
            ValueType::Bool,
            Range::default(),
        );
        for _ in 0..200 {
            let read = session.read(&[&int8]).await.expect("reads");
            let Ok(Value::Int(n)) = read[0] else {
                panic!("an Int8: {read:?}")
            };
            assert!((-10..=10).contains(&n), "{n} outside the range");
        }
        session.write(&int8, Value::Int(7)).await.expect("writes");
        // Another session of the same device sees the held value.
        let mut other = driver
            .connect("Random-Integer-Device", &Default::default())
            .await
            .expect("connects");
        let read = other.read(&[&int8, &switch]).await.expect("reads");
        assert_eq!(read, vec![Ok(Value::Int(7)), Ok(Value::Bool(false))]);
        other
            .write(&switch, Value::Bool(true))
            .await
            .expect("switches");
        let read = other.read(&[&switch]).await.expect("reads");
        assert_eq!(read, vec![Ok(Value::Bool(true))]);
        // Out of the type's range is refused.
        assert!(session.write(&int8, Value::Int(300)).await.is_err());
    }
}
