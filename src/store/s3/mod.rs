//! The S3 store: the only module that uses aws-sdk-s3.
//!
//! It turns SDK errors into [`StoreError`]s that keep the S3 error code and request
//! ID, and resumes a GET body that breaks mid-stream with a ranged GET from the last
//! delivered byte, pinned to the ETag of the first answer so a resumed read can never
//! mix two versions of an object.

/// The headers a HEAD or GET answer carries (the two answer types have the same
/// accessors).
macro_rules! object_headers {
    ($out:expr) => {{
        let out = &$out;
        let owned = |v: Option<&str>| v.map(str::to_string);
        ObjectHeaders {
            user: out
                .metadata()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            content_type: owned(out.content_type()),
            content_encoding: owned(out.content_encoding()),
            content_disposition: owned(out.content_disposition()),
            content_language: owned(out.content_language()),
            cache_control: owned(out.cache_control()),
            sse: owned(out.server_side_encryption().map(|e| e.as_str())),
            sse_kms_key_id: owned(out.ssekms_key_id()),
            storage_class: owned(out.storage_class().map(|c| c.as_str())),
        }
    }};
}

mod answer;
#[cfg(any(test, feature = "testing"))]
pub(crate) use answer::service_error;
pub(crate) use buffers::release_idle_buffers;
mod buffers;
mod delete;
mod get;
mod head;
mod uploads;
mod versions;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::config::IdentityCache;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::Bytes;
use tracing::warn;

use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, EncodingType, MetadataDirective, ServerSideEncryption,
    StorageClass,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use self::answer::{decoder, to_system_time};
use self::buffers::Buffers;
use self::head::Slot;
use super::{
    Encryption, GetOptions, GetResult, ListPage, ListRequest, ObjectHeaders, ObjectInfo,
    ObjectStore, Operation, Presign, PresignedUrl, Read, Request, Response, ServiceInfo,
    StoreError, StoreResult, UploadedPart, copy_allowance, transfer_allowance,
};

/// How many times a GET body that broke mid-stream is resumed before giving up.
/// Each resume continues from the last byte received, so progress is never lost.
const MAX_BODY_RESUMES: u32 = 3;

/// A local or regional endpoint answers a TCP handshake in well under this;
/// failing fast makes "unreachable" a quick, clear startup error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where S3 is and which credentials to sign with.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Credentials to use instead of the configuration's own, with no SDK identity
    /// cache in front: the provider (renewing role credentials) keeps them fresh.
    pub credentials: Option<SharedCredentialsProvider>,
    /// Server-side encryption asked for on every upload and copy.
    pub encryption: Option<Encryption>,
    /// A request that gets no answer, or a GET body that brings no byte, for this
    /// long is abandoned as stalled (a request that sends data is given the time
    /// to send it, too: [`transfer_allowance`]). `None` waits as long as it takes.
    pub stall_timeout: Option<Duration>,
    /// Sign every upload's payload (see [`S3Store::put_object`]).
    pub sign_payloads: bool,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// What the client signs with, for the expiry of presigned URLs.
    credentials: Option<SharedCredentialsProvider>,
    bucket: String,
    encryption: Option<Encryption>,
    stall_timeout: Option<Duration>,
    sign_payloads: bool,
    /// Reused buffers for large GET bodies.
    buffers: Arc<Buffers>,
    /// HEADs without the SDK's pipeline, set up from the SDK's first HEAD
    /// and signed with `credentials` (then those the volume renews).
    lean: Slot,
}

/// The header values for `encryption`: algorithm and KMS key.
fn sse_headers(encryption: Option<&Encryption>) -> (Option<ServerSideEncryption>, Option<String>) {
    match encryption {
        None => (None, None),
        Some(Encryption::Aes256) => (Some(ServerSideEncryption::Aes256), None),
        Some(Encryption::Kms { key_id }) => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
    }
}

