//! The command-line tree.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Environment variable for `--data-dir`.
pub const ENV_DATA_DIR: &str = "YURT_DATA_DIR";
/// Environment variable for the cache of built upstream binaries.
pub const ENV_CACHE_DIR: &str = "YURT_CACHE_DIR";
/// Environment variable for the machine-wide fleet registry.
pub const ENV_REGISTRY_DIR: &str = "YURT_REGISTRY_DIR";

/// Default data folder of `yurt up`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/yurt/default";

/// OpenYurt, rebuilt in Rust.
#[derive(Debug, Parser)]
#[command(name = "yurt", version, about, propagate_version = true)]
pub struct Cli {
    /// Cache of built upstream binaries.
    #[arg(long, global = true, env = ENV_CACHE_DIR, default_value = "/var/cache/yurt", hide_default_value = false)]
    pub cache_dir: PathBuf,
    /// Machine-wide registry of fleets.
    #[arg(long, global = true, env = ENV_REGISTRY_DIR, default_value = "/var/lib/yurt")]
    pub registry_dir: PathBuf,
    /// The fleet's data folder.
    #[arg(long, global = true, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local edge fleet (real Kubernetes, edge hosts in network namespaces) and stay in the foreground (or `--detach`).
    Up(UpArgs),
    /// Stop a fleet and remove every process, namespace, mount and cgroup it made.
    Down(DownArgs),
    /// Act on a running fleet: status, cut/restore links, reboot a node, stop/start a process, exec.
    Fleet(FleetArgs),
    /// Build container images from busybox without a registry, and import them into a fleet.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Install the Debian packages and build the upstream Kubernetes binaries (once; cached).
    Setup,
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The edge node proxy (alias `yurthub`): caches what node components read and serves it when the cloud is gone.
    Hub(Box<crate::commands::hub::HubArgs>),
    /// OpenYurt's controllers and webhooks (alias `yurt-manager`): NodePools and edge autonomy.
    Manager(Box<crate::commands::manager::ManagerArgs>),
    /// The cloud end of the tunnel (alias `yurt-tunnel-server`): kube-apiserver's `cluster` egress, carried to edge nodes' agents.
    TunnelServer(Box<crate::commands::tunnel::TunnelServerArgs>),
    /// The edge end of the tunnel (alias `yurt-tunnel-agent`): dials out to the server and connects its streams to this node.
    TunnelAgent(Box<yurt_tunnel::cli::AgentArgs>),
    /// Devices (OpenYurt's iot.openyurt.io): the device agent of a node pool.
    Iot(Box<crate::commands::iot::IotArgs>),
    /// Administer nodes of a cluster (alias `yurtadm`): bootstrap tokens (interoperable with `kubeadm token`), joining hosts.
    Adm(AdmArgs),
    /// Convert the joined node this runs on to an edge node behind a hub, or revert it (OpenYurt's node-servant; the conversion controller runs it in a Job).
    NodeServant(NodeServantArgs),
}

/// `yurt node-servant`.
#[derive(Debug, Args)]
pub struct NodeServantArgs {
    /// convert or revert.
    #[command(subcommand)]
    pub command: NodeServantCommand,
}

/// `yurt node-servant convert|revert`.
#[derive(Debug, Subcommand)]
pub enum NodeServantCommand {
    /// Plain → edge: the hub from kubelet's certificate, kubelet and kube-proxy through it, each container restarted once.
    Convert {
        /// The node pool (the hub's `--nodepool-name`).
        #[arg(long = "nodepool-name")]
        nodepool_name: String,
        #[command(flatten)]
        common: NodeServantCommon,
    },
    /// Edge → plain: kubelet and kube-proxy straight to the API server, the hub gone, each container restarted once.
    Revert {
        #[command(flatten)]
        common: NodeServantCommon,
    },
}

