//! `yurt hub` (alias `yurthub`): the edge node proxy. Its flags and their conversion live
//! in `yurt_hub::cli`, shared with the hub-only `yurt-hub` binary.

use std::process::ExitCode;

pub use yurt_hub::cli::HubArgs;

/// Runs `yurt hub` until SIGTERM/SIGINT.
pub async fn run(args: HubArgs) -> anyhow::Result<ExitCode> {
    yurt_hub::cli::run(args).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// The flags the fleet starts `yurt hub` with (crates/yurt-cluster/src/components.rs)
    /// still parse as `yurt hub`, and into the configuration they say.
    #[test]
    fn the_fleets_hub_command_line_parses() {
        let cli = Cli::try_parse_from([
            "yurt",
            "hub",
            "--node-name=edge-a1",
            "--nodepool-name=pool-a",
            "--server-addr=https://10.10.0.1:6443",
            "--ca-file=/pki/ca.crt",
            "--client-cert=/pki/hub.crt",
            "--client-key=/pki/hub.key",
            "--serving-cert=/pki/serving.crt",
            "--serving-key=/pki/serving.key",
            "--disk-cache-path=/cache",
            "--heartbeat-interval-seconds=2",
            "--heartbeat-timeout-seconds=3",
            "--kubelet-health-grace-period=20",
            "--upstream-connect-timeout=1500ms",
            "--upstream-keepalive-interval=1000ms",
            "--upstream-keepalive-timeout=2000ms",
            "--upstream-read-timeout=5000ms",
        ])
        .unwrap();
        let Command::Hub(args) = cli.command else {
            panic!("parsed into the wrong command");
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.node_name.as_str(), "edge-a1");
        assert_eq!(c.pool.unwrap().as_str(), "pool-a");
        assert_eq!(c.health.timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            c.upstream.connect_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(c.cache_dir, std::path::PathBuf::from("/cache"));
        assert_eq!(
            c.secure_proxy.unwrap().addr.to_string(),
            "169.254.2.1:10268"
        );
    }
}
