//! What the hub caches and how it answers from the cache.
//!
//! Responses to cache agents (selected by User-Agent, as OpenYurt does) are stored
//! unfiltered, once per (component, resource, namespace, name). Every complete LIST
//! records its shape (namespace, label and field selector), and any shape covered by a
//! recorded one can be answered offline by selecting from the stored objects, so a
//! component may list one resource in several shapes (OpenYurt caches one per path).
//! Filters run when a response is served, online or offline, in the client's format.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};

use crate::body::{self, ResponseBody};
use crate::codec::{self, Format, RawObject, WatchDecoder};
use crate::filter::Filters;
use crate::request::{ResourceRequest, Verb};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::StatusError;
use crate::store::{ObjectKey, Shape, Store, StoreError};

/// Components cached by default: OpenYurt's list, and the device agents (our
/// `yurt-iot-agent`, and upstream's `yurt-iot-dock`, which OpenYurt leaves out so its
/// list and watch break after a restart while the cloud is cut).
pub const DEFAULT_AGENTS: &[&str] = &[
    "kubelet",
    "kube-proxy",
    "flanneld",
    "coredns",
    "raven-agent-ds",
    "yurttunnel-agent",
    "yurthub",
    "yurt-iot-agent",
    "yurt-iot-dock",
];

/// Resources never cached.
const NEVER_CACHED: &[&str] = &[
    "certificatesigningrequests",
    "subjectaccessreviews",
    "tokenreviews",
    "selfsubjectaccessreviews",
];

/// Component under which non-resource responses (`/version`, discovery) are kept.
const NON_RESOURCE: &str = "_nonresource";

/// The set of components whose responses are cached.
#[derive(Debug)]
pub struct Agents {
    defaults: HashSet<String>,
    configured: RwLock<HashSet<String>>,
}

impl Agents {
    /// The defaults plus `multiplexer-proxy-<node>` and `extra`.
    pub fn new(node: &str, extra: &[String]) -> Self {
        let mut defaults: HashSet<String> =
            DEFAULT_AGENTS.iter().map(|a| (*a).to_owned()).collect();
        defaults.insert(format!("multiplexer-proxy-{node}"));
        defaults.extend(
            extra
                .iter()
                .map(|a| a.trim().to_lowercase())
                .filter(|a| !a.is_empty()),
        );
        Self {
            defaults,
            configured: RwLock::new(HashSet::new()),
        }
    }

    /// Replaces the agents configured in `yurt-hub-cfg` (`cache_agents`, comma list).
    pub fn set_configured(&self, list: &str) {
        let set = list
            .split(',')
            .map(|a| a.trim().to_lowercase())
            .filter(|a| !a.is_empty())
            .collect();
        if let Ok(mut c) = self.configured.write() {
            *c = set;
        }
    }

    /// Whether `component` is cached.
    pub fn contains(&self, component: &str) -> bool {
        if self.defaults.contains("*") || self.defaults.contains(component) {
            return true;
        }
        self.configured
            .read()
            .map(|c| c.contains("*") || c.contains(component))
            .unwrap_or(false)
    }
}

/// Whose cached objects a request reads, and which client it is for the filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// The cache owner: a node component (from the User-Agent on the node-local port)
    /// or a proven service account (`sa:<ns>:<name>`, pod-facing port).
    pub owner: String,
    /// The client component, from the User-Agent: picks the filters only.
    pub component: String,
    /// The cache is the only proof of this reader's rights: a miss means "not known to
    /// be allowed" (403), not "absent" (404).
    pub proves_rights: bool,
    /// What it read is kept per format ([`format_owner`]): a pod's clients may read in
    /// JSON and protobuf alike, and one copy must never hide the other.
    pub per_format: bool,
}

/// The cache owner of what `owner` read in `format`.
pub fn format_owner(owner: &str, format: Format) -> String {
    let suffix = match format {
        Format::Json => "json",
        Format::Protobuf => "protobuf",
    };
    format!("{owner}:{suffix}")
}

