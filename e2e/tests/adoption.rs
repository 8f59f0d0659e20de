//! OpenYurt installed onto a cluster it did not create (issue 13's adoption), on a
//! fleet of its own: `yurt up --bare` runs upstream Kubernetes only, with the cloud host
//! a control-plane node and plain workers joined with a bootstrap token; the manager is
//! installed from `yurt manager manifests` with kubectl and runs as a pod from a locally
//! built image; its webhooks answer through their Service; pool labels convert the
//! workers, a pod's own reads are served from its hub's cache offline, autonomy holds
//! through a pool cut and an offline reboot, and removing the labels reverts them. Pods
//! on the control-plane node are reachable from the sites. The tunnel is installed the
//! same way (`yurt tunnel-server manifests`, and the API server's egress pointed at its
//! socket): the converted workers, behind NAT, are reached through their agents.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use yurt_cluster::image::{CURL_IMAGE, ImageSpec};
use yurt_cluster::{FleetSpec, NetMode, Timing, UpOptions};
use yurt_testkit::{TestFleet, fresh_with, wait_for};

/// Below nextest's own limit (6 × 120 s), so a stuck test still removes its fleet and
/// keeps its logs.
const TEST_TIMEOUT: Duration = Duration::from_secs(660);
const WORKERS: [&str; 2] = ["edge-a1", "edge-a2"];
const IMAGE: &str = "yurt.local/yurt:adopt";
/// The hub's address as pods on an edge node see the API server.
const HUB_ENDPOINT: &str = "169.254.2.1:10268";

/// The header the hub marks answers from its cache with.
const SOURCE: &str = "x-yurthub-source";

/// The reader pod's GET of its ConfigMap with its own token through the API address
/// its container was given (the hub's): status line, headers and body.
fn read_through_hub(f: &TestFleet, node: &str) -> anyhow::Result<String> {
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "curl -sS -D - --max-time 20 --cacert {SA}/ca.crt -H \"Authorization: Bearer $(cat {SA}/token)\" \
         https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/configmaps/adopt-cm"
    );
    let out = f.exec_in_pod(node, "default", "reader", "curl", &["sh", "-c", &script])?;
    ensure!(
        out.status.success(),
        "curl in the reader pod: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_lowercase())
}

/// Whether an answer's status line says 200.
fn answered_200(answer: &str) -> bool {
    answer
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("200")
}

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

/// `host`'s line of `yurt fleet status`.
fn status_line(f: &TestFleet, host: &str) -> anyhow::Result<String> {
    Ok(f.yurt(&["fleet", "status"])?
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_default()
        .to_owned())
}

/// The reason of `node`'s `YurtNodeConversionFailed` condition, and its labels.
async fn conversion_of(
    nodes: &Api<Node>,
    node: &str,
) -> anyhow::Result<(Option<String>, std::collections::BTreeMap<String, String>)> {
    let n = nodes.get(node).await?;
    let reason = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "YurtNodeConversionFailed")
        .and_then(|c| c.reason);
    Ok((reason, n.metadata.labels.unwrap_or_default()))
}

/// Waits until every worker's conversion condition says `reason`.
async fn wait_conversions(f: &TestFleet, reason: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(f.client());
    wait_for(
        &format!("{WORKERS:?} {reason}"),
        Duration::from_secs(240),
        || async {
            let mut seen = Vec::new();
            for node in WORKERS {
                seen.push((node, conversion_of(&nodes, node).await?.0));
            }
            if seen.iter().all(|(_, r)| r.as_deref() == Some(reason)) {
                return Ok(Some(()));
            }
            // Said while waiting, so a timeout names where each node stands.
            let jobs = f.kubectl(&["get", "jobs", "-n", "kube-system", "-o", "wide"])?;
            anyhow::bail!("conditions {seen:?}; Jobs: {jobs}")
        },
    )
    .await
}

