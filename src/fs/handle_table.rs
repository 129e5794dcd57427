//! The handle table: every file and directory handle open on the volume, by
//! number. Handles are numbered from one counter, files and directories
//! alike, and never reused while the volume lives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::DirEntry;
use super::read::Reader;
use super::upload::StagedFile;
use super::writer::Writer;
use crate::journal::{Handle, Journal, Record};

/// How long after a worker takes over a truncation by name of a file whose
/// handle open for writing was lost may be that open's O_TRUNC, which the
/// kernel sends right after the open the lost worker answered.
pub(super) const LOST_OPEN_TRUNCATES_WITHIN: Duration = Duration::from_secs(10);

/// The reader of the object a staged file was opened on, made at the first
/// read through a handle on it.
pub(super) type BaseReader = Arc<tokio::sync::Mutex<Option<Reader>>>;

/// What a handle's reads through the daemon tell of the kernel's page cache
/// of its file (see `InodeTable::note_closed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KernelFill {
    /// Nothing: the kernel keeps none of it (passthrough, direct I/O), or the
    /// handle was opened by a worker before this one.
    Nothing,
    /// The kernel keeps what it reads, besides what it held.
    Adds,
    /// Opened on the belief that the kernel held the file whole (its pages
    /// kept): what reaches the daemon it lacked (pages reclaimed since), and
    /// is all it is known to hold now.
    Corrects,
}

/// An open file handle.
#[derive(Clone)]
pub(super) enum OpenFile {
    /// Reads the object in S3 as it was at open.
    Object {
        ino: u64,
        /// The version the handle reads.
        etag: Arc<str>,
        reader: Arc<tokio::sync::Mutex<Reader>>,
        /// Set at the first read through the handle, which the audit log records.
        read_once: Arc<AtomicBool>,
        /// The open let the kernel keep the pages it held of the file.
        kernel_kept: bool,
        /// The kernel reads the handle's version from a backing file with
        /// this ID (passthrough), never through the daemon.
        backing: Option<u32>,
        /// What the bytes read through the handle tell of the kernel's page
        /// cache of the file.
        fill: KernelFill,
    },
    /// The file is being written in this mount: reads and writes go to its
    /// staged copy.
    Staged {
        ino: u64,
        file: Arc<StagedFile>,
        /// `None` for a handle open for reading only.
        writer: Option<Arc<Writer>>,
        /// Reads the object the file was opened on while no one changed it.
        base_reader: BaseReader,
        /// Set at the first read through the handle, which the audit log records.
        read_once: Arc<AtomicBool>,
    },
}

impl OpenFile {
    /// The file the handle is open on.
    pub(super) fn ino(&self) -> u64 {
        match self {
            OpenFile::Object { ino, .. } | OpenFile::Staged { ino, .. } => *ino,
        }
    }
}

pub(super) struct HandleTable {
    files: Mutex<HashMap<u64, OpenFile>>,
    /// Open directories, each with the listing it reads.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// Handles a worker before this one opened on files being written: what
    /// they wrote died with it. Each with its inode, if it was open for
    /// writing, and when it was found lost.
    lost: Mutex<HashMap<u64, Option<(u64, Instant)>>>,
    next: AtomicU64,
    /// Where open handles are recorded for a worker that replaces this one.
    journal: OnceLock<Arc<Journal>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            dirs: Mutex::default(),
            lost: Mutex::default(),
            // 0 is no handle.
            next: AtomicU64::new(1),
            journal: OnceLock::new(),
        }
    }
}