/// What convert and revert share.
#[derive(Debug, Args)]
pub struct NodeServantCommon {
    /// The node this host runs (kubelet's certificate must name it).
    #[arg(long = "node-name")]
    pub node_name: String,
    /// How long the whole run may take (Go duration).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
    /// How long a container has after SIGTERM before it is killed (Go duration).
    #[arg(long, default_value = "10s")]
    pub container_stop_timeout: String,
}

/// `yurt adm`.
#[derive(Debug, Args)]
pub struct AdmArgs {
    /// The subcommand.
    #[command(subcommand)]
    pub command: AdmCommand,
}

/// `yurt adm ...`.
#[derive(Debug, Subcommand)]
pub enum AdmCommand {
    /// Bootstrap tokens (`kube-system/bootstrap-token-<id>` Secrets, the same as `kubeadm token`'s).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join this host to a cluster: token discovery, kubelet's TLS bootstrap, then (edge) the hub. Run it on the host: `yurt fleet exec <host> -- yurt adm join ...`.
    Join(JoinArgs),
    /// Undo `join` on this host: its processes, pods, mounts, pod network and files (its containerd stays). Run it on the host.
    Reset {
        /// Delete the Node first, with kubelet's own credentials.
        #[arg(long)]
        delete_node: bool,
    },
    /// Convert a plain node to an edge node behind a hub: label it with its pool and wait for yurt manager's conversion Job.
    Convert {
        /// The node.
        #[arg(long)]
        node: String,
        /// Its pool (default: the pool it is labelled with).
        #[arg(long = "nodepool-name")]
        nodepool_name: Option<String>,
        /// How long to wait for the conversion (Go duration).
        #[arg(long, default_value = "15m")]
        timeout: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Revert an edge node to a plain node: remove its pool label and wait for yurt manager's conversion Job.
    Revert {
        /// The node.
        #[arg(long)]
        node: String,
        /// How long to wait for the revert (Go duration).
        #[arg(long, default_value = "15m")]
        timeout: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// `yurt adm join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The API server, `host:port` (kubeadm's form) or `https://host:port`.
    pub server: String,
    /// The bootstrap token (`abcdef.0123456789abcdef`).
    #[arg(long)]
    pub token: String,
    /// The cluster CA's public key pin, `sha256:<hex>` (repeatable), as `kubeadm token create --print-join-command` prints it.
    #[arg(long = "discovery-token-ca-cert-hash")]
    pub ca_cert_hashes: Vec<String>,
    /// Trust the CA cluster-info carries on the token's signature alone.
    #[arg(long = "discovery-token-unsafe-skip-ca-verification")]
    pub unsafe_skip_ca_verification: bool,
    /// The node pool to join (label `apps.openyurt.io/nodepool`).
    #[arg(long = "nodepool-name")]
    pub nodepool_name: Option<String>,
    /// The node name (default: the host's name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// `edge` (behind a hub) or `plain` (kubelet straight to the API server).
    #[arg(long, default_value = "edge")]
    pub node_type: String,
    /// How long discovery may take, and then the rest of the join (Go duration).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// The cluster a token command acts on.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The kubeconfig to use [default: $KUBECONFIG, else the fleet's admin kubeconfig in --data-dir]
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// `yurt adm token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token (a random one unless given) and print it.
    Create {
        /// The token to create, `[a-z0-9]{6}.[a-z0-9]{16}`; replaced if its ID exists.
        token: Option<String>,
        /// How long until it expires and is deleted, a Go duration ("0": never).
        #[arg(long, default_value = "24h0m0s", allow_hyphen_values = true)]
        ttl: String,
        /// What it may be used for: signing (cluster-info, for discovery), authentication (TLS bootstrap).
        #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
        usages: Vec<String>,
        /// Extra groups it authenticates as (each `system:bootstrappers:...`).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "system:bootstrappers:kubeadm:default-node-token"
        )]
        groups: Vec<String>,
        /// A note for whoever lists tokens.
        #[arg(long, default_value = "")]
        description: String,
        /// Print the whole `yurt adm join` command for a host instead of the token alone
        /// (the API server and CA pin cluster-info advertises), as kubeadm does.
        #[arg(long)]
        print_join_command: bool,
        /// The cluster.
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List bootstrap tokens, as `kubeadm token list` does.
    List {
        /// The cluster.
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Delete bootstrap tokens, by ID or whole token.
    Delete {
        /// Token IDs or tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
        /// The cluster.
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print a new random token without creating it.
    Generate,
}

/// Network mode of the edge sites.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// The cloud can reach the edge hosts.
    Routed,
    /// Edge sites behind NAT: the cloud cannot open connections to them.
    Nat,
}

/// Failure-detection timings.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TimingArg {
    /// Upstream defaults (node NotReady after 40 s).
    Standard,
    /// Shortened for tests and demos (node NotReady after 16 s).
    Fast,
}

/// `yurt up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of edge hosts (Kubernetes nodes) [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=250))]
    pub edge_nodes: Option<u16>,
    /// Number of node pools the edge hosts are spread over [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=26))]
    pub pools: Option<u16>,
    /// Network mode of the edge sites [default: nat].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Failure-detection timings [default: standard].
    #[arg(long, value_enum)]
    pub timing: Option<TimingArg>,
    /// Do not deploy the sample app.
    #[arg(long)]
    pub no_sample_app: bool,
    /// Edge hosts run no hub: kubelet and kube-proxy talk to the API server directly
    /// with their own certificates (to measure what the hub costs or saves).
    #[arg(long, hide = true)]
    pub direct_edges: bool,
    /// The API server writes an audit log (every request at level Metadata) to the
    /// cloud host's `logs/kube-apiserver-audit.log`.
    #[arg(long, hide = true)]
    pub api_audit_log: bool,
    /// Upstream Kubernetes only, to install OpenYurt onto as onto any cluster: no hub,
    /// yurt manager, tunnel, NodePools or sample app; plain edge workers talking to the
    /// API server directly; a kubelet on the cloud host (node `cloud`) for add-ons such
    /// as the manager (`yurt manager manifests`). Kept for the fleet's later restarts.
    #[arg(long, conflicts_with_all = ["prometheus", "second_api_server", "direct_edges"])]
    pub bare: bool,
    /// Also run Prometheus (Debian's, installed if missing) in the cloud host, scraping
    /// every kubelet's /metrics and /metrics/cadvisor through the API server's node
    /// proxy, so through the tunnel; its UI is printed once the fleet is up. Kept for
    /// the fleet's later restarts.
    #[arg(long)]
    pub prometheus: bool,
    /// Also run a second kube-apiserver in the cloud host (port 6444, same etcd) with its
    /// own tunnel server, as on a second control-plane machine: every tunnel agent holds
    /// a connection to both, so `kubectl logs/exec` through either API server keep
    /// working when the other's tunnel server dies. Kept for the fleet's later restarts.
    #[arg(long)]
    pub second_api_server: bool,
    /// How long the certificates kube-controller-manager signs stay valid (every CSR it
    /// issues, the hubs' included), a Go duration of at least 6m: it backdates each by
    /// five minutes. Short values exercise renewal. Kept for the fleet's later restarts.
    #[arg(long, value_parser = signing_duration, allow_hyphen_values = true)]
    pub cluster_signing_duration: Option<std::time::Duration>,
    /// Return once the fleet is up, leaving it running under a detached supervisor that
    /// restarts crashed processes (stop both with `yurt down`).
    #[arg(long)]
    pub detach: bool,
}

