//! Scenarios that do not disturb the fleet, on the shared fleet (4 edge nodes in 2 pools,
//! nat mode: everything from the cloud to an edge host goes through the tunnel), with kubectl 1.20 (built from source) and the installed kubectl.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use yurt_testkit::{TestFleet, shared, wait_for};

/// Bound for a whole test, fleet start included.
const TEST_TIMEOUT: Duration = Duration::from_secs(420);
const POD_TIMEOUT: Duration = Duration::from_secs(120);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

async fn wait_pod_running(f: &TestFleet, ns: &str, name: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(f.client(), ns);
    wait_for(
        &format!("pod {ns}/{name} Running and Ready"),
        POD_TIMEOUT,
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await?;
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                Ok(ready.then_some(p))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_ready_with_pool_labels_and_planned_pod_cidrs() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let nodes: Api<Node> = Api::all(f.client());
        let list = nodes.list(&ListParams::default()).await?;
        for edge in &f.fleet().plan().edges {
            let node = list
                .items
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(edge.name.as_str()))
                .with_context(|| format!("node {} missing", edge.name))?;
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let pool = &f.fleet().plan().pools[edge.pool].name;
            assert_eq!(
                labels.get("apps.openyurt.io/nodepool").map(String::as_str),
                Some(pool.as_str())
            );
            assert_eq!(
                labels.get("openyurt.io/is-edge-worker").map(String::as_str),
                Some("true")
            );
            assert_eq!(
                node.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
                Some(edge.pod_cidr.to_string())
            );
            assert_eq!(
                f.node_ready(edge.name.as_str()).await?,
                "True",
                "{}",
                edge.name
            );
        }
        // The hub marks each autonomous edge node with its Autonomy condition.
        for edge in &f.fleet().plan().edges {
            let name = edge.name.to_string();
            wait_for(
                &format!("Autonomy=True on {name}"),
                Duration::from_secs(90),
                || {
                    let nodes = nodes.clone();
                    let name = name.clone();
                    async move {
                        let node = nodes.get(&name).await?;
                        Ok(node
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Autonomy" && c.status == "True")
                            .then_some(()))
                    }
                },
            )
            .await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_spread_over_both_pools_becomes_available() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let ns = "e2e-spread";
        f.fresh_namespace(ns)?;
        f.apply(&serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "spread", "namespace": ns},
                "spec": {
                    "replicas": 4,
                    "selector": {"matchLabels": {"app": "spread"}},
                    "template": {
                        "metadata": {"labels": {"app": "spread"}},
                        "spec": {
                            "topologySpreadConstraints": [{
                                "maxSkew": 1,
                                "topologyKey": "apps.openyurt.io/nodepool",
                                "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"app": "spread"}},
                            }],
                            "containers": [{"name": "c", "image": "yurt.local/busybox:1", "command": ["sleep", "3600"]}],
                            "terminationGracePeriodSeconds": 0,
                        }
                    }
                }
            }),
        )?;
        f.kubectl(&["rollout", "status", "deployment/spread", "-n", ns, "--timeout=120s"])?;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(f.client(), ns);
        wait_for("deployment spread Available", POD_TIMEOUT, || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("spread").await?;
                let available = d
                    .status
                    .and_then(|s| s.conditions)
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Available" && c.status == "True"));
                Ok(available.then_some(()))
            }
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(f.client(), ns);
        let list = pods.list(&ListParams::default().labels("app=spread")).await?;
        let plan = f.fleet().plan();
        let mut per_pool = std::collections::BTreeMap::<String, usize>::new();
        for p in &list.items {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).context("pod not scheduled")?;
            let edge = plan.edge(&node).with_context(|| format!("{node} is not an edge node"))?;
            *per_pool.entry(plan.pools[edge.pool].name.to_string()).or_default() += 1;
        }
        assert_eq!(per_pool.get("pool-a"), Some(&2), "{per_pool:?}");
        assert_eq!(per_pool.get("pool-b"), Some(&2), "{per_pool:?}");
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}

