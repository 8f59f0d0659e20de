//! Kubernetes wire formats: JSON and protobuf (`application/vnd.kubernetes.protobuf`),
//! for single objects, lists and watch streams.
//!
//! Objects are kept as the bytes they arrived in: for JSON the object with its `kind` and
//! `apiVersion`, for protobuf the bare object message (without the `k8s\0` + `Unknown`
//! envelope). Lists and watch events are rebuilt around those bytes without decoding
//! them again, so the cache can answer either format's clients with what it stored.
//! Only metadata (name, namespace, resourceVersion, labels) and the fields the API server
//! can select on are decoded, to index objects for selectors.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime as pbruntime;
use prost::Message;
use serde_json::Value;

/// The protobuf content type.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// The JSON content type.
pub const JSON: &str = "application/json";
/// The protobuf envelope's magic prefix.
const MAGIC: &[u8; 4] = b"k8s\0";

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {format:?} {what}: {reason}")]
pub struct CodecError {
    /// The format.
    pub format: Format,
    /// What was being decoded.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

impl Format {
    /// Stored as a small integer.
    pub fn to_i64(self) -> i64 {
        match self {
            Format::Json => 0,
            Format::Protobuf => 1,
        }
    }

    /// From [`Format::to_i64`].
    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            0 => Some(Format::Json),
            1 => Some(Format::Protobuf),
            _ => None,
        }
    }

    /// The content type of single objects and lists.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Protobuf => PROTOBUF,
        }
    }

    /// The content type of watch streams.
    pub fn watch_content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch",
        }
    }

    /// The format of a response, from its Content-Type.
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        match base {
            PROTOBUF => Some(Format::Protobuf),
            JSON => Some(Format::Json),
            _ => None,
        }
    }

    /// Whether a client asks for metadata only (`PartialObjectMetadata`, as
    /// `kube`'s metadata API and client-go's metadata client do): its first Accept entry
    /// names `as=PartialObjectMetadata` or `as=PartialObjectMetadataList`, which the
    /// API server (1.15 on) then serves.
    pub fn metadata_only(accept: Option<&str>) -> bool {
        let Some(first) = accept.and_then(|a| a.split(',').next()) else {
            return false;
        };
        first.split(';').skip(1).any(|p| {
            matches!(
                p.trim(),
                "as=PartialObjectMetadata" | "as=PartialObjectMetadataList"
            )
        })
    }

    /// The formats a client accepts, most preferred first, from its Accept header.
    /// No header, `*/*` and `application/*` accept JSON.
    pub fn accepted(accept: Option<&str>) -> Vec<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return vec![Format::Json];
        };
        let mut out = Vec::new();
        for entry in accept.split(',') {
            let media = entry.split(';').next().unwrap_or("").trim();
            let f = match media {
                PROTOBUF => Some(Format::Protobuf),
                JSON | "*/*" | "application/*" => Some(Format::Json),
                _ => None,
            };
            if let Some(f) = f
                && !out.contains(&f)
            {
                out.push(f);
            }
        }
        out
    }
}

/// What the cache indexes about an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the fields the API server can select on for this kind.
    pub fields: BTreeMap<String, String>,
}

impl ObjectInfo {
    /// The value of a field for field selectors.
    pub fn field(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            other => self.fields.get(other).cloned(),
        }
    }

    /// The resourceVersion as a number (0 if it is not one).
    pub fn rv(&self) -> u64 {
        self.resource_version.parse().unwrap_or(0)
    }
}

/// An object in the format it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawObject {
    /// Its format.
    pub format: Format,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Indexed metadata.
    pub info: ObjectInfo,
    /// JSON: the object; protobuf: the bare object message.
    pub data: Bytes,
}

/// A decoded list response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawList {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind` of the list (`PodList`).
    pub kind: String,
    /// `metadata.resourceVersion` of the list.
    pub resource_version: String,
    /// `metadata.continue`: set when this is one page of a longer list.
    pub continue_token: String,
    /// The items.
    pub items: Vec<RawObject>,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub event_type: String,
    /// The object.
    pub object: RawObject,
}

/// The fields the API server lets clients select on, per kind (beyond metadata.name
/// and metadata.namespace).
pub fn selectable_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

