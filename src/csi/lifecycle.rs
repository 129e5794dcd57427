//! A provisioned volume's life in its bucket: made, found again, deleted.
//!
//! A volume is a prefix with a marker: the directory marker of its root (the
//! key `PREFIX/`, empty, which a mount shows as the root itself), carrying
//! metadata that names this driver, the volume and how it is deleted. Only a
//! prefix with that marker is ever deleted, and the marker goes last, so a
//! deletion cut short (a crash, a lost call) is found and finished by the
//! next. A prefix that holds anything else is never made a volume: its data
//! would be deleted with it.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, info, warn};

use super::service::DRIVER_NAME;
use super::volume_id::Location;
use crate::store::{
    Deletion, ListRequest, MAX_DELETE_BATCH, ObjectHeaders, ObjectStore, Operation, StoreError,
    StoreResult, Versioning, VersionsRequest,
};

/// The marker's user metadata (`x-amz-meta-…`), in S3's lower case.
const DRIVER: &str = "s3vol-csi-driver";
const VOLUME: &str = "s3vol-csi-volume";
const VOLUME_ID: &str = "s3vol-csi-volume-id";
const VERSIONS: &str = "s3vol-csi-delete-versions";

/// What the volume's marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// No marker: no volume (or one deleted).
    Absent,
    /// A directory marker that is not this driver's.
    Foreign,
    /// A volume of this driver.
    Volume(Volume),
}

/// A volume, as its marker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The CreateVolume name it was made for.
    pub name: String,
    pub volume_id: String,
    /// Whether deleting it deletes every version under it.
    pub delete_versions: bool,
}

/// Why a volume cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error(
        "the prefix {prefix} is already volume {other}; a claim whose name makes the same \
         prefix cannot have it too (the volume may be on its way out, or kept by the \
         reclaim policy Retain): give the claim another name, or the StorageClass a \
         volume_name rule with ${{pv.name}}"
    )]
    Taken { prefix: String, other: String },
    #[error(
        "the prefix {prefix} holds {what} that this driver did not make; a volume is never \
         made of existing data, which deleting the volume would delete: mount existing data \
         with a static PersistentVolume, or choose another prefix or volume_name rule"
    )]
    NotEmpty { prefix: String, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the marker at `location` says.
pub async fn marker(store: &dyn ObjectStore, location: &Location) -> StoreResult<Marker> {
    let info = match store.head_object(location.marker_key()).await {
        Ok(info) => info,
        Err(StoreError::NotFound { .. }) => return Ok(Marker::Absent),
        Err(e) => return Err(e),
    };
    let user = info.headers.map(|h| h.user).unwrap_or_default();
    if user.get(DRIVER).map(String::as_str) != Some(DRIVER_NAME) {
        return Ok(Marker::Foreign);
    }
    Ok(Marker::Volume(Volume {
        name: user.get(VOLUME).cloned().unwrap_or_default(),
        volume_id: user.get(VOLUME_ID).cloned().unwrap_or_default(),
        delete_versions: user.get(VERSIONS).map(String::as_str) == Some("true"),
    }))
}

/// Makes `volume` at `location`, or finds it made by an earlier call for the
/// same name; refuses a prefix that is another volume or holds anything.
pub async fn make(
    store: &dyn ObjectStore,
    location: &Location,
    volume: &Volume,
) -> Result<(), MakeError> {
    let prefix = location.marker_key().to_string();
    match marker(store, location).await? {
        Marker::Volume(found) if found.name == volume.name => return Ok(()),
        Marker::Volume(found) => {
            return Err(MakeError::Taken {
                prefix,
                other: found.name,
            });
        }
        Marker::Foreign => {
            return Err(MakeError::NotEmpty {
                prefix,
                what: "a directory marker".into(),
            });
        }
        Marker::Absent => {}
    }
    let listing = ListRequest {
        prefix: &prefix,
        max_keys: Some(1),
        ..ListRequest::default()
    };
    if let Some(object) = store.list_objects(listing).await?.objects.first() {
        return Err(MakeError::NotEmpty {
            prefix,
            what: format!("objects (such as {})", object.key),
        });
    }
    let mut headers = ObjectHeaders::default();
    for (key, value) in [
        (DRIVER, DRIVER_NAME),
        (VOLUME, &volume.name),
        (VOLUME_ID, &volume.volume_id),
        (
            VERSIONS,
            if volume.delete_versions {
                "true"
            } else {
                "false"
            },
        ),
    ] {
        headers.user.insert(key.into(), value.to_string());
    }
    store
        .put_object(&prefix, bytes::Bytes::new(), &headers)
        .await?;
    // Two claims racing for one prefix: the marker that stayed decides.
    match marker(store, location).await? {
        Marker::Volume(found) if found.name == volume.name => Ok(()),
        Marker::Volume(found) => Err(MakeError::Taken {
            prefix,
            other: found.name,
        }),
        _ => Err(MakeError::NotEmpty {
            prefix,
            what: "a marker that changed as it was made".into(),
        }),
    }
}

/// How far a deletion has come, for the log and for a second call that finds
/// it under way.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects: AtomicU64,
    pub uploads: AtomicU64,
}

