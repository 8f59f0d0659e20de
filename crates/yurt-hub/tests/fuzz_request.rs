//! Property tests of the request parser (bounded: a fixed number of cases, a few
//! seconds): arbitrary methods, paths, query strings and User-Agents, Kubernetes-shaped
//! or not, non-ASCII and control characters included. The parser never panics and what
//! it resolves is consistent.

use proptest::prelude::*;
use yurt_hub::request::{RequestInfo, Verb, component, percent_decode};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        ..ProptestConfig::default()
    }
}

/// A path segment: mostly what Kubernetes paths are made of, sometimes anything.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "api", "apis", "v1", "apps", "coordination.k8s.io", "namespaces", "watch",
            "pods", "nodes", "leases", "kube-node-lease", "status", "finalize", "exec",
            "log", "proxy", "default", "edge-a1", "",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z0-9.-]{1,12}",
        1 => any::<String>(),
        1 => "[%+/\\\\?#\u{0}-\u{1f}\u{7f}\u{80}-\u{10ff}]{0,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut p = format!("/{}", segments.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "watch",
            "fieldSelector",
            "labelSelector",
            "resourceVersion",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "continue",
            "follow",
            "limit",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "true",
            "1",
            "false",
            "",
            "spec.nodeName%3Dedge-a1",
            "18446744073709551616",
            "-1",
            "%",
            "%zz",
            "%e2%82",
            "+"
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    prop::collection::vec((key, value, any::<bool>()), 0..6).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(k, v, eq)| if eq { format!("{k}={v}") } else { k })
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        prop::sample::select(vec![
            http::Method::GET,
            http::Method::HEAD,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
            http::Method::OPTIONS,
            http::Method::CONNECT,
        ]),
        "[A-Z]{1,12}".prop_filter_map("a method token", |m| m.parse().ok()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_and_resolves_consistently(
        method in method(),
        path in path(),
        query in prop::option::of(query()),
    ) {
        match RequestInfo::parse(&method, &path, query.as_deref()) {
            RequestInfo::Resource(r) => {
                prop_assert!(!r.gvr.resource.is_empty(), "{path}: no resource");
                prop_assert!(!r.gvr.resource.contains('/'));
                if r.verb == Verb::Watch {
                    prop_assert!(r.name.is_none(), "a watch names its object by field selector");
                    prop_assert!(r.subresource.is_none());
                    prop_assert!(matches!(method, http::Method::GET | http::Method::HEAD));
                }
                if r.gvr.resource == "namespaces" {
                    prop_assert!(r.namespace.is_none());
                }
                prop_assert!(r.label_selector.as_deref() != Some(""));
                prop_assert!(r.field_selector.as_deref() != Some(""));
            }
            RequestInfo::NonResource { path: p } => prop_assert_eq!(p, path),
        }
    }

    #[test]
    fn a_user_agent_names_a_plain_component_or_none(ua in prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9._: -]{0,12}/[\\PC]{0,20}",
        "kubelet/v1.20.2 \\(linux/amd64\\) [\u{0}-\u{7f}\u{80}-\u{3000}]{0,10}",
    ]) {
        if let Some(c) = component(Some(&ua)) {
            prop_assert!(!c.is_empty());
            prop_assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')),
                "{ua:?} named {c:?}"
            );
        }
    }

    #[test]
    fn percent_decoding_undoes_percent_encoding(s in any::<String>()) {
        let encoded: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
        prop_assert_eq!(percent_decode(&encoded), s);
    }

    #[test]
    fn percent_decoding_never_panics_on_broken_escapes(s in "[%+0-9a-fA-FgG\u{80}-\u{ff}\u{1F600}]{0,24}") {
        let decoded = percent_decode(&s);
        if !s.contains(['%', '+']) {
            prop_assert_eq!(decoded, s);
        }
    }
}
