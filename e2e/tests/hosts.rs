//! Hosts added to and removed from a running fleet (`yurt fleet add-host|remove-host`),
//! on a fleet of their own: a bare host has containerd and nothing the cluster knows;
//! once a kubelet registers its Node, the pod CIDR kube-controller-manager allocates
//! reaches containerd through its CNI template and the fleet's route controller routes
//! it; a reboot starts the host again from its units; removal leaves nothing behind.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use yurt_cluster::spec::HostId;
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The conversion test's: one fleet through a dozen conversions, two manager restarts
/// and an offline reboot (about 380 s alone on two cores).
const CONVERSION_TEST_TIMEOUT: Duration = Duration::from_secs(900);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

async fn within_for<T>(
    limit: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .context("test did not finish in time")?
}

/// The pod routes (`via` routes) of a host's namespace.
fn pod_routes(f: &TestFleet, host: &HostId) -> anyhow::Result<String> {
    let ns = f.fleet().plan().netns(host);
    Ok(yurt_cluster::netns::ip(
        Some(&ns),
        &["-4", "-o", "route", "show", "root", "10.244.0.0/16"],
    )?)
}

fn refused(f: &TestFleet, args: &[&str]) -> anyhow::Result<String> {
    let err = f
        .yurt(args)
        .err()
        .with_context(|| format!("yurt {args:?} should fail"))?;
    Ok(format!("{err:#}"))
}

/// A busybox web server on `node` (:8080); its address.
async fn pod_on(f: &TestFleet, node: &str, name: &str) -> anyhow::Result<String> {
    f.busybox_pod_on(
        node,
        name,
        "web",
        &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/"],
    )
    .await
}

fn reachable(f: &TestFleet, from: &HostId, ip: &str) -> bool {
    let ns = f.fleet().plan().netns(from);
    let Ok(ip) = ip.parse() else { return false };
    yurt_cluster::netns::connect_tcp(&ns, SocketAddr::new(ip, 8080), Duration::from_secs(2)).is_ok()
}