fn err(format: Format, what: &'static str, reason: impl ToString) -> CodecError {
    CodecError {
        format,
        what,
        reason: reason.to_string(),
    }
}

// === JSON ===

fn json_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json_info(kind: &str, obj: &Value) -> ObjectInfo {
    let m = &obj["metadata"];
    let labels = m["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    for f in selectable_fields(kind) {
        let pointer = if *f == "source" {
            "/source/component".to_owned()
        } else {
            format!("/{}", f.replace('.', "/"))
        };
        if let Some(v) = obj.pointer(&pointer).and_then(json_str) {
            fields.insert((*f).to_owned(), v);
        }
    }
    ObjectInfo {
        name: m["name"].as_str().unwrap_or_default().to_owned(),
        namespace: m["namespace"].as_str().unwrap_or_default().to_owned(),
        resource_version: m["resourceVersion"].as_str().unwrap_or_default().to_owned(),
        labels,
        fields,
    }
}

fn json_object(
    value: Value,
    default_api_version: &str,
    default_kind: &str,
) -> Result<RawObject, CodecError> {
    let mut value = value;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| err(Format::Json, "object", "not a JSON object"))?;
    // List items come without kind/apiVersion; stored objects always carry them.
    if !obj.contains_key("kind") {
        obj.insert("kind".into(), Value::String(default_kind.to_owned()));
    }
    if !obj.contains_key("apiVersion") {
        obj.insert(
            "apiVersion".into(),
            Value::String(default_api_version.to_owned()),
        );
    }
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
    let info = json_info(&kind, &value);
    let data = serde_json::to_vec(&value).map_err(|e| err(Format::Json, "object", e))?;
    Ok(RawObject {
        format: Format::Json,
        api_version,
        kind,
        info,
        data: Bytes::from(data),
    })
}

// === protobuf ===

/// Any Kubernetes object: metadata is always field 1.
#[derive(Clone, PartialEq, Message)]
struct WithMeta {
    #[prost(message, optional, tag = "1")]
    metadata: Option<meta::ObjectMeta>,
}

/// Any Kubernetes list: metadata is field 1, items are field 2.
#[derive(Clone, PartialEq, Message)]
struct ListOfRaw {
    #[prost(message, optional, tag = "1")]
    metadata: Option<meta::ListMeta>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    items: Vec<Bytes>,
}

fn proto_fields(kind: &str, raw: &[u8]) -> BTreeMap<String, String> {
    use k8s_pb::api::core::v1 as core;
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            f.insert(k.to_owned(), v);
        }
    };
    match kind {
        "Pod" => {
            if let Ok(p) = core::Pod::decode(raw) {
                let spec = p.spec.unwrap_or_default();
                let status = p.status.unwrap_or_default();
                put("spec.nodeName", spec.node_name);
                put("spec.restartPolicy", spec.restart_policy);
                put("spec.schedulerName", spec.scheduler_name);
                put("spec.serviceAccountName", spec.service_account_name);
                put("status.phase", status.phase);
                put("status.podIP", status.pod_ip);
                put("status.nominatedNodeName", status.nominated_node_name);
            }
        }
        "Event" => {
            if let Ok(e) = core::Event::decode(raw) {
                let o = e.involved_object.unwrap_or_default();
                put("involvedObject.kind", o.kind);
                put("involvedObject.namespace", o.namespace);
                put("involvedObject.name", o.name);
                put("involvedObject.uid", o.uid);
                put("involvedObject.apiVersion", o.api_version);
                put("involvedObject.resourceVersion", o.resource_version);
                put("involvedObject.fieldPath", o.field_path);
                put("reason", e.reason);
                put("reportingComponent", e.reporting_component);
                put("source", e.source.and_then(|s| s.component));
                put("type", e.r#type);
            }
        }
        "Secret" => {
            if let Ok(s) = core::Secret::decode(raw) {
                put("type", s.r#type);
            }
        }
        "Node" => {
            if let Ok(n) = core::Node::decode(raw) {
                put(
                    "spec.unschedulable",
                    n.spec.and_then(|s| s.unschedulable).map(|u| u.to_string()),
                );
            }
        }
        "Namespace" => {
            if let Ok(n) = core::Namespace::decode(raw) {
                put("status.phase", n.status.and_then(|s| s.phase));
            }
        }
        _ => {}
    }
    f
}

fn proto_object(api_version: &str, kind: &str, raw: Bytes) -> Result<RawObject, CodecError> {
    let m = WithMeta::decode(raw.as_ref())
        .map_err(|e| err(Format::Protobuf, "object", e))?
        .metadata
        .unwrap_or_default();
    Ok(RawObject {
        format: Format::Protobuf,
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        info: ObjectInfo {
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            resource_version: m.resource_version.unwrap_or_default(),
            labels: m.labels,
            fields: proto_fields(kind, &raw),
        },
        data: raw,
    })
}

fn unwrap_envelope(body: &[u8]) -> Result<(String, String, Bytes), CodecError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| err(Format::Protobuf, "envelope", "missing k8s magic prefix"))?;
    let u = pbruntime::Unknown::decode(rest).map_err(|e| err(Format::Protobuf, "envelope", e))?;
    let tm = u.type_meta.unwrap_or_default();
    Ok((
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
        Bytes::from(u.raw.unwrap_or_default()),
    ))
}

