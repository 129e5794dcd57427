//! The one request type every store answers.
//!
//! Each S3 call s3vol makes is a [`Request`]; a store is one
//! [`ObjectStore::send`] that answers it with a [`Response`]. The wrappers that
//! retry, count, inject faults, renew credentials or show the past forward
//! requests without naming each call, so a new S3 call is one variant here and
//! one arm in each store that talks to a bucket. Callers use the typed methods
//! provided on top (`head_object`, `get_range`, `put_object`, ...), which build
//! the request and unpack its answer.
//!
//! Reads are one request in the shape of object_store's `get_opts`: a
//! [`GetOptions`] says which object (as it is, pinned to an ETag, or one
//! version) and what of it (its headers, a range of bytes, or its first bytes
//! with its headers).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Deletion, ListPage, ListRequest, ObjectHeaders, ObjectInfo, Operation, PendingUpload, Presign,
    PresignedUrl, StoreError, StoreResult, UploadedPart, Versioning, VersionsPage, VersionsRequest,
    copy_allowance, transfer_allowance,
};

/// Which object a read reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin<'a> {
    /// The object as it is; with an ETag, only while it still has that ETag
    /// (else [`StoreError::Changed`]).
    Current(Option<&'a str>),
    /// One version, by its ID: a version never changes.
    Version(&'a str),
}

/// What a read brings of the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Its headers only (a HEAD).
    Head,
    /// These bytes (cut at the object's end; a range starting at or past the
    /// end is `InvalidRange`).
    Range(Range<u64>),
    /// Its first `len` bytes (all of it when it is that small) with what a HEAD
    /// would say: one ranged GET. An empty object has no first byte:
    /// `InvalidRange`, as S3 answers.
    Start(u64),
}

/// One GET or HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetOptions<'a> {
    pub pin: Pin<'a>,
    pub read: Read,
}

impl GetOptions<'_> {
    /// The operation the read is counted and authorised as.
    pub fn operation(&self) -> Operation {
        match (self.pin, &self.read) {
            (Pin::Version(_), _) => Operation::GetObjectVersion,
            (Pin::Current(_), Read::Head) => Operation::HeadObject,
            (Pin::Current(_), _) => Operation::GetObject,
        }
    }
}

/// The answer to a read: the object's headers for [`Read::Head`] and
/// [`Read::Start`], its bytes for [`Read::Range`] and [`Read::Start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    pub info: Option<ObjectInfo>,
    pub data: Bytes,
    /// How long the answer took to start (the time to its first byte), where
    /// the store can tell: for the statistics.
    pub first_byte: Option<Duration>,
}

