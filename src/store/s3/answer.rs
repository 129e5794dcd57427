//! How S3's answers are read: an SDK error becomes the [`StoreError`] that says
//! what happened, a ranged GET's Content-Range is held to what was asked, and
//! listed keys are decoded.

use std::ops::Range;
use std::time::SystemTime;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::EncodingType;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::logging::error_chain;
use crate::store::{Operation, ServiceInfo, StoreError, bucket_arn, object_arn};

/// The store error for an SDK error: what S3 said, in the words that decide what
/// the filesystem answers.
pub(super) fn store_error<E>(
    bucket: &str,
    op: Operation,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let request_id = err.raw_response().and_then(|r| {
        r.headers()
            .get("x-amz-request-id")
            .or_else(|| r.headers().get("x-amzn-requestid"))
            .map(str::to_string)
    });
    let (code, message) = match &err {
        SdkError::ServiceError(e) => (
            e.err().code().unwrap_or_default().to_string(),
            e.err().message().unwrap_or_default().to_string(),
        ),
        _ => (String::new(), String::new()),
    };
    // A response error is an answer that broke off (the connection reset while
    // its body arrived) or could not be read: no answer, as far as S3 goes.
    if matches!(
        err,
        SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ConstructionFailure(_)
            | SdkError::ResponseError(_)
    ) {
        let detail = error_chain(&err);
        if detail.contains("credential") || detail.contains("identity") {
            return StoreError::Credentials { detail };
        }
        return StoreError::Unreachable { op, detail };
    }
    let info = ServiceInfo {
        code: if code.is_empty() {
            status.map(|s| format!("HTTP {s}")).unwrap_or_default()
        } else {
            code.clone()
        },
        message: if message.is_empty() && code.is_empty() {
            error_chain(&err)
        } else {
            message
        },
        request_id,
    };
    service_error(bucket, op, key, &code, status, info)
}

/// The store error for an answer of HTTP `status` with no body (as every
/// answer to a HEAD is): what S3 said is its status alone.
pub(super) fn bodiless_error(
    bucket: &str,
    op: Operation,
    key: &str,
    status: u16,
    request_id: Option<String>,
) -> StoreError {
    let info = ServiceInfo {
        code: format!("HTTP {status}"),
        message: format!("HTTP {status} with no body"),
        request_id,
    };
    service_error(bucket, op, key, "", Some(status), info)
}

/// The store error for S3's answer with error `code` (empty when it gave
/// none) and HTTP `status`.
pub(crate) fn service_error(
    bucket: &str,
    op: Operation,
    key: &str,
    code: &str,
    status: Option<u16>,
    info: ServiceInfo,
) -> StoreError {
    let key = key.to_string();
    match (code, status) {
        ("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired", _) => {
            StoreError::ExpiredToken { op, info }
        }
        ("NoSuchBucket", _) => StoreError::NoSuchBucket {
            bucket: bucket.to_string(),
            info,
        },
        ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => StoreError::NotFound { op, key },
        // 403 too, and no policy was asked: the signature did not check out.
        ("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "RequestTimeTooSkewed", _) => {
            StoreError::BadSignature { op, info }
        }
        // 403 too, and no denial: a GET or a copy of an object not restored
        // from an archive storage class.
        ("InvalidObjectState" | "ObjectNotInActiveTierError", _) => {
            StoreError::Archived { op, key, info }
        }
        ("AccessDenied" | "Forbidden", _) | (_, Some(403)) => StoreError::AccessDenied {
            op,
            resource: match op {
                Operation::ListObjectsV2 => bucket_arn(bucket),
                _ => object_arn(bucket, &key),
            },
            info,
        },
        ("PreconditionFailed", _) | (_, Some(412)) => StoreError::Changed {
            op,
            key,
            expected_etag: String::new(),
        },
        ("InvalidRange", _) | (_, Some(416)) => StoreError::InvalidRange { op, key },
        _ => StoreError::Service { op, key, info },
    }
}

