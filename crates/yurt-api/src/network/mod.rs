//! `network.openyurt.io`: PoolService, a LoadBalancer Service's share in one NodePool.

pub mod v1alpha1;

/// The API group of every kind in this module.
pub const GROUP: &str = "network.openyurt.io";
