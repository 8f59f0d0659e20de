//! Connections to the API servers: per server, a client that authenticates as the node
//! (local components send no credentials) and one that passes the caller's bearer token
//! through (pods), each as a pool of HTTP/2 connections for ordinary requests
//! ([`pool`]) and an HTTP/1.1 client for upgrades (exec, attach, port-forward).
//!
//! Requests ask the API server for gzip (`--upstream-gzip`; a client's own
//! `Accept-Encoding` never goes upstream) and responses are decoded here ([`gzip`]), so
//! everything above this layer (the cache, the filters, clients) sees plain bodies.

pub mod gzip;
pub mod kube_client;
pub mod pool;
mod rotating;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::BodyError;
use crate::config::{Config, UpstreamConfig};
use crate::health::Health;
use crate::tls::{self, TlsError};
pub use pool::{H2Pool, PoolConfig, RequestBody};

/// An API server's response body as the layers above see it (decoded).
pub type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, UpstreamBodyError>;

/// A failure inside an upstream response body: the connection broke, or a gzip body
/// was corrupt ([`gzip::CorruptGzip`]).
#[derive(Debug)]
pub struct UpstreamBodyError(pub BodyError);

impl std::fmt::Display for UpstreamBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UpstreamBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why a request to an API server got no response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be made (TCP, TLS, HTTP/2 handshake): the server is
    /// unreachable.
    #[error("connect")]
    Connect(#[source] BodyError),
    /// A connection was set up and then reset or closed before its TLS handshake was
    /// done: a failure on a live path (a lossy WAN cuts handshakes like anything else),
    /// for the prober to judge, not proof that the server is gone.
    #[error("connection cut during its TLS handshake")]
    HandshakeCut(#[source] std::io::Error),
    /// The request failed on a live connection.
    #[error("request")]
    Send(#[source] hyper::Error),
    /// The HTTP/1.1 client failed.
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
    /// The server's URL cannot be used.
    #[error("server URL: {0}")]
    Config(String),
}

impl RequestError {
    /// Whether the server could not be reached at all.
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Config(_) => true,
            Self::HandshakeCut(_) | Self::Send(_) => false,
            Self::Legacy(e) => e.is_connect(),
        }
    }
}

/// Whether a request keeps its response open (a watch, a followed log): such responses
/// are not asked to be compressed (the API server does not compress them anyway).
fn is_streaming(uri: &http::Uri) -> bool {
    let flag = |key: &str| {
        uri.query().unwrap_or("").split('&').any(|kv| {
            kv.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .is_some_and(|v| v == "true" || v == "1")
        })
    };
    flag("watch") || flag("follow") || uri.path().contains("/watch/")
}

/// Requests of one client class to one server, over HTTP/2.
#[derive(Debug)]
pub struct ClassClient {
    pool: H2Pool,
    gzip: bool,
}

impl ClassClient {
    /// A client over `pool`; `gzip` asks the server to compress responses.
    pub fn new(pool: H2Pool, gzip: bool) -> Self {
        Self { pool, gzip }
    }

    /// The pool's open connections and the streams each carries.
    pub fn connections(&self) -> Vec<usize> {
        self.pool.connections()
    }

    /// Sends `req` (absolute URI). The response body is plain: a gzip body is decoded
    /// as it streams (a corrupt one ends in a [`gzip::CorruptGzip`] body error), and its
    /// `Content-Encoding` and `Content-Length` are removed.
    ///
    /// # Errors
    /// No connection, or the request failed.
    pub async fn request<B>(&self, req: Request<B>) -> Result<Response<UpstreamBody>, RequestError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyError>,
    {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(header::ACCEPT_ENCODING);
        if self.gzip && !is_streaming(&parts.uri) {
            parts
                .headers
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let req = Request::from_parts(parts, body.map_err(Into::into).boxed());
        let resp = self.pool.send(req).await?;
        Ok(decoded(resp))
    }
}

/// `resp` with a gzip body decoded (any other encoding is left as labelled).
pub fn decoded(resp: Response<UpstreamBody>) -> Response<UpstreamBody> {
    let gzipped = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(gzip::is_gzip);
    if !gzipped {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, gzip::decode(body))
}

/// HTTP/1.1 requests to one server (upgrades), on connections showing the current
/// client certificate.
#[derive(Debug, Clone)]
pub struct UpgradeClient(
    Arc<rotating::Rotating<Client<HttpsConnector<HttpConnector>, RequestBody>>>,
);

impl UpgradeClient {
    /// Sends `req` (absolute URI) as it is; upgrades are never compressed.
    ///
    /// # Errors
    /// No connection, or the request failed.
    pub async fn request<B>(&self, req: Request<B>) -> Result<Response<UpstreamBody>, RequestError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyError>,
    {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(header::ACCEPT_ENCODING);
        let req = Request::from_parts(parts, body.map_err(Into::into).boxed());
        let resp = self.0.get().request(req).await?;
        Ok(resp.map(|b| b.map_err(|e| UpstreamBodyError(Box::new(e))).boxed()))
    }
}

/// One API server.
pub struct Backend {
    /// Position in the configured list (also its index in [`Health`]).
    pub index: usize,
    /// Its URL.
    pub url: http::Uri,
    /// Authenticates as the node.
    pub node: ClassClient,
    /// Passes the caller's credentials through.
    pub bearer: ClassClient,
    /// HTTP/1.1, as the node (upgrades).
    pub node_h1: UpgradeClient,
    /// HTTP/1.1, caller's credentials (upgrades).
    pub bearer_h1: UpgradeClient,
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

pub(crate) fn upgrade_client(
    tls: rustls::ClientConfig,
    up: &UpstreamConfig,
    identity: Option<Arc<crate::certificate::CertSlot>>,
) -> UpgradeClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(up.connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    UpgradeClient(Arc::new(rotating::Rotating::new(identity, move || {
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90));
        b.build(connector.clone())
    })))
}

