use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::*;
use crate::body::{self, BodyError};
use crate::codec::WatchDecoder;
use crate::config::Limits;
use crate::filter::Filters;
use crate::identity::Caller;
use crate::proxy::fake::{
    self, DropHidden, FakeServer, FakeUpstream, KUBELET, WAIT, request, send,
};

const KUBE_PROXY: (&str, &str) = ("user-agent", "kube-proxy/v1.20.2");
const SERVICES: &str = "/api/v1/services";
/// kube-proxy's label selector, encoded as client-go sends it.
const PROXY_SELECTOR: &str =
    "%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name";

type StreamTx = mpsc::Sender<Result<Bytes, BodyError>>;

/// An API server whose every answer is a watch stream the test feeds.
struct WatchServer {
    server: FakeServer,
    streams: Arc<Mutex<Vec<StreamTx>>>,
}

impl WatchServer {
    fn new() -> Self {
        Self::answering("application/json")
    }

    /// A server whose watch streams are in `content_type`.
    fn answering(content_type: &'static str) -> Self {
        let streams = Arc::new(Mutex::new(Vec::new()));
        let kept = streams.clone();
        let server = FakeServer::new(move |_| {
            let (tx, body) = body::channel(64);
            kept.lock().unwrap().push(tx);
            let mut resp = http::Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            Ok(resp)
        });
        Self { server, streams }
    }

    fn upstream(&self) -> FakeUpstream {
        FakeUpstream(Some(self.server.clone()))
    }

    /// The request URIs it saw (path and query).
    fn uris(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .map(|s| {
                s.parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn stream(&self, i: usize) -> StreamTx {
        self.streams.lock().unwrap()[i].clone()
    }

    async fn send(&self, i: usize, line: Vec<u8>) {
        self.stream(i).send(Ok(Bytes::from(line))).await.unwrap();
    }

    /// Ends stream `i` as the API server does at its timeout.
    fn end(&self, i: usize) {
        self.streams.lock().unwrap().remove(i);
    }
}

fn service(name: &str, rv: u64, labels: &[(&str, &str)]) -> serde_json::Value {
    let labels: serde_json::Map<_, _> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                     "labels": labels},
        "spec": {"clusterIP": "10.96.0.10"},
    })
}

fn event(kind: &str, name: &str, rv: u64, labels: &[(&str, &str)]) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&serde_json::json!({"type": kind, "object": service(name, rv, labels)}))
            .unwrap();
    line.push(b'\n');
    line
}

fn error_event() -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({"type": "ERROR", "object": {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
        "reason": "Expired", "message": "too old resource version: 10 (20)", "metadata": {},
    }}))
    .unwrap();
    line.push(b'\n');
    line
}

fn watch_uri(rv: u64, selector: Option<&str>) -> String {
    let mut uri = format!("{SERVICES}?allowWatchBookmarks=true&resourceVersion={rv}&watch=true");
    if let Some(s) = selector {
        uri.push_str("&labelSelector=");
        uri.push_str(s);
    }
    uri
}

/// A client's watch stream as it reads it.
struct Client {
    body: crate::body::ResponseBody,
    decoder: WatchDecoder,
    format: Format,
}

impl Client {
    async fn open(hub: &Arc<Hub>, up: &FakeUpstream, ua: (&str, &str), uri: &str) -> Self {
        Self::open_as(hub, up, ua, uri, Format::Json).await
    }

    async fn open_as(
        hub: &Arc<Hub>,
        up: &FakeUpstream,
        ua: (&str, &str),
        uri: &str,
        format: Format,
    ) -> Self {
        let accept = ("accept", format.content_type());
        let resp = send(
            hub,
            up,
            Origin::Local,
            request("GET", uri, &[ua, accept], b""),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200, "{uri}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            format.watch_content_type()
        );
        Self {
            body: resp.into_body(),
            decoder: WatchDecoder::new(format),
            format,
        }
    }

