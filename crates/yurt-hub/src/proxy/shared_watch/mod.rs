//! Shared watches: one upstream watch per resource and shape on a node, shared by every
//! local client that asks for the same thing (kubelet and kube-proxy both watch all
//! Services; kube-proxy with a label selector).
//!
//! Who shares: only requests the hub sends upstream as the node itself
//! ([`ClientClass::Node`]: the node-local port, no `Authorization`, no impersonation), so
//! a client never gets through sharing what its own request would not get. Pods, and
//! callers with their own credentials, always watch on their own.
//!
//! What is shared: a [`Key`] is the group/version/resource, namespace, field selector,
//! label selector and the shape the `Accept` header asks for (JSON or protobuf, whole
//! objects or metadata only: [`shape_of_accept`]). A client with a label selector also
//! joins the same watch without one (kube-proxy's Services watch joins kubelet's), its
//! selector then evaluated here with [`crate::selector`] (the API server's 1.20 grammar)
//! the way the API server's watch cache does it: an object that starts to match is
//! ADDED, one that stops matching is DELETED ([`subscriber`]). With no such watch open,
//! it opens one with its own selector upstream, so sharing never costs more bytes than
//! a watch of its own. Upstream watches always ask for bookmarks; they reach only the
//! clients that asked for them.
//!
//! resourceVersion: the upstream watch starts from the first client's resourceVersion
//! and keeps a bounded buffer of its recent events ([`Settings::buffer_events`],
//! [`Settings::buffer_bytes`]). A
//! client watching from X is served when every event after X is still at hand (X is the
//! start or later, or within the buffer): it gets the buffered events after X, then the
//! live ones. Anything the hub cannot serve exactly takes a dedicated upstream watch, as
//! without sharing (always safe): a resourceVersion older than the buffer, `0` or none
//! (the API server would first send the current state as ADDED events), a query
//! parameter other than the ones above (`resourceVersionMatch`, `limit`, ...), a label
//! selector that does not parse, the legacy `/watch/` paths.
//!
//! Lifetime: each client ends at its own `timeoutSeconds`. When the upstream watch ends
//! it is opened again from its last resourceVersion; when it cannot be, or sends an
//! ERROR (410 Gone), every client's stream ends (after the ERROR), so each re-watches or
//! relists as it would on its own. A client too slow to take its events
//! ([`Settings::subscriber_queue`]) is ended rather than holding up the others. The
//! upstream watch closes [`Settings::linger`] after its last client left.
//!
//! Each client keeps its own filters and its own cache teeing (the cache stores objects
//! per component, so each client's events are ingested under its own owner).

mod subscriber;
mod upstream;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, header};

use super::forward::{self, ClientClass, NodeSender, UpstreamFailure};
use super::{Ctx, Hub, Origin};
use crate::body::ResponseBody;
use crate::cache;
use crate::codec::Format;
use crate::request::{Gvr, RequestInfo, ResourceRequest, Verb};
use crate::selector::LabelSelector;

pub use upstream::Shared;

/// How shared watches behave.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Recent events kept per shared watch for clients that join later (1024)...
    pub buffer_events: usize,
    /// ... in at most this many bytes (4 MiB; an edge node's kube-proxy alone watches
    /// every EndpointSlice of the cluster).
    pub buffer_bytes: usize,
    /// Events waiting for one client; a client further behind is ended (1024).
    pub subscriber_queue: usize,
    /// How long an upstream watch stays open after its last client left (30 s: kubelet
    /// and kube-proxy re-watch right after their own timeouts).
    pub linger: Duration,
    /// An upstream watch that ends sooner than this without an event is not opened
    /// again (1 s): the API server is refusing it.
    pub min_stream: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            buffer_events: 1024,
            buffer_bytes: 4 * 1024 * 1024,
            subscriber_queue: 1024,
            linger: Duration::from_secs(30),
            min_stream: Duration::from_secs(1),
        }
    }
}

