//! Open file handles: the open that decides what a handle reads (the object in
//! S3, or the file's staged copy while it is being written here), its reads,
//! and its release.
//!
//! A handle open for writing reads the object it was opened on, through the
//! block cache as a read-only handle does, for as long as nothing changed the
//! file: the staged copy is made at the first change, never for a read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use crate::cache::WholeFile;

use super::audit::errno_of;
use super::handle_table::{BaseReader, KernelFill};
use super::inode::{Kind, Node};
use super::passthrough::Io;
use super::read::{ObjectVersion, Reader};
use super::upload::{Base, StagedFile};
use super::writer::Writer;
use super::{Fs, FsError, FsResult, OpenFile, OpenFlags, Opened};
use crate::store::{StoreError, StoreResult};

/// What a request is answered with: at once, or by a future that waits on S3.
pub enum Answer<T> {
    Now(T),
    Later(Pin<Box<dyn Future<Output = FsResult<T>> + Send>>),
}

impl Fs {
    /// Opens file `ino`: for reading from S3, or through its staged copy when it
    /// is being written here or `flags.write` asks to write it.
    pub async fn open(&self, ino: u64, flags: OpenFlags) -> FsResult<u64> {
        self.open_file(ino, flags).await.map(|opened| opened.fh)
    }

    /// Like [`Fs::open`], and says whether the kernel may keep its page cache of
    /// the file: when this open reads the same version as the last one did, so a
    /// re-read of an unchanged file is served by the kernel without a request.
    pub async fn open_file(&self, ino: u64, flags: OpenFlags) -> FsResult<Opened> {
        if flags.write {
            self.writable()?;
        }
        let mut node = self.named_node(ino)?;
        if node.kind != Kind::File {
            return Err(FsError::IsADirectory);
        }
        let mut keep_cache = false;
        let direct_io;
        let mut backing = None;
        let (handle, ticket) = if flags.write || self.staging.file(ino).is_some() {
            let file = self.stage(ino, flags).await?;
            self.inodes.lock().note_open(ino, None);
            let ticket = self.passthrough.open(ino, None, || None);
            if ticket.io == Io::Conflict {
                return Err(self.replaced(ino, &node));
            }
            direct_io = false;
            let handle = OpenFile::Staged {
                ino,
                file,
                writer: if flags.write {
                    Writer::new(flags.process, false, flags.truncate)
                } else {
                    None
                },
                base_reader: BaseReader::default(),
                read_once: Arc::default(),
            };
            (handle, Some(ticket))
        } else {
            // The size the kernel has: an open that finds another has it ask
            // again before it reads.
            let told = self.kernel.size_shown(ino);
            // (An encrypted volume asks S3 below in any case.)
            let expired = node
                .remaining(self.config.metadata_ttl, Instant::now())
                .is_none();
            if expired && !self.config.codec.encrypts() {
                self.getattr(ino).await?;
                node = self.node(ino)?;
            }
            // Encrypted: a HEAD now, for the key of the version read.
            let opening = self.open_encrypted(ino, node).await?;
            node = opening.node;
            // Before the size: a new version the kernel cannot be given for
            // this inode goes to a new one at once, in one ESTALE.
            if self.passthrough.reads_other(ino, &node.stat.etag) {
                return Err(self.replaced(ino, &node));
            }
            if let Some(was) = told.filter(|&was| was != node.stat.size) {
                self.kernel.attributes_changed(ino);
                return Err(FsError::Resized {
                    key: node.key,
                    was,
                    now: node.stat.size,
                });
            }
            direct_io = opening.unchecked;
            let same_version = self.inodes.lock().note_open(ino, Some(&node.stat.etag));
            // Pages of another version may enter the kernel's cache through a
            // handle still open on it: then the cache is not kept. With an audit
            // log it never is, so that every open's first read reaches us.
            keep_cache = same_version
                && !opening.unchecked
                && self.config.audit.is_none()
                && !self.handles.any(|_, f| {
                    matches!(f, OpenFile::Object { ino: i, etag, .. }
                        if *i == ino && **etag != node.stat.etag)
                });
            // Read by the kernel from the disk cache where the version is
            // whole there; an unauthenticated one never (it is direct).
            // Unless the kernel likely holds the version whole in its page
            // cache already (read through the daemon, and kept): that is
            // faster than the disk, and the cache's copy bypassed the page
            // cache (see `crate::cache`).
            let in_kernel =
                keep_cache && self.inodes.lock().kernel_holds_whole(ino, &node.stat.etag);
            let ticket = (!direct_io).then(|| {
                self.passthrough.open(ino, Some(&node.stat.etag), || {
                    (!in_kernel).then(|| self.whole_file(&node)).flatten()
                })
            });
            match ticket.as_ref().map(|t| t.io) {
                Some(Io::Conflict) => return Err(self.replaced(ino, &node)),
                Some(Io::Passthrough(id)) => backing = Some(id),
                _ => {}
            }
            // The kernel takes no other flag with passthrough.
            keep_cache &= !direct_io && backing.is_none();
            if !keep_cache {
                self.inodes.lock().note_emptied(ino);
            }
            let etag: Arc<str> = node.stat.etag.as_str().into();
            let object = self.object_version(&node, opening.decryption);
            let reader = Reader::new(object, self.config.read.clone(), self.config.memory.clone());
            let handle = OpenFile::Object {
                ino,
                etag,
                reader: Arc::new(tokio::sync::Mutex::new(reader)),
                read_once: Arc::default(),
                kernel_kept: keep_cache,
                backing,
                fill: if direct_io || flags.direct || backing.is_some() {
                    KernelFill::Nothing
                } else if in_kernel {
                    KernelFill::Corrects
                } else {
                    KernelFill::Adds
                },
            };
            (handle, ticket)
        };
        let fh = self.handles.open(handle);
        if let Some(ticket) = ticket {
            ticket.bind(fh);
        }
        debug!(
            ino,
            fh,
            key = node.key,
            ?flags,
            keep_cache,
            direct_io,
            ?backing,
            "opened"
        );
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
            backing,
        })
    }

    /// An open of `node` that the kernel's passthrough of another version
    /// of it leaves no way to answer: the name gets a new inode, which the
    /// kernel, told ESTALE, looks up and opens; the old one serves its
    /// readers until they close.
    fn replaced(&self, ino: u64, node: &Node) -> FsError {
        // Only while the name is still this inode's: another open may have
        // given it a new one already.
        self.inodes
            .lock()
            .remove_child_of(node.parent, &node.name, ino);
        FsError::Replaced {
            key: node.key.clone(),
        }
    }

    /// The data file of `node`'s version, if the kernel may read it through
    /// passthrough and it is whole in the disk cache: never on an encrypted
    /// volume (the cache holds ciphertext) or with an audit log (whose reads
    /// must reach the daemon).
    fn whole_file(&self, node: &Node) -> Option<WholeFile> {
        if self.config.codec.encrypts() || self.config.audit.is_some() {
            return None;
        }
        let cache = self.config.cache.as_ref()?;
        cache.whole_file(&node.key, &node.stat.etag, node.stat.size)
    }

    /// What S3 holds for file `ino` now (a HEAD, whatever the metadata TTL
    /// says), learnt; `Resized` (ESTALE) when its size is not the one the
    /// kernel has, which then looks it up again and asks once more. Gone
    /// from S3, it is ESTALE too: the kernel's second look finds no file,
    /// and an open with O_CREAT creates one (O_TRUNC reaches an open as a
    /// truncation after it, so `cmd > f` comes here).
    pub(super) async fn ask_again(&self, ino: u64) -> FsResult<Node> {
        let told = self.kernel.size_shown(ino);
        let node = self.named_node(ino)?;
        let info = match self.store.head_object(&node.key).await {
            Ok(info) => info,
            Err(e @ StoreError::NotFound { .. }) => {
                // Unless the name is another inode's by now (created again
                // after an answer like this one).
                let mut inodes = self.inodes.lock();
                if inodes
                    .child(node.parent, &node.name)
                    .is_some_and(|(child, _)| child == ino)
                {
                    inodes.note_absent(node.parent, &node.name, Instant::now());
                }
                drop(inodes);
                self.kernel.attributes_changed(ino);
                return Err(FsError::Stale {
                    key: node.key,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let stat = self.file_stat(info);
        let size = stat.size;
        self.inodes.lock().learnt(ino, stat, Instant::now());
        if let Some(was) = told.filter(|&was| was != size) {
            self.kernel.attributes_changed(ino);
            return Err(FsError::Resized {
                key: node.key,
                was,
                now: size,
            });
        }
        self.named_node(ino)
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<OpenFile> {
        self.handles.get(fh).ok_or_else(|| self.unknown_handle(fh))
    }

    /// The error for handle `fh`, which this worker does not hold: lost with
    /// the worker before it, or never opened.
    pub(super) fn unknown_handle(&self, fh: u64) -> FsError {
        if self.handles.is_lost(fh) {
            FsError::Lost
        } else {
            FsError::BadHandle(fh)
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        match self.handle(fh)? {
            OpenFile::Object {
                ino,
                reader,
                read_once,
                ..
            } => {
                self.read_object(fh, ino, &reader, &read_once, offset, size)
                    .await
            }
            OpenFile::Staged {
                ino,
                file,
                base_reader,
                read_once,
                ..
            } => match file.unchanged_base() {
                Some(base) => {
                    let read = self
                        .read_base(ino, &file, &base, &base_reader, offset, size)
                        .await;
                    self.first_read(ino, Some(&base.etag), &read_once, errno_of(&read));
                    read
                }
                None => {
                    let read = file.read(offset, size).await.map_err(FsError::from);
                    self.first_read(ino, None, &read_once, errno_of(&read));
                    read
                }
            },
        }
    }

    /// A read through handle `fh` of the object it was opened on. A handle
    /// that finds the version it opened replaced before it returned any byte
    /// reads the new one instead, once (see [`Fs::replacement`]).
    async fn read_object(
        &self,
        fh: u64,
        ino: u64,
        reader: &tokio::sync::Mutex<Reader>,
        read_once: &AtomicBool,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let mut reader = reader.lock().await;
        let mut result = reader.read(offset, size).await;
        if matches!(result, Err(StoreError::Changed { .. })) && reader.may_switch() {
            let etag = reader.object().etag.clone();
            if let Some(object) = self.replacement(fh, ino, &etag).await {
                reader.switch_to(object);
                result = reader.read(offset, size).await;
            }
        }
        let read = self.read_outcome(ino, &reader, result);
        // Of the version read, which a switch may have made another.
        self.first_read(ino, Some(&reader.object().etag), read_once, errno_of(&read));
        read
    }

    /// A read through a handle open for writing on a file no one has
    /// changed: from the object it was opened on, as a read-only handle reads
    /// it. Its pages stay in the kernel's cache, so on an encrypted volume the
    /// version is authenticated whole before its first byte is returned.
    async fn read_base(
        &self,
        ino: u64,
        file: &StagedFile,
        base: &Base,
        slot: &tokio::sync::Mutex<Option<Reader>>,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let mut slot = slot.lock().await;
        // (A file's base stays what it was opened on until its first change.)
        if slot.is_none() {
            let object = file
                .base_version(base)
                .await?
                .cached(self.config.cache.as_ref());
            let checked = object.authenticate().await;
            if checked.is_err() && object.is_forged() {
                self.forget_forged(ino, &object);
            }
            checked.map_err(|e| self.stale(ino, e))?;
            *slot = Some(Reader::new(
                object,
                self.config.read.clone(),
                self.config.memory.clone(),
            ));
        }
        let reader = slot.as_mut().expect("made above");
        let result = reader.read(offset, size).await;
        self.read_outcome(ino, reader, result)
    }

    /// What a read through `reader` of file `ino` answers.
    fn read_outcome(
        &self,
        ino: u64,
        reader: &Reader,
        result: StoreResult<Bytes>,
    ) -> FsResult<Bytes> {
        if result.is_err() && reader.object().is_forged() {
            self.forget_forged(ino, reader.object());
        }
        result.map_err(|e| self.stale(ino, e))
    }

    /// A read of file `ino` failed with `e`: where what we know of the object
    /// is wrong (changed, gone, shorter), ESTALE, and the next open asks S3
    /// again and gets the new version.
    fn stale(&self, ino: u64, e: StoreError) -> FsError {
        match e {
            StoreError::NotFound { ref key, .. }
            | StoreError::Changed { ref key, .. }
            | StoreError::ShortBody { ref key, .. }
            | StoreError::InvalidRange { ref key, .. } => {
                self.inodes.lock().expire(ino);
                FsError::Stale {
                    key: key.clone(),
                    source: Box::new(e),
                }
            }
            other => other.into(),
        }
    }

    /// The version of file `ino` that S3 holds now, for handle `fh`, which
    /// found the version it opened (`etag`) replaced before it returned a byte.
    /// `None` where the handle must fail instead: the kernel may hold pages of
    /// the old version (the open kept its cache, or another handle is open on
    /// the file), or the new version could not be read through this handle
    /// (on an encrypted volume, one not yet authenticated, whose pages the
    /// kernel would keep).
    async fn replacement(&self, fh: u64, ino: u64, etag: &str) -> Option<ObjectVersion> {
        let kept = matches!(
            self.handles.get(fh),
            Some(OpenFile::Object {
                kernel_kept: true,
                ..
            })
        );
        let alone = !kept && !self.handles.any(|h, f| h != fh && f.ino() == ino);
        if !alone {
            return None;
        }
        let told = self.kernel.size_shown(ino);
        self.inodes.lock().expire(ino);
        self.getattr(ino).await.ok()?;
        let opening = self.open_encrypted(ino, self.node(ino).ok()?).await.ok()?;
        let node = opening.node;
        if opening.unchecked || node.stat.etag == etag {
            return None;
        }
        // Longer: the kernel is to ask for the new size before it reads past
        // the old one. (Shorter, it learns the size from the short read, which
        // a notification now would keep it from believing.)
        if told.is_some_and(|told| told < node.stat.size) {
            self.kernel.attributes_changed(ino);
        }
        let new_etag: Arc<str> = node.stat.etag.as_str().into();
        self.handles.update(fh, |handle| {
            if let OpenFile::Object { etag, .. } = handle {
                *etag = new_etag;
            }
        });
        self.inodes.lock().note_open(ino, Some(&node.stat.etag));
        debug!(
            fh,
            key = node.key,
            etag = node.stat.etag,
            "reads the version replacing the one opened"
        );
        Some(self.object_version(&node, opening.decryption))
    }

    /// The one entry of a read through handle `fh`: answered at once when it
    /// needs no request (a random read of what the block cache holds, blocking
    /// at most on local disk, as a local file would), else by a future that
    /// waits on S3.
    pub fn read_at(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Answer<Bytes> {
        if let Some(data) = self.read_now(fh, offset, size) {
            return Answer::Now(data);
        }
        let fs = self.clone();
        Answer::Later(Box::pin(async move { fs.read(fh, offset, size).await }))
    }

    /// A read answered without waiting on the network, when the data is in the
    /// block cache; `None` when it needs the asynchronous path.
    fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<Bytes> {
        let OpenFile::Object {
            ino,
            etag,
            reader,
            read_once,
            ..
        } = self.handle(fh).ok()?
        else {
            return None;
        };
        // A reader busy with another request takes the asynchronous path.
        let mut reader = reader.try_lock().ok()?;
        let data = reader.read_cached(offset, size)?;
        self.first_read(ino, Some(&etag), &read_once, 0);
        Some(data)
    }

    /// Records the first read through a handle, of version `etag` of `ino`
    /// (`None`: of the file as this mount changed it), and its outcome.
    /// A failed read is recorded and leaves the handle's first read to come:
    /// a read that succeeds after it has a line of its own.
    fn first_read(&self, ino: u64, etag: Option<&str>, read_once: &AtomicBool, errno: i32) {
        if self.config.audit.is_none() || read_once.load(Ordering::Relaxed) {
            return;
        }
        if errno == 0 && read_once.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(node) = self.node(ino) else { return };
        let size = match self.staging.file(ino) {
            Some(file) => file.size(),
            None => node.stat.size,
        };
        self.audit(|| crate::audit::Event {
            size: Some(size),
            etag: etag.map(str::to_string),
            errno,
            ..crate::audit::Event::new(crate::audit::Op::Read, node.key)
        });
    }

    /// The handle is closed for good, after the flush that reported the outcome of
    /// the upload. The last handle on a staged file frees the staging file; changes
    /// whose upload failed (the application was told at close) are not retried.
    pub async fn release(&self, fh: u64) {
        // Recorded closed before its backing ID can go: a worker killed in
        // between leaves the next one no ID that is closed.
        let handle = self.handles.close(fh);
        self.passthrough.release(fh);
        match handle {
            Some(OpenFile::Staged { ino, writer, .. }) => self.release_staged(ino, writer).await,
            Some(OpenFile::Object {
                ino,
                etag,
                reader,
                fill,
                ..
            }) => {
                // Whatever it read is in the kernel's cache (unless the kernel
                // read the backing file); unless that is the version the cache
                // is known to hold, the cache is mixed.
                let (etag, filled) = match reader.try_lock() {
                    Ok(reader) if fill != KernelFill::Nothing => {
                        (reader.object().etag.clone(), reader.returned())
                    }
                    _ => (etag, 0),
                };
                let corrects = fill == KernelFill::Corrects;
                self.inodes.lock().note_closed(ino, &etag, filled, corrects);
            }
            None => {}
        }
    }
}
