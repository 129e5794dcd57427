//! Writing: a file open for writing is staged locally and uploaded as it grows.
//!
//! Every byte written goes to a staging file (unlinked at creation, so a crash
//! leaves nothing behind) under the cache directory. That one file serves reads of
//! the data being written, random writes, truncation and appends, which a pure
//! in-memory stream cannot: `git` reads back the pack it is writing, editors and
//! databases rewrite earlier bytes.
//!
//! While the application appends, each part it has moved past is uploaded in the
//! background as a part of a multipart upload, so by the time it closes the file
//! most of the data is already in S3 and close waits only for the tail. Parts are
//! read back from the staging file (the page cache, in practice) only when a
//! permit from the mount's upload semaphore is free and the volume's memory
//! budget (`crate::memory`) has room for the part, so memory stays bounded
//! however fast the application writes. A part written again
//! after its upload is simply uploaded again under the same number at close: S3
//! keeps the last upload of each part number.
//!
//! close (flush) and fsync make the object durable: the remaining dirty parts are
//! uploaded and the upload completed, or, for a file of one part or less, the
//! whole file is sent with a single PutObject. If anything fails, the multipart
//! upload is aborted, so no parts are left behind and nothing half-written becomes
//! visible, and the error is returned to the application.
//!
//! Part sizes grow so that no object needs more than S3's 10,000 parts: parts
//! 1-1000 have the configured size, each following thousand twice the size of the
//! one before (8 MiB parts reach S3's 5 TiB object limit within the limit).

mod base;
mod budget;
mod config;
mod layout;
mod local;
mod publish;
mod sealing;
mod state;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use self::budget::StagingBudget;
pub use self::config::WriteConfig;
use self::layout::PartLayout;
use self::local::LocalFile;
use self::state::{Sent, State, Upload};
use super::inode::Kind;
use super::posix::Posix;
use crate::fs::{Codec, CseError, Tagger};
use crate::memory::MemoryBudget;
use crate::store::{ObjectStore, StoreError};

/// What the files being written in one volume share.
#[derive(Clone, Debug)]
pub struct Shares {
    /// Part uploads in flight.
    pub permits: Arc<Semaphore>,
    /// The staging space their bytes take.
    pub staging: Arc<StagingBudget>,
    /// The memory the parts being uploaded take.
    pub memory: Arc<MemoryBudget>,
    /// How content is kept in objects: encrypted, with client-side
    /// encryption, in uploads and in the staging files.
    pub codec: Arc<dyn Codec>,
    /// The copies this mount made of objects, which reads of a base follow.
    pub(crate) copies: Arc<super::copies::Copies>,
    /// Uploads carry a Content-Type from the file's extension.
    pub content_types: bool,
}

/// The object a staged file was opened on, not yet copied into the staging file:
/// a file opened for writing is only downloaded when it is first changed without
/// being truncated to nothing.
#[derive(Clone, Debug)]
pub struct Base {
    /// The key it had then (a rename since leaves its bytes at a copy).
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// Why a staged file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("local staging file under {dir}: {source}")]
    Local {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "file would exceed S3's 5 TiB object limit (on an encrypted volume, the 64 GiB \
         one AES-GCM message holds)"
    )]
    TooLarge,
    /// The files being written would take more local disk than allowed.
    #[error(
        "the files being written on this volume would take more than --staging-size \
         ({limit} bytes) of local disk; close some, or raise --staging-size"
    )]
    StagingFull { limit: u64 },
    /// The volume is stopping and gave up on the file: nothing of it is uploaded.
    #[error("the volume is being unmounted; the file's changes were not uploaded")]
    Abandoned,
    /// The file's last change was made by a process that signal `signal`
    /// killed: it is not published (see [`StagedFile::hold_back_for`]).
    #[error(
        "the file was last changed by a process killed by signal {signal}; what it wrote is \
         not published, and S3 keeps the previous version until the file is written again"
    )]
    HeldBack { signal: i32 },
    /// The object's encryption: its key cannot be had or made.
    #[error("{key}: {source}")]
    Encryption {
        key: String,
        #[source]
        source: CseError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type StageResult<T> = Result<T, StageError>;

/// A staged file's uploads held off ([`StagedFile::pause`]).
pub struct Paused<'a> {
    _uploads: tokio::sync::MutexGuard<'a, ()>,
}

