//! rename(2) on S3, which has no rename: a file is copied (CopyObject; part by
//! part above 5 GiB) and then deleted; a directory has every key under it copied,
//! then deleted. Not atomic, and a directory's rename is bounded.

use std::ffi::OsStr;
use std::time::SystemTime;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{debug, info, warn};

use super::audit::errno_of;
use super::changes::Taken;
use super::content_type;
use super::inode::Kind;
use super::posix::Posix;
use super::write::{MAX_KEY_LEN, child_key};
use super::xattrs::{self, METADATA_LIMIT};
use super::{Fs, FsError, FsResult};
use crate::audit::{Event, Op};
use crate::store::{ListRequest, ObjectHeaders, Operation, Pagination, StoreError, UploadedPart};

/// A directory rename copies every key under it; beyond this many it answers
/// EXDEV instead, and `mv` copies and deletes the tree itself, file by file.
const MAX_DIRECTORY_RENAME_KEYS: usize = 1000;

/// Copies in flight during a directory rename.
const RENAME_CONCURRENCY: usize = 16;

/// A change of a file's mode, owner or time its rename's copy carried (or,
/// its object's metadata full, could not carry).
struct Carried<'a> {
    taken: Taken<'a>,
    kept: bool,
    key: String,
}

impl Carried<'_> {
    /// The rename is done: the change is in S3 with it, or never will be.
    fn keep(self) {
        match self.kept {
            true => self.taken.settle(),
            false => {
                warn!(
                    key = self.key,
                    "the change of mode, owner or time cannot be kept: the object's metadata \
                     would not fit S3's 2 KB with it"
                );
                self.taken.lost();
            }
        }
    }
}

/// The turn of the volume's changes of modes, owners and times, held.
type Turn<'a> = tokio::sync::MutexGuard<'a, ()>;

/// RENAME_NOREPLACE and RENAME_EXCHANGE from renameat2(2).
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

