//! Decoding real API server responses captured from kube-apiserver 1.20.2 (protobuf): a
//! Running pod, a pod list selected by node, and a pod watch stream.

use yurt_hub::codec::{
    Format, WatchDecoder, decode_list, decode_object, encode_list, encode_object,
};

#[test]
fn a_captured_protobuf_pod_decodes_and_re_encodes_identically() {
    let body = include_bytes!("data/pod.pb");
    let pod = decode_object(Format::Protobuf, body).expect("decode pod");
    assert_eq!((pod.kind.as_str(), pod.api_version.as_str()), ("Pod", "v1"));
    assert!(pod.info.name.starts_with("web-pool-b-"));
    assert_eq!(pod.info.namespace, "default");
    assert_eq!(pod.info.field("spec.nodeName").as_deref(), Some("edge-b2"));
    assert_eq!(pod.info.field("status.phase").as_deref(), Some("Running"));
    assert_eq!(
        pod.info.labels.get("app").map(String::as_str),
        Some("web-pool-b")
    );
    assert_eq!(encode_object(&pod).as_ref(), body.as_slice());
}

#[test]
fn a_captured_protobuf_pod_list_decodes() {
    let body = include_bytes!("data/podlist.pb");
    let list = decode_list(Format::Protobuf, body).expect("decode list");
    assert_eq!(list.kind, "PodList");
    assert_eq!(list.items.len(), 2);
    for p in &list.items {
        assert_eq!(p.info.field("spec.nodeName").as_deref(), Some("edge-b2"));
    }
    let again = encode_list(
        Format::Protobuf,
        &list.api_version,
        &list.kind,
        &list.resource_version,
        &list.items,
    );
    assert_eq!(decode_list(Format::Protobuf, &again).unwrap(), list);
}

#[test]
fn a_captured_protobuf_watch_stream_decodes_event_by_event() {
    let body = include_bytes!("data/podwatch.pb");
    let mut d = WatchDecoder::new(Format::Protobuf);
    let mut events = Vec::new();
    for chunk in body.chunks(1000) {
        events.extend(d.push(chunk).expect("decode watch"));
    }
    assert!(events.len() >= 2, "{} events", events.len());
    for (ev, _) in &events {
        assert_eq!(ev.event_type, "ADDED");
        assert_eq!(ev.object.kind, "Pod");
        assert_eq!(ev.object.info.namespace, "default");
    }
    let wire: Vec<u8> = events.iter().flat_map(|(_, w)| w.to_vec()).collect();
    assert_eq!(wire, body.to_vec());
}
