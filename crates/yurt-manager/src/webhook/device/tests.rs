use serde_json::json;

use super::*;

fn profile(resources: Value, commands: Value) -> DeviceProfile {
    serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
        "metadata": {"name": "hz-thermostat", "namespace": "default",
                     "labels": {EDGEX_NAME_LABEL: "Thermostat"}},
        "spec": {"nodePool": "hz", "deviceResources": resources, "deviceCommands": commands},
    }))
    .expect("a profile")
}

fn resource(name: &str, properties: Value, attributes: Value) -> Value {
    json!({"description": name, "name": name, "isHidden": false,
           "properties": properties, "attributes": attributes})
}

fn thermostat() -> DeviceProfile {
    profile(
        json!([
            resource(
                "Temperature",
                json!({"valueType": "Float32", "readWrite": "R", "scale": "0.1"}),
                json!({"primaryTable": "INPUT_REGISTERS", "startingAddress": "0", "rawType": "Int16"})
            ),
            resource(
                "SetPoint",
                json!({"valueType": "Int16", "readWrite": "RW", "minimum": "5", "maximum": "30"}),
                json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "1.000000"})
            ),
            resource(
                "Heating",
                json!({"valueType": "Bool", "readWrite": "RW"}),
                json!({"primaryTable": "COILS", "startingAddress": "0", "isByteSwap": "false"})
            ),
            resource(
                "Gain",
                json!({"valueType": "float64", "readWrite": "W", "mask": "0xFF", "shift": "-2"}),
                json!({})
            ),
            resource(
                "Label",
                json!({"valueType": "String", "readWrite": "RW"}),
                json!({})
            ),
            resource(
                "Level",
                json!({"valueType": "Uint8", "readWrite": "RW"}),
                json!({})
            ),
        ]),
        json!([{"name": "Climate", "isHidden": false, "readWrite": "R",
                "resourceOperations": [{"deviceResource": "Temperature", "defaultValue": ""},
                                       {"deviceResource": "SetPoint", "defaultValue": ""}]}]),
    )
}

fn device(properties: Value) -> Device {
    serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
        "metadata": {"name": "hz-t1", "namespace": "default"},
        "spec": {"serviceName": "modbus", "profileName": "Thermostat", "notify": false,
                 "nodePool": "hz", "deviceProperties": properties},
    }))
    .expect("a device")
}

#[test]
fn a_sound_profile_passes() {
    assert_eq!(profile_problems(&thermostat()), Vec::<String>::new());
}

#[test]
fn every_problem_of_a_profile_is_named() {
    let bad = profile(
        json!([
            resource(
                "A",
                json!({"valueType": "Integer", "readWrite": "RX"}),
                json!({})
            ),
            resource(
                "A",
                json!({"valueType": "Int16", "minimum": "ten", "maximum": "5", "scale": "x", "mask": "-1", "shift": "1.5"}),
                json!({})
            ),
            resource(
                "B",
                json!({"valueType": "Int16", "minimum": "9", "maximum": "5"}),
                json!({"primaryTable": "REGISTERS", "rawType": "INT12", "isWordSwap": "yes"})
            ),
            resource(
                "C",
                json!({"valueType": "Int16"}),
                json!({"primaryTable": "COILS", "startingAddress": "70000"})
            ),
            resource("D", json!({}), json!({})),
        ]),
        json!([{"name": "X", "isHidden": false, "readWrite": "Q",
                "resourceOperations": [{"deviceResource": "Nope", "defaultValue": ""}]}]),
    );
    let said = profile_problems(&bad);
    let want = [
        "spec.deviceResources[0].properties.valueType: Unsupported value: \"Integer\"",
        "spec.deviceResources[0].properties.readWrite: Unsupported value: \"RX\"",
        "spec.deviceResources[1].name: Duplicate value: \"A\"",
        "spec.deviceResources[1].properties.minimum: Invalid value: \"ten\"",
        "spec.deviceResources[1].properties.scale: Invalid value: \"x\"",
        "spec.deviceResources[1].properties.mask: Invalid value: \"-1\"",
        "spec.deviceResources[1].properties.shift: Invalid value: \"1.5\"",
        "spec.deviceResources[2].properties: minimum 9 is above maximum 5",
        "spec.deviceResources[2].attributes.primaryTable: Unsupported value: \"REGISTERS\"",
        "spec.deviceResources[2].attributes.startingAddress: Required value",
        "spec.deviceResources[2].attributes.rawType: Unsupported value: \"INT12\"",
        "spec.deviceResources[2].attributes.isWordSwap: Invalid value: \"yes\"",
        "spec.deviceResources[3].attributes.startingAddress: Invalid value: \"70000\"",
        "spec.deviceResources[4].properties.valueType: Required value",
        "spec.deviceCommands[0].readWrite: Unsupported value: \"Q\"",
        "spec.deviceCommands[0].resourceOperations[0].deviceResource: Not found: \"Nope\"",
    ];
    for w in want {
        assert!(
            said.iter().any(|s| s.starts_with(w)),
            "{w}\nnot in {said:#?}"
        );
    }
    assert_eq!(said.len(), want.len(), "{said:#?}");
}

