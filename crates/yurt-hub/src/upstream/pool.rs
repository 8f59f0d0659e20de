//! HTTP/2 connections to one API server for one client class, opened on demand.
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per host and queues requests
//! once the server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (250 in kube-apiserver
//! 1.20): a node with that many watches would stall every later request, writes
//! included. This pool counts the streams each connection carries (a request holds its
//! stream until its response body ends or is dropped; a watch, for its whole life) and
//! opens another connection when every open one is at the limit. hyper does not expose
//! the peer's SETTINGS, so the limit is configured (`--upstream-max-streams-per-connection`),
//! at or below the server's. Closed connections are dropped, and a connection idle for
//! [`PoolConfig::idle_timeout`] is closed unless it is the last one.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use super::{RequestError, UpstreamBody, UpstreamBodyError};
use crate::body::BodyError;

/// Request bodies sent upstream.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// How connections are made and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Streams one connection carries before another is opened.
    pub max_streams: usize,
    /// How long a connection with no stream is kept (the last one is always kept).
    pub idle_timeout: Duration,
}

struct Conn {
    id: u64,
    /// The client identity's generation when it was made.
    generation: u64,
    sender: http2::SendRequest<RequestBody>,
    in_flight: AtomicUsize,
    /// Set when the connection task ended (closed by either side, missed ping).
    closed: AtomicBool,
    /// Milliseconds since `born` when `in_flight` last fell to zero.
    idle_since_ms: AtomicU64,
    born: Instant,
}

impl Conn {
    fn dead(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.sender.is_closed()
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(now.duration_since(self.born).saturating_sub(since))
    }
}

/// One stream counted on a connection; released on drop.
struct StreamLease {
    conn: Arc<Conn>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(self.conn.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.conn.idle_since_ms.store(ms, Ordering::Release);
        }
    }
}

