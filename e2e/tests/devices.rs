//! Devices (OpenYurt's `iot.openyurt.io`), driven natively from the pool: a PlatformAdmin
//! as upstream's manual writes it runs the device agent in the pool; EdgeX's five virtual
//! devices appear synced; a Modbus TCP device (a pymodbus server inside the edge host)
//! gets its desired values written and read back, checked by an independent pymodbus
//! client; invalid writes are refused by the webhook; with the pool cut off, the agent
//! restores a tampered register, does so again after its own restart, and once the link
//! is back applies the edit made in the cloud meanwhile and reports current status.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use yurt_cluster::{FleetSpec, NetMode, Timing};
use yurt_testkit::peers::{PYMODBUS, python_with};
use yurt_testkit::{TestFleet, fresh, wait_for};

const NS: &str = "iot-e2e";
const POOL: &str = "pool-a";
const NODE: &str = "edge-a1";
const MODBUS_PORT: &str = "5020";
/// The image `yurt manager`'s `--iot-agent-image` names by default.
const IMAGE: &str = concat!("yurt.local/yurt:v", env!("CARGO_PKG_VERSION"));

const MODBUS_SERVER: &str = r#"
import asyncio, sys
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusSlaveContext, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer

def block():
    return ModbusSequentialDataBlock(0, [0] * 200)

async def main(port):
    store = ModbusSlaveContext(di=block(), co=block(), hr=block(), ir=block())
    context = ModbusServerContext(slaves=store, single=True)
    print("listening", flush=True)
    await StartAsyncTcpServer(context=context, address=("0.0.0.0", port))

asyncio.run(main(int(sys.argv[1])))
"#;

const MODBUS_CLIENT: &str = r#"
import sys
from pymodbus.client import ModbusTcpClient
host, port, op, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = ModbusTcpClient(host, port=port, timeout=3)
if not c.connect():
    sys.exit("cannot connect")
if op == "read":
    r = c.read_holding_registers(addr, count=int(sys.argv[5]), slave=1)
    if r.isError():
        sys.exit(str(r))
    print(" ".join(str(v) for v in r.registers))
else:
    r = c.write_registers(addr, [int(v) for v in sys.argv[5:]], slave=1)
    if r.isError():
        sys.exit(str(r))
    print("ok")
c.close()
"#;

fn spec() -> FleetSpec {
    FleetSpec {
        edge_nodes: 1,
        pools: 1,
        mode: NetMode::Nat,
        timing: Timing::Fast,
        sample_app: false,
    }
}

/// The independent Modbus client, run in the edge host.
struct Client {
    python: String,
    script: String,
    host_ip: String,
}

impl Client {
    fn run(&self, f: &TestFleet, args: &[&str]) -> anyhow::Result<String> {
        let mut argv = vec![
            self.python.as_str(),
            self.script.as_str(),
            self.host_ip.as_str(),
            MODBUS_PORT,
        ];
        argv.extend_from_slice(args);
        let out = f.exec(NODE, &argv)?;
        ensure!(
            out.status.success(),
            "pymodbus client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn read(&self, f: &TestFleet, address: u16, count: u16) -> anyhow::Result<String> {
        self.run(f, &["read", &address.to_string(), &count.to_string()])
    }

    fn write(&self, f: &TestFleet, address: u16, values: &[u16]) -> anyhow::Result<()> {
        let values: Vec<String> = values.iter().map(u16::to_string).collect();
        let mut args = vec!["write".to_owned(), address.to_string()];
        args.extend(values);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(f, &args).map(|_| ())
    }

    async fn until(
        &self,
        f: &TestFleet,
        what: &str,
        address: u16,
        count: u16,
        want: &str,
    ) -> anyhow::Result<()> {
        wait_for(what, Duration::from_secs(30), || async {
            Ok((self.read(f, address, count)? == want).then_some(()))
        })
        .await
    }
}

fn device(f: &TestFleet, name: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&f.kubectl(&[
        "get", "device", name, "-n", NS, "-o", "json",
    ])?)?)
}

