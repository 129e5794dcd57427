//! The local block cache: object data read once from S3, then served from memory
//! or local disk.
//!
//! Data is cached in fixed-size blocks keyed by (object key, ETag, block index).
//! The ETag in the key means a replaced object can never be served from the old
//! object's blocks: its new ETag names other blocks, and the old ones age out.
//!
//! Two tiers: a small LRU of blocks in memory in front of an LRU of block files on
//! disk under a directory of the mount's own (mode 0700, files 0600), bounded in
//! bytes. Each block file carries a header with its identity and a CRC32C of the
//! data; a file that does not match (torn write, disk corruption, hash collision)
//! is a miss and is removed, never an error. Files are written to a temporary name
//! and renamed into place, so a reader never sees half a block.
//!
//! Concurrent readers of one missing block fetch it once: the first caller fetches,
//! the others wait for its result.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Identifies the first bytes of a block file: "s3vol block, format 1".
const MAGIC: &[u8; 8] = b"S3VBLK01";

/// One block of one version of one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub key: String,
    pub etag: String,
    pub index: u64,
}

impl BlockId {
    /// The block file's name: a hash of the identity (the header holds the full
    /// identity, so a collision is caught as a mismatch).
    fn file_name(&self) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

/// What the cache has done, for `s3vol stats` and the log at unmount.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    /// Block files found damaged and removed.
    pub corrupt: AtomicU64,
}

/// How large each tier may grow.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The mount's own directory; emptied when the cache opens.
    pub dir: PathBuf,
    pub disk_bytes: u64,
    pub memory_bytes: u64,
}

struct DiskState {
    /// Block file name -> its size on disk, least recently used first.
    files: LruCache<String, u64>,
    used: u64,
}

struct MemoryState {
    blocks: LruCache<BlockId, Bytes>,
    used: u64,
}

type Waiters = broadcast::Sender<Result<Bytes, String>>;

pub struct BlockCache {
    config: CacheConfig,
    disk: Mutex<DiskState>,
    memory: Mutex<MemoryState>,
    /// Blocks being fetched right now, and who waits for them.
    fetching: Mutex<HashMap<BlockId, Waiters>>,
    pub stats: CacheStats,
}

