//! The tunnel server, in the cloud: agents dial in (TLS 1.3, node certificates), and
//! kube-apiserver's `cluster` egress asks for connections on a Unix socket with HTTP
//! CONNECT. A target owned by a node with an agent goes through that agent; an edge
//! node without one gets a 502 naming it; anything else is dialled directly.
//!
//! Who may call what:
//! - the egress socket (door A): whoever can open the file; it is created mode 0600,
//!   so only the API server's user (root in a fleet). It carries no authentication,
//!   as 1.20's egress dialer sends none.
//! - the agent port: any TLS 1.3 client with a certificate from the cluster CA whose
//!   subject is a node's (`system:node:<name>`, `system:nodes`) and whose Node exists.
//!   It is never asked for anything: the server opens the streams.
//! - the admin port: `/healthz`, `/readyz`, `/metrics`, read-only.

pub mod agents;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use yurt_core::NodeName;

use crate::connect::{self, Host, Target};
use crate::metrics::ServerMetrics;
use crate::splice::splice;
use crate::tls::{self, TlsFiles};
use crate::{Keepalive, Windows};
pub use agents::Agents;
pub use routes::{NodeRoute, Route, Routes};

/// The header an agent's error answer explains itself in.
pub const ERROR_HEADER: &str = "yurt-tunnel-error";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Unix socket kube-apiserver's egress dialer connects to.
    pub egress_socket: PathBuf,
    /// Where agents connect.
    pub agent_addr: SocketAddr,
    /// The server's certificate for agents, and the CA their certificates must chain to.
    pub tls: TlsFiles,
    /// How long an agent (or a direct dial) may take to connect a target: 504 after.
    pub dial_timeout: Duration,
    /// How long a TLS and HTTP/2 handshake, or a CONNECT request head, may take.
    pub handshake_timeout: Duration,
    /// HTTP/2 PINGs on every agent connection.
    pub keepalive: Keepalive,
    /// HTTP/2 flow-control windows.
    pub windows: Windows,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("listen on {what}: {source}")]
    Listen {
        /// Which listener.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS files or settings.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

struct Shared {
    config: ServerConfig,
    routes: Routes,
    agents: Agents,
    metrics: ServerMetrics,
    acceptor: TlsAcceptor,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    shared: Arc<Shared>,
    egress: UnixListener,
    agent_listener: TcpListener,
}

impl Server {
    /// Binds the agent port and the egress socket (replacing a stale socket file,
    /// mode 0600).
    ///
    /// # Errors
    /// Unreadable TLS files; a listener that cannot be bound.
    pub async fn bind(
        config: ServerConfig,
        routes: Routes,
        metrics: ServerMetrics,
    ) -> Result<Self, ServerError> {
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&config.tls)?));
        let listen = |what: String| move |source| ServerError::Listen { what, source };
        let agent_listener = TcpListener::bind(config.agent_addr)
            .await
            .map_err(listen(format!("agent port {}", config.agent_addr)))?;
        let socket = &config.egress_socket;
        let egress = bind_private_socket(socket)
            .map_err(listen(format!("egress socket {}", socket.display())))?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                routes,
                agents: Agents::default(),
                metrics,
                acceptor,
            }),
            egress,
            agent_listener,
        })
    }

    /// The agent port's address (for a port 0 bind).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn agent_addr(&self) -> std::io::Result<SocketAddr> {
        self.agent_listener.local_addr()
    }

    /// The connected agents.
    pub fn agents(&self) -> Agents {
        self.shared.agents.clone()
    }

    /// Serves until `token` is cancelled; then stops accepting and drops agent
    /// connections (their agents reconnect to another replica).
    pub async fn run(self, token: CancellationToken) {
        let Self {
            shared,
            egress,
            agent_listener,
        } = self;
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                accepted = egress.accept() => match accepted {
                    Ok((stream, _)) => {
                        tasks.spawn(serve_connect(stream, shared.clone(), token.child_token()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting on the egress socket");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = agent_listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let span = tracing::info_span!("agent", %peer, node = tracing::field::Empty);
                        tasks.spawn(serve_agent(stream, shared.clone(), token.child_token()).instrument(span));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting on the agent port");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&shared.config.egress_socket);
        tasks.close();
        tasks.wait().await;
    }
}

fn bind_private_socket(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn set_keepalive(stream: &TcpStream, keepalive: &Keepalive) {
    let sock = socket2::SockRef::from(stream);
    let params = socket2::TcpKeepalive::new()
        .with_time(keepalive.interval)
        .with_interval(keepalive.interval);
    let _ = sock.set_tcp_keepalive(&params);
    let _ = stream.set_nodelay(true);
}

/// Why an agent connection was refused: the metric's reason and the log line.
struct AgentRefused {
    reason: &'static str,
    message: String,
}

fn refused(reason: &'static str, message: impl Into<String>) -> AgentRefused {
    AgentRefused {
        reason,
        message: message.into(),
    }
}

/// An agent let in.
struct Admitted {
    /// Its node, from its certificate.
    node: NodeName,
    /// Opens streams to it.
    send: h2::client::SendRequest<Bytes>,
    /// Its connection, to poll.
    connection: h2::client::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes>,
    /// When its certificate expires.
    expires: Option<std::time::SystemTime>,
}

/// Checks who an agent is (TLS with a node's certificate, a Node that exists) and sets
/// up HTTP/2 on its connection.
async fn admit(stream: TcpStream, shared: &Shared) -> Result<Admitted, AgentRefused> {
    let config = &shared.config;
    let within = config.handshake_timeout;
    let tls = match tokio::time::timeout(within, shared.acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(refused("tls", format!("TLS handshake failed: {e}"))),
        Err(_) => {
            return Err(refused(
                "handshake",
                format!("no TLS handshake within {within:?}"),
            ));
        }
    };
    let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let node = tls::node_of(peer).map_err(|e| refused("identity", e.to_string()))?;
    // The handshake checked it is valid now; the connection must not outlive it.
    let expires = peer
        .map(tls::not_after)
        .transpose()
        .map_err(|e| refused("identity", e.to_string()))?;
    tracing::Span::current().record("node", node.as_str());
    // A node's agent may start before its kubelet has registered the Node: wait for it
    // as long as a handshake may take.
    let deadline = Instant::now() + within;
    while !shared.routes.contains(&node) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !shared.routes.contains(&node) {
        return Err(refused(
            "unknown_node",
            format!("Node {node} does not exist"),
        ));
    }
    let handshake = h2::client::Builder::new()
        .initial_window_size(config.windows.stream)
        .initial_connection_window_size(config.windows.connection)
        .max_frame_size(config.windows.max_frame)
        .max_send_buffer_size(config.windows.max_frame as usize)
        .handshake::<_, Bytes>(tls);
    match tokio::time::timeout(within, handshake).await {
        Ok(Ok((send, connection))) => Ok(Admitted {
            node,
            send,
            connection,
            expires,
        }),
        Ok(Err(e)) => Err(refused(
            "handshake",
            format!("HTTP/2 handshake failed: {e}"),
        )),
        Err(_) => Err(refused("handshake", "no HTTP/2 handshake in time")),
    }
}

/// One agent connection: check who it is, then keep it until it fails, stops answering
/// PINGs, or the server stops.
async fn serve_agent(stream: TcpStream, shared: Arc<Shared>, token: CancellationToken) {
    let config = &shared.config;
    set_keepalive(&stream, &config.keepalive);
    let Admitted {
        node,
        send,
        mut connection,
        expires,
    } = match admit(stream, &shared).await {
        Ok(admitted) => admitted,
        Err(AgentRefused { reason, message }) => {
            shared
                .metrics
                .agent_refusals
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc();
            tracing::warn!("agent refused: {message}");
            return;
        }
    };
    let pings = connection.ping_pong();
    // Streams cannot outlive their connection: a dead link must end them at once, not
    // leave them waiting for window updates that will never come.
    let closed = token.child_token();
    let _close_streams = closed.clone().drop_guard();
    let id = shared.agents.register(&node, send, closed);
    shared.metrics.agents.inc();
    tracing::info!("agent connected");
    // A certificate that expires ends its connection (TLS checks it only at the
    // handshake); a renewing agent has moved to a new connection by then.
    let expires_in = expires.map_or(Duration::MAX, |t| {
        t.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let outcome = tokio::select! {
        () = token.cancelled() => Ok(()),
        done = &mut connection => done.map_err(|e| e.to_string()),
        failed = crate::keep_alive(pings, config.keepalive) => Err(failed),
        () = tokio::time::sleep(expires_in) => Err("its certificate expired".to_owned()),
    };
    shared.agents.unregister(&node, id);
    shared.metrics.agents.dec();
    match outcome {
        Ok(()) => tracing::info!("agent disconnected"),
        Err(e) => tracing::warn!(error = %e, "agent connection lost"),
    }
}

/// Answers one CONNECT from the egress socket.
async fn serve_connect(mut stream: UnixStream, shared: Arc<Shared>, token: CancellationToken) {
    let started = Instant::now();
    let config = &shared.config;
    let head = tokio::time::timeout(config.handshake_timeout, connect::read_request(&mut stream));
    let (target, early) = match head.await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bad CONNECT on the egress socket");
            let _ = stream
                .write_all(&connect::error_head(400, &e.to_string()))
                .await;
            shared
                .metrics
                .answered("refused", 400, started.elapsed().as_secs_f64());
            return;
        }
        Err(_) => {
            tracing::warn!("no CONNECT head within {:?}", config.handshake_timeout);
            let _ = stream
                .write_all(&connect::error_head(400, "no CONNECT request head in time"))
                .await;
            shared
                .metrics
                .answered("refused", 400, started.elapsed().as_secs_f64());
            return;
        }
    };
    let span = tracing::info_span!("connect", %target, node = tracing::field::Empty);
    async move {
        let route = shared.routes.resolve(&target.host);
        let answer = match &route {
            Route::Node { node, edge } => {
                tracing::Span::current().record("node", node.as_str());
                let links = shared.agents.links(node);
                match links.is_empty() {
                    false => {
                        through_agent(stream, &target, node, links, early, &shared, started)
                            .await;
                        return;
                    }
                    true if *edge => Refusal::new(
                        502,
                        format!("node {node} has no tunnel agent connected; its kubelet and pods are out of reach"),
                    ),
                    true => {
                        direct(stream, &target, early, &shared, started, token).await;
                        return;
                    }
                }
            }
            Route::Direct => {
                direct(stream, &target, early, &shared, started, token).await;
                return;
            }
            Route::Contested { nodes } => {
                let nodes: Vec<&str> = nodes.iter().map(NodeName::as_str).collect();
                tracing::warn!(claimants = ?nodes, "target claimed by several nodes: refused");
                Refusal::new(
                    502,
                    format!(
                        "{} is claimed by nodes {} (their addresses, names or pod CIDRs): refused rather than guess which",
                        target,
                        nodes.join(", ")
                    ),
                )
            }
        };
        tracing::info!(code = answer.code, reason = %answer.reason, "CONNECT refused");
        let _ = stream.write_all(&connect::error_head(answer.code, &answer.reason)).await;
        shared.metrics.answered("refused", answer.code, started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await;
}

struct Refusal {
    code: u16,
    reason: String,
}

impl Refusal {
    fn new(code: u16, reason: String) -> Self {
        Self { code, reason }
    }
}

/// Why a stream could not be opened on one agent connection.
enum OpenFailure {
    /// The connection is going away or broken before the agent answered: another
    /// connection of the node may take the stream (nothing was sent to the target).
    Unusable(Refusal),
    /// The agent answered: final.
    Answered(Refusal),
}

/// Opens a CONNECT stream to `target` on one agent connection.
async fn open_stream(
    link: &agents::AgentLink,
    target: &Target,
    node: &NodeName,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), OpenFailure> {
    let unusable = |e: h2::Error| {
        OpenFailure::Unusable(Refusal::new(
            502,
            format!("node {node}: tunnel connection unusable: {e}"),
        ))
    };
    let mut send = link.send.clone().ready().await.map_err(unusable)?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .map_err(|e| OpenFailure::Answered(Refusal::new(400, format!("target {target}: {e}"))))?;
    let (response, stream_send) = send.send_request(request, false).map_err(unusable)?;
    let response = response.await.map_err(|e| {
        OpenFailure::Unusable(Refusal::new(
            502,
            format!("node {node}: tunnel stream failed: {e}"),
        ))
    })?;
    if response.status() != StatusCode::OK {
        let why = response
            .headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("refused");
        return Err(OpenFailure::Answered(Refusal::new(
            response.status().as_u16(),
            format!("node {node}: {why}"),
        )));
    }
    Ok((stream_send, response.into_body()))
}

#[allow(clippy::too_many_arguments)]
async fn through_agent(
    mut stream: UnixStream,
    target: &Target,
    node: &NodeName,
    links: Vec<agents::AgentLink>,
    early: Vec<u8>,
    shared: &Shared,
    started: Instant,
) {
    let config = &shared.config;
    let metrics = &shared.metrics;
    // Newest connection first; one that is going away (its agent renewed its
    // certificate, or is stopping) or broken hands the stream to the next.
    let opened = async {
        let mut last = None;
        for link in &links {
            match open_stream(link, target, node).await {
                Ok((send, recv)) => return Ok((send, recv, link.closed.clone())),
                Err(OpenFailure::Answered(refusal)) => return Err(refusal),
                Err(OpenFailure::Unusable(refusal)) => last = Some(refusal),
            }
        }
        Err(last.unwrap_or_else(|| {
            Refusal::new(502, format!("node {node} has no tunnel agent connected"))
        }))
    };
    // The agent answers within its own dial timeout; this bound only covers an agent
    // that stopped answering altogether.
    let bound = config.dial_timeout + config.handshake_timeout;
    let opened = match tokio::time::timeout(bound, opened).await {
        Ok(opened) => opened,
        Err(_) => Err(Refusal::new(
            504,
            format!("node {node}: its agent did not connect {target} within {bound:?}"),
        )),
    };
    let (stream_send, stream_recv, token) = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            tracing::info!(code = refusal.code, reason = %refusal.reason, "CONNECT refused");
            let _ = stream
                .write_all(&connect::error_head(refusal.code, &refusal.reason))
                .await;
            metrics.answered("agent", refusal.code, started.elapsed().as_secs_f64());
            return;
        }
    };
    if stream.write_all(connect::ESTABLISHED).await.is_err() {
        return;
    }
    metrics.answered("agent", 200, started.elapsed().as_secs_f64());
    metrics.open_streams.inc();
    let (reader, writer) = stream.into_split();
    let result = tokio::select! {
        () = token.cancelled() => None,
        r = splice(reader, writer, Bytes::from(early), stream_send, stream_recv) => Some(r),
    };
    metrics.open_streams.dec();
    match result {
        Some(Ok(carried)) => {
            metrics.bytes_out.inc_by(carried.out);
            metrics.bytes_in.inc_by(carried.r#in);
            tracing::debug!(
                out = carried.out,
                r#in = carried.r#in,
                "tunnelled connection ended"
            );
        }
        Some(Err(e)) => tracing::info!(error = %e, "tunnelled connection failed"),
        None => {}
    }
}

async fn direct(
    mut stream: UnixStream,
    target: &Target,
    early: Vec<u8>,
    shared: &Shared,
    started: Instant,
    token: CancellationToken,
) {
    let timeout = shared.config.dial_timeout;
    let dial = async {
        match &target.host {
            Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, target.port)).await,
            Host::Name(name) => TcpStream::connect((name.as_str(), target.port)).await,
        }
    };
    let upstream = match tokio::time::timeout(timeout, dial).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            let reason = format!("dialing {target} from the tunnel server: {e}");
            let _ = stream.write_all(&connect::error_head(502, &reason)).await;
            shared
                .metrics
                .answered("direct", 502, started.elapsed().as_secs_f64());
            return;
        }
        Err(_) => {
            let reason =
                format!("dialing {target} from the tunnel server: no answer within {timeout:?}");
            let _ = stream.write_all(&connect::error_head(504, &reason)).await;
            shared
                .metrics
                .answered("direct", 504, started.elapsed().as_secs_f64());
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if stream.write_all(connect::ESTABLISHED).await.is_err() {
        return;
    }
    shared
        .metrics
        .answered("direct", 200, started.elapsed().as_secs_f64());
    let mut upstream = upstream;
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    shared.metrics.open_streams.inc();
    tokio::select! {
        () = token.cancelled() => {}
        r = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => {
            if let Ok((out, r#in)) = r {
                shared.metrics.bytes_out.inc_by(out);
                shared.metrics.bytes_in.inc_by(r#in);
            }
        }
    }
    shared.metrics.open_streams.dec();
}

/// Runs a server with its node index (watched through `client`) and its admin
/// endpoints on `admin_addr` (ready once the first list of Nodes has arrived) until
/// `token` is cancelled.
///
/// # Errors
/// A listener that cannot be bound, or unusable TLS files.
pub async fn run(
    client: kube::Client,
    config: ServerConfig,
    admin_addr: SocketAddr,
    token: CancellationToken,
) -> Result<(), ServerError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ServerMetrics::register(&mut registry);
    let routes = Routes::default();
    let server = Server::bind(config, routes.clone(), metrics).await?;
    let admin_listener =
        TcpListener::bind(admin_addr)
            .await
            .map_err(|source| ServerError::Listen {
                what: format!("admin address {admin_addr}"),
                source,
            })?;
    tokio::spawn(routes::watch_nodes(client, routes.clone(), token.clone()));
    let ready = routes.clone();
    crate::spawn_admin(
        admin_listener,
        registry,
        move || {
            if ready.synced() {
                Ok(())
            } else {
                Err("the node index has not been listed yet".to_owned())
            }
        },
        token.clone(),
    );
    tracing::info!(
        egress = %server.shared.config.egress_socket.display(),
        agents = %server.agent_addr().map(|a| a.to_string()).unwrap_or_default(),
        "tunnel server listening"
    );
    server.run(token).await;
    Ok(())
}

#[cfg(test)]
mod tests;
