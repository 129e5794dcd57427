//! Extended attributes: the `user.` namespace of the file's metadata
//! (`Fs::getxattr` and the rest); any other namespace is answered on the
//! kernel's thread, without a task. The root's `trusted.s3vol.report` (which
//! the kernel lets only root read) is the volume's report, asked this way
//! because it needs no open, and so no listing of the root.

use std::ffi::OsStr;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr, Request};
use tracing::debug_span;

use super::FuseAdapter;
use super::reply::errno;
use crate::fs::xattr_name;

pub(super) fn set(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    value: &[u8],
    flags: i32,
    reply: ReplyEmpty,
) {
    let fs = adapter.fs.clone();
    let name = name.to_os_string();
    let value = value.to_vec();
    let span = debug_span!("setxattr", ino = ino.0, ?name, size = value.len(), flags);
    adapter.spawn_for(req, span, async move {
        match fs.setxattr(ino.0, &name, &value, flags).await {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&fs, "setxattr", &e)),
        }
    });
}

pub(super) fn get(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    size: u32,
    reply: ReplyXattr,
) {
    if ino.0 == crate::fs::ROOT_INO && name == crate::control::REPORT_XATTR {
        let room = crate::control::REPORT_XATTR_MAX;
        return match adapter.fs.report(room) {
            Some(Ok(report)) => reply_xattr(reply, size, &report),
            Some(Err(e)) => reply.error(errno(&adapter.fs, "getxattr", &e)),
            None => reply.error(Errno::ENODATA),
        };
    }
    // Other namespaces are answered here: the kernel asks for
    // `security.capability` before writes and `ls` for ACLs.
    if let Err(e) = xattr_name(name) {
        return reply.error(errno(&adapter.fs, "getxattr", &e));
    }
    let fs = adapter.fs.clone();
    let name = name.to_os_string();
    let span = debug_span!("getxattr", ino = ino.0, ?name, size);
    adapter.spawn_for(req, span, async move {
        match fs.getxattr(ino.0, &name).await {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(errno(&fs, "getxattr", &e)),
        }
    });
}

pub(super) fn list(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    size: u32,
    reply: ReplyXattr,
) {
    let fs = adapter.fs.clone();
    let span = debug_span!("listxattr", ino = ino.0, size);
    adapter.spawn_for(req, span, async move {
        match fs.listxattr(ino.0).await {
            Ok(names) => reply_xattr(reply, size, &names),
            Err(e) => reply.error(errno(&fs, "listxattr", &e)),
        }
    });
}

pub(super) fn remove(
    adapter: &FuseAdapter,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    let fs = adapter.fs.clone();
    let name = name.to_os_string();
    let span = debug_span!("removexattr", ino = ino.0, ?name);
    adapter.spawn_for(req, span, async move {
        match fs.removexattr(ino.0, &name).await {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&fs, "removexattr", &e)),
        }
    });
}

/// An extended attribute's value or the list of names, as getxattr(2) and
/// listxattr(2) ask: its size alone for a `size` of 0, ERANGE when it does not
/// fit `size`.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    match size {
        0 => reply.size(data.len() as u32),
        size if data.len() > size as usize => reply.error(Errno::ERANGE),
        _ => reply.data(data),
    }
}
