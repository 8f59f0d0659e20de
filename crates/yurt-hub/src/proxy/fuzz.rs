//! Property test of the hub's HTTP entry ([`super::serve`], called as a `tower` service
//! with no socket): arbitrary requests (methods, paths, queries, headers, bodies) on
//! either port, with the cloud gone, failing, or answering arbitrary bodies. Bounded: a
//! fixed number of cases, a few seconds. Every request gets an answer in time, every
//! answer the hub makes itself for an error is a Kubernetes Status with its code, no
//! permit leaks, and the cache writer survives whatever it was fed.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use super::fake::{self, DropHidden, FakeServer, FakeUpstream, answer, pod_list, send};
use super::forward::UpstreamFailure;
use super::{Hub, Origin, SOURCE_HEADER};
use crate::codec::{self, Format};
use crate::config::Limits;
use crate::filter::Filters;
use crate::request::{RequestInfo, Verb};

/// What the API server does with the request.
#[derive(Debug, Clone)]
enum Cloud {
    /// None is healthy: answered offline.
    Gone,
    /// The request fails.
    Fails { unreachable: bool },
    /// Answers with this code, content type and body.
    Answers(u16, Option<&'static str>, Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    origin: Origin,
    method: http::Method,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    cloud: Cloud,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "api", "apis", "v1", "coordination.k8s.io", "namespaces", "watch", "pods",
            "nodes", "leases", "kube-node-lease", "edge-a1", "default", "status", "exec",
            "hidden", "version", "configmaps", "events",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._~%-]{0,10}",
    ]
}

/// A Kubernetes-shaped path (group and version, maybe a namespace, a resource, maybe a
/// name and a subresource), or any segments.
fn path() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        prop::sample::select(vec!["edge-a1", "hidden", "p", "kube-node-lease", "default"])
            .prop_map(str::to_owned),
        segment(),
    ];
    let shaped = (
        prop::sample::select(vec![
            "/api/v1",
            "/api/v1/watch",
            "/apis/coordination.k8s.io/v1",
            "/apis/apps/v1",
            "/apis/discovery.k8s.io/v1beta1",
        ]),
        prop::option::of(name.clone()),
        prop::sample::select(vec![
            "pods",
            "nodes",
            "leases",
            "configmaps",
            "services",
            "endpoints",
            "namespaces",
            "events",
            "secrets",
        ]),
        prop::option::of(name),
        prop::option::of(prop::sample::select(vec![
            "status", "exec", "log", "proxy", "x",
        ])),
    )
        .prop_map(|(prefix, ns, resource, name, sub)| {
            let mut p = prefix.to_owned();
            if let Some(ns) = ns {
                p.push_str(&format!("/namespaces/{ns}"));
            }
            p.push('/');
            p.push_str(resource);
            if let Some(n) = name {
                p.push_str(&format!("/{n}"));
                if let Some(s) = sub {
                    p.push_str(&format!("/{s}"));
                }
            }
            p
        });
    let any_segments =
        prop::collection::vec(segment(), 0..8).prop_map(|s| format!("/{}", s.join("/")));
    prop_oneof![4 => shaped, 1 => any_segments]
}