/// What makes two watches the same upstream watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Group, version, resource.
    pub gvr: Gvr,
    /// Namespace, if the watch is namespaced.
    pub namespace: Option<String>,
    /// The field selector (decoded).
    pub field_selector: Option<String>,
    /// The label selector sent upstream (decoded), if any.
    pub label_selector: Option<String>,
    /// The `Accept` header sent upstream ([`shape_of_accept`]).
    pub accept: String,
}

impl Key {
    /// The same watch without a label selector.
    fn unlabelled(&self) -> Self {
        Self {
            label_selector: None,
            ..self.clone()
        }
    }
}

/// A watch's selectors as its client encoded them, for the upstream query.
#[derive(Debug, Clone, Default)]
pub struct RawSelectors {
    field: Option<String>,
    label: Option<String>,
}

/// A watch that can be served from a shared upstream watch.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Its own shared watch (with its label selector upstream).
    pub key: Key,
    /// The resource request.
    pub request: ResourceRequest,
    /// It wants the events after this resourceVersion.
    pub from: u64,
    /// Its label selector, evaluated here when it joins a watch without one.
    pub labels: Option<LabelSelector>,
    /// It asked for bookmarks.
    pub bookmarks: bool,
    /// Its selectors as the client encoded them.
    raw: RawSelectors,
}

/// The query parameters a shared watch serves; any other one takes a dedicated watch.
const SHARED_PARAMS: &[&str] = &[
    "watch",
    "resourceVersion",
    "timeoutSeconds",
    "timeout",
    "labelSelector",
    "fieldSelector",
    "allowWatchBookmarks",
];

/// Whether the request is a watch that a shared watch can serve: `None` for anything
/// that is not a watch, `Err(reason)` for a watch that takes its own upstream watch.
pub fn plan(ctx: &Ctx, headers: &HeaderMap, uri: &http::Uri) -> Option<Result<Plan, &'static str>> {
    let RequestInfo::Resource(r) = &ctx.info else {
        return None;
    };
    if r.verb != Verb::Watch {
        return None;
    }
    Some(plan_watch(ctx, r, headers, uri))
}

fn plan_watch(
    ctx: &Ctx,
    r: &ResourceRequest,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Result<Plan, &'static str> {
    let as_node = ctx.origin == Origin::Local
        && ClientClass::of(ctx.origin, headers, false) == ClientClass::Node
        && !headers
            .keys()
            .any(|k| k.as_str().starts_with("impersonate-"));
    if !as_node {
        return Err("credentials");
    }
    if uri.path() != collection_path(&r.gvr, r.namespace.as_deref()) {
        return Err("path");
    }
    let query = uri.query().unwrap_or("");
    let mut raw = RawSelectors::default();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !SHARED_PARAMS.contains(&k) {
            return Err("query");
        }
        match k {
            "fieldSelector" if !v.is_empty() => raw.field = Some(v.to_owned()),
            "labelSelector" if !v.is_empty() => raw.label = Some(v.to_owned()),
            _ => {}
        }
    }
    let from = match r.resource_version.as_deref().map(str::parse::<u64>) {
        Some(Ok(rv)) if rv > 0 => rv,
        _ => return Err("resource_version"),
    };
    let labels = match r.label_selector.as_deref() {
        None => None,
        Some(s) => Some(LabelSelector::parse(s).map_err(|_| "selector")?),
    };
    let accept = shape_of_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    Ok(Plan {
        key: Key {
            gvr: r.gvr.clone(),
            namespace: r.namespace.clone(),
            field_selector: r.field_selector.clone(),
            label_selector: r.label_selector.clone(),
            accept,
        },
        request: r.clone(),
        from,
        labels,
        bookmarks: r.allow_watch_bookmarks,
        raw,
    })
}