impl Progress {
    pub fn deleted(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }
}

/// Deletes everything under the volume's prefix, then its marker: every
/// object, or with `versions` every version and delete marker, and every
/// unfinished upload; never a key outside the prefix, whatever a listing
/// says. Each round lists one page (at most [`MAX_DELETE_BATCH`] keys) and
/// deletes it in one request, so memory stays bounded and a deletion cut
/// short is taken up where it stopped by the next.
pub async fn purge(
    store: &dyn ObjectStore,
    location: &Location,
    versions: bool,
    progress: &Progress,
) -> StoreResult<()> {
    let prefix = location.marker_key();
    let versions = versions && store.bucket_versioning().await? != Versioning::Never;
    let mut last_round: Vec<Deletion> = Vec::new();
    loop {
        let batch = if versions {
            version_batch(store, prefix).await?
        } else {
            object_batch(store, prefix).await?
        };
        if batch.is_empty() {
            break;
        }
        // A server that keeps listing what it said it deleted would keep
        // this going for ever.
        if batch == last_round {
            return Err(StoreError::BadAnswer {
                op: Operation::ListObjectsV2,
                key: prefix.to_string(),
                detail: "keys it had deleted are listed again".into(),
            });
        }
        delete(store, &batch).await?;
        let total = progress
            .objects
            .fetch_add(batch.len() as u64, Ordering::Relaxed)
            + batch.len() as u64;
        debug!(prefix, deleted = total, "deleted a batch");
        last_round = batch;
    }
    for upload in store.list_multipart_uploads(prefix).await? {
        if !upload.key.starts_with(prefix) {
            warn!(
                prefix,
                key = upload.key,
                "the endpoint listed an upload outside the prefix"
            );
            continue;
        }
        store
            .abort_multipart_upload(&upload.key, &upload.upload_id)
            .await?;
        progress.uploads.fetch_add(1, Ordering::Relaxed);
    }
    // The marker last: until it goes, the volume is there to be deleted.
    if versions {
        let marker_versions = store
            .list_versions(VersionsRequest {
                prefix,
                delimiter: Some("/"),
                max_keys: Some(MAX_DELETE_BATCH as i32),
                ..VersionsRequest::default()
            })
            .await?
            .versions
            .into_iter()
            .filter(|v| v.key == prefix)
            .map(|v| Deletion {
                key: v.key,
                version_id: Some(v.version_id),
            })
            .collect::<Vec<_>>();
        if !marker_versions.is_empty() {
            store.delete_batch(&marker_versions).await?;
        }
    } else {
        store.delete_object(prefix).await?;
    }
    info!(
        prefix,
        objects = progress.deleted(),
        uploads = progress.uploads.load(Ordering::Relaxed),
        "volume deleted"
    );
    Ok(())
}

/// Deletes `batch` in one request; where that request is refused or not
/// served (some S3-compatible servers check a DeleteObjects against the
/// bucket, or lack it), objects are deleted one by one, so that a denial is
/// the key's own.
async fn delete(store: &dyn ObjectStore, batch: &[Deletion]) -> StoreResult<()> {
    /// Deletes of one object at a time in flight.
    const ONE_BY_ONE: usize = 16;
    let err = match store.delete_batch(batch).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let refused = match &err {
        StoreError::AccessDenied { .. } => true,
        StoreError::Service { info, .. } => info.code == "NotImplemented",
        _ => false,
    };
    if !refused || batch.iter().any(|d| d.version_id.is_some()) {
        return Err(err);
    }
    debug!(
        objects = batch.len(),
        "DeleteObjects refused ({err}); deleting one by one"
    );
    for chunk in batch.chunks(ONE_BY_ONE) {
        let deletes = chunk.iter().map(|d| store.delete_object(&d.key));
        for result in futures::future::join_all(deletes).await {
            result?;
        }
    }
    Ok(())
}

/// The next objects to delete: the first page under `prefix` that holds any
/// but the marker.
async fn object_batch(store: &dyn ObjectStore, prefix: &str) -> StoreResult<Vec<Deletion>> {
    let mut continuation: Option<String> = None;
    let mut pages = crate::store::Pagination::new(
        Operation::ListObjectsV2,
        prefix,
        crate::store::LISTING_PATIENCE,
    );
    loop {
        let page = store
            .list_objects(ListRequest {
                prefix,
                continuation: continuation.as_deref(),
                max_keys: Some(MAX_DELETE_BATCH as i32),
                ..ListRequest::default()
            })
            .await?;
        let entries = page.objects.len();
        let batch: Vec<Deletion> = page
            .objects
            .into_iter()
            .filter(|o| inside(prefix, &o.key))
            .map(|o| Deletion {
                key: o.key,
                version_id: None,
            })
            .take(MAX_DELETE_BATCH)
            .collect();
        if !batch.is_empty() {
            return Ok(batch);
        }
        match pages.next(entries, page.next_token)? {
            Some(next) => continuation = Some(next),
            None => return Ok(Vec::new()),
        }
    }
}

