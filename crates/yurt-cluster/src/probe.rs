//! Readiness probes for fleet processes, run from this machine into a host's namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};
use crate::netns;

/// How to tell that a process is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP port accepts connections inside the host.
    Tcp(SocketAddr),
    /// A plain-HTTP GET inside the host answers 200.
    Http(SocketAddr, &'static str),
    /// A unix socket accepts connections.
    Unix(PathBuf),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `probe` once against namespace `ns`.
pub async fn check(ns: &str, probe: &Probe) -> bool {
    match probe {
        Probe::Tcp(addr) => connect(ns, *addr).await.is_ok(),
        Probe::Http(addr, path) => matches!(http_get(ns, *addr, path).await, Ok((200, _))),
        Probe::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
    }
}

async fn connect(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let ns = ns.to_owned();
    let stream =
        tokio::task::spawn_blocking(move || netns::connect_tcp(&ns, addr, CONNECT_TIMEOUT))
            .await
            .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// GETs `path` over plain HTTP/1.1 from inside `ns`; returns status and body.
///
/// # Errors
/// Connection or protocol errors.
pub async fn http_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let stream = connect(ns, addr).await?;
    let fut = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP probe timed out"))?
}

/// The value of an unlabelled metric `name` in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Polls `ready` every `interval` until it returns true, `failed` returns an error (the
/// process died), or `timeout` passes.
///
/// # Errors
/// The error from `failed`, or [`Error::NotReady`] naming `what` and `log`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
    failed: &(dyn Fn() -> Option<Error> + Sync),
    mut ready: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut interval = Duration::from_millis(100);
    loop {
        if ready().await {
            return Ok(start.elapsed());
        }
        if let Some(err) = failed() {
            return Err(err);
        }
        if start.elapsed() > timeout {
            return Err(Error::NotReady {
                what: what.to_owned(),
                waited: timeout,
                log: log.map(Path::to_owned),
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_reports_what_and_log_on_timeout() {
        let err = wait_until(
            "thing",
            Duration::from_millis(200),
            Some(Path::new("/tmp/thing.log")),
            &|| None,
            || async { false },
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "thing not ready after 200ms; see its log: /tmp/thing.log"
        );
    }

    #[tokio::test]
    async fn wait_until_stops_early_when_the_process_fails() {
        let started = Instant::now();
        let err = wait_until(
            "thing",
            Duration::from_secs(30),
            None,
            &|| Some(Error::Invalid("it died".into())),
            || async { false },
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "it died");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wait_until_returns_once_ready() {
        let mut calls = 0;
        let waited = wait_until("x", Duration::from_secs(5), None, &|| None, || {
            calls += 1;
            let ok = calls >= 3;
            async move { ok }
        })
        .await
        .unwrap();
        assert!(waited < Duration::from_secs(5));
        assert_eq!(calls, 3);
    }

    #[test]
    fn metric_value_reads_only_the_named_unlabelled_metric() {
        let text = "# HELP yurt_tunnel_agent_connected Server replicas\n\
                    # TYPE yurt_tunnel_agent_connected gauge\n\
                    yurt_tunnel_agent_connected_total 9\n\
                    yurt_tunnel_agent_connected 2\n";
        assert_eq!(metric_value(text, "yurt_tunnel_agent_connected"), Some(2.0));
        assert_eq!(metric_value(text, "yurt_tunnel_agent_open_streams"), None);
        assert_eq!(metric_value("x garbage\n", "x"), None);
    }
}
