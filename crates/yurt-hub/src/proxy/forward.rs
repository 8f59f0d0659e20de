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

use super::bodies::{BodyError, collect};
use super::{Ctx, Hub, Origin, RequestBody, header_str, offline, shared_watch, watch};
use crate::body::{self, ResponseBody};
use crate::codec::{self, Format};
use crate::filter::Filters;
use crate::health::Health;
use crate::identity::Caller;
use crate::request::{RequestInfo, ResourceRequest, Verb};
use crate::status::{Reason, StatusError};
use crate::upstream::{Backend, Balancer, uri_with};

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
    /// Sends the hub's own requests as the node (a shared watch opening its upstream
    /// watch again), for as long as the holder keeps it. A server without one shares
    /// no watch.
    fn node_sender(&self) -> Option<NodeSender> {
        None
    }
}

/// Sends a request the hub makes itself, as the node.
pub type NodeSender = Arc<dyn Fn(Request<http_body_util::Full<Bytes>>) -> SendFuture + Send + Sync>;

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

impl<B: RequestBody> Upstream<B> for Balancer {
    type Server = Arc<Backend>;

    fn pick(&self, health: &Health) -> Option<Arc<Backend>> {
        Balancer::pick(self, health)
    }
}

impl<B: RequestBody> Server<B> for Arc<Backend> {
    fn index(&self) -> usize {
        self.index
    }

    fn url(&self) -> &http::Uri {
        &self.url
    }

    fn kube(&self) -> Option<&kube::Client> {
        Some(&self.kube)
    }

    fn send(&self, class: ClientClass, req: Request<B>) -> SendFuture {
        let backend = Arc::clone(self);
        Box::pin(async move {
            let sent = match class {
                ClientClass::Node => backend.node.request(req).await,
                ClientClass::Bearer => backend.bearer.request(req).await,
                ClientClass::NodeUpgrade => backend.node_h1.request(req).await,
                ClientClass::BearerUpgrade => backend.bearer_h1.request(req).await,
            };
            sent.map(|r| r.map(|b| b.map_err(Into::into).boxed()))
                .map_err(UpstreamFailure::of)
        })
    }

    fn node_sender(&self) -> Option<NodeSender> {
        let backend = Arc::clone(self);
        Some(Arc::new(move |req| {
            <Arc<Backend> as Server<http_body_util::Full<Bytes>>>::send(
                &backend,
                ClientClass::Node,
                req,
            )
        }))
    }
}

/// Why an upstream request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The error and its causes.
    pub message: String,
    /// The server could not be reached at all (no connection: refused, timed out, no
    /// route, or a certificate that fails verification), as opposed to a failure or a
    /// slow answer on a live connection. A connection cut during its TLS handshake
    /// counts as live: the TCP handshake proved the path, and on a lossy WAN a cut can
    /// land in a handshake as anywhere else; the prober judges it.
    pub unreachable: bool,
}

