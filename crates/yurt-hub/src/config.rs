//! The hub's typed configuration, built once by the binary from flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use yurt_core::{NodeName, PoolName};

/// The pod-facing HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureProxy {
    /// Where it listens (OpenYurt: 169.254.2.1:10268).
    pub addr: SocketAddr,
    /// Where its serving certificate comes from.
    pub serving: ServingSource,
}

/// Where the pod-facing port's serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingSource {
    /// Files (PEM, signed by the cluster CA), read again when they change.
    Files {
        /// The certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// A CSR to the cluster (OpenYurt's way), the result kept in `dir`.
    Csr {
        /// Where the current certificate and key are stored.
        dir: PathBuf,
        /// How long one request may wait for approval and signing (15 min, as kubelet).
        issue_timeout: Duration,
    },
}

/// The hub's own client certificate, asked of the cluster: `system:node:<node>` in
/// `system:nodes` and `openyurt:yurthub` (the group the hub's RBAC is bound to), which
/// the manager's csrapprover approves when the node itself asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCsr {
    /// Where the current certificate and key are stored.
    pub dir: PathBuf,
    /// How long one request may wait for approval and signing.
    pub issue_timeout: Duration,
}

/// How often certificate files given on the command line are read again to follow a
/// rotation (kubelet swaps its `kubelet-client-current.pem` in place).
pub const CERTIFICATE_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The dummy interface that carries the pod-facing address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DummyInterface {
    /// Interface name (`hub-dummy0`).
    pub name: String,
    /// Its address (`169.254.2.1`).
    pub ip: IpAddr,
}

/// Cloud health checking (OpenYurt's lease-based prober).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes (10 s).
    pub interval: Duration,
    /// Timeout of one probe attempt (10 s). On a new connection a probe is up to four
    /// round trips (TCP, TLS, the Lease's GET and PUT at start or after a conflict, the
    /// PUT alone otherwise): 2 s on a 500 ms link. OpenYurt's 2 s never lets such a probe
    /// finish, and each timed-out attempt throws its connection away, so the next one
    /// starts cold again: the hub would never come online.
    pub timeout: Duration,
    /// Attempts per probe before it counts as failed (3).
    pub retries: u32,
    /// Consecutive successes that make an unhealthy server healthy again (2).
    pub healthy_threshold: u32,
    /// Lease duration written, and how long kubelet may be silent before the hub stops
    /// renewing the node's lease for it (40 s).
    pub kubelet_grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            retries: 3,
            healthy_threshold: 2,
            kubelet_grace: Duration::from_secs(40),
        }
    }
}

/// Connections to the API servers. The defaults fit a real WAN (satellite or cellular,
/// 500 ms+ round trips, some loss); `yurt up --timing fast` passes lab values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// TCP+TLS connect timeout (10 s: a handshake is three round trips, and a lost SYN
    /// is retried after a second). A failed connect makes the node offline at once.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval on upstream connections; a missed ping closes the
    /// connection, so a cut link is noticed even while all streams are idle watches
    /// (10 s).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered (10 s).
    pub keepalive_timeout: Duration,
    /// How long a GET or LIST may wait for response headers before it is answered from
    /// the cache instead (30 s). A slow answer on a live connection only asks the health
    /// checker to probe now; it never makes the node offline by itself.
    pub read_timeout: Duration,
    /// Streams one HTTP/2 connection carries before the hub opens another to the same
    /// server (100; kube-apiserver 1.20 allows 250, and a connection past the server's
    /// limit would queue requests, writes included, behind long watches).
    pub max_streams_per_connection: usize,
    /// Ask the API server for gzip (true): lists cross the WAN compressed; the hub
    /// decodes them, so its cache and its clients see plain bodies.
    pub gzip: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_streams_per_connection: 100,
            gzip: true,
        }
    }
}

/// What one client may cost the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body the hub reads itself (an offline create, kubelet's Lease):
    /// 3 MiB, the API server's own limit. Larger: 413.
    pub max_request_body: usize,
    /// Largest response the hub buffers to cache or filter it (128 MiB). Larger: 503.
    pub max_buffered_response: usize,
    /// Short requests served at once (watches, exec, attach, port-forward and
    /// log follows do not count, as in the API server): 250, OpenYurt's
    /// `--max-requests-in-flight`. More: 429.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body: 3 * 1024 * 1024,
            max_buffered_response: 128 * 1024 * 1024,
            max_in_flight: 250,
        }
    }
}

/// How pods' service-account tokens are verified offline (ADR 004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTokenConfig {
    /// Audiences a bound token must carry (empty: the issuer).
    pub audiences: Vec<String>,
    /// Time between refreshes of the issuer's public keys (300 s).
    pub keys_refresh: Duration,
}

impl Default for PodTokenConfig {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            keys_refresh: Duration::from_secs(300),
        }
    }
}

/// Everything the hub needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub node_name: NodeName,
    /// This node's pool, if it has one.
    pub pool: Option<PoolName>,
    /// API servers, `https://host:port`, in priority order.
    pub servers: Vec<http::Uri>,
    /// Cluster CA (PEM).
    pub ca_file: PathBuf,
    /// The hub's client certificate towards API servers (`system:node:<node>`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// When set, `client_cert` is only the identity the hub asks the cluster for a
    /// client certificate of its own with (kubelet's, followed on disk); that one is
    /// used for everything else.
    pub client_csr: Option<ClientCsr>,
    /// Plain-HTTP listener for local components (127.0.0.1:10261).
    pub proxy_addr: SocketAddr,
    /// HTTPS listener for pods.
    pub secure_proxy: Option<SecureProxy>,
    /// Health, readiness and metrics listener (:10267).
    pub admin_addr: SocketAddr,
    /// Cache folder.
    pub cache_dir: PathBuf,
    /// Dummy interface to create for the pod-facing address.
    pub dummy_interface: Option<DummyInterface>,
    /// Health checking.
    pub health: HealthConfig,
    /// Upstream connections.
    pub upstream: UpstreamConfig,
    /// Base of the random timeout of watches held while offline (1800 s).
    pub min_request_timeout: Duration,
    /// Namespace of `yurt-hub-cfg`.
    pub namespace: String,
    /// Cache agents beyond the defaults and `yurt-hub-cfg` (`*` caches every client).
    pub extra_cache_agents: Vec<String>,
    /// Most objects per cache transaction.
    pub cache_batch_max: usize,
    /// Most writes waiting for the cache writer (4096; a LIST counts as one). A write
    /// that finds the queue full waits up to a second for room, then is dropped and the
    /// list shapes that may hold it are not served offline until relisted (deletes are
    /// never dropped: they are held in memory). See ADR 002.
    pub cache_write_queue: usize,
    /// kubelet's static pod folder, where OTA upgrades write manifests.
    pub static_pod_dir: PathBuf,
    /// Offline verification of pods' tokens.
    pub pod_tokens: PodTokenConfig,
    /// Body sizes and concurrency.
    pub limits: Limits,
}