/// `yurt down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Stop every fleet on this machine and sweep leftovers of any fleet.
    #[arg(long)]
    pub all: bool,
    /// Also delete the data folder(s) (certificates, etcd data, images, logs).
    #[arg(long)]
    pub purge: bool,
}

/// `yurt fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// `yurt fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Hosts, addresses, links and processes.
    Status,
    /// Cut the link between the cloud and a node, a pool, or (`cloud`) every site. Hosts keep running.
    Cut {
        /// Node, pool or `cloud`.
        target: String,
    },
    /// Restore a link cut with `cut`.
    Restore {
        /// Node, pool or `cloud`.
        target: String,
    },
    /// Reboot an edge host: everything on it dies at once (containers too), then it starts again.
    Reboot {
        /// The edge node.
        node: String,
    },
    /// Stop one process on a host (it stays stopped until `start`).
    Stop {
        /// The host (`cloud` or an edge node).
        host: String,
        /// The process (kubelet, containerd, kube-proxy, etcd, kube-apiserver, ...).
        process: String,
        /// Kill it at once (SIGKILL, as in a crash) instead of asking it to stop.
        #[arg(long)]
        kill: bool,
    },
    /// Start a process stopped with `stop` (or one that died).
    Start {
        /// The host.
        host: String,
        /// The process.
        process: String,
    },
    /// Run a command inside a host.
    Exec {
        /// The host (`cloud`, `router` or an edge node).
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Add a bare host to a pool's site: its network, containerd and the fleet's images; no certificates and no Node (join it to the cluster with `yurt adm join`).
    AddHost {
        /// Its name (a node name, unused in the fleet).
        name: String,
        /// The pool whose site it joins.
        #[arg(long)]
        pool: String,
    },
    /// Remove a host added with `add-host`: its processes, containers, mounts, routes and files (its Node, if any, stays).
    RemoveHost {
        /// The host.
        name: String,
    },
    /// Print the path of the admin kubeconfig.
    Kubeconfig,
    /// Route added hosts' pod CIDRs in the router and their pool peers (what the fleet runs on its router).
    #[command(hide = true)]
    FollowRoutes {
        /// Credentials to list Nodes with.
        #[arg(long)]
        kubeconfig: std::path::PathBuf,
        /// How often to reconcile (Go duration).
        #[arg(long, default_value = "10s", value_parser = positive_duration)]
        period: std::time::Duration,
        /// Where /healthz, /readyz and /metrics are served.
        #[arg(long, default_value = "127.0.0.1:10280")]
        admin_address: std::net::SocketAddr,
    },
    /// Keep the fleet's processes running until `yurt down` (what `yurt up --detach` leaves behind).
    #[command(hide = true)]
    Supervise,
    /// Serve every edge host's service manager on its socket (what the supervisor does too), restarting nothing, until stopped.
    ServiceManager,
}

