//! PlatformAdmin (`iot.openyurt.io/v1beta1`) admission, OpenYurt's rules and paths:
//! - mutating: an empty `spec.version` becomes the latest EdgeX release we know, an empty
//!   `spec.platform` becomes `edgex`;
//! - validating: the platform is `edgex`, the version one of the EdgeX releases upstream's
//!   manifest lists, every pool in `spec.nodepools` exists, and no other PlatformAdmin
//!   already covers one of them (one platform per pool).
//!
//! Unlike upstream, every problem is reported at once, "another PlatformAdmin" means
//! another object (namespace and name), not merely another name, and an object being
//! deleted is never refused (its finalizer must come off even if its pools are gone).

use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use yurt_api::apps::v1beta2::NodePool;
use yurt_api::iot::v1beta1::PlatformAdmin;

use super::WebhookState;

/// Path of the mutating PlatformAdmin webhook (OpenYurt's).
pub const MUTATE_PATH: &str = "/mutate-iot-openyurt-io-v1beta1-platformadmin";
/// Path of the validating PlatformAdmin webhook (OpenYurt's).
pub const VALIDATE_PATH: &str = "/validate-iot-openyurt-io-v1beta1-platformadmin";
/// The only platform.
pub const PLATFORM_EDGEX: &str = "edgex";
/// The EdgeX releases upstream's platform manifest lists.
pub const EDGEX_VERSIONS: [&str; 7] = [
    "napa",
    "kamakura",
    "jakarta",
    "levski",
    "minnesota",
    "ireland",
    "hanoi",
];
/// The release an empty `spec.version` gets (upstream's `latestVersion`).
pub const LATEST_EDGEX_VERSION: &str = "napa";

fn object(o: Option<&DynamicObject>) -> Option<Value> {
    o.and_then(|o| serde_json::to_value(o).ok())
}

fn empty(v: Option<&Value>) -> bool {
    v.is_none_or(|v| v.is_null() || v.as_str() == Some(""))
}

/// The JSON patch that fills in an empty version and platform (`None`: nothing to fill).
///
/// # Errors
/// Never for a JSON object; the patch type rejects malformed operations.
pub fn mutation(admin: &Value) -> Result<Option<json_patch::Patch>, serde_json::Error> {
    let spec = admin.get("spec");
    let mut ops = Vec::new();
    if !spec.is_some_and(Value::is_object) {
        ops.push(json!({"op": "add", "path": "/spec", "value": {}}));
    }
    if empty(spec.and_then(|s| s.get("version"))) {
        ops.push(json!({"op": "add", "path": "/spec/version", "value": LATEST_EDGEX_VERSION}));
    }
    if empty(spec.and_then(|s| s.get("platform"))) {
        ops.push(json!({"op": "add", "path": "/spec/platform", "value": PLATFORM_EDGEX}));
    }
    if ops.is_empty() {
        return Ok(None);
    }
    serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).map(Some)
}

/// The mutating webhook.
pub async fn mutate(
    _state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(admin) = object(req.object.as_ref()) else {
        return resp;
    };
    match mutation(&admin) {
        Ok(Some(p)) => resp.clone().with_patch(p).unwrap_or(resp),
        Ok(None) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "PlatformAdmin defaults not applied");
            resp
        }
    }
}

/// Problems with `admin`, given the pools that exist and every PlatformAdmin stored
/// (itself included, which is skipped).
pub fn problems(
    admin: &PlatformAdmin,
    pools: &Store<NodePool>,
    stored: &[PlatformAdmin],
) -> Vec<String> {
    let mut out = Vec::new();
    let platform = admin.spec.platform.as_deref().unwrap_or("");
    if platform != PLATFORM_EDGEX {
        out.push(format!(
            "spec.platform: Invalid value: {platform:?}: must be {PLATFORM_EDGEX}"
        ));
    }
    let version = admin.spec.version.as_deref().unwrap_or("");
    if !EDGEX_VERSIONS.contains(&version) {
        out.push(format!(
            "spec.version: Invalid value: {version:?}: must be one of {}",
            EDGEX_VERSIONS.join(", ")
        ));
    }
    let wanted = admin.spec.nodepools.clone().unwrap_or_default();
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|p| pools.get(&ObjectRef::new(p)).is_none())
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "spec.nodepools: Invalid value: {missing:?}: no such NodePool"
        ));
    }
    let me = (
        admin.metadata.namespace.as_deref(),
        admin.metadata.name.as_deref(),
    );
    for other in stored {
        let them = (
            other.metadata.namespace.as_deref(),
            other.metadata.name.as_deref(),
        );
        if them == me {
            continue;
        }
        let theirs = other.spec.nodepools.as_deref().unwrap_or_default();
        for pool in wanted.iter().filter(|p| theirs.contains(p)) {
            out.push(format!(
                "spec.nodepools: Invalid value: {pool:?}: already used by PlatformAdmin {}/{}",
                them.0.unwrap_or_default(),
                them.1.unwrap_or_default()
            ));
        }
    }
    out
}

