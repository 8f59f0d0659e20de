//! The hub's admin server (:10267): `yurt_core::admin`'s `/healthz`, `/readyz` and
//! Prometheus `/metrics`, plus OpenYurt's `/v1/healthz` and `/v1/readyz` and the OTA
//! upgrade endpoint (ota.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::post;
use prometheus_client::registry::Registry;
use yurt_core::admin::Admin;

/// Shared admin state.
#[derive(Clone)]
pub struct AdminState {
    /// Set once the hub can serve (cache open, first health probe done).
    pub ready: Arc<AtomicBool>,
    /// Metrics to expose.
    pub registry: Arc<Registry>,
    /// The serving certificate, when the hub obtains it itself: not ready without a
    /// valid one.
    pub serving: Option<Arc<crate::certificate::CertSlot>>,
    /// The hub's own client certificate, when it asks for one: not ready without it.
    pub client: Option<Arc<crate::certificate::csr::CsrCertificate>>,
}

/// The admin router (`yurt_core::admin` with OpenYurt's `/v1/` paths and `OK` bodies);
/// with `ota`, also the OTA upgrade endpoint.
pub fn router(state: AdminState, ota: Option<Arc<crate::ota::Ota>>) -> Router {
    let upgrades = Router::new()
        .route(
            "/openyurt.io/v1/namespaces/{namespace}/pods/{pod}/upgrade",
            post(crate::ota::handle),
        )
        .with_state(ota);
    let (ready, serving, client) = (state.ready, state.serving, state.client);
    Admin::new(state.registry)
        .ok_body("OK")
        .health_path("/v1/healthz")
        .ready_path("/v1/readyz")
        .ready(move || {
            if serving.as_ref().is_some_and(|s| !s.ready()) {
                Err("no valid serving certificate yet (waiting for its CSR)".into())
            } else if client.as_ref().is_some_and(|c| !c.ready()) {
                Err("no client certificate of its own yet (waiting for its CSR)".into())
            } else if ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("not ready".into())
            }
        })
        .router()
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
            serving: None,
            client: None,
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

    #[tokio::test]
    async fn a_hub_asking_for_its_serving_certificate_is_not_ready_until_it_has_one() {
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            registry: Arc::new(Registry::default()),
            serving: Some(Arc::new(crate::certificate::CertSlot::default())),
            client: None,
        };
        let app = router(state, None);
        let req = axum::http::Request::get("/v1/readyz")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("serving certificate"),
            "{body:?}"
        );
    }

    #[tokio::test]
    async fn openyurt_bodies_and_the_ota_route_are_kept() {
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            registry: Arc::new(Registry::default()),
            serving: None,
            client: None,
        };
        let app = router(state, None);
        for path in ["/healthz", "/v1/healthz", "/readyz", "/v1/readyz"] {
            let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"OK", "{path}");
        }
        let req = axum::http::Request::post("/openyurt.io/v1/namespaces/ns/pods/p/upgrade")
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("OTA upgrades are not enabled"),
            "the OTA handler answers, not the router's 404"
        );
    }
}
