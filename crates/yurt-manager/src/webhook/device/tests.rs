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
                json!({"valueType": "float64", "readWrite": "W", "mask": "255", "shift": "-2"}),
                json!({})
            ),
            resource(
                "Ratio",
                json!({"valueType": "Float32", "readWrite": "RW"}),
                json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "0x10", "isWordSwap": "t"})
            ),
            resource(
                "Alarm",
                json!({"valueType": "Bool", "readWrite": "R"}),
                json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "3.15"})
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
                 "nodePool": "hz", "managed": true, "deviceProperties": properties},
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
                json!({"valueType": "Int16", "mask": "0xFF"}),
                json!({"primaryTable": "COILS", "startingAddress": "70000", "rawType": "INT32"})
            ),
            resource(
                "E",
                json!({"valueType": "Int16"}),
                json!({"primaryTable": "COILS", "startingAddress": "1.16"})
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
        "spec.deviceResources[3].properties.mask: Invalid value: \"0xFF\"",
        "spec.deviceResources[3].attributes.startingAddress: Invalid value: \"70000\"",
        "spec.deviceResources[3].attributes.rawType: Unsupported value: \"INT32\"",
        "spec.deviceResources[4].attributes.startingAddress: Invalid value: \"1.16\"",
        "spec.deviceResources[5].properties.valueType: Required value",
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
        "Heating2": {"name": "Heating", "desiredValue": "t"},
        "Gain": {"name": "Gain", "desiredValue": "1.5e3"},
        "Ratio": {"name": "Ratio", "desiredValue": "-3.4e38"},
        "Label": {"name": "Label", "desiredValue": "anything at all"},
        "Level": {"name": "Level", "desiredValue": "255"},
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
        "h": {"name": "Level", "desiredValue": "255.000000"},
        "i": {"name": "Ratio", "desiredValue": "1e39"},
        "j": {"name": "SetPoint", "desiredValue": " 21"},
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
        "spec.deviceProperties[h].desiredValue: Invalid value: \"255.000000\": Level is a Uint8",
        "spec.deviceProperties[i].desiredValue: Invalid value: \"1e39\": Ratio is a Float32",
        "spec.deviceProperties[j].desiredValue: Invalid value: \" 21\": SetPoint is a Int16",
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
fn references_resolve_by_the_platforms_name_in_the_same_pool() {
    let mut other_pool = thermostat();
    other_pool.metadata.name = Some("bj-thermostat".to_owned());
    other_pool.spec.node_pool = Some("bj".to_owned());
    let profiles = vec![other_pool, thermostat()];
    fn pool_of(p: &DeviceProfile) -> Option<&str> {
        p.spec.node_pool.as_deref()
    }
    // The label is the platform's name; each pool has its own copy.
    let found = resolve(&profiles, "Thermostat", Some("hz"), pool_of).expect("hz's copy");
    assert_eq!(found.metadata.name.as_deref(), Some("hz-thermostat"));
    let found = resolve(&profiles, "Thermostat", Some("bj"), pool_of).expect("bj's copy");
    assert_eq!(found.metadata.name.as_deref(), Some("bj-thermostat"));
    assert!(resolve(&profiles, "Thermostat", Some("sh"), pool_of).is_none());
    // A labelled object's own name is not the platform's.
    assert!(resolve(&profiles, "hz-thermostat", Some("hz"), pool_of).is_none());
    assert!(resolve(&profiles, "thermostat", None, pool_of).is_none());
    // Unlabelled: its own name.
    let mut plain = thermostat();
    plain.metadata.labels = None;
    assert!(resolve(&[plain], "hz-thermostat", None, pool_of).is_some());
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
async fn deleted_unmanaged_and_unchanged_devices_are_let_through_without_lookups() {
    let (state, calls) = crate::webhook::test_state(Vec::new(), Vec::new());
    let pools = crate::webhook::filled(vec![yurt_api::apps::v1beta2::NodePool::new(
        "hz",
        Default::default(),
    )]);
    let state = crate::webhook::WebhookState { pools, ..state };
    // Being deleted: a finalizer comes off even though nothing it names exists.
    let mut gone = serde_json::to_value(device(
        json!({"SetPoint": {"name": "SetPoint", "desiredValue": "99"}}),
    ))
    .unwrap();
    gone["metadata"]["deletionTimestamp"] = json!("2026-12-03T10:00:00Z");
    gone["spec"]["nodePool"] = json!("deleted-pool");
    let resp = validate_device(&state, &update("Device", "devices", gone.clone(), gone)).await;
    assert!(resp.allowed, "{}", resp.result.message);
    // Synced from the edge (the platform's label), or not managed: pool check only.
    let mut synced = serde_json::to_value(device(json!({}))).unwrap();
    synced["metadata"]["labels"] = json!({EDGEX_NAME_LABEL: "T1"});
    let resp = validate_device(&state, &review("Device", "devices", synced)).await;
    assert!(resp.allowed, "{}", resp.result.message);
    let mut unmanaged = serde_json::to_value(device(json!({}))).unwrap();
    unmanaged["spec"].as_object_mut().unwrap().remove("managed");
    let resp = validate_device(&state, &review("Device", "devices", unmanaged)).await;
    assert!(resp.allowed, "{}", resp.result.message);
    // An update that changes none of what is checked.
    let same = serde_json::to_value(device(
        json!({"SetPoint": {"name": "SetPoint", "desiredValue": "21"}}),
    ))
    .unwrap();
    let resp = validate_device(&state, &update("Device", "devices", same.clone(), same)).await;
    assert!(resp.allowed, "{}", resp.result.message);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no lookups"
    );
    // A profile whose pool went away is still updated (its pool did not change).
    let mut prof = serde_json::to_value(thermostat()).unwrap();
    prof["spec"]["nodePool"] = json!("deleted-pool");
    let resp = validate_profile(
        &state,
        &update("DeviceProfile", "deviceprofiles", prof.clone(), prof),
    )
    .await;
    assert!(resp.allowed, "{}", resp.result.message);
}

fn update(
    kind: &str,
    resource: &str,
    object: Value,
    old: Value,
) -> AdmissionRequest<DynamicObject> {
    let mut req = review(kind, resource, object);
    req.operation = Operation::Update;
    req.old_object = Some(serde_json::from_value(old).unwrap());
    req
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
                     "spec": {"baseAddress": ""}});
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