impl UpstreamFailure {
    /// The failure of a client request.
    pub fn of(e: crate::upstream::RequestError) -> Self {
        Self {
            unreachable: e.is_connect() && !super::handshake::cut_during_handshake(&e),
            message: crate::upstream::chain(&e),
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

/// Header names, not strings: removing by a string parses it again on every request.
const HOP_BY_HOP: [header::HeaderName; 9] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// Removes the headers that belong to one hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
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
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let Ok(uri) = uri_with(url, path_and_query) else {
        return Err(StatusError::bad_request("invalid request URI"));
    };
    let class = ClientClass::of(origin, &parts.headers, false);
    strip_hop_by_hop(&mut parts.headers);
    // The client's own encodings never go upstream: the upstream layer asks for gzip
    // itself and decodes it, so the cache and the client get plain bodies.
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
    let shared = match shared_watch::plan(ctx, req.headers(), req.uri()) {
        Some(Ok(plan)) => {
            let opener = server.node_sender().map(|send| shared_watch::Opener {
                send,
                url: server.url().clone(),
                index: server.index(),
            });
            // Boxed, like the offline answer below: most requests are not shared watches
            // and should not carry this future's size ([`super::routing::dispatch`]).
            match Box::pin(shared_watch::serve(hub, opener, ctx, plan)).await {
                shared_watch::Outcome::Served(resp) => {
                    hub.metrics.request("upstream", Verb::Watch.as_str());
                    return resp;
                }
                shared_watch::Outcome::Answer(answer) => Some(answer),
                shared_watch::Outcome::Fallback(reason) => {
                    hub.metrics.shared_watch_fallback(reason);
                    None
                }
            }
        }
        Some(Err(reason)) => {
            hub.metrics.shared_watch_fallback(reason);
            None
        }
        None => None,
    };
    // Kept for the log line of a failure (a reference-counted clone, no copy).
    let path_and_query = req.uri().path_and_query().cloned();
    let (req, class) = match upstream_request(req, server.url(), ctx.origin) {
        Ok(r) => r,
        Err(e) => return e.into_response(&ctx.accept),
    };
    let verb = verb_of(&ctx.info, &method);
    let reads = matches!(verb, Verb::Get | Verb::List);
    let result = if let Some(answer) = shared {
        answer
    } else if reads {
        let fut = server.send(class, req);
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
        server.send(class, req).await
    };
    let resp = match result {
        Ok(r) => r,
        Err(failure) => {
            let e = &failure.message;
            if failure.unreachable {
                tracing::warn!(server = %server.url(), path = path_and_query.as_ref().map_or("/", |p| p.as_str()), error = %e, "upstream unreachable; server marked unhealthy");
            } else {
                tracing::warn!(server = %server.url(), path = path_and_query.as_ref().map_or("/", |p| p.as_str()), error = %e, "upstream request failed; probing the server now");
            }
            failure.report(&hub.health, server.index());
            if falls_back_to_cache(&ctx.info, &method) {
                return Box::pin(offline::answer::<B>(hub, ctx, None)).await;
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
            let component = ctx.component.as_deref().unwrap_or_default();
            let cache_as = if hub.cache.cacheable(ctx.component.as_deref(), r) {
                ctx.cache_owner(format)
            } else {
                None
            };
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
    let component = || ctx.component.clone().unwrap_or_default();
    match (handling(hub, ctx, method, rparts.status, format), &ctx.info) {
        (Handling::Watch { cache_as, filter }, RequestInfo::Resource(r)) => {
            rparts.headers.remove(header::CONTENT_LENGTH);
            let format = format.unwrap_or(Format::Json);
            let body = watch::pump(
                hub.clone(),
                cache_as,
                component(),
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
                    Err(e) => return read_failed(&e).into_response(&ctx.accept),
                };
            let out = if r.verb != Verb::List && bytes.len() <= DECODE_INLINE_LIMIT {
                buffered_object(hub, &component(), r, format, cache_as, filter, bytes)
            } else {
                if let Some(owner) = cache_as {
                    let (hub2, r2, b2, paginated) =
                        (hub.clone(), r.clone(), bytes.clone(), ctx.paginated);
                    tokio::task::spawn_blocking(move || {
                        hub2.cache.ingest(&owner, &r2, format, &b2, paginated)
                    });
                }
                if filter {
                    filter_body(&hub.filters, &component(), r, format, bytes)
                } else {
                    bytes
                }
            };
            rparts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            Response::from_parts(rparts, body::full(out))
        }
        (Handling::CacheNonResource, RequestInfo::NonResource { path }) => {
            let bytes =
                match collect(plain_errors(rbody), hub.config.limits.max_buffered_response).await {
                    Ok(b) => b,
                    Err(e) => return read_failed(&e).into_response(&ctx.accept),
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

/// The largest single-object answer decoded on the request's own task; a larger one
/// (a big Secret or ConfigMap) is decoded for the cache on a blocking thread, which
/// costs a thread hand-off per answer but keeps the runtime's workers free.
const DECODE_INLINE_LIMIT: usize = 64 * 1024;

/// A small single-object answer to cache or filter, decoded once for both: the cache
/// gets it on a task of its own (the answer never waits for the write queue), and the
/// client gets the server's own bytes unless a filter changed the object.
fn buffered_object(
    hub: &Arc<Hub>,
    component: &str,
    r: &ResourceRequest,
    format: Format,
    cache_as: Option<String>,
    filter: bool,
    bytes: Bytes,
) -> Bytes {
    let obj = match codec::decode_object(format, &bytes) {
        Ok(obj) => obj,
        Err(e) => {
            tracing::debug!(component, gvr = %r.gvr, error = %e, "response not decoded: passed on as it is, not cached");
            return bytes;
        }
    };
    if let Some(owner) = cache_as {
        let (hub, r, obj) = (hub.clone(), r.clone(), obj.clone());
        tokio::spawn(async move { hub.cache.ingest_object(&owner, &r, obj).await });
    }
    if filter {
        filter_object(&hub.filters, component, r, format, obj, bytes)
    } else {
        bytes
    }
}

/// The answer `bytes` (decoded: `obj`) as the filters leave it: the server's own bytes
/// when no filter changed the object (a Status is never filtered), a 404 Status when
/// one dropped it.
fn filter_object(
    filters: &Filters,
    component: &str,
    r: &ResourceRequest,
    format: Format,
    obj: codec::RawObject,
    bytes: Bytes,
) -> Bytes {
    if obj.kind == "Status" {
        return bytes;
    }
    let before = obj.data.clone();
    match filters.apply(component, &r.gvr, obj) {
        Some(o) if o.data.as_ptr() == before.as_ptr() && o.data.len() == before.len() => bytes,
        Some(o) => codec::encode_object(&o),
        None => StatusError::not_found("filtered out").encode(format),
    }
}

/// An API server's response the hub could not read whole: too large to buffer (503), or
/// broken on the way (502: cut short, a corrupt gzip body).
fn read_failed(e: &BodyError) -> StatusError {
    let message = format!("reading the API server's response: {e}");
    match e {
        BodyError::TooLarge(_) => StatusError::service_unavailable(message),
        BodyError::Read(_) => StatusError::new(Reason::BadGateway, message),
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
            Ok(obj) => filter_object(filters, component, r, format, obj, bytes),
            Err(_) => bytes,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::proxy::SOURCE_HEADER;
    use crate::proxy::fake::{
        self, DropHidden, FakeServer, FakeUpstream, KUBELET, answer, json, pod, pod_list, request,
        send,
    };

    const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-a1";

    fn names(list: &serde_json::Value) -> Vec<&str> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_upstream_request_loses_hop_by_hop_headers_and_encodings() {
        let url: http::Uri = "https://api.test:6443".parse().unwrap();
        let req = request(
            "GET",
            PODS,
            &[
                KUBELET,
                ("connection", "keep-alive"),
                ("te", "trailers"),
                ("host", "127.0.0.1:10261"),
                ("accept-encoding", "gzip"),
                ("accept", "application/json"),
            ],
            b"",
        );
        let (req, class) = upstream_request(req, &url, Origin::Local).unwrap();
        assert_eq!(class, ClientClass::Node);
        assert_eq!(
            req.uri().to_string(),
            format!("https://api.test:6443{PODS}")
        );
        let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["user-agent", "accept"]);
        let with_token = request("GET", "/api", &[("authorization", "Bearer t")], b"");
        assert_eq!(
            upstream_request(with_token, &url, Origin::Local).unwrap().1,
            ClientClass::Bearer
        );
        let pod = request("GET", "/api", &[], b"");
        assert_eq!(
            upstream_request(pod, &url, Origin::Pod).unwrap().1,
            ClientClass::Bearer,
            "a pod never goes as the node, token or not"
        );
    }

    #[test]
    fn reads_fall_back_to_the_cache_and_writes_do_not() {
        let parse = |m: &str, p: &str| {
            let m: http::Method = m.parse().unwrap();
            let (path, query) = p.split_once('?').map_or((p, None), |(a, b)| (a, Some(b)));
            (RequestInfo::parse(&m, path, query), m)
        };
        for (m, p, cache) in [
            ("GET", "/api/v1/pods", true),
            ("GET", "/api/v1/namespaces/d/pods/p", true),
            ("GET", "/api/v1/pods?watch=1", true),
            ("GET", "/version", true),
            ("POST", "/api/v1/namespaces/d/pods", false),
            ("PUT", "/api/v1/namespaces/d/pods/p", false),
            ("DELETE", "/api/v1/namespaces/d/pods/p", false),
            ("POST", "/version", false),
        ] {
            let (info, method) = parse(m, p);
            assert_eq!(falls_back_to_cache(&info, &method), cache, "{m} {p}");
        }
    }

    #[tokio::test]
    async fn a_kubelet_list_is_passed_on_and_cached_for_offline_reads() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server =
            FakeServer::new(|_| Ok(answer(200, "application/json", pod_list(&["a", "b"]))));
        let online = FakeUpstream(Some(server.clone()));
        let resp = send(
            &hub,
            &online,
            Origin::Local,
            request("GET", PODS, &[KUBELET], b""),
        )
        .await;
        assert!(resp.headers().get(SOURCE_HEADER).is_none());
        let (code, list) = json(resp).await;
        assert_eq!((code, names(&list)), (200, vec!["a", "b"]));
        let seen = server.requests();
        assert_eq!((seen.len(), seen[0].class), (1, ClientClass::Node));
        assert_eq!(
            seen[0].parts.uri.to_string(),
            format!("https://api.test:6443{PODS}")
        );

        // The list lands in the cache on the writer thread: read until it is there.
        let offline = FakeUpstream(None);
        let deadline = tokio::time::Instant::now() + fake::WAIT;
        loop {
            let (code, list) = json(
                send(
                    &hub,
                    &offline,
                    Origin::Local,
                    request("GET", PODS, &[KUBELET], b""),
                )
                .await,
            )
            .await;
            if code == 200 {
                assert_eq!(names(&list), ["a", "b"]);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the list is never served offline"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_write_goes_upstream_with_its_body_and_the_answer_comes_back_as_it_is() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server = FakeServer::new(|seen| Ok(answer(201, "application/json", seen.body.clone())));
        let online = FakeUpstream(Some(server.clone()));
        let body = serde_json::to_vec(&pod("p", "")).unwrap();
        let create = request("POST", "/api/v1/namespaces/default/pods", &[KUBELET], &body);
        let resp = send(&hub, &online, Origin::Local, create).await;
        assert!(resp.headers().get(SOURCE_HEADER).is_none());
        let (code, echoed) = json(resp).await;
        assert_eq!((code, echoed), (201, pod("p", "")));
        assert_eq!(server.requests()[0].body, body);
    }

    #[tokio::test]
    async fn filters_rewrite_lists_and_objects_on_the_way() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::new(vec![Box::new(DropHidden)]));
        let server = FakeServer::new(|seen| {
            let body = if seen.parts.uri.path().ends_with("/hidden") {
                serde_json::to_vec(&pod("hidden", "3")).unwrap()
            } else {
                pod_list(&["a", "hidden", "b"])
            };
            Ok(answer(200, "application/json", body))
        });
        let online = FakeUpstream(Some(server));
        let resp = send(
            &hub,
            &online,
            Origin::Local,
            request("GET", PODS, &[KUBELET], b""),
        )
        .await;
        let length: usize = resp.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (code, list) = json(resp).await;
        assert_eq!((code, names(&list)), (200, vec!["a", "b"]));
        assert_eq!(length, serde_json::to_vec(&list).unwrap().len());
        let get = request(
            "GET",
            "/api/v1/namespaces/default/pods/hidden",
            &[KUBELET],
            b"",
        );
        let (code, status) = json(send(&hub, &online, Origin::Local, get).await).await;
        assert_eq!(code, 200, "the API server's code stays");
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("NotFound"))
        );
    }

    /// Reads `path` as kubelet from the cache until it is there (it lands on the writer
    /// thread after the answer).
    async fn served_offline(hub: &Arc<Hub>, path: &str) -> serde_json::Value {
        let offline = FakeUpstream(None);
        let deadline = tokio::time::Instant::now() + fake::WAIT;
        loop {
            let get = request("GET", path, &[KUBELET], b"");
            let (code, obj) = json(send(hub, &offline, Origin::Local, get).await).await;
            if code == 200 {
                return obj;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} is never served offline"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_object_no_filter_changes_comes_back_byte_for_byte_and_is_cached() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::new(vec![Box::new(DropHidden)]));
        // Spacing and key order no encoder of ours would produce, so a re-encoding shows.
        let small = br#"{ "kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "4", "namespace": "default", "name": "small"}, "spec": {"nodeName": "edge-a1"} }
"#.to_vec();
        // Above the size decoded on the request's task: cached from a blocking thread.
        let big = format!(
            r#"{{ "kind": "Pod", "apiVersion": "v1", "metadata": {{"name": "big", "namespace": "default", "resourceVersion": "5", "annotations": {{"a": "{}"}}}} }}"#,
            "x".repeat(DECODE_INLINE_LIMIT)
        )
        .into_bytes();
        let answers = [("small", small.clone()), ("big", big.clone())];
        let server = FakeServer::new(move |seen| {
            let name = seen.parts.uri.path().rsplit('/').next().unwrap_or_default();
            let body = answers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.clone());
            Ok(answer(200, "application/json", body.unwrap_or_default()))
        });
        let online = FakeUpstream(Some(server));
        for (name, sent) in [("small", &small), ("big", &big)] {
            let path = format!("/api/v1/namespaces/default/pods/{name}");
            let resp = send(
                &hub,
                &online,
                Origin::Local,
                request("GET", &path, &[KUBELET], b""),
            )
            .await;
            assert_eq!(resp.status(), 200);
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], &sent[..], "{name}: the server's own bytes");
            let cached = served_offline(&hub, &path).await;
            assert_eq!(cached["metadata"]["name"], name);
            assert_eq!(
                cached["metadata"]["resourceVersion"],
                if name == "small" { "4" } else { "5" }
            );
        }
    }

    #[tokio::test]
    async fn a_failed_read_is_answered_from_the_cache_and_a_failed_write_is_a_503_status() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server = FakeServer::new(|_| {
            Err(UpstreamFailure {
                message: "stream reset".into(),
                unreachable: false,
            })
        });
        let online = FakeUpstream(Some(server));
        let read = send(
            &hub,
            &online,
            Origin::Local,
            request("GET", "/api/v1/namespaces/d/pods/p", &[KUBELET], b""),
        )
        .await;
        assert_eq!(read.headers()[SOURCE_HEADER], "cache");
        assert_eq!(json(read).await.0, 404, "never cached");
        let write = send(
            &hub,
            &online,
            Origin::Local,
            request("POST", "/api/v1/namespaces/d/pods", &[KUBELET], b"{}"),
        )
        .await;
        assert!(write.headers().get(SOURCE_HEADER).is_none());
        let (code, status) = json(write).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (503, Some("ServiceUnavailable"))
        );
        assert_eq!(
            status["message"],
            "the API server is unreachable: stream reset"
        );
    }

    /// Lists `uri` offline until the cache answers it (the writer thread stores what
    /// was read online a little later), at most [`fake::WAIT`].
    async fn offline_list(hub: &Arc<Hub>, uri: &str, accept: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + fake::WAIT;
        loop {
            let req = request("GET", uri, &[HUB_SELF, ("accept", accept)], b"");
            let (code, list) = json(send(hub, &FakeUpstream(None), Origin::Local, req).await).await;
            if code == 200 {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{uri} is never served offline"
            );
            tokio::task::yield_now().await;
        }
    }

    const HUB_SELF: (&str, &str) = ("user-agent", "yurthub/0.1.0");
    const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    const OWN_NODE: &str = "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-a1";
    const POOL_NODES: &str = "/api/v1/nodes?labelSelector=apps.openyurt.io%2Fnodepool%3Dpool-a";

    #[tokio::test]
    async fn metadata_only_answers_are_cached_apart_from_whole_objects() {
        // The hub's view reads its own Node whole and its pool's Nodes (its own among
        // them) as metadata only, both as `yurthub`: offline, each gets back what it read.
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server = FakeServer::new(|seen| {
            let accept = seen.parts.headers[header::ACCEPT].to_str().unwrap();
            let body = if accept.contains("as=PartialObjectMetadataList") {
                let item = |name: &str| {
                    serde_json::json!({
                        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": name, "resourceVersion": "5",
                                     "labels": {"apps.openyurt.io/nodepool": "pool-a"}},
                    })
                };
                serde_json::json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": "9"},
                    "items": [item("edge-a1"), item("edge-a2")],
                })
            } else {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "NodeList",
                    "metadata": {"resourceVersion": "9"},
                    "items": [{"metadata": {"name": "edge-a1", "resourceVersion": "5",
                                            "labels": {"apps.openyurt.io/nodepool": "pool-a"}},
                               "spec": {"podCIDR": "10.244.1.0/24"}}],
                })
            };
            Ok(answer(
                200,
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            ))
        });
        let online = FakeUpstream(Some(server));
        let whole = request(
            "GET",
            OWN_NODE,
            &[HUB_SELF, ("accept", "application/json")],
            b"",
        );
        assert_eq!(
            json(send(&hub, &online, Origin::Local, whole).await)
                .await
                .0,
            200
        );
        offline_list(&hub, OWN_NODE, "application/json").await;
        let metadata = request(
            "GET",
            POOL_NODES,
            &[HUB_SELF, ("accept", METADATA_LIST)],
            b"",
        );
        assert_eq!(
            json(send(&hub, &online, Origin::Local, metadata).await)
                .await
                .0,
            200
        );

        let pool = offline_list(&hub, POOL_NODES, METADATA_LIST).await;
        assert_eq!(pool["kind"], "PartialObjectMetadataList");
        assert_eq!(names(&pool), ["edge-a1", "edge-a2"]);
        assert!(
            pool["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["kind"] == "PartialObjectMetadata")
        );
        let own = offline_list(&hub, OWN_NODE, "application/json").await;
        assert_eq!(
            (
                own["kind"].as_str(),
                own["items"][0]["spec"]["podCIDR"].as_str()
            ),
            (Some("NodeList"), Some("10.244.1.0/24")),
            "its own Node is still whole: {own}"
        );
    }

    #[tokio::test]
    async fn only_cache_agents_and_filtered_answers_are_buffered() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let ctx = |origin, ua: &str, path: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::USER_AGENT, ua.parse().unwrap());
            let caller = if origin == Origin::Local {
                Caller::Node
            } else {
                Caller::Anonymous
            };
            Ctx::new(
                origin,
                caller,
                &http::Method::GET,
                &path.parse().unwrap(),
                &headers,
            )
        };
        let get = http::Method::GET;
        let json = Some(Format::Json);
        let kubelet = ctx(Origin::Local, KUBELET.1, "/api/v1/pods");
        assert_eq!(
            handling(&hub, &kubelet, &get, StatusCode::OK, json),
            Handling::Buffer {
                cache_as: Some("kubelet".into()),
                filter: false
            }
        );
        assert_eq!(
            handling(&hub, &kubelet, &get, StatusCode::FORBIDDEN, json),
            Handling::PassThrough
        );
        assert_eq!(
            handling(&hub, &kubelet, &get, StatusCode::OK, None),
            Handling::PassThrough
        );
        let watch = ctx(Origin::Local, KUBELET.1, "/api/v1/pods?watch=true");
        assert_eq!(
            handling(&hub, &watch, &get, StatusCode::OK, json),
            Handling::Watch {
                cache_as: Some("kubelet".into()),
                filter: false
            }
        );
        let kubectl = ctx(Origin::Local, "kubectl/v1.20.2", "/api/v1/pods");
        assert_eq!(
            handling(&hub, &kubectl, &get, StatusCode::OK, json),
            Handling::PassThrough
        );
        let anonymous_pod = ctx(Origin::Pod, KUBELET.1, "/api/v1/pods");
        assert_eq!(
            handling(&hub, &anonymous_pod, &get, StatusCode::OK, json),
            Handling::PassThrough
        );
        let version = ctx(Origin::Local, KUBELET.1, "/version");
        assert_eq!(
            handling(&hub, &version, &get, StatusCode::OK, json),
            Handling::CacheNonResource
        );
    }
}
