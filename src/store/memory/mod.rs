//! An in-memory object store with S3's listing, range and conditional-read rules.
//!
//! Filesystem tests run on it with no network. It records every call so tests can
//! assert what was (or was not) sent, e.g. that a write on a read-only mount sends
//! nothing, or that a random read fetches only the bytes it touches.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

mod listing;

use self::listing::{info, list_page};
use super::{
    Deletion, GetOptions, GetResult, ListPage, ListRequest, MAX_URL_VALIDITY, ObjectHeaders,
    ObjectInfo, ObjectStore, Operation, PendingUpload, Pin, Presign, PresignedUrl, Read, Request,
    Response, ServiceInfo, StoreError, StoreResult, UploadedPart, VersionEntry, Versioning,
    VersionsPage, VersionsRequest, multipart_etag,
};

/// S3's page size when the caller does not ask for one.
const DEFAULT_MAX_KEYS: usize = 1000;

/// S3's smallest part, except for the last one of an upload.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// S3's largest single PutObject or CopyObject.
pub const MAX_SINGLE_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Clone, Debug)]
struct StoredObject {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
    headers: ObjectHeaders,
}

/// One call the store received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub op: Operation,
    /// The key, or the listing prefix.
    pub key: String,
    /// The byte range of a GET.
    pub range: Option<Range<u64>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, StoredObject>,
    calls: Vec<RecordedCall>,
    /// Makes every ETag unique, like S3's content hashes are for different bodies.
    version: u64,
    /// Multipart uploads in progress, by upload ID.
    uploads: BTreeMap<String, Upload>,
}

struct Upload {
    key: String,
    initiated: SystemTime,
    /// Part number -> (body, ETag).
    parts: BTreeMap<i32, (Bytes, String)>,
    headers: ObjectHeaders,
}

impl State {
    fn next_etag(&mut self, suffix: &str) -> String {
        self.version += 1;
        format!("\"{:032x}{suffix}\"", self.version)
    }

    fn store(&mut self, key: &str, data: Bytes, etag: String, headers: ObjectHeaders) {
        let object = StoredObject {
            data,
            etag,
            last_modified: SystemTime::now(),
            headers,
        };
        self.objects.insert(key.to_string(), object);
    }

    fn source(
        &self,
        op: Operation,
        key: &str,
        if_match: Option<&str>,
    ) -> StoreResult<&StoredObject> {
        let object = self.objects.get(key).ok_or_else(|| StoreError::NotFound {
            op,
            key: key.to_string(),
        })?;
        if let Some(expected) = if_match
            && expected != object.etag
        {
            return Err(StoreError::Changed {
                op,
                key: key.to_string(),
                expected_etag: expected.to_string(),
            });
        }
        Ok(object)
    }

    fn upload(&mut self, op: Operation, key: &str, upload_id: &str) -> StoreResult<&mut Upload> {
        match self.uploads.get_mut(upload_id) {
            Some(upload) if upload.key == key => Ok(upload),
            // S3 answers NoSuchUpload with 404, which the S3 store reports as
            // NotFound.
            _ => Err(StoreError::NotFound {
                op,
                key: key.to_string(),
            }),
        }
    }
}

/// An error answer with S3's code, as the S3 store reports it.
fn service(op: Operation, key: &str, code: &str, message: &str) -> StoreError {
    StoreError::Service {
        op,
        key: key.to_string(),
        info: ServiceInfo {
            code: code.to_string(),
            message: message.to_string(),
            request_id: None,
        },
    }
}

pub struct MemoryStore {
    bucket: String,
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Self {
        Self {
            bucket: bucket.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// Stores `data` under `key`, replacing any object there with a new ETag.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        self.put_with(key, data, ObjectHeaders::default());
    }

    /// Like [`MemoryStore::put`], with the object carrying `headers`.
    pub fn put_with(&self, key: &str, data: impl Into<Bytes>, headers: ObjectHeaders) {
        let mut state = self.state.lock();
        let etag = state.next_etag("");
        state.store(key, data.into(), etag, headers);
    }

    /// What the object carries besides its bytes, if it exists.
    pub fn headers(&self, key: &str) -> Option<ObjectHeaders> {
        let state = self.state.lock();
        state.objects.get(key).map(|o| o.headers.clone())
    }

    /// The object's ETag, if it exists.
    pub fn etag(&self, key: &str) -> Option<String> {
        let state = self.state.lock();
        state.objects.get(key).map(|o| o.etag.clone())
    }

    /// The object's bytes, if it exists.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let state = self.state.lock();
        state.objects.get(key).map(|o| o.data.clone())
    }

