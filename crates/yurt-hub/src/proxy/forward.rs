//! Forwarding to an API server: the request as it goes upstream (hop-by-hop headers and
//! the client's encodings dropped, the node's or the caller's client), what a failure
//! turns into (the cache for reads, a 503 for writes), and what happens to the answer
//! (teed into the cache, filtered, streamed).
//!
//! The API servers are reached through [`Upstream`] and [`Server`]: the hub's
//! [`Balancer`] over its [`Backend`]s on the listeners, a fake in tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::bodies::collect;
use super::{Ctx, Hub, Origin, RequestBody, header_str, offline, watch};
use crate::body::{self, ResponseBody};
use crate::codec::{self, Format};
use crate::filter::Filters;
use crate::health::Health;
use crate::identity::Caller;
use crate::request::{RequestInfo, ResourceRequest, Verb};
use crate::status::StatusError;
use crate::upstream::{Backend, Balancer, uri_on};

/// Which of a server's clients carries a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    /// HTTP/2, authenticated as the node.
    Node,
    /// HTTP/2, the caller's own credentials.
    Bearer,
    /// HTTP/1.1 as the node (upgrades).
    NodeUpgrade,
    /// HTTP/1.1 with the caller's credentials (upgrades).
    BearerUpgrade,
}

impl ClientClass {
    /// The class for a request from `origin` with these headers: a pod's request, or
    /// one that brings its own credentials, never goes as the node.
    pub fn of(origin: Origin, headers: &HeaderMap, upgrade: bool) -> Self {
        let bearer = origin == Origin::Pod || headers.contains_key(header::AUTHORIZATION);
        match (bearer, upgrade) {
            (false, false) => Self::Node,
            (true, false) => Self::Bearer,
            (false, true) => Self::NodeUpgrade,
            (true, true) => Self::BearerUpgrade,
        }
    }
}

/// One API server as the request path uses it.
pub trait Server<B>: Send + Sync + 'static {
    /// Its index in [`Health`].
    fn index(&self) -> usize;
    /// Its URL.
    fn url(&self) -> &http::Uri;
    /// A typed client as the node, for the hub's own calls, if there is one.
    fn kube(&self) -> Option<&kube::Client>;
    /// Sends `req` (absolute URI on [`Server::url`]) with the client of `class`.
    fn send(&self, class: ClientClass, req: Request<B>) -> SendFuture;
}

/// A request on its way to a server. Boxed and `'static` (it owns what it needs), so
/// the hub's generic request path stays `Send` for every caller.
pub type SendFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, UpstreamFailure>> + Send>>;

/// The API servers.
pub trait Upstream<B>: Send + Sync {
    /// A server.
    type Server: Server<B>;
    /// A healthy server, if any (none: the hub is offline).
    fn pick(&self, health: &Health) -> Option<Self::Server>;
}

impl Upstream<Incoming> for Balancer {
    type Server = Arc<Backend>;

    fn pick(&self, health: &Health) -> Option<Arc<Backend>> {
        Balancer::pick(self, health)
    }
}

impl Server<Incoming> for Arc<Backend> {
    fn index(&self) -> usize {
        self.index
    }

    fn url(&self) -> &http::Uri {
        &self.url
    }

    fn kube(&self) -> Option<&kube::Client> {
        Some(&self.kube)
    }

    fn send(&self, class: ClientClass, req: Request<Incoming>) -> SendFuture {
        let client = match class {
            ClientClass::Node => &self.node,
            ClientClass::Bearer => &self.bearer,
            ClientClass::NodeUpgrade => &self.node_h1,
            ClientClass::BearerUpgrade => &self.bearer_h1,
        };
        let sent = client.request(req);
        Box::pin(async move {
            sent.await
                .map(|r| r.map(|b| b.map_err(Into::into).boxed()))
                .map_err(UpstreamFailure::of)
        })
    }
}

/// Why an upstream request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The error and its causes.
    pub message: String,
    /// The server could not be reached at all (no connection), as opposed to a failure
    /// or a slow answer on a live connection.
    pub unreachable: bool,
}