pub(crate) fn class_client(
    url: &http::Uri,
    tls: rustls::ClientConfig,
    up: &UpstreamConfig,
    identity: Option<Arc<crate::certificate::CertSlot>>,
) -> Result<ClassClient, UpstreamError> {
    let pool = H2Pool::new(
        url,
        tls,
        PoolConfig {
            connect_timeout: up.connect_timeout,
            keepalive_interval: up.keepalive_interval,
            keepalive_timeout: up.keepalive_timeout,
            max_streams: up.max_streams_per_connection,
            idle_timeout: std::time::Duration::from_secs(90),
        },
    )
    .map_err(UpstreamError::Url)?;
    let pool = match identity {
        Some(identity) => pool.with_identity(identity),
        None => pool,
    };
    Ok(ClassClient::new(pool, up.gzip))
}

/// Builds a backend per configured server.
///
/// # Errors
/// Unreadable certificates or keys, or a server URL the pool cannot use.
pub fn backends(
    config: &Config,
    client_identity: &Arc<crate::certificate::CertSlot>,
) -> Result<Vec<Arc<Backend>>, UpstreamError> {
    let identity = || Some(client_identity.clone() as Arc<dyn rustls::client::ResolvesClientCert>);
    // Connections presenting the identity follow its replacements.
    let follow = || Some(client_identity.clone());
    let mut out = Vec::new();
    for (index, url) in config.servers.iter().enumerate() {
        let kube = kube_client::https(
            url.clone(),
            tls::client_config_with(&config.ca_file, identity())?,
            kube_client::Timeouts {
                connect: Some(config.upstream.connect_timeout),
                read: Some(config.health.timeout),
            },
            follow(),
        );
        out.push(Arc::new(Backend {
            index,
            url: url.clone(),
            node: class_client(
                url,
                tls::client_config_with(&config.ca_file, identity())?,
                &config.upstream,
                follow(),
            )?,
            bearer: class_client(
                url,
                tls::client_config_with(&config.ca_file, None)?,
                &config.upstream,
                None,
            )?,
            node_h1: upgrade_client(
                tls::client_config_with(&config.ca_file, identity())?,
                &config.upstream,
                follow(),
            ),
            bearer_h1: upgrade_client(
                tls::client_config_with(&config.ca_file, None)?,
                &config.upstream,
                None,
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
    /// A server URL the pool cannot use.
    #[error(transparent)]
    Url(RequestError),
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
    Ok(uri_with(base, path_and_query.parse()?)?)
}

/// The URI of an already parsed `path_and_query` on `base` (a request's own, as it came
/// in: parsing it again would cost every forwarded request).
pub fn uri_with(
    base: &http::Uri,
    path_and_query: http::uri::PathAndQuery,
) -> Result<http::Uri, http::uri::InvalidUriParts> {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts)
}

/// An error and its causes, joined by ": " (a client error's own Display often names
/// only its kind).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_and_followed_logs_are_not_asked_to_be_compressed() {
        for (uri, streaming) in [
            ("https://a/api/v1/pods?watch=true", true),
            ("https://a/api/v1/pods?labelSelector=x&watch=1", true),
            ("https://a/api/v1/watch/pods", true),
            ("https://a/api/v1/namespaces/d/pods/p/log?follow=true", true),
            ("https://a/api/v1/pods?watch=false", false),
            ("https://a/api/v1/pods?watchers=true", false),
            ("https://a/api/v1/pods", false),
            ("https://a/api/v1/namespaces/d/pods/p/log", false),
        ] {
            assert_eq!(is_streaming(&uri.parse().unwrap()), streaming, "{uri}");
        }
    }

    #[test]
    fn a_gzip_response_is_relabelled_plain_and_others_are_left_alone() {
        let resp = |encoding: Option<&'static str>| {
            let mut r = Response::new(
                http_body_util::Empty::new()
                    .map_err(|n: std::convert::Infallible| match n {})
                    .boxed(),
            );
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
            if let Some(e) = encoding {
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
            }
            r
        };
        let d = decoded(resp(Some("gzip")));
        assert!(d.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(d.headers().get(header::CONTENT_LENGTH).is_none());
        let d = decoded(resp(Some("br")));
        assert_eq!(d.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(d.headers()[header::CONTENT_LENGTH], "10");
        assert_eq!(decoded(resp(None)).headers()[header::CONTENT_LENGTH], "10");
    }
}
