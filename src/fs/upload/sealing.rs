//! What client-side encryption changes in uploading a staged file: each
//! object written gets a new data key, its parts are encrypted as they are
//! sent, and the last part carries the tag made from the others' hashes; the
//! object a file was opened on is decrypted into the staging file.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Base, Sent, StageError, StageResult, StagedFile};
use crate::fs::read::{ObjectVersion, StoreSource};
use crate::fs::{ContentKey, CseError, OpenError, Piece, Tagger, Version};
use crate::store::{ObjectHeaders, Operation, StoreError};

impl StagedFile {
    fn encryption_error(&self, key: &str, source: CseError) -> StageError {
        StageError::Encryption {
            key: key.to_string(),
            source,
        }
    }

    /// The headers of a new object of `key` carrying `headers` (and the type
    /// of its extension), and, on an encrypted volume, the content key of a
    /// data key KMS makes for it.
    pub(super) async fn new_object_headers(
        &self,
        key: &str,
        mut headers: ObjectHeaders,
    ) -> StageResult<(ObjectHeaders, Option<ContentKey>)> {
        if self.shares.content_types {
            headers.content_type = Some(crate::fs::content_type::of_file(key).to_string());
        }
        self.shares
            .codec
            .seal(headers)
            .await
            .map_err(|e| self.encryption_error(key, e))
    }

    /// Bytes `range` of the staging file as they are sent: encrypted with
    /// `content_key` (and hashed) when there is one, and followed by the tag
    /// when `tag` (the hashes of all that comes before) is given.
    pub(super) fn read_sealed(
        &self,
        range: Range<u64>,
        content_key: Option<&ContentKey>,
        tag: Option<Tagger>,
    ) -> StageResult<(Bytes, Option<Piece>)> {
        let body = self.read_local(range.clone()).map_err(|e| self.local(e))?;
        let Some(content_key) = content_key else {
            return Ok((body, None));
        };
        // Encrypted in place: the staging file's bytes were read into a buffer
        // of their own.
        let mut sealed = Vec::from(body);
        content_key
            .apply(range.start, &mut sealed)
            .map_err(|_| StageError::TooLarge)?;
        let piece = content_key.hash(&sealed);
        if let Some(mut tagger) = tag {
            tagger
                .push(piece)
                .map_err(|e| self.internal(e.to_string()))?;
            sealed.extend_from_slice(&tagger.tag());
        }
        Ok((Bytes::from(sealed), Some(piece)))
    }

    /// The running hash of the parts `sent`, in order, all encrypted.
    pub(super) fn tagger(
        &self,
        content_key: &ContentKey,
        sent: &[Option<Sent>],
    ) -> StageResult<Tagger> {
        let mut tagger = content_key.tagger();
        for (index, sent) in sent.iter().enumerate() {
            let piece = sent.as_ref().and_then(|s| s.piece).ok_or_else(|| {
                self.internal(format!("part {} was cut while it was uploaded", index + 1))
            })?;
            tagger
                .push(piece)
                .map_err(|e| self.internal(e.to_string()))?;
        }
        Ok(tagger)
    }

    fn internal(&self, detail: String) -> StageError {
        StageError::Store(StoreError::Internal {
            op: Operation::UploadPart,
            detail,
        })
    }

    /// Whether a part sent in the current upload has changed since.
    pub(super) fn resent_changed(&self) -> bool {
        let state = self.state.lock();
        state
            .uploaded
            .iter()
            .zip(&state.versions)
            .any(|(sent, version)| sent.as_ref().is_some_and(|s| s.version != *version))
    }

    /// The version of the object a file was opened on (`base`, from
    /// [`StagedFile::unchanged_base`]), for reading it or copying it into the
    /// staging file: decrypted on an encrypted volume (its tag checked as it is
    /// read whole, which the caller confirms with
    /// [`ObjectVersion::authenticate`]).
    pub async fn base_version(&self, base: &Base) -> StageResult<ObjectVersion> {
        let version = |key: Arc<str>, etag: Arc<str>, size, decryption| {
            let from = StoreSource {
                store: self.store.clone(),
                key,
                etag,
                copies: self.shares.copies.clone(),
            };
            ObjectVersion::new(from, size, decryption, self.shares.memory.clone())
        };
        let (mut key, mut etag): (Arc<str>, Arc<str>) =
            (base.key.as_str().into(), base.etag.as_str().into());
        let codec = &self.shares.codec;
        if !codec.encrypts() {
            return Ok(version(key, etag, base.size, None));
        }
        let mut info = self.store.head_object(&base.key).await;
        if !info.as_ref().is_ok_and(|info| info.etag == base.etag)
            && let Some((copy, copy_etag)) = self.shares.copies.latest(&base.key, &base.etag)
        {
            // Renamed or copied in place here since it was opened: the copy
            // (whose envelope is the original's).
            info = self.store.head_object(&copy).await;
            (key, etag) = (copy.as_str().into(), copy_etag.as_str().into());
        }
        let info = info?;
        if info.etag != *etag {
            return Err(StoreError::Changed {
                op: Operation::HeadObject,
                key: key.to_string(),
                expected_etag: etag.to_string(),
            }
            .into());
        }
        let headers = info.headers.clone().unwrap_or_default();
        let size = codec.shown_size(&info);
        let opened = Version {
            key: &key,
            etag: &etag,
            size,
        };
        let decryption = match codec.open(opened, &headers).await {
            Ok(decryption) => decryption.map(Arc::new),
            Err(OpenError::Refused(e)) => return Err(self.encryption_error(&key, e)),
            Err(OpenError::Impossible(e)) => return Err(self.internal(format!("{key}: {e}"))),
        };
        Ok(version(key, etag, size, decryption))
    }
}