fn agent_account(name: &str, pool: Option<&str>) -> k8s_openapi::api::core::v1::ServiceAccount {
    let mut labels = json!({"iot.openyurt.io/platformadmin": "edgex"});
    if let Some(pool) = pool {
        labels[yurt_api::labels::NODE_POOL] = json!(pool);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
    }))
    .expect("a ServiceAccount")
}

fn as_user(
    mut req: AdmissionRequest<DynamicObject>,
    user: &str,
) -> AdmissionRequest<DynamicObject> {
    req.user_info.username = Some(user.to_owned());
    req
}

fn status_of(req: AdmissionRequest<DynamicObject>) -> AdmissionRequest<DynamicObject> {
    let mut req = req;
    req.sub_resource = Some("status".to_owned());
    req
}

#[tokio::test]
async fn a_pools_device_agent_writes_only_its_pools_objects() {
    let (state, _calls) = crate::webhook::test_state(Vec::new(), Vec::new());
    let pool = |name: &str| yurt_api::apps::v1beta2::NodePool::new(name, Default::default());
    let state = crate::webhook::WebhookState {
        pools: crate::webhook::filled(vec![pool("hz"), pool("bj")]),
        agent_accounts: crate::webhook::filled(vec![
            agent_account("edgex-yurt-iot-dock-hz", Some("hz")),
            agent_account("no-pool", None),
        ]),
        ..state
    };
    let hz_agent = "system:serviceaccount:default:edgex-yurt-iot-dock-hz";
    let in_pool = |pool: &str| {
        let mut d = serde_json::to_value(device(json!({}))).unwrap();
        d["spec"]["nodePool"] = json!(pool);
        // Synced from the edge: only the pool is checked, no lookups.
        d["spec"]["managed"] = json!(false);
        d
    };
    let status_update = |old: Value, new: Value| status_of(update("Device", "devices", new, old));

    // Its own pool's device: status and creation.
    let own = status_update(in_pool("hz"), in_pool("hz"));
    let resp = validate_device(&state, &as_user(own, hz_agent)).await;
    assert!(resp.allowed, "{}", resp.result.message);
    let create = review("Device", "devices", in_pool("hz"));
    let resp = validate_device(&state, &as_user(create, hz_agent)).await;
    assert!(resp.allowed, "{}", resp.result.message);

    // Another pool's device: status, creation, or moving one out of or into its pool.
    for (what, req) in [
        ("status", status_update(in_pool("bj"), in_pool("bj"))),
        ("create", review("Device", "devices", in_pool("bj"))),
        (
            "move in",
            update("Device", "devices", in_pool("hz"), in_pool("bj")),
        ),
        (
            "move out",
            update("Device", "devices", in_pool("bj"), in_pool("hz")),
        ),
        (
            "no pool",
            review("Device", "devices", {
                let mut d = in_pool("hz");
                d["spec"].as_object_mut().unwrap().remove("nodePool");
                d
            }),
        ),
    ] {
        let resp = validate_device(&state, &as_user(req, hz_agent)).await;
        assert!(!resp.allowed, "{what}: allowed");
        assert!(
            resp.result
                .message
                .contains("is the device agent of pool \"hz\": it may not write a Device of"),
            "{what}: {}",
            resp.result.message
        );
    }
    // Profiles and services (the virtual devices' role creates them) likewise.
    let mut prof = serde_json::to_value(thermostat()).unwrap();
    prof["spec"]["nodePool"] = json!("bj");
    let resp = validate_profile(
        &state,
        &as_user(review("DeviceProfile", "deviceprofiles", prof), hz_agent),
    )
    .await;
    assert!(!resp.allowed);
    assert!(
        resp.result.message.contains("DeviceProfile"),
        "{}",
        resp.result.message
    );
    let svc = json!({"apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
                     "metadata": {"name": "modbus", "namespace": "default"},
                     "spec": {"baseAddress": "tcp://x", "nodePool": "bj"}});
    let resp = validate_service(
        &state,
        &as_user(
            review("DeviceService", "deviceservices", svc.clone()),
            hz_agent,
        ),
    )
    .await;
    assert!(!resp.allowed);
    // The same service in its own pool passes.
    let mut own_svc = svc.clone();
    own_svc["spec"]["nodePool"] = json!("hz");
    let resp = validate_service(
        &state,
        &as_user(review("DeviceService", "deviceservices", own_svc), hz_agent),
    )
    .await;
    assert!(resp.allowed, "{}", resp.result.message);

    // An agent account naming no pool writes nothing.
    let resp = validate_device(
        &state,
        &as_user(
            status_update(in_pool("hz"), in_pool("hz")),
            "system:serviceaccount:default:no-pool",
        ),
    )
    .await;
    assert!(!resp.allowed);
    assert!(
        resp.result.message.contains("names no pool"),
        "{}",
        resp.result.message
    );

    // Other users and accounts are left to RBAC: the same account name in another
    // namespace is not the agent.
    for user in [
        "alice",
        "system:serviceaccount:default:someone-else",
        "system:serviceaccount:other:edgex-yurt-iot-dock-hz",
    ] {
        let req = status_update(in_pool("bj"), in_pool("bj"));
        let resp = validate_device(&state, &as_user(req, user)).await;
        assert!(resp.allowed, "{user}: {}", resp.result.message);
    }
}

