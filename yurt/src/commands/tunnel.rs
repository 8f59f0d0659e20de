//! `yurt tunnel-server` (alias `yurt-tunnel-server`) and `yurt tunnel-agent` (alias
//! `yurt-tunnel-agent`): the cloud-edge tunnel. The agent's flags live in
//! [`yurt_tunnel::cli`], shared with the agent-only `yurt-tunnel-agent` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use yurt_tunnel::Windows;
use yurt_tunnel::cli::{AgentArgs, CommonArgs};
use yurt_tunnel::server::ServerConfig;

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
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    yurt_tunnel::cli::run_agent(&args, token()).await?;
    Ok(ExitCode::SUCCESS)
}
