//! The FUSE adapter: the only module that names fuser.
//!
//! Each operation opens a tracing span, hands the request to the tokio runtime, makes
//! one call into [`Fs`] and replies from the task, so the kernel's request loop never
//! waits on the network. Every error, the refusals of what S3 cannot express
//! included, comes from [`Fs`] as an [`FsError`], whose one match chooses the errno.

mod reply;
mod request;
pub mod session;
mod xattr;

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{Instrument, debug_span};

use self::reply::{
    errno, file_attr, fill_directory, fill_directory_plus, log_panic, on_this_thread, refuse,
};
use self::request::{caller, created, open_flags, process_of};
use crate::fs::posix::{PERM_BITS, Posix};
use crate::fs::{Answer, Fs, Mutation};

pub struct FuseAdapter {
    pub(super) fs: Arc<Fs>,
    runtime: tokio::runtime::Handle,
    /// Whether the volume keeps an audit log, which needs each request's caller.
    audited: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            audited: fs.audits(),
            fs,
            runtime,
        }
    }

    /// Runs `work` on the runtime inside `span`. A panic in it (a bug) is
    /// logged; the reply it held is dropped with it, which answers EIO.
    fn spawn<F>(&self, span: tracing::Span, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        let fs = self.fs.clone();
        let work = std::panic::AssertUnwindSafe(work)
            .catch_unwind()
            .map(move |done| {
                if let Err(panic) = done {
                    log_panic(&panic);
                    // The reply it dropped answers EIO.
                    fs.count_error(libc::EIO);
                }
            });
        self.runtime.spawn(work.instrument(span));
    }

    /// The errno for a request that panicked on the kernel's thread (logged
    /// already): EIO, counted.
    fn panicked(&self) -> Errno {
        self.fs.count_error(libc::EIO);
        Errno::EIO
    }

    /// Like [`FuseAdapter::spawn`], on behalf of the caller of `req`, whom the
    /// audit log names (only a volume with one needs to know).
    fn spawn_for<F>(&self, req: &Request, span: tracing::Span, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.audited {
            self.spawn(span, crate::audit::as_caller(caller(req), work));
        } else {
            self.spawn(span, work);
        }
    }
}

