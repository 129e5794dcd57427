//! The handle table: every file and directory handle open on the volume, by
//! number. Handles are numbered from one counter, files and directories
//! alike, and never reused while the volume lives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::DirEntry;
use super::read::Reader;
use super::upload::StagedFile;
use super::writer::Writer;

/// The reader of the object a staged file was opened on, made at the first
/// read through a handle on it.
pub(super) type BaseReader = Arc<tokio::sync::Mutex<Option<Reader>>>;

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
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            dirs: Mutex::default(),
            // 0 is no handle.
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a file handle; its number.
    pub(super) fn open(&self, handle: OpenFile) -> u64 {
        let fh = self.number();
        self.files.lock().insert(fh, handle);
        fh
    }

    pub(super) fn get(&self, fh: u64) -> Option<OpenFile> {
        self.files.lock().get(&fh).cloned()
    }

    /// Closes a file handle; what it was.
    pub(super) fn close(&self, fh: u64) -> Option<OpenFile> {
        self.files.lock().remove(&fh)
    }

    /// Whether any file handle is `such`.
    pub(super) fn any(&self, such: impl Fn(u64, &OpenFile) -> bool) -> bool {
        self.files
            .lock()
            .iter()
            .any(|(fh, handle)| such(*fh, handle))
    }

    /// Changes handle `fh`, if it is open.
    pub(super) fn update(&self, fh: u64, change: impl FnOnce(&mut OpenFile)) {
        if let Some(handle) = self.files.lock().get_mut(&fh) {
            change(handle);
        }
    }

    /// Opens a directory handle reading `entries`; its number.
    pub(super) fn open_dir(&self, entries: Arc<Vec<DirEntry>>) -> u64 {
        let fh = self.number();
        self.dirs.lock().insert(fh, entries);
        fh
    }

    /// The listing directory handle `fh` reads.
    pub(super) fn dir(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.dirs.lock().get(&fh).cloned()
    }

    pub(super) fn close_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
