//! A handle open for writing: who opened it, whether and by whom it changed
//! the file, and its release, which may upload what no close did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::Fs;

/// A handle open for writing: who opened it, and whether it changed the file.
/// Only a close by the opener after a change publishes the file (see
/// [`Fs::flush`]).
pub(super) struct Writer {
    /// The process that opened the handle, when the kernel named it.
    pub(super) opener: Option<u32>,
    /// Created, written or truncated through this handle since it was opened.
    pub(super) wrote: AtomicBool,
    /// Opened with O_TRUNC: a change, though not one its opener's close
    /// publishes by itself (see `Fs::flush`).
    pub(super) truncated: bool,
    /// Who last changed the file through this handle, on a volume with an
    /// audit log: the upload at the last release, whose request names no
    /// caller, is recorded as theirs.
    changed_by: Mutex<Option<crate::audit::Caller>>,
}

impl Writer {
    /// A handle opened by `opener`; `created` when the open created the file,
    /// which is a change of its own (a new empty file is published at its
    /// creator's close, as it loses nothing).
    pub(super) fn new(opener: Option<u32>, created: bool, truncated: bool) -> Option<Arc<Self>> {
        Some(Arc::new(Self {
            opener,
            wrote: AtomicBool::new(created),
            truncated,
            changed_by: Mutex::new(None),
        }))
    }

    /// Notes a change through this handle by the caller of the request being
    /// served (`audited`: only a volume with an audit log needs to know who).
    pub(super) fn changed(&self, audited: bool) {
        self.wrote.store(true, Ordering::SeqCst);
        if audited {
            let caller = crate::audit::current_caller();
            if caller.pid != 0 {
                *self.changed_by.lock() = Some(caller);
            }
        }
    }
}

impl Fs {
    /// The release of a handle on a staged file. A release names no caller:
    /// what it uploads is recorded as changed by whoever last wrote through
    /// the handle.
    pub(super) async fn release_staged(&self, ino: u64, writer: Option<Arc<Writer>>) {
        let writer = writer.and_then(|w| *w.changed_by.lock());
        match writer {
            Some(caller) if crate::audit::current_caller().pid == 0 => {
                crate::audit::as_caller(caller, self.unstage(ino)).await
            }
            _ => self.unstage(ino).await,
        }
    }
}