/// The most entries one READDIR or READDIRPLUS reply is given to fill: more
/// than the kernel's largest buffer (128 KiB) holds of READDIRPLUS entries
/// with short names; what does not fit is asked for in the next request.
const REPLY_ENTRIES: usize = 1024;

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Let the kernel read ahead as far as it will; our own read-ahead sits behind it.
        let _ = config.set_max_readahead(1024 * 1024);
        // A listing already carries every entry's size and time, so hand them over
        // with the names: `ls -l` then needs no lookup per file.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // Past the first reply, only while entries are being looked up (see
        // fs::ahead): `find` then reads names alone, `ls -l` entries with
        // their metadata.
        let _ = config.add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO);
        // No FUSE_ATOMIC_O_TRUNC: with it, the kernel sends O_TRUNC with the
        // open, drops its pages of the file and takes it to be empty before
        // it checks, for an open of access mode O_RDONLY, that no program is
        // running from the file (ETXTBSY). Without it, the kernel truncates
        // (a setattr from the opener) only once that check passed.
        // The daemon takes away what a write must (set-ID bits and the file
        // capability, which it never shows anyway: see Fs::attr) when the
        // file is rewritten; saying so (SB_NOSEC) spares every write(2) a
        // getxattr of `security.capability` first.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Files whole in the disk cache are read by the kernel from the cache's
        // files (see fs::passthrough), which lie on a plain file system.
        // Asked for only where it may serve: it makes the volume a stacked
        // file system.
        if self.fs.may_pass_through() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    let _ = config.set_max_stack_depth(1);
                }
                Err(_) => self.fs.no_passthrough(
                    "this kernel has no FUSE passthrough (Linux 6.9 or later, built with \
                     CONFIG_FUSE_PASSTHROUGH)"
                        .into(),
                ),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let span = debug_span!("lookup", parent = parent.0, ?name);
        self.spawn(span, async move {
            match fs.lookup(parent.0, &name).await {
                Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&fs, "lookup", &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        on_this_thread(|| self.fs.forget(ino.0, nlookup));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.spawn(debug_span!("getattr", ino = ino.0), async move {
            match fs.getattr(ino.0).await {
                Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(errno(&fs, "getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        // The access time is not kept: S3 has none, and reads do not change it.
        let change = Posix {
            perm: mode.map(|m| (m & PERM_BITS) as u16),
            uid,
            gid,
            mtime: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            }),
            ..Posix::default()
        };
        let span = debug_span!("setattr", ino = ino.0, ?size, ?change);
        // Who truncates a file is its last writer (see Fs::close_by_killed_process).
        let by = size.and_then(|_| process_of(req));
        // A truncate of a file no one has open uploads it: the audit log names
        // who asked.
        self.spawn_for(req, span, async move {
            match fs
                .setattr_by(ino.0, size, change, fh.map(|fh| fh.0), by)
                .await
            {
                Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(errno(&fs, "setattr", &e)),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refuse(&self.fs, Mutation::Mknod));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let posix = created(req, mode, umask);
        self.spawn_for(
            req,
            debug_span!("mkdir", parent = parent.0, ?name),
            async move {
                match fs.mkdir(parent.0, &name, posix).await {
                    Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
                    Err(e) => reply.error(errno(&fs, "mkdir", &e)),
                }
            },
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.spawn_for(
            req,
            debug_span!("unlink", parent = parent.0, ?name),
            async move {
                match fs.unlink(parent.0, &name).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&fs, "unlink", &e)),
                }
            },
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.spawn_for(
            req,
            debug_span!("rmdir", parent = parent.0, ?name),
            async move {
                match fs.rmdir(parent.0, &name).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&fs, "rmdir", &e)),
                }
            },
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let fs = self.fs.clone();
        let (name, target) = (link_name.to_os_string(), target.to_path_buf());
        let owner = Posix {
            uid: Some(req.uid()),
            gid: Some(req.gid()),
            ..Posix::default()
        };
        let span = debug_span!("symlink", parent = parent.0, ?name);
        self.spawn_for(req, span, async move {
            match fs.symlink(parent.0, &name, &target, owner).await {
                Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(errno(&fs, "symlink", &e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn_for(req, debug_span!("readlink", ino = ino.0), async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&fs, "readlink", &e)),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        let span = debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        );
        self.spawn_for(req, span, async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, flags.bits())
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&fs, "rename", &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(refuse(&self.fs, Mutation::Link));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let flags = open_flags(flags, req);
        self.spawn(debug_span!("open", ino = ino.0), async move {
            match fs.open_file(ino.0, flags).await {
                Ok(opened) => reply::opened(reply, &opened),
                Err(e) => reply.error(errno(&fs, "open", &e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let span = debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        // A random read of cached data is answered here, as from a local file:
        // handing it to the runtime would cost more than the read itself.
        let read = || {
            let read = || self.fs.read_at(fh.0, offset, size);
            match self.audited {
                true => crate::audit::now_as_caller(caller(req), read),
                false => read(),
            }
        };
        match on_this_thread(|| span.in_scope(read)) {
            Some(Answer::Now(data)) => reply.data(&data),
            Some(Answer::Later(read)) => {
                let fs = self.fs.clone();
                self.spawn_for(req, span, async move {
                    match read.await {
                        Ok(data) => reply.data(&data),
                        Err(e) => reply.error(errno(&fs, "read", &e)),
                    }
                })
            }
            None => reply.error(self.panicked()),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let span = debug_span!("write", ino = ino.0, fh = fh.0, offset, size = data.len());
        {
            // The common case needs no network: write from the kernel's buffer here,
            // saving a copy of every byte. Part uploads start on the runtime.
            let _span = span.enter();
            let _runtime = self.runtime.enter();
            // The audit log names who last changed a file whose upload waits
            // for its last release.
            let write_now = || self.fs.write_now(fh.0, offset, data, req.pid());
            let written = on_this_thread(|| match self.audited {
                true => crate::audit::now_as_caller(caller(req), write_now),
                false => write_now(),
            });
            let Some(written) = written else {
                return reply.error(self.panicked());
            };
            if let Some(result) = written {
                match result {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(errno(&self.fs, "write", &e)),
                }
                return;
            }
        }
        let fs = self.fs.clone();
        let data = data.to_vec();
        let thread = req.pid();
        self.spawn_for(req, span, async move {
            match fs.write_by(fh.0, offset, &data, thread).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&fs, "write", &e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let caller = crate::procfs::thread(req.pid());
        let process = caller.map(|thread| thread.process);
        if req.pid() == 0 {
            fs.close_by_unseen_process();
        }
        // Read while the close is in flight, before the dying process is gone;
        // only of a thread that is exiting (see procfs::fatal_signal).
        let killed = caller
            .filter(|thread| thread.exiting)
            .and_then(|_| crate::procfs::fatal_signal(req.pid()));
        if let Some(signal) = killed {
            fs.close_by_killed_process(fh.0, process, signal);
            reply.ok();
            return;
        }
        self.spawn_for(
            req,
            debug_span!("flush", ino = ino.0, fh = fh.0),
            async move {
                match fs.flush(fh.0, process).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&fs, "flush", &e)),
                }
            },
        );
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn_for(
            req,
            debug_span!("release", ino = ino.0, fh = fh.0),
            async move {
                fs.release(fh.0).await;
                reply.ok();
            },
        );
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.spawn_for(
            req,
            debug_span!("fsync", ino = ino.0, fh = fh.0),
            async move {
                match fs.fsync(fh.0).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&fs, "fsync", &e)),
                }
            },
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.spawn_for(req, debug_span!("opendir", ino = ino.0), async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&fs, "opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(listed) = on_this_thread(|| self.fs.readdir_page(fh.0, offset, REPLY_ENTRIES))
        else {
            return reply.error(self.panicked());
        };
        match listed {
            Ok(entries) => fill_directory(entries.iter(), reply),
            Err(e) => reply.error(errno(&self.fs, "readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        let span = debug_span!("readdirplus", ino = ino.0, fh = fh.0, offset);
        self.spawn_for(req, span, async move {
            match fs
                .readdirplus_page(ino.0, fh.0, offset, REPLY_ENTRIES)
                .await
            {
                Ok(entries) => fill_directory_plus(&fs, entries, reply),
                Err(e) => reply.error(errno(&fs, "readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        on_this_thread(|| self.fs.releasedir(fh.0));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some(s) = on_this_thread(|| self.fs.statfs()) else {
            return reply.error(self.panicked());
        };
        reply.statfs(
            s.blocks,
            s.bfree,
            s.bfree,
            s.files,
            s.ffree,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        xattr::set(self, req, ino, name, value, flags, reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr::get(self, req, ino, name, size, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr::list(self, req, ino, size, reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        xattr::remove(self, req, ino, name, reply);
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd == crate::control::RESTART {
            match self.fs.restart(ino.0, req.uid()) {
                Ok(()) => reply.ioctl(0, &[]),
                Err(e) => reply.error(errno(&self.fs, "ioctl", &e)),
            }
            return;
        }
        let fs = self.fs.clone();
        let input = in_data.to_vec();
        let span = debug_span!(
            "ioctl",
            ino = ino.0,
            fh = fh.0,
            cmd,
            uid = req.uid(),
            pid = req.pid()
        );
        self.spawn_for(req, span, async move {
            match fs.ioctl(ino.0, fh.0, cmd, &input, out_size).await {
                Ok(answer) => reply.ioctl(answer.len() as i32, &answer),
                Err(e) => reply.error(errno(&fs, "ioctl", &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let process = process_of(req);
        let posix = created(req, mode, umask);
        self.spawn_for(
            req,
            debug_span!("create", parent = parent.0, ?name),
            async move {
                match fs.create(parent.0, &name, process, posix).await {
                    Ok((e, fh)) => reply.created(
                        &e.ttl,
                        &file_attr(&e.attr),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    ),
                    Err(e) => reply.error(errno(&fs, "create", &e)),
                }
            },
        );
    }
}