/// The cache owner of what `owner` read as metadata only (`PartialObjectMetadata`):
/// kept apart from the whole objects it read, which the same keys would overwrite (and
/// offline a whole-object list would serve metadata, or the reverse).
pub fn metadata_owner(owner: &str) -> String {
    format!("{owner}:metadata")
}

impl Reader {
    /// A node component reading its own cache.
    pub fn component(component: &str) -> Self {
        Self {
            owner: component.to_owned(),
            component: component.to_owned(),
            proves_rights: false,
            per_format: false,
        }
    }

    /// Serves from the first of the client's formats this reader read in.
    fn per_format(
        &self,
        accept: &[Format],
        serve: impl Fn(&Reader, &[Format]) -> Response<ResponseBody>,
    ) -> Option<Response<ResponseBody>> {
        if !self.per_format {
            return None;
        }
        let mut last = None;
        for format in accept {
            let reader = Reader {
                owner: format_owner(&self.owner, *format),
                per_format: false,
                ..self.clone()
            };
            let resp = serve(&reader, std::slice::from_ref(format));
            if resp.status() != StatusCode::FORBIDDEN {
                return Some(resp);
            }
            last = Some(resp);
        }
        last
    }

    fn not_cached(&self, accept: &[Format], r: &ResourceRequest) -> Response<ResponseBody> {
        StatusError::forbidden(format!(
                "the cloud is unreachable and {} did not read these {} online: the hub cannot check its rights offline",
                self.owner, r.gvr.resource
            )).into_response(accept)
    }
}

/// The cache manager.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    agents: std::sync::Arc<Agents>,
    node: String,
}

fn object_response(code: StatusCode, format: Format, bytes: Bytes) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(bytes));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    r
}

