//! NodePool webhooks (v1beta2, the storage version; reference/openyurt.md §3.1, §5.3).
//! They work on the object's JSON so that fields this manager does not know yet pass
//! through untouched.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};
use yurt_api::labels::{NODE_POOL, NODEPOOL_TYPE};

use super::WebhookState;

/// Path of the mutating NodePool webhook (OpenYurt's).
pub const MUTATE_PATH: &str = "/mutate-apps-openyurt-io-v1beta2-nodepool";
/// Path of the validating NodePool webhook (OpenYurt's).
pub const VALIDATE_PATH: &str = "/validate-apps-openyurt-io-v1beta2-nodepool";

/// The resources the hubs of a pool share by default (`poolScopeMetadata`).
pub fn default_pool_scope_metadata() -> Value {
    json!([
        {"group": "", "version": "v1", "resource": "services"},
        {"group": "discovery.k8s.io", "version": "v1", "resource": "endpointslices"},
    ])
}

fn object(obj: Option<&DynamicObject>) -> Option<Value> {
    serde_json::to_value(obj?).ok()
}

/// `spec` with upstream's defaults filled in.
pub fn defaulted_spec(spec: &Value) -> Value {
    let mut spec = if spec.is_object() {
        spec.clone()
    } else {
        json!({})
    };
    let fill = |spec: &mut Value, key: &str, value: Value| {
        if spec.get(key).is_none_or(Value::is_null) {
            spec[key] = value;
        }
    };
    fill(&mut spec, "type", json!("Edge"));
    fill(&mut spec, "leaderElectionStrategy", json!("random"));
    fill(&mut spec, "leaderReplicas", json!(1));
    if spec
        .get("poolScopeMetadata")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec["poolScopeMetadata"] = default_pool_scope_metadata();
    }
    spec
}

/// The mutating webhook: defaults and the `nodepool.openyurt.io/type` label.
pub async fn mutate(
    _state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(pool) = object(req.object.as_ref()) else {
        return resp;
    };
    match mutation(&pool) {
        Ok(p) => resp.clone().with_patch(p).unwrap_or(resp),
        Err(e) => {
            tracing::warn!(error = %e, "NodePool defaults not applied");
            resp
        }
    }
}

/// The JSON patch that fills in a NodePool's defaults and its type label.
///
/// # Errors
/// Never for a JSON object; the patch type rejects malformed operations.
pub fn mutation(pool: &Value) -> Result<json_patch::Patch, serde_json::Error> {
    let spec = defaulted_spec(pool.get("spec").unwrap_or(&Value::Null));
    let type_label = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("Edge")
        .to_lowercase();
    let mut ops = vec![json!({"op": "add", "path": "/spec", "value": spec})];
    match pool.pointer("/metadata/labels") {
        Some(Value::Object(_)) => ops.push(json!({
            "op": "add",
            "path": format!("/metadata/labels/{}", NODEPOOL_TYPE.replace('~', "~0").replace('/', "~1")),
            "value": type_label,
        })),
        _ => ops.push(json!({
            "op": "add",
            "path": "/metadata/labels",
            "value": {NODEPOOL_TYPE: type_label},
        })),
    }
    serde_json::from_value::<json_patch::Patch>(Value::Array(ops))
}
/// Problems with a NodePool spec on create or update (`old` on update).
pub fn problems(spec: &Value, old: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let flag = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let pool_type = text(spec, "type").unwrap_or_else(|| "Edge".to_owned());
    if pool_type != "Edge" && pool_type != "Cloud" {
        out.push(format!(
            "spec.type: Unsupported value: {pool_type:?}: supported values: \"Edge\", \"Cloud\""
        ));
    }
    if pool_type == "Cloud" && flag(spec, "hostNetwork") {
        out.push(
            "spec.hostNetwork: Forbidden: only Edge pools can use the host network".to_owned(),
        );
    }
    if let Some(strategy) = text(spec, "leaderElectionStrategy")
        && strategy != "random"
        && strategy != "mark"
    {
        out.push(format!(
            "spec.leaderElectionStrategy: Unsupported value: {strategy:?}: supported values: \"random\", \"mark\""
        ));
    }
    if let Some(n) = spec.get("leaderReplicas").and_then(Value::as_i64)
        && n < 0
    {
        out.push(format!(
            "spec.leaderReplicas: Invalid value: {n}: must not be negative"
        ));
    }
    if let Some(old) = old {
        for (key, default) in [
            ("type", json!("Edge")),
            ("hostNetwork", json!(false)),
            ("interConnectivity", json!(false)),
        ] {
            let was = old.get(key).cloned().unwrap_or(default.clone());
            let now = spec.get(key).cloned().unwrap_or(default);
            if was != now {
                out.push(format!(
                    "spec.{key}: Forbidden: the field is immutable (was {was}, now {now})"
                ));
            }
        }
    }
    out
}

