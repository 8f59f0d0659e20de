//! `yurt node-servant convert|revert` (OpenYurt's node-servant, reference/openyurt.md
//! §8.3): turns a joined plain node into an edge node behind a hub, and back, on the
//! host it runs on. The conversion controller runs it in a Job pinned to the node; an
//! administrator may run it on the host by hand.
//!
//! - **convert**: the hub from kubelet's rotating certificate (asking for its own client
//!   and serving certificates, as a join's hub), its readiness, then kubelet and
//!   kube-proxy through it, the tunnel agent once the node is Ready (when the cluster
//!   has a tunnel, [`crate::tunnel`]); then every container of the node's pods is restarted once,
//!   so it gets the hub's `KUBERNETES_SERVICE_HOST`/`PORT` (kubelet computes them when it
//!   starts a container). A convert that fails after it changed anything restores the
//!   host (kubelet and kube-proxy straight to the API server, the hub gone) before it
//!   reports the failure.
//! - **revert**: kubelet and kube-proxy straight to the API server with kubelet's own
//!   kubeconfig (which convert never touches, so a half-done convert reverts: OpenYurt
//!   #609), the hub and the tunnel agent stopped and their files removed, the
//!   containers restarted once.
//!
//! Both are idempotent: a rerun finishes what a killed run left (the containers are
//! restarted if the last run changed kubelet's API and did not get to them), and a
//! host already in the wanted state is left alone (no container restarts).

mod containers;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use yurt_core::host::ServiceRequest;
use yurt_core::{NodeName, PoolName};

use crate::join::{Host, HostFiles, KubeletApi, NodeRole, NodeType};

pub use containers::{ContainerRef, Runtime};

/// Which way the servant turns the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Plain → edge.
    Convert,
    /// Edge → plain.
    Revert,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Self::Convert => "convert",
            Self::Revert => "revert",
        }
    }
}

/// Servant failures, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum ServantError {
    /// The host is not a joined node (nothing to convert or revert).
    #[error("{0}")]
    NotJoined(String),
    /// A step failed.
    #[error("{step}: {reason}")]
    Step {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// The run was told to stop (SIGTERM: the Job's deadline, or its pod deleted).
    #[error("interrupted (SIGTERM or SIGINT) before it finished")]
    Interrupted,
    /// A convert failed and the host was restored to a plain node.
    #[error(
        "{cause}; the host was restored: kubelet and kube-proxy talk to the API server directly again and the hub is gone"
    )]
    Restored {
        /// The failure.
        cause: Box<ServantError>,
    },
    /// A convert failed and restoring the host failed too.
    #[error(
        "{cause}; restoring the host failed too ({restore}): run `yurt node-servant revert` on it"
    )]
    RestoreFailed {
        /// The failure.
        cause: Box<ServantError>,
        /// What the restore said.
        restore: String,
    },
}

fn step(step: &'static str) -> impl Fn(String) -> ServantError {
    move |reason| ServantError::Step { step, reason }
}

/// How long restoring a host after a failed convert may take.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// What to convert or revert.
#[derive(Debug, Clone)]
pub struct ServantOptions {
    /// The node (kubelet's certificate must name it).
    pub node: NodeName,
    /// Its pool (convert only; the hub's `--nodepool-name`).
    pub pool: Option<PoolName>,
    /// How long the whole run may take.
    pub timeout: Duration,
    /// The longest a container has to stop on SIGTERM before it is killed (its pod's
    /// termination grace period if shorter).
    pub container_stop_timeout: Duration,
    /// A pod whose containers are not restarted (`namespace/name`: the servant's own).
    pub own_pod: Option<(String, String)>,
    /// Cancelled to stop the run (on SIGTERM): a convert then restores the host (bounded
    /// by [`RESTORE_TIMEOUT`], which the Job's grace period covers), a revert stops where
    /// it is and its record lets the next run finish it.
    pub interrupt: CancellationToken,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// Whether anything changed (false: the host already was what was asked).
    pub changed: bool,
    /// Containers restarted.
    pub restarted: Vec<ContainerRef>,
}

