//! A realistic object of every kind and version decodes into our type and encodes back to
//! exactly the same JSON, and every field in it is one our CRD declares (so the API
//! server would neither reject nor prune it).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use yurt_api::{apps, iot, network, raven};

const T0: &str = "2024-05-01T10:00:00Z";

/// Decodes `sample` as `K`, re-encodes it, and checks nothing was lost or added; then
/// checks `sample` against our CRD's schema for its version.
fn round_trip<K: Serialize + DeserializeOwned>(sample: Value) -> K {
    let obj: K = serde_json::from_value(sample.clone())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", sample["kind"]));
    let back = serde_json::to_value(&obj).expect("encodes");
    assert_eq!(back, sample, "{} changed in a round trip", sample["kind"]);
    assert_fits_crd(&sample);
    obj
}

fn assert_fits_crd(sample: &Value) {
    let (group, version) = sample["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let kind = sample["kind"].as_str().unwrap();
    let crds: Vec<CustomResourceDefinition> = yurt_api::crds::all();
    let crd = crds
        .iter()
        .find(|c| c.spec.group == group && c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {group} {kind}"));
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .expect("version served");
    let schema = serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let mut problems = Vec::new();
    fits(sample, &schema, kind, &mut problems);
    assert!(
        problems.is_empty(),
        "{kind} {version} does not fit our CRD:\n  {}",
        problems.join("\n  ")
    );
}

/// A small structural validator: types, enums, required fields, and unknown fields.
fn fits(value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_string()) {
            problems.push(format!("{path}: not an int or a string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} not one of {allowed:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return problems.push(format!("{path}: not an object"));
            };
            for req in schema["required"].as_array().into_iter().flatten() {
                if !obj.contains_key(req.as_str().unwrap()) {
                    problems.push(format!("{path}: required {req} missing"));
                }
            }
            for (key, child) in obj {
                let child_path = format!("{path}.{key}");
                if let Some(prop) = schema["properties"].get(key) {
                    // The API server handles the object's own metadata itself.
                    let object_metadata = key == "metadata" && !path.contains('.');
                    if !object_metadata {
                        fits(child, prop, &child_path, problems);
                    }
                } else if schema["additionalProperties"].is_object() {
                    fits(
                        child,
                        &schema["additionalProperties"],
                        &child_path,
                        problems,
                    );
                } else if !preserve {
                    problems.push(format!("{child_path}: not in the schema, would be pruned"));
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    fits(item, &schema["items"], &format!("{path}[{i}]"), problems);
                }
            }
            None => problems.push(format!("{path}: not an array")),
        },
        Some("string") if !value.is_string() => problems.push(format!("{path}: not a string")),
        Some("integer") if !value.is_i64() => problems.push(format!("{path}: not an integer")),
        Some("boolean") if !value.is_boolean() => problems.push(format!("{path}: not a boolean")),
        Some("number") if !value.is_number() => problems.push(format!("{path}: not a number")),
        None if !preserve => problems.push(format!("{path}: schema has no type")),
        _ => {}
    }
}

fn taints() -> Value {
    json!([
        { "key": "node-role.openyurt.io/edge", "value": "true", "effect": "NoSchedule" },
        { "key": "maintenance", "effect": "NoExecute", "timeAdded": T0 },
    ])
}

#[test]
fn node_pool_v1alpha1_round_trips() {
    let pool: apps::v1alpha1::NodePool = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1",
        "kind": "NodePool",
        "metadata": { "name": "hangzhou", "labels": { "nodepool.openyurt.io/type": "edge" } },
        "spec": {
            "type": "Edge",
            "selector": { "matchLabels": { "apps.openyurt.io/nodepool": "hangzhou" } },
            "labels": { "region": "hz" },
            "annotations": { "owner": "ops" },
            "taints": taints(),
        },
        "status": { "readyNodeNum": 2, "unreadyNodeNum": 1, "nodes": ["edge-1", "edge-2", "edge-3"] },
    }));
    assert_eq!(pool.spec.type_, Some(apps::NodePoolType::Edge));
}