    /// The next `n` events: (type, name, resourceVersion).
    async fn next(&mut self, n: usize) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("the stream reads");
            let data = frame.into_data().unwrap();
            assert!(
                self.format == Format::Protobuf || data.ends_with(b"\n"),
                "one JSON event per line: {data:?}"
            );
            for (ev, _) in self.decoder.push(&data).unwrap() {
                let info = &ev.object.info;
                out.push((
                    ev.event_type.clone(),
                    info.name.clone(),
                    info.resource_version.clone(),
                ));
            }
        }
        assert_eq!(out.len(), n, "no more events than expected: {out:?}");
        out
    }

    /// Reads the rest of the stream: the events left, once it has ended.
    async fn rest(self) -> Vec<(String, String, String)> {
        let bytes = tokio::time::timeout(WAIT, self.body.collect())
            .await
            .expect("the stream ends in time")
            .expect("the stream reads")
            .to_bytes();
        let mut decoder = self.decoder;
        decoder
            .push(&bytes)
            .unwrap()
            .into_iter()
            .map(|(ev, _)| {
                let info = ev.object.info;
                (ev.event_type, info.name, info.resource_version)
            })
            .collect()
    }
}

fn ev(kind: &str, name: &str, rv: u64) -> (String, String, String) {
    (kind.to_owned(), name.to_owned(), rv.to_string())
}

/// Waits until `cond` holds, at most [`WAIT`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn hub_with(settings: Settings) -> (Arc<Hub>, tempfile::TempDir) {
    fake::hub_sharing(Limits::default(), Filters::none(), settings)
}

#[tokio::test]
async fn two_clients_share_one_upstream_watch_without_label_selector_and_both_get_every_event() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut kubelet = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let proxy_uri = watch_uri(10, Some(PROXY_SELECTOR));
    let mut proxy = Client::open(&hub, &up, KUBE_PROXY, &proxy_uri).await;
    assert_eq!(
        api.uris(),
        ["/api/v1/services?allowWatchBookmarks=true&resourceVersion=10&watch=true"],
        "one upstream watch, with no label selector"
    );
    assert_eq!(api.server.requests()[0].class, ClientClass::Node);
    api.send(0, event("ADDED", "a", 11, &[])).await;
    api.send(0, event("MODIFIED", "a", 12, &[])).await;
    assert_eq!(
        kubelet.next(2).await,
        [ev("ADDED", "a", 11), ev("MODIFIED", "a", 12)]
    );
    assert_eq!(
        proxy.next(2).await,
        [ev("ADDED", "a", 11), ev("MODIFIED", "a", 12)]
    );
    assert_eq!(hub.metrics.shared_watch_upstreams.get(), 1);
    assert_eq!(hub.metrics.shared_watch_subscribers.get(), 2);
}

#[tokio::test]
async fn label_selectors_are_evaluated_per_client_as_the_watch_cache_does() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut kubelet = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let mut proxy = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(10, Some(PROXY_SELECTOR))).await;
    let headless = [("service.kubernetes.io/headless", "")];
    // Seen before the watch started (no earlier event): a change that leaves the
    // selector is a deletion for kube-proxy.
    api.send(0, event("MODIFIED", "old", 11, &headless)).await;
    api.send(0, event("ADDED", "a", 12, &[])).await;
    api.send(0, event("ADDED", "h", 13, &headless)).await;
    // a leaves kube-proxy's selector, h enters it, h changes while matching, a changes
    // while not matching, and both go.
    api.send(0, event("MODIFIED", "a", 14, &headless)).await;
    api.send(0, event("MODIFIED", "h", 15, &[])).await;
    api.send(0, event("MODIFIED", "h", 16, &[("x", "y")])).await;
    api.send(0, event("MODIFIED", "a", 17, &headless)).await;
    api.send(0, event("DELETED", "a", 18, &headless)).await;
    api.send(0, event("DELETED", "h", 19, &[("x", "y")])).await;
    let all = kubelet.next(9).await;
    assert_eq!(
        all.iter().map(|e| e.2.as_str()).collect::<Vec<_>>(),
        ["11", "12", "13", "14", "15", "16", "17", "18", "19"],
        "kubelet has no selector: every event as it came"
    );
    assert_eq!(all[0].0, "MODIFIED");
    assert_eq!(
        proxy.next(6).await,
        [
            ev("DELETED", "old", 11),
            ev("ADDED", "a", 12),
            ev("DELETED", "a", 14),
            ev("ADDED", "h", 15),
            ev("MODIFIED", "h", 16),
            ev("DELETED", "h", 19),
        ]
    );
    assert_eq!(api.uris().len(), 1);
}

