//! Our CRDs against upstream OpenYurt's manifests (shared/compat/openyurt-crds): names,
//! scope, versions and their flags, subresources, printer columns, and the schemas, field
//! by field (every keyword but descriptions). Every mismatch is collected and reported in
//! one failure.
//!
//! The manifests are read from `$YURT_OPENYURT_CRDS`, or from the shared compat directory.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use serde_json::Value;

const DEFAULT_UPSTREAM_DIR: &str = "/work/shared/compat/openyurt-crds";

/// Schema keywords compared separately (recursively, or as sets), or not at all
/// (descriptions are our own words). Every other keyword must be equal, present or absent.
const STRUCTURE_KEYWORDS: &[&str] = &[
    "description",
    "properties",
    "items",
    "additionalProperties",
    "required",
];

fn upstream_dir() -> PathBuf {
    std::env::var_os("YURT_OPENYURT_CRDS")
        .map_or_else(|| PathBuf::from(DEFAULT_UPSTREAM_DIR), PathBuf::from)
}

/// Upstream's CRDs: this crate covers every one.
fn upstream_crds() -> Vec<(String, CustomResourceDefinition)> {
    let dir = upstream_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "upstream CRDs at {}: {e} (set YURT_OPENYURT_CRDS)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable upstream CRD");
            let crd = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not a CRD: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                crd,
            )
        })
        .collect()
}

