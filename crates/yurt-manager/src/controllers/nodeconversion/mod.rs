//! The yurtnodeconversion controller (reference/openyurt.md §8.3, OpenYurt 1.7's
//! label-driven conversion): the pool label converts a node, its removal reverts it.
//!
//! - A node with `apps.openyurt.io/nodepool` naming an Edge pool and without
//!   `openyurt.io/is-edge-worker=true` is **converted**; a node with `is-edge-worker=true`
//!   and no pool label is **reverted**. Cloud pools are skipped; a pool that does not
//!   exist yet is waited for, and so is a node that is not Ready (the Job needs its
//!   kubelet; a Node object nothing runs on is never touched).
//! - The node is cordoned (unless it already was: then it stays so afterwards), its
//!   condition `YurtNodeConversionFailed` set False with reason `Converting`/`Reverting`,
//!   and Job `kube-system/node-servant-conversion-<node>` (label
//!   `openyurt.io/conversion-node`, the direction in annotation
//!   `openyurt.io/conversion-action`) runs `yurt node-servant convert|revert` on the node:
//!   privileged, host network and PID, the host's `/` at `/openyurt`, entered with
//!   `chroot` to run the host's own `yurt` (`yurt_core::host::HOST_LINKS`).
//! - A succeeded Job: `is-edge-worker=true` and `topology.kubernetes.io/zone=<pool>` (if
//!   absent) after a convert; both removed after a revert (the zone only if it names a
//!   pool); reason `Converted`/`Reverted`; uncordoned; the Job deleted. The labels are
//!   written before the Job goes, so an interrupted finish is completed by the next
//!   reconcile, which then compares the labels again: a label added and removed while
//!   a convert ran ends in a revert, one Job after the other, never two at once.
//! - A failed Job: status True with reason `ConvertFailed`/`RevertFailed` and the Job's
//!   message; the node stays cordoned; the Job stays (no retry loop, OpenYurt #2551)
//!   until the labels ask for the other direction or an admin deletes it to retry.
//!   The servant restores the host when a convert fails, and a failed convert whose
//!   pool label is then removed is reverted all the same (a half-done convert must
//!   revert cleanly, OpenYurt #609).
//! - Beyond upstream: one retry-free Job whose deadline is the servant's timeout
//!   (`--node-conversion-timeout`) plus two minutes, and a servant that restores a host
//!   it failed to convert. The Job of a Node deleted meanwhile (a host reset or removed
//!   mid-conversion) is deleted too ([`ORPHAN_SWEEP`]): no later node of that name
//!   inherits a stale "job already exists".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yurt_api::apps::NodePoolType;
use yurt_api::apps::v1beta2::NodePool;
use yurt_api::labels::{IS_EDGE_WORKER, NODE_POOL, TOPOLOGY_ZONE};

use crate::metrics::ManagerMetrics;

/// The controller's name for `--controllers`.
pub const NAME: &str = "yurtnodeconversion";
/// Where the conversion Jobs run.
pub const NAMESPACE: &str = "kube-system";
/// Label on a conversion Job naming its node.
pub const CONVERSION_NODE: &str = "openyurt.io/conversion-node";
/// Annotation on a conversion Job naming its node in full.
pub const CONVERSION_NODE_NAME: &str = "openyurt.io/conversion-node-name";
/// Annotation on a conversion Job: `convert` or `revert`.
pub const CONVERSION_ACTION: &str = "openyurt.io/conversion-action";
/// Job annotation: the UID of the Node the Job was made for. A Node deleted and made
/// again under the same name is another node: the old one's Job is not its.
pub const CONVERSION_NODE_UID: &str = "openyurt.io/conversion-node-uid";
/// Annotation on a node this controller cordoned (it uncordons only such a node).
pub const CORDONED_BY_CONVERSION: &str = "openyurt.io/conversion-cordoned";
/// The node condition reporting conversions.
pub const CONDITION: &str = "YurtNodeConversionFailed";
/// The host's own `yurt`, as the Job sees it once it has entered the host's `/`.
const HOST_YURT: &str = "/run/yurt-host/yurt";
/// Where the Job mounts the host's `/`.
const HOST_ROOT: &str = "/openyurt";
/// What the Job's deadline adds to the servant's timeout: the servant's restore of a
/// failed convert (two minutes, `yurt_adm::servant::RESTORE_TIMEOUT`) and a minute for
/// the pod to start.
const JOB_SLACK: Duration = Duration::from_secs(180);
/// How long the servant has between SIGTERM (the Job's deadline, its pod deleted) and
/// SIGKILL: an interrupted convert restores the host first (at most two minutes,
/// `yurt_adm::servant::RESTORE_TIMEOUT`), plus half a minute.
pub const SERVANT_GRACE: Duration = Duration::from_secs(150);

