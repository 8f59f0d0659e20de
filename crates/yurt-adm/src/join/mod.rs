//! `yurt adm join`: a host joins the cluster in OpenYurt 1.7's order (reference/
//! openyurt.md §8, issue 13): token discovery ([`crate::discovery`]), kubelet's TLS
//! bootstrap straight to the API server (kube-controller-manager approves and signs its
//! client certificate), the node's pool and edge labels set by kubelet at registration;
//! then, for an edge node, the hub (started from kubelet's certificate, asking for a
//! client certificate of its own and its serving certificate by CSR), its readiness,
//! and only then kubelet pointed at it, and kube-proxy once the Node is Ready.
//!
//! An edge node's hub starts as soon as kubelet holds its client certificate, while
//! kubelet is still starting (a stock 1.20 kubelet built with Docker support spends five
//! seconds of every start in cAdvisor's retries for a Docker daemon before it registers
//! its Node; the fleet's is built without): its serving certificate, for the hub's pod
//! address alone, is approved before the Node exists.
//!
//! Every phase is idempotent and the next run resumes where a killed one stopped: what
//! is done is read from the host's files (kubelet's kubeconfig, the units), never from
//! memory. Each wait has the join's deadline and a failure names the phase and what it
//! waited for (the pending CSR, the hub's readyz answer).
//!
//! The host is reached through `yurt_core::host`: its folder (facts, units, files) and
//! its service manager.

mod files;
#[cfg(test)]
pub(crate) mod tests;

use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use yurt_core::host::{HostFacts, ServiceRequest};
use yurt_core::{NodeName, PoolName};

use crate::discovery::{ClusterInfo, Discovery};

pub use files::{HostFiles, KubeletApi, base_kubelet_config, kubelet_config};

/// What kind of node the host becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    /// Behind a hub: autonomy through cloud outages (`openyurt.io/is-edge-worker=true`).
    Edge,
    /// A plain worker: kubelet talks to the API server directly.
    Plain,
}

impl std::str::FromStr for NodeType {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Self, JoinError> {
        match s {
            "edge" => Ok(Self::Edge),
            "plain" | "cloud" => Ok(Self::Plain),
            _ => Err(JoinError::Input(format!(
                "--node-type {s:?}: must be edge or plain"
            ))),
        }
    }
}

/// Join failures: each names the phase and what it waited for.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Bad input, refused before anything changed.
    #[error("{0}")]
    Input(String),
    /// The host is not in a state to join.
    #[error("preflight: {0}")]
    Preflight(String),
    /// Discovery failed.
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// A phase failed.
    #[error("{phase}: {reason}")]
    Phase {
        /// The phase.
        phase: &'static str,
        /// What went wrong or what it waited for.
        reason: String,
    },
    /// A phase failed and the host was rolled back.
    #[error("{cause}; the join was rolled back (kubelet, kube-proxy and yurt hub stopped, join's files removed{}{}): fix that and join again", node.as_ref().map(|n| format!(", Node {n} deleted")).unwrap_or_default(), node_left.as_ref().map(|why| format!("; the Node it made is left, delete it with kubectl: {why}")).unwrap_or_default())]
    RolledBack {
        /// The failure.
        cause: Box<JoinError>,
        /// The Node deleted with it, if the join had made one.
        node: Option<String>,
        /// Why the Node the join made could not be deleted.
        node_left: Option<String>,
    },
    /// A phase failed and so did undoing it.
    #[error(
        "{cause}; rolling the join back failed too ({reset}): run `yurt adm reset` on this host"
    )]
    RollbackFailed {
        /// The failure.
        cause: Box<JoinError>,
        /// What the rollback said.
        reset: String,
    },
}

fn phase(phase: &'static str) -> impl Fn(String) -> JoinError {
    move |reason| JoinError::Phase { phase, reason }
}

/// What to join as.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Discovery (server, token, CA trust, its deadline).
    pub discovery: Discovery,
    /// The node name.
    pub node: NodeName,
    /// The pool (label `apps.openyurt.io/nodepool`).
    pub pool: Option<PoolName>,
    /// Edge or plain.
    pub node_type: NodeType,
    /// How long discovery may take, and then the rest of the join (one deadline).
    pub timeout: Duration,
}

