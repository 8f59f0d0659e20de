//! `yurt tunnel-server` (alias `yurt-tunnel-server`) and `yurt tunnel-agent` (alias
//! `yurt-tunnel-agent`): the cloud-edge tunnel. The agent's flags live in
//! [`yurt_tunnel::cli`], shared with the agent-only `yurt-tunnel-agent` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use yurt_tunnel::Windows;
use yurt_tunnel::cli::{AgentArgs, CommonArgs};
use yurt_tunnel::server::ServerConfig;

/// `yurt tunnel-server` flags.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TunnelServerArgs {
    /// Something other than running the server.
    #[command(subcommand)]
    pub action: Option<TunnelServerAction>,
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

/// `yurt tunnel-server` actions: installing the tunnel into a cluster we did not create.
#[derive(Debug, Subcommand)]
pub enum TunnelServerAction {
    /// Print what installs the server on the control-plane nodes of a cluster, for
    /// `kubectl apply -f -`: its ServiceAccount and RBAC, the DaemonSet (host network,
    /// beside each API server, presenting the API server's certificate to agents), the
    /// Service `kube-system/x-tunnel-server-svc` agents find it through, and nodes' right
    /// to read that Service's Endpoints. Then point kube-apiserver at the socket with
    /// the file `yurt tunnel-server egress-selector-config` prints.
    Manifests(TunnelManifestsArgs),
    /// Print kube-apiserver's `--egress-selector-config-file` for the server's socket:
    /// its `cluster` traffic (kubelets, pods, webhooks) as HTTP CONNECT through the tunnel.
    /// On kubeadm, kube-apiserver's static pod must also mount this file and the
    /// socket's folder (hostPath volumes), as for Konnectivity.
    EgressSelectorConfig(EgressConfigArgs),
}

/// Where kube-apiserver finds the server's socket on its host.
const DEFAULT_EGRESS_SOCKET: &str = "/etc/kubernetes/yurt-tunnel-server/egress.sock";

/// `yurt tunnel-server manifests` flags (paths are the control-plane hosts').
#[derive(Debug, Args)]
pub struct TunnelManifestsArgs {
    /// The image with `yurt` at /usr/local/bin/yurt (`yurt image build --with-yurt`).
    #[arg(long, default_value = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The pods' imagePullPolicy.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["IfNotPresent", "Always", "Never"])]
    pub image_pull_policy: String,
    /// The cluster CA, which signs kubelets' client certificates (agents show those).
    #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
    pub ca_file: PathBuf,
    /// The certificate shown to agents: the API server's, which names the addresses
    /// agents dial.
    #[arg(long, default_value = "/etc/kubernetes/pki/apiserver.crt")]
    pub cert_file: PathBuf,
    /// Its key.
    #[arg(long, default_value = "/etc/kubernetes/pki/apiserver.key")]
    pub key_file: PathBuf,
    /// The socket kube-apiserver's egress connects to: its folder is mounted read-write
    /// into the pods, so it must be a folder of its own.
    #[arg(long, default_value = DEFAULT_EGRESS_SOCKET)]
    pub egress_socket: PathBuf,
    /// The port agents connect to on the control-plane hosts.
    #[arg(long, default_value_t = 10262)]
    pub agent_port: u16,
    /// Run the servers only on nodes with this label, `key=value` (repeatable): each
    /// must be where an API server runs. Without it, on control-plane nodes.
    #[arg(long = "node-selector", value_parser = super::manager::label_pair)]
    pub node_selector: Vec<(String, String)>,
}

/// `yurt tunnel-server egress-selector-config` flags.
#[derive(Debug, Args)]
pub struct EgressConfigArgs {
    /// The server's socket, as in the manifests.
    #[arg(long, default_value = DEFAULT_EGRESS_SOCKET)]
    pub egress_socket: PathBuf,
}

fn manifests(args: TunnelManifestsArgs) -> anyhow::Result<String> {
    let options = yurt_tunnel::install::Options {
        image: args.image,
        image_pull_policy: args.image_pull_policy,
        ca_file: args.ca_file,
        cert_file: args.cert_file,
        key_file: args.key_file,
        egress_socket: args.egress_socket,
        agent_port: args.agent_port,
        node_selector: args.node_selector.into_iter().collect(),
    };
    let objects = yurt_tunnel::install::objects(&options)?;
    Ok(yurt_tunnel::install::to_yaml(&objects))
}

fn egress_config(args: &EgressConfigArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.egress_socket.is_absolute(),
        "--egress-socket: {} is not an absolute path",
        args.egress_socket.display()
    );
    // One document, as kube-apiserver reads the file.
    let config = yurt_tunnel::install::egress_selector_configuration(&args.egress_socket);
    Ok(yurt_tunnel::install::to_yaml(&[config])
        .trim_start_matches("---\n")
        .to_owned())
}

fn token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    token
}

/// Runs `yurt tunnel-server`.
pub async fn run_server(args: TunnelServerArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(TunnelServerAction::Manifests(m)) => {
            super::manager::print_stream(&manifests(m)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(TunnelServerAction::EgressSelectorConfig(e)) => {
            super::manager::print_stream(&egress_config(&e)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    anyhow::ensure!(
        args.handshake_timeout_seconds > 0,
        "--handshake-timeout-seconds must be positive"
    );
    let config = ServerConfig {
        egress_socket: args.egress_socket.clone(),
        agent_addr: args.agent_bind_address,
        tls: args.common.tls()?,
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