fn actual(device: &Value, property: &str) -> Option<String> {
    device
        .pointer(&format!("/status/deviceProperties/{property}/actualValue"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

async fn until_actual(
    f: &TestFleet,
    name: &str,
    property: &str,
    want: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    wait_for(
        &format!("{name}'s {property} to read {want}"),
        limit,
        || async {
            let d = device(f, name)?;
            if actual(&d, property).as_deref() == Some(want) {
                return Ok(Some(d));
            }
            bail!("{name}'s status: {}", d["status"])
        },
    )
    .await
}

/// The agent's process on the node (its container's), if it runs.
fn agent_pid(f: &TestFleet) -> anyhow::Result<Option<String>> {
    let out = f.exec(
        NODE,
        &["pgrep", "-f", &format!("iot agent --namespace={NS}")],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned))
}

/// How many devices the agent drives (its `yurt_iot_devices` gauge, read on the node).
fn agent_devices(f: &TestFleet) -> anyhow::Result<i64> {
    let pods: Value = serde_json::from_str(&f.kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/name=yurt-iot-dock",
        "-o",
        "json",
    ])?)?;
    let ip = pods
        .pointer("/items/0/status/podIP")
        .and_then(Value::as_str)
        .context("the agent's pod IP")?
        .to_owned();
    let out = f.exec(NODE, &["curl", "-sf", &format!("http://{ip}:8081/metrics")])?;
    ensure!(
        out.status.success(),
        "the agent's /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("yurt_iot_devices "))
        .and_then(|v| v.trim().parse().ok())
        .context("yurt_iot_devices in the agent's metrics")
}

fn modbus_objects(host_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
            "metadata": {"name": "modbus-service", "namespace": NS},
            "spec": {"baseAddress": format!("modbus-tcp://{host_ip}:{MODBUS_PORT}"), "nodePool": POOL, "adminState": "UNLOCKED", "managed": true},
        },
        {
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
            "metadata": {"name": "thermostat", "namespace": NS},
            "spec": {
                "nodePool": POOL, "manufacturer": "Acme", "model": "T-100",
                "deviceResources": [
                    {"name": "temperature", "description": "room temperature", "isHidden": false,
                     "properties": {"valueType": "Float32", "readWrite": "R", "scale": "0.1", "units": "C"},
                     "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": "0", "rawType": "INT16"}},
                    {"name": "setpoint", "description": "target temperature", "isHidden": false,
                     "properties": {"valueType": "Float32", "readWrite": "RW", "minimum": "5", "maximum": "35"},
                     "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": "1"}},
                    {"name": "mode", "description": "0 off, 1 heat, 2 cool, 3 auto", "isHidden": false,
                     "properties": {"valueType": "Uint16", "readWrite": "RW", "minimum": "0", "maximum": "3"},
                     "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": "3"}},
                ],
            },
        },
        {
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
            "metadata": {"name": "thermostat-1", "namespace": NS,
                         "annotations": {"iot.openyurt.io/poll-interval": "1s"}},
            "spec": {
                "nodePool": POOL, "managed": true, "adminState": "UNLOCKED", "notify": true,
                "serviceName": "modbus-service", "profileName": "thermostat",
                "protocols": {"modbus-tcp": {"Address": host_ip, "Port": MODBUS_PORT, "UnitID": "1", "Timeout": "2", "IdleTimeout": "5"}},
                "deviceProperties": {"mode": {"name": "mode", "desiredValue": "2"}},
            },
        },
    ]})
}

fn mqtt_objects(host_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceProfile",
            "metadata": {"name": "climate", "namespace": NS},
            "spec": {
                "nodePool": POOL,
                "deviceResources": [
                    {"name": "humidity", "description": "relative humidity", "isHidden": false,
                     "properties": {"valueType": "Float32", "readWrite": "R", "units": "%"}},
                    {"name": "fan", "description": "the fan", "isHidden": false,
                     "properties": {"valueType": "Bool", "readWrite": "RW"}},
                ],
            },
        },
        {
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
            "metadata": {"name": "sensor-1", "namespace": NS,
                         "annotations": {"iot.openyurt.io/poll-interval": "1s"}},
            "spec": {
                "nodePool": POOL, "managed": true, "adminState": "UNLOCKED", "notify": true,
                "serviceName": "mqtt-service", "profileName": "climate",
                "protocols": {"mqtt": {"Host": host_ip, "Port": "1883", "CommandTopic": "command/sensor-1", "Timeout": "2"}},
                "deviceProperties": {"fan": {"name": "fan", "desiredValue": "true"}},
            },
        },
    ]})
}

