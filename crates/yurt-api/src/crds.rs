//! The CustomResourceDefinitions of this crate's kinds, as upstream OpenYurt installs them:
//! one CRD per kind with every served version, the same names, scope, flags, subresources
//! and printer columns, and schemas generated from the Rust types.
//!
//! Use these rather than a single version's `CustomResourceExt::crd()`: only these merge
//! the versions and bring the schema in line with upstream (listKind, `apiVersion`/`kind`/
//! `metadata` at the root, no `nullable`, `spec` not required).
//!
//! Conversion is left unset. Upstream converts NodePool, YurtAppSet and Gateway through a
//! webhook on yurt-manager; the manager patches `spec.conversion` in at run time, using the
//! constants below.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::core::crd::merge_crds;
use kube::core::crd::v1::CustomResourceExt;
use serde_json::{Value, json};

use crate::{apps, iot, network, raven};

/// Name of the NodePool CRD.
pub const NODEPOOL_CRD_NAME: &str = "nodepools.apps.openyurt.io";
/// Name of the NodeBucket CRD.
pub const NODEBUCKET_CRD_NAME: &str = "nodebuckets.apps.openyurt.io";
/// Name of the YurtAppSet CRD.
pub const YURTAPPSET_CRD_NAME: &str = "yurtappsets.apps.openyurt.io";
/// Name of the YurtAppDaemon CRD.
pub const YURTAPPDAEMON_CRD_NAME: &str = "yurtappdaemons.apps.openyurt.io";
/// Name of the YurtStaticSet CRD.
pub const YURTSTATICSET_CRD_NAME: &str = "yurtstaticsets.apps.openyurt.io";
/// Name of the raven Gateway CRD.
pub const GATEWAY_CRD_NAME: &str = "gateways.raven.openyurt.io";
/// Name of the PoolService CRD.
pub const POOLSERVICE_CRD_NAME: &str = "poolservices.network.openyurt.io";
/// Name of the Device CRD.
pub const DEVICE_CRD_NAME: &str = "devices.iot.openyurt.io";
/// Name of the DeviceService CRD.
pub const DEVICESERVICE_CRD_NAME: &str = "deviceservices.iot.openyurt.io";
/// Name of the DeviceProfile CRD.
pub const DEVICEPROFILE_CRD_NAME: &str = "deviceprofiles.iot.openyurt.io";
/// Name of the PlatformAdmin CRD.
pub const PLATFORMADMIN_CRD_NAME: &str = "platformadmins.iot.openyurt.io";

/// The CRDs upstream serves through yurt-manager's conversion webhook.
pub const CONVERTED_CRD_NAMES: &[&str] =
    &[NODEPOOL_CRD_NAME, YURTAPPSET_CRD_NAME, GATEWAY_CRD_NAME];
/// Path of the conversion webhook on yurt-manager's webhook service.
pub const CONVERSION_WEBHOOK_PATH: &str = "/convert";
/// `conversionReviewVersions` upstream declares for its conversion webhook.
pub const CONVERSION_REVIEW_VERSIONS: &[&str] = &["v1beta1", "v1alpha1"];

/// Every CRD of this crate, in a stable order (NodePool, NodeBucket, YurtAppSet,
/// YurtAppDaemon, YurtStaticSet, Gateway, PoolService, Device, DeviceService,
/// DeviceProfile, PlatformAdmin).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        node_pool(),
        node_bucket(),
        yurt_app_set(),
        yurt_app_daemon(),
        yurt_static_set(),
        gateway(),
        pool_service(),
        device(),
        device_service(),
        device_profile(),
        platform_admin(),
    ]
}

/// PlatformAdmin: `v1alpha1` (deprecated) and `v1alpha2`, neither served nor stored, and
/// `v1beta1` (served, storage), as upstream keeps them.
pub fn platform_admin() -> CustomResourceDefinition {
    let mut crd = merged(
        vec![
            iot::v1alpha1::PlatformAdmin::crd(),
            iot::v1alpha2::PlatformAdmin::crd(),
            iot::v1beta1::PlatformAdmin::crd(),
        ],
        "v1beta1",
    );
    for version in &mut crd.spec.versions {
        version.served = version.name == "v1beta1";
    }
    crd
}

/// Device: `v1alpha1`.
pub fn device() -> CustomResourceDefinition {
    finish(iot::v1alpha1::Device::crd())
}

/// DeviceService: `v1alpha1`.
pub fn device_service() -> CustomResourceDefinition {
    finish(iot::v1alpha1::DeviceService::crd())
}

/// DeviceProfile: `v1alpha1`.
pub fn device_profile() -> CustomResourceDefinition {
    finish(iot::v1alpha1::DeviceProfile::crd())
}

/// NodePool: `v1alpha1` (deprecated), `v1beta1`, `v1beta2` (storage).
pub fn node_pool() -> CustomResourceDefinition {
    merged(
        vec![
            apps::v1alpha1::NodePool::crd(),
            apps::v1beta1::NodePool::crd(),
            apps::v1beta2::NodePool::crd(),
        ],
        "v1beta2",
    )
}

/// NodeBucket: `v1alpha1`.
pub fn node_bucket() -> CustomResourceDefinition {
    finish(apps::v1alpha1::NodeBucket::crd())
}

/// YurtAppSet: `v1alpha1` (deprecated), `v1beta1` (storage).
pub fn yurt_app_set() -> CustomResourceDefinition {
    merged(
        vec![
            apps::v1alpha1::YurtAppSet::crd(),
            apps::v1beta1::YurtAppSet::crd(),
        ],
        "v1beta1",
    )
}