impl JoinOptions {
    /// What the host becomes.
    pub fn role(&self) -> NodeRole {
        NodeRole {
            node: self.node.clone(),
            pool: self.pool.clone(),
            node_type: self.node_type,
        }
    }
}

/// What a host is in the cluster: the node it runs, its pool and kind (what join, and
/// the servant's convert and revert, write its units for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRole {
    /// The node name.
    pub node: NodeName,
    /// The pool (label `apps.openyurt.io/nodepool`).
    pub pool: Option<PoolName>,
    /// Edge or plain.
    pub node_type: NodeType,
}

/// The host the join runs on: its folder and facts, and its service manager.
pub trait Host {
    /// The host's files.
    fn files(&self) -> &HostFiles;
    /// What the host has.
    fn facts(&self) -> &HostFacts;
    /// Asks the service manager to start, stop or restart a process.
    fn request(
        &self,
        request: ServiceRequest,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// What a finished join reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The node.
    pub node: String,
    /// Phases that were already done (a resumed join).
    pub skipped: Vec<&'static str>,
}

/// Reports progress: a phase name and a detail.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Joins the host.
///
/// # Errors
/// [`JoinError`] naming the phase.
pub async fn join<H: Host + Sync>(
    host: &H,
    options: &JoinOptions,
    progress: Progress<'_>,
) -> Result<Joined, JoinError> {
    let files = host.files();
    if files.joined_marker().exists() {
        return Err(JoinError::Preflight(format!(
            "this host already joined the cluster as {} ({} exists); run `yurt adm reset` first",
            std::fs::read_to_string(files.joined_marker())
                .unwrap_or_default()
                .trim(),
            files.joined_marker().display()
        )));
    }
    // A kubelet that bootstrapped as another node: this join cannot take it over.
    let wanted = format!("system:node:{}", options.node);
    if let Some(identity) = files.kubelet_identity()
        && identity != wanted
    {
        return Err(JoinError::Preflight(format!(
            "this host's kubelet already holds a certificate of {identity}: run `yurt adm reset` before joining as {}",
            options.node
        )));
    }
    let mut skipped = Vec::new();

    progress("discovery: reading kube-public/cluster-info");
    let cluster = options.discovery.run().await?;
    let bootstrap = bootstrap_client(&cluster, &options.discovery)?;

    progress("preflight: node name and pool");
    // One deadline for the rest of the join (--timeout: discovery's, then this).
    let deadline = Instant::now() + options.timeout;
    // A resumed join finds its own Node: the name is held by this host's kubelet.
    let ours = files.kubelet_identity().as_deref() == Some(wanted.as_str());
    let node_existed = preflight(&bootstrap, options, ours, deadline).await?;
    // Recorded by the first run. A kubelet already bootstrapped with no record (a join
    // of an earlier version) may have found the Node there: kept, never deleted.
    files
        .record_node_origin(options.node.as_str(), node_existed || ours, ours)
        .map_err(phase("preflight"))?;

    match phases(
        host,
        options,
        &cluster,
        &bootstrap,
        progress,
        deadline,
        &mut skipped,
    )
    .await
    {
        Ok(()) => Ok(Joined {
            node: options.node.to_string(),
            skipped,
        }),
        Err(cause) => Err(roll_back(host, cause, progress).await),
    }
}

/// Undoes whatever the phases changed, so the host is left as before the join (kubeadm
/// leaves this to the user; a half-joined edge host is worse than none): kubelet stops
/// first, so it cannot register its Node again; the Node is deleted with kubelet's
/// credentials when this join made it (best effort: the failure may be that the API
/// server cannot be reached, and the host is cleaned all the same); then reset's steps.
async fn roll_back<H: Host + Sync>(
    host: &H,
    cause: JoinError,
    progress: Progress<'_>,
) -> JoinError {
    let files = host.files();
    progress("rolling back: undoing what the join did on this host");
    if files.unit("kubelet").exists()
        && let Err(e) = host.request(ServiceRequest::Stop("kubelet".into())).await
    {
        return JoinError::RollbackFailed {
            cause: Box::new(cause),
            reset: format!("stopping kubelet: {e}"),
        };
    }
    let (mut node, mut node_left) = (None, None);
    if let Some(identity) = files.kubelet_identity()
        && let Some(name) = identity.strip_prefix("system:node:")
        && files.join_made_node(name)
    {
        progress("deleting the Node this join made, with kubelet's credentials");
        match tokio::time::timeout(NODE_DELETE_TIMEOUT, crate::reset::delete_own_node(files)).await
        {
            Ok(Ok(deleted)) => node = deleted,
            Ok(Err(e)) => node_left = Some(e.to_string()),
            Err(_) => {
                node_left = Some(format!(
                    "the API server did not answer within {NODE_DELETE_TIMEOUT:?}"
                ));
            }
        }
    }
    match crate::reset::reset(host, false, progress).await {
        Ok(_) => JoinError::RolledBack {
            cause: Box::new(cause),
            node,
            node_left,
        },
        Err(e) => JoinError::RollbackFailed {
            cause: Box::new(cause),
            reset: e.to_string(),
        },
    }
}

/// How long a rollback tries to delete the Node it made.
const NODE_DELETE_TIMEOUT: Duration = Duration::from_secs(20);

/// The phases that change the host and the cluster, each resumed from what the host's
/// files say is done.
async fn phases<H: Host + Sync>(
    host: &H,
    options: &JoinOptions,
    cluster: &ClusterInfo,
    bootstrap: &kube::Client,
    progress: Progress<'_>,
    deadline: Instant,
    skipped: &mut Vec<&'static str>,
) -> Result<(), JoinError> {
    let files = host.files();
    files
        .write_ca(cluster)
        .map_err(phase("kubelet TLS bootstrap"))?;
    if files.kubelet_bootstrapped() {
        skipped.push("kubelet TLS bootstrap");
    } else {
        progress("kubelet TLS bootstrap: kubelet asks for its client certificate");
        files
            .write_bootstrap_kubeconfig(cluster, &options.discovery.token.to_string())
            .map_err(phase("kubelet TLS bootstrap"))?;
        let serving_by_csr = options.node_type == NodeType::Edge
            || cluster_kubelets_serve_by_csr(bootstrap, deadline)
                .await
                .map_err(phase("kubelet TLS bootstrap"))?;
        files
            .write_kubelet(
                host.facts(),
                &options.role(),
                files::KubeletApi::Bootstrap,
                serving_by_csr,
            )
            .map_err(phase("kubelet TLS bootstrap"))?;
        // Not waited for by the service manager: kubelet is ready long after it holds its
        // certificate (see the module's notes), and the wait below names a pending CSR.
        host.request(ServiceRequest::RestartNoBlock("kubelet".into()))
            .await
            .map_err(phase("kubelet TLS bootstrap"))?;
        wait_bootstrapped(bootstrap, files, &options.node, deadline).await?;
    }
    // The token has served: kubeadm removes it too (kubelet reads it only while its own
    // kubeconfig is missing or expired).
    files
        .remove_bootstrap_kubeconfig()
        .map_err(phase("kubelet TLS bootstrap"))?;

    // When kubelet was restarted behind the hub: the Ready that counts is the one it
    // reports from there, not one the kubelet before it left on the Node.
    let mut restarted = None;
    if options.node_type == NodeType::Edge {
        progress("hub: starting yurt hub from kubelet's certificate");
        let changed = files
            .write_hub(host.facts(), &cluster.server, &options.role())
            .map_err(phase("hub"))?;
        // Not waited for by the service manager: the wait below has the join's deadline
        // and says why the hub is not ready (its readyz, the CSRs it waits for).
        let request = if changed {
            ServiceRequest::RestartNoBlock("yurt-hub".into())
        } else {
            ServiceRequest::StartNoBlock("yurt-hub".into())
        };
        host.request(request).await.map_err(phase("hub"))?;
        // Meanwhile kubelet registers its Node; once the cluster gives it a pod CIDR,
        // containerd renders the pod network. A kubelet restarted before that would
        // report the Node NotReady until its next status update, 10 s later.
        progress("registration: kubelet registers its Node");
        wait_registered(bootstrap, &options.node, deadline).await?;
        wait_hub_ready(bootstrap, &options.node, deadline).await?;
        wait_hub_serves_node(&options.node, deadline).await?;
        progress("kubelet through the hub: restarting kubelet behind the hub");
        let changed = files
            .write_kubelet(
                host.facts(),
                &options.role(),
                files::KubeletApi::ThroughHub,
                true,
            )
            .map_err(phase("kubelet through the hub"))?;
        // A rerun that finds kubelet behind the hub already (unchanged) restarts nothing,
        // and kubelet reports an unchanged status only every five minutes.
        restarted = changed.then(jiff::Timestamp::now);
        host.request(start_or_restart(changed, "kubelet"))
            .await
            .map_err(phase("kubelet through the hub"))?;
    } else {
        host.request(ServiceRequest::Start("kubelet".into()))
            .await
            .map_err(phase("kubelet"))?;
    }
    progress("node: waiting for it to be Ready");
    wait_ready_since(bootstrap, &options.node, restarted, deadline).await?;

    // Once the Node exists: kube-proxy 1.20 reads its address from it and, started
    // before, waits in a backoff of up to a minute. Through the hub on an edge node,
    // with kubelet's credentials on a plain one.
    progress("kube-proxy: starting it");
    let changed = files
        .write_kube_proxy(host.facts(), &options.role())
        .map_err(phase("kube-proxy"))?;
    host.request(start_or_restart(changed, "kube-proxy"))
        .await
        .map_err(phase("kube-proxy"))?;
    if options.node_type == NodeType::Edge {
        tunnel_agent(host, &options.node, deadline, progress).await?;
    }
    files
        .mark_joined(options.node.as_str())
        .map_err(phase("finish"))
}

/// Writes and starts the node's tunnel agent when the cluster has a tunnel (see
/// [`crate::tunnel`]): the servers from the tunnel's Endpoints, read with kubelet's
/// credentials; while they name no server (one restarting), read again until the
/// deadline. Without a tunnel, an agent an earlier run left is stopped and removed.
/// Whether the host changed.
pub(crate) async fn tunnel_agent<H: Host + Sync>(
    host: &H,
    node: &NodeName,
    deadline: Instant,
    progress: Progress<'_>,
) -> Result<bool, JoinError> {
    use crate::tunnel::{AGENT, SERVICE};
    let fail = phase("tunnel agent");
    let files = host.files();
    let client = kubelet_client(files).await.map_err(&fail)?;
    let servers = loop {
        match read_through(deadline, || crate::tunnel::server_addresses(&client)).await {
            Ok(Some(servers)) if !servers.is_empty() => break servers,
            Ok(Some(_)) if Instant::now() + POLL < deadline => tokio::time::sleep(POLL).await,
            Ok(Some(_)) => {
                return Err(fail(format!(
                    "the Endpoints of {}/{} name no tunnel server (none ready)",
                    SERVICE.0, SERVICE.1
                )));
            }
            Ok(None) => {
                progress(
                    "tunnel agent: none, the cluster has no tunnel (no Endpoints kube-system/x-tunnel-server-svc)",
                );
                return remove_tunnel_agent(host).await.map_err(fail);
            }
            Err(kube::Error::Api(status)) if status.code == 403 => {
                progress(&format!(
                    "tunnel agent: none, this node may not read the Endpoints of {}/{}: {}",
                    SERVICE.0, SERVICE.1, status.message
                ));
                return remove_tunnel_agent(host).await.map_err(fail);
            }
            Err(e) => {
                return Err(fail(format!(
                    "reading the Endpoints of {}/{}: {e}",
                    SERVICE.0, SERVICE.1
                )));
            }
        }
    };
    let cidrs = read_through(deadline, || {
        crate::tunnel::pod_cidrs_of(&client, node.as_str())
    })
    .await
    .map_err(|e| fail(format!("reading Node {node}'s pod CIDRs: {e}")))?;
    progress(&format!("tunnel agent: to {}", servers.join(", ")));
    let unit = crate::tunnel::agent_unit(files, host.facts(), node.as_str(), &servers, &cidrs);
    let changed = unit
        .save(&files.unit(AGENT))
        .map_err(|e| fail(e.to_string()))?;
    host.request(start_or_restart(changed, AGENT))
        .await
        .map_err(fail)?;
    Ok(changed)
}

/// Stops the node's tunnel agent and removes its unit, if it has one; whether it had.
///
/// # Errors
/// The service manager or the removal failed.
pub(crate) async fn remove_tunnel_agent<H: Host + Sync>(host: &H) -> Result<bool, String> {
    let unit = host.files().unit(crate::tunnel::AGENT);
    if !unit.exists() {
        return Ok(false);
    }
    host.request(ServiceRequest::Stop(crate::tunnel::AGENT.into()))
        .await?;
    crate::reset::remove(&unit)?;
    Ok(true)
}

/// A client with kubelet's own credentials, straight to the API server.
///
/// # Errors
/// kubelet's kubeconfig is missing or invalid.
pub(crate) async fn kubelet_client(files: &HostFiles) -> Result<kube::Client, String> {
    let path = files.kubelet_kubeconfig();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// A process whose unit changed is restarted (a running one would keep its old
/// flags); otherwise it is started if it does not run.
fn start_or_restart(changed: bool, process: &str) -> ServiceRequest {
    if changed {
        ServiceRequest::Restart(process.to_owned())
    } else {
        ServiceRequest::Start(process.to_owned())
    }
}

/// A client with the bootstrap token, trusting the discovered CA.
fn bootstrap_client(
    cluster: &ClusterInfo,
    discovery: &Discovery,
) -> Result<kube::Client, JoinError> {
    let fail = phase("discovery");
    let server: http::Uri = cluster.server.parse().map_err(|e| {
        fail(format!(
            "cluster-info names server {:?}: {e}",
            cluster.server
        ))
    })?;
    let mut config = kube::Config::new(server);
    config.root_cert =
        Some(crate::discovery::pem_certificates(&cluster.ca_pem).map_err(|e| fail(e.to_string()))?);
    config.auth_info.token = Some(discovery.token.to_string().into());
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// The node name must not be held by a Ready Node, and the pool must exist and take
/// this kind of node.
async fn preflight(
    client: &kube::Client,
    options: &JoinOptions,
    ours: bool,
    deadline: Instant,
) -> Result<bool, JoinError> {
    // The API server may be restarting or the site's link cut: reads are retried until
    // the join's deadline, so a join begun in an outage finishes when it ends.
    let nodes: Api<Node> = Api::all(client.clone());
    let existed = match read_through(deadline, || nodes.get_opt(options.node.as_str())).await {
        Ok(Some(node)) if is_ready(&node) && !ours => {
            return Err(JoinError::Preflight(format!(
                "a Ready Node named {} exists: join with another --node-name, or reset and delete that node first",
                options.node
            )));
        }
        Ok(found) => found.is_some(),
        Err(e) => {
            return Err(JoinError::Preflight(format!(
                "reading Node {}: {e}",
                options.node
            )));
        }
    };
    if let Some(pool) = &options.pool {
        let gvk = kube::core::GroupVersionKind::gvk("apps.openyurt.io", "v1beta2", "NodePool");
        let resource = kube::core::ApiResource::from_gvk_with_plural(&gvk, "nodepools");
        let pools: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &resource);
        let found = read_through(deadline, || pools.get_opt(pool.as_str()))
            .await
            .map_err(|e| JoinError::Preflight(format!("reading NodePool {pool}: {e}")))?;
        let Some(found) = found else {
            return Err(JoinError::Preflight(format!(
                "NodePool {pool} does not exist: create it first (`kubectl get nodepools` lists them)"
            )));
        };
        let kind = found.data["spec"]["type"].as_str().unwrap_or("Edge");
        if kind == "Cloud" && options.node_type == NodeType::Edge {
            return Err(JoinError::Preflight(format!(
                "NodePool {pool} is a Cloud pool: join it with --node-type plain"
            )));
        }
        // Its pool label would have the manager convert it at once.
        if kind != "Cloud" && options.node_type == NodeType::Plain {
            return Err(JoinError::Preflight(format!(
                "NodePool {pool} is an Edge pool, whose plain nodes yurt manager converts to edge nodes: join it with --node-type edge, or as a plain node without --nodepool-name"
            )));
        }
    }
    Ok(existed)
}

/// The ConfigMap in `kube-system` where kubeadm keeps the cluster's kubelet
/// configuration for kubelets of `major.minor` (key [`KUBELET_CONFIG_KEY`]).
pub fn kubelet_config_map(major: &str, minor: &str) -> String {
    // A managed cluster's minor can carry a suffix ("20+").
    let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
    format!("kubelet-config-{major}.{minor}")
}

/// The key of [`kubelet_config_map`] holding the KubeletConfiguration (YAML).
pub const KUBELET_CONFIG_KEY: &str = "kubelet";

/// Whether a cluster's KubeletConfiguration (`text`, YAML or JSON) has kubelets ask for
/// their serving certificates by CSR (`serverTLSBootstrap`, false when absent).
///
/// # Errors
/// `text` is not a KubeletConfiguration.
pub fn serves_by_csr(text: &str) -> Result<bool, String> {
    let config: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if config["kind"] != "KubeletConfiguration" {
        return Err(format!(
            "kind {} is not KubeletConfiguration",
            config["kind"]
        ));
    }
    match &config["serverTLSBootstrap"] {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::Bool(b) => Ok(*b),
        other => Err(format!("serverTLSBootstrap {other} is not a boolean")),
    }
}

/// Whether the cluster has its kubelets ask for serving certificates by CSR, as `kubeadm
/// join` learns it: from `kube-system/kubelet-config` (kubeadm 1.23 and later) or else
/// [`kubelet_config_map`] for the API server's version (earlier ones), which bootstrap
/// tokens and nodes may read. A cluster without either, or one that does not let
/// `client` read them, keeps kubeadm's default (false: kubelet serves a certificate it
/// makes itself).
///
/// # Errors
/// The API server could not be read until `deadline`, or the ConfigMap holds no
/// KubeletConfiguration.
pub async fn cluster_kubelets_serve_by_csr(
    client: &kube::Client,
    deadline: Instant,
) -> Result<bool, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let version = read_through(deadline, || client.apiserver_version())
        .await
        .map_err(|e| format!("reading the API server's version: {e}"))?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    for name in [
        "kubelet-config".to_owned(),
        kubelet_config_map(&version.major, &version.minor),
    ] {
        let found = match read_through(deadline, || maps.get_opt(&name)).await {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if status.code == 403 => None,
            Err(e) => return Err(format!("reading kube-system/{name}: {e}")),
        };
        if let Some(text) = found
            .as_ref()
            .and_then(|m| m.data.as_ref())
            .and_then(|d| d.get(KUBELET_CONFIG_KEY))
        {
            return serves_by_csr(text)
                .map_err(|e| format!("kube-system/{name} key {KUBELET_CONFIG_KEY}: {e}"));
        }
    }
    tracing::info!("no cluster kubelet configuration: kubelet serves a self-signed certificate");
    Ok(false)
}

/// Runs `read` until it succeeds, fails for good, or `deadline` passes: no connection, a
/// timeout, a 5xx or a 429 are tried again.
async fn read_through<T, F, Fut>(deadline: Instant, mut read: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = match tokio::time::timeout(left, read()).await {
            Ok(done) => done,
            // Out of time mid-request: the answer is a timeout, like a client's own.
            Err(_) => Err(kube::Error::Service(
                format!("no answer before the join's deadline ({left:?} left when asked)").into(),
            )),
        };
        match attempt {
            Err(e) if is_transient(&e) && Instant::now() + POLL < deadline => {
                tracing::info!(error = %e, "preflight: will read again");
                tokio::time::sleep(POLL).await;
            }
            done => return done,
        }
    }
}

