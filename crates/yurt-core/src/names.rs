//! Validated identifiers: node and pool names are Kubernetes DNS-1123 labels.
//!
//! A name is checked once, where it enters the program (`FromStr`/`TryFrom`), and
//! carried as a newtype afterwards, so nothing downstream re-validates strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidName {
    /// What kind of name was being parsed (`node name`, `pool name`).
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Checks the DNS-1123 label rules Kubernetes applies to node and pool names.
///
/// # Errors
/// Returns the first rule the value breaks.
pub fn check_dns_label(kind: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            kind,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > 63 {
        return fail("must be at most 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("may contain only lowercase letters, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail("must start and end with a letter or digit");
    }
    Ok(())
}

macro_rules! dns_label_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_dns_label($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_dns_label($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

dns_label_newtype!(
    /// The name of a Kubernetes Node (and of the edge host that runs it).
    NodeName,
    "node name"
);

dns_label_newtype!(
    /// The name of a node pool (`apps.openyurt.io/nodepool` label value).
    PoolName,
    "pool name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "edge-a1", "pool-b", "x0", &"a".repeat(63)] {
            assert_eq!(
                ok.parse::<NodeName>().map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_invalid_labels_with_reason() {
        let cases = [
            ("", "must not be empty"),
            ("Edge", "may contain only lowercase letters, digits and '-'"),
            (
                "edge_1",
                "may contain only lowercase letters, digits and '-'",
            ),
            ("-edge", "must start and end with a letter or digit"),
            ("edge-", "must start and end with a letter or digit"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<PoolName>().unwrap_err();
            assert_eq!(err.reason, reason, "input {input:?}");
            assert_eq!(err.kind, "pool name");
        }
        assert_eq!(
            "a".repeat(64).parse::<NodeName>().unwrap_err().reason,
            "must be at most 63 characters"
        );
    }
}
