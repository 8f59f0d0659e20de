//! `yurt bench adm`'s conversions: a host joined as a plain node, with a pod on it,
//! converted by its pool label and reverted by removing it, each timed from the label
//! change to the node's `YurtNodeConversionFailed` condition saying `Converted` or
//! `Reverted` (the manager's Job ran `yurt node-servant` on the host); the pod must
//! restart exactly once per conversion and never be evicted (same UID). The anchor, in
//! the same run: a Job that does nothing, pinned to the same node, from creation to
//! Complete (what any conversion Job costs before the servant does its work).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use yurt_cluster::progress::{Reporter, Step};

use super::join::{self, Cli};

/// How often the node is looked at: the resolution of the times.
const LOOK: Duration = Duration::from_millis(100);
/// The longest a conversion may take here.
const LIMIT: Duration = Duration::from_secs(300);

/// One round's times.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Label added → Converted.
    pub convert: Duration,
    /// Label removed → Reverted.
    pub revert: Duration,
    /// A no-op Job on the node: created → Complete.
    pub anchor: Duration,
}

/// Joins `host` (added, bare) as a plain node with a pod, then `rounds` rounds of
/// anchor, convert and revert.
pub async fn measure(
    cli: &Cli<'_>,
    admin: &kube::Client,
    host: &str,
    pool: &str,
    join_args: &[String],
    rounds: usize,
    reporter: &dyn Reporter,
) -> anyhow::Result<Vec<Round>> {
    let step = Step::start(
        reporter,
        format!("joining {host} as a plain node with a pod"),
    );
    let mut plain: Vec<String> = join_args.to_vec();
    plain.extend(["--node-type".to_owned(), "plain".to_owned()]);
    join::join_once(cli, admin, host, &plain, 0).await?;
    step.finish();
    let pod = format!("bench-join-{host}-0");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let uid = pods.get(&pod).await?.metadata.uid;
    let mut done = Vec::new();
    for round in 0..rounds {
        let step = Step::start(
            reporter,
            format!(
                "conversion {} of {rounds}: the anchor, convert, revert",
                round + 1
            ),
        );
        let anchor = no_op_job(admin, host, round).await?;
        let restarts = restarts(&pods, &pod).await?;
        let convert = relabel(admin, host, Some(pool), "Converted").await?;
        settled(&pods, &pod, &uid, restarts + 1).await?;
        let revert = relabel(admin, host, None, "Reverted").await?;
        settled(&pods, &pod, &uid, restarts + 2).await?;
        done.push(Round {
            convert,
            revert,
            anchor,
        });
        step.finish();
    }
    Ok(done)
}

async fn restarts(pods: &Api<Pod>, pod: &str) -> anyhow::Result<i32> {
    Ok(pods
        .get(pod)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .map_or(0, |c| c.restart_count))
}

/// Waits until `pod` (still the same one: not evicted) runs again, restarted
/// `restarts` times in all; more is a failure.
async fn settled(
    pods: &Api<Pod>,
    pod: &str,
    uid: &Option<String>,
    restarts: i32,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let p = pods.get(pod).await.context("the bench pod (evicted?)")?;
        ensure!(
            p.metadata.uid == *uid,
            "pod {pod} was replaced: a conversion evicted it"
        );
        let status = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next());
        if let Some(c) = status {
            ensure!(
                c.restart_count <= restarts,
                "pod {pod} restarted {} times, not {restarts}",
                c.restart_count
            );
            if c.restart_count == restarts && c.state.is_some_and(|s| s.running.is_some()) {
                return Ok(());
            }
        }
        if Instant::now() > until {
            bail!("pod {pod} did not run again after {restarts} restarts within 2 minutes");
        }
        tokio::time::sleep(LOOK).await;
    }
}

/// Sets (`pool`) or removes the node's pool label; the time until its conversion
/// condition says `reason` and `is-edge-worker` matches.
async fn relabel(
    admin: &kube::Client,
    node: &str,
    pool: Option<&str>,
    reason: &str,
) -> anyhow::Result<Duration> {
    let nodes: Api<Node> = Api::all(admin.clone());
    let patch = serde_json::json!({"metadata": {"labels": {"apps.openyurt.io/nodepool": pool}}});
    let started = Instant::now();
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    loop {
        let n = nodes.get(node).await?;
        let edge = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("openyurt.io/is-edge-worker"))
            .is_some_and(|v| v == "true");
        let condition = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "YurtNodeConversionFailed");
        if let Some(c) = condition {
            ensure!(
                c.status != "True",
                "{node}: {} {}",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            );
            if c.reason.as_deref() == Some(reason) && edge == pool.is_some() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > LIMIT {
            bail!("{node} not {reason} within {LIMIT:?}");
        }
        tokio::time::sleep(LOOK).await;
    }
}

/// The anchor: a Job running `true` on `node`, created → Complete.
async fn no_op_job(admin: &kube::Client, node: &str, round: usize) -> anyhow::Result<Duration> {
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "default");
    let name = format!("bench-no-op-{node}-{round}");
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "hostNetwork": true,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "no-op",
                    "image": yurt_cluster::image::BUSYBOX_IMAGE,
                    "command": ["/bin/busybox", "true"],
                }],
            }},
        },
    }))?;
    let started = Instant::now();
    jobs.create(&PostParams::default(), &job).await?;
    loop {
        let j = jobs.get(&name).await?;
        let complete = j
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        if complete {
            let took = started.elapsed();
            jobs.delete(&name, &DeleteParams::background()).await?;
            return Ok(took);
        }
        if started.elapsed() > LIMIT {
            bail!("the no-op Job on {node} did not complete within {LIMIT:?}");
        }
        tokio::time::sleep(LOOK).await;
    }
}
