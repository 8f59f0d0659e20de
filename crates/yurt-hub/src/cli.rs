//! The hub's command line: its flags (OpenYurt's names where it has one) and their
//! conversion into [`Config`], shared by `yurt hub` and the hub-only `yurt-hub` binary so
//! both parse exactly the same flags. Behind the default-on `cli` feature: the library
//! itself never parses a command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::{
    ClientCsr, Config, DummyInterface, HealthConfig, Limits, PodTokenConfig, SecureProxy,
    ServingSource, UpstreamConfig,
};

/// Why the flags do not make a hub configuration, or the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An `--server-addr` entry is not a URL.
    #[error("--server-addr {addr} is not a URL")]
    ServerNotUrl {
        /// The entry.
        addr: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// An `--server-addr` entry is not `https://`.
    #[error("--server-addr {0} must be https://host:port")]
    ServerNotHttps(String),
    /// The HTTPS proxy is on but has no serving certificate.
    #[error(
        "--serving-cert and --serving-key go together (neither: the serving certificate is asked of the cluster by CSR)"
    )]
    NoServingCert,
    /// A duration flag that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The node or pool name is not a DNS label.
    #[error(transparent)]
    Name(#[from] yurt_core::names::InvalidName),
    /// The hub could not start.
    #[error(transparent)]
    Hub(#[from] crate::HubError),
}

/// `yurt hub` flags (OpenYurt's names where it has one).
#[derive(Debug, Args)]
pub struct HubArgs {
    /// This node's name.
    #[arg(long, env = "YURT_HUB_NODE_NAME")]
    pub node_name: String,
    /// This node's pool.
    #[arg(long = "nodepool-name", env = "YURT_HUB_NODEPOOL_NAME")]
    pub nodepool_name: Option<String>,
    /// API servers, comma-separated `https://host:port`.
    #[arg(
        long,
        env = "YURT_HUB_SERVER_ADDR",
        value_delimiter = ',',
        required = true
    )]
    pub server_addr: Vec<String>,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "YURT_HUB_CA_FILE")]
    pub ca_file: PathBuf,
    /// The hub's client certificate towards the API servers (PEM, `system:node:<node>`),
    /// read again when it changes (kubelet's rotating `kubelet-client-current.pem` may be
    /// given for both this and --client-key).
    #[arg(long, env = "YURT_HUB_CLIENT_CERT")]
    pub client_cert: PathBuf,
    /// Its key (PEM).
    #[arg(long, env = "YURT_HUB_CLIENT_KEY")]
    pub client_key: PathBuf,
    /// Address of the plain-HTTP proxy for local components.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_proxy_address: IpAddr,
    /// Port of the plain-HTTP proxy.
    #[arg(long, default_value_t = 10261)]
    pub proxy_port: u16,
    /// Port of the HTTPS proxy for pods (on the dummy interface address); 0 disables it.
    #[arg(long, default_value_t = 10268)]
    pub proxy_secure_port: u16,
    /// Serving certificate of the HTTPS proxy (signed by the cluster CA), read again
    /// when it changes. Without it (and --serving-key) the hub asks the cluster for one by
    /// CSR and keeps it in --cert-dir.
    #[arg(long, env = "YURT_HUB_SERVING_CERT")]
    pub serving_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, env = "YURT_HUB_SERVING_KEY")]
    pub serving_key: Option<PathBuf>,
    /// Use --client-cert/--client-key (kubelet's) only to ask the cluster for a client
    /// certificate of the hub's own (`system:node:<node>` in `system:nodes` and
    /// `openyurt:yurthub`, approved by yurt manager's csrapprover), kept in --cert-dir and
    /// renewed; the hub is not ready until it has it.
    #[arg(long, default_value_t = false)]
    pub request_client_certificate: bool,
    /// Where certificates obtained by CSR are kept.
    #[arg(long, default_value = "/var/lib/yurthub/pki")]
    pub cert_dir: PathBuf,
    /// How long one serving CSR may wait to be approved and signed before a new one is
    /// made.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub certificate_request_timeout: Duration,
    /// Create the dummy interface that carries the pod-facing address.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_dummy_if: bool,
    /// Pod-facing address.
    #[arg(long, default_value = "169.254.2.1")]
    pub dummy_if_ip: IpAddr,
    /// Name of the dummy interface.
    #[arg(long, default_value = "hub-dummy0")]
    pub dummy_if_name: String,
    /// Address of the health, readiness and metrics server.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// Port of the health, readiness and metrics server.
    #[arg(long, default_value_t = 10267)]
    pub serve_port: u16,
    /// Cache folder.
    #[arg(
        long,
        env = "YURT_HUB_CACHE_DIR",
        default_value = "/var/lib/yurthub/cache"
    )]
    pub disk_cache_path: PathBuf,
    /// Seconds between health probes.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_interval_seconds: u64,
    /// Timeout of one health probe attempt, seconds (10, fit for 500 ms+ links where a
    /// probe on a new connection takes four round trips; OpenYurt's default is 2).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout_seconds: u64,
    /// Attempts per health probe.
    #[arg(long, default_value_t = 3)]
    pub heartbeat_failed_retry: u32,
    /// Successes in a row that make a server healthy again.
    #[arg(long, default_value_t = 2)]
    pub heartbeat_healthy_threshold: u32,
    /// Lease duration, and how long kubelet may be silent before the hub stops renewing
    /// its lease, seconds.
    #[arg(long, default_value_t = 40)]
    pub kubelet_health_grace_period: u64,
    /// Base of the timeout of watches held while offline, seconds.
    #[arg(long, default_value_t = 1800)]
    pub min_request_timeout: u64,
    /// Namespace of the `yurt-hub-cfg` ConfigMap.
    #[arg(long, default_value = "kube-system")]
    pub namespace: String,
    /// More cache agents (User-Agent names; `*` caches every client).
    #[arg(long, value_delimiter = ',')]
    pub cache_agents: Vec<String>,
    /// kubelet's static pod folder (OTA upgrades of YurtStaticSet pods write here).
    #[arg(long, default_value = "/etc/kubernetes/manifests")]
    pub static_pod_path: PathBuf,
    /// Audiences a pod's bound service-account token must carry to be verified offline
    /// (the API server's `--api-audiences`; empty: the issuer, the API server's default).
    #[arg(long, value_delimiter = ',', env = "YURT_HUB_TOKEN_AUDIENCES")]
    pub token_audiences: Vec<String>,
    /// TCP+TLS connect timeout towards API servers (`10s`, `500ms`); a failed connect
    /// makes the node offline at once.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// HTTP/2 ping interval on connections to API servers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_keepalive_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered before the connection is dropped.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_keepalive_timeout: Duration,
    /// How long a GET or LIST waits for the API server's response headers before it is
    /// answered from the cache (the node stays online; the health checker probes now).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub upstream_read_timeout: Duration,
    /// Streams one HTTP/2 connection to an API server carries before the hub opens
    /// another (keep it at or below the server's `--http2-max-streams-per-connection`,
    /// 250 by default in kube-apiserver 1.20).
    #[arg(long, default_value_t = 100)]
    pub upstream_max_streams_per_connection: usize,
    /// Ask the API servers for gzip-compressed responses (decoded by the hub: its cache
    /// and clients get plain bodies).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub upstream_gzip: bool,
    /// Short requests served at once (watches, exec and log follows excluded); more get
    /// 429 Too Many Requests.
    #[arg(long, default_value_t = 250)]
    pub max_requests_in_flight: usize,
    /// Largest request body the hub reads itself (an offline create, kubelet's Lease);
    /// larger gets 413.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_request_body_bytes: usize,
    /// Largest API server response the hub buffers to cache or filter it.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    pub max_buffered_response_bytes: usize,
    /// Most writes waiting for the cache writer (a LIST counts as one). A write that
    /// finds it full waits up to a second, then is dropped and the list shapes it
    /// belongs to are not served offline until relisted; deletes are never dropped.
    #[arg(long, default_value_t = crate::store::StoreConfig::DEFAULT_QUEUE_CAPACITY)]
    pub cache_write_queue: usize,
    /// Seconds between refreshes of the service-account issuer's public keys.
    #[arg(long, default_value_t = 300)]
    pub issuer_keys_refresh_seconds: u64,
}

