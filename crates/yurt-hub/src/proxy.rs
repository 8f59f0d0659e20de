//! The request path: every request from kubelet, kube-proxy or a pod goes to a healthy
//! API server (responses to cache agents are teed into the cache, filtered responses are
//! rewritten), or, when no server is healthy or the chosen one fails, is answered
//! locally per verb (OpenYurt's offline semantics):
//!
//! | verb | offline |
//! |---|---|
//! | get, list | from the cache (a never-listed shape is 404; an empty kubelet pod list is 404) |
//! | watch | held open with no events; ends when the cloud is back (clients then re-watch) |
//! | create | echoed back (201) |
//! | update, patch | the cached object |
//! | delete | refused (403), so the client retries later |
//!
//! kubelet's node Lease is always answered locally; the health checker renews it upstream.
//!
//! Who is answered from the cache (ADR 004): on the node-local port, node components
//! read what they read before (their cache is picked by User-Agent, as in OpenYurt). On
//! the pod-facing port, a request is answered locally only for a caller whose token the
//! hub verified, and only from what that service account read online; a request with no
//! token or an unproven one gets 401, a proven one asking for what it never read 403.
//! The lease shortcut and every node-identity path answer on the node-local port only.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::body::{self, ResponseBody};
use crate::cache::Reader;
use crate::cache::{self, Cache, status};
use crate::codec::{self, Format, WatchDecoder};
use crate::config::Config;
use crate::filter::Filters;
use crate::health::{Health, LEASE_NAMESPACE};
use crate::identity::{Caller, Verifier};
use crate::metrics::HubMetrics;
use crate::request::{RequestInfo, ResourceRequest, Verb, component};
use crate::upstream::{Backend, Balancer, uri_on};

/// Everything a request needs.
pub struct Hub {
    /// Settings.
    pub config: Config,
    /// The cache.
    pub cache: Cache,
    /// Cloud health.
    pub health: Arc<Health>,
    /// API servers.
    pub balancer: Balancer,
    /// Response filters.
    pub filters: Filters,
    /// Metrics.
    pub metrics: HubMetrics,
    /// Stops held watches on shutdown.
    pub shutdown: CancellationToken,
    /// Keeps the node's Autonomy condition current.
    pub autonomy: crate::autonomy::AutonomyReporter,
    /// Verifies pods' service-account tokens.
    pub verifier: Arc<Verifier>,
    /// Permits for short requests in flight ([`crate::config::Limits::max_in_flight`]).
    pub short_requests: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The plain-HTTP port for node components: forwarded as the node.
    Local,
    /// The pod-facing HTTPS port: forwarded with the caller's own credentials only
    /// (a request without a token reaches the API server as anonymous, never as the node).
    Pod,
}

/// Per-request facts the handlers share.
struct Ctx {
    origin: Origin,
    caller: Caller,
    component: Option<String>,
    accept: Vec<Format>,
    info: RequestInfo,
    paginated: bool,
}