/// The validating webhook.
pub async fn validate(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    // Being deleted (a finalizer removed): never refused, whatever went away first.
    if req
        .object
        .as_ref()
        .is_some_and(|o| o.metadata.deletion_timestamp.is_some())
    {
        return resp;
    }
    let admin: PlatformAdmin = match object(req.object.as_ref()).map(serde_json::from_value) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            return resp.deny(format!("PlatformAdmin {:?} is invalid: {e}", req.name));
        }
        None => return resp,
    };
    if tokio::time::timeout(
        std::time::Duration::from_secs(3),
        state.pools.wait_until_ready(),
    )
    .await
    .map_or(true, |r| r.is_err())
    {
        return resp.deny("the manager has not read the NodePools yet; retry");
    }
    // Every namespace's: a pool has one platform, whichever namespace declares it.
    let stored = match Api::<PlatformAdmin>::all(state.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return resp.deny(format!(
                "PlatformAdmin {:?}: cannot list PlatformAdmins to check its pools are free: {e}",
                req.name
            ));
        }
    };
    let problems = problems(&admin, &state.pools, &stored);
    if problems.is_empty() {
        resp
    } else {
        resp.deny(format!(
            "PlatformAdmin {:?} is invalid: {}",
            req.name,
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(ns: &str, name: &str, spec: Value) -> PlatformAdmin {
        serde_json::from_value(json!({
            "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .expect("a PlatformAdmin")
    }

    fn pools(names: &[&str]) -> Store<NodePool> {
        crate::webhook::filled(
            names
                .iter()
                .map(|n| NodePool::new(n, Default::default()))
                .collect(),
        )
    }

    fn valid(pools: &[&str]) -> Value {
        json!({"platform": "edgex", "version": "minnesota", "nodepools": pools})
    }

    #[test]
    fn an_empty_version_and_platform_get_upstreams_defaults() {
        let mut obj = json!({"metadata": {"name": "p"}, "spec": {"nodepools": ["hz"]}});
        let patch = mutation(&obj).unwrap().expect("a patch");
        json_patch::patch(&mut obj, &patch).unwrap();
        assert_eq!(obj["spec"]["version"], LATEST_EDGEX_VERSION);
        assert_eq!(obj["spec"]["platform"], PLATFORM_EDGEX);
        assert_eq!(obj["spec"]["nodepools"], json!(["hz"]));
        // Given ones are kept; nothing to do.
        assert!(mutation(&obj).unwrap().is_none());
        let mut bare = json!({"metadata": {"name": "p"}});
        let patch = mutation(&bare).unwrap().unwrap();
        json_patch::patch(&mut bare, &patch).unwrap();
        assert_eq!(bare["spec"]["platform"], PLATFORM_EDGEX);
        let mut blank = json!({"spec": {"version": "", "platform": "edgex"}});
        let patch = mutation(&blank).unwrap().unwrap();
        json_patch::patch(&mut blank, &patch).unwrap();
        assert_eq!(blank["spec"]["version"], LATEST_EDGEX_VERSION);
    }

    #[test]
    fn a_valid_platform_passes_and_every_problem_is_named() {
        let known = pools(&["hz", "bj"]);
        assert!(problems(&admin("default", "p", valid(&["hz", "bj"])), &known, &[]).is_empty());
        let said = problems(
            &admin(
                "default",
                "p",
                json!({"platform": "kubeedge", "version": "v3", "nodepools": ["hz", "sh"]}),
            ),
            &known,
            &[],
        );
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].starts_with("spec.platform: Invalid value: \"kubeedge\""),
            "{said:?}"
        );
        assert!(
            said[1].contains("spec.version") && said[1].contains("napa"),
            "{said:?}"
        );
        assert!(
            said[2].contains("[\"sh\"]") && said[2].contains("no such NodePool"),
            "{said:?}"
        );
    }

    #[test]
    fn a_pool_has_one_platform_whatever_the_namespace() {
        let known = pools(&["hz", "bj"]);
        let stored = vec![
            admin("default", "p", valid(&["hz"])),
            admin("iot", "q", valid(&["bj"])),
        ];
        // Its own stored version (an update) is not another platform.
        assert!(problems(&admin("default", "p", valid(&["hz"])), &known, &stored).is_empty());
        // Another namespace's, even under the same name.
        let said = problems(&admin("other", "p", valid(&["hz", "bj"])), &known, &stored);
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].contains("\"hz\": already used by PlatformAdmin default/p"),
            "{said:?}"
        );
        assert!(
            said[1].contains("\"bj\": already used by PlatformAdmin iot/q"),
            "{said:?}"
        );
    }

    #[tokio::test]
    async fn without_the_list_of_platformadmins_the_request_is_refused() {
        let (state, calls) = crate::webhook::test_state(Vec::new(), Vec::new());
        let object: DynamicObject = serde_json::from_value(
            serde_json::to_value(admin("default", "p", valid(&[]))).unwrap(),
        )
        .unwrap();
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "u1", "operation": "CREATE", "name": "p", "namespace": "default",
                    "kind": {"group": "iot.openyurt.io", "version": "v1beta1", "kind": "PlatformAdmin"},
                    "resource": {"group": "iot.openyurt.io", "version": "v1beta1", "resource": "platformadmins"},
                    "userInfo": {"username": "alice"},
                    "object": object,
                },
            }))
            .unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let resp = validate(&state, &req).await;
        assert!(!resp.allowed);
        assert!(
            resp.result.message.contains("cannot list PlatformAdmins"),
            "{}",
            resp.result.message
        );
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }
}
