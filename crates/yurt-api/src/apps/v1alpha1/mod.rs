//! `apps.openyurt.io/v1alpha1`: the first NodePool and YurtAppSet shapes (both deprecated
//! upstream, still served), and the kinds that only exist here: NodeBucket, YurtAppDaemon
//! and YurtStaticSet.

mod nodebucket;
mod nodepool;
mod yurtappdaemon;
mod yurtappset;
mod yurtstaticset;

pub use super::{
    DeploymentTemplateSpec, NodePoolType, StatefulSetTemplateSpec, TemplateType, WorkloadTemplate,
};
pub use crate::common::ConditionStatus;
pub use nodebucket::{BucketNode, NodeBucket};
pub use nodepool::{NodePool, NodePoolSpec, NodePoolStatus};
pub use yurtappdaemon::{
    YurtAppDaemon, YurtAppDaemonCondition, YurtAppDaemonConditionType, YurtAppDaemonSpec,
    YurtAppDaemonStatus,
};
pub use yurtappset::{
    Pool, Topology, WorkloadSummary, YurtAppSet, YurtAppSetCondition, YurtAppSetConditionType,
    YurtAppSetSpec, YurtAppSetStatus,
};
pub use yurtstaticset::{
    UpgradeStrategyType, YurtStaticSet, YurtStaticSetSpec, YurtStaticSetStatus,
    YurtStaticSetUpgradeStrategy, revision,
};