/// How often Jobs whose Node is gone are looked for (a deleted Node reconciles nothing,
/// so its Job's end would not either).
pub const ORPHAN_SWEEP: Duration = Duration::from_secs(30);

/// The node a conversion Job is for: its annotation, else its label (a short name).
pub fn job_node(job: &Job) -> Option<&str> {
    job.annotations()
        .get(CONVERSION_NODE_NAME)
        .or_else(|| job.labels().get(CONVERSION_NODE))
        .map(String::as_str)
}

/// Whether `job` was made for the Node whose UID is `uid`. A Job recording no UID (made
/// by an older manager) is taken to be the node's.
pub fn made_for(job: &Job, uid: &str) -> bool {
    job.annotations()
        .get(CONVERSION_NODE_UID)
        .is_none_or(|recorded| recorded == uid)
}

/// The Jobs among `jobs` whose node does not exist, or is another Node of the same name
/// (`uid_of`: the UID of the Node of that name, `None` when there is none).
pub fn orphaned(jobs: &[Arc<Job>], uid_of: impl Fn(&str) -> Option<String>) -> Vec<&Arc<Job>> {
    jobs.iter()
        .filter(|job| {
            job_node(job).is_some_and(|node| uid_of(node).is_none_or(|uid| !made_for(job, &uid)))
        })
        .collect()
}

/// Deletes, every [`ORPHAN_SWEEP`], the conversion Jobs whose Node is gone (or was made
/// again), once both stores hold a full list.
async fn sweep_orphans(
    client: kube::Client,
    jobs: Store<Job>,
    nodes: Store<Node>,
    shutdown: CancellationToken,
) {
    let api: Api<Job> = Api::namespaced(client, NAMESPACE);
    let mut every = tokio::time::interval(ORPHAN_SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let listed = async {
            jobs.wait_until_ready().await.is_ok() && nodes.wait_until_ready().await.is_ok()
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            ok = listed => if !ok { return },
        }
        let all = jobs.state();
        let uid_of = |n: &str| {
            nodes
                .get(&ObjectRef::new(n))
                .map(|node| node.uid().unwrap_or_default())
        };
        for job in orphaned(&all, uid_of) {
            let node = job_node(job).unwrap_or_default();
            match delete_job(&api, job).await {
                Ok(()) => {
                    tracing::info!(%node, job = %job.name_any(), "deleted the conversion Job of a deleted (or remade) node");
                }
                Err(e) => {
                    tracing::warn!(%node, job = %job.name_any(), error = %e, "deleting the conversion Job of a deleted node failed; trying again later");
                }
            }
        }
    }
}

/// What a node's labels ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Convert into this pool.
    Convert(String),
    /// Revert.
    Revert,
    /// Nothing (already what it should be, a Cloud pool, or the pool not there yet).
    Nothing,
    /// Wait: the pool named does not exist.
    UnknownPool(String),
}

impl Wanted {
    fn action(&self) -> Option<&'static str> {
        match self {
            Self::Convert(_) => Some("convert"),
            Self::Revert => Some("revert"),
            _ => None,
        }
    }
}

/// What `node` asks for, given the pools, and the action of a failed Job of it: after a
/// failure the host is in doubt, so the labels alone decide (the pool label converts,
/// its absence reverts), whatever `is-edge-worker` says.
pub fn wanted(
    node: &Node,
    pool_type: impl Fn(&str) -> Option<NodePoolType>,
    failed: Option<&str>,
) -> Wanted {
    let labels = node.labels();
    let edge = labels.get(IS_EDGE_WORKER).map(String::as_str) == Some("true");
    match labels.get(NODE_POOL) {
        Some(pool) if !edge || failed.is_some() => match pool_type(pool) {
            None => Wanted::UnknownPool(pool.clone()),
            Some(NodePoolType::Cloud) => Wanted::Nothing,
            Some(_) => Wanted::Convert(pool.clone()),
        },
        None if edge || failed.is_some() => Wanted::Revert,
        _ => Wanted::Nothing,
    }
}

/// How a Job ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (or not started).
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed, with the reason the Job gives.
    Failed(String),
}

