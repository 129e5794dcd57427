//! Symbolic links, stored as s3fs-fuse stores them: an object whose body is the
//! target and whose `mode` metadata says "symbolic link". They need the
//! metadata: with `--no-metadata` such an object is a regular file holding its
//! target, and no link can be made. On an encrypted volume no link is made
//! either (its target would be stored in clear); one found encrypted is read.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tracing::debug;

use super::inode::{Kind, Stat};
use super::posix::Posix;
use super::write::child_key;
use super::{Entry, Fs, FsError, FsResult, Mutation};
use crate::audit::Op;

/// The longest target a link may have: PATH_MAX less its terminating NUL.
const MAX_TARGET: usize = 4095;

impl Fs {
    /// symlink(2): `name` in `parent`, pointing at `target`, owned as `owner`
    /// says. In S3 as soon as this returns.
    pub(super) async fn make_symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        owner: Posix,
    ) -> FsResult<Entry> {
        self.writable()?;
        // Without metadata a link cannot be told from a file; encrypted, its
        // target would be the one thing on the volume stored in clear.
        if !self.config.metadata || self.config.codec.encrypts() {
            return Err(self.mutate(Mutation::Symlink));
        }
        let name = self.valid_name(name)?;
        let target = target.as_os_str().as_bytes();
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > MAX_TARGET {
            return Err(FsError::NameTooLong);
        }
        let parent_node = self.directory(parent)?;
        if self.existing(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let key = child_key(&parent_node.key, name, Kind::File)?;
        let posix = Posix {
            perm: Some(0o777),
            mtime: None,
            symlink: true,
            ..owner
        };
        let etag = self
            .store
            .put_object(
                &key,
                Bytes::copy_from_slice(target),
                &posix.headers(Kind::File),
            )
            .await?;
        debug!(key, "symbolic link made");
        let stat = Stat {
            size: target.len() as u64,
            etag,
            mtime: SystemTime::now(),
            posix: Some(posix),
            own_headers: true,
        };
        let ino = {
            let mut table = self.inodes.lock();
            let ino = table.upsert(parent, name, Kind::File, stat, Instant::now());
            table.add_lookup(ino);
            ino
        };
        self.getattr(ino).await
    }

    /// readlink(2): the target, read from the object's body (pinned to the
    /// version whose metadata said "link").
    pub(super) async fn read_link(&self, ino: u64) -> FsResult<Bytes> {
        let node = self.node(ino)?;
        let is_link = self.config.metadata && node.stat.posix.as_ref().is_some_and(|p| p.symlink);
        if !is_link {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        let size = node.stat.size;
        if size == 0 {
            return Ok(Bytes::new());
        }
        if size > MAX_TARGET as u64 {
            return Err(FsError::Invalid("a link target longer than 4095 bytes"));
        }
        let opening = self.open_encrypted(ino, node).await?;
        let object = self.uncached_version(&opening.node, opening.decryption);
        // A link's target is read whole, and checked whole before it is used.
        let pieces = object.get(0..opening.node.stat.size).await?;
        object.authenticate().await?;
        Ok(pieces.concat().into())
    }
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
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
}