/// The `Accept` a shared watch sends upstream for a client's `Accept`: the plain JSON
/// or protobuf type the API server would pick when every entry is one of those or a
/// wildcard with no parameters (kubelet's `application/vnd.kubernetes.protobuf, */*`
/// and kube-proxy's `application/vnd.kubernetes.protobuf` get the same stream), the
/// header as it is otherwise (metadata only, tables, weights: only equal headers share).
pub fn shape_of_accept(accept: &str) -> String {
    let mut first = None;
    for entry in accept.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let media = match entry {
            "*/*" | "application/*" => continue,
            "application/json" => "application/json",
            "application/vnd.kubernetes.protobuf" => "application/vnd.kubernetes.protobuf",
            _ => return accept.to_owned(),
        };
        first.get_or_insert(media);
    }
    first.unwrap_or("application/json").to_owned()
}

/// The path of a collection: `/api/v1/namespaces/d/pods`, `/apis/g/v/nodes`.
fn collection_path(gvr: &Gvr, namespace: Option<&str>) -> String {
    let mut path = if gvr.group.is_empty() {
        format!("/api/{}", gvr.version)
    } else {
        format!("/apis/{}/{}", gvr.group, gvr.version)
    };
    if let Some(ns) = namespace {
        path.push_str("/namespaces/");
        path.push_str(ns);
    }
    path.push('/');
    path.push_str(&gvr.resource);
    path
}

/// The upstream watch request of a shared watch, from resourceVersion `from`.
fn upstream_request(
    key: &Key,
    raw: &RawSelectors,
    from: u64,
    url: &http::Uri,
) -> Option<Request<http_body_util::Full<bytes::Bytes>>> {
    let mut path = collection_path(&key.gvr, key.namespace.as_deref());
    path.push_str(&format!(
        "?allowWatchBookmarks=true&resourceVersion={from}&watch=true"
    ));
    if let Some(fs) = &raw.field {
        path.push_str("&fieldSelector=");
        path.push_str(fs);
    }
    if let Some(ls) = raw.label.as_ref().filter(|_| key.label_selector.is_some()) {
        path.push_str("&labelSelector=");
        path.push_str(ls);
    }
    let uri = crate::upstream::uri_on(url, &path).ok()?;
    let mut req = Request::get(uri)
        .header(
            header::USER_AGENT,
            concat!("yurthub/", env!("CARGO_PKG_VERSION"), " (shared watch)"),
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    if !key.accept.is_empty() {
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_str(&key.accept).ok()?);
    }
    Some(req)
}

/// The shared watches of a hub.
#[derive(Debug, Default)]
pub struct SharedWatches {
    settings: Settings,
    watches: Mutex<HashMap<Key, Arc<Shared>>>,
}