#[test]
fn every_upstream_crd_has_an_identical_counterpart() {
    let upstream = upstream_crds();
    assert_eq!(upstream.len(), 11, "expected 11 upstream CRDs");
    let ours = yurt_api::crds::all();
    let mut problems = Vec::new();
    for (file, up) in &upstream {
        let name = up.metadata.name.as_deref().unwrap_or_default();
        match ours
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        {
            None => problems.push(format!("{file}: no CRD named {name}")),
            Some(our) => compare_crd(name, up, our, &mut problems),
        }
    }
    let upstream_names: BTreeSet<_> = upstream
        .iter()
        .filter_map(|(_, c)| c.metadata.name.clone())
        .collect();
    for our in &ours {
        let name = our.metadata.name.clone().unwrap_or_default();
        if !upstream_names.contains(&name) {
            problems.push(format!("{name}: not an upstream CRD"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatch(es) with upstream:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

fn compare_crd(
    name: &str,
    up: &CustomResourceDefinition,
    our: &CustomResourceDefinition,
    problems: &mut Vec<String>,
) {
    let mut schema_problems = Vec::new();
    let mut check = |what: &str, up: Value, our: Value| {
        if up != our {
            problems.push(format!("{name}: {what}: upstream {up}, ours {our}"));
        }
    };
    check("group", json(&up.spec.group), json(&our.spec.group));
    check("scope", json(&up.spec.scope), json(&our.spec.scope));
    check("names", json(&up.spec.names), json(&our.spec.names));
    let versions = |crd: &CustomResourceDefinition| {
        json(
            &crd.spec
                .versions
                .iter()
                .map(|v| &v.name)
                .collect::<Vec<_>>(),
        )
    };
    check("versions", versions(up), versions(our));

    for up_v in &up.spec.versions {
        let Some(our_v) = our.spec.versions.iter().find(|v| v.name == up_v.name) else {
            continue;
        };
        let at = |what: &str| format!("{} {what}", up_v.name);
        check(&at("served"), json(&up_v.served), json(&our_v.served));
        check(&at("storage"), json(&up_v.storage), json(&our_v.storage));
        check(
            &at("deprecated"),
            json(&up_v.deprecated.unwrap_or(false)),
            json(&our_v.deprecated.unwrap_or(false)),
        );
        check(
            &at("deprecationWarning"),
            json(&up_v.deprecation_warning),
            json(&our_v.deprecation_warning),
        );
        check(
            &at("subresources"),
            json(&up_v.subresources),
            json(&our_v.subresources),
        );
        check(&at("printer columns"), columns(up_v), columns(our_v));
        match (schema_of(up_v), schema_of(our_v)) {
            (Some(up_s), Some(our_s)) => {
                compare_schema(
                    &format!("{name} {} schema", up_v.name),
                    &up_s,
                    &our_s,
                    &mut schema_problems,
                );
            }
            (up_s, our_s) => check(
                &at("schema present"),
                json(&up_s.is_some()),
                json(&our_s.is_some()),
            ),
        }
    }
    problems.extend(schema_problems);
}

/// Printer columns as (name, type, jsonPath, format, priority), in order.
fn columns(v: &CustomResourceDefinitionVersion) -> Value {
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (&c.name, &c.type_, &c.json_path, &c.format, c.priority))
        .collect();
    json(&cols)
}

fn schema_of(v: &CustomResourceDefinitionVersion) -> Option<Value> {
    v.schema.as_ref()?.open_api_v3_schema.as_ref().map(json)
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).expect("serialisable")
}

/// Subtrees whose schema is ours on purpose: PlatformAdmin `v1alpha1` (never served)
/// embeds whole Kubernetes DeploymentSpecs and ServiceSpecs, which upstream spells out
/// and we keep as objects stored as given (iot/v1alpha1.rs). Both must be objects.
const OPAQUE_SUBTREES: &[&str] = &[
    "platformadmins.iot.openyurt.io v1alpha1 schema.spec.additionalDeployments[items].spec",
    "platformadmins.iot.openyurt.io v1alpha1 schema.spec.additionalServices[items].spec",
];

/// Compares one schema node and everything under it. `path` names the node.
fn compare_schema(path: &str, up: &Value, our: &Value, problems: &mut Vec<String>) {
    if OPAQUE_SUBTREES.contains(&path) {
        if up["type"] != "object" || our["type"] != "object" {
            problems.push(format!("{path}: upstream and ours must both be objects"));
        }
        return;
    }
    let keywords: BTreeSet<&String> = [up, our]
        .iter()
        .filter_map(|s| s.as_object())
        .flat_map(|s| s.keys())
        .filter(|k| !STRUCTURE_KEYWORDS.contains(&k.as_str()))
        .collect();
    for kw in keywords {
        if up.get(kw) != our.get(kw) {
            problems.push(format!(
                "{path}: {kw}: upstream {:?}, ours {:?}",
                up.get(kw),
                our.get(kw)
            ));
        }
    }
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (up_req, our_req) = (required(up), required(our));
    for extra in our_req.difference(&up_req) {
        problems.push(format!("{path}: ours requires {extra}, upstream does not"));
    }
    for missing in up_req.difference(&our_req) {
        problems.push(format!(
            "{path}: upstream requires {missing}, ours does not"
        ));
    }

    let props = |s: &Value| {
        s.get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (up_props, our_props) = (props(up), props(our));
    for (key, up_child) in &up_props {
        match our_props.get(key) {
            Some(our_child) => {
                compare_schema(&format!("{path}.{key}"), up_child, our_child, problems)
            }
            None => problems.push(format!("{path}.{key}: missing in ours")),
        }
    }
    for key in our_props.keys().filter(|k| !up_props.contains_key(*k)) {
        problems.push(format!("{path}.{key}: not in upstream"));
    }
    for kw in ["items", "additionalProperties"] {
        match (up.get(kw), our.get(kw)) {
            (Some(u), Some(o)) if u.is_object() || o.is_object() => {
                compare_schema(&format!("{path}[{kw}]"), u, o, problems)
            }
            (u, o) if u != o => problems.push(format!("{path}: {kw}: upstream {u:?}, ours {o:?}")),
            _ => {}
        }
    }
}

/// The comparison itself must catch a difference, or the test above proves nothing.
#[test]
fn schema_comparison_reports_a_changed_type_and_an_extra_required_field() {
    let up = serde_json::json!({
        "type": "object",
        "properties": { "a": { "type": "string" }, "b": { "type": "integer" } },
    });
    let ours = serde_json::json!({
        "type": "object",
        "required": ["a"],
        "properties": { "a": { "type": "integer" } },
    });
    let mut problems = Vec::new();
    compare_schema("x", &up, &ours, &mut problems);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("ours requires a")));
    assert!(problems.iter().any(|p| p.contains("x.b: missing in ours")));
    assert!(problems.iter().any(|p| p.starts_with("x.a: type")));
}

#[test]
fn to_yaml_round_trips_every_crd() {
    let crds = yurt_api::crds::all();
    let yaml = yurt_api::crds::to_yaml(&crds);
    // Documents start with a line of their own (descriptions may hold "---" too).
    assert_eq!(yaml.lines().filter(|l| *l == "---").count(), crds.len());
    let parsed: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("each document is a CRD"))
        .collect();
    assert_eq!(parsed, crds);
}

#[test]
fn crd_name_constants_name_the_generated_crds() {
    use yurt_api::crds::*;
    let names: Vec<_> = all().into_iter().filter_map(|c| c.metadata.name).collect();
    assert_eq!(
        names,
        [
            NODEPOOL_CRD_NAME,
            NODEBUCKET_CRD_NAME,
            YURTAPPSET_CRD_NAME,
            YURTAPPDAEMON_CRD_NAME,
            YURTSTATICSET_CRD_NAME,
            GATEWAY_CRD_NAME,
            POOLSERVICE_CRD_NAME,
            DEVICE_CRD_NAME,
            DEVICESERVICE_CRD_NAME,
            DEVICEPROFILE_CRD_NAME,
            PLATFORMADMIN_CRD_NAME,
        ]
    );
    for converted in CONVERTED_CRD_NAMES {
        let crd = all()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(converted))
            .unwrap();
        assert!(
            crd.spec.versions.len() > 1,
            "{converted} has one version, nothing to convert"
        );
        assert!(
            crd.spec.conversion.is_none(),
            "{converted}: conversion is patched in at run time"
        );
    }
}

/// `kubectl apply` keeps the whole object in an annotation, which the API server caps at
/// 256 KiB: `yurt manager manifests | kubectl apply -f -` must stay installable.
#[test]
fn every_crd_fits_kubectl_applys_annotation() {
    for crd in yurt_api::crds::all() {
        let size = serde_json::to_vec(&crd).expect("serialisable").len();
        assert!(size < 200 * 1024, "{:?} is {size} bytes", crd.metadata.name);
    }
}
