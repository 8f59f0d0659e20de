//! NodeBucket `v1alpha1`: one slice of a pool's member list, so edge hubs can watch pool
//! membership without listing every Node.
//!
//! Written by hand rather than with `#[derive(CustomResource)]`: upstream's NodeBucket has
//! its fields (`numNodes`, `nodes`) at the top level and no `spec`, which the derive cannot
//! express. This file therefore implements `kube::Resource` and `CustomResourceExt` itself
//! and builds the CRD from the struct's derived schema, with the same generator settings
//! the derive uses.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::crd::v1::CustomResourceExt;
use kube::core::{ApiResource, ClusterResourceScope, Resource};
use schemars::JsonSchema;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// A slice of one NodePool's member nodes (label `openyurt.io/pool-name` names the pool).
#[derive(Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBucket {
    /// Standard object metadata.
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// How many nodes this bucket lists.
    pub num_nodes: i32,
    /// The nodes in this bucket.
    pub nodes: Vec<BucketNode>,
}

/// One node listed in a NodeBucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BucketNode {
    /// The Node's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl NodeBucket {
    /// A bucket named `name` listing `nodes` (`numNodes` is their count).
    pub fn new(name: &str, nodes: Vec<BucketNode>) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            num_nodes: i32::try_from(nodes.len()).unwrap_or(i32::MAX),
            nodes,
        }
    }
}

// === impl NodeBucket ===

impl Serialize for NodeBucket {
    // Written out so the object carries `apiVersion` and `kind`, as derived kinds do.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut obj = serializer.serialize_struct("NodeBucket", 5)?;
        obj.serialize_field("apiVersion", &Self::api_version(&()))?;
        obj.serialize_field("kind", &Self::kind(&()))?;
        obj.serialize_field("metadata", &self.metadata)?;
        obj.serialize_field("numNodes", &self.num_nodes)?;
        obj.serialize_field("nodes", &self.nodes)?;
        obj.end()
    }
}

impl Resource for NodeBucket {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "NodeBucket".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        super::super::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        "apps.openyurt.io/v1alpha1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "nodebuckets".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CustomResourceExt for NodeBucket {
    fn crd() -> CustomResourceDefinition {
        let column = |name: &str, type_: &str, json_path: &str, description: &str| {
            CustomResourceColumnDefinition {
                name: name.into(),
                type_: type_.into(),
                json_path: json_path.into(),
                description: Some(description.into()),
                ..CustomResourceColumnDefinition::default()
            }
        };
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(Self::crd_name().into()),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: super::super::GROUP.into(),
                names: CustomResourceDefinitionNames {
                    categories: Some(vec!["yurt".into()]),
                    kind: "NodeBucket".into(),
                    list_kind: Some("NodeBucketList".into()),
                    plural: "nodebuckets".into(),
                    short_names: Some(vec!["nb".into()]),
                    singular: Some("nodebucket".into()),
                },
                scope: "Cluster".into(),
                versions: vec![CustomResourceDefinitionVersion {
                    additional_printer_columns: Some(vec![
                        column("NUM-NODES", "integer", ".numNodes", "Nodes in the bucket"),
                        column(
                            "AGE",
                            "date",
                            ".metadata.creationTimestamp",
                            "Time since the bucket was created",
                        ),
                    ]),
                    name: "v1alpha1".into(),
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(crate::schema::root_schema_for::<Self>()),
                    }),
                    served: true,
                    storage: true,
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                        scale: None,
                    }),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        }
    }

    fn crd_name() -> &'static str {
        "nodebuckets.apps.openyurt.io"
    }

    fn api_resource() -> ApiResource {
        ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        &["nb"]
    }
}