/// The outcome of `job`.
pub fn outcome(job: &Job) -> Outcome {
    let Some(status) = &job.status else {
        return Outcome::Running;
    };
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return Outcome::Succeeded,
            "Failed" => {
                return Outcome::Failed(
                    [c.reason.clone(), c.message.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": "),
                );
            }
            _ => {}
        }
    }
    Outcome::Running
}

/// The longest name or label value a Job's pods can carry (the job controller labels
/// them `job-name=<Job>`).
const MAX_LABEL_VALUE: usize = 63;

/// `prefix` + `node`, or, when that is longer than a label value may be, `prefix` + the
/// node name's head + a hash of the whole name (node names may be 253 characters).
fn short(prefix: &str, node: &str) -> String {
    let whole = format!("{prefix}{node}");
    if whole.len() <= MAX_LABEL_VALUE {
        return whole;
    }
    // FNV-1a, written out: the name must stay the same across manager versions, which
    // std's hasher does not promise.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let hash = format!("{hash:016x}");
    let room = MAX_LABEL_VALUE - prefix.len() - 1 - 10;
    let head: String = node.chars().take(room).collect();
    let head = head.trim_end_matches(['.', '-']);
    format!("{prefix}{head}-{}", &hash[..10])
}

/// The conversion Job's name for `node` (`node-servant-conversion-<node>`, shortened
/// with a hash when too long for a label value).
pub fn job_name(node: &str) -> String {
    short("node-servant-conversion-", node)
}

/// The value of the Job's [`CONVERSION_NODE`] label: the node name, or a shortened one
/// (the whole name is in [`CONVERSION_NODE_NAME`]).
pub fn node_label(node: &str) -> String {
    short("", node)
}

/// The Job that converts (`pool` given) or reverts `node` (the Node whose UID is
/// `node_uid`).
///
/// # Errors
/// Never for a node name the API server accepted (the Job is JSON of our own).
pub fn job(
    node: &str,
    node_uid: &str,
    pool: Option<&str>,
    image: &str,
    timeout: Duration,
) -> Result<Job, serde_json::Error> {
    let mut servant = vec![
        "/bin/busybox".to_owned(),
        "chroot".to_owned(),
        HOST_ROOT.to_owned(),
        HOST_YURT.to_owned(),
        "node-servant".to_owned(),
    ];
    match pool {
        Some(pool) => servant.extend(["convert".to_owned(), format!("--nodepool-name={pool}")]),
        None => servant.push("revert".to_owned()),
    }
    servant.extend([
        format!("--node-name={node}"),
        format!("--timeout={}s", timeout.as_secs()),
    ]);
    let action = if pool.is_some() { "convert" } else { "revert" };
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(node),
            "namespace": NAMESPACE,
            "labels": {CONVERSION_NODE: node_label(node)},
            "annotations": {CONVERSION_ACTION: action, CONVERSION_NODE_NAME: node, CONVERSION_NODE_UID: node_uid},
        },
        "spec": {
            // A failed convert restores the host; trying again on its own would loop.
            "backoffLimit": 0,
            "activeDeadlineSeconds": (timeout + JOB_SLACK).as_secs(),
            "template": {
                "metadata": {"labels": {CONVERSION_NODE: node_label(node)}},
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "hostNetwork": true,
                    "hostPID": true,
                    "automountServiceAccountToken": false,
                    // The node is cordoned and may be tainted: the servant runs anyway.
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": SERVANT_GRACE.as_secs(),
                    "containers": [{
                        "name": "node-servant",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": servant,
                        // The servant restarts every container of the node but its own.
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        "securityContext": {"privileged": true},
                        "volumeMounts": [{"name": "host-root", "mountPath": HOST_ROOT}],
                    }],
                    "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                },
            },
        },
    }))
}

/// The node's labels after a successful `action` (`pool`: the pool it converted into;
/// `is_pool`: whether a name is a pool's); `None` means remove.
pub fn finished_labels(
    node: &Node,
    action: &str,
    is_pool: impl Fn(&str) -> bool,
) -> BTreeMap<String, Option<String>> {
    let labels = node.labels();
    let mut patch = BTreeMap::new();
    if action == "convert" {
        patch.insert(IS_EDGE_WORKER.to_owned(), Some("true".to_owned()));
        if let Some(pool) = labels.get(NODE_POOL)
            && !labels.contains_key(TOPOLOGY_ZONE)
        {
            patch.insert(TOPOLOGY_ZONE.to_owned(), Some(pool.clone()));
        }
    } else {
        patch.insert(IS_EDGE_WORKER.to_owned(), None);
        if labels.get(TOPOLOGY_ZONE).is_some_and(|z| is_pool(z)) {
            patch.insert(TOPOLOGY_ZONE.to_owned(), None);
        }
    }
    patch
}

