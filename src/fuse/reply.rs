//! What goes back to the kernel: a file's attributes, the errno of a failure
//! (logged once), and the answer to a request that panicked.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyDirectory,
    ReplyDirectoryPlus, ReplyOpen,
};
use tracing::{debug, error, warn};

use crate::fs::{Attr, DirEntry, Entry, Fs, FsError, Kind, Mutation, Opened};

/// Runs the part of a request answered on a FUSE thread. A panic in it (a
/// bug) is logged and answered EIO by the reply it dropped (`None`), and the
/// thread goes on serving.
pub(super) fn on_this_thread<T>(work: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .inspect_err(log_panic)
        .ok()
}

pub(super) fn log_panic(panic: &Box<dyn std::any::Any + Send>) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    error!("a request panicked, which is a bug; it was answered EIO: {what}");
}

/// Logs a failed operation once, counts it in the volume's statistics and
/// returns its errno. Expected outcomes such as ENOENT from a lookup are logged
/// at DEBUG only.
pub(super) fn errno(fs: &Fs, op: &str, err: &FsError) -> Errno {
    let code = err.errno();
    fs.count_error(code);
    if err.is_expected() {
        debug!(op, errno = code, "{err:#}");
    } else {
        warn!(op, errno = code, "{err:#}");
    }
    Errno::from_i32(code)
}

pub(super) fn file_attr(attr: &Attr) -> FileAttr {
    let kind = match attr.kind {
        Kind::File if attr.symlink => FileType::Symlink,
        Kind::File => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 1024 * 1024,
        flags: 0,
    }
}

pub(super) fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
    }
}

/// The errno for a change the filesystem refuses.
pub(super) fn refuse(fs: &Fs, op: Mutation) -> Errno {
    on_this_thread(|| errno(fs, "mutate", &fs.mutate(op))).unwrap_or_else(|| {
        fs.count_error(libc::EIO);
        Errno::EIO
    })
}

/// Answers READDIR with as many of `entries` as the kernel's buffer holds.
pub(super) fn fill_directory<'a>(
    entries: impl Iterator<Item = &'a DirEntry>,
    mut reply: ReplyDirectory,
) {
    for entry in entries {
        let full = reply.add(
            INodeNo(entry.ino),
            entry.next_offset,
            file_type(entry.kind),
            &entry.name,
        );
        if full {
            break;
        }
    }
    reply.ok();
}

/// Answers READDIRPLUS with as many of `entries` as the kernel's buffer holds,
/// and tells `fs` of the references the kernel took.
pub(super) fn fill_directory_plus(
    fs: &Fs,
    entries: Vec<(DirEntry, Entry)>,
    mut reply: ReplyDirectoryPlus,
) {
    for (entry, e) in entries {
        let full = reply.add(
            INodeNo(entry.ino),
            entry.next_offset,
            &entry.name,
            &e.ttl,
            &file_attr(&e.attr),
            Generation(0),
        );
        if full {
            break;
        }
        // The kernel takes a reference to every entry but "." and "..".
        if entry.name != "." && entry.name != ".." {
            fs.remember(entry.ino);
        }
    }
    reply.ok();
}

/// Answers an open: with the backing file the kernel is to read the file from
/// (passthrough), or with the flags of its page cache.
pub(super) fn opened(reply: ReplyOpen, opened: &Opened) {
    let mut flags = FopenFlags::empty();
    flags.set(FopenFlags::FOPEN_KEEP_CACHE, opened.keep_cache);
    flags.set(FopenFlags::FOPEN_DIRECT_IO, opened.direct_io);
    match opened.backing {
        Some(id) => {
            // The ID is the filesystem's to close (at the last release of the
            // file), not this reply's.
            // SAFETY: the ID was opened on this connection and stays open
            // while the handle is.
            let backing = unsafe { reply.wrap_backing(id) };
            reply.opened_passthrough(FileHandle(opened.fh), flags, &backing);
            let _ = backing.into_raw();
        }
        None => reply.opened(FileHandle(opened.fh), flags),
    }
}