impl Ctx {
    /// Under which owner this caller's responses are cached, if they may be: a node
    /// component by its User-Agent, a pod only as the service account it proved.
    fn cache_owner(&self, format: Format) -> Option<String> {
        match &self.caller {
            Caller::Node => self.component.clone(),
            Caller::ServiceAccount(sa, _) => Some(cache::format_owner(&sa.cache_owner(), format)),
            Caller::Anonymous | Caller::Unproven(..) => None,
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Handles one request, in a span naming it and who answered, and times it.
pub async fn handle(
    hub: Arc<Hub>,
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "request",
        http.method = %req.method(),
        http.path = %req.uri().path(),
        origin = ?origin,
        served_by = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = handle_inner(hub.clone(), origin, req)
        .instrument(span.clone())
        .await;
    if let Ok(resp) = &response {
        let served_by = if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            "refused"
        } else if resp.headers().contains_key(SOURCE_HEADER) {
            "cache"
        } else {
            "upstream"
        };
        span.record("served_by", served_by);
        hub.metrics
            .request_duration
            .observe(served_by, started.elapsed().as_secs_f64());
    }
    response
}

async fn handle_inner(
    hub: Arc<Hub>,
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // Long-running requests (watches, upgrades, log follows) hold no permit, as in the
    // API server's max-in-flight filter: they would starve short ones.
    let _permit = if is_long_running(&req) {
        None
    } else {
        match hub.short_requests.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                hub.metrics.request("refused", "too_many");
                let accept = Format::accepted(header_str(req.headers(), header::ACCEPT));
                let mut resp = status(
                    &accept,
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "too many requests in flight at the hub; retry shortly",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(resp);
            }
        }
    };
    hub.metrics.in_flight.inc();
    let response = route(&hub, origin, req).await;
    hub.metrics.in_flight.dec();
    Ok(response)
}

/// Whether a request may stay open for long: a watch, an upgrade, a followed log.
fn is_long_running(req: &Request<Incoming>) -> bool {
    let query = req.uri().query().unwrap_or("");
    let flag = |key: &str| {
        query
            .split('&')
            .any(|kv| kv == format!("{key}=true") || kv == format!("{key}=1"))
    };
    is_upgrade(req.headers())
        || flag("watch")
        || flag("follow")
        || req.uri().path().contains("/watch/")
}

async fn route(hub: &Arc<Hub>, origin: Origin, req: Request<Incoming>) -> Response<ResponseBody> {
    let query = req.uri().query().unwrap_or("");
    let caller = match origin {
        Origin::Local => Caller::Node,
        Origin::Pod => hub
            .verifier
            .caller(header_str(req.headers(), header::AUTHORIZATION), now_unix()),
    };
    let ctx = Ctx {
        origin,
        caller,
        component: component(header_str(req.headers(), header::USER_AGENT)),
        accept: Format::accepted(header_str(req.headers(), header::ACCEPT)),
        info: RequestInfo::parse(req.method(), req.uri().path(), Some(query)),
        paginated: query.split('&').any(|kv| kv.starts_with("continue=")),
    };
    let node_local = origin == Origin::Local;
    if let RequestInfo::Resource(r) = &ctx.info
        && node_local
        && ctx.component.as_deref() == Some("kubelet")
        && is_own_lease(r, hub.config.node_name.as_str())
    {
        return kubelet_lease(hub, &ctx, r.clone(), req).await;
    }
    let own_node_get = matches!(&ctx.info, RequestInfo::Resource(r)
        if node_local
            && ctx.component.as_deref() == Some("kubelet")
            && r.verb == Verb::Get
            && r.gvr.group.is_empty()
            && r.gvr.resource == "nodes"
            && r.name.as_deref() == Some(hub.config.node_name.as_str()));
    match hub.balancer.pick(&hub.health) {
        Some(backend) if is_upgrade(req.headers()) => {
            forward_upgrade(hub, &backend, origin, req).await
        }
        Some(backend) => {
            let resp = forward(hub, &backend, &ctx, req).await;
            if own_node_get && resp.status().is_success() {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let node = hub.config.node_name.to_string();
                    if let Err(e) = hub
                        .autonomy
                        .check(
                            &backend.kube,
                            &node,
                            &hub.metrics,
                            hub.cache.store().writer_running(),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "Autonomy condition not updated");
                    }
                });
            }
            resp
        }
        None => local(hub, &ctx, Some(req)).await,
    }
}

fn is_own_lease(r: &ResourceRequest, node: &str) -> bool {
    r.gvr.group == "coordination.k8s.io"
        && r.gvr.resource == "leases"
        && r.namespace.as_deref() == Some(LEASE_NAMESPACE)
        && r.name.as_deref().is_none_or(|n| n == node)
}

// === forwarding ===

fn unavailable(accept: &[Format], message: &str) -> Response<ResponseBody> {
    status(
        accept,
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    )
}

