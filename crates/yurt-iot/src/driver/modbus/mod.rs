//! Modbus TCP (protocol key `modbus-tcp`), with tokio-modbus, in EdgeX's vocabulary:
//! device properties `Address`, `Port` (502), `UnitID` (1), `Timeout` (seconds, 5);
//! resource attributes in [`layout`]. Reads of many resources are batched into the fewest
//! requests; a batch the device refuses (an exception for one bad address) is read again
//! resource by resource, so one wrong address does not hide the others. Every request
//! has the timeout; a timed-out or broken connection is dropped and opened again (a late
//! answer must never be taken for the next request's).
//!
//! Devices at one address and port share one connection and take turns on it, a device's
//! whole read or write per turn, as EdgeX's device-modbus serializes requests per address:
//! PLCs and gateways accept few connections (often 4 to 16), and a gateway asks its
//! serial units one at a time anyway. A device waits for its turn at most its `Timeout`.
//! When a device's request closes the connection, the other devices' sessions on it fail
//! at their next request and their next session opens a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio::sync::{Mutex as TurnLock, MutexGuard as Turn};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use super::{
    Driver, DriverError, ProtocolProperties, Readings, Resource, Session, property,
    timeout_property,
};
use crate::value::Value;

pub mod layout;
pub mod simulator;
#[cfg(test)]
mod tests;

use layout::{Location, Raw, Table, plan};

/// The Modbus TCP port.
pub const DEFAULT_PORT: u16 = 502;
/// The unit addressed when a device names none.
pub const DEFAULT_UNIT_ID: u8 = 1;
/// The time a request may take when a device names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Modbus TCP driver: one connection per address and port, shared by the devices
/// there.
#[derive(Default)]
pub struct ModbusTcpDriver {
    links: Mutex<HashMap<(String, u16), Weak<Link>>>,
}

/// The connection to one address and port, and whose turn it is.
struct Link {
    target: String,
    state: TurnLock<LinkState>,
}

#[derive(Default)]
struct LinkState {
    context: Option<Context>,
    /// Connections opened so far: a session made on an earlier one is told it is gone.
    opened: u64,
    /// A request was sent and its turn ended before its answer came (its device's
    /// loop was cancelled): the answer may still arrive, so the connection is not used
    /// again.
    in_flight: bool,
}

impl ModbusTcpDriver {
    /// The link to an endpoint's address and port, made when no device holds one.
    fn link(&self, endpoint: &Endpoint) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (endpoint.host.clone(), endpoint.port);
        if let Some(link) = links.get(&key).and_then(Weak::upgrade) {
            return link;
        }
        links.retain(|_, l| l.strong_count() > 0);
        // An IPv6 literal is bracketed in host:port.
        let target = if endpoint.host.contains(':') && !endpoint.host.starts_with('[') {
            format!("[{}]:{}", endpoint.host, endpoint.port)
        } else {
            format!("{}:{}", endpoint.host, endpoint.port)
        };
        let link = Arc::new(Link {
            target,
            state: TurnLock::new(LinkState::default()),
        });
        links.insert(key, Arc::downgrade(&link));
        link
    }
}

impl Link {
    /// Waits for the connection's turn, at most `timeout`.
    async fn turn(&self, timeout: Duration) -> Result<Turn<'_, LinkState>, DriverError> {
        tokio::time::timeout(timeout, self.state.lock())
            .await
            .map_err(|_| DriverError::Timeout(timeout))
    }
}

/// Where a device is and how long it may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Modbus unit.
    pub unit: u8,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

impl Endpoint {
    /// A device's endpoint from its `modbus-tcp` properties.
    pub fn from_properties(properties: &ProtocolProperties) -> Result<Self, DriverError> {
        let host = property(properties, "Address")
            .ok_or_else(|| DriverError::Config("modbus-tcp: Address is required".into()))?
            .to_owned();
        let number = |name: &str, max: u64| -> Result<Option<u64>, DriverError> {
            property(properties, name)
                .map(|v| {
                    let lower = v.to_ascii_lowercase();
                    let n = match lower.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16).ok(),
                        None => lower.parse::<u64>().ok(),
                    };
                    n.filter(|n| *n <= max).ok_or_else(|| {
                        DriverError::Config(format!(
                            "modbus-tcp: {name} {v:?} is not a number from 0 to {max}"
                        ))
                    })
                })
                .transpose()
        };
        let port = number("Port", 65535)?.map_or(DEFAULT_PORT, |p| p as u16);
        let unit = number("UnitID", 255)?.map_or(DEFAULT_UNIT_ID, |u| u as u8);
        let timeout = timeout_property(properties, "modbus-tcp", DEFAULT_TIMEOUT)?;
        Ok(Self {
            host,
            port,
            unit,
            timeout,
        })
    }
}