/// The tunnel installed as on a kubeadm cluster: the server's printed manifests
/// applied (a host-network pod on the control-plane node, presenting the API server's
/// certificate, with kubeadm's file names in the fleet's PKI folder), then kube-apiserver
/// pointed at its socket, as an administrator edits its static pod: its unit edited and
/// the process restarted.
async fn install_the_tunnel(f: &mut TestFleet) -> anyhow::Result<()> {
    let pki = f.dir().join("pki");
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let socket = path(f.dir().join("tunnel-egress/egress.sock"));
    let manifests = f.yurt(&[
        "tunnel-server",
        "manifests",
        "--image",
        IMAGE,
        "--ca-file",
        &path(pki.join("ca.crt")),
        "--cert-file",
        &path(pki.join("apiserver.crt")),
        "--key-file",
        &path(pki.join("apiserver.key")),
        "--egress-socket",
        &socket,
    ])?;
    f.kubectl_stdin(&["apply", "-f", "-"], &manifests)?;
    let pods: Api<Pod> = Api::namespaced(f.client(), "kube-system");
    let server = wait_for(
        "the tunnel server's pod Ready",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(
                    &kube::api::ListParams::default()
                        .labels("app.kubernetes.io/name=yurt-tunnel-server"),
                )
                .await?;
            let ready = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            if let Some(pod) = list.items.iter().find(|p| ready(p)) {
                return Ok(Some(pod.clone()));
            }
            // Said while waiting, so a timeout shows why it is not ready.
            let states: Vec<_> = list
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.clone())
                .collect();
            anyhow::bail!("not ready: {states:?}")
        },
    )
    .await?;
    ensure!(
        server.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("cloud"),
        "the tunnel server runs beside the API server, on the control-plane node"
    );
    let config = f.yurt(&[
        "tunnel-server",
        "egress-selector-config",
        "--egress-socket",
        &socket,
    ])?;
    let config_file = f.dir().join("egress-selector.yaml");
    std::fs::write(&config_file, config)?;
    let unit_file = f.dir().join("hosts/cloud/units/kube-apiserver.toml");
    let mut unit = yurt_core::units::Unit::load(&unit_file)?;
    unit.exec.push(format!(
        "--egress-selector-config-file={}",
        config_file.display()
    ));
    unit.save(&unit_file)?;
    f.stop("cloud", "kube-apiserver")?;
    f.start("cloud", "kube-apiserver").await?;
    Ok(())
}

