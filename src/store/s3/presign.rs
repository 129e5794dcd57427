//! Presigned URLs, signed with the store's credentials and cut to their session.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};

use super::{S3Store, sse_headers};
use crate::store::{
    MAX_URL_VALIDITY, ObjectHeaders, Operation, Presign, PresignedUrl, StoreError, StoreResult,
    UrlMethod,
};

impl S3Store {
    /// When the credentials this store signs with stop working; `None` for
    /// credentials that do not expire (an access key).
    async fn session_end(&self) -> StoreResult<Option<SystemTime>> {
        let Some(provider) = &self.credentials else {
            return Ok(None);
        };
        let credentials =
            provider
                .provide_credentials()
                .await
                .map_err(|e| StoreError::Credentials {
                    detail: DisplayErrorContext(&e).to_string(),
                })?;
        Ok(credentials.expiry())
    }

    /// [`crate::store::ObjectStore::presign`]: a URL signed here, with no request.
    pub(super) async fn sign_url(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        let method = request.method;
        let now = SystemTime::now();
        let session_end = self.session_end().await?;
        let left = session_end.map(|end| end.duration_since(now).unwrap_or_default());
        let valid_for = request.valid_for.min(MAX_URL_VALIDITY);
        let (valid_for, cut_by_session) = match left {
            Some(left) if left < valid_for => (left, true),
            _ => (valid_for, false),
        };
        let op = match method {
            UrlMethod::Get => Operation::GetObject,
            UrlMethod::Put => Operation::PutObject,
        };
        // Whole seconds: X-Amz-Expires is counted in them.
        let valid_for = Duration::from_secs(valid_for.as_secs());
        if valid_for.is_zero() {
            return Err(StoreError::Credentials {
                detail: "the credentials' session ends within a second; a URL signed now \
                         would not work"
                    .to_string(),
            });
        }
        let config = PresigningConfig::builder()
            .start_time(now)
            .expires_in(valid_for)
            .build()
            .map_err(|e| StoreError::Internal {
                op,
                detail: format!("cannot presign for {valid_for:?}: {e}"),
            })?;
        let unsigned = |e: &dyn std::error::Error| StoreError::Credentials {
            detail: format!("cannot sign a URL for {key}: {}", DisplayErrorContext(e)),
        };
        let presigned = match method {
            UrlMethod::Get => {
                let request = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_version_id(request.version_id.clone());
                request.presigned(config).await.map_err(|e| unsigned(&e))?
            }
            UrlMethod::Put => {
                // The object's metadata and the volume's encryption are signed
                // in: whoever uploads with the URL must send them as they are.
                let put = self.client.put_object().bucket(&self.bucket).key(key);
                let put = with_headers!(put, &request.headers, self.encryption.as_ref());
                put.presigned(config).await.map_err(|e| unsigned(&e))?
            }
        };
        let headers = presigned
            .headers()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .collect();
        Ok(PresignedUrl {
            url: presigned.uri().to_string(),
            expires: now + valid_for,
            cut_by_session,
            headers,
        })
    }
}