#[tokio::test]
async fn an_added_host_is_bare_until_it_registers_then_is_routed_and_removal_leaves_nothing()
-> anyhow::Result<()> {
    within(async {
        let spec = FleetSpec {
            edge_nodes: 2,
            pools: 1,
            mode: NetMode::Nat,
            timing: Timing::Fast,
            sample_app: false,
        };
        let mut f = fresh("hosts", spec).await?;
        let out = f.yurt(&["fleet", "add-host", "edge-x", "--pool", "pool-a"])?;
        ensure!(
            out.contains("added edge-x in pool-a at 10.20.0.100"),
            "{out}"
        );
        f.fleet_mut().refresh()?;
        let x = HostId::Edge("edge-x".parse()?);
        let a1 = HostId::Edge("edge-a1".parse()?);

        // Bad input: one line each, nothing changed.
        for (args, says) in [
            (
                vec!["fleet", "add-host", "edge-x", "--pool", "pool-a"],
                "already has a host named edge-x",
            ),
            (
                vec!["fleet", "add-host", "edge-a1", "--pool", "pool-a"],
                "already has a host named edge-a1",
            ),
            (
                vec!["fleet", "add-host", "edge-y", "--pool", "pool-z"],
                "pool-a",
            ),
            (
                vec!["fleet", "add-host", "Edge_Y", "--pool", "pool-a"],
                "Edge_Y",
            ),
            (
                vec!["fleet", "remove-host", "edge-a1"],
                "only hosts added with `yurt fleet add-host`",
            ),
            (vec!["fleet", "remove-host", "edge-nope"], "edge-nope"),
        ] {
            let err = refused(&f, &args)?;
            ensure!(err.contains(says), "{args:?}: {err}");
        }

        // Bare: containerd only, no Node, no certificate, no pod network yet.
        let status = f.yurt(&["fleet", "status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("edge-x"))
            .with_context(|| status.clone())?;
        ensure!(
            line.contains("pool-a")
                && line.contains("10.20.0.100")
                && line.contains("containerd(")
                && !line.contains("kubelet"),
            "{line}"
        );
        ensure!(
            status
                .lines()
                .any(|l| l.starts_with("router") && l.contains("route-controller(")),
            "the route controller runs with the first added host:\n{status}"
        );
        let nodes: Api<Node> = Api::all(f.client());
        ensure!(
            nodes.get_opt("edge-x").await?.is_none(),
            "no Node before a kubelet registers"
        );
        let pki = f.dir().join("pki");
        ensure!(
            !std::fs::read_dir(&pki)?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("edge-x")),
            "no certificate of edge-x"
        );
        let hp = f.fleet().paths().host(&x);
        ensure!(
            std::fs::read_dir(hp.cni_conf())?.next().is_none(),
            "no CNI network before a CIDR"
        );
        let router_routes = pod_routes(&f, &HostId::Router)?;
        ensure!(!router_routes.contains("10.20.0.100"), "{router_routes}");

        // A kubelet registers edge-x; the allocator gives it a CIDR, containerd renders
        // its network, the route controller routes it in the router and on the peers.
        f.start_direct_kubelet("edge-x").await?;
        let cidr = wait_for(
            "edge-x Ready with a pod CIDR",
            Duration::from_secs(180),
            || async {
                anyhow::Ok(
                    async {
                        let node = nodes.get_opt("edge-x").await.ok()??;
                        let ready = node
                            .status
                            .as_ref()?
                            .conditions
                            .as_ref()?
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        ready.then(|| node.spec?.pod_cidr).flatten()
                    }
                    .await,
                )
            },
        )
        .await?;
        for host in [HostId::Router, a1.clone(), HostId::Edge("edge-a2".parse()?)] {
            let want = format!("{cidr} via 10.20.0.100");
            wait_for(
                &format!("route {want} in {host}"),
                Duration::from_secs(30),
                || async {
                    anyhow::Ok(
                        async { pod_routes(&f, &host).ok().filter(|r| r.contains(&want)) }.await,
                    )
                },
            )
            .await?;
        }
        let x_routes = pod_routes(&f, &x)?;
        ensure!(
            x_routes.contains("10.244.1.0/24 via 10.20.0.11")
                && !x_routes.contains(&format!("{cidr} via")),
            "edge-x reaches its planned peers' pods and not itself through a peer: {x_routes}"
        );

        // A pod on edge-x gets an address from that CIDR, reached from a peer and the router.
        let ip = pod_on(&f, "edge-x", "web-x").await?;
        let net = yurt_cluster::fleet::routes::parse_cidr(&cidr).context("CIDR")?;
        ensure!(net.contains(ip.parse()?), "{ip} lies outside {cidr}");
        for from in [a1.clone(), HostId::Router] {
            wait_for(
                &format!("{ip}:8080 from {from}"),
                Duration::from_secs(30),
                || async { anyhow::Ok(async { reachable(&f, &from, &ip).then_some(()) }.await) },
            )
            .await?;
        }

        // A reboot starts containerd and kubelet again from their units.
        f.reboot("edge-x").await?;
        let status = f.yurt(&["fleet", "status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("edge-x"))
            .unwrap_or_default();
        ensure!(
            line.contains("containerd(") && line.contains("kubelet("),
            "{line}"
        );
        wait_for(
            "web-x serving again after the reboot",
            Duration::from_secs(120),
            || async {
                anyhow::Ok(
                    async {
                        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
                        let ip = pods.get("web-x").await.ok()?.status?.pod_ip?;
                        reachable(&f, &a1, &ip).then_some(())
                    }
                    .await,
                )
            },
        )
        .await?;

        // Removal: nothing of edge-x is left but its Node.
        let out = f.yurt(&["fleet", "remove-host", "edge-x"])?;
        ensure!(out.contains("removed edge-x"), "{out}");
        f.fleet_mut().refresh()?;
        let netns = f.fleet().plan().netns(&x);
        ensure!(!yurt_cluster::netns::exists(&netns), "{netns} is gone");
        ensure!(!hp.root().exists(), "{} is gone", hp.root().display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        ensure!(
            !mounts.contains(&hp.root().display().to_string()),
            "no mount of edge-x is left"
        );
        let cgroups = yurt_cluster::cgroup::Cgroups::detect()?;
        let cgroup = yurt_cluster::fleet::host_cgroup(f.fleet().plan().slot, &x);
        ensure!(!cgroups.exists(&cgroup), "cgroup {cgroup} is gone");
        for (host, planned) in [
            (HostId::Router, "10.244.1.0/24 via 10.20.0.11"),
            (a1.clone(), "10.244.2.0/24 via 10.20.0.12"),
        ] {
            let routes = pod_routes(&f, &host)?;
            ensure!(!routes.contains("10.20.0.100"), "{host}: {routes}");
            ensure!(
                routes.contains(planned),
                "{host} keeps its planned routes: {routes}"
            );
        }
        ensure!(f.fleet().state().added_hosts.is_empty());
        let status = f.yurt(&["fleet", "status"])?;
        ensure!(
            !status.contains("edge-x") && !status.contains("route-controller"),
            "{status}"
        );
        ensure!(
            nodes.get_opt("edge-x").await?.is_some(),
            "the Node stays, as when a machine is unplugged"
        );
        f.kubectl(&["delete", "node", "edge-x"])?;
        Ok(())
    })
    .await
}

/// The CSRs signed by `signer` whose requester is `user`.
fn csrs_of(f: &TestFleet, signer: &str, user: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let all: serde_json::Value = serde_json::from_str(&f.kubectl(&["get", "csr", "-o", "json"])?)?;
    Ok(all["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|c| c["spec"]["signerName"] == signer && c["spec"]["username"] == user)
        .cloned()
        .collect())
}

fn approved_with(csr: &serde_json::Value, words: &str) -> bool {
    csr["status"]["certificate"].is_string()
        && csr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "Approved" && c["message"].as_str().is_some_and(|m| m.contains(words))
            })
}

/// kubelet on the joined `node` serves with a certificate of the cluster's CA (its
/// serving CSR, approved by the manager), as the API server checks it for logs and
/// exec: a client verifying against that CA gets through TLS to kubelet's 401. Behind
/// NAT, the API server reaches that kubelet only through the tunnel agent the join
/// started (found through kube-system/x-tunnel-server-svc): exec and logs of `pod` work.
async fn kubelet_is_reached_through_the_tunnel(
    f: &TestFleet,
    node: &str,
    pod: &str,
) -> anyhow::Result<()> {
    Box::pin(kubelet_serves_a_certificate_of_the_cluster_ca(f, node)).await?;
    wait_for(
        &format!("kubectl exec into {pod} through the tunnel"),
        Duration::from_secs(60),
        || async {
            Ok(
                f.kubectl(&["exec", pod, "--", "echo", "through-the-tunnel"])
                    .ok()
                    .filter(|out| out.trim() == "through-the-tunnel"),
            )
        },
    )
    .await?;
    f.kubectl(&["logs", pod])
        .with_context(|| format!("kubectl logs of {pod} on {node}"))?;
    Ok(())
}

/// kubelet on `node` answers a client that checks its certificate against the cluster's
/// CA (401: it asks who is calling), as the API server's `--kubelet-certificate-authority`
/// requires; a self-signed certificate fails the handshake (curl says 000).
async fn kubelet_serves_a_certificate_of_the_cluster_ca(
    f: &TestFleet,
    node: &str,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(f.client());
    let address = nodes
        .get(node)
        .await?
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .with_context(|| format!("{node} has no InternalIP"))?
        .address;
    let ca = yurt_cluster::pki::PkiPaths::new(f.fleet().paths()).ca_cert();
    let ca = ca.display().to_string();
    let url = format!("https://{address}:10250/healthz");
    let mut last = String::new();
    wait_for(
        &format!("kubelet on {node} serving a certificate of the cluster's CA"),
        Duration::from_secs(60),
        || {
            let answer = f.exec(
                node,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                    "--cacert",
                    &ca,
                    &url,
                ],
            );
            let code = answer
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let done = code == "401";
            last = code;
            async move { Ok(done.then_some(())) }
        },
    )
    .await
    .with_context(|| format!("last answer: {last:?}"))?;
    Ok(())
}

/// Issue 13's join, on a host added to a running fleet: a token from the real `kubeadm
/// token create`, kubelet's TLS bootstrap approved by kube-controller-manager, the hub's
/// client and serving certificates by our manager, kubelet and kube-proxy then through
/// the hub, the pool's labels; bad input refused before anything changes; a rerun
/// refused, and a resumed one finishing without redoing what is done; `yurt adm reset
/// --delete-node` leaving only the host's containerd, and the host joining again.
#[tokio::test]
async fn an_added_host_joins_with_a_kubeadm_token_behind_a_hub() -> anyhow::Result<()> {
    within(async {
        // Two pools of one node each: edge-a1 in pool-a, edge-b1 in pool-b.
        let spec = FleetSpec {
            edge_nodes: 2,
            pools: 2,
            mode: NetMode::Nat,
            timing: Timing::Fast,
            sample_app: false,
        };
        let mut f = fresh("join", spec).await?;
        f.yurt(&["fleet", "add-host", "edge-x", "--pool", "pool-a"])?;
        f.yurt(&["fleet", "add-host", "edge-y", "--pool", "pool-b"])?;
        f.fleet_mut().refresh()?;
        let mut kubeadm = std::process::Command::new(
            f.fleet()
                .binaries()
                .path(yurt_cluster::upstream::Binary::Kubeadm),
        );
        kubeadm
            .args(["token", "create", "--ttl", "30m", "--print-join-command"])
            .arg(format!(
                "--kubeconfig={}",
                f.fleet().admin_kubeconfig().display()
            ));
        let printed = yurt_testkit::run_checked(&mut kubeadm)?;
        let word_after = |text: &str, flag: &str| {
            let mut words = text.split_whitespace();
            words.find(|w| *w == flag);
            words.next().map(str::to_owned)
        };
        let token = word_after(&printed, "--token").context("kubeadm printed a token")?;
        let hash = word_after(&printed, "--discovery-token-ca-cert-hash").context("a CA hash")?;
        // Ours prints the same endpoint and pin, as a command runnable on a host.
        let ours = f.yurt(&[
            "adm",
            "token",
            "create",
            "--ttl",
            "30m",
            "--print-join-command",
        ])?;
        let our_token = word_after(&ours, "--token").context("ours printed a token")?;
        ensure!(
            ours.contains(" adm join 10.10.0.1:6443 --token ")
                && ours
                    .trim_end()
                    .ends_with(&format!("--discovery-token-ca-cert-hash {hash}")),
            "ours: {ours}\nkubeadm's: {printed}"
        );
        let yurt = yurt_testkit::machine().yurt_binary.display().to_string();
        let join_on = |host: &str, extra: &[&str]| -> anyhow::Result<String> {
            let mut args = vec![
                "fleet",
                "exec",
                host,
                "--",
                &yurt,
                "adm",
                "join",
                "10.10.0.1:6443",
            ];
            args.extend_from_slice(extra);
            f.yurt(&args)
        };
        let join = |extra: &[&str]| join_on("edge-x", extra);
        let host_dir = f.dir().join("hosts/edge-x");

        // Bad input: one line, nothing started. Two tokens the cluster holds but does not
        // sign cluster-info for (expired; no signing usage), as a script or an old
        // kubeadm could leave them, and a Cloud pool, which takes only plain nodes.
        for (id, expired, signing) in [("yexpd1", true, true), ("ynosg1", false, false)] {
            let mut data = serde_json::json!({
                "token-id": id,
                "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true",
            });
            if expired {
                data["expiration"] = "2020-01-01T00:00:00Z".into();
            }
            if signing {
                data["usage-bootstrap-signing"] = "true".into();
            }
            f.apply(&serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                "type": "bootstrap.kubernetes.io/token",
                "stringData": data,
            }))?;
        }
        f.apply(&serde_json::json!({
            "apiVersion": "apps.openyurt.io/v1beta1", "kind": "NodePool",
            "metadata": {"name": "cloud-z"}, "spec": {"type": "Cloud"},
        }))?;
        for (extra, says) in [
            (
                vec![
                    "--token",
                    "yexpd1.0123456789abcdef",
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--timeout",
                    "5s",
                ],
                "token ID \"yexpd1\" is not valid for this cluster",
            ),
            (
                vec![
                    "--token",
                    "ynosg1.0123456789abcdef",
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--timeout",
                    "5s",
                ],
                "token ID \"ynosg1\" is not valid for this cluster",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--nodepool-name",
                    "cloud-z",
                ],
                "NodePool cloud-z is a Cloud pool: join it with --node-type plain",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--nodepool-name",
                    "pool-a",
                    "--node-type",
                    "plain",
                ],
                "NodePool pool-a is an Edge pool",
            ),
            (
                vec!["--token", "nope", "--discovery-token-ca-cert-hash", &hash],
                "--token",
            ),
            (
                vec!["--token", &token],
                "--discovery-token-ca-cert-hash sha256:<hex>",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    "sha256:12",
                ],
                "--discovery-token-ca-cert-hash",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--node-type",
                    "fog",
                ],
                "edge or plain",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--nodepool-name",
                    "pool-z",
                ],
                "NodePool pool-z does not exist",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--node-name",
                    "edge-a1",
                ],
                "a Ready Node named edge-a1 exists",
            ),
            (
                vec![
                    "--token",
                    &token,
                    "--discovery-token-ca-cert-hash",
                    &hash,
                    "--node-name",
                    "Edge_X",
                ],
                "--node-name: invalid node name \"Edge_X\"",
            ),
        ] {
            let err = join(&extra)
                .err()
                .with_context(|| format!("{extra:?} should fail"))?;
            let err = format!("{err:#}");
            ensure!(err.contains(says), "{extra:?}: {err}");
        }
        f.kubectl(&["delete", "nodepool", "cloud-z"])?;
        let off_host = f.yurt(&[
            "adm",
            "join",
            "10.10.0.1:6443",
            "--token",
            &token,
            "--discovery-token-ca-cert-hash",
            &hash,
        ]);
        ensure!(
            off_host
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("runs on a fleet host")),
            "{off_host:?}"
        );
        let status = f.yurt(&["fleet", "status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("edge-x"))
            .unwrap_or_default();
        ensure!(
            !line.contains("kubelet"),
            "nothing started by refused joins: {line}"
        );
        for left in JOIN_WRITES {
            ensure!(
                !host_dir.join(left).exists(),
                "a refused join left {left} on the host"
            );
        }

        // Each pool's workload of a YurtAppSet: one pod per node (required
        // anti-affinity), two per pool, so the second of each waits for a joined host.
        let pool_workload = serde_json::json!({
            "apiVersion": "apps.openyurt.io/v1beta1", "kind": "YurtAppSet",
            "metadata": {"name": "per-node", "namespace": "default"},
            "spec": {
                "pools": ["pool-a", "pool-b"],
                "workload": {"workloadTemplate": {"deploymentTemplate": {
                    "metadata": {"labels": {"app": "per-node"}},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "per-node"}},
                        "template": {
                            "metadata": {"labels": {"app": "per-node"}},
                            "spec": {
                                "terminationGracePeriodSeconds": 0,
                                "affinity": {"podAntiAffinity": {
                                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                                        "labelSelector": {"matchLabels": {"app": "per-node"}},
                                        "topologyKey": "kubernetes.io/hostname",
                                    }],
                                }},
                                "containers": [{
                                    "name": "sleep",
                                    "image": yurt_cluster::image::BUSYBOX_IMAGE,
                                    "command": ["/bin/busybox", "sleep", "100000"],
                                }],
                            },
                        },
                    },
                }}},
            },
        });
        f.apply(&pool_workload)?;

        // The join.
        let args = [
            "--token",
            token.as_str(),
            "--discovery-token-ca-cert-hash",
            hash.as_str(),
            "--nodepool-name",
            "pool-a",
        ];
        let out = join(&args)?;
        ensure!(out.contains("joined the cluster as node edge-x"), "{out}");
        // The list of what a join writes is right: all of it is there now.
        for written in JOIN_WRITES {
            ensure!(
                host_dir.join(written).exists(),
                "the join wrote no {written}"
            );
        }
        // And one into the other pool, with a token of ours.
        let out = join_on(
            "edge-y",
            &[
                "--token",
                &our_token,
                "--discovery-token-ca-cert-hash",
                &hash,
                "--nodepool-name",
                "pool-b",
            ],
        )?;
        ensure!(out.contains("joined the cluster as node edge-y"), "{out}");
        let nodes: Api<Node> = Api::all(f.client());
        for (host, pool) in [("edge-x", "pool-a"), ("edge-y", "pool-b")] {
            let node = nodes.get(host).await?;
            let labels = node.metadata.labels.unwrap_or_default();
            ensure!(
                labels.get("apps.openyurt.io/nodepool").map(String::as_str) == Some(pool)
                    && labels.get("openyurt.io/is-edge-worker").map(String::as_str) == Some("true"),
                "{host}: {labels:?}"
            );
        }
        // The pools' workload lands on the joined hosts: its second pod in each.
        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
        wait_for(
            "the YurtAppSet's pods Running on edge-x (pool-a) and edge-y (pool-b)",
            Duration::from_secs(120),
            || async {
                // Grouped by the pool whose workload made them: one pod per node
                // holds whatever the pools' node selectors say, this does not.
                let mut by_pool = std::collections::BTreeMap::<String, Vec<String>>::new();
                for p in pods
                    .list(&ListParams::default().labels("app=per-node"))
                    .await?
                {
                    let running =
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    let pool = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("apps.openyurt.io/pool-name").cloned());
                    if let (true, Some(pool), Some(node)) =
                        (running, pool, p.spec.and_then(|s| s.node_name))
                    {
                        by_pool.entry(pool).or_default().push(node);
                    }
                }
                for nodes in by_pool.values_mut() {
                    nodes.sort();
                }
                let wanted = std::collections::BTreeMap::from([
                    (
                        "pool-a".to_owned(),
                        vec!["edge-a1".to_owned(), "edge-x".to_owned()],
                    ),
                    (
                        "pool-b".to_owned(),
                        vec!["edge-b1".to_owned(), "edge-y".to_owned()],
                    ),
                ]);
                if by_pool == wanted {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("running by pool: {by_pool:?}")
                }
            },
        )
        .await?;
        f.kubectl(&["delete", "yurtappset", "per-node", "--wait=true"])?;
        f.yurt(&["fleet", "remove-host", "edge-y"])?;
        f.kubectl(&["delete", "node", "edge-y"])?;
        // kubelet's client certificate: approved and signed by kube-controller-manager.
        let kubelet = csrs_of(
            &f,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &format!(
                "system:bootstrap:{}",
                token.split('.').next().unwrap_or_default()
            ),
        )?;
        ensure!(
            kubelet
                .iter()
                .any(|c| approved_with(c, "kubelet client certificate")),
            "kubelet's CSR: {kubelet:#?}"
        );
        // The hub's: its own client certificate and its serving one, by our manager.
        let user = "system:node:edge-x";
        let hub_client = csrs_of(&f, "kubernetes.io/kube-apiserver-client", user)?;
        ensure!(
            hub_client
                .iter()
                .any(|c| approved_with(c, "yurthub client certificate")),
            "{hub_client:#?}"
        );
        // Told from kubelet's (same signer, same user) by the hub's pod address.
        let serving = csrs_of(&f, "kubernetes.io/kubelet-serving", user)?;
        let hubs = |c: &serde_json::Value| {
            serde_json::from_value(c.clone()).is_ok_and(|c| yurt_adm::join::is_hub_csr(&c))
        };
        ensure!(
            serving
                .iter()
                .any(|c| hubs(c) && approved_with(c, "serving certificate of its own node")),
            "{serving:#?}"
        );

        // kubelet and kube-proxy go through the hub; everything runs.
        let status = f.yurt(&["fleet", "status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("edge-x"))
            .unwrap_or_default();
        for p in [
            "containerd(",
            "yurt-hub(",
            "kubelet(",
            "kube-proxy(",
            "tunnel-agent(",
        ] {
            ensure!(line.contains(p), "{p} in {line}");
        }
        let units = f.dir().join("hosts/edge-x/units");
        let kubelet_unit = std::fs::read_to_string(units.join("kubelet.toml"))?;
        ensure!(
            kubelet_unit.contains("kubelet-through-hub.conf")
                && !kubelet_unit.contains("bootstrap-kubeconfig"),
            "{kubelet_unit}"
        );
        // A pod lands there and serves, reached from a pool peer.
        let ip = pod_on(&f, "edge-x", "web-joined").await?;
        let a1 = HostId::Edge("edge-a1".parse()?);
        wait_for(
            &format!("{ip}:8080 from edge-a1"),
            Duration::from_secs(60),
            || async { Ok(reachable(&f, &a1, &ip).then_some(())) },
        )
        .await?;
        Box::pin(kubelet_is_reached_through_the_tunnel(
            &f,
            "edge-x",
            "web-joined",
        ))
        .await?;

        // Again: refused, the host is joined.
        let again = join(&args);
        ensure!(
            again
                .as_ref()
                .is_err_and(|e| format!("{e:#}").contains("already joined")),
            "{again:?}"
        );
        // A join stopped before its end resumes: nothing done is redone.
        std::fs::remove_file(f.dir().join("hosts/edge-x/etc/yurt/joined"))?;
        let before = csrs_of(
            &f,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &format!(
                "system:bootstrap:{}",
                token.split('.').next().unwrap_or_default()
            ),
        )?
        .len();
        let out = join(&args)?;
        ensure!(out.contains("joined the cluster as node edge-x"), "{out}");
        let after = csrs_of(
            &f,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &format!(
                "system:bootstrap:{}",
                token.split('.').next().unwrap_or_default()
            ),
        )?
        .len();
        ensure!(
            before == after,
            "the resumed join bootstrapped kubelet again"
        );

        // A node may delete only itself (reset --delete-node relies on this): NodeRestriction.
        let kubectl = f
            .fleet()
            .binaries()
            .path(yurt_cluster::upstream::Binary::Kubectl)
            .display()
            .to_string();
        let kubelet_conf = f.dir().join("hosts/edge-x/etc/kubernetes/kubelet.conf");
        let other = f.exec(
            "edge-x",
            &[
                &kubectl,
                &format!("--kubeconfig={}", kubelet_conf.display()),
                "delete",
                "node",
                "edge-a1",
            ],
        )?;
        let said = String::from_utf8_lossy(&other.stderr);
        ensure!(
            !other.status.success() && said.contains("forbidden"),
            "edge-x deleting edge-a1: {said}"
        );
        ensure!(nodes.get_opt("edge-a1").await?.is_some());

        // Reset, deleting the Node: nothing of the join is left; containerd runs on.
        let reset = |extra: &[&str]| -> anyhow::Result<String> {
            let mut args = vec!["fleet", "exec", "edge-x", "--", &yurt, "adm", "reset"];
            args.extend_from_slice(extra);
            f.yurt(&args)
        };
        let out = reset(&["--delete-node"])?;
        ensure!(
            out.contains("Deleted Node edge-x") && out.contains("left the cluster"),
            "{out}"
        );
        ensure!(nodes.get_opt("edge-x").await?.is_none(), "the Node is gone");
        let status = f.yurt(&["fleet", "status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("edge-x"))
            .unwrap_or_default();
        ensure!(
            line.contains("containerd(")
                && !line.contains("kubelet")
                && !line.contains("yurt-hub")
                && !line.contains("kube-proxy")
                && !line.contains("tunnel-agent"),
            "{line}"
        );
        for gone in JOIN_WRITES {
            ensure!(!host_dir.join(gone).exists(), "{gone} is left");
        }
        ensure!(
            host_dir.join("units/containerd.toml").exists(),
            "the host's own containerd unit stays"
        );
        ensure!(
            std::fs::read_dir(
                f.fleet()
                    .paths()
                    .host(&HostId::Edge("edge-x".parse()?))
                    .cni_conf()
            )?
            .next()
            .is_none(),
            "the rendered pod network is gone"
        );
        let cgroups = yurt_cluster::cgroup::Cgroups::detect()?;
        let pods = format!(
            "{}/kubepods",
            yurt_cluster::fleet::host_cgroup(
                f.fleet().plan().slot,
                &HostId::Edge("edge-x".parse()?)
            )
        );
        ensure!(
            cgroups.pids(&pods).is_empty(),
            "pod processes are left: {:?}",
            cgroups.pids(&pods)
        );
        let containerd = yurt_cluster::process::PidRecord::read(
            &f.fleet()
                .paths()
                .host(&HostId::Edge("edge-x".parse()?))
                .pid_file("containerd"),
        )
        .context("containerd's pid")?;
        let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", containerd.pid))?;
        ensure!(
            !mounts.contains("var/lib/kubelet/") && !mounts.contains("/run/netns/cni-"),
            "mounts are left in the host:\n{mounts}"
        );
        // The pod bridge went with its address: the next join may get another pod CIDR.
        let bridge = f.exec("edge-x", &["ip", "-o", "link", "show", "dev", "cni0"])?;
        ensure!(
            !bridge.status.success(),
            "cni0 is left: {}",
            String::from_utf8_lossy(&bridge.stdout)
        );
        // Again: nothing to undo, still fine.
        reset(&[])?;
        // The pod object outlived its node; the host joins again, afresh.
        f.kubectl(&["delete", "pod", "web-joined", "--grace-period=0", "--force"])?;
        let out = join(&args)?;
        ensure!(out.contains("joined the cluster as node edge-x"), "{out}");

        f.yurt(&["fleet", "remove-host", "edge-x"])?;
        f.kubectl(&["delete", "node", "edge-x"])?;
        Ok(())
    })
    .await
}

/// What a join writes in its host's folder (none of it there before the join, or after
/// a refused join or a reset).
const JOIN_WRITES: [&str; 9] = [
    "etc/kubernetes",
    "etc/yurt",
    "var/lib/kubelet",
    "var/lib/yurthub",
    "var/lib/kube-proxy",
    "units/kubelet.toml",
    "units/yurt-hub.toml",
    "units/kube-proxy.toml",
    "units/yurt-tunnel-agent.toml",
];

/// `yurt adm join` on `host` as a child process, its output in `<fleet>/<log>.out|err`.
fn spawn_join(
    f: &TestFleet,
    host: &str,
    args: &[&str],
    log: &str,
) -> anyhow::Result<std::process::Child> {
    let yurt = &yurt_testkit::machine().yurt_binary;
    let mut cmd = std::process::Command::new(yurt);
    cmd.arg("--data-dir")
        .arg(f.dir())
        .args(["fleet", "exec", host, "--"])
        .arg(yurt)
        .args(["adm", "join", "10.10.0.1:6443"])
        .args(args)
        .stdout(std::fs::File::create(f.dir().join(format!("{log}.out")))?)
        .stderr(std::fs::File::create(f.dir().join(format!("{log}.err")))?);
    Ok(cmd.spawn()?)
}

/// Waits for a join started by [`spawn_join`] to end: whether it succeeded, and what it
/// printed (stdout, then stderr).
async fn join_ended(
    f: &TestFleet,
    child: &mut std::process::Child,
    log: &str,
    timeout: Duration,
) -> anyhow::Result<(bool, String)> {
    let status = wait_for(&format!("join {log} to end"), timeout, || {
        let ended = child.try_wait();
        async move { Ok(ended?) }
    })
    .await?;
    let said = format!(
        "{}{}",
        std::fs::read_to_string(f.dir().join(format!("{log}.out")))?,
        std::fs::read_to_string(f.dir().join(format!("{log}.err")))?
    );
    Ok((status.success(), said))
}

/// SIGKILLs the `yurt adm join` running on `host` (not the `yurt fleet exec` around it);
/// how many it killed.
fn kill_join(host: &str) -> anyhow::Result<usize> {
    let (env, folder) = (
        format!("{}=", yurt_core::host::HOST_DIR_ENV),
        format!("/hosts/{host}"),
    );
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(environ)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read(entry.path().join("environ")),
        ) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let on_host = environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(env.as_bytes()) && v.ends_with(folder.as_bytes()));
        if on_host && argv.get(1) == Some(&&b"adm"[..]) && argv.get(2) == Some(&&b"join"[..]) {
            yurt_testkit::run_checked(
                std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
            )?;
            killed += 1;
        }
    }
    Ok(killed)
}

