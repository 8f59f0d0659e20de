//! Test fixtures on real fleets (dev-only).
//!
//! - [`shared`]: one fleet (4 edge nodes in 2 pools, nat, fast timings) started by
//!   the first test that asks for it and reused by every test that does not disturb it,
//!   across test processes (a file lock guards its creation).
//! - [`fresh`]: a fleet of its own for a test that cuts links, reboots hosts or stops
//!   processes; removed (with its data) when the handle is dropped, even on panic.
//!
//! - [`peers`]: real protocol peers (pymodbus in a cached venv) run inside hosts.
//! - [`fault_proxy`]: a userspace TCP relay that delays and cuts connections (no
//!   `tc netem` here), listening and connecting inside the fleet's network namespaces.
//!
//! Every wait is bounded and says what it waited for.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let fleet = yurt_testkit::shared().await?;
//! let nodes = fleet.kubectl(&["get", "nodes"])?;
//! assert!(nodes.contains("edge-a1"));
//! # Ok(()) }
//! ```

mod extra_hub;
pub mod fault_proxy;
pub mod peers;

pub use extra_hub::ExtraHub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use yurt_cluster::progress::LineReporter;
use yurt_cluster::{Fleet, FleetSpec, MachineConfig, NetMode, Timing, UpOptions};

/// Where test fleets keep their data.
pub const TEST_ROOT: &str = "/var/lib/yurt-test";

/// The installed kubectl (1.27–1.33, matched to the server by its dispatcher).
pub const INSTALLED_KUBECTL: &str = "/usr/bin/kubectl";

/// Machine settings for tests: the same cache and registry as `yurt`, so `yurt down
/// --all` clears test fleets too, and the workspace's debug `yurt` binary (or
/// `$YURT_BINARY`) to run the hub.
pub fn machine() -> MachineConfig {
    let yurt_binary = std::env::var_os("YURT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/yurt"));
    MachineConfig {
        yurt_binary,
        ..MachineConfig::default()
    }
}

/// The spec of the shared fleet.
pub fn shared_spec() -> FleetSpec {
    FleetSpec {
        edge_nodes: 4,
        pools: 2,
        mode: NetMode::Nat,
        timing: Timing::Fast,
        sample_app: true,
    }
}

/// A fleet under test.
pub struct TestFleet {
    fleet: Fleet,
    client: kube::Client,
    dir: PathBuf,
    remove_on_drop: bool,
}

impl std::fmt::Debug for TestFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFleet")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What crashed in `fleet` (processes that should run but do not), with the end of
/// each one's log; `None` if nothing did.
pub fn crash_report(fleet: &Fleet) -> Option<String> {
    let crashed = fleet.crashed();
    if crashed.is_empty() {
        return None;
    }
    let mut report = String::new();
    for (host, process, log) in crashed {
        report.push_str(&format!(
            "\n--- {process} on {host} is not running; the end of {}:\n{}\n",
            log.display(),
            yurt_cluster::cmd::tail_file(&log, 20)
        ));
    }
    Some(report)
}

