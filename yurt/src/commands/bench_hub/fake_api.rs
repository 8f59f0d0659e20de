//! An in-process API server for the hub's own figures (so the real API server's load is
//! out of them), and a TCP relay that counts the bytes on the hub's WAN link.
//!
//! It answers the node's Lease (so the hub's prober finds it healthy), a small fixed
//! ConfigMap, writes (echoed, 201), watches fed from a broadcast channel, and the lists a
//! kubelet and a kube-proxy read when they restart on a node with 1,000 pods: pods on
//! the node, Services, EndpointSlices, in protobuf as those components ask. Like
//! kube-apiserver 1.20 it gzips a response when asked and when it is over 128 KiB.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::discovery::v1beta1 as discovery;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use yurt_hub::codec::{self, Format, RawObject};

/// The node the hub serves.
pub const NODE: &str = "ghost";
/// A small object for latency figures.
pub const SMALL_PATH: &str = "/api/v1/namespaces/default/configmaps/bench-small";
/// Namespace whose watches are fed from [`FakeApi::events`] and counted.
pub const WATCH_NAMESPACE: &str = "bench-watch";
/// kubelet's pods on the node.
pub const PODS_PATH: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dghost";
/// Services (kubelet and kube-proxy).
pub const SERVICES_PATH: &str = "/api/v1/services";
/// EndpointSlices (kube-proxy 1.20).
pub const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1beta1/endpointslices";

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// kube-apiserver compresses a response only when its first write is larger than this.
const GZIP_THRESHOLD: usize = 128 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// A body, plain and gzipped.
struct Listed {
    plain: Bytes,
    gzip: Bytes,
}

impl Listed {
    fn new(plain: Bytes) -> Self {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(4));
        let gzip = e
            .write_all(&plain)
            .and_then(|()| e.finish())
            .map(Bytes::from)
            .unwrap_or_default();
        Self { plain, gzip }
    }
}

struct State {
    small: Bytes,
    pods: Listed,
    services: Listed,
    slices: Listed,
    watches: AtomicUsize,
    connections: AtomicUsize,
    events: broadcast::Sender<Bytes>,
}

/// The running server.
pub struct FakeApi {
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FakeApi {
    /// Watches in [`WATCH_NAMESPACE`] open now.
    pub fn watches(&self) -> usize {
        self.state.watches.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Sends `event` to every open watch in [`WATCH_NAMESPACE`].
    pub fn send_event(&self, event: Bytes) {
        let _ = self.state.events.send(event);
    }

    /// Plain sizes of the pods, Services and EndpointSlices lists.
    pub fn relist_plain_bytes(&self) -> usize {
        self.state.pods.plain.len()
            + 2 * self.state.services.plain.len()
            + self.state.slices.plain.len()
    }
}

fn meta(name: String, namespace: &str, rv: usize) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.into()),
        uid: Some(format!("6c3e2a9e-0000-4000-8000-{rv:012}")),
        resource_version: Some(rv.to_string()),
        ..Default::default()
    }
}