/// Sets what `headers` say an object carries on an upload or copy request
/// builder (each request type has builders of its own, with the same setters):
/// the user metadata, the content headers, the storage class, and the object's own
/// encryption, else the volume's (`$volume`).
macro_rules! with_headers {
    ($builder:expr, $headers:expr, $volume:expr) => {{
        let headers: &ObjectHeaders = $headers;
        let (sse, kms_key) = match &headers.sse {
            Some(algorithm) => (
                Some(ServerSideEncryption::from(algorithm.as_str())),
                headers.sse_kms_key_id.clone(),
            ),
            None => sse_headers($volume),
        };
        $builder
            .set_metadata((!headers.user.is_empty()).then(|| {
                headers
                    .user
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
            .set_content_type(headers.content_type.clone())
            .set_content_encoding(headers.content_encoding.clone())
            .set_content_disposition(headers.content_disposition.clone())
            .set_content_language(headers.content_language.clone())
            .set_cache_control(headers.cache_control.clone())
            .set_storage_class(headers.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
    }};
}

// After the macro, which it uses.
mod presign;

/// Characters of a key that must be escaped in `x-amz-copy-source`: everything but
/// unreserved characters and `/`.
const COPY_SOURCE_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl S3Store {
    pub fn from_sdk_config(
        bucket: &str,
        sdk_config: &aws_config::SdkConfig,
        options: &S3Options,
    ) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(options.force_path_style)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            // The store above this one retries, bounded by --io-timeout; SDK
            // retries inside each of its attempts would multiply the attempts and
            // add backoffs of up to 20 s that no bound accounts for.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            // Stalls are this store's to judge (`answer`, `get::read_body`),
            // against --io-timeout; the SDK's own watch of every body costs a
            // timer per chunk and an interceptor per request besides.
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::disabled(),
            );
        if sdk_config.region().is_none() {
            // Custom endpoints (MinIO, Garage, ...) rarely care; AWS itself needs a
            // real region, which the default chain or --region provides.
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(url) = &options.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        if let Some(credentials) = &options.credentials {
            builder = builder
                .credentials_provider(credentials.clone())
                .identity_cache(IdentityCache::no_cache());
        }
        let lean = Slot::default();
        if options.credentials.is_none() || sdk_config.http_client().is_some() {
            // Credentials the SDK caches, or a client of the caller's: only
            // the SDK signs and sends as it would.
            let _ = lean.set(None);
        }
        Self {
            lean,
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            credentials: options
                .credentials
                .clone()
                .or_else(|| sdk_config.credentials_provider()),
            bucket: bucket.to_string(),
            encryption: options.encryption.clone(),
            stall_timeout: options.stall_timeout,
            sign_payloads: options.sign_payloads,
            // The largest part read ahead (`fs::read::ReadConfig`).
            buffers: Buffers::new(8 << 20),
        }
    }

    /// How long a request may stay silent: without a stall timeout, as long as
    /// it takes (tokio treats a deadline beyond reach as none).
    fn stall_limit(&self) -> Duration {
        self.stall_timeout.unwrap_or(Duration::MAX)
    }

    /// Sends `request` and waits for its answer, for at most the stall timeout plus
    /// `transfer` (the time the request's own body may take to send).
    async fn answer<T, E>(
        &self,
        op: Operation,
        key: &str,
        transfer: Duration,
        request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> StoreResult<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let limit = self.stall_limit().saturating_add(transfer);
        match tokio::time::timeout(limit, request).await {
            Ok(result) => result.map_err(|e| answer::store_error(&self.bucket, op, key, e)),
            Err(_) => Err(StoreError::Unreachable {
                op,
                detail: format!("no answer within {}", humantime::format_duration(limit)),
            }),
        }
    }

    /// HEADs this store sent and read without the SDK, and those whose
    /// answer it sent again through the SDK.
    pub fn heads_without_the_sdk(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.lean
            .get()
            .and_then(Option::as_ref)
            .map_or((0, 0), |lean| {
                (lean.answered.load(Relaxed), lean.resent.load(Relaxed))
            })
    }

    fn copy_source(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.bucket,
            utf8_percent_encode(key, COPY_SOURCE_ESCAPES)
        )
    }
}

impl S3Store {
    async fn list(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        let request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(req.prefix)
            .encoding_type(EncodingType::Url)
            .set_delimiter(req.delimiter.map(str::to_string))
            .set_continuation_token(req.continuation.map(str::to_string))
            .set_max_keys(req.max_keys)
            .send();
        let out = self
            .answer(
                Operation::ListObjectsV2,
                req.prefix,
                Duration::ZERO,
                request,
            )
            .await?;
        let decode = decoder(out.encoding_type());
        let objects: Vec<ObjectInfo> = out
            .contents()
            .iter()
            .map(|o| ObjectInfo {
                key: decode(o.key().unwrap_or_default()),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().unwrap_or_default().to_string(),
                last_modified: to_system_time(o.last_modified()),
                version_id: None,
                headers: None,
            })
            .collect();
        let common_prefixes: Vec<String> = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(decode))
            .collect();
        // Keys outside the prefix asked for are not the volume's: a server that
        // sends them is wrong, and nothing may read, rename or delete them.
        let listed = objects.len() + common_prefixes.len();
        let objects: Vec<ObjectInfo> = objects
            .into_iter()
            .filter(|o| o.key.starts_with(req.prefix))
            .collect();
        let common_prefixes: Vec<String> = common_prefixes
            .into_iter()
            .filter(|p| p.starts_with(req.prefix) && p.len() > req.prefix.len())
            .collect();
        let foreign = listed - objects.len() - common_prefixes.len();
        if foreign > 0 {
            warn!(
                prefix = req.prefix,
                foreign, "the server listed keys outside the prefix asked for; skipped"
            );
        }
        let next_token = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token,
        })
    }

    /// Uploads are sent with an unsigned payload: the CRC32 checksum the SDK sends
    /// with every upload already detects a corrupted body (and TLS protects it on
    /// the way to AWS), while SHA-256 over every byte for the signature cost a
    /// fifth of the daemon's CPU when writing. Over plain http beyond this host
    /// (`--allow-http`) nothing else would keep the bytes from being changed on
    /// the way, so there every chunk is signed.
    /// PutObject; with `only_new`, `If-None-Match: *`.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
        only_new: bool,
    ) -> StoreResult<String> {
        let op = Operation::PutObject;
        let transfer = transfer_allowance(body.len() as u64);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(only_new.then(|| "*".to_string()))
            .body(body.into());
        let request = with_headers!(request, headers, self.encryption.as_ref()).customize();
        let request = if self.sign_payloads {
            request.send()
        } else {
            request.disable_payload_signing().send()
        };
        let out = self.answer(op, key, transfer, request).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let transfer = transfer_allowance(body.len() as u64);
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body.into())
            // See `put`: no SHA-256 of the body unless in clear.
            .customize();
        let request = if self.sign_payloads {
            request.send()
        } else {
            request.disable_payload_signing().send()
        };
        let out = self
            .answer(Operation::UploadPart, key, transfer, request)
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        // Only numbers and ETags: part checksums would have to match an algorithm
        // declared at creation (Garage answers InvalidDigest otherwise).
        let parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_if_match(if_match.map(str::to_string))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send();
        let op = Operation::CompleteMultipartUpload;
        let out = self.answer(op, key, Duration::ZERO, request).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn copy(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
        size: u64,
        replace: Option<&ObjectHeaders>,
    ) -> StoreResult<String> {
        let request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(to)
            .copy_source(self.copy_source(from))
            .set_copy_source_if_match(if_match.map(str::to_string));
        let request = match replace {
            // S3 carries the metadata and content headers, never the encryption:
            // the copy gets the volume's, else the bucket's default.
            None => {
                let (sse, kms_key) = sse_headers(self.encryption.as_ref());
                request
                    .set_server_side_encryption(sse)
                    .set_ssekms_key_id(kms_key)
            }
            Some(headers) => with_headers!(
                request.metadata_directive(MetadataDirective::Replace),
                headers,
                self.encryption.as_ref()
            ),
        }
        .send();
        let out = self
            .answer(Operation::CopyObject, to, copy_allowance(size), request)
            .await
            .map_err(|e| e.of_copy_from(&self.bucket, from))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn copy_part(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        number: i32,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let request = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(to)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(self.copy_source(from))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .send();
        let allowance = copy_allowance(range.end - range.start);
        let out = self
            .answer(Operation::UploadPartCopy, to, allowance, request)
            .await
            .map_err(|e| e.of_copy_from(&self.bucket, from))?;
        Ok(out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn create_upload(&self, key: &str, headers: &ObjectHeaders) -> StoreResult<String> {
        let op = Operation::CreateMultipartUpload;
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let request = with_headers!(request, headers, self.encryption.as_ref()).send();
        let out = self.answer(op, key, Duration::ZERO, request).await?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Service {
                op,
                key: key.to_string(),
                info: ServiceInfo {
                    message: "the answer carried no upload ID".into(),
                    ..ServiceInfo::default()
                },
            })
    }

    async fn abort(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send();
        self.answer(
            Operation::AbortMultipartUpload,
            key,
            Duration::ZERO,
            request,
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        Ok(match request {
            Request::Get { key, options } => {
                let GetOptions { pin, read } = options;
                Response::Object(match read {
                    Read::Head => GetResult {
                        info: Some(self.head(key, pin).await?),
                        data: Bytes::new(),
                        first_byte: None,
                    },
                    Read::Range(range) => {
                        let (data, first_byte) = self.fetch_range(key, range, pin).await?;
                        GetResult {
                            info: None,
                            data,
                            first_byte: Some(first_byte),
                        }
                    }
                    Read::Start(len) => {
                        let (info, data, first_byte) = self.fetch_start(key, len, pin).await?;
                        GetResult {
                            info: Some(info),
                            data,
                            first_byte: Some(first_byte),
                        }
                    }
                })
            }
            Request::List(req) => Response::Listed(self.list(req).await?),
            Request::Put { key, body, headers } => {
                Response::ETag(self.put(key, body, headers, false).await?)
            }
            Request::PutNew { key, body, headers } => {
                Response::ETag(self.put(key, body, headers, true).await?)
            }
            Request::CreateUpload { key, headers } => {
                Response::UploadId(self.create_upload(key, headers).await?)
            }
            Request::UploadPart {
                key,
                upload_id,
                number,
                body,
            } => Response::ETag(self.upload_part(key, upload_id, number, body).await?),
            Request::CompleteUpload {
                key,
                upload_id,
                parts,
                if_match,
            } => Response::ETag(self.complete(key, upload_id, parts, if_match).await?),
            Request::AbortUpload { key, upload_id } => {
                self.abort(key, upload_id).await?;
                Response::Done
            }
            Request::ListUploads { prefix, limit } => {
                Response::Uploads(self.list_uploads(prefix, limit).await?)
            }
            Request::Copy {
                from,
                to,
                if_match,
                size,
                replace,
            } => Response::ETag(self.copy(from, to, if_match, size, replace).await?),
            Request::CopyPart {
                from,
                to,
                upload_id,
                number,
                range,
                if_match,
            } => Response::ETag(
                self.copy_part(from, to, upload_id, number, range, if_match)
                    .await?,
            ),
            Request::Delete { key } => {
                self.delete(key).await?;
                Response::Done
            }
            Request::DeleteBatch { objects } => {
                let op = Request::DeleteBatch { objects }.operation();
                self.delete_many(op, objects).await?;
                Response::Done
            }
            Request::BucketVersioning => Response::Versioning(self.fetch_versioning().await?),
            Request::ListVersions(req) => Response::Versions(self.fetch_versions(req).await?),
        })
    }

    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        self.sign_url(key, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HEADs are sent without the SDK only with credentials the volume
    /// renews and the SDK's own HTTP client; otherwise the SDK sends each
    /// (the slot is filled with `None` before any HEAD).
    #[test]
    fn heads_leave_the_sdk_only_with_renewed_credentials_and_its_own_client() {
        let provider = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKID", "SECRET", None, None, "test",
        ));
        let sdk = |client: bool| {
            let config = aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .credentials_provider(provider.clone());
            match client {
                true => config.http_client(aws_smithy_http_client::Builder::new().build_http()),
                false => config,
            }
            .build()
        };
        let options = |renewed: bool| S3Options {
            endpoint_url: Some("http://127.0.0.1:1".into()),
            credentials: renewed.then(|| provider.clone()),
            ..S3Options::default()
        };
        let learns = |client, renewed| {
            S3Store::from_sdk_config("b", &sdk(client), &options(renewed))
                .lean
                .get()
                .is_none()
        };
        assert!(learns(false, true));
        assert!(!learns(false, false), "credentials the SDK caches");
        assert!(!learns(true, true), "an HTTP client of the caller's");
    }

    #[test]
    fn encryption_becomes_the_sse_headers() {
        assert_eq!(sse_headers(None), (None, None));
        assert_eq!(
            sse_headers(Some(&Encryption::Aes256)),
            (Some(ServerSideEncryption::Aes256), None)
        );
        let kms = Encryption::Kms {
            key_id: Some("alias/volumes".into()),
        };
        assert_eq!(
            sse_headers(Some(&kms)),
            (
                Some(ServerSideEncryption::AwsKms),
                Some("alias/volumes".into())
            )
        );
        let bucket_key = Encryption::Kms { key_id: None };
        assert_eq!(
            sse_headers(Some(&bucket_key)),
            (Some(ServerSideEncryption::AwsKms), None)
        );
    }
}
