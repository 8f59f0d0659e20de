//! `raven.openyurt.io`: the Gateway, which names the nodes that carry cloud-edge and
//! edge-edge traffic for a group of nodes. `v1beta1` is the storage version.

use crate::common::string_enum;

pub mod v1alpha1;
pub mod v1beta1;

/// The API group of every kind in this module.
pub const GROUP: &str = "raven.openyurt.io";

string_enum! {
    /// How a gateway is reachable from other gateways.
    pub enum ExposeType {
        /// Through the public IP of one of its endpoints.
        PublicIp => "PublicIP",
        /// Through a LoadBalancer Service.
        LoadBalancer => "LoadBalancer",
    }
}
