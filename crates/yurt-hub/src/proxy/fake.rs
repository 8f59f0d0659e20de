//! Test doubles for the request path: a hub with a cache in a temporary folder and no
//! API server of its own, and a scripted API server behind [`Upstream`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::forward::{ClientClass, SendFuture, Server, Upstream, UpstreamFailure};
use super::{Hub, Origin, RequestBody};
use crate::body::ResponseBody;
use crate::cache::{Agents, Cache};
use crate::config::{Config, HealthConfig, Limits, PodTokenConfig, UpstreamConfig};
use crate::filter::Filters;
use crate::health::Health;
use crate::identity::Verifier;
use crate::metrics::HubMetrics;
use crate::store::{Store, StoreConfig};
use crate::upstream::Balancer;

/// Bounds every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A hub on node `edge-a1` whose own balancer has no server.
pub fn hub(limits: Limits, filters: Filters) -> (Arc<Hub>, tempfile::TempDir) {
    hub_sharing(limits, filters, super::shared_watch::Settings::default())
}

/// A hub on node `edge-a1` with no server of its own, sharing watches with `shared_watches`.
pub fn hub_sharing(
    limits: Limits,
    filters: Filters,
    shared_watches: super::shared_watch::Settings,
) -> (Arc<Hub>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let metrics = HubMetrics::default();
    let store = Store::open(
        &StoreConfig {
            batch_max: 32,
            ..StoreConfig::new(dir.path().to_owned())
        },
        metrics.clone(),
    )
    .expect("store");
    let config = Config {
        node_name: "edge-a1".parse().expect("node name"),
        pool: None,
        servers: Vec::new(),
        ca_file: dir.path().join("ca.crt"),
        client_cert: dir.path().join("hub.crt"),
        client_key: dir.path().join("hub.key"),
        client_csr: None,
        proxy_addr: "127.0.0.1:0".parse().expect("address"),
        secure_proxy: None,
        admin_addr: "127.0.0.1:0".parse().expect("address"),
        cache_dir: dir.path().to_owned(),
        dummy_interface: None,
        health: HealthConfig::default(),
        upstream: UpstreamConfig::default(),
        min_request_timeout: Duration::from_secs(1800),
        namespace: "kube-system".into(),
        extra_cache_agents: Vec::new(),
        cache_batch_max: 32,
        cache_write_queue: 4096,
        static_pod_dir: dir.path().join("manifests"),
        pod_tokens: PodTokenConfig::default(),
        limits,
    };
    let hub = Arc::new(Hub {
        cache: Cache::new(store, Arc::new(Agents::new("edge-a1", &[])), "edge-a1"),
        // One server, unhealthy until a test says otherwise.
        health: Arc::new(Health::new(
            &["https://fake-server".to_owned()],
            metrics.clone(),
        )),
        balancer: Balancer::new(Vec::new()),
        filters,
        metrics,
        shutdown: CancellationToken::new(),
        autonomy: crate::autonomy::AutonomyReporter::new(Duration::from_secs(30)),
        verifier: Arc::new(Verifier::new(Vec::new())),
        short_requests: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
        shared_watches: super::shared_watch::SharedWatches::new(shared_watches),
        config,
    });
    (hub, dir)
}

/// What the fake server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The client class it came with.
    pub class: ClientClass,
    /// Its head.
    pub parts: http::request::Parts,
    /// Its body.
    pub body: Bytes,
}

type Script = dyn Fn(&Seen) -> Result<Response<ResponseBody>, UpstreamFailure> + Send + Sync;

/// A scripted API server: answers every request with `script`, records what it saw.
#[derive(Clone)]
pub struct FakeServer {
    url: http::Uri,
    script: Arc<Script>,
    /// Every request, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    /// A server at `https://api.test:6443` answering with `script`.
    pub fn new(
        script: impl Fn(&Seen) -> Result<Response<ResponseBody>, UpstreamFailure>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            url: "https://api.test:6443".parse().expect("url"),
            script: Arc::new(script),
            seen: Arc::default(),
        }
    }

    /// The requests it saw.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl<B: RequestBody> Server<B> for FakeServer {
    fn index(&self) -> usize {
        0
    }

    fn url(&self) -> &http::Uri {
        &self.url
    }

    fn kube(&self) -> Option<&kube::Client> {
        None
    }

    fn send(&self, class: ClientClass, req: Request<B>) -> SendFuture {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let seen = Seen { class, parts, body };
            let answer = (this.script)(&seen);
            this.seen.lock().expect("not poisoned").push(seen);
            answer
        })
    }

    fn node_sender(&self) -> Option<super::forward::NodeSender> {
        let this = self.clone();
        Some(Arc::new(move |req| {
            <FakeServer as Server<http_body_util::Full<Bytes>>>::send(&this, ClientClass::Node, req)
        }))
    }
}

/// The API servers as a test sets them: one scripted server, or none (offline).
#[derive(Clone)]
pub struct FakeUpstream(pub Option<FakeServer>);

impl<B: RequestBody> Upstream<B> for FakeUpstream {
    type Server = FakeServer;

    fn pick(&self, _: &Health) -> Option<FakeServer> {
        self.0.clone()
    }
}

/// A request with `body`.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<http_body_util::Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
        .expect("a valid request")
}

/// Sends `req` through the hub's entry with `upstream`, as `tower` would: one call of
/// the service, no socket.
pub async fn send(
    hub: &Arc<Hub>,
    upstream: &FakeUpstream,
    origin: Origin,
    req: Request<http_body_util::Full<Bytes>>,
) -> Response<ResponseBody> {
    use tower::ServiceExt as _;
    let (hub, upstream) = (hub.clone(), upstream.clone());
    let svc = tower::service_fn(move |req| {
        let (hub, upstream) = (hub.clone(), upstream.clone());
        async move { super::serve(hub, &upstream, origin, req).await }
    });
    let Ok(resp) = tokio::time::timeout(WAIT, svc.oneshot(req))
        .await
        .expect("the hub answers in time");
    resp
}

/// A response's status and its body as JSON (`Null` if it is not JSON).
pub async fn json(resp: Response<ResponseBody>) -> (u16, serde_json::Value) {
    let code = resp.status().as_u16();
    let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("the body reads")
        .to_bytes();
    (
        code,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A JSON response from the fake server.
pub fn answer(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(crate::body::full(body))
        .expect("a valid response")
}

/// A filter that drops every object named `hidden` from every component's answers.
pub struct DropHidden;

impl crate::filter::Filter for DropHidden {
    fn name(&self) -> &'static str {
        "drophidden"
    }

    fn applies(&self, _: &str, _: &crate::request::Gvr) -> bool {
        true
    }

    fn apply(&self, obj: crate::codec::RawObject) -> Option<crate::codec::RawObject> {
        (obj.info.name != "hidden").then_some(obj)
    }
}

/// A pod as JSON.
pub fn pod(name: &str, rv: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "spec": {"nodeName": "edge-a1"},
    })
}

/// A pod list as JSON bytes.
pub fn pod_list(names: &[&str]) -> Vec<u8> {
    let items: Vec<_> = names.iter().map(|n| pod(n, "5")).collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "10"},
        "items": items,
    }))
    .expect("JSON")
}

/// kubelet's User-Agent.
pub const KUBELET: (&str, &str) = (
    "user-agent",
    "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19",
);
