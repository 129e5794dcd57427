//! What the audit log (`crate::audit`) is given: the helpers with which each
//! operation's one entry point records its line with the outcome. The entry
//! points (`Fs::create`, `Fs::unlink`, `Fs::rename`, `Fs::setattr` and the
//! rest) sit beside what they wrap; the first read through a handle, the close
//! that makes an object and the ioctls of `s3vol info` and `s3vol url` are
//! recorded where they happen (`Fs::read`, `Fs::publish`, `Fs::ioctl`).

use std::ffi::OsStr;

use super::{Fs, FsResult, Kind};
use crate::audit::{Detail, Event, Op};

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
    pub(super) fn key_of_name(&self, parent: u64, name: &OsStr, kind: Kind) -> String {
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

    pub(super) fn audit_change<T>(
        &self,
        op: Op,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        result: &FsResult<T>,
    ) {
        self.audit(|| Event {
            errno: errno_of(result),
            ..Event::new(op, self.key_of_name(parent, name, kind))
        });
    }
}