/// One call to S3. Keys are full object keys (prefix included).
#[derive(Clone, Debug)]
pub enum Request<'a> {
    Get {
        key: &'a str,
        options: GetOptions<'a>,
    },
    List(ListRequest<'a>),
    /// Stores `body` as `key` in one request, carrying `headers`.
    Put {
        key: &'a str,
        body: Bytes,
        headers: &'a ObjectHeaders,
    },
    /// [`Request::Put`] only where no object has the key (`If-None-Match: *`):
    /// [`StoreError::Changed`] where one does.
    PutNew {
        key: &'a str,
        body: Bytes,
        headers: &'a ObjectHeaders,
    },
    /// Starts a multipart upload of `key`, whose object will carry `headers`.
    CreateUpload {
        key: &'a str,
        headers: &'a ObjectHeaders,
    },
    /// Uploads part `number` (1-based); a part uploaded again under the same
    /// number replaces the earlier one.
    UploadPart {
        key: &'a str,
        upload_id: &'a str,
        number: i32,
        body: Bytes,
    },
    /// Assembles the listed parts, in order, into the object. Every part but
    /// the last must be at least 5 MiB. With `if_match`, only over the
    /// object at that ETag (S3's conditional write): a copy of an object
    /// onto itself never lands over a version written meanwhile.
    CompleteUpload {
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [UploadedPart],
        if_match: Option<&'a str>,
    },
    /// Abandons a multipart upload; its parts are deleted.
    AbortUpload {
        key: &'a str,
        upload_id: &'a str,
    },
    /// The multipart uploads in progress under `prefix`; with `limit`, the
    /// first pages only, up to at least that many (for work done a page at a
    /// time).
    ListUploads {
        prefix: &'a str,
        limit: Option<usize>,
    },
    /// Copies object `from` (up to 5 GiB, `size` bytes) to `to`; with
    /// `if_match`, only if `from` still has that ETag. The copy carries
    /// `from`'s metadata and content type, or with `replace` those headers
    /// instead (`from` and `to` may then be the same key: a change of metadata
    /// in place).
    Copy {
        from: &'a str,
        to: &'a str,
        if_match: Option<&'a str>,
        size: u64,
        replace: Option<&'a ObjectHeaders>,
    },
    /// Copies bytes `range` of `from` into part `number` of an upload of `to`.
    CopyPart {
        from: &'a str,
        to: &'a str,
        upload_id: &'a str,
        number: i32,
        range: Range<u64>,
        if_match: Option<&'a str>,
    },
    /// Deletes `key` (succeeds if it does not exist, as S3 does).
    Delete {
        key: &'a str,
    },
    /// Deletes up to [`super::MAX_DELETE_BATCH`] objects or versions in one
    /// request (DeleteObjects); one that is not there counts as deleted. The
    /// first that could not be deleted fails the request.
    DeleteBatch {
        objects: &'a [Deletion],
    },
    /// Whether the bucket keeps versions (GetBucketVersioning).
    BucketVersioning,
    /// One page of the versions and delete markers under a prefix.
    ListVersions(VersionsRequest<'a>),
}

impl<'a> Request<'a> {
    pub fn operation(&self) -> Operation {
        match self {
            Request::Get { options, .. } => options.operation(),
            Request::List(_) => Operation::ListObjectsV2,
            Request::Put { .. } | Request::PutNew { .. } => Operation::PutObject,
            Request::CreateUpload { .. } => Operation::CreateMultipartUpload,
            Request::UploadPart { .. } => Operation::UploadPart,
            Request::CompleteUpload { .. } => Operation::CompleteMultipartUpload,
            Request::AbortUpload { .. } => Operation::AbortMultipartUpload,
            Request::ListUploads { .. } => Operation::ListMultipartUploads,
            Request::Copy { .. } => Operation::CopyObject,
            Request::CopyPart { .. } => Operation::UploadPartCopy,
            Request::Delete { .. } => Operation::DeleteObject,
            Request::DeleteBatch { objects } if objects.iter().any(|o| o.version_id.is_some()) => {
                Operation::DeleteObjectVersions
            }
            Request::DeleteBatch { .. } => Operation::DeleteObjects,
            Request::BucketVersioning => Operation::GetBucketVersioning,
            Request::ListVersions(_) => Operation::ListObjectVersions,
        }
    }

    /// The key the request changes or reads (a copy's destination), or the
    /// prefix it lists (for the wrappers that act on requests by key).
    pub fn key(&self) -> &'a str {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::PutNew { key, .. }
            | Request::CreateUpload { key, .. }
            | Request::UploadPart { key, .. }
            | Request::CompleteUpload { key, .. }
            | Request::AbortUpload { key, .. }
            | Request::Delete { key } => key,
            Request::Copy { to, .. } | Request::CopyPart { to, .. } => to,
            Request::List(req) => req.prefix,
            Request::ListVersions(req) => req.prefix,
            Request::ListUploads { prefix, .. } => prefix,
            Request::DeleteBatch { objects } => objects.first().map_or("", |o| o.key.as_str()),
            Request::BucketVersioning => "",
        }
    }

    /// The object bytes the request sends.
    pub fn body_len(&self) -> u64 {
        match self {
            Request::Put { body, .. }
            | Request::PutNew { body, .. }
            | Request::UploadPart { body, .. } => body.len() as u64,
            _ => 0,
        }
    }

    /// How long the request's own work may take beyond an answer's usual
    /// wait: sending its body, or S3 copying the bytes it names.
    pub fn transfer_allowance(&self) -> std::time::Duration {
        match self {
            Request::Copy { size, .. } => copy_allowance(*size),
            Request::CopyPart { range, .. } => copy_allowance(range.end - range.start),
            other => transfer_allowance(other.body_len()),
        }
    }
}