/// Why a fleet cannot be reused, if it cannot.
async fn unhealthy(fleet: &Fleet) -> Option<String> {
    if !fleet.is_up() {
        return Some("it is not running".into());
    }
    let crashed = fleet.crashed();
    if !crashed.is_empty() {
        let names: Vec<String> = crashed
            .iter()
            .map(|(h, c, _)| format!("{c} on {h}"))
            .collect();
        return Some(format!("processes are down: {}", names.join(", ")));
    }
    let client = match fleet.client().await {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let ready = yurt_cluster::fleet::wait_nodes_ready(
        &client,
        fleet.plan(),
        Duration::from_secs(30),
        &|_| {},
    );
    ready.await.err().map(|e| e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")
}

async fn bring_up(dir: &Path, options: UpOptions) -> anyhow::Result<Fleet> {
    let fleet = yurt_cluster::up(&machine(), dir, options, Arc::new(LineReporter))
        .await
        .with_context(|| format!("bringing up the test fleet in {}", dir.display()))?;
    Ok(fleet)
}

/// The shared fleet, started if no healthy one is running.
///
/// # Errors
/// If the fleet cannot be brought up.
pub async fn shared() -> anyhow::Result<TestFleet> {
    let dir = PathBuf::from(TEST_ROOT).join("shared");
    let lock_path = PathBuf::from(TEST_ROOT).join("shared.lock");
    let lock = blocking(move || yurt_cluster::lock::exclusive(&lock_path)).await??;
    let existing = Fleet::open(&machine(), &dir)
        .ok()
        .filter(|f| f.state().spec == shared_spec());
    // A crash is never hidden: the test that finds one fails with the process and its
    // log. The process is restarted in place first, so the tests after it (in this and
    // other test processes) still have their fleet.
    if let Some(f) = existing.as_ref().filter(|f| f.is_up())
        && let Some(report) = crash_report(f)
    {
        for (host, process, result) in f.restart_crashed().await {
            eprintln!("restarted {process} on {host} of the shared fleet: {result:?}");
        }
        drop(lock);
        bail!("processes of the shared test fleet crashed:{report}");
    }
    let reason = match &existing {
        Some(f) => unhealthy(f).await,
        None => Some("there is none".to_owned()),
    };
    let fleet = match (existing, reason) {
        (Some(f), None) => f,
        (_, reason) => {
            eprintln!(
                "starting the shared test fleet: {}",
                reason.unwrap_or_default()
            );
            let d = dir.clone();
            blocking(move || yurt_cluster::down(&machine(), &d, true, &LineReporter)).await??;
            bring_up(
                &dir,
                UpOptions {
                    spec: Some(shared_spec()),
                    ..UpOptions::default()
                },
            )
            .await?
        }
    };
    drop(lock);
    let client = fleet.client().await?;
    Ok(TestFleet {
        fleet,
        client,
        dir,
        remove_on_drop: false,
    })
}

/// A new fleet of its own for one test, in `TEST_ROOT/<name>`; removed when dropped.
///
/// # Errors
/// If the fleet cannot be brought up.
pub async fn fresh(name: &str, spec: FleetSpec) -> anyhow::Result<TestFleet> {
    fresh_with(
        name,
        UpOptions {
            spec: Some(spec),
            ..UpOptions::default()
        },
    )
    .await
}

/// Like [`fresh`], with every option of `yurt up` (`options.spec` must be set).
///
/// # Errors
/// If a leftover fleet cannot be removed or the new one cannot be brought up.
pub async fn fresh_with(name: &str, options: UpOptions) -> anyhow::Result<TestFleet> {
    let dir = PathBuf::from(TEST_ROOT).join(name);
    let d = dir.clone();
    blocking(move || yurt_cluster::down(&machine(), &d, true, &LineReporter)).await??;
    // Boxed: `yurt_cluster::up`'s future is large, and every test would carry it.
    let fleet = Box::pin(bring_up(&dir, options)).await?;
    let client = fleet.client().await?;
    Ok(TestFleet {
        fleet,
        client,
        dir,
        remove_on_drop: true,
    })
}

/// Copies every host's logs of the fleet in `dir` to `TEST_ROOT/last-logs/<fleet>/<host>/`
/// (replacing the previous run's), so a failed test can still be diagnosed after its
/// fleet is removed.
fn keep_logs(dir: &Path) -> std::io::Result<()> {
    let Some(name) = dir.file_name() else {
        return Ok(());
    };
    let target = Path::new(TEST_ROOT).join("last-logs").join(name);
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    for host in std::fs::read_dir(dir.join("hosts"))? {
        let host = host?;
        let Ok(logs) = std::fs::read_dir(host.path().join("logs")) else {
            continue;
        };
        let to = target.join(host.file_name());
        std::fs::create_dir_all(&to)?;
        for log in logs {
            let log = log?;
            std::fs::copy(log.path(), to.join(log.file_name()))?;
        }
        // The containers' logs kubelet keeps (pods of add-ons, of the tests).
        copy_tree(&host.path().join("var-log/pods"), &to.join("pods"))?;
    }
    Ok(())
}

/// Copies the files under `from` (if it exists) to the same places under `to`; links
/// are left out.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    std::fs::create_dir_all(to)?;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        // A process of the fleet that died without the test stopping it fails the test
        // (unless it is failing already), with the process and its log.
        // (The shared fleet is checked by the next `shared()` instead, which also
        // restarts what crashed so the other tests keep their fleet.)
        let crashed = if std::thread::panicking() || !self.remove_on_drop {
            None
        } else {
            // What should run is what the fleet's state says now (a test may have added
            // or removed hosts, or stopped processes, through the CLI).
            if let Err(e) = self.fleet.refresh() {
                eprintln!("reading the state of {}: {e}", self.dir.display());
            }
            crash_report(&self.fleet)
        };
        if self.remove_on_drop {
            if let Err(e) = keep_logs(&self.dir) {
                eprintln!("keeping the logs of {}: {e}", self.dir.display());
            }
            if let Err(e) = yurt_cluster::down(&machine(), &self.dir, true, &LineReporter) {
                eprintln!("removing test fleet {}: {e}", self.dir.display());
            }
        }
        if let Some(report) = crashed {
            panic!(
                "processes of test fleet {} crashed during the test:{report}",
                self.dir.display()
            );
        }
    }
}

