//! Where a resource lives in a Modbus device and how its value is laid out, in EdgeX's
//! device-modbus vocabulary: `primaryTable`, `startingAddress` (the zero-based address
//! on the wire; `register.bit` for one bit of a register, as device-modbus 4 reads it),
//! `rawType`, `stringRegisterSize`, `isByteSwap` and `isWordSwap`; and how the reads of
//! many resources are batched into few requests.

use crate::driver::{DriverError, Resource};
use crate::value::{Value, ValueType, parse_go_bool};
use yurt_api::iot::edgex::modbus_starting_address;

/// The most registers one read may ask for (the Modbus limit).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// The most registers one write may carry (the Modbus limit), so a String's size.
pub const MAX_REGISTERS_PER_WRITE: u16 = 123;
/// The most coils or inputs one read may ask for (the Modbus limit).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read-write bits.
    Coils,
    /// Read-only bits.
    DiscreteInputs,
    /// Read-only registers.
    InputRegisters,
    /// Read-write registers.
    HoldingRegisters,
}

impl Table {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_uppercase().as_str() {
            "COILS" | "COIL" => Self::Coils,
            "DISCRETES_INPUT" | "DISCRETE_INPUTS" | "DISCRETE_INPUT" | "DISCRETES_INPUTS" => {
                Self::DiscreteInputs
            }
            "INPUT_REGISTERS" | "INPUT_REGISTER" => Self::InputRegisters,
            "HOLDING_REGISTERS" | "HOLDING_REGISTER" => Self::HoldingRegisters,
            _ => return None,
        })
    }

    /// Whether the table holds bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coils | Self::DiscreteInputs)
    }

    /// Whether the table may be written.
    pub fn is_writable(self) -> bool {
        matches!(self, Self::Coils | Self::HoldingRegisters)
    }

    fn limit(self) -> u16 {
        if self.is_bits() {
            MAX_BITS_PER_READ
        } else {
            MAX_REGISTERS_PER_READ
        }
    }
}

/// How a value is held in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// One coil or input; or one bit of a register; or a whole register, non-zero
    /// meaning true.
    Bool,
    /// One register, signed.
    Int16,
    /// One register.
    Uint16,
    /// Two registers, signed.
    Int32,
    /// Two registers.
    Uint32,
    /// Four registers, signed.
    Int64,
    /// Four registers.
    Uint64,
    /// Two registers, IEEE 754.
    Float32,
    /// Four registers, IEEE 754.
    Float64,
    /// Two characters per register, NUL-padded.
    String,
}

impl Raw {
    fn registers(self) -> u16 {
        match self {
            Self::Bool | Self::Int16 | Self::Uint16 => 1,
            Self::Int32 | Self::Uint32 | Self::Float32 => 2,
            Self::Int64 | Self::Uint64 | Self::Float64 => 4,
            Self::String => 0,
        }
    }

    /// The value type a raw value of this kind has before the resource's transforms.
    fn value_type(self) -> ValueType {
        match self {
            Self::Bool => ValueType::Bool,
            Self::Int16 => ValueType::Int16,
            Self::Uint16 => ValueType::Uint16,
            Self::Int32 => ValueType::Int32,
            Self::Uint32 => ValueType::Uint32,
            Self::Int64 => ValueType::Int64,
            Self::Uint64 => ValueType::Uint64,
            Self::Float32 => ValueType::Float32,
            Self::Float64 => ValueType::Float64,
            Self::String => ValueType::String,
        }
    }
}

/// A resource's place and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Its table.
    pub table: Table,
    /// Its first register or bit.
    pub address: u16,
    /// The bit of a register holding a Bool.
    pub bit: Option<u8>,
    /// How many registers or bits it spans.
    pub count: u16,
    /// How the value is held.
    pub raw: Raw,
    /// Bytes swapped within each register (32-bit values only, as device-modbus).
    pub byte_swap: bool,
    /// Registers swapped (32-bit values only, as device-modbus).
    pub word_swap: bool,
}

fn config(resource: &Resource, what: String) -> DriverError {
    DriverError::Config(format!("resource {:?}: {what}", resource.name))
}