#[test]
fn node_pool_v1beta1_round_trips() {
    let pool: apps::v1beta1::NodePool = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "NodePool",
        "metadata": { "name": "shanghai" },
        "spec": {
            "type": "Cloud",
            "hostNetwork": false,
            "labels": { "region": "sh" },
            "annotations": { "owner": "ops" },
            "taints": taints(),
        },
        "status": { "readyNodeNum": 3, "unreadyNodeNum": 0, "nodes": ["cloud-1", "cloud-2", "cloud-3"] },
    }));
    assert_eq!(pool.spec.host_network, Some(false));
}

#[test]
fn node_pool_v1beta2_round_trips() {
    let pool: apps::v1beta2::NodePool = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1beta2",
        "kind": "NodePool",
        "metadata": { "name": "hangzhou", "resourceVersion": "4711", "creationTimestamp": T0 },
        "spec": {
            "type": "Edge",
            "hostNetwork": true,
            "labels": { "region": "hz" },
            "annotations": { "owner": "ops" },
            "taints": taints(),
            "interConnectivity": true,
            "leaderElectionStrategy": "mark",
            "leaderNodeLabelSelector": { "leader-candidate": "true" },
            "enableLeaderElection": true,
            "leaderReplicas": 2,
            "poolScopeMetadata": [
                { "group": "", "version": "v1", "resource": "services" },
                { "group": "discovery.k8s.io", "version": "v1", "resource": "endpointslices" },
            ],
        },
        "status": {
            "readyNodeNum": 2,
            "unreadyNodeNum": 0,
            "nodes": ["edge-1", "edge-2"],
            "leaderEndpoints": [{ "nodeName": "edge-1", "address": "10.0.1.11:10261" }],
            "leaderNum": 1,
            "leaderLastElectedTime": T0,
            "conditions": [{
                "type": "LeaderReady",
                "status": "True",
                "lastTransitionTime": T0,
                "reason": "LeaderElected",
                "message": "1 leader elected",
            }],
        },
    }));
    assert_eq!(
        pool.spec.leader_election_strategy,
        Some(apps::v1beta2::LeaderElectionStrategy::Mark)
    );
    let status = pool.status.unwrap();
    assert_eq!(status.leader_endpoints.unwrap()[0].node_name, "edge-1");
    assert_eq!(
        status.conditions.unwrap()[0].status,
        Some(yurt_api::ConditionStatus::True)
    );
}

#[test]
fn node_bucket_round_trips() {
    let bucket: apps::v1alpha1::NodeBucket = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1",
        "kind": "NodeBucket",
        "metadata": { "name": "hangzhou-x7k2p", "labels": { "openyurt.io/pool-name": "hangzhou" } },
        "numNodes": 2,
        "nodes": [{ "name": "edge-1" }, { "name": "edge-2" }],
    }));
    assert_eq!(bucket.num_nodes, 2);
}

fn pod_template(app: &str) -> Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": { "containers": [{ "name": app, "image": "nginx:1.25", "ports": [{ "containerPort": 80 }] }] },
    })
}

#[test]
fn yurt_app_set_v1alpha1_round_trips() {
    let set: apps::v1alpha1::YurtAppSet = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1",
        "kind": "YurtAppSet",
        "metadata": { "name": "web", "namespace": "default" },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "workloadTemplate": {
                "deploymentTemplate": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "replicas": 1,
                        "selector": { "matchLabels": { "app": "web" } },
                        "template": pod_template("web"),
                    },
                },
            },
            "topology": {
                "pools": [{
                    "name": "hangzhou",
                    "nodeSelectorTerm": {
                        "matchExpressions": [
                            { "key": "apps.openyurt.io/nodepool", "operator": "In", "values": ["hangzhou"] },
                        ],
                    },
                    "tolerations": [{ "key": "node-role.openyurt.io/edge", "operator": "Exists", "effect": "NoSchedule" }],
                    "replicas": 2,
                    "patch": { "spec": { "template": { "spec": { "containers": [{ "name": "web", "image": "nginx:1.26" }] } } } },
                }],
            },
            "revisionHistoryLimit": 5,
        },
        "status": {
            "observedGeneration": 3,
            "collisionCount": 0,
            "currentRevision": "web-6d4f8",
            "conditions": [{ "type": "PoolProvisioned", "status": "True", "lastTransitionTime": T0, "reason": "Provisioned", "message": "" }],
            "replicas": 2,
            "readyReplicas": 2,
            "poolReplicas": { "hangzhou": 2 },
            "templateType": "Deployment",
            "workloadSummary": [{ "availableCondition": "True", "replicas": 2, "readyReplicas": 2, "workloadName": "web-hangzhou-x7k2p" }],
            "overriderRef": "web-overrider",
        },
    }));
    let status = set.status.unwrap();
    assert_eq!(status.template_type, apps::TemplateType::Deployment);
    assert_eq!(set.spec.topology.unwrap().pools.unwrap()[0].replicas, 2);
}