/// The validating webhook: spec rules, immutable fields, no deletion with members.
pub async fn validate(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    match req.operation {
        Operation::Delete => {
            let members: Vec<String> = state
                .nodes
                .state()
                .iter()
                .filter(|n| {
                    n.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(NODE_POOL))
                        .is_some_and(|p| *p == req.name)
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            if members.is_empty() {
                resp
            } else {
                resp.deny(format!(
                    "nodepool {} still has {} node(s) ({}); remove the {NODE_POOL} label from them first",
                    req.name,
                    members.len(),
                    members.join(", ")
                ))
            }
        }
        Operation::Create | Operation::Update => {
            let Some(pool) = object(req.object.as_ref()) else {
                return resp;
            };
            let spec = pool.get("spec").cloned().unwrap_or(json!({}));
            let old_spec = object(req.old_object.as_ref()).and_then(|o| o.get("spec").cloned());
            let problems = problems(
                &spec,
                if req.operation == Operation::Update {
                    old_spec.as_ref().or(Some(&Value::Null))
                } else {
                    None
                },
            );
            if problems.is_empty() {
                resp
            } else {
                resp.deny(format!(
                    "NodePool {:?} is invalid: {}",
                    req.name,
                    problems.join("; ")
                ))
            }
        }
        _ => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_applies_defaults_and_the_type_label() {
        let mut pool = json!({
            "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
            "metadata": {"name": "p"},
            "spec": {"type": "Edge"},
        });
        let patch = mutation(&pool).expect("patch");
        let wire: Value =
            serde_json::from_slice(&serde_json::to_vec(&patch).expect("ser")).expect("de");
        assert_eq!(
            wire[0]["value"]["poolScopeMetadata"][0]["group"], "",
            "{wire}"
        );
        json_patch::patch(&mut pool, &patch).expect("applies");
        assert_eq!(pool["metadata"]["labels"][NODEPOOL_TYPE], "edge");
        assert_eq!(pool["spec"]["poolScopeMetadata"][0]["group"], "");
        assert_eq!(pool["spec"]["leaderReplicas"], 1);
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let spec = defaulted_spec(&json!({"type": "Cloud", "leaderReplicas": 3}));
        assert_eq!(spec["type"], "Cloud");
        assert_eq!(spec["leaderReplicas"], 3);
        assert_eq!(spec["leaderElectionStrategy"], "random");
        assert_eq!(spec["poolScopeMetadata"], default_pool_scope_metadata());
        assert_eq!(defaulted_spec(&Value::Null)["type"], "Edge");
    }

    #[test]
    fn invalid_specs_and_immutable_changes_are_named() {
        assert!(problems(&json!({"type": "Edge"}), None).is_empty());
        assert_eq!(problems(&json!({"type": "Fog"}), None).len(), 1);
        assert_eq!(
            problems(&json!({"type": "Cloud", "hostNetwork": true}), None).len(),
            1
        );
        assert_eq!(
            problems(&json!({"leaderElectionStrategy": "vote"}), None).len(),
            1
        );
        let old = json!({"type": "Edge", "hostNetwork": false});
        let p = problems(&json!({"type": "Cloud"}), Some(&old));
        assert!(
            p.iter()
                .any(|m| m.contains("spec.type") && m.contains("immutable")),
            "{p:?}"
        );
        let p = problems(&json!({"type": "Edge", "hostNetwork": true}), Some(&old));
        assert!(p.iter().any(|m| m.contains("hostNetwork")), "{p:?}");
        assert!(problems(&json!({"type": "Edge", "labels": {"a": "b"}}), Some(&old)).is_empty());
    }
}
