//! The tunnel agent, on every edge node: dials out to the server (TLS 1.3, the node's
//! own certificate), serves the server's streams over HTTP/2 (roles reversed: the
//! agent is the HTTP/2 server on a connection it opened), and connects each stream to
//! its target, which must be the node's own: one of its addresses on an allowed port
//! (kubelet's 10250 by default), or any port in its pod CIDR.
//!
//! Who may call what: only the server the agent dialled, authenticated by the cluster
//! CA and its name, can open streams; the agent listens on no port but its admin
//! address (`/healthz`, `/readyz`, `/metrics`, read-only, loopback by default).

mod allow;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use allow::AllowList;

use crate::connect::Target;
use crate::metrics::AgentMetrics;
use crate::server::ERROR_HEADER;
use crate::splice::splice;
use crate::tls::{self, TlsFiles};
use crate::{Keepalive, Windows};
use yurt_core::NodeName;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Every server replica's `host:port`: the agent keeps a connection to each, so
    /// losing one replica costs only the streams it carried.
    pub server_addrs: Vec<String>,
    /// The name the server's certificate must carry (an IP or a DNS name).
    pub server_name: String,
    /// The node's certificate and key, and the cluster CA.
    pub tls: TlsFiles,
    /// What the server may ask the agent to connect.
    pub allow: AllowList,
    /// How long connecting a target may take (then 504).
    pub dial_timeout: Duration,
    /// How long connecting to the server (TCP, TLS, HTTP/2) may take.
    pub connect_timeout: Duration,
    /// HTTP/2 PINGs towards the server.
    pub keepalive: Keepalive,
    /// Reconnect delays: full jitter between `backoff.0` and a cap growing to `backoff.1`.
    pub backoff: (Duration, Duration),
    /// HTTP/2 flow-control windows.
    pub windows: Windows,
    /// Streams the server may have open at once.
    pub max_streams: u32,
    /// How often the agent looks for a renewed certificate in `tls` (kubelet rotates its
    /// client certificate in place): a renewed one gets a new connection at once, and
    /// the old connection drains.
    pub cert_check_interval: Duration,
}

/// Why one connection to the server ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TCP connect failed or timed out.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (a wrong CA, or the server refused our certificate).
    #[error("TLS with {addr}: {reason}")]
    Tls {
        /// The server address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// HTTP/2 failed.
    #[error("tunnel connection: {0}")]
    Http2(String),
    /// The node's certificate or key could not be loaded.
    #[error("the node's certificate: {0}")]
    Certificate(String),
}

/// A running agent's state, for readiness and tests.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    connections: Arc<AtomicUsize>,
}

impl AgentState {
    /// Whether the agent holds a connection to at least one server now.
    pub fn connected(&self) -> bool {
        self.connections() > 0
    }

    /// Server connections held now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Runs the agent until `token` is cancelled: a connection to every server replica,
/// each reconnected after a jittered backoff.
///
/// # Errors
/// Unreadable TLS files, an invalid server name or no server (nothing to retry).
pub async fn run(
    config: AgentConfig,
    metrics: AgentMetrics,
    state: AgentState,
    token: CancellationToken,
) -> Result<(), tls::TlsError> {
    // Checked once here; each connection loads the files again (they may be renewed).
    Identity::load(&config.tls)?;
    let server_name = rustls::pki_types::ServerName::try_from(config.server_name.clone())
        .map_err(|e| tls::TlsError::Verifier(format!("server name {}: {e}", config.server_name)))?;
    if config.server_addrs.is_empty() {
        return Err(tls::TlsError::Verifier("no tunnel server address".into()));
    }
    let dialer = Dialer {
        config: Arc::new(config),
        server_name,
        metrics,
        state,
        token,
    };
    let replicas = dialer
        .config
        .server_addrs
        .iter()
        .map(|addr| keep_connected(&dialer, addr));
    futures_util::future::join_all(replicas).await;
    Ok(())
}

/// The certificate a connection presents, as loaded from the files. The connector,
/// the expiry and the owner all come from one read of the certificate file.
struct Identity {
    connector: TlsConnector,
    /// The certificate file's bytes, to notice a renewed one.
    cert_pem: Vec<u8>,
    /// When the certificate expires.
    expires: Option<std::time::SystemTime>,
    /// The node it names, if it names one.
    owner: Option<NodeName>,
}

impl Identity {
    fn load(files: &TlsFiles) -> Result<Self, tls::TlsError> {
        let cert_pem = std::fs::read(&files.cert).map_err(|e| tls::TlsError::Pem {
            path: files.cert.display().to_string(),
            reason: e.to_string(),
        })?;
        let chain = tls::certs_from_pem(&files.cert, &cert_pem)?;
        let expires = chain.first().and_then(|c| tls::not_after(c).ok());
        let owner = tls::node_of(chain.first()).ok();
        let connector = TlsConnector::from(Arc::new(tls::client_config_with(files, chain)?));
        Ok(Self {
            connector,
            cert_pem,
            expires,
            owner,
        })
    }

