//! `yurt-tunnel-agent`: the tunnel agent alone, for edge nodes. Runs exactly what `yurt
//! tunnel-agent` runs, with the same flags ([`yurt_tunnel::cli::AgentArgs`]), from a
//! binary without the other roles' code, so its resident size is smaller (built with
//! `cargo build --profile hub-small -p yurt-tunnel --bin yurt-tunnel-agent`, the size
//! profile of the edge binaries).
//!
//! `RUST_LOG` takes `target=level` directives (`warn,yurt_tunnel::agent=debug`), read
//! by tracing-subscriber's `Targets` filter, as `yurt-hub` does: `EnvFilter`'s span and
//! field directives need a regex engine, code an agent is not debugged with.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    // One worker: an agent moves bytes between sockets, and each thread's stack and
    // allocator arena is resident memory on a small node.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let run = async {
        let token = CancellationToken::new();
        tokio::spawn(yurt_core::shutdown::cancel_on_signal(token.clone()));
        yurt_tunnel::cli::run_agent(&cli.agent, token).await
    };
    match runtime.block_on(run) {
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
        assert!(filter.would_enable("yurt_tunnel", &tracing::Level::WARN));
        assert!(!filter.would_enable("yurt_tunnel", &tracing::Level::INFO));
    }
}
