//! Endpoints and EndpointSlices of pods on autonomous nodes stay ready while the node
//! is unreachable (reference/openyurt.md §5.3, §6 A.2).
//!
//! When a node stops reporting, kube-controller-manager marks its pods NotReady and the
//! endpoint controllers move them to `notReadyAddresses` / `ready: false`, which would
//! take an autonomous site's pods out of every Service while they still serve. This
//! webhook puts them back when (a) the node is autonomous, (b) the node is not Ready
//! (so the pod's readiness was lost with the node, not by its own probe), and (c) the
//! pod's last status from kubelet had every container ready. Upstream checks only for
//! CrashLoopBackOff; (c) also keeps out pods whose own probe failed before the outage.

use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use super::WebhookState;
use crate::autonomy::{self, Autonomy};

/// Path of the Endpoints webhook (OpenYurt's).
pub const ENDPOINTS_PATH: &str = "/mutate-core-openyurt-io-v1-endpoints";
/// Path of the EndpointSlice webhook (OpenYurt's).
pub const ENDPOINTSLICE_PATH: &str = "/mutate-discovery-k8s-io-v1-endpointslice";

/// Whether an address on `node_name` for `pod` should be served as ready. Pods are read
/// from the manager's shared Pod store: a site outage puts every address of the site
/// through here at once, and one API call per address could outlast the webhook's
/// timeout (its failure policy is Ignore), dropping the pods from their Services
/// exactly when autonomy needs them. Only while the store is still being filled is
/// the pod fetched.
async fn keep_ready(state: &WebhookState, node_name: &str, pod: Option<(&str, &str)>) -> bool {
    let Some(node) = state
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(node_name))
    else {
        return false;
    };
    if autonomy::of(&node) == Autonomy::Off || autonomy::is_ready(&node) {
        return false;
    }
    let Some((namespace, name)) = pod else {
        return false;
    };
    let store_ready = state
        .pods
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok());
    if store_ready {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        return state
            .pods
            .get(&key)
            .is_some_and(|p| last_reported_ready(&p));
    }
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    match pods.get_opt(name).await {
        Ok(Some(p)) => last_reported_ready(&p),
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(pod = name, error = %e, "pod lookup failed; address left as it is");
            false
        }
    }
}

/// Whether kubelet last reported every container of `pod` ready and none crash-looping,
/// and the pod is not being deleted.
pub fn last_reported_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(statuses) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    statuses.iter().all(|c| {
        let crash_looping = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
        c.ready && !crash_looping
    })
}

fn object_json(req: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    req.object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
}

fn patched(req: &AdmissionRequest<DynamicObject>, path: &str, value: Value) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    match serde_json::from_value::<json_patch::Patch>(json!([
        {"op": "replace", "path": path, "value": value}
    ])) {
        Ok(patch) => resp.clone().with_patch(patch).unwrap_or(resp),
        Err(_) => resp,
    }
}

/// The Endpoints webhook.
pub async fn mutate_endpoints(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return AdmissionResponse::from(req);
    }
    let Some(mut endpoints) =
        object_json(req).and_then(|v| serde_json::from_value::<Endpoints>(v).ok())
    else {
        return AdmissionResponse::from(req);
    };
    let mut changed = false;
    for subset in endpoints.subsets.iter_mut().flatten() {
        let Some(not_ready) = subset.not_ready_addresses.take() else {
            continue;
        };
        let mut still_not_ready = Vec::new();
        for address in not_ready {
            let pod = address
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| Some((r.namespace.as_deref()?, r.name.as_deref()?)));
            let keep = match address.node_name.as_deref() {
                Some(node) => keep_ready(state, node, pod).await,
                None => false,
            };
            if keep {
                subset.addresses.get_or_insert_with(Vec::new).push(address);
                changed = true;
            } else {
                still_not_ready.push(address);
            }
        }
        subset.not_ready_addresses = (!still_not_ready.is_empty()).then_some(still_not_ready);
    }
    if !changed {
        return AdmissionResponse::from(req);
    }
    tracing::info!(endpoints = ?endpoints.metadata.name, namespace = ?endpoints.metadata.namespace, "kept addresses on autonomous nodes ready");
    patched(
        req,
        "/subsets",
        serde_json::to_value(&endpoints.subsets).unwrap_or(Value::Null),
    )
}

