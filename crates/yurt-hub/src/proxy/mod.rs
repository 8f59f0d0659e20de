//! The request path: every request from kubelet, kube-proxy or a pod goes to a healthy
//! API server (responses to cache agents are teed into the cache, filtered responses are
//! rewritten), or, when no server is healthy or the chosen one fails, is answered
//! locally per verb (OpenYurt's offline semantics):
//!
//! | verb | offline |
//! |---|---|
//! | get, list | from the cache (a never-listed shape is 404; an empty kubelet pod list is 404) |
//! | watch | held open with no events; ends when the cloud is back, never within 1.5 s of its start (clients then re-watch, not relist) |
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
//!
//! One job per module: [`routing`] decides where a request goes, [`forward`] sends it
//! upstream and handles the answer, [`watch`] streams and holds watches,
//! [`shared_watch`] shares one upstream watch among the node's components, [`upgrade`]
//! splices exec/attach/port-forward, [`offline`] answers without the cloud, [`lease`]
//! keeps kubelet's Lease. Every error answer is a [`crate::status::StatusError`].

pub mod bodies;
pub mod forward;
mod handshake;
pub mod lease;
pub mod offline;
pub mod routing;
pub mod shared_watch;
pub mod upgrade;
pub mod watch;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod fuzz;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::body::ResponseBody;
use crate::cache::{self, Cache};
use crate::codec::Format;
use crate::config::Config;
use crate::filter::Filters;
use crate::health::Health;
use crate::identity::{Caller, Verifier};
use crate::metrics::HubMetrics;
use crate::request::RequestInfo;
use crate::status::StatusError;
use crate::upstream::Balancer;

pub use forward::{Server, Upstream};
pub use offline::SOURCE_HEADER;

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
    /// Upstream watches shared by the node's components ([`shared_watch`]).
    pub shared_watches: shared_watch::SharedWatches,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

/// A request body the hub can read, drain and pass on: hyper's `Incoming` on the
/// listeners, any complete body in tests.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<crate::body::BodyError>> + Send + Sync + Unpin + 'static
{
}

