//! `yurt-hub`: the hub alone, for nodes that run nothing else of openyurt-rs. Runs exactly
//! what `yurt hub` runs, with the same flags ([`yurt_hub::cli::HubArgs`]), the same
//! log format and the same runtime, from a binary without the other roles' code, so its
//! resident size is smaller (built with `--profile hub-small`: see the README).
//!
//! `RUST_LOG` takes `target=level` directives (`warn,yurt_hub::health=debug`), read by
//! tracing-subscriber's `Targets` filter rather than `yurt`'s `EnvFilter`: the span and
//! field directives only `EnvFilter` understands need a regex engine, a few hundred KB
//! of code mapped for a feature a node's hub is not debugged with.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => match directives.parse::<Targets>() {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("error: RUST_LOG={directives:?}: {e}");
                return ExitCode::from(2);
            }
        },
        // A constant, parsed in the tests below.
        Err(_) => DEFAULT_LOG_FILTER.parse().unwrap_or_default(),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
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
    match runtime.block_on(Box::pin(yurt_hub::cli::run(cli.hub))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_parses_as_targets() {
        let filter: Targets = DEFAULT_LOG_FILTER.parse().expect("parses");
        assert!(filter.would_enable("yurt_hub", &tracing::Level::WARN));
        assert!(!filter.would_enable("yurt_hub", &tracing::Level::INFO));
        assert!(!filter.would_enable("kube_client::client::builder", &tracing::Level::ERROR));
    }
}