/// A client that the API server takes for `user` (the admin impersonating it: the
/// token of the agent's account is not needed to be it).
async fn client_as(f: &TestFleet, user: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(f.fleet().admin_kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(kube::Client::try_from(config)?)
}

/// The pool's agent runs under its pool's account, which writes its pool's devices
/// (their status) and no other pool's: not their status, and it creates none there.
async fn agents_are_confined_to_their_pool(f: &TestFleet) -> anyhow::Result<()> {
    let account = format!("edgex-sample-yurt-iot-dock-{POOL}");
    let pods: Value = serde_json::from_str(&f.kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/name=yurt-iot-dock",
        "-o",
        "json",
    ])?)?;
    let accounts: Vec<&str> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            p.pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
        })
        .collect();
    ensure!(
        !accounts.is_empty() && accounts.iter().all(|a| *a == account),
        "the agent runs as its pool's account: {accounts:?}"
    );
    // Another site's pool (no nodes needed) and an unmanaged device in it.
    let elsewhere = "elsewhere";
    f.apply(&json!({
        "apiVersion": "apps.openyurt.io/v1beta1", "kind": "NodePool",
        "metadata": {"name": elsewhere}, "spec": {"type": "Edge"},
    }))?;
    let foreign = |name: &str| {
        json!({
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "Device",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"serviceName": "device-virtual", "profileName": "Random-Integer-Device",
                     "nodePool": elsewhere, "managed": false, "notify": false},
        })
    };
    f.apply(&foreign("foreign-1"))?;
    let agent = client_as(f, &format!("system:serviceaccount:{NS}:{account}")).await?;
    let devices = kube::Api::<kube::core::DynamicObject>::namespaced_with(
        agent,
        NS,
        &kube::core::ApiResource {
            group: "iot.openyurt.io".into(),
            version: "v1alpha1".into(),
            api_version: "iot.openyurt.io/v1alpha1".into(),
            kind: "Device".into(),
            plural: "devices".into(),
        },
    );
    let refused = |what: &str, r: Result<kube::core::DynamicObject, kube::Error>| match r {
        Err(kube::Error::Api(s))
            if s.message
                .contains(&format!("is the device agent of pool \"{POOL}\"")) =>
        {
            Ok(())
        }
        other => Err(anyhow::anyhow!("{what} as the agent of {POOL}: {other:?}")),
    };
    let params = kube::api::PatchParams::default();
    let status = json!({"status": {"operatingState": "DOWN"}});
    refused(
        "another pool's device status",
        devices
            .patch_status("foreign-1", &params, &kube::api::Patch::Merge(&status))
            .await,
    )?;
    let created = serde_json::from_value(foreign("foreign-2"))?;
    refused(
        "a device created in another pool",
        devices
            .create(&kube::api::PostParams::default(), &created)
            .await,
    )?;
    // Its own pool's device: the same write goes through.
    let own = format!("{POOL}-random-integer-device");
    wait_for(
        "the agent's own virtual device",
        Duration::from_secs(120),
        || async {
            Ok(f.kubectl(&[
                "get",
                "device",
                &own,
                "-n",
                NS,
                "--ignore-not-found",
                "-o",
                "name",
            ])?
            .contains(&own)
            .then_some(()))
        },
    )
    .await?;
    devices
        .patch_status(
            &own,
            &params,
            &kube::api::Patch::Merge(&json!({"status": {}})),
        )
        .await
        .context("its own pool's device status as the agent")?;
    f.kubectl(&["delete", "device", "foreign-1", "-n", NS])?;
    f.kubectl(&["delete", "nodepool", elsewhere])?;
    Ok(())
}