impl BlockCache {
    /// Opens the cache in `config.dir`, created mode 0700. Whatever a previous
    /// mount left there is removed: the cache starts empty at every mount, so it
    /// never has to trust files it did not write.
    pub fn open(config: CacheConfig) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)?;
        for entry in fs::read_dir(&config.dir)? {
            let path = entry?.path();
            if path.is_file() {
                fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            config,
            disk: Mutex::new(DiskState {
                files: LruCache::unbounded(),
                used: 0,
            }),
            memory: Mutex::new(MemoryState {
                blocks: LruCache::unbounded(),
                used: 0,
            }),
            fetching: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.config.dir.join(name)
    }

    /// Bytes of block files on disk now.
    pub fn disk_used(&self) -> u64 {
        self.disk.lock().unwrap().used
    }

    /// The block from memory or disk, or `None`.
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        if let Some(data) = self.memory.lock().unwrap().blocks.get(id).cloned() {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Some(data);
        }
        let name = id.file_name();
        // Only files this mount wrote and still counts are read (and this marks
        // the file recently used).
        self.disk.lock().unwrap().files.get(&name)?;
        match read_block(&self.path(&name), id) {
            Ok(data) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                self.remember(id, &data);
                Some(data)
            }
            Err(why) => {
                warn!(
                    key = id.key,
                    block = id.index,
                    why,
                    "damaged cache block removed"
                );
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                self.forget_file(&name);
                None
            }
        }
    }

    /// Stores a block in both tiers, evicting the least recently used blocks to
    /// stay within the bounds. A failure to write the file only costs the disk
    /// copy.
    pub fn put(&self, id: &BlockId, data: &Bytes) {
        self.remember(id, data);
        let name = id.file_name();
        let size = (MAGIC.len() + header_len(id) + data.len()) as u64;
        if size > self.config.disk_bytes {
            return;
        }
        if let Err(e) = write_block(&self.config.dir, &name, id, data) {
            debug!(key = id.key, block = id.index, error = %e, "block not cached on disk");
            return;
        }
        let evicted = {
            let mut disk = self.disk.lock().unwrap();
            if let Some(old) = disk.files.put(name.clone(), size) {
                disk.used -= old;
            }
            disk.used += size;
            let mut evicted = Vec::new();
            while disk.used > self.config.disk_bytes {
                let Some((victim, victim_size)) = disk.files.pop_lru() else {
                    break;
                };
                disk.used -= victim_size;
                evicted.push(victim);
            }
            evicted
        };
        for victim in evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(self.path(&victim));
        }
    }

    fn remember(&self, id: &BlockId, data: &Bytes) {
        let size = data.len() as u64;
        if size > self.config.memory_bytes {
            return;
        }
        let mut memory = self.memory.lock().unwrap();
        if let Some(old) = memory.blocks.put(id.clone(), data.clone()) {
            memory.used -= old.len() as u64;
        }
        memory.used += size;
        while memory.used > self.config.memory_bytes {
            let Some((_, old)) = memory.blocks.pop_lru() else {
                break;
            };
            memory.used -= old.len() as u64;
        }
    }

    fn forget_file(&self, name: &str) {
        let mut disk = self.disk.lock().unwrap();
        if let Some(size) = disk.files.pop(name) {
            disk.used -= size;
        }
        let _ = fs::remove_file(self.path(name));
    }

    /// The block, from the cache or else from `fetch`, which runs once however
    /// many callers want the block at the same time; what it returns is cached.
    pub async fn get_or_fetch<F, Fut>(&self, id: &BlockId, fetch: F) -> Result<Bytes, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, String>>,
    {
        if let Some(data) = self.get(id) {
            return Ok(data);
        }
        let waiting = {
            let mut fetching = self.fetching.lock().unwrap();
            match fetching.get(id) {
                Some(sender) => Some(sender.subscribe()),
                None => {
                    fetching.insert(id.clone(), broadcast::channel(1).0);
                    None
                }
            }
        };
        if let Some(mut receiver) = waiting {
            return receiver
                .recv()
                .await
                .unwrap_or_else(|_| Err("the fetch of this block was cancelled".into()));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // The entry is removed however this ends, so a cancelled fetch cannot
        // leave later callers waiting forever.
        let guard = FetchGuard { cache: self, id };
        let result = fetch().await;
        if let Ok(data) = &result {
            self.put(id, data);
        }
        if let Some(sender) = guard.finish() {
            let _ = sender.send(result.clone());
        }
        result
    }
}

struct FetchGuard<'a> {
    cache: &'a BlockCache,
    id: &'a BlockId,
}

impl FetchGuard<'_> {
    fn finish(self) -> Option<Waiters> {
        let sender = self.cache.fetching.lock().unwrap().remove(self.id);
        std::mem::forget(self);
        sender
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        self.cache.fetching.lock().unwrap().remove(self.id);
    }
}

fn header_len(id: &BlockId) -> usize {
    // crc32c, data length, index, key length, etag length, key, etag
    4 + 8 + 8 + 4 + 4 + id.key.len() + id.etag.len()
}

