//! HTTP/1.1 upgrades (exec, attach, port-forward): forwarded over the server's HTTP/1.1
//! client, and once both sides switched protocols, the two connections are spliced.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::forward::{ClientClass, Server};
use super::{Hub, Origin, RequestBody, header_str};
use crate::body::{self, ResponseBody};
use crate::codec::Format;
use crate::status::StatusError;
use crate::upstream::uri_on;

/// `req` as it goes to the server at `url` for an upgrade, and the client class that
/// carries it. Unlike a proxied request its `Connection` and `Upgrade` headers stay.
///
/// # Errors
/// A request URI that cannot be put on `url` (400).
pub fn upstream_request<B>(
    req: Request<B>,
    url: &http::Uri,
    origin: Origin,
) -> Result<(Request<B>, ClientClass), StatusError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = uri_on(url, path_and_query) else {
        return Err(StatusError::bad_request("invalid request URI"));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(header::HOST);
    let class = ClientClass::of(origin, &parts.headers, true);
    Ok((Request::from_parts(parts, body), class))
}

/// Forwards an upgrade and splices the two connections once the server switched.
pub async fn forward<B: RequestBody, S: Server<B>>(
    hub: &Arc<Hub>,
    server: &S,
    origin: Origin,
    mut req: Request<B>,
) -> Response<ResponseBody> {
    let accept = Format::accepted(header_str(req.headers(), header::ACCEPT));
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (req, class) = match upstream_request(req, server.url(), origin) {
        Ok(r) => r,
        Err(e) => return e.into_response(&accept),
    };
    let mut resp = match server.send(class, req).await {
        Ok(r) => r,
        Err(failure) => {
            failure.report(&hub.health, server.index());
            return failure.status().into_response(&accept);
        }
    };
    hub.metrics.request("upstream", "upgrade");
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::filter::Filters;
    use crate::proxy::fake::{self, FakeServer, answer, json, request};
    use crate::proxy::forward::UpstreamFailure;

    const EXEC: &str = "/api/v1/namespaces/d/pods/p/exec?command=sh&stdin=true";

    fn exec(auth: bool) -> Request<http_body_util::Full<bytes::Bytes>> {
        let mut headers = vec![
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("host", "169.254.2.1:10268"),
        ];
        if auth {
            headers.push(("authorization", "Bearer t"));
        }
        request("POST", EXEC, &headers, b"")
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_and_goes_over_http1() {
        let url: http::Uri = "https://api.test:6443".parse().unwrap();
        let (req, class) = upstream_request(exec(false), &url, Origin::Local).unwrap();
        assert_eq!(class, ClientClass::NodeUpgrade);
        assert_eq!(
            req.uri().to_string(),
            format!("https://api.test:6443{EXEC}")
        );
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert!(req.headers().contains_key(header::UPGRADE));
        assert!(req.headers().contains_key(header::CONNECTION));
        assert!(!req.headers().contains_key(header::HOST));
        let (_, class) = upstream_request(exec(true), &url, Origin::Local).unwrap();
        assert_eq!(class, ClientClass::BearerUpgrade);
        let (_, class) = upstream_request(exec(false), &url, Origin::Pod).unwrap();
        assert_eq!(
            class,
            ClientClass::BearerUpgrade,
            "a pod's upgrade never goes as the node"
        );
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_passed_on_and_an_unreachable_server_is_a_503_status() {
        let (hub, _dir) = fake::hub(Limits::default(), Filters::none());
        let refuses = FakeServer::new(|_| {
            Ok(answer(
                403,
                "application/json",
                r#"{"kind":"Status","code":403}"#,
            ))
        });
        let (code, body) = json(forward(&hub, &refuses, Origin::Local, exec(false)).await).await;
        assert_eq!((code, body["code"].as_u64()), (403, Some(403)));
        let gone = FakeServer::new(|_| {
            Err(UpstreamFailure {
                message: "connection refused".into(),
                unreachable: true,
            })
        });
        let (code, status) = json(forward(&hub, &gone, Origin::Local, exec(false)).await).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (503, Some("ServiceUnavailable"))
        );
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("connection refused")
        );
    }
}
