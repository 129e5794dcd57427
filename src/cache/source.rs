//! Where the stored bytes of one version of an object come from: a range
//! source. A reader asks its source once and the request descends: the cache
//! in front of the store ([`CachedSource`]) answers from memory or disk what it
//! holds and asks the source behind it for the rest, in whole blocks, which it
//! keeps.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::BlockCache;
use crate::store::StoreResult;

/// The stored bytes of one version of one object.
#[async_trait]
pub trait RangeSource: Send + Sync + 'static {
    /// Bytes `range`, in pieces whose concatenation is the range, or less
    /// where the object ends before the range does (a caller that knows the
    /// object's size takes that for a short answer: the object changed).
    async fn get(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>>;

    /// Like [`RangeSource::get`], for a sequential reader, whose bytes the
    /// kernel keeps in its page cache: a cache need not hold them in memory too.
    async fn get_streamed(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        self.get(range).await
    }

    /// Bytes `range` if the source holds all of them here, blocking at most on
    /// local disk: a read that can be answered on the thread that received it.
    fn get_now(&self, _range: Range<u64>) -> Option<Vec<Bytes>> {
        None
    }

    /// Whether the byte at `offset` is held here (no request would fetch it).
    fn holds(&self, _offset: u64) -> bool {
        false
    }

    /// Whether the source fetches whole blocks of its own, whatever range it
    /// is asked for: its callers need not round their ranges up.
    fn fetches_blocks(&self) -> bool {
        false
    }
}

/// The block cache in front of another source, for one version of one
/// object.
pub struct CachedSource {
    cache: Arc<BlockCache>,
    key: Arc<str>,
    etag: Arc<str>,
    /// The object's stored length.
    size: u64,
    behind: Arc<dyn RangeSource>,
}

impl CachedSource {
    /// Version `etag` of `key`, `size` bytes as stored, through `cache`, with
    /// what it does not hold from `behind`.
    pub fn new(
        cache: Arc<BlockCache>,
        key: Arc<str>,
        etag: Arc<str>,
        size: u64,
        behind: Arc<dyn RangeSource>,
    ) -> Self {
        Self {
            cache,
            key,
            etag,
            size,
            behind,
        }
    }
}

#[async_trait]
impl RangeSource for CachedSource {
    async fn get(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        let behind = self.behind.as_ref();
        self.cache
            .read(&self.key, &self.etag, self.size, range, behind)
            .await
    }

    async fn get_streamed(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        let behind = self.behind.as_ref();
        self.cache
            .read_streamed(&self.key, &self.etag, self.size, range, behind)
            .await
    }

    fn get_now(&self, range: Range<u64>) -> Option<Vec<Bytes>> {
        self.cache
            .read_cached(&self.key, &self.etag, self.size, range)
    }

    fn holds(&self, offset: u64) -> bool {
        self.cache.holds(&self.key, &self.etag, self.size, offset)
    }

    fn fetches_blocks(&self) -> bool {
        true
    }
}

/// A closure serves as a source in tests: one piece per range.
#[cfg(test)]
#[async_trait]
impl<F, Fut> RangeSource for F
where
    F: Fn(Range<u64>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = StoreResult<Bytes>> + Send,
{
    async fn get(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        Ok(vec![self(range).await?])
    }
}
