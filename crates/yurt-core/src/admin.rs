//! The admin server every component serves: `/healthz`, `/readyz` and Prometheus
//! `/metrics`, built as a [`Router`] (so tests call it with `oneshot`) and served with a
//! graceful shutdown. A component adds its own paths (aliases such as the hub's
//! `/v1/readyz`, or whole routes such as its OTA endpoint) to the router it gets.
//!
//! ```no_run
//! use std::sync::Arc;
//! use yurt_core::admin::Admin;
//! # async fn demo(listener: tokio::net::TcpListener) {
//! let registry = Arc::new(prometheus_client::registry::Registry::default());
//! let app = Admin::new(registry).ready(|| Ok(())).router();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! yurt_core::admin::serve(listener, app, shutdown).await.ok();
//! # }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// A health or readiness check: `Ok` when fine, else why not (the 503 body).
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The content type of `/metrics` (OpenMetrics text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What an admin server answers from: its checks, its metrics and its paths.
#[derive(Clone)]
pub struct Admin {
    health: Check,
    ready: Check,
    registry: Arc<Registry>,
    ok_body: &'static str,
    health_paths: Vec<&'static str>,
    ready_paths: Vec<&'static str>,
}

impl Admin {
    /// An admin server for `registry`: always healthy and ready until told otherwise,
    /// answering `ok` on `/healthz` and `/readyz`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            health: Arc::new(|| Ok(())),
            ready: Arc::new(|| Ok(())),
            registry,
            ok_body: "ok",
            health_paths: vec!["/healthz"],
            ready_paths: vec!["/readyz"],
        }
    }

    /// The liveness check behind the health paths.
    #[must_use]
    pub fn health(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.health = Arc::new(check);
        self
    }

    /// The readiness check behind the readiness paths.
    #[must_use]
    pub fn ready(mut self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.ready = Arc::new(check);
        self
    }

    /// The body of a passing check (`ok` by default; OpenYurt's hub answers `OK`).
    #[must_use]
    pub fn ok_body(mut self, body: &'static str) -> Self {
        self.ok_body = body;
        self
    }

    /// Another path answering the health check (e.g. OpenYurt's `/v1/healthz`).
    #[must_use]
    pub fn health_path(mut self, path: &'static str) -> Self {
        self.health_paths.push(path);
        self
    }

    /// Another path answering the readiness check (e.g. OpenYurt's `/v1/readyz`).
    #[must_use]
    pub fn ready_path(mut self, path: &'static str) -> Self {
        self.ready_paths.push(path);
        self
    }

    /// The router: the health and readiness paths and `/metrics`, each request in a
    /// span (`admin request`, with its method and path). Merge further routes into it.
    pub fn router(self) -> Router {
        let mut router = Router::new().route("/metrics", get(metrics));
        for path in &self.health_paths {
            router = router.route(path, get(health));
        }
        for path in &self.ready_paths {
            router = router.route(path, get(readiness));
        }
        router
            .with_state(self)
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    tracing::debug_span!(
                        "admin request",
                        http.method = %req.method(),
                        http.path = %req.uri().path(),
                    )
                }),
            )
    }
}

fn answer(check: &Check, ok_body: &'static str) -> Response {
    match check() {
        Ok(()) => (StatusCode::OK, ok_body).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn health(State(admin): State<Admin>) -> Response {
    answer(&admin.health, admin.ok_body)
}

async fn readiness(State(admin): State<Admin>) -> Response {
    answer(&admin.ready, admin.ok_body)
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in flight finish.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    use super::*;

    async fn call(app: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(5), app.clone().oneshot(req))
            .await
            .expect("the admin router answers within 5 s")
            .expect("infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn checks_decide_the_answers_and_metrics_render() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.sub_registry_with_prefix("yurt_test").register(
            "requests",
            "Requests",
            requests.clone(),
        );
        requests.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let app = Admin::new(Arc::new(registry))
            .ready(move || {
                if flag.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("not ready".into())
                }
            })
            .router();
        assert_eq!(call(&app, "/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(
            call(&app, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "not ready".into())
        );
        ready.store(true, Ordering::Release);
        assert_eq!(call(&app, "/readyz").await, (StatusCode::OK, "ok".into()));
        let (status, text) = call(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("yurt_test_requests_total 1"), "{text}");
        assert_eq!(call(&app, "/nothing").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn extra_paths_and_routes_answer_too() {
        let app = Admin::new(Arc::new(Registry::default()))
            .ok_body("OK")
            .health(|| Err("wedged".into()))
            .health_path("/v1/healthz")
            .ready_path("/v1/readyz")
            .router()
            .merge(Router::new().route("/extra", get(|| async { "extra" })));
        for path in ["/healthz", "/v1/healthz"] {
            assert_eq!(
                call(&app, path).await,
                (StatusCode::SERVICE_UNAVAILABLE, "wedged".into()),
                "{path}"
            );
        }
        for path in ["/readyz", "/v1/readyz"] {
            assert_eq!(
                call(&app, path).await,
                (StatusCode::OK, "OK".into()),
                "{path}"
            );
        }
        assert_eq!(call(&app, "/extra").await, (StatusCode::OK, "extra".into()));
    }

    #[tokio::test]
    async fn serve_answers_on_a_socket_and_stops_on_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Admin::new(Arc::new(Registry::default())).router(),
            shutdown.clone(),
        ));
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect within 5 s")
                .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("answer within 5 s")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops within 5 s of shutdown")
            .expect("joined")
            .expect("served");
    }
}
