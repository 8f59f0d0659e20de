//! YurtAppSet validation (v1beta1): exactly one workload template, whose kind never
//! changes, and tweaks that name their pools.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use super::WebhookState;

/// Path of the validating YurtAppSet webhook (OpenYurt's).
pub const VALIDATE_PATH: &str = "/validate-apps-openyurt-io-v1beta1-yurtappset";

fn template_kind(obj: &Value) -> Vec<&'static str> {
    let t = obj.pointer("/spec/workload/workloadTemplate");
    let mut kinds = Vec::new();
    if t.and_then(|t| t.get("deploymentTemplate"))
        .is_some_and(|v| !v.is_null())
    {
        kinds.push("Deployment");
    }
    if t.and_then(|t| t.get("statefulSetTemplate"))
        .is_some_and(|v| !v.is_null())
    {
        kinds.push("StatefulSet");
    }
    kinds
}

/// Problems with a YurtAppSet (`old` on update).
pub fn problems(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let kinds = template_kind(obj);
    if kinds.len() != 1 {
        out.push(format!(
            "spec.workload.workloadTemplate: Invalid value: exactly one of deploymentTemplate and statefulSetTemplate must be set (found {})",
            kinds.len()
        ));
    }
    if let Some(old) = old {
        let before = template_kind(old);
        if before.len() == 1 && kinds.len() == 1 && before != kinds {
            out.push(format!(
                "spec.workload.workloadTemplate: Forbidden: the workload kind is immutable ({} -> {})",
                before[0], kinds[0]
            ));
        }
    }
    for (i, tweak) in obj
        .pointer("/spec/workload/workloadTweaks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let named = tweak
            .get("pools")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
        let selected = tweak.get("nodepoolSelector").is_some_and(|s| !s.is_null());
        if !named && !selected {
            out.push(format!(
                "spec.workload.workloadTweaks[{i}]: Required value: pools or nodepoolSelector must say which pools the tweak applies to"
            ));
        }
    }
    out
}

/// The validating webhook.
pub async fn validate(
    _state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = req
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
    else {
        return resp;
    };
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok());
    let problems = problems(&obj, old.as_ref());
    if problems.is_empty() {
        resp
    } else {
        resp.deny(format!(
            "YurtAppSet {:?} is invalid: {}",
            req.name,
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_template_of_a_fixed_kind_and_targeted_tweaks() {
        let d = json!({"spec": {"workload": {"workloadTemplate": {"deploymentTemplate": {"spec": {}}}}}});
        let s = json!({"spec": {"workload": {"workloadTemplate": {"statefulSetTemplate": {"spec": {}}}}}});
        let both = json!({"spec": {"workload": {"workloadTemplate": {"deploymentTemplate": {}, "statefulSetTemplate": {}}}}});
        assert!(problems(&d, None).is_empty());
        assert_eq!(problems(&both, None).len(), 1);
        assert_eq!(
            problems(
                &json!({"spec": {"workload": {"workloadTemplate": {}}}}),
                None
            )
            .len(),
            1
        );
        assert!(problems(&s, Some(&d))[0].contains("immutable"));
        let untargeted = json!({"spec": {"workload": {"workloadTemplate": {"deploymentTemplate": {}}, "workloadTweaks": [{"tweaks": {"replicas": 2}}]}}});
        assert!(problems(&untargeted, None)[0].contains("workloadTweaks[0]"));
    }
}
