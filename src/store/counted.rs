//! A wrapper that counts every request by operation, the failures, and the bytes
//! each way: what `s3vol stats` shows of the traffic to S3.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ListPage, ListRequest, ObjectHeaders, ObjectInfo, ObjectStore, Operation, PendingUpload,
    Presign, PresignedUrl, StoreError, StoreResult, UploadedPart, Versioning, VersionsPage,
    VersionsRequest,
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
        uploaded: usize,
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
                    .fetch_add(uploaded as u64, Ordering::Relaxed);
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

    async fn head_object(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.count(Operation::HeadObject, 0, self.inner.head_object(key))
            .await
    }

    async fn list_objects(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        self.count(Operation::ListObjectsV2, 0, self.inner.list_objects(req))
            .await
    }

    async fn get_start(&self, key: &str, len: u64) -> StoreResult<(ObjectInfo, Bytes)> {
        let (info, data) = self
            .count(Operation::GetObject, 0, self.inner.get_start(key, len))
            .await?;
        self.stats
            .bytes_downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok((info, data))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let data = self
            .count(
                Operation::GetObject,
                0,
                self.inner.get_range(key, range, if_match),
            )
            .await?;
        self.stats
            .bytes_downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        let len = body.len();
        self.count(
            Operation::PutObject,
            len,
            self.inner.put_object(key, body, headers),
        )
        .await
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        self.count(
            Operation::CreateMultipartUpload,
            0,
            self.inner.create_multipart_upload(key, headers),
        )
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let len = body.len();
        self.count(
            Operation::UploadPart,
            len,
            self.inner.upload_part(key, upload_id, number, body),
        )
        .await
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<String> {
        self.count(
            Operation::CompleteMultipartUpload,
            0,
            self.inner.complete_multipart_upload(key, upload_id, parts),
        )
        .await
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.count(
            Operation::AbortMultipartUpload,
            0,
            self.inner.abort_multipart_upload(key, upload_id),
        )
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.count(
            Operation::ListMultipartUploads,
            0,
            self.inner.list_multipart_uploads(prefix),
        )
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
        self.count(
            Operation::CopyObject,
            0,
            self.inner.copy_object(from, to, if_match, size, replace),
        )
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
        self.count(
            Operation::UploadPartCopy,
            0,
            self.inner
                .upload_part_copy(from, to, upload_id, number, range, if_match),
        )
        .await
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        self.count(Operation::DeleteObject, 0, self.inner.delete_object(key))
            .await
    }
    async fn bucket_versioning(&self) -> StoreResult<Versioning> {
        self.count(
            Operation::GetBucketVersioning,
            0,
            self.inner.bucket_versioning(),
        )
        .await
    }

    async fn list_versions(&self, req: VersionsRequest<'_>) -> StoreResult<VersionsPage> {
        self.count(
            Operation::ListObjectVersions,
            0,
            self.inner.list_versions(req),
        )
        .await
    }

    async fn head_version(&self, key: &str, version_id: &str) -> StoreResult<ObjectInfo> {
        let head = self.inner.head_version(key, version_id);
        self.count(Operation::GetObjectVersion, 0, head).await
    }

    async fn get_version_range(
        &self,
        key: &str,
        version_id: &str,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        let get = self.inner.get_version_range(key, version_id, range);
        let data = self.count(Operation::GetObjectVersion, 0, get).await?;
        self.stats
            .bytes_downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
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
