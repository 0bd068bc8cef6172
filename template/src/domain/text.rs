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

/// Refuses a JSON value with a NUL character in any string or key, naming `field`.
pub fn check_json(field: &str, value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let clean = match value {
        Value::String(text) => !text.contains('\0'),
        Value::Array(items) => items.iter().all(|item| check_json(field, item).is_ok()),
        Value::Object(members) => members
            .iter()
            .all(|(key, item)| !key.contains('\0') && check_json(field, item).is_ok()),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    };
    if clean {
        Ok(())
    } else {
        Err(format!(
            "{field} may not contain the NUL character (U+0000)"
        ))
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
        for bad in [
            json!({"k": "a\u{0}"}),
            json!({"a\u{0}": 1}),
            json!({"k": [{"x": "\u{0}"}]}),
        ] {
            assert!(check_json("metadata", &bad).is_err(), "{bad}");
        }
    }
}
