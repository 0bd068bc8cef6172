//! Reading settings: the raw `TENANCY_*` values of one process, with the defaults of every
//! key, and the checks that turn them into typed values. Each feature declares its keys
//! and reads them through a [`Source`] (e.g. `DatabaseSettings::read`); `config.rs`
//! gathers the values and assembles the parts.
//!
//! Every error names the variable to fix and never echoes a secret.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

const PREFIX: &str = "TENANCY_";

/// A setting's key (lowercase, without `TENANCY_`) and its default (`None`: required or
/// optional).
pub type Key = (&'static str, Option<&'static str>);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {message}")]
    Invalid { var: String, message: String },
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: &'static str },
    #[error("configuration file: {0}")]
    File(String),
}

impl ConfigError {
    /// `key`'s value is refused, and why.
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            var: var_name(key),
            message: message.into(),
        }
    }
}

/// `database_pool_size` -> `TENANCY_DATABASE_POOL_SIZE`.
pub fn var_name(key: &str) -> String {
    format!("{PREFIX}{}", key.to_uppercase())
}

/// The values that were set, read with the defaults of the known keys.
pub struct Source {
    values: HashMap<String, String>,
    keys: Vec<&'static [Key]>,
}

impl Source {
    /// `values` by key (lowercase, without `TENANCY_`); `keys`: every key a feature reads.
    pub fn new(values: HashMap<String, String>, keys: Vec<&'static [Key]>) -> Self {
        Self { values, keys }
    }

    /// A source for one feature's tests: `TENANCY_*` pairs over that feature's keys.
    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)], keys: &'static [Key]) -> Self {
        let values = pairs
            .iter()
            .map(|(var, value)| {
                let key = var.strip_prefix(PREFIX).unwrap_or(var).to_lowercase();
                (key, (*value).to_owned())
            })
            .collect();
        Self::new(values, vec![keys])
    }

    fn default_of(&self, key: &str) -> Option<&'static str> {
        self.keys
            .iter()
            .flat_map(|k| k.iter())
            .find(|(k, _)| *k == key)
            .and_then(|(_, d)| *d)
    }

    /// The value of `key`, trimmed, or its default; `None` when neither is there.
    pub fn optional(&self, key: &str) -> Option<String> {
        self.values
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| self.default_of(key).map(str::to_owned))
    }

    /// The value of a key that has a default.
    pub fn get(&self, key: &str) -> String {
        self.optional(key).unwrap_or_default()
    }

    pub fn required(&self, key: &str, hint: &'static str) -> Result<String, ConfigError> {
        self.optional(key).ok_or_else(|| ConfigError::Missing {
            var: var_name(key),
            hint,
        })
    }

    pub fn number<T>(&self, key: &str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let raw = self.get(key);
        let value: T = raw
            .parse()
            .map_err(|_| ConfigError::invalid(key, format!("'{raw}' is not a whole number")))?;
        if value < min || value > max {
            return Err(ConfigError::invalid(
                key,
                format!("{value} is outside {min}..={max}"),
            ));
        }
        Ok(value)
    }

    pub fn seconds(&self, key: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.number(key, min, max).map(Duration::from_secs)
    }

    pub fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key).to_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(ConfigError::invalid(
                key,
                format!("'{other}' is not true or false"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_against_their_key() {
        const KEYS: &[Key] = &[("size", Some("3")), ("flag", None)];
        let source = Source::of(&[("TENANCY_FLAG", "maybe")], KEYS);
        assert_eq!(source.number("size", 1, 5).unwrap(), 3);
        let err = source.number("size", 4, 5).unwrap_err().to_string();
        assert_eq!(err, "TENANCY_SIZE: 3 is outside 4..=5");
        let err = source.boolean("flag").unwrap_err().to_string();
        assert!(err.starts_with("TENANCY_FLAG:"), "{err}");
    }
}