#[tokio::test]
async fn a_client_joining_late_from_a_buffered_version_gets_exactly_the_events_after_it() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut first = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    for rv in 11..=13 {
        api.send(0, event("MODIFIED", &format!("s{rv}"), rv, &[]))
            .await;
    }
    assert_eq!(first.next(3).await.len(), 3);
    // kube-proxy listed at 12 (through the hub): it must see 13 and what follows, once.
    let mut late = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(12, None)).await;
    api.send(0, event("ADDED", "s14", 14, &[])).await;
    assert_eq!(
        late.next(2).await,
        [ev("MODIFIED", "s13", 13), ev("ADDED", "s14", 14)]
    );
    assert_eq!(first.next(1).await, [ev("ADDED", "s14", 14)]);
    // One ahead of everything seen so far (its list came at a later global version).
    let mut ahead = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(20, None)).await;
    api.send(0, event("MODIFIED", "s14", 21, &[])).await;
    assert_eq!(ahead.next(1).await, [ev("MODIFIED", "s14", 21)]);
    assert_eq!(api.uris().len(), 1, "all from the one upstream watch");
}

#[tokio::test]
async fn a_client_older_than_the_buffer_gets_a_watch_of_its_own() {
    let settings = Settings {
        buffer_events: 2,
        ..Settings::default()
    };
    let (hub, _dir) = hub_with(settings);
    let api = WatchServer::new();
    let up = api.upstream();
    let mut first = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    for rv in 11..=13 {
        api.send(0, event("MODIFIED", "s", rv, &[])).await;
    }
    assert_eq!(first.next(3).await.len(), 3);
    // 11 fell out of the buffer: a client at 10 cannot be served exactly.
    let old_uri = format!("{}&timeoutSeconds=300", watch_uri(10, None));
    let _old = Client::open(&hub, &up, KUBE_PROXY, &old_uri).await;
    assert_eq!(api.uris().len(), 2);
    assert_eq!(api.uris()[1], old_uri, "its own request, as it sent it");
    assert_eq!(hub.metrics.shared_watch_upstreams.get(), 1);
    let too_old = || {
        hub.metrics
            .shared_watch_fallbacks
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "too_old".into(),
            })
            .get()
    };
    assert_eq!(too_old(), 1);
    // At 11 every later event is still at hand.
    let mut at_11 = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(11, None)).await;
    assert_eq!(
        at_11.next(2).await,
        [ev("MODIFIED", "s", 12), ev("MODIFIED", "s", 13)]
    );
    assert_eq!(api.uris().len(), 2);
}

#[tokio::test]
async fn an_upstream_error_ends_every_client_after_the_error() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut a = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let mut b = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(10, Some(PROXY_SELECTOR))).await;
    api.send(0, event("ADDED", "s", 11, &[])).await;
    assert_eq!(a.next(1).await.len(), 1);
    assert_eq!(b.next(1).await.len(), 1);
    api.send(0, error_event()).await;
    for client in [a, b] {
        let rest = client.rest().await;
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].0, "ERROR");
    }
    until("the shared watch is gone", || hub.shared_watches.is_empty()).await;
    assert_eq!(hub.metrics.shared_watch_subscribers.get(), 0);
    // The next watch opens a new one.
    let _c = Client::open(&hub, &up, KUBELET, &watch_uri(20, None)).await;
    assert_eq!(api.uris().len(), 2);
    assert!(api.uris()[1].contains("resourceVersion=20"));
}

