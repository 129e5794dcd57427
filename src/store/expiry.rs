//! A wrapper that answers ExpiredToken with one forced credential renewal and one
//! retry.
//!
//! Renewal ahead of expiry means s3vol itself never sends credentials it knows to
//! be expired. S3 can still refuse them: the session was revoked, or this
//! machine's clock is behind S3's. Then the request is not lost: the credentials
//! are renewed at once and the request is sent once more. If that is refused too,
//! the error stands (the filesystem answers EACCES) and the log says why.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::warn;

use crate::auth::renew::RenewingCredentials;

use super::{
    ListPage, ListRequest, ObjectHeaders, ObjectInfo, ObjectStore, PendingUpload, Presign,
    PresignedUrl, StoreError, StoreResult, UploadedPart, Versioning, VersionsPage, VersionsRequest,
};

/// What can replace the credentials a store signs with.
#[async_trait]
pub trait RenewCredentials: Send + Sync + 'static {
    /// Changes whenever the credentials are replaced.
    fn generation(&self) -> u64;

    /// Fetches new credentials now, unless they were replaced since `seen` (the
    /// generation a refused request was signed with); `why` goes to the log.
    async fn renew_since(&self, seen: u64, why: &str) -> Result<(), String>;
}

/// The credentials a mount signs with, renewed ahead of expiry by `auth`.
#[async_trait]
impl RenewCredentials for RenewingCredentials {
    fn generation(&self) -> u64 {
        self.renewals()
    }

    async fn renew_since(&self, seen: u64, why: &str) -> Result<(), String> {
        RenewingCredentials::renew_since(self, seen, why).await
    }
}

pub struct RenewOnExpiry {
    inner: Arc<dyn ObjectStore>,
    credentials: Arc<dyn RenewCredentials>,
}

impl RenewOnExpiry {
    pub fn new(inner: Arc<dyn ObjectStore>, credentials: Arc<dyn RenewCredentials>) -> Self {
        Self { inner, credentials }
    }

    async fn call<'a, T, F, Fut>(&'a self, call: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StoreResult<T>> + 'a,
    {
        let seen = self.credentials.generation();
        match call().await {
            Err(StoreError::ExpiredToken { op, info }) => {
                let why = format!("S3 refused the credentials as expired ({op}: {info})");
                if let Err(e) = self.credentials.renew_since(seen, &why).await {
                    warn!(error = e, "cannot retry {op} with new credentials");
                    return Err(StoreError::ExpiredToken { op, info });
                }
                call().await
            }
            other => other,
        }
    }
}

#[async_trait]
impl ObjectStore for RenewOnExpiry {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn head_object(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.call(|| self.inner.head_object(key)).await
    }

    async fn list_objects(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        self.call(|| self.inner.list_objects(req.clone())).await
    }

    async fn get_start(&self, key: &str, len: u64) -> StoreResult<(ObjectInfo, Bytes)> {
        self.call(|| self.inner.get_start(key, len)).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.call(|| self.inner.get_range(key, range.clone(), if_match))
            .await
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        self.call(|| self.inner.put_object(key, body.clone(), headers))
            .await
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        self.call(|| self.inner.create_multipart_upload(key, headers))
            .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        self.call(|| self.inner.upload_part(key, upload_id, number, body.clone()))
            .await
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<String> {
        self.call(|| self.inner.complete_multipart_upload(key, upload_id, parts))
            .await
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.call(|| self.inner.abort_multipart_upload(key, upload_id))
            .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.call(|| self.inner.list_multipart_uploads(prefix))
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
        self.call(|| self.inner.copy_object(from, to, if_match, size, replace))
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
        self.call(|| {
            self.inner
                .upload_part_copy(from, to, upload_id, number, range.clone(), if_match)
        })
        .await
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        self.call(|| self.inner.delete_object(key)).await
    }
    async fn bucket_versioning(&self) -> StoreResult<Versioning> {
        self.call(|| self.inner.bucket_versioning()).await
    }

    async fn list_versions(&self, req: VersionsRequest<'_>) -> StoreResult<VersionsPage> {
        self.call(|| self.inner.list_versions(req.clone())).await
    }

    async fn head_version(&self, key: &str, version_id: &str) -> StoreResult<ObjectInfo> {
        self.call(|| self.inner.head_version(key, version_id)).await
    }

    async fn get_version_range(
        &self,
        key: &str,
        version_id: &str,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        self.call(|| self.inner.get_version_range(key, version_id, range.clone()))
            .await
    }

    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        self.inner.presign(key, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Operation;
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;
    use parking_lot::Mutex;

    /// Records each forced renewal; fails them while `fail` is set.
    #[derive(Default)]
    struct Renewals {
        reasons: Mutex<Vec<String>>,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl RenewCredentials for Renewals {
        fn generation(&self) -> u64 {
            self.reasons.lock().len() as u64
        }

        async fn renew_since(&self, _seen: u64, why: &str) -> Result<(), String> {
            self.reasons.lock().push(why.to_string());
            if *self.fail.lock() {
                return Err("STS unreachable (test)".into());
            }
            Ok(())
        }
    }

    fn setup() -> (
        Arc<MemoryStore>,
        Arc<FaultyStore>,
        Arc<Renewals>,
        RenewOnExpiry,
    ) {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("k", &b"hello"[..]);
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let renewals = Arc::new(Renewals::default());
        let store = RenewOnExpiry::new(faulty.clone(), renewals.clone());
        (memory, faulty, renewals, store)
    }

    #[tokio::test]
    async fn expired_token_forces_one_renewal_and_one_retry() {
        let (memory, faulty, renewals, store) = setup();
        faulty.fail_nth(Operation::GetObject, 1, Fault::ExpiredToken);
        let data = store.get_range("k", 0..5, None).await.unwrap();
        assert_eq!(&data[..], b"hello");
        let reasons = renewals.reasons.lock().clone();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("ExpiredToken"), "{reasons:?}");
        // The first call was refused before reaching the bucket; the retry read it.
        assert_eq!(memory.count_calls(Operation::GetObject), 1);
    }

    #[tokio::test]
    async fn a_second_refusal_is_the_answer() {
        let (_, faulty, renewals, store) = setup();
        faulty.fail_all(Operation::HeadObject, Fault::ExpiredToken);
        let err = store.head_object("k").await.unwrap_err();
        assert!(matches!(err, StoreError::ExpiredToken { .. }), "{err}");
        assert_eq!(renewals.reasons.lock().len(), 1, "renewed once");
    }

    #[tokio::test]
    async fn a_failed_renewal_is_not_retried() {
        let (memory, faulty, renewals, store) = setup();
        *renewals.fail.lock() = true;
        faulty.fail_nth(Operation::ListObjectsV2, 1, Fault::ExpiredToken);
        let req = ListRequest {
            prefix: "",
            ..ListRequest::default()
        };
        let err = store.list_objects(req).await.unwrap_err();
        assert!(matches!(err, StoreError::ExpiredToken { .. }), "{err}");
        assert_eq!(memory.count_calls(Operation::ListObjectsV2), 0);
    }

    #[tokio::test]
    async fn other_errors_pass_through_without_renewal() {
        let (_, faulty, renewals, store) = setup();
        faulty.fail_nth(Operation::HeadObject, 1, Fault::AccessDenied);
        let err = store.head_object("k").await.unwrap_err();
        assert!(matches!(err, StoreError::AccessDenied { .. }), "{err}");
        assert!(renewals.reasons.lock().is_empty());
    }
}
