//! `yurt manager` (alias `yurt-manager`): OpenYurt's controllers and webhooks.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use yurt_manager::webhook::register::Endpoint;

/// `yurt manager` flags (OpenYurt's names where it has one).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ManagerArgs {
    /// Something other than running the manager.
    #[command(subcommand)]
    pub action: Option<ManagerAction>,
    /// How to run it.
    #[command(flatten)]
    pub run: ManagerRunArgs,
}

/// `yurt manager` actions.
#[derive(Debug, Subcommand)]
pub enum ManagerAction {
    /// Print the CustomResourceDefinitions of every OpenYurt kind the manager serves, as YAML.
    Crds,
    /// Print what installs the manager into a cluster as a Deployment, for
    /// `kubectl apply -f -`: the CRDs, its ServiceAccount and RBAC, the webhook Service
    /// and the Deployment (the manager registers its webhooks itself once it runs).
    Manifests(ManifestsArgs),
}

/// `yurt manager manifests` flags.
#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// The image with `yurt` at /usr/local/bin/yurt (`yurt image build --with-yurt
    /// --tag T --push` makes one and pushes it to a fleet's registry).
    #[arg(long, default_value = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The pods' imagePullPolicy.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["IfNotPresent", "Always", "Never"])]
    pub image_pull_policy: String,
    /// Namespace of the Deployment, Service, ServiceAccount, Lease, webhook Secret and
    /// conversion Jobs (the manager's --working-namespace).
    #[arg(long, default_value = "kube-system")]
    pub namespace: String,
    /// Replicas: one leads the controllers, every one serves the webhooks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10))]
    pub replicas: u16,
    /// Run the pods only on nodes with this label, `key=value` (repeatable), for
    /// example on a cloud worker: the API server must reach the webhooks. Without it,
    /// they run on control-plane nodes (`node-role.kubernetes.io/master` or
    /// `node-role.kubernetes.io/control-plane`).
    #[arg(long = "node-selector", value_parser = label_pair)]
    pub node_selector: Vec<(String, String)>,
    /// More `yurt manager` flags for the pods, after `--` (checked as the manager would).
    #[arg(last = true)]
    pub manager_flags: Vec<String>,
}

/// `yurt manager` flags `manifests` sets itself (after `--` they are refused).
const MANIFEST_FLAGS: [&str; 8] = [
    "--kubeconfig",
    "--working-namespace",
    "--manager-username",
    "--webhook-bind-address",
    "--webhook-port",
    "--webhook-host",
    "--metrics-addr",
    "--health-probe-addr",
];