impl Cache {
    /// A cache over `store`.
    pub fn new(store: Store, agents: std::sync::Arc<Agents>, node: &str) -> Self {
        Self {
            store,
            agents,
            node: node.to_owned(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The agent set.
    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Whether a response to this request should be cached.
    pub fn cacheable(&self, component: Option<&str>, r: &ResourceRequest) -> bool {
        let Some(component) = component else {
            return false;
        };
        if !self.agents.contains(component) {
            return false;
        }
        if NEVER_CACHED.contains(&r.gvr.resource.as_str()) {
            return false;
        }
        if r.subresource.as_deref().is_some_and(|s| s != "status") {
            return false;
        }
        matches!(
            r.verb,
            Verb::Get | Verb::List | Verb::Watch | Verb::Create | Verb::Update | Verb::Patch
        )
    }

    fn key(component: &str, r: &ResourceRequest, obj: &RawObject) -> ObjectKey {
        ObjectKey {
            component: component.to_owned(),
            gvr: r.gvr.to_string(),
            namespace: obj.info.namespace.clone(),
            name: obj.info.name.clone(),
        }
    }

    /// Stores a complete (non-watch) response body under `component` (the cache owner).
    pub fn ingest(
        &self,
        component: &str,
        r: &ResourceRequest,
        format: Format,
        body: &[u8],
        paginated: bool,
    ) {
        let result = match r.verb {
            Verb::List => codec::decode_list(format, body).map(|list| {
                let items = list.items;
                // A selector the hub cannot evaluate must not stand for a complete
                // listing: it would be served offline unfiltered, and replacing the list
                // would delete what the selector did not return.
                let evaluable = crate::selector::evaluable(
                    r.label_selector.as_deref().unwrap_or(""),
                    r.field_selector.as_deref().unwrap_or(""),
                    &list.kind,
                );
                if paginated || !list.continue_token.is_empty() || !evaluable {
                    for item in items {
                        let key = Self::key(component, r, &item);
                        let _ = self.store.upsert(key, item);
                    }
                } else {
                    let shape = Shape {
                        namespace: r.namespace.clone().unwrap_or_default(),
                        label_selector: r.label_selector.clone().unwrap_or_default(),
                        field_selector: r.field_selector.clone().unwrap_or_default(),
                    };
                    let meta = crate::store::ListMeta {
                        api_version: list.api_version,
                        kind: list.kind,
                        resource_version: list.resource_version.parse().unwrap_or(0),
                    };
                    let _ =
                        self.store
                            .replace_list(component, &r.gvr.to_string(), shape, meta, items);
                }
            }),
            _ => codec::decode_object(format, body).map(|obj| {
                if let Some(key) = Self::object_key(component, r, &obj) {
                    let _ = self.store.upsert(key, obj);
                }
            }),
        };
        if let Err(e) = result {
            tracing::debug!(component, gvr = %r.gvr, error = %e, "response not cached");
        }
    }

    /// Where a single-object answer (GET, create, update, patch) to `r` is stored for
    /// `component`: nowhere for a Status or an object without a name.
    fn object_key(component: &str, r: &ResourceRequest, obj: &RawObject) -> Option<ObjectKey> {
        (obj.kind != "Status" && !obj.info.name.is_empty()).then(|| Self::key(component, r, obj))
    }

    /// [`Cache::ingest`] of a single-object answer already decoded, awaiting room in the
    /// write queue instead of blocking a thread.
    pub async fn ingest_object(&self, component: &str, r: &ResourceRequest, obj: RawObject) {
        if let Some(key) = Self::object_key(component, r, &obj) {
            let _ = self.store.upsert_async(key, obj).await;
        }
    }

    /// Stores the events of a watch stream as they arrive.
    pub fn watch_ingestor(
        &self,
        component: &str,
        r: &ResourceRequest,
        format: Format,
    ) -> WatchIngestor<'_> {
        WatchIngestor {
            cache: self,
            component: component.to_owned(),
            request: r.clone(),
            decoder: Some(WatchDecoder::new(format)),
            queue_full: false,
        }
    }

    /// Keeps a non-resource GET response (`/version`, discovery) for offline use.
    pub fn ingest_non_resource(&self, path: &str, content_type: &str, body: Bytes) {
        let obj = RawObject {
            format: Format::Json,
            api_version: content_type.to_owned(),
            kind: "NonResource".into(),
            info: codec::ObjectInfo {
                name: path.to_owned(),
                ..codec::ObjectInfo::default()
            },
            data: body,
        };
        let key = ObjectKey {
            component: NON_RESOURCE.into(),
            gvr: "_".into(),
            namespace: String::new(),
            name: path.to_owned(),
        };
        let _ = self.store.upsert(key, obj);
    }

    /// A non-resource response from the cache.
    pub fn serve_non_resource(&self, path: &str) -> Response<ResponseBody> {
        let key = ObjectKey {
            component: NON_RESOURCE.into(),
            gvr: "_".into(),
            namespace: String::new(),
            name: path.to_owned(),
        };
        match self.store.get(&key) {
            Ok(Some(obj)) => {
                let mut r = Response::new(body::full(obj.data));
                if let Ok(ct) = header::HeaderValue::from_str(&obj.api_version) {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                r
            }
            _ => StatusError::service_unavailable(format!(
                "{path} is not cached and the cloud is unreachable"
            ))
            .into_response(&[Format::Json]),
        }
    }

    /// GET from the cache.
    pub fn serve_get(
        &self,
        reader: &Reader,
        r: &ResourceRequest,
        accept: &[Format],
        filters: &Filters,
    ) -> Response<ResponseBody> {
        if let Some(resp) = reader.per_format(accept, |rd, f| self.serve_get(rd, r, f, filters)) {
            return resp;
        }
        let component = reader.component.as_str();
        let key = ObjectKey {
            component: reader.owner.clone(),
            gvr: r.gvr.to_string(),
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
        };
        let not_found = || {
            if reader.proves_rights {
                return reader.not_cached(accept, r);
            }
            StatusError::not_found(format!(
                "{} \"{}\" not found in the hub's cache",
                r.gvr.resource, key.name
            ))
            .into_response(accept)
        };
        match self.store.get(&key) {
            Ok(Some(obj)) if accept.contains(&obj.format) => {
                match filters.apply(component, &r.gvr, obj) {
                    Some(obj) => {
                        object_response(StatusCode::OK, obj.format, codec::encode_object(&obj))
                    }
                    None => not_found(),
                }
            }
            Ok(Some(obj)) => StatusError::not_acceptable(format!(
                "cached as {}, which the client does not accept",
                obj.format.content_type()
            ))
            .into_response(accept),
            Ok(None) => not_found(),
            Err(e) => StatusError::internal(e.to_string()).into_response(accept),
        }
    }

    /// LIST from the cache: the stored objects the request's shape selects, if a complete
    /// listing covering that shape was cached.
    pub fn serve_list(
        &self,
        reader: &Reader,
        r: &ResourceRequest,
        accept: &[Format],
        filters: &Filters,
    ) -> Response<ResponseBody> {
        if let Some(resp) = reader.per_format(accept, |rd, f| self.serve_list(rd, r, f, filters)) {
            return resp;
        }
        let (owner, component) = (reader.owner.as_str(), reader.component.as_str());
        let gvr = r.gvr.to_string();
        let wanted = Shape {
            namespace: r.namespace.clone().unwrap_or_default(),
            label_selector: r.label_selector.clone().unwrap_or_default(),
            field_selector: r.field_selector.clone().unwrap_or_default(),
        };
        let not_cached = || {
            if reader.proves_rights {
                return reader.not_cached(accept, r);
            }
            StatusError::not_found(format!(
                "{} of {owner} are not cached for this selector",
                r.gvr.resource
            ))
            .into_response(accept)
        };
        let (labels, fields) = match (
            LabelSelector::parse(&wanted.label_selector),
            FieldSelector::parse(&wanted.field_selector),
        ) {
            (Ok(l), Ok(f)) => (l, f),
            (Err(e), _) | (_, Err(e)) => {
                return StatusError::service_unavailable(format!(
                        "the cloud is unreachable and the hub cannot evaluate this selector offline: {e}"
                    )).into_response(accept);
            }
        };
        let shapes = match self.store.shapes(owner, &gvr) {
            Ok(s) => s,
            Err(e) => {
                return StatusError::internal(e.to_string()).into_response(accept);
            }
        };
        // Every shape of a resource has its list kind, which says what fields there are.
        if let Some((_, _, list_kind)) = shapes.first()
            && !fields.evaluable_for(list_kind)
        {
            return StatusError::service_unavailable(
                "the cloud is unreachable and the hub does not index a field of this field selector",
            )
            .into_response(accept);
        }
        let Some(covering) = shapes.iter().find(|(s, _, _)| wanted.covered_by(s)) else {
            return not_cached();
        };
        let (list_api_version, list_kind) = (covering.1.clone(), covering.2.clone());
        let objects = match self.store.list(owner, &gvr, &wanted.namespace) {
            Ok(o) => o,
            Err(e) => {
                return StatusError::internal(e.to_string()).into_response(accept);
            }
        };
        let format = objects
            .first()
            .map(|o| o.format)
            .filter(|f| accept.contains(f))
            .or_else(|| accept.first().copied())
            .unwrap_or(Format::Json);
        let selected: Vec<RawObject> = objects
            .into_iter()
            .filter(|o| labels.matches(&o.info.labels) && fields.matches(|f| o.info.field(f)))
            .collect();
        // A list is whole or not at all: objects kept in another format than the one
        // served would silently be missing from it.
        if let Some(other) = selected.iter().find(|o| o.format != format) {
            return StatusError::not_acceptable(format!(
                "some cached {} are kept as {}, which this list cannot hold with the others",
                r.gvr.resource,
                other.format.content_type()
            ))
            .into_response(accept);
        }
        let mut items: Vec<RawObject> = selected
            .into_iter()
            .filter_map(|o| filters.apply(component, &r.gvr, o))
            .collect();
        items.sort_by(|a, b| {
            (&a.info.namespace, &a.info.name).cmp(&(&b.info.namespace, &b.info.name))
        });
        // An empty pod list would make kubelet delete every pod it runs: refuse instead.
        if owner == "kubelet" && r.gvr.resource == "pods" && items.is_empty() {
            return StatusError::not_found("no cached pods for kubelet").into_response(accept);
        }
        let rv = items
            .iter()
            .map(|i| i.info.rv())
            .max()
            .unwrap_or(0)
            .to_string();
        let bytes = codec::encode_list(format, &list_api_version, &list_kind, &rv, &items);
        object_response(StatusCode::OK, format, bytes)
    }

    /// Whether kubelet's cache holds pod `namespace/name` with `uid` (a bound token's
    /// pod still runs here). The UID is looked for in the stored bytes: it is ASCII in
    /// JSON and protobuf alike, and a bound token's UID comes from the API server.
    pub fn holds_pod(&self, namespace: &str, name: &str, uid: &str) -> bool {
        let key = ObjectKey {
            component: "kubelet".into(),
            gvr: crate::request::Gvr::new("", "v1", "pods").to_string(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        matches!(self.store.get(&key), Ok(Some(obj))
            if !uid.is_empty() && obj.data.windows(uid.len()).any(|w| w == uid.as_bytes()))
    }

    /// The node this cache serves.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Feeds a watch stream into the cache.
///
/// Cache writes never hold up the client's stream for long: an event waits at most the
/// store's write wait for room in its queue. If it still finds none, that write is
/// dropped and the store marks the list shapes that may hold the object incomplete (not
/// served offline until relisted, rather than served stale), and from then on this watch
/// caches an event only if there is room at once. Deletes never wait and are never
/// dropped (the store keeps them in memory when the queue is full).
pub struct WatchIngestor<'a> {
    cache: &'a Cache,
    component: String,
    request: ResourceRequest,
    decoder: Option<WatchDecoder>,
    /// The queue stayed full once for this watch: do not wait again.
    queue_full: bool,
}

impl WatchIngestor<'_> {
    /// Takes the next bytes of the stream and caches the events they complete.
    pub async fn ingest(&mut self, chunk: &[u8]) {
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        match decoder.push(chunk) {
            Ok(events) => {
                for (ev, _) in events {
                    let key = Cache::key(&self.component, &self.request, &ev.object);
                    let store = &self.cache.store;
                    let written = match ev.event_type.as_str() {
                        "ADDED" | "MODIFIED" if self.queue_full => store.try_upsert(key, ev.object),
                        "ADDED" | "MODIFIED" => store.upsert_async(key, ev.object).await,
                        "DELETED" => store.delete(key, ev.object.info.rv()),
                        _ => Ok(()),
                    };
                    if let Err(StoreError::QueueFull { waited }) = written
                        && !self.queue_full
                    {
                        self.queue_full = true;
                        tracing::warn!(component = %self.component, gvr = %self.request.gvr, ?waited, "cache write queue full: this watch caches only what fits at once from now on");
                    }
                }
            }
            Err(e) => {
                tracing::debug!(component = %self.component, error = %e, "watch stream not cached any further");
                self.decoder = None;
            }
        }
    }
}

/// How long a watch is held open while offline when the client set no timeout: a
/// random value in [min, 2·min), like the API server.
pub fn offline_watch_timeout(r: &ResourceRequest, min: Duration) -> Duration {
    match r.timeout_seconds {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            min + min.mul_f64(f64::from(nanos % 1000) / 1000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HubMetrics;
    use crate::request::{Gvr, RequestInfo};
    use crate::store::StoreConfig;
    use http_body_util::BodyExt;

    fn request(path: &str, query: Option<&str>) -> ResourceRequest {
        match RequestInfo::parse(&http::Method::GET, path, query) {
            RequestInfo::Resource(r) => r,
            RequestInfo::NonResource { .. } => panic!("not a resource"),
        }
    }

    fn cache(dir: &std::path::Path) -> Cache {
        let store = Store::open(
            &StoreConfig {
                batch_max: 32,
                ..StoreConfig::new(dir)
            },
            HubMetrics::default(),
        )
        .unwrap();
        Cache::new(
            store,
            std::sync::Arc::new(Agents::new("edge-a1", &[])),
            "edge-a1",
        )
    }

    fn pods_json(items: &[(&str, &str, &str)]) -> Vec<u8> {
        let items: Vec<_> = items
            .iter()
            .map(|(name, node, app)| {
                serde_json::json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": "7", "labels": {"app": app}},
                                   "spec": {"nodeName": node}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}, "items": items}))
            .unwrap()
    }

    async fn body_json(r: Response<ResponseBody>) -> serde_json::Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn several_list_shapes_of_one_resource_are_served_offline() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let filters = Filters::none();
        let by_node = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1"),
        );
        let by_label = request(
            "/api/v1/namespaces/default/pods",
            Some("labelSelector=app%3Ddb"),
        );
        c.ingest(
            "kubelet",
            &by_node,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web"), ("p2", "edge-a1", "db")]),
            false,
        );
        c.ingest(
            "kubelet",
            &by_label,
            Format::Json,
            &pods_json(&[("p2", "edge-a1", "db"), ("p3", "edge-b1", "db")]),
            false,
        );
        c.store().flush().unwrap();

        let names = |v: serde_json::Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let r = c.serve_list(
            &Reader::component("kubelet"),
            &by_node,
            &[Format::Json],
            &filters,
        );
        assert_eq!(r.status(), 200);
        let v = body_json(r).await;
        assert_eq!(v["kind"], "PodList");
        assert_eq!(names(v), ["p1", "p2"], "p3 is cached but on another node");
        assert_eq!(
            names(
                body_json(c.serve_list(
                    &Reader::component("kubelet"),
                    &by_label,
                    &[Format::Json],
                    &filters
                ))
                .await
            ),
            ["p2", "p3"]
        );

        let never = request("/api/v1/pods", Some("labelSelector=app%3Dweb"));
        assert_eq!(
            c.serve_list(
                &Reader::component("kubelet"),
                &never,
                &[Format::Json],
                &filters
            )
            .status(),
            404,
            "a shape never listed is not guessed"
        );
        assert_eq!(
            c.serve_list(
                &Reader::component("kube-proxy"),
                &by_node,
                &[Format::Json],
                &filters
            )
            .status(),
            404,
            "other components' caches are separate"
        );

        let get = request("/api/v1/namespaces/default/pods/p3", None);
        let v = body_json(c.serve_get(
            &Reader::component("kubelet"),
            &get,
            &[Format::Json],
            &filters,
        ))
        .await;
        assert_eq!(v["spec"]["nodeName"], "edge-b1");
        assert_eq!(
            c.serve_get(
                &Reader::component("kubelet"),
                &get,
                &[Format::Protobuf],
                &filters
            )
            .status(),
            406
        );
    }

    #[tokio::test]
    async fn a_service_account_reads_only_its_own_cache_and_a_miss_is_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let filters = Filters::none();
        let reader = Reader {
            owner: "sa:idt:reader".into(),
            component: "kubelet".into(),
            proves_rights: true,
            per_format: true,
        };
        let by_node = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1"),
        );
        c.ingest(
            "kubelet",
            &by_node,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web")]),
            false,
        );
        let own = request("/api/v1/namespaces/default/pods", None);
        c.ingest(
            &format_owner(&reader.owner, Format::Json),
            &own,
            Format::Json,
            &pods_json(&[("mine", "edge-a1", "web")]),
            false,
        );
        c.store().flush().unwrap();
        assert_eq!(
            c.serve_list(&reader, &by_node, &[Format::Json], &filters)
                .status(),
            403,
            "kubelet's list is not the account's, whatever its User-Agent"
        );
        let get = request("/api/v1/namespaces/default/pods/p1", None);
        let denied = c.serve_get(&reader, &get, &[Format::Json], &filters);
        assert_eq!(denied.status(), 403);
        assert_eq!(body_json(denied).await["kind"], "Status");
        let v = body_json(c.serve_list(&reader, &own, &[Format::Json], &filters)).await;
        assert_eq!(v["items"][0]["metadata"]["name"], "mine");
        let both = [Format::Protobuf, Format::Json];
        let v = body_json(c.serve_list(&reader, &own, &both, &filters)).await;
        assert_eq!(
            v["items"][0]["metadata"]["name"], "mine",
            "what was read in JSON serves a client that prefers protobuf but takes JSON"
        );
        assert_eq!(
            c.serve_list(&reader, &own, &[Format::Protobuf], &filters)
                .status(),
            403,
            "nothing was read in protobuf"
        );
        assert_eq!(
            c.serve_get(
                &reader,
                &request("/api/v1/namespaces/default/pods/mine", None),
                &[Format::Json],
                &filters
            )
            .status(),
            200
        );
        assert_eq!(
            c.serve_get(
                &Reader::component("kubelet"),
                &get,
                &[Format::Json],
                &filters
            )
            .status(),
            200,
            "kubelet still reads its own"
        );
    }