impl<T> RequestBody for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<crate::body::BodyError>>
        + Send
        + Sync
        + Unpin
        + 'static
{
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
#[derive(Debug)]
pub struct Ctx {
    /// Which port.
    pub origin: Origin,
    /// Who is asking.
    pub caller: Caller,
    /// The node component, by User-Agent.
    pub component: Option<String>,
    /// The formats the client accepts, preferred first.
    pub accept: Vec<Format>,
    /// The client asks for metadata only ([`Format::metadata_only`]).
    pub metadata_only: bool,
    /// What is asked for.
    pub info: RequestInfo,
    /// A later page of a paginated LIST (`continue=`).
    pub paginated: bool,
}

impl Ctx {
    /// The facts of a request from `caller` with these `headers` and `uri`.
    pub fn new(
        origin: Origin,
        caller: Caller,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Self {
        let query = uri.query().unwrap_or("");
        Self {
            origin,
            caller,
            component: crate::request::component(header_str(headers, header::USER_AGENT)),
            accept: Format::accepted(header_str(headers, header::ACCEPT)),
            metadata_only: Format::metadata_only(header_str(headers, header::ACCEPT)),
            info: RequestInfo::parse(method, uri.path(), Some(query)),
            paginated: query.split('&').any(|kv| kv.starts_with("continue=")),
        }
    }

    /// Under which owner this caller's responses are cached, if they may be: a node
    /// component by its User-Agent, a pod only as the service account it proved.
    pub fn cache_owner(&self, format: Format) -> Option<String> {
        match &self.caller {
            Caller::Node => self.component.as_deref().map(|c| self.shaped_owner(c)),
            Caller::ServiceAccount(sa, _) => Some(cache::format_owner(
                &self.shaped_owner(&sa.cache_owner()),
                format,
            )),
            Caller::Anonymous | Caller::Unproven(..) => None,
        }
    }

    /// `owner`, or its metadata-only owner ([`cache::metadata_owner`]) when the client
    /// asks for metadata only.
    pub fn shaped_owner(&self, owner: &str) -> String {
        if self.metadata_only {
            cache::metadata_owner(owner)
        } else {
            owner.to_owned()
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Handles one request from a listener, towards the hub's API servers.
pub async fn handle(
    hub: Arc<Hub>,
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let servers = hub.clone();
    serve(hub, &servers.balancer, origin, req).await
}

/// Handles one request towards `upstream`, in a span naming it and who answered, and
/// times it.
pub async fn serve<B: RequestBody, U: Upstream<B>>(
    hub: Arc<Hub>,
    upstream: &U,
    origin: Origin,
    req: Request<B>,
) -> Result<Response<ResponseBody>, Infallible> {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "request",
        http.method = %req.method(),
        http.path = %req.uri().path(),
        origin = ?origin,
        component = tracing::field::Empty,
        served_by = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = limited(&hub, upstream, origin, req, &span)
        .instrument(span.clone())
        .await;
    let served_by = if response.status() == StatusCode::TOO_MANY_REQUESTS {
        "refused"
    } else if response.headers().contains_key(SOURCE_HEADER) {
        "cache"
    } else {
        "upstream"
    };
    span.record("served_by", served_by);
    hub.metrics
        .request_duration
        .observe(served_by, started.elapsed().as_secs_f64());
    Ok(response)
}

/// Refuses a short request over the in-flight limit with a 429; routes the others.
async fn limited<B: RequestBody, U: Upstream<B>>(
    hub: &Arc<Hub>,
    upstream: &U,
    origin: Origin,
    req: Request<B>,
    span: &tracing::Span,
) -> Response<ResponseBody> {
    // Long-running requests (watches, upgrades, log follows) hold no permit, as in the
    // API server's max-in-flight filter: they would starve short ones.
    let _permit = if routing::is_long_running(req.uri(), req.headers()) {
        None
    } else {
        match hub.short_requests.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                hub.metrics.request("refused", "too_many");
                let accept = Format::accepted(header_str(req.headers(), header::ACCEPT));
                return StatusError::too_many_requests(
                    "too many requests in flight at the hub; retry shortly",
                    1,
                )
                .into_response(&accept);
            }
        }
    };
    hub.metrics.in_flight.inc();
    let response = routing::dispatch(hub, upstream, origin, req, span).await;
    hub.metrics.in_flight.dec();
    response
}

#[cfg(test)]
mod tests {
    use super::fake::{self, FakeUpstream, KUBELET, json, request, send};
    use super::*;
    use crate::config::Limits;

    #[tokio::test]
    async fn over_the_in_flight_limit_short_requests_get_429_and_watches_go_on() {
        let limits = Limits {
            max_in_flight: 0,
            ..Limits::default()
        };
        let (hub, _dir) = fake::hub(limits, Filters::none());
        let offline = FakeUpstream(None);
        let get = send(
            &hub,
            &offline,
            Origin::Local,
            request("GET", "/api/v1/pods", &[KUBELET], b""),
        )
        .await;
        assert_eq!(get.headers()[header::RETRY_AFTER], "1");
        let (code, status) = json(get).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (429, Some("TooManyRequests"))
        );
        let watch = send(
            &hub,
            &offline,
            Origin::Local,
            request("GET", "/api/v1/pods?watch=true", &[KUBELET], b""),
        )
        .await;
        assert_eq!(watch.status(), 200, "a watch holds no permit");
    }

    #[tokio::test]
    async fn arbitrary_methods_and_paths_get_an_answer_and_errors_are_statuses() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let offline = FakeUpstream(None);
        for (method, path) in [
            ("OPTIONS", "/"),
            ("GET", "/api/v1/namespaces//pods/"),
            ("PATCH", "/apis/x/y/z/w/v/u"),
            ("CONNECT", "/api/v1/namespaces/d/pods/p/proxy"),
        ] {
            let resp = send(
                &hub,
                &offline,
                Origin::Local,
                request(method, path, &[KUBELET], b""),
            )
            .await;
            let code = resp.status();
            let (_, body) = json(resp).await;
            if !code.is_success() {
                assert_eq!(body["kind"], "Status", "{method} {path}: {code}");
                assert_eq!(body["code"], code.as_u16(), "{method} {path}");
            }
        }
    }
}
