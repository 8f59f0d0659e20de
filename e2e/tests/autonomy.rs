//! Edge autonomy with the hub in every edge node's path: a site cut off from the cloud
//! keeps its pods running and its Services answering, survives kubelet, hub and whole
//! host restarts while offline, and resyncs when the link returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, wait_for};

async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .context("test did not finish in time")?
}

fn spec(edge_nodes: u16) -> FleetSpec {
    FleetSpec {
        edge_nodes,
        pools: 1,
        mode: NetMode::Nat,
        timing: Timing::Fast,
        sample_app: false,
    }
}

/// An app with one pod per node that tolerates unreachable nodes forever (what the
/// autonomy annotation will give pods in the orchestration milestone), and its Service.
fn deploy_app(f: &TestFleet, replicas: usize) -> anyhow::Result<()> {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "auto", "namespace": "default"},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "auto"}},
                    "template": {
                        "metadata": {"labels": {"app": "auto"}},
                        "spec": {
                            "topologySpreadConstraints": [{
                                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"app": "auto"}},
                            }],
                            "tolerations": [
                                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                            ],
                            "dnsPolicy": "Default",
                            "containers": [{
                                "name": "web", "image": "yurt.local/sample-web:1",
                                "env": [
                                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                ],
                                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2},
                            }],
                            "terminationGracePeriodSeconds": 2,
                        }
                    }
                }
            },
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "auto", "namespace": "default"},
                "spec": {"selector": {"app": "auto"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            }
        ]
    });
    f.apply(&manifest)?;
    f.kubectl(&["rollout", "status", "deployment/auto", "--timeout=180s"])?;
    Ok(())
}

