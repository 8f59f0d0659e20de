//! Well-known OpenYurt labels and annotations (shared/reference/openyurt.md §4).

/// Node label naming the node's pool (`apps.openyurt.io/nodepool=<pool>`).
pub const NODE_POOL: &str = "apps.openyurt.io/nodepool";

/// Node label marking an edge node (`openyurt.io/is-edge-worker=true`); cloud nodes
/// carry `false`.
pub const IS_EDGE_WORKER: &str = "openyurt.io/is-edge-worker";

/// Node annotation making a node autonomous: how long its pods stay bound to it while
/// it is unreachable (a Go duration; `0` means forever).
pub const AUTONOMY_DURATION: &str = "node.openyurt.io/autonomy-duration";

/// The older autonomy annotation (`"true"` means autonomous, pods never evicted).
pub const AUTONOMY_LEGACY: &str = "node.beta.openyurt.io/autonomy";

/// The Node condition type the hub keeps: whether the node can work offline.
pub const AUTONOMY_CONDITION: &str = "Autonomy";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_upstream_spelling() {
        assert_eq!(NODE_POOL, "apps.openyurt.io/nodepool");
        assert_eq!(IS_EDGE_WORKER, "openyurt.io/is-edge-worker");
        assert_eq!(AUTONOMY_DURATION, "node.openyurt.io/autonomy-duration");
        assert_eq!(AUTONOMY_LEGACY, "node.beta.openyurt.io/autonomy");
    }
}
