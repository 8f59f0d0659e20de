//! EdgeX's values: the types a profile's resources declare, how a device service parses
//! a value written to it, how it formats a reading (what lands in `actualValue`), and a
//! resource's transforms (mask, shift, base, scale, offset) between the device's raw
//! value and the one users see.
//!
//! Written by hand: no crate speaks EdgeX's value conventions, and they are what keeps
//! `actualValue` byte-compatible with what yurt-iot-dock reported.

use std::fmt;

use yurt_api::iot::v1alpha1::ResourceProperties;

#[cfg(test)]
mod tests;

/// Why a value or a resource's properties cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// The resource's value type is not one EdgeX defines.
    #[error("unknown value type {0:?}")]
    UnknownType(String),
    /// An EdgeX type no driver here reads or writes (arrays, binaries, objects).
    #[error("value type {0} is not supported by this agent")]
    UnsupportedType(String),
    /// The text is not a value of the type.
    #[error("{text:?} is not a {value_type} value")]
    Parse {
        /// The text given.
        text: String,
        /// The type it should have been.
        value_type: ValueType,
    },
    /// The value is outside what the type holds.
    #[error("{value} does not fit in {value_type}")]
    Overflow {
        /// The value, as text.
        value: String,
        /// The type it should have fitted.
        value_type: ValueType,
    },
    /// The value is outside the resource's minimum and maximum.
    #[error("{value} is outside the resource's range [{minimum}, {maximum}]")]
    OutOfRange {
        /// The value, as text.
        value: String,
        /// The resource's minimum (or `-inf`).
        minimum: String,
        /// The resource's maximum (or `inf`).
        maximum: String,
    },
    /// A transform in the resource's properties is not a number.
    #[error("property {property}: {text:?} is not a number")]
    Property {
        /// The property (`scale`, `mask`, ...).
        property: &'static str,
        /// Its text.
        text: String,
    },
}

/// The scalar value types of EdgeX that the agent's drivers read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `Bool`.
    Bool,
    /// `String`.
    String,
    /// `Int8`.
    Int8,
    /// `Int16`.
    Int16,
    /// `Int32`.
    Int32,
    /// `Int64`.
    Int64,
    /// `Uint8`.
    Uint8,
    /// `Uint16`.
    Uint16,
    /// `Uint32`.
    Uint32,
    /// `Uint64`.
    Uint64,
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
}

const SCALAR_TYPES: [ValueType; 12] = [
    ValueType::Bool,
    ValueType::String,
    ValueType::Int8,
    ValueType::Int16,
    ValueType::Int32,
    ValueType::Int64,
    ValueType::Uint8,
    ValueType::Uint16,
    ValueType::Uint32,
    ValueType::Uint64,
    ValueType::Float32,
    ValueType::Float64,
];

impl ValueType {
    /// The type a profile names, in any case (EdgeX normalises the case).
    pub fn parse(name: &str) -> Result<Self, ValueError> {
        if let Some(t) = SCALAR_TYPES
            .iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
        {
            return Ok(*t);
        }
        match yurt_api::iot::VALUE_TYPES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(name))
        {
            Some(t) => Err(ValueError::UnsupportedType((*t).to_owned())),
            None => Err(ValueError::UnknownType(name.to_owned())),
        }
    }

    /// EdgeX's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "Bool",
            Self::String => "String",
            Self::Int8 => "Int8",
            Self::Int16 => "Int16",
            Self::Int32 => "Int32",
            Self::Int64 => "Int64",
            Self::Uint8 => "Uint8",
            Self::Uint16 => "Uint16",
            Self::Uint32 => "Uint32",
            Self::Uint64 => "Uint64",
            Self::Float32 => "Float32",
            Self::Float64 => "Float64",
        }
    }

    /// Bits and signedness of an integer type.
    pub fn integer(self) -> Option<(u32, bool)> {
        Some(match self {
            Self::Int8 => (8, true),
            Self::Int16 => (16, true),
            Self::Int32 => (32, true),
            Self::Int64 => (64, true),
            Self::Uint8 => (8, false),
            Self::Uint16 => (16, false),
            Self::Uint32 => (32, false),
            Self::Uint64 => (64, false),
            _ => return None,
        })
    }

    /// Whether the type is a number (transforms and ranges apply).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::String)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed integer of any width.
    Int(i64),
    /// An unsigned integer of any width.
    Uint(u64),
    /// A float of either width.
    Float(f64),
    /// A string.
    String(String),
}

/// For messages: floats in their shortest form (`500`, `25.3`), unlike readings.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Uint(n) => write!(f, "{n}"),
            Self::Float(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// A boolean as Go's `ParseBool` reads it.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `fmt.Sprintf("%e", v)`, as EdgeX formats a float reading: six decimals and an
/// exponent of at least two digits with its sign (`2.530000e+01`).
fn format_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    // A Float32 is held widened to f64, which is the same number: its six decimals are
    // the same as Go's for the float32.
    let text = format!("{value:.6e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text,
    }
}