#[tokio::test]
async fn a_slow_client_is_ended_and_the_others_go_on() {
    let settings = Settings {
        subscriber_queue: 2,
        ..Settings::default()
    };
    let (hub, _dir) = hub_with(settings);
    let api = WatchServer::new();
    let up = api.upstream();
    let mut fast = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let slow = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(10, None)).await;
    // The slow client reads nothing: its body channel (32 events) and its queue (2)
    // fill, then it is dropped.
    for rv in 11..=80 {
        api.send(0, event("MODIFIED", "s", rv, &[])).await;
        assert_eq!(fast.next(1).await, [ev("MODIFIED", "s", rv)]);
    }
    assert_eq!(hub.metrics.shared_watch_lagged.get(), 1);
    let got = slow.rest().await;
    assert!(!got.is_empty() && got.len() < 70, "{} events", got.len());
    let rvs: Vec<u64> = got.iter().map(|e| e.2.parse().unwrap()).collect();
    assert_eq!(
        rvs,
        (11..11 + got.len() as u64).collect::<Vec<_>>(),
        "in order, none skipped"
    );
    assert_eq!(api.uris().len(), 1);
}

#[tokio::test]
async fn the_upstream_watch_closes_when_the_last_client_left() {
    let settings = Settings {
        linger: Duration::ZERO,
        ..Settings::default()
    };
    let (hub, _dir) = hub_with(settings);
    let api = WatchServer::new();
    let up = api.upstream();
    let a = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let b = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(10, None)).await;
    let upstream = api.stream(0);
    drop(a);
    api.send(0, event("ADDED", "s", 11, &[])).await;
    assert!(!upstream.is_closed(), "one client is still there");
    drop(b);
    tokio::time::timeout(WAIT, upstream.closed())
        .await
        .expect("the upstream watch is closed");
    assert!(hub.shared_watches.is_empty());
    until("no upstream watch counted", || {
        hub.metrics.shared_watch_upstreams.get() == 0
    })
    .await;
    assert_eq!(hub.metrics.shared_watch_subscribers.get(), 0);
}

#[tokio::test]
async fn an_ended_upstream_watch_is_opened_again_from_its_last_version() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut a = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    api.send(0, event("ADDED", "s", 11, &[])).await;
    api.send(
        0,
        serde_json::to_vec(&serde_json::json!({"type": "BOOKMARK", "object": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "15"}}}))
        .unwrap(),
    )
    .await;
    assert_eq!(
        a.next(2).await,
        [ev("ADDED", "s", 11), ev("BOOKMARK", "", 15)]
    );
    api.end(0);
    until("the watch is opened again", || api.uris().len() == 2).await;
    assert_eq!(
        api.uris()[1],
        "/api/v1/services?allowWatchBookmarks=true&resourceVersion=15&watch=true"
    );
    api.send(0, event("MODIFIED", "s", 16, &[])).await;
    assert_eq!(a.next(1).await, [ev("MODIFIED", "s", 16)]);
    assert_eq!(hub.metrics.shared_watch_reopens.get(), 1);
}

#[tokio::test]
async fn bookmarks_reach_only_clients_that_asked_for_them() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut with = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let mut without = Client::open(
        &hub,
        &up,
        KUBE_PROXY,
        &format!("{SERVICES}?resourceVersion=10&watch=true"),
    )
    .await;
    api.send(
        0,
        serde_json::to_vec(&serde_json::json!({"type": "BOOKMARK", "object": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "15"}}}))
        .unwrap(),
    )
    .await;
    api.send(0, event("ADDED", "s", 16, &[])).await;
    assert_eq!(
        with.next(2).await,
        [ev("BOOKMARK", "", 15), ev("ADDED", "s", 16)]
    );
    assert_eq!(without.next(1).await, [ev("ADDED", "s", 16)]);
}

