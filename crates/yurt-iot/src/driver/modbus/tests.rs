use std::collections::BTreeMap;
use std::time::Duration;

use super::layout::{Batch, Location, Raw, Table, plan};
use super::simulator::{Memory, Simulator};
use super::*;
use crate::driver::{Resource, test_resource};
use crate::value::ValueType;

fn resource(name: &str, value_type: ValueType, attributes: &[(&str, &str)]) -> Resource {
    Resource {
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..test_resource(name, value_type)
    }
}

fn holding(name: &str, value_type: ValueType, address: u16) -> Resource {
    resource(
        name,
        value_type,
        &[
            ("primaryTable", "HOLDING_REGISTERS"),
            ("startingAddress", &address.to_string()),
        ],
    )
}

fn properties(sim: &Simulator, extra: &[(&str, &str)]) -> ProtocolProperties {
    let mut p: ProtocolProperties = BTreeMap::new();
    p.insert("Address".into(), sim.address().ip().to_string());
    p.insert("Port".into(), sim.address().port().to_string());
    for (k, v) in extra {
        p.insert((*k).into(), (*v).into());
    }
    p
}

async fn device(size: usize) -> Simulator {
    Simulator::start(
        "127.0.0.1:0".parse().expect("an address"),
        Memory::with_size(size),
    )
    .await
    .expect("the simulator listens")
}

async fn connect(sim: &Simulator, extra: &[(&str, &str)]) -> Box<dyn Session> {
    ModbusTcpDriver::default()
        .connect("dev", &properties(sim, extra))
        .await
        .expect("connects")
}

#[test]
fn endpoints_take_edgex_properties_with_defaults() {
    let mut p = ProtocolProperties::new();
    assert!(
        Endpoint::from_properties(&p).is_err(),
        "Address is required"
    );
    p.insert("Address".into(), "plc-1".into());
    assert_eq!(
        Endpoint::from_properties(&p),
        Ok(Endpoint {
            host: "plc-1".into(),
            port: 502,
            unit: 1,
            timeout: Duration::from_secs(5),
        })
    );
    p.insert("UnitID".into(), "0x11".into());
    p.insert("Timeout".into(), "0.5".into());
    let e = Endpoint::from_properties(&p).expect("parses");
    assert_eq!((e.unit, e.timeout), (17, Duration::from_millis(500)));
    p.insert("Port".into(), "70000".into());
    let err = Endpoint::from_properties(&p).expect_err("no such port");
    assert_eq!(
        err.to_string(),
        "modbus-tcp: Port \"70000\" is not a number from 0 to 65535"
    );
}

#[test]
fn locations_follow_device_modbus() {
    let r = resource(
        "t",
        ValueType::Float32,
        &[
            ("primaryTable", "INPUT_REGISTERS"),
            ("startingAddress", "0x10"),
            ("rawType", "Int16"),
        ],
    );
    let l = Location::of(&r).expect("located");
    assert_eq!(
        (l.table, l.address, l.count, l.raw),
        (Table::InputRegisters, 16, 1, Raw::Int16)
    );
    let bad = resource(
        "c",
        ValueType::Int16,
        &[("primaryTable", "COILS"), ("startingAddress", "1")],
    );
    assert!(Location::of(&bad).is_err(), "a coil holds a Bool");
    let s = resource(
        "s",
        ValueType::String,
        &[
            ("primaryTable", "HOLDING_REGISTERS"),
            ("startingAddress", "1"),
        ],
    );
    assert!(
        Location::of(&s)
            .expect_err("a size is needed")
            .to_string()
            .contains("stringRegisterSize")
    );
    let end = holding("e", ValueType::Float64, 65533);
    assert!(
        Location::of(&end).is_err(),
        "four registers from 65533 pass the end"
    );
    let bit = resource(
        "b",
        ValueType::Bool,
        &[
            ("primaryTable", "HOLDING_REGISTERS"),
            ("startingAddress", "7.3"),
        ],
    );
    assert_eq!(Location::of(&bit).expect("located").bit, Some(3));
}