/// A pod that logs a numbered line every second and serves "pf-ok" on port 8080.
fn chatty_pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "c", "image": "yurt.local/busybox:1",
                "command": ["sh", "-c", "echo pf-ok > /var/www/index.html; httpd -p 8080 -h /var/www; i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
            "terminationGracePeriodSeconds": 0,
        }
    })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stdout lines of a child, read on a thread.
fn lines(child: &mut Child) -> anyhow::Result<std::sync::mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Waits for a line that satisfies `want`, within `timeout`.
fn read_until(
    rx: &std::sync::mpsc::Receiver<String>,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(e) => bail!("no wanted line within {timeout:?} ({e}); saw {seen:?}"),
        }
    }
}

/// logs, logs -f, exec and port-forward with one kubectl binary.
async fn kubectl_streams_work(
    f: &TestFleet,
    kubectl: impl Fn() -> Command,
    ns: &str,
) -> anyhow::Result<()> {
    f.fresh_namespace(ns)?;
    let node = "edge-b2";
    f.apply(&chatty_pod(ns, "chatty", node))?;
    wait_pod_running(f, ns, "chatty").await?;
    let run = |args: &[&str]| yurt_testkit::run_checked(kubectl().args(args));

    wait_for(
        "`kubectl logs` to show the first line",
        Duration::from_secs(30),
        || async {
            Ok(run(&["logs", "-n", ns, "chatty"])?
                .contains("line 0")
                .then_some(()))
        },
    )
    .await?;

    let follow = kubectl()
        .args(["logs", "-f", "-n", ns, "chatty", "--since=1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut follow = Killed(follow);
    let followed = lines(&mut follow.0)?;
    let first = read_until(&followed, Duration::from_secs(20), |l| {
        l.starts_with("line ")
    })?;
    let n: u64 = first.trim_start_matches("line ").parse()?;
    read_until(&followed, Duration::from_secs(20), |l| {
        l.trim_start_matches("line ")
            .parse::<u64>()
            .is_ok_and(|m| m >= n + 2)
    })
    .context("`kubectl logs -f` did not stream new lines")?;
    drop(follow);

    assert_eq!(
        run(&["exec", "-n", ns, "chatty", "--", "sh", "-c", "echo hi"])?,
        "hi\n"
    );

    let pf = kubectl()
        .args(["port-forward", "-n", ns, "pod/chatty", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut pf = Killed(pf);
    let forwarded = lines(&mut pf.0)?;
    let line = read_until(&forwarded, Duration::from_secs(20), |l| {
        l.starts_with("Forwarding from 127.0.0.1:")
    })?;
    let port: u16 = line
        .trim_start_matches("Forwarding from 127.0.0.1:")
        .split_whitespace()
        .next()
        .context("no port")?
        .parse()?;
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    ensure!(body.contains("pf-ok"), "port-forward answered {body:?}");
    drop(pf);
    f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_logs_follow_exec_and_port_forward_reach_an_edge_pod() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let kubectl = || f.fleet().kubectl();
        kubectl_streams_work(&f, kubectl, "e2e-kubectl-120").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_kubectl_logs_follow_exec_and_port_forward_reach_an_edge_pod()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let kubectl = || f.installed_kubectl();
        kubectl_streams_work(&f, kubectl, "e2e-kubectl-new").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_services_answer_in_their_pool_and_nat_sites_do_not_reach_each_other()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let svc_ip =
            |name: &str| f.kubectl(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"]);
        let (a, b) = (svc_ip("web-pool-a")?, svc_ip("web-pool-b")?);
        // Each site sits behind its own NAT: a pod reaches its own pool's Service, and
        // the other site's pods (the other Service's endpoints) are out of its reach, as
        // between real sites without a cross-site network. (`routed` fleets reach
        // across: `fault_fleets::routed_fleet_...`.)
        for (pool, own, other) in [("pool-a", &a, &b), ("pool-b", &b, &a)] {
            let pod = f.kubectl(&[
                "get",
                "pods",
                "-l",
                &yurt_cluster::sample::pod_selector(pool),
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])?;
            ensure!(!pod.is_empty(), "no sample pod in {pool}");
            let out = f.kubectl(&[
                "exec",
                &pod,
                "--",
                "wget",
                "-qO-",
                &format!("http://{own}/"),
            ])?;
            ensure!(out.contains(&format!("in {pool}")), "from {pool}: {out}");
            let across = f
                .fleet()
                .kubectl()
                .args([
                    "exec",
                    &pod,
                    "--",
                    "wget",
                    "-T",
                    "3",
                    "-qO-",
                    &format!("http://{other}/"),
                ])
                .output()?;
            ensure!(
                !across.status.success(),
                "a pod in {pool} reached the other site's Service: {}",
                String::from_utf8_lossy(&across.stdout)
            );
        }
        // kube-proxy programs the same Services inside each edge host.
        let out = f.exec("edge-a2", &["wget", "-qO-", &format!("http://{a}/")])?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("in pool-a"),
            "{out:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_the_api_server_through_the_hub_with_their_service_account_token()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let ns = "e2e-token";
        f.fresh_namespace(ns)?;
        f.kubectl(&["create", "role", "pod-reader", "-n", ns, "--verb=get", "--resource=pods"])?;
        f.kubectl(&["create", "rolebinding", "pod-reader", "-n", ns, "--role=pod-reader", &format!("--serviceaccount={ns}:default")])?;
        f.apply(&chatty_pod(ns, "client", "edge-a1"))?;
        wait_pod_running(&f, ns, "client").await?;
        // kubelet (through the hub's masterservice filter) points pods at the hub.
        let env = f.kubectl(&["exec", "-n", ns, "client", "--", "sh", "-c", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"])?;
        assert_eq!(env.trim(), "169.254.2.1:10268");
        let token = f.kubectl(&["exec", "-n", ns, "client", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"])?;
        // Busybox's TLS client offers no SHA-2 signature algorithms, which rustls refuses,
        // so the pod's request is made with curl from inside the pod's host instead: same
        // address, same token, same CA as the pod's in-cluster config.
        let ca = f.fleet().paths().pki().join("ca.crt");
        let url = format!("https://169.254.2.1:10268/api/v1/namespaces/{ns}/pods/client");
        let ca_arg = ca.to_str().context("ca path")?;
        let auth = format!("Authorization: Bearer {}", token.trim());
        let with_token = f.exec("edge-a1", &["curl", "-s", "--cacert", ca_arg, "-H", &auth, &url])?;
        let pod: serde_json::Value = serde_json::from_slice(&with_token.stdout)
            .with_context(|| format!("the API should answer with the pod, got {with_token:?}"))?;
        assert_eq!(pod["metadata"]["name"], "client");
        // The hub passes the caller's identity through: without a token the same request
        // is anonymous and refused.
        let anonymous = f.exec("edge-a1", &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca_arg, &url])?;
        assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "403");
        // Pods can still use the Service address directly.
        let direct = f.kubectl(&[
            "exec", "-n", ns, "client", "--", "sh", "-c",
            &format!("wget -qO- --no-check-certificate --header \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://10.96.0.1/api/v1/namespaces/{ns}/pods/client"),
        ])?;
        let direct: serde_json::Value = serde_json::from_str(&direct).with_context(|| format!("direct answer: {direct}"))?;
        assert_eq!(direct["metadata"]["name"], "client");
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}

/// A Deployment with one pod on every edge node and a Service with `annotations`.
fn everywhere(ns: &str, name: &str, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            },
            {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "replicas": 4,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "topologySpreadConstraints": [{
                                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"app": name}},
                            }],
                            "dnsPolicy": "Default",
                            "containers": [{
                                "name": "web", "image": "yurt.local/sample-web:1",
                                "env": [
                                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                ],
                                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                            }],
                            "terminationGracePeriodSeconds": 1,
                        }
                    }
                }
            }
        ]
    })
}

