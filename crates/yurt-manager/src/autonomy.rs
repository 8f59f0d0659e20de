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

pub use yurt_core::go_duration::parse_go_duration;

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
