//! What the view reads out of a Service or a Node as the hub received it, protobuf or
//! JSON, decoding only that.

use std::collections::BTreeMap;

use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use prost::Message as _;

use crate::codec::{Format, RawObject};

/// An object message read for its metadata alone (field 1 of every Kubernetes object).
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoWithMetadata {
    #[prost(message, optional, tag = "1")]
    metadata: Option<pb_meta::ObjectMeta>,
}

/// A Node message read for its spec alone (field 2), not its status.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoNodeSpecOnly {
    #[prost(message, optional, tag = "2")]
    spec: Option<k8s_pb::api::core::v1::NodeSpec>,
}

#[derive(serde::Deserialize)]
struct JsonWithMetadata {
    #[serde(default)]
    metadata: kube::api::ObjectMeta,
}

#[derive(serde::Deserialize)]
struct JsonNodeSpecOnly {
    #[serde(default)]
    spec: Option<k8s_openapi::api::core::v1::NodeSpec>,
}

/// An object's annotations (none when it cannot be read).
pub(super) fn annotations(object: &RawObject) -> BTreeMap<String, String> {
    let read = match object.format {
        Format::Protobuf => ProtoWithMetadata::decode(object.data.as_ref())
            .map(|o| o.metadata.map(|m| m.annotations).unwrap_or_default())
            .map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice::<JsonWithMetadata>(&object.data)
            .map(|o| o.metadata.annotations.unwrap_or_default())
            .map_err(|e| e.to_string()),
    };
    read.unwrap_or_else(|e| {
        tracing::debug!(name = %object.info.name, error = %e, "unreadable annotations");
        BTreeMap::new()
    })
}

/// A Node's pod CIDRs: `podCIDRs`, and `podCIDR` if it is not among them (none when the
/// Node cannot be read).
pub(super) fn pod_cidrs(node: &RawObject) -> Vec<String> {
    let read = match node.format {
        Format::Protobuf => ProtoNodeSpecOnly::decode(node.data.as_ref())
            .map(|n| {
                n.spec
                    .map(|s| (s.pod_cid_rs, s.pod_cidr))
                    .unwrap_or_default()
            })
            .map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice::<JsonNodeSpecOnly>(&node.data)
            .map(|n| {
                n.spec
                    .map(|s| (s.pod_cidrs.unwrap_or_default(), s.pod_cidr))
                    .unwrap_or_default()
            })
            .map_err(|e| e.to_string()),
    };
    match read {
        Ok((mut cidrs, first)) => {
            // `podCIDR` is the first of `podCIDRs` when both are set.
            if let Some(c) = first
                && !cidrs.contains(&c)
            {
                cidrs.push(c);
            }
            cidrs
        }
        Err(e) => {
            tracing::debug!(name = %node.info.name, error = %e, "unreadable Node spec");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use k8s_pb::api::core::v1 as core;
    use serde_json::json;

    use super::*;
    use crate::codec;

    fn proto_node(pod_cidr: Option<&str>, pod_cidrs: &[&str]) -> RawObject {
        let node = core::Node {
            metadata: Some(pb_meta::ObjectMeta {
                name: Some("n".into()),
                annotations: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
            spec: Some(core::NodeSpec {
                pod_cidr: pod_cidr.map(str::to_owned),
                pod_cid_rs: pod_cidrs.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            }),
            status: Some(core::NodeStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        codec::proto_from_message("v1", "Node", Bytes::from(node.encode_to_vec())).unwrap()
    }

    fn json_node(spec: serde_json::Value) -> RawObject {
        codec::json_from_value(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n", "annotations": {"k": "v"}}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn both_formats_give_the_same_annotations_and_pod_cidrs() {
        let proto = proto_node(Some("10.0.0.0/24"), &["10.0.0.0/24", "fd00::/64"]);
        let json = json_node(json!({"podCIDR": "10.0.0.0/24",
                                    "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}));
        for node in [&proto, &json] {
            assert_eq!(annotations(node), [("k".to_owned(), "v".to_owned())].into());
            assert_eq!(pod_cidrs(node), ["10.0.0.0/24", "fd00::/64"]);
        }
    }

    #[test]
    fn a_pod_cidr_missing_from_pod_cidrs_is_added_and_none_is_empty() {
        assert_eq!(
            pod_cidrs(&proto_node(Some("10.1.0.0/24"), &[])),
            ["10.1.0.0/24"]
        );
        assert_eq!(
            pod_cidrs(&json_node(json!({"podCIDR": "10.1.0.0/24"}))),
            ["10.1.0.0/24"]
        );
        assert!(pod_cidrs(&proto_node(None, &[])).is_empty());
        assert!(pod_cidrs(&json_node(json!({}))).is_empty());
    }

    #[test]
    fn an_unreadable_object_has_no_annotations_and_no_cidrs() {
        let mut bad = proto_node(Some("10.1.0.0/24"), &[]);
        bad.data = Bytes::from_static(&[0x12, 0xff, 0xff]);
        assert!(annotations(&bad).is_empty());
        assert!(pod_cidrs(&bad).is_empty());
        let mut bad = json_node(json!({"podCIDR": "10.1.0.0/24"}));
        bad.data = Bytes::from_static(b"{\"spec\": 7}");
        assert!(pod_cidrs(&bad).is_empty());
    }
}
