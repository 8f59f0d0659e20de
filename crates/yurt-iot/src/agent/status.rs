//! A device's status as the agent reports it: a merge patch of `/status` built from what
//! the device's loop observed, written only when it changed (or for the heartbeat of
//! `lastConnected`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};
use yurt_api::ConditionStatus;
use yurt_api::iot::v1alpha1::{Device, DeviceCondition};
use yurt_api::iot::{AdminState, DEVICE_MANAGING, DEVICE_SYNCED, OperatingState};

use crate::engine::Observed;

/// What the agent knows of a device, for its status.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// Its loop's observation.
    Observed(Observed),
    /// It cannot be driven.
    Stuck {
        /// A CamelCase reason.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl View {
    /// Whether two views say the same (observations compared without their times).
    pub fn same_state(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Observed(a), Self::Observed(b)) => a.same_state(b),
            _ => self == other,
        }
    }
}

/// The DeviceManaging condition's status, reason and message.
fn managing(device: &Device, view: &View) -> (ConditionStatus, String, String) {
    let o = match view {
        View::Stuck { reason, message } => {
            return (
                ConditionStatus::False,
                (*reason).to_owned(),
                message.clone(),
            );
        }
        View::Observed(o) => o,
    };
    if let Some(problem) = o.problems.get("") {
        let reason = if o.operating == Some(OperatingState::Down) {
            "DeviceUnreachable"
        } else {
            "DeviceMisconfigured"
        };
        return (ConditionStatus::False, reason.into(), problem.clone());
    }
    if !o.problems.is_empty() {
        let names: Vec<&str> = o.problems.keys().map(String::as_str).collect();
        let message = o
            .problems
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ");
        // The reason names the properties (a reason is one CamelCase word: the names
        // are listed in the message, in the same order).
        let reason = if names.len() == 1 {
            format!("PropertyFailed{}", camel(names[0]))
        } else {
            "PropertiesFailed".to_owned()
        };
        return (ConditionStatus::False, reason, message);
    }
    if device.spec.managed != Some(true) {
        return (
            ConditionStatus::False,
            "NotManaged".into(),
            "spec.managed is not true: the edge owns this device and its desired values are not written".into(),
        );
    }
    if device.spec.admin_state == Some(AdminState::Locked) {
        return (
            ConditionStatus::False,
            "Locked".into(),
            "the device is LOCKED: it is neither read nor written".into(),
        );
    }
    (
        ConditionStatus::True,
        "Managed".into(),
        "desired values are written and read back".into(),
    )
}

/// A name as one CamelCase word (letters and digits kept, the rest dropped, each part's
/// first letter raised): `set-point_1` is `SetPoint1`.
fn camel(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn condition(
    type_: &str,
    (status, reason, message): (ConditionStatus, String, String),
    previous: &[DeviceCondition],
    now: &Time,
) -> DeviceCondition {
    let since = previous
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_) && c.status.as_ref() == Some(&status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    DeviceCondition {
        type_: Some(type_.to_owned()),
        status: Some(status),
        last_transition_time: Some(since),
        reason: Some(reason),
        message: Some(message),
    }
}

/// The status the agent reports for `device` (its current status, `device.status`, gives
/// the conditions' transition times and the properties to remove).
pub fn patch(device: &Device, view: &View, now: &Time, now_ms: i64) -> Value {
    let current = device.status.clone().unwrap_or_default();
    let previous = current.conditions.clone().unwrap_or_default();
    let mut status = Map::new();
    status.insert("synced".into(), json!(true));
    status.insert(
        "adminState".into(),
        json!(
            device
                .spec
                .admin_state
                .clone()
                .unwrap_or(AdminState::Unlocked)
        ),
    );
    let (operating, readings, last_connected) = match view {
        View::Observed(o) => (
            o.operating.clone().unwrap_or(OperatingState::Unknown),
            o.readings.clone(),
            o.last_connected_ms,
        ),
        View::Stuck { .. } => (OperatingState::Unknown, BTreeMap::new(), None),
    };
    status.insert("operatingState".into(), json!(operating));
    if let Some(ms) = last_connected {
        status.insert("lastConnected".into(), json!(ms));
    }
    status.insert("lastReported".into(), json!(now_ms));
    let mut properties = Map::new();
    for (name, value) in &readings {
        properties.insert(name.clone(), json!({"name": name, "actualValue": value}));
    }
    // A merge patch keeps map entries it does not name: properties gone are removed.
    for name in current.device_properties.iter().flatten().map(|(k, _)| k) {
        if !readings.contains_key(name) {
            properties.insert(name.clone(), Value::Null);
        }
    }
    status.insert("deviceProperties".into(), Value::Object(properties));
    let conditions = vec![
        condition(
            DEVICE_SYNCED,
            (
                ConditionStatus::True,
                "Synced".into(),
                "the pool's device agent drives this device".into(),
            ),
            &previous,
            now,
        ),
        condition(DEVICE_MANAGING, managing(device, view), &previous, now),
    ];
    status.insert("conditions".into(), json!(conditions));
    json!({ "status": status })
}

/// What of a status decides whether it must be written again (everything but the
/// times).
pub fn significant(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(st) = s.get_mut("status").and_then(Value::as_object_mut) {
        st.remove("lastReported");
        st.remove("lastConnected");
        if let Some(conditions) = st.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
                c.remove("lastTransitionTime");
            }
        }
        // Properties removed are written once; afterwards they are simply absent.
        if let Some(props) = st
            .get_mut("deviceProperties")
            .and_then(Value::as_object_mut)
        {
            props.retain(|_, v| !v.is_null());
        }
    }
    s
}

