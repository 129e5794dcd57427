//! Deleting a provisioned volume: everything under its prefix, then its
//! marker (see `lifecycle`), in bounded batches, never a key outside.
//!
//! Each round lists one page (at most [`MAX_DELETE_BATCH`] keys) from the
//! start of the prefix and deletes it in one DeleteObjects request, so memory
//! stays bounded whatever the volume holds, and a deletion cut short is taken
//! up where it stopped by the next: what was deleted is no longer listed.
//! Rounds must move forward through the prefix (each starts past where the
//! previous one ended): a listing that goes back, repeats itself or keeps
//! growing under the deletion ends it with an error rather than for ever.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::volume_id::Location;
use crate::store::{
    Deletion, LISTING_PATIENCE, ListRequest, MAX_DELETE_BATCH, ObjectStore, Operation, Pagination,
    StoreError, StoreResult, Versioning, VersionsRequest,
};

/// Deletes of one object at a time in flight, where a server refuses
/// DeleteObjects.
const ONE_BY_ONE: usize = 16;

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

/// How long one call deletes before it hands over to the next: a prefix that
/// is written while it is deleted (a writer that never stops) never keeps a
/// deletion, and the volume's slot, for ever; what was deleted stays deleted,
/// and the next call goes on from there.
pub const ONE_CALL: Duration = Duration::from_secs(10 * 60);

/// How far one call of [`purge`] came.
#[derive(Debug, PartialEq, Eq)]
pub enum Purged {
    /// The volume is gone, its marker last.
    Done,
    /// [`ONE_CALL`] passed first; the marker stays, for the next call.
    Paused,
}

/// Deletes everything under the volume's prefix, then its marker: every
/// object (with the volume's `delete_versions`, on a bucket that keeps
/// versions, every version and delete marker), every unfinished upload; never
/// a key outside the prefix, whatever a listing says. Stops at `until`.
pub async fn purge(
    store: &dyn ObjectStore,
    location: &Location,
    progress: &Progress,
    until: Instant,
) -> StoreResult<Purged> {
    let prefix = location.marker_key();
    let versions =
        location.delete_versions && store.bucket_versioning().await? != Versioning::Never;
    let under = |key: &str| inside(prefix, key);
    let mut previous: Option<Deletion> = None;
    loop {
        let batch = first_found(store, prefix, versions, &under).await?;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            break;
        };
        if let Some(previous) = &previous
            && !moved_on(previous, first)
        {
            return Err(StoreError::BadAnswer {
                op: Operation::ListObjectsV2,
                key: prefix.to_string(),
                detail: format!(
                    "after deleting up to {}, it lists {} again: the listing goes back, or \
                     the prefix is being written while it is deleted",
                    previous.key, first.key
                ),
            });
        }
        if Instant::now() >= until {
            return Ok(Purged::Paused);
        }
        previous = Some(last.clone());
        delete(store, &batch).await?;
        let total = progress
            .objects
            .fetch_add(batch.len() as u64, Ordering::Relaxed)
            + batch.len() as u64;
        debug!(prefix, deleted = total, "deleted a batch");
    }
    abort_uploads(store, prefix, progress).await?;
    // An upload completed as it was aborted, a write since the last round:
    // the marker stays while anything is left.
    if !first_found(store, prefix, versions, &under)
        .await?
        .is_empty()
    {
        return Err(StoreError::BadAnswer {
            op: Operation::ListObjectsV2,
            key: prefix.to_string(),
            detail: "objects appeared under the prefix as it was deleted: something still \
                     writes there"
                .into(),
        });
    }
    // The marker last: until it goes, the volume is there to be deleted.
    if versions {
        delete_marker_versions(store, prefix).await?;
    } else {
        store.delete_object(prefix).await?;
    }
    info!(
        prefix,
        objects = progress.deleted(),
        uploads = progress.uploads.load(Ordering::Relaxed),
        "volume deleted"
    );
    Ok(Purged::Done)
}