#[test]
fn yurt_app_set_v1beta1_round_trips() {
    let set: apps::v1beta1::YurtAppSet = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": { "name": "db", "namespace": "prod" },
        "spec": {
            "workload": {
                "workloadTemplate": {
                    "statefulSetTemplate": {
                        "metadata": { "labels": { "app": "db" } },
                        "spec": {
                            "serviceName": "db",
                            "selector": { "matchLabels": { "app": "db" } },
                            "template": pod_template("db"),
                        },
                    },
                },
                "workloadTweaks": [
                    {
                        "pools": ["hangzhou"],
                        "tweaks": {
                            "replicas": 3,
                            "containerImages": [{ "name": "db", "targetImage": "postgres:16" }],
                            "patches": [
                                { "path": "/metadata/labels/pool", "operation": "add", "value": "{{nodepool-name}}" },
                                { "path": "/spec/template/spec/nodeSelector", "operation": "replace", "value": { "disk": "ssd" } },
                                { "path": "/metadata/annotations/legacy", "operation": "remove" },
                            ],
                        },
                    },
                    { "nodepoolSelector": { "matchLabels": { "tier": "gold" } }, "tweaks": { "replicas": 1 } },
                ],
            },
            "nodepoolSelector": {
                "matchExpressions": [{ "key": "nodepool.openyurt.io/type", "operator": "In", "values": ["edge"] }],
            },
            "pools": ["hangzhou", "shanghai"],
            "revisionHistoryLimit": 10,
        },
        "status": {
            "observedGeneration": 7,
            "collisionCount": 1,
            "currentRevision": "db-5c9b7",
            "conditions": [{ "type": "AppDispatched", "status": "True", "lastTransitionTime": T0, "reason": "Dispatched", "message": "2 workloads" }],
            "readyWorkloads": 1,
            "updatedWorkloads": 2,
            "totalWorkloads": 2,
        },
    }));
    let tweaks = set.spec.workload.workload_tweaks.unwrap();
    let patches = tweaks[0].tweaks.patches.as_ref().unwrap();
    assert_eq!(patches[2].operation, apps::v1beta1::PatchOperation::Remove);
    assert_eq!(patches[2].value, None);
}

#[test]
fn yurt_app_daemon_round_trips() {
    let daemon: apps::v1alpha1::YurtAppDaemon = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1",
        "kind": "YurtAppDaemon",
        "metadata": { "name": "agent", "namespace": "kube-system" },
        "spec": {
            "selector": { "matchLabels": { "app": "agent" } },
            "workloadTemplate": {
                "deploymentTemplate": {
                    "metadata": { "labels": { "app": "agent" } },
                    "spec": { "selector": { "matchLabels": { "app": "agent" } }, "template": pod_template("agent") },
                },
            },
            "nodepoolSelector": { "matchLabels": { "apps.openyurt.io/nodepool-type": "edge" } },
            "revisionHistoryLimit": 3,
        },
        "status": {
            "observedGeneration": 2,
            "collisionCount": 0,
            "currentRevision": "agent-7f6c5",
            "conditions": [{ "type": "WorkLoadProvisioned", "status": "True", "lastTransitionTime": T0, "reason": "Provisioned", "message": "" }],
            "overriderRef": "agent-overrider",
            "workloadSummary": [{ "availableCondition": "False", "replicas": 1, "readyReplicas": 0, "workloadName": "agent-hangzhou-q2w3e" }],
            "templateType": "Deployment",
            "nodepools": ["hangzhou"],
        },
    }));
    let cond = &daemon.status.unwrap().conditions.unwrap()[0];
    assert_eq!(
        cond.type_,
        Some(apps::v1alpha1::YurtAppDaemonConditionType::WorkLoadProvisioned)
    );
}