impl TestFleet {
    /// The fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The fleet, mutably (for cut/restore/stop/start/reboot).
    pub fn fleet_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of a pod whose containers have finished, once it has any. containerd 1.6
    /// marks a container exited when its process ends, and copies the last of its output
    /// into the log file a moment later; a container that only echoes can be seen
    /// Succeeded with an empty log. Waits up to 30 s for a log that is not empty.
    ///
    /// # Errors
    /// kubectl fails, or the log stays empty.
    pub async fn finished_pod_log(&self, ns: &str, pod: &str) -> anyhow::Result<String> {
        wait_for(
            &format!("the log of finished pod {ns}/{pod}"),
            Duration::from_secs(30),
            || async {
                let log = self.kubectl(&["logs", "-n", ns, pod])?;
                Ok((!log.trim().is_empty()).then_some(log))
            },
        )
        .await
    }

    /// Runs the built kubectl 1.20 with `args`; fails with its output unless it succeeds.
    ///
    /// # Errors
    /// Non-zero exit, with stderr in the message.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_checked(self.fleet.kubectl().args(args))
    }

    /// Creates namespace `ns` afresh (deleting a leftover from an earlier run) and waits
    /// for its `default` service account.
    ///
    /// # Errors
    /// kubectl's refusal; no service account within 30 s.
    pub fn fresh_namespace(&self, ns: &str) -> anyhow::Result<()> {
        let _ = self.kubectl(&[
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ]);
        self.kubectl(&["create", "namespace", ns])?;
        // The service account controller creates `default` shortly after the namespace.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self
            .kubectl(&["get", "serviceaccount", "default", "-n", ns])
            .is_err()
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no default service account in {ns}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Applies `object` (one JSON object or a `List`) with the built kubectl, from stdin.
    ///
    /// # Errors
    /// kubectl's refusal, with its message (webhook denials included).
    pub fn apply(&self, object: &serde_json::Value) -> anyhow::Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], &object.to_string())
    }

    /// Runs the built kubectl with `args`, feeding `input` on stdin.
    ///
    /// # Errors
    /// Non-zero exit, with stderr in the message.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut cmd = self.fleet.kubectl();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let rendered = yurt_cluster::cmd::render(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {rendered}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`{rendered}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubelet's static pod folder of edge host `node`, as seen from this machine.
    ///
    /// # Errors
    /// An invalid node name.
    pub fn static_pod_dir(&self, node: &str) -> anyhow::Result<PathBuf> {
        let id = yurt_cluster::spec::HostId::Edge(
            node.parse()
                .map_err(|e| anyhow::anyhow!("node {node:?}: {e}"))?,
        );
        Ok(self.fleet.paths().host(&id).manifests())
    }

    /// Runs the installed kubectl with `args`.
    ///
    /// # Errors
    /// Non-zero exit, with stderr in the message.
    pub fn kubectl_installed(&self, args: &[&str]) -> anyhow::Result<String> {
        run_checked(self.installed_kubectl().args(args))
    }

    /// A command for the installed kubectl pointed at this fleet.
    pub fn installed_kubectl(&self) -> Command {
        let mut c = Command::new(INSTALLED_KUBECTL);
        c.env("KUBECONFIG", self.fleet.admin_kubeconfig());
        c
    }

    /// Runs `argv` inside `host`.
    ///
    /// # Errors
    /// If the command cannot start (a failing command is returned as its output).
    pub fn exec(&self, host: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let mut cmd = self.fleet.exec_command(host, &argv)?;
        cmd.output()
            .with_context(|| format!("run {argv:?} in {host}"))
    }

    /// Cuts a node, pool or `cloud` link.
    ///
    /// # Errors
    /// Unknown target or `ip` failure.
    pub fn cut(&mut self, target: &str) -> anyhow::Result<()> {
        self.fleet.cut(target)?;
        Ok(())
    }

    /// Restores a link.
    ///
    /// # Errors
    /// Unknown target or `ip` failure.
    pub fn restore(&mut self, target: &str) -> anyhow::Result<()> {
        self.fleet.restore(target)?;
        Ok(())
    }

    /// Stops a process on a host.
    ///
    /// # Errors
    /// Unknown host or process.
    pub fn stop(&mut self, host: &str, process: &str) -> anyhow::Result<()> {
        self.fleet.stop_process(host, process)?;
        Ok(())
    }

    /// Kills a process on a host at once (SIGKILL, as in a crash); it stays down until
    /// [`Self::start`].
    ///
    /// # Errors
    /// Unknown host or process.
    pub fn kill(&mut self, host: &str, process: &str) -> anyhow::Result<()> {
        self.fleet.kill_process(host, process)?;
        Ok(())
    }

    /// Starts a process on a host and waits until it is ready.
    ///
    /// # Errors
    /// Unknown host or process, start failure.
    pub async fn start(&mut self, host: &str, process: &str) -> anyhow::Result<()> {
        self.fleet.start_process(host, process).await?;
        Ok(())
    }

    /// Reboots an edge host.
    ///
    /// # Errors
    /// Unknown host, start failure.
    pub async fn reboot(&mut self, node: &str) -> anyhow::Result<()> {
        self.fleet.reboot(node).await?;
        Ok(())
    }

    /// Starts a kubelet on the host `name` added with `yurt fleet add-host`, talking to
    /// the API server directly with a node certificate issued from the fleet's CA and
    /// written as the host's kubelet unit: what a join leaves behind, without its TLS
    /// bootstrap. Its Node registers itself (no pod CIDR until the allocator gives one).
    ///
    /// # Errors
    /// `name` is not an added host, issuing or writing fails, kubelet does not start.
    pub async fn start_direct_kubelet(&mut self, name: &str) -> anyhow::Result<()> {
        self.fleet.refresh()?;
        let node: yurt_core::NodeName = name.parse()?;
        let host = self.fleet.plan().host(name)?;
        let kubeconfig = self.fleet.paths().host(&host).config().join("kubelet.conf");
        yurt_cluster::pki::issue_node_kubeconfig(
            self.fleet.paths(),
            self.fleet.plan(),
            &node,
            &kubeconfig,
        )?;
        let line = self.fleet.added_host_kubelet(name, &kubeconfig)?;
        let kubelet = yurt_cluster::components::Component::Kubelet;
        yurt_cluster::units::Unit::of(format!("kubelet on {name}, written by a test"), &line)
            .save(&self.fleet.unit_file(&host, kubelet))?;
        self.fleet.start_process(name, kubelet.name()).await?;
        Ok(())
    }

    /// The Ready condition of `node` (`"True"`, `"False"`, `"Unknown"`).
    ///
    /// # Errors
    /// API errors.
    pub async fn node_ready(&self, node: &str) -> anyhow::Result<String> {
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(self.client());
        let n = nodes.get(node).await?;
        Ok(n.status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status)
            .unwrap_or_else(|| "Missing".into()))
    }
}

