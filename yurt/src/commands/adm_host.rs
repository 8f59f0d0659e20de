//! `yurt adm join`, `yurt adm reset` and `yurt node-servant`, run on the host itself: inputs are checked
//! before anything changes (one line and exit status 1 on bad input), then `yurt_adm`
//! runs with the host reached through `yurt_core::host` (its folder and service manager,
//! which `yurt fleet exec` provides).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use yurt_adm::discovery::{CaCertHash, CaVerification, Discovery, api_server_url};
use yurt_adm::join::{HostFiles, JoinOptions, NodeType};
use yurt_core::host::{HostFacts, ServiceRequest};

use crate::cli::{JoinArgs, NodeServantArgs, NodeServantCommand, NodeServantCommon};

/// How long one request to the host's service manager may take.
const SERVICE_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The host a join runs on, as `yurt fleet exec` describes it.
struct FleetHost {
    files: HostFiles,
    facts: HostFacts,
    socket: PathBuf,
}

impl yurt_adm::join::Host for FleetHost {
    fn files(&self) -> &HostFiles {
        &self.files
    }

    fn facts(&self) -> &HostFacts {
        &self.facts
    }

    async fn request(&self, request: ServiceRequest) -> Result<(), String> {
        // A start waits for the process to be ready (90 s at most for any of them).
        let what = request.to_string();
        tokio::time::timeout(
            SERVICE_REQUEST_TIMEOUT,
            yurt_core::host::ask(&self.socket, &request),
        )
        .await
        .map_err(|_| {
            format!(
                "{what}: the host's service manager did not answer within {}s",
                SERVICE_REQUEST_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| e.to_string())
    }
}

fn host() -> anyhow::Result<FleetHost> {
    let Some((dir, socket)) = yurt_core::host::locate() else {
        bail!(
            "this command runs on a fleet host, whose service manager starts and stops kubelet and the hub: `yurt fleet exec <host> -- yurt adm join|reset ...` or `... -- yurt node-servant ...` (hosts managed by systemd are not supported yet)"
        );
    };
    let facts = HostFacts::load(&dir)?;
    Ok(FleetHost {
        files: HostFiles::new(dir),
        facts,
        socket,
    })
}

fn options(args: &JoinArgs, facts: &HostFacts) -> anyhow::Result<JoinOptions> {
    let server = api_server_url(&args.server)?;
    let token = args.token.parse().context("--token")?;
    let ca = match (
        args.ca_cert_hashes.is_empty(),
        args.unsafe_skip_ca_verification,
    ) {
        (false, false) => CaVerification::Pinned(
            args.ca_cert_hashes
                .iter()
                .map(|h| h.parse::<CaCertHash>())
                .collect::<Result<_, _>>()
                .context("--discovery-token-ca-cert-hash")?,
        ),
        (true, true) => CaVerification::UnsafeSkip,
        (true, false) => bail!(
            "give --discovery-token-ca-cert-hash sha256:<hex> (kubeadm token create --print-join-command prints it), or --discovery-token-unsafe-skip-ca-verification"
        ),
        (false, true) => bail!(
            "--discovery-token-ca-cert-hash and --discovery-token-unsafe-skip-ca-verification exclude each other"
        ),
    };
    let (negative, timeout) = yurt_core::go_duration::parse_go_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    if negative || timeout < Duration::from_secs(1) {
        bail!("--timeout {} must be at least 1s", args.timeout);
    }
    let node = args
        .node_name
        .as_deref()
        .unwrap_or(&facts.name)
        .parse()
        .context("--node-name")?;
    let pool = args
        .nodepool_name
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--nodepool-name")?;
    Ok(JoinOptions {
        discovery: Discovery {
            server,
            token,
            ca,
            timeout,
            retry_interval: Duration::from_secs(5),
        },
        node,
        pool,
        node_type: args.node_type.parse::<NodeType>()?,
        timeout,
    })
}

/// Runs `yurt adm join`.
pub async fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    // Flags first: a bad one is refused even off a fleet host.
    let unchecked = HostFacts {
        name: "unknown".into(),
        address: std::net::Ipv4Addr::UNSPECIFIED.into(),
        kubelet: PathBuf::new(),
        kube_proxy: PathBuf::new(),
        yurt: PathBuf::new(),
        container_runtime_endpoint: String::new(),
        cgroup_root: String::new(),
        pause_image: String::new(),
        cni_config_dir: PathBuf::new(),
        cni_state_dirs: Vec::new(),
    };
    options(&args, &unchecked)?;
    let host = host()?;
    let options = options(&args, &host.facts)?;
    let progress = |step: &str| eprintln!("[join] {step}");
    let joined = yurt_adm::join::join(&host, &options, &progress).await?;
    if !joined.skipped.is_empty() {
        eprintln!(
            "[join] resumed: already done: {}",
            joined.skipped.join(", ")
        );
    }
    println!(
        "This host joined the cluster as node {} ({}). See it with `kubectl get node {}`.",
        joined.node,
        match options.node_type {
            NodeType::Edge => "an edge node behind yurt hub",
            NodeType::Plain => "a plain node",
        },
        joined.node
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `yurt adm reset`.
pub async fn reset(delete_node: bool) -> anyhow::Result<ExitCode> {
    let host = host()?;
    let progress = |step: &str| eprintln!("[reset] {step}");
    let done = yurt_adm::reset::reset(&host, delete_node, &progress).await?;
    for warning in &done.warnings {
        eprintln!("[reset] warning: {warning}");
    }
    if let Some(node) = &done.deleted_node {
        println!("Deleted Node {node}.");
    }
    println!(
        "This host left the cluster: kubelet, kube-proxy and yurt hub stopped, {} pod processes killed, {} mounts removed, the pod network and join's files gone.",
        done.killed, done.unmounted
    );
    Ok(ExitCode::SUCCESS)
}

/// A Go duration flag of at least a second.
fn duration_flag(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let (negative, d) = yurt_core::go_duration::parse_go_duration(value)
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    if negative || d < Duration::from_secs(1) {
        bail!("{flag} {value} must be at least 1s");
    }
    Ok(d)
}

/// Runs `yurt node-servant convert|revert`.
pub async fn node_servant(args: NodeServantArgs) -> anyhow::Result<ExitCode> {
    use yurt_adm::servant::{self, Runtime, ServantOptions};
    let (pool, common, convert): (Option<&str>, &NodeServantCommon, bool) = match &args.command {
        NodeServantCommand::Convert {
            nodepool_name,
            common,
        } => (Some(nodepool_name), common, true),
        NodeServantCommand::Revert { common } => (None, common, false),
    };
    // Flags first: a bad one is refused even off a fleet host.
    let options = ServantOptions {
        node: common.node_name.parse().context("--node-name")?,
        pool: pool
            .map(str::parse)
            .transpose()
            .context("--nodepool-name")?,
        timeout: duration_flag("--timeout", &common.timeout)?,
        container_stop_timeout: duration_flag(
            "--container-stop-timeout",
            &common.container_stop_timeout,
        )?,
        // In the conversion Job, the downward API names the servant's own pod, whose
        // container must not be restarted under it.
        own_pod: match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
            (Ok(ns), Ok(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
            _ => None,
        },
        interrupt: tokio_util::sync::CancellationToken::new(),
    };
    let host = host()?;
    // SIGTERM (the Job's deadline, its pod deleted) or SIGINT stops the run: a convert
    // restores the host before the servant exits. A second signal ends it at once (the
    // host's record lets the next run finish what was started).
    let interrupt = options.interrupt.clone();
    tokio::spawn(async move {
        if yurt_core::shutdown::cancel_on_signal(interrupt)
            .await
            .is_some()
        {
            eprintln!(
                "node-servant: stopping (a convert restores the host first); a second signal ends it at once"
            );
            let again = tokio_util::sync::CancellationToken::new();
            if yurt_core::shutdown::cancel_on_signal(again).await.is_some() {
                eprintln!("node-servant: stopped at once; run it again to finish");
                std::process::exit(130);
            }
        }
    });
    let runtime = Runtime::new(&host.facts.container_runtime_endpoint);
    let word = if convert { "convert" } else { "revert" };
    let progress = |step: &str| eprintln!("[{word}] {step}");
    let done = if convert {
        servant::convert(&host, &runtime, &options, &progress).await?
    } else {
        servant::revert(&host, &runtime, &options, &progress).await?
    };
    let what = if convert {
        "an edge node: kubelet and kube-proxy go through yurt hub"
    } else {
        "a plain node: kubelet and kube-proxy talk to the API server directly"
    };
    if done.changed {
        println!(
            "Node {} is {what}; {} containers restarted.",
            options.node,
            done.restarted.len()
        );
    } else {
        println!("Node {} already was {what}: nothing changed.", options.node);
    }
    Ok(ExitCode::SUCCESS)
}
