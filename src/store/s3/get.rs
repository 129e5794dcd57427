//! GETs: ranged reads into reused buffers, resumed when a body breaks, and the
//! first bytes of an object with its headers.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tracing::{debug, warn};

use super::answer::{answered_range, range_total, to_system_time};
use super::buffers::Body;
use super::{MAX_BODY_RESUMES, S3Store};
use crate::logging::error_chain;
use crate::store::{ObjectHeaders, ObjectInfo, Operation, Pin, StoreError, StoreResult};

/// The operation a GET of `pin` is counted and refused as.
fn operation(pin: Pin<'_>) -> Operation {
    match pin {
        Pin::Current(_) => Operation::GetObject,
        Pin::Version(_) => Operation::GetObjectVersion,
    }
}

impl S3Store {
    /// [`Read::Start`](crate::store::Read::Start): one ranged GET.
    pub(super) async fn fetch_start(
        &self,
        key: &str,
        len: u64,
        pin: Pin<'_>,
    ) -> StoreResult<(ObjectInfo, Bytes, Duration)> {
        let range = 0..len.max(1);
        let (response, first_byte) = self.send_get(key, &range, pin).await?;
        let etag = response.e_tag().unwrap_or_default();
        check_pin(operation(pin), key, pin, etag, response.version_id())?;
        let bad = |detail: String| bad_get(key, detail);
        let expected = answered_range(response.content_range(), &range).map_err(bad)?;
        let size = range_total(response.content_range())
            .filter(|&total| total >= expected)
            .ok_or_else(|| {
                bad(format!(
                    "it answered with Content-Range {:?}, which gives no object size",
                    response.content_range().unwrap_or_default()
                ))
            })?;
        let info = ObjectInfo {
            key: key.to_string(),
            size,
            etag: response.e_tag().unwrap_or_default().to_string(),
            last_modified: to_system_time(response.last_modified()),
            version_id: response.version_id().map(str::to_string),
            headers: Some(object_headers!(response)),
        };
        let mut data = self.buffers.take(expected as usize);
        if let Some(cause) = self
            .read_body(key, response.body, expected, expected, &mut data)
            .await?
        {
            return Err(StoreError::Unreachable {
                op: operation(pin),
                detail: format!("body of {key} broke: {cause}"),
            });
        }
        if (data.len() as u64) < expected {
            return Err(bad(format!(
                "the body ended after {} of the {expected} bytes its Content-Range announced",
                data.len()
            )));
        }
        Ok((info, data.freeze(), first_byte))
    }

