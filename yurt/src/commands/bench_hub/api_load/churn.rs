//! What changes in the cluster while a window is measured: pods created and deleted on
//! the edge nodes, Services (and so Endpoints) coming and going, and plain Node objects
//! (no kubelet behind them) that stand in for far nodes and flap.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The label a flap changes.
const FLAP_LABEL: &str = "bench.openyurt.io/flap";
/// The Deployment whose pods come and go.
const DEPLOYMENT: &str = "api-load-churn";
/// Services created and deleted in turn.
const SERVICES: usize = 3;

/// Creates `count` plain Nodes named `{prefix}-{i}`, in `pool` when given.
pub async fn create_plain_nodes(
    client: &kube::Client,
    prefix: &str,
    range: std::ops::Range<usize>,
    pool: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in range {
        let name = format!("{prefix}-{i:04}");
        let mut labels = serde_json::Map::new();
        labels.insert(FLAP_LABEL.into(), json!("0"));
        if let Some(pool) = pool {
            labels.insert(yurt_api::labels::NODE_POOL.into(), json!(pool));
        }
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            // Unschedulable: no pod lands on a node nothing runs.
            "spec": {"unschedulable": true},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        names.push(name);
    }
    Ok(names)
}

/// Deletes the plain Nodes `names`.
pub async fn delete_nodes(client: &kube::Client, names: &[String]) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in names {
        nodes.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// Changes a label on each of `names` once per `period`, spread evenly, until `stop`;
/// eight workers share the names, so the API's round trip does not cap the rate.
/// Returns how many patches were made.
pub async fn flap_nodes(
    client: kube::Client,
    names: Vec<String>,
    period: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    const WORKERS: usize = 8;
    let per_worker = names.len().div_ceil(WORKERS).max(1);
    let workers: Vec<_> = names
        .chunks(per_worker)
        .map(|chunk| {
            tokio::spawn(flap_some(
                Api::all(client.clone()),
                chunk.to_vec(),
                period,
                stop.clone(),
            ))
        })
        .collect();
    if workers.is_empty() {
        stop.cancelled().await;
    }
    let mut patches = 0;
    for w in workers {
        patches += w.await??;
    }
    Ok(patches)
}

async fn flap_some(
    nodes: Api<Node>,
    names: Vec<String>,
    period: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let gap = period / u32::try_from(names.len().max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut patches = 0u64;
    for round in 1u64.. {
        for name in &names {
            tokio::select! {
                () = stop.cancelled() => return Ok(patches),
                _ = tick.tick() => {}
            }
            let patch = json!({"metadata": {"labels": {FLAP_LABEL: round.to_string()}}});
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            patches += 1;
        }
    }
    Ok(patches)
}

/// Creates the churn Deployment (0 replicas, pods only on edge nodes).
pub async fn prepare(client: &kube::Client) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {
                "metadata": {"labels": {"app": DEPLOYMENT}},
                "spec": {
                    "nodeSelector": {yurt_api::labels::IS_EDGE_WORKER: "true"},
                    "tolerations": [{"operator": "Exists"}],
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "c", "image": yurt_cluster::image::BUSYBOX_IMAGE,
                        "command": ["sleep", "3600"],
                    }],
                }
            }
        }
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    Ok(())
}

/// Until `stop`: every 10 s the Deployment goes between 2 and 6 replicas (pods created
/// and deleted on the edge nodes, their Endpoints changing), and every 5 s one of
/// three Services selecting those pods is created or deleted. Leaves no Service and
/// no replica behind. Returns how many changes were made.
pub async fn pods_and_services(
    client: kube::Client,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client, "default");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut existing = [false; SERVICES];
    let mut changes = 0u64;
    for step in 0usize.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if step % 2 == 0 {
            let replicas = if step % 4 == 0 { 6 } else { 2 };
            let patch = json!({"spec": {"replicas": replicas}});
            deployments
                .patch(DEPLOYMENT, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let k = step % SERVICES;
        let name = format!("{DEPLOYMENT}-{k}");
        if existing[k] {
            services.delete(&name, &DeleteParams::default()).await?;
        } else {
            let svc: Service = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"selector": {"app": DEPLOYMENT}, "ports": [{"port": 80 + k}]},
            }))?;
            services.create(&PostParams::default(), &svc).await?;
        }
        existing[k] = !existing[k];
        changes += 1;
    }
    for (k, up) in existing.iter().enumerate() {
        if *up {
            services
                .delete(&format!("{DEPLOYMENT}-{k}"), &DeleteParams::default())
                .await?;
        }
    }
    let patch = json!({"spec": {"replicas": 0}});
    deployments
        .patch(DEPLOYMENT, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(changes)
}