#[test]
fn thirty_two_bit_values_honour_byte_and_word_swaps() {
    let value = Value::Float(f64::from(1.5f32)); // 0x3FC0_0000
    let cases = [
        (false, false, [0x3FC0, 0x0000]),
        (true, false, [0xC03F, 0x0000]),
        (false, true, [0x0000, 0x3FC0]),
        (true, true, [0x0000, 0xC03F]),
    ];
    for (byte_swap, word_swap, words) in cases {
        let mut r = holding("f", ValueType::Float32, 0);
        r.attributes
            .insert("isByteSwap".into(), byte_swap.to_string());
        r.attributes
            .insert("isWordSwap".into(), word_swap.to_string());
        let l = Location::of(&r).expect("located");
        assert_eq!(l.encode_registers(value.clone()).expect("encodes"), words);
        assert_eq!(l.decode_registers(&words), Ok(value.clone()));
    }
    // 16- and 64-bit values are never swapped (device-modbus).
    let mut r = holding("i", ValueType::Int16, 0);
    r.attributes.insert("isByteSwap".into(), "true".into());
    let l = Location::of(&r).expect("located");
    assert_eq!(l.encode_registers(Value::Int(-2)), Ok(vec![0xFFFE]));
}

#[test]
fn strings_are_nul_padded_and_trimmed() {
    let r = resource(
        "s",
        ValueType::String,
        &[
            ("primaryTable", "HOLDING_REGISTERS"),
            ("startingAddress", "0"),
            ("stringRegisterSize", "3"),
        ],
    );
    let l = Location::of(&r).expect("located");
    let words = l
        .encode_registers(Value::String("abc".into()))
        .expect("fits");
    assert_eq!(words, vec![0x6162, 0x6300, 0x0000]);
    assert_eq!(l.decode_registers(&words), Ok(Value::String("abc".into())));
    assert!(l.encode_registers(Value::String("abcdefg".into())).is_err());
}

#[test]
fn contiguous_registers_are_read_together_up_to_the_limit() {
    let locs: Vec<Location> = [
        holding("a", ValueType::Float32, 0), // 0..2
        holding("b", ValueType::Int16, 2),   // 2..3, touching
        holding("c", ValueType::Int16, 10),  // a gap
        resource(
            "d",
            ValueType::Bool,
            &[("primaryTable", "COILS"), ("startingAddress", "2")],
        ),
        holding("e", ValueType::Int16, 1), // inside a's range (overlap)
    ]
    .iter()
    .map(|r| Location::of(r).expect("located"))
    .collect();
    let refs: Vec<&Location> = locs.iter().collect();
    assert_eq!(
        plan(&refs),
        vec![
            Batch {
                table: Table::Coils,
                address: 2,
                count: 1,
                members: vec![3]
            },
            Batch {
                table: Table::HoldingRegisters,
                address: 0,
                count: 3,
                members: vec![0, 4, 1]
            },
            Batch {
                table: Table::HoldingRegisters,
                address: 10,
                count: 1,
                members: vec![2]
            },
        ]
    );
    let many: Vec<Location> = (0..130)
        .map(|a| Location::of(&holding("r", ValueType::Uint16, a)).expect("located"))
        .collect();
    let refs: Vec<&Location> = many.iter().collect();
    let batches = plan(&refs);
    assert_eq!(
        batches.iter().map(|b| b.count).collect::<Vec<_>>(),
        vec![125, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_contiguous_properties_are_one_request_and_writes_read_back() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let sim = device(64).await;
        sim.with_memory(|m| {
            for (i, r) in m.holding_registers.iter_mut().enumerate().take(10) {
                *r = i as u16 * 100;
            }
        });
        let resources: Vec<Resource> = (0..10)
            .map(|i| holding(&format!("r{i}"), ValueType::Uint16, i))
            .collect();
        let refs: Vec<&Resource> = resources.iter().collect();
        let mut session = connect(&sim, &[]).await;
        let before = sim.requests();
        let read = session.read(&refs).await.expect("reads");
        assert_eq!(sim.requests() - before, 1, "one request for ten registers");
        assert_eq!(read[7], Ok(Value::Uint(700)));

        let f = holding("f", ValueType::Float32, 20);
        session.write(&f, Value::Float(21.5)).await.expect("writes");
        assert_eq!(
            sim.with_memory(|m| m.holding_registers[20..22].to_vec()),
            vec![0x41AC, 0]
        );
        assert_eq!(
            session.read(&[&f]).await.expect("reads"),
            vec![Ok(Value::Float(21.5))]
        );

        let coil = resource(
            "c",
            ValueType::Bool,
            &[("primaryTable", "COILS"), ("startingAddress", "5")],
        );
        session
            .write(&coil, Value::Bool(true))
            .await
            .expect("writes a coil");
        assert!(sim.with_memory(|m| m.coils[5]));

        // One bit of a register, the others kept.
        sim.with_memory(|m| m.holding_registers[30] = 0b1000_0001);
        let bit = resource(
            "b",
            ValueType::Bool,
            &[
                ("primaryTable", "HOLDING_REGISTERS"),
                ("startingAddress", "30.2"),
            ],
        );
        session
            .write(&bit, Value::Bool(true))
            .await
            .expect("writes a bit");
        assert_eq!(sim.with_memory(|m| m.holding_registers[30]), 0b1000_0101);
        assert_eq!(
            session.read(&[&bit]).await.expect("reads"),
            vec![Ok(Value::Bool(true))]
        );

        let input = resource(
            "i",
            ValueType::Int16,
            &[
                ("primaryTable", "INPUT_REGISTERS"),
                ("startingAddress", "0"),
            ],
        );
        assert!(matches!(
            session.write(&input, Value::Int(1)).await,
            Err(DriverError::Config(_))
        ));
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_device_refuses_does_not_hide_the_others() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let sim = device(12).await;
        sim.with_memory(|m| m.holding_registers[10] = 42);
        // 10..11 exists, 11..13 passes the end of the device's map: one batch, refused.
        let good = holding("good", ValueType::Uint16, 10);
        let bad = holding("bad", ValueType::Uint32, 11);
        let mut session = connect(&sim, &[]).await;
        let read = session
            .read(&[&good, &bad])
            .await
            .expect("the connection holds");
        assert_eq!(read[0], Ok(Value::Uint(42)));
        assert!(
            matches!(&read[1], Err(DriverError::Refused(m)) if m.contains("Illegal data address")),
            "{read:?}"
        );
        // The session still works.
        assert_eq!(
            session.read(&[&good]).await.expect("reads"),
            vec![Ok(Value::Uint(42))]
        );
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_device_times_out_and_a_gone_one_is_unreachable() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let sim = device(8).await;
        let r = holding("r", ValueType::Uint16, 0);
        let mut session = connect(&sim, &[("Timeout", "0.3")]).await;
        sim.set_hung(true);
        let err = session.read(&[&r]).await.expect_err("no answer");
        assert_eq!(err, DriverError::Timeout(Duration::from_millis(300)));
        assert!(err.is_connection());
        let props = properties(&sim, &[("Timeout", "0.3")]);
        sim.stop().await;
        let err = match ModbusTcpDriver::default().connect("dev", &props).await {
            Err(e) => e,
            Ok(_) => panic!("connected to a stopped device"),
        };
        assert!(matches!(err, DriverError::Unreachable(_)), "{err:?}");
    })
    .await
    .expect("in time");
}

