//! The changes a read-write volume makes: creating and writing files (through
//! [`upload`](super::upload)), truncation and directories; renames are in the
//! sibling module `rename`, unlink and rmdir in `remove`.
//!
//! Every method starts with [`Fs::writable`], so a read-only volume refuses each
//! change with EROFS before any request is sent.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tracing::{debug, warn};

use super::inode::{Kind, Node, Stat};
use super::posix::Posix;
use super::upload::{Base, StagedFile, WriteConfig};
use super::writer::Writer;
use super::{Entry, Fs, FsError, FsResult, OpenFile, OpenFlags};
use crate::audit::{Event, Op};
use crate::journal::Record;
use crate::names::{NameProblem, check_name};

/// S3's longest key, in bytes.
pub(super) const MAX_KEY_LEN: usize = 1024;

/// The key of `name` in the directory whose key is `parent_key`: ENAMETOOLONG
/// before any request if S3 could not store it.
pub(super) fn child_key(parent_key: &str, name: &str, kind: Kind) -> FsResult<String> {
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

impl Fs {
    pub(super) fn valid_name<'a>(&self, name: &'a OsStr) -> FsResult<&'a str> {
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

    pub(super) fn directory(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        Ok(node)
    }

    /// The staged copy of `ino`, shared by every handle open on it; created by the
    /// first handle (empty for O_TRUNC, else standing for the object in S3).
    pub(super) async fn stage(&self, ino: u64, flags: OpenFlags) -> FsResult<Arc<StagedFile>> {
        let file = match self.staging.attach(ino) {
            Some(file) => {
                // Before this handle can change it (a no-op once recorded).
                self.journal_staged(ino, &file);
                file
            }
            None => match self.stage_anew(ino, flags).await? {
                // This open's own copy: made empty already if it truncates.
                (file, true) => return Ok(file),
                (file, false) => file,
            },
        };
        if !flags.truncate {
            return Ok(file);
        }
        match file.truncate(0, flags.process).await {
            Ok(()) => Ok(file),
            Err(e) => {
                // No handle comes of this open: its share of the copy goes.
                self.unstage(ino).await;
                Err(e.into())
            }
        }
    }

    /// [`Fs::stage`] of a file with no staged copy: the copy (shared, if
    /// another open staged one meanwhile), and whether it is the one this
    /// open made.
    async fn stage_anew(&self, ino: u64, flags: OpenFlags) -> FsResult<(Arc<StagedFile>, bool)> {
        let config = self.writable()?;
        // A file changed is changed from what S3 holds now, at the size the
        // kernel is to write at.
        let node = match flags.truncate {
            true => self.named_node(ino)?,
            false => self.ask_again(ino).await?,
        };
        let base = (!flags.truncate).then(|| Base {
            key: node.key.clone(),
            etag: node.stat.etag.clone(),
            size: node.stat.size,
        });
        let file = self.new_staged(&node.key, base, config)?;
        // Rewritten, a file keeps its mode, owner and a change of them still
        // waiting (which its upload then carries); its time is the new one.
        // As on any Linux filesystem, a write takes away what would run the
        // file with other privileges: its set-ID bits and file capability.
        // So does a change of them still waiting, which would put them back.
        self.changes.drop_privileges(ino);
        let shown = self.changes.shown(ino, node.stat.posix.as_ref());
        if let Some(posix) = shown.filter(|_| self.config.metadata) {
            file.set_posix(&Posix {
                mtime: None,
                ..posix.without_privileges()
            });
        }
        // Another open may have staged it meanwhile: share that one (whose
        // state the journal has already), truncated if this open truncates.
        let staged = self.staging.stage(ino, file.clone())?;
        self.journal_staged(ino, &staged);
        let ours = Arc::ptr_eq(&staged, &file);
        Ok((staged, ours))
    }

    /// Keeps in the journal whether what is staged for `ino` is in S3, now
    /// and at each change of that: a handle writing it that a worker leaves
    /// behind has lost changes only when it is not (see `super::takeover`).
    fn journal_staged(&self, ino: u64, file: &StagedFile) {
        let Some(journal) = self.handles.journal() else {
            return;
        };
        file.on_published(move |published| {
            journal.record(&match published {
                true => Record::Published { ino },
                false => Record::Changed { ino },
            })
        });
    }

    /// A staged file for `key` that uploads with the mount's permits and memory
    /// and counts against its staging space.
    fn new_staged(
        &self,
        key: &str,
        base: Option<Base>,
        config: &WriteConfig,
    ) -> FsResult<Arc<StagedFile>> {
        Ok(StagedFile::new(
            key,
            base,
            self.store.clone(),
            config,
            self.uploads.clone(),
            self.config.metadata,
        )?)
    }

    /// Creates `name` in `parent`, empty and open for writing by `process`, with
    /// the mode and owner of `posix` (kept in its metadata unless the volume
    /// keeps none). It is visible in the mount at once and in S3 once closed
    /// (see [`Fs::flush`]).
    pub(super) async fn create_file(
        &self,
        parent: u64,
        name: &OsStr,
        process: Option<u32>,
        posix: Posix,
    ) -> FsResult<(Entry, u64)> {
        let config = self.writable()?;
        let name = self.valid_name(name)?;
        let parent_node = self.directory(parent)?;
        let key = child_key(&parent_node.key, name, Kind::File)?;
        let file = self.new_staged(&key, None, config)?;
        let posix = if self.config.metadata {
            posix
        } else {
            Posix::default()
        };
        file.set_posix(&posix);
        let now = SystemTime::now();
        let ino = {
            let mut table = self.inodes.lock();
            self.staging.stage_new(file.clone(), || {
                let stat = Stat {
                    size: 0,
                    etag: String::new(),
                    mtime: now,
                    posix: Some(posix),
                    own_headers: true,
                };
                let ino = table.upsert(parent, name, Kind::File, stat, Instant::now());
                table.add_lookup(ino);
                ino
            })?
        };
        self.journal_staged(ino, &file);
        let fh = self.handles.open(OpenFile::Staged {
            ino,
            file,
            writer: Writer::new(process, true, false),
            base_reader: Default::default(),
            read_once: Default::default(),
        });
        debug!(ino, fh, key, "created");
        let entry = self.getattr(ino).await?;
        Ok((entry, fh))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_by(fh, offset, data, 0).await
    }

    /// [`Fs::write`] asked by thread `thread` (0: not known).
    pub async fn write_by(&self, fh: u64, offset: u64, data: &[u8], thread: u32) -> FsResult<u32> {
        match self.handle(fh)? {
            OpenFile::Staged {
                file,
                writer: Some(writer),
                ..
            } => {
                let process = writer.wrote_through(thread, self.config.audit.is_some());
                file.write(offset, data, process).await?;
                Ok(data.len() as u32)
            }
            _ => Err(FsError::BadHandle(fh)),
        }
    }

    /// [`Fs::write`] without waiting, for the FUSE thread, which can then write
    /// straight from the kernel's buffer: `None` when the write has to wait (the
    /// object must be downloaded first), and [`Fs::write`] is the way.
    pub fn write_now(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        thread: u32,
    ) -> Option<FsResult<u32>> {
        match self.handle(fh) {
            Ok(OpenFile::Staged {
                file,
                writer: Some(writer),
                ..
            }) => {
                let process = writer.wrote_through(thread, self.config.audit.is_some());
                let result = file.write_now(offset, data, process)?;
                Some(result.map(|()| data.len() as u32).map_err(FsError::from))
            }
            Ok(_) => Some(Err(FsError::BadHandle(fh))),
            Err(e) => Some(Err(e)),
        }
    }

    /// close(2), which the kernel sends as a flush for every descriptor closed
    /// (dup'ed copies and those a forked child inherited included), from the
    /// process closing it. The file becomes the object in S3, and close returns
    /// once it is durable, when the process that opened this handle closes it
    /// after creating the file or writing through it. Any other flush uploads
    /// nothing: a shell's close of the descriptor it dup'ed before the command
    /// wrote, or a child's exit, must not publish a file still being written,
    /// nor replace the object with a file just truncated. What such closes leave
    /// is uploaded when the last handle is released ([`Fs::release`]). Closing a
    /// reader uploads nothing, even while others write.
    pub async fn flush(&self, fh: u64, process: Option<u32>) -> FsResult<()> {
        let OpenFile::Staged {
            ino,
            file,
            writer: Some(writer),
            ..
        } = self.handle(fh)?
        else {
            return Ok(());
        };
        let other_process = matches!((writer.opener, process), (Some(a), Some(b)) if a != b);
        if other_process || !writer.wrote.load(Ordering::SeqCst) {
            debug!(fh, ?process, opener = ?writer.opener, "flush without upload");
            return Ok(());
        }
        if let Some(signal) = file.held_back() {
            // What a killed process left is not what anyone meant to keep.
            debug!(fh, signal, "close of a held-back file: nothing published");
            return Ok(());
        }
        self.publish(ino, &file).await
    }

    /// fsync(2): the file's content as written so far, by any handle, is durable
    /// in S3 when this returns.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let ino = match self.handle(fh)? {
            OpenFile::Staged { ino, file, .. } => {
                self.publish(ino, &file).await?;
                ino
            }
            OpenFile::Object { ino, .. } => {
                // What another descriptor wrote (not what a process killed
                // by a signal left, which no close publishes either).
                if let Some(file) = self.staging.file(ino)
                    && file.held_back().is_none()
                {
                    self.publish(ino, &file).await?;
                }
                ino
            }
        };
        // A change of mode, owner or time is durable too: once the turn that
        // may have taken it and be copying it is over (one copy at most; a
        // rename, which carries a change in its copy, holds the turn too).
        if self.changes.has(ino) {
            let _turn = self.metadata_turn.lock().await;
            // A stop that had the turn first counted what it could not copy.
            self.staging.running()?;
            // A change whose copy failed waits again, unless an upload
            // meanwhile carried it (or it can never be kept: below).
            let applied = self.apply_pending_posix(ino).await;
            if applied.is_err() && self.changes.has(ino) {
                return applied;
            }
        }
        match self.changes.was_lost(ino) {
            true => Err(FsError::ChangeNotKept {
                key: self.node(ino)?.key,
            }),
            false => Ok(()),
        }
    }

    /// Makes a staged file the object in S3 if it changed, and records what S3
    /// now holds (and, in the audit log, the object made or the failure to
    /// make it).
    pub(super) async fn publish(&self, ino: u64, file: &StagedFile) -> FsResult<()> {
        let result = self.make_object(ino, file).await;
        match &result {
            Ok(None) => {}
            Ok(Some((size, etag))) => self.audit(|| Event {
                size: Some(*size),
                etag: Some(etag.clone()),
                ..Event::new(Op::Write, file.key())
            }),
            Err(e) => self.audit(|| Event {
                errno: e.errno(),
                ..Event::new(Op::Write, file.key())
            }),
        }
        result.map(|_| ())
    }

    /// [`Fs::publish`]'s work: the size and ETag of the object made, `None`
    /// when the file had not changed.
    async fn make_object(&self, ino: u64, file: &StagedFile) -> FsResult<Option<(u64, String)>> {
        self.staging.running()?;
        // Every change made so far is in what the upload reads.
        let mut as_of = self.changes.made_so_far();
        let Some(mut uploaded) = file.publish().await? else {
            return Ok(None);
        };
        if uploaded.headers_behind {
            // Changed after the multipart upload set them: copied in place
            // (with the encryption envelope, which a HEAD gives).
            let key = file.key();
            as_of = self.changes.made_so_far();
            let posix = Posix {
                ctime: self.config.metadata.then(|| file.ctime()),
                ..file.posix()
            };
            let headers = match self.config.codec.encrypts() {
                true => self.headers_with(ino, &key, &posix, false).await?.0,
                false => self.own_headers(&key, &posix, Kind::File),
            };
            uploaded.etag = self
                .copy(
                    &key,
                    &key,
                    uploaded.size,
                    Some(&uploaded.etag),
                    Some(&headers),
                )
                .await?;
            uploaded.posix = posix;
        }
        self.changes.settle_pending(ino, &uploaded.posix, as_of);
        let done = (uploaded.size, uploaded.etag.clone());
        let stat = Stat {
            size: uploaded.size,
            etag: uploaded.etag,
            // The time of the last change, as shown while the file was open, so
            // closing it does not move the time.
            mtime: file.mtime(),
            posix: Some(uploaded.posix),
            own_headers: true,
        };
        // Of this inode while it has its name: one that lost it meanwhile
        // must not give its object to the file that has the name now.
        self.inodes.lock().learnt(ino, stat, Instant::now());
        // The kernel followed the writes: it has this size.
        self.kernel.shown(ino, done.0);
        Ok(Some(done))
    }

    /// setattr(2): a size changes the file (through handle `fh` for ftruncate);
    /// what `change` sets of a file's mode, owner and time is kept in its
    /// object's metadata, a directory's in its marker's (see
    /// [`Fs::change_posix`]; accepted and not kept with `--no-metadata`, and
    /// for the volume root).
    pub(super) async fn set_attributes(
        &self,
        ino: u64,
        size: Option<u64>,
        mut change: Posix,
        fh: Option<u64>,
        by: Option<u32>,
    ) -> FsResult<Entry> {
        self.writable()?;
        if size.is_some() {
            // The time the kernel sends with a truncation by name is the
            // truncation's own, which its upload carries.
            change.mtime = None;
        }
        let node = self.node(ino)?;
        if let Some(size) = size {
            if node.kind != Kind::File {
                return Err(FsError::IsADirectory);
            }
            // The kernel sends an open's O_TRUNC as a truncation by name
            // right after the open: one whose handle was lost with the
            // worker before this one (which answered the open) would be
            // published alone, over S3's version, while the writes through
            // it fail. It fails too, and so does the open (as may a truncate
            // by name in that moment). So does ftruncate(2) through a lost
            // handle.
            if fh.is_none() && self.handles.lost_writer_on(ino) {
                return Err(FsError::Lost);
            }
            if let Some(fh) = fh
                && let OpenFile::Staged {
                    writer: Some(writer),
                    ..
                } = self.handle(fh)?
            {
                writer.changed(self.config.audit.is_some());
            }
            // Held like a handle while it changes: a last release uploading the
            // file meanwhile keeps it staged for this change instead of letting
            // it go with the change unsent.
            let file = self
                .stage(
                    ino,
                    OpenFlags {
                        write: true,
                        truncate: size == 0,
                        process: None,
                        ..OpenFlags::default()
                    },
                )
                .await?;
            let result = async {
                file.truncate(size, by).await?;
                // truncate(1) of a file no one has open is uploaded now; an open
                // file's change goes with its close.
                if self.staging.handles(ino) == 1 {
                    self.publish(ino, &file).await?;
                }
                Ok::<_, FsError>(())
            }
            .await;
            self.unstage(ino).await;
            result?;
        }
        self.change_posix(ino, change)?;
        self.getattr(ino).await
    }

    /// One handle less on a staged file. The last one uploads the changes that
    /// no close has (those left by closes that published nothing: see
    /// [`Fs::flush`]), then frees the staging file. Changes whose upload failed
    /// at a close that reported it are not retried.
    pub(super) async fn unstage(&self, ino: u64) {
        let Some(file) = self.staging.detach(ino) else {
            return;
        };
        let held_back = file.held_back().is_some();
        if file.has_unsent_changes() {
            if let Err(e) = self.publish(ino, &file).await {
                warn!(
                    key = file.key(),
                    "the changes left at the last close of the file were not uploaded \
                     ({e:#}); S3 keeps the previous version"
                );
            }
        } else if file.is_dirty() && !held_back {
            warn!(
                key = file.key(),
                "closed with changes whose upload failed; S3 keeps the previous version"
            );
        }
        // Opened again meanwhile (the new handle has it now), or abandoned by a
        // stop (which closes it). Until closed, a stop waits for it.
        if let Some(closing) = self.staging.unstage(ino, &file) {
            file.close().await;
            drop(closing);
            if held_back {
                // The file is what S3 holds again (nothing, if it was created
                // here): the next look asks.
                self.inodes.lock().expire(ino);
                self.kernel.attributes_changed(ino);
            }
        }
    }

    /// mkdir(2): a zero-byte marker object `name/`, carrying the mode and
    /// owner of `posix` and its time (unless the volume keeps no metadata).
    pub(super) async fn make_dir(
        &self,
        parent: u64,
        name: &OsStr,
        posix: Posix,
    ) -> FsResult<Entry> {
        self.writable()?;
        let name = self.valid_name(name)?;
        let parent_node = self.directory(parent)?;
        let key = child_key(&parent_node.key, name, Kind::Directory)?;
        let now = SystemTime::now();
        let posix = Posix {
            mtime: Some(now),
            ctime: Some(now),
            ..posix
        };
        let headers = match self.config.metadata {
            true => posix.clone(),
            false => Posix::default(),
        };
        let headers = self.own_headers(&key, &headers, Kind::Directory);
        let etag = self.store.put_object(&key, Bytes::new(), &headers).await?;
        let stat = Stat {
            etag,
            posix: Some(posix),
            own_headers: true,
            ..Stat::directory(now)
        };
        let ino = {
            let mut table = self.inodes.lock();
            let now = Instant::now();
            let ino = table.upsert(parent, name, Kind::Directory, stat, now);
            // Nothing was under it (its lookup found no name): what is created
            // in it needs no lookup in S3 first, for the TTL, as after a listing.
            table.mark_listed(ino, now);
            ino
        };
        self.inodes.lock().add_lookup(ino);
        debug!(key, "directory created");
        self.getattr(ino).await
    }

    /// The inode and kind of `parent/name`, from the table or S3.
    pub(super) async fn existing(&self, parent: u64, name: &str) -> FsResult<Option<(u64, Kind)>> {
        let known = {
            let table = self.inodes.lock();
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
    pub(super) async fn existing_child<'a>(
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
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
    /// [`Fs::create_file`], recorded.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        process: Option<u32>,
        posix: Posix,
    ) -> FsResult<(Entry, u64)> {
        let result = self.create_file(parent, name, process, posix).await;
        self.audit_change(Op::Create, parent, name, Kind::File, &result);
        result
    }

    /// [`Fs::make_dir`], recorded.
    pub async fn mkdir(&self, parent: u64, name: &OsStr, posix: Posix) -> FsResult<Entry> {
        let result = self.make_dir(parent, name, posix).await;
        self.audit_change(Op::Mkdir, parent, name, Kind::Directory, &result);
        result
    }
}
