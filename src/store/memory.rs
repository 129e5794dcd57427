//! An in-memory object store with S3's listing, range and conditional-read rules.
//!
//! Filesystem tests run on it with no network. It records every call so tests can
//! assert what was (or was not) sent, e.g. that a write on a read-only mount sends
//! nothing, or that a random read fetches only the bytes it touches.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ListRequest, ObjectInfo, ObjectStore, Operation, StoreError, StoreResult};

/// S3's page size when the caller does not ask for one.
const DEFAULT_MAX_KEYS: usize = 1000;

#[derive(Clone, Debug)]
struct StoredObject {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
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
    /// Multipart uploads in progress: upload ID -> key.
    uploads: BTreeMap<String, String>,
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
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let object = StoredObject {
            data: data.into(),
            etag: format!("\"{:032x}\"", state.version),
            last_modified: SystemTime::now(),
        };
        state.objects.insert(key.to_string(), object);
    }

    pub fn remove(&self, key: &str) {
        self.state.lock().unwrap().objects.remove(key);
    }

    /// Keys with a multipart upload in progress.
    pub fn pending_uploads(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .uploads
            .values()
            .cloned()
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// Every call received so far, oldest first.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    pub fn count_calls(&self, op: Operation) -> usize {
        self.state
            .lock()
            .unwrap()
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

fn info(key: &str, object: &StoredObject) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: object.data.len() as u64,
        etag: object.etag.clone(),
        last_modified: object.last_modified,
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn head_object(&self, key: &str) -> StoreResult<ObjectInfo> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::HeadObject, key, None);
        state
            .objects
            .get(key)
            .map(|o| info(key, o))
            .ok_or_else(|| StoreError::NotFound {
                op: Operation::HeadObject,
                key: key.to_string(),
            })
    }

    async fn list_objects(&self, req: ListRequest<'_>) -> StoreResult<ListPage> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::ListObjectsV2, req.prefix, None);
        let max_keys = req
            .max_keys
            .map_or(DEFAULT_MAX_KEYS, |m| m.clamp(0, 1000) as usize);
        // The continuation token is the last key or common prefix already returned;
        // everything at or below it (in key order) was covered by earlier pages.
        let start = match req.continuation {
            Some(token) => Bound::Excluded(token.to_string()),
            None => Bound::Included(req.prefix.to_string()),
        };
        let mut page = ListPage::default();
        // The last item returned, and whether it was a common prefix.
        let mut last_returned: Option<(String, bool)> = None;
        let mut truncated = false;
        for (key, object) in state.objects.range((start, Bound::Unbounded)) {
            if !key.starts_with(req.prefix) {
                break;
            }
            let common = req.delimiter.and_then(|d| {
                let rest = &key[req.prefix.len()..];
                rest.find(d)
                    .map(|i| key[..req.prefix.len() + i + d.len()].to_string())
            });
            if let (Some(common), Some((last, true))) = (&common, &last_returned)
                && common == last
            {
                // Keys under a common prefix already returned fold into it.
                continue;
            }
            if page.objects.len() + page.common_prefixes.len() == max_keys {
                truncated = true;
                break;
            }
            match common {
                Some(common) => {
                    page.common_prefixes.push(common.clone());
                    last_returned = Some((common, true));
                }
                None => {
                    page.objects.push(info(key, object));
                    last_returned = Some((key.clone(), false));
                }
            }
        }
        if truncated {
            // After a common prefix, resume past every key that folds into it: no
            // key under it sorts after the prefix followed by the largest char.
            page.next_token = last_returned.map(|(last, is_prefix)| {
                if is_prefix {
                    format!("{last}\u{10FFFF}")
                } else {
                    last
                }
            });
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::GetObject, key, Some(range.clone()));
        let op = Operation::GetObject;
        let object = state.objects.get(key).ok_or_else(|| StoreError::NotFound {
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
        let len = object.data.len() as u64;
        if range.start >= len {
            return Err(StoreError::InvalidRange {
                op,
                key: key.to_string(),
            });
        }
        let end = range.end.min(len);
        Ok(object.data.slice(range.start as usize..end as usize))
    }

    async fn create_multipart_upload(&self, key: &str) -> StoreResult<String> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::CreateMultipartUpload, key, None);
        state.version += 1;
        let id = format!("upload-{}", state.version);
        state.uploads.insert(id.clone(), key.to_string());
        Ok(id)
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::AbortMultipartUpload, key, None);
        match state.uploads.get(upload_id) {
            Some(k) if k == key => {
                state.uploads.remove(upload_id);
                Ok(())
            }
            _ => Err(StoreError::NotFound {
                op: Operation::AbortMultipartUpload,
                key: key.to_string(),
            }),
        }
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        let mut state = self.state.lock().unwrap();
        Self::record(&mut state, Operation::DeleteObject, key, None);
        state.objects.remove(key);
        Ok(())
    }
}