#[tokio::test(start_paused = true)]
async fn accounts_not_yet_read_mean_retry_not_allow() {
    let (state, _calls) = crate::webhook::test_state(Vec::new(), Vec::new());
    let (unread, _writer) = kube::runtime::reflector::store();
    let state = crate::webhook::WebhookState {
        agent_accounts: unread,
        ..state
    };
    let mut d = serde_json::to_value(device(json!({}))).unwrap();
    d["spec"]["managed"] = json!(false);
    let req = status_of(update("Device", "devices", d.clone(), d.clone()));
    let resp = validate_device(
        &state,
        &as_user(req, "system:serviceaccount:default:edgex-yurt-iot-dock-hz"),
    )
    .await;
    assert!(!resp.allowed);
    assert!(
        resp.result.message.contains("retry"),
        "{}",
        resp.result.message
    );
    // A user who is no service account is not held up.
    let req = status_of(update("Device", "devices", d.clone(), d));
    let resp = validate_device(&state, &as_user(req, "alice")).await;
    assert!(resp.allowed, "{}", resp.result.message);
}

#[test]
fn mqtt_value_topics_and_json_paths_are_read_as_the_driver_reads_them() {
    let sensor = profile(
        json!([
            resource(
                "Temperature",
                json!({"valueType": "Float32", "readWrite": "R"}),
                json!({"topic": "tele/sensor1/SENSOR", "jsonPath": "$.AM2301.Temperature"})
            ),
            resource(
                "Power",
                json!({"valueType": "String", "readWrite": "R"}),
                json!({"topic": "stat/+/POWER", "jsonPath": "a[x]"})
            ),
        ]),
        json!([]),
    );
    assert_eq!(
        profile_problems(&sensor),
        [
            "spec.deviceResources[1].attributes.topic: Invalid value: \"stat/+/POWER\": may not hold the wildcards # or +",
            "spec.deviceResources[1].attributes.jsonPath: Invalid value: \"a[x]\": [x] is not an array index (digits only)",
        ]
    );
}
