//! Unit tests of the selector grammars; the corpus and property tests are in
//! `corpus_tests` and `property_tests`.

use std::collections::BTreeMap;

use super::*;

mod corpus_tests;
mod property_tests;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn label_selectors_match_like_the_api_server() {
    let l = labels(&[("app", "web"), ("tier", "front"), ("rank", "007")]);
    let cases = [
        ("", true),
        ("  \t", true),
        ("app=web", true),
        ("app==web", true),
        ("app!=web", false),
        ("app=db", false),
        ("missing!=x", true),
        ("app in (web, db)", true),
        ("app notin (web)", false),
        ("missing notin (a)", true),
        ("missing in (a)", false),
        ("tier", true),
        ("!tier", false),
        ("!missing", true),
        ("app=web,tier in (front,back),!missing", true),
        ("app=web,tier=back", false),
        ("rank>6", true),
        ("rank>7", false),
        ("rank<8", true),
        ("app>1", false),
        ("missing<1", false),
        ("app in(web)", true),
        ("app notin()", true),
        ("app in (,web)", true),
        ("missing=", false),
        ("app=web,app=db", false),
    ];
    for (sel, want) in cases {
        assert_eq!(
            LabelSelector::parse(sel).unwrap().matches(&l),
            want,
            "{sel}"
        );
    }
    for bad in [
        "app=web,",
        "a b",
        "app in web",
        ",",
        "app in ()x",
        "x>a",
        "x>",
        "x>99999999999999999999",
        "!x=y",
        "app=é",
        "é",
        "a/b/c",
        "/a",
        "Example.com/a",
        "x in (a b)",
        "x=(a)",
        "x===a",
    ] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn label_keywords_are_keys_and_values_outside_operator_position() {
    assert_eq!(
        LabelSelector::parse("in in (in,notin),notin").unwrap().0,
        vec![
            LabelRequirement::In("in".into(), vec!["in".into(), "notin".into()]),
            LabelRequirement::Exists("notin".into()),
        ]
    );
    assert_eq!(
        LabelSelector::parse("x in (b,,a,b)").unwrap().0,
        vec![LabelRequirement::In(
            "x".into(),
            vec![String::new(), "a".into(), "b".into()]
        )]
    );
}

#[test]
fn label_lexer_treats_nul_like_the_api_server() {
    // A NUL where a token starts ends the input; inside a word or after an operator it
    // is dropped and lexing goes on.
    assert_eq!(
        LabelSelector::parse("a \0 b c").unwrap().0,
        vec![LabelRequirement::Exists("a".into())]
    );
    assert_eq!(
        LabelSelector::parse("a==\0b").unwrap().0,
        vec![LabelRequirement::Equals("a".into(), "b".into())]
    );
    assert!(LabelSelector::parse("a,\0").is_err());
}

#[test]
fn label_keys_and_values_are_validated() {
    let long = "a".repeat(63);
    assert!(LabelSelector::parse(&format!("{long}={long}")).is_ok());
    assert!(LabelSelector::parse(&format!("{long}a=x")).is_err());
    assert!(LabelSelector::parse(&format!("x={long}a")).is_err());
    assert!(LabelSelector::parse("example.com/a-b_c.D=x-y_z.Z").is_ok());
    assert!(LabelSelector::parse(&format!("{}.com/a", "a".repeat(250))).is_err());
    assert!(LabelSelector::parse("x=-a").is_err());
    assert!(LabelSelector::parse("x=a-").is_err());
}

#[test]
fn field_selectors_match_with_escapes_and_negation() {
    let get = |f: &str| match f {
        "spec.nodeName" => Some("edge-a1".to_owned()),
        "metadata.name" => Some("a,b=c".to_owned()),
        _ => None,
    };
    let cases = [
        ("", true),
        ("spec.nodeName=edge-a1", true),
        ("spec.nodeName==edge-a1", true),
        ("spec.nodeName!=edge-a1", false),
        ("spec.nodeName=edge-a2", false),
        (r"metadata.name=a\,b\=c", true),
        ("status.phase!=Failed", true),
        ("status.phase=", true),
        ("spec.nodeName=edge-a1,status.phase!=Succeeded", true),
        ("spec.nodeName=edge-a1,", true),
        (",,spec.nodeName=edge-a1", true),
        ("=", true),
        ("!=,==", true),
    ];
    for (sel, want) in cases {
        assert_eq!(
            FieldSelector::parse(sel).unwrap().matches(get),
            want,
            "{sel}"
        );
    }
    for bad in [
        "spec.nodeName",
        "a=b=c",
        r"a=b\x",
        r"a=b\",
        "a===b",
        r"a\=b=c",
    ] {
        assert!(FieldSelector::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        FieldSelector::parse("metadata.name=n1,x=y")
            .unwrap()
            .pinned_name(),
        Some("n1")
    );
}

#[test]
fn field_selectors_are_not_trimmed() {
    let s = FieldSelector::parse(" spec.nodeName = a ").unwrap();
    assert_eq!(
        s.0,
        vec![FieldRequirement {
            field: " spec.nodeName ".into(),
            value: " a ".into(),
            negated: false
        }]
    );
    assert!(!s.evaluable_for("Pod"), "' spec.nodeName ' is no field");
}

#[test]
fn field_selectors_on_fields_the_hub_does_not_index_cannot_be_evaluated() {
    let s = FieldSelector::parse("spec.nodeName=a,metadata.name=b").unwrap();
    assert!(s.evaluable_for("Pod"));
    assert!(s.evaluable_for("PodList"));
    assert!(!s.evaluable_for("ConfigMap"));
    assert!(
        !FieldSelector::parse("status.replicas=1")
            .unwrap()
            .evaluable_for("ReplicaSet")
    );
    assert!(
        !FieldSelector::parse("status.podIPs=1")
            .unwrap()
            .evaluable_for("Pod")
    );
    assert!(
        FieldSelector::parse("metadata.name=n")
            .unwrap()
            .evaluable_for("Node")
    );
    assert!(
        !FieldSelector::parse("spec.unschedulable=false")
            .unwrap()
            .evaluable_for("Node"),
        "the API server reads an absent spec.unschedulable as false; the codec does not index that"
    );
    assert!(evaluable("x>1", "metadata.name=a", "ConfigMapList"));
    assert!(!evaluable("x>a", "", "ConfigMapList"));
    assert!(!evaluable("", "spec.nodeName=a", "ConfigMapList"));
}

#[test]
fn non_ascii_field_selectors_parse_without_panicking() {
    let s = FieldSelector::parse("metadata.name=é,spec.nodeName!=ノード").unwrap();
    assert_eq!(s.0[0].value, "é");
    assert!(s.0[1].negated);
    assert_eq!(s.0[1].value, "ノード");
    assert!(FieldSelector::parse("é").is_err());
    assert!(FieldSelector::parse("é=\\ノ").is_err());
}