/// A store's answer to a [`Request`], of the kind the request asks for.
// An answer is moved once from the store to its caller, never kept: the size
// of its largest kind costs nothing worth an allocation per read.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Response {
    Object(GetResult),
    Listed(ListPage),
    /// The ETag of the object or part written.
    ETag(String),
    UploadId(String),
    Uploads(Vec<PendingUpload>),
    Versioning(Versioning),
    Versions(VersionsPage),
    Done,
}

/// What a store answered when its answer is not of the kind asked for (a
/// mistake in a store, never S3's answer).
fn mismatch(op: Operation, answer: &Response) -> StoreError {
    let kind = match answer {
        Response::Object(_) => "an object",
        Response::Listed(_) => "a listing",
        Response::ETag(_) => "an ETag",
        Response::UploadId(_) => "an upload ID",
        Response::Uploads(_) => "a list of uploads",
        Response::Versioning(_) => "a versioning state",
        Response::Versions(_) => "a list of versions",
        Response::Done => "nothing",
    };
    StoreError::Internal {
        op,
        detail: format!("the store answered {kind}"),
    }
}

/// Sends `$request` through `$store` and unpacks the answer of kind `$kind`.
macro_rules! answer {
    ($store:expr, $request:expr, Done) => {{
        let request = $request;
        let op = request.operation();
        match $store.send(request).await? {
            Response::Done => Ok(()),
            other => Err(mismatch(op, &other)),
        }
    }};
    ($store:expr, $request:expr, $kind:ident) => {{
        let request = $request;
        let op = request.operation();
        match $store.send(request).await? {
            Response::$kind(value) => Ok(value),
            other => Err(mismatch(op, &other)),
        }
    }};
}

