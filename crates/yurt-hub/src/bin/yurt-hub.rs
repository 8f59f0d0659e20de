//! `yurt-hub`: the hub alone, for nodes that run nothing else of openyurt-rs. Runs exactly
//! what `yurt hub` runs, with the same flags ([`yurt_hub::cli::HubArgs`]), the same
//! logging and the same runtime, from a binary without the other roles' code, so its
//! resident size is smaller (built with `--profile hub-small`: see the README).

use std::process::ExitCode;

use clap::Parser;

/// Warnings and errors, except the client's report of each failed readiness poll (as
/// `yurt`).
const DEFAULT_LOG_FILTER: &str = "warn,kube_client::client::builder=off";

/// The edge node proxy: caches what node components read and serves it when the cloud is gone.
#[derive(Debug, Parser)]
#[command(name = "yurt-hub", version)]
struct Cli {
    #[command(flatten)]
    hub: yurt_hub::cli::HubArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(yurt_hub::cli::run(cli.hub)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