/// Why an upstream request got no response.
struct UpstreamFailure {
    /// The error and its causes.
    message: String,
    /// The server could not be reached at all (no connection), as opposed to a failure
    /// or a slow answer on a live connection.
    unreachable: bool,
}

impl UpstreamFailure {
    fn of(e: crate::upstream::RequestError) -> Self {
        // The client's Display names only the kind ("SendRequest"): add the causes.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self {
            message,
            unreachable: e.is_connect(),
        }
    }

    /// Tells the health checker: an unreachable server is unhealthy at once; any other
    /// failure only makes it probe now.
    fn report(&self, hub: &Hub, backend_index: usize) {
        if self.unreachable {
            hub.health.transport_failed(backend_index);
        } else {
            hub.health.request_failed();
        }
    }
}

async fn forward(
    hub: &Arc<Hub>,
    backend: &Arc<Backend>,
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = uri_on(&backend.url, &path_and_query) else {
        return status(
            &ctx.accept,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid request URI",
        );
    };
    let bearer = ctx.origin == Origin::Pod || parts.headers.contains_key(header::AUTHORIZATION);
    strip_hop_by_hop(&mut parts.headers);
    // The client's own encodings never go upstream: the upstream layer asks for gzip
    // itself and decodes it, so the cache and the client get plain bodies.
    parts.headers.remove(header::ACCEPT_ENCODING);
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let method = parts.method.clone();
    let client = if bearer {
        &backend.bearer
    } else {
        &backend.node
    };
    let verb = match &ctx.info {
        RequestInfo::Resource(r) => r.verb,
        RequestInfo::NonResource { .. } if method == http::Method::GET => Verb::Get,
        RequestInfo::NonResource { .. } => Verb::Other,
    };
    let reads = matches!(verb, Verb::Get | Verb::List);
    let fut = client.request(Request::from_parts(parts, body));
    let result = if reads {
        match tokio::time::timeout(hub.config.upstream.read_timeout, fut).await {
            Ok(r) => r.map_err(UpstreamFailure::of),
            // Slow is not gone: answer this one from the cache, let the prober judge.
            Err(_) => Err(UpstreamFailure {
                message: format!(
                    "no response headers within {:?}",
                    hub.config.upstream.read_timeout
                ),
                unreachable: false,
            }),
        }
    } else {
        fut.await.map_err(UpstreamFailure::of)
    };
    let resp = match result {
        Ok(r) => r,
        Err(failure) => {
            let e = &failure.message;
            if failure.unreachable {
                tracing::warn!(server = %backend.url, path = %path_and_query, error = %e, "upstream unreachable; server marked unhealthy");
            } else {
                tracing::warn!(server = %backend.url, path = %path_and_query, error = %e, "upstream request failed; probing the server now");
            }
            failure.report(hub, backend.index);
            return match &ctx.info {
                RequestInfo::Resource(r)
                    if matches!(r.verb, Verb::Get | Verb::List | Verb::Watch) =>
                {
                    local(hub, ctx, None).await
                }
                RequestInfo::NonResource { .. } if method == http::Method::GET => {
                    local(hub, ctx, None).await
                }
                _ => {
                    hub.metrics.request("error", verb.as_str());
                    unavailable(&ctx.accept, &format!("the API server is unreachable: {e}"))
                }
            };
        }
    };
    hub.metrics.request("upstream", verb.as_str());
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let format =
        header_str(&rparts.headers, header::CONTENT_TYPE).and_then(Format::of_content_type);
    let success = rparts.status.is_success();
    if rparts.status == StatusCode::UNAUTHORIZED
        && let Caller::ServiceAccount(sa, hash) = &ctx.caller
    {
        tracing::info!(user = %sa.user(), "the API server refused a token the hub verified; refused offline from now on");
        hub.verifier.revoke(hash);
    }
    match (&ctx.info, format) {
        (RequestInfo::Resource(r), Some(format)) if success => {
            let owner = ctx.cache_owner(format);
            let component = ctx.component.clone().unwrap_or_default();
            let cache_it = owner.is_some() && hub.cache.cacheable(ctx.component.as_deref(), r);
            let owner = owner.unwrap_or_default();
            let filter_it = hub.filters.applies(&component, &r.gvr)
                && matches!(r.verb, Verb::Get | Verb::List | Verb::Watch);
            if r.verb == Verb::Watch && (cache_it || filter_it) {
                rparts.headers.remove(header::CONTENT_LENGTH);
                let body = pump_watch(
                    hub.clone(),
                    cache_it.then(|| owner.clone()),
                    component,
                    r.clone(),
                    format,
                    filter_it,
                    rbody,
                );
                return Response::from_parts(rparts, body);
            }
            if cache_it || filter_it {
                let bytes = match collect(rbody, hub.config.limits.max_buffered_response).await {
                    Ok(b) => b,
                    Err(e) => return read_failed(&ctx.accept, &e),
                };
                if cache_it {
                    let (hub2, r2, c2, b2, paginated) =
                        (hub.clone(), r.clone(), owner, bytes.clone(), ctx.paginated);
                    tokio::task::spawn_blocking(move || {
                        hub2.cache.ingest(&c2, &r2, format, &b2, paginated)
                    });
                }
                let out = if filter_it {
                    filter_body(&hub.filters, &component, r, format, bytes)
                } else {
                    bytes
                };
                rparts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                return Response::from_parts(rparts, body::full(out));
            }
            Response::from_parts(rparts, rbody.map_err(Into::into).boxed())
        }
        (RequestInfo::NonResource { path }, _)
            if success
                && ctx.origin == Origin::Local
                && method == http::Method::GET
                && ctx
                    .component
                    .as_deref()
                    .is_some_and(|c| hub.cache.agents().contains(c)) =>
        {
            let bytes = match collect(rbody, hub.config.limits.max_buffered_response).await {
                Ok(b) => b,
                Err(e) => return read_failed(&ctx.accept, &e),
            };
            let ct = header_str(&rparts.headers, header::CONTENT_TYPE)
                .unwrap_or("application/json")
                .to_owned();
            let (hub2, p, b) = (hub.clone(), path.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || hub2.cache.ingest_non_resource(&p, &ct, b));
            Response::from_parts(rparts, body::full(bytes))
        }
        _ => Response::from_parts(rparts, rbody.map_err(Into::into).boxed()),
    }
}