/// What a successful upload left in S3.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub etag: String,
    pub size: u64,
    /// The mode, owner or time changed after the multipart upload began, which
    /// set the object's metadata: it is behind [`StagedFile::headers`].
    pub headers_behind: bool,
    /// The mode, owner and time the object carries.
    pub posix: Posix,
}

/// One file being written, shared by every handle open on it.
pub struct StagedFile {
    file: LocalFile,
    staging_dir: String,
    store: Arc<dyn ObjectStore>,
    layout: PartLayout,
    /// Upload permits, staging space (this file's bytes count against it) and
    /// memory.
    shares: Shares,
    /// A PUT carries the time of the last change.
    keep_metadata: bool,
    state: Mutex<State>,
    /// The multipart upload under way, created by the first part that needs it.
    upload: tokio::sync::Mutex<Option<Upload>>,
    /// Base download and flushes run one at a time.
    exclusive: tokio::sync::Mutex<()>,
    /// Told, under the state lock, each time what is staged comes to be what
    /// S3 holds (`true`) or stops being it (`false`).
    published: std::sync::OnceLock<Box<dyn Fn(bool) + Send + Sync>>,
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // The staging file goes with it (it has no name).
        let taken = self.state.get_mut().taken;
        self.shares.staging.give_back(taken);
    }
}

impl StagedFile {
    /// A staged file for `key`: empty, or standing for `base` until first
    /// changed. With `keep_metadata`, its upload carries the time of its last
    /// change besides the mode and owner set on it.
    pub fn new(
        key: &str,
        base: Option<Base>,
        store: Arc<dyn ObjectStore>,
        config: &WriteConfig,
        shares: Shares,
        keep_metadata: bool,
    ) -> StageResult<Arc<Self>> {
        let staging_dir = config.staging.path().display().to_string();
        let file = config
            .staging
            .unnamed_file()
            .map_err(|source| StageError::Local {
                dir: staging_dir.clone(),
                source,
            })?;
        let size = base.as_ref().map_or(0, |b| b.size);
        Ok(Arc::new(Self {
            file: LocalFile::new(file, shares.codec.encrypts()),
            staging_dir,
            store,
            layout: PartLayout::new(config.part_size),
            shares,
            keep_metadata,
            state: Mutex::new(State {
                key: key.to_string(),
                size,
                // A staged file without a base is new content: it must be uploaded
                // even if nothing is ever written to it (an empty file).
                dirty: base.is_none(),
                unsent: base.is_none(),
                base,
                versions: Vec::new(),
                uploaded: Vec::new(),
                in_flight: Vec::new(),
                tasks: Vec::new(),
                failure: None,
                deleted: false,
                abandoned: false,
                held_back: None,
                last_writer: None,
                taken: 0,
                mtime: SystemTime::now(),
                posix: Posix::default(),
                started_with: None,
            }),
            upload: tokio::sync::Mutex::new(None),
            exclusive: tokio::sync::Mutex::new(()),
            published: std::sync::OnceLock::new(),
        }))
    }

    /// Counts the file as `end` bytes long against the mount's staging space,
    /// if it was not that long already: ENOSPC past the bound.
    fn take_to(&self, state: &mut State, end: u64) -> StageResult<()> {
        if end > state.taken {
            self.shares.staging.take(end - state.taken)?;
            state.taken = end;
        }
        Ok(())
    }

    /// The file shrank to `size`: what it no longer takes goes back.
    fn give_back_to(&self, state: &mut State, size: u64) {
        if size < state.taken {
            self.shares.staging.give_back(state.taken - size);
            state.taken = size;
        }
    }

    fn local(&self, source: io::Error) -> StageError {
        StageError::Local {
            dir: self.staging_dir.clone(),
            source,
        }
    }

    pub fn size(&self) -> u64 {
        self.state.lock().size
    }

    /// The time of the last change, or the one set since.
    pub fn mtime(&self) -> SystemTime {
        let state = self.state.lock();
        state.posix.mtime.unwrap_or(state.mtime)
    }

    /// The time of the last change of the file or of anything it keeps.
    pub fn ctime(&self) -> SystemTime {
        self.state.lock().ctime()
    }

