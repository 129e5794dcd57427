//! A handle open for writing: who opened it, whether and by whom it changed
//! the file, the closes that publish nothing (by a process the daemon cannot
//! see, or one killed by a signal), and its release, which may upload what no
//! close did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use tracing::warn;

use super::{Fs, OpenFile};

/// The writing threads a handle remembers the processes of; past them, a
/// writing thread's process is read from `/proc` at each write.
const WRITING_THREADS: usize = 64;

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
    /// The threads that wrote through this handle, each with its process
    /// (read once per thread), as many as [`WRITING_THREADS`].
    threads: Mutex<Vec<(u32, Option<u32>)>>,
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
            threads: Mutex::new(Vec::new()),
            changed_by: Mutex::new(None),
        }))
    }

    /// Notes a write through this handle by `thread` (0: not known); the
    /// thread's process, where it can be told.
    pub(super) fn wrote_through(&self, thread: u32, audited: bool) -> Option<u32> {
        self.changed(audited);
        if thread == 0 {
            return None;
        }
        let mut threads = self.threads.lock();
        if let Some((_, process)) = threads.iter().find(|(t, _)| *t == thread) {
            return *process;
        }
        let process = crate::procfs::thread_group(thread);
        if threads.len() < WRITING_THREADS {
            threads.push((thread, process));
        }
        process
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
    /// close(2) by a process that is exiting because signal `signal` killed it
    /// (SIGKILL, the OOM killer, a crash), as the kernel closes the files of
    /// a dying process. When that process made the file's last change (a
    /// write or a truncation through any descriptor; or, where the last
    /// change was not told to be anyone's, such as the open's own creation or
    /// truncation, when it opened this handle), the file is held back: no
    /// close publishes it, nor the last release, and fsync fails; S3 keeps
    /// the previous version, as it keeps it for a writer killed before its
    /// close. A later change through any handle makes the file what it
    /// publishes again.
    pub fn close_by_killed_process(&self, fh: u64, process: Option<u32>, signal: i32) {
        let Ok(OpenFile::Staged {
            file,
            writer: Some(writer),
            ..
        }) = self.handle(fh)
        else {
            return;
        };
        let Some(process) = process else { return };
        let opened_it = writer.opener == Some(process)
            && (writer.wrote.load(Ordering::SeqCst) || writer.truncated);
        if !file.hold_back_for(signal, process, opened_it) {
            return;
        }
        warn!(
            key = file.key(),
            pid = process,
            signal,
            "the process writing the file was killed by signal {signal}: what it wrote is not \
             published, and S3 keeps the previous version"
        );
    }

    /// Notes a close by a process the daemon cannot see (the kernel named it
    /// PID 0: it runs outside the daemon's PID namespace). Such a close cannot
    /// be told from its opener's, so it publishes as the opener's would; the
    /// first is logged and each is counted for `s3vol stats`.
    pub fn close_by_unseen_process(&self) {
        let Some(stats) = &self.config.stats else {
            return;
        };
        if stats.callers.unseen_closes.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(
                "a process outside this daemon's PID namespace closed a file on the volume (the \
                 kernel names it PID 0); such closes publish what was written, as the writer's \
                 own close would, since a forked child's exit cannot be told from it"
            );
        }
    }

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
