//! kubelet's own node Lease (node-local port only, see [`super::routing`]): renewals are
//! kept locally (the health checker renews the lease upstream for kubelet, so a slow or
//! absent cloud never fails kubelet's heartbeat), reads come from that local copy.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};

use super::bodies::collect;
use super::forward::{self, Upstream};
use super::{Ctx, Hub, RequestBody, header_str, offline};
use crate::body::{self, ResponseBody};
use crate::codec::{self, Format};
use crate::health::LEASE_NAMESPACE;
use crate::request::{ResourceRequest, Verb};
use crate::status::StatusError;
use crate::store::ObjectKey;

fn lease_key(r: &ResourceRequest, name: String) -> ObjectKey {
    ObjectKey {
        component: "kubelet".into(),
        gvr: r.gvr.to_string(),
        namespace: LEASE_NAMESPACE.into(),
        name,
    }
}

/// Answers kubelet's request `r` on its own Lease.
pub async fn answer<B: RequestBody, U: Upstream<B>>(
    hub: &Arc<Hub>,
    upstream: &U,
    ctx: &Ctx,
    r: ResourceRequest,
    req: Request<B>,
) -> Response<ResponseBody> {
    hub.health.kubelet_seen();
    match r.verb {
        Verb::Update => renew(hub, ctx, &r, req).await,
        Verb::Get => {
            let key = lease_key(&r, r.name.clone().unwrap_or_default());
            let cached = {
                let hub = hub.clone();
                tokio::task::spawn_blocking(move || hub.cache.store().get(&key))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
            };
            match (cached, upstream.pick(&hub.health)) {
                (Some(_), _) | (None, None) => offline::answer(hub, ctx, Some(req)).await,
                (None, Some(server)) => forward::forward(hub, &server, ctx, req).await,
            }
        }
        _ => match upstream.pick(&hub.health) {
            Some(server) => forward::forward(hub, &server, ctx, req).await,
            None => offline::answer(hub, ctx, Some(req)).await,
        },
    }
}

/// Keeps a renewal locally and echoes it.
async fn renew<B: RequestBody>(
    hub: &Arc<Hub>,
    ctx: &Ctx,
    r: &ResourceRequest,
    req: Request<B>,
) -> Response<ResponseBody> {
    let ct = header_str(req.headers(), header::CONTENT_TYPE)
        .unwrap_or(codec::JSON)
        .to_owned();
    let format = Format::of_content_type(&ct).unwrap_or(Format::Json);
    let bytes = match collect(req.into_body(), hub.config.limits.max_request_body).await {
        Ok(b) => b,
        Err(e) => {
            return e
                .of_request(StatusError::bad_request)
                .into_response(&ctx.accept);
        }
    };
    match codec::decode_object(format, &bytes) {
        Ok(obj) => {
            let key = lease_key(r, obj.info.name.clone());
            let _ = hub.cache.store().upsert(key, obj);
            let mut resp = Response::new(body::full(bytes));
            if let Ok(v) = HeaderValue::from_str(&ct) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        Err(e) => StatusError::bad_request(e.to_string()).into_response(&ctx.accept),
    }
}
