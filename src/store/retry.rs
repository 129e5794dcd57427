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
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    ListPage, ListRequest, ObjectHeaders, ObjectInfo, ObjectStore, Operation, PendingUpload,
    Presign, PresignedUrl, StoreError, StoreResult, UploadedPart, Versioning, VersionsPage,
    VersionsRequest, copy_allowance, multipart_etag, transfer_allowance,
};

/// How long and how often a failing request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No new attempt starts later than this after the first, not counting the
    /// time attempts spent sending data (up to [`transfer_allowance`] each).
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

    /// Runs `call` with no answer to reconsider on a repeat.
    async fn plain<'a, T, F, Fut>(
        &'a self,
        op: Operation,
        transfer: Duration,
        call: F,
    ) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StoreResult<T>> + 'a,
        T: 'a,
    {
        self.call(op, transfer, call, |err| async { Err(err) })
            .await
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn head_object(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.plain(Operation::HeadObject, Duration::ZERO, || {
            self.inner.head_object(key)
        })
        .await
    }

    async fn list_objects(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        self.plain(Operation::ListObjectsV2, Duration::ZERO, || {
            self.inner.list_objects(req.clone())
        })
        .await
    }

    async fn get_start(&self, key: &str, len: u64) -> StoreResult<(ObjectInfo, Bytes)> {
        self.plain(Operation::GetObject, Duration::ZERO, || {
            self.inner.get_start(key, len)
        })
        .await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.plain(Operation::GetObject, Duration::ZERO, || {
            self.inner.get_range(key, range.clone(), if_match)
        })
        .await
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        self.plain(
            Operation::PutObject,
            transfer_allowance(body.len() as u64),
            || self.inner.put_object(key, body.clone(), headers),
        )
        .await
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        self.plain(Operation::CreateMultipartUpload, Duration::ZERO, || {
            self.inner.create_multipart_upload(key, headers)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        self.plain(
            Operation::UploadPart,
            transfer_allowance(body.len() as u64),
            || self.inner.upload_part(key, upload_id, number, body.clone()),
        )
        .await
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<String> {
        let op = Operation::CompleteMultipartUpload;
        self.call(
            op,
            Duration::ZERO,
            || self.inner.complete_multipart_upload(key, upload_id, parts),
            |err| async move {
                // Only a lost answer explains a missing upload on a repeat.
                if !matches!(err, StoreError::NotFound { .. }) {
                    return Err(err);
                }
                let expected = multipart_etag(parts);
                match self.inner.head_object(key).await {
                    Ok(info) if Some(&info.etag) == expected.as_ref() => {
                        debug!(key, upload_id, "an earlier attempt completed the upload");
                        Ok(info.etag)
                    }
                    _ => Err(err),
                }
            },
        )
        .await
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.call(
            Operation::AbortMultipartUpload,
            Duration::ZERO,
            || self.inner.abort_multipart_upload(key, upload_id),
            |err| async move {
                match err {
                    StoreError::NotFound { .. } => Ok(()),
                    other => Err(other),
                }
            },
        )
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.plain(Operation::ListMultipartUploads, Duration::ZERO, || {
            self.inner.list_multipart_uploads(prefix)
        })
        .await
    }

    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
        size: u64,
        replace: Option<&ObjectHeaders>,
    ) -> StoreResult<String> {
        self.plain(Operation::CopyObject, copy_allowance(size), || {
            self.inner.copy_object(from, to, if_match, size, replace)
        })
        .await
    }

    async fn upload_part_copy(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        number: i32,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let bytes = range.end - range.start;
        self.plain(Operation::UploadPartCopy, copy_allowance(bytes), || {
            self.inner
                .upload_part_copy(from, to, upload_id, number, range.clone(), if_match)
        })
        .await
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        self.plain(Operation::DeleteObject, Duration::ZERO, || {
            self.inner.delete_object(key)
        })
        .await
    }
    async fn bucket_versioning(&self) -> StoreResult<Versioning> {
        self.plain(Operation::GetBucketVersioning, Duration::ZERO, || {
            self.inner.bucket_versioning()
        })
        .await
    }

    async fn list_versions(&self, req: VersionsRequest<'_>) -> StoreResult<VersionsPage> {
        self.plain(Operation::ListObjectVersions, Duration::ZERO, || {
            self.inner.list_versions(req.clone())
        })
        .await
    }

    async fn head_version(&self, key: &str, version_id: &str) -> StoreResult<ObjectInfo> {
        self.plain(Operation::GetObjectVersion, Duration::ZERO, || {
            self.inner.head_version(key, version_id)
        })
        .await
    }

    async fn get_version_range(
        &self,
        key: &str,
        version_id: &str,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        self.plain(Operation::GetObjectVersion, Duration::ZERO, || {
            self.inner.get_version_range(key, version_id, range.clone())
        })
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
