//! The fleet registry under faults, on a fleet of its own (issue 11): a pool that cannot
//! reach the registry during a rollout shows ImagePullBackOff there and completes the
//! rollout once it can; a pool cut off altogether cannot pull and pulls once its link
//! is back; a node whose containerd lost its images pulls them again; a pod
//! started while the registry is down runs once it is back, and so does one whose pull the
//! registry's restart interrupted; a push onto a full disk fails
//! in one line and every earlier image still pulls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, run_checked, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(900);
const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "registry-faults";
const POOL_B: [&str; 2] = ["edge-b1", "edge-b2"];

/// A DaemonSet running `image` on every node, all replaced at once on an update.
fn daemon_set(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 4}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": image,
                        "command": ["sh", "-c", "cat /data/word; echo; exec sleep 3600"]}],
                },
            },
        },
    })
}

/// Per node: (pod name, image, Ready, waiting reason) of the DaemonSet's live pods.
async fn app_pods(f: &TestFleet) -> anyhow::Result<Vec<(String, String, String, bool, String)>> {
    let pods: Api<Pod> = Api::namespaced(f.client(), NS);
    let mut out = Vec::new();
    for p in pods
        .list(&ListParams::default().labels("app=app"))
        .await?
        .items
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let spec = p.spec.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .next()
            .unwrap_or_default();
        out.push((
            spec.node_name.unwrap_or_default(),
            p.metadata.name.unwrap_or_default(),
            spec.containers
                .first()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            ready,
            waiting,
        ));
    }
    out.sort();
    Ok(out)
}

/// Waits until every node runs one Ready pod of `image`.
async fn rolled_out(f: &TestFleet, image: &str) -> anyhow::Result<()> {
    wait_for(&format!("every node running {image}"), WAIT, || async {
        let pods = app_pods(f).await?;
        Ok((pods.len() == 4 && pods.iter().all(|p| p.2 == image && p.3)).then_some(()))
    })
    .await
}

/// Rejects (or, with `blocked` false, allows again) connections from `node` to the
/// registry's pull port: the site's path to the registry is cut, its API traffic is not,
/// so the kubelet still reports what it sees.
fn block_registry(f: &TestFleet, node: &str, blocked: bool) -> anyhow::Result<()> {
    let op = if blocked { "-I" } else { "-D" };
    let out = f.exec(
        node,
        &[
            "iptables",
            op,
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.10.0.1",
            "--dport",
            "5000",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    )?;
    ensure!(out.status.success(), "iptables in {node}: {out:?}");
    Ok(())
}

/// `ctr` against `node`'s containerd, in the namespace kubelet uses.
fn ctr(f: &TestFleet, node: &str, args: &[&str]) -> anyhow::Result<String> {
    let host = f.fleet().plan().host(node)?;
    let socket = f.fleet().paths().host(&host).containerd_socket();
    let mut cmd = Command::new("ctr");
    cmd.arg("-a").arg(socket).args(["-n", "k8s.io"]).args(args);
    run_checked(&mut cmd)
}

/// Waits until pod `name` has Succeeded; fails at once if it Failed.
async fn succeeded(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    wait_for(&format!("{name} Succeeded"), WAIT, || async {
        let p = pods.get(name).await?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        ensure!(phase != "Failed", "{name} failed");
        Ok((phase == "Succeeded").then_some(()))
    })
    .await
}

/// The events of pod `name`, their messages joined.
fn events(f: &TestFleet, name: &str) -> anyhow::Result<String> {
    f.kubectl(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "jsonpath={.items[*].message}",
    ])
}

/// A tmpfs of `size` mounted over `dir` with `dir`'s content copied in; undone on drop
/// (the content copied back), so a failing test leaves the storage as it was.
struct SmallDisk {
    dir: PathBuf,
    aside: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        let aside = dir.with_extension("aside");
        std::fs::rename(dir, &aside)?;
        std::fs::create_dir_all(dir)?;
        let disk = Self {
            dir: dir.to_owned(),
            aside,
        };
        run_checked(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "yurt-test-full",
                ])
                .arg(dir),
        )?;
        run_checked(
            Command::new("cp")
                .arg("-a")
                .arg(disk.aside.join("."))
                .arg(dir),
        )?;
        Ok(disk)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::rename(&self.aside, &self.dir);
    }
}

fn du_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = run_checked(Command::new("du").args(["-sb"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .context("du printed nothing")?
        .parse()
        .context("du")
}

/// Builds (not pushes) an image holding `mib` MiB of random bytes at `/data/noise`
/// besides busybox; the archive's path.
fn build_noise_image(f: &TestFleet, name: &str, mib: usize) -> anyhow::Result<PathBuf> {
    let dir = f.dir().join("test-images").join(name);
    std::fs::create_dir_all(dir.join("site"))?;
    let mut random = vec![0u8; mib * 1024 * 1024];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut random))?;
    std::fs::write(dir.join("site/noise"), &random)?;
    let archive = dir.join("image.tar");
    f.yurt(&[
        "image",
        "build",
        "--tag",
        &format!("yurt.local/{name}:1"),
        "--from-dir",
        &dir.join("site").to_string_lossy(),
        "--dest",
        "/data",
        "-o",
        &archive.to_string_lossy(),
    ])?;
    Ok(archive)
}

