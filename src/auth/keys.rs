//! Base credentials that s3vol reads itself: static keys in a file of AWS's
//! credential-process JSON shape (`aws configure export-credentials --format
//! process` writes one), and the choice of where a volume's base credentials
//! come from.
//!
//! A keys file is data, never instructions: unlike an AWS profile file, nothing
//! in it can name a program to run (`credential_process`), another profile
//! (`source_profile`) or a login (`sso_*`), and a value holding a control
//! character is refused rather than read as a second line.

use std::path::Path;

use aws_credential_types::Credentials;

use super::secret::{Secret, read_secret_file_up_to};

/// Where a volume's base credentials come from (a role, if any, is assumed
/// with them).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BaseCredentials {
    /// aws-config's default chain: the environment, the shared config and
    /// credentials files (from this profile), web identity, container and
    /// instance metadata.
    #[default]
    Chain,
    /// The same chain from a named profile.
    Profile(String),
    /// The chain without the shared files: no profile, `credential_process`,
    /// SSO or `source_profile` is ever read or run.
    ChainWithoutSharedFiles,
    /// Keys from a keys file; no shared file is read either.
    Keys(StaticKeys),
}

impl BaseCredentials {
    /// Whether AWS's shared config and credentials files may be read.
    pub fn reads_shared_files(&self) -> bool {
        matches!(self, Self::Chain | Self::Profile(_))
    }
}

/// An access key, its secret and, for temporary keys, the session token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// The most a keys file may hold: a session token is a few KiB at most.
const MAX_KEYS_FILE: u64 = 16 << 10;

/// The fields of a keys file, as AWS's credential-process output names them.
const ACCESS_KEY_ID: &str = "AccessKeyId";
const SECRET_ACCESS_KEY: &str = "SecretAccessKey";
const SESSION_TOKEN: &str = "SessionToken";
const VERSION: &str = "Version";

impl StaticKeys {
    /// Reads the keys file at `path`, which must be its owner's alone, as an
    /// external ID file must; `option` names the option that gave it.
    pub fn read_file(path: &Path, option: &str) -> Result<Self, String> {
        let text = read_secret_file_up_to(path, option, MAX_KEYS_FILE)?;
        Self::parse(text.expose()).map_err(|e| format!("{option} {}: {e}", path.display()))
    }

    /// Parses a keys file. The error names the field at fault, never a value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            // serde_json's message quotes no input, only where it stopped.
            format!(
                "not a JSON object such as {{\"Version\": 1, \"AccessKeyId\": \"...\", \
                 \"SecretAccessKey\": \"...\"}}: {e}"
            )
        })?;
        let Some(object) = value.as_object() else {
            return Err("not a JSON object".into());
        };
        let known = [VERSION, ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN];
        if let Some(name) = object.keys().find(|k| !known.contains(&k.as_str())) {
            let hint = if name == "Expiration" {
                "; keys that expire cannot be renewed from a file: give long-lived keys \
                 and assume a role with them (--role-arn)"
            } else {
                ""
            };
            return Err(format!(
                "field {name:?} is not one s3vol reads; the fields are {}{hint}",
                known.join(", ")
            ));
        }
        match object.get(VERSION) {
            None => {}
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => return Err(format!("{VERSION} must be 1")),
        }
        let field = |name: &str, required: bool| -> Result<Option<String>, String> {
            match object.get(name) {
                None if required => Err(format!("{name} is missing")),
                None => Ok(None),
                Some(serde_json::Value::String(text)) => {
                    check_value(name, text)?;
                    Ok(Some(text.clone()))
                }
                Some(_) => Err(format!("{name} must be a string")),
            }
        };
        Ok(Self {
            access_key_id: field(ACCESS_KEY_ID, true)?.unwrap_or_default(),
            secret_access_key: Secret::new(field(SECRET_ACCESS_KEY, true)?.unwrap_or_default()),
            session_token: field(SESSION_TOKEN, false)?.map(Secret::new),
        })
    }

    /// The keys as a keys file holds them.
    pub fn to_file_text(&self) -> Secret {
        let mut object = serde_json::Map::new();
        object.insert(VERSION.into(), 1.into());
        object.insert(ACCESS_KEY_ID.into(), self.access_key_id.clone().into());
        object.insert(
            SECRET_ACCESS_KEY.into(),
            self.secret_access_key.expose().into(),
        );
        if let Some(token) = &self.session_token {
            object.insert(SESSION_TOKEN.into(), token.expose().into());
        }
        Secret::new(serde_json::Value::Object(object).to_string())
    }

    /// The keys as the SDK takes them.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "s3vol keys file",
        )
    }
}

/// A key's value: not empty, and no control character (a newline would be a
/// second line to whatever reads it as text).
fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{name} holds a control character (a newline or another); give the value alone"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_file_reads_back_what_was_written() {
        let keys = StaticKeys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("secret/key+1"),
            session_token: Some(Secret::new("token==")),
        };
        assert_eq!(StaticKeys::parse(keys.to_file_text().expose()), Ok(keys));
        // What `aws configure export-credentials --format process` prints for
        // long-lived keys.
        let exported = r#"{"Version": 1, "AccessKeyId": "AK", "SecretAccessKey": "SK"}"#;
        let parsed = StaticKeys::parse(exported).unwrap();
        assert_eq!(parsed.access_key_id, "AK");
        assert_eq!(parsed.session_token, None);
    }

    #[test]
    fn a_keys_file_holds_data_never_instructions() {
        let cases = [
            ("[default]\naws_access_key_id = AK\n", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (
                r#"{"AccessKeyId": "AK\ncredential_process = touch /tmp/x", "SecretAccessKey": "hush"}"#,
                "AccessKeyId holds a control character",
            ),
            (
                r#"{"AccessKeyId": "AK", "SecretAccessKey": "hush\u001b[31m"}"#,
                "SecretAccessKey holds a control character",
            ),
            (
                r#"{"AccessKeyId": "AK", "SecretAccessKey": "hush", "SessionToken": "t\r\n"}"#,
                "SessionToken holds a control character",
            ),
            (
                r#"{"AccessKeyId": "AK", "SecretAccessKey": "hush", "credential_process": "id"}"#,
                "\"credential_process\" is not one s3vol reads",
            ),
            (
                r#"{"AccessKeyId": "AK", "SecretAccessKey": "hush", "Expiration": "2026-01-01T00:00:00Z"}"#,
                "assume a role",
            ),
            (r#"{"AccessKeyId": "AK"}"#, "SecretAccessKey is missing"),
            (
                r#"{"AccessKeyId": "", "SecretAccessKey": "hush"}"#,
                "AccessKeyId is empty",
            ),
            (
                r#"{"AccessKeyId": 7, "SecretAccessKey": "hush"}"#,
                "AccessKeyId must be a string",
            ),
            (
                r#"{"Version": 2, "AccessKeyId": "AK", "SecretAccessKey": "hush"}"#,
                "Version must be 1",
            ),
        ];
        for (text, expected) in cases {
            let error = StaticKeys::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains("hush"), "a secret in {error}");
        }
    }

    #[test]
    fn keys_never_format() {
        let keys = StaticKeys {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Secret::new("very-secret-key"),
            session_token: Some(Secret::new("very-secret-token")),
        };
        let shown = format!("{keys:?} {:?}", BaseCredentials::Keys(keys.clone()));
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
