//! The fleet's image registry (ADR 005, issue 11), on the shared fleet: pods name
//! `busybox` as anywhere else and pull it over their host's link; the port every host
//! and pod reaches refuses pushes, and the push port refuses anyone without the
//! fleet's password.

use std::time::Duration;

use anyhow::{Context, ensure};
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
            let log = f.kubectl(&["logs", "-n", ns, name])?;
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
