//! Why a store call failed, in the words that decide what the filesystem
//! answers, and what S3 said.

use std::fmt;

use super::Operation;

/// The S3 request that failed and what the service said, for logs and messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// S3 error code such as `AccessDenied`; empty when there was no answer.
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl fmt::Display for ServiceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            write!(f, "{}", self.message)?;
        } else if self.message.is_empty() {
            write!(f, "{}", self.code)?;
        } else {
            write!(f, "{}: {}", self.code, self.message)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

/// Why a store call failed. Each variant is a different answer for the user.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {key}: no such key")]
    NotFound { op: Operation, key: String },
    #[error("bucket {bucket} does not exist ({info})")]
    NoSuchBucket { bucket: String, info: ServiceInfo },
    #[error("AccessDenied: {} on {resource} ({info})", op.iam_action())]
    AccessDenied {
        op: Operation,
        resource: String,
        info: ServiceInfo,
    },
    /// The object lies in an archive storage class (S3 Glacier Flexible
    /// Retrieval, Deep Archive, Intelligent-Tiering's archive tiers) and
    /// was not restored: its bytes can be neither read nor copied, whatever
    /// the policy allows, until someone restores it.
    #[error(
        "{op} {key}: the object is archived and must be restored (S3 RestoreObject) before \
         it can be read or changed ({info})"
    )]
    Archived {
        op: Operation,
        key: String,
        info: ServiceInfo,
    },
    /// S3 could not check the request's signature: it does not know the
    /// access key ID, the secret key does not belong to it, or this
    /// machine's clock is too far from S3's. No policy was asked, and no
    /// retry helps.
    #[error("{op}: S3 refused the request's signature ({info}): {}", signature_advice(&info.code))]
    BadSignature { op: Operation, info: ServiceInfo },
    /// The object no longer has the ETag the read was pinned to.
    #[error("{op} {key}: object changed while open (expected ETag {expected_etag})")]
    Changed {
        op: Operation,
        key: String,
        expected_etag: String,
    },
    #[error("{op} {key}: requested range is beyond the end of the object")]
    InvalidRange { op: Operation, key: String },
    /// No answer from the endpoint at all (refused, reset, timed out, DNS).
    #[error("{op}: cannot reach the S3 endpoint: {detail}")]
    Unreachable { op: Operation, detail: String },
    #[error("{op} {key}: {info}")]
    Service {
        op: Operation,
        key: String,
        info: ServiceInfo,
    },
    /// S3 called the credentials expired (or otherwise no longer valid) although
    /// they were current here: a revoked session or a skewed clock.
    #[error("{op}: the credentials were refused as expired ({info})")]
    ExpiredToken { op: Operation, info: ServiceInfo },
    /// No credentials could be loaded or signed with.
    #[error("no usable credentials: {detail}")]
    Credentials { detail: String },
    /// The server sent fewer bytes than the range asked for: the object shrank.
    #[error("{op} {key}: short body: got {got} bytes where {expected} were expected")]
    ShortBody {
        op: Operation,
        key: String,
        expected: u64,
        got: u64,
    },
    /// The server's answer cannot be right: a body longer than the range asked
    /// for, another range or version than asked, a listing that repeats itself
    /// or never ends. Not retried: the same server would say the same.
    #[error("{op} {key}: the server's answer cannot be right: {detail}")]
    BadAnswer {
        op: Operation,
        key: String,
        detail: String,
    },
    /// A background fetch died (panicked or was cancelled).
    #[error("{op}: background task failed: {detail}")]
    Internal { op: Operation, detail: String },
    /// Used by the fault-injecting store and by tests.
    #[cfg(any(test, feature = "testing"))]
    #[error("{op}: injected fault: {detail}")]
    Injected { op: Operation, detail: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether the server refused a condition it does not take (If-Match,
    /// If-None-Match on a write) rather than the request: what it answers
    /// without them is still to be asked.
    pub fn refuses_condition(&self) -> bool {
        matches!(self, StoreError::Service { info, .. }
            if info.code == "NotImplemented" || info.code == "HTTP 501")
    }

    /// The error a copy from `source` (in `bucket`) met, as it concerns the
    /// source too: an archived object to restore is the copy's source, not
    /// the key it was copied to; a denial may be of reading the source.
    pub fn of_copy_from(self, bucket: &str, source: &str) -> Self {
        match self {
            StoreError::Archived { op, info, .. } => StoreError::Archived {
                op,
                key: source.to_string(),
                info,
            },
            StoreError::AccessDenied { op, resource, info } => StoreError::AccessDenied {
                op,
                resource: format!(
                    "{resource}, or s3:GetObject on {}",
                    super::object_arn(bucket, source)
                ),
                info,
            },
            other => other,
        }
    }

    /// Whether the same request may succeed if sent again: no answer at all, or an
    /// answer that says "not now" rather than "no".
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Service { info, .. } => {
                matches!(
                    info.code.as_str(),
                    "InternalError"
                        | "ServiceUnavailable"
                        | "SlowDown"
                        | "RequestTimeout"
                        | "Throttling"
                        | "ThrottlingException"
                        | "TooManyRequests"
                        | "HTTP 429"
                ) || info.code.starts_with("HTTP 5")
            }
            _ => false,
        }
    }

    /// The outcome a request that failed so is counted under (one of
    /// [`OUTCOMES`]).
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::NoSuchBucket { .. } => "no_such_bucket",
            StoreError::AccessDenied { .. } => "access_denied",
            StoreError::Archived { .. } => "archived",
            StoreError::BadSignature { .. } => "bad_signature",
            StoreError::Changed { .. } => "changed",
            StoreError::InvalidRange { .. } => "invalid_range",
            StoreError::Unreachable { .. } => "unreachable",
            StoreError::Service { .. } => "service_error",
            StoreError::ExpiredToken { .. } => "expired_token",
            StoreError::Credentials { .. } => "no_credentials",
            StoreError::ShortBody { .. } | StoreError::BadAnswer { .. } => "bad_answer",
            StoreError::Internal { .. } => "internal",
            #[cfg(any(test, feature = "testing"))]
            StoreError::Injected { .. } => "internal",
        }
    }

    /// Whether the endpoint failed the request (no answer, a server error or
    /// "slow down", an answer that cannot be right), rather than answering it,
    /// even with a refusal.
    pub fn is_endpoint_failure(&self) -> bool {
        self.is_transient()
            || matches!(
                self,
                StoreError::ShortBody { .. } | StoreError::BadAnswer { .. }
            )
    }
}

