//! The anchor for the latency the hub's own code adds: the least any proxy in the hub's
//! place must do, run as its own process like the hub. HTTP/1.1 in from the client, one
//! HTTP/2-over-TLS connection out to the API server, bodies streamed both ways; no
//! routing, cache, filters, limits, metrics or health. Through the hub minus through
//! this is what the hub's code costs; through this minus straight to the server is the
//! price of any extra process and hop, which no code in the hub can remove.
//!
//! Written here, not taken from a crate: it must be exactly the same stack as the hub
//! (hyper's HTTP/1.1 server, hyper's HTTP/2 client, rustls) with nothing else in it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// `yurt bench bare-proxy` (hidden: started by `yurt bench hub`).
#[derive(Debug, Args)]
pub struct BareProxyArgs {
    /// Where clients connect (plain HTTP/1.1).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The API server (HTTPS, HTTP/2).
    #[arg(long)]
    pub upstream: SocketAddr,
    /// The CA that signed the API server's certificate.
    #[arg(long)]
    pub ca_file: PathBuf,
}

async fn forward(
    mut sender: hyper::client::conn::http2::SendRequest<Incoming>,
    req: http::Request<Incoming>,
) -> anyhow::Result<http::Response<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    parts.uri = http::Uri::builder()
        .scheme("https")
        .authority("127.0.0.1")
        .path_and_query(path)
        .build()?;
    parts.version = http::Version::HTTP_2;
    // Connection-specific headers are not allowed in HTTP/2.
    parts.headers.remove(http::header::HOST);
    parts.headers.remove(http::header::CONNECTION);
    Ok(sender
        .send_request(http::Request::from_parts(parts, body))
        .await?)
}

/// Runs the proxy until the process is killed.
pub async fn run(args: BareProxyArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut tls = yurt_hub::tls::client_config(&args.ca_file, None)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(args.upstream).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let io = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(connection);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward(sender.clone(), req));
            // A client that breaks its connection ends only its own task.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
