//! Label and field selectors, parsed and matched the way the API server does, so a list
//! served from the cache holds exactly what the API server would have returned.

use std::collections::BTreeMap;

/// A selector string the API server would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector.
    pub selector: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector (all requirements must hold; empty matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

/// Splits at commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    /// Parses a label selector.
    ///
    /// # Errors
    /// [`SelectorError`] for syntax the API server rejects.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |reason| SelectorError {
            selector: selector.to_owned(),
            reason,
        };
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(
                    k.trim().to_owned(),
                    set_values(v).ok_or_else(|| err("notin needs (values)"))?,
                )
            } else if let Some((k, v)) = part.split_once(" in ") {
                LabelRequirement::In(
                    k.trim().to_owned(),
                    set_values(v).ok_or_else(|| err("in needs (values)"))?,
                )
            } else if part.contains(['(', ')', ' ', '<', '>']) {
                return Err(err("unsupported operator"));
            } else {
                LabelRequirement::Exists(part.to_owned())
            };
            let key = match &req {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k) => k,
            };
            if key.is_empty() {
                return Err(err("empty key"));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path (`metadata.name`, `spec.nodeName`).
    pub field: String,
    /// Value.
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Splits at unescaped commas and unescapes `\,` `\=` `\\`.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("one part").push('\\');
                    out.last_mut().expect("one part").push(n);
                }
            }
            ',' => out.push(String::new()),
            c => out.last_mut().expect("one part").push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds the first unescaped occurrence of `op`.
fn find_op(s: &str, op: &str) -> Option<usize> {
    // Walks characters, not bytes: a selector may hold any UTF-8, and slicing inside a
    // character would panic (in the cache writer, once).
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
            continue;
        }
        if s[i..].starts_with(op) {
            return Some(i);
        }
    }
    None
}

impl FieldSelector {
    /// Parses a field selector.
    ///
    /// # Errors
    /// [`SelectorError`] for a requirement without an operator.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_escaped(selector) {
            let (field, value, negated) = if let Some(i) = find_op(&part, "!=") {
                (&part[..i], &part[i + 2..], true)
            } else if let Some(i) = find_op(&part, "==") {
                (&part[..i], &part[i + 2..], false)
            } else if let Some(i) = find_op(&part, "=") {
                (&part[..i], &part[i + 1..], false)
            } else {
                return Err(SelectorError {
                    selector: selector.to_owned(),
                    reason: "requirement without =, == or !=",
                });
            };
            reqs.push(FieldRequirement {
                field: field.trim().to_owned(),
                value: unescape(value.trim()),
                negated,
            });
        }
        Ok(Self(reqs))
    }

    /// The fields it reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.field.as_str())
    }

    /// Whether the object's fields satisfy every requirement; `field` returns a field's
    /// value (absent fields compare as the empty string, as in the API server).
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let v = field(&r.field).unwrap_or_default();
            (v == r.value) != r.negated
        })
    }

    /// The value a `metadata.name=<x>` requirement pins, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("missing notin (a)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front,back),!missing", true),
            ("app=web,tier=back", false),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        for bad in ["app=web,", "a b", "app in web"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_match_with_escapes_and_negation() {
        let get = |f: &str| match f {
            "spec.nodeName" => Some("edge-a1".to_owned()),
            "metadata.name" => Some("a,b=c".to_owned()),
            _ => None,
        };
        let cases = [
            ("spec.nodeName=edge-a1", true),
            ("spec.nodeName==edge-a1", true),
            ("spec.nodeName!=edge-a1", false),
            ("spec.nodeName=edge-a2", false),
            (r"metadata.name=a\,b\=c", true),
            ("status.phase!=Failed", true),
            ("status.phase=", true),
            ("spec.nodeName=edge-a1,status.phase!=Succeeded", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(get),
                want,
                "{sel}"
            );
        }
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name=n1,x=y")
                .unwrap()
                .pinned_name(),
            Some("n1")
        );
    }
}

#[cfg(test)]
mod non_ascii_tests {
    use super::*;

    #[test]
    fn non_ascii_field_selectors_parse_without_panicking() {
        let s = FieldSelector::parse("metadata.name=é,spec.nodeName!=ノード").unwrap();
        assert_eq!(s.0[0].value, "é");
        assert!(s.0[1].negated);
        assert_eq!(s.0[1].value, "ノード");
        assert!(FieldSelector::parse("é").is_err());
    }
}
