//! `/healthz`, `/readyz` and Prometheus `/metrics` for the manager.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::ManagerError;

/// Shared admin state.
#[derive(Clone)]
pub struct AdminState {
    /// Set once webhooks are registered and the node view is synced.
    pub ready: Arc<AtomicBool>,
    /// Metrics to expose.
    pub registry: Arc<Registry>,
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
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

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin router on `addr` until `shutdown`.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    what: &'static str,
    shutdown: CancellationToken,
) -> Result<(), ManagerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ManagerError::Bind { what, addr, source })?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(())
}
