//! The operations the audit log records (`crate::audit`), each the one entry
//! point of its operation: the operation itself, then its line with the
//! outcome. The first read through a handle, the close that makes an object
//! and the ioctls of `s3vol info` and `s3vol url` are recorded where they
//! happen (`Fs::read`, `Fs::upload`, `Fs::ioctl`).

use std::ffi::OsStr;
use std::path::Path;

use bytes::Bytes;

use super::{Entry, Fs, FsResult, Kind};
use crate::audit::{Detail, Event, Op};
use crate::fs::posix::Posix;

/// 0, or the errno `result` answers the caller.
pub(super) fn errno_of<T>(result: &FsResult<T>) -> i32 {
    result.as_ref().err().map_or(0, |e| e.errno())
}

impl Fs {
    /// Records the event `event` makes, if the volume keeps an audit log.
    pub(super) fn audit(&self, event: impl FnOnce() -> Event) {
        if let Some(log) = &self.config.audit {
            log.record(event());
        }
    }

    /// Whether the volume keeps an audit log.
    pub fn audits(&self) -> bool {
        self.config.audit.is_some()
    }

    /// Writes out the audit log's queue and closes it (at unmount).
    pub fn close_audit_log(&self) {
        if let Some(log) = &self.config.audit {
            log.close();
        }
    }

    /// The key `name` in directory `parent` has or would have (a directory's
    /// with its `/`), for the log only: as far as it can be told.
    fn key_of_name(&self, parent: u64, name: &OsStr, kind: Kind) -> String {
        let parent = self.node(parent).map(|node| node.key).unwrap_or_default();
        let name = name.to_string_lossy();
        match kind {
            Kind::File => format!("{parent}{name}"),
            Kind::Directory => format!("{parent}{name}/"),
        }
    }

    /// The key of `ino`, for the log only (empty once it is forgotten).
    pub(super) fn key_of(&self, ino: u64) -> String {
        self.node(ino).map(|node| node.key).unwrap_or_default()
    }

    /// Records `op` on `ino` (with `detail`) and how it ended.
    pub(super) fn audit_on<T>(
        &self,
        op: Op,
        ino: u64,
        result: &FsResult<T>,
        detail: Option<Detail>,
    ) {
        self.audit(|| Event {
            errno: errno_of(result),
            detail,
            ..Event::new(op, self.key_of(ino))
        });
    }

    fn audit_change<T>(&self, op: Op, parent: u64, name: &OsStr, kind: Kind, result: &FsResult<T>) {
        self.audit(|| Event {
            errno: errno_of(result),
            ..Event::new(op, self.key_of_name(parent, name, kind))
        });
    }

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

    /// [`Fs::remove_file`], recorded.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let result = self.remove_file(parent, name).await;
        self.audit_change(Op::Unlink, parent, name, Kind::File, &result);
        result
    }

    /// [`Fs::remove_dir`], recorded.
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let result = self.remove_dir(parent, name).await;
        self.audit_change(Op::Rmdir, parent, name, Kind::Directory, &result);
        result
    }

    /// [`Fs::move_entry`], recorded (with the keys as a file's, without a
    /// directory's `/`: a rename names either).
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        // The keys before the rename moves them.
        let from = self.key_of_name(parent, name, Kind::File);
        let to = self.key_of_name(new_parent, new_name, Kind::File);
        let result = self
            .move_entry(parent, name, new_parent, new_name, flags)
            .await;
        self.audit(|| Event {
            to: Some(to),
            errno: errno_of(&result),
            ..Event::new(Op::Rename, from)
        });
        result
    }

    /// [`Fs::make_symlink`], recorded.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        owner: Posix,
    ) -> FsResult<Entry> {
        let result = self.make_symlink(parent, name, target, owner).await;
        self.audit_change(Op::Symlink, parent, name, Kind::File, &result);
        result
    }

    /// [`Fs::read_link`], recorded.
    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let result = self.read_link(ino).await;
        self.audit_on(Op::Readlink, ino, &result, None);
        result
    }

    /// [`Fs::open_dir`], recorded: a listing of the directory.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let result = self.open_dir(ino).await;
        self.audit_on(Op::List, ino, &result, None);
        result
    }

    /// [`Fs::change_xattr`] setting `name` to `value`, recorded.
    pub async fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let result = self.change_xattr(ino, name, Some(value), flags).await;
        let detail = Detail::Xattr(name.to_string_lossy().into_owned());
        self.audit_on(Op::Setxattr, ino, &result, Some(detail));
        result
    }

    /// [`Fs::change_xattr`] removing `name`, recorded.
    pub async fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let result = self.change_xattr(ino, name, None, 0).await;
        let detail = Detail::Xattr(name.to_string_lossy().into_owned());
        self.audit_on(Op::Removexattr, ino, &result, Some(detail));
        result
    }

    /// [`Fs::set_attributes`], recorded when it sets a mode, an owner or a
    /// time (in that order of precedence, one line; a change of size, and the
    /// time that comes with it, is recorded by the upload that makes it, as a
    /// `write`).
    pub async fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        change: Posix,
        fh: Option<u64>,
    ) -> FsResult<Entry> {
        self.setattr_by(ino, size, change, fh, None).await
    }

    /// [`Fs::setattr`] asked by process `by` (`None`: not known), who is
    /// then the author of a change of size.
    pub async fn setattr_by(
        &self,
        ino: u64,
        size: Option<u64>,
        change: Posix,
        fh: Option<u64>,
        by: Option<u32>,
    ) -> FsResult<Entry> {
        let what = match &change {
            Posix {
                perm: Some(mode), ..
            } => Some((Op::Chmod, Some(Detail::Mode(*mode)))),
            Posix { uid, gid, .. } if uid.is_some() || gid.is_some() => Some((
                Op::Chown,
                Some(Detail::Owner {
                    uid: *uid,
                    gid: *gid,
                }),
            )),
            // The time a truncation sets comes with it: the upload's `write`
            // records both.
            Posix { mtime: Some(_), .. } if size.is_none() => Some((Op::Utimens, None)),
            _ => None,
        };
        let result = self.set_attributes(ino, size, change, fh, by).await;
        if let Some((op, detail)) = what {
            self.audit_on(op, ino, &result, detail);
        }
        result
    }
}