/// How many bytes the answer to a GET of bytes `asked` holds, from its
/// Content-Range: it must start where asked and end no later (S3 ends it early
/// at the end of the object). An answer without one is the whole object, not
/// the range.
pub(super) fn answered_range(
    content_range: Option<&str>,
    asked: &Range<u64>,
) -> Result<u64, String> {
    let Some(header) = content_range else {
        return Err(format!(
            "it answered a GET of bytes {}-{} without a Content-Range (the whole object?)",
            asked.start,
            asked.end - 1
        ));
    };
    let parsed = header
        .trim()
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(span, _total)| span.split_once('-'))
        .and_then(|(from, to)| Some((from.parse::<u64>().ok()?, to.parse::<u64>().ok()?)));
    match parsed {
        Some((from, to)) if from == asked.start && to >= from && to < asked.end => {
            Ok(to - from + 1)
        }
        _ => Err(format!(
            "it answered a GET of bytes {}-{} with Content-Range {header:?}",
            asked.start,
            asked.end - 1
        )),
    }
}

/// The object's size a Content-Range gives after its `/`; `None` when it is
/// missing, `*` or not a number.
pub(super) fn range_total(content_range: Option<&str>) -> Option<u64> {
    content_range?.trim().rsplit_once('/')?.1.parse().ok()
}

/// A key as a listing with `encoding-type=url` gives it. S3 lists in XML 1.0,
/// which cannot carry control characters: a key holding one would make the
/// whole answer unreadable, so listings ask for URL-encoded keys. AWS writes a
/// space as `+` and every literal `+` as `%2B`, so `+` always means a space.
pub(super) fn url_decoded(encoded: &str) -> String {
    if !encoded.contains(['%', '+']) {
        return encoded.to_string();
    }
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// How to read the keys of a listing: URL-decoded if the server says it encoded
/// them (not every S3-compatible server honours `encoding-type`).
pub(super) fn decoder(encoding: Option<&EncodingType>) -> fn(&str) -> String {
    match encoding {
        Some(EncodingType::Url) => url_decoded,
        _ => str::to_string,
    }
}

pub(super) fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archived_object_and_a_bad_signature_are_told_from_a_denial() {
        let said = |code: &str| {
            let info = ServiceInfo {
                code: code.into(),
                ..Default::default()
            };
            service_error("b", Operation::CopyObject, "k", code, Some(403), info)
        };
        for code in ["InvalidObjectState", "ObjectNotInActiveTierError"] {
            let e = said(code);
            assert!(matches!(e, StoreError::Archived { .. }), "{code}: {e:?}");
            assert!(e.to_string().contains("restored"), "{e}");
            assert!(!e.is_transient());
        }
        for code in [
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "RequestTimeTooSkewed",
        ] {
            let e = said(code);
            assert!(matches!(e, StoreError::BadSignature { .. }), "{code}");
            assert!(!e.to_string().contains("policy"), "{e}");
        }
        assert!(matches!(
            said("AccessDenied"),
            StoreError::AccessDenied { .. }
        ));
        assert!(matches!(said(""), StoreError::AccessDenied { .. }));
    }

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(url_decoded("a/b%20c+d%2Be%01%0A"), "a/b c d+e\u{1}\n");
        assert_eq!(url_decoded("%C3%A9t%C3%A9"), "été");
        assert_eq!(url_decoded("plain/key.txt"), "plain/key.txt");
    }

    #[test]
    fn a_ranged_answer_must_be_the_range_asked_for() {
        assert_eq!(
            answered_range(Some("bytes 100-199/1000"), &(100..200)),
            Ok(100)
        );
        // S3 ends a range that runs past the object at its end.
        assert_eq!(
            answered_range(Some("bytes 900-999/1000"), &(900..2000)),
            Ok(100)
        );
        for wrong in [
            None,
            Some("bytes 101-199/1000"),
            Some("bytes 100-200/1000"),
            Some("bytes */1000"),
            Some("100-199"),
        ] {
            let error = answered_range(wrong, &(100..200)).unwrap_err();
            assert!(error.contains("bytes 100-199"), "{wrong:?}: {error}");
        }
    }
}
