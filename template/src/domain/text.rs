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

/// Refuses a JSON value PostgreSQL's `jsonb` would not store or give back as it was,
/// naming where in `field` it is: a NUL character in a string or key, or a number whose
/// stored form JSON readers cannot read (`jsonb` keeps 1.7976931348623157e308 as its 309
/// digits, beyond the largest double once read back).
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
        Value::Number(number) => check_number(field, number),
        Value::Null | Value::Bool(_) => Ok(()),
    }
}

/// Refuses a number that would not come back from `jsonb`: PostgreSQL stores a number in
/// full positional digits, which is how Rust writes an `f64` too.
fn check_number(field: &str, number: &serde_json::Number) -> Result<(), String> {
    match number.as_f64() {
        Some(float)
            if !number.is_f64()
                || serde_json::from_str::<serde_json::Number>(&format!("{float}")).is_ok() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{field} is a number too large to be read back ({number}): send it as a string"
        )),
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
    fn numbers_must_come_back_from_jsonb() {
        for good in [
            json!(1),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.1),
            json!(1.5e308),
            json!(-1e308),
            json!(5e-324),
        ] {
            assert!(
                check_json("metadata", &json!({"x": good})).is_ok(),
                "{good}"
            );
        }
        for bad in [f64::MAX, f64::MIN, 1.7976931348623157e308] {
            assert_eq!(
                check_json("metadata", &json!({"x": [bad]})).unwrap_err(),
                format!(
                    "metadata.x[0] is a number too large to be read back ({}): send it as a \
                     string",
                    json!(bad)
                )
            );
        }
    }
}
