//! Asking S3 what a name is: a file (HeadObject), a directory (a one-key listing
//! under its prefix, and a HEAD of its marker for its metadata), or nothing.
//!
//! With the block cache on, a lookup of a file asks for its first
//! [`LOOKUP_BYTES`] with a ranged GET instead of a HEAD: the answer carries the
//! same headers, takes no longer on any link, and holds the whole of a small
//! file, which the cache keeps, so opening and reading it sends no further
//! request. A file a listing showed larger than that, or empty, is asked for with
//! a HEAD, as is every file the metadata read-ahead asks for (`ls -l` of a
//! directory must not download it), and every file whose GET is refused.

use std::time::SystemTime;

use super::inode::{Kind, Stat};
use super::posix::Posix;
use super::{Fs, FsResult};
use crate::store::{ListRequest, ObjectInfo, StoreError, StoreResult};

/// What a lookup reads of a file: 64 KiB, which costs no more time than a HEAD.
pub const LOOKUP_BYTES: u64 = 64 * 1024;

impl Fs {
    /// Asks S3 what `parent_key + name` is: the file key's metadata
    /// ([`Fs::stat_file`]) and a one-key listing under the directory prefix, in
    /// parallel.
    pub(super) async fn stat_name(
        &self,
        parent_key: &str,
        name: &str,
    ) -> FsResult<Option<(Kind, Stat)>> {
        let file_key = format!("{parent_key}{name}");
        let dir_key = format!("{file_key}/");
        let listing = ListRequest {
            prefix: &dir_key,
            max_keys: Some(1),
            ..Default::default()
        };
        let (head, list) = tokio::join!(
            self.stat_file(&file_key, None),
            self.store.list_objects(listing)
        );
        let page = list?;
        if !page.objects.is_empty() || !page.common_prefixes.is_empty() {
            let stat = match page.objects.first().filter(|o| o.key == dir_key) {
                Some(marker) => self.directory_stat(&dir_key, marker.last_modified).await?,
                None => Stat::unmarked_directory(self.mount_time),
            };
            return Ok(Some((Kind::Directory, stat)));
        }
        match head {
            Ok(info) => Ok(Some((Kind::File, self.file_stat(info)))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// What directory `dir_key` shows: its marker object's metadata when it has
    /// one (a HEAD, unless the volume keeps no metadata); `mtime` otherwise.
    pub(super) async fn directory_stat(&self, dir_key: &str, mtime: SystemTime) -> FsResult<Stat> {
        if !self.config.metadata {
            return Ok(Stat::directory(mtime));
        }
        match self.store.head_object(dir_key).await {
            Ok(marker) => Ok(Stat {
                posix: Some(
                    marker
                        .headers
                        .map(|h| Posix::read(&h.user, Kind::Directory))
                        .unwrap_or_default(),
                ),
                ..Stat::directory(marker.last_modified)
            }),
            Err(StoreError::NotFound { .. }) => Ok(Stat::unmarked_directory(mtime)),
            Err(e) => Err(e.into()),
        }
    }

    /// What S3 says of file `key`, whose size a listing gave as `listed` (if
    /// one did); small files' bytes go to the cache on the way.
    pub(super) async fn stat_file(
        &self,
        key: &str,
        listed: Option<u64>,
    ) -> StoreResult<ObjectInfo> {
        let Some(cache) = &self.config.cache else {
            return self.store.head_object(key).await;
        };
        if listed.is_some_and(|size| size == 0 || size > LOOKUP_BYTES) {
            return self.store.head_object(key).await;
        }
        match self.store.get_start(key, LOOKUP_BYTES).await {
            Ok((info, start)) => {
                if start.len() as u64 == info.size {
                    cache.keep_whole(key, &info.etag, &start).await;
                }
                Ok(info)
            }
            // An empty file has no first byte to answer with; bytes that may
            // not be read need not keep the file from being seen (an object
            // under a KMS key the role may not use, or in an archive storage
            // class, answers a HEAD but refuses a GET).
            Err(
                StoreError::InvalidRange { .. }
                | StoreError::AccessDenied { .. }
                | StoreError::Archived { .. }
                | StoreError::Service { .. },
            ) => self.store.head_object(key).await,
            Err(e) => Err(e),
        }
    }
}
