//! The ioctls a volume answers (see `crate::control`): its report on the
//! root (also the root's attribute `trusted.s3vol.report`, for root), and for
//! a file open through the volume, what S3 holds for it and a presigned URL of
//! it.
//!
//! Both file requests act with the volume's credentials for a caller who holds
//! a descriptor of the file: the kernel checked the file's modes when it was
//! opened, so a caller gets a GET URL only for a file they may read, and a PUT
//! URL only through a descriptor open for writing (on a read-write volume, by
//! a caller who may write the file). The credentials themselves never leave the
//! daemon: a URL carries a signature, valid for one method on one object, for a
//! limited time.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{Fs, FsError, FsResult, Kind, OpenFile, ROOT_INO};
use crate::audit::{Detail, Op};
use crate::control::{self, UrlRequest};
use crate::fs::posix::Posix;
use crate::store::{ObjectHeaders, Presign, UrlMethod};

impl Fs {
    /// The volume's report (`crate::stats`) in at most `room` bytes of JSON;
    /// `None` for a filesystem that keeps no statistics.
    pub fn report(&self, room: usize) -> Option<FsResult<Vec<u8>>> {
        let stats = self.config.stats.as_ref()?;
        Some(
            stats
                .report_within(room)
                .map_err(|needed| FsError::BufferTooSmall {
                    needed,
                    given: room,
                }),
        )
    }

    /// ioctl(2) with request `cmd` on `ino` (through handle `fh`, for a file),
    /// carrying `input`, answered into at most `out_size` bytes.
    pub async fn ioctl(
        &self,
        ino: u64,
        fh: u64,
        cmd: u32,
        input: &[u8],
        out_size: u32,
    ) -> FsResult<Vec<u8>> {
        let answer = match cmd {
            control::STATS | control::REPORT if ino == ROOT_INO => {
                return self
                    .report(out_size as usize)
                    .ok_or(FsError::UnknownIoctl(cmd))?;
            }
            control::INFO => {
                let facts = self.object_facts(ino, fh).await;
                self.audit_on(Op::Info, ino, &facts, None);
                facts?
            }
            control::URL => {
                let request = UrlRequest::parse(input).ok_or(FsError::Invalid(
                    "a URL request that s3vol url did not send",
                ))?;
                let url = self.presigned_url(ino, fh, request).await;
                let detail = url.as_ref().ok().map(|(_, expires)| Detail::Url {
                    method: request.method.as_str(),
                    expires: *expires,
                });
                self.audit_on(Op::Url, ino, &url, detail);
                url?.0
            }
            _ => return Err(FsError::UnknownIoctl(cmd)),
        };
        let answer = answer.to_string().into_bytes();
        if answer.len() > out_size as usize {
            return Err(FsError::BufferTooSmall {
                needed: answer.len(),
                given: out_size as usize,
            });
        }
        Ok(answer)
    }

    /// The object key of the file `fh` is open on, which must be `ino`; and
    /// whether the handle is open for writing.
    fn opened_key(&self, ino: u64, fh: u64) -> FsResult<(String, bool)> {
        let node = self.named_node(ino)?;
        if node.kind != Kind::File {
            return Err(FsError::IsADirectory);
        }
        let (opened_ino, writing) = match self.handle(fh)? {
            OpenFile::Object { ino, .. } => (ino, false),
            OpenFile::Staged { ino, writer, .. } => (ino, writer.is_some()),
        };
        if opened_ino != ino {
            return Err(FsError::BadHandle(fh));
        }
        Ok((node.key, writing))
    }

    /// `s3vol info`: what a HEAD of the file's object says. A file created here
    /// and not yet uploaded is not in S3: ENOENT.
    async fn object_facts(&self, ino: u64, fh: u64) -> FsResult<Value> {
        let (key, _) = self.opened_key(ino, fh)?;
        let info = self.store.head_object(&key).await?;
        let headers = info.headers.unwrap_or_default();
        let client_side = self.config.codec.describe(&headers.user);
        Ok(json!({
            "bucket": self.store.bucket(),
            "key": info.key,
            "size": info.size,
            "etag": info.etag,
            "version_id": info.version_id,
            "storage_class": headers.storage_class.as_deref().unwrap_or("STANDARD"),
            "last_modified": humantime::format_rfc3339_seconds(info.last_modified).to_string(),
            "sse": headers.sse,
            "sse_kms_key_id": headers.sse_kms_key_id,
            "client_side_encryption": client_side,
            "content_type": headers.content_type,
            "metadata": headers.user,
        }))
    }

    /// `s3vol url`: a presigned URL of the file's object, and until when it
    /// works.
    async fn presigned_url(
        &self,
        ino: u64,
        fh: u64,
        request: UrlRequest,
    ) -> FsResult<(Value, SystemTime)> {
        let (key, writing) = self.opened_key(ino, fh)?;
        if self.config.codec.encrypts() {
            // A URL's holder would get ciphertext, or put plaintext.
            return Err(FsError::NotSupported(
                "a presigned URL of a file on a volume with client-side encryption",
            ));
        }
        // A PUT stores what the mount's own upload would: the file's mode and
        // owner (its time is the upload's, S3's own), and the volume's
        // server-side encryption, which the store adds.
        let headers = match request.method {
            UrlMethod::Get => ObjectHeaders::default(),
            UrlMethod::Put => {
                self.writable()?;
                if !writing {
                    return Err(FsError::BadHandle(fh));
                }
                let posix = self.node(ino)?.stat.posix.filter(|_| self.config.metadata);
                // The times are the upload's own, S3's.
                match self.changes.shown(ino, posix.as_ref()) {
                    Some(posix) => Posix {
                        mtime: None,
                        ctime: None,
                        ..posix
                    }
                    .headers(Kind::File),
                    None => ObjectHeaders::default(),
                }
            }
        };
        let presign = Presign {
            method: request.method,
            valid_for: request.valid_for,
            version_id: None,
            headers,
        };
        let url = self.store.presign(&key, &presign).await?;
        let left = url
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let answer = json!({
            "url": url.url,
            "method": request.method.as_str(),
            "bucket": self.store.bucket(),
            "key": key,
            "expires": humantime::format_rfc3339_seconds(url.expires).to_string(),
            "expires_in_secs": left.as_secs(),
            "cut_by_session": url.cut_by_session,
            "headers": url
                .headers
                .into_iter()
                .map(|(name, value)| (name, Value::String(value)))
                .collect::<serde_json::Map<_, _>>(),
        });
        Ok((answer, url.expires))
    }
}