    /// Whether the certificate file on disk differs from this one.
    fn renewed_on_disk(&self, files: &TlsFiles) -> bool {
        std::fs::read(&files.cert).is_ok_and(|now| now != self.cert_pem)
    }
}

/// Returns the renewed identity once `files` hold a certificate other than
/// `identity`'s that loads and is still `node`'s (a file caught half-written is tried
/// again at the next check; a certificate of another node is never used).
async fn renewal(
    files: &TlsFiles,
    identity: &Identity,
    node: &NodeName,
    every: Duration,
) -> Identity {
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        if !identity.renewed_on_disk(files) {
            continue;
        }
        let Ok(renewed) = Identity::load(files) else {
            continue;
        };
        if renewed.owner.as_ref() == Some(node) {
            return renewed;
        }
        if !warned {
            tracing::warn!(
                file = %files.cert.display(),
                "the renewed certificate is not node {node}'s: keeping the current one"
            );
            warned = true;
        }
    }
}

/// What every server connection of one agent shares.
struct Dialer {
    config: Arc<AgentConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    metrics: AgentMetrics,
    state: AgentState,
    token: CancellationToken,
}

/// Holds a connection to the server at `addr` until the agent stops.
async fn keep_connected(dialer: &Dialer, addr: &str) {
    let (config, token) = (&dialer.config, &dialer.token);
    let mut failures: u32 = 0;
    // The connection a renewal replaces, told when its successor is up, and the renewed
    // identity its successor connects with.
    let mut handoff = None;
    while !token.is_cancelled() {
        let started = Instant::now();
        let span = tracing::info_span!("session", server = %addr);
        let outcome = session(dialer, addr, handoff.take()).instrument(span).await;
        match outcome {
            Ok(SessionEnd::Closed) => tracing::info!("tunnel connection closed"),
            Ok(SessionEnd::Renewed(replaced, renewed)) => {
                // The old connection serves until this one is up: connect now.
                tracing::info!("certificate renewed: connecting with the new one");
                handoff = Some((replaced, renewed));
                failures = 0;
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "tunnel connection failed"),
        }
        // A connection that lasted a while starts the backoff over.
        if started.elapsed() > config.backoff.1 {
            failures = 0;
        }
        let delay = backoff_delay(config.backoff, failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = token.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Full jitter: a random delay up to `min · 2^failures` capped at `max`, never below `min`.
fn backoff_delay((min, max): (Duration, Duration), failures: u32) -> Duration {
    let cap = min
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
        .max(min);
    let span = cap.saturating_sub(min);
    min + span.mul_f64(fastrand::f64())
}

/// How a connection to the server ended without failing.
enum SessionEnd {
    /// The server or the agent closed it.
    Closed,
    /// The certificate was renewed: the agent connects again with the new identity and
    /// cancels this token once connected; the old connection serves until then, then
    /// drains in the background.
    Renewed(CancellationToken, Box<Identity>),
}

async fn session(
    dialer: &Dialer,
    addr: &str,
    handoff: Option<(CancellationToken, Box<Identity>)>,
) -> Result<SessionEnd, SessionError> {
    let Dialer {
        config,
        metrics,
        state,
        token,
        ..
    } = dialer;
    let server_name = dialer.server_name.clone();
    let addr = &addr.to_owned();
    let result = |result: &'static str| {
        metrics
            .connects
            .get_or_create(&crate::metrics::ReasonLabel { reason: result })
            .inc();
    };
    // A renewal hands over the identity it checked; otherwise the files are loaded
    // afresh (they may have been renewed while the agent was disconnected).
    let (handoff, renewed) = handoff.map_or((None, None), |(t, i)| (Some(t), Some(*i)));
    let identity = match renewed.map_or_else(|| Identity::load(&config.tls), Ok) {
        Ok(identity) => identity,
        Err(e) => {
            result("certificate");
            return Err(SessionError::Certificate(e.to_string()));
        }
    };
    if let Some(expires) = identity.expires {
        metrics.certificate_expiry.set(
            expires
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
    }
    let connector = &identity.connector;
    let connect = async {
        let tcp = TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| SessionError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(&tcp);
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(config.keepalive.interval)
                .with_interval(config.keepalive.interval),
        );
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| SessionError::Tls {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        h2::server::Builder::new()
            .initial_window_size(config.windows.stream)
            .initial_connection_window_size(config.windows.connection)
            .max_frame_size(config.windows.max_frame)
            .max_send_buffer_size(config.windows.max_frame as usize)
            .max_concurrent_streams(config.max_streams)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| SessionError::Http2(e.to_string()))
    };
    let mut connection = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            result(match e {
                SessionError::Connect { .. } => "connect",
                SessionError::Tls { .. } | SessionError::Certificate(_) => "tls",
                SessionError::Http2(_) => "http2",
            });
            return Err(e);
        }
        Err(_) => {
            result("timeout");
            return Err(SessionError::Connect {
                addr: addr.clone(),
                reason: format!("no connection within {:?}", config.connect_timeout),
            });
        }
    };
    result("ok");
    if let Some(old) = handoff {
        old.cancel();
    }
    state.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connected.inc();
    // Counted down however the session ends (or its drain, after a renewal).
    let connected = ConnectedGuard {
        state: state.clone(),
        metrics: metrics.clone(),
    };
    tracing::info!("connected to the tunnel server");
    // Streams end with their connection (a dead link must not leave them waiting for
    // window updates that will never come).
    // Not a child of `token`: on shutdown, open streams get the drain below first.
    let streams = CancellationToken::new();
    let end_streams = streams.clone().drop_guard();
    let mut keepalive = Box::pin(crate::keep_alive(connection.ping_pong(), config.keepalive));
    // Made once, not per loop turn: streams arriving more often than the check interval
    // must not keep restarting its timer.
    let mut renewed = Box::pin(renewal(
        &config.tls,
        &identity,
        &config.allow.node,
        config.cert_check_interval,
    ));
    let next = loop {
        tokio::select! {
            () = token.cancelled() => {
                // Drain: no new streams; those open may finish while the link lasts.
                connection.graceful_shutdown();
                let drain = async { while let Some(Ok(_)) = connection.accept().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                return Ok(SessionEnd::Closed);
            }
            next = &mut renewed => break next,
            failed = &mut keepalive => return Err(SessionError::Http2(failed)),
            accepted = connection.accept() => match accepted {
                None => return Ok(SessionEnd::Closed),
                Some(Err(e)) => return Err(SessionError::Http2(e.to_string())),
                Some(Ok((request, respond))) => {
                    spawn_stream(request, respond, config, metrics, &streams);
                }
            },
        }
    };
    // Renewed. The caller connects again with the new certificate and cancels `handed`
    // once connected; the server opens new streams on an agent's newest connection.
    // Until then this connection keeps serving, so no stream is refused in between;
    // then it takes no new streams and lives until its streams end, its certificate
    // expires (the server would close it then) or the agent stops. If the new one
    // cannot connect within the connect timeout, this one drains all the same.
    let handed = CancellationToken::new();
    let expires_in = match identity.expires {
        Some(t) => t
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => Duration::from_secs(24 * 3600),
    };
    let (token, handoff, connect_timeout) = (token.clone(), handed.clone(), config.connect_timeout);
    let (config, metrics) = (config.clone(), metrics.clone());
    let drain = async move {
        let (_connected, _end_streams) = (connected, end_streams);
        let handoff_timeout = tokio::time::sleep(connect_timeout);
        tokio::pin!(handoff_timeout);
        loop {
            tokio::select! {
                () = handoff.cancelled() => break,
                () = &mut handoff_timeout => break,
                () = token.cancelled() => return,
                failed = &mut keepalive => {
                    tracing::info!(error = %failed, "the old connection failed");
                    return;
                }
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) => {
                        spawn_stream(request, respond, &config, &metrics, &streams);
                    }
                    _ => return,
                },
            }
        }
        connection.graceful_shutdown();
        let streams_end = async { while let Some(Ok(_)) = connection.accept().await {} };
        tokio::select! {
            () = streams_end => tracing::info!("the old connection drained"),
            failed = &mut keepalive => tracing::info!(error = %failed, "the old connection failed"),
            () = tokio::time::sleep(expires_in) => tracing::info!("the old certificate expired"),
            () = token.cancelled() => {}
        }
    };
    tokio::spawn(drain.instrument(tracing::Span::current()));
    Ok(SessionEnd::Renewed(handed, Box::new(next)))
}