#[tokio::test]
async fn each_client_ends_at_its_own_timeout_and_keeps_its_filters() {
    let (hub, _dir) = fake::hub_sharing(
        Limits::default(),
        Filters::new(vec![Box::new(DropHidden)]),
        Settings::default(),
    );
    let api = WatchServer::new();
    let up = api.upstream();
    let mut long = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let short_uri = format!("{}&timeoutSeconds=1", watch_uri(10, None));
    let short = Client::open(&hub, &up, KUBE_PROXY, &short_uri).await;
    api.send(0, event("ADDED", "hidden", 11, &[])).await;
    assert_eq!(
        long.next(1).await,
        [ev("DELETED", "hidden", 11)],
        "filtered"
    );
    assert_eq!(
        short.rest().await,
        [ev("DELETED", "hidden", 11)],
        "ends at 1 s"
    );
    api.send(0, event("ADDED", "s", 12, &[])).await;
    assert_eq!(long.next(1).await, [ev("ADDED", "s", 12)]);
}

#[tokio::test]
async fn shared_events_are_cached_under_each_client() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let mut kubelet = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    api.send(0, event("ADDED", "s", 11, &[])).await;
    assert_eq!(kubelet.next(1).await.len(), 1);
    let offline = FakeUpstream(None);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let get = request(
            "GET",
            "/api/v1/namespaces/default/services/s",
            &[KUBELET],
            b"",
        );
        let (code, svc) = fake::json(send(&hub, &offline, Origin::Local, get).await).await;
        if code == 200 {
            assert_eq!(svc["metadata"]["resourceVersion"], "11");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn plan_of(
    origin: Origin,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<Result<Plan, &'static str>> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let uri: http::Uri = uri.parse().unwrap();
    let caller = if origin == Origin::Local {
        Caller::Node
    } else {
        Caller::Anonymous
    };
    let ctx = Ctx::new(origin, caller, &http::Method::GET, &uri, &map);
    plan(&ctx, &map, &uri)
}

#[test]
fn only_watches_the_hub_sends_as_the_node_and_can_serve_exactly_are_shared() {
    let ok = plan_of(
        Origin::Local,
        &watch_uri(10, Some(PROXY_SELECTOR)),
        &[KUBE_PROXY],
    )
    .unwrap()
    .unwrap();
    assert_eq!(ok.from, 10);
    assert_eq!(
        ok.labels.unwrap().to_string(),
        "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
    );
    assert!(ok.bookmarks);
    assert!(plan_of(Origin::Local, SERVICES, &[]).is_none(), "a list");
    for (origin, uri, headers, reason) in [
        (Origin::Pod, watch_uri(10, None), vec![], "credentials"),
        (
            Origin::Local,
            watch_uri(10, None),
            vec![("authorization", "Bearer t")],
            "credentials",
        ),
        (
            Origin::Local,
            watch_uri(10, None),
            vec![("impersonate-user", "admin")],
            "credentials",
        ),
        (
            Origin::Local,
            watch_uri(0, None),
            vec![],
            "resource_version",
        ),
        (
            Origin::Local,
            format!("{SERVICES}?watch=true"),
            vec![],
            "resource_version",
        ),
        (
            Origin::Local,
            format!("{}&resourceVersionMatch=NotOlderThan", watch_uri(10, None)),
            vec![],
            "query",
        ),
        (
            Origin::Local,
            "/api/v1/watch/services?resourceVersion=10".to_owned(),
            vec![],
            "path",
        ),
        (
            Origin::Local,
            watch_uri(10, Some("a%20b%20c")),
            vec![],
            "selector",
        ),
    ] {
        assert_eq!(
            plan_of(origin, &uri, &headers).unwrap().err(),
            Some(reason),
            "{origin:?} {uri} {headers:?}"
        );
    }
    let metadata = plan_of(
        Origin::Local,
        &watch_uri(10, None),
        &[(
            "accept",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        )],
    )
    .unwrap()
    .unwrap();
    assert_ne!(metadata.key, ok.key, "metadata only is another shape");
}

fn proto_event(kind: &str, name: &str, rv: u64, labels: &[(&str, &str)]) -> Vec<u8> {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost::Message as _;
    let svc = core::Service {
        metadata: Some(meta::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            resource_version: Some(rv.to_string()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let obj = crate::codec::proto_from_message("v1", "Service", Bytes::from(svc.encode_to_vec()))
        .unwrap();
    crate::codec::encode_watch_event(Format::Protobuf, kind, &obj).to_vec()
}

#[tokio::test]
async fn protobuf_watches_share_and_label_selectors_read_protobuf_labels() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::answering("application/vnd.kubernetes.protobuf;stream=watch");
    let up = api.upstream();
    let proto = Format::Protobuf;
    let mut kubelet = Client::open_as(&hub, &up, KUBELET, &watch_uri(10, None), proto).await;
    let proxy_uri = watch_uri(10, Some(PROXY_SELECTOR));
    let mut proxy = Client::open_as(&hub, &up, KUBE_PROXY, &proxy_uri, proto).await;
    assert_eq!(api.uris().len(), 1);
    let headless = [("service.kubernetes.io/headless", "")];
    api.send(0, proto_event("ADDED", "a", 11, &[])).await;
    api.send(0, proto_event("MODIFIED", "a", 12, &headless))
        .await;
    api.send(0, proto_event("ADDED", "h", 13, &headless)).await;
    assert_eq!(
        kubelet.next(3).await,
        [
            ev("ADDED", "a", 11),
            ev("MODIFIED", "a", 12),
            ev("ADDED", "h", 13)
        ]
    );
    assert_eq!(
        proxy.next(2).await,
        [ev("ADDED", "a", 11), ev("DELETED", "a", 12)]
    );
}

#[tokio::test]
async fn json_and_protobuf_watches_are_different_shapes() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let _json = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    let accept = ("accept", Format::Protobuf.content_type());
    let _proto = send(
        &hub,
        &up,
        Origin::Local,
        request("GET", &watch_uri(10, None), &[KUBE_PROXY, accept], b""),
    )
    .await;
    assert_eq!(api.uris().len(), 2);
    let accepts: Vec<_> = api
        .server
        .requests()
        .iter()
        .map(|s| s.parts.headers.get(header::ACCEPT).cloned())
        .collect();
    assert_eq!(accepts[0].as_ref().unwrap(), "application/json");
    assert_eq!(
        accepts[1].as_ref().unwrap(),
        Format::Protobuf.content_type()
    );
}

#[tokio::test]
async fn the_buffer_is_bounded_in_bytes_too() {
    let settings = Settings {
        buffer_bytes: 1,
        ..Settings::default()
    };
    let (hub, _dir) = hub_with(settings);
    let api = WatchServer::new();
    let up = api.upstream();
    let mut first = Client::open(&hub, &up, KUBELET, &watch_uri(10, None)).await;
    api.send(0, event("ADDED", "s", 11, &[])).await;
    api.send(0, event("MODIFIED", "s", 12, &[])).await;
    assert_eq!(first.next(2).await.len(), 2);
    // Nothing fits: only a client at the last version is served from the shared watch.
    let _late = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(11, None)).await;
    assert_eq!(api.uris().len(), 2, "11 is older than what is kept");
    let mut current = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(12, None)).await;
    assert_eq!(api.uris().len(), 2);
    api.send(0, event("MODIFIED", "s", 13, &[])).await;
    assert_eq!(current.next(1).await, [ev("MODIFIED", "s", 13)]);
}

