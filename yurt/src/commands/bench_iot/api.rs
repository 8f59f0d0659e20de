//! `yurt bench iot`'s scenarios against a real API server (a one-node fleet): the agent
//! (`yurt iot agent`, a child process in this host, its API link through a [`Link`]
//! that can be cut) drives devices declared as Device objects, each a simulated Modbus
//! device of its own; the anchor is the same agent at upstream yurt-iot-dock's status
//! cadence (`--status-writes heartbeat --status-heartbeat-seconds 5`: every device every
//! 5 s, changed or not).
//!
//! Measured: agent start → every device's status current; status writes per second at
//! steady state, as the API server counts them; `kubectl patch` of a desired value →
//! the register written, and → `actualValue` visible; the link restored after a cut
//! during which every reading changed → every device current again; the agent's CPU
//! and memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use yurt_api::iot::v1alpha1::{Device, DeviceProfile, DeviceService};
use yurt_iot::driver::modbus::simulator::{Memory, Simulator};

use super::link::Link;
use crate::commands::bench_hub::api_load::prometheus::Metrics as Scrape;
use crate::commands::bench_manager::usage;

/// The one-node fleet's pool.
const POOL: &str = "pool-a";
const PROFILE: &str = "bench-meter";
const SERVICE: &str = "bench-modbus";
/// The desired value every device starts with (property `p0`).
const FIRST_DESIRED: u16 = 100;

/// What one scenario does.
pub struct Settings {
    /// Devices.
    pub devices: usize,
    /// Properties per device (`p0` writable, the others read-only).
    pub properties: usize,
    /// Desired values patched one after the other, each timed.
    pub patches: usize,
    /// The steady-state window.
    pub window: Duration,
}

/// What one scenario measured.
pub struct ApiOutcome {
    /// Agent started → every device's status current.
    pub start_to_current: Duration,
    /// Status writes per second at steady state (nothing changing), from the API
    /// server's request count.
    pub writes_per_s: f64,
    /// Patch → register written, sorted.
    pub register: Vec<Duration>,
    /// Patch → `actualValue` visible, sorted.
    pub visible: Vec<Duration>,
    /// Link restored (after a cut in which every reading changed) → every device current.
    pub catch_up: Duration,
    /// The agent's peak RSS.
    pub rss_mib: f64,
    /// The agent's CPU at steady state, % of a core.
    pub cpu_percent: f64,
}

impl ApiOutcome {
    /// One line of the figures, printed as soon as they are measured.
    pub fn summary(&self) -> String {
        let p = |sorted: &[Duration], q: f64| {
            crate::commands::bench::percentile(sorted, q).as_secs_f64() * 1000.0
        };
        format!(
            "start → current {:.1} s; {:.1} status writes/s; patch → register p50 {:.0} ms p99 {:.0} ms; → visible p50 {:.0} ms p99 {:.0} ms; catch-up {:.1} s; CPU {:.1}%; RSS {:.1} MiB",
            self.start_to_current.as_secs_f64(),
            self.writes_per_s,
            p(&self.register, 50.0),
            p(&self.register, 99.0),
            p(&self.visible, 50.0),
            p(&self.visible, 99.0),
            self.catch_up.as_secs_f64(),
            self.cpu_percent,
            self.rss_mib
        )
    }
}

/// Register `k` of device `d` in reading epoch `epoch` (never 0, never the desired
/// values' range).
fn reading(d: usize, k: usize, epoch: usize) -> u16 {
    u16::try_from((d * 31 + k * 7 + epoch * 1009) % 50_000).unwrap_or(0) + 10_000
}

fn device_name(d: usize) -> String {
    format!("meter-{d:05}")
}

fn profile(ns: &str, properties: usize) -> Value {
    let resources: Vec<Value> = (0..properties)
        .map(|k| {
            json!({
                "name": format!("p{k}"), "description": "", "isHidden": false,
                "properties": {"valueType": "Uint16", "readWrite": if k == 0 { "RW" } else { "R" }},
                "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": k.to_string()},
            })
        })
        .collect();
    json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
        "metadata": {"name": PROFILE, "namespace": ns},
        "spec": {"nodePool": POOL, "manufacturer": "bench", "model": "meter", "deviceResources": resources},
    })
}

fn device(ns: &str, d: usize, port: u16) -> Value {
    json!({
        "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
        "metadata": {"name": device_name(d), "namespace": ns},
        "spec": {
            "nodePool": POOL, "managed": true, "adminState": "UNLOCKED", "notify": true,
            "serviceName": SERVICE, "profileName": PROFILE,
            "protocols": {"modbus-tcp": {"Address": "127.0.0.1", "Port": port.to_string(), "UnitID": "1", "Timeout": "2"}},
            "deviceProperties": {"p0": {"name": "p0", "desiredValue": FIRST_DESIRED.to_string()}},
        },
    })
}

