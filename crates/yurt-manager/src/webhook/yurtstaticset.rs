//! YurtStaticSet validation (v1alpha1): a plain manifest file name, a template, a known
//! upgrade strategy and a usable `maxUnavailable`; the manifest name never changes (the
//! nodes' files are named after it).

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use yurt_api::apps::v1alpha1::YurtStaticSet;

use super::WebhookState;
use crate::controllers::yurtstaticset;

/// Path of the validating YurtStaticSet webhook (OpenYurt's).
pub const VALIDATE_PATH: &str = "/validate-apps-openyurt-io-v1alpha1-yurtstaticset";

/// Problems with a YurtStaticSet (`old` on update).
pub fn problems(obj: &YurtStaticSet, old: Option<&YurtStaticSet>) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = yurtstaticset::validate(obj) {
        out.push(e);
    }
    if let Some(old) = old
        && old.spec.static_pod_manifest.is_some()
        && old.spec.static_pod_manifest != obj.spec.static_pod_manifest
    {
        out.push(format!(
            "spec.staticPodManifest: Forbidden: the manifest name is immutable ({:?})",
            old.spec.static_pod_manifest.as_deref().unwrap_or("")
        ));
    }
    out
}

fn typed(o: Option<&DynamicObject>) -> Option<Result<YurtStaticSet, serde_json::Error>> {
    o.map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
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
    let obj = match typed(req.object.as_ref()) {
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            return resp.deny(format!("YurtStaticSet {:?} is invalid: {e}", req.name));
        }
        None => return resp,
    };
    let old = typed(req.old_object.as_ref()).and_then(Result::ok);
    let problems = problems(&obj, old.as_ref());
    if problems.is_empty() {
        resp
    } else {
        resp.deny(format!(
            "YurtStaticSet {:?} is invalid: {}",
            req.name,
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yss(manifest: &str) -> YurtStaticSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "YurtStaticSet",
            "metadata": {"name": "agent", "namespace": "kube-system"},
            "spec": {"staticPodManifest": manifest, "template": {"spec": {"containers": []}}},
        }))
        .expect("yss")
    }

    #[test]
    fn the_manifest_name_is_plain_and_fixed() {
        assert!(problems(&yss("agent"), None).is_empty());
        assert_eq!(problems(&yss("a/b"), None).len(), 1);
        let p = problems(&yss("other"), Some(&yss("agent")));
        assert!(p[0].contains("immutable"), "{p:?}");
    }
}