impl Value {
    /// A value written to a resource of `value_type`, parsed as EdgeX's device SDK parses
    /// a command's parameter: Go's booleans, base-10 integers with the type's bits,
    /// floats of the type's width.
    pub fn parse(text: &str, value_type: ValueType) -> Result<Self, ValueError> {
        let wrong = || ValueError::Parse {
            text: text.to_owned(),
            value_type,
        };
        Ok(match value_type {
            ValueType::Bool => Self::Bool(parse_go_bool(text).ok_or_else(wrong)?),
            ValueType::String => Self::String(text.to_owned()),
            ValueType::Float32 | ValueType::Float64 => {
                let n: f64 = text.parse().map_err(|_| wrong())?;
                if !n.is_finite() {
                    return Err(wrong());
                }
                Self::Float(n).fitted(value_type)?
            }
            integer => {
                let (_, signed) = integer.integer().ok_or_else(wrong)?;
                if signed {
                    Self::Int(text.parse().map_err(|_| wrong())?).fitted(integer)?
                } else {
                    let digits = text.strip_prefix('+').unwrap_or(text);
                    Self::Uint(digits.parse().map_err(|_| wrong())?).fitted(integer)?
                }
            }
        })
    }

    /// The value as EdgeX formats a reading's `value`: `true`/`false`, decimal integers,
    /// floats as Go's `%e` (`2.530000e+01`).
    pub fn to_reading(&self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Int(n) => n.to_string(),
            Self::Uint(n) => n.to_string(),
            Self::Float(n) => format_float(*n),
            Self::String(s) => s.clone(),
        }
    }

    /// The value as a float, for numbers and booleans.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Bool(b) => Some(f64::from(u8::from(*b))),
            Self::Int(n) => Some(*n as f64),
            Self::Uint(n) => Some(*n as f64),
            Self::Float(n) => Some(*n),
            Self::String(_) => None,
        }
    }

    /// A number converted to `value_type` (rounding a float to the nearest integer for an
    /// integer type), refused when it does not fit.
    pub fn fitted(self, value_type: ValueType) -> Result<Self, ValueError> {
        let overflow = |v: &Value| ValueError::Overflow {
            value: v.to_string(),
            value_type,
        };
        match (value_type, &self) {
            (ValueType::Bool, Self::Bool(_)) | (ValueType::String, Self::String(_)) => Ok(self),
            (ValueType::Bool, _) => Ok(Self::Bool(self.as_f64().is_some_and(|n| n != 0.0))),
            (ValueType::String, _) => Ok(Self::String(self.to_reading())),
            (ValueType::Float32, _) => {
                let n = self.as_f64().ok_or_else(|| overflow(&self))?;
                if n.is_finite() && n.abs() > f64::from(f32::MAX) {
                    return Err(overflow(&self));
                }
                Ok(Self::Float(f64::from(n as f32)))
            }
            (ValueType::Float64, _) => {
                Ok(Self::Float(self.as_f64().ok_or_else(|| overflow(&self))?))
            }
            (integer, _) => {
                let Some((bits, signed)) = integer.integer() else {
                    return Err(overflow(&self));
                };
                let wide: i128 = match &self {
                    Self::Int(n) => i128::from(*n),
                    Self::Uint(n) => i128::from(*n),
                    Self::Bool(b) => i128::from(*b),
                    Self::Float(f) if f.is_finite() => {
                        let r = f.round();
                        // Beyond i128 is beyond every type here.
                        if r.abs() > 1e38 {
                            return Err(overflow(&self));
                        }
                        r as i128
                    }
                    _ => return Err(overflow(&self)),
                };
                let (low, high) = if signed {
                    (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
                } else {
                    (0, (1i128 << bits) - 1)
                };
                if wide < low || wide > high {
                    return Err(overflow(&self));
                }
                Ok(if signed {
                    Self::Int(wide as i64)
                } else {
                    Self::Uint(wide as u64)
                })
            }
        }
    }

    /// Whether two values of `value_type` are the same reading: equal, or for floats
    /// equal to the type's precision (a value written through a scale reads back with
    /// rounding in its last digits).
    pub fn same_as(&self, other: &Self, value_type: ValueType) -> bool {
        match (self, other) {
            (Self::Float(a), Self::Float(b)) => {
                let tolerance = if value_type == ValueType::Float32 {
                    1e-6
                } else {
                    1e-12
                };
                a == b || (a - b).abs() <= tolerance * a.abs().max(b.abs())
            }
            _ => self == other,
        }
    }
}

/// A resource's minimum and maximum, from its properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Range {
    /// The minimum, when given.
    pub minimum: Option<f64>,
    /// The maximum, when given.
    pub maximum: Option<f64>,
}

impl Range {
    /// Checks a value written to the resource (numbers only).
    pub fn check(&self, value: &Value, value_type: ValueType) -> Result<(), ValueError> {
        let Some(n) = value.as_f64().filter(|_| value_type.is_numeric()) else {
            return Ok(());
        };
        if self.minimum.is_some_and(|m| n < m) || self.maximum.is_some_and(|m| n > m) {
            let show = |b: Option<f64>, none: &str| b.map_or(none.to_owned(), |b| b.to_string());
            return Err(ValueError::OutOfRange {
                value: value.to_string(),
                minimum: show(self.minimum, "-inf"),
                maximum: show(self.maximum, "inf"),
            });
        }
        Ok(())
    }
}