    pub fn remove(&self, key: &str) {
        self.state.lock().objects.remove(key);
    }

    /// Keys with a multipart upload in progress.
    pub fn pending_uploads(&self) -> Vec<String> {
        self.state
            .lock()
            .uploads
            .values()
            .map(|u| u.key.clone())
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.state.lock().objects.keys().cloned().collect()
    }

    /// Every call received so far, oldest first.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().calls.clear();
    }

    pub fn count_calls(&self, op: Operation) -> usize {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    fn record(state: &mut State, op: Operation, key: &str, range: Option<Range<u64>>) {
        state.calls.push(RecordedCall {
            op,
            key: key.to_string(),
            range,
        });
    }
}

impl MemoryStore {
    /// A GET or HEAD (the memory store keeps one version of each object,
    /// `null`).
    fn read(&self, key: &str, options: GetOptions<'_>) -> StoreResult<GetResult> {
        let op = options.operation();
        let mut state = self.state.lock();
        let recorded = match &options.read {
            Read::Head => None,
            Read::Range(range) => Some(range.clone()),
            Read::Start(len) => Some(0..*len),
        };
        Self::record(&mut state, op, key, recorded);
        let if_match = match options.pin {
            Pin::Current(etag) => etag,
            Pin::Version("null") => None,
            Pin::Version(_) => {
                return Err(StoreError::NotFound {
                    op,
                    key: key.to_string(),
                });
            }
        };
        let object = state.source(op, key, if_match)?;
        let len = object.data.len() as u64;
        let invalid = || StoreError::InvalidRange {
            op,
            key: key.to_string(),
        };
        let headers = || ObjectInfo {
            headers: Some(object.headers.clone()),
            ..info(key, object)
        };
        Ok(match options.read {
            Read::Head => GetResult {
                info: Some(headers()),
                data: Bytes::new(),
                first_byte: None,
            },
            Read::Range(range) if range.start >= len => return Err(invalid()),
            Read::Range(range) => GetResult {
                info: None,
                data: object
                    .data
                    .slice(range.start as usize..range.end.min(len) as usize),
                first_byte: None,
            },
            Read::Start(_) if len == 0 => return Err(invalid()),
            Read::Start(wanted) => GetResult {
                info: Some(headers()),
                data: object.data.slice(..wanted.min(len) as usize),
                first_byte: None,
            },
        })
    }

