//! A small in-memory API server for the view's tests: lists and watches of Nodes,
//! Services, ConfigMaps and NodePools (unless told the NodePool API is not served) with
//! equality label and field selectors, full objects or `PartialObjectMetadata` as the
//! `Accept` header asks, Nodes and Services in protobuf when it comes first in `Accept`
//! (as the API server serves built-in kinds; the view reads only their metadata and a
//! Node's pod CIDRs, so only those are encoded), a record of every request and a count of the watch events it
//! sent. Every change is queued to the open watches before `put` or `delete` returns, so
//! a test can tell that a change was sent to no one.
//! Hand-rolled: no maintained crate serves list/watch semantics in process, and the
//! tests need to see exactly what the view asks for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The path (`/api/v1/nodes`).
    pub path: String,
    /// The decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// The `Accept` header.
    pub accept: String,
}

impl SeenRequest {
    /// Whether it is a watch.
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }

    /// Whether it asked for metadata only.
    pub fn metadata_only(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }

    /// Whether it asked for protobuf first.
    pub fn protobuf_first(&self) -> bool {
        self.accept.trim_start().starts_with(crate::codec::PROTOBUF)
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
struct Change {
    resource: String,
    rv: u64,
    old: Option<Value>,
    new: Option<Value>,
}

/// An open watch.
#[derive(Debug)]
struct Watcher {
    seen: SeenRequest,
    resource: &'static str,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    /// Watch events sent, by resource.
    sent: BTreeMap<&'static str, usize>,
}

/// The fake API server.
#[derive(Debug, Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    nodepools_served: bool,
}

/// The path of the NodePools the view reads.
pub const NODEPOOLS: &str = "/apis/apps.openyurt.io/v1beta2/nodepools";

/// A Node named `name` in `pool` (none: unlabelled) with pod CIDR `cidr`.
pub fn node(name: &str, pool: Option<&str>, cidr: &str) -> Value {
    let labels: BTreeMap<&str, &str> = pool.map(|p| (super::POOL_LABEL, p)).into_iter().collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A NodePool `name` whose `status.nodes` are `members` (none: no status at all, as
/// before any controller has seen it).
pub fn nodepool(name: &str, members: &[&str]) -> Value {
    let mut pool = json!({
        "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {"type": "Edge"},
    });
    if !members.is_empty() {
        pool["status"] =
            json!({"readyNodeNum": members.len(), "unreadyNodeNum": 0, "nodes": members});
    }
    pool
}

/// A Service `default/<name>` with `annotations`.
pub fn service(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"type": "ClusterIP"},
    })
}

fn collection(path: &str, nodepools_served: bool) -> Option<&'static str> {
    match path {
        "/api/v1/nodes" => Some("nodes"),
        NODEPOOLS if nodepools_served => Some("nodepools"),
        "/api/v1/services" => Some("services"),
        p if p.starts_with("/api/v1/namespaces/") && p.ends_with("/configmaps") => {
            Some("configmaps")
        }
        _ => None,
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "nodes" => "Node",
        "services" => "Service",
        "nodepools" => "NodePool",
        _ => "ConfigMap",
    }
}

fn resource_of(kind: Option<&str>) -> &'static str {
    match kind {
        Some("Node") => "nodes",
        Some("Service") => "services",
        Some("NodePool") => "nodepools",
        _ => "configmaps",
    }
}

/// The watch event line `change` makes for a watch of `resource` asking `seen`, if any.
fn event_line(seen: &SeenRequest, resource: &str, c: &Change) -> Option<Bytes> {
    if c.resource != resource {
        return None;
    }
    let was = c.old.as_ref().is_some_and(|o| selects(seen, o));
    let is = c.new.as_ref().filter(|o| selects(seen, o));
    let (ty, obj) = match (was, is) {
        (false, Some(o)) => ("ADDED", o),
        (true, Some(o)) => ("MODIFIED", o),
        // It left the selection, or was deleted: the API server says DELETED.
        (true, None) => ("DELETED", c.new.as_ref().or(c.old.as_ref())?),
        (false, None) => return None,
    };
    if let Some(obj) = protobuf(seen, resource, obj) {
        return Some(crate::codec::encode_watch_event(
            crate::codec::Format::Protobuf,
            ty,
            &obj,
        ));
    }
    let line = json!({"type": ty, "object": shaped(seen, obj)});
    Some(Bytes::from(format!("{line}\n")))
}