#[test]
fn yurt_static_set_round_trips() {
    let set: apps::v1alpha1::YurtStaticSet = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1",
        "kind": "YurtStaticSet",
        "metadata": { "name": "edge-proxy", "namespace": "kube-system" },
        "spec": {
            "staticPodManifest": "edge-proxy",
            "upgradeStrategy": { "type": "OTA", "maxUnavailable": "10%" },
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": { "labels": { "k8s-app": "edge-proxy" } },
                "spec": { "hostNetwork": true, "containers": [{ "name": "proxy", "image": "edge-proxy:v1", "args": ["--v=2"] }] },
            },
        },
        "status": { "observedGeneration": 4, "totalNumber": 3, "readyNumber": 3, "upgradedNumber": 2 },
    }));
    let strategy = set.spec.upgrade_strategy.unwrap();
    assert_eq!(
        strategy.type_,
        Some(apps::v1alpha1::UpgradeStrategyType::Ota)
    );
}

#[test]
fn gateway_v1alpha1_round_trips() {
    let gw: raven::v1alpha1::Gateway = round_trip(json!({
        "apiVersion": "raven.openyurt.io/v1alpha1",
        "kind": "Gateway",
        "metadata": { "name": "gw-hangzhou" },
        "spec": {
            "nodeSelector": { "matchLabels": { "raven.openyurt.io/gateway": "gw-hangzhou" } },
            "endpoints": [{ "nodeName": "edge-1", "underNAT": true, "publicIP": "203.0.113.10", "config": { "vpn-driver": "libreswan" } }],
            "exposeType": "PublicIP",
        },
        "status": {
            "nodes": [{ "nodeName": "edge-1", "privateIP": "10.0.1.11", "subnets": ["10.244.1.0/24"] }],
            "activeEndpoint": { "nodeName": "edge-1", "underNAT": true, "publicIP": "203.0.113.10" },
        },
    }));
    assert_eq!(gw.spec.expose_type, Some(raven::ExposeType::PublicIp));
}

#[test]
fn gateway_v1beta1_round_trips_with_capitalised_replicas() {
    let gw: raven::v1beta1::Gateway = round_trip(json!({
        "apiVersion": "raven.openyurt.io/v1beta1",
        "kind": "Gateway",
        "metadata": { "name": "gw-cloud", "annotations": { "raven.openyurt.io/extra-allowed-source-cidrs": "192.168.0.0/16" } },
        "spec": {
            "nodeSelector": { "matchLabels": { "raven.openyurt.io/gateway": "gw-cloud" } },
            "proxyConfig": { "Replicas": 2, "proxyHTTPPort": "10255,9445", "proxyHTTPSPort": "10250,9100" },
            "tunnelConfig": { "Replicas": 1 },
            "endpoints": [
                { "nodeName": "cloud-1", "type": "proxy", "port": 10262, "underNAT": false, "publicIP": "198.51.100.5", "publicPort": 10262 },
                { "nodeName": "cloud-1", "type": "tunnel", "port": 4500, "underNAT": false, "natType": "", "publicIP": "198.51.100.5", "publicPort": 4500, "config": {} },
            ],
            "exposeType": "LoadBalancer",
        },
        "status": {
            "nodes": [{ "nodeName": "cloud-1", "privateIP": "10.0.0.11", "subnets": ["10.244.0.0/24", "192.168.0.0/16"] }],
            "activeEndpoints": [{ "nodeName": "cloud-1", "type": "tunnel", "port": 4500, "underNAT": false, "publicIP": "198.51.100.5" }],
        },
    }));
    assert_eq!(gw.spec.proxy_config.unwrap().replicas, 2);
    assert_eq!(gw.spec.tunnel_config.unwrap().replicas, 1);
}