/// A response body that holds its stream's lease until it ends or is dropped.
struct LeasedBody {
    inner: Incoming,
    lease: Option<StreamLease>,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(|e| UpstreamBodyError(Box::new(e)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where connections go.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

/// The connections of one client class to one server.
pub struct H2Pool {
    target: Target,
    tls: tokio_rustls::TlsConnector,
    config: PoolConfig,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while a connection is being opened: one at a time, later callers wait and
    /// then use it.
    opening: tokio::sync::Mutex<()>,
    /// Connection attempts finished so far, and the error of the last one if it failed.
    attempts: AtomicU64,
    /// The last connect attempt's failure: its message, and whether it was a handshake cut.
    last_failure: Mutex<Option<(String, bool)>>,
    next_id: AtomicU64,
    /// The client certificate the TLS configuration presents, when it can change.
    identity: Option<Arc<crate::certificate::CertSlot>>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("target", &self.target)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl H2Pool {
    /// A pool towards `url` (`https://host[:port]`), TLS from `tls` (its ALPN is set to
    /// `h2` here).
    ///
    /// # Errors
    /// A URL without a host, or a host that is no valid TLS server name.
    pub fn new(
        url: &http::Uri,
        mut tls: rustls::ClientConfig,
        config: PoolConfig,
    ) -> Result<Self, RequestError> {
        let host = url
            .host()
            .ok_or_else(|| RequestError::Config(format!("{url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| RequestError::Config(format!("{host}: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            target: Target {
                port: url.port_u16().unwrap_or(443),
                host,
                server_name,
            },
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            config: PoolConfig {
                max_streams: config.max_streams.max(1),
                ..config
            },
            conns: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            next_id: AtomicU64::new(0),
            identity: None,
        })
    }

    /// Follows the client certificate in `identity`: once it is replaced, connections
    /// made with the old one take no new streams and close when their last one ends.
    #[must_use]
    pub fn with_identity(mut self, identity: Arc<crate::certificate::CertSlot>) -> Self {
        self.identity = Some(identity);
        self
    }

    fn generation(&self) -> u64 {
        self.identity.as_ref().map_or(0, |i| i.generation())
    }

    /// Open connections and the streams each carries.
    pub fn connections(&self) -> Vec<usize> {
        self.conns.lock().map_or_else(
            |_| Vec::new(),
            |c| {
                c.iter()
                    .filter(|c| !c.dead())
                    .map(|c| c.in_flight.load(Ordering::Acquire))
                    .collect()
            },
        )
    }

    /// A stream on an open connection with room, if there is one.
    fn try_lease(&self) -> Option<(http2::SendRequest<RequestBody>, StreamLease)> {
        let Ok(mut conns) = self.conns.lock() else {
            return None;
        };
        // Every forwarded request passes here, on either worker thread: with one
        // connection (the usual case) the lock is held only to find it, and the sweep of
        // closed and idle connections runs when there is something to sweep.
        let generation = self.generation();
        if conns.len() > 1
            || conns
                .first()
                .is_some_and(|c| c.dead() || c.generation != generation)
        {
            self.sweep(&mut conns, generation);
        }
        // First fit: streams pack onto the oldest connections and the newer ones empty
        // and close when the load falls.
        let conn = conns.iter().find(|c| {
            !c.dead()
                && c.generation == generation
                && c.in_flight.load(Ordering::Acquire) < self.config.max_streams
        })?;
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Some((conn.sender.clone(), StreamLease { conn: conn.clone() }))
    }

    /// Drops closed connections, idle ones made with a replaced client certificate, and
    /// connections idle for the idle timeout but the first.
    fn sweep(&self, conns: &mut Vec<Arc<Conn>>, generation: u64) {
        let now = Instant::now();
        conns.retain(|c| {
            !c.dead() && (c.generation == generation || c.in_flight.load(Ordering::Acquire) > 0)
        });
        let idle_timeout = self.config.idle_timeout;
        let mut kept = 0usize;
        conns.retain(|c| {
            let expired = kept > 0 && c.idle_for(now).is_some_and(|d| d >= idle_timeout);
            if !expired {
                kept += 1;
            }
            !expired
        });
    }

    async fn lease(&self) -> Result<(http2::SendRequest<RequestBody>, StreamLease), RequestError> {
        if let Some(l) = self.try_lease() {
            return Ok(l);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        if let Some(l) = self.try_lease() {
            return Ok(l);
        }
        // A connection attempt failed while this caller waited: fail with it rather than
        // queueing one more connect timeout behind another.
        if self.attempts.load(Ordering::Acquire) != seen
            && let Some((message, cut)) = self.last_failure.lock().ok().and_then(|f| f.clone())
        {
            return Err(if cut {
                RequestError::HandshakeCut(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    message,
                ))
            } else {
                RequestError::Connect(message.into())
            });
        }
        let result = self.connect().await;
        if let Ok(mut f) = self.last_failure.lock() {
            *f = result.as_ref().err().map(|e| {
                let cut = matches!(e, RequestError::HandshakeCut(_));
                (crate::upstream::chain(e), cut)
            });
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let conn = result?;
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let lease = (conn.sender.clone(), StreamLease { conn: conn.clone() });
        if let Ok(mut conns) = self.conns.lock() {
            conns.push(conn);
        }
        Ok(lease)
    }

    async fn connect(&self) -> Result<Arc<Conn>, RequestError> {
        // Read before the handshake: a swap during it makes this connection old at once.
        let generation = self.generation();
        let t = &self.target;
        let unreachable = |e: std::io::Error| {
            RequestError::Connect(format!("connecting to {}:{}: {e}", t.host, t.port).into())
        };
        let io = async {
            let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(unreachable)?;
            tcp.set_nodelay(true).map_err(unreachable)?;
            let tls = self
                .tls
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| {
                    // rustls reports a certificate it refuses as `InvalidData`: that server
                    // is not ours, as good as unreachable. A reset or an early close
                    // is a cut on a live path.
                    if is_cut(&e) {
                        RequestError::HandshakeCut(e)
                    } else {
                        unreachable(e)
                    }
                })?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(unreachable(std::io::Error::other(
                    "the server did not agree to HTTP/2",
                )));
            }
            Ok(tls)
        };
        let io = tokio::time::timeout(self.config.connect_timeout, io)
            .await
            .map_err(|_| {
                RequestError::Connect(
                    format!(
                        "connecting to {}:{}: no connection within {:?}",
                        t.host, t.port, self.config.connect_timeout
                    )
                    .into(),
                )
            })??;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.config.keepalive_interval)
            .keep_alive_timeout(self.config.keepalive_timeout)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| RequestError::Connect(Box::new(e)))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            generation,
            sender,
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        });
        let (weak, server) = (Arc::downgrade(&conn), format!("{}:{}", t.host, t.port));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%server, connection = id, error = %e, "upstream connection ended");
            }
            if let Some(c) = weak.upgrade() {
                c.closed.store(true, Ordering::Release);
            }
        });
        tracing::debug!(server = %format!("{}:{}", t.host, t.port), connection = conn.id, "upstream HTTP/2 connection opened");
        Ok(conn)
    }

    /// Sends `req` (absolute URI) on a connection with a free stream, opening one if
    /// needed. The stream stays counted until the response body ends or is dropped.
    ///
    /// # Errors
    /// [`RequestError::Connect`] if no connection could be made, else the request's
    /// failure.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, RequestError> {
        let mut req = req;
        *req.version_mut() = http::Version::HTTP_2;
        // A request the connection never took (it closed in between) is sent again on
        // another: at most twice more.
        for attempt in 0..3 {
            let (mut sender, lease) = self.lease().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|inner| {
                        LeasedBody {
                            inner,
                            lease: Some(lease),
                        }
                        .boxed()
                    }));
                }
                Err(mut e) => {
                    let unsent = e.take_message();
                    match unsent {
                        Some(r) if attempt < 2 => {
                            lease.conn.closed.store(true, Ordering::Release);
                            req = r;
                        }
                        _ => return Err(RequestError::Send(e.into_error())),
                    }
                }
            }
        }
        Err(RequestError::Connect(
            "every connection closed before taking the request".into(),
        ))
    }
}

/// Whether a handshake's I/O error is the connection being reset or closed early.
fn is_cut(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
    )
}
