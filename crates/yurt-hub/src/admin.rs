//! The hub's admin server (:10267): `/v1/healthz`, `/v1/readyz` (OpenYurt's paths),
//! `/healthz`, `/readyz`, Prometheus `/metrics` and the OTA upgrade endpoint (ota.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

/// Shared admin state.
#[derive(Clone)]
pub struct AdminState {
    /// Set once the hub can serve (cache open, first health probe done).
    pub ready: Arc<AtomicBool>,
    /// Metrics to expose.
    pub registry: Arc<Registry>,
}

async fn healthz() -> &'static str {
    "OK"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "OK")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

/// The admin router; with `ota`, also the OTA upgrade endpoint.
pub fn router(state: AdminState, ota: Option<Arc<crate::ota::Ota>>) -> Router {
    let upgrades = Router::new()
        .route(
            "/openyurt.io/v1/namespaces/{namespace}/pods/{pod}/upgrade",
            post(crate::ota::handle),
        )
        .with_state(ota);
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/healthz", get(healthz))
        .route("/v1/readyz", get(readyz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(upgrades)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_render() {
        let mut registry = Registry::default();
        let m = crate::metrics::HubMetrics::default();
        m.register(registry.sub_registry_with_prefix("yurt_hub"));
        m.cache_corrupt_entries.inc();
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(registry),
        };
        let app = router(state.clone(), None);
        let get = |p: &str| axum::http::Request::get(p).body(Body::empty()).unwrap();
        assert_eq!(
            app.clone()
                .oneshot(get("/v1/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            app.clone()
                .oneshot(get("/v1/readyz"))
                .await
                .unwrap()
                .status(),
            503
        );
        state.ready.store(true, Ordering::Release);
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            200
        );
        let resp = app.oneshot(get("/metrics")).await.unwrap();
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            text.contains("yurt_hub_cache_corrupt_entries_total 1"),
            "{text}"
        );
    }
}
