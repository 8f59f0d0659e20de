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
//! - validating a device: its pool exists, and each desired value names a writable
//!   resource of its profile, parses as its type (as EdgeX's device SDK parses it) and
//!   lies within its bounds. Its profile and service are looked up in its namespace and
//!   pool by the platform's name (yurt-iot-dock's label, else the object's name); one
//!   not found yet is a warning, not a refusal, so `kubectl apply -f dir/` may create a
//!   device before its profile;
//! - validating a service: a base address, and its pool exists;
//! - confining each pool's device agent: a ServiceAccount labelled with a PlatformAdmin
//!   (the platformadmin controller makes one per pool, with the pool's label) may create
//!   and write (a Device's status included) only objects of the three kinds in its pool,
//!   before and after. RBAC
//!   cannot tell pools apart; this keeps a node that hands out its agent's token from
//!   writing the devices of other sites.
//!
//! What is checked on update is what changed: an object being deleted (a finalizer
//! removed) is never refused, nor one whose pool, profile or service went away first.
//! Devices the cloud does not manage (synced from the edge: yurt-iot-dock's label, or
//! `managed` not true) get the pool check only: the edge owns them.
//!
//! Values stay strings, as upstream's are: users quote numbers, and values synced from
//! the edge come back as `"1.000000"`.

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
pub use yurt_api::iot::platform_name;

use super::WebhookState;

/// Path of the mutating webhook for the three kinds.
pub const MUTATE_PATH: &str = "/mutate-iot-openyurt-io-v1alpha1-devices";
/// Path of the validating Device webhook.
pub const VALIDATE_DEVICE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-device";
/// Path of the validating DeviceProfile webhook.
pub const VALIDATE_PROFILE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-deviceprofile";
/// Path of the validating DeviceService webhook.
pub const VALIDATE_SERVICE_PATH: &str = "/validate-iot-openyurt-io-v1alpha1-deviceservice";

pub use yurt_api::iot::EDGEX_NAME_LABEL;

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

/// How long a request waits for the manager's NodePool view after a restart.
const POOLS_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The request's object and old object, or the answer to give without checking: not a
/// create or update, an object being deleted, no spec (upstream's schema allows one), or
/// one that does not decode.
fn decoded<K: serde::de::DeserializeOwned>(
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
) -> Result<(K, Option<K>), Box<AdmissionResponse>> {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Err(Box::new(resp));
    }
    let Some(value) = object(req.object.as_ref()) else {
        return Err(Box::new(resp));
    };
    if !value
        .pointer("/metadata/deletionTimestamp")
        .is_none_or(Value::is_null)
        || value.get("spec").is_none_or(Value::is_null)
    {
        return Err(Box::new(resp));
    }
    let new = serde_json::from_value(value).map_err(|e| {
        Box::new(
            resp.clone()
                .deny(format!("{kind} {:?} is invalid: {e}", req.name)),
        )
    })?;
    let old = object(req.old_object.as_ref()).and_then(|v| serde_json::from_value(v).ok());
    Ok((new, old))
}

fn answer(
    resp: AdmissionResponse,
    kind: &str,
    name: &str,
    problems: &[String],
    warnings: Vec<String>,
) -> AdmissionResponse {
    if problems.is_empty() {
        let mut resp = resp;
        if !warnings.is_empty() {
            resp.warnings = Some(warnings);
        }
        resp
    } else {
        resp.deny(format!(
            "{kind} {name:?} is invalid: {}",
            problems.join("; ")
        ))
    }
}

/// The problem with `pool` when it is set and changed from `old_pool` (`Err`: the
/// manager cannot tell yet).
async fn pool_problem(
    state: &WebhookState,
    pool: Option<&str>,
    old_pool: Option<Option<&str>>,
) -> Result<Option<String>, String> {
    let Some(pool) = pool.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    if old_pool == Some(Some(pool)) {
        return Ok(None);
    }
    if tokio::time::timeout(POOLS_READY_WAIT, state.pools.wait_until_ready())
        .await
        .map_or(true, |r| r.is_err())
    {
        return Err("the manager has not read the NodePools yet; retry".to_owned());
    }
    Ok(state
        .pools
        .get(&ObjectRef::new(pool))
        .is_none()
        .then(|| format!("spec.nodePool: Invalid value: {pool:?}: no such NodePool")))
}

/// The validating DeviceProfile webhook.
pub async fn validate_profile(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    if let Err(resp) = confined(state, req, "DeviceProfile").await {
        return *resp;
    }
    let (profile, old): (DeviceProfile, Option<DeviceProfile>) = match decoded(req, "DeviceProfile")
    {
        Ok(objects) => objects,
        Err(resp) => return *resp,
    };
    let resp = AdmissionResponse::from(req);
    let mut problems = profile_problems(&profile);
    let old_pool = old.as_ref().map(|o| o.spec.node_pool.as_deref());
    match pool_problem(state, profile.spec.node_pool.as_deref(), old_pool).await {
        Ok(p) => problems.extend(p),
        Err(e) => return resp.deny(e),
    }
    answer(resp, "DeviceProfile", &req.name, &problems, Vec::new())
}

/// The validating DeviceService webhook.
pub async fn validate_service(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    if let Err(resp) = confined(state, req, "DeviceService").await {
        return *resp;
    }
    let (service, old): (DeviceService, Option<DeviceService>) = match decoded(req, "DeviceService")
    {
        Ok(objects) => objects,
        Err(resp) => return *resp,
    };
    let resp = AdmissionResponse::from(req);
    let mut problems = Vec::new();
    if service.spec.base_address.is_empty() {
        problems.push("spec.baseAddress: Required value".to_owned());
    }
    let old_pool = old.as_ref().map(|o| o.spec.node_pool.as_deref());
    match pool_problem(state, service.spec.node_pool.as_deref(), old_pool).await {
        Ok(p) => problems.extend(p),
        Err(e) => return resp.deny(e),
    }
    answer(resp, "DeviceService", &req.name, &problems, Vec::new())
}

