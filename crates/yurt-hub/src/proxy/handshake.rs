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
    use crate::config::UpstreamConfig;
    use crate::proxy::forward::UpstreamFailure;
    use crate::upstream::{class_client, upgrade_client};
    use bytes::Bytes;
    use http_body_util::Empty;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;

    /// The failures of one HTTPS request to `addr` through the HTTP/2 pool and through
    /// the HTTP/1.1 upgrade client (nothing is ever verified: the peers below never
    /// finish a handshake).
    async fn failures_towards(addr: std::net::SocketAddr) -> Vec<(&'static str, UpstreamFailure)> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let url: http::Uri = format!("https://{addr}").parse().unwrap();
        let up = UpstreamConfig::default();
        let request = || {
            http::Request::get(format!("https://{addr}/readyz"))
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        let h2 = class_client(&url, tls.clone(), &up, None).unwrap();
        let h1 = upgrade_client(tls, &up, None);
        let wait = Duration::from_secs(10);
        let h2 = tokio::time::timeout(wait, h2.request(request()))
            .await
            .expect("the request ends")
            .expect_err("the request fails");
        let h1 = tokio::time::timeout(wait, h1.request(request()))
            .await
            .expect("the request ends")
            .expect_err("the request fails");
        vec![
            ("HTTP/2 pool", UpstreamFailure::of(h2)),
            ("HTTP/1.1 upgrade client", UpstreamFailure::of(h1)),
        ]
    }

    #[tokio::test]
    async fn a_refused_connect_is_unreachable() {
        // A port that was free a moment ago: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        for (client, failure) in failures_towards(addr).await {
            assert!(failure.unreachable, "{client}: {}", failure.message);
        }
    }

    #[tokio::test]
    async fn a_connection_cut_during_the_handshake_is_not_unreachable() {
        // The server answered the TCP handshake: the path works. A reset or a close
        // before TLS is done (a lossy WAN, a middlebox) is a failure on a live path,
        // for the prober to judge, not proof that the server is gone.
        for reset in [true, false] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let mut hello = [0u8; 1];
                    let _ = s.read(&mut hello).await;
                    if reset {
                        let _ = s.set_zero_linger();
                    }
                    drop(s);
                }
            });
            let cut = if reset { "reset" } else { "closed" };
            for (client, failure) in failures_towards(addr).await {
                assert!(!failure.unreachable, "{cut}, {client}: {}", failure.message);
            }
        }
    }
}
