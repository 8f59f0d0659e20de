//! The hub's connections to an API server, against an in-process HTTP/2 server over TLS:
//! more connections when one reaches the server's stream limit (1,000 watches through
//! one hub, writes still answered), and gzip asked for, decoded, cached plain.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use yurt_core::pki::{CertSpec, CertificateAuthority};
use yurt_hub::body::{self, ResponseBody};
use yurt_hub::cache::{Agents, Cache};
use yurt_hub::config::{Config, HealthConfig, Limits, PodTokenConfig, UpstreamConfig};
use yurt_hub::filter::Filters;
use yurt_hub::health::Health;
use yurt_hub::identity::Verifier;
use yurt_hub::metrics::HubMetrics;
use yurt_hub::proxy::{self, Hub, Origin};
use yurt_hub::store::{Store, StoreConfig};
use yurt_hub::upstream::{Balancer, H2Pool, PoolConfig};

const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "edge-a1";

/// A cluster CA, a serving certificate for 127.0.0.1 and the hub's client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let server = ca
            .issue(&CertSpec::server(
                "kube-apiserver",
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
            ))
            .unwrap();
        let client = ca
            .issue(&CertSpec::client(
                format!("system:node:{NODE}"),
                &["system:nodes"],
            ))
            .unwrap();
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.crt", ca.cert_pem());
        write("server.crt", &server.cert_pem);
        write("server.key", &server.key_pem);
        write("hub.crt", &client.cert_pem);
        write("hub.key", &client.key_pem);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_tls(&self) -> rustls::ServerConfig {
        yurt_hub::tls::server_config(
            &self.path("server.crt"),
            &self.path("server.key"),
            &self.path("ca.crt"),
        )
        .unwrap()
    }

    fn client_tls(&self) -> rustls::ClientConfig {
        yurt_hub::tls::client_config(&self.path("ca.crt"), None).unwrap()
    }
}

/// An HTTP/2 (and HTTP/1.1) server over TLS allowing `max_streams` streams per
/// connection; counts the connections it accepted and can drop them all.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    shutdown: CancellationToken,
}

