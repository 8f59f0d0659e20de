//! The hub's request path with no API server reachable, over real sockets: who is
//! answered from the cache on which port, and the limits on bodies and concurrency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use yurt_hub::cache::{Agents, Cache};
use yurt_hub::config::{Config, HealthConfig, Limits, PodTokenConfig, UpstreamConfig};
use yurt_hub::filter::Filters;
use yurt_hub::health::Health;
use yurt_hub::identity::Verifier;
use yurt_hub::metrics::HubMetrics;
use yurt_hub::proxy::{self, Hub, Origin};
use yurt_hub::store::{Store, StoreConfig};
use yurt_hub::upstream::Balancer;

const WAIT: Duration = Duration::from_secs(10);

/// A hub with no API server (always offline), its node-local and pod-facing ports.
struct OfflineHub {
    metrics: HubMetrics,
    local: SocketAddr,
    pod: SocketAddr,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for OfflineHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(hub: Arc<Hub>, origin: Origin, shutdown: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                () = shutdown.cancelled() => return,
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| proxy::handle(hub.clone(), origin, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn offline_hub(limits: Limits) -> OfflineHub {
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
    let shutdown = CancellationToken::new();
    let hub_metrics = metrics.clone();
    let hub = Arc::new(Hub {
        cache: Cache::new(store, Arc::new(Agents::new("edge-a1", &[])), "edge-a1"),
        health: Arc::new(Health::new(&[], metrics.clone())),
        balancer: Balancer::new(Vec::new()),
        filters: Filters::none(),
        metrics,
        shutdown: shutdown.clone(),
        autonomy: yurt_hub::autonomy::AutonomyReporter::new(Duration::from_secs(30)),
        verifier: Arc::new(Verifier::new(Vec::new())),
        short_requests: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
        shared_watches: yurt_hub::proxy::shared_watch::SharedWatches::default(),
        config,
    });
    OfflineHub {
        metrics: hub_metrics,
        local: serve(hub.clone(), Origin::Local, shutdown.clone()).await,
        pod: serve(hub, Origin::Pod, shutdown.clone()).await,
        _dir: dir,
        shutdown,
    }
}

/// Sends one request; returns the status and the body as JSON.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("the hub answers")
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body arrives")
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1";
const KUBELET: (&str, &str) = (
    "user-agent",
    "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19",
);

fn lease_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "edge-a1", "namespace": "kube-node-lease", "resourceVersion": "5"},
        "spec": {"holderIdentity": "edge-a1", "leaseDurationSeconds": 40},
    }))
    .unwrap()
}

#[tokio::test]
async fn offline_the_pod_port_answers_nothing_without_a_provable_token() {
    let hub = offline_hub(Limits::default()).await;
    let ct = ("content-type", "application/json");
    let cases = [
        (
            "GET",
            "/api/v1/namespaces/victim/secrets/s",
            vec![KUBELET],
            Vec::new(),
        ),
        (
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-a1",
            vec![KUBELET],
            Vec::new(),
        ),
        ("GET", "/version", vec![], Vec::new()),
        ("PUT", LEASE, vec![KUBELET, ct], lease_body()),
        (
            "POST",
            "/api/v1/namespaces/idt/configmaps",
            vec![ct],
            b"{}".to_vec(),
        ),
        (
            "GET",
            "/api/v1/namespaces/idt/configmaps",
            vec![("authorization", "Bearer not-a-jwt")],
            Vec::new(),
        ),
    ];
    for (method, path, headers, body) in cases {
        let (code, status) = send(hub.pod, method, path, &headers, body).await;
        assert_eq!(code, 401, "{method} {path} on the pod port: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}");
    }
    // The same lease renewal on the node-local port is kubelet's own: kept locally.
    let (code, lease) = send(hub.local, "PUT", LEASE, &[KUBELET, ct], lease_body()).await;
    assert_eq!(code, 200, "{lease}");
    assert_eq!(lease["spec"]["holderIdentity"], "edge-a1");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let hub = offline_hub(Limits {
        max_request_body: 1024,
        ..Limits::default()
    })
    .await;
    let ct = ("content-type", "application/json");
    let big = serde_json::to_vec(&serde_json::json!({"data": "x".repeat(4096)})).unwrap();
    let (code, status) = send(
        hub.local,
        "POST",
        "/api/v1/namespaces/default/events",
        &[ct],
        big.clone(),
    )
    .await;
    assert_eq!(
        (code, &status["reason"]),
        (413, &serde_json::json!("RequestEntityTooLarge"))
    );
    let (code, _) = send(hub.local, "PUT", LEASE, &[KUBELET, ct], big).await;
    assert_eq!(code, 413);
    let (code, echoed) = send(
        hub.local,
        "POST",
        "/api/v1/namespaces/default/events",
        &[ct],
        b"{\"kind\":\"Event\"}".to_vec(),
    )
    .await;
    assert_eq!((code, &echoed["kind"]), (201, &serde_json::json!("Event")));
}

#[tokio::test]
async fn short_requests_beyond_the_limit_get_429_and_watches_do_not_count() {
    let hub = offline_hub(Limits {
        max_in_flight: 1,
        ..Limits::default()
    })
    .await;
    // Hold the one permit: a request whose body never finishes arriving.
    let mut slow = tokio::net::TcpStream::connect(hub.local).await.unwrap();
    slow.write_all(
        b"POST /api/v1/namespaces/default/events HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\"",
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, async {
        while hub.metrics.in_flight.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slow request reaches the hub");
    let (code, status) = send(
        hub.local,
        "GET",
        "/api/v1/namespaces/default/pods",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(
        (code, &status["reason"]),
        (429, &serde_json::json!("TooManyRequests")),
        "a second short request is refused while the first holds the permit"
    );
    // A watch is long-running: it is served (held open offline) regardless.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let watch = http::Request::get(format!(
        "http://{}/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1",
        hub.local
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(watch))
        .await
        .expect("the watch is answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Finishing the slow body frees the permit.
    slow.write_all(&[b' '; 93]).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(WAIT, slow.read_exact(&mut buf))
        .await
        .expect("the slow request is answered")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 201");
    let (code, _) = send(
        hub.local,
        "GET",
        "/api/v1/namespaces/default/pods",
        &[],
        Vec::new(),
    )
    .await;
    assert_ne!(code, 429);
    // Each answer was timed, by who gave it.
    let mut registry = prometheus_client::registry::Registry::default();
    hub.metrics
        .register(registry.sub_registry_with_prefix("yurt_hub"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "yurt_hub_request_duration_seconds_count{served_by=\"refused\"} 1",
        "yurt_hub_request_duration_seconds_count{served_by=\"cache\"} 3",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}
