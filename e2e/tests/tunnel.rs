//! The cloud-edge tunnel on a `nat` fleet of its own (issue 12): the cloud cannot open a
//! connection to any edge host, yet `kubectl logs`, `logs -f`, `exec -i`, `exec -it`
//! with a resize, `attach`, `cp` (20 in a row), `port-forward` (1 GiB each way, 1000
//! connections at once through one agent), the node proxy, `pods/proxy`,
//! `services/proxy` and a Service-addressed webhook work, with both kubectl 1.20 and
//! the installed one; a stalled port-forward reader does not hold up a `logs -f`
//! through the same agent; an interrupted `logs -f` ends at the agent too; a stopped
//! agent gives a 502 naming its node and a restarted one serves again; a cut link ends a
//! stream and the agent reconnects once the link is back.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};
use yurt_cluster::{FleetSpec, NetMode, Timing, UpOptions};
use yurt_testkit::{TestFleet, fresh_with, run_checked, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(900);
const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "tunnel";
const CHATTY_NODE: &str = "edge-a1";
const FILES_NODE: &str = "edge-b1";
/// Bytes of the blob the `files` pod serves and port-forward fetches, and of what
/// port-forward uploads to it.
const BLOB_MIB: usize = 1024;
/// Bytes of the file the chatty pod serves to a port-forward reader that stalls.
const STALLED_MIB: usize = 256;
/// Concurrent connections through one port-forward (one agent).
const CONCURRENT: usize = 1000;

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

/// `kubectl port-forward` of a port of a pod, stopped when dropped.
struct PortForward {
    child: std::process::Child,
    /// The local port it listens on.
    port: u16,
}

impl PortForward {
    fn start(f: &TestFleet, pod: &str, remote: u16) -> anyhow::Result<Self> {
        let child = f
            .fleet()
            .kubectl()
            .args([
                "port-forward",
                "-n",
                NS,
                &format!("pod/{pod}"),
                &format!(":{remote}"),
            ])
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
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The length of an HTTP response's head in `bytes`, which must say 200.
fn head_len(bytes: &[u8]) -> anyhow::Result<usize> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let status = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]);
    ensure!(status.contains(" 200"), "the response began {status:?}");
    Ok(end + 4)
}

/// GETs `path` from 127.0.0.1:`port` over HTTP/1.0: the body's length and SHA-256,
/// hashed as it arrives.
fn http_get_digest(port: u16, path: &str) -> anyhow::Result<(usize, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut body: Option<(Sha256, usize)> = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some((hasher, size)) = &mut body {
            hasher.update(&buf[..n]);
            *size += n;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Ok(len) = head_len(&head) {
            let mut hasher = Sha256::new();
            hasher.update(&head[len..]);
            body = Some((hasher, head.len() - len));
        } else {
            ensure!(head.len() < 64 * 1024, "no response head in 64 KiB");
        }
    }
    let (hasher, size) = body.with_context(|| {
        format!(
            "the response ended in its head: {:?}",
            String::from_utf8_lossy(&head)
        )
    })?;
    Ok((size, hex(&hasher.finalize())))
}

/// Sends `mib` MiB (each MiB different) to 127.0.0.1:`port`, half-closes, and waits
/// for the far side to close: the SHA-256 of what was sent.
fn upload(port: u16, mib: usize) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let mut hasher = Sha256::new();
    for n in 0..mib {
        chunk[..8].copy_from_slice(&(n as u64).to_le_bytes());
        hasher.update(&chunk);
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Until the far side closes, bytes may still be on their way: stopping kubectl
    // port-forward now could cut them.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    ensure!(answer.is_empty(), "the receiver answered {answer:?}");
    Ok(hex(&hasher.finalize()))
}

/// Opens `count` connections to 127.0.0.1:`port` first, then GETs `path` on all of them
/// at once; every body must have the SHA-256 `digest`.
async fn concurrent_gets(port: u16, count: usize, path: &str, digest: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    }
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    let mut gets = tokio::task::JoinSet::new();
    for mut stream in streams {
        let request = request.clone();
        gets.spawn(async move {
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            let len = head_len(&response)?;
            anyhow::Ok(sha256_hex(&response[len..]))
        });
    }
    let mut wrong = Vec::new();
    while let Some(got) = tokio::time::timeout(WAIT, gets.join_next())
        .await
        .context("concurrent GETs through one port-forward")?
    {
        match got? {
            Ok(got) if got == digest => {}
            other => wrong.push(format!("{other:?}")),
        }
    }
    eprintln!(
        "{count} concurrent GETs through one port-forward: {:?}",
        started.elapsed()
    );
    ensure!(
        wrong.is_empty(),
        "{} of {count} GETs failed, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    Ok(())
}