/// What a request to S3 can come to, as the statistics count them: `ok`, the
/// kind of error ([`StoreError::outcome`]), or `cancelled`, given up by its
/// caller before an answer (a read-ahead no longer wanted).
pub const OUTCOMES: [&str; 15] = [
    "ok",
    "not_found",
    "no_such_bucket",
    "access_denied",
    "archived",
    "bad_signature",
    "changed",
    "invalid_range",
    "unreachable",
    "service_error",
    "expired_token",
    "no_credentials",
    "bad_answer",
    "internal",
    "cancelled",
];

/// What to do about a signature S3 refused with `code`.
fn signature_advice(code: &str) -> &'static str {
    match code {
        "RequestTimeTooSkewed" => {
            "this machine's clock is more than 15 minutes from S3's; set it right (timedatectl, \
             chrony)"
        }
        "InvalidAccessKeyId" => {
            "S3 does not know the access key ID in use; check which credentials are in use \
             (--profile, --role-arn, AWS_* variables) and that they are for this endpoint"
        }
        _ => {
            "the secret access key does not belong to the access key ID in use (or something \
             between here and S3 changed the request); check which credentials are in use \
             (--profile, --role-arn, AWS_* variables)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy refused for its source says so: the archived object to restore
    /// is the source, and a denial may be of reading it.
    #[test]
    fn a_copy_s_error_names_its_source() {
        let info = ServiceInfo::default;
        let archived = StoreError::Archived {
            op: Operation::UploadPartCopy,
            key: "dst".into(),
            info: info(),
        };
        let said = archived.of_copy_from("b", "src").to_string();
        assert!(said.contains("src") && !said.contains("dst"), "{said}");
        let denied = StoreError::AccessDenied {
            op: Operation::CopyObject,
            resource: "arn:aws:s3:::b/dst".into(),
            info: info(),
        };
        let said = denied.of_copy_from("b", "src").to_string();
        assert!(
            said.contains("s3:PutObject on arn:aws:s3:::b/dst"),
            "{said}"
        );
        assert!(
            said.contains("s3:GetObject on arn:aws:s3:::b/src"),
            "{said}"
        );
    }
}
