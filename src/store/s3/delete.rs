//! Deletes: one object (DeleteObject), or many objects or versions in one
//! request (DeleteObjects), whose answer names each one it could not delete.

use std::time::Duration;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::S3Store;
use crate::store::{Deletion, Operation, ServiceInfo, StoreError, StoreResult, object_arn};

impl S3Store {
    pub(super) async fn delete(&self, key: &str) -> StoreResult<()> {
        let request = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.answer(Operation::DeleteObject, key, Duration::ZERO, request)
            .await?;
        Ok(())
    }

    /// [`crate::store::ObjectStore::delete_batch`]: DeleteObjects in quiet
    /// mode, which answers with the objects it failed on only.
    pub(super) async fn delete_many(&self, op: Operation, objects: &[Deletion]) -> StoreResult<()> {
        let first = objects.first().map_or("", |o| o.key.as_str());
        let bad_request = |detail: String| StoreError::BadAnswer {
            op,
            key: first.to_string(),
            detail,
        };
        let identifiers = objects
            .iter()
            .map(|o| {
                ObjectIdentifier::builder()
                    .key(&o.key)
                    .set_version_id(o.version_id.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_request(e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(identifiers))
            .quiet(true)
            .build()
            .map_err(|e| bad_request(e.to_string()))?;
        let request = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send();
        let out = self.answer(op, first, Duration::ZERO, request).await?;
        let Some(failed) = out.errors().first() else {
            return Ok(());
        };
        let key = failed.key().unwrap_or(first).to_string();
        let info = ServiceInfo {
            code: failed.code().unwrap_or_default().to_string(),
            message: failed.message().unwrap_or_default().to_string(),
            request_id: None,
        };
        Err(match info.code.as_str() {
            "AccessDenied" => StoreError::AccessDenied {
                op,
                resource: object_arn(&self.bucket, &key),
                info,
            },
            _ => StoreError::Service { op, key, info },
        })
    }
}
