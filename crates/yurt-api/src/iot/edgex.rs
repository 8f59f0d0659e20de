//! How EdgeX's services read the strings of a profile's attributes, for the webhook that
//! checks them and the driver that uses them: one reading, so what the webhook lets
//! through is what the driver does.

/// An integer as Go's `ParseInt(s, 0, 64)` reads it (base from the prefix: `0x`, `0o`
/// or `0`, `0b`), after `cast`'s trimming of a zero decimal part (`"1.000000"`, as
/// yurt-iot-dock writes numbers synced from the edge, is 1).
pub fn go_integer(text: &str) -> Option<i64> {
    let text = match text.split_once('.') {
        Some((whole, decimals)) if !decimals.is_empty() && decimals.bytes().all(|b| b == b'0') => {
            whole
        }
        _ => text,
    };
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, digits) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex)
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (2, bin)
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (8, oct)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    // One sign, before the prefix: Rust's parsers would take another after it.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let magnitude = i128::from(u64::from_str_radix(digits, radix).ok()?);
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// A Modbus `startingAddress` as device-modbus reads it: a register (0 to 65535, in any
/// base Go reads), or `register.bit` with a bit of 0 to 15 (one or two digits) for one
/// bit of a register. Three or more zero decimals are a number written with `%f`
/// (`"1.000000"`, synced back from the edge): the register.
pub fn modbus_starting_address(text: &str) -> Option<(u16, Option<u8>)> {
    let register = |t: &str| go_integer(t).and_then(|n| u16::try_from(n).ok());
    match text.split_once('.') {
        Some((r, bit)) if (1..=2).contains(&bit.len()) => {
            let bit = bit
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= 15 && bit.bytes().all(|c| c.is_ascii_digit()))?;
            Some((register(r)?, Some(bit)))
        }
        _ => register(text).map(|r| (r, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_as_go_and_cast_read_them() {
        assert_eq!(go_integer("1.000000"), Some(1));
        assert_eq!(go_integer("0x10"), Some(16));
        assert_eq!(go_integer("010"), Some(8));
        assert_eq!(go_integer("0b11"), Some(3));
        assert_eq!(go_integer("-0o7"), Some(-7));
        assert_eq!(go_integer("1.5"), None);
        assert_eq!(go_integer(""), None);
        assert_eq!(go_integer(" 1"), None);
        for twice in ["--5", "+-5", "0x-5", "-+5", "0x+5", "--9223372036854775808"] {
            assert_eq!(go_integer(twice), None, "{twice:?}");
        }
        assert_eq!(go_integer("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(go_integer("9223372036854775808"), None);
    }

    #[test]
    fn starting_addresses_are_registers_or_register_bits() {
        assert_eq!(modbus_starting_address("1.000000"), Some((1, None)));
        assert_eq!(modbus_starting_address("65535"), Some((65535, None)));
        assert_eq!(modbus_starting_address("30.2"), Some((30, Some(2))));
        assert_eq!(modbus_starting_address("30.0"), Some((30, Some(0))));
        assert_eq!(modbus_starting_address("30.00"), Some((30, Some(0))));
        assert_eq!(modbus_starting_address("30.000"), Some((30, None)));
        assert_eq!(modbus_starting_address("30.+1"), None);
        assert_eq!(modbus_starting_address("0x1e.15"), Some((30, Some(15))));
        assert_eq!(modbus_starting_address("30.16"), None);
        assert_eq!(modbus_starting_address("65536"), None);
        assert_eq!(modbus_starting_address("-1"), None);
        assert_eq!(modbus_starting_address("a.1"), None);
    }
}
