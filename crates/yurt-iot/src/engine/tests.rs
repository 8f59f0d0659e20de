use std::net::SocketAddr;

use super::*;
use crate::driver::modbus::ModbusTcpDriver;
use crate::driver::modbus::simulator::{Memory, Simulator};
use crate::driver::{Access, Resource};
use crate::metrics::Metrics;
use crate::value::{Range, Transform, ValueType};

const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(10);

fn holding(name: &str, value_type: ValueType, address: u16, write: bool) -> Resource {
    Resource {
        name: name.into(),
        value_type,
        access: Access { read: true, write },
        transform: Transform::default(),
        range: Range {
            minimum: Some(0.0),
            maximum: Some(100.0),
        },
        attributes: [
            ("primaryTable".to_owned(), "HOLDING_REGISTERS".to_owned()),
            ("startingAddress".to_owned(), address.to_string()),
        ]
        .into(),
        hidden: false,
        default_value: None,
    }
}

fn config(address: SocketAddr, desired: &[(&str, &str)]) -> DeviceConfig {
    let mut temperature = holding("temperature", ValueType::Float32, 0, false);
    temperature.transform.scale = Some(0.1);
    temperature
        .attributes
        .insert("rawType".into(), "INT16".into());
    DeviceConfig {
        name: "plc-1".into(),
        driver: Arc::new(ModbusTcpDriver::default()),
        properties: [
            ("Address".to_owned(), address.ip().to_string()),
            ("Port".to_owned(), address.port().to_string()),
            ("Timeout".to_owned(), "0.5".to_owned()),
        ]
        .into(),
        resources: vec![
            temperature,
            holding("setpoint", ValueType::Float32, 1, true),
            holding("mode", ValueType::Uint16, 3, true),
        ],
        desired: desired
            .iter()
            .map(|(r, v)| Desired {
                resource: (*r).into(),
                text: (*v).into(),
            })
            .collect(),
        writes: true,
        polls: true,
        poll_interval: POLL,
    }
}

struct Running {
    configs: watch::Sender<Arc<DeviceConfig>>,
    observed: watch::Receiver<Observed>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: DeviceConfig) -> Running {
    let (configs, configs_rx) = watch::channel(Arc::new(config));
    let (observed_tx, observed) = watch::channel(Observed::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        configs_rx,
        Arc::new(observed_tx),
        Metrics::default(),
        cancel.clone(),
    ));
    Running {
        configs,
        observed,
        cancel,
        task,
    }
}

