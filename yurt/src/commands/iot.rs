//! `yurt iot`: device management (OpenYurt's `iot.openyurt.io`), driven natively from
//! each node pool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use yurt_iot::agent::{Agent, AgentConfig};
use yurt_iot::metrics::Metrics;

/// The User-Agent of the agent's API requests (the hub caches what it reads).
pub const AGENT_USER_AGENT: &str = concat!("yurt-iot-agent/v", env!("CARGO_PKG_VERSION"));

/// `yurt iot` commands.
#[derive(Debug, Args)]
pub struct IotArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: IotCommand,
}

/// `yurt iot` subcommands.
#[derive(Debug, Subcommand)]
pub enum IotCommand {
    /// The device agent of one node pool (OpenYurt's yurt-iot-dock, without EdgeX): drives
    /// the pool's Devices through their protocols, writes desired values and reads them
    /// back, reports status on change, and keeps doing so while the cloud is unreachable.
    Agent(IotAgentArgs),
}

/// `yurt iot agent` flags (yurt-iot-dock's names where it has one).
#[derive(Debug, Args)]
pub struct IotAgentArgs {
    /// kubeconfig of the agent's identity (default: $KUBECONFIG, then in-cluster, which
    /// on an edge node is the node's hub).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of the pool's Devices, DeviceProfiles and DeviceServices.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The node pool. Without it, the pool of --node-name (its `apps.openyurt.io/nodepool`
    /// label), remembered in --state-dir for starts while the cloud is unreachable.
    #[arg(long)]
    pub nodepool: Option<String>,
    /// The node the agent runs on, to find its pool.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where the agent keeps its snapshot of the pool's devices.
    #[arg(long, default_value = "/var/lib/yurt-iot")]
    pub state_dir: PathBuf,
    /// Seconds between two polls of a device, unless it or its profile says otherwise
    /// (annotation `iot.openyurt.io/poll-interval`).
    #[arg(long, default_value_t = 5.0)]
    pub poll_interval_seconds: f64,
    /// Seconds after which an unchanged status is written anyway (`lastConnected`), give
    /// or take a tenth per device so a pool's devices do not beat in step.
    #[arg(long, default_value_t = 60)]
    pub status_heartbeat_seconds: u64,
    /// When a device's status is written: `on-change` (coalesced, plus the heartbeat),
    /// or `heartbeat` only (with --status-heartbeat-seconds 5: upstream yurt-iot-dock's
    /// cadence, every device every 5 s, changed or not; for comparison).
    #[arg(long, value_enum, default_value_t = StatusWrites::OnChange)]
    pub status_writes: StatusWrites,
    /// The least seconds between two status writes of one device (changes in between
    /// are coalesced).
    #[arg(long, default_value_t = 1.0)]
    pub min_status_interval_seconds: f64,
    /// The longest wait, in seconds, before a failed status write is retried.
    #[arg(long, default_value_t = 5)]
    pub status_retry_max_seconds: u64,
    /// Status writes in flight at once (each is one connection to the hub: the API
    /// client speaks HTTP/1.1); more wait their turn, their changes coalesced.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_status_writes: u16,
    /// Register EdgeX's five virtual devices (Random-Boolean-Device, ...) in the pool, as
    /// `managed: false` devices driven by the virtual driver (PlatformAdmin component
    /// `edgex-device-virtual`).
    #[arg(long)]
    pub virtual_devices: bool,
    /// `/healthz`, `/readyz` and `/metrics` (yurt-iot-dock's health-probe port).
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub admin_address: SocketAddr,
}

/// `--status-writes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusWrites {
    /// When it changes, and every heartbeat.
    OnChange,
    /// Every heartbeat only.
    Heartbeat,
}

fn token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    token
}

/// Runs `yurt iot`.
pub async fn run(args: IotArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        IotCommand::Agent(a) => run_agent(a).await,
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value <= 86_400.0,
        "{flag} must be a number of seconds above 0"
    );
    Ok(Duration::from_secs_f64(value))
}

