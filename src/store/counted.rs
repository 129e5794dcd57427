//! A wrapper that counts every request by operation and outcome, times it,
//! and counts the bytes each way: what `s3vol stats` and the metrics show of
//! the traffic to S3.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use async_trait::async_trait;

use super::{
    OUTCOMES, ObjectStore, Operation, Presign, PresignedUrl, Request, Response, StoreError,
    StoreResult,
};
use crate::metrics::histogram::Histogram;

const OPS: usize = Operation::ALL.len();

/// Counters of the requests a store has sent.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Indexed like [`Operation::ALL`].
    requests: [AtomicU64; OPS],
    /// Requests that succeeded, indexed the same way.
    succeeded: [AtomicU64; OPS],
    /// By operation, then by outcome (indexed like [`OUTCOMES`]).
    outcomes: [[AtomicU64; OUTCOMES.len()]; OPS],
    /// From sending a request to its whole answer, by operation.
    latency: [Histogram; OPS],
    /// From sending a GET to the start of its answer, by operation.
    first_byte: [Histogram; OPS],
    errors: AtomicU64,
    bytes_downloaded: AtomicU64,
    bytes_uploaded: AtomicU64,
    /// The failures of the endpoint since its last answer.
    failing: Mutex<Option<Failing>>,
    /// Whether `failing` holds a run: an answer, the common case, then needs
    /// no lock.
    in_run: std::sync::atomic::AtomicBool,
    /// The multipart uploads begun and not yet completed or aborted.
    open_uploads: Mutex<std::collections::HashSet<String>>,
}

/// A run of requests the endpoint failed (no answer, a server error, a
/// broken answer), with no answer between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failing {
    pub first: Instant,
    pub last: Instant,
    /// The last failure's outcome (one of [`OUTCOMES`]).
    pub outcome: &'static str,
}

impl Failing {
    /// How long every request has failed: from the run's first failure to its
    /// last, while the last is no older than `window` (a run that stopped
    /// because nothing was asked says nothing about now); zero otherwise.
    pub fn lasted(&self, window: Duration) -> Duration {
        if self.last.elapsed() > window {
            return Duration::ZERO;
        }
        self.last.duration_since(self.first)
    }
}

impl RequestStats {
    fn index(op: Operation) -> usize {
        Operation::ALL
            .iter()
            .position(|o| *o == op)
            .expect("listed")
    }

    /// Requests of `op` that came to `outcome` (one of [`OUTCOMES`]).
    pub fn outcome(&self, op: Operation, outcome: &str) -> u64 {
        OUTCOMES.iter().position(|o| *o == outcome).map_or(0, |i| {
            self.outcomes[Self::index(op)][i].load(Ordering::Relaxed)
        })
    }

    /// The time histogram of `op`'s requests, whole (`first_byte` false) or to
    /// their first byte.
    pub fn latency(&self, op: Operation, first_byte: bool) -> &Histogram {
        let index = Self::index(op);
        if first_byte {
            &self.first_byte[index]
        } else {
            &self.latency[index]
        }
    }

    /// The run of failures since the endpoint's last answer, if the last
    /// request failed.
    pub fn failing(&self) -> Option<Failing> {
        *self.failing.lock()
    }

    /// Multipart uploads begun and not yet completed or aborted (one whose
    /// completion and abort both failed stays: S3 still holds it).
    pub fn uploads_in_flight(&self) -> usize {
        self.open_uploads.lock().len()
    }

    /// Every counter of every operation and outcome at `n`, every histogram
    /// bucket touched: the largest report a volume can give.
    #[cfg(test)]
    pub(crate) fn fill(&self, n: u64) {
        let all =
            |counters: &[AtomicU64]| counters.iter().for_each(|c| c.store(n, Ordering::Relaxed));
        all(&self.requests);
        all(&self.succeeded);
        self.outcomes.iter().for_each(|by_outcome| all(by_outcome));
        let mut uploads = self.open_uploads.lock();
        uploads.extend((0..1000).map(|n| format!("upload-{n}")));
        for histogram in self.latency.iter().chain(&self.first_byte) {
            for bound in crate::metrics::histogram::BOUNDS.iter().chain(&[1e6]) {
                histogram.record(Duration::from_secs_f64(*bound));
            }
        }
        let now = Instant::now();
        *self.failing.lock() = Some(Failing {
            first: now,
            last: now,
            outcome: "unreachable",
        });
        self.in_run.store(true, Ordering::Relaxed);
    }