#[test]
fn accept_headers_that_get_the_same_stream_share() {
    let protobuf = "application/vnd.kubernetes.protobuf";
    for (accept, shape) in [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/json, */*", "application/json"),
        (protobuf, protobuf),
        ("application/vnd.kubernetes.protobuf, */*", protobuf),
        (
            "application/vnd.kubernetes.protobuf,application/json",
            protobuf,
        ),
        (
            "application/json,application/vnd.kubernetes.protobuf",
            "application/json",
        ),
        (
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        ),
        (
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/json",
        ),
        (
            "application/json;q=0.5, application/vnd.kubernetes.protobuf",
            "application/json;q=0.5, application/vnd.kubernetes.protobuf",
        ),
        ("application/yaml", "application/yaml"),
    ] {
        assert_eq!(shape_of_accept(accept), shape, "{accept}");
    }
}

#[tokio::test]
async fn a_captured_protobuf_stream_reaches_every_client_byte_for_byte() {
    // A pod watch stream kube-apiserver 1.20.2 sent, in chunks that cut events.
    let captured = include_bytes!("../../../tests/data/podwatch.pb");
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::answering("application/vnd.kubernetes.protobuf;stream=watch");
    let up = api.upstream();
    let uri = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-b2&resourceVersion=1&watch=true";
    let accept = ("accept", "application/vnd.kubernetes.protobuf, */*");
    let mut bodies = Vec::new();
    for ua in [KUBELET, KUBE_PROXY] {
        let resp = send(
            &hub,
            &up,
            Origin::Local,
            request("GET", uri, &[ua, accept], b""),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200);
        bodies.push(resp.into_body());
    }
    assert_eq!(api.uris().len(), 1);
    assert!(api.uris()[0].contains("fieldSelector=spec.nodeName%3Dedge-b2"));
    for chunk in captured.chunks(700) {
        api.send(0, chunk.to_vec()).await;
    }
    api.end(0);
    for body in bodies {
        let mut got = Vec::new();
        let mut body = body;
        while got.len() < captured.len() {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("in time")
                .expect("more")
                .expect("reads");
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, captured.to_vec());
    }
}

