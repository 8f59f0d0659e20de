//! OpenYurt's API surface for openyurt-rs: the custom resource types OpenYurt components
//! agree on, their CustomResourceDefinitions, and the well-known labels and annotations.
//!
//! - [`apps`]: `apps.openyurt.io` (NodePool, NodeBucket, YurtAppSet, YurtAppDaemon,
//!   YurtStaticSet), one module per version.
//! - [`raven`]: `raven.openyurt.io` Gateway. [`network`]: `network.openyurt.io` PoolService.
//! - [`iot`]: `iot.openyurt.io` Device, DeviceService, DeviceProfile and PlatformAdmin.
//! - [`crds`]: one CRD per kind with all its versions, matching upstream's manifests.
//! - [`labels`]: label, annotation and condition names.
//!
//! This crate does no I/O.
//!
//! ```
//! use yurt_api::apps::v1beta2::{NodePool, NodePoolSpec, NodePoolType};
//!
//! let pool = NodePool::new(
//!     "hangzhou",
//!     NodePoolSpec { type_: Some(NodePoolType::Edge), ..NodePoolSpec::default() },
//! );
//! let json = serde_json::to_value(&pool).unwrap();
//! assert_eq!(json["apiVersion"], "apps.openyurt.io/v1beta2");
//! assert_eq!(json["spec"]["type"], "Edge");
//!
//! let yaml = yurt_api::crds::to_yaml(&yurt_api::crds::all());
//! assert!(yaml.contains("name: nodepools.apps.openyurt.io"));
//! ```

pub mod apps;
mod common;
pub mod crds;
pub mod iot;
pub mod labels;
pub mod network;
pub mod raven;
mod schema;

pub use common::ConditionStatus;