#[test]
fn check_refuses_writable_resources_in_read_only_tables() {
    let mut p = ProtocolProperties::new();
    p.insert("Address".into(), "127.0.0.1".into());
    let r = resource(
        "i",
        ValueType::Int16,
        &[
            ("primaryTable", "INPUT_REGISTERS"),
            ("startingAddress", "0"),
        ],
    );
    let err = ModbusTcpDriver::default()
        .check(&p, &[r])
        .expect_err("read-only table");
    assert!(err.to_string().contains("read-only table"), "{err}");
}

/// PLCs and gateways accept few connections (often 4 to 16): devices at one address
/// and port (register blocks of one PLC, units behind one gateway) share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_at_one_address_share_one_connection_each_asked_as_its_unit() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let (plc, other) = (device(40).await, device(8).await);
        for i in 0..20 {
            plc.with_memory(|m| m.holding_registers[i] = 100 + i as u16);
        }
        let driver = ModbusTcpDriver::default();
        let mut sessions = Vec::new();
        for unit in 1..=20u8 {
            let props = properties(&plc, &[("UnitID", &unit.to_string())]);
            sessions.push(driver.connect("dev", &props).await.expect("connects"));
        }
        let mut elsewhere = driver
            .connect("dev", &properties(&other, &[]))
            .await
            .expect("connects");
        let reads = sessions.iter_mut().enumerate().map(|(i, s)| async move {
            let r = holding("r", ValueType::Uint16, i as u16);
            s.read(&[&r]).await
        });
        let reads = futures_util::future::join_all(reads).await;
        for (i, read) in reads.into_iter().enumerate() {
            assert_eq!(read, Ok(vec![Ok(Value::Uint(100 + i as u64))]));
        }
        let r = holding("r", ValueType::Uint16, 0);
        assert!(elsewhere.read(&[&r]).await.is_ok());
        assert_eq!((plc.connections(), other.connections()), (1, 1));
        for unit in 1..=20u8 {
            assert_eq!(plc.requests_for(unit), 1, "unit {unit}");
        }
    })
    .await
    .expect("in time");
}