/// Whether a failed request may succeed when tried again: no connection or a broken
/// one, a timeout, a 5xx or a 429. Refusals, bad answers and configuration errors are
/// final.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Whether `node` is Ready and, with `since`, was reported so at or after then (less a
/// second: heartbeats are written in whole seconds).
pub(crate) fn ready_since(node: &Node, since: Option<jiff::Timestamp>) -> bool {
    let heartbeat = || {
        node.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_heartbeat_time
            .as_ref()
            .map(|t| t.0)
    };
    is_ready(node)
        && since.is_none_or(|since| {
            let since = since
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(since);
            heartbeat().is_some_and(|at| at >= since)
        })
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Between two reads of the API server while waiting.
const POLL: Duration = Duration::from_millis(500);
/// Between two looks at the host's own files.
const LOCAL_POLL: Duration = Duration::from_millis(100);

/// Waits for kubelet's kubeconfig, written once its client certificate is issued (as
/// kubeadm's join does); on the deadline, names the CSR still pending.
async fn wait_bootstrapped(
    client: &kube::Client,
    files: &HostFiles,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    loop {
        if files.kubelet_bootstrapped() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending = pending_csrs(client, node, &[KUBELET_CLIENT_SIGNER], |_| true).await;
            return Err(JoinError::Phase {
                phase: "kubelet TLS bootstrap",
                reason: match pending.first() {
                    Some(name) => format!(
                        "kubelet's client certificate was not issued in time: CSR {name} is still pending (is kube-controller-manager running with its csrapproving and csrsigning controllers? `kubectl get csr {name}`)"
                    ),
                    None => format!(
                        "kubelet did not ask for the client certificate of Node {node} in time; see its log"
                    ),
                },
            });
        }
        tokio::time::sleep(LOCAL_POLL).await;
    }
}