impl Upstream {
    async fn start<F, Fut>(pki: &Pki, max_streams: u32, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_tls()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (acc, conns, token) = (accepted.clone(), connections.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                    () = token.cancelled() => return,
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                let task = tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let f = handler(req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(max_streams);
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            accepted,
            connections,
            shutdown,
        }
    }

    fn url(&self) -> http::Uri {
        format!("https://{}", self.addr).parse().unwrap()
    }

    fn drop_connections(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.drop_connections();
    }
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut resp = Response::new(body::full(serde_json::to_vec(value).unwrap()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A response whose body stays open until `held` is cleared.
fn held_open(
    held: &Mutex<Vec<tokio::sync::mpsc::Sender<Result<Bytes, body::BodyError>>>>,
) -> Response<ResponseBody> {
    let (tx, body) = body::channel(1);
    held.lock().unwrap().push(tx);
    Response::new(body)
}

fn pool_config(max_streams: usize) -> PoolConfig {
    PoolConfig {
        connect_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(10),
        max_streams,
        idle_timeout: Duration::from_secs(90),
    }
}

fn get(url: &http::Uri, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("{url}{}", path.trim_start_matches('/')))
        .body(Empty::new())
        .unwrap()
}

type Held = Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Result<Bytes, body::BodyError>>>>>;

/// `/hold` answers headers and keeps its body open; a POST is echoed with 201; anything
/// else is a small JSON object.
fn holding_handler(
    held: Held,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: Request<Incoming>| {
        let held = held.clone();
        Box::pin(async move {
            if req.uri().path() == "/hold" {
                return held_open(&held);
            }
            if req.method() == http::Method::POST {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let mut resp = Response::new(body::full(bytes));
                *resp.status_mut() = StatusCode::CREATED;
                return resp;
            }
            json(StatusCode::OK, &serde_json::json!({"kind": "ConfigMap"}))
        })
    }
}

#[tokio::test]
async fn a_connection_at_the_stream_limit_makes_the_pool_open_another() {
    let pki = Pki::new();
    let held: Held = Arc::default();
    let upstream = Upstream::start(&pki, 5, holding_handler(held.clone())).await;
    let url = upstream.url();
    let pool = H2Pool::new(&url, pki.client_tls(), pool_config(5)).unwrap();
    let mut open = Vec::new();
    for _ in 0..12 {
        let resp = tokio::time::timeout(
            WAIT,
            pool.send(get(&url, "/hold").map(|b| b.map_err(|n| match n {}).boxed())),
        )
        .await
        .expect("a held request gets its headers")
        .unwrap();
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    assert_eq!(pool.connections(), vec![5, 5, 2]);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    // A read and a write still go through while twelve streams are held.
    let resp = tokio::time::timeout(
        WAIT,
        pool.send(
            get(&url, "/api/v1/namespaces/default/configmaps/c")
                .map(|b| b.map_err(|n| match n {}).boxed()),
        ),
    )
    .await
    .expect("a read is answered while others hold streams")
    .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"kind":"ConfigMap"}"#);
    let post = Request::post(format!("{url}api/v1/namespaces/default/events"))
        .body(
            Full::new(Bytes::from_static(b"{\"kind\":\"Event\"}"))
                .map_err(|n| match n {})
                .boxed(),
        )
        .unwrap();
    let resp = tokio::time::timeout(WAIT, pool.send(post))
        .await
        .expect("a write is answered while others hold streams")
        .unwrap();
    assert_eq!(resp.status(), 201);
    drop(resp);
    // A finished or dropped response frees its stream at once.
    open.truncate(7);
    assert_eq!(pool.connections(), vec![5, 2, 0]);
    let _more = pool
        .send(get(&url, "/hold").map(|b| b.map_err(|n| match n {}).boxed()))
        .await
        .unwrap();
    assert_eq!(pool.connections(), vec![5, 3, 0], "first fit");
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        3,
        "no new connection while one has room"
    );
}

#[tokio::test]
async fn closed_connections_are_dropped_and_replaced() {
    let pki = Pki::new();
    let held: Held = Arc::default();
    let upstream = Upstream::start(&pki, 5, holding_handler(held.clone())).await;
    let url = upstream.url();
    let pool = H2Pool::new(&url, pki.client_tls(), pool_config(5)).unwrap();
    let resp = pool
        .send(get(&url, "/c").map(|b| b.map_err(|n| match n {}).boxed()))
        .await
        .unwrap();
    drop(resp);
    assert_eq!(pool.connections(), vec![0]);
    upstream.drop_connections();
    tokio::time::timeout(WAIT, async {
        while !pool.connections().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the pool notices the closed connection");
    let resp = tokio::time::timeout(
        WAIT,
        pool.send(get(&url, "/c").map(|b| b.map_err(|n| match n {}).boxed())),
    )
    .await
    .expect("answered on a new connection")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_replaced_client_certificate_goes_out_on_new_connections_and_old_streams_finish() {
    let pki = Pki::new();
    let held: Held = Arc::default();
    let upstream = Upstream::start(&pki, 5, holding_handler(held.clone())).await;
    let url = upstream.url();
    let identity = yurt_hub::certificate::FollowedFiles::load(
        "client certificate",
        &pki.path("hub.crt"),
        &pki.path("hub.key"),
    )
    .unwrap();
    let slot = identity.slot();
    let tls = yurt_hub::tls::client_config_with(
        &pki.path("ca.crt"),
        Some(slot.clone() as Arc<dyn rustls::client::ResolvesClientCert>),
    )
    .unwrap();
    let pool = H2Pool::new(&url, tls, pool_config(5))
        .unwrap()
        .with_identity(slot.clone());
    let send = |path: &str| pool.send(get(&url, path).map(|b| b.map_err(|n| match n {}).boxed()));
    let watch = send("/hold").await.unwrap();
    drop(send("/c").await.unwrap());
    assert_eq!(pool.connections(), vec![1]);

    // Replaced (a renewal, or the hub's own certificate after kubelet's).
    slot.set(slot.get().unwrap());
    let resp = send("/c").await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        2,
        "a new connection"
    );
    assert_eq!(
        pool.connections(),
        vec![1, 0],
        "the watch stays on the old one"
    );
    drop(send("/c").await.unwrap());
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        2,
        "the new one is reused"
    );

    // The old connection takes nothing new and goes once its last stream ends.
    drop(watch);
    drop(send("/c").await.unwrap());
    assert_eq!(pool.connections(), vec![0]);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pool_that_trusts_more_streams_than_the_server_allows_stalls() {
    // Why the limit must be at or below the server's: hyper queues a request the
    // connection has no stream for, behind streams that may never end (watches).
    let pki = Pki::new();
    let held: Held = Arc::default();
    let upstream = Upstream::start(&pki, 5, holding_handler(held.clone())).await;
    let url = upstream.url();
    let pool = H2Pool::new(&url, pki.client_tls(), pool_config(100)).unwrap();
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(
            pool.send(get(&url, "/hold").map(|b| b.map_err(|n| match n {}).boxed()))
                .await
                .unwrap(),
        );
    }
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        pool.send(get(&url, "/c").map(|b| b.map_err(|n| match n {}).boxed())),
    )
    .await;
    assert!(stalled.is_err(), "the sixth request waits for a stream");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

// === through a hub ===

/// What the fake API server saw and can send.
#[derive(Default)]
struct ApiState {
    watches: AtomicUsize,
    events: Mutex<Option<broadcast::Sender<Bytes>>>,
    accept_encodings: Mutex<Vec<Option<String>>>,
}

fn config_map_list(n: usize) -> Vec<u8> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "metadata": {"name": format!("cm-{i:04}"), "namespace": "default", "resourceVersion": (i + 1).to_string()},
                "data": {"k": "v".repeat(100)},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "5000"},
        "items": items,
    }))
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A fake API server: the node's lease (so the hub's prober sees it healthy), watches
/// fed from `events`, configmap lists gzipped when asked (namespace `corrupt`: cut short),
/// writes echoed.
async fn api(state: Arc<ApiState>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if path.ends_with(&format!("/leases/{NODE}")) {
        if req.method() == http::Method::PUT {
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let mut resp = Response::new(body::full(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NODE, "namespace": "kube-node-lease", "resourceVersion": "1"},
                "spec": {"holderIdentity": NODE},
            }),
        );
    }
    if query.contains("watch=true") {
        let Some(mut events) = state
            .events
            .lock()
            .unwrap()
            .as_ref()
            .map(broadcast::Sender::subscribe)
        else {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"kind": "Status"}),
            );
        };
        state.watches.fetch_add(1, Ordering::SeqCst);
        let (tx, body) = body::channel(4);
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    if req.method() == http::Method::POST {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let mut resp = Response::new(body::full(bytes));
        *resp.status_mut() = StatusCode::CREATED;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    if path.ends_with("/configmaps") {
        let ae = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned());
        state.accept_encodings.lock().unwrap().push(ae.clone());
        let plain = config_map_list(300);
        let mut resp = if ae.is_some_and(|a| a.contains("gzip")) {
            let mut gz = gzip(&plain);
            if path.contains("/namespaces/corrupt/") {
                gz.truncate(gz.len() / 2);
            }
            let mut r = Response::new(body::full(gz));
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
            r
        } else {
            Response::new(body::full(plain))
        };
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"kind": "Status", "code": 404}),
    )
}

