//! `yurt adm` (alias `yurtadm`): bootstrap tokens today.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use yurt_adm::token::{self, BootstrapToken, TokenString};

use crate::cli::{AdmArgs, AdmCommand, ClusterArgs, TokenCommand};

/// The kubeconfig a command uses: `--kubeconfig`, else `$KUBECONFIG`, else the admin
/// kubeconfig of the fleet in `data_dir` if there is one (as kubeadm falls back to
/// `/etc/kubernetes/admin.conf`), else whatever the client finds by itself.
fn kubeconfig(cluster: &ClusterArgs, data_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = &cluster.kubeconfig {
        return Some(path.clone());
    }
    if std::env::var_os("KUBECONFIG").is_some() {
        return None;
    }
    let fleet = data_dir.join("admin.kubeconfig");
    fleet.is_file().then_some(fleet)
}

async fn client(cluster: &ClusterArgs, data_dir: &Path) -> anyhow::Result<kube::Client> {
    super::kube_client(kubeconfig(cluster, data_dir).as_ref()).await
}

/// A wait of at least a second, as a Go duration.
fn wait_flag(value: &str) -> anyhow::Result<std::time::Duration> {
    let (negative, d) = yurt_core::go_duration::parse_go_duration(value)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    anyhow::ensure!(
        !negative && d >= std::time::Duration::from_secs(1),
        "--timeout {value} must be at least 1s"
    );
    Ok(d)
}

/// Runs `yurt adm ...`.
pub async fn run(data_dir: &Path, args: AdmArgs) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        AdmCommand::Token(command) => command,
        AdmCommand::Join(join) => return super::adm_host::join(join).await,
        AdmCommand::Reset { delete_node } => return super::adm_host::reset(delete_node).await,
        AdmCommand::Convert {
            node,
            nodepool_name,
            timeout,
            cluster,
        } => {
            let timeout = wait_flag(&timeout)?;
            let client = client(&cluster, data_dir).await?;
            let progress = |step: &str| eprintln!("[convert] {step}");
            let done = yurt_adm::convert::convert(
                &client,
                &node,
                nodepool_name.as_deref(),
                timeout,
                &progress,
            )
            .await?;
            match done {
                yurt_adm::convert::Converted::Already => {
                    println!("Node {node} already is an edge node: nothing changed.");
                }
                yurt_adm::convert::Converted::Done => println!(
                    "Node {node} is an edge node: kubelet and kube-proxy go through yurt hub, its pods restarted once."
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        AdmCommand::Revert {
            node,
            timeout,
            cluster,
        } => {
            let timeout = wait_flag(&timeout)?;
            let client = client(&cluster, data_dir).await?;
            let progress = |step: &str| eprintln!("[revert] {step}");
            let done = yurt_adm::convert::revert(&client, &node, timeout, &progress).await?;
            match done {
                yurt_adm::convert::Converted::Already => {
                    println!("Node {node} already is a plain node: nothing changed.");
                }
                yurt_adm::convert::Converted::Done => println!(
                    "Node {node} is a plain node: kubelet and kube-proxy talk to the API server directly, yurt hub is gone, its pods restarted once."
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    match command {
        TokenCommand::Generate => println!("{}", TokenString::generate()?),
        TokenCommand::Create {
            token,
            ttl,
            usages,
            groups,
            description,
            print_join_command,
            cluster,
        } => {
            let token = match token {
                Some(t) => t.parse::<TokenString>()?,
                None => TokenString::generate()?,
            };
            let (negative, ttl) = yurt_core::go_duration::parse_go_duration(&ttl)
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            anyhow::ensure!(!negative, "--ttl must not be negative");
            let mut bootstrap = BootstrapToken::new(token, Some(ttl), jiff::Timestamp::now())?;
            bootstrap.usages = usages;
            bootstrap.groups = groups;
            bootstrap.description = description;
            // Checked before any connection: a bad flag needs no cluster to be refused.
            bootstrap.validate()?;
            let client = client(&cluster, data_dir).await?;
            token::create(&client, &bootstrap).await?;
            if print_join_command {
                let (server, pins) = yurt_adm::discovery::join_endpoint(&client).await?;
                // This binary's own path: the command runs as printed on a fleet host
                // (`yurt fleet exec <host> -- ...`), where `yurt` need not be on PATH.
                let exe = std::env::current_exe()
                    .map_or_else(|_| "yurt".to_owned(), |p| p.display().to_string());
                let pins: Vec<String> = pins
                    .iter()
                    .map(|p| format!("--discovery-token-ca-cert-hash {p}"))
                    .collect();
                println!(
                    "{exe} adm join {server} --token {} {}",
                    bootstrap.token,
                    pins.join(" ")
                );
            } else {
                println!("{}", bootstrap.token);
            }
        }
        TokenCommand::List { cluster } => {
            let (tokens, unreadable) = token::list(&client(&cluster, data_dir).await?).await?;
            for why in &unreadable {
                eprintln!("warning: {why}");
            }
            if !tokens.is_empty() {
                print!("{}", token::table(&tokens, jiff::Timestamp::now()));
            }
        }
        TokenCommand::Delete { tokens, cluster } => {
            // Every argument is checked before anything is deleted.
            for t in &tokens {
                token::token_id(t)?;
            }
            let client = client(&cluster, data_dir).await?;
            for t in &tokens {
                let id = token::delete(&client, t).await?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