/// Pods of the app as the cloud sees them: (name, uid, restart count, container id).
async fn app_pods(f: &TestFleet) -> anyhow::Result<Vec<(String, String, i32, String)>> {
    let pods: Api<Pod> = Api::namespaced(f.client(), "default");
    let list = pods.list(&ListParams::default().labels("app=auto")).await?;
    let mut out: Vec<_> = list
        .items
        .into_iter()
        .map(|p| {
            let status = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first());
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
                status.map_or(0, |c| c.restart_count),
                status
                    .and_then(|c| c.container_id.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Asks the Service from inside `host` until every pod has answered; returns the pod
/// names that answered.
async fn service_answers(
    f: &TestFleet,
    host: &str,
    ip: &str,
    expect: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    let mut last = String::new();
    while seen.len() < expect {
        let out = f.exec(host, &["wget", "-qO-", &format!("http://{ip}/")])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(pod) = text
            .strip_prefix("hello from ")
            .and_then(|t| t.split_whitespace().next())
        {
            seen.insert(pod.to_owned());
        } else {
            last = format!("{text} {}", String::from_utf8_lossy(&out.stderr));
        }
        ensure!(
            Instant::now() < deadline,
            "the Service did not answer from every pod inside {host}: {seen:?}, last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(seen)
}

/// The hub's count of requests of `verb` it forwarded upstream, from its metrics. A
/// failed scrape or a missing metric is an error, never a zero that would make "no
/// relist" pass without measuring anything.
fn upstream_requests(f: &TestFleet, host: &str, verb: &str) -> anyhow::Result<u64> {
    let out = f.exec(host, &["wget", "-qO-", "http://127.0.0.1:10267/metrics"])?;
    anyhow::ensure!(
        out.status.success(),
        "scraping the hub's metrics on {host} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("yurt_hub_requests_total{{served_by=\"upstream\",verb=\"{verb}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the hub on {host} has no metric {needle}"))
}

/// Pods whose `web` container runs on `host`, read from its containerd (works offline):
/// pod name → number of running `web` containers.
fn running_web_pods(
    f: &TestFleet,
    host: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut pods = std::collections::BTreeMap::new();
    for (pod, container) in f.running_containers(host)? {
        if container == "web" {
            *pods.entry(pod).or_insert(0) += 1;
        }
    }
    Ok(pods)
}

async fn wait_running(
    f: &TestFleet,
    host: &str,
    names: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<()> {
    let want: std::collections::BTreeMap<String, usize> =
        names.iter().map(|n| (n.clone(), 1)).collect();
    wait_for(
        &format!("the same pods running on {host} after {what}"),
        Duration::from_secs(120),
        || async {
            let now = running_web_pods(f, host)?;
            Ok((now == want).then_some(()))
        },
    )
    .await
}

async fn wait_cloud_ready(
    f: &TestFleet,
    nodes: &[&str],
    ready: bool,
    limit: Duration,
) -> anyhow::Result<()> {
    for node in nodes {
        wait_for(
            &format!("{node} Ready={ready} in the cloud"),
            limit,
            || async { Ok(((f.node_ready(node).await? == "True") == ready).then_some(())) },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cut_off_for_five_minutes_keeps_serving_and_resyncs_without_restarts()
-> anyhow::Result<()> {
    within(Duration::from_secs(900), async {
        let mut f = fresh("e2e-cut5", spec(2)).await?;
        deploy_app(&f, 2)?;
        let ip = f.kubectl(&["get", "svc", "auto", "-o", "jsonpath={.spec.clusterIP}"])?;
        let before = app_pods(&f).await?;
        let names: BTreeSet<String> = before.iter().map(|p| p.0.clone()).collect();

        let lists_before = upstream_requests(&f, "edge-a1", "list")?;
        anyhow::ensure!(
            lists_before > 0,
            "the hub forwarded no LIST before the outage: the relist check would prove nothing"
        );
        f.cut("pool-a")?;
        wait_cloud_ready(&f, &["edge-a1", "edge-a2"], false, Duration::from_secs(60)).await?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(300) {
            for host in ["edge-a1", "edge-a2"] {
                let answered = service_answers(&f, host, &ip, 2).await?;
                assert_eq!(answered, names, "inside {host}, every pod keeps serving");
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }

        f.restore("pool-a")?;
        wait_cloud_ready(&f, &["edge-a1", "edge-a2"], true, Duration::from_secs(90)).await?;
        let after = wait_for(
            "pod statuses back in the cloud",
            Duration::from_secs(60),
            || async {
                f.kubectl(&[
                    "wait",
                    "--for=condition=Ready",
                    "pod",
                    "-l",
                    "app=auto",
                    "--timeout=5s",
                ])?;
                Ok(Some(app_pods(&f).await?))
            },
        )
        .await?;
        assert_eq!(
            after, before,
            "same pods, same UIDs, same containers, no restarts"
        );
        // Clients resumed their watches from where they were: nothing was listed again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            upstream_requests(&f, "edge-a1", "list")?,
            lists_before,
            "no relist after the outage"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_restarts_kubelet_then_hub_then_reboots_and_keeps_its_pods()
-> anyhow::Result<()> {
    within(Duration::from_secs(900), async {
        let mut f = fresh("e2e-offline", spec(1)).await?;
        deploy_app(&f, 1)?;
        let ip = f.kubectl(&["get", "svc", "auto", "-o", "jsonpath={.spec.clusterIP}"])?;
        let before = app_pods(&f).await?;
        let names: BTreeSet<String> = before.iter().map(|p| p.0.clone()).collect();
        f.cut("edge-a1")?;
        wait_cloud_ready(&f, &["edge-a1"], false, Duration::from_secs(60)).await?;

        for (what, step) in [("kubelet", 0), ("yurt-hub", 1), ("reboot", 2)] {
            match step {
                0 | 1 => {
                    f.stop("edge-a1", what)?;
                    f.start("edge-a1", what).await?;
                }
                _ => f.reboot("edge-a1").await?,
            }
            // Exactly one running container per pod, the same pods as before.
            wait_running(&f, "edge-a1", &names, what).await?;
            if step < 2 {
                // A reboot gives pods new addresses the cloud has not seen yet; before that,
                // the Service keeps answering from kube-proxy's rules.
                let answered = service_answers(&f, "edge-a1", &ip, names.len())
                    .await
                    .with_context(|| format!("after restarting {what}"))?;
                assert_eq!(answered, names, "after restarting {what}");
            }
        }

        f.restore("edge-a1")?;
        wait_cloud_ready(&f, &["edge-a1"], true, Duration::from_secs(90)).await?;
        // The statuses kubelet wrote while offline reach the cloud: the new containers.
        let after = wait_for(
            "the pods' new containers reported to the cloud",
            Duration::from_secs(120),
            || async {
                let pods = app_pods(&f).await?;
                let ready = f
                    .kubectl(&[
                        "wait",
                        "--for=condition=Ready",
                        "pod",
                        "-l",
                        "app=auto",
                        "--timeout=5s",
                    ])
                    .is_ok();
                let reported =
                    pods.len() == before.len() && pods.iter().zip(&before).all(|(a, b)| a.3 != b.3);
                Ok((ready && reported).then_some(pods))
            },
        )
        .await?;
        assert_eq!(
            after.len(),
            before.len(),
            "none lost, none duplicated: {after:?}"
        );
        for ((n1, uid1, _, c1), (n2, uid2, _, c2)) in before.iter().zip(&after) {
            assert_eq!((n1, uid1), (n2, uid2), "same pod identity");
            assert_ne!(c1, c2, "{n2}: the reboot ran a new container for it");
        }
        Ok(())
    })
    .await
}
