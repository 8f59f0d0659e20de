//! The hub's typed API clients (the health checker's and the Autonomy condition's
//! towards each API server, the filters' view towards the hub itself), built as
//! `kube::Client::try_from(kube::Config)` builds them, without kube's authentication.
//!
//! The hub authenticates with its client certificate, in TLS, or (to itself) not at all;
//! it never runs an exec plugin, an auth-provider or a token file. kube builds its TLS
//! and `Authorization` layers from a [`kube::Config`] whose credentials are only known at
//! run time, so going through it links what every kind of credential needs: a YAML parser
//! for exec plugins' output, a JSONPath engine for auth-providers, their regex engine.
//! That is about 0.7 MB of code the hub never runs but maps (a tenth of the hub-only
//! binary's idle resident size). Here the TLS configuration is the hub's own
//! ([`crate::tls::client_config`], the one its request pools use) and the rest of kube's
//! stack is kept: connect and read timeouts, the base URI, retrying 429/503/504 with
//! backoff, and the hub's `User-Agent`.

use std::time::Duration;

use http::{HeaderValue, Request, header};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::Body;
use kube::client::middleware::BaseUriLayer;
use kube::client::retry::RetryPolicy;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// The hub's `User-Agent` towards API servers (OpenYurt's hub calls itself `yurthub`).
pub const USER_AGENT: &str = concat!("yurthub/", env!("CARGO_PKG_VERSION"));

/// How a typed client connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// For the TCP (and TLS) connection to be set up.
    pub connect: Option<Duration>,
    /// Between two reads of a response once a request is sent (a stalled server).
    pub read: Option<Duration>,
}

/// A typed client for the API server at `url` (`https`), trusting and presenting what
/// `tls` holds (from [`crate::tls::client_config`]); with `identity`, its connections
/// follow the client certificate held there (see `upstream::rotating`).
pub fn https(
    url: http::Uri,
    tls: rustls::ClientConfig,
    timeouts: Timeouts,
    identity: Option<std::sync::Arc<crate::certificate::CertSlot>>,
) -> kube::Client {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp_connector());
    build(url, connector, timeouts, identity)
}

/// A typed client for a plain-HTTP endpoint at `url` (the hub's own proxy port).
pub fn plain(url: http::Uri, timeouts: Timeouts) -> kube::Client {
    build(url, tcp_connector(), timeouts, None)
}

/// The bottom of a typed client's stack: hyper-util's pooled client, made again when
/// the client certificate is replaced.
struct RotatingHttp<C>(std::sync::Arc<super::rotating::Rotating<Client<C, Body>>>);

impl<C> Clone for RotatingHttp<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C> tower::Service<Request<Body>> for RotatingHttp<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: it queues on its pool.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.0.get();
        Box::pin(async move { client.request(req).await })
    }
}

fn tcp_connector() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp
}

fn build<C>(
    url: http::Uri,
    connector: C,
    timeouts: Timeouts,
    identity: Option<std::sync::Arc<crate::certificate::CertSlot>>,
) -> kube::Client
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: Connection + hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    let mut connector = TimeoutConnector::new(connector);
    connector.set_connect_timeout(timeouts.connect);
    connector.set_read_timeout(timeouts.read);
    let http = RotatingHttp(std::sync::Arc::new(super::rotating::Rotating::new(
        identity,
        move || Client::builder(TokioExecutor::new()).build(connector.clone()),
    )));
    let service = ServiceBuilder::new()
        .layer(BaseUriLayer::new(url))
        .layer(RetryLayer::new(RetryPolicy::server_retry()))
        .map_request(|mut req: Request<Body>| {
            req.headers_mut()
                .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            req
        })
        .map_err(BoxError::from)
        .service(http);
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use k8s_openapi::api::core::v1::ConfigMap;
    use tokio::sync::mpsc;

    use super::*;

    /// Serves one ConfigMap GET per connection, answering 503 `failures` times first;
    /// reports each request's path and User-Agent.
    async fn server(failures: usize) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(failures));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, left) = (tx.clone(), left.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let agent = req
                            .headers()
                            .get(header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send(format!("{} {agent}", req.uri().path()));
                        let fail = left
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |n| n.checked_sub(1),
                            )
                            .is_ok();
                        async move {
                            let (status, body) = if fail {
                                (
                                    503,
                                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":503}"#,
                                )
                            } else {
                                (
                                    200,
                                    r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"kube-system"}}"#,
                                )
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header(header::CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn sends_the_hubs_user_agent_to_the_base_uri_and_retries_a_503() {
        let (addr, mut seen) = server(1).await;
        let url: http::Uri = format!("http://{addr}/prefix").parse().expect("url");
        let client = plain(url, Timeouts::default());
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-system");
        let got = tokio::time::timeout(Duration::from_secs(10), api.get("c"))
            .await
            .expect("in time")
            .expect("the retry succeeds");
        assert_eq!(got.metadata.name.as_deref(), Some("c"));
        let expected = format!("/prefix/api/v1/namespaces/kube-system/configmaps/c {USER_AGENT}");
        assert_eq!(seen.recv().await.as_deref(), Some(expected.as_str()));
        assert_eq!(seen.recv().await.as_deref(), Some(expected.as_str()));
    }

    #[tokio::test]
    async fn a_stalled_server_fails_the_request_after_the_read_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and never answers.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let url: http::Uri = format!("http://{addr}").parse().expect("url");
        let client = plain(
            url,
            Timeouts {
                connect: Some(Duration::from_secs(1)),
                read: Some(Duration::from_millis(200)),
            },
        );
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-system");
        let got = tokio::time::timeout(Duration::from_secs(10), api.get("c"))
            .await
            .expect("the read timeout ends the request");
        assert!(got.is_err(), "{got:?}");
        holder.abort();
    }
}