fn write_block(dir: &Path, name: &str, id: &BlockId, data: &Bytes) -> io::Result<()> {
    let mut header = Vec::with_capacity(MAGIC.len() + header_len(id));
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    header.extend_from_slice(&id.index.to_le_bytes());
    header.extend_from_slice(&(id.key.len() as u32).to_le_bytes());
    header.extend_from_slice(&(id.etag.len() as u32).to_le_bytes());
    header.extend_from_slice(id.key.as_bytes());
    header.extend_from_slice(id.etag.as_bytes());
    let temporary = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    let written = file
        .write_all(&header)
        .and_then(|()| file.write_all(data))
        .and_then(|()| fs::rename(&temporary, dir.join(name)));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// The block's data if the file holds exactly this block, intact.
fn read_block(path: &Path, id: &BlockId) -> Result<Bytes, String> {
    let raw = fs::read(path).map_err(|e| e.to_string())?;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let slice = raw.get(*at..*at + n).ok_or("file is truncated")?;
        *at += n;
        Ok(slice)
    };
    let mut at = 0;
    if take(&mut at, MAGIC.len())? != MAGIC {
        return Err("not a block file".into());
    }
    let number = |bytes: &[u8]| {
        let mut buf = [0u8; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(buf)
    };
    let crc = number(take(&mut at, 4)?) as u32;
    let len = number(take(&mut at, 8)?) as usize;
    let index = number(take(&mut at, 8)?);
    let key_len = number(take(&mut at, 4)?) as usize;
    let etag_len = number(take(&mut at, 4)?) as usize;
    let key = take(&mut at, key_len)?;
    let etag = take(&mut at, etag_len)?;
    if index != id.index || key != id.key.as_bytes() || etag != id.etag.as_bytes() {
        return Err("file holds another block".into());
    }
    let data = take(&mut at, len)?;
    if at != raw.len() {
        return Err("file is longer than its block".into());
    }
    if crc32c::crc32c(data) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(BytesMut::from(data).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    const KIB: u64 = 1024;

    fn cache(dir: &Path, disk: u64, memory: u64) -> BlockCache {
        BlockCache::open(CacheConfig {
            dir: dir.join("mount-1"),
            disk_bytes: disk,
            memory_bytes: memory,
        })
        .unwrap()
    }

    fn id(key: &str, etag: &str, index: u64) -> BlockId {
        BlockId {
            key: key.into(),
            etag: etag.into(),
            index,
        }
    }

    fn block(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_add(seed))
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn the_bound_holds_under_three_times_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 256 * KIB, 32 * KIB);
        for i in 0..48u64 {
            cache.put(&id("k", "\"e\"", i), &block(i as u8, 16 * 1024));
            assert!(cache.disk_used() <= 256 * KIB, "over the bound at {i}");
        }
        let on_disk: u64 = fs::read_dir(dir.path().join("mount-1"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 256 * KIB, "{on_disk} bytes of files");
        assert!(cache.stats.evictions.load(Ordering::Relaxed) > 0);
        // The most recent blocks are there, the oldest are gone.
        assert_eq!(
            cache.get(&id("k", "\"e\"", 47)).unwrap(),
            block(47, 16 * 1024)
        );
        assert!(cache.get(&id("k", "\"e\"", 0)).is_none());
    }

    #[test]
    fn files_are_private_and_a_new_mount_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let first = cache(dir.path(), 1 << 20, 0);
        first.put(&id("k", "\"e\"", 0), &block(1, 100));
        let mount_dir = dir.path().join("mount-1");
        let mode = fs::metadata(&mount_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        for entry in fs::read_dir(&mount_dir).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(first);
        let second = cache(dir.path(), 1 << 20, 0);
        assert!(second.get(&id("k", "\"e\"", 0)).is_none());
        assert_eq!(fs::read_dir(&mount_dir).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_block_is_a_miss_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 0);
        let block_id = id("k", "\"e\"", 3);
        cache.put(&block_id, &block(9, 4096));
        let path = cache.path(&block_id.file_name());
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        fs::write(&path, raw).unwrap();
        assert!(cache.get(&block_id).is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
        assert_eq!(cache.disk_used(), 0);
    }

    #[test]
    fn a_new_etag_never_sees_the_old_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 1 << 20);
        cache.put(&id("k", "\"old\"", 0), &block(1, 100));
        assert!(cache.get(&id("k", "\"new\"", 0)).is_none());
        assert!(cache.get(&id("k", "\"old\"", 0)).is_some());
    }

    #[test]
    fn memory_serves_first_then_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 150);
        cache.put(&id("k", "\"e\"", 0), &block(1, 100));
        cache.put(&id("k", "\"e\"", 1), &block(2, 100));
        // Block 0 fell out of the 150-byte memory tier; disk still has it.
        assert_eq!(cache.get(&id("k", "\"e\"", 1)).unwrap(), block(2, 100));
        assert_eq!(cache.get(&id("k", "\"e\"", 0)).unwrap(), block(1, 100));
        assert_eq!(cache.stats.memory_hits.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats.disk_hits.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn concurrent_readers_of_one_block_fetch_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(cache(dir.path(), 1 << 20, 1 << 20));
        let fetches = Arc::new(AtomicUsize::new(0));
        let block_id = id("k", "\"e\"", 0);
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, fetches, block_id) = (cache.clone(), fetches.clone(), block_id.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch(&block_id, || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok(block(5, 1000))
                        })
                        .await
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap(), block(5, 1000));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.misses.load(Ordering::Relaxed), 1);
        // A failed fetch is not cached: the next caller fetches again.
        let other = id("k", "\"e\"", 1);
        let err = cache
            .get_or_fetch(&other, || async { Err("boom".into()) })
            .await;
        assert_eq!(err.unwrap_err(), "boom");
        let ok = cache
            .get_or_fetch(&other, || async { Ok(block(6, 10)) })
            .await;
        assert_eq!(ok.unwrap(), block(6, 10));
    }
}
