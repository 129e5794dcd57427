//! The changes a read-write volume makes: creating and writing files (through
//! [`upload`](super::upload)), truncation, directories, unlink and rename.
//!
//! Every method starts with [`Fs::writable`], so a read-only volume refuses each
//! change with EROFS before any request is sent.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{debug, info, warn};

use super::inode::{Kind, Node, Stat};
use super::upload::{Base, StagedFile};
use super::{Entry, Fs, FsError, FsResult, OpenFile, OpenFlags, Staging};
use crate::names::{NameProblem, check_name};
use crate::store::{ListRequest, UploadedPart};

/// A directory rename copies every key under it; beyond this many it answers
/// EXDEV instead, and `mv` copies and deletes the tree itself, file by file.
pub const MAX_DIRECTORY_RENAME_KEYS: usize = 1000;

/// Copies in flight during a directory rename.
const RENAME_CONCURRENCY: usize = 16;

/// S3's longest key, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// The key of `name` in the directory whose key is `parent_key`: ENAMETOOLONG
/// before any request if S3 could not store it.
fn child_key(parent_key: &str, name: &str, kind: Kind) -> FsResult<String> {
    let key = match kind {
        Kind::File => format!("{parent_key}{name}"),
        Kind::Directory => format!("{parent_key}{name}/"),
    };
    if key.len() > MAX_KEY_LEN {
        return Err(FsError::NameTooLong);
    }
    Ok(key)
}

/// Characters XML 1.0 documents cannot hold: the C0 controls but tab, newline and
/// carriage return.
fn not_in_xml(c: char) -> bool {
    c < ' ' && !matches!(c, '\t' | '\n' | '\r')
}

/// RENAME_NOREPLACE and RENAME_EXCHANGE from renameat2(2).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

