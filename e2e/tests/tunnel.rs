//! The cloud-edge tunnel on a `nat` fleet of its own (issue 12): the cloud cannot open a
//! connection to any edge host, yet `kubectl logs`, `logs -f`, `exec -i`, `cp`,
//! `port-forward`, the node proxy and `pods/proxy` work, with both kubectl 1.20 and the
//! installed one; an interrupted `logs -f` ends at the agent too; a stopped agent gives a
//! 502 naming its node and a restarted one serves again; a cut link ends a stream with an
//! error and the agent reconnects once the link is back.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::{TestFleet, fresh, run_checked, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(900);
const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "tunnel";
const CHATTY_NODE: &str = "edge-a1";
const FILES_NODE: &str = "edge-b1";
/// Bytes of the blob the `files` pod serves and port-forward fetches.
const BLOB_MIB: usize = 128;

fn pod(name: &str, node: &str, script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
        },
    })
}

/// A Service `name` in front of the pod `name`.
fn service(name: &str, port: u16, target: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}]},
    })
}

/// `kubectl port-forward` of a port of the `files` pod, stopped when dropped.
struct PortForward {
    child: std::process::Child,
    /// The local port it listens on.
    port: u16,
}

impl PortForward {
    fn start(f: &TestFleet, remote: u16) -> anyhow::Result<Self> {
        let child = f
            .fleet()
            .kubectl()
            .args(["port-forward", "-n", NS, "pod/files", &format!(":{remote}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut forward = Self { child, port: 0 };
        let mut first = String::new();
        let mut said = BufReader::new(forward.child.stdout.take().context("stdout")?);
        said.read_line(&mut first)?;
        // It says "Handling connection" on each one: keep reading, or it dies of EPIPE.
        std::thread::spawn(move || std::io::copy(&mut said, &mut std::io::sink()));
        forward.port = first
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("port-forward said {first:?}"))?;
        Ok(forward)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SHA-256 of `path` in the `files` pod, hex.
fn pod_sha256(f: &TestFleet, path: &str) -> anyhow::Result<String> {
    let script = format!("sha256sum {path} | cut -d' ' -f1");
    Ok(
        f.kubectl(&["exec", "-n", NS, "files", "--", "sh", "-c", &script])?
            .trim()
            .to_owned(),
    )
}

/// stderr of a kubectl run that must fail.
fn kubectl_fails(f: &TestFleet, args: &[&str]) -> anyhow::Result<String> {
    let out = f.fleet().kubectl().args(args).output()?;
    ensure!(
        !out.status.success(),
        "kubectl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A sample of the tunnel agent's metrics on `node`: the line starting `prefix `.
fn agent_metric(f: &TestFleet, node: &str, prefix: &str) -> anyhow::Result<u64> {
    let out = f.exec(node, &["curl", "-sf", "http://127.0.0.1:10266/metrics"])?;
    ensure!(out.status.success(), "agent metrics on {node}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .with_context(|| format!("no {prefix} in the agent's metrics"))?
        .trim()
        .parse()
        .with_context(|| prefix.to_owned())
}

/// Tunnelled connections open in the agent on `node`.
fn agent_open_streams(f: &TestFleet, node: &str) -> anyhow::Result<u64> {
    agent_metric(f, node, "yurt_tunnel_agent_open_streams")
}

/// Successful connections of the agent on `node` to the server so far.
fn agent_connects(f: &TestFleet, node: &str) -> anyhow::Result<u64> {
    agent_metric(
        f,
        node,
        "yurt_tunnel_agent_server_connects_total{reason=\"ok\"}",
    )
}

/// A number that differs between calls (names of probe objects).
fn next_probe() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A kubectl child (`logs -f`, `attach`) whose output lines arrive on a channel.
struct Follow {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    /// `kubectl logs -f` of the chatty pod.
    fn logs(cmd: Command) -> anyhow::Result<Self> {
        Self::start(cmd, &["logs", "-f", "-n", NS, "chatty", "--tail=1"])
    }

    fn start(mut cmd: Command, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn next_line(&self, within: Duration) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(within)
            .map_err(|e| anyhow::anyhow!("no log line within {within:?}: {e}"))
    }

    /// Waits for the process to end by itself.
    fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "kubectl logs -f still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_pods_behind_nat_through_the_tunnel_and_survives_agent_and_link_faults()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .context("the tunnel scenario took too long")?
}

async fn scenario() -> anyhow::Result<()> {
    let spec = FleetSpec {
        edge_nodes: 2,
        pools: 2,
        mode: NetMode::Nat,
        timing: Timing::Fast,
        sample_app: false,
    };
    let mut f = fresh("tunnel", spec).await?;
    f.fresh_namespace(NS)?;
    f.apply(&pod(
        "chatty",
        CHATTY_NODE,
        "i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.2; done",
    ))?;
    f.apply(&pod(
        "files",
        FILES_NODE,
        &format!(
            "mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1048576 count={BLOB_MIB} 2>/dev/null \
             && touch /www/ready && exec httpd -f -p 8080 -h /www"
        ),
    ))?;
    f.kubectl(&[
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        "pod/chatty",
        "pod/files",
        "--timeout=120s",
    ])?;

    // The cloud host has no route into the sites: only the tunnel gets there.
    let edge_ip = f.kubectl(&[
        "get",
        "node",
        FILES_NODE,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let direct = f.exec(
        "cloud",
        &[
            "curl",
            "-sk",
            "--max-time",
            "3",
            &format!("https://{edge_ip}:10250/healthz"),
        ],
    )?;
    ensure!(
        !direct.status.success(),
        "the cloud host reached {edge_ip}:10250 directly"
    );

    // logs, with kubectl 1.20 and the installed kubectl.
    let logs = f.kubectl(&["logs", "-n", NS, "chatty", "--tail=3"])?;
    ensure!(
        logs.lines().count() == 3 && logs.starts_with("line "),
        "{logs}"
    );
    let logs = f.kubectl_installed(&["logs", "-n", NS, "chatty", "--tail=2"])?;
    ensure!(logs.lines().count() == 2, "{logs}");

    // logs -f: lines keep coming; interrupted, its stream ends at the agent too. (The
    // API server keeps idle connections to kubelets for reuse, so streams other than
    // this one may stay open: the count must drop below what it was while following.)
    let following = {
        let follow = Follow::logs(f.fleet().kubectl())?;
        let first = follow.next_line(Duration::from_secs(20))?;
        let mut last = first.clone();
        for _ in 0..5 {
            last = follow.next_line(Duration::from_secs(10))?;
        }
        ensure!(first != last, "logs -f repeated {first:?}");
        let open = agent_open_streams(&f, CHATTY_NODE)?;
        ensure!(open >= 1, "no stream open for logs -f");
        open
    };
    wait_for(
        "the interrupted logs -f's stream to end at the agent",
        WAIT,
        || async { Ok((agent_open_streams(&f, CHATTY_NODE)? < following).then_some(())) },
    )
    .await?;

    // exec with stdin: 5 MiB in, its digest out.
    let input: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut exec = f
        .fleet()
        .kubectl()
        .args([
            "exec",
            "-i",
            "-n",
            NS,
            "files",
            "--",
            "sh",
            "-c",
            "cat > /tmp/in && sha256sum /tmp/in",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = exec.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input).map(|()| input));
    let out = exec.wait_with_output()?;
    let input = writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    ensure!(
        out.status.success(),
        "exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = String::from_utf8_lossy(&out.stdout);
    ensure!(
        remote.starts_with(&sha256_hex(&input)),
        "exec -i digest {remote} != local"
    );
    let echoed = f.kubectl_installed(&["exec", "-n", NS, "files", "--", "echo", "installed"])?;
    ensure!(echoed.trim() == "installed", "{echoed}");

    // kubectl cp, 20 times in a row (apiserver-network-proxy hung after a few).
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("payload");
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&local, &payload)?;
    let local = local.to_str().context("path")?.to_owned();
    for i in 0..20 {
        let started = Instant::now();
        f.kubectl(&["cp", &local, &format!("{NS}/files:/tmp/copy-{i}")])
            .with_context(|| format!("kubectl cp number {i}"))?;
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "cp {i} took {:?}",
            started.elapsed()
        );
    }
    let sums = f.kubectl(&[
        "exec",
        "-n",
        NS,
        "files",
        "--",
        "sh",
        "-c",
        "sha256sum /tmp/copy-* | cut -d' ' -f1 | sort -u",
    ])?;
    ensure!(sums.trim() == sha256_hex(&payload), "copies differ: {sums}");

    // port-forward: the whole blob down, checked against the pod's own digest.
    let fetched = {
        let down = PortForward::start(&f, 8080)?;
        run_checked(Command::new("sh").args([
            "-c",
            &format!(
                "curl -sf -o {blob} http://127.0.0.1:{port}/blob && sha256sum {blob} | cut -d' ' -f1",
                blob = dir.path().join("blob").display(),
                port = down.port,
            ),
        ]))?
    };
    let remote = pod_sha256(&f, "/www/blob")?;
    ensure!(
        fetched.trim() == remote && !remote.is_empty(),
        "port-forward {fetched} != {remote}"
    );

    // The node proxy (what Prometheus scrapes) and pods/proxy.
    let metrics = f.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{FILES_NODE}/proxy/metrics"),
    ])?;
    ensure!(
        metrics.contains("kubelet_"),
        "node proxy metrics: {}",
        &metrics[..metrics.len().min(300)]
    );
    let cadvisor = f.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{FILES_NODE}/proxy/metrics/cadvisor"),
    ])?;
    ensure!(cadvisor.contains("container_"), "cadvisor metrics missing");
    let ready = f.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/files:8080/proxy/ready"),
    ])?;
    ensure!(ready.is_empty(), "pods/proxy: {ready:?}");

    // services/proxy: the API server picks an endpoint, a pod on an edge node.
    f.apply(&service("files", 80, 8080))?;
    wait_for("services/proxy through the tunnel", WAIT, || async {
        Ok(f.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/services/files:80/proxy/ready"),
        ])
        .ok())
    })
    .await?;