/// The calls s3vol makes to S3.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The bucket this store reads, for messages and ARNs.
    fn bucket(&self) -> &str;

    /// Sends one request and returns its answer.
    async fn send(&self, request: Request<'_>) -> StoreResult<Response>;

    /// A URL that lets whoever holds it GET or PUT `key` as `request` says,
    /// with no credentials of their own, signed with this store's: valid for
    /// `request.valid_for` (at most [`super::MAX_URL_VALIDITY`]), or until the
    /// session of the credentials ends if that comes first. Sends no request
    /// to S3.
    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl>;

    /// One GET or HEAD of `key`.
    async fn get(&self, key: &str, options: GetOptions<'_>) -> StoreResult<GetResult> {
        answer!(self, Request::Get { key, options }, Object)
    }

    /// What a HEAD of `key` says.
    async fn head_object(&self, key: &str) -> StoreResult<ObjectInfo> {
        let options = GetOptions {
            pin: Pin::Current(None),
            read: Read::Head,
        };
        headers_of(
            Operation::HeadObject,
            key,
            self.get(key, options).await?.info,
        )
    }

    async fn list_objects(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        answer!(self, Request::List(req), Listed)
    }

    /// Bytes `range` of `key` (see [`Read::Range`]). With `if_match`, fails
    /// with [`StoreError::Changed`] when the object's ETag is no longer that
    /// value.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let options = GetOptions {
            pin: Pin::Current(if_match),
            read: Read::Range(range),
        };
        Ok(self.get(key, options).await?.data)
    }

    /// What [`ObjectStore::head_object`] says of `key`, with the object's first
    /// `len` bytes (see [`Read::Start`]).
    async fn get_start(&self, key: &str, len: u64) -> StoreResult<(ObjectInfo, Bytes)> {
        let options = GetOptions {
            pin: Pin::Current(None),
            read: Read::Start(len),
        };
        let GetResult { info, data, .. } = self.get(key, options).await?;
        Ok((headers_of(Operation::GetObject, key, info)?, data))
    }

    /// Stores `body` as `key`; returns the new ETag.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        answer!(self, Request::Put { key, body, headers }, ETag)
    }

    /// Stores `body` as `key` only if no object has that key yet.
    async fn put_new_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        answer!(self, Request::PutNew { key, body, headers }, ETag)
    }

    /// Starts a multipart upload; returns its upload ID.
    async fn create_multipart_upload(
        &self,
        key: &str,
        headers: &ObjectHeaders,
    ) -> StoreResult<String> {
        answer!(self, Request::CreateUpload { key, headers }, UploadId)
    }

    /// Uploads one part; returns the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let request = Request::UploadPart {
            key,
            upload_id,
            number,
            body,
        };
        answer!(self, request, ETag)
    }

    /// Completes an upload; returns the object's ETag.
    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<String> {
        let request = Request::CompleteUpload {
            key,
            upload_id,
            parts,
            if_match: None,
        };
        answer!(self, request, ETag)
    }

    /// [`ObjectStore::complete_multipart_upload`] over the object at `key`
    /// only while it is the version `etag`.
    async fn complete_multipart_upload_over(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        etag: &str,
    ) -> StoreResult<String> {
        let request = Request::CompleteUpload {
            key,
            upload_id,
            parts,
            if_match: Some(etag),
        };
        answer!(self, request, ETag)
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        answer!(self, Request::AbortUpload { key, upload_id }, Done)
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let request = Request::ListUploads {
            prefix,
            limit: None,
        };
        answer!(self, request, Uploads)
    }

    /// The first of the multipart uploads in progress under `prefix`: at most
    /// about `limit` (a page or two).
    async fn first_multipart_uploads(
        &self,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<PendingUpload>> {
        let request = Request::ListUploads {
            prefix,
            limit: Some(limit),
        };
        answer!(self, request, Uploads)
    }

    /// See [`Request::Copy`]; returns the new ETag.
    async fn copy_object(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
        size: u64,
        replace: Option<&ObjectHeaders>,
    ) -> StoreResult<String> {
        let request = Request::Copy {
            from,
            to,
            if_match,
            size,
            replace,
        };
        answer!(self, request, ETag)
    }

    /// See [`Request::CopyPart`]; returns the part's ETag.
    async fn upload_part_copy(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        number: i32,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let request = Request::CopyPart {
            from,
            to,
            upload_id,
            number,
            range,
            if_match,
        };
        answer!(self, request, ETag)
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        answer!(self, Request::Delete { key }, Done)
    }

    /// Deletes `objects` (at most [`super::MAX_DELETE_BATCH`]) in one request.
    async fn delete_batch(&self, objects: &[Deletion]) -> StoreResult<()> {
        answer!(self, Request::DeleteBatch { objects }, Done)
    }

    async fn bucket_versioning(&self) -> StoreResult<Versioning> {
        answer!(self, Request::BucketVersioning, Versioning)
    }

    async fn list_versions(&self, req: VersionsRequest<'_>) -> StoreResult<VersionsPage> {
        answer!(self, Request::ListVersions(req), Versions)
    }

    /// What a HEAD of version `version_id` of `key` says.
    async fn head_version(&self, key: &str, version_id: &str) -> StoreResult<ObjectInfo> {
        let options = GetOptions {
            pin: Pin::Version(version_id),
            read: Read::Head,
        };
        headers_of(
            Operation::GetObjectVersion,
            key,
            self.get(key, options).await?.info,
        )
    }

    /// Bytes `range` of version `version_id` of `key`.
    async fn get_version_range(
        &self,
        key: &str,
        version_id: &str,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        let options = GetOptions {
            pin: Pin::Version(version_id),
            read: Read::Range(range),
        };
        Ok(self.get(key, options).await?.data)
    }
}

/// The headers a read that asks for them brought.
fn headers_of(op: Operation, key: &str, info: Option<ObjectInfo>) -> StoreResult<ObjectInfo> {
    info.ok_or_else(|| StoreError::Internal {
        op,
        detail: format!("the store answered a read of {key} without its headers"),
    })
}