/// Prometheus (`yurt up --prometheus`) has both targets of every kubelet up, scraped
/// through the API server's node proxy; its identity may GET through the node proxy and
/// nothing else; no edge host reaches its UI.
async fn prometheus_scrapes_every_kubelet(f: &TestFleet) -> anyhow::Result<()> {
    let plan = f.fleet().plan();
    let web = yurt_cluster::components::prometheus_address(plan);
    let mut want: Vec<(String, String)> = plan
        .edges
        .iter()
        .flat_map(|e| {
            ["kubelet", "kubelet-cadvisor"].map(|job| (job.to_owned(), e.name.to_string()))
        })
        .collect();
    want.sort();
    let targets_url = format!("http://{web}/api/v1/targets");
    let mut last = String::new();
    let seen = wait_for("every kubelet's targets up in Prometheus", WAIT, || {
        let targets = run_checked(Command::new("curl").args(["-sf", &targets_url]));
        let result = targets.and_then(|text| {
            let doc: serde_json::Value = serde_json::from_str(&text)?;
            let mut up: Vec<(String, String)> = Vec::new();
            for t in doc["data"]["activeTargets"]
                .as_array()
                .context("activeTargets")?
            {
                let label = |k: &str| t["labels"][k].as_str().unwrap_or_default().to_owned();
                if t["health"] == "up"
                    && t["scrapeUrl"]
                        .as_str()
                        .is_some_and(|u| u.contains("/proxy/metrics"))
                {
                    up.push((label("job"), label("instance")));
                }
            }
            up.sort();
            last = text;
            Ok(up)
        });
        let done = matches!(&result, Ok(up) if *up == want);
        async move { result.map(|up| done.then_some(up)) }
    })
    .await
    .with_context(|| format!("Prometheus' targets: {last}"))?;
    eprintln!("Prometheus targets up: {seen:?}");

    // Its identity: GET through the node proxy, nothing more.
    let kubeconfig = f.fleet().paths().pki().join("prometheus.kubeconfig");
    let as_prometheus = |args: &[&str]| {
        let mut c = f.fleet().kubectl();
        c.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--server={}", plan.api_url_from_host()))
            .args(args);
        c.output()
    };
    let node = plan.edges[0].name.to_string();
    let metrics = as_prometheus(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics"),
    ])?;
    ensure!(
        metrics.status.success() && String::from_utf8_lossy(&metrics.stdout).contains("kubelet_"),
        "Prometheus' identity could not read {node}'s metrics: {}",
        String::from_utf8_lossy(&metrics.stderr)
    );
    for (verb, resource, scope) in [
        ("list", "pods", "--all-namespaces"),
        ("get", "secrets", "--all-namespaces"),
        ("list", "nodes", "--subresource="),
        ("create", "nodes", "--subresource=proxy"),
        ("create", "pods", "--subresource=exec"),
    ] {
        let answer = as_prometheus(&["auth", "can-i", verb, resource, scope])?;
        ensure!(
            String::from_utf8_lossy(&answer.stdout).trim() == "no",
            "Prometheus' identity may {verb} {resource} ({scope}): {answer:?}"
        );
    }
    let denied = as_prometheus(&["get", "pods", "-A"])?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "Prometheus' identity listed pods: {denied:?}"
    );

    // Its UI listens on the cloud host's link to this machine: no edge host gets there.
    let from_edge = f.exec(
        &node,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{web}/-/ready"),
        ],
    )?;
    ensure!(
        !from_edge.status.success(),
        "{node} reached Prometheus at {web}"
    );
    Ok(())
}