#[tokio::test]
async fn a_label_selector_goes_upstream_until_a_watch_without_one_is_open() {
    let (hub, _dir) = hub_with(Settings::default());
    let api = WatchServer::new();
    let up = api.upstream();
    let selected = watch_uri(10, Some(PROXY_SELECTOR));
    // kube-proxy first: its selector goes upstream, as on its own.
    let mut proxy = Client::open(&hub, &up, KUBE_PROXY, &selected).await;
    let mut proxy_too = Client::open(&hub, &up, KUBE_PROXY, &selected).await;
    assert_eq!(
        api.uris(),
        std::slice::from_ref(&selected),
        "one watch, with the selector"
    );
    // The API server filtered it: what comes is passed as it is.
    api.send(0, event("ADDED", "a", 11, &[])).await;
    assert_eq!(proxy.next(1).await, [ev("ADDED", "a", 11)]);
    assert_eq!(proxy_too.next(1).await, [ev("ADDED", "a", 11)]);
    // kubelet cannot use it: a watch without a selector opens.
    let mut kubelet = Client::open(&hub, &up, KUBELET, &watch_uri(11, None)).await;
    assert_eq!(api.uris().len(), 2);
    assert_eq!(api.uris()[1], watch_uri(11, None));
    // kube-proxy's next watch moves to kubelet's and evaluates its selector here.
    let mut moved = Client::open(&hub, &up, KUBE_PROXY, &watch_uri(11, Some(PROXY_SELECTOR))).await;
    assert_eq!(api.uris().len(), 2);
    api.send(
        1,
        event("ADDED", "h", 12, &[("service.kubernetes.io/headless", "")]),
    )
    .await;
    api.send(1, event("ADDED", "b", 13, &[])).await;
    assert_eq!(
        kubelet.next(2).await,
        [ev("ADDED", "h", 12), ev("ADDED", "b", 13)]
    );
    assert_eq!(moved.next(1).await, [ev("ADDED", "b", 13)]);
    assert_eq!(hub.metrics.shared_watch_upstreams.get(), 2);
}
