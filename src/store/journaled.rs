//! A wrapper that records in the volume's journal each multipart upload it
//! begins and ends, so that a worker replacing one that died aborts the
//! uploads it left: no parts of a file half written stay behind in S3. The
//! request for an upload is recorded before it is sent: a worker killed
//! before it heard the answer leaves an upload only S3 knows the ID of, which
//! the next worker finds by its key.

use std::sync::Arc;

use async_trait::async_trait;

use super::{ObjectStore, Presign, PresignedUrl, Request, Response, StoreResult};
use crate::journal::{Journal, Record};

pub struct JournaledStore {
    inner: Arc<dyn ObjectStore>,
    journal: Arc<Journal>,
}

impl JournaledStore {
    pub fn new(inner: Arc<dyn ObjectStore>, journal: Arc<Journal>) -> Self {
        Self { inner, journal }
    }
}

#[async_trait]
impl ObjectStore for JournaledStore {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        match request {
            Request::CreateUpload { key, .. } => {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.journal.record(&Record::UploadStarting {
                    key: key.to_string(),
                    at,
                });
                let answer = self.inner.send(request).await;
                let record = match &answer {
                    Ok(Response::UploadId(id)) => Record::UploadStarted {
                        key: key.to_string(),
                        id: id.clone(),
                    },
                    // The retries behind this store gave up: an upload S3
                    // began meanwhile is aborted by the caller's failure
                    // path, or found by the key by whoever takes over.
                    _ => Record::UploadUnasked {
                        key: key.to_string(),
                    },
                };
                self.journal.record(&record);
                answer
            }
            Request::CompleteUpload { upload_id, .. } | Request::AbortUpload { upload_id, .. } => {
                let id = upload_id.to_string();
                let answer = self.inner.send(request).await;
                // A failed completion leaves the upload, which is aborted
                // next (and recorded then); a failed abort is tried again by
                // the next worker.
                if answer.is_ok() {
                    self.journal.record(&Record::UploadEnded { id });
                }
                answer
            }
            request => self.inner.send(request).await,
        }
    }

    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        self.inner.presign(key, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectHeaders;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn uploads_under_way_are_in_the_journal_until_they_end() {
        let (journal, _) = Journal::open(crate::journal::create().unwrap()).unwrap();
        let journal = Arc::new(journal);
        let store = JournaledStore::new(Arc::new(MemoryStore::new("b")), journal.clone());
        let headers = ObjectHeaders::default();
        let kept = store.create_multipart_upload("a", &headers).await.unwrap();
        let ended = store.create_multipart_upload("b", &headers).await.unwrap();
        store.abort_multipart_upload("b", &ended).await.unwrap();
        let (_, carried) = Journal::open(journal.fd().unwrap()).unwrap();
        assert_eq!(
            carried.uploads.into_iter().collect::<Vec<_>>(),
            [(kept, "a".to_string())]
        );
        assert!(carried.starting.is_empty(), "{:?}", carried.starting);
        // Asked for, never answered (the worker killed meanwhile).
        journal.record(&Record::UploadStarting {
            key: "c".into(),
            at: 5,
        });
        let (_, carried) = Journal::open(journal.fd().unwrap()).unwrap();
        assert_eq!(
            carried.starting.into_iter().collect::<Vec<_>>(),
            [("c".to_string(), 5)]
        );
    }
}