fn wrap_envelope(api_version: &str, kind: &str, raw: &[u8]) -> Bytes {
    let u = pbruntime::Unknown {
        type_meta: Some(pbruntime::TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(raw.to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = BytesMut::with_capacity(MAGIC.len() + u.encoded_len());
    out.put_slice(MAGIC);
    u.encode(&mut out).expect("BytesMut grows");
    out.freeze()
}

// === public API ===

/// Decodes a single-object response.
///
/// # Errors
/// [`CodecError`] if the body is not an object in `format`.
pub fn decode_object(format: Format, body: &[u8]) -> Result<RawObject, CodecError> {
    match format {
        Format::Json => {
            let v: Value = serde_json::from_slice(body).map_err(|e| err(format, "object", e))?;
            json_object(v, "", "")
        }
        Format::Protobuf => {
            let (api_version, kind, raw) = unwrap_envelope(body)?;
            proto_object(&api_version, &kind, raw)
        }
    }
}

/// The kind of a list's items (`PodList` → `Pod`).
pub fn item_kind(list_kind: &str) -> &str {
    list_kind.strip_suffix("List").unwrap_or(list_kind)
}

/// Decodes a list response.
///
/// # Errors
/// [`CodecError`] if the body is not a list in `format`.
pub fn decode_list(format: Format, body: &[u8]) -> Result<RawList, CodecError> {
    match format {
        Format::Json => {
            let v: Value = serde_json::from_slice(body).map_err(|e| err(format, "list", e))?;
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let api_version = v["apiVersion"].as_str().unwrap_or_default().to_owned();
            if !kind.ends_with("List") {
                return Err(err(format, "list", format!("kind {kind:?} is not a list")));
            }
            let resource_version = v["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let continue_token = v["metadata"]["continue"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ik = item_kind(&kind).to_owned();
            let items = match v {
                Value::Object(mut m) => match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let items = items
                .into_iter()
                .map(|i| json_object(i, &api_version, &ik))
                .collect::<Result<_, _>>()?;
            Ok(RawList {
                api_version,
                kind,
                resource_version,
                continue_token,
                items,
            })
        }
        Format::Protobuf => {
            let (api_version, kind, raw) = unwrap_envelope(body)?;
            if !kind.ends_with("List") {
                return Err(err(format, "list", format!("kind {kind:?} is not a list")));
            }
            let ListOfRaw { metadata, items } =
                ListOfRaw::decode(raw.as_ref()).map_err(|e| err(format, "list", e))?;
            let ik = item_kind(&kind).to_owned();
            let items = items
                .into_iter()
                .map(|i| proto_object(&api_version, &ik, i))
                .collect::<Result<_, _>>()?;
            let m = metadata.unwrap_or_default();
            Ok(RawList {
                api_version,
                kind,
                resource_version: m.resource_version.unwrap_or_default(),
                continue_token: m.r#continue.unwrap_or_default(),
                items,
            })
        }
    }
}

/// Encodes a stored object as a GET response in its own format.
pub fn encode_object(obj: &RawObject) -> Bytes {
    match obj.format {
        Format::Json => obj.data.clone(),
        Format::Protobuf => wrap_envelope(&obj.api_version, &obj.kind, &obj.data),
    }
}

/// Encodes a list response around stored items (all in `format`).
pub fn encode_list(
    format: Format,
    api_version: &str,
    list_kind: &str,
    resource_version: &str,
    items: &[RawObject],
) -> Bytes {
    match format {
        Format::Json => {
            let mut out =
                Vec::with_capacity(items.iter().map(|i| i.data.len() + 1).sum::<usize>() + 128);
            out.extend_from_slice(b"{\"kind\":");
            out.extend_from_slice(
                serde_json::to_string(list_kind)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.extend_from_slice(b",\"apiVersion\":");
            out.extend_from_slice(
                serde_json::to_string(api_version)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.extend_from_slice(b",\"metadata\":{\"resourceVersion\":");
            out.extend_from_slice(
                serde_json::to_string(resource_version)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.extend_from_slice(b"},\"items\":[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&item.data);
            }
            out.extend_from_slice(b"]}");
            Bytes::from(out)
        }
        Format::Protobuf => {
            let list = ListOfRaw {
                metadata: Some(meta::ListMeta {
                    self_link: None,
                    resource_version: Some(resource_version.to_owned()),
                    r#continue: None,
                    remaining_item_count: None,
                }),
                items: items.iter().map(|i| i.data.clone()).collect(),
            };
            wrap_envelope(api_version, list_kind, &list.encode_to_vec())
        }
    }
}

/// Encodes one watch event of a stream in `format` (JSON: one line; protobuf: one
/// length-prefixed frame).
pub fn encode_watch_event(format: Format, event_type: &str, obj: &RawObject) -> Bytes {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(obj.data.len() + 32);
            out.extend_from_slice(b"{\"type\":");
            out.extend_from_slice(
                serde_json::to_string(event_type)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.extend_from_slice(b",\"object\":");
            out.extend_from_slice(&obj.data);
            out.extend_from_slice(b"}\n");
            Bytes::from(out)
        }
        Format::Protobuf => {
            let ev = meta::WatchEvent {
                r#type: Some(event_type.to_owned()),
                object: Some(pbruntime::RawExtension {
                    raw: Some(wrap_envelope(&obj.api_version, &obj.kind, &obj.data).to_vec()),
                }),
            };
            let body = ev.encode_to_vec();
            let mut out = BytesMut::with_capacity(body.len() + 4);
            out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
            out.put_slice(&body);
            out.freeze()
        }
    }
}

/// A `metav1.Status` error body.
pub fn encode_status(format: Format, code: u16, reason: &str, message: &str) -> Bytes {
    match format {
        Format::Json => Bytes::from(
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            })
            .to_string(),
        ),
        Format::Protobuf => {
            let s = meta::Status {
                metadata: Some(meta::ListMeta::default()),
                status: Some("Failure".into()),
                message: Some(message.to_owned()),
                reason: Some(reason.to_owned()),
                details: None,
                code: Some(i32::from(code)),
            };
            wrap_envelope("v1", "Status", &s.encode_to_vec())
        }
    }
}

/// Splits a watch stream into events as bytes arrive.
#[derive(Debug)]
pub struct WatchDecoder {
    format: Format,
    buf: BytesMut,
}

impl WatchDecoder {
    /// A decoder for a stream in `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            buf: BytesMut::new(),
        }
    }

    /// Adds bytes and returns the events they complete, each with its exact bytes on
    /// the wire (so events can be passed on unchanged).
    ///
    /// # Errors
    /// [`CodecError`] if the stream is malformed (the decoder is then unusable).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<(WatchEvent, Bytes)>, CodecError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        match self.format {
            Format::Json => loop {
                let start = self
                    .buf
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .unwrap_or(self.buf.len());
                let _ = self.buf.split_to(start);
                if self.buf.is_empty() {
                    break;
                }
                let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let end = it.byte_offset();
                        let wire = self.buf.split_to(end).freeze();
                        out.push((json_event(v)?, wire));
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(err(self.format, "watch event", e)),
                    None => break,
                }
            },
            Format::Protobuf => loop {
                if self.buf.len() < 4 {
                    break;
                }
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() < 4 + len {
                    break;
                }
                let wire = self.buf.split_to(4 + len).freeze();
                let ev = meta::WatchEvent::decode(&wire[4..])
                    .map_err(|e| err(self.format, "watch event", e))?;
                let raw = ev.object.and_then(|o| o.raw).unwrap_or_default();
                let (api_version, kind, inner) = unwrap_envelope(&raw)?;
                out.push((
                    WatchEvent {
                        event_type: ev.r#type.unwrap_or_default(),
                        object: proto_object(&api_version, &kind, inner)?,
                    },
                    wire,
                ));
            },
        }
        Ok(out)
    }
}