/// Serves one tunnelled connection in its own task, ended with the connection's
/// `streams` token.
fn spawn_stream(
    request: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    config: &Arc<AgentConfig>,
    metrics: &AgentMetrics,
    streams: &CancellationToken,
) {
    let span = tracing::info_span!("stream", target = tracing::field::Empty);
    let task = serve_stream(
        request,
        respond,
        config.clone(),
        metrics.clone(),
        streams.clone(),
    );
    tokio::spawn(task.instrument(span));
}

struct ConnectedGuard {
    state: AgentState,
    metrics: AgentMetrics,
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connected.dec();
    }
}

fn answer(respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode, why: &str) {
    let why = crate::connect::clean_reason(why);
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(&why) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    let _ = respond.send_response(response, true);
}

async fn serve_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    config: Arc<AgentConfig>,
    metrics: AgentMetrics,
    token: CancellationToken,
) {
    let started = Instant::now();
    let done = |code: StatusCode| metrics.dialled(code.as_u16(), started.elapsed().as_secs_f64());
    if request.method() != Method::CONNECT {
        answer(
            &mut respond,
            StatusCode::BAD_REQUEST,
            "only CONNECT is served",
        );
        done(StatusCode::BAD_REQUEST);
        return;
    }
    let target = match request.uri().authority().map(|a| Target::parse(a.as_str())) {
        Some(Ok(target)) => target,
        Some(Err(e)) => {
            answer(&mut respond, StatusCode::BAD_REQUEST, &e.to_string());
            done(StatusCode::BAD_REQUEST);
            return;
        }
        None => {
            answer(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "CONNECT without a target",
            );
            done(StatusCode::BAD_REQUEST);
            return;
        }
    };
    tracing::Span::current().record("target", tracing::field::display(&target));
    let Some(address) = config.allow.address_of(&target) else {
        tracing::warn!("refused: not this node's");
        answer(
            &mut respond,
            StatusCode::FORBIDDEN,
            &format!(
                "the agent does not connect {target}: not one of this node's allowed addresses and ports"
            ),
        );
        done(StatusCode::FORBIDDEN);
        return;
    };
    let tcp = match tokio::time::timeout(config.dial_timeout, TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            answer(
                &mut respond,
                StatusCode::BAD_GATEWAY,
                &format!("dialing {target}: {e}"),
            );
            done(StatusCode::BAD_GATEWAY);
            return;
        }
        Err(_) => {
            answer(
                &mut respond,
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "dialing {target}: no answer within {:?}",
                    config.dial_timeout
                ),
            );
            done(StatusCode::GATEWAY_TIMEOUT);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            tracing::info!(error = %e, "stream gone before it was answered");
            return;
        }
    };
    done(StatusCode::OK);
    metrics.open_streams.inc();
    let (reader, writer) = tcp.into_split();
    let recv = request.into_body();
    tokio::select! {
        () = token.cancelled() => {}
        r = splice(reader, writer, Bytes::new(), send, recv) => match r {
            Ok(c) => tracing::debug!(out = c.out, r#in = c.r#in, "stream ended"),
            Err(e) => tracing::info!(error = %e, "stream failed"),
        },
    }
    metrics.open_streams.dec();
}

