//! Schema fragments for fields whose upstream CRD schema is not what their Rust type would
//! derive: embedded objects the API server keeps verbatim, Go `int` fields (no `format`),
//! and `metav1.Condition` lists with the validation upstream's generator adds.
//!
//! An optional field using one of these needs `#[serde(default)]`: schemars cannot see
//! through `schema_with` that the field is an `Option` and would otherwise mark it required.

use k8s_openapi::api::core::v1::LoadBalancerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A field the API server stores as given, with no declared type (upstream embeds a
/// Kubernetes object such as a `DeploymentSpec` this way).
pub(crate) fn preserve_unknown_fields(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// An object whose fields the API server stores as given.
pub(crate) fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// An object with no declared fields (upstream's schema for an embedded `ObjectMeta`).
pub(crate) fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object" })
}

/// An integer without a `format`: upstream declares these fields as Go `int`.
pub(crate) fn integer(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer" })
}

/// A list of `metav1.Condition` with the field validation upstream's CRD carries
/// (k8s-openapi's schema for `Condition` has the shape but not these limits).
pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut item = Condition::json_schema(generator);
    if let Some(props) = item
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        let limits = [
            ("message", json_schema!({ "maxLength": 32768 })),
            ("observedGeneration", json_schema!({ "minimum": 0 })),
            (
                "reason",
                json_schema!({
                    "maxLength": 1024,
                    "minLength": 1,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                }),
            ),
            (
                "status",
                json_schema!({ "enum": ["True", "False", "Unknown"] }),
            ),
            (
                "type",
                json_schema!({
                    "maxLength": 316,
                    "pattern": QUALIFIED_NAME_PATTERN,
                }),
            ),
        ];
        for (name, extra) in limits {
            let Some(prop) = props
                .get_mut(name)
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            if let Some(extra) = extra.as_object() {
                prop.extend(extra.clone());
            }
        }
    }
    json_schema!({ "type": "array", "items": item })
}

/// A Service's `LoadBalancerStatus` as upstream's generator writes it: both lists atomic,
/// and each port status requires `error`, `port` and `protocol`, with `error` a qualified
/// name (k8s-openapi's schema has neither marker and leaves `error` optional).
pub(crate) fn load_balancer_status(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = LoadBalancerStatus::json_schema(generator);
    let atomic = || serde_json::Value::from("atomic");
    let Some(ingress) = schema
        .as_object_mut()
        .and_then(|s| s.get_mut("properties")?.get_mut("ingress"))
        .and_then(serde_json::Value::as_object_mut)
    else {
        return schema;
    };
    ingress.insert("x-kubernetes-list-type".into(), atomic());
    let Some(ports) = ingress
        .get_mut("items")
        .and_then(|i| i.get_mut("properties")?.get_mut("ports"))
        .and_then(serde_json::Value::as_object_mut)
    else {
        return schema;
    };
    ports.insert("x-kubernetes-list-type".into(), atomic());
    if let Some(port) = ports
        .get_mut("items")
        .and_then(serde_json::Value::as_object_mut)
    {
        port.insert(
            "required".into(),
            serde_json::json!(["error", "port", "protocol"]),
        );
        if let Some(error) = port
            .get_mut("properties")
            .and_then(|p| p.get_mut("error"))
            .and_then(serde_json::Value::as_object_mut)
        {
            error.insert("maxLength".into(), 316.into());
            error.insert("pattern".into(), QUALIFIED_NAME_PATTERN.into());
        }
    }
    schema
}

/// A Kubernetes qualified name, optionally prefixed by a DNS subdomain (`foo.example.com/Bar`).
const QUALIFIED_NAME_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// The CRD schema of a whole object, generated the way `#[derive(CustomResource)]` does
/// (OpenAPI 3, subschemas inlined, kube's structural rewrites).
///
/// Panics only if schemars' output is not a `JSONSchemaProps`, which would be a bug in a
/// type of this crate and is caught by the CRD tests.
pub(crate) fn root_schema_for<T: JsonSchema>()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>())
        .and_then(serde_json::from_value)
        .expect("every schema in this crate is a valid JSONSchemaProps")
}