/// Waits until Node `node` exists.
async fn wait_registered(
    client: &kube::Client,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let last = match nodes.get_opt(node.as_str()).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => "it does not exist yet".to_owned(),
            Err(e) => format!("reading it: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(JoinError::Phase {
                phase: "registration",
                reason: format!(
                    "kubelet did not register Node {node} in time ({last}); see its log"
                ),
            });
        }
        tokio::time::sleep(REGISTRATION_POLL).await;
    }
}

/// Between two reads of the Node while kubelet registers it (one join's short wait).
const REGISTRATION_POLL: Duration = Duration::from_millis(200);

/// kubelet's client certificates (kube-controller-manager approves the bootstrapping ones).
const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Serving certificates: the hub's and an edge node's kubelet's.
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The hub's serving and client certificates (our manager's csrapprover approves them).
const HUB_SIGNERS: [&str; 2] = [SERVING_SIGNER, "kubernetes.io/kube-apiserver-client"];

/// The names of `node`'s CSRs with one of `signers` that are neither approved nor denied
/// and that `keep` keeps, newest first (the bootstrap token may list CSRs: kubeadm's
/// node-bootstrapper role).
async fn pending_csrs(
    client: &kube::Client,
    node: &NodeName,
    signers: &[&str],
    keep: fn(&CertificateSigningRequest) -> bool,
) -> Vec<String> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let Ok(list) = csrs.list(&ListParams::default()).await else {
        return Vec::new();
    };
    let subject = format!("system:node:{node}");
    let mut pending: Vec<_> = list
        .items
        .into_iter()
        .filter(|c| signers.contains(&c.spec.signer_name.as_str()))
        .filter(|c| {
            c.status.as_ref().is_none_or(|s| {
                s.certificate.is_none() && s.conditions.as_ref().is_none_or(Vec::is_empty)
            })
        })
        .filter(|c| csr_subject(c).as_deref() == Some(subject.as_str()) && keep(c))
        .collect();
    pending.sort_by_key(|c| std::cmp::Reverse(c.metadata.creation_timestamp.clone().map(|t| t.0)));
    pending
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