fn pod(i: usize) -> RawObject {
    let app = format!("app-{}", i % 50);
    let container = |name: &str| core::Container {
        name: Some(name.into()),
        image: Some(format!("registry.example.com/team/{app}:v1.{}", i % 7)),
        ports: vec![core::ContainerPort {
            container_port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        env: (0..5)
            .map(|k| core::EnvVar {
                name: Some(format!("SETTING_{k}")),
                value: Some(format!("value-{k}-{app}")),
                ..Default::default()
            })
            .collect(),
        volume_mounts: vec![core::VolumeMount {
            name: Some("kube-api-access".into()),
            mount_path: Some("/var/run/secrets/kubernetes.io/serviceaccount".into()),
            read_only: Some(true),
            ..Default::default()
        }],
        termination_message_path: Some("/dev/termination-log".into()),
        image_pull_policy: Some("IfNotPresent".into()),
        ..Default::default()
    };
    let status = |name: &str| core::ContainerStatus {
        name: Some(name.into()),
        ready: Some(true),
        restart_count: Some(0),
        image: Some(format!("registry.example.com/team/{app}:v1.{}", i % 7)),
        image_id: Some(format!(
            "registry.example.com/team/{app}@sha256:{:064x}",
            i % 7
        )),
        container_id: Some(format!("containerd://{:064x}", i * 31 + name.len())),
        started: Some(true),
        ..Default::default()
    };
    let p = core::Pod {
        metadata: Some(ObjectMeta {
            generate_name: Some(format!("{app}-7d9c5b8f4-")),
            labels: [
                ("app".to_owned(), app.clone()),
                ("pod-template-hash".to_owned(), "7d9c5b8f4".to_owned()),
            ]
            .into(),
            owner_references: vec![OwnerReference {
                api_version: Some("apps/v1".into()),
                kind: Some("ReplicaSet".into()),
                name: Some(format!("{app}-7d9c5b8f4")),
                uid: Some(format!("0b7e1c2d-0000-4000-8000-{:012}", i % 50)),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            ..meta(format!("{app}-7d9c5b8f4-{i:05}"), "default", i + 1)
        }),
        spec: Some(core::PodSpec {
            node_name: Some(NODE.into()),
            containers: vec![container("main"), container("sidecar")],
            service_account_name: Some("default".into()),
            restart_policy: Some("Always".into()),
            dns_policy: Some("ClusterFirst".into()),
            scheduler_name: Some("default-scheduler".into()),
            tolerations: vec![core::Toleration {
                key: Some("node.kubernetes.io/not-ready".into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            host_ip: Some("192.168.10.5".into()),
            pod_ip: Some(format!("10.244.{}.{}", i / 250, i % 250)),
            qos_class: Some("BestEffort".into()),
            conditions: ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .iter()
                .map(|t| core::PodCondition {
                    r#type: Some((*t).into()),
                    status: Some("True".into()),
                    ..Default::default()
                })
                .collect(),
            container_statuses: vec![status("main"), status("sidecar")],
            ..Default::default()
        }),
    };
    codec::proto_from_message("v1", "Pod", Bytes::from(p.encode_to_vec())).expect("encoded pod")
}

fn service(i: usize) -> RawObject {
    let s = core::Service {
        metadata: Some(ObjectMeta {
            labels: [("app".to_owned(), format!("app-{i}"))].into(),
            ..meta(format!("svc-{i:04}"), "default", 10_000 + i)
        }),
        spec: Some(core::ServiceSpec {
            cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250)),
            r#type: Some("ClusterIP".into()),
            selector: [("app".to_owned(), format!("app-{i}"))].into(),
            ports: vec![core::ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(80),
                ..Default::default()
            }],
            session_affinity: Some("None".into()),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus::default()),
    };
    codec::proto_from_message("v1", "Service", Bytes::from(s.encode_to_vec()))
        .expect("encoded service")
}

fn slice(i: usize) -> RawObject {
    let s = discovery::EndpointSlice {
        metadata: Some(ObjectMeta {
            labels: [(
                "kubernetes.io/service-name".to_owned(),
                format!("svc-{i:04}"),
            )]
            .into(),
            ..meta(format!("svc-{i:04}-abcde"), "default", 20_000 + i)
        }),
        address_type: Some("IPv4".into()),
        endpoints: (0..5)
            .map(|k| discovery::Endpoint {
                addresses: vec![format!("10.244.{}.{}", k, (i * 5 + k) % 250)],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                topology: [("kubernetes.io/hostname".to_owned(), NODE.to_owned())].into(),
                target_ref: Some(core::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some("default".into()),
                    name: Some(format!("app-{i}-{k}")),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: vec![discovery::EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..Default::default()
        }],
    };
    codec::proto_from_message(
        "discovery.k8s.io/v1beta1",
        "EndpointSlice",
        Bytes::from(s.encode_to_vec()),
    )
    .expect("encoded slice")
}

fn respond(code: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(http_body_util::Full::new(body).boxed());
    *resp.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn listed(req: &Request<Incoming>, l: &Listed) -> Response<Body> {
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if gzip && l.plain.len() > GZIP_THRESHOLD {
        let mut resp = respond(StatusCode::OK, PROTOBUF, l.gzip.clone());
        resp.headers_mut().insert(
            header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        resp
    } else {
        respond(StatusCode::OK, PROTOBUF, l.plain.clone())
    }
}

/// A watch body fed from the broadcast channel; counted while it is open.
struct WatchBody {
    rx: mpsc::Receiver<Bytes>,
    state: Arc<State>,
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        self.state.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("");
    let json = "application/json";
    if path.ends_with(&format!("/leases/{NODE}")) {
        let body = if req.method() == http::Method::PUT {
            req.into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default()
        } else {
            Bytes::from(format!(
                r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{NODE}","namespace":"kube-node-lease","resourceVersion":"1"}},"spec":{{"holderIdentity":"{NODE}"}}}}"#
            ))
        };
        return respond(StatusCode::OK, json, body);
    }
    if req.method() == http::Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return respond(StatusCode::CREATED, json, body);
    }
    if query.split('&').any(|kv| kv == "watch=true") {
        if !path.contains(&format!("/namespaces/{WATCH_NAMESPACE}/")) {
            // The hub's own watches (its cluster view): held open, never fed.
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move { tx.closed().await });
            let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (Ok(Frame::data(b)), rx)) },
            ));
            return Response::new(body.boxed());
        }
        let (tx, rx) = mpsc::channel(16);
        let mut events = state.events.subscribe();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        state.watches.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(
            WatchBody {
                rx,
                state: state.clone(),
            }
            .boxed(),
        );
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(json));
        return resp;
    }
    match path.as_str() {
        SMALL_PATH => respond(StatusCode::OK, json, state.small.clone()),
        "/api/v1/pods" if query.contains("spec.nodeName") => listed(&req, &state.pods),
        SERVICES_PATH => listed(&req, &state.services),
        SLICES_PATH => listed(&req, &state.slices),
        "/readyz" | "/healthz" => respond(StatusCode::OK, "text/plain", Bytes::from_static(b"ok")),
        _ => respond(
            StatusCode::NOT_FOUND,
            json,
            Bytes::from_static(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#),
        ),
    }
}

/// Starts the server on 127.0.0.1 with the serving certificate in `pki`
/// (`server.crt`, `server.key`, signed by `ca.crt`).
pub async fn start(pki: &Path, pods: usize, services: usize) -> anyhow::Result<FakeApi> {
    let tls = yurt_hub::tls::server_config(
        &pki.join("server.crt"),
        &pki.join("server.key"),
        &pki.join("ca.crt"),
    )?;
    let list = |kind: &str, api_version: &str, items: Vec<RawObject>| {
        Listed::new(codec::encode_list(
            Format::Protobuf,
            api_version,
            kind,
            "900000",
            &items,
        ))
    };
    let state = Arc::new(State {
        small: Bytes::from_static(
            br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"bench-small","namespace":"default","resourceVersion":"7"},"data":{"k":"v"}}"#,
        ),
        pods: list("PodList", "v1", (0..pods).map(pod).collect()),
        services: list("ServiceList", "v1", (0..services).map(service).collect()),
        slices: list(
            "EndpointSliceList",
            "discovery.k8s.io/v1beta1",
            (0..services).map(slice).collect(),
        ),
        watches: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        events: broadcast::channel(64).0,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let shutdown = CancellationToken::new();
    let (st, token) = (state.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                () = token.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            st.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, st, token) = (acceptor.clone(), st.clone(), token.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(handle(st, req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // kube-apiserver 1.20's default.
                builder.http2().max_concurrent_streams(250);
                tokio::select! {
                    _ = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc) => {}
                    () = token.cancelled() => {}
                }
            });
        }
    });
    Ok(FakeApi {
        addr,
        state,
        shutdown,
    })
}

// === the WAN link ===

/// A TCP relay to one address that counts every byte it carries, both ways.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Relay {
    /// Bytes carried so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// A stream that adds what it reads and writes to a counter.
struct Counted {
    inner: tokio::net::TcpStream,
    bytes: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes.fetch_add(n as u64, Ordering::SeqCst);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.bytes.fetch_add(*n as u64, Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Starts a counting relay to `to`.
pub async fn relay(to: SocketAddr) -> anyhow::Result<Relay> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let (counter, token) = (bytes.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let inbound = tokio::select! {
                s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                () = token.cancelled() => return,
            };
            let (counter, token) = (counter.clone(), token.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let mut inbound = Counted {
                    inner: inbound,
                    bytes: counter,
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = token.cancelled() => {}
                }
            });
        }
    });
    Ok(Relay {
        addr,
        bytes,
        shutdown,
    })
}