    /// [`Read::Range`](crate::store::Read::Range), resuming a body that breaks:
    /// an object read as it is is pinned to the first answer's ETag, so that a
    /// resumed body continues the same version. Returns the bytes and how long
    /// the first answer took to start.
    pub(super) async fn fetch_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Pin<'_>,
    ) -> StoreResult<(Bytes, Duration)> {
        let mut data = self.buffers.take((range.end - range.start) as usize);
        let mut pinned = match pin {
            Pin::Current(etag) => etag.map(str::to_string),
            Pin::Version(_) => None,
        };
        let mut resumes = 0;
        let mut first_byte = None;
        loop {
            let from = range.start + data.len() as u64;
            let this = match pin {
                Pin::Current(_) => Pin::Current(pinned.as_deref()),
                version => version,
            };
            let (etag, broken, started) =
                self.get_once(key, from..range.end, this, &mut data).await?;
            let first_byte = *first_byte.get_or_insert(started);
            if pinned.is_none() && !etag.is_empty() {
                pinned = Some(etag);
            }
            let Some(cause) = broken else {
                debug!(key, start = range.start, len = data.len(), "GET done");
                return Ok((data.freeze(), first_byte));
            };
            resumes += 1;
            if resumes > MAX_BODY_RESUMES {
                return Err(StoreError::Unreachable {
                    op: operation(pin),
                    detail: format!("body of {key} broke {resumes} times; last: {cause}"),
                });
            }
            warn!(
                key,
                received = data.len(),
                cause,
                "GET body broke mid-stream; resuming from the last byte received"
            );
        }
    }

    /// Sends a ranged GET and returns the answer, its body unread, and how long
    /// it took to start.
    async fn send_get(
        &self,
        key: &str,
        range: &Range<u64>,
        pin: Pin<'_>,
    ) -> StoreResult<(GetObjectOutput, Duration)> {
        let started = std::time::Instant::now();
        let (if_match, version_id) = match pin {
            Pin::Current(etag) => (etag, None),
            Pin::Version(id) => (None, Some(id)),
        };
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .set_version_id(version_id.map(str::to_string))
            .send();
        let response = self
            .answer(operation(pin), key, Duration::ZERO, request)
            .await
            .map_err(|e| naming_etag(e, if_match))?;
        Ok((response, started.elapsed()))
    }

    /// One ranged GET, reading the body to the end or to the first error. Returns the
    /// object's ETag, the error that cut the body short and how long the answer
    /// took to start.
    async fn get_once(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Pin<'_>,
        into: &mut Body,
    ) -> StoreResult<(String, Option<String>, Duration)> {
        let (response, first_byte) = self.send_get(key, &range, pin).await?;
        let etag = response.e_tag().unwrap_or_default().to_string();
        check_pin(operation(pin), key, pin, &etag, response.version_id())?;
        let bad = |detail: String| bad_get(key, detail);
        let expected = answered_range(response.content_range(), &range).map_err(bad)?;
        let broken = self
            .read_body(key, response.body, expected, range.end - range.start, into)
            .await?;
        Ok((etag, broken, first_byte))
    }

    /// Reads a GET body of `expected` bytes (as its Content-Range announced)
    /// into `into`, which has room for `room`; returns the error that cut it
    /// short, if one did.
    async fn read_body(
        &self,
        key: &str,
        mut body: ByteStream,
        expected: u64,
        room: u64,
        into: &mut Body,
    ) -> StoreResult<Option<String>> {
        let mut received = 0u64;
        let stall = self.stall_limit();
        let shown = humantime::format_duration(stall);
        // A body silent for a stall period has stalled: it is asked again from
        // the byte it stopped at. And each stall period must bring the least a
        // body may come at (or the rest of it): a server that drips a byte now
        // and then, never silent for long, is cut off all the same.
        let least = (MIN_BODY_RATE as f64 * stall.as_secs_f64()) as u64;
        let mut window = (tokio::time::Instant::now(), 0u64);
        let mut last = window.0;
        loop {
            let next = match last.checked_add(stall) {
                Some(end) => tokio::time::timeout_at(end, body.next()).await,
                None => Ok(body.next().await),
            };
            let Ok(next) = next else {
                return Ok(Some(format!("no data for {shown}")));
            };
            match next {
                Some(Ok(chunk)) => {
                    last = tokio::time::Instant::now();
                    // What the window's stall period had to bring: the least,
                    // or the rest of the body as it stood when it began.
                    let due = least.min(expected.saturating_sub(received - window.1));
                    if last.duration_since(window.0) > stall && window.1 < due {
                        return Err(StoreError::Unreachable {
                            op: Operation::GetObject,
                            detail: format!(
                                "the body of {key} brought {} bytes in {shown}, slower than the \
                                 {} KiB/s s3vol waits for",
                                window.1,
                                MIN_BODY_RATE / 1024
                            ),
                        });
                    }
                    received += chunk.len() as u64;
                    window.1 += chunk.len() as u64;
                    if window.1 >= due {
                        window = (last, 0);
                    }
                    // Checked before keeping it: an endless body must not be
                    // held in memory.
                    if received > expected {
                        return Err(bad_get(
                            key,
                            format!(
                                "the body ran past the {expected} bytes its Content-Range \
                                 announced"
                            ),
                        ));
                    }
                    if !into.extend(&chunk) {
                        return Err(bad_get(
                            key,
                            format!("the body ran past the {room} bytes asked for"),
                        ));
                    }
                }
                Some(Err(e)) => return Ok(Some(error_chain(&e))),
                None => return Ok(None),
            }
        }
    }
}

/// The slowest a GET body may come, in bytes per second, measured over each
/// stall period (a third of `--io-timeout`).
const MIN_BODY_RATE: u64 = 16 * 1024;

/// A [`StoreError::Changed`] that names the ETag a request was pinned to (an
/// answer of 412 does not).
pub(super) fn naming_etag(error: StoreError, if_match: Option<&str>) -> StoreError {
    match error {
        StoreError::Changed { op, key, .. } => StoreError::Changed {
            op,
            key,
            expected_etag: if_match.unwrap_or_default().to_string(),
        },
        other => other,
    }
}

/// Refuses an answer about another object than `pin` asked for: a server
/// that ignored If-Match, or sent another version.
pub(super) fn check_pin(
    op: Operation,
    key: &str,
    pin: Pin<'_>,
    etag: &str,
    version: Option<&str>,
) -> StoreResult<()> {
    let detail = match pin {
        Pin::Current(Some(pinned)) if !etag.is_empty() && etag != pinned => {
            format!("it sent ETag {etag} for a request pinned to ETag {pinned} (If-Match ignored)")
        }
        Pin::Version(wanted) if version.is_some_and(|got| got != wanted) => format!(
            "it sent version {} for a request of version {wanted}",
            version.unwrap_or_default()
        ),
        _ => return Ok(()),
    };
    Err(StoreError::BadAnswer {
        op,
        key: key.to_string(),
        detail,
    })
}

/// A GET answer that cannot be right.
fn bad_get(key: &str, detail: String) -> StoreError {
    StoreError::BadAnswer {
        op: Operation::GetObject,
        key: key.to_string(),
        detail,
    }
}
