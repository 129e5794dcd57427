//! What client-side encryption (`--cse-kms-key-id`) changes in the filesystem:
//! the size a file shows is its plaintext's, and a handle that reads an object
//! first unwraps its content key.

use std::sync::Arc;
use std::time::Instant;

use super::inode::{Kind, Node, Stat};
use super::read::ObjectVersion;
use super::{Fs, FsError, FsResult};
use crate::cse::reading::Decryption;
use crate::cse::volume::Content;
use crate::store::ObjectInfo;

impl Fs {
    /// What a HEAD or a listing said of a file's object, as the file shows it.
    pub(super) fn file_stat(&self, info: ObjectInfo) -> Stat {
        let size = self.config.encryption.as_ref().map(|e| e.plain_size(&info));
        let mut stat = Stat::of_file(info);
        if let Some(size) = size {
            stat.size = size;
        }
        stat
    }

    /// The version of `node`'s object that it says, read without the block
    /// cache (for reads that take it whole, once).
    pub(super) fn uncached_version(
        &self,
        node: &Node,
        decryption: Option<Arc<Decryption>>,
    ) -> ObjectVersion {
        ObjectVersion {
            store: self.store.clone(),
            cache: None,
            key: node.key.as_str().into(),
            etag: node.stat.etag.as_str().into(),
            size: node.stat.size,
            decryption,
        }
    }

    /// How a handle reads the object of `node` (file `ino`): with the content
    /// key of the version a HEAD finds now (one KMS Decrypt per open), or as it
    /// is (`None`) on a volume without encryption or for a plaintext object
    /// `--cse-allow-plaintext` lets through. The node, updated by the HEAD.
    pub(super) async fn open_encrypted(
        &self,
        ino: u64,
        node: Node,
    ) -> FsResult<(Node, Option<Arc<Decryption>>)> {
        let Some(encryption) = &self.config.encryption else {
            return Ok((node, None));
        };
        let info = self.store.head_object(&node.key).await?;
        let headers = info.headers.clone().unwrap_or_default();
        let stat = self.file_stat(info);
        let node = {
            let mut table = self.inodes.lock().unwrap();
            table.upsert(node.parent, &node.name, Kind::File, stat, Instant::now());
            table.get(ino).cloned().ok_or(FsError::NotFound)?
        };
        let content = encryption
            .open(&headers)
            .await
            .map_err(|source| FsError::Encryption {
                key: node.key.clone(),
                source: Box::new(source),
            })?;
        let decryption = match content {
            Content::Encrypted(key) => Arc::new(Decryption::new(key, node.stat.size)),
            Content::Plain => return Ok((node, None)),
        };
        if node.stat.size == 0 {
            // No read of an empty file reaches the end that checks the tag: it
            // is checked now, so that a forged or truncated one is refused.
            self.uncached_version(&node, Some(decryption.clone()))
                .get(0..0)
                .await?;
        }
        Ok((node, Some(decryption)))
    }
}