// === pods, images and neighbours, seen from the edge hosts ===

impl TestFleet {
    /// Builds `spec` into the fleet's images and imports it into the containerd of every
    /// edge host that runs one. The archive stays in the fleet, so hosts that start or
    /// reboot later import it too. Returns the image ID.
    ///
    /// # Errors
    /// A build or `ctr import` failure.
    pub async fn add_image(&self, spec: yurt_cluster::image::ImageSpec) -> anyhow::Result<String> {
        use yurt_cluster::image;
        let images = self.fleet.paths().images();
        let sockets: Vec<PathBuf> = self
            .fleet
            .plan()
            .edges
            .iter()
            .map(|e| {
                let host = yurt_cluster::spec::HostId::Edge(e.name.clone());
                self.fleet.paths().host(&host).containerd_socket()
            })
            .collect();
        blocking(move || -> anyhow::Result<String> {
            std::fs::create_dir_all(&images)?;
            let archive = image::archive_path(&images, &spec.reference);
            let id = image::build(&spec, Path::new(image::BUSYBOX), &archive)?;
            for socket in sockets.iter().filter(|s| s.exists()) {
                image::import(socket, &archive)?;
            }
            Ok(id)
        })
        .await?
    }

    /// A pod on `node` serving, on :8080 at `/env`, the API endpoint its container was
    /// started with; its address.
    pub async fn env_pod_on(&self, node: &str, name: &str) -> anyhow::Result<String> {
        self.busybox_pod_on(
            node,
            name,
            "env",
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "mkdir -p /tmp/www && echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\" > /tmp/www/env && exec /bin/busybox httpd -f -p 8080 -h /tmp/www",
            ],
        )
        .await
    }

    /// A pod `name` in `default`, pinned to `node`, whose one container `container`
    /// runs `command` from busybox; its address once Running.
    ///
    /// # Errors
    /// If it cannot be created, or is not Running with an address within 2 minutes.
    pub async fn busybox_pod_on(
        &self,
        node: &str,
        name: &str,
        container: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client(), "default");
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": container,
                    "image": yurt_cluster::image::BUSYBOX_IMAGE,
                    "command": command,
                }],
            },
        }))?;
        pods.create(&kube::api::PostParams::default(), &pod).await?;
        wait_for(
            &format!("pod {name} Running on {node} with an address"),
            Duration::from_secs(120),
            || async {
                let p = pods.get(name).await?;
                let status = p.status.unwrap_or_default();
                Ok((status.phase.as_deref() == Some("Running"))
                    .then_some(status.pod_ip)
                    .flatten())
            },
        )
        .await
    }

    /// The `kubernetes` Service's `ClusterIP:port`: what a pod on a node without a hub
    /// is told the API server is.
    ///
    /// # Errors
    /// If kubectl fails.
    pub fn kubernetes_service_endpoint(&self) -> anyhow::Result<String> {
        Ok(self
            .kubectl(&[
                "get",
                "service",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}",
            ])?
            .trim()
            .to_owned())
    }

    /// The restart count of `name`'s container and the endpoint it serves at `/env` (read
    /// from `host`), once the container runs.
    pub async fn env_of(&self, host: &str, name: &str, ip: &str) -> anyhow::Result<(i32, String)> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client(), "default");
        wait_for(
            &format!("{name}'s container running and serving /env"),
            Duration::from_secs(90),
            || async {
                let p = pods.get(name).await?;
                let Some(c) = p
                    .status
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c.into_iter().next())
                else {
                    return Ok(None);
                };
                if c.state.is_none_or(|s| s.running.is_none()) {
                    return Ok(None);
                }
                let text = self.http_get(host, ip, "/env")?;
                Ok(Some((c.restart_count, text)))
            },
        )
        .await
    }

    /// A plain HTTP/1.0 GET of `ip:8080` `path` from `host`'s network namespace: the body.
    pub fn http_get(&self, host: &str, ip: &str, path: &str) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let ns = self.fleet().plan().netns(&self.fleet().plan().host(host)?);
        let mut s = yurt_cluster::netns::connect_tcp(
            &ns,
            std::net::SocketAddr::new(ip.parse()?, 8080),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        let body = body.trim().to_owned();
        anyhow::ensure!(!body.is_empty(), "an empty body");
        Ok(body)
    }

    /// The running containers of edge host `host`, as its containerd has them (so
    /// also while the host is cut off): `(pod, container)` of each, from the labels
    /// kubelet gives them.
    ///
    /// # Errors
    /// An unknown host, or `ctr` failing.
    pub fn running_containers(&self, host: &str) -> anyhow::Result<Vec<(String, String)>> {
        let id = yurt_cluster::spec::HostId::Edge(
            host.parse()
                .map_err(|e| anyhow::anyhow!("host {host:?}: {e}"))?,
        );
        let socket = self.fleet.paths().host(&id).containerd_socket();
        let ctr = |args: &[&str]| {
            run_checked(
                Command::new("ctr")
                    .arg("-a")
                    .arg(&socket)
                    .args(["-n", "k8s.io"])
                    .args(args),
            )
        };
        let mut running = Vec::new();
        for line in ctr(&["tasks", "ls"])?.lines().skip(1) {
            let mut words = line.split_whitespace();
            let (Some(task), Some(_pid), Some("RUNNING")) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let info: serde_json::Value =
                serde_json::from_str(&ctr(&["containers", "info", task])?)?;
            let label = |key: &str| info["Labels"][key].as_str().unwrap_or_default().to_owned();
            running.push((
                label("io.kubernetes.pod.name"),
                label("io.kubernetes.container.name"),
            ));
        }
        Ok(running)
    }

    /// Runs `yurt fleet service-manager` for this fleet (which nothing supervises): every
    /// edge host's service-manager socket is served until the guard is dropped.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn serve_service_managers(&self) -> anyhow::Result<ServiceManagers> {
        let child = Command::new(&machine().yurt_binary)
            .arg("--data-dir")
            .arg(self.dir())
            .args(["fleet", "service-manager"])
            .stdout(std::fs::File::create(
                self.dir().join("service-manager.out"),
            )?)
            .stderr(std::fs::File::create(
                self.dir().join("service-manager.err"),
            )?)
            .spawn()?;
        Ok(ServiceManagers(child))
    }

    /// Runs the `yurt` binary on this fleet (`--data-dir` set); its stdout.
    ///
    /// # Errors
    /// A non-zero exit, with its stderr.
    pub fn yurt(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&machine().yurt_binary);
        cmd.arg("--data-dir").arg(self.dir()).args(args);
        run_checked(&mut cmd)
    }

    /// A bootstrap token (30 minutes) and the CA hash, as `yurt adm token create
    /// --print-join-command` prints them.
    ///
    /// # Errors
    /// A failing command, or output without either.
    pub fn join_token_and_hash(&self) -> anyhow::Result<(String, String)> {
        let printed = self.yurt(&[
            "adm",
            "token",
            "create",
            "--ttl",
            "30m",
            "--print-join-command",
        ])?;
        let word_after = |flag: &str| {
            let mut words = printed.split_whitespace();
            words.find(|w| *w == flag);
            words
                .next()
                .map(str::to_owned)
                .with_context(|| format!("{flag} in {printed}"))
        };
        Ok((
            word_after("--token")?,
            word_after("--discovery-token-ca-cert-hash")?,
        ))
    }

    /// Builds with `yurt image build` an image (busybox) whose file `/data/word` holds
    /// `word`, so its digest is new for a new word, and pushes it with `yurt image push`
    /// as each of `names`; returns its digest.
    ///
    /// # Errors
    /// A failing build or push, or output without a digest.
    pub fn build_and_push(&self, word: &str, names: &[&str]) -> anyhow::Result<String> {
        let dir = self.dir().join("test-images").join(word);
        std::fs::create_dir_all(dir.join("site"))?;
        std::fs::write(dir.join("site/word"), word)?;
        let (site, out) = (
            dir.join("site").to_string_lossy().into_owned(),
            dir.join("image.tar").to_string_lossy().into_owned(),
        );
        self.yurt(&[
            "image",
            "build",
            "--tag",
            "yurt.local/test:1",
            "--from-dir",
            &site,
            "--dest",
            "/data",
            "-o",
            &out,
        ])?;
        let mut args = vec!["image", "push", out.as_str()];
        args.extend_from_slice(names);
        let printed = self.yurt(&args)?;
        anyhow::ensure!(
            printed.lines().count() == names.len(),
            "not one line per name: {printed}"
        );
        printed
            .lines()
            .filter_map(|l| l.rsplit_once("(sha256:"))
            .map(|(_, d)| format!("sha256:{}", d.trim_end_matches(')')))
            .next()
            .with_context(|| format!("no digest in {printed:?}"))
    }

    /// Runs `argv` inside the running container `container` of pod `namespace/pod` on
    /// edge host `node`, through that host's containerd (`ctr tasks exec`): in the
    /// container's namespaces, with its environment, and with neither the API server
    /// nor kubelet involved, so it works while the node is cut off. A failing command
    /// is returned as its output.
    ///
    /// # Errors
    /// Unknown node, no running container of that name, or `ctr` cannot start.
    pub fn exec_in_pod(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: &[&str],
    ) -> anyhow::Result<Output> {
        static EXEC_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let socket = self.containerd_socket(node)?;
        let socket = socket.to_str().context("containerd socket path")?;
        // ctr makes its stdio FIFOs under /run/containerd, which is the host's own: it
        // runs inside the host's namespaces.
        let ctr = |args: &[&str]| -> anyhow::Result<Command> {
            let full: Vec<String> = ["ctr", "-a", socket, "-n", "k8s.io"]
                .iter()
                .chain(args)
                .map(|a| (*a).to_owned())
                .collect();
            Ok(self.fleet.exec_command(node, &full)?)
        };
        let id = running_container(&ctr, namespace, pod, container)?;
        let exec_id = format!(
            "yurt-test-{}-{}",
            std::process::id(),
            EXEC_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, &id];
        args.extend(argv);
        ctr(&args)?
            .output()
            .with_context(|| format!("run {argv:?} in {namespace}/{pod}/{container} on {node}"))
    }

    fn containerd_socket(&self, node: &str) -> anyhow::Result<PathBuf> {
        let id = yurt_cluster::spec::HostId::Edge(
            node.parse()
                .map_err(|e| anyhow::anyhow!("node {node:?}: {e}"))?,
        );
        Ok(self.fleet.paths().host(&id).containerd_socket())
    }

    /// A new host on the LAN of `pool` (a network namespace plugged into the pool's site
    /// switch, address `<pool subnet>.<host>/24`, no default route): a neighbour of
    /// the pool's edge hosts that is none of them. Removed when dropped, and with the
    /// fleet in any case.
    ///
    /// # Errors
    /// Unknown pool, or an `ip` failure.
    pub fn lan_neighbour(&self, pool: &str, host: u8) -> anyhow::Result<LanNeighbour> {
        use yurt_cluster::netns;
        let plan = self.fleet.plan();
        let p = plan
            .pool(pool)
            .with_context(|| format!("no pool {pool} in this fleet"))?;
        let router = plan.netns(&yurt_cluster::spec::HostId::Router);
        let name = format!("{}lan{}-{host}", plan.netns_prefix(), p.index);
        let port = format!("nb{}-{host}", p.index);
        let [a, b, c, _] = p.subnet.addr.octets();
        let address = std::net::Ipv4Addr::new(a, b, c, host);
        // Removed on drop from here on, even if a step below fails.
        netns::delete(&name)?;
        netns::add(&name)?;
        let neighbour = LanNeighbour {
            netns: name.clone(),
            address,
        };
        netns::ip(
            Some(&router),
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        )?;
        netns::ip(Some(&router), &["link", "set", &port, "master", &p.bridge])?;
        netns::ip(Some(&router), &["link", "set", &port, "up"])?;
        netns::ip(
            Some(&name),
            &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        )?;
        netns::ip(Some(&name), &["link", "set", "eth0", "up"])?;
        Ok(neighbour)
    }
}