/// Why a body could not be read whole.
enum BodyError {
    /// Longer than the limit.
    TooLarge(usize),
    /// The connection failed.
    Read(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(limit) => write!(f, "the body is larger than {limit} bytes"),
            Self::Read(e) => f.write_str(e),
        }
    }
}

async fn collect<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<body::BodyError>,
{
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge(limit)
            } else {
                BodyError::Read(e.to_string())
            }
        })
}

/// An API server's response the hub could not read whole: too large to buffer (503), or
/// broken on the way (502: cut short, a corrupt gzip body).
fn read_failed(accept: &[Format], e: &BodyError) -> Response<ResponseBody> {
    let message = format!("reading the API server's response: {e}");
    match e {
        BodyError::TooLarge(_) => unavailable(accept, &message),
        BodyError::Read(_) => status(accept, StatusCode::BAD_GATEWAY, "BadGateway", &message),
    }
}

fn too_large(accept: &[Format], e: &BodyError) -> Response<ResponseBody> {
    status(
        accept,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &e.to_string(),
    )
}

/// Applies the filters to a complete GET or LIST response.
fn filter_body(
    filters: &Filters,
    component: &str,
    r: &ResourceRequest,
    format: Format,
    bytes: Bytes,
) -> Bytes {
    match r.verb {
        Verb::List => match codec::decode_list(format, &bytes) {
            Ok(list) => {
                let items: Vec<_> = list
                    .items
                    .into_iter()
                    .filter_map(|o| filters.apply(component, &r.gvr, o))
                    .collect();
                codec::encode_list(
                    format,
                    &list.api_version,
                    &list.kind,
                    &list.resource_version,
                    &items,
                )
            }
            Err(_) => bytes,
        },
        _ => match codec::decode_object(format, &bytes) {
            Ok(obj) if obj.kind != "Status" => {
                match filters.apply(component, &r.gvr, obj.clone()) {
                    Some(o) => codec::encode_object(&o),
                    None => codec::encode_status(format, 404, "NotFound", "filtered out"),
                }
            }
            _ => bytes,
        },
    }
}

