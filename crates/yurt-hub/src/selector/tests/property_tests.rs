//! Property tests, bounded to a fixed number of cases so they run in seconds: printing a
//! selector and parsing it back gives the same selector; no string makes the parsers or
//! matchers panic; a selector the hub cannot evaluate never selects anything by itself.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::{FieldRequirement, FieldSelector, LabelRequirement, LabelSelector, evaluable};
use crate::codec::ObjectInfo;
use crate::store::Shape;

const CASES: u32 = 2_000;

const ALNUM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn chars_of(set: &'static str) -> impl Strategy<Value = char> {
    let chars: Vec<char> = set.chars().collect();
    prop::sample::select(chars)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most `max` characters.
fn qualified_part(max: usize) -> impl Strategy<Value = String> {
    (
        chars_of(ALNUM),
        prop::collection::vec(chars_of("abcXYZ019-_."), 0..max.saturating_sub(2)),
        prop::option::of(chars_of(ALNUM)),
    )
        .prop_map(|(first, middle, last)| {
            let mut s = String::from(first);
            if let Some(last) = last {
                s.extend(middle);
                s.push(last);
            }
            s
        })
}

fn dns_label() -> impl Strategy<Value = String> {
    prop::collection::vec(chars_of("abz09"), 1..6).prop_map(|c| c.into_iter().collect())
}

fn label_key() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::collection::vec(dns_label(), 1..4)),
        prop_oneof![
            qualified_part(63),
            Just("in".to_owned()),
            Just("notin".to_owned())
        ],
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(labels) => format!("{}/{name}", labels.join(".")),
            None => name,
        })
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("in".to_owned()),
        qualified_part(63)
    ]
}

fn value_set() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(label_value(), 1..4).prop_map(|s| s.into_iter().collect())
}

fn label_requirement() -> impl Strategy<Value = LabelRequirement> {
    prop_oneof![
        (label_key(), label_value()).prop_map(|(k, v)| LabelRequirement::Equals(k, v)),
        (label_key(), label_value()).prop_map(|(k, v)| LabelRequirement::NotEquals(k, v)),
        (label_key(), value_set()).prop_map(|(k, v)| LabelRequirement::In(k, v)),
        (label_key(), value_set()).prop_map(|(k, v)| LabelRequirement::NotIn(k, v)),
        label_key().prop_map(LabelRequirement::Exists),
        label_key().prop_map(LabelRequirement::DoesNotExist),
        (label_key(), 0..=i64::MAX).prop_map(|(k, n)| LabelRequirement::GreaterThan(k, n)),
        (label_key(), 0..=i64::MAX).prop_map(|(k, n)| LabelRequirement::LessThan(k, n)),
    ]
}

fn field_requirement() -> impl Strategy<Value = FieldRequirement> {
    (
        prop::collection::vec(chars_of("abcXYZ.012_-"), 1..20),
        any::<String>(),
        any::<bool>(),
    )
        .prop_map(|(field, value, negated)| FieldRequirement {
            field: field.into_iter().collect(),
            value,
            negated,
        })
}

/// Strings made of the grammars' own pieces (operators, keywords, escapes, whitespace,
/// NUL, non-ASCII), to reach deep into the parsers, mixed with arbitrary strings.
fn selector_soup() -> impl Strategy<Value = String> {
    let pieces = vec![
        "a",
        "app",
        "web",
        "x/y",
        "example.com/",
        "1",
        "007",
        "-1",
        "=",
        "==",
        "!=",
        "!",
        "in",
        "notin",
        "(",
        ")",
        ",",
        ">",
        "<",
        " ",
        "\t",
        "\n",
        "\r",
        "\0",
        "é",
        "ノ",
        "\\",
        "\\,",
        "\\=",
        "\\\\",
        "\u{1}",
        "\u{7f}",
        "\u{a0}",
        "metadata.name",
        "spec.nodeName",
        "",
    ];
    prop_oneof![
        prop::collection::vec(prop::sample::select(pieces), 0..14).prop_map(|p| p.concat()),
        any::<String>(),
    ]
}

fn sample_labels() -> Vec<BTreeMap<String, String>> {
    let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    vec![
        l(&[]),
        l(&[("app", "web"), ("a", "1")]),
        l(&[("a", ""), ("in", "notin"), ("x/y", "007")]),
        l(&[("app", "é"), ("a", "-1")]),
    ]
}

fn sample_objects() -> Vec<ObjectInfo> {
    sample_labels()
        .into_iter()
        .enumerate()
        .map(|(i, labels)| ObjectInfo {
            name: format!("o{i}"),
            namespace: "default".to_owned(),
            resource_version: "1".to_owned(),
            labels,
            fields: [("spec.nodeName".to_owned(), "n1".to_owned())].into(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn label_selectors_print_and_parse_back(reqs in prop::collection::vec(label_requirement(), 0..5)) {
        let selector = LabelSelector(reqs);
        let printed = selector.to_string();
        prop_assert_eq!(LabelSelector::parse(&printed), Ok(selector), "{:?}", printed);
    }

    #[test]
    fn field_selectors_print_and_parse_back(reqs in prop::collection::vec(field_requirement(), 0..5)) {
        let selector = FieldSelector(reqs);
        let printed = selector.to_string();
        prop_assert_eq!(FieldSelector::parse(&printed), Ok(selector), "{:?}", printed);
    }

    #[test]
    fn any_string_parses_or_fails_without_panicking_and_what_parses_prints_back(s in selector_soup()) {
        if let Ok(labels) = LabelSelector::parse(&s) {
            for l in sample_labels() {
                let _ = labels.matches(&l);
            }
            prop_assert_eq!(LabelSelector::parse(&labels.to_string()), Ok(labels));
        }
        if let Ok(fields) = FieldSelector::parse(&s) {
            for o in sample_objects() {
                let _ = fields.matches(|f| o.field(f));
            }
            let _ = fields.pinned_name();
            prop_assert_eq!(FieldSelector::parse(&fields.to_string()), Ok(fields));
        }
    }

    #[test]
    fn a_selector_the_hub_cannot_evaluate_selects_nothing(s in selector_soup()) {
        let objects = sample_objects();
        if LabelSelector::parse(&s).is_err() {
            prop_assert!(!evaluable(&s, "", "Pod"));
            let shape = Shape { namespace: String::new(), label_selector: s.clone(), field_selector: String::new() };
            prop_assert!(objects.iter().all(|o| !shape.selects(o)), "{:?}", s);
        }
        match FieldSelector::parse(&s) {
            Err(_) => {
                prop_assert!(!evaluable("", &s, "Pod"));
                let shape = Shape { namespace: String::new(), label_selector: String::new(), field_selector: s.clone() };
                prop_assert!(objects.iter().all(|o| !shape.selects(o)), "{:?}", s);
            }
            Ok(fields) => {
                // Only fields the hub indexes for the kind are evaluated by the hub.
                let known = fields.fields().all(|f| matches!(f, "metadata.name" | "metadata.namespace"));
                prop_assert_eq!(evaluable("", &s, "ConfigMap"), known, "{:?}", s);
            }
        }
    }
}