/// `key=value` with a label key and value as the API server accepts them: the key an
/// optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub(crate) fn label_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    let (prefix, name_part) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let label_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let edges_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let prefix_ok = |p: &str| {
        p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && edges_ok(part)
            })
    };
    if name_part.is_empty()
        || name_part.len() > 63
        || !label_chars(name_part)
        || !edges_ok(name_part)
        || prefix.is_some_and(|p| !prefix_ok(p))
    {
        return Err(format!("{key:?} is not a label key"));
    }
    if value.len() > 63 || !label_chars(value) || (!value.is_empty() && !edges_ok(value)) {
        return Err(format!("{value:?} is not a label value"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The manifests for `args`, once the pods' manager flags are known to start a manager.
fn manifests(args: ManifestsArgs) -> anyhow::Result<String> {
    yurt_core::names::check_dns_label("namespace", &args.namespace)
        .map_err(|e| anyhow::anyhow!("--namespace: {e}"))?;
    let options = yurt_manager::install::manifests::Options {
        image: args.image,
        image_pull_policy: args.image_pull_policy,
        namespace: args.namespace,
        replicas: args.replicas,
        node_selector: args.node_selector.into_iter().collect(),
        extra_args: args.manager_flags,
    };
    // Flags the Deployment, its Service and probes are built around.
    for flag in &options.extra_args {
        let name = flag.split('=').next().unwrap_or_default();
        if MANIFEST_FLAGS.contains(&name) {
            anyhow::bail!(
                "the manager's flags after --: {name} is set by the manifests (the Service, probes, service account and image are built around it)"
            );
        }
    }
    // The pods' command line must be one the manager accepts.
    let argv = yurt_manager::install::manifests::manager_args(&options);
    let parsed = <ManagerCheck as clap::Parser>::try_parse_from(
        std::iter::once("yurt".to_owned()).chain(argv),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the manager's flags after --: {}",
            first_line(&e.to_string())
        )
    })?;
    let ManagerCheck::Manager(manager) = parsed;
    anyhow::ensure!(
        manager.action.is_none(),
        "the manager's flags after -- must not name a subcommand"
    );
    config(&manager.run).map_err(|e| anyhow::anyhow!("the manager's flags after --: {e}"))?;
    anyhow::ensure!(
        manager.run.leader_elect || options.replicas == 1,
        "the manager's flags after --: --leader-elect=false with --replicas {}: every replica would run the controllers",
        options.replicas
    );
    Ok(yurt_manager::install::manifests::to_yaml(&options))
}

/// Writes `text` to standard output; a reader that stopped early (`| head`) is no error.
pub(crate) fn print_stream(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
}

/// Parses the pods' command line as `yurt` would.
#[derive(Debug, clap::Parser)]
enum ManagerCheck {
    Manager(ManagerArgs),
}

/// Flags of the running manager.
#[derive(Debug, Args)]
pub struct ManagerRunArgs {
    /// kubeconfig of the manager's identity (default: $KUBECONFIG, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for all, `name` to add, `-name` to remove.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// Namespace of the leader Lease and the webhook Secret and Service.
    #[arg(long, default_value = "kube-system")]
    pub working_namespace: String,
    /// Address the webhook server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub webhook_bind_address: IpAddr,
    /// Port of the webhook server.
    #[arg(long, default_value_t = 10273)]
    pub webhook_port: u16,
    /// Register the webhooks by URL at this address (the manager runs outside the
    /// cluster's pods); without it they are registered through the Service
    /// `yurt-manager-webhook-service`.
    #[arg(long)]
    pub webhook_host: Option<IpAddr>,
    /// Metrics address.
    #[arg(long, default_value = "0.0.0.0:10271")]
    pub metrics_addr: SocketAddr,
    /// Health probe address (`/healthz`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:10272")]
    pub health_probe_addr: SocketAddr,
    /// Elect a leader among replicas through a Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Lease duration, seconds.
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// Renewal period, seconds.
    #[arg(long, default_value_t = 2)]
    pub leader_elect_retry_period: u64,
    /// Seconds the leader may go without a successful renewal before it steps down
    /// (controller-runtime's default: 10 of a 15-second lease).
    #[arg(long, default_value_t = 10)]
    pub leader_elect_renew_deadline: u64,
    /// Image of the YurtStaticSet upgrade workers (needs only `sh`, `cp` and `mv`).
    #[arg(long, default_value = "openyurt/node-servant:latest")]
    pub node_servant_image: String,
    /// Image of the device agent each PlatformAdmin runs in its pools, with `yurt` at
    /// /usr/local/bin/yurt (`yurt image build --with-yurt --tag T --push`).
    #[arg(long, default_value = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION")))]
    pub iot_agent_image: String,
    /// This manager's user name as the API server authenticates it (its service account,
    /// or its client certificate's CN): with the node itself, the only user the node
    /// webhook lets change `openyurt.io/is-edge-worker`.
    #[arg(long, default_value = "system:serviceaccount:kube-system:yurt-manager")]
    pub manager_username: String,
    /// The hubs' pod-facing address (their `--dummy-if-ip`): the one address besides a
    /// node's own that its serving certificate may carry.
    #[arg(
        long,
        env = "YURT_MANAGER_HUB_POD_ADDRESS",
        default_value = "169.254.2.1"
    )]
    pub hub_pod_address: IpAddr,
    /// Seconds a NotReady node's pods still count as unavailable in DaemonSet and
    /// YurtStaticSet rolling updates: a node back within it had a blip (a missed lease),
    /// and the rollout waits for it; a node NotReady for longer is offline and skipped.
    #[arg(long, default_value_t = 40)]
    pub unready_node_grace: u64,
    /// Seconds a conversion Job's `node-servant convert|revert` may take (its `--timeout`;
    /// the Job's deadline adds two minutes for the pod to start and a failed convert to
    /// restore the host). Upstream users found fixed short timeouts too short on slow sites.
    #[arg(long, default_value_t = 600)]
    pub node_conversion_timeout: u64,
}

fn config(a: &ManagerRunArgs) -> anyhow::Result<yurt_manager::Config> {
    let controllers = yurt_manager::controllers::select(&a.controllers)
        .map_err(|e| anyhow::anyhow!("--controllers: {e}"))?;
    anyhow::ensure!(
        a.leader_elect_retry_period > 0
            && a.leader_elect_retry_period < a.leader_elect_renew_deadline
            && a.leader_elect_renew_deadline < a.leader_elect_lease_duration,
        "leader election needs 0 < --leader-elect-retry-period < --leader-elect-renew-deadline < --leader-elect-lease-duration"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "yurt-manager".to_owned());
    Ok(yurt_manager::Config {
        controllers,
        namespace: a.working_namespace.clone(),
        webhook_addr: SocketAddr::new(a.webhook_bind_address, a.webhook_port),
        webhook_endpoint: match a.webhook_host {
            Some(ip) => Endpoint::Url {
                authority: SocketAddr::new(ip, a.webhook_port).to_string(),
            },
            None => Endpoint::Service {
                namespace: a.working_namespace.clone(),
            },
        },
        webhook_ips: a.webhook_host.into_iter().collect(),
        metrics_addr: a.metrics_addr,
        health_addr: a.health_probe_addr,
        leader_elect: a.leader_elect,
        identity: format!("{host}_{}", std::process::id()),
        lease_duration: Duration::from_secs(a.leader_elect_lease_duration),
        lease_retry: Duration::from_secs(a.leader_elect_retry_period),
        lease_renew_deadline: Duration::from_secs(a.leader_elect_renew_deadline),
        node_servant_image: a.node_servant_image.clone(),
        iot_agent_image: a.iot_agent_image.clone(),
        manager_username: a.manager_username.clone(),
        hub_pod_address: a.hub_pod_address,
        unready_node_grace: Duration::from_secs(a.unready_node_grace),
        node_conversion_timeout: Duration::from_secs(a.node_conversion_timeout.max(1)),
    })
}

/// Runs `yurt manager`.
pub async fn run(args: ManagerArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(ManagerAction::Crds) => {
            print_stream(&yurt_api::crds::to_yaml(&yurt_api::crds::all()))?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(ManagerAction::Manifests(manifest_args)) => {
            print_stream(&manifests(manifest_args)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let config = config(&args.run)?;
    let client = super::kube_client(args.run.kubeconfig.as_ref()).await?;
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
    yurt_manager::run(client, config, token).await?;
    Ok(ExitCode::SUCCESS)
}
