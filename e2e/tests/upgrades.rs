//! Edge-safe upgrades on a fleet of their own (3 edge nodes), for a YurtStaticSet and a
//! DaemonSet (`apps.openyurt.io/update-strategy`) side by side: an AdvancedRollingUpdate
//! never has more than `maxUnavailable` pods down, skips a disconnected node and
//! upgrades it when it returns (with a manager restart in the middle); OTA marks pods
//! and upgrades only the one whose node's hub is asked to. Then the manager is stopped:
//! the API server keeps serving core writes (the webhooks on core kinds fail open),
//! while writes of the manager's own kinds are refused with a message kubectl shows,
//! until it is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(1200);
const NS: &str = "yss";
const NODES: [&str; 3] = ["edge-a1", "edge-a2", "edge-a3"];
const HASH: &str = "openyurt.io/static-pod-hash";

fn static_set(version: &str, strategy: &str) -> Value {
    json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "YurtStaticSet",
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "staticPodManifest": "agent",
            "upgradeStrategy": {"type": strategy, "maxUnavailable": 1},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "agent", "image": "yurt.local/busybox:1",
                        "command": ["/bin/sh", "-c", "echo agent $VERSION; exec sleep 100000"],
                        "env": [{"name": "VERSION", "value": version}],
                        // A few seconds not Ready after each start: a rollout that
                        // overlapped two nodes would be seen doing it.
                        "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 3, "periodSeconds": 1},
                    }],
                },
            },
        },
    })
}

fn daemon_set(version: &str, strategy: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {
            "name": "agent-ds", "namespace": NS,
            "annotations": {"apps.openyurt.io/update-strategy": strategy, "apps.openyurt.io/max-unavailable": "1"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "agent-ds"}},
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                "metadata": {"labels": {"app": "agent-ds"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "agent", "image": "yurt.local/busybox:1",
                        "command": ["/bin/sh", "-c", "echo agent $VERSION; exec sleep 100000"],
                        "env": [{"name": "VERSION", "value": version}],
                        "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 3, "periodSeconds": 1},
                    }],
                },
            },
        },
    })
}

/// The DaemonSet's pods by node: (name, version, Ready, PodNeedUpgrade, terminating).
async fn daemon_pods(
    f: &TestFleet,
) -> anyhow::Result<BTreeMap<String, Vec<(String, String, bool, Option<String>, bool)>>> {
    let pods: Api<Pod> = Api::namespaced(f.client(), NS);
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels("app=agent-ds"))
        .await?
        .items
    {
        let spec = p.spec.clone().unwrap_or_default();
        let version = spec
            .containers
            .first()
            .and_then(|c| c.env.as_ref())
            .and_then(|e| e.first())
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        out.entry(spec.node_name.unwrap_or_default())
            .or_default()
            .push((
                p.metadata.name.clone().unwrap_or_default(),
                version,
                condition(&p, "Ready").as_deref() == Some("True"),
                condition(&p, "PodNeedUpgrade"),
                p.metadata.deletion_timestamp.is_some(),
            ));
    }
    Ok(out)
}

/// Waits until each of `nodes` runs exactly one DaemonSet pod, of `version`, Ready.
async fn wait_daemon(
    f: &TestFleet,
    nodes: &[&str],
    version: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("DaemonSet pods on {nodes:?} at {version}, Ready"),
        timeout,
        || async {
            let by_node = daemon_pods(f).await?;
            Ok(nodes
                .iter()
                .all(|n| {
                    by_node
                        .get(*n)
                        .is_some_and(|ps| ps.len() == 1 && ps[0].1 == version && ps[0].2)
                })
                .then_some(()))
        },
    )
    .await
}

#[derive(Debug, Clone)]
struct Mirror {
    hash: String,
    ready: bool,
    need_upgrade: Option<String>,
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == t))
        .map(|c| c.status.clone())
}