fn condition(status: &str, reason: &str, message: &str) -> Value {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    json!({"status": {"conditions": [{
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }]}})
}

/// The action whose failure the node's condition reports (status True,
/// `ConvertFailed` or `RevertFailed`).
pub fn failed_by_condition(node: &Node) -> Option<&'static str> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION && c.status == "True")?;
    match c.reason.as_deref() {
        Some("ConvertFailed") => Some("convert"),
        Some("RevertFailed") => Some("revert"),
        _ => None,
    }
}

/// Whether the node's kubelet reports it Ready.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The reason of the node's conversion condition, if it has one.
pub fn condition_reason(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION)
        .and_then(|c| c.reason.clone())
}

struct Ctx {
    client: kube::Client,
    pools: Store<NodePool>,
    jobs: Store<Job>,
    image: String,
    timeout: Duration,
    metrics: ManagerMetrics,
}

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The Job could not be built.
    #[error("building the conversion Job: {0}")]
    Job(#[from] serde_json::Error),
}

fn word(action: &str, ing: bool) -> &'static str {
    match (action, ing) {
        ("convert", true) => "Converting",
        ("convert", false) => "Converted",
        (_, true) => "Reverting",
        (_, false) => "Reverted",
    }
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    // Until the Jobs are listed, a Job that exists would look missing: wait a moment
    // (not longer: the Jobs' watch is driven by this controller's own trigger streams,
    // which a reconcile waiting for good would hold up) and come back.
    let listed = async {
        ctx.jobs.wait_until_ready().await.is_ok() && ctx.pools.wait_until_ready().await.is_ok()
    };
    if !tokio::time::timeout(Duration::from_secs(1), listed)
        .await
        .unwrap_or(false)
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let name = node.name_any();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let current = ctx
        .jobs
        .get(&ObjectRef::new(&job_name(&name)).within(NAMESPACE));
    let uid = node.uid().unwrap_or_default();
    if let Some(job) = current.as_deref().filter(|job| !made_for(job, &uid)) {
        // The Job of an earlier Node of this name (deleted and made again before the
        // orphan sweep came by): not this node's; it goes first.
        if job.metadata.deletion_timestamp.is_none() {
            tracing::info!(node = %name, job = %job.name_any(), "deleting the conversion Job of an earlier Node of this name");
            delete_job(&jobs, job).await?;
        }
        // Its deletion, once done, reconciles the node again (the Jobs' watch).
        return Ok(Action::await_change());
    }
    let action_of = |job: &Job| {
        job.annotations()
            .get(CONVERSION_ACTION)
            .cloned()
            .unwrap_or_default()
    };
    // A failure is the failed Job's, or, once that Job is gone (deleted to start
    // over), the node's condition's.
    let failed_action = current
        .as_deref()
        .and_then(|j| matches!(outcome(j), Outcome::Failed(_)).then(|| action_of(j)))
        .or_else(|| failed_by_condition(&node).map(str::to_owned));
    let pool_type = |pool: &str| {
        ctx.pools
            .get(&ObjectRef::new(pool))
            .map(|p| p.spec.type_.clone().unwrap_or(NodePoolType::Edge))
    };
    let wanted = wanted(&node, pool_type, failed_action.as_deref());

    if let Some(job) = current {
        let action = action_of(&job);
        // A Job on its way out still has its servant (restoring the host within its
        // grace period): the next one waits for it to be gone.
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        match outcome(&job) {
            // One Job at a time: its end reconciles the node again.
            Outcome::Running => return Ok(Action::await_change()),
            Outcome::Succeeded => {
                let labels = finished_labels(&node, &action, |z| {
                    ctx.pools.get(&ObjectRef::new(z)).is_some()
                });
                let mut patch = json!({"metadata": {"labels": labels}});
                if node.annotations().contains_key(CORDONED_BY_CONVERSION) {
                    patch["spec"] = json!({"unschedulable": null});
                    patch["metadata"]["annotations"] = json!({CORDONED_BY_CONVERSION: null});
                }
                nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                let done = word(&action, false);
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Strategic(condition(
                            "False",
                            done,
                            &format!("node-servant {action} succeeded"),
                        )),
                    )
                    .await?;
                delete_job(&jobs, &job).await?;
                tracing::info!(node = %name, action = %action, "conversion finished");
                ctx.metrics.reconciled(NAME);
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Outcome::Failed(why) => {
                if wanted.action() == Some(action.as_str()) {
                    let reason = if action == "convert" {
                        "ConvertFailed"
                    } else {
                        "RevertFailed"
                    };
                    if condition_reason(&node).as_deref() != Some(reason) {
                        let message = format!(
                            "Job {NAMESPACE}/{} failed ({why}); the node stays cordoned: see the Job's pod log, fix the host, then delete the Job to try again",
                            job_name(&name)
                        );
                        nodes
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Strategic(condition("True", reason, &message)),
                            )
                            .await?;
                        tracing::warn!(node = %name, action = %action, %why, "conversion failed");
                    }
                    return Ok(Action::await_change());
                }
                // The labels now ask for something else: start over.
                delete_job(&jobs, &job).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
        }
    }

    let (pool, action) = match &wanted {
        Wanted::Convert(pool) => (Some(pool.as_str()), "convert"),
        Wanted::Revert => (None, "revert"),
        Wanted::UnknownPool(pool) => {
            tracing::info!(node = %name, %pool, "waiting for the node's pool to exist");
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Wanted::Nothing => return Ok(Action::await_change()),
    };
    // The Job needs the node's kubelet: a NotReady node (cut off, or a Node object
    // nothing runs on) waits, and its next status change reconciles it again.
    if !is_ready(&node) {
        tracing::info!(node = %name, action, "waiting for the node to be Ready to start its conversion");
        return Ok(Action::await_change());
    }
    if !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        let patch = json!({
            "metadata": {"annotations": {CORDONED_BY_CONVERSION: "true"}},
            "spec": {"unschedulable": true},
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    // The Job first: a condition saying Converting with no Job behind it (a failed
    // create) would leave the next reconcile nothing to go on.
    match jobs
        .create(
            &PostParams::default(),
            &job(&name, &uid, pool, &ctx.image, ctx.timeout)?,
        )
        .await
    {
        // Made by an earlier reconcile the store has not seen yet.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => {
            other?;
        }
    }
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(condition(
                "False",
                word(action, true),
                &format!(
                    "Job {NAMESPACE}/{} runs node-servant {action}",
                    job_name(&name)
                ),
            )),
        )
        .await?;
    tracing::info!(node = %name, action, "conversion started");
    ctx.metrics.reconciled(NAME);
    Ok(Action::await_change())
}

