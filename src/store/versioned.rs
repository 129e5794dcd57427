//! A read-only view of a bucket as it was at a moment: each key shows the
//! newest of its versions written at or before that moment, and a key whose
//! newest version then is a delete marker, or that had none yet, is not there.
//!
//! Built on ListObjectVersions and reads by version ID, so it needs a bucket
//! with versioning (the versions written while versioning was off are the
//! version `null` of each key). The version each key shows is remembered from
//! the listing or HEAD that found it, and every read asks for that version:
//! what was written since can never show.
//!
//! Directories come from the listing's common prefixes, as they are now: a
//! directory whose objects all came later shows, empty.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    GetOptions, GetResult, ListPage, ListRequest, ObjectInfo, ObjectStore, Operation, Pagination,
    Pin, Presign, PresignedUrl, Read, Request, Response, StoreError, StoreResult, VersionEntry,
    VersionsRequest,
};

pub struct VersionedView {
    inner: Arc<dyn ObjectStore>,
    at: SystemTime,
    /// The version each key shows, as the listing or HEAD that found it said.
    shown: Mutex<HashMap<String, String>>,
    /// How long a listing may bring nothing (`--io-timeout`).
    patience: Duration,
}

impl VersionedView {
    /// The bucket of `inner` as it was at `at`; a listing that brings nothing
    /// for `patience` fails.
    pub fn new(inner: Arc<dyn ObjectStore>, at: SystemTime, patience: Duration) -> Self {
        Self {
            inner,
            at,
            shown: Mutex::new(HashMap::new()),
            patience,
        }
    }

    /// Every version and delete marker under `prefix` (with `delimiter`, and
    /// the common prefixes), page after page.
    async fn all_versions(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> StoreResult<(Vec<VersionEntry>, Vec<String>)> {
        let mut pagination = Pagination::new(Operation::ListObjectVersions, prefix, self.patience);
        let (mut versions, mut prefixes) = (Vec::new(), Vec::new());
        let mut after: Option<(String, String)> = None;
        loop {
            let page = self
                .inner
                .list_versions(VersionsRequest {
                    prefix,
                    delimiter,
                    after: after.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
                    max_keys: None,
                })
                .await?;
            let entries = page.versions.len() + page.common_prefixes.len();
            versions.extend(page.versions);
            prefixes.extend(page.common_prefixes);
            let token = page.next.map(|(key, version)| format!("{key}\n{version}"));
            match pagination.next(entries, token)? {
                Some(token) => {
                    let (key, version) = token.split_once('\n').expect("made above");
                    after = Some((key.to_string(), version.to_string()));
                }
                None => return Ok((versions, prefixes)),
            }
        }
    }

    /// What each key of `versions` (newest first per key) showed at the view's
    /// moment; remembered for the reads that follow.
    fn visible(&self, versions: &[VersionEntry]) -> Vec<ObjectInfo> {
        let mut shown = Vec::new();
        let mut remembered = self.shown.lock();
        let mut last_key: Option<&str> = None;
        for version in versions {
            if last_key == Some(version.key.as_str()) || version.last_modified > self.at {
                continue;
            }
            // The newest version of this key at the moment.
            last_key = Some(version.key.as_str());
            if version.delete_marker {
                remembered.remove(&version.key);
                continue;
            }
            remembered.insert(version.key.clone(), version.version_id.clone());
            shown.push(ObjectInfo {
                key: version.key.clone(),
                size: version.size,
                etag: version.etag.clone(),
                last_modified: version.last_modified,
                version_id: Some(version.version_id.clone()),
                headers: None,
            });
        }
        shown
    }

    /// The version `key` shows, found now if no listing has said.
    async fn version_of(&self, key: &str, op: Operation) -> StoreResult<String> {
        if let Some(version) = self.shown.lock().get(key) {
            return Ok(version.clone());
        }
        // With the delimiter, whatever lies under `key/` folds into one prefix.
        let (versions, _) = self.all_versions(key, Some("/")).await?;
        let exact: Vec<VersionEntry> = versions.into_iter().filter(|v| v.key == key).collect();
        self.visible(&exact)
            .into_iter()
            .next()
            .and_then(|info| info.version_id)
            .ok_or_else(|| StoreError::NotFound {
                op,
                key: key.to_string(),
            })
    }
}

/// What a view of the past answers to a change.
fn read_only(op: Operation) -> StoreError {
    StoreError::Internal {
        op,
        detail: "a view of the bucket at a past moment is read-only".into(),
    }
}

impl VersionedView {
    /// A read of what `key` shows: the version the view found for it.
    async fn read(&self, key: &str, read: Read) -> StoreResult<GetResult> {
        let shown = |version| GetOptions {
            pin: Pin::Version(version),
            read: read.clone(),
        };
        match read {
            Read::Head | Read::Range(_) => {
                let op = match read {
                    Read::Head => Operation::HeadObject,
                    _ => Operation::GetObject,
                };
                let version = self.version_of(key, op).await?;
                self.inner.get(key, shown(&version)).await
            }
            Read::Start(len) => {
                let info = self.head_object(key).await?;
                if info.size == 0 {
                    return Err(StoreError::InvalidRange {
                        op: Operation::GetObject,
                        key: key.to_string(),
                    });
                }
                let version = info.version_id.clone().unwrap_or_default();
                let data = self
                    .inner
                    .get_version_range(key, &version, 0..len.min(info.size))
                    .await?;
                Ok(GetResult {
                    info: Some(info),
                    data,
                    first_byte: None,
                })
            }
        }
    }