#[async_trait]
impl Driver for ModbusTcpDriver {
    fn protocol(&self) -> &'static str {
        "modbus-tcp"
    }

    fn check(
        &self,
        properties: &ProtocolProperties,
        resources: &[Resource],
    ) -> Result<(), DriverError> {
        Endpoint::from_properties(properties)?;
        for resource in resources {
            let location = Location::of(resource)?;
            if resource.access.write && !location.table.is_writable() {
                return Err(DriverError::Config(format!(
                    "resource {:?} is writable but {:?} is a read-only table",
                    resource.name, location.table
                )));
            }
        }
        Ok(())
    }

    async fn connect(
        &self,
        _device: &str,
        properties: &ProtocolProperties,
    ) -> Result<Box<dyn Session>, DriverError> {
        let endpoint = Endpoint::from_properties(properties)?;
        let link = self.link(&endpoint);
        let opened = {
            let mut state = link.turn(endpoint.timeout).await?;
            if state.in_flight {
                // A request cancelled mid-way: its answer may still come.
                state.context = None;
                state.in_flight = false;
            }
            if state.context.is_none() {
                let target = &link.target;
                let stream = tokio::time::timeout(endpoint.timeout, TcpStream::connect(target))
                    .await
                    .map_err(|_| DriverError::Timeout(endpoint.timeout))?
                    .map_err(|e| DriverError::Unreachable(format!("{target}: {e}")))?;
                // Small requests and answers: no Nagle delay.
                let _ = stream.set_nodelay(true);
                state.context = Some(tokio_modbus::client::tcp::attach(stream));
                state.opened += 1;
            }
            state.opened
        };
        Ok(Box::new(ModbusSession {
            link,
            opened,
            unit: Slave(endpoint.unit),
            timeout: endpoint.timeout,
        }))
    }
}

/// A device's use of its address's connection.
pub struct ModbusSession {
    link: Arc<Link>,
    /// Which of the link's connections this session was made on.
    opened: u64,
    unit: Slave,
    timeout: Duration,
}

