//! `yurt adm join`: a host joins the cluster in OpenYurt 1.7's order (reference/
//! openyurt.md §8, issue 13): token discovery ([`crate::discovery`]), kubelet's TLS
//! bootstrap straight to the API server (kube-controller-manager approves and signs its
//! client certificate), the node's pool and edge labels set by kubelet at registration;
//! then, for an edge node, the hub (started from kubelet's certificate, asking for a
//! client certificate of its own and its serving certificate by CSR), its readiness,
//! and only then kubelet and kube-proxy pointed at it.
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
mod tests;

use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use yurt_core::host::{HostFacts, ServiceRequest};
use yurt_core::{NodeName, PoolName};

use crate::discovery::{ClusterInfo, Discovery};

pub use files::{HostFiles, kubelet_config};

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
    /// How long each phase may wait.
    pub timeout: Duration,
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
    // A resumed join finds its own Node: the name is held by this host's kubelet.
    let ours = files.kubelet_identity().as_deref() == Some(wanted.as_str());
    preflight(&bootstrap, options, ours).await?;

    let deadline = Instant::now() + options.timeout;
    files
        .write_ca(&cluster)
        .map_err(phase("kubelet TLS bootstrap"))?;
    if files.kubelet_bootstrapped() {
        skipped.push("kubelet TLS bootstrap");
    } else {
        progress("kubelet TLS bootstrap: kubelet asks for its client certificate");
        files
            .write_bootstrap_kubeconfig(&cluster, &options.discovery.token.to_string())
            .map_err(phase("kubelet TLS bootstrap"))?;
        files
            .write_kubelet(host.facts(), options, files::KubeletApi::Bootstrap)
            .map_err(phase("kubelet TLS bootstrap"))?;
        host.request(ServiceRequest::Restart("kubelet".into()))
            .await
            .map_err(phase("kubelet TLS bootstrap"))?;
        wait_bootstrapped(&bootstrap, files, &options.node, deadline).await?;
    }
    // The token has served: kubeadm removes it too (kubelet reads it only while its own
    // kubeconfig is missing or expired).
    files
        .remove_bootstrap_kubeconfig()
        .map_err(phase("kubelet TLS bootstrap"))?;

    if options.node_type == NodeType::Edge {
        progress("hub: starting yurt hub from kubelet's certificate");
        let changed = files
            .write_hub(host.facts(), &cluster, options)
            .map_err(phase("hub"))?;
        host.request(start_or_restart(changed, "yurt-hub"))
            .await
            .map_err(phase("hub"))?;
        wait_hub_ready(deadline).await?;
        progress("kubelet and kube-proxy: through the hub");
        let changed = files
            .write_kubelet(host.facts(), options, files::KubeletApi::ThroughHub)
            .map_err(phase("kubelet through the hub"))?;
        host.request(start_or_restart(changed, "kubelet"))
            .await
            .map_err(phase("kubelet through the hub"))?;
        let changed = files
            .write_kube_proxy(host.facts(), options)
            .map_err(phase("kube-proxy"))?;
        host.request(start_or_restart(changed, "kube-proxy"))
            .await
            .map_err(phase("kube-proxy"))?;
    } else {
        host.request(ServiceRequest::Start("kubelet".into()))
            .await
            .map_err(phase("kubelet"))?;
    }

    progress("node: waiting for it to be Ready");
    wait_ready(&bootstrap, &options.node, deadline).await?;
    files
        .mark_joined(options.node.as_str())
        .map_err(phase("finish"))?;
    Ok(Joined {
        node: options.node.to_string(),
        skipped,
    })
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
) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.get_opt(options.node.as_str()).await {
        Ok(Some(node)) if is_ready(&node) && !ours => {
            return Err(JoinError::Preflight(format!(
                "a Ready Node named {} exists: join with another --node-name, or reset and delete that node first",
                options.node
            )));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(JoinError::Preflight(format!(
                "reading Node {}: {e}",
                options.node
            )));
        }
    }
    if let Some(pool) = &options.pool {
        let gvk = kube::core::GroupVersionKind::gvk("apps.openyurt.io", "v1beta2", "NodePool");
        let resource = kube::core::ApiResource::from_gvk_with_plural(&gvk, "nodepools");
        let pools: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &resource);
        let found = pools
            .get_opt(pool.as_str())
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
    }
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

const POLL: Duration = Duration::from_millis(500);

/// Waits for kubelet's kubeconfig (written once its client certificate is issued) and
/// its Node; on the deadline, names the CSR still pending.
async fn wait_bootstrapped(
    client: &kube::Client,
    files: &HostFiles,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        if files.kubelet_bootstrapped()
            && nodes.get_opt(node.as_str()).await.ok().flatten().is_some()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending = pending_csr(client, node).await;
            return Err(JoinError::Phase {
                phase: "kubelet TLS bootstrap",
                reason: match pending {
                    Some(name) => format!(
                        "kubelet's client certificate was not issued in time: CSR {name} is still pending (is kube-controller-manager running with its csrapproving and csrsigning controllers? `kubectl get csr {name}`)"
                    ),
                    None => format!(
                        "kubelet neither asked for its client certificate nor registered Node {node} in time; see its log"
                    ),
                },
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The newest pending kubelet client CSR of `node`, by name.
async fn pending_csr(client: &kube::Client, node: &NodeName) -> Option<String> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let list = csrs.list(&ListParams::default()).await.ok()?;
    let subject = format!("system:node:{node}");
    list.items
        .into_iter()
        .filter(|c| c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet")
        .filter(|c| {
            c.status.as_ref().is_none_or(|s| {
                s.certificate.is_none() && s.conditions.as_ref().is_none_or(Vec::is_empty)
            })
        })
        .filter(|c| csr_subject(c).as_deref() == Some(subject.as_str()))
        .max_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0))
        .and_then(|c| c.metadata.name)
}

fn csr_subject(csr: &CertificateSigningRequest) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(&csr.spec.request.0).ok()?;
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&pem.contents).ok()?;
    req.certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_owned)
}

/// The hub's readiness endpoint, on the host's loopback (this process runs in the host).
pub const HUB_READYZ: &str = "127.0.0.1:10267";

/// Waits for the hub's `/v1/readyz` to answer 200; on the deadline, quotes its answer.
async fn wait_hub_ready(deadline: Instant) -> Result<(), JoinError> {
    loop {
        let last = match readyz().await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(JoinError::Phase {
                phase: "hub",
                reason: format!(
                    "yurt hub was not ready in time; its readyz (http://{HUB_READYZ}/v1/readyz) last said: {last}"
                ),
            });
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

async fn wait_ready(
    client: &kube::Client,
    node: &NodeName,
    deadline: Instant,
) -> Result<(), JoinError> {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let got = nodes.get_opt(node.as_str()).await;
        if let Ok(Some(n)) = &got
            && is_ready(n)
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