fn csr_subject(csr: &CertificateSigningRequest) -> Option<String> {
    csr_request(csr).map(|(subject, _)| subject)
}

/// The subject (common name) and the IP addresses a CSR's request asks for.
fn csr_request(csr: &CertificateSigningRequest) -> Option<(String, Vec<std::net::IpAddr>)> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, pem) = x509_parser::pem::parse_x509_pem(&csr.spec.request.0).ok()?;
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&pem.contents).ok()?;
    let subject = req
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_owned)?;
    let mut ips = Vec::new();
    for extension in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                if let GeneralName::IPAddress(bytes) = name {
                    match bytes.len() {
                        4 => {
                            ips.extend(<[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from))
                        }
                        16 => ips.extend(
                            <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(std::net::IpAddr::from),
                        ),
                        _ => {}
                    }
                }
            }
        }
    }
    Some((subject, ips))
}

/// The address the hub serves pods on (its `--hub-pod-address` default, which a join
/// keeps), and which its serving certificate names: what tells the hub's serving CSR
/// from kubelet's (same signer, same requester).
const HUB_POD_ADDRESS: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 2, 1));

/// Whether `csr` is one of the hub's: any of its client CSRs, a serving one only if it
/// names the hub's pod address (an edge node's kubelet asks for serving certificates
/// with the same signer and as the same user).
pub fn is_hub_csr(csr: &CertificateSigningRequest) -> bool {
    csr.spec.signer_name != SERVING_SIGNER
        || csr_request(csr).is_some_and(|(_, ips)| ips.contains(&HUB_POD_ADDRESS))
}