/// Whether the cloud manages `device` (the edge owns synced and unmanaged ones).
fn managed_by_the_cloud(device: &Device) -> bool {
    device.spec.managed == Some(true)
        && !device
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EDGEX_NAME_LABEL))
}

/// The pool whose Devices `username` is confined to: `Some` for a device agent's
/// ServiceAccount (empty when its account names no pool: it may write none), `None` for
/// any other user. `Err`: the manager has not read the agents' accounts yet.
async fn agent_pool(state: &WebhookState, username: &str) -> Result<Option<String>, String> {
    let Some((namespace, name)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Ok(None);
    };
    if tokio::time::timeout(POOLS_READY_WAIT, state.agent_accounts.wait_until_ready())
        .await
        .map_or(true, |r| r.is_err())
    {
        return Err("the manager has not read the device agents' accounts yet; retry".to_owned());
    }
    Ok(state
        .agent_accounts
        .get(&ObjectRef::new(name).within(namespace))
        .map(|account| {
            account
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(yurt_api::labels::NODE_POOL))
                .cloned()
                .unwrap_or_default()
        }))
}

/// Why the request's user may not write this object (a `kind`): it is a pool's device
/// agent and the object (before or after) belongs to another pool. `Err`: cannot tell
/// yet.
async fn agent_problem(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
) -> Result<Option<String>, String> {
    let username = req.user_info.username.as_deref().unwrap_or_default();
    let Some(agent_pool) = agent_pool(state, username).await? else {
        return Ok(None);
    };
    let pool_of = |o: Option<&DynamicObject>| {
        object(o).map(|v| {
            v.pointer("/spec/nodePool")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
    };
    let pools = [
        pool_of(req.object.as_ref()),
        pool_of(req.old_object.as_ref()),
    ];
    Ok(pools
        .into_iter()
        .flatten()
        .find(|pool| agent_pool.is_empty() || *pool != agent_pool)
        .map(|pool| {
            if agent_pool.is_empty() {
                return format!(
                    "{username} is a device agent's account that names no pool (no {} label): it may write no {kind}",
                    yurt_api::labels::NODE_POOL
                );
            }
            format!(
                "{username} is the device agent of pool {agent_pool:?}: it may not write a {kind} of {}",
                if pool.is_empty() {
                    "no pool".to_owned()
                } else {
                    format!("pool {pool:?}")
                }
            )
        }))
}

/// The answer refusing a device agent's write outside its pool, or `Ok` to go on.
async fn confined(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
) -> Result<(), Box<AdmissionResponse>> {
    let resp = AdmissionResponse::from(req);
    match agent_problem(state, req, kind).await {
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(Box::new(
            resp.deny(format!("{kind} {:?} is forbidden: {problem}", req.name)),
        )),
        Err(e) => Err(Box::new(resp.deny(e))),
    }
}

/// The validating Device webhook (Devices and their status): confines the pools' device
/// agents to their pools' Devices, then checks the Device, reading its namespace's
/// profiles and services (from the API server's watch cache).
pub async fn validate_device(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    if let Err(resp) = confined(state, req, "Device").await {
        return *resp;
    }
    if req.sub_resource.as_deref() == Some("status") {
        return AdmissionResponse::from(req);
    }
    let (device, old): (Device, Option<Device>) = match decoded(req, "Device") {
        Ok(objects) => objects,
        Err(resp) => return *resp,
    };
    let resp = AdmissionResponse::from(req);
    let mut problems = Vec::new();
    let old_pool = old.as_ref().map(|o| o.spec.node_pool.as_deref());
    let pool = device.spec.node_pool.as_deref();
    match pool_problem(state, pool, old_pool).await {
        Ok(p) => problems.extend(p),
        Err(e) => return resp.deny(e),
    }
    let unchanged = old.as_ref().is_some_and(|o| {
        o.spec.profile_name == device.spec.profile_name
            && o.spec.service_name == device.spec.service_name
            && o.spec.node_pool == device.spec.node_pool
            && o.spec.device_properties == device.spec.device_properties
    });
    if !managed_by_the_cloud(&device) || unchanged {
        return answer(resp, "Device", &req.name, &problems, Vec::new());
    }
    let namespace = req
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let cached = ListParams::default().match_any();
    let profiles = Api::<DeviceProfile>::namespaced(state.client.clone(), &namespace)
        .list(&cached)
        .await;
    let services = Api::<DeviceService>::namespaced(state.client.clone(), &namespace)
        .list(&cached)
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
    let mut warnings = Vec::new();
    let profile = resolve(&profiles, &device.spec.profile_name, pool, |p| {
        p.spec.node_pool.as_deref()
    });
    match profile {
        Some(profile) => problems.extend(device_problems(&device, profile)),
        None => warnings.push(format!(
            "spec.profileName {:?}: no DeviceProfile of that name in namespace {namespace}{}: its desired values are not checked",
            device.spec.profile_name,
            pool.map(|p| format!(" and pool {p}")).unwrap_or_default()
        )),
    }
    if resolve(&services, &device.spec.service_name, pool, |s| {
        s.spec.node_pool.as_deref()
    })
    .is_none()
    {
        warnings.push(format!(
            "spec.serviceName {:?}: no DeviceService of that name in namespace {namespace}{}",
            device.spec.service_name,
            pool.map(|p| format!(" and pool {p}")).unwrap_or_default()
        ));
    }
    answer(resp, "Device", &req.name, &problems, warnings)
}
