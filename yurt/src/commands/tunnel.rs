//! `yurt tunnel-server` (alias `yurt-tunnel-server`) and `yurt tunnel-agent` (alias
//! `yurt-tunnel-agent`): the cloud-edge tunnel.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use yurt_tunnel::agent::{AgentConfig, AllowList};
use yurt_tunnel::server::ServerConfig;
use yurt_tunnel::tls::TlsFiles;
use yurt_tunnel::{Keepalive, Windows};

/// Flags both ends share.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The cluster CA: it signs the server's certificate and every agent's.
    #[arg(long)]
    pub ca_file: PathBuf,
    /// This side's certificate.
    #[arg(long)]
    pub cert_file: PathBuf,
    /// This side's private key.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Seconds between HTTP/2 PINGs on the tunnel connection.
    #[arg(long, default_value_t = 15)]
    pub keepalive_interval_seconds: u64,
    /// Seconds a PING may go unanswered before the connection is given up.
    #[arg(long, default_value_t = 20)]
    pub keepalive_timeout_seconds: u64,
    /// Seconds connecting a target may take before the answer is 504.
    #[arg(long, default_value_t = 10)]
    pub dial_timeout_seconds: u64,
}

impl CommonArgs {
    fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca_file.clone(),
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
        }
    }

    fn keepalive(&self) -> anyhow::Result<Keepalive> {
        anyhow::ensure!(
            self.keepalive_interval_seconds > 0 && self.keepalive_timeout_seconds > 0,
            "--keepalive-interval-seconds and --keepalive-timeout-seconds must be positive"
        );
        Ok(Keepalive {
            interval: Duration::from_secs(self.keepalive_interval_seconds),
            timeout: Duration::from_secs(self.keepalive_timeout_seconds),
        })
    }

    fn dial_timeout(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(
            self.dial_timeout_seconds > 0,
            "--dial-timeout-seconds must be positive"
        );
        Ok(Duration::from_secs(self.dial_timeout_seconds))
    }
}

/// `yurt tunnel-server` flags.
#[derive(Debug, Args)]
pub struct TunnelServerArgs {
    /// kubeconfig of the server's identity, which lists and watches Nodes (default:
    /// $KUBECONFIG, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The Unix socket kube-apiserver's `cluster` egress connects to (HTTP CONNECT;
    /// created mode 0600).
    #[arg(long, default_value = "/run/yurt/tunnel/egress.sock")]
    pub egress_socket: PathBuf,
    /// Where agents connect.
    #[arg(long, default_value = "0.0.0.0:10262")]
    pub agent_bind_address: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:10265")]
    pub admin_address: SocketAddr,
    /// Seconds an agent's TLS and HTTP/2 handshake, or a CONNECT request head, may take.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_seconds: u64,
    /// TLS files and timeouts.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `yurt tunnel-agent` flags.
#[derive(Debug, Args)]
pub struct TunnelAgentArgs {
    /// This node's name; its certificate must be `system:node:<name>`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: yurt_core::NodeName,
    /// The tunnel server's `host:port` (OpenYurt's flag name); several (comma-separated
    /// or repeated) for server replicas: the agent keeps a connection to each.
    #[arg(long, required = true, value_delimiter = ',')]
    pub tunnelserver_addr: Vec<String>,
    /// The name every server's certificate must carry (default: the host of the first
    /// `--tunnelserver-addr`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// This node's own addresses, the only ones (with `--pod-cidr`) the agent connects.
    #[arg(long = "node-ip", required = true, value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// Ports the agent connects on the node's addresses.
    #[arg(long, value_delimiter = ',', default_value = "10250")]
    pub allowed_ports: Vec<u16>,
    /// This node's pod CIDRs: any address and port in them may be connected.
    #[arg(long = "pod-cidr", value_delimiter = ',')]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// `/healthz`, `/readyz` (connected to the server) and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:10266")]
    pub admin_address: SocketAddr,
    /// Seconds a connection to the server (TCP, TLS, HTTP/2) may take.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_seconds: u64,
    /// Longest wait between reconnection attempts, seconds (starting at 1).
    #[arg(long, default_value_t = 30)]
    pub max_backoff_seconds: u64,
    /// TLS files and timeouts.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    token
}

/// Runs `yurt tunnel-server`.
pub async fn run_server(args: TunnelServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.handshake_timeout_seconds > 0,
        "--handshake-timeout-seconds must be positive"
    );
    let config = ServerConfig {
        egress_socket: args.egress_socket.clone(),
        agent_addr: args.agent_bind_address,
        tls: args.common.tls(),
        dial_timeout: args.common.dial_timeout()?,
        handshake_timeout: Duration::from_secs(args.handshake_timeout_seconds),
        keepalive: args.common.keepalive()?,
        windows: Windows::default(),
    };
    let client = super::kube_client(args.kubeconfig.as_ref()).await?;
    yurt_tunnel::server::run(client, config, args.admin_address, token()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `yurt tunnel-agent`.
pub async fn run_agent(args: TunnelAgentArgs) -> anyhow::Result<ExitCode> {
    let tls = args.common.tls();
    let own = yurt_tunnel::tls::certs(&tls.cert)?;
    let identity = yurt_tunnel::tls::node_of(own.first())
        .map_err(|e| anyhow::anyhow!("{}: {e}", tls.cert.display()))?;
    anyhow::ensure!(
        identity == args.node_name,
        "{} is node {identity}'s certificate, not --node-name {}'s",
        tls.cert.display(),
        args.node_name
    );
    anyhow::ensure!(
        args.connect_timeout_seconds > 0 && args.max_backoff_seconds > 0,
        "--connect-timeout-seconds and --max-backoff-seconds must be positive"
    );
    let server_name = match &args.server_name {
        Some(name) => name.clone(),
        None => {
            let first = args
                .tunnelserver_addr
                .first()
                .map(String::as_str)
                .unwrap_or("");
            host_of(first).with_context(|| format!("--tunnelserver-addr {first}: not host:port"))?
        }
    };
    let config = AgentConfig {
        server_addrs: args.tunnelserver_addr.clone(),
        server_name,
        tls,
        allow: AllowList {
            node: args.node_name.clone(),
            node_ips: args.node_ips.clone(),
            ports: args.allowed_ports.clone(),
            pod_cidrs: args.pod_cidrs.clone(),
        },
        dial_timeout: args.common.dial_timeout()?,
        connect_timeout: Duration::from_secs(args.connect_timeout_seconds),
        keepalive: args.common.keepalive()?,
        backoff: (
            Duration::from_secs(1),
            Duration::from_secs(args.max_backoff_seconds.max(1)),
        ),
        windows: Windows::default(),
        max_streams: 4096,
    };
    yurt_tunnel::agent::run_with_admin(config, args.admin_address, token()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<String> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once("]:").map(|(h, _)| h.to_owned());
    }
    addr.rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_server_name_defaults_to_the_host_of_the_address() {
        assert_eq!(host_of("10.10.0.1:10262").as_deref(), Some("10.10.0.1"));
        assert_eq!(
            host_of("tunnel.example:10262").as_deref(),
            Some("tunnel.example")
        );
        assert_eq!(host_of("[fd00::1]:10262").as_deref(), Some("fd00::1"));
        assert_eq!(host_of(":10262"), None);
        assert_eq!(host_of("nohost"), None);
    }
}