// === faults on a hub's upstream link ===

/// The `SO_MARK` of the fault proxy's own connections to the API server, which the
/// redirect rule lets pass (bits clear of kube-proxy's 0x4000 and 0x8000).
pub const FAULT_PROXY_MARK: u32 = 0x0079_0000;

impl TestFleet {
    /// Sends the hub of edge host `node` to the API server through a [`fault_proxy`]
    /// with `faults`, without changing the hub's configuration: the proxy listens on the
    /// host's loopback, a NAT rule in the host's namespace redirects its connections to
    /// the API server's in-fleet address (what `--server-addr` names) there, and the
    /// proxy connects onwards from the same namespace (its marked connections pass the
    /// rule), so the link is the host's own WAN link and TLS still verifies the API
    /// server's real address. The hub is restarted so that none of its connections
    /// bypass the proxy; kubelet and kube-proxy reach the API server only through the hub.
    ///
    /// Dropping the returned handle removes the rule and stops the proxy (the hub's
    /// connections then go straight to the API server again).
    ///
    /// # Errors
    /// Unknown node, a proxy that cannot start, an `iptables` failure, or a hub that
    /// does not come back.
    pub async fn fault_hub_upstream(
        &mut self,
        node: &str,
        faults: fault_proxy::Faults,
    ) -> anyhow::Result<HubUpstreamFault> {
        use yurt_cluster::spec::{HostId, net};
        let host = HostId::Edge(
            node.parse()
                .map_err(|e| anyhow::anyhow!("node {node:?}: {e}"))?,
        );
        let netns = self.fleet.plan().netns(&host);
        let api = std::net::SocketAddr::from((net::CLOUD_IP.addr, net::API_PORT));
        let proxy = fault_proxy::FaultProxy::start(fault_proxy::FaultProxyConfig {
            listen: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            listen_netns: Some(netns.clone()),
            target: api,
            target_netns: Some(netns.clone()),
            target_mark: Some(FAULT_PROXY_MARK),
            faults,
        })
        .await
        .with_context(|| format!("starting a fault proxy in {netns}"))?;
        let rule: Vec<String> = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &api.ip().to_string(),
            "--dport",
            &api.port().to_string(),
            "-m",
            "mark",
            "!",
            "--mark",
            &format!("{FAULT_PROXY_MARK:#x}/{FAULT_PROXY_MARK:#x}"),
            "-j",
            "REDIRECT",
            "--to-ports",
            &proxy.local_addr().port().to_string(),
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let fault = HubUpstreamFault { proxy, netns, rule };
        fault.iptables("-A")?;
        self.stop(node, "yurt-hub")?;
        self.start(node, "yurt-hub").await?;
        Ok(fault)
    }
}