/// The next versions and delete markers to delete, as [`object_batch`].
async fn version_batch(store: &dyn ObjectStore, prefix: &str) -> StoreResult<Vec<Deletion>> {
    let mut after: Option<(String, String)> = None;
    let mut pages = crate::store::Pagination::new(
        Operation::ListObjectVersions,
        prefix,
        crate::store::LISTING_PATIENCE,
    );
    loop {
        let page = store
            .list_versions(VersionsRequest {
                prefix,
                after: after.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
                max_keys: Some(MAX_DELETE_BATCH as i32),
                ..VersionsRequest::default()
            })
            .await?;
        let entries = page.versions.len();
        let next = page.next.clone();
        let batch: Vec<Deletion> = page
            .versions
            .into_iter()
            .filter(|v| inside(prefix, &v.key))
            .map(|v| Deletion {
                key: v.key,
                version_id: Some(v.version_id),
            })
            .take(MAX_DELETE_BATCH)
            .collect();
        if !batch.is_empty() {
            return Ok(batch);
        }
        // The markers stand for a continuation token, to be held to its rules.
        let token = next.as_ref().map(|(k, v)| format!("{k}\n{v}"));
        match pages.next(entries, token)? {
            Some(_) => after = next,
            None => return Ok(Vec::new()),
        }
    }
}

