//! YurtStaticSet `v1alpha1`: a static pod manifest kept in sync on every edge node that
//! runs it, upgraded by rolling update or by the node's own choice (OTA).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::string_enum;

/// Desired state of a YurtStaticSet.
// `printcolumn(...)` repeats `name`/`type_`/`json_path` by design; clippy reads that as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.openyurt.io",
    version = "v1alpha1",
    kind = "YurtStaticSet",
    namespaced,
    status = "YurtStaticSetStatus",
    shortname = "yss",
    derive = "Default",
    derive = "PartialEq",
    doc = "A static pod managed from the cloud across edge nodes (apps.openyurt.io/v1alpha1).",
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "Time since the object was created"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.totalNumber",
        description = "Nodes running the static pod"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyNumber",
        description = "Ready static pods"
    ),
    printcolumn(
        name = "Upgraded",
        type_ = "integer",
        json_path = ".status.upgradedNumber",
        description = "Static pods on the current template"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct YurtStaticSetSpec {
    /// Manifest file name, without `.yaml`, under the kubelet's static pod directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_pod_manifest: Option<String>,
    /// How nodes move to a new template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_strategy: Option<YurtStaticSetUpgradeStrategy>,
    /// How many old revisions to keep (upstream defaults to 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// The static pod; its name and namespace are forced to the set's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_fields")]
    pub template: Option<PodTemplateSpec>,
}

string_enum! {
    /// How a YurtStaticSet replaces its pods.
    pub enum UpgradeStrategyType {
        /// The controller upgrades nodes a few at a time, skipping unready ones (the default).
        AdvancedRollingUpdate => "AdvancedRollingUpdate",
        /// Each node's owner triggers the upgrade through the hub.
        Ota => "OTA",
    }
}

/// How a YurtStaticSet replaces its pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtStaticSetUpgradeStrategy {
    /// The strategy.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<UpgradeStrategyType>,
    /// Pods that may be unavailable at once under `AdvancedRollingUpdate` (upstream: `10%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Observed state of a YurtStaticSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YurtStaticSetStatus {
    /// The generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes running the static pod.
    pub total_number: i32,
    /// Ready static pods.
    pub ready_number: i32,
    /// Nodes running the current template.
    pub upgraded_number: i32,
}

/// A short stable hash of a JSON value (FNV-1a 64, first 10 hex digits): the revision
/// of a workload template. The manager marks revisions with it and the hub renders
/// static pod manifests with it, so both must compute it alike: it lives here.
pub fn revision(value: &serde_json::Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.to_string().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")[..10].to_owned()
}

impl YurtStaticSet {
    /// The template hash: a new hash means a new version to roll out.
    pub fn template_hash(&self) -> String {
        revision(&serde_json::to_value(&self.spec.template).unwrap_or(serde_json::Value::Null))
    }

    /// The static pod manifest (JSON, which kubelet reads as YAML) of this set's
    /// template: named after the set, in its namespace, annotated with `hash`
    /// ([`crate::labels::STATIC_POD_HASH`]). The manager hands it to worker pods, and
    /// the hub renders it itself for an OTA upgrade, from the same code.
    pub fn render_manifest(&self, hash: &str) -> String {
        use serde_json::{Value, json};
        let template = serde_json::to_value(&self.spec.template).unwrap_or(Value::Null);
        let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["name"] = json!(self.metadata.name.clone().unwrap_or_default());
        metadata["namespace"] = json!(self.metadata.namespace.clone().unwrap_or_default());
        if !metadata.get("annotations").is_some_and(Value::is_object) {
            metadata["annotations"] = json!({});
        }
        metadata["annotations"][crate::labels::STATIC_POD_HASH] = json!(hash);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        });
        serde_json::to_string_pretty(&pod).unwrap_or_default()
    }
}
