//! `TenantIdentifier` and `SchemaName`: the only strings that may be interpolated into DDL.
//!
//! Both can hold nothing but `^[a-z][a-z0-9_]*$` and fit PostgreSQL's 63-byte identifier
//! limit, and both are always written double-quoted. Never build an identifier for SQL
//! any other way.

use std::fmt;

/// PostgreSQL truncates identifiers longer than this; we refuse them instead.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Every tenant schema starts with this, so no tenant can ever name `public` or `tenancy`.
const SCHEMA_PREFIX: &str = "tenant_";

/// A tenant's public identifier (`acme`, `globex_eu`): what clients send and URLs show.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantIdentifier(String);

impl TenantIdentifier {
    /// The longest identifier whose schema name still fits in 63 bytes.
    pub const MAX_LEN: usize = MAX_IDENTIFIER_BYTES - SCHEMA_PREFIX.len();

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

/// A PostgreSQL schema name that is safe to interpolate (double-quoted) into DDL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

impl SchemaName {
    /// The schema that holds a tenant's tables: `tenant_<identifier>`.
    pub fn for_tenant(identifier: &TenantIdentifier) -> Self {
        Self(format!("{SCHEMA_PREFIX}{identifier}"))
    }

    /// Accepts `^[a-z][a-z0-9_]*$`, at most 63 bytes.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "a schema name has 1 to {MAX_IDENTIFIER_BYTES} bytes"
            ));
        }
        check_identifier_chars(value).map_err(|why| format!("a schema name {why}"))?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name double-quoted for DDL: `"tenant_acme"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A short prefix (at most 7 bytes, like `tenant_`) that names a tenant's storage when
/// put before its identifier: the result always fits PostgreSQL's 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifierPrefix(String);

impl IdentifierPrefix {
    pub const MAX_LEN: usize = SCHEMA_PREFIX.len();

    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(format!("a prefix has 1 to {} bytes", Self::MAX_LEN));
        }
        check_identifier_chars(value).map_err(|why| format!("a prefix {why}"))?;
        Ok(Self(value.to_owned()))
    }

    /// `<prefix><identifier>`, a safe identifier by construction.
    pub fn name(&self, identifier: &TenantIdentifier) -> SqlIdentifier {
        SqlIdentifier(format!("{}{}", self.0, identifier))
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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier double-quoted: `"app"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

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
    fn longest_identifier_gives_a_63_byte_schema() {
        let longest = TenantIdentifier::parse(&"z".repeat(TenantIdentifier::MAX_LEN)).unwrap();
        assert_eq!(SchemaName::for_tenant(&longest).as_str().len(), 63);
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

    #[test]
    fn prefixed_names_fit_in_63_bytes() {
        let prefix = IdentifierPrefix::parse("tenant_").unwrap();
        let longest = TenantIdentifier::parse(&"z".repeat(TenantIdentifier::MAX_LEN)).unwrap();
        let name = prefix.name(&longest);
        assert_eq!(name.as_str().len(), 63);
        assert!(SqlIdentifier::parse(name.as_str()).is_ok());
        for bad in ["", "tenants_", "T_", "1_", "a-"] {
            assert!(IdentifierPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schema_names_are_quoted() {
        let id = TenantIdentifier::parse("acme").unwrap();
        assert_eq!(SchemaName::for_tenant(&id).quoted(), "\"tenant_acme\"");
    }

    proptest! {
        #[test]
        fn whatever_parses_is_safe_to_quote(input in "\\PC{0,80}") {
            if let Ok(id) = TenantIdentifier::parse(&input) {
                let schema = SchemaName::for_tenant(&id);
                prop_assert!(schema.as_str().len() <= 63);
                prop_assert!(schema.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                prop_assert!(SchemaName::parse(schema.as_str()).is_ok());
            }
        }

        #[test]
        fn valid_identifiers_round_trip(input in "[a-z][a-z0-9_]{0,55}") {
            let id = TenantIdentifier::parse(&input).unwrap();
            prop_assert_eq!(id.as_str(), input.as_str());
        }
    }
}
