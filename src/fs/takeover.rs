//! A worker taking over a volume from one that died or was retired: the
//! kernel still holds the old worker's inode and handle numbers, and resends
//! the requests it had not answered. The journal says what they name.
//!
//! Inodes come back with their numbers and names; what S3 holds for them is
//! asked again at their next use. Directory handles list their directory
//! again, so a listing under way goes on from the offset it reached. Handles
//! reading an object read the same version (its ETag pinned, as before); a
//! handle on a file being written is lost with the staged data that died
//! with its worker: its writes, fsync and close fail with EIO. The uploads
//! that worker had under way are aborted, so no part of a file half written
//! stays in S3, and no object is made of it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use futures::future::join_all;
use tracing::{info, warn};

use super::handle_table::{KernelFill, OpenFile};
use super::read::Reader;
use super::{Fs, FsError, FsResult};
use crate::journal::{Carried, Handle, Journal, Record};

/// How long after a worker asked for an upload S3 may have begun it: the
/// minute's leeway for clocks before, and the retries of a request
/// (`--io-timeout` is far shorter) after.
const ASKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(60 + 600);

/// What a takeover found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub inodes: usize,
    pub handles: usize,
    /// Handles of files being written, now failing with EIO.
    pub lost: usize,
    /// The keys of the files those handles were open on.
    pub lost_keys: Vec<String>,
    pub uploads_aborted: usize,
}

impl Fs {
    /// Records the numbers given to the kernel from now on in `journal`.
    pub fn keep_journal(&self, journal: Arc<Journal>) {
        self.inodes.lock().keep_journal(journal.clone());
        self.handles.keep_journal(journal);
    }

    /// Lets [`Fs::restart`] ask for a new worker through `ask`.
    pub fn on_restart(&self, ask: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>) {
        let _ = self.restart.set(ask);
    }

