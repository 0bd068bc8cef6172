//! `TenantIdentifier` and `SqlIdentifier`, and the rules every identifier interpolated into
//! DDL follows (the strategies' own names, `SchemaName` and the database prefix, are built
//! on them in their files).
//!
//! They can hold nothing but `^[a-z][a-z0-9_]*$` and fit PostgreSQL's 63-byte identifier
//! limit, and they are always written double-quoted. Never build an identifier for SQL
//! any other way.

use std::fmt;

/// PostgreSQL truncates identifiers longer than this; we refuse them instead.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// The longest prefix a tenant's storage is named with (`tenant_` + identifier): tenant
/// identifiers are kept short enough for it.
const MAX_STORAGE_PREFIX: usize = 7;

/// A tenant's public identifier (`acme`, `globex_eu`): what clients send and URLs show.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9_]*$", max_length = 56)]
pub struct TenantIdentifier(String);

impl TenantIdentifier {
    /// The longest identifier whose storage name (a 7-byte prefix + it) still fits in 63
    /// bytes.
    pub const MAX_LEN: usize = MAX_IDENTIFIER_BYTES - MAX_STORAGE_PREFIX;

    /// Accepts `^[a-z][a-z0-9_]*$`, at most [`Self::MAX_LEN`] bytes.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("a tenant identifier cannot be empty".into());
        }
        if value.len() > Self::MAX_LEN {
            return Err(format!(
                "a tenant identifier has at most {} bytes",
                Self::MAX_LEN
            ));
        }
        check_identifier_chars(value).map_err(|why| format!("a tenant identifier {why}"))?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantIdentifier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Any other SQL identifier interpolated into DDL or grants: a role or a table name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SqlIdentifier(String);

impl SqlIdentifier {
    /// Accepts `^[a-z][a-z0-9_]*$`, at most 63 bytes.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "an identifier has 1 to {MAX_IDENTIFIER_BYTES} bytes"
            ));
        }
        check_identifier_chars(value).map_err(|why| format!("an identifier {why}"))?;
        Ok(Self(value.to_owned()))
    }

{%- if tenant_databases %}

    /// `prefix` followed by `identifier`: how a tenant's database is named. `prefix` must
    /// be a valid identifier of at most [`MAX_STORAGE_PREFIX`] bytes (`IdentifierPrefix`
    /// checks it), which makes the result one of at most 63 bytes; debug builds check it
    /// again.
    pub(crate) fn prefixed(prefix: &str, identifier: &TenantIdentifier) -> Self {
        let name = format!("{prefix}{identifier}");
        debug_assert!(Self::parse(&name).is_ok(), "{name:?}");
        Self(name)
    }
{%- endif %}

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier double-quoted: `"app"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// `^[a-z][a-z0-9_]*$`, or why not.
fn check_identifier_chars(value: &str) -> Result<(), &'static str> {
    let mut bytes = value.bytes();
    match bytes.next() {
        Some(b'a'..=b'z') => {}
        _ => return Err("must start with a lowercase ASCII letter"),
    }
    if bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')) {
        Ok(())
    } else {
        Err("may contain only lowercase ASCII letters, digits and '_'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["a", "acme", "acme_corp", "t1", "a_1_b"] {
            assert_eq!(TenantIdentifier::parse(ok).map(|t| t.0), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn refuses_injection_case_unicode_and_length() {
        let too_long = "a".repeat(TenantIdentifier::MAX_LEN + 1);
        for bad in [
            "",
            "Acme",
            "1acme",
            "_acme",
            "acme-corp",
            "acme corp",
            "a\"; drop schema public; --",
            "ac\u{e9}me",
            "acme\u{0}",
            too_long.as_str(),
        ] {
            assert!(
                TenantIdentifier::parse(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn sql_identifiers_take_the_same_rules() {
        assert_eq!(
            SqlIdentifier::parse("app_role").unwrap().quoted(),
            "\"app_role\""
        );
        for bad in ["", "App", "a-b", "a\"b", &"a".repeat(64)] {
            assert!(SqlIdentifier::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn valid_identifiers_round_trip(input in "[a-z][a-z0-9_]{0,55}") {
            let id = TenantIdentifier::parse(&input).unwrap();
            prop_assert_eq!(id.as_str(), input.as_str());
        }
    }
}
