//! `yurt-tunnel-agent`: the tunnel agent alone, for edge nodes. Runs exactly what `yurt
//! tunnel-agent` runs, with the same flags ([`yurt_tunnel::cli::AgentArgs`]), from a
//! binary without the other roles' code, so its resident size is smaller (built with
//! `cargo build --profile hub-small -p yurt-tunnel --bin yurt-tunnel-agent`, the size
//! profile of the edge binaries).
//!
//! `RUST_LOG` takes `target=level` directives (`warn,yurt_tunnel::agent=debug`): see
//! [`yurt_core::edge_binary`].

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Warnings and errors.
const DEFAULT_LOG_FILTER: &str = "warn";

/// The edge end of the cloud-edge tunnel: dials out to the tunnel server and connects
/// what the cloud asks of this node (its kubelet, its pods).
#[derive(Debug, Parser)]
#[command(name = "yurt-tunnel-agent", version)]
struct Cli {
    #[command(flatten)]
    agent: yurt_tunnel::cli::AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One worker: an agent moves bytes between sockets, and each thread's stack and
    // allocator arena is resident memory on a small node.
    yurt_core::edge_binary::run(DEFAULT_LOG_FILTER, 1, async {
        let token = CancellationToken::new();
        tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
        yurt_tunnel::cli::run_agent(&cli.agent, token).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_log_filter_parses() {
        let filter = yurt_core::edge_binary::log_filter(None, DEFAULT_LOG_FILTER).expect("parses");
        assert!(filter.would_enable("yurt_tunnel", &tracing::Level::WARN));
        assert!(!filter.would_enable("yurt_tunnel", &tracing::Level::INFO));
    }
}
