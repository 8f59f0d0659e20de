//! `yurt-hub`: the hub alone, for nodes that run nothing else of openyurt-rs. Runs exactly
//! what `yurt hub` runs, with the same flags ([`yurt_hub::cli::HubArgs`]), the same
//! log format and the same runtime, from a binary without the other roles' code, so its
//! resident size is smaller (built with `--profile hub-small`: see the README).
//!
//! `RUST_LOG` takes `target=level` directives (`warn,yurt_hub::health=debug`): see
//! [`yurt_core::edge_binary`].

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
    yurt_core::edge_binary::run(DEFAULT_LOG_FILTER, 2, Box::pin(yurt_hub::cli::run(cli.hub)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_parses() {
        let filter = yurt_core::edge_binary::log_filter(None, DEFAULT_LOG_FILTER).expect("parses");
        assert!(filter.would_enable("yurt_hub", &tracing::Level::WARN));
        assert!(!filter.would_enable("yurt_hub", &tracing::Level::INFO));
        assert!(!filter.would_enable("kube_client::client::builder", &tracing::Level::ERROR));
    }
}
