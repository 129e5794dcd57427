//! Versions: whether a bucket keeps them, and ListObjectVersions. (Reads of one
//! version are GETs and HEADs with a version ID: `get` and the store itself.)

use std::time::Duration;

use aws_sdk_s3::types::{BucketVersioningStatus, EncodingType};

use super::S3Store;
use super::answer::{decoder, to_system_time};
use crate::store::{
    Operation, StoreResult, VersionEntry, Versioning, VersionsPage, VersionsRequest,
};

impl S3Store {
    /// [`crate::store::ObjectStore::bucket_versioning`]: GetBucketVersioning.
    pub(super) async fn fetch_versioning(&self) -> StoreResult<Versioning> {
        let request = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send();
        let bucket = self.bucket.clone();
        let out = self
            .answer(
                Operation::GetBucketVersioning,
                &bucket,
                Duration::ZERO,
                request,
            )
            .await?;
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Never,
        })
    }

    /// [`crate::store::ObjectStore::list_versions`]: one page of ListObjectVersions, versions
    /// and delete markers together.
    pub(super) async fn fetch_versions(
        &self,
        req: VersionsRequest<'_>,
    ) -> StoreResult<VersionsPage> {
        let request = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(req.prefix)
            .encoding_type(EncodingType::Url)
            .set_delimiter(req.delimiter.map(str::to_string))
            .set_key_marker(req.after.map(|(key, _)| key.to_string()))
            .set_version_id_marker(req.after.map(|(_, version)| version.to_string()))
            .set_max_keys(req.max_keys)
            .send();
        let out = self
            .answer(
                Operation::ListObjectVersions,
                req.prefix,
                Duration::ZERO,
                request,
            )
            .await?;
        let decode = decoder(out.encoding_type());
        let mut versions: Vec<VersionEntry> = out
            .versions()
            .iter()
            .map(|v| VersionEntry {
                key: decode(v.key().unwrap_or_default()),
                version_id: v.version_id().unwrap_or("null").to_string(),
                last_modified: to_system_time(v.last_modified()),
                size: v.size().unwrap_or(0).max(0) as u64,
                etag: v.e_tag().unwrap_or_default().to_string(),
                delete_marker: false,
                latest: v.is_latest().unwrap_or(false),
            })
            .chain(out.delete_markers().iter().map(|m| VersionEntry {
                key: decode(m.key().unwrap_or_default()),
                version_id: m.version_id().unwrap_or("null").to_string(),
                last_modified: to_system_time(m.last_modified()),
                size: 0,
                etag: String::new(),
                delete_marker: true,
                latest: m.is_latest().unwrap_or(false),
            }))
            .collect();
        // S3 lists versions and delete markers apart, each newest first;
        // together, each key's newest first: the current one, then by time
        // (stable, so entries of the same second keep S3's order).
        versions.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.latest.cmp(&a.latest))
                .then(b.last_modified.cmp(&a.last_modified))
        });
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(&decode))
            .collect();
        let next = match (
            out.is_truncated(),
            out.next_key_marker(),
            out.next_version_id_marker(),
        ) {
            (Some(true), Some(key), version) => {
                Some((decode(key), version.unwrap_or_default().to_string()))
            }
            _ => None,
        };
        Ok(VersionsPage {
            versions,
            common_prefixes,
            next,
        })
    }
}
