//! Autonomy-aware eviction with the real kube-controller-manager: an autonomous node
//! and a plain node cut off from the cloud at once; the autonomous node keeps its pod
//! (not evicted) and its endpoint ready; the plain node's pod is evicted after its
//! tolerationSeconds. Two more nodes stay connected: with every node of a zone down,
//! kube-controller-manager would stop evicting altogether ("full disruption"). A manager restart in the middle loses nothing, and after the
//! links return nothing was restarted.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the pools stay cut off (the scenario's "10 minutes", shortened: every
/// timeout of the fleet's fast timing has passed several times by then).
const CUT: Duration = Duration::from_secs(150);

fn deployment(name: &str, node: &str, toleration_seconds: Option<i64>) -> Value {
    let mut tolerations = Vec::new();
    if let Some(s) = toleration_seconds {
        for key in [
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/not-ready",
        ] {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": s}));
        }
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": tolerations,
                    "dnsPolicy": "Default",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web", "image": "yurt.local/sample-web:1",
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2},
                    }],
                }
            }
        }
    })
}

async fn only_pod(f: &TestFleet, app: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(f.client(), "default");
    let mut list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items;
    list.sort_by_key(|p| p.metadata.creation_timestamp.clone());
    list.into_iter()
        .next()
        .with_context(|| format!("no pod of {app}"))
}

fn ready_addresses(e: &Endpoints) -> (usize, usize) {
    let subsets = e.subsets.clone().unwrap_or_default();
    let ready = subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    let not_ready = subsets
        .iter()
        .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
        .sum();
    (ready, not_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autonomous_pool_keeps_its_pods_and_endpoints_while_a_plain_pool_is_evicted()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut f = fresh(
            "e2e-evict",
            FleetSpec {
                edge_nodes: 4,
                pools: 2,
                mode: NetMode::Nat,
                timing: Timing::Fast,
                sample_app: false,
            },
        )
        .await?;
        // edge-b1 is not autonomous.
        f.kubectl(&[
            "annotate",
            "node",
            "edge-b1",
            "node.openyurt.io/autonomy-duration-",
        ])?;
        f.apply(&deployment("keep", "edge-a1", None))?;
        f.apply(&deployment("evict", "edge-b1", Some(20)))?;
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "keep", "namespace": "default"},
            "spec": {"selector": {"app": "keep"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))?;
        f.kubectl(&["rollout", "status", "deployment/keep", "--timeout=180s"])?;
        f.kubectl(&["rollout", "status", "deployment/evict", "--timeout=180s"])?;
        // The manager binds the autonomous pool's pod to its node.
        wait_for(
            "keep's pod tolerates unreachability forever",
            Duration::from_secs(60),
            || async {
                let p = only_pod(&f, "keep").await?;
                let t = p.spec.and_then(|s| s.tolerations).unwrap_or_default();
                Ok(t.iter()
                    .any(|t| {
                        t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                            && t.toleration_seconds.is_none()
                    })
                    .then_some(()))
            },
        )
        .await?;
        let keep_before = only_pod(&f, "keep").await?;
        let evict_before = only_pod(&f, "evict").await?;
        let evict_t = evict_before
            .spec
            .clone()
            .and_then(|s| s.tolerations)
            .unwrap_or_default();
        ensure!(
            evict_t.iter().any(
                |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                    && t.toleration_seconds == Some(20)
            ),
            "the plain pool's pod keeps its own tolerations: {evict_t:?}"
        );

        f.cut("edge-a1")?;
        f.cut("edge-b1")?;
        let cut_at = std::time::Instant::now();
        for n in ["edge-a1", "edge-b1"] {
            let fr = &f;
            wait_for(
                &format!("{n} not Ready"),
                Duration::from_secs(90),
                || async move { Ok((fr.node_ready(n).await? != "True").then_some(())) },
            )
            .await?;
        }
        // The plain pool's pod is evicted by kube-controller-manager's taint manager.
        let evict_uid = evict_before.metadata.uid.clone();
        let evicted = wait_for(
            "the plain pool's pod evicted",
            Duration::from_secs(120),
            || {
                let (f, uid) = (&f, evict_uid.clone());
                async move {
                    let pods: Api<Pod> = Api::namespaced(f.client(), "default");
                    let list = pods
                        .list(&ListParams::default().labels("app=evict"))
                        .await?;
                    let old = list.items.iter().find(|p| p.metadata.uid == uid);
                    Ok(old
                        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                        .then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = evicted {
            // Whether the node controller tainted the node is what tells a stalled
            // taint queue (kube-controller-manager logs it only at -v=2) from a taint
            // manager that did not act.
            let node = f.kubectl(&[
                "get",
                "node",
                "edge-b1",
                "-o",
                "jsonpath={.spec.taints} {.status.conditions[?(@.type==\"Ready\")]}",
            ]);
            return Err(e.context(format!("edge-b1 taints and Ready condition: {node:?}")));
        }

        // The manager restarts in the middle: nothing it did is undone.
        f.stop("cloud", "yurt-manager")?;
        f.start("cloud", "yurt-manager").await?;

        let endpoints: Api<Endpoints> = Api::namespaced(f.client(), "default");
        let remaining = CUT.saturating_sub(cut_at.elapsed());
        tokio::time::sleep(remaining).await;
        let keep_now = only_pod(&f, "keep").await?;
        ensure!(
            keep_now.metadata.uid == keep_before.metadata.uid,
            "keep's pod was replaced"
        );
        ensure!(
            keep_now.metadata.deletion_timestamp.is_none(),
            "keep's pod was evicted"
        );
        let (ready, not_ready) = ready_addresses(&endpoints.get("keep").await?);
        ensure!(
            ready == 1 && not_ready == 0,
            "keep's endpoint is not ready: {ready} ready, {not_ready} not"
        );
        let slices = f.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=keep",
            "-o",
            "json",
        ])?;
        let slices: Value = serde_json::from_str(&slices)?;
        let ready_in_slices = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == json!(true))
            .count();
        ensure!(
            ready_in_slices == 1,
            "keep's EndpointSlice endpoint is not ready: {slices}"
        );

        f.restore("edge-a1")?;
        f.restore("edge-b1")?;
        wait_for("edge-a1 Ready again", Duration::from_secs(120), || async {
            Ok((f.node_ready("edge-a1").await? == "True").then_some(()))
        })
        .await?;
        let after = only_pod(&f, "keep").await?;
        let restarts = after
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().map(|c| c.restart_count))
            .unwrap_or(-1);
        ensure!(
            after.metadata.uid == keep_before.metadata.uid && restarts == 0,
            "keep restarted ({restarts}) or was replaced"
        );
        Ok(())
    })
    .await
    .context("test did not finish in time")?
}