#[test]
fn pool_service_round_trips() {
    let ps: network::v1alpha1::PoolService = round_trip(json!({
        "apiVersion": "network.openyurt.io/v1alpha1",
        "kind": "PoolService",
        "metadata": {
            "name": "web-hangzhou",
            "namespace": "default",
            "labels": { "openyurt.io/service-name": "web", "openyurt.io/pool-name": "hangzhou" },
        },
        "spec": { "loadBalancerClass": "service.openyurt.io/elb" },
        "status": {
            "loadBalancer": {
                "ingress": [{ "ip": "198.51.100.7", "ipMode": "VIP", "ports": [{ "port": 80, "protocol": "TCP", "error": "Pending" }] }],
            },
            "aggregateToAnnotations": { "elb.openyurt.io/id": "lb-123" },
            "aggregateToLabels": { "elb.openyurt.io/managed": "true" },
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "observedGeneration": 1,
                "lastTransitionTime": T0,
                "reason": "Provisioned",
                "message": "",
            }],
        },
    }));
    assert_eq!(
        ps.spec.load_balancer_class.as_deref(),
        Some("service.openyurt.io/elb")
    );
}

#[test]
fn device_round_trips_as_yurt_iot_dock_writes_it() {
    // A virtual device as synced from EdgeX: its protocol map, a desired value, and the
    // status the edge reports (numbers as EdgeX formats them, strings).
    let device: iot::v1alpha1::Device = round_trip(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "Device",
        "metadata": {
            "name": "hangzhou-random-integer-device",
            "namespace": "default",
            "labels": { "yurt-iot-dock/edgex-object.name": "Random-Integer-Device" },
            "finalizers": ["iot.openyurt.io/device"],
        },
        "spec": {
            "description": "Example of Device Virtual",
            "adminState": "UNLOCKED",
            "operatingState": "UP",
            "protocols": { "other": { "Address": "device-virtual-int-01", "Protocol": "300" } },
            "labels": ["device-virtual-example"],
            "serviceName": "device-virtual",
            "profileName": "Random-Integer-Device",
            "notify": true,
            "managed": false,
            "nodePool": "hangzhou",
            "deviceProperties": {
                "Int8": { "name": "Int8", "desiredValue": "12", "putURL": "http://edgex-core-command:59882/api/v3/device/name/Random-Integer-Device/Int8" },
            },
        },
        "status": {
            "lastConnected": 1_714_557_600_000_i64,
            "lastReported": 1_714_557_601_000_i64,
            "synced": true,
            "edgeId": "0f5a3b4e-2c7d-4a1e-9b7f-6c2d9e1f0a11",
            "adminState": "UNLOCKED",
            "operatingState": "UP",
            "deviceProperties": {
                "Int8": { "name": "Int8", "actualValue": "12", "getURL": "http://edgex-core-command:59882/api/v3/device/name/Random-Integer-Device/Int8" },
                "Float32": { "name": "Float32", "actualValue": "1.000000" },
            },
            "conditions": [
                { "type": "DeviceSynced", "status": "True", "lastTransitionTime": T0 },
                { "type": "DeviceManaging", "status": "False", "reason": "Unmanaged", "message": "the edge owns it" },
            ],
        },
    }));
    assert_eq!(device.spec.admin_state, Some(iot::AdminState::Unlocked));
    assert_eq!(device.spec.operating_state, Some(iot::OperatingState::Up));
    let status = device.status.unwrap();
    assert_eq!(
        status.device_properties.unwrap()["Float32"].actual_value,
        "1.000000"
    );
}

#[test]
fn a_device_as_yurt_iot_dock_creates_it_from_the_edge_decodes() {
    // Go omits `managed: false`, and writes an empty status and a zero-decimal number.
    let device: iot::v1alpha1::Device = serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "Device",
        "metadata": {
            "name": "hangzhou-modbus-device",
            "namespace": "default",
            "labels": { "yurt-iot-dock/edgex-object.name": "Modbus-Device" },
        },
        "spec": {
            "adminState": "UNLOCKED",
            "operatingState": "UP",
            "protocols": { "modbus-tcp": { "Address": "10.20.1.50", "Port": "502", "UnitID": "1.000000" } },
            "serviceName": "device-modbus",
            "profileName": "Modbus-Thermostat",
            "notify": false,
            "nodePool": "hangzhou",
        },
        "status": {},
    }))
    .expect("dock's device decodes");
    assert_eq!(device.spec.managed, None);
    assert_eq!(
        device.spec.protocols.unwrap()["modbus-tcp"]["UnitID"],
        "1.000000"
    );
    assert_fits_crd(
        &serde_json::to_value(iot::v1alpha1::Device::new(
            "d",
            iot::v1alpha1::DeviceSpec::default(),
        ))
        .unwrap(),
    );
}