/// YurtAppDaemon: `v1alpha1` (deprecated).
pub fn yurt_app_daemon() -> CustomResourceDefinition {
    finish(apps::v1alpha1::YurtAppDaemon::crd())
}

/// YurtStaticSet: `v1alpha1`.
pub fn yurt_static_set() -> CustomResourceDefinition {
    finish(apps::v1alpha1::YurtStaticSet::crd())
}

/// Gateway: `v1alpha1`, `v1beta1` (storage).
pub fn gateway() -> CustomResourceDefinition {
    merged(
        vec![
            raven::v1alpha1::Gateway::crd(),
            raven::v1beta1::Gateway::crd(),
        ],
        "v1beta1",
    )
}

/// PoolService: `v1alpha1`.
pub fn pool_service() -> CustomResourceDefinition {
    finish(network::v1alpha1::PoolService::crd())
}

/// `crds` as one multi-document YAML stream (each document starts with `---`), ready for
/// `kubectl apply -f -`.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        // A CRD holds only string-keyed maps, so it always has a YAML form.
        out.push_str(&serde_yaml::to_string(crd).expect("a CRD always serialises to YAML"));
    }
    out
}

// === helpers ===

/// Merges single-version CRDs of one kind, given in upstream's version order, keeping that
/// order (kube's merge puts the storage version first).
fn merged(parts: Vec<CustomResourceDefinition>, storage: &str) -> CustomResourceDefinition {
    let order: Vec<String> = parts
        .iter()
        .flat_map(|crd| crd.spec.versions.iter().map(|v| v.name.clone()))
        .collect();
    let mut crd = merge_crds(parts, storage).expect(
        "the versions of one kind share group, kind and scope, and include the storage version",
    );
    crd.spec
        .versions
        .sort_by_key(|v| order.iter().position(|name| *name == v.name));
    finish(crd)
}

/// Brings a generated CRD in line with upstream's: `listKind` set, and each version's
/// schema rewritten by [`upstream_shape`].
fn finish(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let mut value =
            serde_json::to_value(&*schema).expect("a JSONSchemaProps always serialises to JSON");
        upstream_shape(&mut value);
        *schema = serde_json::from_value::<JSONSchemaProps>(value)
            .expect("removing keywords keeps a JSONSchemaProps valid");
    }
    crd
}

/// Rewrites a root object schema as controller-gen writes it:
/// - `apiVersion`, `kind` and `metadata` are declared (the derive leaves them out);
/// - `spec` is not required (upstream accepts an object without one);
/// - no `title`, and no `nullable` anywhere: upstream never allows explicit nulls, so the
///   API server drops them instead of storing them;
/// - the list and map markers Kubernetes puts on its own types (see [`add_k8s_markers`]).
fn upstream_shape(root: &mut Value) {
    strip_nullable(root);
    add_k8s_markers(root);
    let Some(obj) = root.as_object_mut() else {
        return;
    };
    obj.remove("title");
    if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|r| r != "spec");
        if required.is_empty() {
            obj.remove("required");
        }
    }
    let props = obj
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(props) = props {
        props.insert("apiVersion".into(), json!({ "type": "string" }));
        props.insert("kind".into(), json!({ "type": "string" }));
        props.insert("metadata".into(), json!({ "type": "object" }));
    }
}

/// Removes `nullable` from a schema and every schema inside it.
fn strip_nullable(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("nullable");
    for (key, child) in obj.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Some(props) = child.as_object_mut() {
                    props.values_mut().for_each(strip_nullable);
                }
            }
            "items" | "additionalProperties" | "not" => strip_nullable(child),
            "allOf" | "anyOf" | "oneOf" => {
                if let Some(list) = child.as_array_mut() {
                    list.iter_mut().for_each(strip_nullable);
                }
            }
            _ => {}
        }
    }
}

/// Adds what controller-gen writes for embedded Kubernetes types and k8s-openapi's schemas
/// lack: `x-kubernetes-map-type: atomic` on label and node selectors, `x-kubernetes-list-type:
/// atomic` on their requirement and value lists, and `anyOf: [integer, string]` beside
/// `x-kubernetes-int-or-string`. Selectors are recognised by their exact set of properties
/// (`matchExpressions` with `matchLabels`, or with `matchFields`), which no OpenYurt type
/// shares. The markers change server-side apply (a selector is replaced whole, never merged).
fn add_k8s_markers(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && !obj.contains_key("anyOf")
    {
        obj.insert(
            "anyOf".into(),
            json!([{ "type": "integer" }, { "type": "string" }]),
        );
    }
    let mut keys: Vec<&str> = obj
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    let lists: &[&str] = match keys.as_slice() {
        ["matchExpressions", "matchLabels"] => &["matchExpressions"],
        ["matchExpressions", "matchFields"] => &["matchExpressions", "matchFields"],
        _ => &[],
    };
    if !lists.is_empty() {
        obj.insert("x-kubernetes-map-type".into(), json!("atomic"));
        for list in lists {
            let Some(list) = obj["properties"]
                .get_mut(*list)
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            list.insert("x-kubernetes-list-type".into(), json!("atomic"));
            if let Some(values) = list
                .get_mut("items")
                .and_then(|i| i.get_mut("properties")?.get_mut("values"))
                .and_then(Value::as_object_mut)
            {
                values.insert("x-kubernetes-list-type".into(), json!("atomic"));
            }
        }
    }
    for (key, child) in obj.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Some(props) = child.as_object_mut() {
                    props.values_mut().for_each(add_k8s_markers);
                }
            }
            "items" | "additionalProperties" => add_k8s_markers(child),
            _ => {}
        }
    }
}
