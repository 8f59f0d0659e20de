//! `yurt`: one binary, one subcommand per role. This file only parses the command line,
//! sets up logging and the runtime, and dispatches; the work lives in the library crates.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Warnings and errors, except the client's report of each failed readiness poll and its
/// warning that a server certificate goes unverified (only token discovery's first read
/// does that, on purpose: what it reads is trusted by the token's signature).
const DEFAULT_LOG_FILTER: &str =
    "warn,kube_client::client::builder=off,kube_client::client::tls::rustls_tls=error";

/// OpenYurt's binary names, run as the matching subcommand.
const ALIASES: &[(&str, &str)] = &[
    ("yurthub", "hub"),
    ("yurt-manager", "manager"),
    ("yurt-tunnel-server", "tunnel-server"),
    ("yurt-tunnel-agent", "tunnel-agent"),
    ("yurtadm", "adm"),
    ("node-servant", "node-servant"),
];

/// The command line, with an OpenYurt binary name (argv[0]) turned into its subcommand.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, sub)) = ALIASES.iter().find(|(alias, _)| *alias == name) {
        args.insert(1, (*sub).into());
    }
    args
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse_from(args());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .init();
    match yurt_core::runtime::block_on(2, commands::run(cli)) {
        Ok(code) | Err(code) => code,
    }
}