async fn create<K>(api: &Api<K>, object: Value) -> anyhow::Result<()>
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The API server's address, and a kubeconfig for the agent that reaches it through
/// `link` (the API server's certificate names 127.0.0.1).
fn agent_kubeconfig(admin: &Path, out: &Path, link: Option<&Link>) -> anyhow::Result<SocketAddr> {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(admin)?;
    let cluster = kubeconfig
        .clusters
        .first_mut()
        .and_then(|c| c.cluster.as_mut())
        .context("the admin kubeconfig names no cluster")?;
    let server: http::Uri = cluster
        .server
        .as_deref()
        .context("the admin kubeconfig names no server")?
        .parse()?;
    let host = server.host().context("the server's host")?;
    let address: SocketAddr = format!("{host}:{}", server.port_u16().unwrap_or(443)).parse()?;
    if let Some(link) = link {
        cluster.server = Some(format!("https://{}", link.address()));
    }
    // JSON is YAML: the agent reads it as a kubeconfig.
    std::fs::write(out, serde_json::to_vec(&kubeconfig)?)?;
    Ok(address)
}

/// PATCH requests for device status the API server has answered so far.
async fn status_writes(client: &kube::Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await.context("GET /metrics")?;
    Ok(Scrape::parse(&text)?.sum("apiserver_request_total", |l| {
        l.get("resource").map(String::as_str) == Some("devices")
            && l.get("subresource").map(String::as_str) == Some("status")
            && l.get("verb").map(String::as_str) == Some("PATCH")
    }))
}

/// Devices whose status shows what `expected` says for every property.
async fn current(
    api: &Api<Device>,
    properties: usize,
    expected: &dyn Fn(usize, usize) -> u16,
) -> anyhow::Result<usize> {
    // From the API server's watch cache: a quorum read of every device, several times a
    // second, would load the API server more than the agent under test does.
    let list = api.list(&ListParams::default().match_any()).await?;
    Ok(list
        .items
        .iter()
        .filter(|dev| {
            let Some(d) = dev
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("meter-"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return false;
            };
            let status = serde_json::to_value(&dev.status).unwrap_or_default();
            (0..properties).all(|k| {
                status
                    .pointer(&format!("/deviceProperties/p{k}/actualValue"))
                    .and_then(Value::as_str)
                    == Some(expected(d, k).to_string().as_str())
            })
        })
        .count())
}

