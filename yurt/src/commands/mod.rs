//! One module per subcommand.

mod adm;
mod adm_host;
mod bench;
pub mod bench_adm;
pub mod bench_hub;
pub mod bench_iot;
pub mod bench_manager;
mod bench_pull;
mod bench_table;
pub mod bench_tunnel;
mod fleet;
mod follow_routes;
pub mod hub;
mod image;
pub mod iot;
pub mod manager;
pub mod tunnel;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use yurt_cluster::MachineConfig;

use crate::cli::{Cli, Command, DownArgs};
use crate::progress::SpinnerReporter;

/// A client for `kubeconfig`, else `$KUBECONFIG`'s or the in-cluster one.
async fn kube_client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(kubeconfig).await?)?)
}

/// The client configuration of `kubeconfig`, else `$KUBECONFIG`'s or the in-cluster one.
async fn kube_config(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("unusable kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and not running in a cluster")?,
    })
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let machine = MachineConfig {
        cache_dir: cli.cache_dir.clone(),
        registry_dir: cli.registry_dir.clone(),
        ..MachineConfig::default()
    };
    match cli.command {
        Command::Up(args) => up::run(&machine, &cli.data_dir, args).await,
        Command::Down(args) => down(&machine, &cli.data_dir, args).await,
        Command::Fleet(args) => fleet::run(&machine, &cli.data_dir, args).await,
        Command::Image(cmd) => image::run(&machine, &cli.data_dir, cmd).await,
        Command::Setup => setup(&machine).await,
        Command::Bench(cmd) => bench::run(&machine, cmd).await,
        Command::Hub(args) => hub::run(*args).await,
        Command::Manager(args) => manager::run(*args).await,
        Command::TunnelServer(args) => tunnel::run_server(*args).await,
        Command::TunnelAgent(args) => tunnel::run_agent(*args).await,
        Command::Iot(args) => iot::run(*args).await,
        Command::Adm(args) => adm::run(&cli.data_dir, args).await,
        Command::NodeServant(args) => adm_host::node_servant(args).await,
    }
}

/// Makes `--data-dir` absolute (relative to the working folder).
pub fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        return Ok(dir.to_owned());
    }
    Ok(std::env::current_dir()
        .context("cannot read the working folder")?
        .join(dir))
}

async fn down(
    machine: &MachineConfig,
    data_dir: &Path,
    args: DownArgs,
) -> anyhow::Result<ExitCode> {
    let reporter = SpinnerReporter::for_stderr();
    let machine = machine.clone();
    let dir = absolute(data_dir)?;
    tokio::task::spawn_blocking(move || {
        if args.all {
            yurt_cluster::down_all(&machine, args.purge, reporter.as_ref())
        } else {
            yurt_cluster::down(&machine, &dir, args.purge, reporter.as_ref())
        }
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}

async fn setup(machine: &MachineConfig) -> anyhow::Result<ExitCode> {
    let reporter = SpinnerReporter::for_stderr();
    let cache = machine.cache_dir.clone();
    let bins = tokio::task::spawn_blocking(move || {
        yurt_cluster::packages::ensure(
            yurt_cluster::packages::RUNTIME_PACKAGES,
            reporter.as_ref(),
        )?;
        yurt_cluster::upstream::ensure(&cache, reporter.as_ref())
    })
    .await??;
    println!(
        "upstream Kubernetes {} binaries: {}",
        yurt_cluster::upstream::KUBERNETES_VERSION,
        bins.dir().display()
    );
    Ok(ExitCode::SUCCESS)
}