/// Deletes the versions of the marker `prefix` that one pass of the listing
/// finds, and no other: a new volume's marker, written once the old one is
/// gone, is a version this pass never saw.
async fn delete_marker_versions(store: &dyn ObjectStore, prefix: &str) -> StoreResult<()> {
    let mut found = Vec::new();
    let mut pages = Pagination::new(Operation::ListObjectVersions, prefix, LISTING_PATIENCE);
    let mut after = None;
    loop {
        let page = page_of(store, prefix, true, after.as_deref(), &|key| key == prefix).await?;
        found.extend(page.found);
        match pages.next(page.entries, page.next)? {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for batch in found.chunks(MAX_DELETE_BATCH) {
        store.delete_batch(batch).await?;
    }
    Ok(())
}

/// Whether a round that starts at `first` moved on from one that ended at
/// `previous`: past its key, or (a key's remaining versions) at the same key
/// but another version.
fn moved_on(previous: &Deletion, first: &Deletion) -> bool {
    first.key > previous.key
        || (first.key == previous.key && first.version_id != previous.version_id)
}

/// Aborts the unfinished uploads under `prefix`, a page at a time (in
/// whatever order the server lists them: not every server sorts them).
async fn abort_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
    progress: &Progress,
) -> StoreResult<()> {
    let mut previous: HashSet<(String, String)> = HashSet::new();
    loop {
        let uploads = store
            .first_multipart_uploads(prefix, MAX_DELETE_BATCH)
            .await?;
        let uploads: Vec<_> = uploads
            .into_iter()
            .filter(|u| inside(prefix, &u.key))
            .collect();
        if uploads.is_empty() {
            return Ok(());
        }
        let listed: HashSet<(String, String)> = uploads
            .iter()
            .map(|u| (u.key.clone(), u.upload_id.clone()))
            .collect();
        if !listed.is_disjoint(&previous) {
            return Err(StoreError::BadAnswer {
                op: Operation::ListMultipartUploads,
                key: prefix.to_string(),
                detail: "uploads it aborted are listed again".into(),
            });
        }
        previous = listed;
        for chunk in uploads.chunks(ONE_BY_ONE) {
            let aborts = chunk
                .iter()
                .map(|u| store.abort_multipart_upload(&u.key, &u.upload_id));
            for result in futures::future::join_all(aborts).await {
                match result {
                    // Finished or aborted since it was listed.
                    Ok(()) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            progress
                .uploads
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Deletes `batch` in one request; where that request is refused or not
/// served (some S3-compatible servers check a DeleteObjects against the
/// bucket, or lack it), objects are deleted one by one, so that a denial is
/// the key's own.
async fn delete(store: &dyn ObjectStore, batch: &[Deletion]) -> StoreResult<()> {
    let err = match store.delete_batch(batch).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let refused = match &err {
        StoreError::AccessDenied { .. } => true,
        // A key XML cannot carry (a control character) makes the whole
        // batch MalformedXML; one by one, it goes in a URL.
        StoreError::Service { info, .. } => {
            matches!(info.code.as_str(), "NotImplemented" | "MalformedXML")
        }
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

/// One page of a listing under a prefix: how many entries it held, the
/// objects (or versions and delete markers) of those that `wanted` keeps, and
/// where the next page starts.
struct Page {
    entries: usize,
    found: Vec<Deletion>,
    next: Option<String>,
}

/// The page of ListObjectsV2 (or, with `versions`, ListObjectVersions) under
/// `prefix` that starts `after` the previous one. A versions listing's key
/// and version markers travel as one token, `KEY\nVERSION` (version IDs hold
/// no newline), to be held to a continuation's rules.
async fn page_of(
    store: &dyn ObjectStore,
    prefix: &str,
    versions: bool,
    after: Option<&str>,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> StoreResult<Page> {
    let max_keys = Some(MAX_DELETE_BATCH as i32);
    if !versions {
        let listing = ListRequest {
            prefix,
            continuation: after,
            max_keys,
            ..ListRequest::default()
        };
        let page = store.list_objects(listing).await?;
        return Ok(Page {
            entries: page.objects.len(),
            found: page
                .objects
                .into_iter()
                .filter(|o| wanted(&o.key))
                .map(|o| Deletion {
                    key: o.key,
                    version_id: None,
                })
                .collect(),
            next: page.next_token,
        });
    }
    let listing = VersionsRequest {
        prefix,
        after: after.and_then(|token| token.rsplit_once('\n')),
        max_keys,
        ..VersionsRequest::default()
    };
    let page = store.list_versions(listing).await?;
    Ok(Page {
        entries: page.versions.len(),
        found: page
            .versions
            .into_iter()
            .filter(|v| wanted(&v.key))
            .map(|v| Deletion {
                key: v.key,
                version_id: Some(v.version_id),
            })
            .collect(),
        next: page.next.map(|(key, version)| format!("{key}\n{version}")),
    })
}

/// What to delete next: the entries `wanted` keeps of the first page under
/// `prefix` that holds any (at most [`MAX_DELETE_BATCH`]); none when no page
/// does.
async fn first_found(
    store: &dyn ObjectStore,
    prefix: &str,
    versions: bool,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> StoreResult<Vec<Deletion>> {
    let op = match versions {
        true => Operation::ListObjectVersions,
        false => Operation::ListObjectsV2,
    };
    let mut pages = Pagination::new(op, prefix, LISTING_PATIENCE);
    let mut after = None;
    loop {
        let page = page_of(store, prefix, versions, after.as_deref(), wanted).await?;
        if !page.found.is_empty() {
            return Ok(page.found);
        }
        match pages.next(page.entries, page.next)? {
            Some(next) => after = Some(next),
            None => return Ok(Vec::new()),
        }
    }
}

/// Whether any version or delete marker is under `prefix`, its marker's
/// aside.
pub(super) async fn holds_versions(store: &dyn ObjectStore, prefix: &str) -> StoreResult<bool> {
    let under = |key: &str| inside(prefix, key);
    Ok(!first_found(store, prefix, true, &under).await?.is_empty())
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
            key = key.escape_debug().to_string(),
            "the endpoint listed a key outside the volume; left alone"
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::lifecycle::tests::{location, volume};
    use crate::csi::lifecycle::{Marker, make, marker};
    use crate::store::faulty::{Fault, FaultyStore};
    use crate::store::memory::MemoryStore;
    use crate::store::{PresignedUrl, Request, Response};
    use std::sync::Arc;

    /// A volume of `files` objects at `vols/a/`, beside what must outlive it.
    async fn filled(files: usize) -> (Arc<MemoryStore>, Location) {
        let store = Arc::new(MemoryStore::new("bkt"));
        let at = location("vols/a");
        make(store.as_ref(), &at, &volume("pvc-a")).await.unwrap();
        for i in 0..files {
            store.put(&format!("vols/a/d{}/f{i}", i % 7), "x");
        }
        for key in OUTSIDE {
            store.put(key, "keep");
        }
        (store, at)
    }

    /// A deadline no test reaches.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn a_purge_past_its_time_hands_over_to_the_next_call() {
        let (store, at) = filled(10).await;
        let done = purge(store.as_ref(), &at, &Progress::default(), Instant::now()).await;
        assert_eq!(done.unwrap(), Purged::Paused);
        assert!(matches!(
            marker(store.as_ref(), &at).await.unwrap(),
            Marker::Volume(_)
        ));
        let done = purge(store.as_ref(), &at, &Progress::default(), later()).await;
        assert_eq!(done.unwrap(), Purged::Done);
        assert_eq!(store.keys(), OUTSIDE);
    }

    const OUTSIDE: [&str; 5] = ["top", "vols/a", "vols/a-b/f", "vols/ab", "vols/b/f"];

    #[tokio::test]
    async fn a_purge_deletes_the_volume_in_bounded_batches_and_nothing_beside_it() {
        let (store, at) = filled(2500).await;
        for i in 0..1500 {
            let upload = store
                .create_multipart_upload(&format!("vols/a/u{i}"), &Default::default())
                .await
                .unwrap();
            assert!(!upload.is_empty());
        }
        store
            .create_multipart_upload("vols/ab/u", &Default::default())
            .await
            .unwrap();
        store.clear_calls();
        let progress = Progress::default();
        purge(store.as_ref(), &at, &progress, later())
            .await
            .unwrap();
        assert_eq!(store.keys(), OUTSIDE);
        assert_eq!(progress.deleted(), 2500);
        assert_eq!(progress.uploads.load(Ordering::Relaxed), 1500);
        assert_eq!(store.pending_uploads(), ["vols/ab/u"]);
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
        purge(&store, &at, &progress, later()).await.unwrap_err();
        // The first page: a thousand keys, the marker among them.
        assert_eq!(progress.deleted(), 999);
        assert!(memory.keys().len() > OUTSIDE.len() + 1);
        assert!(matches!(
            marker(&store, &at).await.unwrap(),
            Marker::Volume(_)
        ));
        purge(&store, &at, &Progress::default(), later())
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
        let denied = purge(&store, &at, &Progress::default(), later())
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
        purge(&store, &at, &Progress::default(), later())
            .await
            .unwrap();
        assert_eq!(memory.keys(), OUTSIDE);
        assert!(memory.count_calls(Operation::DeleteObject) >= 40);
    }

    /// How a [`Lying`] store lies.
    #[derive(Clone, Copy)]
    enum Lie {
        /// Listings also name keys outside what was asked for.
        Outside,
        /// Deletes report success and delete nothing.
        DeletesNothing,
        /// Listings name a new key under the prefix at every round.
        EverMore,
    }

    struct Lying(Arc<MemoryStore>, Lie, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl ObjectStore for Lying {
        fn bucket(&self) -> &str {
            self.0.bucket()
        }

        async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
            if matches!(self.1, Lie::DeletesNothing)
                && matches!(request, Request::DeleteBatch { .. })
            {
                return Ok(Response::Done);
            }
            let answer = self.0.send(request).await?;
            Ok(match answer {
                Response::Listed(mut page) if !page.objects.is_empty() => {
                    let template = page.objects[0].clone();
                    let keys: Vec<String> = match self.1 {
                        Lie::Outside => OUTSIDE.iter().map(|k| k.to_string()).collect(),
                        Lie::EverMore => {
                            let n = self.2.fetch_add(1, Ordering::Relaxed);
                            vec![format!("vols/a/0{n:09}")]
                        }
                        Lie::DeletesNothing => Vec::new(),
                    };
                    for key in keys {
                        let mut info = template.clone();
                        info.key = key;
                        page.objects.push(info);
                    }
                    page.objects.sort_by(|a, b| a.key.cmp(&b.key));
                    Response::Listed(page)
                }
                Response::Uploads(mut uploads) if matches!(self.1, Lie::Outside) => {
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
    async fn a_lying_endpoint_never_gets_a_key_outside_deleted_nor_a_purge_without_end() {
        let (memory, at) = filled(1500).await;
        let store = Lying(memory.clone(), Lie::Outside, Default::default());
        purge(&store, &at, &Progress::default(), later())
            .await
            .unwrap();
        assert_eq!(memory.keys(), OUTSIDE);
        for lie in [Lie::DeletesNothing, Lie::EverMore] {
            let (memory, at) = filled(1500).await;
            let store = Lying(memory.clone(), lie, Default::default());
            let err = purge(&store, &at, &Progress::default(), later())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::BadAnswer { .. }), "{err}");
            // The volume is still there, to be deleted when the endpoint mends.
            assert!(matches!(
                marker(memory.as_ref(), &at).await.unwrap(),
                Marker::Volume(_)
            ));
        }
    }
}