/// Whether `key` is one the deletion of the volume at `prefix` may delete:
/// under it, and not its marker (which goes last).
fn inside(prefix: &str, key: &str) -> bool {
    if key.len() > prefix.len() && key.starts_with(prefix) {
        return true;
    }
    if key != prefix {
        warn!(
            prefix,
            key, "the endpoint listed a key outside the volume; left alone"
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;
    use crate::store::{PresignedUrl, Request, Response};
    use std::sync::Arc;

    fn location(prefix: &str) -> Location {
        Location {
            region: None,
            endpoint: None,
            sts_endpoint: None,
            path_style: true,
            source: format!("bkt/{prefix}").parse().unwrap(),
        }
    }

    fn volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            volume_id: format!("id-of-{name}"),
            delete_versions: false,
        }
    }

    /// A volume of `files` objects at `vols/a/`, beside what must outlive it.
    async fn filled(files: usize) -> (Arc<MemoryStore>, Location) {
        let store = Arc::new(MemoryStore::new("bkt"));
        let at = location("vols/a");
        make(store.as_ref(), &at, &volume("pvc-a")).await.unwrap();
        for i in 0..files {
            store.put(&format!("vols/a/d{}/f{i}", i % 7), "x");
        }
        for key in ["vols/a", "vols/a-b/f", "vols/ab", "vols/b/f", "top"] {
            store.put(key, "keep");
        }
        (store, at)
    }

    const OUTSIDE: [&str; 5] = ["top", "vols/a", "vols/a-b/f", "vols/ab", "vols/b/f"];

    #[tokio::test]
    async fn a_volume_is_made_once_by_name_and_never_of_a_prefix_in_use() {
        let store = MemoryStore::new("bkt");
        let at = location("vols/a");
        make(&store, &at, &volume("pvc-a")).await.unwrap();
        let headers = store.headers("vols/a/").unwrap();
        assert_eq!(headers.user[DRIVER], DRIVER_NAME);
        assert_eq!(headers.user[VOLUME], "pvc-a");
        assert_eq!(store.get("vols/a/").unwrap().len(), 0);
        assert_eq!(
            marker(&store, &at).await.unwrap(),
            Marker::Volume(volume("pvc-a"))
        );
        // Again for the same name: the same volume.
        make(&store, &at, &volume("pvc-a")).await.unwrap();
        // Another name for the prefix is refused, with the volume named.
        let taken = make(&store, &at, &volume("pvc-b")).await.unwrap_err();
        assert!(
            matches!(&taken, MakeError::Taken { other, .. } if other == "pvc-a"),
            "{taken}"
        );
        // A prefix with data, or a marker of someone else's, is never made a volume.
        store.put("vols/data/report.csv", "1,2");
        let busy = make(&store, &location("vols/data"), &volume("pvc-c"))
            .await
            .unwrap_err();
        assert!(busy.to_string().contains("vols/data/report.csv"), "{busy}");
        store.put("vols/console/", "");
        let foreign = make(&store, &location("vols/console"), &volume("pvc-d"))
            .await
            .unwrap_err();
        assert!(matches!(foreign, MakeError::NotEmpty { .. }), "{foreign}");
        assert_eq!(
            marker(&store, &location("vols/console")).await.unwrap(),
            Marker::Foreign
        );
        assert!(store.headers("vols/data/").is_none());
    }

    #[tokio::test]
    async fn a_purge_deletes_the_volume_in_bounded_batches_and_nothing_beside_it() {
        let (store, at) = filled(2500).await;
        store.clear_calls();
        let progress = Progress::default();
        purge(store.as_ref(), &at, false, &progress).await.unwrap();
        assert_eq!(store.keys(), OUTSIDE);
        assert_eq!(progress.deleted(), 2500);
        // Three batches of at most a thousand, and the marker on its own, last.
        assert_eq!(store.count_calls(Operation::DeleteObjects), 3);
        let calls = store.calls();
        let last = calls.last().unwrap();
        assert_eq!(
            (last.op, last.key.as_str()),
            (Operation::DeleteObject, "vols/a/")
        );
        // Once deleted, the volume is not there: nothing more to do.
        assert_eq!(marker(store.as_ref(), &at).await.unwrap(), Marker::Absent);
    }

    #[tokio::test]
    async fn a_purge_cut_short_keeps_the_marker_and_the_next_one_finishes() {
        let (memory, at) = filled(2500).await;
        let store = FaultyStore::new(memory.clone());
        store.fail_nth(Operation::DeleteObjects, 2, Fault::Error);
        let progress = Progress::default();
        purge(&store, &at, false, &progress).await.unwrap_err();
        // The first page: a thousand keys, the marker among them.
        assert_eq!(progress.deleted(), 999);
        assert!(memory.keys().len() > OUTSIDE.len() + 1);
        assert!(matches!(
            marker(&store, &at).await.unwrap(),
            Marker::Volume(_)
        ));
        purge(&store, &at, false, &Progress::default())
            .await
            .unwrap();
        assert_eq!(memory.keys(), OUTSIDE);
    }

    #[tokio::test]
    async fn where_deleteobjects_is_refused_objects_go_one_by_one_or_the_denial_is_named() {
        let (memory, at) = filled(40).await;
        let store = FaultyStore::new(memory.clone());
        store.fail_all(Operation::DeleteObjects, Fault::AccessDenied);
        store.fail_nth(Operation::DeleteObject, 3, Fault::AccessDenied);
        let denied = purge(&store, &at, false, &Progress::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                denied,
                StoreError::AccessDenied {
                    op: Operation::DeleteObject,
                    ..
                }
            ),
            "{denied}"
        );
        assert!(matches!(
            marker(&store, &at).await.unwrap(),
            Marker::Volume(_)
        ));
        purge(&store, &at, false, &Progress::default())
            .await
            .unwrap();
        assert_eq!(memory.keys(), OUTSIDE);
        assert!(memory.count_calls(Operation::DeleteObject) >= 40);
    }

    /// A store whose listings also name keys outside what was asked for.
    struct Lying(Arc<MemoryStore>);

    #[async_trait::async_trait]
    impl ObjectStore for Lying {
        fn bucket(&self) -> &str {
            self.0.bucket()
        }

        async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
            let answer = self.0.send(request).await?;
            Ok(match answer {
                Response::Listed(mut page) => {
                    for key in OUTSIDE {
                        let mut info = page.objects.first().cloned().unwrap_or_else(|| {
                            crate::store::ObjectInfo {
                                key: String::new(),
                                size: 0,
                                etag: String::new(),
                                last_modified: std::time::SystemTime::now(),
                                version_id: None,
                                headers: None,
                            }
                        });
                        info.key = key.into();
                        page.objects.push(info);
                    }
                    Response::Listed(page)
                }
                Response::Uploads(mut uploads) => {
                    uploads.push(crate::store::PendingUpload {
                        key: "top".into(),
                        upload_id: "u".into(),
                        initiated: std::time::SystemTime::now(),
                    });
                    Response::Uploads(uploads)
                }
                other => other,
            })
        }

        async fn presign(
            &self,
            key: &str,
            request: &crate::store::Presign,
        ) -> StoreResult<PresignedUrl> {
            self.0.presign(key, request).await
        }
    }

    #[tokio::test]
    async fn keys_a_lying_endpoint_lists_outside_the_volume_are_never_deleted() {
        let (memory, at) = filled(1500).await;
        let store = Lying(memory.clone());
        purge(&store, &at, false, &Progress::default())
            .await
            .unwrap();
        assert_eq!(memory.keys(), OUTSIDE);
        for call in memory.calls() {
            if call.op.mutates() {
                assert!(call.key.starts_with("vols/a/"), "{call:?}");
            }
        }
    }
}