/// The static pods by node, as the cloud sees them.
async fn mirrors(f: &TestFleet) -> anyhow::Result<BTreeMap<String, Mirror>> {
    let pods: Api<Pod> = Api::namespaced(f.client(), NS);
    let mut out = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels("app=agent"))
        .await?
        .items
    {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if p.metadata.name.as_deref() != Some(&format!("agent-{node}")) {
            continue;
        }
        out.insert(
            node,
            Mirror {
                hash: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH).cloned())
                    .unwrap_or_default(),
                ready: condition(&p, "Ready").as_deref() == Some("True"),
                need_upgrade: condition(&p, "PodNeedUpgrade"),
            },
        );
    }
    Ok(out)
}

async fn current_hash(f: &TestFleet) -> anyhow::Result<String> {
    let cms: Api<ConfigMap> = Api::namespaced(f.client(), NS);
    let cm = cms.get("yurt-static-set-agent").await?;
    cm.metadata
        .annotations
        .and_then(|a| a.get(HASH).cloned())
        .context("ConfigMap without a hash")
}

/// Waits for the ConfigMap to carry a hash other than `old`, and returns it.
async fn new_hash(f: &TestFleet, old: &str) -> anyhow::Result<String> {
    wait_for(
        "the new manifest in the ConfigMap",
        Duration::from_secs(60),
        || async {
            let h = current_hash(f).await?;
            Ok((h != old).then_some(h))
        },
    )
    .await
}

async fn wait_upgraded(
    f: &TestFleet,
    nodes: &[&str],
    hash: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{nodes:?} running {hash}, Ready"),
        timeout,
        || async {
            let m = mirrors(f).await?;
            Ok(nodes
                .iter()
                .all(|n| m.get(*n).is_some_and(|p| p.hash == hash && p.ready))
                .then_some(()))
        },
    )
    .await
}