/// `obj` in protobuf, if `seen` asked for it first and `resource` is a built-in kind
/// the fake encodes (Nodes and Services, whole).
fn protobuf(seen: &SeenRequest, resource: &str, obj: &Value) -> Option<crate::codec::RawObject> {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
    use prost::Message as _;
    if !seen.protobuf_first() || seen.metadata_only() {
        return None;
    }
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let m = &obj["metadata"];
    let metadata = Some(pb_meta::ObjectMeta {
        name: text(&m["name"]),
        namespace: text(&m["namespace"]),
        resource_version: text(&m["resourceVersion"]),
        labels: map(&m["labels"]),
        annotations: map(&m["annotations"]),
        ..Default::default()
    });
    let (kind, message) = match resource {
        "nodes" => {
            let spec = &obj["spec"];
            let node = core::Node {
                metadata,
                spec: Some(core::NodeSpec {
                    pod_cidr: text(&spec["podCIDR"]),
                    pod_cid_rs: spec["podCIDRs"]
                        .as_array()
                        .map(|a| a.iter().filter_map(text).collect())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            ("Node", node.encode_to_vec())
        }
        "services" => {
            let service = core::Service {
                metadata,
                ..Default::default()
            };
            ("Service", service.encode_to_vec())
        }
        _ => return None,
    };
    crate::codec::proto_from_message("v1", kind, Bytes::from(message)).ok()
}

/// `%XX` and `+` decoding of one query component (kube-rs encodes with
/// `form_urlencoded`; the tests need only its inverse).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Whether `obj` satisfies the request's equality selectors (`a=b,c=d`).
fn selects(req: &SeenRequest, obj: &Value) -> bool {
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split(',')
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (k, v) = r.split_once('=').unwrap_or((r, ""));
                (k.trim_end_matches('=').to_owned(), v.to_owned())
            })
            .collect()
    };
    let labels = &obj["metadata"]["labels"];
    let labels_ok = pairs(req.param("labelSelector").unwrap_or(""))
        .iter()
        .all(|(k, v)| labels[k].as_str() == Some(v));
    let fields_ok = pairs(req.param("fieldSelector").unwrap_or(""))
        .iter()
        .all(|(k, v)| match k.as_str() {
            "metadata.name" => obj["metadata"]["name"].as_str() == Some(v),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str() == Some(v),
            _ => false,
        });
    labels_ok && fields_ok
}

/// `obj` as the request wants it: whole, or its metadata only.
fn shaped(req: &SeenRequest, obj: &Value) -> Value {
    if req.metadata_only() {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
    } else {
        obj.clone()
    }
}

fn respond(body: UnsyncBoxBody<Bytes, Infallible>) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    respond_as("application/json", body)
}

fn respond_as(
    content_type: &'static str,
    body: UnsyncBoxBody<Bytes, Infallible>,
) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Whether the fake answers `seen` for `resource` in protobuf.
fn answers_protobuf(seen: &SeenRequest, resource: &str) -> bool {
    seen.protobuf_first() && !seen.metadata_only() && matches!(resource, "nodes" | "services")
}

impl FakeApi {
    /// A server holding `objects` (by their `kind`).
    pub fn new(objects: impl IntoIterator<Item = Value>) -> Self {
        let api = Self {
            state: Arc::default(),
            seen: Arc::default(),
            nodepools_served: true,
        };
        for o in objects {
            api.put(o);
        }
        api
    }

    /// This server without the NodePool API (a cluster without yurt-manager's CRDs):
    /// its path is a 404.
    pub fn without_nodepool_api(mut self) -> Self {
        self.nodepools_served = false;
        self
    }

    /// Creates or replaces `obj`, and tells the watches.
    pub fn put(&self, mut obj: Value) {
        let resource = resource_of(obj["kind"].as_str());
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut state = self.state.lock().expect("not poisoned");
        state.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(state.rv.to_string());
        let old = state
            .objects
            .insert((resource.to_owned(), name), obj.clone());
        Self::record(&mut state, resource, old, Some(obj));
    }

    /// Deletes the `kind` object `name`, and tells the watches.
    pub fn delete(&self, kind: &str, name: &str) {
        let resource = resource_of(Some(kind));
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(mut old) = state
            .objects
            .remove(&(resource.to_owned(), name.to_owned()))
        {
            state.rv += 1;
            old["metadata"]["resourceVersion"] = Value::String(state.rv.to_string());
            Self::record(&mut state, resource, Some(old), None);
        }
    }

    /// Records a change and queues it to every watch that sees it.
    fn record(state: &mut State, resource: &'static str, old: Option<Value>, new: Option<Value>) {
        let change = Change {
            resource: resource.to_owned(),
            rv: state.rv,
            old,
            new,
        };
        let State {
            watchers,
            sent,
            history,
            ..
        } = state;
        watchers.retain(|w| match event_line(&w.seen, w.resource, &change) {
            Some(line) => {
                *sent.entry(w.resource).or_default() += 1;
                w.tx.send(line).is_ok()
            }
            None => !w.tx.is_closed(),
        });
        history.push(change);
    }