/// Streams a watch to the client, teeing it into the cache and filtering its events.
/// `cache_as` names the cache owner the events are stored under, if they are cached.
fn pump_watch(
    hub: Arc<Hub>,
    cache_as: Option<String>,
    component: String,
    r: ResourceRequest,
    format: Format,
    filter_it: bool,
    mut upstream: crate::upstream::UpstreamBody,
) -> ResponseBody {
    let (tx, body) = body::channel(32);
    tokio::spawn(async move {
        let mut ingestor = cache_as
            .as_deref()
            .map(|owner| hub.cache.watch_ingestor(owner, &r, format));
        let mut decoder = filter_it.then(|| WatchDecoder::new(format));
        loop {
            let frame = tokio::select! {
                f = upstream.frame() => f,
                () = tx.closed() => break,
            };
            let chunk = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    // The connection died under the watch (a missed HTTP/2 ping, a reset):
                    // the prober decides now whether the server is gone.
                    tracing::debug!(error = %e, "upstream watch broke");
                    hub.health.request_failed();
                    break;
                }
                None => break,
            };
            if let Some(i) = ingestor.as_mut() {
                i.push(&chunk);
            }
            let out = match decoder.as_mut() {
                None => chunk,
                Some(d) => match d.push(&chunk) {
                    Ok(events) => {
                        let mut buf = Vec::new();
                        for (ev, wire) in events {
                            match hub.filters.apply(&component, &r.gvr, ev.object.clone()) {
                                Some(o) if o == ev.object => buf.extend_from_slice(&wire),
                                Some(o) => buf.extend_from_slice(&codec::encode_watch_event(
                                    format,
                                    &ev.event_type,
                                    &o,
                                )),
                                None => buf.extend_from_slice(&codec::encode_watch_event(
                                    format, "DELETED", &ev.object,
                                )),
                            }
                        }
                        Bytes::from(buf)
                    }
                    Err(_) => break,
                },
            };
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                break;
            }
        }
    });
    body
}

/// Forwards an upgrade (exec, attach, port-forward) and splices the two connections.
async fn forward_upgrade(
    hub: &Arc<Hub>,
    backend: &Arc<Backend>,
    origin: Origin,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let accept = Format::accepted(header_str(req.headers(), header::ACCEPT));
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = uri_on(&backend.url, &path_and_query) else {
        return status(
            &accept,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid request URI",
        );
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(header::HOST);
    let client = if origin == Origin::Pod || parts.headers.contains_key(header::AUTHORIZATION) {
        &backend.bearer_h1
    } else {
        &backend.node_h1
    };
    let mut resp = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            let failure = UpstreamFailure::of(e);
            failure.report(hub, backend.index);
            return unavailable(
                &accept,
                &format!("the API server is unreachable: {}", failure.message),
            );
        }
    };
    hub.metrics.request("upstream", "upgrade");
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, b) = resp.into_parts();
        return Response::from_parts(parts, b.map_err(Into::into).boxed());
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, body::empty())
}

// === local answers ===

async fn blocking(
    f: impl FnOnce() -> Response<ResponseBody> + Send + 'static,
) -> Response<ResponseBody> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        status(
            &[Format::Json],
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        )
    })
}

/// Response header naming who answered when it was not the API server.
pub const SOURCE_HEADER: &str = "x-yurthub-source";

/// Most of a request body read before a local answer that does not use it.
const DRAIN_MAX: usize = 1024 * 1024;