    /// Counts a request of `op` that came to `outcome` after `took`.
    fn record(&self, op: Operation, outcome: Result<(), &StoreError>, took: Duration) {
        let index = Self::index(op);
        let name = outcome.err().map_or("ok", StoreError::outcome);
        self.count_outcome(index, name, took);
        match outcome {
            Ok(()) => {
                self.succeeded[index].fetch_add(1, Ordering::Relaxed);
            }
            // "No such key" is an answer (a lookup of a name that is not
            // there), not a failure.
            Err(StoreError::NotFound { .. }) => {}
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let failed = outcome.is_err_and(StoreError::is_endpoint_failure);
        if !failed && !self.in_run.load(Ordering::Relaxed) {
            return;
        }
        let mut failing = self.failing.lock();
        *failing = failed.then(|| {
            let now = Instant::now();
            Failing {
                first: failing.map_or(now, |run| run.first),
                last: now,
                outcome: name,
            }
        });
        self.in_run.store(failed, Ordering::Relaxed);
    }

    /// Counts a request of `op` that ended without an answer after `took`:
    /// given up by its caller ("cancelled", which says nothing of the
    /// endpoint), or cut short by a panic ("internal", an error).
    fn record_unanswered(&self, op: Operation, panicked: bool, took: Duration) {
        let name = if panicked { "internal" } else { "cancelled" };
        self.count_outcome(Self::index(op), name, took);
        if panicked {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request of the operation at `index` that came to outcome
    /// `name` (one of [`OUTCOMES`]) and took `took`.
    fn count_outcome(&self, index: usize, name: &str, took: Duration) {
        let at = OUTCOMES.iter().position(|o| *o == name).expect("listed");
        self.outcomes[index][at].fetch_add(1, Ordering::Relaxed);
        self.latency[index].record(took);
    }

    /// Follows the multipart uploads' lives: one begins with a creation that
    /// succeeded (its answer is the upload's ID), and ends (`ending`, its ID)
    /// with a completion or an abort that succeeded or found it gone.
    fn follow_upload(&self, ending: Option<&str>, result: &StoreResult<Response>) {
        match (ending, result) {
            (None, Ok(Response::UploadId(id))) => {
                self.open_uploads.lock().insert(id.clone());
            }
            (Some(id), Ok(_) | Err(StoreError::NotFound { .. })) => {
                self.open_uploads.lock().remove(id);
            }
            _ => {}
        }
    }

    /// Requests of `op` sent, every retry included.
    pub fn requests(&self, op: Operation) -> u64 {
        self.requests[Self::index(op)].load(Ordering::Relaxed)
    }

    /// Requests of `op` that succeeded.
    pub fn succeeded(&self, op: Operation) -> u64 {
        self.succeeded[Self::index(op)].load(Ordering::Relaxed)
    }

    /// Requests sent so far, of every operation.
    pub fn total(&self) -> u64 {
        self.requests
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests that failed (a missing key, an object changed or a range past
    /// the end is an answer, not a failure).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Object bytes received (GET bodies).
    pub fn bytes_downloaded(&self) -> u64 {
        self.bytes_downloaded.load(Ordering::Relaxed)
    }

    /// Object bytes sent (PutObject and UploadPart bodies).
    pub fn bytes_uploaded(&self) -> u64 {
        self.bytes_uploaded.load(Ordering::Relaxed)
    }
}

/// A request on its way: if its caller gives it up (drops the future) or it
/// panics before an answer, dropping this counts it, so that every request
/// sent has an outcome.
struct Pending<'a> {
    stats: &'a RequestStats,
    op: Operation,
    started: Instant,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.stats
                .record_unanswered(self.op, std::thread::panicking(), self.started.elapsed());
        }
    }
}

pub struct CountedStore {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<RequestStats>,
}

impl CountedStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<RequestStats> {
        self.stats.clone()
    }

    async fn count<T>(
        &self,
        op: Operation,
        uploaded: u64,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.stats.requests[RequestStats::index(op)].fetch_add(1, Ordering::Relaxed);
        let mut pending = Pending {
            stats: &self.stats,
            op,
            started: Instant::now(),
            answered: false,
        };
        let result = call.await;
        pending.answered = true;
        self.stats
            .record(op, result.as_ref().map(drop), pending.started.elapsed());
        if result.is_ok() {
            self.stats
                .bytes_uploaded
                .fetch_add(uploaded, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait]
impl ObjectStore for CountedStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        let (op, uploaded) = (request.operation(), request.body_len());
        let ending = match &request {
            Request::CompleteUpload { upload_id, .. } | Request::AbortUpload { upload_id, .. } => {
                Some(upload_id.to_string())
            }
            _ => None,
        };
        let answer = self.count(op, uploaded, self.inner.send(request)).await;
        self.stats.follow_upload(ending.as_deref(), &answer);
        let answer = answer?;
        if let Response::Object(got) = &answer {
            self.stats
                .bytes_downloaded
                .fetch_add(got.data.len() as u64, Ordering::Relaxed);
            if let Some(first_byte) = got.first_byte {
                self.stats.first_byte[RequestStats::index(op)].record(first_byte);
            }
        }
        Ok(answer)
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
    use bytes::Bytes;

    #[tokio::test]
    async fn counts_requests_failures_and_bytes() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let store = CountedStore::new(faulty.clone());
        store
            .put_object("a", Bytes::from_static(b"hello"), &Default::default())
            .await
            .unwrap();
        store.get_range("a", 1..4, None).await.unwrap();
        faulty.fail_nth(Operation::GetObject, 1, Fault::AccessDenied);
        store.get_range("a", 0..5, None).await.unwrap_err();
        store.head_object("missing").await.unwrap_err();
        let stats = store.stats();
        assert_eq!(stats.requests(Operation::PutObject), 1);
        assert_eq!(stats.requests(Operation::GetObject), 2);
        assert_eq!(stats.succeeded(Operation::GetObject), 1);
        assert_eq!(stats.succeeded(Operation::PutObject), 1);
        assert_eq!(stats.requests(Operation::HeadObject), 1);
        assert_eq!(stats.requests(Operation::DeleteObject), 0);
        assert_eq!(stats.errors(), 1, "a missing key is no failure");
        assert_eq!(stats.bytes_uploaded(), 5);
        assert_eq!(stats.bytes_downloaded(), 3);
        assert_eq!(stats.outcome(Operation::GetObject, "ok"), 1);
        assert_eq!(stats.outcome(Operation::GetObject, "access_denied"), 1);
        assert_eq!(stats.outcome(Operation::HeadObject, "not_found"), 1);
        assert_eq!(stats.latency(Operation::GetObject, false).count(), 2);
        assert_eq!(stats.latency(Operation::PutObject, false).count(), 1);
        assert_eq!(stats.failing(), None, "the last request had an answer");
    }

    #[tokio::test]
    async fn a_request_given_up_or_panicking_before_its_answer_has_an_outcome() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let store = Arc::new(CountedStore::new(faulty.clone()));
        store
            .put_object("a", Bytes::from_static(b"hello"), &Default::default())
            .await
            .unwrap();
        faulty.fail_nth(
            Operation::GetObject,
            1,
            Fault::Delay(Duration::from_secs(60)),
        );
        let reader = {
            let store = store.clone();
            tokio::spawn(async move { store.get_range("a", 0..5, None).await })
        };
        let stats = store.stats();
        while stats.requests(Operation::GetObject) == 0 {
            tokio::task::yield_now().await;
        }
        reader.abort();
        assert!(reader.await.unwrap_err().is_cancelled());
        assert_eq!(stats.outcome(Operation::GetObject, "cancelled"), 1);
        assert_eq!(stats.latency(Operation::GetObject, false).count(), 1);
        assert_eq!(stats.errors(), 0, "giving up is not the endpoint failing");
        assert_eq!(stats.failing(), None);
        // One cut short by a panic is an internal error.
        faulty.fail_nth(Operation::GetObject, 1, Fault::Panic);
        let panicked = {
            let store = store.clone();
            tokio::spawn(async move { store.get_range("a", 0..5, None).await })
        };
        assert!(panicked.await.unwrap_err().is_panic());
        assert_eq!(stats.outcome(Operation::GetObject, "internal"), 1);
        assert_eq!(stats.errors(), 1);
        // Every request sent has its outcome.
        for op in Operation::ALL {
            let outcomes: u64 = OUTCOMES.iter().map(|o| stats.outcome(op, o)).sum();
            assert_eq!(outcomes, stats.requests(op), "{op}");
        }
    }

    #[tokio::test]
    async fn the_endpoint_is_failing_from_its_first_failure_until_an_answer() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let store = CountedStore::new(faulty.clone());
        let stats = store.stats();
        faulty.fail_nth(Operation::HeadObject, 1, Fault::Unreachable);
        faulty.fail_nth(Operation::HeadObject, 2, Fault::Unreachable);
        faulty.fail_nth(Operation::HeadObject, 4, Fault::AccessDenied);
        store.head_object("a").await.unwrap_err();
        let failing = stats.failing().expect("failing");
        assert_eq!(failing.outcome, "unreachable");
        assert_eq!(failing.lasted(Duration::from_secs(30)), Duration::ZERO);
        // A second failure keeps the time of the first.
        std::thread::sleep(Duration::from_millis(20));
        store.head_object("a").await.unwrap_err();
        let failing = stats.failing().unwrap();
        assert!(failing.lasted(Duration::from_secs(30)) >= Duration::from_millis(20));
        // A run whose last failure is older than the window says nothing.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(failing.lasted(Duration::from_millis(1)), Duration::ZERO);
        // A key that is not there is an answer: the endpoint works; so is a
        // refusal.
        store.head_object("a").await.unwrap_err();
        assert_eq!(stats.failing(), None);
        store.head_object("a").await.unwrap_err();
        assert_eq!(stats.failing(), None);
    }
}
