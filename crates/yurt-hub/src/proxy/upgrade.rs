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
