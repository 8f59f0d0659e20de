use proptest::prelude::*;
use yurt_api::iot::v1alpha1::ResourceProperties;

use super::*;

#[test]
fn types_are_read_in_any_case_and_unsupported_ones_are_named() {
    assert_eq!(ValueType::parse("float32"), Ok(ValueType::Float32));
    assert_eq!(ValueType::parse("UINT16"), Ok(ValueType::Uint16));
    assert_eq!(
        ValueType::parse("Int16Array"),
        Err(ValueError::UnsupportedType("Int16Array".into()))
    );
    assert_eq!(
        ValueType::parse("Decimal"),
        Err(ValueError::UnknownType("Decimal".into()))
    );
}

#[test]
fn written_values_parse_as_the_device_sdk_parses_them() {
    assert_eq!(Value::parse("T", ValueType::Bool), Ok(Value::Bool(true)));
    assert!(Value::parse("yes", ValueType::Bool).is_err());
    assert_eq!(Value::parse("-128", ValueType::Int8), Ok(Value::Int(-128)));
    assert!(matches!(
        Value::parse("128", ValueType::Int8),
        Err(ValueError::Overflow { .. })
    ));
    assert_eq!(
        Value::parse("+65535", ValueType::Uint16),
        Ok(Value::Uint(65535))
    );
    assert!(Value::parse("-1", ValueType::Uint16).is_err());
    // Base 10 only, no decimals, no spaces.
    assert!(Value::parse("0x10", ValueType::Int32).is_err());
    assert!(Value::parse("1.0", ValueType::Int32).is_err());
    assert!(Value::parse(" 1", ValueType::Int32).is_err());
    assert_eq!(
        Value::parse("25.5", ValueType::Float32),
        Ok(Value::Float(25.5))
    );
    assert!(matches!(
        Value::parse("1e39", ValueType::Float32),
        Err(ValueError::Overflow { .. })
    ));
    assert!(Value::parse("NaN", ValueType::Float64).is_err());
    assert_eq!(
        Value::parse("any text", ValueType::String),
        Ok(Value::String("any text".into()))
    );
}

#[test]
fn readings_are_formatted_as_edgex_formats_them() {
    assert_eq!(Value::Bool(false).to_reading(), "false");
    assert_eq!(Value::Int(-7).to_reading(), "-7");
    assert_eq!(Value::Uint(7).to_reading(), "7");
    // Go's %e, as go-mod-core-contracts formats float readings.
    assert_eq!(Value::Float(12.345).to_reading(), "1.234500e+01");
    assert_eq!(Value::Float(0.1).to_reading(), "1.000000e-01");
    assert_eq!(Value::Float(0.0).to_reading(), "0.000000e+00");
    assert_eq!(Value::Float(1.5e300).to_reading(), "1.500000e+300");
    assert_eq!(Value::Float(f64::INFINITY).to_reading(), "+Inf");
    let widened = f64::from(16_777_217f32);
    assert_eq!(Value::Float(widened).to_reading(), "1.677722e+07");
}

fn properties(pairs: &[(&str, &str)]) -> ResourceProperties {
    let mut p = ResourceProperties::default();
    for (k, v) in pairs {
        let v = Some((*v).to_owned());
        match *k {
            "mask" => p.mask = v,
            "shift" => p.shift = v,
            "base" => p.base = v,
            "scale" => p.scale = v,
            "offset" => p.offset = v,
            "minimum" => p.minimum = v,
            "maximum" => p.maximum = v,
            other => panic!("no property {other}"),
        }
    }
    p
}

#[test]
fn edgex_defaults_mean_no_transform() {
    let (t, range) = Transform::from_properties(&properties(&[
        ("mask", "0"),
        ("shift", "0"),
        ("base", "0"),
        ("scale", "1.0"),
        ("offset", "0.0"),
    ]))
    .expect("defaults parse");
    assert!(t.is_identity());
    assert_eq!(range, Range::default());
}

