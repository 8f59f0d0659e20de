//! Scenarios that disturb a fleet, each on a fleet of its own: link cuts, stopped
//! processes, reboots, a restart with state, a complete teardown, and NAT mode.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use yurt_cluster::spec::HostId;
use yurt_cluster::{FleetSpec, NetMode, Timing, UpOptions};
use yurt_testkit::{TestFleet, fresh, machine, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(600);

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

fn spec(edge_nodes: u16, pools: u16, mode: NetMode, sample_app: bool) -> FleetSpec {
    FleetSpec {
        edge_nodes,
        pools,
        mode,
        timing: Timing::Fast,
        sample_app,
    }
}

async fn wait_ready_is(
    f: &TestFleet,
    node: &str,
    want: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("node {node} Ready={want}");
    wait_for(&what, timeout, || async {
        let ready = f.node_ready(node).await? == "True";
        Ok((ready == want).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_readiness_follows_link_cuts_and_kubelet_stops() -> anyhow::Result<()> {
    within(async {
        let mut f = fresh("e2e-cut", spec(2, 2, NetMode::Nat, false)).await?;
        let grace = f.fleet().state().spec.timing.timings().node_grace;
        let limit = grace + Duration::from_secs(30);

        f.cut("edge-a1")?;
        wait_ready_is(&f, "edge-a1", false, limit).await?;
        assert_eq!(
            f.node_ready("edge-b1").await?,
            "True",
            "the other node is not affected"
        );
        f.restore("edge-a1")?;
        wait_ready_is(&f, "edge-a1", true, Duration::from_secs(60)).await?;

        f.cut("pool-b")?;
        wait_ready_is(&f, "edge-b1", false, limit).await?;
        f.restore("pool-b")?;
        wait_ready_is(&f, "edge-b1", true, Duration::from_secs(60)).await?;

        f.stop("edge-b1", "kubelet")?;
        let status = f.fleet().status();
        let b1 = status
            .iter()
            .find(|h| h.host.to_string() == "edge-b1")
            .context("edge-b1 status")?;
        let kubelet = b1
            .processes
            .iter()
            .find(|p| p.component.name() == "kubelet")
            .context("kubelet")?;
        assert_eq!(kubelet.state, yurt_cluster::fleet::ProcessState::Stopped);
        assert!(
            f.fleet().crashed().is_empty(),
            "a stopped process is not a crash"
        );
        wait_ready_is(&f, "edge-b1", false, limit).await?;
        f.start("edge-b1", "kubelet").await?;
        wait_ready_is(&f, "edge-b1", true, Duration::from_secs(60)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_kills_every_container_and_the_pod_comes_back_in_place() -> anyhow::Result<()> {
    within(async {
        let mut f = fresh("e2e-reboot", spec(1, 1, NetMode::Nat, true)).await?;
        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
        let before = pods
            .list(&ListParams::default().labels(&yurt_cluster::sample::pod_selector("pool-a")))
            .await?;
        let pod = before.items.first().context("sample pod")?.clone();
        let name = pod.metadata.name.clone().context("name")?;
        let uid = pod.metadata.uid.clone();
        let restarts = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map_or(0, |c| c.restart_count)
        };
        let before_restarts = restarts(&pod);
        // Everything on the host (daemons, shims, containers) is in its cgroup.
        let cgroups = yurt_cluster::cgroup::Cgroups::detect()?;
        let host = HostId::Edge("edge-a1".parse()?);
        let cg = yurt_cluster::fleet::host_cgroup(f.fleet().state().slot, &host);
        let before_procs: Vec<_> = cgroups
            .pids(&cg)
            .into_iter()
            .filter_map(yurt_cluster::process::PidRecord::of)
            .collect();
        ensure!(
            before_procs.len() >= 6,
            "daemons, shims and containers run: {before_procs:?}"
        );

        f.reboot("edge-a1").await?;

        let after = wait_for(
            "the sample pod Ready again after the reboot",
            Duration::from_secs(120),
            || {
                let pods = pods.clone();
                let name = name.clone();
                async move {
                    let p = pods.get(&name).await?;
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    Ok((ready && restarts(&p) > before_restarts).then_some(p))
                }
            },
        )
        .await?;
        assert_eq!(after.metadata.uid, uid, "same pod, restarted in place");
        let survivors: Vec<_> = before_procs.iter().filter(|r| r.is_alive()).collect();
        assert!(
            survivors.is_empty(),
            "processes survived the reboot: {survivors:?}"
        );
        let b = f.kubectl(&[
            "get",
            "svc",
            "web-pool-a",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let served = f.exec("edge-a1", &["wget", "-qO-", &format!("http://{b}/")])?;
        assert!(
            String::from_utf8_lossy(&served.stdout).contains("in pool-a"),
            "{served:?}"
        );
        Ok(())
    })
    .await
}

fn iptables_rules() -> anyhow::Result<String> {
    let out = Command::new("iptables-save").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        // packet counters change on their own
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n"))
}

fn leftovers(dir: &Path, slot: u8) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = format!("yurt{slot}-");
    for ns in yurt_cluster::netns::list() {
        if ns.starts_with(&prefix) {
            found.push(format!("network namespace {ns}"));
        }
    }
    if Path::new("/sys/class/net")
        .join(format!("yurt{slot}h"))
        .exists()
    {
        found.push(format!("interface yurt{slot}h"));
    }
    for m in yurt_cluster::mounts::mounts_under(dir) {
        found.push(format!("mount {}", m.display()));
    }
    let cgroups = yurt_cluster::cgroup::Cgroups::detect().expect("cgroups");
    if cgroups.exists(&format!("yurt-{slot}")) {
        found.push(format!("cgroup yurt-{slot}"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_removes_everything_and_up_restarts_with_the_state() -> anyhow::Result<()> {
    within(async {
        let rules_before = iptables_rules()?;
        let f = fresh("e2e-down", spec(2, 1, NetMode::Nat, true)).await?;
        let dir = f.dir().to_owned();
        let slot = f.fleet().state().slot.0;
        let cms: Api<ConfigMap> = Api::namespaced(f.client(), "default");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("survives".into()),
                ..ObjectMeta::default()
            },
            data: Some([("k".to_owned(), "v".to_owned())].into()),
            ..ConfigMap::default()
        };
        cms.create(&PostParams::default(), &cm).await?;
        let pid_files: Vec<_> = f
            .fleet()
            .plan()
            .hosts()
            .iter()
            .flat_map(|h| {
                f.fleet()
                    .components_of(h)
                    .map(|c| f.fleet().paths().host(h).pid_file(c.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let records: Vec<_> = pid_files
            .iter()
            .filter_map(|p| yurt_cluster::process::PidRecord::read(p))
            .collect();
        // Every process of the cloud host but those this fleet was not started with
        // (Prometheus, the second API server and its tunnel server, the node processes
        // only a bare fleet's cloud runs), and every edge process on both edge hosts.
        use yurt_cluster::components::Component;
        let cloud = Component::CLOUD
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    Component::Prometheus
                        | Component::KubeApiserverReplica
                        | Component::TunnelServerReplica
                ) && !Component::NODE.contains(c)
            })
            .count();
        ensure!(
            pid_files.len() == cloud + 2 * Component::EDGE.len()
                && records.len() == pid_files.len(),
            "every process has a pid file ({} files): {records:?}",
            pid_files.len()
        );
        let cgroups = yurt_cluster::cgroup::Cgroups::detect()?;
        let cg = format!("yurt-{slot}");
        ensure!(
            cgroups.pids(&cg).len() > records.len(),
            "containers and shims run in the fleet's cgroups"
        );

        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            yurt_cluster::down(&machine(), &d, false, &yurt_cluster::progress::LineReporter)
        })
        .await??;
        assert!(
            records.iter().all(|r| !r.is_alive()),
            "a fleet process survived"
        );
        assert_eq!(leftovers(&dir, slot), Vec::<String>::new());
        assert_eq!(
            iptables_rules()?,
            rules_before,
            "this machine's iptables rules changed"
        );
        assert!(
            dir.join("fleet.json").exists() && dir.join("pki/ca.crt").exists(),
            "state kept"
        );

        // Up again on the same folder: same fleet, same data.
        let again = yurt_cluster::up(
            &machine(),
            &dir,
            UpOptions::default(),
            std::sync::Arc::new(yurt_cluster::progress::LineReporter),
        )
        .await?;
        let client = again.client().await?;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let back = cms.get("survives").await?;
        assert_eq!(
            back.data.unwrap_or_default().get("k").map(String::as_str),
            Some("v")
        );
        assert_eq!(again.state().slot.0, slot);
        drop(again);
        drop(f); // removes the fleet and its data
        assert_eq!(leftovers(&dir, slot), Vec::<String>::new());
        assert!(!dir.exists(), "purged");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_fleet_runs_pods_and_the_cloud_reaches_every_kubelet() -> anyhow::Result<()> {
    within(async {
        // Every other fleet of the suite is `nat` (the default): this one checks `routed`.
        let f = fresh("e2e-routed", spec(2, 2, NetMode::Routed, true)).await?;
        for node in ["edge-a1", "edge-b1"] {
            assert_eq!(f.node_ready(node).await?, "True", "{node}");
        }
        let pods: Api<Pod> = Api::namespaced(f.client(), "default");
        let list = pods.list(&ListParams::default()).await?;
        ensure!(
            list.items.len() == 2,
            "one sample pod per pool: {}",
            list.items.len()
        );
        for p in &list.items {
            assert_eq!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running")
            );
        }
        let plan = f.fleet().plan();
        let cloud = plan.netns(&HostId::Cloud);
        for e in &plan.edges {
            yurt_cluster::netns::connect_tcp(
                &cloud,
                SocketAddr::from((e.ip, 10250)),
                Duration::from_secs(3),
            )
            .with_context(|| format!("cloud -> {} kubelet", e.name))?;
        }
        let logs = f.kubectl(&["logs", "-l", "app=web", "--tail=1"]);
        ensure!(logs.is_ok(), "kubectl logs in a routed fleet: {logs:?}");
        // Sites reach each other: a pool-a pod gets an answer from pool-b's Service.
        let pool_b = f.kubectl(&[
            "get",
            "svc",
            "web-pool-b",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let pod_a = f.kubectl(&[
            "get",
            "pods",
            "-l",
            &yurt_cluster::sample::pod_selector("pool-a"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])?;
        let across = f.kubectl(&[
            "exec",
            &pod_a,
            "--",
            "wget",
            "-qO-",
            &format!("http://{pool_b}/"),
        ])?;
        ensure!(across.contains("in pool-b"), "pool-a -> pool-b: {across}");
        // A process that dies without the test stopping it is reported, with its log,
        // so no test can pass over a crash (the testkit fails the test that sees one).
        ensure!(
            yurt_testkit::crash_report(f.fleet()).is_none(),
            "nothing crashed yet"
        );
        let host = HostId::Edge("edge-a1".parse()?);
        let pid_file = f.fleet().paths().host(&host).pid_file("yurt-hub");
        let hub = yurt_cluster::process::PidRecord::read(&pid_file).context("the hub's pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(hub.pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let report = wait_for(
            "the killed hub to be reported",
            Duration::from_secs(10),
            || async { Ok(yurt_testkit::crash_report(f.fleet())) },
        )
        .await?;
        ensure!(
            report.contains("yurt-hub on edge-a1") && report.contains("yurt-hub.log"),
            "the report names the process and its log: {report}"
        );
        for (host, process, result) in f.fleet().restart_crashed().await {
            result.with_context(|| format!("restarting {process} on {host}"))?;
        }
        ensure!(yurt_testkit::crash_report(f.fleet()).is_none(), "restarted");
        Ok(())
    })
    .await
}

/// Certificates rotated with a short signing duration: kube-controller-manager signs for
/// six minutes (backdated five, so one minute left at issue). A hub asking for its
/// serving certificate by CSR renews it again and again, each new one is presented from
/// the next connection, and the hub stays ready throughout, with no restart. Then a host
/// joined with a bootstrap token, whose every certificate comes from a CSR: kubelet's
/// client and serving certificates and its hub's client certificate are renewed while
/// its Node stays Ready and its pod answers, looked at every second for two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_renews_short_lived_serving_certificates_and_stays_ready() -> anyhow::Result<()> {
    const NODE: &str = "edge-a1";
    within(async {
        let mut f = yurt_testkit::fresh_with(
            "e2e-rotation",
            UpOptions {
                spec: Some(spec(1, 1, NetMode::Nat, false)),
                cluster_signing_duration: Some(Duration::from_secs(6 * 60)),
                ..UpOptions::default()
            },
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let hub = f.start_extra_hub(NODE, dir.path())?;
        wait_for("the extra hub ready", Duration::from_secs(60), || async {
            Ok(hub.ready(&f)?.then_some(()))
        })
        .await
        .with_context(|| hub.log())?;
        let first = hub.presented_expiry(&f)?;

        // Two renewals (each about half a minute after the last), watched every second:
        // ready, and a pod's TLS check passing, at every look.
        let mut seen = vec![first];
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        while seen.len() < 3 {
            ensure!(
                std::time::Instant::now() < deadline,
                "only {} certificates presented in 150 s: {seen:?}\n{}",
                seen.len(),
                hub.log()
            );
            ensure!(
                hub.ready(&f)?,
                "the hub stopped being ready:\n{}",
                hub.log()
            );
            let expiry = hub.presented_expiry(&f).with_context(|| hub.log())?;
            if seen.last() != Some(&expiry) {
                seen.push(expiry);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let log = hub.log();
        ensure!(
            log.matches("serving certificate issued").count() >= 3,
            "{log}"
        );
        drop(hub);

        f.yurt(&["fleet", "add-host", "edge-x", "--pool", "pool-a"])?;
        f.fleet_mut().refresh()?;
        let (token, hash) = f.join_token_and_hash()?;
        let yurt = machine().yurt_binary.display().to_string();
        let out = f.yurt(&[
            "fleet",
            "exec",
            "edge-x",
            "--",
            &yurt,
            "adm",
            "join",
            "10.10.0.1:6443",
            "--token",
            &token,
            "--discovery-token-ca-cert-hash",
            &hash,
            "--nodepool-name",
            "pool-a",
        ])?;
        ensure!(out.contains("joined the cluster as node edge-x"), "{out}");
        let ip = f
            .busybox_pod_on(
                "edge-x",
                "web-rotating",
                "web",
                &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/"],
            )
            .await?;
        let peer = f.fleet().plan().netns(&HostId::Edge(NODE.parse()?));
        let web = SocketAddr::new(ip.parse()?, 8080);
        let answers = || {
            yurt_cluster::netns::connect_tcp(&peer, web, Duration::from_secs(2)).is_ok()
        };
        wait_for("the pod on edge-x answering", Duration::from_secs(60), || async {
            Ok(answers().then_some(()))
        })
        .await?;
        // Certificates issued to the joined node, by signer.
        let issued = |f: &TestFleet| -> anyhow::Result<Vec<(String, usize)>> {
            let all: serde_json::Value =
                serde_json::from_str(&f.kubectl(&["get", "csr", "-o", "json"])?)?;
            let items = all["items"].as_array().context("items")?;
            Ok(RENEWED
                .iter()
                .map(|signer| {
                    let n = items
                        .iter()
                        .filter(|c| {
                            c["spec"]["signerName"] == *signer
                                && c["spec"]["username"] == "system:node:edge-x"
                                && c["status"]["certificate"].is_string()
                        })
                        .count();
                    ((*signer).to_owned(), n)
                })
                .collect())
        };
        const RENEWED: [&str; 3] = [
            "kubernetes.io/kube-apiserver-client-kubelet",
            "kubernetes.io/kube-apiserver-client",
            "kubernetes.io/kubelet-serving",
        ];
        let before = issued(&f)?;
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < until {
            ensure!(
                f.node_ready("edge-x").await? == "True",
                "edge-x stopped being Ready while its certificates rotate"
            );
            ensure!(answers(), "the pod on edge-x stopped answering");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let after = issued(&f)?;
        eprintln!("certificates issued to edge-x by signer, before and after two minutes: {before:?} → {after:?}");
        for ((signer, was), (_, now)) in before.iter().zip(&after) {
            ensure!(
                now >= &(was + 2),
                "{signer}: {} certificates issued to edge-x in two minutes (before {was}, after {now})",
                now.saturating_sub(*was)
            );
        }
        let restarts = f.kubectl(&[
            "get",
            "pod",
            "web-rotating",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])?;
        ensure!(restarts.trim() == "0", "the pod restarted: {restarts}");
        Ok(())
    })
    .await
}