/// Issue 13's join faults, on a fleet of its own: a join killed after kubelet's TLS
/// bootstrap is finished by the next run, which rides out its pool's link cut meanwhile;
/// with the manager's csrapprover stopped the join times out naming the hub's pending
/// CSRs and rolls the host back (no process, no file, no Node), and joins once the
/// manager is back, through an API server restart in the middle.
#[tokio::test]
async fn a_join_resumes_after_a_kill_rides_out_faults_and_rolls_back_when_it_cannot_finish()
-> anyhow::Result<()> {
    within(async {
        let spec = FleetSpec {
            edge_nodes: 1,
            pools: 1,
            mode: NetMode::Nat,
            timing: Timing::Fast,
            sample_app: false,
        };
        let mut f = fresh("join-faults", spec).await?;
        f.yurt(&["fleet", "add-host", "edge-y", "--pool", "pool-a"])?;
        f.fleet_mut().refresh()?;
        let (token, hash) = f.join_token_and_hash()?;
        let args = [
            "--token",
            token.as_str(),
            "--discovery-token-ca-cert-hash",
            hash.as_str(),
            "--nodepool-name",
            "pool-a",
        ];
        let host_dir = f.dir().join("hosts/edge-y");
        let kubelet_conf = host_dir.join("etc/kubernetes/kubelet.conf");
        let nodes: Api<Node> = Api::all(f.client());
        let line_of = |f: &TestFleet| -> anyhow::Result<String> {
            Ok(f.yurt(&["fleet", "status"])?
                .lines()
                .find(|l| l.starts_with("edge-y"))
                .unwrap_or_default()
                .to_owned())
        };

        // Killed once kubelet holds its certificate.
        let mut first = spawn_join(&f, "edge-y", &args, "join-killed")?;
        wait_for(
            "kubelet's TLS bootstrap on edge-y",
            Duration::from_secs(120),
            || async { Ok(kubelet_conf.exists().then_some(())) },
        )
        .await?;
        ensure!(kill_join("edge-y")? == 1, "one join to kill");
        let (ok, said) = join_ended(&f, &mut first, "join-killed", Duration::from_secs(30)).await?;
        ensure!(!ok, "a killed join fails: {said}");

        // The next run resumes; its pool is cut off for a while meanwhile.
        let mut resumed = spawn_join(&f, "edge-y", &args, "join-resumed")?;
        f.cut("pool-a")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        f.restore("pool-a")?;
        let (ok, said) =
            join_ended(&f, &mut resumed, "join-resumed", Duration::from_secs(240)).await?;
        ensure!(
            ok && said.contains("resumed: already done: kubelet TLS bootstrap")
                && said.contains("joined the cluster as node edge-y"),
            "{said}"
        );
        ensure!(f.node_ready("edge-y").await? == "True");
        let line = line_of(&f)?;
        for p in ["yurt-hub(", "kubelet(", "kube-proxy("] {
            ensure!(line.contains(p), "{p} in {line}");
        }
        f.yurt(&[
            "fleet",
            "exec",
            "edge-y",
            "--",
            &yurt_testkit::machine().yurt_binary.display().to_string(),
            "adm",
            "reset",
            "--delete-node",
        ])?;

        // No csrapprover: the hub's CSRs stay pending; the join names them and rolls back.
        f.stop("cloud", "yurt-manager")?;
        let mut stuck = spawn_join(
            &f,
            "edge-y",
            &[&args[..], &["--timeout", "60s"]].concat(),
            "join-stuck",
        )?;
        let (ok, said) = join_ended(&f, &mut stuck, "join-stuck", Duration::from_secs(180)).await?;
        ensure!(!ok, "{said}");
        let last = said
            .lines()
            .find(|l| l.contains("rolled back"))
            .unwrap_or_default();
        ensure!(
            last.contains("hub: yurt hub was not ready in time")
                && last.contains("its CSRs csr-")
                && last.contains("still pending")
                && last.contains("the join was rolled back")
                && last.contains("Node edge-y deleted"),
            "{said}"
        );
        let pending: serde_json::Value =
            serde_json::from_str(&f.kubectl(&["get", "csr", "-o", "json"])?)?;
        let named = pending["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter(|c| c["status"]["certificate"].is_null())
            .filter_map(|c| c["metadata"]["name"].as_str())
            .filter(|n| last.contains(n))
            .count();
        ensure!(named >= 1, "the named CSRs are pending ones: {last}");
        let line = line_of(&f)?;
        ensure!(
            line.contains("containerd(")
                && !line.contains("kubelet")
                && !line.contains("yurt-hub")
                && !line.contains("kube-proxy"),
            "rolled back: {line}"
        );
        for gone in [
            "etc/kubernetes",
            "etc/yurt",
            "var/lib/kubelet",
            "units/kubelet.toml",
        ] {
            ensure!(!host_dir.join(gone).exists(), "{gone} is left");
        }
        ensure!(nodes.get_opt("edge-y").await?.is_none(), "the Node is gone");

        // The manager back, the join goes through an API server restart.
        f.start("cloud", "yurt-manager").await?;
        let mut last_join = spawn_join(&f, "edge-y", &args, "join-restart")?;
        wait_for(
            "kubelet's TLS bootstrap on edge-y",
            Duration::from_secs(120),
            || async { Ok(kubelet_conf.exists().then_some(())) },
        )
        .await?;
        f.stop("cloud", "kube-apiserver")?;
        f.start("cloud", "kube-apiserver").await?;
        let (ok, said) =
            join_ended(&f, &mut last_join, "join-restart", Duration::from_secs(240)).await?;
        ensure!(
            ok && said.contains("joined the cluster as node edge-y"),
            "{said}"
        );
        ensure!(f.node_ready("edge-y").await? == "True");

        // Again as a plain node: no hub; kube-proxy with kubelet's credentials.
        let yurt = yurt_testkit::machine().yurt_binary.display().to_string();
        f.yurt(&[
            "fleet",
            "exec",
            "edge-y",
            "--",
            &yurt,
            "adm",
            "reset",
            "--delete-node",
        ])?;
        let nat = |f: &TestFleet| -> anyhow::Result<String> {
            let out = f.exec("edge-y", &["iptables-save", "-t", "nat"])?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        ensure!(
            !nat(&f)?.contains("default/kubernetes:https"),
            "reset leaves no kube-proxy rules"
        );
        let mut plain = spawn_join(
            &f,
            "edge-y",
            &[&args[..4], &["--node-type", "plain"]].concat(),
            "join-plain",
        )?;
        let (ok, said) = join_ended(&f, &mut plain, "join-plain", Duration::from_secs(240)).await?;
        ensure!(
            ok && said.contains("joined the cluster as node edge-y (a plain node)"),
            "{said}"
        );
        let line = line_of(&f)?;
        ensure!(
            line.contains("kubelet(") && line.contains("kube-proxy(") && !line.contains("yurt-hub"),
            "{line}"
        );
        let labels = nodes
            .get("edge-y")
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        ensure!(
            labels.get("openyurt.io/is-edge-worker").map(String::as_str) == Some("false")
                && !labels.contains_key("apps.openyurt.io/nodepool"),
            "{labels:?}"
        );
        wait_for(
            "kube-proxy's rules for the kubernetes Service on edge-y",
            Duration::from_secs(60),
            || async { Ok(nat(&f)?.contains("default/kubernetes:https").then_some(())) },
        )
        .await?;

        f.yurt(&["fleet", "remove-host", "edge-y"])?;
        f.kubectl(&["delete", "node", "edge-y"])?;
        Ok(())
    })
    .await
}

/// `yurt node-servant` on `host`, as `yurt fleet exec` runs it: whether it succeeded,
/// and what it printed.
fn servant(f: &TestFleet, host: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let yurt = &yurt_testkit::machine().yurt_binary;
    let out = std::process::Command::new(yurt)
        .arg("--data-dir")
        .arg(f.dir())
        .args(["fleet", "exec", host, "--"])
        .arg(yurt)
        .arg("node-servant")
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Issue 13's conversion, on a fleet of its own: a plain node (joined with a token)
/// converts with `yurt node-servant` to an edge node behind a hub and each container
/// restarts once with the hub's endpoint; a second convert changes nothing; revert puts
/// kubelet and kube-proxy back on the API server, removes the hub and restarts the
/// containers once more; a convert whose hub cannot get its certificates (the manager
/// stopped) restores the host and says so. Then the same through the pool label
/// (`yurt adm convert|revert`, the manager's conversion Job); a label added and removed
/// at once ends reverted; a conversion finishes through a manager restart; a servant
/// killed half-way leaves ConvertFailed and a cordoned node, which a revert cleans.
#[tokio::test]
async fn a_plain_node_converts_to_an_edge_node_and_back_with_the_node_servant() -> anyhow::Result<()>
{
    within_for(CONVERSION_TEST_TIMEOUT, async {
        let spec = FleetSpec {
            edge_nodes: 1,
            pools: 1,
            mode: NetMode::Nat,
            timing: Timing::Fast,
            sample_app: false,
        };
        let mut f = fresh("servant", spec).await?;
        f.yurt(&["fleet", "add-host", "edge-z", "--pool", "pool-a"])?;
        f.fleet_mut().refresh()?;
        let (token, hash) = f.join_token_and_hash()?;
        let mut join = spawn_join(
            &f,
            "edge-z",
            &[
                "--token",
                &token,
                "--discovery-token-ca-cert-hash",
                &hash,
                "--node-type",
                "plain",
            ],
            "join-plain",
        )?;
        let (ok, said) = join_ended(&f, &mut join, "join-plain", Duration::from_secs(240)).await?;
        ensure!(ok, "{said}");
        // As the cluster's kube-system/kubelet-config-1.20 says (the fleet's manager
        // approves kubelets' serving CSRs).
        Box::pin(kubelet_serves_a_certificate_of_the_cluster_ca(&f, "edge-z")).await?;
        let unit = f.dir().join("hosts/edge-z/units/kubelet.toml");
        let line_of = |f: &TestFleet| -> anyhow::Result<String> {
            Ok(f.yurt(&["fleet", "status"])?
                .lines()
                .find(|l| l.starts_with("edge-z"))
                .unwrap_or_default()
                .to_owned())
        };
        let ip = f.env_pod_on("edge-z", "env").await?;
        let svc = f.kubernetes_service_endpoint()?;
        ensure!(f.env_of("edge-z", "env", &ip).await? == (0, svc.clone()));

        let convert = [
            "convert",
            "--node-name",
            "edge-z",
            "--nodepool-name",
            "pool-a",
        ];
        let (ok, said) = servant(&f, "edge-z", &convert)?;
        ensure!(
            ok && said.contains("Node edge-z is an edge node")
                && said.contains("1 containers restarted"),
            "{said}"
        );
        let kubelet = std::fs::read_to_string(&unit)?;
        ensure!(
            kubelet.contains("kubelet-through-hub.conf"),
            "kubelet goes through the hub: {kubelet}"
        );
        ensure!(line_of(&f)?.contains("yurt-hub("), "{}", line_of(&f)?);
        ensure!(
            f.env_of("edge-z", "env", &ip).await? == (1, "169.254.2.1:10268".to_owned()),
            "the container restarted once and sees the hub"
        );
        // An edge node now: the API server reaches it through the agent convert started.
        ensure!(
            line_of(&f)?.contains("yurt-tunnel-agent("),
            "{}",
            line_of(&f)?
        );
        Box::pin(kubelet_is_reached_through_the_tunnel(&f, "edge-z", "env")).await?;
        ensure!(f.node_ready("edge-z").await? == "True");
        let (ok, said) = servant(&f, "edge-z", &convert)?;
        ensure!(ok && said.contains("already was an edge node"), "{said}");
        ensure!(
            f.env_of("edge-z", "env", &ip).await?.0 == 1,
            "a second convert restarts nothing"
        );

        let revert = ["revert", "--node-name", "edge-z"];
        let (ok, said) = servant(&f, "edge-z", &revert)?;
        ensure!(ok && said.contains("Node edge-z is a plain node"), "{said}");
        ensure!(
            !line_of(&f)?.contains("yurt-hub") && !line_of(&f)?.contains("tunnel-agent"),
            "{}",
            line_of(&f)?
        );
        ensure!(
            !f.dir()
                .join("hosts/edge-z/units/yurt-tunnel-agent.toml")
                .exists(),
            "the agent's unit is gone"
        );
        ensure!(
            !f.dir().join("hosts/edge-z/var/lib/yurthub").exists(),
            "the hub's files are gone"
        );
        ensure!(f.env_of("edge-z", "env", &ip).await? == (2, svc.clone()));
        // Reverted, kubelet serves as a plain join on this cluster has it.
        Box::pin(kubelet_serves_a_certificate_of_the_cluster_ca(&f, "edge-z")).await?;

        // A hub that cannot get its certificates: the convert fails and restores.
        f.stop("cloud", "yurt-manager")?;
        let (ok, said) = servant(
            &f,
            "edge-z",
            &[&convert[..], &["--timeout", "20s"]].concat(),
        )?;
        ensure!(
            !ok && said.contains("hub:") && said.contains("the host was restored"),
            "{said}"
        );
        ensure!(!line_of(&f)?.contains("yurt-hub"), "{}", line_of(&f)?);
        ensure!(
            !std::fs::read_to_string(&unit)?.contains("through-hub"),
            "kubelet is direct again"
        );
        f.start("cloud", "yurt-manager").await?;
        ensure!(f.node_ready("edge-z").await? == "True");

        // Through the pool label: the manager's conversion Job runs the host's servant
        // from a pod, which reaches the host's service manager (served here without a
        // supervisor, so a crash still fails the test).
        let _service_manager = f.serve_service_managers()?;
        let nodes: Api<Node> = Api::all(f.client());
        let before = f.env_of("edge-z", "env", &ip).await?.0;
        let out = f.yurt(&[
            "adm",
            "convert",
            "--node",
            "edge-z",
            "--nodepool-name",
            "pool-a",
            "--timeout",
            "4m",
        ])?;
        ensure!(out.contains("Node edge-z is an edge node"), "{out}");
        let node = nodes.get("edge-z").await?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        ensure!(
            labels.get("openyurt.io/is-edge-worker").map(String::as_str) == Some("true")
                && labels
                    .get("topology.kubernetes.io/zone")
                    .map(String::as_str)
                    == Some("pool-a"),
            "{labels:?}"
        );
        ensure!(
            !node.spec.and_then(|s| s.unschedulable).unwrap_or(false),
            "uncordoned after the conversion"
        );
        ensure!(line_of(&f)?.contains("yurt-hub("), "{}", line_of(&f)?);
        ensure!(
            f.env_of("edge-z", "env", &ip).await? == (before + 1, "169.254.2.1:10268".to_owned()),
            "the pod restarted once more and sees the hub"
        );
        // Deleted in the foreground once done: gone as soon as its finished pod is.
        wait_for("the finished Job gone", Duration::from_secs(30), || async {
            let jobs = conversion_jobs(&f)?;
            Ok(jobs.trim().is_empty().then_some(()))
        })
        .await?;

        let out = f.yurt(&["adm", "revert", "--node", "edge-z", "--timeout", "4m"])?;
        ensure!(out.contains("Node edge-z is a plain node"), "{out}");
        let labels = nodes
            .get("edge-z")
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        ensure!(
            !labels.contains_key("openyurt.io/is-edge-worker")
                && !labels.contains_key("topology.kubernetes.io/zone"),
            "{labels:?}"
        );
        ensure!(!line_of(&f)?.contains("yurt-hub"), "{}", line_of(&f)?);
        ensure!(f.env_of("edge-z", "env", &ip).await? == (before + 2, svc.clone()));

        // A label added and removed at once ends reverted (the controller may see the
        // label, convert and revert, or not see it at all), one servant at a time: the
        // node settles plain, uncordoned, with no Job, and stays so. The Job's name is
        // fixed, so what could overlap is a servant pod of the next Job starting while the
        // last one's still runs; every sample counts them, and the most seen is checked
        // after the wait (an error inside the wait would only be retried).
        label_into_pool_a(&f)?;
        f.kubectl(&["label", "node", "edge-z", "apps.openyurt.io/nodepool-"])?;
        let most_servants = std::cell::RefCell::new((0usize, String::new()));
        let most = &most_servants;
        let settled = |f: &TestFleet| {
            let nodes = nodes.clone();
            let jobs = conversion_jobs(f);
            let servants = live_servant_pods(f);
            async move {
                let (jobs, servants) = (jobs?, servants?);
                let live = servants.trim().lines().count();
                if live > most.borrow().0 {
                    *most.borrow_mut() = (live, servants.clone());
                }
                let n = nodes.get("edge-z").await?;
                let reverted = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| {
                        c.type_ == "YurtNodeConversionFailed"
                            && c.reason.as_deref() == Some("Reverted")
                    });
                let labels = n.metadata.labels.unwrap_or_default();
                anyhow::Ok(
                    reverted
                        && !labels.contains_key("openyurt.io/is-edge-worker")
                        && !n.spec.and_then(|s| s.unschedulable).unwrap_or(false)
                        && jobs.trim().is_empty(),
                )
            }
        };
        let quiet_since: std::cell::Cell<Option<std::time::Instant>> = std::cell::Cell::new(None);
        let quiet = &quiet_since;
        wait_for(
            "edge-z plain, uncordoned and without a Job for 15 s",
            Duration::from_secs(300),
            || {
                let check = settled(&f);
                async move {
                    if check.await? {
                        let since = quiet.get().unwrap_or_else(std::time::Instant::now);
                        quiet.set(Some(since));
                        Ok((since.elapsed() >= Duration::from_secs(15)).then_some(()))
                    } else {
                        quiet.set(None);
                        Ok(None)
                    }
                }
            },
        )
        .await?;
        let (live, pods) = most_servants.into_inner();
        ensure!(
            live <= 1,
            "{live} servant pods ran at once on edge-z:\n{pods}"
        );
        ensure!(!line_of(&f)?.contains("yurt-hub"), "{}", line_of(&f)?);
        ensure!(f.node_ready("edge-z").await? == "True");

        // The manager restarted while its Job runs: the conversion finishes.
        label_into_pool_a(&f)?;
        wait_for("the conversion Job", Duration::from_secs(60), || async {
            Ok((!conversion_jobs(&f)?.trim().is_empty()).then_some(()))
        })
        .await?;
        f.stop("cloud", "yurt-manager")?;
        f.start("cloud", "yurt-manager").await?;
        let out = f.yurt(&["adm", "convert", "--node", "edge-z", "--timeout", "4m"])?;
        ensure!(out.contains("Node edge-z is an edge node"), "{out}");
        ensure!(line_of(&f)?.contains("yurt-hub("), "{}", line_of(&f)?);

        // The converted node cut off and rebooted: kubelet and the hub come back from
        // their units, and the pod runs again from the hub's cache, no API server in
        // reach; once the link is back it serves with the hub's endpoint.
        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
        let container_of = |p: Pod| {
            let status = p.status.unwrap_or_default();
            let c = status.container_statuses.and_then(|c| c.into_iter().next());
            let running = c
                .as_ref()
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
            (c.and_then(|c| c.container_id), running, status.pod_ip)
        };
        let (before_reboot, _, _) = container_of(pods.get("env").await?);
        // Autonomous, so kube-controller-manager does not evict the pod meanwhile: the
        // manager makes its NoExecute tolerations last forever.
        f.kubectl(&[
            "annotate",
            "node",
            "edge-z",
            "node.openyurt.io/autonomy-duration=0",
        ])?;
        wait_for(
            "env tolerating an unreachable edge-z forever",
            Duration::from_secs(60),
            || async {
                let spec = pods.get("env").await?.spec.unwrap_or_default();
                let forever = |key: &str| {
                    spec.tolerations.iter().flatten().any(|t| {
                        t.key.as_deref() == Some(key)
                            && t.effect.as_deref() == Some("NoExecute")
                            && t.toleration_seconds.is_none()
                    })
                };
                Ok((forever("node.kubernetes.io/unreachable")
                    && forever("node.kubernetes.io/not-ready"))
                .then_some(()))
            },
        )
        .await?;
        f.cut("edge-z")?;
        f.reboot("edge-z").await?;
        wait_for(
            "env running again on edge-z, offline",
            Duration::from_secs(120),
            || async {
                let running = f.running_containers("edge-z")?;
                let env = running.iter().filter(|(pod, c)| pod == "env" && c == "env");
                Ok((env.count() == 1).then_some(()))
            },
        )
        .await?;
        ensure!(line_of(&f)?.contains("yurt-hub("), "{}", line_of(&f)?);
        f.restore("edge-z")?;
        wait_for("edge-z Ready again", Duration::from_secs(120), || async {
            Ok((f.node_ready("edge-z").await? == "True").then_some(()))
        })
        .await?;
        let ip = wait_for(
            "env's new container and address reported",
            Duration::from_secs(90),
            || async {
                let (container, running, ip) = container_of(pods.get("env").await?);
                Ok(
                    (running && container.is_some() && container != before_reboot)
                        .then_some(ip)
                        .flatten(),
                )
            },
        )
        .await?;
        ensure!(
            f.env_of("edge-z", "env", &ip).await?.1 == "169.254.2.1:10268",
            "after the reboot the container still sees the hub"
        );
        f.kubectl(&[
            "annotate",
            "node",
            "edge-z",
            "node.openyurt.io/autonomy-duration-",
        ])?;
        f.yurt(&["adm", "revert", "--node", "edge-z", "--timeout", "4m"])?;

        // The pool cut mid-conversion (the Job made, kubelet not yet moved: its servant
        // has not started, or waits for its hub): once the link is back the conversion
        // completes.
        label_into_pool_a(&f)?;
        wait_for("the conversion Job", Duration::from_secs(60), || async {
            Ok((!conversion_jobs(&f)?.trim().is_empty()).then_some(()))
        })
        .await?;
        f.cut("pool-a")?;
        ensure!(
            !std::fs::read_to_string(&unit)?.contains("through-hub"),
            "the cut came before the servant moved kubelet"
        );
        wait_for(
            "edge-z NotReady while cut",
            Duration::from_secs(60),
            || async { Ok((f.node_ready("edge-z").await? != "True").then_some(())) },
        )
        .await?;
        f.restore("pool-a")?;
        let out = f.yurt(&["adm", "convert", "--node", "edge-z", "--timeout", "5m"])?;
        ensure!(out.contains("Node edge-z is an edge node"), "{out}");
        f.yurt(&["adm", "revert", "--node", "edge-z", "--timeout", "4m"])?;

        // A convert killed half-way (the hub installed): ConvertFailed, the node stays
        // cordoned, `adm convert` says so; reverting it leaves a clean plain node.
        label_until_the_hub_is_installed(&f).await?;
        ensure!(kill_servant()? >= 1, "a servant to kill");
        let err = refused(
            &f,
            &["adm", "convert", "--node", "edge-z", "--timeout", "2m"],
        )?;
        ensure!(
            err.contains("ConvertFailed") && err.contains("stays cordoned"),
            "{err}"
        );
        ensure!(
            nodes
                .get("edge-z")
                .await?
                .spec
                .and_then(|s| s.unschedulable)
                == Some(true),
            "a failed conversion leaves the node cordoned"
        );
        // Its Job is kept for the record and not retried, not even when the node
        // changes and is reconciled again: the same Job, one pod, failed.
        let failed_job = || -> anyhow::Result<(String, bool, i64, usize)> {
            let job: serde_json::Value = serde_json::from_str(&f.kubectl(&[
                "get",
                "job",
                "-n",
                "kube-system",
                "node-servant-conversion-edge-z",
                "-o",
                "json",
            ])?)?;
            let pods = servant_job_pods(&f, "name")?;
            Ok((
                job["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                job["metadata"]["deletionTimestamp"].is_null(),
                job["status"]["failed"].as_i64().unwrap_or_default(),
                pods.trim().lines().count(),
            ))
        };
        let (uid, kept, failed, pods_run) = failed_job()?;
        ensure!(
            kept && failed == 1 && pods_run == 1,
            "the failed Job: kept {kept}, failed {failed}, {pods_run} pods"
        );
        let reason_now = || {
            let nodes = nodes.clone();
            async move {
                anyhow::Ok(
                    nodes
                        .get("edge-z")
                        .await?
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "YurtNodeConversionFailed")
                        .and_then(|c| c.reason),
                )
            }
        };
        f.kubectl(&[
            "annotate",
            "node",
            "edge-z",
            "e2e.openyurt.io/nudge=1",
            "--overwrite",
        ])?;
        // Looked at every second for 10 s (not in `wait_for`, which retries errors).
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let seen = failed_job()?;
            ensure!(
                seen == (uid.clone(), true, 1, 1),
                "the failed Job was replaced, deleted or retried: {seen:?} (was {uid})"
            );
            let reason = reason_now().await?;
            ensure!(
                reason.as_deref() == Some("ConvertFailed"),
                "the node's answer changed: {reason:?}"
            );
        }
        f.kubectl(&["annotate", "node", "edge-z", "e2e.openyurt.io/nudge-"])?;
        let out = f.yurt(&["adm", "revert", "--node", "edge-z", "--timeout", "4m"])?;
        ensure!(out.contains("Node edge-z is a plain node"), "{out}");
        ensure!(!line_of(&f)?.contains("yurt-hub"), "{}", line_of(&f)?);
        ensure!(
            !std::fs::read_to_string(&unit)?.contains("through-hub"),
            "kubelet is direct"
        );
        ensure!(
            !nodes
                .get("edge-z")
                .await?
                .spec
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            "uncordoned after the revert"
        );
        wait_for("no Job left", Duration::from_secs(30), || async {
            Ok(conversion_jobs(&f)?.trim().is_empty().then_some(()))
        })
        .await?;
        ensure!(f.node_ready("edge-z").await? == "True");

        // A servant that fails through the controller: something on the host holds the
        // hub's port, so the hub never gets ready and the servant gives up at its
        // timeout (the manager's --node-conversion-timeout, made 20 s here). It restores
        // the host before its Job fails: ConvertFailed finds kubelet direct and no hub.
        // Then the documented way out: fix the host, delete the Job, converted.
        let manager_unit = f.dir().join("hosts/cloud/units/yurt-manager.toml");
        let as_started = std::fs::read_to_string(&manager_unit)?;
        let mut quick = yurt_core::units::Unit::load(&manager_unit)?;
        quick.exec.push("--node-conversion-timeout=20".to_owned());
        quick.save(&manager_unit)?;
        f.stop("cloud", "yurt-manager")?;
        f.start("cloud", "yurt-manager").await?;
        let squatter = yurt_cluster::netns::listen_tcp(
            &f.fleet().plan().netns(&HostId::Edge("edge-z".parse()?)),
            "127.0.0.1:10261".parse()?,
        )?;
        label_into_pool_a(&f)?;
        let err = refused(
            &f,
            &["adm", "convert", "--node", "edge-z", "--timeout", "3m"],
        )?;
        ensure!(err.contains("ConvertFailed"), "{err}");
        ensure!(
            !line_of(&f)?.contains("yurt-hub("),
            "no hub after the failed convert: {}",
            line_of(&f)?
        );
        ensure!(
            !std::fs::read_to_string(&unit)?.contains("through-hub"),
            "kubelet is direct again before ConvertFailed"
        );
        // Read from the host's files: kubelet's logs of a plain node behind NAT cannot
        // be reached from the cloud.
        let servant_pod = servant_job_pods(&f, "jsonpath={.items[0].metadata.uid}")?;
        let servant_log = pod_logs(&f, "edge-z", servant_pod.trim())?;
        ensure!(
            servant_log.contains("yurt hub was not ready in time")
                && servant_log.contains("the host was restored"),
            "the servant restored the host: {servant_log}"
        );
        ensure!(f.node_ready("edge-z").await? == "True");
        drop(squatter);
        std::fs::write(&manager_unit, &as_started)?;
        f.stop("cloud", "yurt-manager")?;
        f.start("cloud", "yurt-manager").await?;
        f.kubectl(&[
            "delete",
            "job",
            "-n",
            "kube-system",
            "node-servant-conversion-edge-z",
        ])?;
        // (`adm convert` would answer the old ConvertFailed until the controller starts
        // over: the condition is waited for here.)
        wait_for(
            "edge-z converted after its failed Job was deleted",
            Duration::from_secs(240),
            || async {
                // Not Converted yet: the reason it gives instead is what a timeout says.
                match reason_now().await? {
                    Some(r) if r == "Converted" => Ok(Some(())),
                    other => anyhow::bail!("the node's conversion condition: {other:?}"),
                }
            },
        )
        .await?;
        ensure!(line_of(&f)?.contains("yurt-hub("), "{}", line_of(&f)?);
        f.yurt(&["adm", "revert", "--node", "edge-z", "--timeout", "4m"])?;

        f.yurt(&["fleet", "remove-host", "edge-z"])?;
        f.kubectl(&["delete", "node", "edge-z"])?;
        Ok(())
    })
    .await
}

/// The logs kubelet on `host` keeps of the pod with `uid`, every container's, read from
/// the host's files.
fn pod_logs(f: &TestFleet, host: &str, uid: &str) -> anyhow::Result<String> {
    let pods = f.dir().join(format!("hosts/{host}/var-log/pods"));
    let mut logs = String::new();
    for pod in std::fs::read_dir(&pods)?.flatten() {
        if !pod
            .file_name()
            .to_string_lossy()
            .ends_with(&format!("_{uid}"))
        {
            continue;
        }
        for container in std::fs::read_dir(pod.path())?.flatten() {
            for log in std::fs::read_dir(container.path())?.flatten() {
                logs.push_str(&std::fs::read_to_string(log.path())?);
            }
        }
    }
    ensure!(
        !logs.is_empty(),
        "no logs of pod {uid} in {}",
        pods.display()
    );
    Ok(logs)
}

/// The pods of edge-z's conversion Job, as `kubectl get -o <output>` prints them.
fn servant_job_pods(f: &TestFleet, output: &str) -> anyhow::Result<String> {
    f.kubectl(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "job-name=node-servant-conversion-edge-z",
        "-o",
        output,
    ])
}

