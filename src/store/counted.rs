//! A wrapper that counts every request by operation, the failures, and the bytes
//! each way: what `s3vol stats` shows of the traffic to S3.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{
    ObjectStore, Operation, Presign, PresignedUrl, Request, Response, StoreError, StoreResult,
};

/// Counters of the requests a store has sent.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Indexed like [`Operation::ALL`].
    requests: [AtomicU64; Operation::ALL.len()],
    /// Requests that succeeded, indexed the same way.
    succeeded: [AtomicU64; Operation::ALL.len()],
    errors: AtomicU64,
    bytes_downloaded: AtomicU64,
    bytes_uploaded: AtomicU64,
}

impl RequestStats {
    fn index(op: Operation) -> usize {
        Operation::ALL
            .iter()
            .position(|o| *o == op)
            .expect("listed")
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

    /// Requests that failed (a missing key is an answer, not a failure).
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
        let index = RequestStats::index(op);
        self.stats.requests[index].fetch_add(1, Ordering::Relaxed);
        let result = call.await;
        match &result {
            Ok(_) => {
                self.stats.succeeded[index].fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_uploaded
                    .fetch_add(uploaded, Ordering::Relaxed);
            }
            // "No such key" is an answer (a lookup of a name that is not there),
            // not a failure.
            Err(StoreError::NotFound { .. }) => {}
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
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
        let answer = self.count(op, uploaded, self.inner.send(request)).await?;
        if let Response::Object(got) = &answer {
            self.stats
                .bytes_downloaded
                .fetch_add(got.data.len() as u64, Ordering::Relaxed);
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
    }
}