/// What became of a watch offered to the shared watches.
pub enum Outcome {
    /// Served from a shared watch.
    Served(Response<ResponseBody>),
    /// The upstream answered the request to open a shared watch with something that
    /// cannot be shared (an error, a stream in an unknown format), or did not answer:
    /// handle it as the client's own answer.
    Answer(Result<Response<ResponseBody>, UpstreamFailure>),
    /// Not served: send the client's own request upstream, for this reason.
    Fallback(&'static str),
}

/// Where a shared watch opens its upstream watches.
#[derive(Clone)]
pub struct Opener {
    /// Sends a request as the node.
    pub send: NodeSender,
    /// The server's URL.
    pub url: http::Uri,
    /// The server's index in [`crate::health::Health`].
    pub index: usize,
}

impl SharedWatches {
    /// Shared watches with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            watches: Mutex::default(),
        }
    }

    /// Upstream watches open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no upstream watch is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Shared>>> {
        // A panic while the map was held leaves it consistent (every change is one
        // insert or remove): go on with it.
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves the watch `plan` of `ctx` from a shared watch: joins the one without a label
/// selector (evaluating the client's here) or the one with its own, or opens one with
/// its own through `opener`.
///
/// A client with a label selector prefers the watch without one, so that kube-proxy's
/// next watch moves to kubelet's; it opens its own with its selector upstream (never
/// more bytes than a watch of its own), which the next client with the same selector
/// shares.
pub async fn serve(hub: &Arc<Hub>, opener: Option<Opener>, ctx: &Ctx, plan: Plan) -> Outcome {
    let Some(opener) = opener else {
        return Outcome::Fallback("server");
    };
    let mut candidates = Vec::with_capacity(2);
    if plan.key.label_selector.is_some() {
        candidates.push((plan.key.unlabelled(), true));
    }
    candidates.push((plan.key.clone(), false));
    let mut own_too_old = false;
    for (key, local_labels) in candidates {
        let Some(shared) = hub.shared_watches.lock().get(&key).cloned() else {
            continue;
        };
        match shared.subscribe(&hub.metrics, plan.from) {
            Ok(joined) => {
                tracing::debug!(gvr = %key.gvr, label_selector = ?key.label_selector, from = plan.from, component = ?ctx.component, "joined a shared watch");
                let labels = if local_labels {
                    plan.labels.clone()
                } else {
                    None
                };
                return Outcome::Served(subscriber::start(
                    hub, &shared, ctx, &plan, labels, joined,
                ));
            }
            Err(upstream::JoinError::TooOld) => own_too_old = key == plan.key,
            // It closed as we came: as if it were not there.
            Err(upstream::JoinError::Ended) => {}
        }
    }
    if own_too_old {
        return Outcome::Fallback("too_old");
    }
    open(hub, opener, ctx, plan).await
}

async fn open(hub: &Arc<Hub>, opener: Opener, ctx: &Ctx, plan: Plan) -> Outcome {
    let Some(req) = upstream_request(&plan.key, &plan.raw, plan.from, &opener.url) else {
        return Outcome::Fallback("request");
    };
    let resp = match (opener.send)(req).await {
        Ok(r) => r,
        Err(e) => return Outcome::Answer(Err(e)),
    };
    let format = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::of_content_type);
    let Some(format) = format.filter(|_| resp.status().is_success()) else {
        return Outcome::Answer(Ok(resp));
    };
    let (mut head, body) = resp.into_parts();
    forward::strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    let shared = Arc::new(Shared::new(
        plan.key.clone(),
        plan.raw.clone(),
        format,
        head.status,
        head.headers,
        plan.from,
        hub.shared_watches.settings,
    ));
    let joined = {
        let mut map = hub.shared_watches.lock();
        if map.contains_key(&plan.key) {
            // Another client opened the same watch meanwhile (or one too old for this
            // client had ended): this one stays its own.
            drop(map);
            hub.metrics.shared_watch_fallback("race");
            return Outcome::Answer(Ok(shared.response(body)));
        }
        let joined = shared.subscribe(&hub.metrics, plan.from);
        map.insert(plan.key.clone(), shared.clone());
        joined
    };
    hub.metrics.shared_watch_upstreams.inc();
    tracing::info!(gvr = %plan.key.gvr, namespace = ?plan.key.namespace, field_selector = ?plan.key.field_selector, label_selector = ?plan.key.label_selector, accept = %plan.key.accept, from = plan.from, component = ?ctx.component, "shared watch opened");
    upstream::run(hub.clone(), shared.clone(), opener, body);
    match joined {
        Ok(joined) => Outcome::Served(subscriber::start(hub, &shared, ctx, &plan, None, joined)),
        // Not reachable: a new shared watch starts at this client's resourceVersion. Its
        // upstream task closes it when no one has joined within the linger.
        Err(_) => Outcome::Fallback("join"),
    }
}

/// How long a client's watch lasts: its `timeoutSeconds`, or what the API server would
/// pick.
fn client_timeout(hub: &Hub, r: &ResourceRequest) -> Duration {
    cache::offline_watch_timeout(r, hub.config.min_request_timeout)
}
