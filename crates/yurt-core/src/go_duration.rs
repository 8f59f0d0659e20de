//! Go's duration strings (`time.ParseDuration`), as Kubernetes and OpenYurt write them
//! in annotations and flags: `300ms`, `1.5h`, `2h45m`, `-1s`, `0`. Hand-written: the
//! duration crates parse their own formats, not Go's.

use std::time::Duration;

/// A Go duration string (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`): whether it is negative,
/// and its magnitude.
///
/// # Errors
/// A string Go's `time.ParseDuration` would reject.
pub fn parse_go_duration(s: &str) -> Result<(bool, Duration), String> {
    let s = s.trim();
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {s:?}"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        if number_end == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let value: f64 = rest[..number_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        total += value * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    // Go's durations are int64 nanoseconds: about 292 years at most.
    if total > MAX_SECONDS {
        return Err(format!(
            "duration {s:?} is longer than Go allows (about 292 years)"
        ));
    }
    Duration::try_from_secs_f64(total)
        .map(|d| (negative, d))
        .map_err(|_| format!("invalid duration {s:?}"))
}

/// The longest Go duration, in seconds (`math.MaxInt64` nanoseconds).
const MAX_SECONDS: f64 = 9_223_372_036.854_775;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("0"), Ok((false, Duration::ZERO)));
        assert_eq!(
            parse_go_duration("90s"),
            Ok((false, Duration::from_secs(90)))
        );
        assert_eq!(
            parse_go_duration("1h30m"),
            Ok((false, Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_go_duration("1.5h"),
            Ok((false, Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_go_duration("300ms"),
            Ok((false, Duration::from_millis(300)))
        );
        assert_eq!(parse_go_duration("-1s"), Ok((true, Duration::from_secs(1))));
        // Longer than Go's int64 nanoseconds: refused, never a panic.
        for huge in [
            "6000000000000000h",
            "300y",
            "1e400h",
            "9999999999999999999999s",
        ] {
            assert!(parse_go_duration(huge).is_err(), "{huge:?}");
        }
        assert!(parse_go_duration("2562047h").is_ok());
        for bad in ["", "10", "1d", "h", "1.2.3s", "-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }
}