struct OnlineHub {
    hub: Arc<Hub>,
    local: SocketAddr,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for OnlineHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn online_hub(pki: &Pki, upstream: &Upstream, up: UpstreamConfig) -> OnlineHub {
    let dir = tempfile::tempdir().unwrap();
    let metrics = HubMetrics::default();
    let store = Store::open(
        &StoreConfig {
            batch_max: 32,
            ..StoreConfig::new(dir.path().to_owned())
        },
        metrics.clone(),
    )
    .unwrap();
    let config = Config {
        node_name: NODE.parse().unwrap(),
        pool: None,
        servers: vec![upstream.url()],
        ca_file: pki.path("ca.crt"),
        client_cert: pki.path("hub.crt"),
        client_key: pki.path("hub.key"),
        client_csr: None,
        proxy_addr: "127.0.0.1:0".parse().unwrap(),
        secure_proxy: None,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        cache_dir: dir.path().to_owned(),
        dummy_interface: None,
        // One probe at start, then none for the test's length: the test decides
        // when the hub is offline.
        health: HealthConfig {
            interval: Duration::from_secs(3600),
            ..HealthConfig::default()
        },
        upstream: up,
        min_request_timeout: Duration::from_secs(1800),
        namespace: "kube-system".into(),
        extra_cache_agents: Vec::new(),
        cache_batch_max: 32,
        cache_write_queue: 4096,
        static_pod_dir: dir.path().join("manifests"),
        pod_tokens: PodTokenConfig::default(),
        limits: Limits::default(),
    };
    let identity = yurt_hub::certificate::FollowedFiles::load(
        "client certificate",
        &config.client_cert,
        &config.client_key,
    )
    .unwrap();
    let backends = yurt_hub::upstream::backends(&config, &identity.slot()).unwrap();
    let health = Arc::new(Health::new(&[upstream.url().to_string()], metrics.clone()));
    let shutdown = CancellationToken::new();
    tokio::spawn(yurt_hub::health::run(
        health.clone(),
        backends.clone(),
        NODE.into(),
        config.health,
        shutdown.clone(),
    ));
    let mut online = health.subscribe();
    tokio::time::timeout(WAIT, online.wait_for(|o| *o))
        .await
        .expect("the hub's first probe passes")
        .unwrap();
    let hub = Arc::new(Hub {
        cache: Cache::new(store, Arc::new(Agents::new(NODE, &[])), NODE),
        health,
        balancer: Balancer::new(backends),
        filters: Filters::none(),
        metrics,
        shutdown: shutdown.clone(),
        autonomy: yurt_hub::autonomy::AutonomyReporter::new(Duration::from_secs(30)),
        verifier: Arc::new(Verifier::new(Vec::new())),
        short_requests: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight)),
        shared_watches: yurt_hub::proxy::shared_watch::SharedWatches::default(),
        config,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let (h, token) = (hub.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                () = token.cancelled() => return,
            };
            let hub = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| proxy::handle(hub.clone(), Origin::Local, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    OnlineHub {
        hub,
        local,
        shutdown,
        _dir: dir,
    }
}

/// An HTTP/1.1 connection to the hub.
async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn hub_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "hub");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watches_through_one_hub_and_writes_still_pass() {
    const WATCHES: usize = 1000;
    let pki = Pki::new();
    let state = Arc::new(ApiState::default());
    *state.events.lock().unwrap() = Some(broadcast::channel(16).0);
    let st = state.clone();
    // kube-apiserver 1.20's limit: 250 streams per connection.
    let upstream = Upstream::start(&pki, 250, move |req| api(st.clone(), req)).await;
    let hub = online_hub(&pki, &upstream, UpstreamConfig::default()).await;
    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let mut send = h1(hub.local).await;
        let req = hub_request(
            "GET",
            &format!("/api/v1/namespaces/ns-{i}/configmaps?watch=true"),
            &[("user-agent", "watcher/1")],
            b"",
        );
        watches.push(tokio::spawn(async move {
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            // The one event, whole.
            let mut got = Vec::new();
            while !got.ends_with(b"\n") {
                let frame = body.frame().await.expect("the watch stays open").unwrap();
                got.extend_from_slice(&frame.into_data().unwrap_or_default());
            }
            got
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while state.watches.load(Ordering::SeqCst) < WATCHES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {WATCHES} watches reached the API server",
            state.watches.load(Ordering::SeqCst)
        )
    });
    let backend = &hub.hub.balancer.all()[0];
    let conns = backend.node.connections();
    assert_eq!(conns.iter().sum::<usize>(), WATCHES, "{conns:?}");
    assert!(
        conns.len() >= WATCHES / 100 && conns.iter().all(|&n| n <= 100),
        "{conns:?}"
    );
    // Writes (and reads) go through while the watches hold their streams.
    let mut send = h1(hub.local).await;
    for _ in 0..20 {
        let req = hub_request(
            "POST",
            "/api/v1/namespaces/default/events",
            &[("content-type", "application/json")],
            b"{\"kind\":\"Event\"}",
        );
        let resp = tokio::time::timeout(Duration::from_secs(5), async {
            send.ready().await?;
            send.send_request(req).await
        })
        .await
        .expect("a write is answered while 1,000 watches run")
        .unwrap();
        assert_eq!(resp.status(), 201);
        let _ = resp.into_body().collect().await;
    }
    // Every watch gets its event.
    let event = Bytes::from_static(
        b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}}\n",
    );
    state
        .events
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .send(event.clone())
        .unwrap();
    for w in watches {
        let got = tokio::time::timeout(WAIT, w)
            .await
            .expect("the event arrives")
            .unwrap();
        assert_eq!(got, event);
    }
}

