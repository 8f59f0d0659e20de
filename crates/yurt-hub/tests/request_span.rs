//! The request span: `http.method`, `http.path`, `component` (from the User-Agent) and
//! `served_by`. Its own test binary, with one test: `tracing` caches per call site
//! whether anyone listens, and a test on another thread of a shared binary that meets
//! the span first, with no subscriber, would make this one see nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use yurt_hub::body::ResponseBody;
use yurt_hub::cache::{Agents, Cache};
use yurt_hub::config::{Config, HealthConfig, Limits, PodTokenConfig, UpstreamConfig};
use yurt_hub::filter::Filters;
use yurt_hub::health::Health;
use yurt_hub::identity::Verifier;
use yurt_hub::metrics::HubMetrics;
use yurt_hub::proxy::forward::{ClientClass, SendFuture};
use yurt_hub::proxy::{self, Hub, Origin, Server, Upstream};
use yurt_hub::store::{Store, StoreConfig};
use yurt_hub::upstream::Balancer;

type SpanFields = BTreeMap<String, String>;

/// Collects the fields of every closed `request` span.
#[derive(Clone, Default)]
struct RequestSpans(Arc<Mutex<Vec<SpanFields>>>);

struct Collect<'a>(&'a mut SpanFields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for RequestSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = SpanFields::new();
        attrs.record(&mut Collect(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(fields) = span.extensions().get::<SpanFields>()
        {
            self.0.lock().unwrap().push(fields.clone());
        }
    }
}

/// An API server answering `{}` to everything.
#[derive(Clone)]
struct Empty(http::Uri);

/// That server, or none.
#[derive(Clone)]
struct Answers(Option<Empty>);

impl Server<Full<Bytes>> for Empty {
    fn index(&self) -> usize {
        0
    }
    fn url(&self) -> &http::Uri {
        &self.0
    }
    fn kube(&self) -> Option<&kube::Client> {
        None
    }
    fn send(&self, _: ClientClass, _: http::Request<Full<Bytes>>) -> SendFuture {
        Box::pin(async {
            Ok(http::Response::builder()
                .header("content-type", "application/json")
                .body(yurt_hub::body::full("{}"))
                .unwrap())
        })
    }
}

impl Upstream<Full<Bytes>> for Answers {
    type Server = Empty;
    fn pick(&self, _: &Health) -> Option<Empty> {
        self.0.clone()
    }
}

fn hub(dir: &tempfile::TempDir) -> Arc<Hub> {
    let metrics = HubMetrics::default();
    let store = Store::open(
        &StoreConfig {
            batch_max: 32,
            ..StoreConfig::new(dir.path().to_owned())
        },
        metrics.clone(),
    )
    .unwrap();
    let limits = Limits::default();
    let config = Config {
        node_name: "edge-a1".parse().unwrap(),
        pool: None,
        servers: Vec::new(),
        ca_file: dir.path().join("ca.crt"),
        client_cert: dir.path().join("hub.crt"),
        client_key: dir.path().join("hub.key"),
        client_csr: None,
        proxy_addr: "127.0.0.1:0".parse().unwrap(),
        secure_proxy: None,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
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
    Arc::new(Hub {
        cache: Cache::new(store, Arc::new(Agents::new("edge-a1", &[])), "edge-a1"),
        health: Arc::new(Health::new(&[], metrics.clone())),
        balancer: Balancer::new(Vec::new()),
        filters: Filters::none(),
        metrics,
        shutdown: CancellationToken::new(),
        autonomy: yurt_hub::autonomy::AutonomyReporter::new(Duration::from_secs(30)),
        verifier: Arc::new(Verifier::new(Vec::new())),
        short_requests: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
        shared_watches: yurt_hub::proxy::shared_watch::SharedWatches::default(),
        config,
    })
}

async fn send(
    hub: &Arc<Hub>,
    upstream: &Answers,
    method: &str,
    ua: Option<&str>,
) -> http::Response<ResponseBody> {
    let mut req = http::Request::builder()
        .method(method)
        .uri("/api/v1/nodes/edge-a1");
    if let Some(ua) = ua {
        req = req.header("user-agent", ua);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let Ok(resp) = tokio::time::timeout(
        Duration::from_secs(10),
        proxy::serve(hub.clone(), upstream, Origin::Local, req),
    )
    .await
    .expect("the hub answers in time");
    resp
}

#[tokio::test]
async fn the_request_span_names_method_path_component_and_who_answered() {
    let spans = RequestSpans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir);
    let online = Answers(Some(Empty("https://api.test:6443".parse().unwrap())));
    let offline = Answers(None);
    let kubelet = "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19";
    drop(send(&hub, &online, "GET", Some(kubelet)).await);
    drop(send(&hub, &offline, "DELETE", None).await);
    let seen = spans.0.lock().unwrap().clone();
    let field = |i: usize, k: &str| seen[i].get(k).map(String::as_str);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(field(0, "http.method"), Some("GET"));
    assert_eq!(field(0, "http.path"), Some("/api/v1/nodes/edge-a1"));
    assert_eq!(field(0, "component"), Some("kubelet"));
    assert_eq!(field(0, "served_by"), Some("upstream"));
    assert_eq!(field(1, "http.method"), Some("DELETE"));
    assert_eq!(field(1, "component"), None, "no User-Agent, no component");
    assert_eq!(field(1, "served_by"), Some("cache"));
}