/// The record of a conversion in progress: which way, and whether the containers
/// still need their restart.
fn state_file(files: &HostFiles) -> PathBuf {
    files.dir().join("etc/yurt/conversion")
}

fn read_state(files: &HostFiles) -> Option<String> {
    std::fs::read_to_string(state_file(files))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn write_state(files: &HostFiles, state: &str) -> Result<(), String> {
    yurt_core::units::write_atomic(&state_file(files), format!("{state}\n").as_bytes())
        .map_err(|e| e.to_string())
}

/// Converts the node on this host to an edge node behind a hub.
///
/// # Errors
/// [`ServantError`] naming the step; after a change, [`ServantError::Restored`] or
/// [`ServantError::RestoreFailed`].
pub async fn convert<H: Host + Sync>(
    host: &H,
    runtime: &Runtime,
    options: &ServantOptions,
    progress: crate::join::Progress<'_>,
) -> Result<Done, ServantError> {
    let _lock = lock_host(host.files(), options, progress).await?;
    convert_locked(host, runtime, options, progress).await
}

/// Reverts the node on this host to a plain node: kubelet and kube-proxy straight to
/// the API server, the hub gone.
///
/// # Errors
/// [`ServantError`] naming the step.
pub async fn revert<H: Host + Sync>(
    host: &H,
    runtime: &Runtime,
    options: &ServantOptions,
    progress: crate::join::Progress<'_>,
) -> Result<Done, ServantError> {
    let _lock = lock_host(host.files(), options, progress).await?;
    revert_locked(host, runtime, options, progress).await
}

/// Where servants on one host take turns.
fn lock_file(files: &HostFiles) -> PathBuf {
    files.dir().join("etc/yurt/conversion.lock")
}

/// Waits (until the run's timeout, or its interrupt) for the host's servant lock: one
/// servant at a time on a host. A Job replaced while its servant still restores the
/// host (its pod has a grace period) must not have a second servant rewrite the same
/// files meanwhile. Held until the returned file is dropped (or the process ends).
async fn lock_host(
    files: &HostFiles,
    options: &ServantOptions,
    progress: crate::join::Progress<'_>,
) -> Result<std::fs::File, ServantError> {
    let fail = step("waiting for another node-servant on this host");
    let path = lock_file(files);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let deadline = Instant::now() + options.timeout;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(fail(format!("{}: {e}", path.display())));
            }
        }
        if !said {
            progress("waiting for another node-servant on this host to finish");
            said = true;
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "{} is still held after {:?}",
                path.display(),
                options.timeout
            )));
        }
        tokio::select! {
            () = options.interrupt.cancelled() => return Err(ServantError::Interrupted),
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// How long a revert reads the cluster's kubelet configuration before it keeps
/// kubelet's serving certificate as it is.
const CLUSTER_CONFIG_WAIT: Duration = Duration::from_secs(15);

/// How often a waiting servant tries the host's lock again.
const LOCK_POLL: Duration = Duration::from_secs(1);

async fn convert_locked<H: Host + Sync>(
    host: &H,
    runtime: &Runtime,
    options: &ServantOptions,
    progress: crate::join::Progress<'_>,
) -> Result<Done, ServantError> {
    let deadline = Instant::now() + options.timeout;
    let server = preflight(host.files(), &options.node)?;
    let role = NodeRole {
        node: options.node.clone(),
        pool: options.pool.clone(),
        node_type: NodeType::Edge,
    };
    let turned = until_interrupted(
        &options.interrupt,
        turn(
            host,
            runtime,
            options,
            &role,
            Direction::Convert,
            &server,
            deadline,
            progress,
        ),
    )
    .await;
    match turned {
        Ok(done) => Ok(done),
        Err(cause) => {
            progress("convert failed: restoring the host to a plain node");
            let restore_options = ServantOptions {
                timeout: RESTORE_TIMEOUT,
                // The restore runs to its end (or its timeout) whatever the signal.
                interrupt: CancellationToken::new(),
                ..options.clone()
            };
            // Only what convert changed: a convert that failed before kubelet moved
            // (the hub not ready, the usual case) only takes the hub away.
            // A full revert also when a container restart of either direction is
            // pending: the containers may hold the hub's endpoint.
            let restored = if kubelet_through_hub(host.files())
                || read_state(host.files()).is_some_and(|s| s.ends_with("restarting containers"))
            {
                Box::pin(revert_locked(host, runtime, &restore_options, progress))
                    .await
                    .map(drop)
            } else {
                remove_hub(host).await.map(drop)
            };
            match restored {
                Ok(_) => Err(ServantError::Restored {
                    cause: Box::new(cause),
                }),
                Err(e) => Err(ServantError::RestoreFailed {
                    cause: Box::new(cause),
                    restore: e.to_string(),
                }),
            }
        }
    }
}

async fn revert_locked<H: Host + Sync>(
    host: &H,
    runtime: &Runtime,
    options: &ServantOptions,
    progress: crate::join::Progress<'_>,
) -> Result<Done, ServantError> {
    let deadline = Instant::now() + options.timeout;
    let server = preflight(host.files(), &options.node)?;
    let role = NodeRole {
        node: options.node.clone(),
        pool: None,
        node_type: NodeType::Plain,
    };
    until_interrupted(
        &options.interrupt,
        turn(
            host,
            runtime,
            options,
            &role,
            Direction::Revert,
            &server,
            deadline,
            progress,
        ),
    )
    .await
}

/// `run`'s result, or [`ServantError::Interrupted`] once `interrupt` is cancelled (`run`
/// is dropped at its next await: every file it writes is written whole, and its record
/// says what a later run has to redo).
async fn until_interrupted(
    interrupt: &CancellationToken,
    run: impl std::future::Future<Output = Result<Done, ServantError>>,
) -> Result<Done, ServantError> {
    tokio::select! {
        done = run => done,
        () = interrupt.cancelled() => Err(ServantError::Interrupted),
    }
}

/// The host must be a joined node of this name whose kubelet has a kubeconfig of its
/// own: the API server it names is where the hub, or kubelet again, goes.
fn preflight(files: &HostFiles, node: &NodeName) -> Result<String, ServantError> {
    let wanted = format!("system:node:{node}");
    match files.kubelet_identity() {
        Some(identity) if identity == wanted => {}
        Some(identity) => {
            return Err(ServantError::NotJoined(format!(
                "this host's kubelet is {identity}, not {wanted}: the servant runs on the node it converts"
            )));
        }
        None => {
            return Err(ServantError::NotJoined(format!(
                "this host is not a joined node (no kubelet certificate under {}): join it with `yurt adm join` first",
                files.kubelet_pki().display()
            )));
        }
    }
    if !files.unit("kubelet").exists() {
        return Err(ServantError::NotJoined(format!(
            "this host has no kubelet unit ({}): join it with `yurt adm join` first",
            files.unit("kubelet").display()
        )));
    }
    api_server_of(files)
}

/// The API server kubelet's own kubeconfig names.
fn api_server_of(files: &HostFiles) -> Result<String, ServantError> {
    let path = files.kubelet_kubeconfig();
    let config = kube::config::Kubeconfig::read_from(&path).map_err(|e| {
        ServantError::NotJoined(format!(
            "kubelet's kubeconfig {}: {e} (without it kubelet cannot reach the API server directly)",
            path.display()
        ))
    })?;
    config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref().and_then(|c| c.server.clone()))
        .ok_or_else(|| {
            ServantError::NotJoined(format!(
                "kubelet's kubeconfig {} names no server",
                path.display()
            ))
        })
}