#[test]
fn desired_values_must_be_writable_typed_and_in_range() {
    let profile = thermostat();
    let ok = device(json!({
        "SetPoint": {"name": "SetPoint", "desiredValue": "21"},
        "Heating": {"name": "Heating", "desiredValue": "TRUE"},
        "Gain": {"name": "Gain", "desiredValue": "1.5e3"},
        "Label": {"name": "Label", "desiredValue": "anything at all"},
        "Level": {"name": "Level", "desiredValue": "255.000000"},
        "Unset": {"name": "SetPoint", "desiredValue": ""},
    }));
    assert_eq!(device_problems(&ok, &profile), Vec::<String>::new());

    let bad = device(json!({
        "a": {"name": "Temperature", "desiredValue": "20"},
        "b": {"name": "SetPoint", "desiredValue": "31"},
        "c": {"name": "SetPoint", "desiredValue": "20.5"},
        "d": {"name": "Heating", "desiredValue": "on"},
        "e": {"name": "Level", "desiredValue": "256"},
        "f": {"name": "Gain", "desiredValue": "fast"},
        "g": {"name": "Missing", "desiredValue": "1"},
    }));
    let said = device_problems(&bad, &profile);
    let want = [
        "spec.deviceProperties[a]: Forbidden: resource \"Temperature\" is read-only",
        "spec.deviceProperties[b].desiredValue: Invalid value: \"31\": outside SetPoint's range [5, 30]",
        "spec.deviceProperties[c].desiredValue: Invalid value: \"20.5\": SetPoint is a Int16",
        "spec.deviceProperties[d].desiredValue: Invalid value: \"on\": Heating is a Bool",
        "spec.deviceProperties[e].desiredValue: Invalid value: \"256\": Level is a Uint8",
        "spec.deviceProperties[f].desiredValue: Invalid value: \"fast\": Gain is a float64",
        "spec.deviceProperties[g].name: Not found: \"Missing\"",
    ];
    for w in want {
        assert!(
            said.iter().any(|s| s.starts_with(w)),
            "{w}\nnot in {said:#?}"
        );
    }
    assert_eq!(said.len(), want.len(), "{said:#?}");
}

#[test]
fn references_resolve_by_name_or_by_the_platforms_name() {
    let profiles = vec![thermostat()];
    assert!(resolve(&profiles, "hz-thermostat").is_some());
    assert!(resolve(&profiles, "Thermostat").is_some());
    assert!(resolve(&profiles, "thermostat").is_none());
}

#[test]
fn the_pool_is_mirrored_into_the_pool_label() {
    let label = yurt_api::labels::NODE_POOL;
    let mut obj = json!({"metadata": {"name": "d"}, "spec": {"nodePool": "hz"}});
    let patch = mutation(&obj).unwrap().expect("a patch");
    json_patch::patch(&mut obj, &patch).unwrap();
    assert_eq!(obj["metadata"]["labels"][label], "hz");
    assert!(mutation(&obj).unwrap().is_none(), "already there");
    // A label set by hand to another pool follows the spec.
    obj["metadata"]["labels"][label] = json!("bj");
    obj["metadata"]["labels"]["keep"] = json!("me");
    let patch = mutation(&obj).unwrap().expect("a patch");
    json_patch::patch(&mut obj, &patch).unwrap();
    assert_eq!(obj["metadata"]["labels"][label], "hz");
    assert_eq!(obj["metadata"]["labels"]["keep"], "me");
    // No pool, no label.
    assert!(
        mutation(&json!({"metadata": {}, "spec": {}}))
            .unwrap()
            .is_none()
    );
    assert!(
        mutation(&json!({"metadata": {}, "spec": {"nodePool": ""}}))
            .unwrap()
            .is_none()
    );
}

fn review(kind: &str, resource: &str, object: Value) -> AdmissionRequest<DynamicObject> {
    let review: kube::core::admission::AdmissionReview<DynamicObject> =
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "operation": "CREATE", "name": object["metadata"]["name"], "namespace": "default",
                "kind": {"group": "iot.openyurt.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "iot.openyurt.io", "version": "v1alpha1", "resource": resource},
                "userInfo": {"username": "alice"},
                "object": object,
            },
        }))
        .unwrap();
    review.try_into().unwrap()
}

#[tokio::test]
async fn a_device_is_refused_when_its_references_cannot_be_read_and_a_profile_names_an_unknown_pool()
 {
    let (state, calls) = crate::webhook::test_state(Vec::new(), Vec::new());
    let dev = serde_json::to_value(device(json!({}))).unwrap();
    let resp = validate_device(&state, &review("Device", "devices", dev)).await;
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .contains("cannot read the profiles and services"),
        "{}",
        resp.result.message
    );
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // The test state knows no pools: the profile's pool "hz" does not exist.
    let prof = serde_json::to_value(thermostat()).unwrap();
    let resp = validate_profile(&state, &review("DeviceProfile", "deviceprofiles", prof)).await;
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .contains("spec.nodePool: Invalid value: \"hz\": no such NodePool"),
        "{}",
        resp.result.message
    );
    let svc = json!({"apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
                     "metadata": {"name": "modbus", "namespace": "default"},
                     "spec": {"baseAddress": " "}});
    let resp = validate_service(&state, &review("DeviceService", "deviceservices", svc)).await;
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .contains("spec.baseAddress: Required value"),
        "{}",
        resp.result.message
    );
}
