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
            owner: sa.cache_owner(),
            component,
            proves_rights: true,
            per_format: true,
        },
        _ => Reader::component(&component),
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