/// The webhook's request handler, run by socat for each TLS connection: reads an HTTP
/// request, takes the AdmissionReview's request UID (the first `uid` in the body: Go
/// writes `request.uid` before the object) and denies it, naming the pod.
const WEBHOOK_HANDLER: &str = r#"#!/bin/sh
len=0
while IFS= read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in [Cc]ontent-[Ll]ength:*) len=${line#*: } ;; esac
done
body=$(head -c "$len")
uid=$(printf '%s' "$body" | grep -o '"uid":"[^"]*"' | head -1 | cut -d'"' -f4)
answer="{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":\"$uid\",\"allowed\":false,\"status\":{\"code\":403,\"message\":\"denied at the edge by $(hostname)\"}}}"
printf 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#answer}" "$answer"
"#;

/// A validating webhook served by a pod on an edge node (socat with TLS in front of
/// [`WEBHOOK_HANDLER`]), addressed by Service, with a serving certificate from the
/// fleet's CA: a labelled ConfigMap is denied with the pod's own words, others pass.
async fn edge_webhook_denies(f: &TestFleet) -> anyhow::Result<()> {
    use yurt_cluster::image::{ImageFile, ImageSpec};
    use yurt_core::pki::{CertSpec, CertificateAuthority};
    const IMAGE: &str = "yurt.local/edge-webhook:1";
    let mut spec =
        ImageSpec::busybox(IMAGE).with_program(std::path::Path::new("/usr/bin/socat"))?;
    spec.files.push(ImageFile {
        path: "handler.sh".into(),
        contents: WEBHOOK_HANDLER.as_bytes().to_vec(),
        mode: 0o755,
    });
    f.add_image(spec).await?;
    let pki = f.fleet().paths().pki();
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
    let ca = CertificateAuthority::from_pem(
        yurt_cluster::pki::CA_NAME,
        &ca_pem,
        &std::fs::read_to_string(pki.join("ca.key"))?,
    )?;
    let dns = format!("hook.{NS}.svc");
    let serving = ca.issue(&CertSpec::server(&dns, &[&dns], &[]))?;
    f.apply(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hook-tls", "namespace": NS},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem},
    }))?;
    f.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hook", "namespace": NS, "labels": {"app": "hook"}},
        "spec": {
            "nodeName": CHATTY_NODE,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": IMAGE,
                "command": ["socat",
                    "OPENSSL-LISTEN:8443,reuseaddr,fork,cert=/tls/tls.crt,key=/tls/tls.key,verify=0",
                    "EXEC:/handler.sh"],
                "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}],
            }],
            "volumes": [{"name": "tls", "secret": {"secretName": "hook-tls"}}],
        },
    }))?;
    f.apply(&service("hook", 443, 8443))?;
    f.kubectl(&[
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        "pod/hook",
        "--timeout=120s",
    ])?;
    use base64::Engine as _;
    f.apply(&json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "tunnel-e2e"},
        "webhooks": [{
            "name": "hook.tunnel-e2e.openyurt.io",
            "clientConfig": {
                "service": {"namespace": NS, "name": "hook", "port": 443, "path": "/validate"},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca_pem),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"tunnel-e2e": "hook"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    }))?;
    let denial = wait_for("the edge webhook's denial", WAIT, || async {
        let name = format!("probe-{}", next_probe());
        let created = f.fleet().kubectl().args([
            "create", "configmap", &name, "-n", NS,
        ]).output()?;
        ensure!(created.status.success(), "an unlabelled ConfigMap: {created:?}");
        let labelled = serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-l"), "namespace": NS, "labels": {"tunnel-e2e": "hook"}},
        }))?;
        let mut apply = f.fleet().kubectl().args(["create", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        apply.stdin.take().context("stdin")?.write_all(labelled.as_bytes())?;
        let out = apply.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        Ok((!out.status.success() && err.contains("denied at the edge by hook")).then_some(err))
    })
    .await?;
    eprintln!("the edge webhook answered: {}", denial.trim());
    f.kubectl(&["delete", "validatingwebhookconfiguration", "tunnel-e2e"])?;
    Ok(())
}

