//! A wrapper that retries requests that failed for a reason that may pass: the
//! endpoint could not be reached, a connection broke or stalled, or S3 answered
//! 500, 503 SlowDown or another "try again" code.
//!
//! Retries are bounded in time rather than in count: a request is sent again, after
//! an exponential backoff with full jitter (so many clients that failed together do
//! not come back together), until it succeeds, fails for a reason that will not
//! pass (AccessDenied, NoSuchKey, a changed ETag, ...), or `--io-timeout` has passed
//! since the first attempt. Then the last error stands and the filesystem answers
//! EIO. A server that is down therefore costs each operation at most the timeout,
//! never a hang, and the first operation after it returns succeeds.
//!
//! Every request s3vol makes is safe to send twice, which is what allows this:
//! - reads (HEAD, GET, LIST, ListMultipartUploads) change nothing;
//! - PutObject, UploadPart, CopyObject and UploadPartCopy write the same bytes to
//!   the same place again;
//! - DeleteObject of a key already deleted succeeds, and AbortMultipartUpload of
//!   an upload already gone is treated as done;
//! - CompleteMultipartUpload of an upload that the lost first answer had already
//!   completed answers NoSuchUpload: the object is then looked up, and the upload
//!   counts as done when its ETag is the one these parts make;
//! - CreateMultipartUpload sent twice leaves an empty, unused upload behind; it
//!   holds no data and `s3vol cleanup` lists and aborts it.
//!
//! A request S3 refused (AccessDenied, NoSuchKey, PreconditionFailed, InvalidPart,
//! ...) is never repeated: the same request would get the same answer. Of the 4xx
//! answers only 408/RequestTimeout and 429 mean "try again".

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    ObjectStore, Operation, Presign, PresignedUrl, Request, Response, StoreError, StoreResult,
    multipart_etag,
};

