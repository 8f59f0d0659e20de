//! Against a real broker: Debian's mosquitto (installed by `yurt setup`), on loopback.

use std::process::{Child, Command, Stdio};

use super::*;
use crate::driver::Access;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const WAIT: Duration = Duration::from_secs(15);

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        });
        let dir = tempfile::tempdir().expect("a folder");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("writes the configuration");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (yurt setup installs it)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "mosquitto listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resource(name: &str, value_type: ValueType) -> Resource {
    crate::driver::test_resource(name, value_type)
}

fn properties(port: u16) -> ProtocolProperties {
    [
        ("Host".to_owned(), "127.0.0.1".to_owned()),
        ("Port".to_owned(), port.to_string()),
        ("CommandTopic".to_owned(), "command/thermo".to_owned()),
        ("Timeout".to_owned(), "2".to_owned()),
    ]
    .into()
}

/// A device on the broker: answers gets from its state, takes sets into it, publishes
/// on request.
async fn device(port: u16) -> (AsyncClient, Arc<Mutex<HashMap<String, Json>>>) {
    let mut options = MqttOptions::new(
        format!("thermo-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    let state: Arc<Mutex<HashMap<String, Json>>> =
        Arc::new(Mutex::new([("mode".to_owned(), Json::from(2))].into()));
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let answering = client.clone();
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = answering
                        .subscribe("command/thermo/#", QoS::AtMostOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // command/thermo/<resource>/<get|set>/<id>
                    let parts: Vec<&str> = p.topic.split('/').collect();
                    let [_, _, resource, method, id] = parts[..] else {
                        continue;
                    };
                    let answer = if method == "set" {
                        if let Ok(Json::Object(m)) = serde_json::from_slice::<Json>(&p.payload) {
                            st.lock().expect("state").extend(m);
                        }
                        Json::Object(Default::default())
                    } else {
                        let v = st
                            .lock()
                            .expect("state")
                            .get(resource)
                            .cloned()
                            .unwrap_or(Json::Null);
                        serde_json::json!({ resource: v })
                    };
                    let _ = answering
                        .publish(
                            format!("command/response/{id}"),
                            QoS::AtMostOnce,
                            false,
                            answer.to_string(),
                        )
                        .await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .expect("the device subscribes")
        .expect("the device runs");
    (client, state)
}

async fn connected(driver: &MqttDriver, port: u16) -> Box<dyn Session> {
    let mut session = driver
        .connect("thermo", &properties(port))
        .await
        .expect("a session");
    let probe = resource("mode", ValueType::Uint16);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match session.read(&[&probe]).await {
            Ok(_) => return session,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never connected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_values_are_read_commands_get_and_set_through_the_broker() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let broker = Mosquitto::start(None);
        let (thermo, state) = device(broker.port).await;
        let driver = MqttDriver::default();
        let mut session = connected(&driver, broker.port).await;
        let mode = resource("mode", ValueType::Uint16);
        let temperature = resource("temperature", ValueType::Float32);

        // Read through a get command.
        assert_eq!(
            session.read(&[&mode]).await.expect("reads"),
            vec![Ok(Value::Uint(2))]
        );
        // A value the device publishes (get would answer null: the published one wins).
        thermo
            .publish(
                "incoming/data/thermo/temperature",
                QoS::AtMostOnce,
                false,
                r#"{"temperature": 21.5}"#,
            )
            .await
            .expect("publishes");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let read = session.read(&[&temperature]).await.expect("reads");
            if read == vec![Ok(Value::Float(21.5))] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the published value never came: {read:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A write publishes on the command topic; the device has it.
        session
            .write(&mode, Value::Uint(3))
            .await
            .expect("the device answers the set");
        assert_eq!(
            state.lock().expect("state").get("mode"),
            Some(&Json::from(3))
        );
        assert_eq!(
            session.read(&[&mode]).await.expect("reads"),
            vec![Ok(Value::Uint(3))]
        );
        // A device that does not answer: a timeout, not a hang.
        let mut silent = properties(broker.port);
        silent.insert("CommandTopic".into(), "command/nobody".into());
        let mut nobody = driver.connect("nobody", &silent).await.expect("a session");
        let err = nobody
            .write(&mode, Value::Uint(1))
            .await
            .expect_err("no answer");
        assert!(
            matches!(&err, DriverError::Refused(m) if m.contains("did not answer")),
            "{err:?}"
        );
        assert!(!err.is_connection(), "the broker is fine");
        // A read of a resource nobody answers fails that resource, not the session.
        let read = nobody.read(&[&mode]).await.expect("the broker answers");
        assert!(matches!(&read[0], Err(DriverError::Refused(_))), "{read:?}");
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_unreachable_then_used_again() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let broker = Mosquitto::start(None);
        let port = broker.port;
        let _device = device(port).await;
        let driver = MqttDriver::default();
        let mut session = connected(&driver, port).await;
        let mode = resource("mode", ValueType::Uint16);
        drop(broker);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match session.read(&[&mode]).await {
                Err(e) if e.is_connection() => break,
                other => {
                    assert!(tokio::time::Instant::now() < deadline, "still {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _broker = Mosquitto::start(Some(port));
        let _device = device(port).await;
        let session = connected(&driver, port).await;
        drop(session);
    })
    .await
    .expect("in time");
}

#[test]
fn endpoints_need_a_broker_and_plain_topics() {
    let mut p = ProtocolProperties::new();
    assert!(Endpoint::from_properties(&p).is_err());
    p.insert("Host".into(), "broker".into());
    let e = Endpoint::from_properties(&p).expect("parses");
    assert_eq!(
        (e.port, e.command_topic, e.timeout),
        (1883, None, DEFAULT_TIMEOUT)
    );
    p.insert("CommandTopic".into(), "command/#".into());
    assert!(Endpoint::from_properties(&p).is_err());
    assert_eq!(command_id().len(), 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reads_published_values_while_a_command_goes_unanswered() {
    use crate::engine::{Desired, DeviceConfig, Observed};
    use crate::metrics::Metrics;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    tokio::time::timeout(Duration::from_secs(60), async {
        let broker = Mosquitto::start(None);
        let mut props = properties(broker.port);
        props.insert("CommandTopic".into(), "command/sensor-1".into());
        let humidity = Resource {
            access: Access {
                read: true,
                write: false,
            },
            ..resource("humidity", ValueType::Float32)
        };
        let config = DeviceConfig {
            name: "sensor-1".into(),
            driver: Arc::new(MqttDriver::default()),
            properties: props,
            resources: vec![humidity, resource("fan", ValueType::Bool)],
            desired: vec![Desired {
                resource: "fan".into(),
                text: "true".into(),
            }],
            writes: true,
            polls: true,
            poll_interval: Duration::from_secs(1),
        };
        let (_configs, configs_rx) = watch::channel(Arc::new(config));
        let (observed_tx, mut observed) = watch::channel(Observed::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::engine::run(
            configs_rx,
            Arc::new(observed_tx),
            Metrics::default(),
            cancel.clone(),
        ));
        let (publisher, _) = device(broker.port).await;
        let seen = async {
            loop {
                publisher
                    .publish(
                        "incoming/data/sensor-1/humidity",
                        QoS::AtMostOnce,
                        false,
                        r#"{"humidity": 55.5}"#,
                    )
                    .await
                    .expect("publishes");
                let o = observed.borrow_and_update().clone();
                if o.readings.get("humidity").map(String::as_str) == Some("5.550000e+01") {
                    return o;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), observed.changed()).await;
            }
        };
        let o = tokio::time::timeout(Duration::from_secs(20), seen)
            .await
            .unwrap_or_else(|_| panic!("no humidity: {:?}", *observed.borrow()));
        assert_eq!(o.operating, Some(yurt_api::iot::OperatingState::Up));
        assert!(
            o.problems
                .get("fan")
                .is_some_and(|p| p.contains("did not answer")),
            "the unanswered set is the fan's problem: {o:?}"
        );
        cancel.cancel();
        let _ = task.await;
    })
    .await
    .expect("in time");
}

/// A device that publishes on topics of its own (a sensor's `tele/<name>/SENSOR` JSON):
/// the device's ValueTopic, or a resource's own topic, and a JSON path into the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_on_a_devices_own_topics_are_picked_by_their_json_path() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let broker = Mosquitto::start(None);
        let (sensor, _) = device(broker.port).await;
        let publish = |topic: &'static str, payload: &'static str| {
            let sensor = sensor.clone();
            async move {
                sensor
                    .publish(topic, QoS::AtLeastOnce, true, payload)
                    .await
                    .expect("publishes");
            }
        };
        publish(
            "tele/sensor1/SENSOR",
            r#"{"AM2301":{"Temperature":22.5,"Humidity":40}}"#,
        )
        .await;
        publish("stat/sensor1/POWER", "ON").await;
        let driver = MqttDriver::default();
        let props: ProtocolProperties = [
            ("Host".to_owned(), "127.0.0.1".to_owned()),
            ("Port".to_owned(), broker.port.to_string()),
            ("ValueTopic".to_owned(), "tele/sensor1/SENSOR".to_owned()),
        ]
        .into();
        let with = |name: &str, value_type, attributes: &[(&str, &str)]| Resource {
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..resource(name, value_type)
        };
        let temperature = with(
            "temperature",
            ValueType::Float32,
            &[("jsonPath", "$.AM2301.Temperature")],
        );
        let humidity = with(
            "humidity",
            ValueType::Uint8,
            &[("jsonPath", "AM2301.Humidity")],
        );
        let power = with(
            "power",
            ValueType::String,
            &[("topic", "stat/sensor1/POWER")],
        );
        let missing = with(
            "missing",
            ValueType::Uint8,
            &[("jsonPath", "AM2301.Pressure")],
        );
        let resources = [&temperature, &humidity, &power, &missing];
        driver
            .check(
                &props,
                &[temperature.clone(), humidity.clone(), power.clone()],
            )
            .expect("valid");
        let mut session = driver.connect("sensor1", &props).await.expect("a session");
        let deadline = tokio::time::Instant::now() + WAIT;
        let read = loop {
            let read = session.read(&resources).await;
            if read
                .as_ref()
                .is_ok_and(|r| r[..3].iter().all(Result::is_ok))
            {
                break read.expect("read");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never read: {read:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(read[0], Ok(Value::Float(22.5)));
        assert_eq!(read[1], Ok(Value::Uint(40)));
        assert_eq!(read[2], Ok(Value::String("ON".into())));
        assert!(
            matches!(&read[3], Err(DriverError::Refused(m)) if m.contains("AM2301.Pressure")),
            "{:?}",
            read[3]
        );
        publish(
            "tele/sensor1/SENSOR",
            r#"{"AM2301":{"Temperature":23,"Humidity":41}}"#,
        )
        .await;
        loop {
            let read = session.read(&[&temperature]).await.expect("reads");
            if read == vec![Ok(Value::Float(23.0))] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new value never came: {read:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A restarted broker (which kept nothing) is subscribed to again.
        let port = broker.port;
        drop(broker);
        let _broker = Mosquitto::start(Some(port));
        let (sensor, _) = device(port).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            sensor
                .publish(
                    "tele/sensor1/SENSOR",
                    QoS::AtLeastOnce,
                    false,
                    r#"{"AM2301":{"Temperature":24,"Humidity":42}}"#,
                )
                .await
                .expect("publishes");
            let read = session.read(&[&temperature]).await;
            if read == Ok(vec![Ok(Value::Float(24.0))]) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new value never came: {read:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("in time");
}

#[test]
fn value_topics_and_json_paths_are_checked() {
    let driver = MqttDriver::default();
    let mut props: ProtocolProperties = [("Host".to_owned(), "broker".to_owned())].into();
    props.insert("ValueTopic".into(), "tele/+/SENSOR".into());
    let err = driver.check(&props, &[]).expect_err("a filter");
    assert!(err.to_string().contains("ValueTopic"), "{err}");
    props.insert("ValueTopic".into(), "tele/s/SENSOR".into());
    let mut r = resource("t", ValueType::Float32);
    r.attributes.insert("jsonPath".into(), "a[x]".into());
    let err = driver.check(&props, &[r.clone()]).expect_err("a bad path");
    assert!(err.to_string().contains("jsonPath"), "{err}");
    r.attributes.insert("jsonPath".into(), "a[0]".into());
    r.attributes.insert("topic".into(), "stat/#".into());
    let err = driver.check(&props, &[r.clone()]).expect_err("a filter");
    assert!(err.to_string().contains("topic"), "{err}");
    r.attributes.insert("topic".into(), "stat/s/POWER".into());
    driver.check(&props, &[r]).expect("valid");
}

/// A payload far over rumqttc's default 10 KiB limit (a device's blob, or a stranger on
/// the broker) used to drop the broker connection, and every device on it with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payload_is_taken_without_dropping_the_broker() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let broker = Mosquitto::start(None);
        let _thermo = device(broker.port).await;
        let driver = MqttDriver::default();
        let mut session = connected(&driver, broker.port).await;
        // A publisher whose own client takes the large packet.
        let mut options = MqttOptions::new("blob-publisher", "127.0.0.1", broker.port);
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (publisher, mut events) = AsyncClient::new(options, 8);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let blob = "x".repeat(64 * 1024);
        publisher
            .publish(
                "incoming/data/thermo/blob",
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&serde_json::json!({ "blob": blob })).expect("JSON"),
            )
            .await
            .expect("publishes");
        let deadline = tokio::time::Instant::now() + WAIT;
        let large = resource("blob", ValueType::String);
        loop {
            let read = session.read(&[&large]).await;
            if read == Ok(vec![Ok(Value::String(blob.clone()))]) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the large value never came: {:?}",
                read.map(|r| r
                    .into_iter()
                    .map(|v| v.map(|v| v.to_string().len()))
                    .collect::<Vec<_>>())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let connects = driver
            .brokers
            .lock()
            .expect("brokers")
            .values()
            .map(|b| b.connects.load(Ordering::Relaxed))
            .collect::<Vec<_>>();
        assert_eq!(connects, [1], "the broker connection was never dropped");
    })
    .await
    .expect("in time");
}

/// Anyone on the broker may publish under `incoming/data/<any>/<any>`: only devices
/// driven here are kept, each with at most so many values.
#[test]
fn only_driven_devices_values_are_kept_and_only_so_many() {
    let mut inbox = Inbox::default();
    let now = Instant::now();
    inbox.keep("stranger", "x".into(), Json::Null, now);
    assert!(inbox.latest.is_empty());
    inbox
        .devices
        .insert("thermo".into(), DeviceEntry::default());
    for i in 0..1000 {
        inbox.keep("thermo", format!("k{i}"), Json::from(i), now);
    }
    assert_eq!(inbox.latest.len(), MAX_VALUES_PER_DEVICE);
    inbox.keep("thermo", "k0".into(), Json::from(-1), now);
    assert_eq!(
        inbox.latest[&("thermo".to_owned(), "k0".to_owned())].0,
        Json::from(-1)
    );
}