    /// The whole listing in one page: what shows of a key depends on all its
    /// versions, which S3 may split over pages.
    async fn list(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        let (versions, mut common_prefixes) = self.all_versions(req.prefix, req.delimiter).await?;
        let mut objects = self.visible(&versions);
        common_prefixes.dedup();
        if let Some(max) = req.max_keys.and_then(|m| usize::try_from(m).ok()) {
            objects.truncate(max);
        }
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token: None,
        })
    }
}

#[async_trait]
impl ObjectStore for VersionedView {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        match request {
            // The current object is the version the view shows; a version
            // never changes, so an ETag pin adds nothing.
            Request::Get {
                key,
                options:
                    GetOptions {
                        pin: Pin::Current(_),
                        read,
                    },
            } => Ok(Response::Object(self.read(key, read).await?)),
            Request::List(req) => Ok(Response::Listed(self.list(req).await?)),
            Request::ListUploads { .. } => Ok(Response::Uploads(Vec::new())),
            Request::Get { .. } | Request::BucketVersioning | Request::ListVersions(_) => {
                self.inner.send(request).await
            }
            change => Err(read_only(change.operation())),
        }
    }

    /// A URL of the version the key shows (the view is read-only: a PUT URL
    /// never gets here).
    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        let version = self.version_of(key, Operation::GetObjectVersion).await?;
        let request = Presign {
            version_id: Some(version),
            ..request.clone()
        };
        self.inner.presign(key, &request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectHeaders, UploadedPart};
    use bytes::Bytes;

    /// Every change, whatever its kind, is refused before it reaches the
    /// bucket: the view shows the past and never writes.
    #[tokio::test]
    async fn every_change_is_refused_and_nothing_reaches_the_bucket() {
        let memory = Arc::new(MemoryStore::new("bkt"));
        memory.put("k", "now");
        let view = VersionedView::new(memory.clone(), SystemTime::now(), Duration::from_secs(5));
        let headers = ObjectHeaders::default();
        let parts = [UploadedPart {
            number: 1,
            etag: "\"e\"".into(),
        }];
        let changes = [
            Request::Put {
                key: "k",
                body: Bytes::from_static(b"x"),
                headers: &headers,
            },
            Request::CreateUpload {
                key: "k",
                headers: &headers,
            },
            Request::UploadPart {
                key: "k",
                upload_id: "u",
                number: 1,
                body: Bytes::from_static(b"x"),
            },
            Request::CompleteUpload {
                key: "k",
                upload_id: "u",
                parts: &parts,
                if_match: None,
            },
            Request::AbortUpload {
                key: "k",
                upload_id: "u",
            },
            Request::Copy {
                from: "k",
                to: "k2",
                if_match: None,
                size: 3,
                replace: None,
            },
            Request::CopyPart {
                from: "k",
                to: "k2",
                upload_id: "u",
                number: 1,
                range: 0..3,
                if_match: None,
            },
            Request::Delete { key: "k" },
        ];
        for change in changes {
            let op = change.operation();
            assert!(op.mutates(), "{op}");
            let refused = view.send(change).await;
            assert!(
                matches!(refused, Err(StoreError::Internal { op: o, .. }) if o == op),
                "{op}: {refused:?}"
            );
        }
        assert!(memory.calls().is_empty(), "{:?}", memory.calls());
        assert_eq!(memory.get("k").unwrap(), "now");
    }
}
