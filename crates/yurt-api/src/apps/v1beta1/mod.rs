//! `apps.openyurt.io/v1beta1`: NodePool without the selector and with `hostNetwork`
//! (served, converted to `v1beta2` for storage) and YurtAppSet with pool selectors and
//! tweaks (the storage version).

mod nodepool;
mod yurtappset;

pub use super::{
    DeploymentTemplateSpec, NodePoolType, StatefulSetTemplateSpec, TemplateType, WorkloadTemplate,
};
pub use crate::common::ConditionStatus;
pub use nodepool::{NodePool, NodePoolSpec, NodePoolStatus};
pub use yurtappset::{
    ImageTweak, PatchOperation, PatchTweak, Tweaks, Workload, WorkloadTweak, YurtAppSet,
    YurtAppSetCondition, YurtAppSetConditionType, YurtAppSetSpec, YurtAppSetStatus,
};