/// `kubectl exec -it` on a terminal of its own (a pty): the remote shell sees the
/// terminal's size, and a new size once the terminal is resized.
fn tty_exec_follows_resizes(f: &TestFleet) -> anyhow::Result<()> {
    use nix::pty::{Winsize, openpty};
    let size = Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None)?;
    let mut child = f
        .fleet()
        .kubectl()
        .args(["exec", "-it", "-n", NS, "files", "--", "sh"])
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?))
        .spawn()?;
    let mut terminal = std::fs::File::from(pty.master);
    let mut screen_reader = terminal.try_clone()?;
    let (tx, screen) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once kubectl has exited and the pty is closed.
        while let Ok(n @ 1..) = screen_reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    // The terminal's output up to and including `want` (the rest is kept).
    let mut until = |want: &str| -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = String::from_utf8_lossy(&seen).find(want) {
                let upto: Vec<u8> = seen.drain(..at + want.len()).collect();
                return Ok(String::from_utf8_lossy(&upto).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let more = screen.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!(
                    "exec -it: no {want:?} on the terminal; it shows {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })?;
            seen.extend(more);
        }
    };
    // Each command ends by printing a computed marker, which its echoed input lacks.
    let result = (|| {
        terminal.write_all(b"stty size; echo mark-$((1000+1))\n")?;
        let shown = until("mark-1001")?;
        ensure!(
            shown.contains("33 101"),
            "exec -it saw the size as {shown:?}"
        );
        // What a terminal does when its window changes: new size, then SIGWINCH.
        run_checked(
            Command::new("stty")
                .args(["rows", "47", "cols", "133"])
                .stdin(Stdio::from(pty.slave.try_clone()?)),
        )?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGWINCH,
        )?;
        // The resize travels on a stream of its own: ask until the shell has it.
        let mut answers = Vec::new();
        for k in 2..40 {
            terminal.write_all(format!("stty size; echo mark-$((1000+{k}))\n").as_bytes())?;
            let shown = until(&format!("mark-{}", 1000 + k))?;
            if shown.contains("47 133") {
                break;
            }
            answers.push(shown);
            ensure!(k < 39, "the resize never reached the shell: {answers:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
        terminal.write_all(b"exit 3\n")?;
        let status = child.wait()?;
        ensure!(status.code() == Some(3), "exec -it ended with {status}");
        anyhow::Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
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

/// Server replicas the agent on `node` holds a connection to.
fn agent_replicas(f: &TestFleet, node: &str) -> anyhow::Result<u64> {
    agent_metric(f, node, "yurt_tunnel_agent_connected")
}

/// The fleet runs two API servers, each with its own tunnel server, and every agent holds
/// a connection to both (as with two control-plane machines). A tunnel server killed
/// outright (SIGKILL: no drain, no GOAWAY) ends only the streams through it: `logs -f`
/// through the other API server keeps flowing, and logs and exec through it reach every
/// node at once, without any agent reconnecting. Started again, it gets every agent back.
async fn a_killed_tunnel_server_costs_only_its_streams(f: &mut TestFleet) -> anyhow::Result<()> {
    let nodes = [CHATTY_NODE, FILES_NODE];
    let second = format!(
        "https://{}:{}",
        f.fleet().plan().cloud_host_side_ip().addr,
        yurt_cluster::components::API_REPLICA_PORT
    );
    let via_second = |f: &TestFleet| {
        let mut cmd = f.fleet().kubectl();
        cmd.args(["--server", &second]);
        cmd
    };
    // An agent restarted by an earlier step may still be in its backoff towards the
    // second tunnel server.
    let mut connects = Vec::new();
    for node in nodes {
        wait_for(
            &format!("the agent on {node} on both tunnel servers"),
            WAIT,
            || async { Ok((agent_replicas(f, node)? == 2).then_some(())) },
        )
        .await?;
        connects.push(agent_connects(f, node)?);
    }
    let mut through_first = Follow::logs(f.fleet().kubectl())?;
    let through_second = Follow::logs(via_second(f))?;
    through_first.next_line(Duration::from_secs(20))?;
    through_second.next_line(Duration::from_secs(20))?;

    let killed = Instant::now();
    f.kill("cloud", "yurt-tunnel-server")?;
    let status = through_first.wait_exit(Duration::from_secs(30))?;
    eprintln!(
        "logs -f through the killed tunnel server ended after {:?} ({status})",
        killed.elapsed()
    );
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(through_second.next_line(Duration::from_secs(10))?);
    }
    seen.dedup();
    ensure!(
        seen.len() == 10,
        "logs -f through the other tunnel server: {seen:?}"
    );
    for (node, pod) in [(CHATTY_NODE, "chatty"), (FILES_NODE, "files")] {
        run_checked(via_second(f).args(["logs", "-n", NS, pod, "--tail=1"]))
            .with_context(|| format!("logs from {node} through the second API server"))?;
        run_checked(via_second(f).args(["exec", "-n", NS, pod, "--", "true"]))
            .with_context(|| format!("exec on {node} through the second API server"))?;
    }
    let err = kubectl_fails(f, &["logs", "-n", NS, "files", "--tail=1"])?;
    eprintln!(
        "through the API server whose tunnel server is dead: {}",
        err.trim()
    );
    for (node, before) in nodes.into_iter().zip(&connects) {
        let now = agent_connects(f, node)?;
        ensure!(
            now == *before,
            "the agent on {node} connected {} times while one tunnel server was dead",
            now - before
        );
        ensure!(
            agent_replicas(f, node)? == 1,
            "the agent on {node} does not hold exactly the surviving connection"
        );
    }
    drop(through_second);

    f.start("cloud", "yurt-tunnel-server").await?;
    for node in nodes {
        wait_for(
            &format!("the agent on {node} back on both tunnel servers"),
            WAIT,
            || async { Ok((agent_replicas(f, node)? == 2).then_some(())) },
        )
        .await?;
    }
    wait_for("logs through the restarted tunnel server", WAIT, || async {
        Ok(f.kubectl(&["logs", "-n", NS, "files", "--tail=1"]).ok())
    })
    .await?;
    Ok(())
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
    let mut f = fresh_with(
        "tunnel",
        UpOptions {
            spec: Some(spec),
            prometheus: Some(true),
            second_api_server: Some(true),
            ..UpOptions::default()
        },
    )
    .await?;
    f.fresh_namespace(NS)?;
    f.apply(&pod(
        "chatty",
        CHATTY_NODE,
        &format!(
            "mkdir -p /www && dd if=/dev/zero of=/www/big bs=1048576 count={STALLED_MIB} 2>/dev/null \
             && httpd -p 8080 -h /www; \
             i=0; while :; do echo \"line $i\"; i=$((i+1)); sleep 0.2; done"
        ),
    ))?;
    f.apply(&pod(
        "files",
        FILES_NODE,
        &format!(
            // nc's stdin is a pipe that never ends: busybox nc half-closes the socket when
            // its stdin ends, and containerd then closes a port-forward connection 1 s
            // after either direction ends, cutting an upload that takes longer.
            "sleep 1000000 | {{ nc -l -p 9000 | sha256sum > /tmp/upload.part \
               && mv /tmp/upload.part /tmp/upload.sum; }} & \
             mkdir -p /www && dd if=/dev/urandom of=/www/small bs=16384 count=1 2>/dev/null \
             && dd if=/dev/urandom of=/www/blob bs=1048576 count={BLOB_MIB} 2>/dev/null \
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

    // logs, with kubectl 1.20 and the installed kubectl. Ready does not mean three
    // lines written yet (the pod writes one every 0.2 s after preparing its files).
    let logs = wait_for("three lines in chatty's log", WAIT, || async {
        let logs = f.kubectl(&["logs", "-n", NS, "chatty", "--tail=3"])?;
        Ok((logs.lines().count() == 3).then_some(logs))
    })
    .await?;
    ensure!(logs.starts_with("line "), "{logs}");
    let logs = f.kubectl_installed(&["logs", "-n", NS, "chatty", "--tail=2"])?;
    ensure!(logs.lines().count() == 2, "{logs}");

    // logs -f: lines keep coming; interrupted, its stream ends at the agent too. (The
    // API server keeps idle connections to kubelets for reuse, so streams other than
    // this one may stay open: the count must drop below what it was while following.)
    // Prometheus scrapes every kubelet through the API server's node proxy, and two
    // scrapes at once make the API server open another connection it then keeps: found
    // by CI, the count stayed where it was because one opened as logs -f's closed. It
    // is stopped meanwhile, so the only streams that come or go are this test's.
    f.stop("cloud", "prometheus")?;
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
    // Within 30 s: the API server closes Prometheus' idle connections 90 s after their
    // last use, and that drop must not pass for the end of logs -f's stream.
    wait_for(
        "the interrupted logs -f's stream to end at the agent",
        Duration::from_secs(30),
        || async { Ok((agent_open_streams(&f, CHATTY_NODE)? < following).then_some(())) },
    )
    .await?;
    f.start("cloud", "prometheus").await?;

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

    // port-forward: 1 GiB down and 1 GiB up, each checked against the pod's digest.
    wait_for("the files pod's blob", WAIT, || async {
        Ok(
            f.kubectl(&["exec", "-n", NS, "files", "--", "test", "-e", "/www/ready"])
                .ok(),
        )
    })
    .await?;
    let started = Instant::now();
    let (size, fetched) = {
        let down = PortForward::start(&f, "files", 8080)?;
        http_get_digest(down.port, "/blob")?
    };
    eprintln!("port-forward: {size} bytes down in {:?}", started.elapsed());
    let remote = pod_sha256(&f, "/www/blob")?;
    ensure!(
        size == BLOB_MIB << 20 && fetched == remote,
        "port-forward fetched {size} bytes, {fetched} != {remote}"
    );
    let started = Instant::now();
    let sent = {
        let up = PortForward::start(&f, "files", 9000)?;
        upload(up.port, BLOB_MIB)?
    };
    eprintln!(
        "port-forward: {} MiB up in {:?}",
        BLOB_MIB,
        started.elapsed()
    );
    let received = wait_for("the upload's digest in the pod", WAIT, || async {
        Ok(
            f.kubectl(&["exec", "-n", NS, "files", "--", "cat", "/tmp/upload.sum"])
                .ok(),
        )
    })
    .await?;
    ensure!(
        received.starts_with(&sent),
        "port-forward upload: the pod got {received}, {sent} was sent"
    );

    // 1000 connections at once through one port-forward, so one agent.
    let small = pod_sha256(&f, "/www/small")?;
    {
        let many = PortForward::start(&f, "files", 8080)?;
        concurrent_gets(many.port, CONCURRENT, "/small", &small).await?;
    }

    // A port-forward reader that stops reading holds only its own stream: logs -f
    // through the same agent keeps flowing, and the stalled download arrives whole
    // once it is read.
    {
        let stalled_forward = PortForward::start(&f, "chatty", 8080)?;
        let mut stalled = std::net::TcpStream::connect(("127.0.0.1", stalled_forward.port))?;
        stalled.write_all(b"GET /big HTTP/1.0\r\n\r\n")?;
        let mut first = [0u8; 1];
        stalled.read_exact(&mut first)?;
        let follow = Follow::logs(f.fleet().kubectl())?;
        let mut seen = Vec::new();
        for _ in 0..15 {
            seen.push(follow.next_line(Duration::from_secs(10))?);
        }
        seen.dedup();
        ensure!(
            seen.len() == 15,
            "logs -f beside a stalled reader: {seen:?}"
        );
        ensure!(
            f.kubectl(&["exec", "-n", NS, "chatty", "--", "true"])
                .is_ok(),
            "exec beside a stalled reader"
        );
        let mut rest = Vec::new();
        stalled.read_to_end(&mut rest)?;
        let body = 1 + rest.len() - head_len(&[&first[..], &rest].concat())?;
        ensure!(
            body == STALLED_MIB << 20,
            "the stalled download brought {body} bytes"
        );
    }

    // exec -it: a terminal, resized while it runs.
    tty_exec_follows_resizes(&f)?;

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

    prometheus_scrapes_every_kubelet(&f).await?;

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

    // A validating webhook addressed by Service and served by a pod on an edge node:
    // the API server reaches it through the tunnel, checks its certificate and obeys its
    // answer (it denies labelled ConfigMaps, failurePolicy Fail).
    edge_webhook_denies(&f).await?;

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

    // Two API servers, each with its own tunnel server: killing one costs only its
    // own streams.
    a_killed_tunnel_server_costs_only_its_streams(&mut f).await?;

    // A cut link in the middle of logs -f: the stream ends within the keepalive's
    // timeout; once the link is back the agent reconnects and logs work again. (kubectl
    // cannot show why: kube-apiserver 1.20 copies a log stream with an `io.Copy` whose
    // error it drops (`responsewriters.StreamObject`), so any broken log stream ends as
    // if the container had stopped writing. The tunnel server logs the cause.)
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
