//! Data keys from KMS: a new one for each object written (GenerateDataKey),
//! unwrapped once per object opened (Decrypt), each bound to its encryption
//! context. The plaintext key is held zeroed-on-drop and never printed.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use zeroize::Zeroizing;

/// A KMS key and the client that reaches it with the volume's credentials.
#[derive(Clone, Debug)]
pub struct Kms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

/// A data key: in clear, and as KMS wrapped it.
pub struct DataKey {
    pub plaintext: Zeroizing<[u8; 32]>,
    pub wrapped: Vec<u8>,
}

/// Why KMS gave no key: its error code and message, or what it sent instead.
#[derive(Debug, thiserror::Error)]
#[error("KMS {operation} with key {key_id}: {reason}")]
pub struct KmsError {
    pub operation: &'static str,
    pub key_id: String,
    /// KMS's error code, when it answered with one.
    pub code: Option<String>,
    /// KMS never answered (not reached, or timed out).
    pub unanswered: bool,
    pub reason: String,
}

impl KmsError {
    /// The credentials may not use the key.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("AccessDeniedException" | "AccessDenied")
        )
    }

    /// What a start-up refused for this error is: a key that is not there, a
    /// KMS that never answered, credentials or a key refused.
    pub fn start_kind(&self) -> crate::startup::Kind {
        use crate::startup::Kind;
        if self.unanswered {
            return Kind::Unreachable;
        }
        match self.code.as_deref() {
            None => Kind::Other,
            Some("NotFoundException") => Kind::NotFound,
            Some(
                "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "IncompleteSignature"
                | "InvalidSignatureException",
            ) => Kind::Denied,
            Some(_) if self.refuses_key() => Kind::Denied,
            Some(_) => Kind::Other,
        }
    }

    /// The key cannot be used for this, by these credentials or at all
    /// (denied, disabled, pending deletion, or not there).
    pub fn refuses_key(&self) -> bool {
        self.is_access_denied()
            || matches!(
                self.code.as_deref(),
                Some("DisabledException" | "KMSInvalidStateException" | "NotFoundException")
            )
    }
}

impl Kms {
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        Kms {
            client,
            key_id: key_id.into(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn error(&self, operation: &'static str, reason: String) -> KmsError {
        KmsError {
            operation,
            key_id: self.key_id.clone(),
            code: None,
            unanswered: false,
            reason,
        }
    }

    /// What KMS answered. A refusal whose body cannot be read (a KMS-compatible
    /// server answering in another format) is still a refusal: HTTP 403.
    fn failed<E>(&self, operation: &'static str, e: &SdkError<E, HttpResponse>) -> KmsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let forbidden = e.raw_response().is_some_and(|r| r.status().as_u16() == 403);
        let code = match e.code() {
            Some(code) => Some(code.to_string()),
            None => forbidden.then(|| "AccessDenied".to_string()),
        };
        let reason = match (e.code(), forbidden) {
            (None, true) => "AccessDenied (HTTP 403)".to_string(),
            _ => explain(e),
        };
        KmsError {
            code,
            unanswered: matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)),
            ..self.error(operation, reason)
        }
    }

    /// A new 256-bit data key bound to `context`.
    pub async fn generate(&self, context: &BTreeMap<String, String>) -> Result<DataKey, KmsError> {
        let answer = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .set_encryption_context(Some(to_hash_map(context)))
            .send()
            .await
            .map_err(|e| self.failed("GenerateDataKey", &e))?;
        let plaintext = answer
            .plaintext()
            .ok_or_else(|| self.error("GenerateDataKey", "the answer has no key".into()))?;
        let wrapped = answer
            .ciphertext_blob()
            .ok_or_else(|| self.error("GenerateDataKey", "the answer has no wrapped key".into()))?;
        Ok(DataKey {
            plaintext: self.key_of("GenerateDataKey", plaintext.as_ref())?,
            wrapped: wrapped.as_ref().to_vec(),
        })
    }

    /// The data key `wrapped` under `context`, unwrapped.
    pub async fn unwrap(
        &self,
        wrapped: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let answer = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
            .set_encryption_context(Some(to_hash_map(context)))
            .send()
            .await
            .map_err(|e| self.failed("Decrypt", &e))?;
        let plaintext = answer
            .plaintext()
            .ok_or_else(|| self.error("Decrypt", "the answer has no key".into()))?;
        self.key_of("Decrypt", plaintext.as_ref())
    }

    fn key_of(
        &self,
        operation: &'static str,
        bytes: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            self.error(
                operation,
                format!("the key is {} bytes, not 32", bytes.len()),
            )
        })?;
        Ok(Zeroizing::new(key))
    }
}

fn to_hash_map(context: &BTreeMap<String, String>) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// KMS's error code and message, never the request (which holds no key, but
/// the wrapped one).
fn explain<E>(e: &E) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => crate::logging::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::Kind;

    fn answered(code: Option<&str>, unanswered: bool) -> KmsError {
        KmsError {
            operation: "GenerateDataKey",
            key_id: "k".into(),
            code: code.map(str::to_string),
            unanswered,
            reason: "r".into(),
        }
    }

    #[test]
    fn a_start_up_failure_on_kms_is_of_the_kind_kms_answered() {
        let cases = [
            (None, true, Kind::Unreachable),
            (Some("NotFoundException"), false, Kind::NotFound),
            (Some("AccessDeniedException"), false, Kind::Denied),
            (Some("DisabledException"), false, Kind::Denied),
            (Some("ExpiredTokenException"), false, Kind::Denied),
            (Some("KMSInternalException"), false, Kind::Other),
            (None, false, Kind::Other),
        ];
        for (code, unanswered, kind) in cases {
            assert_eq!(answered(code, unanswered).start_kind(), kind, "{code:?}");
        }
    }
}