#[test]
fn device_service_round_trips() {
    round_trip::<iot::v1alpha1::DeviceService>(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "DeviceService",
        "metadata": { "name": "hangzhou-device-virtual", "namespace": "default" },
        "spec": {
            "baseAddress": "http://edgex-device-virtual:59900",
            "description": "the virtual driver",
            "labels": ["virtual"],
            "adminState": "UNLOCKED",
            "managed": true,
            "nodePool": "hangzhou",
        },
        "status": {
            "synced": true,
            "edgeId": "b6b1c1a0-1d2e-4f3a-8b9c-0d1e2f3a4b5c",
            "lastConnected": 1_714_557_600_000_i64,
            "lastReported": 0,
            "adminState": "UNLOCKED",
            "conditions": [{ "type": "DeviceServiceSynced", "status": "True", "lastTransitionTime": T0 }],
        },
    }));
}

#[test]
fn device_profile_round_trips_with_string_attributes_and_ranges() {
    // A Modbus profile as users write it: every attribute and bound a string (numbers
    // quoted), a command over two resources.
    let profile: iot::v1alpha1::DeviceProfile = round_trip(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "DeviceProfile",
        "metadata": { "name": "hangzhou-thermostat", "namespace": "default" },
        "spec": {
            "nodePool": "hangzhou",
            "description": "a Modbus thermostat",
            "manufacturer": "Acme",
            "model": "T-100",
            "labels": ["modbus", "hvac"],
            "deviceResources": [
                {
                    "description": "room temperature",
                    "name": "Temperature",
                    "tag": "temp",
                    "isHidden": false,
                    "properties": {
                        "readWrite": "R", "valueType": "Float32", "units": "C",
                        "minimum": "-40", "maximum": "85", "scale": "0.1", "offset": "0",
                        "base": "0", "mask": "0", "shift": "0", "assertion": "",
                        "defaultValue": "0", "mediaType": "",
                    },
                    "attributes": { "primaryTable": "INPUT_REGISTERS", "startingAddress": "0", "rawType": "Int16" },
                },
                {
                    "description": "set point",
                    "name": "SetPoint",
                    "isHidden": false,
                    "properties": { "readWrite": "RW", "valueType": "Int16", "minimum": "5", "maximum": "30" },
                    "attributes": { "primaryTable": "HOLDING_REGISTERS", "startingAddress": "1" },
                },
            ],
            "deviceCommands": [{
                "name": "Climate",
                "isHidden": false,
                "readWrite": "R",
                "resourceOperations": [
                    { "deviceResource": "Temperature", "defaultValue": "" },
                    { "deviceResource": "SetPoint", "defaultValue": "20", "mappings": { "20": "comfort" } },
                ],
            }],
        },
        "status": { "id": "5e2b1a90-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "synced": true },
    }));
    let resources = profile.spec.device_resources.unwrap();
    assert_eq!(
        resources[0].attributes.as_ref().unwrap()["startingAddress"],
        "0"
    );
}

#[test]
fn a_device_without_its_required_fields_is_rejected() {
    let err = serde_json::from_value::<iot::v1alpha1::Device>(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "Device",
        "metadata": { "name": "broken", "namespace": "default" },
        "spec": { "serviceName": "device-virtual", "notify": true },
    }))
    .expect_err("spec.profileName is required");
    assert!(err.to_string().contains("profileName"), "{err}");
    // An attribute given as a number, not a string: upstream's schema refuses it too.
    let err = serde_json::from_value::<iot::v1alpha1::DeviceProfile>(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "DeviceProfile",
        "metadata": { "name": "broken", "namespace": "default" },
        "spec": { "deviceResources": [{ "description": "d", "name": "n", "isHidden": false,
                  "properties": {}, "attributes": { "startingAddress": 0 } }] },
    }))
    .expect_err("attributes are strings");
    assert!(err.to_string().contains("string"), "{err}");
}