/// Reads and drops a request body: answering before the client has sent its body would
/// make HTTP/2 reset the stream, and a client then sees a stream error instead of the
/// answer. A body over [`DRAIN_MAX`] is left unread (the client gets the reset).
async fn drain(body: Incoming) {
    let mut body = http_body_util::Limited::new(body, DRAIN_MAX);
    while let Some(Ok(_)) = body.frame().await {}
}

/// Answers without the cloud. `req` is present when its body was not consumed yet.
async fn local(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    mut req: Option<Request<Incoming>>,
) -> Response<ResponseBody> {
    let not_get = req
        .as_ref()
        .is_some_and(|r| r.method() != http::Method::GET);
    let echoes = matches!(&ctx.info, RequestInfo::Resource(r) if r.verb == Verb::Create);
    if !echoes && let Some(r) = req.take() {
        drain(r.into_body()).await;
    }
    let mut resp = local_inner(hub, ctx, req, not_get).await;
    resp.headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static("cache"));
    resp
}

/// Whether a pod-port caller may be answered locally at all: only with a token the hub
/// verified (and, for a token bound to a pod, with that pod still on this node).
fn refuse_unproven(hub: &Hub, ctx: &Ctx) -> Option<Response<ResponseBody>> {
    let unauthorized = |why: &str| {
        Some(status(
            &ctx.accept,
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            &format!("the cloud is unreachable and {why}"),
        ))
    };
    match &ctx.caller {
        Caller::Node => None,
        Caller::Anonymous => unauthorized("the request carries no token"),
        Caller::Unproven(e, _) => unauthorized(&format!("the hub cannot verify its token: {e}")),
        Caller::ServiceAccount(sa, _) => match &sa.pod {
            Some(pod) if !hub.cache.holds_pod(&sa.namespace, &pod.name, &pod.uid) => {
                unauthorized(&format!(
                    "the token is bound to pod {}/{}, which is not on this node",
                    sa.namespace, pod.name
                ))
            }
            _ => None,
        },
    }
}

/// `req` is there only when its body is still to be used (an offline create's echo);
/// `not_get` says whether it was anything but a GET.
async fn local_inner(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    req: Option<Request<Incoming>>,
    not_get: bool,
) -> Response<ResponseBody> {
    if let Some(refused) = refuse_unproven(hub, ctx) {
        hub.metrics.request("refused", "any");
        return refused;
    }
    let r = match &ctx.info {
        RequestInfo::Resource(r) => r.clone(),
        RequestInfo::NonResource { path } => {
            if not_get {
                return unavailable(&ctx.accept, "the API server is unreachable");
            }
            hub.metrics.request("cache", "get");
            let (hub, path) = (hub.clone(), path.clone());
            return blocking(move || hub.cache.serve_non_resource(&path)).await;
        }
    };
    let component = ctx.component.clone().unwrap_or_default();
    let reader = match &ctx.caller {
        Caller::ServiceAccount(sa, _) => Reader {
            owner: sa.cache_owner(),
            component,
            proves_rights: true,
            per_format: true,
        },
        _ => Reader::component(&component),
    };
    hub.metrics.request("cache", r.verb.as_str());
    let accept = ctx.accept.clone();
    match r.verb {
        Verb::Get | Verb::Update | Verb::Patch => {
            let hub = hub.clone();
            blocking(move || hub.cache.serve_get(&reader, &r, &accept, &hub.filters)).await
        }
        Verb::List => {
            let hub = hub.clone();
            blocking(move || hub.cache.serve_list(&reader, &r, &accept, &hub.filters)).await
        }
        Verb::Watch => hold_watch(hub, &r, &accept),
        Verb::Create => match req {
            Some(req) => {
                echo(
                    req,
                    StatusCode::CREATED,
                    &accept,
                    hub.config.limits.max_request_body,
                )
                .await
            }
            None => unavailable(&accept, "the API server is unreachable"),
        },
        Verb::Delete | Verb::DeleteCollection => status(
            &accept,
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the cloud is unreachable: deletes are not supported by the hub's local cache; retry later",
        ),
        Verb::Other => unavailable(&accept, "the API server is unreachable"),
    }
}

