//! Connections to the API servers: per server, a client that authenticates as the node
//! (local components send no credentials) and one that passes the caller's bearer token
//! through (pods), each in an HTTP/2 flavour for ordinary requests and an HTTP/1.1
//! flavour for upgrades (exec, attach, port-forward).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Config, UpstreamConfig};
use crate::health::Health;
use crate::tls::{self, TlsError};

/// A client towards one API server.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Incoming>;

/// One API server.
pub struct Backend {
    /// Position in the configured list (also its index in [`Health`]).
    pub index: usize,
    /// Its URL.
    pub url: http::Uri,
    /// Authenticates as the node.
    pub node: HttpsClient,
    /// Passes the caller's credentials through.
    pub bearer: HttpsClient,
    /// HTTP/1.1, as the node (upgrades).
    pub node_h1: HttpsClient,
    /// HTTP/1.1, caller's credentials (upgrades).
    pub bearer_h1: HttpsClient,
    /// A typed client as the node, for the hub's own calls (health, filters' lookups).
    pub kube: kube::Client,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn client(tls: rustls::ClientConfig, up: &UpstreamConfig, h2: bool) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(up.connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90));
    if h2 {
        b.http2_keep_alive_interval(up.keepalive_interval)
            .http2_keep_alive_timeout(up.keepalive_timeout)
            .http2_keep_alive_while_idle(true);
    }
    b.build(connector)
}

/// Builds a backend per configured server.
///
/// # Errors
/// Unreadable certificates or a kube client that cannot be built.
pub fn backends(config: &Config) -> Result<Vec<Arc<Backend>>, UpstreamError> {
    let identity = Some((config.client_cert.as_path(), config.client_key.as_path()));
    let mut out = Vec::new();
    for (index, url) in config.servers.iter().enumerate() {
        let mut kc = kube::Config::new(url.clone());
        kc.root_cert = Some(
            tls::certs(&config.ca_file)?
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
        );
        kc.auth_info.client_certificate = Some(config.client_cert.display().to_string());
        kc.auth_info.client_key = Some(config.client_key.display().to_string());
        kc.connect_timeout = Some(config.upstream.connect_timeout);
        kc.read_timeout = Some(config.health.timeout);
        kc.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("yurthub/", env!("CARGO_PKG_VERSION"))),
        ));
        let kube = kube::Client::try_from(kc).map_err(UpstreamError::Kube)?;
        out.push(Arc::new(Backend {
            index,
            url: url.clone(),
            node: client(
                tls::client_config(&config.ca_file, identity)?,
                &config.upstream,
                true,
            ),
            bearer: client(
                tls::client_config(&config.ca_file, None)?,
                &config.upstream,
                true,
            ),
            node_h1: client(
                tls::client_config(&config.ca_file, identity)?,
                &config.upstream,
                false,
            ),
            bearer_h1: client(
                tls::client_config(&config.ca_file, None)?,
                &config.upstream,
                false,
            ),
            kube,
        }));
    }
    Ok(out)
}

/// Upstream setup failures.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The typed client.
    #[error("API client: {0}")]
    Kube(#[source] kube::Error),
}

/// Picks healthy backends round-robin.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer over `backends`.
    pub fn new(backends: Vec<Arc<Backend>>) -> Self {
        Self {
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// Every backend.
    pub fn all(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The next healthy backend, if any.
    pub fn pick(&self, health: &Health) -> Option<Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| health.is_healthy(b.index))
            .cloned()
    }
}

/// The URI of `path_and_query` on `base`.
pub fn uri_on(base: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}
