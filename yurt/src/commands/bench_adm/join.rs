//! `yurt bench adm`'s joins: `yurt adm join` on hosts added to the benchmark fleet,
//! phase by phase as the command reports them, to Node Ready and to its first pod
//! Running; the anchor, in the same run, is the fleet's own edge node started the way
//! `yurt up` starts it (certificates minted beforehand, the hub, kubelet and kube-proxy
//! started at once, its Node registered afresh). Then several joins at once.
//!
//! Everything is done as a user would: the `yurt` CLI on the fleet (`fleet add-host`,
//! `fleet exec ... adm join`, `fleet stop|start`), timed from here.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use tokio::io::AsyncBufReadExt as _;

/// The phases `yurt adm join` reports, by the start of its progress line.
pub const PHASES: [&str; 8] = [
    "discovery",
    "preflight",
    "kubelet TLS bootstrap",
    "hub",
    "registration",
    "kubelet through the hub",
    "node",
    "kube-proxy",
];

/// One host's way in, timed from the command.
#[derive(Debug, Clone, Default)]
pub struct Timed {
    /// When each phase began (as [`PHASES`]), if the command reported it.
    pub phases: Vec<Option<Duration>>,
    /// The Node first Ready.
    pub node_ready: Duration,
    /// Its first pod Running.
    pub pod_running: Duration,
}

/// The `yurt` CLI on the benchmark fleet.
pub struct Cli<'a> {
    /// The fleet's folder.
    pub dir: &'a Path,
}

impl Cli<'_> {
    fn command(&self) -> anyhow::Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("--data-dir").arg(self.dir).kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `yurt <args>` to its end; its stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command()?.args(args).output().await?;
        if !out.status.success() {
            bail!(
                "yurt {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `yurt adm join` on `host` with `join_args`; when each phase began, from `started`.
    pub async fn join(
        &self,
        host: &str,
        join_args: &[String],
        started: Instant,
    ) -> anyhow::Result<Vec<Option<Duration>>> {
        let yurt = std::env::current_exe()?;
        let mut child = self
            .command()?
            .args(["fleet", "exec", host, "--"])
            .arg(&yurt)
            .args(join_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("join's stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut phases = vec![None; PHASES.len()];
        let mut said = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let at = started.elapsed();
            if let Some(rest) = line.strip_prefix("[join] ") {
                for (i, phase) in PHASES.iter().enumerate() {
                    if rest.starts_with(&format!("{phase}:")) && phases[i].is_none() {
                        phases[i] = Some(at);
                    }
                }
            }
            said.push(line);
        }
        let status = child.wait().await?;
        if !status.success() {
            bail!("the join on {host} failed: {}", said.join("\n"));
        }
        Ok(phases)
    }
}

/// Creates a pod bound to `node` (busybox sleeping); kubelet runs it once the node is there.
pub async fn bind_pod(client: &kube::Client, node: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "sleep",
                "image": yurt_cluster::image::BUSYBOX_IMAGE,
                "command": ["/bin/busybox", "sleep", "3600"],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    Ok(())
}

/// Deletes a pod at once (its node may be gone).
pub async fn delete_pod(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    match pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How often readiness is looked at: the resolution of the Ready and Running times.
const LOOK: Duration = Duration::from_millis(100);

/// Waits (up to `limit`) until `node` is Ready and `pod` runs, both from `started`. The pod
/// is made once the Node exists: bound to a node that is not there yet, it could be
/// collected as an orphan by kube-controller-manager's pod GC.
pub async fn ready_then_running(
    client: &kube::Client,
    node: &str,
    pod: &str,
    started: Instant,
    limit: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (mut ready, mut running, mut bound) = (None, None, false);
    while ready.is_none() || running.is_none() {
        if started.elapsed() > limit {
            bail!("{node} not Ready with pod {pod} Running within {limit:?}");
        }
        if ready.is_none()
            && let Ok(Some(n)) = nodes.get_opt(node).await
        {
            if !bound {
                bind_pod(client, node, pod).await?;
                bound = true;
            }
            if n.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            {
                ready = Some(started.elapsed());
            }
        }
        if bound
            && running.is_none()
            && let Ok(Some(p)) = pods.get_opt(pod).await
            && p.status.and_then(|s| s.phase).as_deref() == Some("Running")
        {
            running = Some(started.elapsed());
        }
        tokio::time::sleep(LOOK).await;
    }
    Ok((ready.unwrap_or_default(), running.unwrap_or_default()))
}

/// Waits until `node` is gone.
pub async fn node_gone(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let until = Instant::now() + Duration::from_secs(60);
    while nodes.get_opt(node).await?.is_some() {
        if Instant::now() > until {
            bail!("Node {node} was not deleted within a minute");
        }
        tokio::time::sleep(LOOK).await;
    }
    Ok(())
}

/// One join of `host` (added, bare): the command, then Ready and Running; reset after,
/// deleting the Node, so the host can join again.
pub async fn join_once(
    cli: &Cli<'_>,
    client: &kube::Client,
    host: &str,
    join_args: &[String],
    round: usize,
) -> anyhow::Result<Timed> {
    let pod = format!("bench-join-{host}-{round}");
    let started = Instant::now();
    let (phases, (node_ready, pod_running)) = tokio::try_join!(
        cli.join(host, join_args, started),
        ready_then_running(client, host, &pod, started, Duration::from_secs(300))
    )?;
    Ok(Timed {
        phases,
        node_ready,
        pod_running,
    })
}

/// Undoes a join on `host` and forgets its pod.
pub async fn reset(
    cli: &Cli<'_>,
    client: &kube::Client,
    host: &str,
    round: usize,
) -> anyhow::Result<()> {
    let yurt = std::env::current_exe()?.display().to_string();
    cli.run(&[
        "fleet",
        "exec",
        host,
        "--",
        &yurt,
        "adm",
        "reset",
        "--delete-node",
    ])
    .await?;
    delete_pod(client, &format!("bench-join-{host}-{round}")).await?;
    node_gone(client, host).await
}

/// The anchor: the fleet's own edge node, its hub, kubelet and kube-proxy stopped and its
/// Node deleted, then started as `yurt up` starts them (certificates already there).
pub async fn preminted_once(
    cli: &Cli<'_>,
    client: &kube::Client,
    node: &str,
    round: usize,
) -> anyhow::Result<Timed> {
    for process in ["kubelet", "kube-proxy", "yurt-hub"] {
        cli.run(&["fleet", "stop", node, process]).await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    node_gone(client, node).await?;
    let pod = format!("bench-preminted-{round}");
    let started = Instant::now();
    let start = async {
        for process in ["yurt-hub", "kubelet", "kube-proxy"] {
            cli.run(&["fleet", "start", node, process]).await?;
        }
        anyhow::Ok(())
    };
    let ((), (node_ready, pod_running)) = tokio::try_join!(
        start,
        ready_then_running(client, node, &pod, started, Duration::from_secs(300))
    )?;
    delete_pod(client, &pod).await?;
    Ok(Timed {
        phases: vec![None; PHASES.len()],
        node_ready,
        pod_running,
    })
}
