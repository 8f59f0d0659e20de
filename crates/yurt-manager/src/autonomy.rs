//! What makes a node autonomous (reference/openyurt.md §4, §6): the annotation
//! `node.openyurt.io/autonomy-duration` (a Go duration; `0` or less means forever), or
//! the older `node.beta.openyurt.io/autonomy=true` / `apps.openyurt.io/binding=true`
//! (both forever).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use yurt_api::labels::{AUTONOMY_DURATION, AUTONOMY_LEGACY, BINDING};

/// How long a node's pods stay bound to it while it is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autonomy {
    /// Not autonomous: Kubernetes' defaults apply.
    Off,
    /// Pods are never evicted for the node being unreachable.
    Forever,
    /// Pods are evicted after this long.
    For(Duration),
}

/// A Go duration string (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`). Negative durations are
/// returned as `None` in the second field's sense: callers treat them as "forever".
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
    Ok((negative, Duration::from_secs_f64(total)))
}

/// The node's autonomy. An unparsable duration counts as autonomous forever (the
/// annotation says the user wants autonomy; keeping pods is the safe reading) and is
/// logged.
pub fn of(node: &Node) -> Autonomy {
    let Some(annotations) = node.metadata.annotations.as_ref() else {
        return Autonomy::Off;
    };
    if let Some(value) = annotations.get(AUTONOMY_DURATION) {
        return match parse_go_duration(value) {
            Ok((true, _)) => Autonomy::Forever,
            Ok((false, d)) if d.is_zero() => Autonomy::Forever,
            Ok((false, d)) => Autonomy::For(d),
            Err(e) => {
                tracing::warn!(node = ?node.metadata.name, error = %e, "bad autonomy duration; treating the node as autonomous forever");
                Autonomy::Forever
            }
        };
    }
    let flag = |k: &str| annotations.get(k).is_some_and(|v| v == "true");
    if flag(AUTONOMY_LEGACY) || flag(BINDING) {
        Autonomy::Forever
    } else {
        Autonomy::Off
    }
}

/// Whether the node's Ready condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn node(annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

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
        for bad in ["", "10", "1d", "h", "1.2.3s", "-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn autonomy_comes_from_any_of_the_three_annotations() {
        assert_eq!(of(&node(&[])), Autonomy::Off);
        assert_eq!(of(&node(&[(AUTONOMY_DURATION, "0")])), Autonomy::Forever);
        assert_eq!(of(&node(&[(AUTONOMY_DURATION, "-5m")])), Autonomy::Forever);
        assert_eq!(
            of(&node(&[(AUTONOMY_DURATION, "10m")])),
            Autonomy::For(Duration::from_secs(600))
        );
        assert_eq!(of(&node(&[(AUTONOMY_DURATION, "soon")])), Autonomy::Forever);
        assert_eq!(of(&node(&[(AUTONOMY_LEGACY, "true")])), Autonomy::Forever);
        assert_eq!(of(&node(&[(AUTONOMY_LEGACY, "false")])), Autonomy::Off);
        assert_eq!(of(&node(&[(BINDING, "true")])), Autonomy::Forever);
    }
}
