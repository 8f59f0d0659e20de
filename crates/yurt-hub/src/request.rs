//! What a request to the API server is: resource or not, verb, group/version/resource,
//! namespace, name, subresource, selectors, and which client sent it.
//!
//! Mirrors the Kubernetes API server's request-info resolution for the paths clients
//! use (`/api/v1/...`, `/apis/<group>/<version>/...`, and the legacy `/api/v1/watch/...`).

use std::fmt;

/// The verb of a resource request, as the API server's authorizer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`, or under `/watch/`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// Anything else (OPTIONS, HEAD, ...).
    Other,
}

impl Verb {
    /// The verb as the API server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Other => "other",
        }
    }
}

/// A group, version and resource (`pods.v1.core`, `endpointslices.v1beta1.discovery.k8s.io`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group; empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource (plural, lower case).
    pub resource: String,
}

impl Gvr {
    /// A GVR.
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
        }
    }

    /// The `apiVersion` of its objects (`v1`, `discovery.k8s.io/v1beta1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl fmt::Display for Gvr {
    /// OpenYurt's cache key form: `resource.version.group`, with `core` for the core group.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{}.{}.{}", self.resource, self.version, group)
    }
}

/// A resource request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// The verb.
    pub verb: Verb,
    /// Group, version, resource.
    pub gvr: Gvr,
    /// Namespace, if the request is namespaced.
    pub namespace: Option<String>,
    /// Object name, if one object is addressed.
    pub name: Option<String>,
    /// Subresource (`status`, `log`, `exec`, ...).
    pub subresource: Option<String>,
    /// `labelSelector` query value.
    pub label_selector: Option<String>,
    /// `fieldSelector` query value.
    pub field_selector: Option<String>,
    /// `resourceVersion` query value.
    pub resource_version: Option<String>,
    /// `timeoutSeconds` query value.
    pub timeout_seconds: Option<u64>,
    /// Whether `allowWatchBookmarks=true`.
    pub allow_watch_bookmarks: bool,
}

/// What a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once per request and matched right away
pub enum RequestInfo {
    /// A resource request.
    Resource(ResourceRequest),
    /// Anything else (`/version`, `/healthz`, discovery, `/openapi/v2`, ...).
    NonResource {
        /// The path.
        path: String,
    },
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Decodes `%XX` escapes and `+` (query values).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1" | "True"))
}

impl RequestInfo {
    /// Resolves a request from its method, path and query string.
    pub fn parse(method: &http::Method, path: &str, query: Option<&str>) -> Self {
        let query = query.unwrap_or("");
        let non_resource = || RequestInfo::NonResource {
            path: path.to_owned(),
        };
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return non_resource(),
        };
        if rest.is_empty() {
            return non_resource();
        }
        let (mut rest, legacy_watch) = match rest {
            ["watch", tail @ ..] => (tail, true),
            _ => (rest, false),
        };
        let mut namespace = None;
        // `namespaces/<ns>/<resource>...` scopes a request; `namespaces/<ns>/status` and
        // `.../finalize` are subresources of the namespace itself.
        if rest.len() > 2 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
            namespace = Some(rest[1].to_owned());
            rest = &rest[2..];
        }
        let Some((&resource, tail)) = rest.split_first() else {
            return non_resource();
        };
        let name = tail.first().map(|n| (*n).to_owned());
        let subresource = tail.get(1).map(|s| (*s).to_owned());
        // `/api/v1/namespaces/<name>` addresses the namespace itself.
        let namespace = if resource == "namespaces" {
            None
        } else {
            namespace
        };
        let watch_param = truthy(query_param(query, "watch"));
        let verb = match *method {
            http::Method::GET | http::Method::HEAD => {
                if legacy_watch || (watch_param && name.is_none()) {
                    Verb::Watch
                } else if name.is_some() {
                    Verb::Get
                } else {
                    Verb::List
                }
            }
            http::Method::POST => Verb::Create,
            http::Method::PUT => Verb::Update,
            http::Method::PATCH => Verb::Patch,
            http::Method::DELETE if name.is_some() => Verb::Delete,
            http::Method::DELETE => Verb::DeleteCollection,
            _ => Verb::Other,
        };
        // A watch on one object is expressed as a field selector by clients; the legacy
        // `/watch/.../<name>` form means the same.
        let mut field_selector = query_param(query, "fieldSelector").map(percent_decode);
        let (name, field_selector) = if verb == Verb::Watch && name.is_some() {
            let n = name.clone().unwrap_or_default();
            let fs = match field_selector.take() {
                Some(fs) if !fs.is_empty() => format!("metadata.name={n},{fs}"),
                _ => format!("metadata.name={n}"),
            };
            (None, Some(fs))
        } else {
            (name, field_selector)
        };
        RequestInfo::Resource(ResourceRequest {
            verb,
            gvr: Gvr::new(group, version, resource),
            namespace,
            name,
            subresource: if verb == Verb::Watch {
                None
            } else {
                subresource
            },
            label_selector: query_param(query, "labelSelector")
                .map(percent_decode)
                .filter(|s| !s.is_empty()),
            field_selector: field_selector.filter(|s| !s.is_empty()),
            resource_version: query_param(query, "resourceVersion").map(percent_decode),
            timeout_seconds: query_param(query, "timeoutSeconds").and_then(|t| t.parse().ok()),
            allow_watch_bookmarks: truthy(query_param(query, "allowWatchBookmarks")),
        })
    }
}