/// Runs an agent with its admin endpoints on `admin_addr` (ready while connected)
/// until `token` is cancelled.
///
/// # Errors
/// The admin address cannot be bound; unreadable TLS files.
pub async fn run_with_admin(
    config: AgentConfig,
    admin_addr: std::net::SocketAddr,
    token: CancellationToken,
) -> Result<(), AgentError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let state = AgentState::default();
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| AgentError::Admin(format!("{admin_addr}: {e}")))?;
    let ready = state.clone();
    crate::spawn_admin(
        listener,
        registry,
        move || {
            if ready.connected() {
                Ok(())
            } else {
                Err("not connected to the tunnel server".to_owned())
            }
        },
        token.clone(),
    );
    run(config, metrics, state, token).await?;
    Ok(())
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS files or settings.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The admin address.
    #[error("admin address {0}")]
    Admin(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_never_drops_below_the_minimum() {
        let b = (Duration::from_secs(1), Duration::from_secs(30));
        for failures in 0..40 {
            let d = backoff_delay(b, failures);
            assert!(d >= b.0 && d <= b.1, "{failures}: {d:?}");
        }
        let late: Vec<Duration> = (0..50).map(|_| backoff_delay(b, 10)).collect();
        assert!(late.iter().any(|d| *d > Duration::from_secs(5)), "{late:?}");
        assert!(backoff_delay(b, 0) <= Duration::from_secs(2));
    }
}
