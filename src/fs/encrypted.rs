//! What client-side encryption (`--cse-kms-key-id`) changes in the filesystem:
//! the size a file shows is its plaintext's, a handle that reads an object
//! first unwraps its content key, and a version is authenticated before its
//! bytes are released.
//!
//! At open, a version the volume has found forged is refused, and one it has
//! found authentic is read as any file is. Any other version of up to
//! [`WHOLE_BEFORE_RELEASE`] bytes is checked whole before the open returns;
//! a larger one is read with the kernel's page cache off (so it keeps no page
//! of an unchecked version), its bytes released to a sequential read from the
//! start and its end held back until the tag is checked (`fs::read`).

use std::sync::Arc;
use std::time::Instant;

use tracing::error;

use super::inode::{Kind, Node, Stat};
use super::read::{ObjectVersion, StoreSource};
use super::{Decryption, Fs, FsError, FsResult, OpenError, Verdict, Version};
use crate::store::{ObjectInfo, Operation, StoreError};

/// The largest file (its size as shown, the plaintext's) checked whole before
/// the open that reads it returns. A file up to this size is never released
/// before it is authenticated; the open costs reading it all first, which the
/// block cache then serves (docs/BENCHMARK.md measures it on a file of this
/// size). Past it, a sequential read streams (docs/ENCRYPTION.md).
pub const WHOLE_BEFORE_RELEASE: u64 = 32 << 20;

/// How a handle may read an encrypted version.
pub(super) struct Opening {
    pub node: Node,
    pub decryption: Option<Arc<Decryption>>,
    /// Not yet authenticated: the kernel must keep none of its pages.
    pub unchecked: bool,
}

impl Fs {
    /// What a HEAD or a listing said of a file's object, as the file shows it.
    pub(super) fn file_stat(&self, info: ObjectInfo) -> Stat {
        let size = self.config.codec.shown_size(&info);
        Stat {
            size,
            ..Stat::of_file(info)
        }
    }

    /// The version of `node`'s object that it says, read without the block
    /// cache (for reads that take it whole, once).
    pub(super) fn uncached_version(
        &self,
        node: &Node,
        decryption: Option<Arc<Decryption>>,
    ) -> ObjectVersion {
        let from = StoreSource {
            store: self.store.clone(),
            key: node.key.as_str().into(),
            etag: node.stat.etag.as_str().into(),
            copies: self.uploads.copies.clone(),
        };
        let mut object =
            ObjectVersion::new(from, node.stat.size, decryption, self.config.memory.clone());
        object.authenticate_first = self.config.codec.authenticates_first();
        object
    }

    /// The version of `node`'s object that it says, read through the cache.
    pub(super) fn object_version(
        &self,
        node: &Node,
        decryption: Option<Arc<Decryption>>,
    ) -> ObjectVersion {
        self.uncached_version(node, decryption)
            .cached(self.config.cache.as_ref())
    }

    /// How a handle reads the object of `node` (file `ino`): with the content
    /// key of the version a HEAD finds now (one KMS Decrypt per open), or as it
    /// is (`None`) on a volume without encryption or for a plaintext object
    /// `--cse-allow-plaintext` lets through. The node, updated by the HEAD.
    pub(super) async fn open_encrypted(&self, ino: u64, node: Node) -> FsResult<Opening> {
        let plain = |node| Opening {
            node,
            decryption: None,
            unchecked: false,
        };
        if !self.config.codec.encrypts() {
            return Ok(plain(node));
        }
        let info = self.store.head_object(&node.key).await?;
        let headers = info.headers.clone().unwrap_or_default();
        let stat = self.file_stat(info);
        let node = {
            let mut table = self.inodes.lock();
            table.upsert(node.parent, &node.name, Kind::File, stat, Instant::now());
            table.get(ino).cloned().ok_or(FsError::NotFound)?
        };
        let version = Version {
            key: &node.key,
            etag: &node.stat.etag,
            size: node.stat.size,
        };
        let decryption = match self.config.codec.open(version, &headers).await {
            Ok(Some(decryption)) => decryption,
            Ok(None) => return Ok(plain(node)),
            Err(OpenError::Refused(source)) => {
                return Err(FsError::Encryption {
                    key: node.key.clone(),
                    source: Box::new(source),
                });
            }
            Err(OpenError::Impossible(detail)) => {
                error!(
                    key = node.key,
                    "{detail}: it cannot be an encrypted object; read fails"
                );
                return Err(FsError::from(StoreError::BadAnswer {
                    op: Operation::HeadObject,
                    key: node.key.clone(),
                    detail,
                }));
            }
        };
        let decryption = Arc::new(decryption);
        let object = self.object_version(&node, Some(decryption.clone()));
        let checked = match decryption.verdict() {
            Verdict::Authentic => true,
            Verdict::Forged => {
                self.forget_forged(ino, &object);
                return Err(object.forged().into());
            }
            // An empty file is its tag alone, which no read reaches: checked
            // now whatever the volume releases.
            Verdict::Pending | Verdict::Unchecked
                if !object.authenticate_first && node.stat.size > 0 =>
            {
                false
            }
            Verdict::Pending | Verdict::Unchecked => {
                if node.stat.size > WHOLE_BEFORE_RELEASE {
                    false
                } else {
                    if let Err(e) = object.authenticate().await {
                        if object.is_forged() {
                            self.forget_forged(ino, &object);
                        }
                        return Err(e.into());
                    }
                    true
                }
            }
        };
        Ok(Opening {
            node,
            decryption: Some(decryption),
            unchecked: !checked && object.authenticate_first,
        })
    }

    /// A version found forged: its blocks leave the cache and its pages the
    /// kernel (off the request being answered, which may hold pages).
    pub(super) fn forget_forged(&self, ino: u64, object: &ObjectVersion) {
        if let (Some(cache), Some(decryption)) = (&self.config.cache, &object.decryption) {
            cache.remove_version(&object.key, &object.etag, decryption.stored_size());
        }
        self.kernel.drop_pages(ino);
    }
}