async fn list(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut send = h1(addr).await;
    let resp = tokio::time::timeout(
        WAIT,
        send.send_request(hub_request("GET", path, headers, b"")),
    )
    .await
    .expect("answered")
    .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body arrives")
        .unwrap()
        .to_bytes();
    Response::from_parts(parts, bytes)
}

const KUBELET: (&str, &str) = (
    "user-agent",
    "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19",
);

#[tokio::test]
async fn lists_cross_the_wan_gzipped_and_are_served_and_cached_plain() {
    let pki = Pki::new();
    let state = Arc::new(ApiState::default());
    let st = state.clone();
    let upstream = Upstream::start(&pki, 250, move |req| api(st.clone(), req)).await;
    let hub = online_hub(&pki, &upstream, UpstreamConfig::default()).await;
    let plain = config_map_list(300);
    let path = "/api/v1/namespaces/default/configmaps";
    // A cache agent (buffered, cached) and a client the hub only passes through (streamed).
    for ua in [KUBELET, ("user-agent", "other/1")] {
        let resp = list(hub.local, path, &[ua, ("accept-encoding", "br")]).await;
        assert_eq!(resp.status(), 200, "{ua:?}");
        assert!(
            resp.headers().get(header::CONTENT_ENCODING).is_none(),
            "{ua:?}: served plain"
        );
        if let Some(len) = resp.headers().get(header::CONTENT_LENGTH) {
            assert_eq!(
                len.to_str().unwrap(),
                resp.body().len().to_string(),
                "{ua:?}"
            );
        }
        assert_eq!(resp.body(), &plain[..], "{ua:?}");
    }
    assert_eq!(
        *state.accept_encodings.lock().unwrap(),
        vec![Some("gzip".to_owned()), Some("gzip".to_owned())],
        "the hub asks for gzip, never for the client's encodings"
    );
    // Offline, kubelet's list comes from the cache, plain.
    hub.hub.health.transport_failed(0);
    let cached = tokio::time::timeout(WAIT, async {
        loop {
            let resp = list(hub.local, path, &[KUBELET]).await;
            if resp.status() == 200 {
                break resp;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the list was cached");
    assert!(cached.headers().contains_key(proxy::SOURCE_HEADER));
    let list: serde_json::Value = serde_json::from_slice(cached.body()).expect("a plain JSON list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(300));
    assert_eq!(list["items"][299]["data"]["k"], "v".repeat(100));
}

#[tokio::test]
async fn a_corrupt_gzip_list_is_a_502_status() {
    let pki = Pki::new();
    let state = Arc::new(ApiState::default());
    let st = state.clone();
    let upstream = Upstream::start(&pki, 250, move |req| api(st.clone(), req)).await;
    let hub = online_hub(&pki, &upstream, UpstreamConfig::default()).await;
    let resp = list(
        hub.local,
        "/api/v1/namespaces/corrupt/configmaps",
        &[KUBELET],
    )
    .await;
    assert_eq!(resp.status(), 502);
    let status: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        (&status["kind"], &status["reason"]),
        (
            &serde_json::json!("Status"),
            &serde_json::json!("BadGateway")
        )
    );
    assert!(
        status["message"].as_str().unwrap().contains("gzip"),
        "{status}"
    );
    // The hub is still online and serving.
    assert!(hub.hub.health.online());
    let resp = list(
        hub.local,
        "/api/v1/namespaces/default/configmaps",
        &[KUBELET],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn with_gzip_off_nothing_asks_for_it() {
    let pki = Pki::new();
    let state = Arc::new(ApiState::default());
    let st = state.clone();
    let upstream = Upstream::start(&pki, 250, move |req| api(st.clone(), req)).await;
    let hub = online_hub(
        &pki,
        &upstream,
        UpstreamConfig {
            gzip: false,
            ..UpstreamConfig::default()
        },
    )
    .await;
    let resp = list(
        hub.local,
        "/api/v1/namespaces/default/configmaps",
        &[KUBELET, ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(resp.body(), &config_map_list(300)[..]);
    assert_eq!(*state.accept_encodings.lock().unwrap(), vec![None]);
}