impl Running {
    async fn until(&mut self, what: &str, f: impl Fn(&Observed) -> bool) -> Observed {
        let outcome = tokio::time::timeout(WAIT, self.observed.wait_for(|o| f(o)))
            .await
            .map(|r| r.map(|o| o.clone()));
        match outcome {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => panic!("the loop ended before {what}"),
            Err(_) => panic!("not {what} within {WAIT:?}: {:?}", *self.observed.borrow()),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the loop stops when cancelled")
            .expect("the loop did not panic");
    }
}

async fn simulator(at: SocketAddr) -> Simulator {
    Simulator::start(at, Memory::with_size(16))
        .await
        .expect("the simulator listens")
}

fn reading(o: &Observed, resource: &str) -> Option<String> {
    o.readings.get(resource).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_appear_and_desired_values_are_written_read_back_and_restored() {
    let sim = simulator("127.0.0.1:0".parse().expect("an address")).await;
    sim.with_memory(|m| m.holding_registers[0] = 253);
    let mut device = start(config(
        sim.address(),
        &[("setpoint", "21.5"), ("mode", "3")],
    ));
    let o = device
        .until("read and written", |o| {
            reading(o, "setpoint").as_deref() == Some("2.150000e+01")
                && reading(o, "mode").as_deref() == Some("3")
        })
        .await;
    assert_eq!(o.operating, Some(OperatingState::Up));
    assert_eq!(reading(&o, "temperature").as_deref(), Some("2.530000e+01"));
    assert!(o.problems.is_empty(), "{:?}", o.problems);
    assert!(o.last_connected_ms.is_some());
    assert_eq!(
        sim.with_memory(|m| m.holding_registers[1..4].to_vec()),
        vec![0x41AC, 0x0000, 3]
    );
    let writes = o.writes;

    // Steady state: nothing differs, nothing is written.
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(
        device.observed.borrow().writes,
        writes,
        "no write at steady state"
    );

    // Someone on the site changes the register: the next poll writes it back.
    sim.with_memory(|m| m.holding_registers[3] = 9);
    device
        .until("the tampered register restored", |o| o.writes > writes)
        .await;
    device
        .until("mode 3 again", |o| {
            reading(o, "mode").as_deref() == Some("3")
        })
        .await;
    assert_eq!(sim.with_memory(|m| m.holding_registers[3]), 3);

    // A new desired value is written at once.
    let mut next = config(sim.address(), &[("setpoint", "21.5"), ("mode", "7")]);
    next.poll_interval = Duration::from_secs(3600);
    device
        .configs
        .send(Arc::new(next))
        .expect("the loop listens");
    device
        .until("mode 7", |o| reading(o, "mode").as_deref() == Some("7"))
        .await;
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_goes_away_is_down_and_gets_its_values_again_after_a_reset() {
    let sim = simulator("127.0.0.1:0".parse().expect("an address")).await;
    let address = sim.address();
    let mut device = start(config(address, &[("mode", "5")]));
    device
        .until("mode 5", |o| reading(o, "mode").as_deref() == Some("5"))
        .await;

    sim.stop().await;
    let o = device
        .until("down", |o| o.operating == Some(OperatingState::Down))
        .await;
    assert!(
        o.problems.contains_key(""),
        "the device's problem is named: {o:?}"
    );
    // The last readings are kept while the device is down.
    assert_eq!(reading(&o, "mode").as_deref(), Some("5"));

    // The PLC comes back with its registers reset to zero.
    let sim = simulator(address).await;
    device
        .until("up", |o| {
            o.operating == Some(OperatingState::Up) && o.problems.is_empty()
        })
        .await;
    device
        .until("mode 5 again", |o| {
            reading(o, "mode").as_deref() == Some("5")
        })
        .await;
    assert_eq!(sim.with_memory(|m| m.holding_registers[3]), 5);
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_device_is_down_within_its_timeout() {
    let sim = simulator("127.0.0.1:0".parse().expect("an address")).await;
    let mut device = start(config(sim.address(), &[]));
    device
        .until("up", |o| o.operating == Some(OperatingState::Up))
        .await;
    sim.set_hung(true);
    let o = device
        .until("down", |o| o.operating == Some(OperatingState::Down))
        .await;
    assert!(
        o.problems
            .get("")
            .is_some_and(|p| p.contains("no answer within")),
        "{o:?}"
    );
    sim.set_hung(false);
    device
        .until("up again", |o| o.operating == Some(OperatingState::Up))
        .await;
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_or_unmanaged_devices_are_not_written_and_bad_desired_values_are_named() {
    let sim = simulator("127.0.0.1:0".parse().expect("an address")).await;
    sim.with_memory(|m| m.holding_registers[3] = 1);
    let mut unmanaged = config(sim.address(), &[("mode", "5")]);
    unmanaged.writes = false;
    let mut device = start(unmanaged);
    let o = device
        .until("read", |o| reading(o, "mode").as_deref() == Some("1"))
        .await;
    tokio::time::sleep(POLL * 3).await;
    assert_eq!(device.observed.borrow().writes, 0);
    assert_eq!(o.operating, Some(OperatingState::Up));
    device.stop().await;

    let mut locked = config(sim.address(), &[("mode", "5")]);
    locked.writes = false;
    locked.polls = false;
    let mut device = start(locked);
    let o = device
        .until("a LOCKED device reported", |o| o.operating.is_some())
        .await;
    assert_eq!(
        o.operating,
        Some(OperatingState::Unknown),
        "a LOCKED device is not read, so not known to answer"
    );
    assert!(o.readings.is_empty());
    device.stop().await;

    let bad = config(
        sim.address(),
        &[
            ("temperature", "20"),
            ("setpoint", "500"),
            ("mode", "x"),
            ("nope", "1"),
        ],
    );
    let mut device = start(bad);
    let o = device.until("read", |o| o.operating.is_some()).await;
    assert_eq!(
        o.problems.get("temperature").map(String::as_str),
        Some("the resource is read-only")
    );
    assert_eq!(
        o.problems.get("setpoint").map(String::as_str),
        Some("desired value: 500 is outside the resource's range [0, 100]")
    );
    assert_eq!(
        o.problems.get("mode").map(String::as_str),
        Some("desired value: \"x\" is not a Uint16 value")
    );
    assert_eq!(
        o.problems.get("nope").map(String::as_str),
        Some("not a resource of the profile")
    );
    assert_eq!(o.writes, 0);
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_resource_is_written_once_and_again_after_a_reconnect() {
    let sim = simulator("127.0.0.1:0".parse().expect("an address")).await;
    let address = sim.address();
    let mut trigger = holding("trigger", ValueType::Uint16, 5, true);
    trigger.access.read = false;
    let mut masked = holding("flags", ValueType::Uint16, 6, true);
    masked.transform.mask = Some(0xff);
    let mut c = config(address, &[("trigger", "1"), ("flags", "3")]);
    c.resources.push(trigger);
    c.resources.push(masked);
    let mut device = start(c);
    device.until("the trigger written", |o| o.writes == 1).await;
    tokio::time::sleep(POLL * 5).await;
    let o = device.observed.borrow().clone();
    assert_eq!(o.writes, 1, "written once, not every poll");
    assert_eq!(sim.with_memory(|m| m.holding_registers[5]), 1);
    assert_eq!(
        o.problems.get("flags").map(String::as_str),
        Some("a masked or shifted resource cannot be written (the other bits are unknown)")
    );
    // The device goes away and comes back reset: the trigger is written again.
    sim.stop().await;
    device
        .until("down", |o| o.operating == Some(OperatingState::Down))
        .await;
    let sim = simulator(address).await;
    device.until("written again", |o| o.writes == 2).await;
    assert_eq!(sim.with_memory(|m| m.holding_registers[5]), 1);
    device.stop().await;
}
