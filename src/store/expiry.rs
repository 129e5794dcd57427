//! A wrapper that answers ExpiredToken with one forced credential renewal and one
//! retry.
//!
//! Renewal ahead of expiry means s3vol itself never sends credentials it knows to
//! be expired. S3 can still refuse them: the session was revoked, or this
//! machine's clock is behind S3's. Then the request is not lost: the credentials
//! are renewed at once and the request is sent once more. If that is refused too,
//! the error stands (the filesystem answers EACCES) and the log says why.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use crate::auth::renew::RenewingCredentials;

use super::{ObjectStore, Presign, PresignedUrl, Request, Response, StoreError, StoreResult};

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

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        self.call(|| self.inner.send(request.clone())).await
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
    use crate::store::{ListRequest, Operation};
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
