//! Which connect failures prove a server unreachable. A connection that was set up
//! and then reset or closed before its TLS handshake finished is a failure on a live
//! path (a lossy WAN can cut a handshake like any other exchange): the prober judges
//! it, instead of the server being taken out at once.

/// Whether a connect error is a connection that was set up and then reset or closed
/// before TLS was done, judged by the innermost I/O error in its causes (the TLS
/// connector wraps the socket's error in one of kind `Other`).
pub(crate) fn cut_during_handshake(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(e);
    let mut kind = None;
    while let Some(c) = cause {
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => {
                kind = Some(io.kind());
                // An I/O error's `source` skips the error it wraps.
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => c.source(),
        };
    }
    matches!(
        kind,
        Some(
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
                | ErrorKind::BrokenPipe
        )
    )
}

#[cfg(test)]
mod tests {
    use crate::proxy::forward::UpstreamFailure;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;

    /// The failure of one HTTPS request to `addr` (nothing is ever verified: the peers
    /// below never finish a handshake).
    async fn failure_towards(addr: std::net::SocketAddr) -> UpstreamFailure {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let request = client.get(format!("https://{addr}/readyz").parse().unwrap());
        let result = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the request ends");
        let e = result.expect_err("the request fails");
        UpstreamFailure::of(e)
    }

    #[tokio::test]
    async fn a_refused_connect_is_unreachable() {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let failure = failure_towards(addr).await;
        assert!(failure.unreachable, "{}", failure.message);
    }

    #[tokio::test]
    async fn a_connection_cut_during_the_handshake_is_not_unreachable() {
        // The server answered the TCP handshake: the path works. A reset or a close
        // before TLS is done (a lossy WAN, a middlebox) is a failure on a live path,
        // for the prober to judge, not proof that the server is gone.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut reset_next = true;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut hello = [0u8; 1];
                let _ = s.read(&mut hello).await;
                if reset_next {
                    let _ = s.set_zero_linger();
                }
                reset_next = !reset_next;
                drop(s);
            }
        });
        for cut in ["reset", "closed"] {
            let failure = failure_towards(addr).await;
            assert!(!failure.unreachable, "{cut}: {}", failure.message);
        }
    }
}