impl UpstreamFailure {
    /// The failure of a client request.
    pub fn of(e: hyper_util::client::legacy::Error) -> Self {
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
    pub fn report(&self, health: &Health, server_index: usize) {
        if self.unreachable {
            health.transport_failed(server_index);
        } else {
            health.request_failed();
        }
    }

    /// The answer when nothing local can stand in.
    pub fn status(&self) -> StatusError {
        StatusError::service_unavailable(format!("the API server is unreachable: {}", self.message))
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

/// Removes the headers that belong to one hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// `req` as it goes to the server at `url`, and the client class that carries it.
///
/// # Errors
/// A request URI that cannot be put on `url` (400).
pub fn upstream_request<B>(
    req: Request<B>,
    url: &http::Uri,
    origin: Origin,
) -> Result<(Request<B>, ClientClass), StatusError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = uri_on(url, path_and_query) else {
        return Err(StatusError::bad_request("invalid request URI"));
    };
    let class = ClientClass::of(origin, &parts.headers, false);
    strip_hop_by_hop(&mut parts.headers);
    // Compression buys nothing on the node-local hop and would hide bodies from the cache.
    parts.headers.remove(header::ACCEPT_ENCODING);
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    Ok((Request::from_parts(parts, body), class))
}

/// The verb a request counts as (metrics, timeouts, fallbacks).
pub fn verb_of(info: &RequestInfo, method: &http::Method) -> Verb {
    match info {
        RequestInfo::Resource(r) => r.verb,
        RequestInfo::NonResource { .. } if method == http::Method::GET => Verb::Get,
        RequestInfo::NonResource { .. } => Verb::Other,
    }
}

/// Whether a request that got no answer upstream is answered from the cache (reads and
/// watches) rather than refused.
pub fn falls_back_to_cache(info: &RequestInfo, method: &http::Method) -> bool {
    match info {
        RequestInfo::Resource(r) => matches!(r.verb, Verb::Get | Verb::List | Verb::Watch),
        RequestInfo::NonResource { .. } => method == http::Method::GET,
    }
}

/// Sends a request to `server` and handles the answer; with no answer, falls back to
/// the cache or refuses.
pub async fn forward<B: RequestBody, S: Server<B>>(
    hub: &Arc<Hub>,
    server: &S,
    ctx: &Ctx,
    req: Request<B>,
) -> Response<ResponseBody> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (req, class) = match upstream_request(req, server.url(), ctx.origin) {
        Ok(r) => r,
        Err(e) => return e.into_response(&ctx.accept),
    };
    let verb = verb_of(&ctx.info, &method);
    let reads = matches!(verb, Verb::Get | Verb::List);
    let fut = server.send(class, req);
    let result = if reads {
        match tokio::time::timeout(hub.config.upstream.read_timeout, fut).await {
            Ok(r) => r,
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
        fut.await
    };
    let resp = match result {
        Ok(r) => r,
        Err(failure) => {
            let e = &failure.message;
            if failure.unreachable {
                tracing::warn!(server = %server.url(), path = %path_and_query, error = %e, "upstream unreachable; server marked unhealthy");
            } else {
                tracing::warn!(server = %server.url(), path = %path_and_query, error = %e, "upstream request failed; probing the server now");
            }
            failure.report(&hub.health, server.index());
            if falls_back_to_cache(&ctx.info, &method) {
                return offline::answer::<B>(hub, ctx, None).await;
            }
            hub.metrics.request("error", verb.as_str());
            return failure.status().into_response(&ctx.accept);
        }
    };
    hub.metrics.request("upstream", verb.as_str());
    respond(hub, ctx, &method, resp).await
}

/// What the hub does with a server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// Passed through as it streams.
    PassThrough,
    /// A watch: streamed through the cache (if `cache_as`) and the filters.
    Watch {
        /// The cache owner its events are stored under.
        cache_as: Option<String>,
        /// Whether filters rewrite its events.
        filter: bool,
    },
    /// Read whole, cached (if `cache_as`) and filtered.
    Buffer {
        /// The cache owner it is stored under.
        cache_as: Option<String>,
        /// Whether filters rewrite it.
        filter: bool,
    },
    /// A non-resource read of a cache agent (`/version`): read whole and cached.
    CacheNonResource,
}

/// Decides what happens to an answer with `status` and `format` to the request `ctx`.
pub fn handling(
    hub: &Hub,
    ctx: &Ctx,
    method: &http::Method,
    status: StatusCode,
    format: Option<Format>,
) -> Handling {
    let success = status.is_success();
    match (&ctx.info, format) {
        (RequestInfo::Resource(r), Some(format)) if success => {
            let owner = ctx.cache_owner(format);
            let component = ctx.component.as_deref().unwrap_or_default();
            let cache_as = owner.filter(|_| hub.cache.cacheable(ctx.component.as_deref(), r));
            let filter = hub.filters.applies(component, &r.gvr)
                && matches!(r.verb, Verb::Get | Verb::List | Verb::Watch);
            match (r.verb == Verb::Watch, cache_as.is_some() || filter) {
                (_, false) => Handling::PassThrough,
                (true, true) => Handling::Watch { cache_as, filter },
                (false, true) => Handling::Buffer { cache_as, filter },
            }
        }
        (RequestInfo::NonResource { .. }, _)
            if success
                && ctx.origin == Origin::Local
                && method == http::Method::GET
                && ctx
                    .component
                    .as_deref()
                    .is_some_and(|c| hub.cache.agents().contains(c)) =>
        {
            Handling::CacheNonResource
        }
        _ => Handling::PassThrough,
    }
}

/// Handles a server's answer: tees it into the cache, filters it, or passes it on.
async fn respond(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    method: &http::Method,
    resp: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let format =
        header_str(&rparts.headers, header::CONTENT_TYPE).and_then(Format::of_content_type);
    if rparts.status == StatusCode::UNAUTHORIZED
        && let Caller::ServiceAccount(sa, hash) = &ctx.caller
    {
        tracing::info!(user = %sa.user(), "the API server refused a token the hub verified; refused offline from now on");
        hub.verifier.revoke(hash);
    }
    let component = ctx.component.clone().unwrap_or_default();
    match (handling(hub, ctx, method, rparts.status, format), &ctx.info) {
        (Handling::Watch { cache_as, filter }, RequestInfo::Resource(r)) => {
            rparts.headers.remove(header::CONTENT_LENGTH);
            let format = format.unwrap_or(Format::Json);
            let body = watch::pump(
                hub.clone(),
                cache_as,
                component,
                r.clone(),
                format,
                filter,
                rbody,
            );
            Response::from_parts(rparts, body)
        }
        (Handling::Buffer { cache_as, filter }, RequestInfo::Resource(r)) => {
            let format = format.unwrap_or(Format::Json);
            let bytes =
                match collect(plain_errors(rbody), hub.config.limits.max_buffered_response).await {
                    Ok(b) => b,
                    Err(e) => {
                        return StatusError::service_unavailable(format!(
                            "reading the API server's response: {e}"
                        ))
                        .into_response(&ctx.accept);
                    }
                };
            if let Some(owner) = cache_as {
                let (hub2, r2, b2, paginated) =
                    (hub.clone(), r.clone(), bytes.clone(), ctx.paginated);
                tokio::task::spawn_blocking(move || {
                    hub2.cache.ingest(&owner, &r2, format, &b2, paginated)
                });
            }
            let out = if filter {
                filter_body(&hub.filters, &component, r, format, bytes)
            } else {
                bytes
            };
            rparts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            Response::from_parts(rparts, body::full(out))
        }
        (Handling::CacheNonResource, RequestInfo::NonResource { path }) => {
            let Ok(bytes) =
                collect(plain_errors(rbody), hub.config.limits.max_buffered_response).await
            else {
                return StatusError::service_unavailable(
                    "reading the API server's response failed",
                )
                .into_response(&ctx.accept);
            };
            let ct = header_str(&rparts.headers, header::CONTENT_TYPE)
                .unwrap_or("application/json")
                .to_owned();
            let (hub2, p, b) = (hub.clone(), path.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || hub2.cache.ingest_non_resource(&p, &ct, b));
            Response::from_parts(rparts, body::full(bytes))
        }
        _ => Response::from_parts(rparts, rbody),
    }
}

/// `body` with its errors as `io::Error`s. A boxed `dyn Error` carries a lifetime
/// bound, and rustc cannot prove the generic request path `Send` for every lifetime
/// once such a box is converted inside it (rust-lang/rust#110338); a plain error type
/// has none.
fn plain_errors(
    body: ResponseBody,
) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> {
    body.map_err(std::io::Error::other)
}

/// Applies the filters to a complete GET or LIST response.
pub fn filter_body(
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
                    None => StatusError::not_found("filtered out").encode(format),
                }
            }
            _ => bytes,
        },
    }
}