impl HandleTable {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Records every handle opened and closed from now on.
    pub(super) fn keep_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }

    /// The journal the handles are kept in, if any.
    pub(super) fn journal(&self) -> Option<Arc<Journal>> {
        self.journal.get().cloned()
    }

    /// Records `record` in the journal the handles are kept in, if any.
    pub(super) fn record(&self, record: Record) {
        if let Some(journal) = self.journal.get() {
            journal.record(&record);
        }
    }

    /// Numbers handles after `last`, the highest a worker before this one
    /// gave out.
    pub(super) fn continue_after(&self, last: u64) {
        self.next.fetch_max(last + 1, Ordering::Relaxed);
    }

    /// Opens a file handle; its number.
    pub(super) fn open(&self, handle: OpenFile) -> u64 {
        let fh = self.number();
        self.insert(fh, handle);
        fh
    }

    /// Opens file handle `fh` (a number given out before).
    pub(super) fn insert(&self, fh: u64, handle: OpenFile) {
        let open = match &handle {
            OpenFile::Object {
                etag,
                reader,
                backing,
                ..
            } => {
                let etag = etag.to_string();
                // Not yet shared: no one else holds the lock.
                let size = reader.try_lock().map_or(0, |r| r.object().size);
                match *backing {
                    Some(backing) => Handle::Passthrough {
                        etag,
                        size,
                        backing,
                    },
                    None => Handle::Object { etag, size },
                }
            }
            OpenFile::Staged { writer, .. } => Handle::Staged {
                writing: writer.is_some(),
            },
        };
        self.record(Record::Opened {
            fh,
            ino: handle.ino(),
            open,
        });
        self.files.lock().insert(fh, handle);
    }

    /// Handle `fh`, opened by a worker before this one, is lost with it;
    /// `writing` names its inode if it was open for writing.
    pub(super) fn lose(&self, fh: u64, writing: Option<u64>) {
        let found = Instant::now();
        self.lost.lock().insert(fh, writing.map(|ino| (ino, found)));
    }

    /// Whether handle `fh` was lost with the worker that opened it.
    pub(super) fn is_lost(&self, fh: u64) -> bool {
        self.lost.lock().contains_key(&fh)
    }

    /// Whether a handle open for writing on `ino` was lost with the worker
    /// that opened it, within [`LOST_OPEN_TRUNCATES_WITHIN`], and is not yet
    /// released. (Past that, what comes is no longer the truncation of an
    /// open the lost worker answered; and a handle the kernel never knew, as
    /// one the worker recorded before it died answering the open, is never
    /// released.)
    pub(super) fn lost_writer_on(&self, ino: u64) -> bool {
        self.lost.lock().values().any(|writing| {
            writing.is_some_and(|(lost_on, found)| {
                lost_on == ino && found.elapsed() < LOST_OPEN_TRUNCATES_WITHIN
            })
        })
    }

    pub(super) fn get(&self, fh: u64) -> Option<OpenFile> {
        self.files.lock().get(&fh).cloned()
    }

    /// Closes a file handle; what it was.
    pub(super) fn close(&self, fh: u64) -> Option<OpenFile> {
        let handle = self.files.lock().remove(&fh);
        if handle.is_some() || self.lost.lock().remove(&fh).is_some() {
            self.record(Record::Closed { fh });
        }
        handle
    }

    /// Whether any file handle is `such`.
    pub(super) fn any(&self, such: impl Fn(u64, &OpenFile) -> bool) -> bool {
        self.files
            .lock()
            .iter()
            .any(|(fh, handle)| such(*fh, handle))
    }

    /// How many file handles are `such`.
    pub(super) fn count(&self, such: impl Fn(&OpenFile) -> bool) -> usize {
        self.files
            .lock()
            .values()
            .filter(|handle| such(handle))
            .count()
    }

    /// Changes handle `fh`, if it is open.
    pub(super) fn update(&self, fh: u64, change: impl FnOnce(&mut OpenFile)) {
        if let Some(handle) = self.files.lock().get_mut(&fh) {
            change(handle);
        }
    }

    /// Opens a directory handle on `ino` reading `entries`; its number.
    pub(super) fn open_dir(&self, ino: u64, entries: Arc<Vec<DirEntry>>) -> u64 {
        let fh = self.number();
        self.insert_dir(fh, ino, entries);
        fh
    }

    /// Opens directory handle `fh` (a number given out before).
    pub(super) fn insert_dir(&self, fh: u64, ino: u64, entries: Arc<Vec<DirEntry>>) {
        self.record(Record::Opened {
            fh,
            ino,
            open: Handle::Directory,
        });
        self.dirs.lock().insert(fh, entries);
    }

    /// The listing directory handle `fh` reads.
    pub(super) fn dir(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.dirs.lock().get(&fh).cloned()
    }

    /// Closes directory handle `fh`; the listing it read.
    pub(super) fn close_dir(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        let entries = self.dirs.lock().remove(&fh);
        if entries.is_some() {
            self.record(Record::Closed { fh });
        }
        entries
    }
}