fn positive(d: Duration, flag: &'static str) -> Result<Duration, CliError> {
    if d.is_zero() {
        return Err(CliError::ZeroDuration(flag));
    }
    Ok(d)
}

impl HubArgs {
    /// The hub configuration these flags describe.
    ///
    /// # Errors
    /// A bad server URL, node or pool name, a zero timeout, or an HTTPS proxy without
    /// its certificate; the message names the flag.
    pub fn into_config(self) -> Result<Config, CliError> {
        let a = self;
        let servers = a
            .server_addr
            .iter()
            .map(|s| {
                let uri: http::Uri = s.parse().map_err(|source| CliError::ServerNotUrl {
                    addr: s.clone(),
                    source,
                })?;
                if uri.scheme_str() != Some("https") {
                    return Err(CliError::ServerNotHttps(s.clone()));
                }
                Ok(uri)
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let secure_proxy = match (a.proxy_secure_port, a.serving_cert, a.serving_key) {
            (0, _, _) => None,
            (port, Some(cert), Some(key)) => Some(SecureProxy {
                addr: SocketAddr::new(a.dummy_if_ip, port),
                serving: ServingSource::Files { cert, key },
            }),
            (port, None, None) => Some(SecureProxy {
                addr: SocketAddr::new(a.dummy_if_ip, port),
                serving: ServingSource::Csr {
                    dir: a.cert_dir.clone(),
                    issue_timeout: positive(
                        a.certificate_request_timeout,
                        "--certificate-request-timeout",
                    )?,
                },
            }),
            (_, _, _) => return Err(CliError::NoServingCert),
        };
        Ok(Config {
            node_name: a.node_name.parse()?,
            pool: a.nodepool_name.map(|p| p.parse()).transpose()?,
            servers,
            ca_file: a.ca_file,
            client_csr: if a.request_client_certificate {
                Some(ClientCsr {
                    dir: a.cert_dir.clone(),
                    issue_timeout: positive(
                        a.certificate_request_timeout,
                        "--certificate-request-timeout",
                    )?,
                })
            } else {
                None
            },
            client_cert: a.client_cert,
            client_key: a.client_key,
            proxy_addr: SocketAddr::new(a.bind_proxy_address, a.proxy_port),
            dummy_interface: (a.enable_dummy_if && secure_proxy.is_some()).then(|| {
                DummyInterface {
                    name: a.dummy_if_name.clone(),
                    ip: a.dummy_if_ip,
                }
            }),
            secure_proxy,
            admin_addr: SocketAddr::new(a.bind_address, a.serve_port),
            cache_dir: a.disk_cache_path,
            health: HealthConfig {
                interval: Duration::from_secs(a.heartbeat_interval_seconds.max(1)),
                timeout: Duration::from_secs(a.heartbeat_timeout_seconds.max(1)),
                retries: a.heartbeat_failed_retry.max(1),
                healthy_threshold: a.heartbeat_healthy_threshold.max(1),
                kubelet_grace: Duration::from_secs(a.kubelet_health_grace_period.max(1)),
            },
            upstream: UpstreamConfig {
                connect_timeout: positive(
                    a.upstream_connect_timeout,
                    "--upstream-connect-timeout",
                )?,
                keepalive_interval: positive(
                    a.upstream_keepalive_interval,
                    "--upstream-keepalive-interval",
                )?,
                keepalive_timeout: positive(
                    a.upstream_keepalive_timeout,
                    "--upstream-keepalive-timeout",
                )?,
                read_timeout: positive(a.upstream_read_timeout, "--upstream-read-timeout")?,
                max_streams_per_connection: a.upstream_max_streams_per_connection.max(1),
                gzip: a.upstream_gzip,
            },
            min_request_timeout: Duration::from_secs(a.min_request_timeout.max(1)),
            namespace: a.namespace,
            extra_cache_agents: a.cache_agents,
            cache_batch_max: 512,
            cache_write_queue: a.cache_write_queue.max(1),
            static_pod_dir: a.static_pod_path,
            limits: Limits {
                max_request_body: a.max_request_body_bytes.max(1),
                max_buffered_response: a.max_buffered_response_bytes.max(1),
                max_in_flight: a.max_requests_in_flight.max(1),
            },
            pod_tokens: PodTokenConfig {
                audiences: a
                    .token_audiences
                    .into_iter()
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect(),
                keys_refresh: Duration::from_secs(a.issuer_keys_refresh_seconds.max(10)),
            },
        })
    }
}

/// Runs the hub these flags describe until SIGTERM/SIGINT: what `yurt hub` and
/// `yurt-hub` do after parsing.
///
/// # Errors
/// Bad flags ([`HubArgs::into_config`]) or a hub that could not start.
pub async fn run(args: HubArgs) -> Result<(), CliError> {
    let config = args.into_config()?;
    let metrics = crate::metrics::HubMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(registry.sub_registry_with_prefix("yurt_hub"));
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    crate::run(config, metrics, Arc::new(registry), token).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        hub: HubArgs,
    }

    fn parse(extra: &[&str]) -> Result<Config, Box<dyn std::error::Error>> {
        let mut args = vec![
            "t",
            "--node-name",
            "edge-a1",
            "--server-addr",
            "https://10.10.0.1:6443",
            "--ca-file",
            "/ca",
            "--client-cert",
            "/c",
            "--client-key",
            "/k",
        ];
        args.extend_from_slice(extra);
        Ok(T::try_parse_from(args)?.hub.into_config()?)
    }

    #[test]
    fn defaults_follow_openyurt() {
        let c = parse(&["--proxy-secure-port", "0"]).unwrap();
        assert_eq!(c.proxy_addr.to_string(), "127.0.0.1:10261");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:10267");
        assert_eq!(c.health.interval, Duration::from_secs(10));
        // Not OpenYurt's 2 s: a probe on a new connection over a 500 ms link takes 2 s.
        assert_eq!(c.health.timeout, Duration::from_secs(10));
        assert_eq!(c.health, HealthConfig::default());
        assert!(c.secure_proxy.is_none() && c.dummy_interface.is_none());
        let c = parse(&["--serving-cert", "/s", "--serving-key", "/sk"]).unwrap();
        assert_eq!(
            c.secure_proxy.unwrap().addr.to_string(),
            "169.254.2.1:10268"
        );
        assert_eq!(c.dummy_interface.unwrap().name, "hub-dummy0");
    }

    #[test]
    fn upstream_timeouts_default_to_real_wan_values_and_take_units() {
        let c = parse(&["--proxy-secure-port", "0"]).unwrap();
        assert_eq!(c.upstream, UpstreamConfig::default());
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(30));
        let c = parse(&[
            "--proxy-secure-port",
            "0",
            "--upstream-keepalive-interval",
            "300ms",
            "--upstream-read-timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(c.upstream.keepalive_interval, Duration::from_millis(300));
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(120));
        let e = parse(&[
            "--proxy-secure-port",
            "0",
            "--upstream-connect-timeout",
            "0s",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--upstream-connect-timeout"), "{e}");
        assert!(parse(&["--upstream-read-timeout", "soon"]).is_err());
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_name() {
        let e = parse(&["--server-addr", "http://x:1", "--proxy-secure-port", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--server-addr http://x:1 must be https"), "{e}");
        // One serving file without the other.
        let e = parse(&["--serving-cert", "/s"]).unwrap_err().to_string();
        assert!(
            e.contains("--serving-cert and --serving-key go together"),
            "{e}"
        );
        let e = parse(&["--certificate-request-timeout", "0s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--certificate-request-timeout"), "{e}");
    }

    #[test]
    fn without_serving_files_the_serving_certificate_comes_by_csr() {
        let c = parse(&["--cert-dir", "/var/lib/hub-pki"]).unwrap();
        let secure = c.secure_proxy.unwrap();
        assert_eq!(secure.addr.to_string(), "169.254.2.1:10268");
        assert_eq!(
            secure.serving,
            ServingSource::Csr {
                dir: "/var/lib/hub-pki".into(),
                issue_timeout: Duration::from_secs(15 * 60),
            }
        );
        let c = parse(&["--serving-cert", "/s", "--serving-key", "/k"]).unwrap();
        assert_eq!(
            c.secure_proxy.unwrap().serving,
            ServingSource::Files {
                cert: "/s".into(),
                key: "/k".into()
            }
        );
    }
}
