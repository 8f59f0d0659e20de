//! Answers without the cloud, per verb (the table in [`super`]): reads from the cache,
//! watches held, creates echoed, deletes refused; pod-port callers only with a token the
//! hub verified. Every answer carries [`SOURCE_HEADER`].

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};

use super::bodies::{collect, drain};
use super::{Ctx, Hub, RequestBody, watch};
use crate::body::{self, ResponseBody};
use crate::cache::Reader;
use crate::codec::Format;
use crate::identity::Caller;
use crate::request::{RequestInfo, Verb};
use crate::status::StatusError;

/// Response header naming who answered when it was not the API server.
pub const SOURCE_HEADER: &str = "x-yurthub-source";

fn unreachable() -> StatusError {
    StatusError::service_unavailable("the API server is unreachable")
}

/// Runs `f` (which reads the cache) off the async workers.
async fn blocking(
    f: impl FnOnce() -> Response<ResponseBody> + Send + 'static,
) -> Response<ResponseBody> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| StatusError::internal(e.to_string()).into_response(&[Format::Json]))
}

/// Answers without the cloud. `req` is present when its body was not consumed yet.
pub async fn answer<B: RequestBody>(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    mut req: Option<Request<B>>,
) -> Response<ResponseBody> {
    let not_get = req
        .as_ref()
        .is_some_and(|r| r.method() != http::Method::GET);
    let echoes = matches!(&ctx.info, RequestInfo::Resource(r) if r.verb == Verb::Create);
    if !echoes && let Some(r) = req.take() {
        drain(r.into_body()).await;
    }
    let mut resp = answer_inner(hub, ctx, req, not_get).await;
    resp.headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static("cache"));
    resp
}

/// Whether a pod-port caller may be answered locally at all: only with a token the hub
/// verified (and, for a token bound to a pod, with that pod still on this node).
fn refuse_unproven(hub: &Hub, ctx: &Ctx) -> Option<StatusError> {
    let unauthorized = |why: &str| {
        Some(StatusError::unauthorized(format!(
            "the cloud is unreachable and {why}"
        )))
    };
    match &ctx.caller {
        Caller::Node => None,
        Caller::Anonymous => unauthorized("the request carries no token"),
        Caller::Unproven(e, _) => unauthorized(&format!("the hub cannot verify its token: {e}")),
        Caller::ServiceAccount(sa, _) => match &sa.pod {
            Some(pod) if !hub.cache.holds_pod(&sa.namespace, &pod.name, &pod.uid) => {
                unauthorized(&format!(
                    "the token is bound to pod {}/{}, which is not on this node",
                    sa.namespace, pod.name
                ))
            }
            _ => None,
        },
    }
}

/// `req` is there only when its body is still to be used (an offline create's echo);
/// `not_get` says whether it was anything but a GET.
async fn answer_inner<B: RequestBody>(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    req: Option<Request<B>>,
    not_get: bool,
) -> Response<ResponseBody> {
    if let Some(refused) = refuse_unproven(hub, ctx) {
        hub.metrics.request("refused", "any");
        return refused.into_response(&ctx.accept);
    }
    let r = match &ctx.info {
        RequestInfo::Resource(r) => r.clone(),
        RequestInfo::NonResource { path } => {
            if not_get {
                return unreachable().into_response(&ctx.accept);
            }
            hub.metrics.request("cache", "get");
            let (hub, path) = (hub.clone(), path.clone());
            return blocking(move || hub.cache.serve_non_resource(&path)).await;
        }
    };
    let component = ctx.component.clone().unwrap_or_default();
    let reader = match &ctx.caller {
        Caller::ServiceAccount(sa, _) => Reader {
            owner: ctx.shaped_owner(&sa.cache_owner()),
            component,
            proves_rights: true,
            per_format: true,
        },
        _ => Reader {
            owner: ctx.shaped_owner(&component),
            ..Reader::component(&component)
        },
    };
    hub.metrics.request("cache", r.verb.as_str());
    let accept = ctx.accept.clone();
    match r.verb {
        Verb::Get | Verb::Update | Verb::Patch => {
            let hub = hub.clone();
            blocking(move || hub.cache.serve_get(&reader, &r, &accept, &hub.filters)).await
        }
        Verb::List => {
            let hub = hub.clone();
            blocking(move || hub.cache.serve_list(&reader, &r, &accept, &hub.filters)).await
        }
        Verb::Watch => watch::hold(hub, &r, &accept),
        Verb::Create => match req {
            Some(req) => {
                echo(
                    req,
                    StatusCode::CREATED,
                    &accept,
                    hub.config.limits.max_request_body,
                )
                .await
            }
            None => unreachable().into_response(&accept),
        },
        Verb::Delete | Verb::DeleteCollection => StatusError::forbidden(
            "the cloud is unreachable: deletes are not supported by the hub's local cache; retry later",
        )
        .into_response(&accept),
        Verb::Other => unreachable().into_response(&accept),
    }
}

