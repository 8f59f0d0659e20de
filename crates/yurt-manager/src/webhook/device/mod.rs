//! Device, DeviceService and DeviceProfile (`iot.openyurt.io/v1alpha1`) admission.
//! Upstream has none: a bad profile or device is accepted and fails later at the edge,
//! quietly. Here:
//! - mutating: the object's `spec.nodePool` is mirrored into its
//!   `apps.openyurt.io/nodepool` label, so a pool's agent can list and watch only its
//!   pool's objects through its hub (1.20 has no field selectors on custom resources);
//! - validating a profile: unique resource names, EdgeX value types and read-write modes,
//!   numeric bounds and transforms that parse (as EdgeX's client converts them:
//!   minimum, maximum, scale, offset and base as floats, mask as an unsigned and shift as
//!   a signed integer), minimum ≤ maximum, Modbus attributes that make sense, commands
//!   naming the profile's own resources;
//! - validating a device: its pool exists, its profile and service exist in its
//!   namespace (by name, or by the platform's name yurt-iot-dock labels synced objects
//!   with), and each desired value names a writable resource of the profile, parses as
//!   its type and lies within its bounds;
//! - validating a service: a base address, and its pool exists.
//!
//! Values stay strings, as upstream's are: users quote numbers, and values synced from
//! the edge come back as `"1.000000"`, which parse the same.

mod checks;
#[cfg(test)]
mod tests;

use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceService};

pub use checks::{device_problems, profile_problems, resolve};

use super::WebhookState;

/// Path of the mutating webhook for the three kinds.
pub const MUTATE_PATH: &str = "/mutate-iot-openyurt-io-v1alpha1-devices";
/// Path of the validating Device webhook.
pub const VALIDATE_DEVICE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-device";
/// Path of the validating DeviceProfile webhook.
pub const VALIDATE_PROFILE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-deviceprofile";
/// Path of the validating DeviceService webhook.
pub const VALIDATE_SERVICE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-deviceservice";

/// The label yurt-iot-dock gives an object it synced from the platform: the platform's
/// own name, which devices use for their profile and service.
pub const EDGEX_NAME_LABEL: &str = "yurt-iot-dock/edgex-object.name";

fn object(o: Option<&DynamicObject>) -> Option<Value> {
    o.and_then(|o| serde_json::to_value(o).ok())
}

/// The JSON patch that mirrors `spec.nodePool` into the pool label (`None`: it is there
/// already, or the object names no pool). A label someone set by hand to another pool is
/// overwritten: the spec decides which agent drives the object.
///
/// # Errors
/// Never for a JSON object; the patch type rejects malformed operations.
pub fn mutation(obj: &Value) -> Result<Option<json_patch::Patch>, serde_json::Error> {
    let label = yurt_api::labels::NODE_POOL;
    let Some(pool) = obj
        .pointer("/spec/nodePool")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let op = match obj.pointer("/metadata/labels") {
        Some(Value::Object(labels)) => {
            if labels.get(label).and_then(Value::as_str) == Some(pool) {
                return Ok(None);
            }
            json!({"op": "add", "path": format!("/metadata/labels/{}", label.replace('~', "~0").replace('/', "~1")), "value": pool})
        }
        _ => json!({"op": "add", "path": "/metadata/labels", "value": {label: pool}}),
    };
    serde_json::from_value::<json_patch::Patch>(Value::Array(vec![op])).map(Some)
}

/// The mutating webhook (all three kinds).
pub async fn mutate(
    _state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = object(req.object.as_ref()) else {
        return resp;
    };
    match mutation(&obj) {
        Ok(Some(p)) => resp.clone().with_patch(p).unwrap_or(resp),
        Ok(None) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "pool label not mirrored");
            resp
        }
    }
}

fn decoded<K: serde::de::DeserializeOwned>(
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
) -> Option<Result<K, String>> {
    let value = object(req.object.as_ref())?;
    Some(
        serde_json::from_value(value).map_err(|e| format!("{kind} {:?} is invalid: {e}", req.name)),
    )
}

fn answer(
    resp: AdmissionResponse,
    kind: &str,
    name: &str,
    problems: &[String],
) -> AdmissionResponse {
    if problems.is_empty() {
        resp
    } else {
        resp.deny(format!(
            "{kind} {name:?} is invalid: {}",
            problems.join("; ")
        ))
    }
}

fn pool_problem(state: &WebhookState, pool: Option<&str>) -> Option<String> {
    let pool = pool.filter(|p| !p.is_empty())?;
    state
        .pools
        .get(&ObjectRef::new(pool))
        .is_none()
        .then(|| format!("spec.nodePool: Invalid value: {pool:?}: no such NodePool"))
}

/// The validating DeviceProfile webhook.
pub async fn validate_profile(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let profile: DeviceProfile = match decoded(req, "DeviceProfile") {
        Some(Ok(p)) => p,
        Some(Err(e)) => return resp.deny(e),
        None => return resp,
    };
    let mut problems = profile_problems(&profile);
    problems.extend(pool_problem(state, profile.spec.node_pool.as_deref()));
    answer(resp, "DeviceProfile", &req.name, &problems)
}

/// The validating DeviceService webhook.
pub async fn validate_service(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let service: DeviceService = match decoded(req, "DeviceService") {
        Some(Ok(s)) => s,
        Some(Err(e)) => return resp.deny(e),
        None => return resp,
    };
    let mut problems = Vec::new();
    if service.spec.base_address.trim().is_empty() {
        problems.push("spec.baseAddress: Required value".to_owned());
    }
    problems.extend(pool_problem(state, service.spec.node_pool.as_deref()));
    answer(resp, "DeviceService", &req.name, &problems)
}

/// The validating Device webhook: reads its namespace's profiles and services.
pub async fn validate_device(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let device: Device = match decoded(req, "Device") {
        Some(Ok(d)) => d,
        Some(Err(e)) => return resp.deny(e),
        None => return resp,
    };
    let namespace = req
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let profiles = Api::<DeviceProfile>::namespaced(state.client.clone(), &namespace)
        .list(&ListParams::default())
        .await;
    let services = Api::<DeviceService>::namespaced(state.client.clone(), &namespace)
        .list(&ListParams::default())
        .await;
    let (profiles, services) = match (profiles, services) {
        (Ok(p), Ok(s)) => (p.items, s.items),
        (Err(e), _) | (_, Err(e)) => {
            return resp.deny(format!(
                "Device {:?}: cannot read the profiles and services of namespace {namespace} to check its references: {e}",
                req.name
            ));
        }
    };
    let mut problems = Vec::new();
    problems.extend(pool_problem(state, device.spec.node_pool.as_deref()));
    let profile = resolve(&profiles, &device.spec.profile_name);
    if profile.is_none() {
        problems.push(format!(
            "spec.profileName: Not found: {:?}: no DeviceProfile of that name in namespace {namespace}",
            device.spec.profile_name
        ));
    }
    if resolve(&services, &device.spec.service_name).is_none() {
        problems.push(format!(
            "spec.serviceName: Not found: {:?}: no DeviceService of that name in namespace {namespace}",
            device.spec.service_name
        ));
    }
    if let Some(profile) = profile {
        problems.extend(device_problems(&device, profile));
    }
    answer(resp, "Device", &req.name, &problems)
}