#[allow(clippy::too_many_arguments)]
async fn turn<H: Host + Sync>(
    host: &H,
    runtime: &Runtime,
    options: &ServantOptions,
    role: &NodeRole,
    direction: Direction,
    server: &str,
    deadline: Instant,
    progress: crate::join::Progress<'_>,
) -> Result<Done, ServantError> {
    let files = host.files();
    let facts = host.facts();
    let pending = format!("{} restarting containers", direction.word());
    let mut done = Done::default();
    let client = kubelet_client(files).await?;

    if direction == Direction::Convert {
        progress("hub: starting yurt hub from kubelet's certificate");
        let changed = files.write_hub(facts, server, role).map_err(step("hub"))?;
        let request = if changed {
            ServiceRequest::RestartNoBlock("yurt-hub".into())
        } else {
            ServiceRequest::StartNoBlock("yurt-hub".into())
        };
        done.changed |= changed;
        host.request(request).await.map_err(step("hub"))?;
        crate::join::wait_hub_ready(&client, &role.node, deadline)
            .await
            .map_err(|e| step("hub")(e.to_string()))?;
    }

    let word = match direction {
        Direction::Convert => "kubelet and kube-proxy: through the hub",
        Direction::Revert => "kubelet and kube-proxy: straight to the API server",
    };
    progress(word);
    // kubelet's unit is rewritten only when it points the other way (a plain join's
    // bootstrap unit already talks to the API server directly). The record comes
    // first: a run killed between the two finds it and restarts kubelet and the
    // containers when run again.
    // A convert killed while it wrote kubelet's files left them half the edge way.
    let half_converted = read_state(files).as_deref() == Some("convert restarting containers");
    let wrong_way = match direction {
        Direction::Convert => !kubelet_through_hub(files),
        Direction::Revert => kubelet_through_hub(files) || half_converted,
    };
    let resumed = read_state(files).as_deref() == Some(pending.as_str());
    if wrong_way {
        // An edge node's kubelet serves a certificate of the cluster CA; reverted, it
        // serves what a plain join on this cluster would, or, when the cluster cannot
        // say (a cut link: a restore must not wait on it), what it serves now.
        let (api, serving_by_csr) = match direction {
            Direction::Convert => (KubeletApi::ThroughHub, true),
            Direction::Revert => {
                let ask_until = deadline.min(Instant::now() + CLUSTER_CONFIG_WAIT);
                let serving = match crate::join::cluster_kubelets_serve_by_csr(&client, ask_until)
                    .await
                {
                    Ok(serving) => serving,
                    Err(e) => {
                        let kept = files.kubelet_serves_by_csr();
                        tracing::warn!(error = %e, kept, "the cluster's kubelet configuration could not be read: kubelet's serving certificate is kept as it is");
                        kept
                    }
                };
                (KubeletApi::Direct, serving)
            }
        };
        write_state(files, &pending).map_err(step("kubelet"))?;
        files
            .write_kubelet(facts, role, api, serving_by_csr)
            .map_err(step("kubelet"))?;
        done.changed = true;
    }
    host.request(start_or_restart(wrong_way || resumed, "kubelet"))
        .await
        .map_err(step("kubelet"))?;
    let proxy_changed = files
        .write_kube_proxy(facts, role)
        .map_err(step("kube-proxy"))?;
    done.changed |= proxy_changed;
    host.request(start_or_restart(proxy_changed || resumed, "kube-proxy"))
        .await
        .map_err(step("kube-proxy"))?;

    if direction == Direction::Revert {
        progress("hub and tunnel agent: stopping them and removing their files");
        done.changed |= remove_hub(host).await?;
    }

    progress("node: waiting for it to be Ready");
    crate::join::wait_ready(&client, &role.node, deadline)
        .await
        .map_err(|e| step("node")(e.to_string()))?;
    if direction == Direction::Convert {
        done.changed |= crate::join::tunnel_agent(host, &role.node, deadline, progress)
            .await
            .map_err(|e| match e {
                crate::join::JoinError::Phase { phase, reason } => step(phase)(reason),
                other => step("tunnel agent")(other.to_string()),
            })?;
    }

    if read_state(files).as_deref() == Some(pending.as_str()) {
        progress("containers: restarting each once, so it sees the node's API endpoint");
        let left = deadline.saturating_duration_since(Instant::now());
        let pods = pods_of(&client, &role.node, deadline)
            .await
            .map_err(step("restarting containers"))?;
        done.restarted = runtime
            .restart_containers(
                |c| {
                    let own = options
                        .own_pod
                        .as_ref()
                        .is_some_and(|(ns, pod)| c.namespace == *ns && c.pod == *pod);
                    let pod = pods.get(&(c.namespace.clone(), c.pod.clone()));
                    // Only pods kubelet restarts whatever the exit: a Never pod would
                    // fail, an OnFailure one that exits 0 on SIGTERM would end.
                    let once_only = pod.is_some_and(|p| !p.always_restarts);
                    (!own && !once_only).then(|| {
                        pod.map_or(options.container_stop_timeout, |p| {
                            p.grace.min(options.container_stop_timeout)
                        })
                    })
                },
                left,
            )
            .await
            .map_err(step("restarting containers"))?;
        done.changed = true;
    }
    let finished = match direction {
        Direction::Convert => "converted",
        Direction::Revert => "reverted",
    };
    if done.changed || read_state(files).is_some() {
        write_state(files, finished).map_err(step("finish"))?;
    }
    Ok(done)
}