/// Deletes `job` in the foreground: it stays, marked for deletion, until its pod is
/// gone (its servant ended), so no next Job for the node starts beside it.
async fn delete_job(jobs: &Api<Job>, job: &Job) -> Result<(), kube::Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: job.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match jobs.delete(&job.name_any(), &params).await {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other.map(drop),
    }
}

fn error_policy(_node: Arc<Node>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(NAME);
    tracing::warn!(controller = NAME, error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// Runs until `shutdown`.
pub async fn run(inputs: super::Inputs, shutdown: CancellationToken) {
    let jobs_api: Api<Job> = Api::namespaced(inputs.client.clone(), NAMESPACE);
    let (job_store, job_writer) = kube::runtime::reflector::store();
    // Touched, not applied: a deleted Job (an admin retrying) reconciles its node too.
    let job_events = kube::runtime::reflector(
        job_writer,
        watcher(jobs_api, watcher::Config::default().labels(CONVERSION_NODE)),
    )
    .touched_objects();
    tokio::spawn(sweep_orphans(
        inputs.client.clone(),
        job_store.clone(),
        inputs.nodes.store(),
        shutdown.clone(),
    ));
    let ctx = Arc::new(Ctx {
        client: inputs.client,
        pools: inputs.pools.store(),
        jobs: job_store,
        image: inputs.node_servant_image,
        timeout: inputs.node_conversion_timeout,
        metrics: inputs.metrics,
    });
    Controller::for_stream(inputs.nodes.objects(), inputs.nodes.store())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .watches_stream(job_events, |job: Job| job_node(&job).map(ObjectRef::new))
        .watches_stream(inputs.pools.objects(), {
            let nodes = inputs.nodes.store();
            move |pool: NodePool| {
                let name = pool.name_any();
                nodes
                    .state()
                    .iter()
                    .filter(|n| n.labels().get(NODE_POOL) == Some(&name))
                    .map(|n| ObjectRef::from_obj(&**n))
                    .collect::<Vec<_>>()
            }
        })
        .run(
            super::instrumented(NAME, ctx.metrics.clone(), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|r| super::log_stream_error(NAME, r))
        .await;
}

#[cfg(test)]
mod tests;
