//! The fleet's image registry (ADR 005, issue 11), on the shared fleet: pods name
//! `busybox` as anywhere else and pull it over their host's link; the port every host
//! and pod reaches refuses pushes, and the push port refuses anyone without the
//! fleet's password.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use yurt_testkit::{TestFleet, shared, wait_for};

/// Bound for a whole test, fleet start included.
const TEST_TIMEOUT: Duration = Duration::from_secs(420);
const POD_TIMEOUT: Duration = Duration::from_secs(120);
const EDGES: [&str; 4] = ["edge-a1", "edge-a2", "edge-b1", "edge-b2"];

async fn within<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .context("test did not finish in time")?
}

/// A pod on `node` that echoes `word` once, with `image` and pull `policy`.
fn echo_pod(
    ns: &str,
    name: &str,
    node: &str,
    image: &str,
    policy: &str,
    word: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": policy,
                "command": ["echo", word],
            }],
        },
    })
}

/// Waits until pod `ns/name` has succeeded; fails early with the waiting reason of a
/// pull that will not succeed.
async fn wait_succeeded(f: &TestFleet, ns: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(f.client(), ns);
    wait_for(&format!("pod {ns}/{name} Succeeded"), POD_TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            let status = p.status.unwrap_or_default();
            if status.phase.as_deref() == Some("Failed") {
                anyhow::bail!("pod {ns}/{name} failed: {status:?}");
            }
            Ok((status.phase.as_deref() == Some("Succeeded")).then_some(()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_naming_busybox_pull_it_from_the_fleet_registry_on_every_edge_node()
-> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let ns = "registry-pull";
        f.fresh_namespace(ns)?;
        let mut pods = Vec::new();
        for (i, node) in EDGES.iter().enumerate() {
            // The default name (`:latest`, so always pulled), a pinned tag pulled every
            // time, and the full upstream reference.
            for (j, (image, policy)) in [
                ("busybox", "IfNotPresent"),
                ("busybox:1.35", "Always"),
                ("docker.io/library/busybox:latest", "Always"),
            ]
            .iter()
            .enumerate()
            {
                let name = format!("bb-{i}-{j}");
                let word = format!("hello-from-{node}-{j}");
                f.apply(&echo_pod(ns, &name, node, image, policy, &word))?;
                pods.push((name, word));
            }
        }
        for (name, word) in &pods {
            wait_succeeded(&f, ns, name).await?;
            let log = f.finished_pod_log(ns, name).await?;
            ensure!(log.trim() == word, "{name}: {log}");
        }
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}

/// `curl` from inside edge host `host`, trusting the fleet CA: the HTTP status code.
fn curl_status(f: &TestFleet, host: &str, args: &[&str]) -> anyhow::Result<String> {
    let ca = f.dir().join("pki/ca.crt");
    let ca = ca.to_string_lossy();
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        ca.as_ref(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    argv.extend_from_slice(args);
    let out = f.exec(host, &argv)?;
    ensure!(out.status.success(), "curl {args:?} in {host}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_can_pull_but_not_push_and_the_push_port_wants_the_password() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let pull = "https://10.10.0.1:5000/v2";
        let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
        assert_eq!(
            curl_status(
                &f,
                "edge-b2",
                &[
                    "-H",
                    accept,
                    &format!("{pull}/library/busybox/manifests/latest")
                ]
            )?,
            "200",
            "an edge host reads the registry"
        );
        let start_upload = |url: &str| -> anyhow::Result<String> {
            curl_status(&f, "edge-b2", &["-X", "POST", url])
        };
        let refused = start_upload(&format!("{pull}/library/busybox/blobs/uploads/"))?;
        ensure!(
            refused == "405" || refused == "503",
            "the fleet port accepted an upload: {refused}"
        );
        let push = "https://10.10.0.1:5001/v2";
        assert_eq!(
            start_upload(&format!("{push}/library/busybox/blobs/uploads/"))?,
            "401",
            "no password"
        );
        assert_eq!(
            curl_status(
                &f,
                "edge-b2",
                &[
                    "-u",
                    "yurt:not-the-password",
                    "-X",
                    "POST",
                    &format!("{push}/library/busybox/blobs/uploads/")
                ]
            )?,
            "401",
            "a wrong password"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_pushed_with_yurt_image_push_run_by_tag_and_by_digest() -> anyhow::Result<()> {
    within(async {
        let f = shared().await?;
        let ns = "registry-push";
        f.fresh_namespace(ns)?;
        let word = format!("pushed-{}", std::process::id());
        // A tag of its own: a node keeps what an earlier run pushed under an old tag.
        let tag = format!("e2e/hello:{word}");
        let digest = f.build_and_push(&word, &[&tag, "docker.io/e2e/hello:latest"])?;

        // By tag, on two nodes.
        for (i, node) in ["edge-a2", "edge-b1"].iter().enumerate() {
            let mut pod = echo_pod(ns, &format!("tag-{i}"), node, &tag, "IfNotPresent", "");
            pod["spec"]["containers"][0]["command"] = serde_json::json!(["cat", "/data/word"]);
            f.apply(&pod)?;
        }
        // A Deployment by digest.
        let by_digest = format!("docker.io/e2e/hello@{digest}");
        f.apply(&serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "by-digest", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "by-digest"}},
                "template": {
                    "metadata": {"labels": {"app": "by-digest"}},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "containers": [{"name": "main", "image": by_digest,
                            "command": ["sh", "-c", "cat /data/word; echo; exec sleep 3600"]}],
                    },
                },
            },
        }))?;
        for i in 0..2 {
            let name = format!("tag-{i}");
            wait_succeeded(&f, ns, &name).await?;
            let log = f.finished_pod_log(ns, &name).await?;
            ensure!(log.trim() == word, "{name}: {log}");
        }
        f.kubectl(&[
            "rollout",
            "status",
            "-n",
            ns,
            "deployment/by-digest",
            "--timeout=120s",
        ])?;
        // The container has started; its first line may take a moment to reach the log.
        wait_for(
            "the by-digest pod's word in its log",
            POD_TIMEOUT,
            || async {
                let log = f.kubectl(&["logs", "-n", ns, "deployment/by-digest"])?;
                Ok((log.trim() == word).then_some(()))
            },
        )
        .await?;

        // An image nobody pushed: the kubelet's ordinary ErrImagePull, with the
        // registry's word for it.
        f.apply(&echo_pod(
            ns,
            "missing",
            "edge-a1",
            "e2e/not-pushed:1",
            "IfNotPresent",
            "x",
        ))?;
        let pods: Api<Pod> = Api::namespaced(f.client(), ns);
        let reason = wait_for("the missing image's pull to fail", POD_TIMEOUT, || {
            let pods = pods.clone();
            async move {
                let p = pods.get("missing").await?;
                let waiting = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c.into_iter().next())
                    .and_then(|c| c.state)
                    .and_then(|s| s.waiting);
                Ok(waiting
                    .filter(|w| {
                        matches!(
                            w.reason.as_deref(),
                            Some("ErrImagePull" | "ImagePullBackOff")
                        )
                    })
                    .map(|w| w.reason.unwrap_or_default()))
            }
        })
        .await?;
        // kubelet writes the pod's status and its events separately (events go
        // through a batching recorder): the status can come first.
        let want = "docker.io/e2e/not-pushed:1: not found";
        let events = || {
            f.kubectl(&[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "involvedObject.name=missing",
                "-o",
                "jsonpath={.items[*].message}",
            ])
        };
        let found = wait_for(
            "the registry's message among the pod's events",
            POD_TIMEOUT,
            || async { Ok(events()?.contains(want).then_some(())) },
        )
        .await;
        if let Err(e) = found {
            bail!(
                "{reason}, but no registry message among the events: {}: {e:#}",
                events()?
            );
        }
        f.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
        Ok(())
    })
    .await
}