#[test]
fn platform_admin_v1beta1_round_trips_as_upstream_writes_it() {
    let admin: iot::v1beta1::PlatformAdmin = round_trip(json!({
        "apiVersion": "iot.openyurt.io/v1beta1",
        "kind": "PlatformAdmin",
        "metadata": { "name": "edgex-sample", "namespace": "default", "finalizers": ["iot.openyurt.io"] },
        "spec": {
            "version": "minnesota",
            "imageRegistry": "registry.local",
            "nodepools": ["hangzhou", "beijing"],
            "platform": "edgex",
            "components": [{ "name": "yurt-iot-dock" }, { "name": "edgex-device-virtual" }],
            "security": false,
        },
        "status": {
            "ready": true,
            "initialized": true,
            "readyComponentNum": 2,
            "unreadyComponentNum": 0,
            "conditions": [{ "type": "DeploymentAvailable", "status": "True", "lastTransitionTime": T0, "reason": "", "message": "" }],
        },
    }));
    assert_eq!(admin.spec.nodepools.unwrap(), ["hangzhou", "beijing"]);
}

#[test]
fn platform_admin_unserved_versions_decode() {
    // Never served, but their types decode what upstream wrote in them.
    let old: iot::v1alpha1::PlatformAdmin = serde_json::from_value(json!({
        "apiVersion": "iot.openyurt.io/v1alpha1",
        "kind": "PlatformAdmin",
        "metadata": { "name": "old", "namespace": "default" },
        "spec": {
            "version": "jakarta", "poolName": "hangzhou", "serviceType": "ClusterIP",
            "additionalDeployments": [{ "metadata": { "name": "extra" }, "spec": {
                "selector": { "matchLabels": { "app": "extra" } },
                "template": { "metadata": { "labels": { "app": "extra" } },
                              "spec": { "containers": [{ "name": "c", "image": "busybox" }] } } } }],
            "additionalServices": [{ "spec": { "ports": [{ "port": 80 }] } }],
        },
    }))
    .unwrap();
    let extra = &old.spec.additional_deployments.unwrap()[0];
    assert_eq!(
        extra.spec.template.spec.as_ref().unwrap().containers[0].name,
        "c"
    );
    round_trip::<iot::v1alpha2::PlatformAdmin>(json!({
        "apiVersion": "iot.openyurt.io/v1alpha2",
        "kind": "PlatformAdmin",
        "metadata": { "name": "mid", "namespace": "default" },
        "spec": { "version": "minnesota", "poolName": "hangzhou", "platform": "edgex", "components": [{ "name": "yurt-iot-dock" }] },
    }));
}

#[test]
fn unknown_string_values_survive_a_round_trip() {
    // The CRD accepts any string here, so decoding must too, or one odd object would break
    // every list of its kind.
    let pool: apps::v1beta2::NodePool = round_trip(json!({
        "apiVersion": "apps.openyurt.io/v1beta2",
        "kind": "NodePool",
        "metadata": { "name": "odd" },
        "spec": { "type": "Satellite", "leaderElectionStrategy": "oldest" },
    }));
    assert_eq!(
        pool.spec.type_,
        Some(apps::NodePoolType::Other("Satellite".into()))
    );
}

#[test]
fn a_missing_required_field_is_rejected() {
    let err = serde_json::from_value::<apps::v1beta1::YurtAppSet>(json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": { "name": "broken" },
        "spec": { "pools": ["hangzhou"] },
    }))
    .expect_err("spec.workload is required");
    assert!(err.to_string().contains("workload"), "{err}");

    let err = serde_json::from_value::<apps::v1beta1::YurtAppSet>(json!({
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": { "name": "broken" },
        "spec": { "workload": { "workloadTemplate": {}, "workloadTweaks": [{ "tweaks": { "patches": [{ "path": "/x", "operation": "move" }] } }] } },
    }))
    .expect_err("move is not a tweak operation");
    assert!(err.to_string().contains("move"), "{err}");
}

#[test]
fn the_schema_check_catches_a_field_the_crd_would_prune() {
    let mut problems = Vec::new();
    let schema =
        json!({ "type": "object", "properties": { "a": { "type": "string" } }, "required": ["a"] });
    fits(&json!({ "a": 1, "b": true }), &schema, "x", &mut problems);
    assert_eq!(
        problems,
        [
            "x.a: not a string",
            "x.b: not in the schema, would be pruned"
        ]
    );
}
