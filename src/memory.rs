//! The memory a volume may hold for data (`--max-memory`): read-ahead, the block
//! cache's memory tier, blocks waiting to be written to the disk cache, and parts
//! being uploaded, all together.
//!
//! The limit is split once, at mount. Three eighths are left for what the daemon
//! holds besides: its own tables, the GET buffers it keeps mapped for reuse, the
//! FUSE request buffers, data on its way through network buffers and replies to
//! the kernel, and the allocator's slack (with a quarter, a volume at the default
//! limit peaked at 133 MiB). With the block cache on, an eighth is the cache's
//! memory tier and an eighth the backlog of block files being written; the rest
//! (three eighths of the limit with the cache, five eighths without, and never
//! less than [`MIN_POOL`]) is one pool, counted in bytes, that read-ahead and
//! uploads share:
//!
//! - read-ahead takes from the pool only what is free, and on a read-write volume
//!   never the last [`MemoryBudget::reserve`] bytes, which are kept for uploads. An
//!   idle handle holds what it read ahead until it reads on or closes; the reserve
//!   keeps that from ever stopping a write.
//! - a read the application waits for that finds the pool empty is fetched at its
//!   own size, not a whole part, outside the pool (the kernel sends a bounded
//!   number of reads at once, so this is bounded too); such reads are counted.
//! - a part upload waits for room in the pool: writes slow down, never fail. The
//!   waits and the time spent in them are counted.
//!
//! `s3vol stats` shows the limit, what the pool holds now, and the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default limit.
pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;

/// The smallest limit accepted.
pub const MIN_MAX_MEMORY: u64 = 32 << 20;

/// The smallest pool: two parts of 8 MiB, read ahead or uploaded at once.
pub const MIN_POOL: u64 = 16 << 20;

/// What the budget has had to do, for `s3vol stats`.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// Reads the application waited for, fetched at their own size because the
    /// pool was full.
    pub reads_without_room: AtomicU64,
    /// Part uploads that had to wait for room.
    pub upload_waits: AtomicU64,
    /// Milliseconds part uploads spent waiting for room.
    pub upload_wait_ms: AtomicU64,
}

#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    /// The cache's memory tier and block-write backlog; 0 without a cache.
    cache_share: u64,
    pool: Arc<Semaphore>,
    pool_size: u64,
    reserve: u64,
    pub stats: MemoryStats,
}

impl MemoryBudget {
    /// The budget of a volume limited to `limit` bytes, with or without a block
    /// cache; `upload_part` is the part size of a read-write volume, whose
    /// uploads always keep room for two parts (`None` when read-only).
    pub fn new(limit: u64, cache: bool, upload_part: Option<u64>) -> Arc<Self> {
        let cache_share = if cache { limit / 8 } else { 0 };
        let pool_size = (limit / 8 * 5)
            .saturating_sub(2 * cache_share)
            .max(MIN_POOL);
        let reserve = upload_part.map_or(0, |part| (2 * part).min(pool_size / 2));
        Arc::new(Self {
            limit,
            cache_share,
            pool: Arc::new(Semaphore::new(pool_size as usize)),
            pool_size,
            reserve,
            stats: MemoryStats::default(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The block cache's memory tier, in bytes.
    pub fn memory_tier(&self) -> u64 {
        self.cache_share
    }

    /// Bytes of fetched blocks whose files may be being written at once.
    pub fn write_backlog(&self) -> u64 {
        self.cache_share
    }

    /// The pool read-ahead and uploads share, in bytes.
    pub fn pool_size(&self) -> u64 {
        self.pool_size
    }

    /// What read-ahead leaves free for uploads.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes the pool holds now.
    pub fn in_use(&self) -> u64 {
        self.pool_size
            .saturating_sub(self.pool.available_permits() as u64)
    }

    /// The most read-ahead may ever hold: the pool less the reserve.
    pub fn read_ahead_limit(&self) -> u64 {
        self.pool_size - self.reserve
    }

    /// Room for `bytes` read ahead, if the pool has it beyond the reserve.
    pub fn try_read_ahead(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let bytes = bytes.max(1);
        if (self.pool.available_permits() as u64) < bytes.saturating_add(self.reserve) {
            return None;
        }
        self.pool
            .clone()
            .try_acquire_many_owned(u32::try_from(bytes).ok()?)
            .ok()
    }

    /// Notes a read fetched outside the pool because it had no room.
    pub fn read_without_room(&self) {
        self.stats
            .reads_without_room
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Room for a part of `bytes` to upload, waiting for it if need be.
    pub async fn upload(&self, bytes: u64) -> OwnedSemaphorePermit {
        let bytes = self.clamp(bytes) as u32;
        if let Ok(permit) = self.pool.clone().try_acquire_many_owned(bytes) {
            return permit;
        }
        let started = Instant::now();
        let permit = self
            .pool
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("the pool is never closed");
        self.stats.upload_waits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .upload_wait_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        permit
    }

    /// An upload never asks for more than the whole pool (a part larger than the
    /// pool takes all of it), nor for nothing.
    fn clamp(&self, bytes: u64) -> u64 {
        bytes.clamp(1, self.pool_size.min(u64::from(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_shares_add_up_to_the_limit() {
        let budget = MemoryBudget::new(128 * MIB, true, Some(8 * MIB));
        assert_eq!(budget.memory_tier(), 16 * MIB);
        assert_eq!(budget.write_backlog(), 16 * MIB);
        assert_eq!(budget.pool_size(), 48 * MIB);
        assert_eq!(budget.reserve(), 16 * MIB);
        let without_cache = MemoryBudget::new(128 * MIB, false, None);
        assert_eq!(without_cache.pool_size(), 80 * MIB);
        assert_eq!(without_cache.reserve(), 0);
        // The smallest limit still holds two parts at once.
        let smallest = MemoryBudget::new(MIN_MAX_MEMORY, true, Some(8 * MIB));
        assert_eq!(smallest.pool_size(), 16 * MIB);
        assert_eq!(smallest.memory_tier() * 2 + smallest.pool_size(), 24 * MIB);
    }

    #[test]
    fn read_ahead_never_takes_the_uploads_reserve() {
        let budget = MemoryBudget::new(64 * MIB, true, Some(8 * MIB));
        // Pool 24 MiB, reserve 12 MiB (never more than half the pool).
        assert_eq!(budget.pool_size(), 24 * MIB);
        assert_eq!(budget.reserve(), 12 * MIB);
        let first = budget.try_read_ahead(8 * MIB).expect("room");
        assert!(budget.try_read_ahead(8 * MIB).is_none(), "took the reserve");
        let small = budget
            .try_read_ahead(4 * MIB)
            .expect("room up to the reserve");
        assert_eq!(budget.in_use(), 12 * MIB);
        drop((first, small));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn an_upload_waits_for_room_and_is_counted() {
        let budget = MemoryBudget::new(32 * MIB, false, Some(8 * MIB));
        assert_eq!(budget.pool_size(), 20 * MIB);
        let held = budget.upload(13 * MIB).await;
        assert_eq!(budget.stats.upload_waits.load(Ordering::Relaxed), 0);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.upload(8 * MIB).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "an upload went past the limit");
        drop(held);
        let permit = waiting.await.unwrap();
        assert_eq!(budget.in_use(), 8 * MIB);
        assert_eq!(budget.stats.upload_waits.load(Ordering::Relaxed), 1);
        assert!(budget.stats.upload_wait_ms.load(Ordering::Relaxed) >= 40);
        drop(permit);
    }
}
