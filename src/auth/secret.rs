//! A string that never prints: secret keys, session tokens, external IDs.

use std::fmt;

/// Holds a secret. `Debug` and `Display` print `***`, so a secret that ends up in a
/// log line, an error message or a `{:?}` of a larger struct stays hidden; the value
/// is reachable only through [`Secret::expose`], which is easy to search for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Options {
        role: String,
        external_id: Secret,
    }

    #[test]
    fn secrets_never_format() {
        let options = Options {
            role: "arn:aws:iam::111122223333:role/r".into(),
            external_id: Secret::new("very-secret-id"),
        };
        let shown = format!("{options:?} {options:#?} {}", options.external_id);
        assert!(!shown.contains("very-secret-id"), "{shown}");
        assert!(shown.contains("***"));
        assert_eq!(options.external_id.expose(), "very-secret-id");
    }
}