/// Whether kubelet's unit points it at the hub.
fn kubelet_through_hub(files: &HostFiles) -> bool {
    std::fs::read_to_string(files.unit("kubelet"))
        .is_ok_and(|unit| unit.contains(&files.hub_kubeconfig().display().to_string()))
}

/// What a container restart needs to know of a pod.
#[derive(Debug)]
struct PodFacts {
    /// Its restart policy is Always (the default).
    always_restarts: bool,
    /// Its termination grace period.
    grace: Duration,
}

/// How long the servant waits before asking the API server again after a failed read.
const RETRY: Duration = Duration::from_secs(2);

/// The node's pods, by namespace and name, read with kubelet's credentials (the node
/// authorizer lets a node list the pods bound to it). A failed read (the link cut a
/// moment after the node was Ready) is tried again until `deadline`.
async fn pods_of(
    client: &kube::Client,
    node: &NodeName,
    deadline: Instant,
) -> Result<std::collections::HashMap<(String, String), PodFacts>, String> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client.clone());
    let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = loop {
        let attempt = tokio::time::timeout_at(deadline.into(), pods.list(&params)).await;
        match attempt {
            Ok(Ok(list)) => break list,
            Err(_) => {
                return Err("listing the node's pods: no answer before the deadline".to_owned());
            }
            Ok(Err(e)) if Instant::now() + RETRY >= deadline => {
                return Err(format!("listing the node's pods: {e}"));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "listing the node's pods failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let key = (p.metadata.namespace?, p.metadata.name?);
            let spec = p.spec?;
            Some((
                key,
                PodFacts {
                    always_restarts: spec.restart_policy.as_deref().is_none_or(|p| p == "Always"),
                    grace: Duration::from_secs(
                        spec.termination_grace_period_seconds
                            .unwrap_or(30)
                            .clamp(0, 3600)
                            .unsigned_abs(),
                    ),
                },
            ))
        })
        .collect())
}