/// `yurt image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image archive: busybox plus the files of a folder.
    Build {
        /// Image reference, e.g. yurt.local/web:1.
        #[arg(long)]
        tag: String,
        /// Folder whose files are copied into the image.
        #[arg(long)]
        from_dir: Option<PathBuf>,
        /// Where in the image the folder's files go.
        #[arg(long, default_value = "/")]
        dest: String,
        /// Entrypoint, as a JSON array (e.g. '["/app/run.sh"]').
        #[arg(long)]
        entrypoint: Option<String>,
        /// Default command, as a JSON array.
        #[arg(long)]
        cmd: Option<String>,
        /// Output archive.
        #[arg(long, short)]
        output: PathBuf,
        /// Push the image to the fleet registry too, under its tag (as `yurt image push`).
        #[arg(long)]
        push: bool,
        /// Add this `yurt` binary at /usr/local/bin/yurt with the shared libraries it
        /// loads, and make it the entrypoint unless --entrypoint says otherwise: the
        /// image `yurt manager manifests` runs.
        #[arg(long)]
        with_yurt: bool,
    },
    /// Push an image to the fleet registry: every node then pulls it by name or digest.
    Push {
        /// A docker-archive (`docker save`, `yurt image build`) or an OCI image layout
        /// (a folder or a tar), gzip-compressed or not.
        source: PathBuf,
        /// Names to push it as (`app:1`, `docker.io/myorg/app:2`, `registry.k8s.io/x:1`;
        /// default: the names the source carries).
        names: Vec<String>,
    },
    /// Import image archives into every node of a fleet (and into nodes started later).
    Import {
        /// Archives made by `yurt image build` (or `docker save`).
        #[arg(required = true)]
        archives: Vec<PathBuf>,
    },
}

