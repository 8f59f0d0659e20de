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
            let _ = hub.cache.store().upsert_async(key, obj).await;
            let mut resp = Response::new(body::full(bytes));
            if let Ok(v) = HeaderValue::from_str(&ct) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        Err(e) => StatusError::bad_request(e.to_string()).into_response(&ctx.accept),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Origin;
    use super::super::fake::{
        self, FakeServer, FakeUpstream, KUBELET, answer, json, request, send,
    };
    use crate::config::Limits;
    use crate::filter::Filters;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-a1";
    const JSON: (&str, &str) = ("content-type", "application/json");

    fn lease(rv: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "edge-a1", "namespace": "kube-node-lease", "resourceVersion": rv},
            "spec": {"holderIdentity": "edge-a1"},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_renewal_is_kept_locally_even_online_and_read_back_from_there() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server = FakeServer::new(|_| Ok(answer(500, "application/json", "{}")));
        let online = FakeUpstream(Some(server.clone()));
        let put = send(
            &hub,
            &online,
            Origin::Local,
            request("PUT", LEASE, &[KUBELET, JSON], &lease("7")),
        )
        .await;
        let (code, body) = json(put).await;
        assert_eq!(
            (code, body["metadata"]["resourceVersion"].as_str()),
            (200, Some("7"))
        );
        // The write lands on the cache's writer thread: read until it is there.
        let deadline = tokio::time::Instant::now() + fake::WAIT;
        loop {
            let get = send(
                &hub,
                &online,
                Origin::Local,
                request("GET", LEASE, &[KUBELET], b""),
            )
            .await;
            let (code, body) = json(get).await;
            if code == 200 {
                assert_eq!(body["spec"]["holderIdentity"], "edge-a1");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the renewal is never read back"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            server.requests().iter().all(|s| s.parts.method != "PUT"),
            "renewals never go upstream"
        );
    }

    #[tokio::test]
    async fn a_read_of_a_lease_never_renewed_here_goes_upstream() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let server = FakeServer::new(|_| Ok(answer(200, "application/json", lease("3"))));
        let online = FakeUpstream(Some(server.clone()));
        let get = send(
            &hub,
            &online,
            Origin::Local,
            request("GET", LEASE, &[KUBELET], b""),
        )
        .await;
        assert_eq!(json(get).await.1["metadata"]["resourceVersion"], "3");
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_renewal_that_is_not_an_object_or_too_large_is_refused() {
        let limits = Limits {
            max_request_body: 64,
            ..Limits::default()
        };
        let (hub, _dir) = fake::hub(limits, Filters::none());
        let offline = FakeUpstream(None);
        let garbage = send(
            &hub,
            &offline,
            Origin::Local,
            request("PUT", LEASE, &[KUBELET, JSON], b"not json"),
        )
        .await;
        let (code, status) = json(garbage).await;
        assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
        let big = send(
            &hub,
            &offline,
            Origin::Local,
            request("PUT", LEASE, &[KUBELET, JSON], &lease("1")),
        )
        .await;
        let (code, status) = json(big).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (413, Some("RequestEntityTooLarge"))
        );
    }
}