/// Stops the hub and the tunnel agent and removes what convert wrote for them; whether
/// there was a hub.
async fn remove_hub<H: Host + Sync>(host: &H) -> Result<bool, ServantError> {
    let files = host.files();
    crate::join::remove_tunnel_agent(host)
        .await
        .map_err(step("tunnel agent"))?;
    let unit = files.unit("yurt-hub");
    let had = unit.exists();
    if had {
        host.request(ServiceRequest::Stop("yurt-hub".into()))
            .await
            .map_err(step("hub"))?;
    }
    for path in [unit, files.yurthub(), files.hub_kubeconfig()] {
        crate::reset::remove(&path).map_err(step("hub"))?;
    }
    crate::reset::delete_link(crate::reset::HUB_DUMMY).map_err(step("hub"))?;
    Ok(had)
}

fn start_or_restart(changed: bool, process: &str) -> ServiceRequest {
    if changed {
        ServiceRequest::Restart(process.to_owned())
    } else {
        ServiceRequest::Start(process.to_owned())
    }
}

/// A client with kubelet's own credentials, straight to the API server (to read the
/// Node and, for a diagnosis, CSRs).
async fn kubelet_client(files: &HostFiles) -> Result<kube::Client, ServantError> {
    crate::join::kubelet_client(files)
        .await
        .map_err(step("reading kubelet's kubeconfig"))
}