/// Answers a request with its own body (an offline create).
async fn echo<B: RequestBody>(
    req: Request<B>,
    code: StatusCode,
    accept: &[Format],
    limit: usize,
) -> Response<ResponseBody> {
    let ct = req.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match collect(req.into_body(), limit).await {
        Ok(b) => b,
        Err(e) => {
            return e
                .of_request(StatusError::service_unavailable)
                .into_response(accept);
        }
    };
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = code;
    if let Some(ct) = ct {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::super::Origin;
    use super::super::fake::{self, FakeUpstream, KUBELET, json, request, send};
    use crate::config::Limits;
    use crate::filter::Filters;

    const OFFLINE: FakeUpstream = FakeUpstream(None);

    #[tokio::test]
    async fn reads_of_what_was_never_cached_are_not_found_statuses_from_the_cache() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let resp = send(
            &hub,
            &OFFLINE,
            Origin::Local,
            request("GET", "/api/v1/namespaces/default/pods/p", &[KUBELET], b""),
        )
        .await;
        assert_eq!(resp.headers()[super::SOURCE_HEADER], "cache");
        let (code, status) = json(resp).await;
        assert_eq!(code, 404);
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("NotFound"))
        );
    }

    #[tokio::test]
    async fn deletes_are_refused_and_writes_without_an_object_unavailable() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        for (method, path, code, reason) in [
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/p",
                403,
                "Forbidden",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods",
                403,
                "Forbidden",
            ),
            ("PUT", "/version", 503, "ServiceUnavailable"),
            ("POST", "/healthz", 503, "ServiceUnavailable"),
        ] {
            let resp = send(
                &hub,
                &OFFLINE,
                Origin::Local,
                request(method, path, &[KUBELET], b"{}"),
            )
            .await;
            let (got, status) = json(resp).await;
            assert_eq!(
                (got, status["reason"].as_str()),
                (code, Some(reason)),
                "{method} {path}: {status}"
            );
        }
    }

    #[tokio::test]
    async fn an_offline_create_echoes_its_body_up_to_the_limit() {
        let limits = Limits {
            max_request_body: 16,
            ..Limits::default()
        };
        let (hub, _dir) = fake::hub(limits, Filters::none());
        let ct = ("content-type", "application/json");
        let path = "/api/v1/namespaces/default/events";
        let resp = send(
            &hub,
            &OFFLINE,
            Origin::Local,
            request("POST", path, &[KUBELET, ct], br#"{"a":1}"#),
        )
        .await;
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(json(resp).await, (201, serde_json::json!({"a": 1})));
        let big = send(
            &hub,
            &OFFLINE,
            Origin::Local,
            request("POST", path, &[KUBELET, ct], &[b' '; 17]),
        )
        .await;
        let (code, status) = json(big).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (413, Some("RequestEntityTooLarge"))
        );
    }

    #[tokio::test]
    async fn the_pod_port_answers_an_unproven_caller_with_401() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        for auth in [None, Some(("authorization", "Bearer not-a-jwt"))] {
            let headers: Vec<_> = auth.into_iter().collect();
            let resp = send(
                &hub,
                &OFFLINE,
                Origin::Pod,
                request("GET", "/api/v1/namespaces/d/configmaps", &headers, b""),
            )
            .await;
            let (code, status) = json(resp).await;
            assert_eq!(
                (code, status["reason"].as_str()),
                (401, Some("Unauthorized")),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn an_offline_watch_is_held_open_and_ends_on_shutdown() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let resp = send(
            &hub,
            &OFFLINE,
            Origin::Local,
            request("GET", "/api/v1/pods?watch=true", &[KUBELET], b""),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            crate::codec::Format::Json.watch_content_type()
        );
        let mut body = resp.into_body();
        use http_body_util::BodyExt as _;
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), body.frame()).await;
        assert!(early.is_err(), "no event and no end while offline");
        hub.shutdown.cancel();
        let end = tokio::time::timeout(fake::WAIT, body.frame())
            .await
            .expect("ends on shutdown");
        assert!(end.is_none(), "ends without an event");
    }

    #[tokio::test]
    async fn a_held_watch_ends_when_the_cloud_is_back_but_never_within_a_second() {
        use http_body_util::BodyExt as _;
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let watch = || {
            send(
                &hub,
                &OFFLINE,
                Origin::Local,
                request("GET", "/api/v1/pods?watch=true", &[KUBELET], b""),
            )
        };
        // Started just before the cloud came back: client-go would take an end now for
        // an error and list everything again.
        let mut young = watch().await.into_body();
        hub.health.set_for_test(0, true);
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(1200), young.frame()).await;
        assert!(early.is_err(), "a held watch ended within a second");
        let end = tokio::time::timeout(fake::WAIT, young.frame())
            .await
            .expect("ends once the cloud is back");
        assert!(end.is_none(), "ends without an event");

        // One held longer ends as soon as the cloud is back.
        hub.health.set_for_test(0, false);
        let mut old = watch().await.into_body();
        tokio::time::sleep(super::super::watch::HELD_WATCH_MIN_AGE).await;
        hub.health.set_for_test(0, true);
        let end = tokio::time::timeout(std::time::Duration::from_millis(1000), old.frame())
            .await
            .expect("ends at once");
        assert!(end.is_none());
    }
}
