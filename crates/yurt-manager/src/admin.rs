//! The manager's `/healthz`, `/readyz` and Prometheus `/metrics`: `yurt_core::admin`,
//! served on the health address and (when it differs) the metrics address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use yurt_core::admin::Admin;

use crate::ManagerError;

/// Shared admin state.
#[derive(Clone)]
pub struct AdminState {
    /// Set once webhooks are registered and the node view is synced.
    pub ready: Arc<AtomicBool>,
    /// Metrics to expose.
    pub registry: Arc<Registry>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let ready = state.ready;
    Admin::new(state.registry)
        .ready(move || {
            if ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("not ready".into())
            }
        })
        .router()
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
        if let Err(e) = yurt_core::admin::serve(listener, router(state), shutdown).await {
            tracing::warn!(server = what, error = %e, "admin server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_follows_the_flag() {
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(Registry::default()),
        };
        let app = router(state.clone());
        let status = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = http::Request::get(path)
                    .body(Body::empty())
                    .expect("request");
                tokio::time::timeout(std::time::Duration::from_secs(5), app.oneshot(req))
                    .await
                    .expect("answered within 5 s")
                    .expect("infallible")
                    .status()
            }
        };
        assert_eq!(status("/healthz").await, 200);
        assert_eq!(status("/readyz").await, 503);
        state.ready.store(true, Ordering::Release);
        assert_eq!(status("/readyz").await, 200);
        assert_eq!(status("/metrics").await, 200);
    }
}
