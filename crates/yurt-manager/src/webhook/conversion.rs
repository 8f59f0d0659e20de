//! NodePool CRD conversion between v1alpha1, v1beta1 and v1beta2 (the storage version).
//!
//! Converting down drops fields the older version lacks; to keep a write through an
//! older client from erasing them, they ride along in an annotation and are restored
//! on the way up (the round-trip rule Kubernetes uses for its own conversions). The
//! conversion works on JSON so fields pass through untouched.

use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use kube::core::response::Status;
use serde_json::{Map, Value, json};

/// Path of the conversion webhook (OpenYurt's).
pub const PATH: &str = "/convert";

/// Annotation carrying fields a lower version cannot hold.
pub const STASH_ANNOTATION: &str = "nodepool.openyurt.io/conversion-data";

const GROUP: &str = "apps.openyurt.io";

/// Spec fields each version has.
fn spec_fields(version: &str) -> Option<&'static [&'static str]> {
    match version {
        "v1alpha1" => Some(&["type", "selector", "labels", "annotations", "taints"]),
        "v1beta1" => Some(&["type", "hostNetwork", "labels", "annotations", "taints"]),
        "v1beta2" => Some(&[
            "type",
            "hostNetwork",
            "labels",
            "annotations",
            "taints",
            "interConnectivity",
            "enableLeaderElection",
            "leaderElectionStrategy",
            "leaderNodeLabelSelector",
            "leaderReplicas",
            "poolScopeMetadata",
        ]),
        _ => None,
    }
}

/// Status fields each version has.
fn status_fields(version: &str) -> &'static [&'static str] {
    match version {
        "v1beta2" => &[
            "readyNodeNum",
            "unreadyNodeNum",
            "nodes",
            "leaderEndpoints",
            "leaderNum",
            "leaderLastElectedTime",
            "conditions",
        ],
        _ => &["readyNodeNum", "unreadyNodeNum", "nodes"],
    }
}

fn version_of(api_version: &str) -> Result<&str, String> {
    match api_version.split_once('/') {
        Some((g, v)) if g == GROUP && spec_fields(v).is_some() => Ok(v),
        _ => Err(format!("cannot convert NodePool from {api_version:?}")),
    }
}

/// Converts one NodePool to `desired` (`apps.openyurt.io/<version>`).
///
/// # Errors
/// Unknown versions or an object that is not a NodePool.
pub fn convert(mut obj: Value, desired: &str) -> Result<Value, String> {
    let from = version_of(obj.get("apiVersion").and_then(Value::as_str).unwrap_or(""))?.to_owned();
    let to = version_of(desired)?.to_owned();
    if obj.get("kind").and_then(Value::as_str) != Some("NodePool") {
        return Err("only NodePool objects can be converted".to_owned());
    }
    if from == to {
        return Ok(obj);
    }
    let mut spec = obj
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut status = obj.get("status").and_then(Value::as_object).cloned();
    let annotations = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut);
    // Up: restore what an earlier conversion set aside (only fields the source lacks,
    // so an edit made through the source version wins).
    let mut stash: Map<String, Value> = Map::new();
    if let Some(a) = annotations
        && let Some(Value::String(text)) = a.remove(STASH_ANNOTATION)
        && let Ok(Value::Object(saved)) = serde_json::from_str::<Value>(&text)
    {
        stash = saved;
    }
    let from_fields = spec_fields(&from).unwrap_or(&[]);
    for (k, v) in &stash {
        if !from_fields.contains(&k.as_str()) && !spec.contains_key(k) {
            spec.insert(k.clone(), v.clone());
        }
    }
    // Down: set aside what the target lacks.
    let to_fields = spec_fields(&to).unwrap_or(&[]);
    let mut dropped = Map::new();
    spec.retain(|k, v| {
        if to_fields.contains(&k.as_str()) {
            true
        } else {
            dropped.insert(k.clone(), v.clone());
            false
        }
    });
    if let Some(s) = status.as_mut() {
        let keep = status_fields(&to);
        s.retain(|k, _| keep.contains(&k.as_str()));
    }
    obj["apiVersion"] = json!(format!("{GROUP}/{to}"));
    obj["spec"] = Value::Object(spec);
    if let Some(s) = status {
        obj["status"] = Value::Object(s);
    }
    if !dropped.is_empty() {
        let text = Value::Object(dropped).to_string();
        match obj.pointer_mut("/metadata/annotations") {
            Some(Value::Object(a)) => {
                a.insert(STASH_ANNOTATION.to_owned(), Value::String(text));
            }
            _ => {
                obj["metadata"]["annotations"] = json!({STASH_ANNOTATION: text});
            }
        }
    } else {
        let empty =
            matches!(obj.pointer("/metadata/annotations"), Some(Value::Object(a)) if a.is_empty());
        if empty && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("annotations");
        }
    }
    Ok(obj)
}