fn uri() -> impl Strategy<Value = String> {
    let query = prop::collection::vec(
        (
            prop::sample::select(vec![
                "watch",
                "watch",
                "fieldSelector",
                "labelSelector",
                "resourceVersion",
                "timeoutSeconds",
                "continue",
                "follow",
                "x",
            ]),
            prop_oneof![
                prop::sample::select(vec![
                    "true",
                    "1",
                    "",
                    "0",
                    "spec.nodeName%3Dedge-a1",
                    "a%3Db",
                    "%C3%A9%3D1",
                    "a%20in%20(b)",
                    "metadata.name%3D%E2%82%AC",
                    "%ff%fe",
                    "1000000000000",
                ])
                .prop_map(str::to_owned),
                "[a-zA-Z0-9%=,!()._-]{0,12}",
            ],
        ),
        0..4,
    );
    (path(), query).prop_map(|(path, query)| {
        if query.is_empty() {
            return path;
        }
        let q: Vec<_> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{path}?{}", q.join("&"))
    })
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "user-agent",
        "user-agent",
        "accept",
        "content-type",
        "authorization",
        "connection",
        "upgrade",
        "x-any",
    ])
    .prop_map(str::to_owned);
    let value = prop_oneof![
        prop::sample::select(vec![
            "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19",
            "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19",
            "kube-proxy/v1.20.2",
            "coredns/1.7",
            "application/json",
            "application/vnd.kubernetes.protobuf",
            "application/vnd.kubernetes.protobuf, application/json",
            "*/*",
            "Upgrade",
            "SPDY/3.1",
            "Bearer not-a-jwt",
            "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec((name, value), 0..6)
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        pod_list(&["a", "hidden"]),
        include_bytes!("../../tests/fuzz-seeds/pod.json").to_vec(),
        include_bytes!("../../tests/fuzz-seeds/podwatch.json").to_vec(),
        include_bytes!("../../tests/data/podlist.pb").to_vec(),
        include_bytes!("../../tests/data/podwatch.pb").to_vec(),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(seeds()),
        (prop::sample::select(seeds()), any::<usize>()).prop_map(|(s, cut)| {
            let cut = cut % (s.len() + 1);
            s[..cut].to_vec()
        }),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn cloud() -> impl Strategy<Value = Cloud> {
    let content_type = prop::sample::select(vec![
        Some("application/json"),
        Some("application/vnd.kubernetes.protobuf"),
        Some("application/vnd.kubernetes.protobuf;stream=watch"),
        Some("text/plain"),
        None,
    ]);
    prop_oneof![
        Just(Cloud::Gone),
        any::<bool>().prop_map(|unreachable| Cloud::Fails { unreachable }),
        (
            prop::sample::select(vec![200u16, 201, 404, 500]),
            content_type,
            body()
        )
            .prop_map(|(c, t, b)| Cloud::Answers(c, t, b)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![Origin::Local, Origin::Local, Origin::Pod]),
        prop::sample::select(vec![
            http::Method::GET,
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
            http::Method::HEAD,
            http::Method::OPTIONS,
        ]),
        uri(),
        headers(),
        body(),
        cloud(),
    )
        .prop_map(|(origin, method, uri, headers, body, cloud)| Case {
            origin,
            method,
            uri,
            headers,
            body,
            cloud,
        })
}

fn request(case: &Case) -> Option<Request<http_body_util::Full<Bytes>>> {
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(&case.uri);
    for (k, v) in &case.headers {
        // Bytes no HTTP parser would let through never reach the hub.
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req = req.header(k.as_str(), v);
        }
    }
    req.body(http_body_util::Full::new(Bytes::from(case.body.clone())))
        .ok()
}

fn upstream(cloud: &Cloud) -> FakeUpstream {
    let cloud = cloud.clone();
    match cloud {
        Cloud::Gone => FakeUpstream(None),
        _ => FakeUpstream(Some(FakeServer::new(move |_| match &cloud {
            Cloud::Fails { unreachable } => Err(UpstreamFailure {
                message: "stream reset".into(),
                unreachable: *unreachable,
            }),
            Cloud::Answers(code, ct, body) => Ok(match ct {
                Some(ct) => answer(*code, ct, body.clone()),
                None => {
                    let mut r = answer(*code, "x/y", body.clone());
                    r.headers_mut().remove(header::CONTENT_TYPE);
                    r
                }
            }),
            Cloud::Gone => unreachable!("no server when the cloud is gone"),
        }))),
    }
}

/// Whether `bytes` in `content_type` is a Status with `code`.
fn is_status(content_type: Option<&str>, bytes: &[u8], code: u16) -> bool {
    let format = content_type.and_then(Format::of_content_type);
    match format.map(|f| codec::decode_object(f, bytes)) {
        Some(Ok(obj)) if obj.kind == "Status" => match obj.format {
            Format::Json => serde_json::from_slice::<serde_json::Value>(bytes)
                .is_ok_and(|v| v["code"] == code && v["reason"].is_string()),
            Format::Protobuf => true,
        },
        _ => false,
    }
}

async fn check(hub: &Arc<Hub>, case: Case) -> Result<(), TestCaseError> {
    let Some(req) = request(&case) else {
        return Ok(());
    };
    let watch = matches!(
        RequestInfo::parse(req.method(), req.uri().path(), req.uri().query()),
        RequestInfo::Resource(r) if r.verb == Verb::Watch
    );
    let resp = send(hub, &upstream(&case.cloud), case.origin, req).await;
    let code = resp.status().as_u16();
    let local = resp.headers().contains_key(SOURCE_HEADER);
    let passed_on = matches!(&case.cloud, Cloud::Answers(c, ..) if *c == code) && !local;
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if local && watch && code == 200 {
        // An offline watch is held open until the cloud is back: nothing more to read.
        return Ok(());
    }
    let bytes = tokio::time::timeout(fake::WAIT, resp.into_body().collect())
        .await
        .map_err(|_| TestCaseError::fail("the body never ends"))?
        .map_err(|e| TestCaseError::fail(format!("the body breaks: {e}")))?
        .to_bytes();
    if code >= 400 && !passed_on {
        prop_assert!(
            is_status(content_type.as_deref(), &bytes, code),
            "{code} answered by the hub is not a Status: {content_type:?} {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    prop_assert_eq!(
        hub.metrics.in_flight.get(),
        0,
        "a request still counts as in flight"
    );
    prop_assert_eq!(
        hub.short_requests.available_permits(),
        hub.config.limits.max_in_flight,
        "a permit leaked"
    );
    Ok(())
}

#[test]
fn the_entry_answers_arbitrary_requests_with_responses_or_statuses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let limits = Limits {
        max_request_body: 4096,
        ..Limits::default()
    };
    let (hub, _dir) = fake::hub(limits, Filters::new(vec![Box::new(DropHidden)]));
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let result = runner.run(&case(), |case| rt.block_on(check(&hub, case)));
    if let Err(e) = result {
        panic!("{e}");
    }
    // Whatever the cache was fed, its writer still runs.
    let store = hub.cache.store().clone();
    assert!(store.writer_running(), "the cache writer stopped");
    hub.shutdown.cancel();
}
