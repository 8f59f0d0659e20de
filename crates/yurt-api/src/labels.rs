//! Well-known OpenYurt labels and annotations (shared/reference/openyurt.md §4).

/// Node label naming the node's pool (`apps.openyurt.io/nodepool=<pool>`).
pub const NODE_POOL: &str = "apps.openyurt.io/nodepool";

/// Node label marking an edge node (`openyurt.io/is-edge-worker=true`); cloud nodes
/// carry `false`.
pub const IS_EDGE_WORKER: &str = "openyurt.io/is-edge-worker";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_upstream_spelling() {
        assert_eq!(NODE_POOL, "apps.openyurt.io/nodepool");
        assert_eq!(IS_EDGE_WORKER, "openyurt.io/is-edge-worker");
    }
}
