//! The agent's command line, shared by `yurt tunnel-agent` and the agent-only
//! `yurt-tunnel-agent` binary, and the flags both ends share (`yurt tunnel-server` too).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentConfig, AllowList};
use crate::tls::TlsFiles;
use crate::{Keepalive, Windows};

/// A command line that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag out of range, or files that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The agent could not run.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
}

fn positive(ok: bool, message: &str) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::Invalid(message.to_owned()))
    }
}

/// Flags both ends share.
#[derive(Debug, Args)]
pub struct CommonArgs {
    // The files are required, but optional in type: `yurt tunnel-server manifests`
    // needs none of them, and clap leaves a required flag unset under a subcommand.
    /// The cluster CA: it signs the server's certificate and every agent's.
    #[arg(long, required = true)]
    pub ca_file: Option<PathBuf>,
    /// This side's certificate.
    #[arg(long, required = true)]
    pub cert_file: Option<PathBuf>,
    /// This side's private key.
    #[arg(long, required = true)]
    pub key_file: Option<PathBuf>,
    /// Seconds between HTTP/2 PINGs on the tunnel connection.
    #[arg(long, default_value_t = 15)]
    pub keepalive_interval_seconds: u64,
    /// Seconds a PING may go unanswered before the connection is given up.
    #[arg(long, default_value_t = 20)]
    pub keepalive_timeout_seconds: u64,
    /// Seconds connecting a target may take before the answer is 504.
    #[arg(long, default_value_t = 10)]
    pub dial_timeout_seconds: u64,
}

impl CommonArgs {
    /// The TLS files.
    ///
    /// # Errors
    /// One of them not given.
    pub fn tls(&self) -> Result<TlsFiles, CliError> {
        let given = |path: &Option<PathBuf>, flag: &str| {
            path.clone()
                .ok_or_else(|| CliError::Invalid(format!("{flag} is required")))
        };
        Ok(TlsFiles {
            ca: given(&self.ca_file, "--ca-file")?,
            cert: given(&self.cert_file, "--cert-file")?,
            key: given(&self.key_file, "--key-file")?,
        })
    }

    /// The keepalive.
    ///
    /// # Errors
    /// A zero interval or timeout.
    pub fn keepalive(&self) -> Result<Keepalive, CliError> {
        positive(
            self.keepalive_interval_seconds > 0 && self.keepalive_timeout_seconds > 0,
            "--keepalive-interval-seconds and --keepalive-timeout-seconds must be positive",
        )?;
        Ok(Keepalive {
            interval: Duration::from_secs(self.keepalive_interval_seconds),
            timeout: Duration::from_secs(self.keepalive_timeout_seconds),
        })
    }

    /// How long connecting a target may take.
    ///
    /// # Errors
    /// Zero.
    pub fn dial_timeout(&self) -> Result<Duration, CliError> {
        positive(
            self.dial_timeout_seconds > 0,
            "--dial-timeout-seconds must be positive",
        )?;
        Ok(Duration::from_secs(self.dial_timeout_seconds))
    }
}

