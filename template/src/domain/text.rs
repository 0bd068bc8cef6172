//! Text that PostgreSQL can store. `text` and `jsonb` refuse the NUL character (U+0000),
//! so every text input is checked at validation (a 400 naming the field) instead of
//! reaching the database (a 500).

/// Refuses `value` if it holds a NUL character, naming `field`.
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        Err(format!(
            "{field} may not contain the NUL character (U+0000)"
        ))
    } else {
        Ok(())
    }
}

/// JSON Schema `pattern` of what [`check_text`] accepts: no NUL.
pub const TEXT_PATTERN: &str = r"^[^\u0000]*$";

/// JSON Schema `pattern` of what [`check_visible`] accepts: no NUL, and a character
/// `str::trim` keeps (not Unicode White_Space, the class below). Schema attributes take
/// only literals, so they repeat it; a test of the OpenAPI document holds them to it.
pub const VISIBLE_PATTERN: &str = r"^[^\u0000]*[^\u0000\u0009-\u000d \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

/// Refuses `value` unless it has 1 to `max` characters as sent, not all white space, and
/// no NUL: a title or a name, stored trimmed.
pub fn check_visible(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(format!(
            "{field} must have 1 to {max} characters, not all white space"
        ));
    }
    check_text(field, value)
}

/// Refuses a JSON value PostgreSQL's `jsonb` would not store, naming where in `field` it
/// is: a NUL character in a string or key. Every number it stores comes back: `jsonb`
/// keeps a double as its full digits (309 of them for 1.7976931348623157e308), which
/// serde_json reads back exactly (its `float_roundtrip` feature; a unit test holds it).
pub fn check_json(field: &str, value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    match value {
        Value::String(text) => check_text(field, text),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(n, item)| check_json(&format!("{field}[{n}]"), item)),
        Value::Object(members) => members.iter().try_for_each(|(key, item)| {
            check_text(&format!("a key in {field}"), key)?;
            check_json(&format!("{field}.{key}"), item)
        }),
        Value::Number(_) | Value::Null | Value::Bool(_) => Ok(()),
    }
}

/// The OpenAPI schema of what [`check_json`] accepts, named `StorableJson` in the
/// document: any JSON value with no NUL character in a string or key. It refers to itself.
pub struct StorableJson;

impl StorableJson {
    /// A JSON object of `StorableJson` members (tenant metadata).
    pub fn object() -> utoipa::openapi::Object {
        use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(TEXT_PATTERN)),
            ))
            .additional_properties(Some(Ref::from_schema_name("StorableJson")))
            .build()
    }
}

impl utoipa::PartialSchema for StorableJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Type};
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new().schema_type(
                    [Type::Null, Type::Boolean, Type::Number]
                        .into_iter()
                        .collect::<utoipa::openapi::schema::SchemaType>(),
                ),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(TEXT_PATTERN)),
            )
            .item(ArrayBuilder::new().items(Ref::from_schema_name("StorableJson")))
            .item(Self::object())
            .description(Some(
                "Any JSON value with no NUL character (U+0000) in a string or key",
            ))
            .into()
    }
}

impl utoipa::ToSchema for StorableJson {}

/// `text` with every NUL character replaced by U+FFFD.
pub fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// `value` with every NUL character in its strings and keys replaced by U+FFFD: what a
/// record of refused input (the audit trail) stores, so that the record is written.
pub fn storable_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(storable_text(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(members) => Value::Object(
            members
                .into_iter()
                .map(|(key, item)| (storable_text(key), storable_json(item)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_refused_wherever_it_hides() {
        assert!(check_text("title", "plain text, ünïcode").is_ok());
        assert_eq!(
            check_text("title", "a\0b").unwrap_err(),
            "title may not contain the NUL character (U+0000)"
        );
        assert!(check_json("metadata", &json!({"plan": "pro", "n": [1, "x"]})).is_ok());
        assert_eq!(
            check_json("metadata", &json!({"k": [1, "a\u{0}"]})).unwrap_err(),
            "metadata.k[1] may not contain the NUL character (U+0000)"
        );
        for bad in [
            json!({"k": "a\u{0}"}),
            json!({"a\u{0}": 1}),
            json!({"k": [{"x": "\u{0}"}]}),
        ] {
            assert!(check_json("metadata", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_visible_pattern_names_exactly_what_trim_removes() {
        // The white space class of VISIBLE_PATTERN, as ranges of code points.
        let class = VISIBLE_PATTERN
            .split("[^\\u0000")
            .nth(2)
            .and_then(|rest| rest.split(']').next())
            .unwrap();
        let mut listed = Vec::new();
        let mut rest = class;
        while !rest.is_empty() {
            let (first, after) = one_char(rest);
            rest = after;
            let last = match rest.strip_prefix('-') {
                Some(after) => {
                    let (last, after) = one_char(after);
                    rest = after;
                    last
                }
                None => first,
            };
            listed.extend(first..=last);
        }
        let trimmed: Vec<char> = (char::MIN..=char::MAX)
            .filter(|c| c.is_whitespace())
            .collect();
        assert_eq!(listed, trimmed);
        assert!(check_visible("title", " \u{3000}\t", 200).is_err());
        assert!(check_visible("title", " a ", 3).is_ok());
        assert!(check_visible("title", " a ", 2).is_err());
        assert!(check_visible("title", "a\0", 200).is_err());
    }

    /// The first character of a regex class body (`\uXXXX` or itself), and the rest.
    fn one_char(text: &str) -> (char, &str) {
        match text.strip_prefix("\\u") {
            Some(hex) => (
                char::from_u32(u32::from_str_radix(&hex[..4], 16).unwrap()).unwrap(),
                &hex[4..],
            ),
            None => {
                let c = text.chars().next().unwrap();
                (c, &text[c.len_utf8()..])
            }
        }
    }

    #[test]
    fn refused_input_is_recorded_without_its_nul_characters() {
        let stored = storable_json(json!({"na\u{0}me": ["a\u{0}", 1, {"k": "\u{0}"}]}));
        assert_eq!(
            stored,
            json!({"na\u{FFFD}me": ["a\u{FFFD}", 1, {"k": "\u{FFFD}"}]})
        );
        assert!(check_json("params", &stored).is_ok());
    }

    #[test]
    fn every_double_comes_back_from_the_digits_jsonb_stores() {
        // jsonb writes a number in full positional digits, as Rust's `{}` does.
        for x in [
            f64::MAX,
            f64::MIN,
            5e-324,
            0.1,
            1e22,
            -1.5e300,
            123_456_789.123_456_79,
        ] {
            let stored = format!("{x}");
            let read: serde_json::Value = serde_json::from_str(&stored).unwrap();
            assert_eq!(read.as_f64(), Some(x), "{stored}");
            assert!(check_json("metadata", &json!({"x": [x]})).is_ok());
        }
    }
}
