//! The closed sets of names the views carry (a node's role, its kind, the
//! topology), as enums serialized as the lower-case strings the JSON has
//! always had. Each compares equal to its string, so `view.role == "primary"`
//! reads as before.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares a name enum: its variants and their strings, with `as_str`,
/// `Display` and comparison with `&str`.
///
/// Each string is taken as a token tree, not a `literal` fragment: utoipa's
/// derive does not read a `#[serde(rename = ...)]` whose value comes in as a
/// `literal` fragment, and the OpenAPI document then listed the variants'
/// Rust names (`"Primary"`) instead of the strings the JSON has.
macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:tt,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The name as the JSON and the pages write it.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

names! {
    /// A node's role in its relationship.
    RoleName {
        /// Serves users and takes writes.
        Primary = "primary",
        /// Holds the replicated copy; can become primary.
        Backup = "backup",
        /// Votes only; never primary.
        Witness = "witness",
        /// In no relationship.
        Standalone = "standalone",
    }
}

names! {
    /// What a node is.
    KindName {
        /// Can be primary or backup.
        Appliance = "appliance",
        /// Votes and stores the log; never primary.
        Witness = "witness",
    }
}

names! {
    /// The shape of a relationship.
    Topology {
        /// Two appliances and a witness.
        PairWitness = "pair+witness",
        /// Two appliances.
        Pair = "pair",
        /// One node alone.
        Standalone = "standalone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_serialize_as_their_strings() {
        for (v, s) in [
            (RoleName::Primary, "primary"),
            (RoleName::Backup, "backup"),
            (RoleName::Witness, "witness"),
            (RoleName::Standalone, "standalone"),
        ] {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<RoleName>(&format!("\"{s}\"")).unwrap(),
                v
            );
            assert_eq!(v, s);
        }
        assert_eq!(
            serde_json::to_string(&Topology::PairWitness).unwrap(),
            "\"pair+witness\""
        );
        assert_eq!(
            serde_json::to_string(&KindName::Appliance).unwrap(),
            "\"appliance\""
        );
    }

    /// The `enum` of a name's schema, as the OpenAPI document lists it.
    fn schema_enum<T: utoipa::PartialSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).unwrap();
        schema["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no enum in {schema}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_document_lists_the_strings_the_json_has() {
        assert_eq!(
            schema_enum::<RoleName>(),
            ["primary", "backup", "witness", "standalone"]
        );
        assert_eq!(schema_enum::<KindName>(), ["appliance", "witness"]);
        assert_eq!(
            schema_enum::<Topology>(),
            ["pair+witness", "pair", "standalone"]
        );
    }
}