/// The conversion Jobs (`kubectl get -o name`), one per line.
fn conversion_jobs(f: &TestFleet) -> anyhow::Result<String> {
    f.kubectl(&[
        "get",
        "jobs",
        "-n",
        "kube-system",
        "-l",
        "openyurt.io/conversion-node",
        "-o",
        "name",
    ])
}

/// The conversion servant pods not finished yet (pending, running or terminating).
fn live_servant_pods(f: &TestFleet) -> anyhow::Result<String> {
    f.kubectl(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "openyurt.io/conversion-node",
        "--field-selector=status.phase!=Succeeded,status.phase!=Failed",
        "-o",
        "name",
    ])
}

/// Puts edge-z into pool-a by its label (the manager converts it).
fn label_into_pool_a(f: &TestFleet) -> anyhow::Result<()> {
    f.kubectl(&[
        "label",
        "node",
        "edge-z",
        "apps.openyurt.io/nodepool=pool-a",
    ])?;
    Ok(())
}

/// Puts edge-z into pool-a by its label and waits for the conversion Job's servant to
/// install the hub (a convert under way).
async fn label_until_the_hub_is_installed(f: &TestFleet) -> anyhow::Result<()> {
    label_into_pool_a(f)?;
    let hub_unit = f.dir().join("hosts/edge-z/units/yurt-hub.toml");
    wait_for(
        "the servant to install the hub",
        Duration::from_secs(120),
        || async { Ok(hub_unit.exists().then_some(())) },
    )
    .await
}

/// SIGKILLs every `yurt node-servant convert` running on this machine (the conversion
/// Job's); how many.
fn kill_servant() -> anyhow::Result<usize> {
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if argv.get(1) == Some(&&b"node-servant"[..]) && argv.get(2) == Some(&&b"convert"[..]) {
            yurt_testkit::run_checked(
                std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
            )?;
            killed += 1;
        }
    }
    Ok(killed)
}
