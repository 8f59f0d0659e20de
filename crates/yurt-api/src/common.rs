//! Types shared by several API groups: string-valued enums that keep unknown values, and
//! the condition status every OpenYurt condition carries.

/// Declares a string-valued enum whose JSON form is a plain string.
///
/// Upstream OpenYurt types these fields as bare strings in the CRD (no `enum` in the
/// schema), so the API server accepts any value. Decoding must accept any value too, or a
/// single odd object would break every list and watch of its kind; an unknown value lands
/// in `Other` and serialises back unchanged. Values known here map to their variant, so
/// construct from text with `From<&str>` rather than building `Other("Edge")` by hand.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this crate does not know, kept exactly as written.
            Other(String),
        }

        impl $name {
            /// The value as written in JSON.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => Self::$variant, )+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match text.as_str() {
                    $( $text => Self::$variant, )+
                    _ => Self::Other(text),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <String as ::serde::Deserialize>::deserialize(deserializer).map(Self::from)
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({ "type": "string" })
            }
        }
    };
}

pub(crate) use string_enum;

string_enum! {
    /// Status of a condition: `True`, `False` or `Unknown`, as in core/v1 `ConditionStatus`.
    pub enum ConditionStatus {
        /// The condition holds.
        True => "True",
        /// The condition does not hold.
        False => "False",
        /// The controller cannot tell.
        Unknown => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_enum_keeps_unknown_values_and_maps_known_ones() {
        let known: ConditionStatus = serde_json::from_str("\"True\"").unwrap();
        assert_eq!(known, ConditionStatus::True);
        let odd: ConditionStatus = serde_json::from_str("\"Maybe\"").unwrap();
        assert_eq!(odd, ConditionStatus::Other("Maybe".into()));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"Maybe\"");
        assert_eq!(ConditionStatus::from("Unknown"), ConditionStatus::Unknown);
        assert_eq!(ConditionStatus::False.to_string(), "False");
    }
}
