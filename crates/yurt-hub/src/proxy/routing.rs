//! Where a request goes: kubelet's own Lease to the local lease path (node-local port
//! only), an upgrade to the splicer, anything else to a healthy API server, or, with
//! none, to the offline answers.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, header};

use super::forward::{self, Server, Upstream};
use super::{Ctx, Hub, Origin, RequestBody, header_str, lease, now_unix, offline, upgrade};
use crate::body::ResponseBody;
use crate::health::LEASE_NAMESPACE;
use crate::identity::Caller;
use crate::request::{RequestInfo, ResourceRequest, Verb};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// kubelet's own node Lease: kept locally.
    KubeletLease(Box<ResourceRequest>),
    /// An HTTP/1.1 upgrade (exec, attach, port-forward): spliced to a server, refused
    /// offline.
    Upgrade,
    /// Anything else: to a server, or answered offline.
    Proxy {
        /// kubelet reading its own Node: after a successful answer the node's
        /// Autonomy condition is checked.
        own_node_get: bool,
    },
}

/// Decides the route of a request with facts `ctx` and `headers` on node `node`.
pub fn route(ctx: &Ctx, headers: &HeaderMap, node: &str) -> Route {
    let kubelet_here = ctx.origin == Origin::Local && ctx.component.as_deref() == Some("kubelet");
    if let RequestInfo::Resource(r) = &ctx.info
        && kubelet_here
        && is_own_lease(r, node)
    {
        return Route::KubeletLease(Box::new(r.clone()));
    }
    if is_upgrade(headers) {
        return Route::Upgrade;
    }
    let own_node_get = matches!(&ctx.info, RequestInfo::Resource(r)
        if kubelet_here
            && r.verb == Verb::Get
            && r.gvr.group.is_empty()
            && r.gvr.resource == "nodes"
            && r.name.as_deref() == Some(node));
    Route::Proxy { own_node_get }
}

/// Whether `r` is this node's Lease (or the list of leases in its namespace).
pub fn is_own_lease(r: &ResourceRequest, node: &str) -> bool {
    r.gvr.group == "coordination.k8s.io"
        && r.gvr.resource == "leases"
        && r.namespace.as_deref() == Some(LEASE_NAMESPACE)
        && r.name.as_deref().is_none_or(|n| n == node)
}

/// Whether the request asks for a protocol upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && header_str(headers, header::CONNECTION)
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Whether a request may stay open for long: a watch, an upgrade, a followed log.
pub fn is_long_running(uri: &http::Uri, headers: &HeaderMap) -> bool {
    let query = uri.query().unwrap_or("");
    let flag = |key: &str| {
        query.split('&').any(|kv| {
            kv.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| v == "true" || v == "1")
        })
    };
    is_upgrade(headers) || flag("watch") || flag("follow") || uri.path().contains("/watch/")
}

/// Routes a request and answers it.
pub async fn dispatch<B: RequestBody, U: Upstream<B>>(
    hub: &Arc<Hub>,
    upstream: &U,
    origin: Origin,
    req: Request<B>,
    span: &tracing::Span,
) -> Response<ResponseBody> {
    let caller = match origin {
        Origin::Local => Caller::Node,
        Origin::Pod => hub
            .verifier
            .caller(header_str(req.headers(), header::AUTHORIZATION), now_unix()),
    };
    let ctx = Ctx::new(origin, caller, req.method(), req.uri(), req.headers());
    if let Some(c) = &ctx.component {
        span.record("component", c.as_str());
    }
    // The lease path, upgrades and offline answers are boxed: every request's future,
    // which hyper moves into place for each request, then has the size of the online
    // path it nearly always takes rather than that of the largest branch.
    match route(&ctx, req.headers(), hub.config.node_name.as_str()) {
        Route::KubeletLease(r) => Box::pin(lease::answer(hub, upstream, &ctx, *r, req)).await,
        Route::Upgrade => match upstream.pick(&hub.health) {
            Some(server) => Box::pin(upgrade::forward(hub, &server, origin, req)).await,
            None => Box::pin(offline::answer(hub, &ctx, Some(req))).await,
        },
        Route::Proxy { own_node_get } => match upstream.pick(&hub.health) {
            Some(server) => {
                let resp = forward::forward(hub, &server, &ctx, req).await;
                if own_node_get && resp.status().is_success() {
                    check_autonomy(hub, &server);
                }
                resp
            }
            None => Box::pin(offline::answer(hub, &ctx, Some(req))).await,
        },
    }
}