impl Location {
    /// Where `resource` lives, from its attributes.
    pub fn of(resource: &Resource) -> Result<Self, DriverError> {
        let table_text = resource
            .attribute("primaryTable")
            .ok_or_else(|| config(resource, "attribute primaryTable is required".into()))?;
        let table = Table::parse(table_text).ok_or_else(|| {
            config(
                resource,
                format!(
                    "primaryTable {table_text:?} is not COILS, DISCRETES_INPUT, INPUT_REGISTERS or HOLDING_REGISTERS"
                ),
            )
        })?;
        let address_text = resource
            .attribute("startingAddress")
            .ok_or_else(|| config(resource, "attribute startingAddress is required".into()))?;
        let (address, bit) = modbus_starting_address(address_text).ok_or_else(|| {
            config(
                resource,
                format!(
                    "startingAddress {address_text:?} is not a register (0-65535) or register.bit"
                ),
            )
        })?;
        let raw_type = resource.attribute("rawType");
        let raw = match (
            resource.value_type,
            raw_type.map(str::to_ascii_uppercase).as_deref(),
        ) {
            (t, Some("INT16")) if t.is_numeric() => Raw::Int16,
            (t, Some("UINT16")) if t.is_numeric() => Raw::Uint16,
            (t, Some("INT32")) if t.is_numeric() => Raw::Int32,
            (_, Some(other)) => {
                return Err(config(
                    resource,
                    format!(
                        "rawType {other:?} does not apply to a {} (INT16, UINT16 or INT32 for numbers)",
                        resource.value_type
                    ),
                ));
            }
            (ValueType::Bool, None) => Raw::Bool,
            (ValueType::Int8 | ValueType::Int16, None) => Raw::Int16,
            (ValueType::Uint8 | ValueType::Uint16, None) => Raw::Uint16,
            (ValueType::Int32, None) => Raw::Int32,
            (ValueType::Uint32, None) => Raw::Uint32,
            (ValueType::Int64, None) => Raw::Int64,
            (ValueType::Uint64, None) => Raw::Uint64,
            (ValueType::Float32, None) => Raw::Float32,
            (ValueType::Float64, None) => Raw::Float64,
            (ValueType::String, None) => Raw::String,
        };
        if table.is_bits() && raw != Raw::Bool {
            return Err(config(
                resource,
                format!("{table_text} holds bits: the resource must be a Bool"),
            ));
        }
        if bit.is_some() && (raw != Raw::Bool || table.is_bits()) {
            return Err(config(
                resource,
                "a register.bit address is for a Bool in a register table".into(),
            ));
        }
        let count = if table.is_bits() {
            1
        } else if raw == Raw::String {
            resource
                .attribute("stringRegisterSize")
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|s| (1..=MAX_REGISTERS_PER_WRITE).contains(s))
                .ok_or_else(|| {
                    config(
                        resource,
                        "a String needs attribute stringRegisterSize, 1 to 123 registers".into(),
                    )
                })?
        } else {
            raw.registers()
        };
        if u32::from(address) + u32::from(count) > 65536 {
            return Err(config(
                resource,
                format!("{count} registers from {address} pass 65535"),
            ));
        }
        let swap = |name: &str| -> Result<bool, DriverError> {
            match resource.attribute(name) {
                None => Ok(false),
                Some(v) => parse_go_bool(v.trim())
                    .ok_or_else(|| config(resource, format!("{name} {v:?} is not true or false"))),
            }
        };
        Ok(Self {
            table,
            address,
            bit,
            count,
            raw,
            byte_swap: swap("isByteSwap")?,
            word_swap: swap("isWordSwap")?,
        })
    }

    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }

    fn swaps(&self) -> bool {
        matches!(self.raw, Raw::Int32 | Raw::Uint32 | Raw::Float32)
    }

    /// The value of this resource in registers read from its address.
    pub fn decode_registers(&self, words: &[u16]) -> Result<Value, DriverError> {
        let words = words.get(..usize::from(self.count)).ok_or_else(|| {
            DriverError::Refused(format!(
                "the device answered {} registers where {} were asked",
                words.len(),
                self.count
            ))
        })?;
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        if self.swaps() {
            if self.byte_swap {
                for pair in bytes.chunks_exact_mut(2) {
                    pair.swap(0, 1);
                }
            }
            if self.word_swap {
                let (high, low) = bytes.split_at_mut(2);
                high.swap_with_slice(&mut low[..2]);
            }
        }
        let array = |n: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            out[..n].copy_from_slice(&bytes[..n]);
            out
        };
        Ok(match self.raw {
            Raw::Bool => match self.bit {
                Some(bit) => Value::Bool(words[0] >> bit & 1 == 1),
                None => Value::Bool(words[0] != 0),
            },
            Raw::Int16 => Value::Int(i64::from(words[0] as i16)),
            Raw::Uint16 => Value::Uint(u64::from(words[0])),
            Raw::Int32 => {
                let a = array(4);
                Value::Int(i64::from(i32::from_be_bytes([a[0], a[1], a[2], a[3]])))
            }
            Raw::Uint32 => {
                let a = array(4);
                Value::Uint(u64::from(u32::from_be_bytes([a[0], a[1], a[2], a[3]])))
            }
            Raw::Float32 => {
                let a = array(4);
                Value::Float(f64::from(f32::from_be_bytes([a[0], a[1], a[2], a[3]])))
            }
            Raw::Int64 => Value::Int(i64::from_be_bytes(array(8))),
            Raw::Uint64 => Value::Uint(u64::from_be_bytes(array(8))),
            Raw::Float64 => Value::Float(f64::from_be_bytes(array(8))),
            Raw::String => {
                let text: Vec<u8> = bytes
                    .iter()
                    .copied()
                    .skip_while(|b| *b == 0)
                    .collect::<Vec<_>>();
                let end = text.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                Value::String(String::from_utf8_lossy(&text[..end]).into_owned())
            }
        })
    }

    /// The registers that hold `raw` (for a register bit, the bit's value only: the
    /// caller merges it into the register).
    pub fn encode_registers(&self, raw: Value) -> Result<Vec<u16>, DriverError> {
        let value = raw.fitted(self.raw.value_type())?;
        let mut bytes = match (&self.raw, value) {
            (Raw::Bool, Value::Bool(b)) => vec![0, u8::from(b)],
            (Raw::Int16, Value::Int(n)) => (n as i16).to_be_bytes().to_vec(),
            (Raw::Uint16, Value::Uint(n)) => (n as u16).to_be_bytes().to_vec(),
            (Raw::Int32, Value::Int(n)) => (n as i32).to_be_bytes().to_vec(),
            (Raw::Uint32, Value::Uint(n)) => (n as u32).to_be_bytes().to_vec(),
            (Raw::Int64, Value::Int(n)) => n.to_be_bytes().to_vec(),
            (Raw::Uint64, Value::Uint(n)) => n.to_be_bytes().to_vec(),
            (Raw::Float32, Value::Float(f)) => (f as f32).to_be_bytes().to_vec(),
            (Raw::Float64, Value::Float(f)) => f.to_be_bytes().to_vec(),
            (Raw::String, Value::String(s)) => {
                let size = usize::from(self.count) * 2;
                if s.len() > size {
                    return Err(DriverError::Config(format!(
                        "{:?} is longer than the {size} characters of its registers",
                        s
                    )));
                }
                let mut b = s.into_bytes();
                b.resize(size, 0);
                b
            }
            (raw, value) => {
                return Err(DriverError::Config(format!(
                    "{value:?} cannot be held as {raw:?}"
                )));
            }
        };
        if self.swaps() {
            if self.word_swap {
                let (high, low) = bytes.split_at_mut(2);
                high.swap_with_slice(&mut low[..2]);
            }
            if self.byte_swap {
                for pair in bytes.chunks_exact_mut(2) {
                    pair.swap(0, 1);
                }
            }
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect())
    }
}

/// One read request and the resources it serves (indexes into the caller's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The table read.
    pub table: Table,
    /// The first register or bit.
    pub address: u16,
    /// How many registers or bits.
    pub count: u16,
    /// The resources served, by index.
    pub members: Vec<usize>,
}

/// The fewest requests that read every location: per table, locations that touch or
/// overlap are read together, up to the protocol's limit per request.
pub fn plan(locations: &[&Location]) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..locations.len()).collect();
    order.sort_by_key(|i| {
        (
            locations[*i].table,
            locations[*i].address,
            locations[*i].count,
        )
    });
    let mut batches: Vec<Batch> = Vec::new();
    for i in order {
        let loc = locations[i];
        if let Some(last) = batches.last_mut() {
            let last_end = u32::from(last.address) + u32::from(last.count);
            let end = loc.end().max(last_end);
            if last.table == loc.table
                && u32::from(loc.address) <= last_end
                && end - u32::from(last.address) <= u32::from(loc.table.limit())
            {
                last.count = (end - u32::from(last.address)) as u16;
                last.members.push(i);
                continue;
            }
        }
        batches.push(Batch {
            table: loc.table,
            address: loc.address,
            count: loc.count,
            members: vec![i],
        });
    }
    batches
}