impl Fs {
    fn valid_name<'a>(&self, name: &'a OsStr) -> FsResult<&'a str> {
        let name = name
            .to_str()
            .ok_or(FsError::Invalid("file names in S3 are UTF-8"))?;
        match check_name(name) {
            // S3 answers in XML 1.0, which cannot carry these: the answers to
            // CreateMultipartUpload and CompleteMultipartUpload name the key, and
            // would be unreadable. Existing keys with them can still be read.
            Ok(()) if name.chars().any(not_in_xml) => Err(FsError::Invalid(
                "S3 cannot name a key with control characters other than tab and newline",
            )),
            Ok(()) => Ok(name),
            Err(NameProblem::TooLong) => Err(FsError::NameTooLong),
            Err(_) => Err(FsError::Invalid("not a usable file name")),
        }
    }

    fn directory(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        Ok(node)
    }

    /// The staged copy of `ino`, shared by every handle open on it; created by the
    /// first handle (empty for O_TRUNC, else standing for the object in S3).
    pub(super) async fn stage(&self, ino: u64, flags: OpenFlags) -> FsResult<Arc<StagedFile>> {
        if let Some(file) = self.attach(ino) {
            if flags.truncate {
                file.truncate(0).await?;
            }
            return Ok(file);
        }
        let config = self.writable()?;
        let mut node = self.node(ino)?;
        if !flags.truncate
            && node
                .remaining(self.config.metadata_ttl, Instant::now())
                .is_none()
        {
            self.getattr(ino).await?;
            node = self.node(ino)?;
        }
        let base = (!flags.truncate).then(|| Base {
            etag: node.stat.etag.clone(),
            size: node.stat.size,
        });
        let file = StagedFile::new(
            &node.key,
            base,
            self.store.clone(),
            config,
            self.upload_permits.clone(),
        )?;
        let mut staged = self.staged.lock().unwrap();
        // Another open may have staged it meanwhile: share that one.
        let entry = staged.entry(ino).or_insert(Staging { file, handles: 0 });
        entry.handles += 1;
        Ok(entry.file.clone())
    }

    /// One more handle on an already staged file.
    fn attach(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let mut staged = self.staged.lock().unwrap();
        let entry = staged.get_mut(&ino)?;
        entry.handles += 1;
        Some(entry.file.clone())
    }

    /// Creates `name` in `parent`, empty and open for writing. It is visible in
    /// the mount at once and in S3 once closed.
    pub async fn create(&self, parent: u64, name: &OsStr) -> FsResult<(Entry, u64)> {
        let config = self.writable()?;
        let name = self.valid_name(name)?;
        let parent_node = self.directory(parent)?;
        let key = child_key(&parent_node.key, name, Kind::File)?;
        let file = StagedFile::new(
            &key,
            None,
            self.store.clone(),
            config,
            self.upload_permits.clone(),
        )?;
        let now = SystemTime::now();
        let ino = {
            let mut table = self.inodes.lock().unwrap();
            let stat = Stat {
                size: 0,
                etag: String::new(),
                mtime: now,
            };
            let ino = table.upsert(parent, name, Kind::File, stat, Instant::now());
            table.add_lookup(ino);
            ino
        };
        self.staged.lock().unwrap().insert(
            ino,
            Staging {
                file: file.clone(),
                handles: 1,
            },
        );
        let fh = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.files.lock().unwrap().insert(
            fh,
            OpenFile::Staged {
                ino,
                file,
                writable: true,
            },
        );
        debug!(ino, fh, key, "created");
        let entry = self.getattr(ino).await?;
        Ok((entry, fh))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        match self.handle(fh)? {
            OpenFile::Staged {
                file,
                writable: true,
                ..
            } => {
                file.write(offset, data).await?;
                Ok(data.len() as u32)
            }
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    /// [`Fs::write`] without waiting, for the FUSE thread, which can then write
    /// straight from the kernel's buffer: `None` when the write has to wait (the
    /// object must be downloaded first), and [`Fs::write`] is the way.
    pub fn write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<FsResult<u32>> {
        match self.handle(fh) {
            Ok(OpenFile::Staged {
                file,
                writable: true,
                ..
            }) => file
                .write_now(offset, data)
                .map(|r| r.map(|()| data.len() as u32).map_err(FsError::from)),
            Ok(_) => Some(Err(FsError::BadHandle(fh))),
            Err(e) => Some(Err(e)),
        }
    }

    /// close(2): closing a handle that can write returns once what was written
    /// through any handle of the file is durable in S3. Closing a reader uploads
    /// nothing, even while others write.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        match self.handle(fh)? {
            OpenFile::Staged {
                ino,
                file,
                writable: true,
            } => self.upload(ino, &file).await,
            _ => Ok(()),
        }
    }

    /// fsync(2): the file's content as written so far, by any handle, is durable
    /// in S3 when this returns.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        match self.handle(fh)? {
            OpenFile::Staged { ino, file, .. } => self.upload(ino, &file).await,
            OpenFile::Object { .. } => Ok(()),
        }
    }

    /// Uploads a staged file if it changed and records what S3 now holds.
    pub(super) async fn upload(&self, ino: u64, file: &StagedFile) -> FsResult<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(FsError::Stopped);
        }
        let Some(uploaded) = file.flush().await? else {
            return Ok(());
        };
        let mut table = self.inodes.lock().unwrap();
        if let Some(node) = table.get(ino).cloned() {
            let stat = Stat {
                size: uploaded.size,
                etag: uploaded.etag,
                // The time of the last change, as shown while the file was open, so
                // closing it does not move the time.
                mtime: file.mtime(),
            };
            table.upsert(node.parent, &node.name, Kind::File, stat, Instant::now());
        }
        Ok(())
    }

    /// setattr(2): a size changes the file; modes, owners and times are accepted
    /// and not kept (every file shows the mount's --file-mode, owner and S3's
    /// modification time), so `cp -p`, `rsync -a` and `tar x` work.
    pub async fn setattr(&self, ino: u64, size: Option<u64>) -> FsResult<Entry> {
        self.writable()?;
        let node = self.node(ino)?;
        if let Some(size) = size {
            if node.kind != Kind::File {
                return Err(FsError::IsADirectory);
            }
            match self.staged_file(ino) {
                Some(file) => file.truncate(size).await?,
                None => {
                    // truncate(1) on a file nobody has open: stage, change, upload.
                    let file = self
                        .stage(
                            ino,
                            OpenFlags {
                                write: true,
                                truncate: size == 0,
                            },
                        )
                        .await?;
                    let result = async {
                        file.truncate(size).await?;
                        self.upload(ino, &file).await
                    }
                    .await;
                    self.unstage(ino).await;
                    result?;
                }
            }
        }
        self.getattr(ino).await
    }

    /// One handle less on a staged file; the last one frees the staging file.
    pub(super) async fn unstage(&self, ino: u64) {
        let last = {
            let mut staged = self.staged.lock().unwrap();
            match staged.get_mut(&ino) {
                Some(entry) if entry.handles > 1 => {
                    entry.handles -= 1;
                    None
                }
                Some(_) => staged.remove(&ino).map(|e| e.file),
                None => None,
            }
        };
        if let Some(file) = last {
            if file.is_dirty() {
                warn!(
                    key = file.key(),
                    "closed with changes whose upload failed; S3 keeps the previous version"
                );
            }
            file.close().await;
        }
    }

    /// The volume is going away: nothing more is uploaded, and every file still
    /// being written is abandoned, its multipart upload aborted once any upload
    /// already under way has finished (so a close in progress still completes).
    /// Returns the keys whose changes were not uploaded. A close after this fails
    /// (ENOTCONN), so no application is told its data is safe when it is not.
    pub async fn stop(&self) -> Vec<String> {
        self.stopped.store(true, Ordering::SeqCst);
        let files: Vec<Arc<StagedFile>> = {
            let mut staged = self.staged.lock().unwrap();
            staged.drain().map(|(_, entry)| entry.file).collect()
        };
        let mut lost = Vec::new();
        for file in files {
            if file.abandon().await {
                lost.push(file.key());
            }
        }
        lost
    }

    /// mkdir(2): a zero-byte marker object `name/`.
    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        self.writable()?;
        let name = self.valid_name(name)?;
        let parent_node = self.directory(parent)?;
        let key = child_key(&parent_node.key, name, Kind::Directory)?;
        self.store.put_object(&key, Bytes::new()).await?;
        let now = SystemTime::now();
        let ino = {
            let mut table = self.inodes.lock().unwrap();
            table.upsert(
                parent,
                name,
                Kind::Directory,
                Stat::directory(now),
                Instant::now(),
            )
        };
        self.inodes.lock().unwrap().add_lookup(ino);
        debug!(key, "directory created");
        self.getattr(ino).await
    }

    /// The inode and kind of `parent/name`, from the table or S3.
    async fn existing(&self, parent: u64, name: &str) -> FsResult<Option<(u64, Kind)>> {
        let known = {
            let table = self.inodes.lock().unwrap();
            table
                .child(parent, name)
                .map(|(ino, node)| (ino, node.kind))
        };
        if known.is_some() {
            return Ok(known);
        }
        match self.lookup(parent, OsStr::new(name)).await {
            Ok(entry) => {
                // That lookup is ours, not the kernel's.
                self.forget(entry.attr.ino, 1);
                Ok(Some((entry.attr.ino, entry.attr.kind)))
            }
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `parent/name` as unlink, rmdir and rename find it: the parent directory, the
    /// name, and the inode and kind it names; ENOENT when it does not exist.
    async fn existing_child<'a>(
        &self,
        parent: u64,
        name: &'a OsStr,
    ) -> FsResult<(Node, &'a str, u64, Kind)> {
        let name = self.valid_name(name)?;
        let parent_node = self.directory(parent)?;
        let (ino, kind) = self
            .existing(parent, name)
            .await?
            .ok_or(FsError::NotFound)?;
        Ok((parent_node, name, ino, kind))
    }

    /// unlink(2): DeleteObject. A file still open here is not uploaded any more.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let (parent_node, name, ino, kind) = self.existing_child(parent, name).await?;
        if kind == Kind::Directory {
            return Err(FsError::IsADirectory);
        }
        if let Some(file) = self.staged_file(ino) {
            file.discard().await;
        }
        let key = format!("{}{name}", parent_node.key);
        self.store.delete_object(&key).await?;
        self.inodes.lock().unwrap().remove_child(parent, name);
        debug!(key, "deleted");
        Ok(())
    }

    /// Whether anything lies under directory `key`, in S3 or staged here.
    async fn has_children(&self, ino: u64, key: &str) -> FsResult<bool> {
        let staged_inside = {
            let table = self.inodes.lock().unwrap();
            let staged = self.staged.lock().unwrap();
            table
                .children_of(ino)
                .iter()
                .any(|c| staged.contains_key(c))
        };
        if staged_inside {
            return Ok(true);
        }
        let page = self
            .store
            .list_objects(ListRequest {
                prefix: key,
                max_keys: Some(2),
                ..ListRequest::default()
            })
            .await?;
        Ok(page.objects.iter().any(|o| o.key != key) || !page.common_prefixes.is_empty())
    }

    /// rmdir(2): only when empty; deletes the marker if there is one.
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let (parent_node, name, ino, kind) = self.existing_child(parent, name).await?;
        if kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        let key = format!("{}{name}/", parent_node.key);
        if self.has_children(ino, &key).await? {
            return Err(FsError::NotEmpty);
        }
        self.store.delete_object(&key).await?;
        self.inodes.lock().unwrap().remove_child(parent, name);
        debug!(key, "directory removed");
        Ok(())
    }

    /// rename(2). A file is copied (CopyObject; part by part above 5 GiB) and then
    /// deleted; a directory has every key under it copied, then deleted: not
    /// atomic, and bounded by [`MAX_DIRECTORY_RENAME_KEYS`].
    pub async fn rename(
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
        let copied_etag = match kind {
            Kind::File => Some(self.rename_file(ino, &from, &to).await?),
            Kind::Directory => {
                if to.starts_with(&from) {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                self.rename_directory(&from, &to).await?;
                None
            }
        };
        let moved = {
            let mut table = self.inodes.lock().unwrap();
            let moved = table.rename(ino, new_parent, new_name);
            // The copy is a new object: a copy of a multipart object has an ETag
            // of its own, which reads of the new name must pin to.
            if let Some(etag) = copied_etag {
                table.set_etag(ino, etag);
            }
            moved
        };
        // Files open for writing under the new name upload there.
        let table = self.inodes.lock().unwrap();
        let staged = self.staged.lock().unwrap();
        for moved_ino in moved {
            if let (Some(entry), Some(node)) = (staged.get(&moved_ino), table.get(moved_ino)) {
                entry.file.set_key(&node.key);
            }
        }
        Ok(())
    }

    /// Makes a file being written here durable under its current name first, so
    /// the copy carries what the application wrote.
    async fn settle(&self, ino: u64) -> FsResult<Option<String>> {
        if let Some(file) = self.staged_file(ino) {
            self.upload(ino, &file).await?;
        }
        Ok(self
            .node(ino)
            .ok()
            .map(|n| n.stat.etag)
            .filter(|etag| !etag.is_empty()))
    }

    /// Moves one object; returns the ETag of its copy.
    async fn rename_file(&self, ino: u64, from: &str, to: &str) -> FsResult<String> {
        let etag = self.settle(ino).await?;
        let size = self.node(ino)?.stat.size;
        let copied = self.copy(from, to, size, etag.as_deref()).await?;
        self.store.delete_object(from).await?;
        debug!(from, to, "renamed");
        Ok(copied)
    }

    /// Copies one object, pinned to `etag` so a concurrent replacement is not
    /// half-copied; returns the copy's ETag.
    async fn copy(&self, from: &str, to: &str, size: u64, etag: Option<&str>) -> FsResult<String> {
        let limit = self.writable()?.single_copy_limit;
        if size <= limit {
            return Ok(self.store.copy_object(from, to, etag, size).await?);
        }
        let upload_id = self.store.create_multipart_upload(to).await?;
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
            self.store
                .complete_multipart_upload(to, &upload_id, &parts)
                .await
        }
        .await;
        if result.is_err() {
            let _ = self.store.abort_multipart_upload(to, &upload_id).await;
        }
        Ok(result?)
    }

    async fn rename_directory(&self, from: &str, to: &str) -> FsResult<()> {
        // Files being written inside are uploaded first, so they are copied too.
        let staged: Vec<u64> = {
            let table = self.inodes.lock().unwrap();
            let staged = self.staged.lock().unwrap();
            staged
                .keys()
                .copied()
                .filter(|s| table.get(*s).is_some_and(|n| n.key.starts_with(from)))
                .collect()
        };
        for staged_ino in staged {
            self.settle(staged_ino).await?;
        }
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list_objects(ListRequest {
                    prefix: from,
                    continuation: token.as_deref(),
                    ..ListRequest::default()
                })
                .await?;
            if page
                .objects
                .iter()
                .any(|o| to.len() + o.key.len() - from.len() > MAX_KEY_LEN)
            {
                return Err(FsError::NameTooLong);
            }
            keys.extend(page.objects.into_iter().map(|o| (o.key, o.size, o.etag)));
            if keys.len() > MAX_DIRECTORY_RENAME_KEYS {
                return Err(FsError::CrossDevice(format!(
                    "{from} holds more than {MAX_DIRECTORY_RENAME_KEYS} objects; renamed file \
                     by file instead"
                )));
            }
            token = page.next_token;
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
            copies.push(async move { self.copy(key, &target, *size, Some(etag)).await });
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
        Ok(())
    }
}