#[tokio::test]
async fn openyurt_installs_onto_a_bare_cluster_converts_its_workers_and_reverts_them()
-> anyhow::Result<()> {
    // Boxed: the whole scenario's state is large.
    within(Box::pin(async {
        let spec = FleetSpec {
            edge_nodes: 2,
            pools: 1,
            mode: NetMode::Nat,
            timing: Timing::Fast,
            sample_app: false,
        };
        let mut f = fresh_with(
            "adopt",
            UpOptions {
                spec: Some(spec),
                bare: Some(true),
                ..UpOptions::default()
            },
        )
        .await?;
        let nodes: Api<Node> = Api::all(f.client());

        // Upstream Kubernetes only: no OpenYurt process, no NodePool, plain workers that
        // joined with a token (their kubelet certificates approved and signed by
        // kube-controller-manager), and a control-plane node on the cloud host.
        let cloud = status_line(&f, "cloud")?;
        ensure!(
            cloud.contains("kubelet(") && !cloud.contains("yurt-"),
            "{cloud}"
        );
        for node in WORKERS {
            let line = status_line(&f, node)?;
            ensure!(line.contains("kubelet(") && !line.contains("yurt-"), "{line}");
            let (_, labels) = conversion_of(&nodes, node).await?;
            ensure!(
                !labels.keys().any(|k| k.contains("openyurt.io")),
                "{node} is plain: {labels:?}"
            );
        }
        let control_plane = nodes.get("cloud").await?;
        ensure!(
            control_plane
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == "node-role.kubernetes.io/master" && t.effect == "NoSchedule"),
            "the cloud node is tainted as kubeadm taints a control-plane node"
        );
        let csrs = f.kubectl(&["get", "csr", "-o", "jsonpath={range .items[*]}{.spec.username} {.spec.signerName} {.status.conditions[0].type}{\"\\n\"}{end}"])?;
        ensure!(
            csrs.lines()
                .filter(|l| l.starts_with("system:bootstrap:")
                    && l.contains("kube-apiserver-client-kubelet Approved"))
                .count()
                == WORKERS.len(),
            "{csrs}"
        );
        ensure!(
            f.kubectl(&["get", "crd", "-o", "name"])?.trim().is_empty(),
            "no CRD before the install"
        );

        // The install: the manager's image from this binary, pushed to the registry
        // every node pulls from; the manifests applied with kubectl.
        let archive = f.dir().join("yurt-image.tar");
        f.yurt(&[
            "image",
            "build",
            "--with-yurt",
            "--tag",
            IMAGE,
            "-o",
            &archive.to_string_lossy(),
            "--push",
        ])?;
        let manifests = f.yurt(&["manager", "manifests", "--image", IMAGE])?;
        f.kubectl_stdin(&["apply", "-f", "-"], &manifests)?;
        let pods: Api<Pod> = Api::namespaced(f.client(), "kube-system");
        let manager = wait_for(
            "the manager's pod Ready",
            Duration::from_secs(180),
            || async {
                let list = pods
                    .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=yurt-manager"))
                    .await?;
                Ok(list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                }))
            },
        )
        .await?;
        ensure!(
            manager.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("cloud"),
            "the manager runs on the control-plane node: {:?}",
            manager.spec.and_then(|s| s.node_name)
        );
        ensure!(
            !status_line(&f, "cloud")?.contains("yurt-manager("),
            "the manager is a pod, not a process of the fleet"
        );

        // Pods on the control-plane node are reachable from the sites (the router routes
        // its pod CIDR), as add-ons on a flat pod network are.
        let cloud_pod = f.env_pod_on("cloud", "env-cloud").await?;
        let api_service = f.kubernetes_service_endpoint()?;
        for node in WORKERS {
            let seen = f.http_get(node, &cloud_pod, "/env")?;
            ensure!(
                seen == api_service,
                "{node} reaches the cloud's pod, which sees the API server's Service: {seen}"
            );
        }

        // Its webhooks answer through their Service: the configurations it registered
        // name the Service, a valid NodePool passes its conversion and validating
        // webhooks, and an invalid one is refused by the manager.
        let webhooks = f.kubectl(&[
            "get",
            "validatingwebhookconfigurations,mutatingwebhookconfigurations",
            "-o",
            "jsonpath={range .items[*].webhooks[*]}{.clientConfig.service.name} {.clientConfig.url}{\"\\n\"}{end}",
        ])?;
        ensure!(
            !webhooks.trim().is_empty()
                && webhooks
                    .lines()
                    .all(|l| l.trim() == "yurt-manager-webhook-service"),
            "{webhooks}"
        );
        let pool = |name: &str, kind: &str| {
            serde_json::json!({
                "apiVersion": "apps.openyurt.io/v1beta1",
                "kind": "NodePool",
                "metadata": {"name": name},
                "spec": {"type": kind},
            })
        };
        // Until the Service has the pod as an endpoint, the API server finds none.
        wait_for(
            "an invalid NodePool refused by the manager's webhook",
            Duration::from_secs(60),
            || async {
                match f.kubectl_stdin(
                    &["create", "-f", "-"],
                    &pool("pool-bad", "Nonsense").to_string(),
                ) {
                    Ok(out) => anyhow::bail!("an invalid pool was accepted: {out}"),
                    Err(e) => {
                        let said = format!("{e:#}");
                        if said.contains("admission webhook") && said.contains("Nonsense") {
                            Ok(Some(()))
                        } else {
                            anyhow::bail!("{said}")
                        }
                    }
                }
            },
        )
        .await?;
        wait_for("NodePool pool-a created", Duration::from_secs(60), || async {
            Ok(f.apply(&pool("pool-a", "Edge")).ok())
        })
        .await?;

        // Pool labels convert both workers (their pods restart once and then see the
        // hub), the manager's Jobs running the host's servant through the host's
        // service manager (served here without a supervisor: a crash fails the test).
        let _service_managers = f.serve_service_managers()?;
        let svc = f.kubernetes_service_endpoint()?;
        let mut ips = Vec::new();
        for node in WORKERS {
            let ip = f.env_pod_on(node, &format!("env-{node}")).await?;
            ensure!(f.env_of(node, &format!("env-{node}"), &ip).await? == (0, svc.clone()));
            ips.push(ip);
            // Autonomous once converted: the manager keeps their pods through outages.
            f.kubectl(&[
                "annotate",
                "node",
                node,
                "node.openyurt.io/autonomy-duration=0",
            ])?;
        }
        // Behind NAT, the API server cannot reach the workers' kubelets.
        let pod_a = format!("env-{}", WORKERS[0]);
        match f.kubectl(&["exec", "--request-timeout=20s", &pod_a, "--", "echo", "unreached"]) {
            Ok(out) => anyhow::bail!("before the tunnel, exec into a pod behind NAT worked: {out}"),
            Err(e) => {
                let said = format!("{e:#}");
                ensure!(
                    said.contains("dial") || said.to_lowercase().contains("timeout"),
                    "before the tunnel, exec fails reaching kubelet, not otherwise: {said}"
                );
            }
        }
        Box::pin(install_the_tunnel(&mut f)).await?;

        for node in WORKERS {
            f.kubectl(&["label", "node", node, "apps.openyurt.io/nodepool=pool-a"])?;
        }
        wait_conversions(&f, "Converted").await?;
        for (node, ip) in WORKERS.iter().zip(&ips) {
            let (_, labels) = conversion_of(&nodes, node).await?;
            ensure!(
                labels.get("openyurt.io/is-edge-worker").map(String::as_str) == Some("true"),
                "{labels:?}"
            );
            ensure!(status_line(&f, node)?.contains("yurt-hub("));
            // The servant started the node's tunnel agent (it found the server through
            // the Service the manifests made): the API server reaches kubelet behind NAT.
            ensure!(status_line(&f, node)?.contains("yurt-tunnel-agent("));
            let pod = format!("env-{node}");
            wait_for(
                &format!("kubectl exec into {pod} through the tunnel"),
                Duration::from_secs(60),
                || async {
                    Ok(f.kubectl(&["exec", &pod, "--", "echo", "through-the-tunnel"])
                        .ok()
                        .filter(|out| out.trim() == "through-the-tunnel"))
                },
            )
            .await?;
            f.kubectl(&["logs", &pod])
                .with_context(|| format!("kubectl logs of {pod} through the tunnel"))?;
            ensure!(
                f.env_of(node, &format!("env-{node}"), ip).await?
                    == (1, HUB_ENDPOINT.to_owned()),
                "{node}'s container restarted once and sees the hub"
            );
        }
        // The hub's serving CSR, told from kubelet's (same signer, same user: a converted
        // kubelet asks for its own too) by the hub's pod address.
        let csrs: Api<CertificateSigningRequest> = Api::all(f.client());
        let csrs = csrs.list(&Default::default()).await?.items;
        for node in WORKERS {
            let user = format!("system:node:{node}");
            ensure!(
                csrs.iter().any(|c| {
                    c.spec.username.as_deref() == Some(user.as_str())
                        && yurt_adm::join::is_hub_csr(c)
                        && c.spec.signer_name == "kubernetes.io/kubelet-serving"
                        && c.status.as_ref().is_some_and(|s| {
                            s.certificate.is_some()
                                && s.conditions
                                    .iter()
                                    .flatten()
                                    .any(|c| c.type_ == "Approved")
                        })
                }),
                "the hub's serving certificate of {node} approved by the manager"
            );
        }

        // A pod's own read through its node's hub, online and then offline: offline the
        // hub proves the pod's token with the service-account issuer's keys it fetched
        // online, and caches curl's reads as the `yurt-hub-cfg` the manifests made says
        // once edited, both of which the printed manifests let hubs read. Edited before
        // the pod starts, so the hubs have the change when it reads.
        f.kubectl(&[
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "yurt-hub-cfg",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"cache_agents":"curl"}}"#,
        ])?;
        let reader_node = WORKERS[0];
        f.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "adopt-cm", "namespace": "default"},
                 "data": {"greeting": "adopted-hello"}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "adopt-reader", "namespace": "default"},
                 "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                            "resourceNames": ["adopt-cm"], "verbs": ["get"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "adopt-reader", "namespace": "default"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "adopt-reader"},
                 "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]},
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "reader", "namespace": "default"},
                 "spec": {
                    "nodeName": reader_node,
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                    ],
                    "containers": [{"name": "curl", "image": CURL_IMAGE, "command": ["sleep", "86400"]}],
                 }},
            ]
        }))?;
        f.add_image(ImageSpec::curl()?).await?;
        wait_for("the reader pod running", Duration::from_secs(120), || async {
            Ok(f.running_containers(reader_node)?
                .iter()
                .any(|(pod, c)| pod == "reader" && c == "curl")
                .then_some(()))
        })
        .await?;
        let online = read_through_hub(&f, reader_node)?;
        ensure!(
            answered_200(&online) && online.contains("adopted-hello") && !online.contains(SOURCE),
            "online, the pod's read is answered by the API server through the hub: {online}"
        );

        // The pool cut off and one worker rebooted offline: autonomy holds (no pod is
        // evicted, the rebooted worker runs its pod again from its hub's cache).
        wait_for(
            "the env pods tolerating unreachable nodes forever",
            Duration::from_secs(60),
            || async {
                let pods: Api<Pod> = Api::namespaced(f.client(), "default");
                for node in WORKERS {
                    let spec = pods.get(&format!("env-{node}")).await?.spec.unwrap_or_default();
                    let forever = spec.tolerations.iter().flatten().any(|t| {
                        t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                            && t.effect.as_deref() == Some("NoExecute")
                            && t.toleration_seconds.is_none()
                    });
                    if !forever {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
        let rebooted = WORKERS[1];
        let env_pods: Api<Pod> = Api::namespaced(f.client(), "default");
        let container_of = |p: Pod| {
            p.status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.container_id)
        };
        let before = container_of(env_pods.get(&format!("env-{rebooted}")).await?);
        f.cut("pool-a")?;
        f.reboot(rebooted).await?;
        wait_for(
            &format!("env-{rebooted} running again on {rebooted}, offline"),
            Duration::from_secs(120),
            || async {
                let running = f.running_containers(rebooted)?;
                Ok(running
                    .iter()
                    .any(|(pod, c)| *pod == format!("env-{rebooted}") && c == "env")
                    .then_some(()))
            },
        )
        .await?;
        wait_for("both workers NotReady while cut", Duration::from_secs(90), || async {
            for node in WORKERS {
                if f.node_ready(node).await? == "True" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        ensure!(
            f.running_containers(WORKERS[0])?
                .iter()
                .any(|(pod, _)| *pod == format!("env-{}", WORKERS[0])),
            "the other worker's pod kept running"
        );
        let offline = read_through_hub(&f, reader_node)?;
        ensure!(
            answered_200(&offline) && offline.contains("adopted-hello") && offline.contains(SOURCE),
            "offline, the pod's own read is answered from its hub's cache: {offline}"
        );
        f.restore("pool-a")?;
        for node in WORKERS {
            wait_for(&format!("{node} Ready again"), Duration::from_secs(120), || async {
                Ok((f.node_ready(node).await? == "True").then_some(()))
            })
            .await?;
            let pod = env_pods.get(&format!("env-{node}")).await?;
            ensure!(
                pod.metadata.deletion_timestamp.is_none(),
                "env-{node} was not evicted"
            );
        }
        let ip = wait_for(
            "the rebooted worker's new container reported",
            Duration::from_secs(90),
            || async {
                let pod = env_pods.get(&format!("env-{rebooted}")).await?;
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                let now = container_of(pod);
                Ok((now.is_some() && now != before).then_some(ip).flatten())
            },
        )
        .await?;
        ensure!(
            f.env_of(rebooted, &format!("env-{rebooted}"), &ip).await?.1 == HUB_ENDPOINT,
            "after the reboot the container still sees the hub"
        );
        ips[1] = ip;

        // The labels removed: reverted, kubelet straight to the API server, hub gone.
        for node in WORKERS {
            f.kubectl(&["label", "node", node, "apps.openyurt.io/nodepool-"])?;
        }
        wait_conversions(&f, "Reverted").await?;
        for (node, ip) in WORKERS.iter().zip(&ips) {
            let (_, labels) = conversion_of(&nodes, node).await?;
            ensure!(!labels.contains_key("openyurt.io/is-edge-worker"), "{labels:?}");
            let line = status_line(&f, node)?;
            ensure!(!line.contains("yurt-hub") && !line.contains("yurt-tunnel-agent"), "{line}");
            let kubelet =
                std::fs::read_to_string(f.dir().join(format!("hosts/{node}/units/kubelet.toml")))?;
            ensure!(!kubelet.contains("through-hub"), "kubelet is direct: {kubelet}");
            ensure!(
                !f.dir().join(format!("hosts/{node}/var/lib/yurthub")).exists(),
                "the hub's files are gone from {node}"
            );
            ensure!(
                f.env_of(node, &format!("env-{node}"), ip).await?.1 == svc,
                "{node}'s container sees the API server's Service again"
            );
            ensure!(f.node_ready(node).await? == "True");
        }
        Ok(())
    }))
    .await
}
