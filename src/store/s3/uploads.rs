//! ListMultipartUploads: the uploads in progress under a prefix, page by page.

use std::time::Duration;

use aws_sdk_s3::types::EncodingType;

use super::S3Store;
use super::answer::{decoder, to_system_time};
use crate::store::{Operation, Pagination, PendingUpload, StoreResult};

impl S3Store {
    /// [`crate::store::ObjectStore::list_multipart_uploads`], and its first
    /// pages up to `limit`.
    pub(super) async fn list_uploads(
        &self,
        prefix: &str,
        limit: Option<usize>,
    ) -> StoreResult<Vec<PendingUpload>> {
        let mut pending = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        let mut pages = Pagination::new(
            Operation::ListMultipartUploads,
            prefix,
            self.stall_limit().saturating_mul(3),
        );
        loop {
            let request = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .encoding_type(EncodingType::Url)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send();
            let out = self
                .answer(
                    Operation::ListMultipartUploads,
                    prefix,
                    Duration::ZERO,
                    request,
                )
                .await?;
            let decode = decoder(out.encoding_type());
            let uploads = out.uploads();
            // Only those under the prefix: nothing else may be aborted.
            pending.extend(
                uploads
                    .iter()
                    .map(|u| PendingUpload {
                        key: decode(u.key().unwrap_or_default()),
                        upload_id: u.upload_id().unwrap_or_default().to_string(),
                        initiated: to_system_time(u.initiated()),
                    })
                    .filter(|u| u.key.starts_with(prefix)),
            );
            if out.is_truncated() != Some(true) || limit.is_some_and(|l| pending.len() >= l) {
                return Ok(pending);
            }
            key_marker = out.next_key_marker().map(decode);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(pending);
            }
            let marker = format!(
                "{}/{}",
                key_marker.as_deref().unwrap_or_default(),
                id_marker.as_deref().unwrap_or_default()
            );
            pages.next(uploads.len(), Some(marker))?;
        }
    }
}
