//! Making a staged file the object in S3: one PutObject for a file of one part
//! or less, else the parts not yet sent and CompleteMultipartUpload; an upload
//! that fails is aborted, so no part is left behind.

use tracing::{debug, warn};

use super::state::{Sent, Upload};
use super::{StageError, StageResult, StagedFile, Uploaded};
use crate::fs::inode::Kind;
use crate::fs::posix::Posix;
use crate::store::UploadedPart;

impl StagedFile {
    /// Makes the staged content the object in S3, if it changed. Returns what was
    /// uploaded, or `None` when there was nothing to do. On failure the multipart
    /// upload is aborted and the content stays staged (a later close retries).
    pub async fn publish(&self) -> StageResult<Option<Uploaded>> {
        let _exclusive = self.exclusive.lock().await;
        let tasks = {
            let mut state = self.state.lock();
            // Checked once the upload may start: a stop that came while this
            // waited must fail it, never let it answer "done" for nothing.
            if state.abandoned && state.dirty {
                return Err(StageError::Abandoned);
            }
            if !state.dirty || state.deleted {
                return Ok(None);
            }
            if let Some(signal) = state.held_back {
                return Err(StageError::HeldBack { signal });
            }
            state.unsent = false;
            std::mem::take(&mut state.tasks)
        };
        for task in tasks {
            let _ = task.await;
        }
        let result = self.send().await;
        if let Err(e) = &result {
            warn!(key = self.key(), error = %e, "upload failed; aborting it");
            self.abort_upload().await;
            let mut state = self.state.lock();
            state.uploaded.iter_mut().for_each(|u| *u = None);
        }
        result.map(Some)
    }

    /// One PutObject, or the parts not yet sent and the completion.
    async fn send(&self) -> StageResult<Uploaded> {
        if let Some(e) = self.state.lock().failure.take() {
            return Err(e);
        }
        let (key, size, versions) = {
            let state = self.state.lock();
            (state.key.clone(), state.size, state.versions.clone())
        };
        let mut headers_behind = false;
        let (etag, posix) = if size <= self.layout.range(0).end {
            // One part or less: one request. (Parts uploaded before the file
            // shrank are abandoned.) It carries the time of the last change,
            // to the nanosecond, as s3fs does: S3's own is the upload's, to the
            // second.
            self.abort_upload().await;
            let _room = self.shares.memory.upload(size).await;
            let posix = Posix {
                mtime: self.keep_metadata.then(|| self.mtime()),
                ctime: self.keep_metadata.then(|| self.ctime()),
                ..self.posix()
            };
            let (headers, content_key) = self
                .new_object_headers(&key, posix.headers(Kind::File))
                .await?;
            let tag = content_key.as_ref().map(|k| k.tagger());
            let (body, _) = self.read_sealed(0..size, content_key.as_ref(), tag)?;
            let etag = self.store.put_object(&key, body, &headers).await?;
            (etag, posix)
        } else {
            // A multipart upload's were set when it began, before the last
            // change: its time is the completion's, S3's own.
            let etag = self.complete(&key, size).await?;
            let mut state = self.state.lock();
            let started_with = state.started_with.take().unwrap_or_default();
            headers_behind = started_with != state.posix;
            (
                etag,
                Posix {
                    ctime: None,
                    ..started_with
                },
            )
        };
        let mut state = self.state.lock();
        // Clean unless written again while uploading.
        if state.versions == versions {
            state.dirty = false;
            self.tell_published(true);
        }
        state.uploaded.iter_mut().for_each(|u| *u = None);
        debug!(key, size, etag, "uploaded");
        Ok(Uploaded {
            etag,
            size,
            headers_behind,
            posix,
        })
    }

    /// Uploads every part not yet uploaded as it is now, then completes.
    async fn complete(&self, key: &str, size: u64) -> StageResult<String> {
        if self.shares.codec.encrypts() && self.resent_changed() {
            // A part is never sent twice under one key with other bytes (S3
            // would see two plaintexts under one keystream): start over.
            self.abort_upload().await;
            let mut state = self.state.lock();
            state.uploaded.iter_mut().for_each(|u| *u = None);
        }
        // Created before the parts, so no part upload cut short by a sibling's
        // failure can be the one creating it.
        let upload = self.upload().await?;
        let count = self.layout.count(size);
        let clean: Vec<Option<Sent>> = {
            let state = self.state.lock();
            (0..count)
                .map(|index| {
                    let clean = index < state.versions.len() && state.is_clean(index);
                    clean.then(|| state.uploaded[index].clone())?
                })
                .collect()
        };
        // Encrypted, the last part carries the tag, made from the others'
        // hashes: it goes once they are sent.
        let together = match upload.key {
            Some(_) => count - 1,
            None => count,
        };
        // Concurrent, bounded by the mount's upload permits.
        let uploads =
            clean
                .into_iter()
                .take(together)
                .enumerate()
                .map(|(index, sent)| async move {
                    match sent {
                        Some(sent) => Ok(Some(sent)),
                        None => self.upload_part(index, None).await,
                    }
                });
        let mut sent = futures::future::try_join_all(uploads).await?;
        if let Some(content_key) = &upload.key {
            let tagger = self.tagger(content_key, &sent)?;
            sent.push(self.upload_part(count - 1, Some(tagger)).await?);
        }
        let listed: Vec<UploadedPart> = sent
            .into_iter()
            .enumerate()
            .map(|(index, sent)| UploadedPart {
                number: index as i32 + 1,
                etag: sent.map(|s| s.etag).unwrap_or_default(),
            })
            .collect();
        let etag = self
            .store
            .complete_multipart_upload(key, &upload.id, &listed)
            .await?;
        *self.upload.lock().await = None;
        Ok(etag)
    }

    pub(super) async fn abort_upload(&self) {
        let Some(Upload { id, .. }) = self.upload.lock().await.take() else {
            return;
        };
        let key = self.key();
        if let Err(e) = self.store.abort_multipart_upload(&key, &id).await {
            warn!(key, upload_id = id, error = %e, "could not abort the multipart upload; `s3vol cleanup` removes it");
        }
    }
}
