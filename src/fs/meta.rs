//! chmod, chown and utimens: a change of a file's mode, owner or time goes into
//! the upload of a file being written; on a file already in S3 it waits
//! [`METADATA_DELAY`] for the next one, so that `rsync -a`'s chmod, utimens and
//! rename cost one copy, and is then copied onto the object in place (same
//! bytes, same ETag, every other header kept). A directory's go the same way
//! onto its marker object, which is made if the directory has none.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use super::inode::{Kind, ROOT_INO};
use super::posix::Posix;
use super::{Fs, FsError, FsResult};
use crate::store::{ObjectHeaders, StoreError};

/// How long a change of a closed file's mode, owner or time waits for more.
pub const METADATA_DELAY: Duration = Duration::from_millis(500);

/// A change of mode, owner or time not yet in S3.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    posix: Posix,
    since: Instant,
}

impl Fs {
    /// Sets what `change` sets of `ino`'s mode, owner and time: a file's in
    /// its object, a directory's in its marker object (made if it has none).
    /// The volume root's are not kept.
    pub(super) fn change_posix(&self, ino: u64, change: Posix) -> FsResult<()> {
        let node = self.node(ino)?;
        if !self.config.metadata || ino == ROOT_INO || change == Posix::default() {
            return Ok(());
        }
        // A file open with its name gone keeps its change to itself, as an
        // unlinked file does: the object under the name is another's.
        if node.unlinked {
            let mut table = self.inodes.lock();
            table.set_posix(ino, node.stat.posix.unwrap_or_default().updated(change));
            return Ok(());
        }
        // A file being written carries it in its next upload; it also waits
        // for a copy in place, which that upload makes moot (see
        // [`Fs::settle_pending_posix`]), and which is all there is for a file
        // whose content is in S3 already.
        if let Some(file) = self.staged_file(ino) {
            file.set_posix(change);
        }
        self.merge_pending_posix(ino, |waiting| waiting.updated(change));
        let mut table = self.inodes.lock();
        table.set_posix(ino, node.stat.posix.unwrap_or_default().updated(change));
        Ok(())
    }

    /// An upload of `ino` carried `sent`: what waited and is in it waits no
    /// more.
    pub(super) fn settle_pending_posix(&self, ino: u64, sent: Posix) {
        let mut pending = self.pending_posix.lock();
        if pending
            .get(&ino)
            .is_some_and(|waiting| sent.updated(waiting.posix) == sent)
        {
            pending.remove(&ino);
        }
    }

    /// `change`, taken and not put in S3, waits for `ino` again, under what
    /// came since.
    pub(super) fn restore_pending_posix(&self, ino: u64, change: Posix) {
        self.merge_pending_posix(ino, |since| change.updated(since));
    }

    fn merge_pending_posix(&self, ino: u64, merge: impl FnOnce(Posix) -> Posix) {
        let mut pending = self.pending_posix.lock();
        let entry = pending.entry(ino).or_insert(Pending {
            posix: Posix::default(),
            since: Instant::now(),
        });
        entry.posix = merge(entry.posix);
    }

    /// The mode, owner and time `ino` shows: what S3 said, with what is not in
    /// S3 yet.
    pub(super) fn shown_posix(&self, ino: u64, known: Option<Posix>) -> Option<Posix> {
        match self.pending_posix.lock().get(&ino) {
            Some(pending) => Some(known.unwrap_or_default().updated(pending.posix)),
            None => known,
        }
    }

    /// The change waiting for `ino`, taken: whoever takes it puts it in S3.
    pub(super) fn take_pending_posix(&self, ino: u64) -> Option<Posix> {
        self.pending_posix.lock().remove(&ino).map(|p| p.posix)
    }

    /// The headers an object this mount makes carries: `posix` in its user
    /// metadata and, unless `--no-content-type`, the type of `key`'s
    /// extension (a directory marker's, s3fs's).
    pub(super) fn own_headers(&self, key: &str, posix: Posix, kind: Kind) -> ObjectHeaders {
        let mut headers = posix.headers(kind);
        if self.config.content_types {
            headers.content_type = Some(
                match kind {
                    Kind::File => super::content_type::of_file(key),
                    Kind::Directory => super::content_type::DIRECTORY,
                }
                .to_string(),
            );
        }
        headers
    }