fn patch_desired(f: &TestFleet, name: &str, property: &str, value: &str) -> anyhow::Result<String> {
    let patch = json!({"spec": {"deviceProperties": {property: {"name": property, "desiredValue": value}}}});
    f.kubectl(&[
        "patch",
        "device",
        name,
        "-n",
        NS,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_admin_virtual_and_modbus_devices_online_and_offline() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(900), async {
        let begun = std::time::Instant::now();
        let python = tokio::task::spawn_blocking(|| python_with(&[PYMODBUS])).await??;
        let mut f = fresh("e2e-devices", spec()).await?;
        let host_ip = f
            .fleet()
            .plan()
            .edge(NODE)
            .context("the edge node")?
            .ip
            .to_string();
        let peers = f.dir().join("device-peers");
        std::fs::create_dir_all(&peers)?;
        let server_script = peers.join("modbus_server.py");
        let client_script = peers.join("modbus_client.py");
        std::fs::write(&server_script, MODBUS_SERVER)?;
        std::fs::write(&client_script, MODBUS_CLIENT)?;
        let python = python.to_string_lossy().into_owned();
        let mut server = f.spawn_in(
            NODE,
            &[&python, &server_script.to_string_lossy(), MODBUS_PORT],
            &peers.join("modbus_server.log"),
        )?;
        server.wait_for_output("listening", Duration::from_secs(30))?;
        let plc = Client {
            python: python.clone(),
            script: client_script.to_string_lossy().into_owned(),
            host_ip: host_ip.clone(),
        };
        // 25.3 degrees in the temperature register (tenths).
        plc.write(&f, 0, &[253])?;

        eprintln!("[{:>5.1?}] fleet up, Modbus server listening", begun.elapsed());
        // The agent's image, from this binary, in the fleet's registry.
        let archive = f.dir().join("yurt-image.tar");
        f.yurt(&[
            "image", "build", "--with-yurt", "--tag", IMAGE, "-o",
            &archive.to_string_lossy(), "--push",
        ])?;
        std::fs::remove_file(&archive)?;

        eprintln!("[{:>5.1?}] the agent's image pushed", begun.elapsed());
        // Upstream's manual: a PlatformAdmin for the pool, with the virtual devices.
        f.fresh_namespace(NS)?;
        f.apply(&json!({
            "apiVersion": "iot.openyurt.io/v1beta1", "kind": "PlatformAdmin",
            "metadata": {"name": "edgex-sample", "namespace": NS},
            "spec": {"version": "minnesota", "nodepools": [POOL],
                     "components": [{"name": "edgex-device-virtual"}, {"name": "edgex-kuiper"}]},
        }))?;
        let pa = wait_for("the PlatformAdmin ready", Duration::from_secs(240), || async {
            let pa: Value = serde_json::from_str(&f.kubectl(&[
                "get", "platformadmin", "edgex-sample", "-n", NS, "-o", "json",
            ])?)?;
            Ok((pa.pointer("/status/ready") == Some(&json!(true))).then_some(pa))
        })
        .await?;
        ensure!(
            pa.pointer("/metadata/finalizers/0") == Some(&json!("iot.openyurt.io")),
            "upstream's finalizer: {pa}"
        );
        let unsupported = pa
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "ComponentsSupported"))
            .cloned()
            .unwrap_or_default();
        ensure!(
            unsupported["status"] == "False"
                && unsupported["message"].as_str().is_some_and(|m| m.contains("edgex-kuiper")),
            "a component we do not run is named: {unsupported}"
        );

        eprintln!("[{:>5.1?}] PlatformAdmin ready", begun.elapsed());
        agents_are_confined_to_their_pool(&f).await?;
        eprintln!("[{:>5.1?}] the pool's agent is confined to its pool", begun.elapsed());
        // The five virtual devices appear, synced, with readings.
        let virtual_int = format!("{POOL}-random-integer-device");
        wait_for("the five virtual devices", Duration::from_secs(120), || async {
            let list: Value = serde_json::from_str(&f.kubectl(&["get", "device", "-n", NS, "-o", "json"])?)?;
            let synced = list["items"]
                .as_array()
                .map(|i| {
                    i.iter()
                        .filter(|d| {
                            d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{POOL}-random-")))
                                && d.pointer("/status/synced") == Some(&json!(true))
                        })
                        .count()
                })
                .unwrap_or(0);
            Ok((synced == 5).then_some(()))
        })
        .await?;
        let d = wait_for("a virtual Int16 reading", Duration::from_secs(60), || async {
            let d = device(&f, &virtual_int)?;
            Ok(actual(&d, "Int16").map(|_| d))
        })
        .await?;
        ensure!(d["spec"]["managed"] == json!(false), "the edge owns them: {d}");
        // The manual's step: manage it and set a value; actualValue follows.
        f.kubectl(&[
            "patch", "device", &virtual_int, "-n", NS, "--type=merge", "-p",
            r#"{"spec": {"managed": true, "deviceProperties": {"Int16": {"name": "Int16", "desiredValue": "42"}}}}"#,
        ])?;
        until_actual(&f, &virtual_int, "Int16", "42", Duration::from_secs(60)).await?;

        eprintln!("[{:>5.1?}] virtual devices synced and written", begun.elapsed());
        // Modbus: readings, a desired value written and read back by another client.
        f.apply(&modbus_objects(&host_ip))?;
        let d = until_actual(&f, "thermostat-1", "temperature", "2.530000e+01", Duration::from_secs(60)).await?;
        ensure!(d.pointer("/status/operatingState") == Some(&json!("UP")), "{d}");
        plc.until(&f, "mode 2 in the register", 3, 1, "2").await?;
        until_actual(&f, "thermostat-1", "mode", "2", Duration::from_secs(30)).await?;
        patch_desired(&f, "thermostat-1", "setpoint", "21.5")?;
        // 21.5 as a big-endian IEEE 754 float: 0x41AC 0x0000.
        plc.until(&f, "the setpoint in the registers", 1, 2, "16812 0").await?;
        until_actual(&f, "thermostat-1", "setpoint", "2.150000e+01", Duration::from_secs(30)).await?;

        eprintln!("[{:>5.1?}] Modbus readings and writes", begun.elapsed());
        // Invalid writes are refused with messages kubectl shows.
        for (property, value, says) in [
            ("setpoint", "99", "outside setpoint's range"),
            ("temperature", "20", "read-only"),
            ("mode", "cool", "is a Uint16"),
        ] {
            match patch_desired(&f, "thermostat-1", property, value) {
                Ok(out) => bail!("{property}={value} was accepted: {out}"),
                Err(e) => ensure!(format!("{e:#}").contains(says), "{property}={value}: {e:#}"),
            }
        }

        eprintln!("[{:>5.1?}] invalid writes refused", begun.elapsed());
        // MQTT (Debian's mosquitto in the edge host): a published value appears, a
        // desired value is published on the device's command topic.
        let broker_conf = peers.join("mosquitto.conf");
        std::fs::write(&broker_conf, "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n")?;
        let _broker = f.spawn_in(
            NODE,
            &["mosquitto", "-c", &broker_conf.to_string_lossy()],
            &peers.join("mosquitto.log"),
        )?;
        wait_for("the broker", Duration::from_secs(30), || async {
            let out = f.exec(NODE, &["mosquitto_pub", "-h", &host_ip, "-t", "probe", "-m", "1"])?;
            Ok(out.status.success().then_some(()))
        })
        .await?;
        let commands = peers.join("mqtt-commands.log");
        let _listener = f.spawn_in(
            NODE,
            &["mosquitto_sub", "-h", &host_ip, "-t", "command/sensor-1/#", "-v"],
            &commands,
        )?;
        f.apply(&json!({
            "apiVersion": "iot.openyurt.io/v1alpha1", "kind": "DeviceService",
            "metadata": {"name": "mqtt-service", "namespace": NS},
            "spec": {"baseAddress": format!("tcp://{host_ip}:1883"), "nodePool": POOL},
        }))?;
        f.apply(&mqtt_objects(&host_ip))?;
        wait_for("the published humidity in status", Duration::from_secs(60), || async {
            // Published until the agent, connected by then, has seen it.
            f.exec(NODE, &["mosquitto_pub", "-h", &host_ip, "-t", "incoming/data/sensor-1/humidity", "-m", r#"{"humidity": 55.5}"#])?;
            let d = device(&f, "sensor-1")?;
            if actual(&d, "humidity").as_deref() == Some("5.550000e+01") {
                return Ok(Some(()));
            }
            bail!("sensor-1's status: {}", d["status"])
        })
        .await?;
        wait_for("the fan's set on the command topic", Duration::from_secs(30), || async {
            let log = std::fs::read_to_string(&commands).unwrap_or_default();
            Ok(log
                .lines()
                .any(|l| l.starts_with("command/sensor-1/fan/set/") && l.ends_with(r#"{"fan":true}"#))
                .then_some(()))
        })
        .await?;
        eprintln!("[{:>5.1?}] MQTT value in, command out", begun.elapsed());

        // The pool is cut off from the cloud.
        f.cut(POOL)?;
        let started = std::time::Instant::now();
        plc.write(&f, 3, &[0])?;
        plc.until(&f, "the tampered mode restored offline", 3, 1, "2").await?;
        let restored_in = started.elapsed();
        ensure!(restored_in < Duration::from_secs(10), "restored in {restored_in:?}");

        eprintln!("[{:>5.1?}] tamper restored offline", begun.elapsed());
        // The agent restarts while the pool is cut: it still enforces.
        let before = agent_pid(&f)?.context("the agent runs")?;
        f.exec(NODE, &["kill", &before])?;
        wait_for("the agent restarted offline", Duration::from_secs(90), || async {
            Ok(agent_pid(&f)?.filter(|p| *p != before))
        })
        .await?;
        plc.write(&f, 3, &[1])?;
        plc.until(&f, "the tampered mode restored by the restarted agent", 3, 1, "2").await?;

        eprintln!("[{:>5.1?}] restarted agent enforces offline", begun.elapsed());
        // An edit in the cloud while the pool is cut, applied once it is back; and a
        // device deleted meanwhile: it goes at once (the agent puts no finalizer on it),
        // is driven by the cut-off agent until the link returns, then no more.
        patch_desired(&f, "thermostat-1", "mode", "3")?;
        let driven_before = agent_devices(&f)?;
        f.kubectl(&["delete", "device", "sensor-1", "-n", NS, "--wait=false"])?;
        ensure!(
            f.kubectl(&["get", "device", "sensor-1", "-n", NS, "--ignore-not-found", "-o", "name"])?
                .trim()
                .is_empty(),
            "the deletion does not wait for the cut pool"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(plc.read(&f, 3, 1)? == "2", "the edit cannot reach the cut pool");
        ensure!(
            agent_devices(&f)? == driven_before,
            "the cut-off agent still drives the deleted device"
        );
        f.restore(POOL)?;
        wait_for("the deleted device no longer driven", Duration::from_secs(90), || async {
            Ok((agent_devices(&f)? == driven_before - 1).then_some(()))
        })
        .await?;
        plc.until(&f, "the cloud's edit applied after the cut", 3, 1, "3").await?;
        until_actual(&f, "thermostat-1", "mode", "3", Duration::from_secs(90)).await?;
        let d = device(&f, "thermostat-1")?;
        let managing = d
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "DeviceManaging"))
            .cloned()
            .unwrap_or_default();
        ensure!(managing["status"] == "True", "{d}");
        eprintln!("[{:>5.1?}] the cloud's edit applied after the cut, status current (tamper restored in {restored_in:?})", begun.elapsed());
        drop(server);
        Ok::<(), anyhow::Error>(())
    })
    .await
    .context("the test did not finish within 15 minutes")?
}