/// The hub's readiness endpoint, on the host's loopback (this process runs in the host).
pub const HUB_READYZ: &str = "127.0.0.1:10267";

/// Waits for the hub's `/v1/readyz` to answer 200; on the deadline, quotes its answer and
/// names the hub's CSRs still pending.
pub(crate) async fn wait_hub_ready(
    client: &kube::Client,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    loop {
        let last = match readyz().await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let pending = pending_csrs(client, node, &HUB_SIGNERS, is_hub_csr).await;
            let csrs = if pending.is_empty() {
                String::new()
            } else {
                format!(
                    "; its CSRs {} are still pending (is yurt manager running with its csrapprover? `kubectl get csr`)",
                    pending.join(", ")
                )
            };
            return Err(JoinError::Phase {
                phase: "hub",
                reason: format!(
                    "yurt hub was not ready in time; its readyz (http://{HUB_READYZ}/v1/readyz) last said: {last}{csrs}"
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the hub answers a read of Node `node` on kubelet's port (from the API
/// server, or from its cache once it holds the Node). A hub that started while the API
/// server was restarting stays offline until two health probes passed (up to 20 s),
/// and from an empty cache: kubelet restarted behind it then fails to read its Node and
/// reports the Node NotReady.
async fn wait_hub_serves_node(node: &NodeName, deadline: Instant) -> Result<(), JoinError> {
    let failed = |reason: String| JoinError::Phase {
        phase: "hub",
        reason,
    };
    let url = files::HUB_LOCAL
        .parse()
        .map_err(|e| failed(format!("{}: {e}", files::HUB_LOCAL)))?;
    let mut config = kube::Config::new(url);
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    let client = kube::Client::try_from(config).map_err(|e| failed(e.to_string()))?;
    let nodes: Api<Node> = Api::all(client);
    loop {
        let last = match nodes.get(node.as_str()).await {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "yurt hub did not serve Node {node} to local clients in time (is it online? `yurt fleet status`, its log); its last answer: {last}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One GET of the hub's readyz: status and body. Written by hand: one request line on
/// the loopback does not need an HTTP client stack.
async fn readyz() -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(HUB_READYZ).await?;
        s.write_all(b"GET /v1/readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.take(64 * 1024).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "readyz did not answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((code, body))
}

pub(crate) async fn wait_ready(
    client: &kube::Client,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    wait_ready_since(client, node, None, deadline).await
}

/// Waits for Node `node` to be Ready; with `since`, Ready as kubelet reported it at or
/// after then (its heartbeat, written with the host's clock, as `since` is; in whole
/// seconds, hence the second's slack).
async fn wait_ready_since(
    client: &kube::Client,
    node: &NodeName,
    since: Option<jiff::Timestamp>,
    deadline: Instant,
) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let got = nodes.get_opt(node.as_str()).await;
        if let Ok(Some(n)) = &got
            && ready_since(n, since)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = match got {
                Ok(Some(n)) => n
                    .status
                    .and_then(|s| s.conditions)
                    .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
                    .map_or_else(
                        || "no Ready condition yet".to_owned(),
                        |c| format!("Ready={} ({})", c.status, c.message.unwrap_or_default()),
                    ),
                Ok(None) => "the Node does not exist".to_owned(),
                Err(e) => format!("reading it: {e}"),
            };
            return Err(JoinError::Phase {
                phase: "node",
                reason: format!("Node {node} was not Ready in time: {why}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