const POOL_FILE: &str = "nodepool";

/// The agent's pool: the flag, else the node's label (remembered), else the remembered one.
async fn pool(args: &IotAgentArgs, client: &kube::Client) -> anyhow::Result<String> {
    if let Some(p) = args.nodepool.as_deref().filter(|p| !p.is_empty()) {
        return Ok(p.to_owned());
    }
    let remembered = args.state_dir.join(POOL_FILE);
    let node = args
        .node_name
        .as_deref()
        .context("--nodepool or --node-name (NODE_NAME) is required")?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let looked_up = tokio::time::timeout(Duration::from_secs(10), nodes.get(node)).await;
    match looked_up {
        Ok(Ok(n)) => {
            let pool = n
                .metadata
                .labels
                .unwrap_or_default()
                .get(yurt_api::labels::NODE_POOL)
                .cloned()
                .with_context(|| {
                    format!("node {node} has no {} label", yurt_api::labels::NODE_POOL)
                })?;
            write_remembered(&args.state_dir, &pool).await;
            Ok(pool)
        }
        Ok(Err(e)) => read_remembered(&remembered, &format!("reading node {node}: {e}")).await,
        Err(_) => {
            read_remembered(
                &remembered,
                &format!("reading node {node}: no answer in 10 s"),
            )
            .await
        }
    }
}

async fn write_remembered(dir: &Path, pool: &str) {
    let dir = dir.to_owned();
    let pool = pool.to_owned();
    let written = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!("{POOL_FILE}.tmp"));
        std::fs::write(&temp, pool)?;
        std::fs::rename(temp, dir.join(POOL_FILE))
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!("could not remember the node pool in the state folder");
    }
}

async fn read_remembered(path: &Path, why: &str) -> anyhow::Result<String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("{why}, and no pool remembered in {}", path.display()))?;
    let pool = text.trim().to_owned();
    anyhow::ensure!(!pool.is_empty(), "{why}, and {} is empty", path.display());
    tracing::warn!(%why, %pool, "using the remembered node pool");
    Ok(pool)
}

async fn run_agent(args: IotAgentArgs) -> anyhow::Result<ExitCode> {
    let config = AgentConfig {
        namespace: args.namespace.clone(),
        pool: String::new(),
        state_dir: args.state_dir.clone(),
        poll_interval: seconds(args.poll_interval_seconds, "--poll-interval-seconds")?,
        heartbeat: seconds(
            args.status_heartbeat_seconds as f64,
            "--status-heartbeat-seconds",
        )?,
        min_status_interval: seconds(
            args.min_status_interval_seconds,
            "--min-status-interval-seconds",
        )?,
        status_retry_max: seconds(
            args.status_retry_max_seconds as f64,
            "--status-retry-max-seconds",
        )?,
        status_on_change: args.status_writes == StatusWrites::OnChange,
        max_concurrent_status_writes: usize::from(args.max_concurrent_status_writes),
        virtual_devices: args.virtual_devices,
    };
    let client = agent_client(args.kubeconfig.as_ref()).await?;
    let cancel = token();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("--admin-address {}", args.admin_address))?;
    let pool = pool(&args, &client).await?;
    let agent = Agent::new(client, AgentConfig { pool, ..config }, metrics)?;
    let ready = agent.ready_flag();
    let admin = yurt_core::admin::Admin::new(Arc::new(registry)).ready(move || {
        if ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the pool's devices are not known yet".to_owned())
        }
    });
    let admin_cancel = cancel.clone();
    tokio::spawn(async move {
        if let Err(e) = yurt_core::admin::serve(listener, admin.router(), admin_cancel).await {
            tracing::error!(error = %e, "the admin server stopped");
        }
    });
    agent.run(cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// The API client, with the agent's User-Agent.
async fn agent_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let mut config = super::kube_config(kubeconfig).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(AGENT_USER_AGENT),
    ));
    Ok(kube::Client::try_from(config)?)
}