/// The client component: the User-Agent, lower-cased, up to its first `/`
/// (`kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19` → `kubelet`). Only names of
/// letters, digits, `.`, `_` and `-` count: anything else is no component, so a
/// User-Agent can never name a cache owner of another kind (`sa:<ns>:<name>`).
pub fn component(user_agent: Option<&str>) -> Option<String> {
    let ua = user_agent?.trim();
    let name = ua.split('/').next().unwrap_or(ua).trim().to_lowercase();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn res(method: Method, path: &str, query: Option<&str>) -> ResourceRequest {
        match RequestInfo::parse(&method, path, query) {
            RequestInfo::Resource(r) => r,
            other => panic!("{path}: not a resource request: {other:?}"),
        }
    }

    #[test]
    fn resolves_verbs_scopes_and_subresources() {
        let r = res(Method::GET, "/api/v1/namespaces/default/pods/p1", None);
        assert_eq!(
            (r.verb, r.gvr.to_string()),
            (Verb::Get, "pods.v1.core".into())
        );
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("default"), Some("p1"))
        );

        let r = res(
            Method::GET,
            "/api/v1/pods",
            Some("fieldSelector=spec.nodeName%3Dedge-a1&limit=500"),
        );
        assert_eq!(r.verb, Verb::List);
        assert_eq!(r.namespace, None);
        assert_eq!(r.field_selector.as_deref(), Some("spec.nodeName=edge-a1"));

        let r = res(
            Method::GET,
            "/apis/discovery.k8s.io/v1beta1/endpointslices",
            Some("watch=true&resourceVersion=42&timeoutSeconds=300&allowWatchBookmarks=true"),
        );
        assert_eq!(r.verb, Verb::Watch);
        assert_eq!(r.gvr.to_string(), "endpointslices.v1beta1.discovery.k8s.io");
        assert_eq!(r.gvr.api_version(), "discovery.k8s.io/v1beta1");
        assert_eq!(
            (
                r.resource_version.as_deref(),
                r.timeout_seconds,
                r.allow_watch_bookmarks
            ),
            (Some("42"), Some(300), true)
        );

        let r = res(Method::PATCH, "/api/v1/nodes/edge-a1/status", None);
        assert_eq!(
            (r.verb, r.name.as_deref(), r.subresource.as_deref()),
            (Verb::Patch, Some("edge-a1"), Some("status"))
        );

        let r = res(Method::GET, "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (r.gvr.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );

        let r = res(Method::PUT, "/api/v1/namespaces/x/finalize", None);
        assert_eq!(
            (
                r.gvr.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );

        let r = res(Method::DELETE, "/api/v1/namespaces/default/pods", None);
        assert_eq!(r.verb, Verb::DeleteCollection);

        let r = res(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1",
            None,
        );
        assert_eq!(
            (r.verb, r.gvr.to_string()),
            (Verb::Update, "leases.v1.coordination.k8s.io".into())
        );
    }

    #[test]
    fn legacy_and_named_watches_become_name_selectors() {
        let r = res(
            Method::GET,
            "/api/v1/watch/namespaces/default/configmaps/c1",
            None,
        );
        assert_eq!(r.verb, Verb::Watch);
        assert_eq!(r.name, None);
        assert_eq!(r.field_selector.as_deref(), Some("metadata.name=c1"));
        let r = res(
            Method::GET,
            "/api/v1/nodes",
            Some("fieldSelector=metadata.name%3Dedge-a1&watch=1"),
        );
        assert_eq!(
            (r.verb, r.field_selector.as_deref()),
            (Verb::Watch, Some("metadata.name=edge-a1"))
        );
    }

    #[test]
    fn non_resource_paths() {
        for p in [
            "/version",
            "/healthz",
            "/api",
            "/apis",
            "/apis/apps/v1",
            "/api/v1",
            "/openapi/v2",
        ] {
            assert!(
                matches!(
                    RequestInfo::parse(&Method::GET, p, None),
                    RequestInfo::NonResource { .. }
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn components_come_from_the_user_agent() {
        assert_eq!(
            component(Some("kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19")).as_deref(),
            Some("kubelet")
        );
        assert_eq!(
            component(Some("Kube-Proxy/v1.20")).as_deref(),
            Some("kube-proxy")
        );
        assert_eq!(component(Some("")), None);
        assert_eq!(
            component(Some("sa:idt:reader/1")),
            None,
            "a User-Agent cannot name a service account's cache"
        );
        assert_eq!(component(Some("my app/1")), None);
        assert_eq!(component(None), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("app%3Dweb%2Ctier+in+%28a%29"),
            "app=web,tier in (a)"
        );
        assert_eq!(percent_decode("50%"), "50%");
    }
}