/// The nodes whose pods answer `ip` from inside `host`, over many requests.
fn answering_nodes(
    f: &TestFleet,
    host: &str,
    ip: &str,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let out = f.exec(
        host,
        &[
            "sh",
            "-c",
            &format!("for i in $(seq 40); do wget -qO- http://{ip}/; done"),
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" on ").nth(1))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// How many endpoints kube-proxy (iptables mode) on `host` balances Service `service`
/// (`namespace/name`, an unnamed port) over.
fn programmed_endpoints(f: &TestFleet, host: &str, service: &str) -> anyhow::Result<usize> {
    let out = f.exec(host, &["iptables-save", "-t", "nat"])?;
    ensure!(out.status.success(), "iptables-save on {host}: {out:?}");
    // iptables-save quotes a comment with a `/` in it; accept it bare too.
    let (quoted, bare) = (
        format!("--comment \"{service}\" "),
        format!("--comment {service} "),
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
        .filter(|l| l.contains(&quoted) || l.contains(&bare))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_topology_keeps_kube_proxy_inside_the_pool_or_node() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let ns = "e2e-topology";
        f.fresh_namespace(ns)?;
        for (name, key) in [
            ("by-pool", "openyurt.io/nodepool"),
            ("by-node", "kubernetes.io/hostname"),
            ("plain", ""),
        ] {
            let annotations = if key.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::json!({"openyurt.io/topologyKeys": key})
            };
            f.apply(&everywhere(ns, name, annotations))?;
        }
        for name in ["by-pool", "by-node", "plain"] {
            f.kubectl(&[
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "-n",
                ns,
                "--timeout=120s",
            ])?;
        }
        let ip = |name: &str| {
            f.kubectl(&[
                "get",
                "svc",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
        };
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| (*s).to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (pool_ip, node_ip, plain_ip) = (ip("by-pool")?, ip("by-node")?, ip("plain")?);
        wait_for(
            "kube-proxy on edge-a1 to use only pool-a endpoints",
            Duration::from_secs(60),
            || async {
                Ok(
                    (answering_nodes(&f, "edge-a1", &pool_ip)? == set(&["edge-a1", "edge-a2"]))
                        .then_some(()),
                )
            },
        )
        .await?;
        wait_for(
            "kube-proxy on edge-b2 to use only pool-b endpoints",
            Duration::from_secs(60),
            || async {
                Ok(
                    (answering_nodes(&f, "edge-b2", &pool_ip)? == set(&["edge-b1", "edge-b2"]))
                        .then_some(()),
                )
            },
        )
        .await?;
        wait_for(
            "kube-proxy on edge-a2 to use only its own endpoint",
            Duration::from_secs(60),
            || async {
                Ok((answering_nodes(&f, "edge-a2", &node_ip)? == set(&["edge-a2"])).then_some(()))
            },
        )
        .await?;
        // Without topology kube-proxy balances over every endpoint, the other site's
        // too (which this NATed site cannot reach, so only its own pool answers).
        let plain = format!("{ns}/plain");
        wait_for(
            "a Service without topology to use every endpoint",
            Duration::from_secs(60),
            || async { Ok((programmed_endpoints(&f, "edge-a1", &plain)? == 4).then_some(())) },
        )
        .await?;
        let by_pool = programmed_endpoints(&f, "edge-a1", &format!("{ns}/by-pool"))?;
        ensure!(
            by_pool == 2,
            "kube-proxy on edge-a1 balances by-pool over {by_pool}"
        );
        ensure!(
            answering_nodes(&f, "edge-a1", &plain_ip)? == set(&["edge-a1", "edge-a2"]),
            "from behind pool-a's NAT only pool-a's endpoints answer"
        );
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_nat_mode_the_cloud_reaches_no_kubelet_directly() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let plan = f.fleet().plan();
        let cloud = plan.netns(&yurt_cluster::spec::HostId::Cloud);
        for e in &plan.edges {
            let err = yurt_cluster::netns::connect_tcp(
                &cloud,
                SocketAddr::from((e.ip, 10250)),
                Duration::from_secs(3),
            )
            .err()
            .with_context(|| format!("the cloud reached {}'s kubelet behind NAT", e.name))?;
            ensure!(
                err.kind() == std::io::ErrorKind::ConnectionRefused,
                "{}: {err}",
                e.name
            );
        }
        Ok(())
    })
    .await
}