    /// The headers `key` (of `ino`) must carry with `change`: built from the
    /// mode, owner and time alone when this mount uploaded the object (they are
    /// all it carries, with its type), else from a HEAD. With the version they apply to: its
    /// ETag and size.
    pub(super) async fn headers_with(
        &self,
        ino: u64,
        key: &str,
        change: Posix,
    ) -> FsResult<(ObjectHeaders, String, u64)> {
        let node = self.node(ino)?;
        let kind = node.kind;
        // An encrypted object carries its envelope too: always asked for.
        let own = node.stat.own_headers && self.config.encryption.is_none();
        let (mut headers, posix, etag, size) = match node.stat.posix.filter(|_| own) {
            Some(own) => (
                self.own_headers(key, Posix::default(), kind),
                own,
                node.stat.etag.clone(),
                node.stat.size,
            ),
            None => {
                let info = self.store.head_object(key).await?;
                let headers = info.headers.unwrap_or_default();
                let posix = Posix::read(&headers.user, kind);
                (headers, posix, info.etag, info.size)
            }
        };
        posix.updated(change).write(&mut headers.user, kind);
        Ok((headers, etag, size))
    }

    /// Puts the change waiting for `ino` in S3, if one is: a copy of the object
    /// onto itself with the new metadata, pinned to the ETag it was read at.
    pub(super) async fn apply_pending_posix(&self, ino: u64) -> FsResult<()> {
        let Some(change) = self.take_pending_posix(ino) else {
            return Ok(());
        };
        let Ok(node) = self.named_node(ino) else {
            return Ok(()); // unlinked or replaced since: the name is not its own
        };
        // Written again since: the upload carries it (none comes for what a
        // killed process left, so the object in S3 gets it now).
        if self
            .staged_file(ino)
            .is_some_and(|file| file.is_dirty() && file.held_back().is_none())
        {
            return Ok(());
        }
        let (headers, etag, size) = match self.headers_with(ino, &node.key, change).await {
            Err(FsError::Store(e))
                if node.kind == Kind::Directory && matches!(*e, StoreError::NotFound { .. }) =>
            {
                return self.make_marker(ino, &node.key, change).await;
            }
            found => found?,
        };
        let copied = self
            .copy(&node.key, &node.key, size, Some(&etag), Some(&headers))
            .await?;
        // Reads pinned to the version before read the copy.
        self.uploads
            .copies
            .note(&node.key, &etag, &node.key, &copied);
        debug!(
            key = node.key,
            ?change,
            "mode, owner or time changed in place"
        );
        let mut table = self.inodes.lock();
        table.set_etag(ino, copied);
        // What the object carries now, whatever a refresh learnt meanwhile.
        table.set_posix(ino, Posix::read(&headers.user, node.kind));
        if etag != node.stat.etag {
            // Another client's version got the change: learn the rest of it.
            table.expire(ino);
        }
        Ok(())
    }

    /// A directory with no marker object gets one, carrying `change`.
    async fn make_marker(&self, ino: u64, key: &str, change: Posix) -> FsResult<()> {
        let headers = self.own_headers(key, change, Kind::Directory);
        let etag = self.store.put_object(key, Bytes::new(), &headers).await?;
        debug!(
            key,
            ?change,
            "directory marker made for its mode, owner or time"
        );
        let mut table = self.inodes.lock();
        table.set_etag(ino, etag);
        table.set_posix(ino, change);
        Ok(())
    }

    /// Puts every change that has waited `delay` in S3; the keys of those that
    /// could not be.
    pub async fn apply_metadata(&self, delay: Duration) -> Vec<String> {
        let due: Vec<u64> = {
            let pending = self.pending_posix.lock();
            pending
                .iter()
                .filter(|(_, p)| p.since.elapsed() >= delay)
                .map(|(ino, _)| *ino)
                .collect()
        };
        let mut failed = Vec::new();
        for ino in due {
            if let Err(e) = self.apply_pending_posix(ino).await {
                let key = self.node(ino).map(|n| n.key).unwrap_or_default();
                warn!(key, "the change of mode, owner or time was not kept: {e:#}");
                failed.push(key);
            }
        }
        failed
    }

    /// Applies changes as they come due, for as long as the volume lives.
    pub async fn apply_metadata_as_due(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(METADATA_DELAY / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.running().is_err() {
                return;
            }
            self.apply_metadata(METADATA_DELAY).await;
        }
    }
}