    fn list(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::ListObjectsV2, req.prefix, None);
        Ok(list_page(&state.objects, &req))
    }

    /// Stores `body` as `key`; with `only_new`, only where no object has it.
    fn put_object(
        &self,
        key: &str,
        body: Bytes,
        headers: &ObjectHeaders,
        only_new: bool,
    ) -> StoreResult<String> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::PutObject, key, None);
        if only_new && state.objects.contains_key(key) {
            let (op, key) = (Operation::PutObject, key.to_string());
            return Err(StoreError::Changed {
                op,
                key,
                expected_etag: String::new(),
            });
        }
        let etag = state.next_etag("");
        state.store(key, body, etag.clone(), headers.clone());
        Ok(etag)
    }

    fn create_upload(&self, key: &str, headers: &ObjectHeaders) -> StoreResult<String> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::CreateMultipartUpload, key, None);
        state.version += 1;
        let id = format!("upload-{}", state.version);
        let upload = Upload {
            key: key.to_string(),
            initiated: SystemTime::now(),
            parts: BTreeMap::new(),
            headers: headers.clone(),
        };
        state.uploads.insert(id.clone(), upload);
        Ok(id)
    }

    fn part(&self, key: &str, upload_id: &str, number: i32, body: Bytes) -> StoreResult<String> {
        let op = Operation::UploadPart;
        let mut state = self.state.lock();
        Self::record(&mut state, op, key, None);
        if !(1..=10_000).contains(&number) {
            return Err(service(
                op,
                key,
                "InvalidArgument",
                "part number out of range",
            ));
        }
        let etag = state.next_etag("");
        state
            .upload(op, key, upload_id)?
            .parts
            .insert(number, (body, etag.clone()));
        Ok(etag)
    }

    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let op = Operation::CompleteMultipartUpload;
        let mut state = self.state.lock();
        Self::record(&mut state, op, key, None);
        if if_match.is_some() {
            state.source(op, key, if_match)?;
        }
        let upload = state.upload(op, key, upload_id)?;
        if parts.is_empty() {
            return Err(service(op, key, "MalformedXML", "no parts listed"));
        }
        let mut data = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 && part.number <= parts[i - 1].number {
                return Err(service(op, key, "InvalidPartOrder", "parts out of order"));
            }
            let Some((body, etag)) = upload.parts.get(&part.number) else {
                return Err(service(
                    op,
                    key,
                    "InvalidPart",
                    "a listed part was not uploaded",
                ));
            };
            if *etag != part.etag {
                return Err(service(
                    op,
                    key,
                    "InvalidPart",
                    "a part's ETag does not match",
                ));
            }
            if i + 1 < parts.len() && body.len() < MIN_PART_SIZE {
                return Err(service(
                    op,
                    key,
                    "EntityTooSmall",
                    "a part other than the last is under 5 MiB",
                ));
            }
            data.extend_from_slice(body);
        }
        let headers = state.uploads.remove(upload_id).map(|u| u.headers);
        // S3's rule, so a client can tell its own completed upload by the ETag.
        let etag =
            multipart_etag(parts).unwrap_or_else(|| state.next_etag(&format!("-{}", parts.len())));
        state.store(key, data.into(), etag.clone(), headers.unwrap_or_default());
        Ok(etag)
    }

    fn abort(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let op = Operation::AbortMultipartUpload;
        let mut state = self.state.lock();
        Self::record(&mut state, op, key, None);
        state.upload(op, key, upload_id)?;
        state.uploads.remove(upload_id);
        Ok(())
    }

    fn uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::ListMultipartUploads, prefix, None);
        let mut pending: Vec<PendingUpload> = state
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| PendingUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: u.initiated,
            })
            .collect();
        pending.sort_by(|a, b| a.key.cmp(&b.key).then(a.initiated.cmp(&b.initiated)));
        Ok(pending)
    }

    fn copy(
        &self,
        from: &str,
        to: &str,
        if_match: Option<&str>,
        replace: Option<&ObjectHeaders>,
    ) -> StoreResult<String> {
        let op = Operation::CopyObject;
        let mut state = self.state.lock();
        Self::record(&mut state, op, to, None);
        let source = state.source(op, from, if_match)?;
        let (data, carried, source_etag) = (
            source.data.clone(),
            source.headers.clone(),
            source.etag.clone(),
        );
        if from == to && replace.is_none() {
            return Err(service(
                op,
                to,
                "InvalidRequest",
                "a copy onto itself must change the metadata",
            ));
        }
        if data.len() as u64 > MAX_SINGLE_OBJECT {
            return Err(service(
                op,
                to,
                "InvalidRequest",
                "copy source larger than 5 GiB",
            ));
        }
        // The same bytes keep their ETag, as S3's content hash does; a copy of
        // a multipart object is a single-part object with an ETag of its own.
        let etag = match source_etag {
            etag if !etag.contains('-') => etag,
            _ => state.next_etag(""),
        };
        let headers = replace.cloned().unwrap_or(carried);
        state.store(to, data, etag.clone(), headers);
        Ok(etag)
    }

    fn copy_part(
        &self,
        from: &str,
        to: &str,
        upload_id: &str,
        number: i32,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let op = Operation::UploadPartCopy;
        let mut state = self.state.lock();
        Self::record(&mut state, op, to, Some(range.clone()));
        let data = state.source(op, from, if_match)?.data.clone();
        if range.start >= range.end || range.end > data.len() as u64 {
            return Err(StoreError::InvalidRange {
                op,
                key: from.to_string(),
            });
        }
        let body = data.slice(range.start as usize..range.end as usize);
        let etag = state.next_etag("");
        state
            .upload(op, to, upload_id)?
            .parts
            .insert(number, (body, etag.clone()));
        Ok(etag)
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::DeleteObject, key, None);
        state.objects.remove(key);
        Ok(())
    }

    /// Deletes each of `objects`; a version other than `null` (the one each
    /// object has here) is not there, and so already deleted.
    fn delete_batch(&self, op: Operation, objects: &[Deletion]) -> StoreResult<()> {
        let mut state = self.state.lock();
        let first = objects.first().map_or("", |o| o.key.as_str());
        Self::record(&mut state, op, first, None);
        for object in objects {
            if object.version_id.as_deref().is_none_or(|v| v == "null") {
                state.objects.remove(&object.key);
            }
        }
        Ok(())
    }

    /// The memory store keeps no versions, as a bucket that never had
    /// versioning on: each object is its one version, `null`.
    fn versioning(&self) -> StoreResult<Versioning> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::GetBucketVersioning, "", None);
        Ok(Versioning::Never)
    }

    fn versions(&self, req: VersionsRequest<'_>) -> StoreResult<VersionsPage> {
        let mut state = self.state.lock();
        Self::record(&mut state, Operation::ListObjectVersions, req.prefix, None);
        let listing = ListRequest {
            prefix: req.prefix,
            delimiter: req.delimiter,
            continuation: req.after.map(|(key, _)| key),
            max_keys: req.max_keys,
        };
        let page = list_page(&state.objects, &listing);
        Ok(VersionsPage {
            versions: page
                .objects
                .into_iter()
                .map(|o| VersionEntry {
                    key: o.key,
                    version_id: "null".into(),
                    last_modified: o.last_modified,
                    size: o.size,
                    etag: o.etag,
                    delete_marker: false,
                    latest: true,
                })
                .collect(),
            common_prefixes: page.common_prefixes,
            next: page.next_token.map(|key| (key, "null".into())),
        })
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn send(&self, request: Request<'_>) -> StoreResult<Response> {
        let op = request.operation();
        Ok(match request {
            Request::Get { key, options } => Response::Object(self.read(key, options)?),
            Request::List(req) => Response::Listed(self.list(req)?),
            Request::Put { key, body, headers } => {
                Response::ETag(self.put_object(key, body, headers, false)?)
            }
            Request::PutNew { key, body, headers } => {
                Response::ETag(self.put_object(key, body, headers, true)?)
            }
            Request::CreateUpload { key, headers } => {
                Response::UploadId(self.create_upload(key, headers)?)
            }
            Request::UploadPart {
                key,
                upload_id,
                number,
                body,
            } => Response::ETag(self.part(key, upload_id, number, body)?),
            Request::CompleteUpload {
                key,
                upload_id,
                parts,
                if_match,
            } => Response::ETag(self.complete(key, upload_id, parts, if_match)?),
            Request::AbortUpload { key, upload_id } => {
                self.abort(key, upload_id)?;
                Response::Done
            }
            Request::ListUploads { prefix, limit } => {
                let mut uploads = self.uploads(prefix)?;
                uploads.truncate(limit.unwrap_or(usize::MAX));
                Response::Uploads(uploads)
            }
            Request::Copy {
                from,
                to,
                if_match,
                replace,
                ..
            } => Response::ETag(self.copy(from, to, if_match, replace)?),
            Request::CopyPart {
                from,
                to,
                upload_id,
                number,
                range,
                if_match,
            } => Response::ETag(self.copy_part(from, to, upload_id, number, range, if_match)?),
            Request::Delete { key } => {
                self.delete(key)?;
                Response::Done
            }
            Request::DeleteBatch { objects } => {
                self.delete_batch(op, objects)?;
                Response::Done
            }
            Request::BucketVersioning => Response::Versioning(self.versioning()?),
            Request::ListVersions(req) => Response::Versions(self.versions(req)?),
        })
    }

    /// A `memory://` URL that names what a real one would allow, for tests of
    /// the way there; nothing can fetch it.
    async fn presign(&self, key: &str, request: &Presign) -> StoreResult<PresignedUrl> {
        let Presign {
            method,
            valid_for,
            version_id,
            headers,
        } = request;
        let valid_for = (*valid_for).min(MAX_URL_VALIDITY);
        let expires = SystemTime::now() + valid_for;
        let at = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(PresignedUrl {
            url: format!(
                "memory://{}/{key}?method={}&expires={}{}",
                self.bucket,
                method.as_str(),
                at.as_secs(),
                version_id
                    .as_ref()
                    .map_or(String::new(), |v| format!("&versionId={v}"))
            ),
            expires,
            cut_by_session: false,
            headers: headers
                .user
                .iter()
                .map(|(name, value)| (format!("x-amz-meta-{name}"), value.clone()))
                .collect(),
        })
    }
}
