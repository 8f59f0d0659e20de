//! Label and field selectors, parsed and matched the way the API server (Kubernetes 1.20)
//! does, so a list served from the cache holds exactly what the API server would have
//! returned.
//!
//! [`LabelSelector::parse`] accepts exactly what `labels.Parse` accepts and
//! [`FieldSelector::parse`] exactly what `fields.ParseSelector` accepts; `corpus.json`
//! holds the real API server's answers to a few hundred selectors and the tests check
//! both the parsers and the matchers against it (`tools/record_selector_corpus` in the
//! crate's examples records it again). A selector the hub cannot evaluate (one that
//! does not parse, or a field selector on a field the hub does not index for the kind)
//! is left to the API server: the cache never records it as a complete list and never
//! deletes by it.

mod fields;
mod labels;

#[cfg(test)]
mod tests;

pub use fields::{FieldRequirement, FieldSelector};
pub use labels::{LabelRequirement, LabelSelector};

/// A selector string the API server would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

/// Whether the hub can evaluate a list's label and field selectors itself for objects of
/// `kind` (`Pod`, or the list's kind `PodList`): both parse and every field is one the
/// hub indexes for that kind.
pub fn evaluable(label_selector: &str, field_selector: &str, kind: &str) -> bool {
    LabelSelector::parse(label_selector).is_ok()
        && FieldSelector::parse(field_selector).is_ok_and(|f| f.evaluable_for(kind))
}