/// Waits until every one of `devices` is current; how long that took from `since`.
async fn all_current(
    api: &Api<Device>,
    settings: &Settings,
    expected: &dyn Fn(usize, usize) -> u16,
    since: Instant,
    what: &str,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(300);
    loop {
        let n = current(api, settings.properties, expected).await?;
        if n == settings.devices {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: {n} of {} devices current after 300 s",
            settings.devices
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One scenario in namespace `ns` on `fleet`: our cadence, or upstream's
/// (`heartbeat_only`).
pub async fn scenario(
    fleet: &yurt_cluster::Fleet,
    settings: &Settings,
    heartbeat_only: bool,
    dir: &Path,
) -> anyhow::Result<ApiOutcome> {
    let ns = if heartbeat_only {
        "bench-iot-upstream-cadence"
    } else {
        "bench-iot"
    };
    let client = fleet.client().await?;
    create(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await?;
    // One simulated device per Device, its readings in epoch 0.
    let mut simulators = Vec::with_capacity(settings.devices);
    for d in 0..settings.devices {
        let mut memory = Memory::with_size(settings.properties);
        for k in 1..settings.properties {
            memory.holding_registers[k] = reading(d, k, 0);
        }
        simulators.push(
            Simulator::start("127.0.0.1:0".parse()?, memory)
                .await
                .context("a simulated device")?,
        );
    }
    create(
        &Api::<DeviceService>::namespaced(client.clone(), ns),
        json!({
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
            "metadata": {"name": SERVICE, "namespace": ns},
            "spec": {"baseAddress": "modbus-tcp://127.0.0.1", "nodePool": POOL, "adminState": "UNLOCKED", "managed": true},
        }),
    )
    .await?;
    create(
        &Api::<DeviceProfile>::namespaced(client.clone(), ns),
        profile(ns, settings.properties),
    )
    .await?;
    let devices: Api<Device> = Api::namespaced(client.clone(), ns);
    let ports: Vec<u16> = simulators.iter().map(|s| s.address().port()).collect();
    let mut creations = futures_util::stream::iter(ports.iter().enumerate())
        .map(|(d, port)| create(&devices, device(ns, d, *port)))
        .buffer_unordered(16);
    while let Some(r) = creations.next().await {
        r.context("creating the devices")?;
    }
    drop(creations);

    let upstream = agent_kubeconfig(
        &fleet.admin_kubeconfig(),
        &dir.join("probe.kubeconfig"),
        None,
    )?;
    let link = Link::start(upstream).await.context("the agent's link")?;
    let kubeconfig = dir.join(format!("{ns}.kubeconfig"));
    agent_kubeconfig(&fleet.admin_kubeconfig(), &kubeconfig, Some(&link))?;
    let admin_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log = std::fs::File::create(dir.join(format!("{ns}-agent.log")))?;
    let mut agent = tokio::process::Command::new(std::env::current_exe()?);
    agent
        .args(["iot", "agent", "--namespace", ns, "--nodepool", POOL])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(dir.join(format!("{ns}-state")))
        .args(["--poll-interval-seconds", "1"])
        .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if heartbeat_only {
        agent.args([
            "--status-writes",
            "heartbeat",
            "--status-heartbeat-seconds",
            "5",
        ]);
    }
    let started = Instant::now();
    let mut agent = agent.spawn().context("starting the agent")?;
    let pid = agent
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .context("the agent's pid")?;
    let mut desired = vec![FIRST_DESIRED; settings.devices];
    let mut epoch = 0;

    // Start: every device read and its desired value written and read back.
    let expect = |desired: &[u16], epoch: usize| {
        let desired = desired.to_vec();
        move |d: usize, k: usize| {
            if k == 0 {
                desired[d]
            } else {
                reading(d, k, epoch)
            }
        }
    };
    let start_to_current = all_current(
        &devices,
        settings,
        &expect(&desired, epoch),
        started,
        "agent start",
    )
    .await?;

    // Steady state: nothing changes.
    let (_, cpu_before) = usage(pid).context("the agent's /proc entry")?;
    let writes_before = status_writes(&client).await?;
    let window_start = Instant::now();
    tokio::time::sleep(settings.window).await;
    let writes = status_writes(&client).await? - writes_before;
    let elapsed = window_start.elapsed().as_secs_f64();
    let (mut rss_mib, cpu_after) = usage(pid).context("the agent's /proc entry")?;
    let writes_per_s = writes / elapsed;
    let cpu_percent = (cpu_after - cpu_before) / elapsed * 100.0;

    // Desired values patched one at a time, as `kubectl patch` sends them.
    let mut register = Vec::with_capacity(settings.patches);
    let mut visible = Vec::with_capacity(settings.patches);
    for i in 0..settings.patches {
        let d = (i * 7919) % settings.devices;
        let value = u16::try_from(1000 + i % 8000).unwrap_or(1000);
        desired[d] = value;
        let patch = json!({"spec": {"deviceProperties": {"p0": {"name": "p0", "desiredValue": value.to_string()}}}});
        let sent = Instant::now();
        devices
            .patch(
                &device_name(d),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        loop {
            if simulators[d].with_memory(|m| m.holding_registers[0]) == value {
                register.push(sent.elapsed());
                break;
            }
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(60),
                "device {d}'s register never got {value}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        loop {
            let dev = devices.get(&device_name(d)).await?;
            let status = serde_json::to_value(&dev.status)?;
            if status
                .pointer("/deviceProperties/p0/actualValue")
                .and_then(Value::as_str)
                == Some(value.to_string().as_str())
            {
                visible.push(sent.elapsed());
                break;
            }
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(60),
                "device {d}'s actualValue never showed {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    register.sort();
    visible.sort();

    // A cut in which every reading changes; then how long until the API shows them all.
    link.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    epoch += 1;
    for (d, sim) in simulators.iter().enumerate() {
        sim.with_memory(|m| {
            for k in 1..settings.properties {
                m.holding_registers[k] = reading(d, k, epoch);
            }
        });
    }
    // Polled at least twice while cut off.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restored = Instant::now();
    link.restore();
    let catch_up = all_current(
        &devices,
        settings,
        &expect(&desired, epoch),
        restored,
        "after the cut",
    )
    .await?;
    if let Some((rss, _)) = usage(pid) {
        rss_mib = rss_mib.max(rss);
    }
    if let Ok(Some(status)) = agent.try_wait() {
        anyhow::bail!("the agent exited during the scenario: {status}");
    }
    let _ = agent.kill().await;
    for sim in simulators {
        sim.stop().await;
    }
    Ok(ApiOutcome {
        start_to_current,
        writes_per_s,
        register,
        visible,
        catch_up,
        rss_mib,
        cpu_percent,
    })
}