/// Samples every 250 ms, until `stop`, how many of `nodes` are Ready but have no Ready,
/// non-terminating `app` pod: the pods a rollout has taken down. A node that is not
/// Ready is not counted (its pods are marked not Ready by the node lifecycle controller
/// whatever the rollout does, and the rollout skips it). The task returns the worst
/// count seen and what that sample looked like.
fn watch_unavailable(
    f: &TestFleet,
    app: &'static str,
    nodes: &'static [&'static str],
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(usize, String)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, client) = (stop.clone(), f.client());
    let handle = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let node_api: Api<Node> = Api::all(client);
        let (mut worst, mut sample) = (0, String::new());
        let (of_app, every) = (
            ListParams::default().labels(&format!("app={app}")),
            ListParams::default(),
        );
        while !s2.load(Ordering::Acquire) {
            let listed = tokio::try_join!(pods.list(&of_app), node_api.list(&every));
            if let Ok((list, node_list)) = listed {
                let node_ready = |n: &str| {
                    node_list.items.iter().any(|node| {
                        node.metadata.name.as_deref() == Some(n)
                            && node
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                    })
                };
                let on = |n: &str| {
                    list.items
                        .iter()
                        .filter(move |p| {
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n)
                        })
                        .collect::<Vec<_>>()
                };
                let down = nodes
                    .iter()
                    .filter(|n| {
                        node_ready(n)
                            && !on(n).iter().any(|p| {
                                p.metadata.deletion_timestamp.is_none()
                                    && condition(p, "Ready").as_deref() == Some("True")
                            })
                    })
                    .count();
                if down > worst {
                    worst = down;
                    sample = nodes
                        .iter()
                        .map(|n| {
                            let pods: Vec<String> = on(n)
                                .iter()
                                .map(|p| {
                                    // The version: the DaemonSet's env value, the
                                    // static pod's hash.
                                    let version = p
                                        .spec
                                        .as_ref()
                                        .and_then(|s| s.containers.first())
                                        .and_then(|c| c.env.as_ref())
                                        .and_then(|e| e.first())
                                        .and_then(|e| e.value.clone())
                                        .or_else(|| {
                                            p.metadata.annotations.as_ref().and_then(|a| {
                                                a.get("openyurt.io/static-pod-hash").cloned()
                                            })
                                        })
                                        .unwrap_or_default();
                                    format!(
                                        "{} version={version} phase={} ready={} terminating={}",
                                        p.metadata.name.as_deref().unwrap_or(""),
                                        p.status
                                            .as_ref()
                                            .and_then(|s| s.phase.as_deref())
                                            .unwrap_or(""),
                                        condition(p, "Ready").unwrap_or_default(),
                                        p.metadata.deletion_timestamp.is_some()
                                    )
                                })
                                .collect();
                            format!("{n} (node ready {}): [{}]", node_ready(n), pods.join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (worst, sample)
    });
    (stop, handle)
}

/// POSTs an OTA upgrade request to `node`'s hub; returns the HTTP code and body.
fn hub_upgrade(f: &TestFleet, node: &str, pod: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("http://127.0.0.1:10267/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade");
    let out = f.exec(
        node,
        &["curl", "-s", "-X", "POST", "-w", "\n%{http_code}", &url],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status code from curl")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_roll_out_safely_and_the_api_works_without_the_manager() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut f = fresh(
            "e2e-yss",
            FleetSpec {
                edge_nodes: 3,
                pools: 1,
                mode: NetMode::Nat,
                timing: Timing::Fast,
                sample_app: false,
            },
        )
        .await?;
        f.kubectl(&["create", "namespace", NS])?;

        // A bad set is refused with a message kubectl shows.
        let mut bad = static_set("v0", "AdvancedRollingUpdate");
        bad["metadata"]["name"] = json!("bad");
        bad["spec"]["staticPodManifest"] = json!("../bad");
        let err = f
            .apply(&bad)
            .expect_err("an unusable manifest name is refused");
        ensure!(
            format!("{err:#}").contains("plain file name"),
            "unclear refusal: {err:#}"
        );

        f.apply(&daemon_set("v1", "AdvancedRollingUpdate"))?;

        // The set, and its manifest placed on every node (as `yurtadm join --static-pods` does).
        f.apply(&static_set("v1", "AdvancedRollingUpdate"))?;
        let h1 = new_hash(&f, "").await?;
        let cms: Api<ConfigMap> = Api::namespaced(f.client(), NS);
        let manifest = cms
            .get("yurt-static-set-agent")
            .await?
            .data
            .and_then(|d| d.get("agent").cloned())
            .context("ConfigMap without the manifest")?;
        for n in NODES {
            std::fs::write(f.static_pod_dir(n)?.join("agent.yaml"), &manifest)?;
        }
        wait_upgraded(&f, &NODES, &h1, Duration::from_secs(120)).await?;
        wait_for("status 3/3/3", Duration::from_secs(60), || async {
            let s: Value = serde_json::from_str(
                &f.kubectl(&["get", "yss", "-n", NS, "agent", "-o", "json"])?,
            )?;
            Ok((s["status"]["totalNumber"] == 3
                && s["status"]["readyNumber"] == 3
                && s["status"]["upgradedNumber"] == 3)
                .then_some(()))
        })
        .await?;

        wait_daemon(&f, &NODES, "v1", Duration::from_secs(120)).await?;

        // A rolling update, one node at a time.
        let (stop, watcher) = watch_unavailable(&f, "agent", &NODES);
        let (ds_stop, ds_watcher) = watch_unavailable(&f, "agent-ds", &NODES);
        f.apply(&static_set("v2", "AdvancedRollingUpdate"))?;
        f.apply(&daemon_set("v2", "AdvancedRollingUpdate"))?;
        let h2 = new_hash(&f, &h1).await?;
        wait_upgraded(&f, &NODES, &h2, Duration::from_secs(180)).await?;
        wait_daemon(&f, &NODES, "v2", Duration::from_secs(180)).await?;
        stop.store(true, Ordering::Release);
        ds_stop.store(true, Ordering::Release);
        let (seen, sample) = watcher.await?;
        ensure!(
            seen <= 1,
            "{seen} static pods were down at once (maxUnavailable 1): {sample}"
        );
        let (seen, sample) = ds_watcher.await?;
        ensure!(
            seen <= 1,
            "{seen} DaemonSet pods were down at once (max-unavailable 1): {sample}"
        );
        let backup = f
            .static_pod_dir("edge-a1")?
            .join("openyurtio-upgrade/agent.yaml.bak");
        ensure!(
            std::fs::read_to_string(&backup)?.contains(&h1),
            "no backup of the old manifest"
        );
        wait_for(
            "upgrade workers cleaned up",
            Duration::from_secs(60),
            || async {
                let pods: Api<Pod> = Api::namespaced(f.client(), NS);
                let workers = pods
                    .list(&ListParams::default().labels("openyurt.io/yss-upgrade-worker"))
                    .await?;
                Ok(workers.items.is_empty().then_some(()))
            },
        )
        .await?;

        // A disconnected node is skipped, the manager restarts mid-rollout, and the
        // node is upgraded once it is back.
        f.cut("edge-a3")?;
        wait_for("edge-a3 not Ready", Duration::from_secs(90), || async {
            Ok((f.node_ready("edge-a3").await? != "True").then_some(()))
        })
        .await?;
        const CONNECTED: &[&str] = &["edge-a1", "edge-a2"];
        let (stop, watcher) = watch_unavailable(&f, "agent", CONNECTED);
        let (ds_stop, ds_watcher) = watch_unavailable(&f, "agent-ds", CONNECTED);
        f.apply(&static_set("v3", "AdvancedRollingUpdate"))?;
        f.apply(&daemon_set("v3", "AdvancedRollingUpdate"))?;
        let h3 = new_hash(&f, &h2).await?;
        wait_for(
            "a first node on the new version",
            Duration::from_secs(120),
            || async {
                let m = mirrors(&f).await?;
                Ok(CONNECTED
                    .iter()
                    .any(|n| m.get(*n).is_some_and(|p| p.hash == h3))
                    .then_some(()))
            },
        )
        .await?;
        f.stop("cloud", "yurt-manager")?;
        f.start("cloud", "yurt-manager").await?;
        wait_upgraded(&f, CONNECTED, &h3, Duration::from_secs(180)).await?;
        wait_daemon(&f, CONNECTED, "v3", Duration::from_secs(180)).await?;
        stop.store(true, Ordering::Release);
        ds_stop.store(true, Ordering::Release);
        let (seen, sample) = watcher.await?;
        ensure!(
            seen <= 1,
            "{seen} connected static pods were down at once (maxUnavailable 1): {sample}"
        );
        let (seen, sample) = ds_watcher.await?;
        ensure!(
            seen <= 1,
            "{seen} connected DaemonSet pods were down at once: {sample}"
        );
        let on_disk = std::fs::read_to_string(f.static_pod_dir("edge-a3")?.join("agent.yaml"))?;
        ensure!(on_disk.contains(&h2), "the disconnected node was changed");
        let a3 = daemon_pods(&f)
            .await?
            .get("edge-a3")
            .cloned()
            .unwrap_or_default();
        ensure!(
            a3.len() == 1 && a3[0].1 == "v2" && !a3[0].4,
            "the disconnected node's DaemonSet pod was touched: {a3:?}"
        );
        f.restore("edge-a3")?;
        wait_upgraded(&f, &NODES, &h3, Duration::from_secs(180)).await?;
        wait_daemon(&f, &NODES, "v3", Duration::from_secs(180)).await?;

        // OTA: pods are marked, and only the node that asks is upgraded.
        f.apply(&static_set("v4", "OTA"))?;
        f.apply(&daemon_set("v4", "OTA"))?;
        let h4 = new_hash(&f, &h3).await?;
        wait_for(
            "every static pod marked PodNeedUpgrade",
            Duration::from_secs(60),
            || async {
                let m = mirrors(&f).await?;
                Ok((m.len() == 3
                    && m.values()
                        .all(|p| p.need_upgrade.as_deref() == Some("True")))
                .then_some(()))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(
            mirrors(&f).await?.values().all(|p| p.hash == h3),
            "an OTA set upgraded a pod nobody asked for"
        );
        let (code, body) = hub_upgrade(&f, "edge-a1", "agent-edge-a2")?;
        ensure!(
            code == 403 && body.contains("not on this node"),
            "foreign pod: {code} {body}"
        );
        let (code, body) = hub_upgrade(&f, "edge-a1", "agent-edge-a1")?;
        ensure!(code == 200, "upgrade request failed: {code} {body}");
        wait_upgraded(&f, &["edge-a1"], &h4, Duration::from_secs(90)).await?;
        wait_for(
            "edge-a1's mark cleared",
            Duration::from_secs(60),
            || async {
                let m = mirrors(&f).await?;
                Ok((m
                    .get("edge-a1")
                    .and_then(|p| p.need_upgrade.clone())
                    .as_deref()
                    == Some("False"))
                .then_some(()))
            },
        )
        .await?;
        let m = mirrors(&f).await?;
        for n in ["edge-a2", "edge-a3"] {
            let p = m.get(n).context("static pod missing")?;
            ensure!(
                p.hash == h3 && p.need_upgrade.as_deref() == Some("True"),
                "{n} changed without asking: {p:?}"
            );
        }
        let (code, body) = hub_upgrade(&f, "edge-a1", "agent-edge-a1")?;
        ensure!(
            code == 400 && body.contains("no pending upgrade"),
            "second request: {code} {body}"
        );
        let (code, _) = hub_upgrade(&f, "edge-a1", "nothing-here")?;
        ensure!(code == 404, "unknown pod: {code}");

        // The DaemonSet under OTA: every pod marked, edge-a2 asks, only its pod is replaced.
        wait_for(
            "every DaemonSet pod marked PodNeedUpgrade",
            Duration::from_secs(60),
            || async {
                let by_node = daemon_pods(&f).await?;
                Ok((by_node.len() == 3
                    && by_node
                        .values()
                        .all(|ps| ps.iter().all(|p| p.3.as_deref() == Some("True"))))
                .then_some(()))
            },
        )
        .await?;
        let a2_pod = daemon_pods(&f)
            .await?
            .get("edge-a2")
            .and_then(|ps| ps.first().cloned())
            .context("no pod on edge-a2")?;
        let (code, body) = hub_upgrade(&f, "edge-a2", &a2_pod.0)?;
        ensure!(code == 200, "DaemonSet pod upgrade failed: {code} {body}");
        wait_daemon(&f, &["edge-a2"], "v4", Duration::from_secs(90)).await?;
        let by_node = daemon_pods(&f).await?;
        for n in ["edge-a1", "edge-a3"] {
            let ps = by_node.get(n).cloned().unwrap_or_default();
            ensure!(
                ps.len() == 1 && ps[0].1 == "v3" && ps[0].3.as_deref() == Some("True"),
                "{n}'s DaemonSet pod changed without asking: {ps:?}"
            );
        }

        // The manager down: core writes go on, the manager's kinds are refused clearly.
        f.stop("cloud", "yurt-manager")?;
        f.kubectl(&["label", "node", "edge-a1", "yss-test=down"])?;
        f.kubectl(&[
            "create",
            "configmap",
            "-n",
            NS,
            "while-down",
            "--from-literal=a=b",
        ])?;
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "while-down", "namespace": NS},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}],
        }))?;
        let pool = json!({
            "apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool",
            "metadata": {"name": "while-down"}, "spec": {"type": "Edge"},
        });
        let err = f
            .apply(&pool)
            .expect_err("NodePool writes need the manager");
        ensure!(
            format!("{err:#}").contains("failed calling webhook"),
            "unclear refusal: {err:#}"
        );
        f.start("cloud", "yurt-manager").await?;
        wait_for(
            "NodePool accepted again",
            Duration::from_secs(60),
            || async { Ok(f.apply(&pool).is_ok().then_some(())) },
        )
        .await?;
        Ok(())
    })
    .await
    .context("test did not finish in time")?
}