/// `--cluster-signing-duration`: a Go duration of at least six minutes (1.20's signer
/// backdates every certificate by five, so a shorter one is born expired or nearly).
fn signing_duration(text: &str) -> Result<std::time::Duration, String> {
    let (negative, duration) = yurt_core::go_duration::parse_go_duration(text)?;
    if negative || duration < std::time::Duration::from_secs(6 * 60) {
        return Err(format!(
            "{text} is shorter than 6m (kube-controller-manager backdates certificates by 5m)"
        ));
    }
    Ok(duration)
}

fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match yurt_core::go_duration::parse_go_duration(text)? {
        (false, d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{text} is not a positive duration")),
    }
}

/// `yurt bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cold `yurt up` to Ready and serving, memory per edge host, pod start latency.
    Fleet(BenchFleetArgs),
    /// The hub: memory, cold start, cached LIST, added latency, cut-to-cache, offline reboot, durable writes.
    Hub(crate::commands::bench_hub::BenchHubArgs),
    /// The manager at scale: pool changes reaching nodes, a YurtAppSet across many pools, memory and CPU.
    Manager(crate::commands::bench_manager::BenchManagerArgs),
    /// Joining: certificate requests from create to issued, ours against kube-controller-manager's own approval.
    Adm(crate::commands::bench_adm::BenchAdmArgs),
    /// The tunnel against raw TCP and TLS-only relays: throughput, latency, CONNECT, many streams, agent memory.
    Tunnel(crate::commands::bench_tunnel::BenchTunnelArgs),
    /// The device agent at scale: poll cycles, Modbus requests, CPU, memory and status writes of 1,000 devices against upstream's cadence.
    Iot(crate::commands::bench_iot::BenchIotArgs),
    /// The device loops `yurt bench iot` measures (started by it).
    #[command(hide = true)]
    IotAgents(crate::commands::bench_iot::IotAgentsArgs),
    /// The bare proxy `yurt bench hub` measures the hub against (started by it).
    #[command(hide = true)]
    BareProxy(crate::commands::bench_hub::bare_proxy::BareProxyArgs),
    /// Many tunnel agents in one process, for `yurt bench tunnel` (started by it).
    #[command(hide = true)]
    TunnelAgents(crate::commands::bench_tunnel::ManyAgentsArgs),
}

/// `yurt bench fleet`.
#[derive(Debug, Args)]
pub struct BenchFleetArgs {
    /// Fleet sizes to bring up cold, in edge nodes.
    #[arg(long, value_delimiter = ',', default_value = "4,10")]
    pub sizes: Vec<u16>,
    /// Pods to create for the start-latency measurement (once all at once, once paced).
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Creation rate of the paced start-latency run, pods per second.
    #[arg(long, default_value_t = 2.0)]
    pub paced_rate: f64,
    /// Folder for the benchmark fleets (removed afterwards).
    #[arg(long, default_value = "/var/lib/yurt/bench")]
    pub bench_dir: PathBuf,
    /// Size of the image pulled to every node through the registry and imported with
    /// `ctr` (first fleet size only), MiB; 0 skips it.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub pull_mib: u16,
    /// Also time a warm `yurt up` (stopped, then started again on its data) of the first
    /// fleet size.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "yurt", "fleet", "exec", "edge-a1", "--", "sh", "-c", "echo hi",
        ])
        .unwrap();
        let Command::Fleet(FleetArgs {
            command: FleetCommand::Exec { host, command },
            ..
        }) = cli.command
        else {
            panic!("parsed into the wrong command");
        };
        assert_eq!(host, "edge-a1");
        assert_eq!(command, ["sh", "-c", "echo hi"]);
    }

    #[test]
    fn out_of_range_sizes_are_rejected() {
        let err = Cli::try_parse_from(["yurt", "up", "--edge-nodes", "0"]).unwrap_err();
        assert!(err.to_string().contains("--edge-nodes"), "{err}");
        assert!(Cli::try_parse_from(["yurt", "up", "--bogus"]).is_err());
    }
}
