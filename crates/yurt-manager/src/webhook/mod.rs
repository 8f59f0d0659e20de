//! yurt-manager's webhooks (reference/openyurt.md §5.3), served over HTTPS and
//! registered with the API server: admission (mutating and validating) and NodePool's
//! CRD conversion.
//!
//! Failure policies, per webhook:
//! - NodePool mutate/validate and YurtAppSet validate: `Fail`. A NodePool that skipped validation could change
//!   an immutable type or be deleted with members; refusing NodePool writes while the
//!   manager is down is the safer outage, and it touches nothing else.
//! - PlatformAdmin mutate/validate: `Fail`, as upstream (a platform's pools and
//!   version are checked or not set at all).
//! - Device, DeviceService and DeviceProfile mutate/validate: `Fail`: an object that
//!   skipped them would reach no agent (no pool label) or fail at the edge quietly.
//! - Node, Endpoints, EndpointSlice: `Ignore`. These are core objects every component
//!   writes; the cluster must keep working when the manager is down. What the webhooks
//!   add (pool label guard, ready endpoints on autonomous nodes) is best effort.

pub mod certs;
pub mod conversion;
pub mod device;
pub mod endpoints;
pub mod node;
pub mod nodepool;
pub mod platformadmin;
pub mod register;
pub mod yurtappset;
pub mod yurtstaticset;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Node;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::v1beta2::NodePool;

use crate::ManagerError;

/// What the handlers read.
#[derive(Clone)]
pub struct WebhookState {
    /// API access for lookups a handler cannot answer from the stores.
    pub client: kube::Client,
    /// Every Node, kept current by a reflector.
    pub nodes: Store<Node>,
    /// Every Pod, kept current by a reflector (the endpoints webhooks read it).
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
    /// Every NodePool (v1beta2), kept current by a reflector.
    pub pools: Store<NodePool>,
    /// The device agents' ServiceAccounts (those labelled with a PlatformAdmin), kept
    /// current by a reflector: each is confined to the Devices of its pool.
    pub agent_accounts: Store<k8s_openapi::api::core::v1::ServiceAccount>,
    /// Metrics.
    pub metrics: crate::metrics::ManagerMetrics,
    /// The manager's own user name, as the API server authenticates it: besides a node
    /// itself, the only user that may change the node's `is-edge-worker` label (the
    /// conversion controller sets it).
    pub manager_username: String,
}

impl WebhookState {
    /// Whether the pool named `pool` runs on the host network.
    pub fn pool_has_host_network(&self, pool: &str) -> bool {
        self.pools
            .get(&ObjectRef::new(pool))
            .and_then(|p| serde_json::to_value(&p.spec).ok())
            .and_then(|s| s.get("hostNetwork").and_then(serde_json::Value::as_bool))
            .unwrap_or(false)
    }
}

async fn admit(
    state: WebhookState,
    name: &'static str,
    handler: impl AsyncFnOnce(&WebhookState, &AdmissionRequest<DynamicObject>) -> AdmissionResponse,
    review: AdmissionReview<DynamicObject>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let response = match request {
        Ok(req) => {
            let resp = handler(&state, &req).await;
            state.metrics.webhook(name, resp.allowed);
            resp
        }
        Err(e) => {
            tracing::warn!(webhook = name, error = %e, "malformed admission review");
            AdmissionResponse::invalid(format!("malformed admission review: {e}"))
        }
    };
    Json(response.into_review())
}

/// The webhook router: one path per webhook, OpenYurt's paths.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(
            nodepool::MUTATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "nodepool-mutate", nodepool::mutate, r)
            }),
        )
        .route(
            nodepool::VALIDATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "nodepool-validate", nodepool::validate, r)
            }),
        )
        .route(
            node::MUTATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| admit(s, "node-mutate", node::mutate, r)),
        )
        .route(
            node::VALIDATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "node-validate", node::validate, r)
            }),
        )
        .route(
            endpoints::ENDPOINTS_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "endpoints-mutate", endpoints::mutate_endpoints, r)
            }),
        )
        .route(
            endpoints::ENDPOINTSLICE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(
                    s,
                    "endpointslice-mutate",
                    endpoints::mutate_endpointslice,
                    r,
                )
            }),
        )
        .route(
            yurtappset::VALIDATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "yurtappset-validate", yurtappset::validate, r)
            }),
        )
        .route(
            yurtstaticset::VALIDATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "yurtstaticset-validate", yurtstaticset::validate, r)
            }),
        )
        .route(
            platformadmin::MUTATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "platformadmin-mutate", platformadmin::mutate, r)
            }),
        )
        .route(
            platformadmin::VALIDATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "platformadmin-validate", platformadmin::validate, r)
            }),
        )
        .route(
            device::MUTATE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "iot-mutate", device::mutate, r)
            }),
        )
        .route(
            device::VALIDATE_DEVICE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "device-validate", device::validate_device, r)
            }),
        )
        .route(
            device::VALIDATE_PROFILE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "deviceprofile-validate", device::validate_profile, r)
            }),
        )
        .route(
            device::VALIDATE_SERVICE_PATH,
            post(|State(s): State<WebhookState>, Json(r)| {
                admit(s, "deviceservice-validate", device::validate_service, r)
            }),
        )
        .route(
            conversion::PATH,
            post(|State(s): State<WebhookState>, Json(r)| async move {
                s.metrics.webhook("nodepool-convert", true);
                Json(conversion::review(r))
            }),
        )
        .with_state(state)
}

/// Serves `router` over TLS on `addr` until `shutdown`.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ManagerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ManagerError::Bind {
            what: "webhook",
            addr,
            source: e,
        })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tracing::info!(%addr, "webhook server listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(client.addr = %peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new());
                builder.http2().timer(TokioTimer::new());
                let svc = TowerToHyperService::new(router);
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                    tracing::debug!(client.addr = %peer, error = %e, "webhook connection ended");
                }
            });
        }
    });
    Ok(())
}

/// A store holding `objects`, as a reflector leaves it after its first list.
#[cfg(test)]
pub(crate) fn filled<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use kube::runtime::watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for o in objects {
        writer.apply_watcher_event(&Event::InitApply(o));
    }
    writer.apply_watcher_event(&Event::InitDone);
    store
}

/// A webhook state over prefilled stores whose API client answers nothing and
/// counts the calls made to it.
#[cfg(test)]
pub(crate) fn test_state(
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
) -> (WebhookState, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other(
                "no API server in this test",
            ))
        }
    });
    let state = WebhookState {
        client: kube::Client::new(service, "default"),
        nodes: filled(nodes),
        pods: filled(pods),
        pools: filled(Vec::new()),
        agent_accounts: filled(Vec::new()),
        metrics: crate::metrics::ManagerMetrics::default(),
        manager_username: "openyurt:yurt-manager".to_owned(),
    };
    (state, calls)
}