#[test]
fn transforms_apply_in_the_sdks_order_and_invert_on_write() {
    let (t, _) = Transform::from_properties(&properties(&[("scale", "0.1"), ("offset", "-40")]))
        .expect("parses");
    // A temperature register: raw 653 is 25.3 degrees.
    let read = t.read(Value::Int(653), ValueType::Float32).expect("reads");
    assert!(
        read.same_as(&Value::Float(25.3), ValueType::Float32),
        "{read:?}"
    );
    let raw = t
        .write(Value::Float(25.3), ValueType::Float32)
        .expect("writes");
    // The driver rounds to the register's integer (EdgeX truncates, to 652).
    assert_eq!(raw.fitted(ValueType::Int16), Ok(Value::Int(653)));

    let (t, _) = Transform::from_properties(&properties(&[("mask", "240"), ("shift", "-4")]))
        .expect("parses");
    assert_eq!(
        t.read(Value::Uint(0xAB), ValueType::Uint16),
        Ok(Value::Uint(0xA))
    );
    let (t, _) = Transform::from_properties(&properties(&[("shift", "2")])).expect("parses");
    assert_eq!(
        t.read(Value::Uint(3), ValueType::Uint8),
        Ok(Value::Uint(12))
    );
    assert!(matches!(
        t.read(Value::Uint(0x80), ValueType::Uint8),
        Err(ValueError::Overflow { .. })
    ));

    let (t, _) = Transform::from_properties(&properties(&[("base", "10")])).expect("parses");
    assert_eq!(
        t.read(Value::Uint(3), ValueType::Float64),
        Ok(Value::Float(1000.0))
    );
    let raw = t
        .write(Value::Float(1000.0), ValueType::Float64)
        .expect("writes");
    assert!(
        raw.same_as(&Value::Float(3.0), ValueType::Float64),
        "{raw:?}"
    );
}

#[test]
fn bad_properties_and_ranges_are_named() {
    assert_eq!(
        Transform::from_properties(&properties(&[("scale", "ten")])),
        Err(ValueError::Property {
            property: "scale",
            text: "ten".into()
        })
    );
    assert!(Transform::from_properties(&properties(&[("mask", "0xff")])).is_err());
    let (_, range) =
        Transform::from_properties(&properties(&[("minimum", "0"), ("maximum", "100")]))
            .expect("ok");
    assert!(
        range
            .check(&Value::Float(100.0), ValueType::Float32)
            .is_ok()
    );
    let err = range
        .check(&Value::Int(101), ValueType::Int16)
        .expect_err("out of range");
    assert_eq!(
        err.to_string(),
        "101 is outside the resource's range [0, 100]"
    );
}

proptest! {
    #[test]
    fn float_readings_keep_seven_significant_digits(bits in any::<u32>()) {
        let f = f32::from_bits(bits);
        prop_assume!(f.is_finite() && f != 0.0);
        let text = Value::Float(f64::from(f)).to_reading();
        let back: f64 = text.parse().expect("Go's %e form parses");
        let mantissa = text.split_once('e').expect("an exponent").0;
        prop_assert_eq!(mantissa.trim_start_matches('-').len(), 8, "{}", text);
        prop_assert!((back - f64::from(f)).abs() <= 5e-7 * f64::from(f).abs(), "{} {}", text, f);
    }

    #[test]
    fn integers_fit_exactly_their_types_range(n in any::<i64>()) {
        for t in [ValueType::Int8, ValueType::Int16, ValueType::Int32, ValueType::Uint8, ValueType::Uint16, ValueType::Uint32] {
            let (bits, signed) = t.integer().expect("integer type");
            let fits = if signed {
                n >= -(1i64 << (bits - 1)) && n < (1i64 << (bits - 1))
            } else {
                n >= 0 && n < (1i64 << bits)
            };
            prop_assert_eq!(Value::parse(&n.to_string(), t).is_ok(), fits);
        }
    }
}
