//! Field selectors with the grammar of the API server's `fields.ParseSelector`
//! (Kubernetes 1.20).
//!
//! Terms are separated by commas not preceded by a backslash; empty terms are skipped. A
//! term splits at the first `!=`, `==` or `=` (nothing is trimmed, and a backslash does
//! not protect an operator in the field name). In the value, `\\`, `\,` and `\=` stand
//! for `\`, `,` and `=`; any other backslash sequence, a trailing backslash or a bare `=`
//! is an error. A term with an empty field and an empty value selects everything and is
//! dropped. Values may hold any character.

use std::fmt;

use super::SelectorError;

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path (`metadata.name`, `spec.nodeName`).
    pub field: String,
    /// Value (unescaped).
    pub value: String,
    /// `!=` instead of `=`.
    pub negated: bool,
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.negated { "!=" } else { "=" };
        write!(f, "{}{op}{}", self.field, escape_value(&self.value))
    }
}

/// A parsed field selector (all requirements must hold; empty matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// The fields the hub can evaluate for objects of `kind` (an object kind such as `Pod`,
/// or the kind of its list, `PodList`): the metadata it indexes and the kind's
/// selectable fields.
fn hub_knows(kind: &str, field: &str) -> bool {
    let kind = kind.strip_suffix("List").unwrap_or(kind);
    if (kind, field) == ("Node", "spec.unschedulable") {
        // The API server reads an absent `spec.unschedulable` as "false"; the codec
        // indexes only a value the object holds, so an absent one would compare as "".
        return false;
    }
    matches!(field, "metadata.name" | "metadata.namespace")
        || crate::codec::selectable_fields(kind).contains(&field)
}

impl FieldSelector {
    /// Parses a field selector exactly as the API server's `fields.ParseSelector` does.
    /// Which fields a kind supports is checked apart from this, by
    /// [`FieldSelector::evaluable_for`].
    ///
    /// # Errors
    /// [`SelectorError`] for every selector `fields.ParseSelector` rejects.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: selector.to_owned(),
            reason,
        };
        let mut reqs = Vec::new();
        for term in split_terms(selector) {
            if term.is_empty() {
                continue;
            }
            let Some((field, op, raw_value)) = split_term(term) else {
                return Err(err(format!("can't understand '{term}'")));
            };
            let value = unescape_value(raw_value).map_err(err)?;
            if field.is_empty() && value.is_empty() {
                continue;
            }
            reqs.push(FieldRequirement {
                field: field.to_owned(),
                value,
                negated: op == "!=",
            });
        }
        Ok(Self(reqs))
    }

    /// The fields it reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.field.as_str())
    }

    /// Whether the hub can evaluate every requirement on objects of `kind` (`Pod` or
    /// `PodList`). A field the hub does not index (one the API server accepts, such as
    /// `status.replicas` of ReplicaSets, or one it rejects) makes the selector one the
    /// hub must leave to the API server.
    pub fn evaluable_for(&self, kind: &str) -> bool {
        self.fields().all(|f| hub_knows(kind, f))
    }

    /// Whether the object's fields satisfy every requirement; `field` returns a field's
    /// value (absent fields compare as the empty string, as in the API server). Only
    /// meaningful when [`FieldSelector::evaluable_for`] holds for the object's kind.
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

impl fmt::Display for FieldSelector {
    /// The selector in a form [`FieldSelector::parse`] reads back to the same requirements
    /// (for field names without `=`, `!`, `,` and `\`, which no real field has).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Escapes `\`, `,` and `=` in a value.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits at commas that do not follow a backslash (the character after a backslash is
/// skipped, whatever it is). The empty selector has no terms.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at the first character where `!=`, `==` or `=` starts (tried in that
/// order), into field, operator and raw value.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    // Walks characters, not bytes: a selector may hold any UTF-8, and slicing inside a
    // character would panic (in the cache writer, once).
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        ["!=", "==", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .map(|op| (&term[..i], op, &rest[op.len()..]))
    })
}

/// Undoes [`escape_value`]; rejects other escapes and unescaped `,` or `=`.
fn unescape_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                Some(n) => return Err(format!("invalid escape sequence: \\{n}")),
                None => return Err("invalid escape sequence: \\".to_owned()),
            },
            ',' | '=' => return Err(format!("unescaped character in value: {c:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}