/// A fingerprint of what `value` encodes to in JSON (a status from [`significant`], the
/// agent's snapshot), to tell whether it changed since it was last written without
/// keeping it. JSON maps encode in key order, so equal values have equal fingerprints.
pub fn fingerprint<T: serde::Serialize>(value: &T) -> u64 {
    use std::hash::Hasher;
    /// Feeds the encoder's output to the hasher without building the text.
    struct Feed<'a>(&'a mut std::hash::DefaultHasher);
    impl std::io::Write for Feed<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    // Encoding these types cannot fail; were it to, each fingerprint differs, so the
    // value is written again every time (and that write reports the error).
    if serde_json::to_writer(Feed(&mut hasher), value).is_err() {
        return fastrand::u64(..);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yurt_api::iot::v1alpha1::{ActualPropertyState, DeviceSpec, DeviceStatus};

    fn device(managed: bool) -> Device {
        let mut d = Device::new(
            "plc-1",
            DeviceSpec {
                managed: Some(managed),
                node_pool: Some("hangzhou".into()),
                ..DeviceSpec::default()
            },
        );
        d.status = Some(DeviceStatus {
            device_properties: Some(
                [(
                    "gone".to_owned(),
                    ActualPropertyState {
                        name: "gone".into(),
                        get_url: None,
                        actual_value: "1".into(),
                    },
                )]
                .into(),
            ),
            ..DeviceStatus::default()
        });
        d
    }

    fn now() -> Time {
        Time("2026-12-03T10:00:00Z".parse().expect("a time"))
    }

    #[test]
    fn readings_states_and_conditions_are_reported_and_gone_properties_removed() {
        let observed = Observed {
            operating: Some(OperatingState::Up),
            readings: [("mode".to_owned(), "3".to_owned())].into(),
            problems: [("setpoint".to_owned(), "write: device refused".to_owned())].into(),
            last_connected_ms: Some(1_700_000_000_000),
            ..Observed::default()
        };
        let p = patch(
            &device(true),
            &View::Observed(observed),
            &now(),
            1_700_000_000_500,
        );
        let s = &p["status"];
        assert_eq!(s["operatingState"], "UP");
        assert_eq!(s["adminState"], "UNLOCKED");
        assert_eq!(s["lastConnected"], 1_700_000_000_000i64);
        assert_eq!(s["deviceProperties"]["mode"]["actualValue"], "3");
        assert_eq!(s["deviceProperties"]["gone"], Value::Null);
        assert_eq!(s["conditions"][1]["type"], "DeviceManaging");
        assert_eq!(s["conditions"][1]["status"], "False");
        assert_eq!(s["conditions"][1]["reason"], "PropertyFailedSetpoint");
        assert_eq!(
            s["conditions"][1]["message"],
            "setpoint: write: device refused"
        );
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let mut d = device(false);
        let earlier = Time("2026-12-01T00:00:00Z".parse().expect("a time"));
        d.status.as_mut().expect("status").conditions = Some(vec![DeviceCondition {
            type_: Some(DEVICE_MANAGING.into()),
            status: Some(ConditionStatus::False),
            last_transition_time: Some(earlier.clone()),
            reason: Some("NotManaged".into()),
            message: None,
        }]);
        let view = View::Observed(Observed {
            operating: Some(OperatingState::Up),
            ..Observed::default()
        });
        let p = patch(&d, &view, &now(), 0);
        let c = &p["status"]["conditions"][1];
        assert_eq!(c["reason"], "NotManaged");
        assert_eq!(c["lastTransitionTime"], json!(earlier));
        // Only times differ between two reports of the same state.
        let later = patch(
            &d,
            &view,
            &Time("2026-12-03T11:00:00Z".parse().expect("t")),
            99,
        );
        assert_eq!(significant(&p), significant(&later));
        assert_eq!(
            fingerprint(&significant(&p)),
            fingerprint(&significant(&later))
        );
        let other = patch(&device(true), &view, &now(), 0);
        assert_ne!(
            fingerprint(&significant(&p)),
            fingerprint(&significant(&other))
        );
    }

    #[test]
    fn a_device_that_cannot_be_driven_says_why() {
        let view = View::Stuck {
            reason: "ProfileNotFound",
            message: "no DeviceProfile named \"x\"".into(),
        };
        let p = patch(&device(true), &view, &now(), 0);
        assert_eq!(p["status"]["operatingState"], "UNKNOWN");
        assert_eq!(p["status"]["conditions"][1]["reason"], "ProfileNotFound");
        assert_eq!(camel("set-point_1"), "SetPoint1");
    }
}