/// A request that timed out may still be answered late, so its connection is closed;
/// the other devices on it learn so at their next request, and their next session opens
/// a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_under_one_device_is_opened_again_by_the_next() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let plc = device(8).await;
        plc.with_memory(|m| m.holding_registers[0] = 7);
        let r = holding("r", ValueType::Uint16, 0);
        let driver = ModbusTcpDriver::default();
        let quick = properties(&plc, &[("Timeout", "0.3"), ("UnitID", "1")]);
        let other = properties(&plc, &[("UnitID", "2")]);
        let mut first = driver.connect("a", &quick).await.expect("connects");
        let mut second = driver.connect("b", &other).await.expect("connects");
        plc.set_hung(true);
        let err = first.read(&[&r]).await.expect_err("no answer");
        assert_eq!(err, DriverError::Timeout(Duration::from_millis(300)));
        plc.set_hung(false);
        let err = second
            .read(&[&r])
            .await
            .expect_err("its connection is gone");
        assert!(err.is_connection(), "{err:?}");
        let mut second = driver.connect("b", &other).await.expect("connects again");
        assert_eq!(second.read(&[&r]).await, Ok(vec![Ok(Value::Uint(7))]));
        assert_eq!(
            first.read(&[&r]).await.map_err(|e| e.is_connection()),
            Err(true)
        );
        assert_eq!(plc.connections(), 2);
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waits_for_its_turn_no_longer_than_its_timeout() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let plc = device(8).await;
        let r = holding("r", ValueType::Uint16, 0);
        let driver = ModbusTcpDriver::default();
        let slow = properties(&plc, &[("Timeout", "3"), ("UnitID", "1")]);
        let quick = properties(&plc, &[("Timeout", "0.3"), ("UnitID", "2")]);
        let mut holder = driver.connect("a", &slow).await.expect("connects");
        let mut waiter = driver.connect("b", &quick).await.expect("connects");
        plc.set_hung(true);
        let held =
            tokio::spawn(async move { holder.read(&[&holding("r", ValueType::Uint16, 0)]).await });
        while plc.requests_for(1) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = std::time::Instant::now();
        let err = waiter.read(&[&r]).await.expect_err("no turn in time");
        assert_eq!(err, DriverError::Timeout(Duration::from_millis(300)));
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(plc.requests_for(2), 0, "never sent");
        assert!(
            !held.is_finished(),
            "the first request still waits for its answer"
        );
        // Cancelled mid-request (its device deleted): the answer may still come, so the
        // connection is not used again.
        held.abort();
        let _ = held.await;
        plc.set_hung(false);
        let err = waiter
            .read(&[&r])
            .await
            .expect_err("not on that connection");
        assert!(err.is_connection(), "{err:?}");
        let mut waiter = driver.connect("b", &quick).await.expect("connects again");
        assert!(waiter.read(&[&r]).await.is_ok());
        assert_eq!(plc.connections(), 2);
    })
    .await
    .expect("in time");
}

/// Numbers synced back from the edge come as `"1.000000"` (yurt-iot-dock's `%f`): the
/// register, as the webhook reads it, not a bit of it.
#[test]
fn an_address_synced_back_from_the_edge_as_a_decimal_is_the_register() {
    let at = |value_type, address: &str| {
        let r = resource(
            "r",
            value_type,
            &[
                ("primaryTable", "HOLDING_REGISTERS"),
                ("startingAddress", address),
            ],
        );
        Location::of(&r).map(|l| (l.address, l.bit))
    };
    assert_eq!(at(ValueType::Uint16, "1.000000"), Ok((1, None)));
    assert_eq!(at(ValueType::Uint16, "0x10"), Ok((16, None)));
    assert_eq!(at(ValueType::Bool, "30.2"), Ok((30, Some(2))));
    assert_eq!(at(ValueType::Bool, "30.15"), Ok((30, Some(15))));
    assert!(at(ValueType::Bool, "30.16").is_err());
    assert!(at(ValueType::Uint16, "65536").is_err());
}