    /// [`StagedFile::ctime`] once the file differs from the object it was
    /// opened on: the change time its upload will carry.
    pub fn changed_ctime(&self) -> Option<SystemTime> {
        let state = self.state.lock();
        state.base.is_none().then(|| state.ctime())
    }

    /// [`StagedFile::mtime`] once the file differs from the object it was
    /// opened on (or a time was set on it); `None` while it is that object,
    /// whose own time it shows.
    pub fn changed_mtime(&self) -> Option<SystemTime> {
        let state = self.state.lock();
        match (state.posix.mtime, &state.base) {
            (Some(set), _) => Some(set),
            (None, Some(_)) => None,
            (None, None) => Some(state.mtime),
        }
    }

    /// The object the file was opened on, as long as nothing changed it: its
    /// reads then cost what a read-only handle's do, and nothing is staged.
    pub fn unchanged_base(&self) -> Option<Base> {
        self.state.lock().base.clone()
    }

    /// Sets what `posix` sets of the mode, owner and time the object keeps.
    pub fn set_posix(&self, posix: &Posix) {
        let mut state = self.state.lock();
        state.posix = state.posix.updated(posix);
    }

    /// The mode, owner and time the object will keep.
    pub fn posix(&self) -> Posix {
        self.state.lock().posix.clone()
    }

    pub fn key(&self) -> String {
        self.state.lock().key.clone()
    }

    /// Tells `hook` whether what is staged is what S3 holds: now, and at
    /// each change of that, in order (the journal keeps it, so that a worker
    /// after this one knows whether a handle left to it had changes of its
    /// own).
    pub fn on_published(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        let state = self.state.lock();
        if self.published.set(Box::new(hook)).is_ok() {
            self.tell_published(!state.dirty);
        }
    }

    /// Tells the hook of [`StagedFile::on_published`]; call under the state
    /// lock.
    pub(super) fn tell_published(&self, published: bool) {
        if let Some(hook) = self.published.get() {
            hook(published);
        }
    }

    /// Bytes `range` changed (see `State::touch`), and no longer what S3
    /// holds.
    fn touch(&self, state: &mut State, range: std::ops::Range<u64>, by: Option<u32>) {
        let was_dirty = state.dirty;
        state.touch(&self.layout, range, by);
        if !was_dirty {
            self.tell_published(false);
        }
    }

    pub fn is_dirty(&self) -> bool {
        let state = self.state.lock();
        state.dirty && !state.deleted
    }

    /// Changed since an upload was last tried, and still to be uploaded.
    pub fn has_unsent_changes(&self) -> bool {
        let state = self.state.lock();
        state.dirty && state.unsent && !state.deleted && !state.abandoned
    }

    /// The process that changed the file was killed by `signal` (SIGKILL, the
    /// OOM killer, a crash) and closed it as it died: when the file's last
    /// change was that `process`'s (or, where the last change was not told to
    /// be anyone's, when `opened_it`: it opened the handle whose change that
    /// was), what it wrote is not uploaded, unless the file changes again. A
    /// multipart upload under way is aborted when the last handle goes
    /// ([`StagedFile::close`]). Decided under the lock every change takes, so
    /// a change another process makes meanwhile is never held back. Returns
    /// whether the change was `process`'s and is held back.
    pub fn hold_back_for(&self, signal: i32, process: u32, opened_it: bool) -> bool {
        let mut state = self.state.lock();
        let changed_it = match state.last_writer {
            Some(last) => last == process,
            None => opened_it,
        };
        if changed_it && state.dirty && !state.deleted {
            state.unsent = false;
            state.held_back = Some(signal);
            return true;
        }
        false
    }

    /// The signal that killed the process whose changes are held back, while
    /// nothing changed the file since ([`StagedFile::hold_back_for`]).
    pub fn held_back(&self) -> Option<i32> {
        let state = self.state.lock();
        state
            .held_back
            .filter(|_| state.dirty && !state.unsent && !state.deleted)
    }

    /// Unlinked while open.
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// The file was renamed: later uploads go to `key`.
    pub fn set_key(&self, key: &str) {
        self.state.lock().key = key.to_string();
    }

