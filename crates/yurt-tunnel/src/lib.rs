//! The cloud-edge tunnel (OpenYurt's yurt-tunnel, rebuilt on kube-apiserver's egress
//! selector): [`server`] serves the API server's `cluster` egress as HTTP CONNECT on
//! a Unix socket and carries each connection to the [`agent`] of the node that owns the
//! target. Agents dial out from edge nodes (so NAT and firewalls are no obstacle) with
//! TLS 1.3 and the node's own certificate; one HTTP/2 connection per agent, roles
//! reversed (the server opens streams), carries one stream per tunnelled connection.
//! TLS between the API server and kubelet stays end to end: the tunnel sees only bytes.

pub mod agent;
#[cfg(feature = "cli")]
pub mod cli;
pub mod connect;
pub mod install;
pub mod metrics;
pub mod server;
pub mod splice;
pub mod tls;

use std::time::Duration;

/// HTTP/2 PINGs that tell a dead link from a quiet one.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// Time between PINGs (and the TCP keepalive idle time).
    pub interval: Duration,
    /// How long a PING may go unanswered before the connection is given up.
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// 15 s between PINGs, 20 s for an answer: four round trips of a 500 ms satellite
    /// link fit many times over, and a cut link is noticed within about 35 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(20),
        }
    }
}

/// HTTP/2 flow-control windows: what one stream, and one agent connection, may have
/// in flight. A stream's window bounds what a stalled reader holds; the connection's
/// bounds an agent's total buffering.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Per stream, bytes.
    pub stream: u32,
    /// Per connection, bytes.
    pub connection: u32,
    /// Largest DATA frame, bytes.
    pub max_frame: u32,
}

impl Default for Windows {
    /// 4 MiB per stream (a 500 ms RTT link at 64 Mbit/s), 32 MiB per connection, 256 KiB frames.
    fn default() -> Self {
        Self {
            stream: 4 << 20,
            connection: 32 << 20,
            max_frame: 256 << 10,
        }
    }
}

/// Serves `/healthz`, `/readyz` (answered by `ready`) and `/metrics` of `registry` on
/// `listener` until `token` is cancelled, in a task of its own.
pub(crate) fn spawn_admin(
    listener: tokio::net::TcpListener,
    registry: prometheus_client::registry::Registry,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    token: tokio_util::sync::CancellationToken,
) {
    let admin = yurt_core::admin::Admin::new(std::sync::Arc::new(registry))
        .ready(ready)
        .router();
    tokio::spawn(async move {
        if let Err(e) = yurt_core::admin::serve(listener, admin, token).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
}

/// Sends a PING every `keepalive.interval` and returns why the connection is dead
/// once one goes unanswered for `keepalive.timeout`. Runs beside the connection's own
/// future, which must keep being polled.
pub(crate) async fn keep_alive(pings: Option<h2::PingPong>, keepalive: Keepalive) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => {
                return format!(
                    "no answer to a keepalive PING within {:?}",
                    keepalive.timeout
                );
            }
        }
    }
}
