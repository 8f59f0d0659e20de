//! Every selector in `corpus.json` (recorded from a real Kubernetes 1.20 API server by
//! `tools/record_selector_corpus.rs`): the hub's parsers accept exactly what the API server
//! accepted, and its matchers select exactly the objects the API server returned.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::{FieldSelector, LabelSelector};
use crate::codec::{Format, RawObject, decode_list};

const CORPUS: &str = include_str!("../corpus.json");

/// The field labels the 1.20 API server accepts per kind (its field label conversion
/// functions): a parsed selector on any other field is answered 400.
fn api_server_accepts_field(kind: &str, field: &str) -> bool {
    let pod = [
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
        "spec.host",
    ];
    match kind {
        "Pod" => pod.contains(&field),
        _ => matches!(field, "metadata.name" | "metadata.namespace"),
    }
}

fn corpus() -> Value {
    serde_json::from_str(CORPUS).expect("corpus.json is JSON")
}

fn objects(list: &Value) -> Vec<RawObject> {
    let body = serde_json::to_vec(list).expect("a list");
    decode_list(Format::Json, &body)
        .expect("the recorded list decodes")
        .items
}

fn recorded_names(answer: &Value) -> BTreeSet<String> {
    answer["names"]
        .as_array()
        .expect("an accepted selector has names")
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect()
}

#[test]
fn the_corpus_comes_from_a_1_20_api_server_and_is_large_enough() {
    let c = corpus();
    assert!(
        c["api_server"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.20.")),
        "{}",
        c["api_server"]
    );
    assert!(c["label_selectors"].as_array().map_or(0, Vec::len) >= 150);
    assert!(c["field_selectors"].as_array().map_or(0, Vec::len) >= 60);
    assert!(objects(&c["config_maps"]).len() >= 10);
    assert!(objects(&c["pods"]).len() >= 4);
}

#[test]
fn label_selectors_parse_and_match_like_the_api_server() {
    let c = corpus();
    let config_maps = objects(&c["config_maps"]);
    let mut failures = Vec::new();
    for entry in c["label_selectors"].as_array().expect("label_selectors") {
        let selector = entry["selector"].as_str().expect("a selector");
        let accepted = entry["status"] == 200;
        match LabelSelector::parse(selector) {
            Ok(parsed) if accepted => {
                let ours: BTreeSet<String> = config_maps
                    .iter()
                    .filter(|o| parsed.matches(&o.info.labels))
                    .map(|o| o.info.name.clone())
                    .collect();
                if ours != recorded_names(entry) {
                    failures.push(format!(
                        "{selector:?}: we select {ours:?}, the API server {}",
                        entry["names"]
                    ));
                }
            }
            Ok(parsed) => failures.push(format!(
                "{selector:?}: we accept it as {parsed:?}, the API server said {}",
                entry["message"]
            )),
            Err(e) if accepted => failures.push(format!(
                "{selector:?}: the API server accepts it, we say {e}"
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn field_selectors_parse_and_match_like_the_api_server() {
    let c = corpus();
    let lists = [
        ("pods", "Pod", objects(&c["pods"])),
        ("configmaps", "ConfigMap", objects(&c["config_maps"])),
    ];
    let (mut failures, mut evaluated) = (Vec::new(), 0);
    for entry in c["field_selectors"].as_array().expect("field_selectors") {
        let selector = entry["selector"].as_str().expect("a selector");
        let parsed = FieldSelector::parse(selector);
        for (resource, kind, items) in &lists {
            let answer = &entry[*resource];
            let accepted = answer["status"] == 200;
            let we_accept = parsed
                .as_ref()
                .is_ok_and(|p| p.fields().all(|f| api_server_accepts_field(kind, f)));
            if we_accept != accepted {
                failures.push(format!(
                    "{selector:?} on {resource}: we parse it as {parsed:?}, the API server answered {answer}"
                ));
                continue;
            }
            let Ok(parsed) = &parsed else { continue };
            if !parsed.evaluable_for(kind) {
                // Forwarded to the API server, never answered from the cache.
                continue;
            }
            evaluated += 1;
            let ours: BTreeSet<String> = items
                .iter()
                .filter(|o| parsed.matches(|f| o.info.field(f)))
                .map(|o| o.info.name.clone())
                .collect();
            if ours != recorded_names(answer) {
                failures.push(format!(
                    "{selector:?} on {resource}: we select {ours:?}, the API server {}",
                    answer["names"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(evaluated >= 60, "only {evaluated} answers were compared");
}

#[test]
fn every_corpus_selector_that_parses_prints_back() {
    // The corpus doubles as the fuzzing seeds: fixed inputs the property tests' random
    // ones add to.
    let c = corpus();
    for entry in c["label_selectors"].as_array().expect("label_selectors") {
        let selector = entry["selector"].as_str().expect("a selector");
        if let Ok(parsed) = LabelSelector::parse(selector) {
            assert_eq!(
                LabelSelector::parse(&parsed.to_string()),
                Ok(parsed),
                "{selector:?}"
            );
        }
    }
    for entry in c["field_selectors"].as_array().expect("field_selectors") {
        let selector = entry["selector"].as_str().expect("a selector");
        if let Ok(parsed) = FieldSelector::parse(selector) {
            assert_eq!(
                FieldSelector::parse(&parsed.to_string()),
                Ok(parsed),
                "{selector:?}"
            );
        }
    }
}