/// A resource's transforms between the device's raw value and the reading, as EdgeX's
/// device SDK applies them: on read mask, shift, base, scale then offset; on write the
/// inverse of offset, scale and base. EdgeX's defaults (mask 0, shift 0, base 0, scale 1,
/// offset 0) mean "none".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transform {
    /// Bits kept of an unsigned raw value.
    pub mask: Option<u64>,
    /// Bits to shift an unsigned raw value by: left when positive, right when negative.
    pub shift: Option<i64>,
    /// The reading is `base ^ raw`.
    pub base: Option<f64>,
    /// The reading is multiplied by it.
    pub scale: Option<f64>,
    /// Added to the reading.
    pub offset: Option<f64>,
}

fn given(text: Option<&String>) -> Option<&str> {
    text.map(String::as_str).filter(|t| !t.trim().is_empty())
}

fn property_number(
    property: &'static str,
    text: Option<&String>,
) -> Result<Option<f64>, ValueError> {
    given(text)
        .map(|t| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| ValueError::Property {
                    property,
                    text: t.to_owned(),
                })
        })
        .transpose()
}

impl Transform {
    /// The transforms and range of a resource's properties.
    pub fn from_properties(p: &ResourceProperties) -> Result<(Self, Range), ValueError> {
        let mask = given(p.mask.as_ref())
            .map(|t| {
                t.trim().parse::<u64>().map_err(|_| ValueError::Property {
                    property: "mask",
                    text: t.to_owned(),
                })
            })
            .transpose()?
            .filter(|m| *m != 0);
        let shift = given(p.shift.as_ref())
            .map(|t| {
                t.trim().parse::<i64>().map_err(|_| ValueError::Property {
                    property: "shift",
                    text: t.to_owned(),
                })
            })
            .transpose()?
            .filter(|s| *s != 0);
        let transform = Self {
            mask,
            shift,
            base: property_number("base", p.base.as_ref())?.filter(|b| *b != 0.0),
            scale: property_number("scale", p.scale.as_ref())?.filter(|s| *s != 1.0 && *s != 0.0),
            offset: property_number("offset", p.offset.as_ref())?.filter(|o| *o != 0.0),
        };
        let range = Range {
            minimum: property_number("minimum", p.minimum.as_ref())?,
            maximum: property_number("maximum", p.maximum.as_ref())?,
        };
        Ok((transform, range))
    }

    /// Whether the transform changes nothing.
    pub fn is_identity(&self) -> bool {
        *self == Self::default()
    }

    /// The reading of a raw value (numbers only; others pass through).
    pub fn read(&self, raw: Value, value_type: ValueType) -> Result<Value, ValueError> {
        if !value_type.is_numeric() || self.is_identity() {
            return Ok(raw);
        }
        let mut value = raw;
        if let Value::Uint(mut n) = value {
            if let Some(mask) = self.mask {
                n &= mask;
            }
            if let Some(shift) = self.shift {
                let by = u32::try_from(shift.unsigned_abs()).unwrap_or(u32::MAX);
                n = if shift > 0 {
                    // Bits shifted out are an overflow, as in the SDK's float check.
                    match n.checked_shl(by).filter(|m| m.checked_shr(by) == Some(n)) {
                        Some(m) => m,
                        None => {
                            return Err(ValueError::Overflow {
                                value: format!("{n} << {by}"),
                                value_type,
                            });
                        }
                    }
                } else {
                    n.checked_shr(by).unwrap_or(0)
                };
            }
            value = Value::Uint(n);
        }
        if self.base.is_none() && self.scale.is_none() && self.offset.is_none() {
            return value.fitted(value_type);
        }
        let mut n = value.as_f64().unwrap_or_default();
        if let Some(base) = self.base {
            n = base.powf(n);
        }
        if let Some(scale) = self.scale {
            n *= scale;
        }
        if let Some(offset) = self.offset {
            n += offset;
        }
        if !n.is_finite() {
            return Err(ValueError::Overflow {
                value: n.to_string(),
                value_type,
            });
        }
        Value::Float(n).fitted(value_type)
    }

    /// The raw value to write for a value (numbers only; others pass through). The result
    /// is a float when a transform applied: the driver fits it to the register's type.
    pub fn write(&self, value: Value, value_type: ValueType) -> Result<Value, ValueError> {
        if !value_type.is_numeric()
            || (self.base.is_none() && self.scale.is_none() && self.offset.is_none())
        {
            return Ok(value);
        }
        let mut n = value.as_f64().unwrap_or_default();
        if let Some(offset) = self.offset {
            n -= offset;
        }
        if let Some(scale) = self.scale {
            n /= scale;
        }
        if let Some(base) = self.base {
            n = n.ln() / base.ln();
        }
        if !n.is_finite() {
            return Err(ValueError::Overflow {
                value: n.to_string(),
                value_type,
            });
        }
        Ok(Value::Float(n))
    }
}