/// Slows (or, with `slow` false, no longer slows) what `node` receives from the
/// registry to about 300 packets a second (~400 KiB/s), so a pull takes long enough to
/// be interrupted.
fn throttle_registry(f: &TestFleet, node: &str, slow: bool) -> anyhow::Result<()> {
    let op = if slow { "-I" } else { "-D" };
    let out = f.exec(
        node,
        &[
            "iptables",
            op,
            "INPUT",
            "-p",
            "tcp",
            "-s",
            "10.10.0.1",
            "--sport",
            "5000",
            "-m",
            "hashlimit",
            "--hashlimit-above",
            "300/sec",
            "--hashlimit-burst",
            "50",
            "--hashlimit-mode",
            "srcip",
            "--hashlimit-name",
            "registry",
            "-j",
            "DROP",
        ],
    )?;
    ensure!(out.status.success(), "iptables in {node}: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_fail_where_the_registry_is_out_of_reach_and_recover_when_it_is_back()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut f = fresh(
            "e2e-registry",
            FleetSpec {
                edge_nodes: 4,
                pools: 2,
                mode: NetMode::Nat,
                timing: Timing::Fast,
                sample_app: false,
            },
        )
        .await?;
        f.fresh_namespace(NS)?;
        f.build_and_push("app-one", &["e2e/app:1"])?;
        f.build_and_push("app-two", &["e2e/app:2"])?;
        f.apply(&daemon_set("e2e/app:1"))?;
        rolled_out(&f, "e2e/app:1").await?;

        // A rollout while pool-b cannot reach the registry.
        for n in POOL_B {
            block_registry(&f, n, true)?;
        }
        f.apply(&daemon_set("e2e/app:2"))?;
        wait_for(
            "pool-a on app:2 and pool-b in ImagePullBackOff",
            WAIT,
            || async {
                let pods = app_pods(&f).await?;
                let a_done = pods
                    .iter()
                    .filter(|p| p.0.starts_with("edge-a"))
                    .filter(|p| p.2 == "e2e/app:2" && p.3)
                    .count()
                    == 2;
                let b_stuck = pods
                    .iter()
                    .filter(|p| POOL_B.contains(&p.0.as_str()))
                    .filter(|p| {
                        p.2 == "e2e/app:2" && matches!(p.4.as_str(), "ImagePullBackOff" | "ErrImagePull")
                    })
                    .count()
                    == 2;
                Ok((a_done && b_stuck).then_some(()))
            },
        )
        .await?;
        for n in POOL_B {
            block_registry(&f, n, false)?;
        }
        rolled_out(&f, "e2e/app:2").await?;

        // edge-a1's containerd loses every image but pause; its pod, rescheduled, pulls.
        let images = ctr(&f, "edge-a1", &["images", "ls", "-q"])?;
        let gone: Vec<&str> = images.lines().filter(|i| !i.contains("pause")).collect();
        ensure!(gone.iter().any(|i| i.contains("e2e/app:2")), "{images}");
        let mut rm = vec!["images", "rm"];
        rm.extend(gone.iter().copied());
        ctr(&f, "edge-a1", &rm)?;
        let left = ctr(&f, "edge-a1", &["images", "ls", "-q"])?;
        ensure!(!left.contains("e2e/app"), "still there: {left}");
        let old = app_pods(&f)
            .await?
            .into_iter()
            .find(|p| p.0 == "edge-a1")
            .context("no pod on edge-a1")?;
        f.kubectl(&["delete", "pod", "-n", NS, &old.1, "--wait=true"])?;
        rolled_out(&f, "e2e/app:2").await?;
        let new = app_pods(&f)
            .await?
            .into_iter()
            .find(|p| p.0 == "edge-a1")
            .context("no pod on edge-a1")?;
        let said = events(&f, &new.1)?;
        ensure!(
            said.contains("Successfully pulled image \"e2e/app:2\""),
            "edge-a1 did not pull again: {said}"
        );

        // The registry down when a pod starts: the kubelet's retries pull once it is back.
        f.build_and_push("app-three", &["e2e/app:3"])?;
        // A pool cut off altogether cannot pull (through its containerd, as the kubelet
        // would), and pulls again once its link is back.
        let pull_app3 = |f: &TestFleet| -> anyhow::Result<std::process::Output> {
            let host = f.fleet().plan().host("edge-b1")?;
            let hp = f.fleet().paths().host(&host);
            let (socket, certs) = (hp.containerd_socket(), hp.containerd_certs_d());
            f.exec(
                "edge-b1",
                &[
                    "ctr",
                    "--timeout",
                    "45s",
                    "-a",
                    &socket.to_string_lossy(),
                    "-n",
                    "k8s.io",
                    "images",
                    "pull",
                    "--hosts-dir",
                    &certs.to_string_lossy(),
                    // ctr does not complete short names as the kubelet does.
                    "docker.io/e2e/app:3",
                ],
            )
        };
        let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
        f.cut("pool-b")?;
        let cut_pull = pull_app3(&f);
        f.restore("pool-b")?;
        let cut_pull = cut_pull?;
        ensure!(!cut_pull.status.success(), "a cut pool pulled");
        ensure!(
            stderr(&cut_pull).contains("10.10.0.1:5000"),
            "the cut pull failed for another reason: {}",
            stderr(&cut_pull)
        );
        let pulled = pull_app3(&f)?;
        ensure!(
            pulled.status.success(),
            "no pull after restore: {}",
            stderr(&pulled)
        );
        f.stop("cloud", "registry")?;
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "while-down", "namespace": NS},
            "spec": {"nodeName": "edge-b2", "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "e2e/app:3", "command": ["cat", "/data/word"]}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(f.client(), NS);
        wait_for("while-down's pull to fail", WAIT, || async {
            let said = events(&f, "while-down")?;
            Ok(said.contains("Failed to pull image").then_some(()))
        })
        .await?;
        f.start("cloud", "registry").await?;
        succeeded(&pods, "while-down").await?;
        let log = f.finished_pod_log(NS, "while-down").await?;
        ensure!(log.trim() == "app-three", "while-down: {log}");

        // The registry restarted in the middle of a pull (edge-b2's link to it slowed,
        // so the transfer is in flight when the process goes): the pull goes on or is
        // retried, and the pod runs.
        let archive = build_noise_image(&f, "slow", 6)?;
        f.yurt(&["image", "push", &archive.to_string_lossy(), "e2e/slow:1"])?;
        throttle_registry(&f, "edge-b2", true)?;
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "mid-pull", "namespace": NS},
            "spec": {"nodeName": "edge-b2", "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "e2e/slow:1", "command": ["true"]}]},
        }))?;
        wait_for("mid-pull's image transfer under way", WAIT, || async {
            let active = ctr(&f, "edge-b2", &["content", "active"])?;
            Ok((active.lines().count() > 1).then_some(()))
        })
        .await?;
        f.stop("cloud", "registry")?;
        let images = ctr(&f, "edge-b2", &["images", "ls", "-q"])?;
        ensure!(
            !images.contains("e2e/slow"),
            "the pull had finished before the registry stopped: {images}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.start("cloud", "registry").await?;
        throttle_registry(&f, "edge-b2", false)?;
        succeeded(&pods, "mid-pull").await?;
        // The interrupted transfer failed the first pull ("unexpected EOF"); the
        // kubelet's retry succeeded.
        let said = events(&f, "mid-pull")?;
        ensure!(
            said.contains("Failed to pull image") && said.contains("Successfully pulled image"),
            "mid-pull was not interrupted and retried: {said}"
        );

        // A push onto a full disk fails in one line; what was there still pulls.
        let storage = f.dir().join("hosts/cloud/registry");
        let used = du_bytes(&storage)?;
        f.stop("cloud", "registry-push")?;
        f.stop("cloud", "registry")?;
        let disk = SmallDisk::mount(&storage, &format!("{}", used + 8 * 1024 * 1024))?;
        f.start("cloud", "registry").await?;
        f.start("cloud", "registry-push").await?;
        let archive = build_noise_image(&f, "big", 24)?;
        let out = Command::new(&yurt_testkit::machine().yurt_binary)
            .arg("--data-dir")
            .arg(f.dir())
            .args(["image", "push"])
            .arg(&archive)
            .args(["e2e/big:1"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim_end().lines().last().unwrap_or_default().to_owned();
        ensure!(
            out.status.code() == Some(1)
                && last.starts_with("error: pushing")
                && last.ends_with("no space left on device"),
            "a push onto a full disk: {:?} {err}",
            out.status
        );
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "after-full", "namespace": NS},
            // edge-a1 lost app:1 above: every blob of it comes from the registry.
            "spec": {"nodeName": "edge-a1", "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "e2e/app:1", "imagePullPolicy": "Always",
                    "command": ["cat", "/data/word"]}]},
        }))?;
        succeeded(&pods, "after-full").await?;
        let said = events(&f, "after-full")?;
        ensure!(said.contains("Successfully pulled image"), "not pulled: {said}");
        f.stop("cloud", "registry-push")?;
        f.stop("cloud", "registry")?;
        drop(disk);
        f.start("cloud", "registry").await?;
        f.start("cloud", "registry-push").await?;
        Ok(())
    })
    .await
    .context("test did not finish in time")?
}