    #[tokio::test]
    async fn a_list_whose_selector_the_hub_cannot_evaluate_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let all = request("/api/v1/namespaces/default/pods", None);
        c.ingest(
            "kubelet",
            &all,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web"), ("p2", "edge-a1", "db")]),
            false,
        );
        // The API server accepts `status.podIPs`; the hub does not index it.
        let odd = request(
            "/api/v1/namespaces/default/pods",
            Some("fieldSelector=status.podIPs%3D10.0.0.1"),
        );
        c.ingest(
            "kubelet",
            &odd,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web")]),
            false,
        );
        c.store().flush().unwrap();
        let v = body_json(c.serve_list(
            &Reader::component("kubelet"),
            &all,
            &[Format::Json],
            &Filters::none(),
        ))
        .await;
        assert_eq!(
            v["items"].as_array().map(Vec::len),
            Some(2),
            "p2 is still cached"
        );
        assert_eq!(
            c.serve_list(
                &Reader::component("kubelet"),
                &odd,
                &[Format::Json],
                &Filters::none()
            )
            .status(),
            503,
            "a shape the hub cannot evaluate is never served as complete"
        );
    }

    #[tokio::test]
    async fn an_empty_kubelet_pod_list_is_refused_offline() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let r = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1"),
        );
        c.ingest("kubelet", &r, Format::Json, &pods_json(&[]), false);
        c.store().flush().unwrap();
        assert_eq!(
            c.serve_list(
                &Reader::component("kubelet"),
                &r,
                &[Format::Json],
                &Filters::none()
            )
            .status(),
            404
        );
        let proxy = request("/api/v1/services", None);
        c.ingest("kube-proxy", &proxy, Format::Json, br#"{"kind":"ServiceList","apiVersion":"v1","metadata":{"resourceVersion":"3"},"items":[]}"#, false);
        c.store().flush().unwrap();
        let v = body_json(c.serve_list(
            &Reader::component("kube-proxy"),
            &proxy,
            &[Format::Json],
            &Filters::none(),
        ))
        .await;
        assert_eq!(
            (v["kind"].as_str(), v["items"].as_array().map(Vec::len)),
            (Some("ServiceList"), Some(0))
        );
    }

    #[tokio::test]
    async fn watch_events_update_and_delete_cached_objects() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let list = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1"),
        );
        c.ingest(
            "kubelet",
            &list,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web")]),
            false,
        );
        let watch = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1&watch=true"),
        );
        let mut ing = c.watch_ingestor("kubelet", &watch, Format::Json);
        let added = br#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p2","namespace":"default","resourceVersion":"10"},"spec":{"nodeName":"edge-a1"}}}"#;
        let deleted = br#"{"type":"DELETED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p1","namespace":"default","resourceVersion":"11"},"spec":{"nodeName":"edge-a1"}}}"#;
        ing.ingest(added).await;
        ing.ingest(b"\n").await;
        ing.ingest(deleted).await;
        c.store().flush().unwrap();
        let v = body_json(c.serve_list(
            &Reader::component("kubelet"),
            &list,
            &[Format::Json],
            &Filters::none(),
        ))
        .await;
        let names: Vec<_> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, ["p2"]);
        assert_eq!(v["metadata"]["resourceVersion"], "10");
    }

    #[tokio::test]
    async fn a_watch_waits_for_a_full_cache_queue_once_and_its_shape_is_not_served_stale() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_millis(200);
        let store = Store::open(
            &StoreConfig {
                queue_capacity: 1,
                write_wait: wait,
                ..StoreConfig::new(dir.path())
            },
            HubMetrics::default(),
        )
        .unwrap();
        let c = Cache::new(
            store,
            std::sync::Arc::new(Agents::new("edge-a1", &[])),
            "edge-a1",
        );
        let list = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1"),
        );
        c.ingest(
            "kubelet",
            &list,
            Format::Json,
            &pods_json(&[("p1", "edge-a1", "web")]),
            false,
        );
        c.store().flush().unwrap();
        let serve = |c: &Cache| {
            c.serve_list(
                &Reader::component("kubelet"),
                &list,
                &[Format::Json],
                &Filters::none(),
            )
        };
        assert_eq!(serve(&c).status(), 200);
        let watch = request(
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1&watch=true"),
        );
        let event = |kind: &str, name: &str, rv: u32| {
            format!(
                r#"{{"type":"{kind}","object":{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"{rv}"}},"spec":{{"nodeName":"edge-a1"}}}}}}"#
            ) + "\n"
        };
        let release = c.store().hold_writer();
        let mut ing = c.watch_ingestor("kubelet", &watch, Format::Json);
        ing.ingest(event("ADDED", "p2", 10).as_bytes()).await;
        let started = std::time::Instant::now();
        ing.ingest(event("ADDED", "p3", 11).as_bytes()).await;
        assert!(started.elapsed() >= wait, "it waited for room once");
        let started = std::time::Instant::now();
        ing.ingest(event("ADDED", "p4", 12).as_bytes()).await;
        ing.ingest(event("DELETED", "p1", 13).as_bytes()).await;
        assert!(
            started.elapsed() < wait,
            "then it no longer waits: {:?}",
            started.elapsed()
        );
        assert_eq!(
            serve(&c).status(),
            404,
            "the shape misses p3: not served offline"
        );
        let get = request("/api/v1/namespaces/default/pods/p1", None);
        assert_eq!(
            c.serve_get(
                &Reader::component("kubelet"),
                &get,
                &[Format::Json],
                &Filters::none()
            )
            .status(),
            404,
            "deleted, though its delete found no room in the queue"
        );
        drop(release);
        c.store().flush().unwrap();
        // A fresh list, newer than what was dropped, makes the shape servable again.
        let fresh = serde_json::to_vec(&serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "14"},
            "items": [{"metadata": {"name": "p3", "namespace": "default", "resourceVersion": "11"}, "spec": {"nodeName": "edge-a1"}}]}))
        .unwrap();
        c.ingest("kubelet", &list, Format::Json, &fresh, false);
        c.store().flush().unwrap();
        assert_eq!(serve(&c).status(), 200);
    }

    #[test]
    fn cache_agents_and_cacheable_requests() {
        let a = Agents::new("edge-a1", &["my-app".into()]);
        assert!(
            a.contains("kubelet")
                && a.contains("multiplexer-proxy-edge-a1")
                && a.contains("my-app")
                && a.contains("yurt-iot-agent")
                && a.contains("yurt-iot-dock")
        );
        assert!(!a.contains("kubectl"));
        a.set_configured("kubectl, Foo");
        assert!(a.contains("kubectl") && a.contains("foo"));
        a.set_configured("*");
        assert!(a.contains("anything"));

        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let get_log = request("/api/v1/namespaces/d/pods/p/log", None);
        assert!(!c.cacheable(Some("kubelet"), &get_log));
        assert!(c.cacheable(
            Some("kubelet"),
            &request("/api/v1/namespaces/d/pods/p", None)
        ));
        assert!(!c.cacheable(None, &request("/api/v1/namespaces/d/pods/p", None)));
        let csr = ResourceRequest {
            gvr: Gvr::new("certificates.k8s.io", "v1", "certificatesigningrequests"),
            ..request("/api/v1/pods", None)
        };
        assert!(!c.cacheable(Some("kubelet"), &csr));
    }

    #[test]
    fn offline_watch_timeouts() {
        let r = request("/api/v1/pods", Some("watch=1&timeoutSeconds=30"));
        assert_eq!(
            offline_watch_timeout(&r, Duration::from_secs(1800)),
            Duration::from_secs(30)
        );
        let r = request("/api/v1/pods", Some("watch=1"));
        let t = offline_watch_timeout(&r, Duration::from_secs(1800));
        assert!(t >= Duration::from_secs(1800) && t < Duration::from_secs(3600));
    }
}