    // A webhook addressed by Service, served on an edge node: the API server reaches it
    // through the tunnel (the pod records the first bytes it gets: a TLS ClientHello;
    // it cannot answer TLS, so the webhook's failurePolicy Ignore lets the create pass).
    f.apply(&pod(
        "hook",
        CHATTY_NODE,
        "while :; do nc -l -p 8443 | head -c 3 | od -An -tx1 >> /tmp/hello; done",
    ))?;
    f.apply(&service("hook", 443, 8443))?;
    f.kubectl(&[
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        "pod/hook",
        "--timeout=120s",
    ])?;
    f.apply(&json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "tunnel-e2e"},
        "webhooks": [{
            "name": "hook.tunnel-e2e.openyurt.io",
            "clientConfig": {"service": {"namespace": NS, "name": "hook", "port": 443, "path": "/validate"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"tunnel-e2e": "hook"}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 3,
        }],
    }))?;
    let hello = wait_for(
        "a ClientHello from the API server at the edge pod",
        WAIT,
        || async {
            let name = format!("probe-{}", next_probe());
            f.apply(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": NS, "labels": {"tunnel-e2e": "hook"}},
            }))?;
            let seen = f
                .kubectl(&["exec", "-n", NS, "hook", "--", "cat", "/tmp/hello"])
                .unwrap_or_default();
            Ok(seen.contains("16 03").then_some(seen))
        },
    )
    .await?;
    eprintln!("the webhook's pod received: {}", hello.trim());
    f.kubectl(&["delete", "validatingwebhookconfiguration", "tunnel-e2e"])?;

    // attach streams the container's output.
    {
        let attach = Follow::start(f.fleet().kubectl(), &["attach", "-n", NS, "chatty"])?;
        let first = attach.next_line(Duration::from_secs(20))?;
        let second = attach.next_line(Duration::from_secs(10))?;
        ensure!(
            first.starts_with("line ") && first != second,
            "attach: {first:?} {second:?}"
        );
    }

    // A stopped agent: a clean 502 naming the node, at once; started again, it serves.
    f.stop(FILES_NODE, "yurt-tunnel-agent")?;
    let err = wait_for("a 502 for the node without an agent", WAIT, || async {
        let err = kubectl_fails(&f, &["logs", "-n", NS, "files"])?;
        Ok(err
            .contains(&format!(
                "502 node {FILES_NODE} has no tunnel agent connected"
            ))
            .then_some(err))
    })
    .await?;
    ensure!(err.lines().count() <= 2, "{err}");
    f.start(FILES_NODE, "yurt-tunnel-agent").await?;
    wait_for("logs through the restarted agent", WAIT, || async {
        Ok(f.kubectl(&["exec", "-n", NS, "files", "--", "true"]).ok())
    })
    .await?;

    // A cut link in the middle of logs -f: the stream ends with an error; once the link
    // is back the agent reconnects and logs work again.
    let connects_before = agent_connects(&f, CHATTY_NODE)?;
    let mut follow = Follow::logs(f.fleet().kubectl())?;
    follow.next_line(Duration::from_secs(20))?;
    let cut = Instant::now();
    f.cut("pool-a")?;
    // The tunnel's keepalive (4 s PINGs, 8 s to answer in fast timing) ends the stream.
    let status = follow.wait_exit(Duration::from_secs(60));
    let ended_after = cut.elapsed();
    f.restore("pool-a")?;
    let status = status?;
    eprintln!("logs -f ended {ended_after:?} after the cut: {status}");
    let restored = Instant::now();
    drop(follow);
    wait_for("logs through the reconnected agent", WAIT, || async {
        Ok(f.kubectl(&["logs", "-n", NS, "chatty", "--tail=1"]).ok())
    })
    .await?;
    let back = restored.elapsed();
    eprintln!("link restored → kubectl logs works again after {back:?}");
    ensure!(
        agent_connects(&f, CHATTY_NODE)? > connects_before,
        "the agent did not reconnect"
    );
    if back > Duration::from_secs(60) {
        bail!("the agent took {back:?} to serve again after the link came back");
    }
    Ok(())
}