    /// `s3vol restart`: asks the supervisor for a new worker, for root and
    /// the user the volume's daemon runs as (`uid`: the caller's).
    pub fn restart(&self, ino: u64, uid: u32) -> FsResult<()> {
        if ino != super::ROOT_INO {
            return Err(FsError::UnknownIoctl(crate::control::RESTART));
        }
        if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
            return Err(FsError::NotPermitted(
                "only root and the user who mounted the volume may restart it",
            ));
        }
        let ask = self.restart.get().ok_or(FsError::NotSupported(
            "a restart of a volume with no supervisor",
        ))?;
        ask().map_err(|_| {
            FsError::NotSupported(
                "a restart in place here: the kernel cannot send FUSE requests again (Linux \
                 6.9), or the volume's supervisor is gone",
            )
        })
    }

    /// Whether this worker may step aside for a new one without losing a
    /// change: no file open for writing, none being uploaded or waiting to
    /// be; changes of modes, owners and times waiting are put in S3 now, and
    /// one whose copy failed keeps the worker until it is in S3 (its copy is
    /// tried again after the pause a failure brings).
    pub async fn ready_to_retire(&self) -> bool {
        let writing = self.handles.count(|f| {
            matches!(
                f,
                OpenFile::Staged {
                    writer: Some(_),
                    ..
                }
            )
        });
        if writing > 0 || !self.staging.is_idle() {
            return false;
        }
        self.apply_metadata(std::time::Duration::ZERO).await;
        self.changes.not_in_s3().is_empty()
    }

    /// Takes over what `carried` says the kernel holds (see the module).
    /// Call before serving a request.
    pub async fn adopt(&self, mut carried: Carried) -> Adopted {
        self.inodes
            .lock()
            .adopt(&carried.nodes, carried.last_ino, Instant::now());
        self.handles.continue_after(carried.last_fh);
        let mut adopted = Adopted {
            inodes: carried.nodes.len(),
            ..Adopted::default()
        };
        for (fh, (ino, open)) in std::mem::take(&mut carried.handles) {
            let writing = matches!(open, Handle::Staged { writing: true }).then_some(ino);
            // The kernel's I/O mode of the file goes on whether or not the
            // handle can be served: it ends at the handle's release.
            match &open {
                Handle::Directory => {}
                Handle::Object { etag, .. } => self.passthrough.adopt(fh, ino, etag, None),
                Handle::Passthrough { etag, backing, .. } => {
                    self.passthrough.adopt(fh, ino, etag, Some(*backing))
                }
                Handle::Staged { .. } => self.passthrough.adopt(fh, ino, "", None),
            }
            let reopened = match open {
                Handle::Directory => self.reopen_dir(fh, ino).await,
                Handle::Object { etag, size } => {
                    self.reopen_object(fh, ino, etag, size, None).await
                }
                Handle::Passthrough {
                    etag,
                    size,
                    backing,
                } => self.reopen_object(fh, ino, etag, size, Some(backing)).await,
                Handle::Staged { writing } => {
                    // Lost with its worker; its changes too, unless what was
                    // staged was in S3 with none since.
                    if writing
                        && !carried.published.contains(&ino)
                        && let Ok(node) = self.node(ino)
                        && !adopted.lost_keys.contains(&node.key)
                    {
                        adopted.lost_keys.push(node.key);
                    }
                    Ok(false)
                }
            };
            match reopened {
                Ok(true) => adopted.handles += 1,
                Ok(false) | Err(_) => {
                    if let Err(e) = reopened {
                        warn!(fh, ino, "a handle could not be opened again: {e:#}");
                    }
                    self.handles.lose(fh, writing);
                    adopted.lost += 1;
                }
            }
        }
        let aborts = carried.uploads.iter().map(|(id, key)| async move {
            match self.store.abort_multipart_upload(key, id).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(
                        key,
                        upload = id,
                        "cannot abort the upload the worker before left: {e:#}"
                    );
                    false
                }
            }
        });
        adopted.uploads_aborted = join_all(aborts).await.into_iter().filter(|&a| a).count();
        adopted.uploads_aborted += self.abort_unanswered(&carried).await;
        info!(
            inodes = adopted.inodes,
            handles = adopted.handles,
            lost = adopted.lost,
            uploads_aborted = adopted.uploads_aborted,
            "took over from the worker before"
        );
        adopted
    }

    /// Tells the kernel that the attributes the worker before this one gave
    /// it may be stale (an object may have been replaced while no worker
    /// served): it asks again before it relies on a size. Call once the
    /// kernel's caches are attached.
    pub fn distrust_kernel_attributes(&self) {
        let numbers = self.inodes.lock().numbers();
        for ino in numbers {
            self.kernel.attributes_changed(ino);
        }
    }

    /// Aborts the uploads the worker before this one asked for and never
    /// heard the answer to: those of the same key S3 began since (a minute's
    /// leeway for the clocks), which only it can have asked for. How many.
    async fn abort_unanswered(&self, carried: &Carried) -> usize {
        let mut aborted = 0;
        for (key, at) in &carried.starting {
            let since =
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.saturating_sub(60));
            let pending = match self.store.list_multipart_uploads(key).await {
                Ok(pending) => pending,
                Err(e) => {
                    warn!(
                        key,
                        "cannot list the uploads the worker before may have left: {e:#}"
                    );
                    continue;
                }
            };
            // No request of that worker outlived it by much.
            let until = since + ASKED_WITHIN;
            for upload in pending {
                if upload.key != *key
                    || upload.initiated < since
                    || upload.initiated > until
                    || carried.uploads.contains_key(&upload.upload_id)
                {
                    continue;
                }
                match self
                    .store
                    .abort_multipart_upload(key, &upload.upload_id)
                    .await
                {
                    Ok(()) => aborted += 1,
                    Err(e) => warn!(key, "cannot abort an upload the worker before left: {e:#}"),
                }
            }
            // Looked for: the next worker does not look again.
            self.handles
                .record(Record::UploadUnasked { key: key.clone() });
        }
        aborted
    }

    /// Opens directory `ino` again as handle `fh`.
    async fn reopen_dir(&self, fh: u64, ino: u64) -> FsResult<bool> {
        let opened = self.open_dir(ino).await?;
        let Some(entries) = self.handles.close_dir(opened) else {
            return Ok(false);
        };
        self.handles.insert_dir(fh, ino, entries);
        Ok(true)
    }

    /// Opens file `ino` again as handle `fh`, reading version `etag`; `false`
    /// where that version cannot be read the same way.
    async fn reopen_object(
        &self,
        fh: u64,
        ino: u64,
        etag: String,
        size: u64,
        backing: Option<u32>,
    ) -> FsResult<bool> {
        let mut node = self.named_node(ino)?;
        node.stat.etag = etag.clone();
        node.stat.size = size;
        // Encrypted: the content key of the version found now, which must be
        // the one the handle read.
        let opening = self.open_encrypted(ino, node).await?;
        if opening.node.stat.etag != etag || opening.unchecked {
            return Ok(false);
        }
        let object = self.object_version(&opening.node, opening.decryption);
        // The handle may have read some of this version already: never
        // another one now.
        let reader = Reader::new(object, self.config.read.clone(), self.config.memory.clone())
            .already_served();
        self.handles.insert(
            fh,
            OpenFile::Object {
                ino,
                etag: etag.as_str().into(),
                reader: Arc::new(tokio::sync::Mutex::new(reader)),
                // The audit log has the first read already.
                read_once: Arc::new(AtomicBool::new(true)),
                kernel_kept: false,
                backing,
                fill: KernelFill::Nothing,
            },
        );
        Ok(true)
    }
}