enum Answer {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// A request with the session's timeout, its outcome sorted into the driver's errors.
async fn timed<T>(
    timeout: Duration,
    request: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, DriverError> {
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(DriverError::Timeout(timeout)),
        Ok(Err(e)) => Err(DriverError::Unreachable(e.to_string())),
        Ok(Ok(Err(code))) => Err(refused(code)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

async fn read_range(
    ctx: &mut Context,
    t: Duration,
    table: Table,
    address: u16,
    count: u16,
) -> Result<Answer, DriverError> {
    match table {
        Table::Coils => timed(t, ctx.read_coils(address, count))
            .await
            .map(Answer::Bits),
        Table::DiscreteInputs => timed(t, ctx.read_discrete_inputs(address, count))
            .await
            .map(Answer::Bits),
        Table::InputRegisters => timed(t, ctx.read_input_registers(address, count))
            .await
            .map(Answer::Registers),
        Table::HoldingRegisters => timed(t, ctx.read_holding_registers(address, count))
            .await
            .map(Answer::Registers),
    }
}

fn refused(code: ExceptionCode) -> DriverError {
    DriverError::Refused(format!("Modbus exception: {code}"))
}

fn decode(location: &Location, answer: &Answer, offset: usize) -> Result<Value, DriverError> {
    match answer {
        Answer::Bits(bits) => bits
            .get(offset)
            .map(|b| Value::Bool(*b))
            .ok_or_else(|| DriverError::Refused("the device answered too few bits".into())),
        Answer::Registers(words) => location.decode_registers(words.get(offset..).unwrap_or(&[])),
    }
}

/// Reads resources in the fewest requests; a refused batch is asked again resource by
/// resource.
async fn read_on(
    ctx: &mut Context,
    t: Duration,
    resources: &[&Resource],
) -> Result<Readings, DriverError> {
    let mut out: Readings = vec![Err(DriverError::Config("not read".into())); resources.len()];
    let mut located = Vec::new();
    let mut indexes = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        match Location::of(r) {
            Ok(l) => {
                located.push(l);
                indexes.push(i);
            }
            Err(e) => out[i] = Err(e),
        }
    }
    let refs: Vec<&Location> = located.iter().collect();
    for batch in plan(&refs) {
        match read_range(ctx, t, batch.table, batch.address, batch.count).await {
            Ok(answer) => {
                for m in &batch.members {
                    let loc = &located[*m];
                    let offset = usize::from(loc.address - batch.address);
                    out[indexes[*m]] = decode(loc, &answer, offset);
                }
            }
            Err(e) if e.is_connection() => return Err(e),
            Err(e) if batch.members.len() == 1 => out[indexes[batch.members[0]]] = Err(e),
            Err(_) => {
                // One member's address may be the one the device refuses: ask for each.
                for m in &batch.members {
                    let loc = &located[*m];
                    out[indexes[*m]] =
                        match read_range(ctx, t, loc.table, loc.address, loc.count).await {
                            Ok(answer) => decode(loc, &answer, 0),
                            Err(e) if e.is_connection() => return Err(e),
                            Err(e) => Err(e),
                        };
                }
            }
        }
    }
    Ok(out)
}

/// Writes a raw value to a resource's location.
async fn write_on(
    ctx: &mut Context,
    t: Duration,
    resource: &Resource,
    raw: Value,
) -> Result<(), DriverError> {
    let location = Location::of(resource)?;
    if !location.table.is_writable() {
        return Err(DriverError::Config(format!(
            "resource {:?} is in {:?}, which cannot be written",
            resource.name, location.table
        )));
    }
    if location.table == Table::Coils {
        let Value::Bool(on) = raw.fitted(crate::value::ValueType::Bool)? else {
            return Err(DriverError::Config("a coil holds a Bool".into()));
        };
        return timed(t, ctx.write_single_coil(location.address, on)).await;
    }
    let mut words = location.encode_registers(raw)?;
    if let (Raw::Bool, Some(bit)) = (location.raw, location.bit) {
        // One bit of a register: read, change the bit, write back.
        let current =
            match read_range(ctx, t, Table::HoldingRegisters, location.address, 1).await? {
                Answer::Registers(w) => w.first().copied().ok_or_else(|| {
                    DriverError::Refused("the device answered no register".into())
                })?,
                Answer::Bits(_) => return Err(DriverError::Refused("bits for a register".into())),
            };
        let on = words.first().is_some_and(|w| *w != 0);
        words = vec![if on {
            current | 1 << bit
        } else {
            current & !(1 << bit)
        }];
    }
    let address = location.address;
    if words.len() == 1 {
        timed(t, ctx.write_single_register(address, words[0])).await
    } else {
        timed(t, ctx.write_multiple_registers(address, &words)).await
    }
}

impl ModbusSession {
    /// The connection this session was made on, addressed to its unit, marked as used
    /// by a request; an error when that connection was closed since.
    fn context<'s>(&self, state: &'s mut LinkState) -> Result<&'s mut Context, DriverError> {
        let gone = || {
            DriverError::Unreachable(format!(
                "{}: the connection was closed by another device's request",
                self.link.target
            ))
        };
        if state.in_flight {
            state.context = None;
            state.in_flight = false;
        }
        if state.opened != self.opened || state.context.is_none() {
            return Err(gone());
        }
        // Cleared by close_after once the answer is in; left set when the turn is
        // cancelled mid-request.
        state.in_flight = true;
        let ctx = state.context.as_mut().ok_or_else(gone)?;
        ctx.set_slave(self.unit);
        Ok(ctx)
    }
}

/// Closes the connection after a connection error: an answer that comes late must never
/// be taken for the next request's.
fn close_after<T>(state: &mut LinkState, outcome: &Result<T, DriverError>) {
    state.in_flight = false;
    if outcome.as_ref().is_err_and(DriverError::is_connection) {
        state.context = None;
    }
}

#[async_trait]
impl Session for ModbusSession {
    async fn read(&mut self, resources: &[&Resource]) -> Result<Readings, DriverError> {
        let mut state = self.link.turn(self.timeout).await?;
        let outcome = match self.context(&mut state) {
            Ok(ctx) => read_on(ctx, self.timeout, resources).await,
            Err(e) => return Err(e),
        };
        close_after(&mut state, &outcome);
        outcome
    }

    async fn write(&mut self, resource: &Resource, raw: Value) -> Result<(), DriverError> {
        let mut state = self.link.turn(self.timeout).await?;
        let outcome = match self.context(&mut state) {
            Ok(ctx) => write_on(ctx, self.timeout, resource, raw).await,
            Err(e) => return Err(e),
        };
        close_after(&mut state, &outcome);
        outcome
    }
}