impl Fs {
    /// rename(2). A file is copied (CopyObject; part by part above 5 GiB) and then
    /// deleted; a directory has every key under it copied, then deleted: not
    /// atomic, and bounded by [`MAX_DIRECTORY_RENAME_KEYS`].
    pub(super) async fn move_entry(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.writable()?;
        if flags & RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid("S3 cannot swap two names atomically"));
        }
        let new_name = self.valid_name(new_name)?;
        let to_dir = self.directory(new_parent)?;
        let (from_dir, name, ino, kind) = self.existing_child(parent, name).await?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let target = self.existing(new_parent, new_name).await?;
        if target.is_some() && flags & RENAME_NOREPLACE != 0 {
            return Err(FsError::Exists);
        }
        match (kind, target) {
            (Kind::File, Some((_, Kind::Directory))) => return Err(FsError::IsADirectory),
            (Kind::Directory, Some((_, Kind::File))) => return Err(FsError::NotADirectory),
            (Kind::Directory, Some((target, Kind::Directory))) => {
                let key = format!("{}{new_name}/", to_dir.key);
                if self.has_children(target, &key).await? {
                    return Err(FsError::NotEmpty);
                }
            }
            _ => {}
        }
        let from = child_key(&from_dir.key, name, kind)?;
        let to = child_key(&to_dir.key, new_name, kind)?;
        // A file the rename replaces that is still open for writing is, for
        // its descriptors, an unlinked file from now on: nothing they do may
        // change the object under the name. Its uploads wait (the one under
        // way ends first) and are given up once the name is the new file's.
        let replaced_file = match target {
            Some((replaced, Kind::File)) => self.staging.file(replaced),
            _ => None,
        };
        let mut paused = match &replaced_file {
            Some(file) => Some(file.pause().await),
            None => None,
        };
        // From the copy on, the name is the new file's: the replaced file's
        // uploads are given up (outside the turn below, which never waits
        // for a file).
        let discard_replaced = async |paused: Option<_>| {
            if let (Some(file), Some(paused)) = (&replaced_file, paused) {
                file.discard_paused(paused).await;
            }
        };
        // The turn of the volume's changes of modes, owners and times, taken
        // by the copy (once what it copies is uploaded) and held to the end:
        // a change is carried by this rename's copy, or copied onto the
        // object before it, never onto the old name after the copy.
        let replaced = target.map(|(replaced, _)| replaced);
        let (copied_etag, carried, turn) = match kind {
            Kind::File => {
                let (copied, carried, turn) = self.copy_file(ino, &from, &to, replaced).await?;
                if let Err(e) = self.store.delete_object(&from).await {
                    // The file is under both names now, and the rename fails:
                    // the new name is S3's to tell on its next look.
                    {
                        let mut table = self.inodes.lock();
                        table.remove_child(new_parent, new_name);
                        table.unlist(new_parent);
                    }
                    drop((carried, turn));
                    discard_replaced(paused.take()).await;
                    return Err(e.into());
                }
                debug!(from, to, "renamed");
                (Some(copied), carried, turn)
            }
            Kind::Directory => {
                if to.starts_with(&from) {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                let turn = self.rename_directory(&from, &to).await?;
                (None, None, Some(turn))
            }
        };
        let moved = {
            let mut table = self.inodes.lock();
            let moved = table.rename(ino, new_parent, new_name);
            // The copy is a new object: a copy of a multipart object has an ETag
            // of its own, which reads of the new name must pin to.
            if let Some(etag) = copied_etag {
                table.set_etag(ino, etag);
            }
            moved
        };
        // Files open for writing under the new name upload there.
        {
            let table = self.inodes.lock();
            for moved_ino in moved {
                if let (Some(file), Some(node)) =
                    (self.staging.file(moved_ino), table.get(moved_ino))
                {
                    file.set_key(&node.key);
                }
            }
        }
        if let Some((replaced, _)) = target {
            // What waited for what the rename replaced is moot.
            self.changes.drop_pending(replaced);
        }
        if let Some(carried) = carried {
            carried.keep();
        }
        drop(turn);
        discard_replaced(paused.take()).await;
        if let Some((replaced, Kind::File)) = target {
            self.discard_unlinked(replaced).await;
        }
        Ok(())
    }

    /// Makes a file being written here durable under its current name first, so
    /// the copy carries what the application wrote (not what a process killed
    /// by a signal left: the copy is of what S3 holds).
    async fn settle(&self, ino: u64) -> FsResult<Option<String>> {
        if let Some(file) = self.staging.file(ino)
            && file.held_back().is_none()
        {
            self.publish(ino, &file).await?;
        }
        Ok(self
            .node(ino)
            .ok()
            .map(|n| n.stat.etag)
            .filter(|etag| !etag.is_empty()))
    }

    /// Copies a file's object to its new name (the source is the caller's to
    /// delete); returns the ETag of the copy, and the change of its mode,
    /// owner or time that was waiting, if the copy carries it (to be kept
    /// once the rename is done; given back if it fails). The copy carries the
    /// rename's change time (unless the volume keeps no metadata), that
    /// change, and the type of a new extension.
    async fn copy_file(
        &self,
        ino: u64,
        from: &str,
        to: &str,
        replaced: Option<u64>,
    ) -> FsResult<(String, Option<Carried<'_>>, Option<Turn<'_>>)> {
        let etag = self.settle(ino).await?;
        // Needed only when either name has a change (the kernel holds both
        // files meanwhile: none comes); after the upload, as the turn's
        // holder never waits for a file.
        let changed = |ino| self.changes.has(ino);
        let turn = match changed(ino) || replaced.is_some_and(changed) {
            true => Some(self.metadata_turn.lock().await),
            false => None,
        };
        let size = self.node(ino)?.stat.size;
        // A new extension brings its type; any other rename keeps the
        // object's own.
        let retype = self.config.content_types && content_type::changes_on_rename(from, to);
        if !self.config.metadata && !retype {
            let copied = self.copy(from, to, size, etag.as_deref(), None).await?;
            if let Some(source) = etag {
                self.uploads.copies.note(from, &source, to, &copied);
            }
            return Ok((copied, None, turn));
        }
        let pending = self.changes.take_pending(ino);
        let change = Posix {
            ctime: self.config.metadata.then(SystemTime::now),
            ..pending
                .as_ref()
                .map(|taken| taken.posix().clone())
                .unwrap_or_default()
        };
        let (mut headers, etag, size) = self.headers_with(ino, from, &change, false).await?;
        if retype {
            headers.content_type = Some(content_type::of_file(to).to_string());
        }
        // The change time alone never makes an object's metadata too large
        // for S3: without it, the copy keeps the object's own. Nor does it
        // carry a change that would not fit: that one cannot be kept.
        let full = xattrs::metadata_bytes(&headers.user) > METADATA_LIMIT;
        let replace = (retype || !full).then_some(&headers);
        let copied = self.copy(from, to, size, Some(&etag), replace).await?;
        if self.config.metadata && replace.is_some() {
            self.inodes
                .lock()
                .set_posix(ino, Posix::read(&headers.user, Kind::File));
        }
        // Descriptors open on the file read on from the copy.
        self.uploads.copies.note(from, &etag, to, &copied);
        let carried = pending.map(|taken| Carried {
            taken,
            kept: replace.is_some(),
            key: to.to_string(),
        });
        Ok((copied, carried, turn))
    }

    /// Copies one object, pinned to `etag` so a concurrent replacement is not
    /// half-copied, with its metadata and content headers or with `replace`;
    /// returns the copy's ETag.
    pub(super) async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        etag: Option<&str>,
        replace: Option<&ObjectHeaders>,
    ) -> FsResult<String> {
        let limit = self.writable()?.single_copy_limit;
        // An encrypted object is its tag longer in S3 than the file shows.
        let stored = self.config.codec.stored_size(size);
        if stored <= limit {
            return Ok(self
                .store
                .copy_object(from, to, etag, stored, replace)
                .await?);
        }
        // A multipart copy carries nothing by itself: the headers are set when
        // the upload starts, from the source's own unless replaced. Encrypted,
        // the size in S3 is what a HEAD says (a plaintext object let through
        // has no tag).
        let (size, headers) = match replace {
            Some(headers) if !self.config.codec.encrypts() => (size, headers.clone()),
            _ => {
                let source = self.store.head_object(from).await?;
                if let Some(expected) = etag.filter(|etag| *etag != source.etag) {
                    return Err(StoreError::Changed {
                        op: Operation::HeadObject,
                        key: from.to_string(),
                        expected_etag: expected.to_string(),
                    }
                    .into());
                }
                if source.size <= limit {
                    return Ok(self
                        .store
                        .copy_object(from, to, etag, source.size, replace)
                        .await?);
                }
                let headers = replace.cloned().or(source.headers).unwrap_or_default();
                (source.size, headers)
            }
        };
        let upload_id = self.store.create_multipart_upload(to, &headers).await?;
        let result = async {
            let mut parts = Vec::new();
            let mut start = 0;
            while start < size {
                let end = (start + limit).min(size);
                let number = parts.len() as i32 + 1;
                let etag = self
                    .store
                    .upload_part_copy(from, to, &upload_id, number, start..end, etag)
                    .await?;
                parts.push(UploadedPart { number, etag });
                start = end;
            }
            match (from == to, etag) {
                // Onto itself (a change of metadata): only over the version
                // copied, never over one written meanwhile.
                (true, Some(etag)) => {
                    match self
                        .store
                        .complete_multipart_upload_over(to, &upload_id, &parts, etag)
                        .await
                    {
                        // A server without the condition: checked just before.
                        Err(e) if e.refuses_condition() => {
                            let now = self.store.head_object(to).await?;
                            if now.etag != etag {
                                return Err(StoreError::Changed {
                                    op: Operation::CompleteMultipartUpload,
                                    key: to.to_string(),
                                    expected_etag: etag.to_string(),
                                });
                            }
                            self.store
                                .complete_multipart_upload(to, &upload_id, &parts)
                                .await
                        }
                        completed => completed,
                    }
                }
                _ => {
                    self.store
                        .complete_multipart_upload(to, &upload_id, &parts)
                        .await
                }
            }
        }
        .await;
        if result.is_err() {
            let _ = self.store.abort_multipart_upload(to, &upload_id).await;
        }
        Ok(result?)
    }

    /// Copies every key under `from` to `to`, then deletes them; returns the
    /// turn of the volume's changes of modes, owners and times, taken once
    /// the files being written inside are uploaded.
    async fn rename_directory(&self, from: &str, to: &str) -> FsResult<Turn<'_>> {
        // Files being written inside are uploaded first, so they are copied too.
        let staged: Vec<u64> = {
            let inside = self.staging.all();
            let table = self.inodes.lock();
            inside
                .into_iter()
                .map(|(ino, _)| ino)
                .filter(|s| table.get(*s).is_some_and(|n| n.key.starts_with(from)))
                .collect()
        };
        for staged_ino in staged {
            self.settle(staged_ino).await?;
        }
        let turn = self.metadata_turn.lock().await;
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = Pagination::new(Operation::ListObjectsV2, from, self.config.io_timeout);
        loop {
            let page = self
                .store
                .list_objects(ListRequest {
                    prefix: from,
                    continuation: token.as_deref(),
                    ..ListRequest::default()
                })
                .await?;
            let listed = page.objects.len();
            // Only keys under the directory are moved (the store keeps to the
            // prefix; this holds whatever a server answers).
            let objects = page.objects.into_iter().filter(|o| o.key.starts_with(from));
            for object in objects {
                if to.len() + object.key.len() - from.len() > MAX_KEY_LEN {
                    return Err(FsError::NameTooLong);
                }
                keys.push((object.key, object.size, object.etag));
            }
            if keys.len() > MAX_DIRECTORY_RENAME_KEYS {
                return Err(FsError::CrossDevice(format!(
                    "{from} holds more than {MAX_DIRECTORY_RENAME_KEYS} objects; renamed file \
                     by file instead"
                )));
            }
            token = pages.next(listed, page.next_token)?;
            if token.is_none() {
                break;
            }
        }
        // Copy everything, then delete: a failure part-way leaves both copies,
        // never neither.
        let mut copies = FuturesUnordered::new();
        for (key, size, etag) in &keys {
            if copies.len() == RENAME_CONCURRENCY
                && let Some(result) = copies.next().await
            {
                result?;
            }
            let target = format!("{to}{}", &key[from.len()..]);
            copies.push(async move {
                let copied = self.copy(key, &target, *size, Some(etag), None).await?;
                self.uploads.copies.note(key, etag, &target, &copied);
                Ok::<_, FsError>(())
            });
        }
        while let Some(result) = copies.next().await {
            result?;
        }
        let mut deletes = FuturesUnordered::new();
        for (key, _, _) in &keys {
            if deletes.len() == RENAME_CONCURRENCY
                && let Some(result) = deletes.next().await
            {
                result?;
            }
            deletes.push(self.store.delete_object(key));
        }
        while let Some(result) = deletes.next().await {
            result?;
        }
        info!(from, to, objects = keys.len(), "directory renamed");
        Ok(turn)
    }
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
    /// [`Fs::move_entry`], recorded (with the keys as a file's, without a
    /// directory's `/`: a rename names either).
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        // The keys before the rename moves them.
        let from = self.key_of_name(parent, name, Kind::File);
        let to = self.key_of_name(new_parent, new_name, Kind::File);
        let result = self
            .move_entry(parent, name, new_parent, new_name, flags)
            .await;
        self.audit(|| Event {
            to: Some(to),
            errno: errno_of(&result),
            ..Event::new(Op::Rename, from)
        });
        result
    }
}