/// A watch with no events that ends when the cloud is healthy again (the client then
/// re-watches upstream from its resourceVersion), when its timeout passes, or on shutdown.
fn hold_watch(hub: &Arc<Hub>, r: &ResourceRequest, accept: &[Format]) -> Response<ResponseBody> {
    let format = accept.first().copied().unwrap_or(Format::Json);
    let (tx, body) = body::channel(1);
    let mut online = hub.health.subscribe();
    let timeout = cache::offline_watch_timeout(r, hub.config.min_request_timeout);
    let shutdown = hub.shutdown.clone();
    tokio::spawn(async move {
        let until_online = async {
            while !*online.borrow_and_update() {
                if online.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = until_online => {}
            () = tokio::time::sleep(timeout) => {}
            () = shutdown.cancelled() => {}
            () = tx.closed() => {}
        }
        drop(tx);
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.watch_content_type()),
    );
    resp
}

async fn echo(
    req: Request<Incoming>,
    code: StatusCode,
    accept: &[Format],
    limit: usize,
) -> Response<ResponseBody> {
    let ct = req.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match collect(req.into_body(), limit).await {
        Ok(b) => b,
        Err(e @ BodyError::TooLarge(_)) => return too_large(accept, &e),
        Err(e) => return unavailable(accept, &format!("reading the request: {e}")),
    };
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = code;
    if let Some(ct) = ct {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// kubelet's own Lease: renewals are kept locally (the health checker renews the lease
/// upstream for it), reads come from that local copy.
async fn kubelet_lease(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    r: ResourceRequest,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    hub.health.kubelet_seen();
    match r.verb {
        Verb::Update => {
            let ct = header_str(req.headers(), header::CONTENT_TYPE)
                .unwrap_or(codec::JSON)
                .to_owned();
            let format = Format::of_content_type(&ct).unwrap_or(Format::Json);
            let bytes = match collect(req.into_body(), hub.config.limits.max_request_body).await {
                Ok(b) => b,
                Err(e @ BodyError::TooLarge(_)) => return too_large(&ctx.accept, &e),
                Err(e) => {
                    return status(
                        &ctx.accept,
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("reading the request: {e}"),
                    );
                }
            };
            match codec::decode_object(format, &bytes) {
                Ok(obj) => {
                    let key = crate::store::ObjectKey {
                        component: "kubelet".into(),
                        gvr: r.gvr.to_string(),
                        namespace: LEASE_NAMESPACE.into(),
                        name: obj.info.name.clone(),
                    };
                    let _ = hub.cache.store().upsert(key, obj);
                    let mut resp = Response::new(body::full(bytes));
                    if let Ok(v) = HeaderValue::from_str(&ct) {
                        resp.headers_mut().insert(header::CONTENT_TYPE, v);
                    }
                    resp
                }
                Err(e) => status(
                    &ctx.accept,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &e.to_string(),
                ),
            }
        }
        Verb::Get => {
            let key = crate::store::ObjectKey {
                component: "kubelet".into(),
                gvr: r.gvr.to_string(),
                namespace: LEASE_NAMESPACE.into(),
                name: r.name.clone().unwrap_or_default(),
            };
            let cached = {
                let hub = hub.clone();
                tokio::task::spawn_blocking(move || hub.cache.store().get(&key))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
            };
            match (cached, hub.balancer.pick(&hub.health)) {
                (Some(_), _) | (None, None) => local(hub, ctx, Some(req)).await,
                (None, Some(b)) => forward(hub, &b, ctx, req).await,
            }
        }
        _ => match hub.balancer.pick(&hub.health) {
            Some(b) => forward(hub, &b, ctx, req).await,
            None => local(hub, ctx, Some(req)).await,
        },
    }
}