/// The EndpointSlice webhook, for `discovery.k8s.io` v1 and v1beta1 (Kubernetes 1.20
/// serves only v1beta1, where the node may be named in `topology` instead of `nodeName`).
pub async fn mutate_endpointslice(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return AdmissionResponse::from(req);
    }
    let Some(mut slice) = object_json(req) else {
        return AdmissionResponse::from(req);
    };
    let Some(endpoints) = slice.get_mut("endpoints").and_then(Value::as_array_mut) else {
        return AdmissionResponse::from(req);
    };
    let mut changed = false;
    for endpoint in endpoints.iter_mut() {
        let conditions = endpoint.get("conditions");
        let ready = conditions
            .and_then(|c| c.get("ready"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let terminating = conditions
            .and_then(|c| c.get("terminating"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if ready || terminating {
            continue;
        }
        let node = endpoint
            .get("nodeName")
            .and_then(Value::as_str)
            .or_else(|| {
                endpoint
                    .get("topology")
                    .and_then(|t| t.get("kubernetes.io/hostname"))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned);
        let target = endpoint.get("targetRef");
        let pod = target
            .filter(|t| t.get("kind").and_then(Value::as_str) == Some("Pod"))
            .and_then(|t| {
                Some((
                    t.get("namespace")?.as_str()?.to_owned(),
                    t.get("name")?.as_str()?.to_owned(),
                ))
            });
        let Some(node) = node else { continue };
        let pod_ref = pod.as_ref().map(|(n, p)| (n.as_str(), p.as_str()));
        if keep_ready(state, &node, pod_ref).await {
            endpoint["conditions"]["ready"] = Value::Bool(true);
            endpoint["conditions"]["serving"] = Value::Bool(true);
            changed = true;
        }
    }
    if !changed {
        return AdmissionResponse::from(req);
    }
    let value = slice.get("endpoints").cloned().unwrap_or(Value::Null);
    tracing::info!(endpointslice = ?slice.pointer("/metadata/name"), "kept endpoints on autonomous nodes ready");
    patched(req, "/endpoints", value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn pod(ready: &[bool], waiting: Option<&str>) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(
                    ready
                        .iter()
                        .map(|r| ContainerStatus {
                            ready: *r,
                            state: waiting.map(|w| ContainerState {
                                waiting: Some(ContainerStateWaiting {
                                    reason: Some(w.to_owned()),
                                    ..ContainerStateWaiting::default()
                                }),
                                ..ContainerState::default()
                            }),
                            ..ContainerStatus::default()
                        })
                        .collect(),
                ),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[tokio::test]
    async fn a_site_outage_keeps_a_thousand_addresses_ready_without_one_api_call() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": "edge-a1", "annotations": {"node.openyurt.io/autonomy-duration": "0"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        }))
        .unwrap();
        let mut pods = Vec::new();
        let mut addresses = Vec::new();
        for i in 0..1000 {
            let mut p = pod(&[true], None);
            p.metadata.name = Some(format!("web-{i}"));
            p.metadata.namespace = Some("shop".into());
            // Every tenth pod's own probe had failed before the outage.
            if i % 10 == 0 {
                p = Pod {
                    metadata: p.metadata.clone(),
                    ..pod(&[false], None)
                };
            }
            pods.push(p);
            addresses.push(
                json!({"ip": format!("10.244.1.{}", i % 250), "nodeName": "edge-a1",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("web-{i}")}}),
            );
        }
        let (state, calls) = crate::webhook::test_state(vec![node], pods);
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "u1", "operation": "UPDATE",
                    "kind": {"group": "", "version": "v1", "kind": "Endpoints"},
                    "resource": {"group": "", "version": "v1", "resource": "endpoints"},
                    "name": "web", "namespace": "shop", "userInfo": {},
                    "object": {"apiVersion": "v1", "kind": "Endpoints",
                               "metadata": {"name": "web", "namespace": "shop"},
                               "subsets": [{"notReadyAddresses": addresses, "ports": [{"port": 80}]}]},
                },
            }))
            .unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let resp = mutate_endpoints(&state, &req).await;
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no API call per address"
        );
        let patch = serde_json::to_value(
            resp.patch
                .as_ref()
                .map(|p| serde_json::from_slice::<Value>(p).unwrap()),
        )
        .unwrap();
        let subsets = &patch[0]["value"];
        assert_eq!(subsets[0]["addresses"].as_array().map(Vec::len), Some(900));
        assert_eq!(
            subsets[0]["notReadyAddresses"].as_array().map(Vec::len),
            Some(100)
        );
    }

    #[test]
    fn only_pods_whose_containers_were_all_ready_count() {
        assert!(last_reported_ready(&pod(&[true, true], None)));
        assert!(!last_reported_ready(&pod(&[true, false], None)));
        assert!(!last_reported_ready(&pod(
            &[true],
            Some("CrashLoopBackOff")
        )));
        assert!(!last_reported_ready(&pod(&[], None)));
        assert!(!last_reported_ready(&Pod::default()));
    }
}