    /// The file was unlinked: nothing more is uploaded, and any upload under way
    /// is abandoned.
    pub async fn discard(&self) {
        self.state.lock().deleted = true;
        self.close().await;
    }

    /// Holds off the file's uploads, once the one under way (if any) is
    /// done, until the pause is dropped or given to
    /// [`StagedFile::discard_paused`].
    pub async fn pause(&self) -> Paused<'_> {
        Paused {
            _uploads: self.exclusive.lock().await,
        }
    }

    /// [`StagedFile::discard`], for a file whose uploads were paused: no
    /// upload starts in between.
    pub async fn discard_paused(&self, paused: Paused<'_>) {
        self.state.lock().deleted = true;
        drop(paused);
        self.close().await;
    }

    /// The volume is going away: like [`StagedFile::discard`], once any upload
    /// under way has finished. Returns whether changes were left not uploaded
    /// (those of a file unlinked while open do not count).
    pub async fn abandon(&self) -> bool {
        // What a killed writer left, and nothing since, was never to be
        // uploaded: not lost either.
        let unlinked = {
            let mut state = self.state.lock();
            state.abandoned = true;
            state.deleted
        };
        let held_back = self.held_back().is_some();
        self.discard().await;
        !unlinked && !held_back && self.state.lock().dirty
    }

    /// The last handle is gone: waits for background part uploads (cancelling one
    /// could lose the ID of an upload it just created) and aborts any multipart
    /// upload that was not completed.
    pub async fn close(&self) {
        let _exclusive = self.exclusive.lock().await;
        let tasks = std::mem::take(&mut self.state.lock().tasks);
        for task in tasks {
            let _ = task.await;
        }
        self.abort_upload().await;
    }

    /// The largest the file may grow: S3's largest object, and on an
    /// encrypted volume the most one AES-GCM message holds (64 GiB).
    fn max_size(&self) -> u64 {
        self.layout.max_size().min(self.shares.codec.max_content())
    }

    /// Writes `data` at `offset`; starts uploads of the parts an appending writer
    /// has moved past.
    pub async fn write(
        self: &Arc<Self>,
        offset: u64,
        data: &[u8],
        by: Option<u32>,
    ) -> StageResult<()> {
        self.load_base().await?;
        self.write_local(offset, data, by)
    }

    /// [`StagedFile::write`] without waiting, for callers that cannot: `None` when
    /// the object must be downloaded first. Part uploads are spawned on the
    /// current tokio runtime.
    pub fn write_now(
        self: &Arc<Self>,
        offset: u64,
        data: &[u8],
        by: Option<u32>,
    ) -> Option<StageResult<()>> {
        if self.state.lock().base.is_some() {
            return None;
        }
        Some(self.write_local(offset, data, by))
    }

    fn write_local(self: &Arc<Self>, offset: u64, data: &[u8], by: Option<u32>) -> StageResult<()> {
        let end = offset + data.len() as u64;
        if end > self.max_size() {
            return Err(StageError::TooLarge);
        }
        let mut state = self.state.lock();
        self.take_to(&mut state, end)?;
        // Under the state lock, as a truncation cuts the file and sets its
        // size: one comes wholly before the other.
        self.file
            .write_at(data, offset)
            .map_err(|e| self.local(e))?;
        let appending = end >= state.size;
        state.size = state.size.max(end);
        self.touch(&mut state, offset..end, by);
        // While a flush runs, it uploads what it needs itself; a part started now
        // could create an upload after the flush completed its own.
        let flushing = self.exclusive.try_lock().is_err();
        if appending && !state.deleted && !flushing {
            // The parts this write moved the writer past are final unless
            // rewritten. (Only those: looking at every part on every write would
            // cost a file of N parts N checks per write; anything else still dirty
            // is uploaded by the flush.)
            let behind = self.layout.index_of(end).min(state.versions.len());
            // Encrypted, a part sent before is sent again only by the flush,
            // under a new key.
            let encrypted = self.shares.codec.encrypts();
            for index in self.layout.index_of(offset)..behind {
                let resend = encrypted && state.uploaded[index].is_some();
                if !state.in_flight[index] && !state.is_clean(index) && !resend {
                    self.spawn_part(&mut state, index);
                }
            }
        }
        Ok(())
    }

    fn spawn_part(self: &Arc<Self>, state: &mut State, index: usize) {
        state.in_flight[index] = true;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = this.upload_part(index, None).await;
            let mut state = this.state.lock();
            if index < state.in_flight.len() {
                state.in_flight[index] = false;
            }
            match result {
                Ok(Some(sent)) if index < state.uploaded.len() => {
                    state.uploaded[index] = Some(sent);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(key = state.key, part = index + 1, error = %e, "part upload failed");
                    state.failure.get_or_insert(e);
                }
            }
        });
        state.tasks.retain(|t| !t.is_finished());
        state.tasks.push(task);
    }

    /// Uploads part `index` as it is now (encrypted, on an encrypted volume;
    /// with `tag` after it when it ends the object); `None` if the part no
    /// longer exists.
    async fn upload_part(&self, index: usize, tag: Option<Tagger>) -> StageResult<Option<Sent>> {
        let _permit = self.shares.permits.acquire().await.expect("never closed");
        let upload = self.upload().await?;
        let (version, key, range) = {
            let state = self.state.lock();
            let range = self.layout.range(index);
            // Truncated away since it was scheduled.
            let Some(&version) = state.versions.get(index) else {
                return Ok(None);
            };
            if range.start >= state.size && index > 0 {
                return Ok(None);
            }
            let end = range.end.min(state.size);
            (version, state.key.clone(), range.start..end)
        };
        let _room = self.shares.memory.upload(range.end - range.start).await;
        let (body, piece) = self.read_sealed(range, upload.key.as_deref(), tag)?;
        let etag = self
            .store
            .upload_part(&key, &upload.id, index as i32 + 1, body)
            .await?;
        Ok(Some(Sent {
            version,
            etag,
            piece,
        }))
    }

    /// The multipart upload under way, started now if none is: on an
    /// encrypted volume, with a new data key.
    async fn upload(&self) -> StageResult<Upload> {
        let mut upload = self.upload.lock().await;
        if let Some(upload) = &*upload {
            return Ok(upload.clone());
        }
        let key = self.key();
        let posix = self.posix();
        // Its times are S3's, the completion's (not those of what it replaces).
        let sent = Posix {
            ctime: None,
            ..posix.clone()
        };
        let (headers, content_key) = self
            .new_object_headers(&key, sent.headers(Kind::File))
            .await?;
        let id = self.store.create_multipart_upload(&key, &headers).await?;
        self.state.lock().started_with = Some(posix);
        debug!(key, upload_id = id, "multipart upload started");
        let started = Upload {
            id,
            key: content_key.map(Arc::new),
        };
        *upload = Some(started.clone());
        Ok(started)
    }

    fn read_local(&self, range: Range<u64>) -> io::Result<Bytes> {
        self.file.read(range)
    }

    /// Up to `size` bytes at `offset`.
    pub async fn read(&self, offset: u64, size: u32) -> StageResult<Bytes> {
        self.load_base().await?;
        let len = self.size();
        if offset >= len {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(size)).min(len);
        self.read_local(offset..end).map_err(|e| self.local(e))
    }

    /// Sets the file's size, zero-filling when it grows.
    pub async fn truncate(&self, size: u64, by: Option<u32>) -> StageResult<()> {
        if size > self.max_size() {
            return Err(StageError::TooLarge);
        }
        // Nothing of the old content survives a cut to nothing: no need to
        // download it.
        if size > 0 {
            self.load_base().await?;
        }
        // Cut and sized under the state lock, as a write is written.
        let mut state = self.state.lock();
        self.take_to(&mut state, size)?;
        self.file.set_len(size).map_err(|e| self.local(e))?;
        if size == 0 {
            state.base = None;
        }
        self.give_back_to(&mut state, size);
        let old = state.size;
        state.size = size;
        if size < old {
            let count = self.layout.count(size);
            state.versions.truncate(count);
            state.uploaded.truncate(count);
            state.in_flight.truncate(count);
            // The part that now ends the file lost its tail.
            self.touch(&mut state, size.saturating_sub(1)..size.max(1), by);
        } else {
            self.touch(&mut state, old..size, by);
        }
        Ok(())
    }
}