/// The agent's flags (`yurt tunnel-agent`, `yurt-tunnel-agent`).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name; its certificate must be `system:node:<name>`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: yurt_core::NodeName,
    /// The tunnel server's `host:port` (OpenYurt's flag name); several (comma-separated
    /// or repeated) for server replicas: the agent keeps a connection to each.
    #[arg(long, required = true, value_delimiter = ',')]
    pub tunnelserver_addr: Vec<String>,
    /// The name every server's certificate must carry (default: the host of the first
    /// `--tunnelserver-addr`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// This node's own addresses, the only ones (with `--pod-cidr`) the agent connects.
    #[arg(long = "node-ip", required = true, value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// Ports the agent connects on the node's addresses.
    #[arg(long, value_delimiter = ',', default_value = "10250")]
    pub allowed_ports: Vec<u16>,
    /// This node's pod CIDRs: any address and port in them may be connected.
    #[arg(long = "pod-cidr", value_delimiter = ',')]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// `/healthz`, `/readyz` (connected to the server) and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:10266")]
    pub admin_address: SocketAddr,
    /// Seconds a connection to the server (TCP, TLS, HTTP/2) may take.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_seconds: u64,
    /// Longest wait between reconnection attempts, seconds (starting at 1).
    #[arg(long, default_value_t = 30)]
    pub max_backoff_seconds: u64,
    /// How often to look for a renewed certificate in --cert-file (kubelet rotates its
    /// client certificate in place), seconds: a renewed one is used for a new
    /// connection at once and the old connection drains.
    #[arg(long, default_value_t = 60)]
    pub cert_check_interval_seconds: u64,
    /// TLS files and timeouts.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl AgentArgs {
    /// The agent's settings, once its certificate is checked to be `--node-name`'s.
    ///
    /// # Errors
    /// Unreadable certificate, another node's, or a flag out of range.
    pub fn config(&self) -> Result<AgentConfig, CliError> {
        let args = self;
        let tls = args.common.tls()?;
        let own = crate::tls::certs(&tls.cert)?;
        let identity = crate::tls::node_of(own.first())
            .map_err(|e| CliError::Invalid(format!("{}: {e}", tls.cert.display())))?;
        if identity != args.node_name {
            return Err(CliError::Invalid(format!(
                "{} is node {identity}'s certificate, not --node-name {}'s",
                tls.cert.display(),
                args.node_name
            )));
        }
        positive(
            args.connect_timeout_seconds > 0
                && args.max_backoff_seconds > 0
                && args.cert_check_interval_seconds > 0,
            "--connect-timeout-seconds, --max-backoff-seconds and --cert-check-interval-seconds must be positive",
        )?;
        let server_name = match &args.server_name {
            Some(name) => name.clone(),
            None => {
                let first = args
                    .tunnelserver_addr
                    .first()
                    .map(String::as_str)
                    .unwrap_or("");
                host_of(first).ok_or_else(|| {
                    CliError::Invalid(format!("--tunnelserver-addr {first}: not host:port"))
                })?
            }
        };
        Ok(AgentConfig {
            server_addrs: args.tunnelserver_addr.clone(),
            server_name,
            tls,
            allow: AllowList {
                node: args.node_name.clone(),
                node_ips: args.node_ips.clone(),
                ports: args.allowed_ports.clone(),
                pod_cidrs: args.pod_cidrs.clone(),
            },
            dial_timeout: args.common.dial_timeout()?,
            connect_timeout: Duration::from_secs(args.connect_timeout_seconds),
            keepalive: args.common.keepalive()?,
            backoff: (
                Duration::from_secs(1),
                Duration::from_secs(args.max_backoff_seconds.max(1)),
            ),
            windows: Windows::default(),
            max_streams: 4096,
            cert_check_interval: Duration::from_secs(args.cert_check_interval_seconds),
        })
    }
}

/// Runs the agent (admin endpoints on `--admin-address`) until `token` is cancelled.
///
/// # Errors
/// See [`AgentArgs::config`]; the admin address cannot be bound.
pub async fn run_agent(args: &AgentArgs, token: CancellationToken) -> Result<(), CliError> {
    let config = args.config()?;
    crate::agent::run_with_admin(config, args.admin_address, token).await?;
    Ok(())
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<String> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once("]:").map(|(h, _)| h.to_owned());
    }
    addr.rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_server_name_defaults_to_the_host_of_the_address() {
        assert_eq!(host_of("10.10.0.1:10262").as_deref(), Some("10.10.0.1"));
        assert_eq!(
            host_of("tunnel.example:10262").as_deref(),
            Some("tunnel.example")
        );
        assert_eq!(host_of("[fd00::1]:10262").as_deref(), Some("fd00::1"));
        assert_eq!(host_of(":10262"), None);
        assert_eq!(host_of("nohost"), None);
    }
}