/// Answers one ConversionReview.
pub fn review(review: ConversionReview) -> ConversionReview {
    let request = match ConversionRequest::from_review(review) {
        Ok(r) => r,
        Err(_) => {
            return ConversionResponse::invalid(Status::failure(
                "the ConversionReview has no request",
                "BadRequest",
            ))
            .into_review();
        }
    };
    let desired = request.desired_api_version.clone();
    let objects = request.objects.clone();
    let response = ConversionResponse::for_request(request);
    let mut converted = Vec::with_capacity(objects.len());
    for obj in objects {
        match convert(obj, &desired) {
            Ok(o) => converted.push(o),
            Err(e) => {
                tracing::warn!(error = %e, "NodePool conversion refused");
                return response
                    .failure(Status::failure(&e, "BadRequest"))
                    .into_review();
            }
        }
    }
    response.success(converted).into_review()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1beta2() -> Value {
        json!({
            "apiVersion": "apps.openyurt.io/v1beta2",
            "kind": "NodePool",
            "metadata": {"name": "hangzhou", "labels": {"x": "y"}},
            "spec": {
                "type": "Edge",
                "hostNetwork": false,
                "labels": {"site": "hz"},
                "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}],
                "enableLeaderElection": true,
                "leaderReplicas": 2,
                "poolScopeMetadata": [{"group": "", "version": "v1", "resource": "services"}],
            },
            "status": {"readyNodeNum": 2, "unreadyNodeNum": 0, "nodes": ["a", "b"], "leaderNum": 2},
        })
    }

    #[test]
    fn down_and_up_again_loses_nothing() {
        let original = v1beta2();
        let down = convert(original.clone(), "apps.openyurt.io/v1beta1").expect("down");
        assert_eq!(down["apiVersion"], "apps.openyurt.io/v1beta1");
        assert!(down["spec"].get("leaderReplicas").is_none());
        assert!(down["status"].get("leaderNum").is_none());
        assert_eq!(down["spec"]["labels"]["site"], "hz");
        let up = convert(down, "apps.openyurt.io/v1beta2").expect("up");
        assert_eq!(up["spec"], original["spec"]);
        assert!(
            up.pointer(&format!(
                "/metadata/annotations/{}",
                STASH_ANNOTATION.replace('/', "~1")
            ))
            .is_none()
        );
    }

    #[test]
    fn an_edit_through_the_old_version_wins_over_the_stash() {
        let mut down = convert(v1beta2(), "apps.openyurt.io/v1beta1").expect("down");
        down["spec"]["labels"]["site"] = json!("sh");
        let up = convert(down, "apps.openyurt.io/v1beta2").expect("up");
        assert_eq!(up["spec"]["labels"]["site"], "sh");
        assert_eq!(up["spec"]["leaderReplicas"], 2);
    }

    #[test]
    fn v1alpha1_keeps_its_selector_across_a_round_trip() {
        let alpha = json!({
            "apiVersion": "apps.openyurt.io/v1alpha1",
            "kind": "NodePool",
            "metadata": {"name": "p"},
            "spec": {"type": "Cloud", "selector": {"matchLabels": {"a": "b"}}},
        });
        let up = convert(alpha.clone(), "apps.openyurt.io/v1beta2").expect("up");
        assert!(up["spec"].get("selector").is_none());
        let down = convert(up, "apps.openyurt.io/v1alpha1").expect("down");
        assert_eq!(down["spec"], alpha["spec"]);
    }

    #[test]
    fn foreign_objects_and_versions_are_refused() {
        assert!(convert(v1beta2(), "apps.openyurt.io/v9").is_err());
        let mut other = v1beta2();
        other["kind"] = json!("Node");
        assert!(convert(other, "apps.openyurt.io/v1beta1").is_err());
        let mut alien = v1beta2();
        alien["apiVersion"] = json!("example.com/v1");
        assert!(convert(alien, "apps.openyurt.io/v1beta1").is_err());
    }
}