/// How long and how often a failing request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No new attempt starts later than this after the first, not counting the
    /// time attempts spent sending data (up to [`transfer_allowance`](super::transfer_allowance) each).
    pub deadline: Duration,
    /// The backoff cap of the first retry; it doubles with each retry.
    pub first_backoff: Duration,
    /// The backoff never exceeds this, so a server that comes back is noticed soon.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Retries for `deadline`, starting at 50 ms (a dropped connection is usually
    /// fine at once) and capped at 2 s (so an outage that ends is seen within 2 s).
    pub fn within(deadline: Duration) -> Self {
        Self {
            deadline,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// How long a request may stay silent before it is abandoned and sent again: a
    /// third of the deadline, so a stalled attempt still leaves time for two more.
    pub fn stall_timeout(&self) -> Duration {
        self.deadline / 3
    }

    /// The wait before retry number `retry` (1-based): uniformly random between
    /// zero and the capped exponential bound ("full jitter").
    fn backoff(&self, retry: u32) -> Duration {
        let bound = self
            .first_backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        bound.mul_f64(fastrand::f64())
    }
}

pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline passes, not
    /// counting up to `transfer` (the time the request's data may take to send) of
    /// each attempt.
    /// `settle` sees each error of an attempt after the first (with the first
    /// attempt's error known to have been transient) and may turn it into success:
    /// the answer to a repeated request that the first one had already carried out.
    async fn call<'a, T, F, Fut, S, SFut>(
        &'a self,
        op: Operation,
        transfer: Duration,
        call: F,
        settle: S,
    ) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StoreResult<T>> + 'a,
        S: Fn(StoreError) -> SFut,
        SFut: Future<Output = StoreResult<T>> + 'a,
    {
        let start = Instant::now();
        // Time spent sending the request's data (up to what it needs at the
        // slowest rate waited for) does not count against the deadline: a large
        // part whose attempts stalled twice must not fail where a small request
        // would have had time for three more. Attempts that fail at once excuse
        // nothing, so an outage still ends the call after the deadline.
        let mut excused = Duration::ZERO;
        let mut retry = 0;
        loop {
            let attempt = Instant::now();
            let result = match call().await {
                Err(err) if retry > 0 => settle(err).await,
                other => other,
            };
            excused += attempt.elapsed().min(transfer);
            let err = match result {
                Ok(value) => {
                    if retry > 0 {
                        debug!(%op, retries = retry, "succeeded after retrying");
                    }
                    return Ok(value);
                }
                Err(err) if err.is_transient() => err,
                Err(err) => return Err(err),
            };
            retry += 1;
            let wait = self.policy.backoff(retry);
            if start.elapsed().saturating_sub(excused) + wait > self.policy.deadline {
                warn!(
                    %op,
                    attempts = retry,
                    seconds = start.elapsed().as_secs_f64(),
                    "giving up: {err:#}"
                );
                return Err(err);
            }
            debug!(%op, retry, wait_ms = wait.as_millis() as u64, "retrying: {err:#}");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The answer to a repeated `request` whose repeat failed with `err`, when an
/// earlier attempt had already carried it out and only its answer was lost.
async fn settle(
    inner: &dyn ObjectStore,
    request: &Request<'_>,
    err: StoreError,
) -> StoreResult<Response> {
    // Only a lost answer explains a missing upload on a repeat, or, for a
    // completion conditional on the version it replaces, that version gone.
    let conditional = matches!(
        request,
        Request::CompleteUpload {
            if_match: Some(_),
            ..
        }
    );
    let explained = match err {
        StoreError::NotFound { .. } => true,
        StoreError::Changed { .. } => conditional,
        _ => false,
    };
    if !explained {
        return Err(err);
    }
    match request {
        Request::AbortUpload { .. } => Ok(Response::Done),
        Request::CompleteUpload {
            key,
            upload_id,
            parts,
            ..
        } => {
            let expected = multipart_etag(parts);
            match inner.head_object(key).await {
                Ok(info) if Some(&info.etag) == expected.as_ref() => {
                    debug!(key, upload_id, "an earlier attempt completed the upload");
                    Ok(Response::ETag(info.etag))
                }
                _ => Err(err),
            }
        }
        _ => Err(err),
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        let (op, transfer) = (request.operation(), request.transfer_allowance());
        self.call(
            op,
            transfer,
            || self.inner.send(request.clone()),
            |err| settle(self.inner.as_ref(), &request, err),
        )
        .await
    }

    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        self.inner.presign(key, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;
    use crate::store::{UploadedPart, transfer_allowance};
    use bytes::Bytes;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn setup() -> (Arc<MemoryStore>, Arc<FaultyStore>, RetryingStore) {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let store = RetryingStore::new(faulty.clone(), RetryPolicy::within(DEADLINE));
        (memory, faulty, store)
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let policy = RetryPolicy::within(DEADLINE);
        for retry in 1..30 {
            let bound = (policy.first_backoff * (1 << (retry - 1).min(16))).min(policy.max_backoff);
            let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(waits.iter().all(|w| *w <= bound), "retry {retry}");
            // Jittered: not all the same.
            assert!(waits.iter().any(|w| *w != waits[0]), "retry {retry}");
        }
        assert_eq!(policy.stall_timeout(), DEADLINE / 3);
    }

    #[test]
    fn transient_errors_are_told_from_final_ones() {
        let service = |code: &str| StoreError::Service {
            op: Operation::GetObject,
            key: "k".into(),
            info: crate::store::ServiceInfo {
                code: code.into(),
                ..Default::default()
            },
        };
        for code in [
            "SlowDown",
            "InternalError",
            "ServiceUnavailable",
            "HTTP 502",
            "HTTP 429",
        ] {
            assert!(service(code).is_transient(), "{code}");
        }
        for code in ["InvalidPart", "MalformedXML", "HTTP 400", "EntityTooLarge"] {
            assert!(!service(code).is_transient(), "{code}");
        }
        let unreachable = StoreError::Unreachable {
            op: Operation::PutObject,
            detail: "reset".into(),
        };
        assert!(unreachable.is_transient());
        let gone = StoreError::NotFound {
            op: Operation::HeadObject,
            key: "k".into(),
        };
        assert!(!gone.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let (memory, faulty, store) = setup();
        faulty.fail_nth(Operation::PutObject, 1, Fault::SlowDown);
        faulty.fail_nth(Operation::PutObject, 2, Fault::Unreachable);
        store
            .put_object("k", Bytes::from_static(b"v"), &Default::default())
            .await
            .unwrap();
        assert_eq!(memory.get("k").unwrap(), "v");
        assert_eq!(memory.count_calls(Operation::PutObject), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_not_retried() {
        let (memory, faulty, store) = setup();
        faulty.fail_nth(Operation::PutObject, 1, Fault::AccessDenied);
        let err = store
            .put_object("k", Bytes::from_static(b"v"), &Default::default())
            .await;
        assert!(matches!(err, Err(StoreError::AccessDenied { .. })));
        faulty.fail_nth(Operation::GetObject, 1, Fault::Error);
        memory.put("k", "v");
        // Only the first call of each fails: a retry would have succeeded.
        assert!(store.get_range("k", 0..1, None).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_fails_the_call_after_the_deadline() {
        let (_memory, faulty, store) = setup();
        faulty.fail_all(Operation::HeadObject, Fault::Unreachable);
        let start = Instant::now();
        let err = store.head_object("k").await;
        let took = start.elapsed();
        assert!(
            matches!(err, Err(StoreError::Unreachable { .. })),
            "{err:?}"
        );
        assert!(took <= DEADLINE, "{took:?}");
        // It kept trying to the end: the last wait ended within one backoff cap.
        assert!(
            took >= DEADLINE - 2 * RetryPolicy::within(DEADLINE).max_backoff,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_sending_data_does_not_count_against_the_deadline() {
        let (_memory, faulty, store) = setup();
        // Every attempt stalls for a third of the deadline after the time an
        // 8 MiB body may take, then fails.
        let size = 8 << 20;
        let stalled = transfer_allowance(size) + DEADLINE / 3;
        faulty.fail_all(Operation::UploadPart, Fault::Delay(stalled));
        faulty.fail_all(Operation::UploadPart, Fault::Unreachable);
        let start = Instant::now();
        let err = store
            .upload_part("k", "id", 1, Bytes::from(vec![0u8; size as usize]))
            .await;
        assert!(matches!(err, Err(StoreError::Unreachable { .. })));
        // Three attempts: each costs a third of the deadline once its sending
        // time is excused.
        let took = start.elapsed();
        assert!(took >= 3 * stalled, "{took:?}");
        assert!(took < 4 * stalled, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_to_complete_is_recognised_by_the_etag() {
        let (memory, faulty, store) = setup();
        let id = store
            .create_multipart_upload("big", &Default::default())
            .await
            .unwrap();
        let body = Bytes::from(vec![7u8; 5 << 20]);
        let parts = [
            UploadedPart {
                number: 1,
                etag: store
                    .upload_part("big", &id, 1, body.clone())
                    .await
                    .unwrap(),
            },
            UploadedPart {
                number: 2,
                etag: store.upload_part("big", &id, 2, body).await.unwrap(),
            },
        ];
        faulty.fail_nth(Operation::CompleteMultipartUpload, 1, Fault::LostAnswer);
        let etag = store
            .complete_multipart_upload("big", &id, &parts)
            .await
            .unwrap();
        assert_eq!(Some(etag), multipart_etag(&parts));
        assert_eq!(memory.get("big").unwrap().len(), 10 << 20);
        // Two attempts reached the store: the one that completed and the repeat.
        assert_eq!(memory.count_calls(Operation::CompleteMultipartUpload), 2);

        // A missing upload on a first attempt is an error, not a success.
        let err = store.complete_multipart_upload("big", &id, &parts).await;
        assert!(matches!(err, Err(StoreError::NotFound { .. })), "{err:?}");
    }

    /// A multipart upload of `big` started, with one part of 5 MiB of
    /// `byte` uploaded: its ID and parts.
    async fn an_upload_of_big(store: &RetryingStore, byte: u8) -> (String, [UploadedPart; 1]) {
        let id = store
            .create_multipart_upload("big", &Default::default())
            .await
            .unwrap();
        let body = Bytes::from(vec![byte; 5 << 20]);
        let etag = store.upload_part("big", &id, 1, body).await.unwrap();
        (id, [UploadedPart { number: 1, etag }])
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_to_a_conditional_complete_is_recognised_by_the_etag() {
        let (memory, faulty, store) = setup();
        memory.put("big", "old");
        let old = memory.etag("big").unwrap();
        let (id, parts) = an_upload_of_big(&store, 7).await;
        faulty.fail_nth(Operation::CompleteMultipartUpload, 1, Fault::LostAnswer);
        // The repeat finds the version it was conditional on gone: made by
        // the first attempt, as the ETag shows.
        let etag = store
            .complete_multipart_upload_over("big", &id, &parts, &old)
            .await
            .unwrap();
        assert_eq!(Some(etag), multipart_etag(&parts));
        assert_eq!(memory.count_calls(Operation::CompleteMultipartUpload), 2);

        // A version another client made is a failure, whatever the repeat.
        let (id, parts) = an_upload_of_big(&store, 8).await;
        memory.put("big", "theirs");
        let err = store
            .complete_multipart_upload_over("big", &id, &parts, &old)
            .await;
        assert!(matches!(err, Err(StoreError::Changed { .. })), "{err:?}");
        assert_eq!(memory.get("big").unwrap(), &b"theirs"[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_to_abort_counts_as_done() {
        let (memory, faulty, store) = setup();
        let id = store
            .create_multipart_upload("x", &Default::default())
            .await
            .unwrap();
        faulty.fail_nth(Operation::AbortMultipartUpload, 1, Fault::LostAnswer);
        store.abort_multipart_upload("x", &id).await.unwrap();
        assert!(memory.pending_uploads().is_empty());
    }
}