    /// How many watch events of `resource` (`nodes`, `nodepools`...) it has sent.
    pub fn watch_events_sent(&self, resource: &str) -> usize {
        let state = self.state.lock().expect("not poisoned");
        state.sent.get(resource).copied().unwrap_or(0)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(&req)) }
        });
        kube::Client::new(service, "default")
    }

    /// This server as the hub's API server: every answer, watches included, streamed
    /// through a [`crate::body::channel`].
    pub fn as_upstream(&self) -> crate::proxy::fake::FakeServer {
        let api = self.clone();
        crate::proxy::fake::FakeServer::new(move |seen| {
            let req = Request::from_parts(seen.parts.clone(), ());
            let (parts, mut body) = api.handle(&req).into_parts();
            let (tx, out) = crate::body::channel(16);
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(data)).await.is_err()
                    {
                        return;
                    }
                }
            });
            Ok(Response::from_parts(parts, out))
        })
    }

    /// A client that talks to `hub` (User-Agent `yurthub`, from the node-local port),
    /// whose API server is `upstream`.
    pub fn hub_client(
        hub: &Arc<crate::proxy::Hub>,
        upstream: crate::proxy::fake::FakeUpstream,
    ) -> kube::Client {
        let hub = hub.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let (hub, upstream) = (hub.clone(), upstream.clone());
            async move {
                let (mut parts, body) = req.into_parts();
                let body = body.collect_bytes().await?;
                parts.headers.insert(
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static("yurthub/test"),
                );
                let req = Request::from_parts(parts, Full::new(body));
                let resp =
                    crate::proxy::serve(hub, &upstream, crate::proxy::Origin::Local, req).await;
                Ok::<_, kube::Error>(resp.unwrap_or_else(|never| match never {}))
            }
        });
        kube::Client::new(service, "default")
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
        let seen = SeenRequest {
            path: req.uri().path().to_owned(),
            query: parse_query(req.uri().query().unwrap_or("")),
            accept: req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        };
        self.seen.lock().expect("not poisoned").push(seen.clone());
        let Some(resource) = collection(&seen.path, self.nodepools_served) else {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource",
            });
            let mut resp = respond(Full::new(Bytes::from(status.to_string())).boxed_unsync());
            *resp.status_mut() = http::StatusCode::NOT_FOUND;
            return resp;
        };
        if seen.is_watch() {
            return self.watch(seen, resource);
        }
        let state = self.state.lock().expect("not poisoned");
        if answers_protobuf(&seen, resource) {
            let items: Vec<crate::codec::RawObject> = state
                .objects
                .iter()
                .filter(|((r, _), o)| r == resource && selects(&seen, o))
                .filter_map(|(_, o)| protobuf(&seen, resource, o))
                .collect();
            let list = crate::codec::encode_list(
                crate::codec::Format::Protobuf,
                "v1",
                &format!("{}List", kind_of(resource)),
                &state.rv.to_string(),
                &items,
            );
            return respond_as(crate::codec::PROTOBUF, Full::new(list).boxed_unsync());
        }
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, _), o)| r == resource && selects(&seen, o))
            .map(|(_, o)| shaped(&seen, o))
            .collect();
        let (api_version, kind) = if seen.metadata_only() {
            ("meta.k8s.io/v1", "PartialObjectMetadataList".to_owned())
        } else if resource == "nodepools" {
            ("apps.openyurt.io/v1beta2", "NodePoolList".to_owned())
        } else {
            ("v1", format!("{}List", kind_of(resource)))
        };
        let list = json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        });
        respond(Full::new(Bytes::from(list.to_string())).boxed_unsync())
    }

    fn watch(
        &self,
        seen: SeenRequest,
        resource: &'static str,
    ) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
        let from: u64 = seen
            .param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let content_type = if answers_protobuf(&seen, resource) {
            "application/vnd.kubernetes.protobuf;stream=watch"
        } else {
            "application/json"
        };
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        {
            let mut state = self.state.lock().expect("not poisoned");
            let backlog: Vec<Bytes> = state
                .history
                .iter()
                .filter(|c| c.rv > from)
                .filter_map(|c| event_line(&seen, resource, c))
                .collect();
            *state.sent.entry(resource).or_default() += backlog.len();
            for line in backlog {
                // The receiver is below: it is still there.
                let _ = tx.send(line);
            }
            state.watchers.push(Watcher { seen, resource, tx });
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        respond_as(content_type, StreamBody::new(stream).boxed_unsync())
    }
}