/// Refreshes the node's Autonomy condition through `server` (in the background).
fn check_autonomy<B, S: Server<B>>(hub: &Arc<Hub>, server: &S) {
    let Some(kube) = server.kube().cloned() else {
        return;
    };
    let hub = hub.clone();
    tokio::spawn(async move {
        let node = hub.config.node_name.to_string();
        if let Err(e) = hub
            .autonomy
            .check(
                &kube,
                &node,
                Some(hub.cache.store()),
                &hub.metrics,
                hub.cache.store().writer_running(),
            )
            .await
        {
            tracing::warn!(error = %e, "Autonomy condition not updated");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Caller;

    const KUBELET: &str = "kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19";

    fn ctx(origin: Origin, method: &str, uri: &str, ua: &str) -> (Ctx, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, ua.parse().unwrap());
        let uri: http::Uri = uri.parse().unwrap();
        let method: http::Method = method.parse().unwrap();
        let caller = match origin {
            Origin::Local => Caller::Node,
            Origin::Pod => Caller::Anonymous,
        };
        (Ctx::new(origin, caller, &method, &uri, &headers), headers)
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1";

    #[test]
    fn only_kubelet_on_the_node_port_takes_the_lease_path_for_its_own_lease() {
        let (c, h) = ctx(Origin::Local, "PUT", LEASE, KUBELET);
        assert!(
            matches!(route(&c, &h, "edge-a1"), Route::KubeletLease(r) if r.verb == Verb::Update)
        );
        let proxied = Route::Proxy {
            own_node_get: false,
        };
        let (c, h) = ctx(Origin::Pod, "PUT", LEASE, KUBELET);
        assert_eq!(route(&c, &h, "edge-a1"), proxied, "never on the pod port");
        let (c, h) = ctx(Origin::Local, "PUT", LEASE, "kube-proxy/v1.20.2");
        assert_eq!(route(&c, &h, "edge-a1"), proxied, "only kubelet's");
        let (c, h) = ctx(Origin::Local, "PUT", LEASE, KUBELET);
        assert_eq!(route(&c, &h, "edge-b1"), proxied, "only this node's lease");
        let (c, h) = ctx(
            Origin::Local,
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            KUBELET,
        );
        assert!(matches!(route(&c, &h, "edge-a1"), Route::KubeletLease(_)));
    }

    #[test]
    fn kubelet_reading_its_own_node_is_marked_for_the_autonomy_check() {
        let (c, h) = ctx(Origin::Local, "GET", "/api/v1/nodes/edge-a1", KUBELET);
        assert_eq!(
            route(&c, &h, "edge-a1"),
            Route::Proxy { own_node_get: true }
        );
        for (origin, uri, ua) in [
            (Origin::Local, "/api/v1/nodes/edge-b1", KUBELET),
            (Origin::Local, "/api/v1/nodes/edge-a1", "kube-proxy/v1.20.2"),
            (Origin::Pod, "/api/v1/nodes/edge-a1", KUBELET),
        ] {
            let (c, h) = ctx(origin, "GET", uri, ua);
            assert_eq!(
                route(&c, &h, "edge-a1"),
                Route::Proxy {
                    own_node_get: false
                },
                "{origin:?} {uri} {ua}"
            );
        }
    }

    #[test]
    fn upgrades_need_both_connection_and_upgrade_headers() {
        let (c, mut h) = ctx(
            Origin::Local,
            "POST",
            "/api/v1/namespaces/d/pods/p/exec?command=sh",
            "kubectl/v1.20.2",
        );
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_ne!(route(&c, &h, "edge-a1"), Route::Upgrade);
        h.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert_eq!(route(&c, &h, "edge-a1"), Route::Upgrade);
        assert!(is_long_running(&"/x".parse().unwrap(), &h));
    }

    #[test]
    fn watches_and_follows_are_long_running_and_lists_are_not() {
        let empty = HeaderMap::new();
        for (uri, long) in [
            ("/api/v1/pods?watch=true", true),
            ("/api/v1/pods?labelSelector=a&watch=1", true),
            ("/api/v1/watch/pods", true),
            ("/api/v1/namespaces/d/pods/p/log?follow=true", true),
            ("/api/v1/pods?watch=false", false),
            ("/api/v1/pods?watcher=true", false),
            ("/api/v1/pods", false),
        ] {
            assert_eq!(
                is_long_running(&uri.parse().unwrap(), &empty),
                long,
                "{uri}"
            );
        }
    }
}