fn json_event(v: Value) -> Result<WatchEvent, CodecError> {
    let Value::Object(mut m) = v else {
        return Err(err(Format::Json, "watch event", "not an object"));
    };
    let event_type = m
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let object = m
        .remove("object")
        .ok_or_else(|| err(Format::Json, "watch event", "no object"))?;
    Ok(WatchEvent {
        event_type,
        object: json_object(object, "", "")?,
    })
}

/// Re-encodes a JSON object value as a stored object (for filters that rewrite objects).
///
/// # Errors
/// [`CodecError`] if `value` is not an object.
pub fn json_from_value(value: Value) -> Result<RawObject, CodecError> {
    json_object(value, "", "")
}

/// Builds a protobuf object from an already-encoded message (for filters).
///
/// # Errors
/// [`CodecError`] if the metadata cannot be decoded.
pub fn proto_from_message(
    api_version: &str,
    kind: &str,
    raw: Bytes,
) -> Result<RawObject, CodecError> {
    proto_object(api_version, kind, raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::core::v1 as core;

    fn pod_proto(name: &str, node: &str, rv: &str) -> Vec<u8> {
        core::Pod {
            metadata: Some(meta::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn protobuf_list_round_trips_through_stored_items() {
        let list = ListOfRaw {
            metadata: Some(meta::ListMeta {
                resource_version: Some("77".into()),
                ..Default::default()
            }),
            items: vec![
                Bytes::from(pod_proto("p1", "edge-a1", "5")),
                Bytes::from(pod_proto("p2", "edge-b1", "6")),
            ],
        };
        let body = wrap_envelope("v1", "PodList", &list.encode_to_vec());
        let decoded = decode_list(Format::Protobuf, &body).unwrap();
        assert_eq!(
            (decoded.kind.as_str(), decoded.resource_version.as_str()),
            ("PodList", "77")
        );
        assert_eq!(decoded.items.len(), 2);
        let p1 = &decoded.items[0];
        assert_eq!((p1.kind.as_str(), p1.api_version.as_str()), ("Pod", "v1"));
        assert_eq!(
            (
                p1.info.name.as_str(),
                p1.info.namespace.as_str(),
                p1.info.rv()
            ),
            ("p1", "default", 5)
        );
        assert_eq!(p1.info.field("spec.nodeName").as_deref(), Some("edge-a1"));
        assert_eq!(p1.info.field("status.phase").as_deref(), Some("Running"));
        assert_eq!(p1.info.labels.get("app").map(String::as_str), Some("web"));
        // Re-encoding the stored items gives back the same bytes.
        let again = encode_list(Format::Protobuf, "v1", "PodList", "77", &decoded.items);
        assert_eq!(again, body);
        // A single object wraps its stored message in the envelope.
        let single = encode_object(p1);
        let back = decode_object(Format::Protobuf, &single).unwrap();
        assert_eq!(&back, p1);
    }

    #[test]
    fn json_list_items_get_kind_and_api_version() {
        let body = br#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"9"},
            "items":[{"metadata":{"name":"c","namespace":"kube-system","resourceVersion":"8","labels":{"a":"b"}},"data":{"k":"v"}}]}"#;
        let l = decode_list(Format::Json, body).unwrap();
        assert_eq!(l.resource_version, "9");
        let item = &l.items[0];
        assert_eq!(
            (item.kind.as_str(), item.api_version.as_str()),
            ("ConfigMap", "v1")
        );
        let v: Value = serde_json::from_slice(&item.data).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["data"]["k"], "v");
        let out = encode_list(Format::Json, "v1", "ConfigMapList", "9", &l.items);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "c");
        assert_eq!(v["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn watch_streams_split_across_chunks_in_both_formats() {
        let pod = proto_object("v1", "Pod", Bytes::from(pod_proto("p1", "n", "10"))).unwrap();
        let mut stream = encode_watch_event(Format::Protobuf, "ADDED", &pod).to_vec();
        stream.extend_from_slice(&encode_watch_event(Format::Protobuf, "DELETED", &pod));
        let mut d = WatchDecoder::new(Format::Protobuf);
        let mut events = Vec::new();
        for chunk in stream.chunks(7) {
            events.extend(d.push(chunk).unwrap());
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0.event_type, "ADDED");
        assert_eq!(events[1].0.event_type, "DELETED");
        assert_eq!(events[0].0.object, pod);
        assert_eq!(
            [events[0].1.clone(), events[1].1.clone()].concat(),
            stream,
            "wire bytes are passed through unchanged"
        );

        let json = b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"3\"}}}\n{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"4\"}}}\n";
        let mut d = WatchDecoder::new(Format::Json);
        let mut events = Vec::new();
        for chunk in json.chunks(5) {
            events.extend(d.push(chunk).unwrap());
        }
        assert_eq!(
            events
                .iter()
                .map(|e| e.0.object.info.rv())
                .collect::<Vec<_>>(),
            [3, 4]
        );
        let rebuilt = encode_watch_event(Format::Json, "ADDED", &events[0].0.object);
        let mut d = WatchDecoder::new(Format::Json);
        assert_eq!(d.push(&rebuilt).unwrap()[0].0, events[0].0);
    }

    #[test]
    fn negotiates_accept_headers() {
        assert_eq!(
            Format::accepted(Some("application/vnd.kubernetes.protobuf, */*")),
            [Format::Protobuf, Format::Json]
        );
        assert_eq!(Format::accepted(Some("application/json")), [Format::Json]);
        assert_eq!(Format::accepted(None), [Format::Json]);
        assert_eq!(
            Format::accepted(Some("application/yaml")),
            Vec::<Format>::new()
        );
        assert_eq!(
            Format::of_content_type("application/vnd.kubernetes.protobuf;stream=watch"),
            Some(Format::Protobuf)
        );
    }

    #[test]
    fn tells_metadata_only_requests_by_their_first_accept_entry() {
        for (accept, metadata) in [
            (
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                true,
            ),
            (
                Some("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
                true,
            ),
            (
                Some(
                    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
                ),
                true,
            ),
            (Some("application/json;as=Table;g=meta.k8s.io;v=v1"), false),
            (
                Some("application/json,application/json;as=PartialObjectMetadata"),
                false,
            ),
            (Some("application/json"), false),
            (None, false),
        ] {
            assert_eq!(Format::metadata_only(accept), metadata, "{accept:?}");
        }
    }

    #[test]
    fn status_bodies_in_both_formats() {
        let j: Value =
            serde_json::from_slice(&encode_status(Format::Json, 404, "NotFound", "gone")).unwrap();
        assert_eq!(
            (j["code"].as_u64(), j["reason"].as_str()),
            (Some(404), Some("NotFound"))
        );
        let p = encode_status(Format::Protobuf, 403, "Forbidden", "no");
        let (av, kind, raw) = unwrap_envelope(&p).unwrap();
        assert_eq!((av.as_str(), kind.as_str()), ("v1", "Status"));
        assert_eq!(meta::Status::decode(raw.as_ref()).unwrap().code, Some(403));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_object(Format::Protobuf, b"nope").is_err());
        assert!(decode_object(Format::Protobuf, b"k8s\0\xff\xff").is_err());
        assert!(decode_list(Format::Json, b"{\"kind\":\"Pod\"}").is_err());
        let mut d = WatchDecoder::new(Format::Json);
        assert!(d.push(b"{\"type\":]").is_err());
    }
}