/// A hub's upstream link routed through a fault proxy by
/// [`TestFleet::fault_hub_upstream`]; restored when dropped.
#[derive(Debug)]
pub struct HubUpstreamFault {
    proxy: fault_proxy::FaultProxy,
    netns: String,
    rule: Vec<String>,
}

impl HubUpstreamFault {
    /// The proxy (its counters).
    pub fn proxy(&self) -> &fault_proxy::FaultProxy {
        &self.proxy
    }

    fn iptables(&self, op: &str) -> anyhow::Result<()> {
        let mut args = vec!["-w", "-t", "nat", op];
        args.extend(self.rule.iter().map(String::as_str));
        yurt_cluster::netns::run_in(
            &self.netns,
            &format!("iptables {op} in {}", self.netns),
            "iptables",
            &args,
        )?;
        Ok(())
    }
}

impl Drop for HubUpstreamFault {
    fn drop(&mut self) {
        // The namespace may be gone already with its fleet.
        if yurt_cluster::netns::exists(&self.netns)
            && let Err(e) = self.iptables("-D")
        {
            eprintln!(
                "removing the fault proxy's redirect in {}: {e:#}",
                self.netns
            );
        }
    }
}

/// The ID of the running container `container` of pod `namespace/pod`, asking the
/// containerd that `ctr` (a command for `ctr` with these arguments) talks to.
fn running_container(
    ctr: &dyn Fn(&[&str]) -> anyhow::Result<Command>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> anyhow::Result<String> {
    let ctr = |args: &[&str]| run_checked(&mut ctr(args)?);
    let filter = format!(
        "labels.\"io.kubernetes.pod.namespace\"==\"{namespace}\",\
         labels.\"io.kubernetes.pod.name\"==\"{pod}\",\
         labels.\"io.kubernetes.container.name\"==\"{container}\""
    );
    let candidates: Vec<String> = ctr(&["containers", "ls", "-q", &filter])?
        .lines()
        .map(str::to_owned)
        .collect();
    let running: Vec<String> = ctr(&["tasks", "ls"])?
        .lines()
        .skip(1)
        .filter(|l| l.contains("RUNNING"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    candidates
        .into_iter()
        .find(|c| running.contains(c))
        .with_context(|| format!("no running container {container} of pod {namespace}/{pod}"))
}

/// A host plugged into a pool's LAN by [`TestFleet::lan_neighbour`].
#[derive(Debug)]
pub struct LanNeighbour {
    netns: String,
    address: std::net::Ipv4Addr,
}

impl LanNeighbour {
    /// Its address on the LAN.
    pub fn address(&self) -> std::net::Ipv4Addr {
        self.address
    }

    /// Runs `argv` in its network namespace; a failing command is returned as its output.
    ///
    /// # Errors
    /// If the command cannot start.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        let (program, args) = argv.split_first().context("no command given")?;
        yurt_cluster::netns::command(&self.netns, program)
            .args(args)
            .output()
            .with_context(|| format!("run {argv:?} in {}", self.netns))
    }
}

impl Drop for LanNeighbour {
    fn drop(&mut self) {
        if let Err(e) = yurt_cluster::netns::delete(&self.netns) {
            eprintln!("removing the LAN neighbour {}: {e}", self.netns);
        }
    }
}

/// `yurt fleet service-manager` of a test fleet ([`TestFleet::serve_service_managers`]),
/// stopped when dropped.
#[derive(Debug)]
pub struct ServiceManagers(std::process::Child);

impl Drop for ServiceManagers {
    fn drop(&mut self) {
        // SIGTERM: it removes its sockets on the way out, so no stale one is left for
        // later tests to find. SIGKILL if it has not ended within ten seconds.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command and returns its stdout, failing with both streams if it fails.
///
/// # Errors
/// Spawn failure or non-zero exit.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<String> {
    let rendered = yurt_cluster::cmd::render(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {rendered}"))?;
    if !out.status.success() {
        bail!(
            "`{rendered}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Ok(Some(value))`, or fails after `timeout` with
/// `what` and the last error or observation.
///
/// # Errors
/// Timeout.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_for_names_what_it_waited_for() {
        let err = wait_for::<(), _, _>("the moon", Duration::from_millis(100), || async {
            anyhow::bail!("still dark")
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for the moon"), "{err}");
        assert!(err.contains("still dark"), "{err}");
    }

    #[tokio::test]
    async fn wait_for_returns_the_value() {
        let mut n = 0;
        let v = wait_for("three", Duration::from_secs(5), || {
            n += 1;
            let done = n == 3;
            async move { Ok(done.then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn run_checked_reports_failures() {
        let err = run_checked(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 2"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("out") && err.contains("err"), "{err}");
        assert_eq!(run_checked(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
