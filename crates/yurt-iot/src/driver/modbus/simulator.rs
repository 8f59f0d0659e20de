//! An in-process Modbus TCP device: the four tables in memory, for tests and for `yurt
//! bench iot`. It answers every unit id; an address beyond its size is refused with an
//! IllegalDataAddress exception, as a real device with a smaller map does; it can be
//! made to stop answering (a hung device) or be stopped (a device that went away). It
//! counts the connections it accepted and the requests each unit id was sent.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// The simulated device's tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// Coils.
    pub coils: Vec<bool>,
    /// Discrete inputs.
    pub discrete_inputs: Vec<bool>,
    /// Input registers.
    pub input_registers: Vec<u16>,
    /// Holding registers.
    pub holding_registers: Vec<u16>,
}

impl Memory {
    /// Tables of `size` entries each, all zero.
    pub fn with_size(size: usize) -> Self {
        Self {
            coils: vec![false; size],
            discrete_inputs: vec![false; size],
            input_registers: vec![0; size],
            holding_registers: vec![0; size],
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    memory: Mutex<Memory>,
    requests: AtomicU64,
    requests_by_unit: Mutex<std::collections::BTreeMap<u8, u64>>,
    connections: AtomicU64,
    hung: AtomicBool,
}

impl Shared {
    fn memory(&self) -> MutexGuard<'_, Memory> {
        // The tables are plain values: a panic elsewhere leaves them usable.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn range<T>(
    table: &[T],
    address: u16,
    count: usize,
) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = usize::from(address);
    let end = start + count;
    if count == 0 || end > table.len() {
        Err(ExceptionCode::IllegalDataAddress)
    } else {
        Ok(start..end)
    }
}

fn answer(shared: &Shared, request: Request<'static>) -> Result<Response, ExceptionCode> {
    let mut m = shared.memory();
    Ok(match request {
        Request::ReadCoils(a, n) => {
            Response::ReadCoils(m.coils[range(&m.coils, a, n.into())?].to_vec())
        }
        Request::ReadDiscreteInputs(a, n) => Response::ReadDiscreteInputs(
            m.discrete_inputs[range(&m.discrete_inputs, a, n.into())?].to_vec(),
        ),
        Request::ReadInputRegisters(a, n) => Response::ReadInputRegisters(
            m.input_registers[range(&m.input_registers, a, n.into())?].to_vec(),
        ),
        Request::ReadHoldingRegisters(a, n) => Response::ReadHoldingRegisters(
            m.holding_registers[range(&m.holding_registers, a, n.into())?].to_vec(),
        ),
        Request::WriteSingleCoil(a, v) => {
            let r = range(&m.coils, a, 1)?;
            m.coils[r].fill(v);
            Response::WriteSingleCoil(a, v)
        }
        Request::WriteMultipleCoils(a, values) => {
            let r = range(&m.coils, a, values.len())?;
            m.coils[r].copy_from_slice(&values);
            Response::WriteMultipleCoils(a, values.len() as u16)
        }
        Request::WriteSingleRegister(a, v) => {
            let r = range(&m.holding_registers, a, 1)?;
            m.holding_registers[r].fill(v);
            Response::WriteSingleRegister(a, v)
        }
        Request::WriteMultipleRegisters(a, values) => {
            let r = range(&m.holding_registers, a, values.len())?;
            m.holding_registers[r].copy_from_slice(&values);
            Response::WriteMultipleRegisters(a, values.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    })
}

#[derive(Clone)]
struct Device(Arc<Shared>);

type Answer = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, request: Self::Request) -> Self::Future {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .0
            .requests_by_unit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(request.slave)
            .or_default() += 1;
        let request = request.request;
        if self.0.hung.load(Ordering::Relaxed) {
            return Box::pin(std::future::pending());
        }
        Box::pin(std::future::ready(answer(&self.0, request)))
    }
}

/// A running simulated device.
pub struct Simulator {
    shared: Arc<Shared>,
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Simulator {
    /// A device with `memory`, listening on `bind` (port 0 for any).
    pub async fn start(bind: SocketAddr, memory: Memory) -> io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            memory: Mutex::new(memory),
            ..Shared::default()
        });
        let device = Device(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, peer| {
                let device = device.clone();
                device.0.connections.fetch_add(1, Ordering::Relaxed);
                async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(device.clone()))) }
            };
            if let Err(e) = server
                .serve(
                    &on_connected,
                    |e| tracing::debug!(error = %e, "simulated Modbus connection ended"),
                )
                .await
            {
                tracing::warn!(error = %e, "the simulated Modbus device stopped listening");
            }
        });
        Ok(Self {
            shared,
            address,
            task,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests answered or swallowed so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests sent to unit id `unit` so far.
    pub fn requests_for(&self, unit: u8) -> u64 {
        let by_unit = self
            .shared
            .requests_by_unit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_unit.get(&unit).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Reads or changes the tables (as the process behind the device would).
    pub fn with_memory<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.shared.memory())
    }

    /// Stops answering (requests are taken and never answered) or answers again.
    pub fn set_hung(&self, hung: bool) {
        self.shared.hung.store(hung, Ordering::Relaxed);
    }

    /// Stops listening and drops every connection; returns once the port is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        // Aborted is the expected outcome; the listener is dropped either way.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
