//! What a FUSE request says of its caller: who it is, and what it asks for when
//! it creates or opens a file.

use fuser::{OpenAccMode, OpenFlags, Request};

use crate::fs::posix::{PERM_BITS, Posix};

/// The mode and owner of a file `req` creates with `mode`, less `umask`.
pub(super) fn created(req: &Request, mode: u32, umask: u32) -> Posix {
    Posix {
        perm: Some((mode & !umask & PERM_BITS) as u16),
        uid: Some(req.uid()),
        gid: Some(req.gid()),
        ..Posix::default()
    }
}

/// What an open asks for: writing (any access mode but read-only, or O_TRUNC)
/// and truncation, and for a writer, who opens. (The kernel sends O_TRUNC
/// with an open only to a file system that asks it to, which s3vol does not:
/// see `FuseAdapter::init`.)
pub(super) fn open_flags(flags: OpenFlags, req: &Request) -> crate::fs::OpenFlags {
    let truncate = flags.0 & libc::O_TRUNC != 0;
    let write = flags.acc_mode() != OpenAccMode::O_RDONLY || truncate;
    crate::fs::OpenFlags {
        write,
        truncate,
        process: if write { process_of(req) } else { None },
        direct: flags.0 & libc::O_DIRECT != 0,
    }
}

/// Who sent `req`, for the audit log: the kernel names the thread.
pub(super) fn caller(req: &Request) -> crate::audit::Caller {
    crate::audit::Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// The process of the thread that made a request. The threads of a process
/// share its files, so a file opened by one thread and closed by another is
/// closed by its opener.
pub(super) fn process_of(req: &Request) -> Option<u32> {
    crate::procfs::thread_group(req.pid())
}
