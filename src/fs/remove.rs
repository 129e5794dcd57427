//! unlink(2) and rmdir(2): a file or a directory's marker deleted, and what
//! was open on it let go.

use std::ffi::OsStr;

use tracing::debug;

use super::inode::Kind;
use super::{Fs, FsError, FsResult};
use crate::audit::Op;
use crate::store::ListRequest;

impl Fs {
    /// unlink(2): DeleteObject. A file still open here is not uploaded any more.
    pub(super) async fn remove_file(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let (parent_node, name, ino, kind) = self.existing_child(parent, name).await?;
        if kind == Kind::Directory {
            return Err(FsError::IsADirectory);
        }
        // Its uploads wait (the one under way ends first) and are given up
        // once the object is gone; if it cannot be deleted, they go on.
        let open_file = self.staging.file(ino);
        let paused = match &open_file {
            Some(file) => Some(file.pause().await),
            None => None,
        };
        let key = format!("{}{name}", parent_node.key);
        // A change of the file's mode, owner or time: in its turn (taken
        // after the file's own lock, as everywhere), so that no copy of the
        // object onto itself lands after the delete.
        let turn = match self.changes.has(ino) {
            true => Some(self.metadata_turn.lock().await),
            false => None,
        };
        self.store.delete_object(&key).await?;
        self.changes.drop_pending(ino);
        self.inodes.lock().remove_child(parent, name);
        drop(turn);
        if let (Some(file), Some(paused)) = (&open_file, paused) {
            file.discard_paused(paused).await;
        }
        self.discard_unlinked(ino).await;
        debug!(key, "deleted");
        Ok(())
    }

    /// `ino` lost its name here: a staged file an open made of it while the
    /// name was being removed or replaced (after the pause that the one
    /// before got) is given up too. Nothing of it reaches S3, as nothing of
    /// an unlinked file would.
    pub(super) async fn discard_unlinked(&self, ino: u64) {
        if let Some(file) = self.staging.file(ino)
            && !file.is_deleted()
        {
            file.discard().await;
        }
    }

    /// Whether anything lies under directory `key`, in S3 or staged here.
    pub(super) async fn has_children(&self, ino: u64, key: &str) -> FsResult<bool> {
        let staged_inside = {
            let table = self.inodes.lock();
            table
                .children_of(ino)
                .iter()
                .any(|c| self.staging.contains(*c))
        };
        if staged_inside {
            return Ok(true);
        }
        let page = self
            .store
            .list_objects(ListRequest {
                prefix: key,
                max_keys: Some(2),
                ..ListRequest::default()
            })
            .await?;
        Ok(page.objects.iter().any(|o| o.key != key) || !page.common_prefixes.is_empty())
    }

    /// rmdir(2): only when empty; deletes the marker if there is one.
    pub(super) async fn remove_dir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let (parent_node, name, ino, kind) = self.existing_child(parent, name).await?;
        if kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        let key = format!("{}{name}/", parent_node.key);
        if self.has_children(ino, &key).await? {
            return Err(FsError::NotEmpty);
        }
        // In the turn of the volume's changes of modes, owners and times: a
        // marker one of them is making or copying is made before the delete.
        let _turn = self.metadata_turn.lock().await;
        self.store.delete_object(&key).await?;
        self.changes.drop_pending(ino);
        self.inodes.lock().remove_child(parent, name);
        debug!(key, "directory removed");
        Ok(())
    }
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
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
}
