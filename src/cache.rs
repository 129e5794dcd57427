//! The local block cache: object data read once from S3, then served from memory
//! or local disk.
//!
//! Data is cached in blocks of [`BLOCK_SIZE`] keyed by (object key, ETag, block
//! index). The ETag in the key means a replaced object can never be served from
//! the old object's blocks: its new ETag names other blocks, and the old ones age
//! out.
//!
//! Two tiers: a small LRU of whole blocks in memory in front of an LRU of block
//! files on disk, bounded in bytes. The memory tier takes blocks that arrive in
//! a buffer of their own (a block read whole from disk, a single-block fetch), so
//! it never pins a larger fetched buffer and never costs a copy. Each mount has a directory of its own under
//! the cache directory (mode 0700, files 0600), emptied at mount and removed at
//! unmount; directories left by mounts that died are removed by the next mount
//! that uses the same cache directory (a held `flock` tells live ones apart). The
//! cache never outlives its mount: a remount may run with other credentials, and
//! must not serve what only the old ones were allowed to read.
//!
//! Each block file holds a header with the block's identity and a CRC32C of every
//! 4 KiB chunk, then the data. A read checks only the chunks it touches, so a
//! 4 KiB random read costs one small read, not a whole block. A file that does not
//! match (torn write, disk corruption, hash collision) is a miss and is removed,
//! never an error. Files are written under a temporary name and renamed into
//! place, so a reader never sees half a block.
//!
//! Readers of a block nobody has yet fetch it once: the first claims it and fetches
//! it (together with the neighbouring blocks it needs, in one ranged GET), the
//! others wait for its result; if that fetch fails, each waiter fetches for itself.

use std::collections::HashMap;
use std::fs::{self, File};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{Semaphore, broadcast};
use tracing::{debug, info, warn};

use crate::store::{Operation, StoreError, StoreResult};

/// The unit of caching. 1 MiB keeps the number of files small (1024 per GiB)
/// while a random read that misses fetches little more than it needs.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// The unit of checksumming inside a block file: what a small read reads and
/// verifies. One page: a 4 KiB random read costs one 4 KiB disk read (plus the
/// block's header, which the page cache soon holds), as from a plain file.
const CHUNK: usize = 4096;

/// Identifies the first bytes of a block file: "s3vol block, format 2".
const MAGIC: &[u8; 8] = b"S3VBLK02";

/// Block files being written at once, in bytes. When the disk falls this far
/// behind, fetches wait for it rather than holding ever more data in memory
/// (writes land in the page cache, so this is rarely reached).
const WRITE_BACKLOG: usize = 32 << 20;

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
    /// Block reads answered from memory.
    pub memory_hits: AtomicU64,
    /// Block reads answered from disk.
    pub disk_hits: AtomicU64,
    /// Blocks fetched from S3.
    pub misses: AtomicU64,
    /// Bytes delivered from either tier.
    pub bytes_from_cache: AtomicU64,
    /// Block files removed to stay within the size bound.
    pub evictions: AtomicU64,
    /// Block files found damaged and removed.
    pub corrupt: AtomicU64,
}

/// Where the cache lives and how large each tier may grow.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The directory shared by mounts; each mount takes a subdirectory.
    pub dir: PathBuf,
    pub disk_bytes: u64,
    pub memory_bytes: u64,
}

struct DiskEntry {
    size: u64,
    /// False while the file is being written: it is counted, but not read.
    written: bool,
}

struct DiskState {
    /// Block file name -> its entry, least recently used first.
    files: LruCache<String, DiskEntry>,
    used: u64,
}

struct MemoryState {
    blocks: LruCache<BlockId, Bytes>,
    used: u64,
}

pub struct BlockCache {
    config: CacheConfig,
    /// This mount's own directory.
    dir: PathBuf,
    disk: Mutex<DiskState>,
    memory: Mutex<MemoryState>,
    /// Blocks being fetched right now, and who waits for them.
    fetching: Mutex<HashMap<BlockId, broadcast::Sender<Bytes>>>,
    /// Fetched blocks whose files are being written.
    writing: Mutex<HashMap<BlockId, Bytes>>,
    /// Block files kept open with their checked headers, so a small read costs
    /// one read of its chunk: no path lookup, no header read.
    open_files: Mutex<LruCache<String, Arc<OpenBlock>>>,
    write_backlog: Arc<Semaphore>,
    pub stats: CacheStats,
    /// Held for the mount's life: tells later mounts this directory is in use.
    _lock: Flock<File>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("dir", &self.dir)
            .field("disk_bytes", &self.config.disk_bytes)
            .field("memory_bytes", &self.config.memory_bytes)
            .finish()
    }
}

impl BlockCache {
    /// Opens a new, empty cache in a subdirectory of `config.dir` (both created
    /// mode 0700), after removing the subdirectories of mounts that are gone.
    pub fn open(config: CacheConfig) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)?;
        remove_abandoned(&config.dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = config
            .dir
            .join(format!("mount-{}-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let lock = lock_file(&dir, true)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::WouldBlock, "a new cache directory is locked")
        })?;
        Ok(Self {
            dir,
            disk: Mutex::new(DiskState {
                files: LruCache::unbounded(),
                used: 0,
            }),
            memory: Mutex::new(MemoryState {
                blocks: LruCache::unbounded(),
                used: 0,
            }),
            fetching: Mutex::new(HashMap::new()),
            writing: Mutex::new(HashMap::new()),
            open_files: Mutex::new(LruCache::new(open_files_limit())),
            write_backlog: Arc::new(Semaphore::new(WRITE_BACKLOG)),
            stats: CacheStats::default(),
            config,
            _lock: lock,
        })
    }

    /// This mount's own directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bound on block files, in bytes.
    pub fn capacity(&self) -> u64 {
        self.config.disk_bytes
    }

    /// Removes every block file and this mount's directory; called at unmount.
    /// Later writes of blocks fail quietly.
    pub fn close(&self) {
        self.open_files.lock().unwrap().clear();
        let mut disk = self.disk.lock().unwrap();
        disk.files.clear();
        disk.used = 0;
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "cannot remove the cache directory");
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Bytes of block files on disk now (and being written).
    pub fn disk_used(&self) -> u64 {
        self.disk.lock().unwrap().used
    }

    /// Bytes `range` of `size`-byte object `key` at version `etag`, in pieces
    /// whose concatenation is the range: from memory or disk where the cache has
    /// the blocks, else from `fetch`. `fetch` is asked for whole blocks, several
    /// neighbouring ones in one call, and must return exactly the bytes asked for;
    /// what it returns is cached.
    pub async fn read<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        etag: &str,
        size: u64,
        range: Range<u64>,
        fetch: F,
    ) -> StoreResult<Vec<Bytes>>
    where
        F: Fn(Range<u64>) -> Fut,
        Fut: Future<Output = StoreResult<Bytes>>,
    {
        let range = range.start..range.end.min(size);
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let spans: Vec<Span> = (range.start / BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE))
            .map(|index| Span::new(key, etag, size, index, &range))
            .collect();
        let mut pieces: Vec<Option<Bytes>> = spans.iter().map(|s| self.memory_get(s)).collect();

        let on_disk: Vec<usize> = {
            let disk = self.disk.lock().unwrap();
            (0..spans.len())
                .filter(|&i| {
                    pieces[i].is_none()
                        && disk.files.peek(&spans[i].name).is_some_and(|e| e.written)
                })
                .collect()
        };
        if !on_disk.is_empty() {
            let cache = self.clone();
            let wanted: Vec<Span> = on_disk.iter().map(|&i| spans[i].clone()).collect();
            let found = tokio::task::spawn_blocking(move || {
                wanted
                    .iter()
                    .map(|span| cache.disk_read(span))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| StoreError::Internal {
                op: Operation::GetObject,
                detail: format!("cache read failed: {e}"),
            })?;
            for (i, data) in on_disk.into_iter().zip(found) {
                pieces[i] = data;
            }
        }

        // Claim what nobody is fetching; wait for the rest.
        let mut claims: Vec<(usize, Claim)> = Vec::new();
        let mut waits: Vec<(usize, broadcast::Receiver<Bytes>)> = Vec::new();
        {
            let mut fetching = self.fetching.lock().unwrap();
            for (i, span) in spans.iter().enumerate() {
                if pieces[i].is_some() {
                    continue;
                }
                match fetching.get(&span.id) {
                    Some(sender) => waits.push((i, sender.subscribe())),
                    None => {
                        fetching.insert(span.id.clone(), broadcast::channel(1).0);
                        claims.push((
                            i,
                            Claim {
                                cache: self.clone(),
                                id: span.id.clone(),
                            },
                        ));
                    }
                }
            }
        }

        // One fetch per run of neighbouring claimed blocks, all at once.
        let runs = split_runs(claims);
        let spans = &spans;
        let fetched = futures::future::try_join_all(runs.into_iter().map(|run| {
            let first = &spans[run[0].0];
            let last = &spans[run[run.len() - 1].0];
            let bytes = first.start..last.start + last.len as u64;
            let fetch = &fetch;
            async move {
                let data = fetch(bytes.clone()).await?;
                check_length(key, &bytes, &data)?;
                let mut out = Vec::with_capacity(run.len());
                let alone = run.len() == 1;
                for (i, claim) in run {
                    let span = &spans[i];
                    let at = (span.start - bytes.start) as usize;
                    let block = data.slice(at..at + span.len);
                    self.insert(span, &block, alone).await;
                    claim.complete(&block);
                    out.push((i, block.slice(span.want.clone())));
                }
                Ok::<_, StoreError>(out)
            }
        }))
        .await?;
        for (i, piece) in fetched.into_iter().flatten() {
            pieces[i] = Some(piece);
        }

        for (i, mut receiver) in waits {
            let span = &spans[i];
            let block = match receiver.recv().await {
                Ok(block) => block,
                Err(_) => {
                    // The fetch we waited for failed: try ourselves.
                    let bytes = span.start..span.start + span.len as u64;
                    let data = fetch(bytes.clone()).await?;
                    check_length(key, &bytes, &data)?;
                    self.insert(span, &data, true).await;
                    data
                }
            };
            pieces[i] = Some(block.slice(span.want.clone()));
        }
        Ok(pieces.into_iter().flatten().collect())
    }

    /// Like [`BlockCache::read`], but only from what the cache holds, and
    /// blocking: `None` unless every block of the range is cached. For reads
    /// answered on the thread that received them.
    pub fn read_cached(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        range: Range<u64>,
    ) -> Option<Vec<Bytes>> {
        let range = range.start..range.end.min(size);
        (range.start / BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE))
            .map(|index| {
                let span = Span::new(key, etag, size, index, &range);
                self.memory_get(&span).or_else(|| self.disk_read(&span))
            })
            .collect()
    }

    fn memory_get(&self, span: &Span) -> Option<Bytes> {
        let remembered = self.memory.lock().unwrap().blocks.get(&span.id).cloned();
        let block = remembered.or_else(|| self.writing.lock().unwrap().get(&span.id).cloned())?;
        if block.len() != span.len {
            return None;
        }
        self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_from_cache
            .fetch_add(span.want.len() as u64, Ordering::Relaxed);
        Some(block.slice(span.want.clone()))
    }

    /// Reads the wanted part of a block from its file, checking the chunks read.
    /// Blocking.
    fn disk_read(&self, span: &Span) -> Option<Bytes> {
        let name = span.name.as_str();
        // Marks the file recently used; skips one being written or evicted.
        if !self
            .disk
            .lock()
            .unwrap()
            .files
            .get(name)
            .is_some_and(|e| e.written)
        {
            return None;
        }
        let opened = self.open_files.lock().unwrap().get(name).cloned();
        let read = match opened {
            Some(block) => block.read(span.want.clone()),
            None => OpenBlock::open(&self.path(name), &span.id, span.len).and_then(|block| {
                let data = block.read(span.want.clone());
                self.keep_open(name, block);
                data
            }),
        };
        match read {
            Ok(data) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_from_cache
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if data.len() == span.len {
                    self.remember(&span.id, &data);
                }
                Some(data)
            }
            Err(ReadFailure::Missing) => {
                // Evicted between the check and the read.
                self.forget_file(name);
                None
            }
            Err(ReadFailure::Damaged(why)) => {
                warn!(
                    key = span.id.key,
                    block = span.id.index,
                    why,
                    "damaged cache block removed"
                );
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                self.forget_file(name);
                None
            }
        }
    }

    /// Caches a block fetched from S3: in memory when it is a buffer of its own
    /// (`alone`), and as a file written in the background. Waits only when the
    /// disk has fallen far behind.
    async fn insert(self: &Arc<Self>, span: &Span, data: &Bytes, alone: bool) {
        let id = &span.id;
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if alone {
            self.remember(id, data);
        }
        let name = span.name.clone();
        let size = file_len(id, data.len());
        if !self.reserve(&name, size) {
            return;
        }
        // Served from here until its file is in place, so nobody fetches it again.
        self.writing
            .lock()
            .unwrap()
            .insert(id.clone(), data.clone());
        let permits = data.len().clamp(1, WRITE_BACKLOG) as u32;
        let Ok(permit) = self.write_backlog.clone().acquire_many_owned(permits).await else {
            self.writing.lock().unwrap().remove(id);
            return;
        };
        let (cache, id, data) = (self.clone(), id.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            cache.write_reserved(&id, &name, &data);
            cache.writing.lock().unwrap().remove(&id);
            drop(permit);
        });
    }

    /// Stores a block in both tiers now, as a fetch would (tests fill the cache
    /// with it). Blocking.
    #[cfg(test)]
    fn put(&self, id: &BlockId, data: &Bytes) {
        self.remember(id, data);
        let name = id.file_name();
        if self.reserve(&name, file_len(id, data.len())) {
            self.write_reserved(id, &name, data);
        }
    }

    /// Counts a file of `size` bytes about to be written, evicting files to make
    /// room. False when it can never fit.
    fn reserve(&self, name: &str, size: u64) -> bool {
        if size > self.config.disk_bytes {
            return false;
        }
        let evicted = {
            let mut disk = self.disk.lock().unwrap();
            let entry = DiskEntry {
                size,
                written: false,
            };
            if let Some(old) = disk.files.put(name.to_string(), entry) {
                disk.used -= old.size;
            }
            disk.used += size;
            let mut evicted = Vec::new();
            while disk.used > self.config.disk_bytes {
                let Some((victim, entry)) = disk.files.pop_lru() else {
                    break;
                };
                disk.used -= entry.size;
                evicted.push(victim);
            }
            evicted
        };
        {
            // An open descriptor would keep an evicted file's space in use.
            let mut open = self.open_files.lock().unwrap();
            for victim in evicted.iter().chain([&name.to_string()]) {
                open.pop(victim);
            }
        }
        for victim in evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            // A file still being written is removed by its writer, which finds
            // its entry gone.
            let _ = fs::remove_file(self.path(&victim));
        }
        true
    }

    /// Writes a reserved block file and puts it in place, unless it was evicted
    /// (or the cache closed) meanwhile.
    fn write_reserved(&self, id: &BlockId, name: &str, data: &Bytes) {
        let temporary = self.path(&format!("{name}.tmp-{:x}", next_temporary()));
        let written = write_block(&temporary, id, data);
        let mut disk = self.disk.lock().unwrap();
        let placed = match (written, disk.files.peek_mut(name)) {
            (Ok(block), Some(entry)) if !entry.written => {
                let renamed = fs::rename(&temporary, self.path(name));
                entry.written = renamed.is_ok();
                renamed.ok().map(|()| block)
            }
            // Evicted while written, or written twice at once (the other won).
            (Ok(_), _) => None,
            (Err(e), Some(entry)) if !entry.written => {
                debug!(key = id.key, block = id.index, error = %e, "block not cached on disk");
                let size = entry.size;
                disk.files.pop(name);
                disk.used -= size;
                None
            }
            (Err(_), _) => None,
        };
        drop(disk);
        match placed {
            // Kept open: the first read of a block just written needs no path
            // lookup and no header read.
            Some(block) => self.keep_open(name, block),
            None => {
                let _ = fs::remove_file(&temporary);
            }
        }
    }

    /// Remembers an open block file, unless it was evicted meanwhile (its
    /// descriptor must not keep the space in use).
    fn keep_open(&self, name: &str, block: OpenBlock) {
        self.open_files
            .lock()
            .unwrap()
            .put(name.to_string(), Arc::new(block));
        if !self.disk.lock().unwrap().files.contains(name) {
            self.open_files.lock().unwrap().pop(name);
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
        self.open_files.lock().unwrap().pop(name);
        let mut disk = self.disk.lock().unwrap();
        if disk.files.peek(name).is_some_and(|e| e.written)
            && let Some(entry) = disk.files.pop(name)
        {
            disk.used -= entry.size;
            let _ = fs::remove_file(self.path(name));
        }
    }
}

/// The part of one block a read wants.
#[derive(Clone)]
struct Span {
    id: BlockId,
    /// The block file's name, worked out once per read.
    name: String,
    /// Where the block starts in the object.
    start: u64,
    /// The block's length (the last block of an object is short).
    len: usize,
    /// The wanted bytes, relative to the block's start.
    want: Range<usize>,
}

impl Span {
    fn new(key: &str, etag: &str, size: u64, index: u64, range: &Range<u64>) -> Self {
        let start = index * BLOCK_SIZE;
        let end = (start + BLOCK_SIZE).min(size);
        let id = BlockId {
            key: key.to_string(),
            etag: etag.to_string(),
            index,
        };
        Self {
            name: id.file_name(),
            id,
            start,
            len: (end - start) as usize,
            want: (range.start.max(start) - start) as usize..(range.end.min(end) - start) as usize,
        }
    }
}

/// A block this reader fetches for everyone; the others are told when it is done,
/// or, when the claim is dropped unfinished, that they must fetch it themselves.
struct Claim {
    cache: Arc<BlockCache>,
    id: BlockId,
}

impl Claim {
    fn complete(self, data: &Bytes) {
        if let Some(sender) = self.cache.fetching.lock().unwrap().remove(&self.id) {
            let _ = sender.send(data.clone());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // After complete() the entry is gone already; removing it again is a no-op.
        self.cache.fetching.lock().unwrap().remove(&self.id);
    }
}

/// Groups claims (in block order) into runs of neighbouring blocks.
fn split_runs(claims: Vec<(usize, Claim)>) -> Vec<Vec<(usize, Claim)>> {
    let mut runs: Vec<Vec<(usize, Claim)>> = Vec::new();
    for (i, claim) in claims {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|(j, _)| j + 1 == i) => run.push((i, claim)),
            _ => runs.push(vec![(i, claim)]),
        }
    }
    runs
}

fn check_length(key: &str, range: &Range<u64>, data: &Bytes) -> StoreResult<()> {
    let expected = range.end - range.start;
    if data.len() as u64 == expected {
        Ok(())
    } else {
        Err(StoreError::ShortBody {
            op: Operation::GetObject,
            key: key.to_string(),
            expected,
            got: data.len() as u64,
        })
    }
}

/// Removes the directories of mounts that are gone: those whose lock nobody holds.
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("mount-"));
        if !ours || !path.is_dir() {
            continue;
        }
        // Held while removing, so a mount that picks the same name waits.
        if let Ok(Some(_lock)) = lock_file(&path, false) {
            info!(dir = %path.display(), "removing the cache of a mount that is gone");
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), error = %e, "cannot remove an abandoned cache");
            }
        }
    }
}

/// Takes the exclusive lock on `dir/lock` without waiting: `None` when another
/// process holds it. The lock lasts as long as the returned value.
fn lock_file(dir: &Path, create: bool) -> io::Result<Option<Flock<File>>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
}

/// Distinct temporary names for blocks written at once.
fn next_temporary() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// The start of a block file: magic, data length, index, key length, ETag
/// length, key, ETag. The chunk CRCs follow.
fn identity(id: &BlockId, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + id.key.len() + id.etag.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&(id.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(id.etag.len() as u32).to_le_bytes());
    out.extend_from_slice(id.key.as_bytes());
    out.extend_from_slice(id.etag.as_bytes());
    out
}

/// Where the data starts: after the identity and the CRCs, padded to a chunk
/// boundary so that reading one chunk reads one page of the disk.
fn header_len(id: &BlockId, len: usize) -> usize {
    let unpadded = MAGIC.len() + 24 + id.key.len() + id.etag.len() + 4 * chunks(len);
    unpadded.next_multiple_of(CHUNK)
}

fn file_len(id: &BlockId, len: usize) -> u64 {
    (header_len(id, len) + len) as u64
}

/// Writes the block file and returns it open for reading.
fn write_block(path: &Path, id: &BlockId, data: &Bytes) -> io::Result<OpenBlock> {
    let crcs: Vec<u32> = data.chunks(CHUNK).map(crc32c::crc32c).collect();
    let header_len = header_len(id, data.len());
    let mut header = identity(id, data.len());
    for crc in &crcs {
        header.extend_from_slice(&crc.to_le_bytes());
    }
    header.resize(header_len, 0);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    random_access(&file);
    file.write_all(&header)?;
    file.write_all(data)?;
    Ok(OpenBlock::new(file, header_len, data.len(), crcs))
}

enum ReadFailure {
    Missing,
    Damaged(String),
}

/// A block file open for reading, its header checked.
struct OpenBlock {
    file: File,
    /// Where the data starts in the file.
    data_start: u64,
    len: usize,
    /// The CRC32C of each chunk.
    crcs: Vec<u32>,
}

impl OpenBlock {
    /// Opens the file in `path` if it holds exactly this block of `len` bytes.
    fn open(path: &Path, id: &BlockId, len: usize) -> Result<Self, ReadFailure> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
            Err(e) => return Err(ReadFailure::Damaged(e.to_string())),
        };
        random_access(&file);
        let header_len = header_len(id, len);
        let file_len = file.metadata().map_err(damaged)?.len();
        if file_len != (header_len + len) as u64 {
            return Err(ReadFailure::Damaged("file has the wrong length".into()));
        }
        let mut header = vec![0u8; header_len];
        file.read_exact_at(&mut header, 0).map_err(damaged)?;
        let expected = identity(id, len);
        if header[..expected.len()] != expected[..] {
            return Err(ReadFailure::Damaged("file holds another block".into()));
        }
        let crcs = header[expected.len()..]
            .chunks_exact(4)
            .take(chunks(len))
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self::new(file, header_len, len, crcs))
    }

    fn new(file: File, header_len: usize, len: usize, crcs: Vec<u32>) -> Self {
        Self {
            file,
            data_start: header_len as u64,
            len,
            crcs,
        }
    }

    /// Bytes `want` of the block, if the chunks holding them are intact.
    fn read(&self, want: Range<usize>) -> Result<Bytes, ReadFailure> {
        let first = want.start / CHUNK;
        let read_start = first * CHUNK;
        let read_end = want.end.div_ceil(CHUNK).saturating_mul(CHUNK).min(self.len);
        let mut data = vec![0u8; read_end - read_start];
        self.file
            .read_exact_at(&mut data, self.data_start + read_start as u64)
            .map_err(damaged)?;
        for (n, chunk) in data.chunks(CHUNK).enumerate() {
            if crc32c::crc32c(chunk) != self.crcs[first + n] {
                return Err(ReadFailure::Damaged("checksum mismatch".into()));
            }
        }
        Ok(Bytes::from(data).slice(want.start - read_start..want.end - read_start))
    }
}

/// Every read of a block file names its exact range; the kernel's read-ahead
/// would only fetch pages nobody asked for (a 4 KiB read would cost 128 KiB).
fn random_access(file: &File) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    // Only a hint: a file system that ignores it reads a little more.
    let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
}

fn damaged(e: io::Error) -> ReadFailure {
    ReadFailure::Damaged(e.to_string())
}

/// How many block files to keep open: plenty for the random reads of a large
/// file, and never more than a quarter of the descriptors the process may have.
fn open_files_limit() -> std::num::NonZeroUsize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft as usize);
    std::num::NonZeroUsize::new((soft / 4).clamp(16, 4096)).expect("at least 16")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicUsize;

    const KIB: u64 = 1024;

    fn cache(dir: &Path, disk: u64, memory: u64) -> Arc<BlockCache> {
        Arc::new(
            BlockCache::open(CacheConfig {
                dir: dir.to_path_buf(),
                disk_bytes: disk,
                memory_bytes: memory,
            })
            .unwrap(),
        )
    }

    fn id(key: &str, etag: &str, index: u64) -> BlockId {
        BlockId {
            key: key.into(),
            etag: etag.into(),
            index,
        }
    }

    fn data(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_add(seed).wrapping_mul(31))
            .collect::<Vec<_>>()
            .into()
    }

    fn span(id: BlockId, len: usize) -> Span {
        Span {
            start: id.index * BLOCK_SIZE,
            name: id.file_name(),
            id,
            len,
            want: 0..len,
        }
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "lock")
            .collect()
    }

    /// A fetch that serves `object` and counts its calls.
    fn fetcher(
        object: Bytes,
        calls: Arc<AtomicUsize>,
    ) -> impl Fn(Range<u64>) -> std::pin::Pin<Box<dyn Future<Output = StoreResult<Bytes>> + Send>>
    {
        move |range| {
            let object = object.clone();
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(object.slice(range.start as usize..range.end as usize))
            })
        }
    }

    fn concat(pieces: Vec<Bytes>) -> Vec<u8> {
        pieces.concat()
    }

    #[test]
    fn the_bound_holds_under_three_times_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 256 * KIB, 32 * KIB);
        for i in 0..48u64 {
            cache.put(&id("k", "\"e\"", i), &data(i as u8, 16 * 1024));
            assert!(cache.disk_used() <= 256 * KIB, "over the bound at {i}");
        }
        let on_disk: u64 = files_in(cache.dir())
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 256 * KIB, "{on_disk} bytes of files");
        assert!(cache.stats.evictions.load(Ordering::Relaxed) > 0);
        // The most recent blocks are there, the oldest are gone.
        let newest = span(id("k", "\"e\"", 47), 16 * 1024);
        assert_eq!(cache.disk_read(&newest).unwrap(), data(47, 16 * 1024));
        assert!(
            cache
                .disk_read(&span(id("k", "\"e\"", 0), 16 * 1024))
                .is_none()
        );
    }

    #[tokio::test]
    async fn reads_three_times_the_capacity_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 4 * BLOCK_SIZE + 4 * KIB;
        let cache = cache(dir.path(), capacity, BLOCK_SIZE);
        let size = 12 * BLOCK_SIZE;
        let object = data(3, size as usize);
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = fetcher(object.clone(), calls.clone());
        for start in (0..size).step_by(BLOCK_SIZE as usize) {
            let got = cache
                .read("k", "\"e\"", size, start..start + BLOCK_SIZE, &fetch)
                .await
                .unwrap();
            assert_eq!(concat(got), object[start as usize..][..BLOCK_SIZE as usize]);
            assert!(cache.disk_used() <= capacity);
        }
        // Background writes finish; the files on disk keep the bound too.
        for _ in 0..100 {
            if cache.write_backlog.available_permits() == WRITE_BACKLOG {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let on_disk: u64 = files_in(cache.dir())
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert!(on_disk <= capacity, "{on_disk} bytes of files");
        assert_eq!(calls.load(Ordering::SeqCst), 12);
        assert!(cache.stats.evictions.load(Ordering::Relaxed) >= 8);
    }

    #[test]
    fn files_are_private_and_the_directory_goes_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("blocks");
        let cache = cache(&shared, 1 << 20, 0);
        cache.put(&id("k", "\"e\"", 0), &data(1, 100));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&shared), 0o700);
        assert_eq!(mode(cache.dir()), 0o700);
        for path in fs::read_dir(cache.dir()).unwrap() {
            assert_eq!(mode(&path.unwrap().path()), 0o600);
        }
        cache.close();
        assert!(!cache.dir().exists());
    }

    #[test]
    fn a_new_mount_removes_what_dead_mounts_left_but_not_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = cache(dir.path(), 1 << 20, 0);
        live.put(&id("k", "\"e\"", 0), &data(1, 100));
        // A mount that died: its directory is there, its lock is not held.
        let dead = dir.path().join("mount-1-0");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        fs::write(dead.join("0123456789abcdef"), b"old block").unwrap();
        let other = dir.path().join("notes");
        fs::create_dir(&other).unwrap();

        let new = cache(dir.path(), 1 << 20, 0);
        assert!(!dead.exists());
        assert!(other.exists(), "only mount directories are touched");
        assert_eq!(
            files_in(live.dir()).len(),
            1,
            "a live mount keeps its blocks"
        );
        assert_ne!(new.dir(), live.dir());
        assert!(files_in(new.dir()).is_empty());
    }

    #[test]
    fn a_corrupt_block_is_a_miss_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 0);
        let block_id = id("k", "\"e\"", 3);
        let len = 3 * CHUNK + 100;
        cache.put(&block_id, &data(9, len));
        let path = cache.path(&block_id.file_name());
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        fs::write(&path, raw).unwrap();
        // The damaged chunk is the last; a read of the first chunk never sees it.
        let first = Span {
            want: 0..4096,
            ..span(block_id.clone(), len)
        };
        assert_eq!(
            cache.disk_read(&first).unwrap(),
            data(9, len).slice(0..4096)
        );
        assert!(cache.disk_read(&span(block_id, len)).is_none());
        assert!(!path.exists());
        assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
        assert_eq!(cache.disk_used(), 0);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 0);
        let (a, b) = (id("a", "\"e\"", 0), id("b", "\"e\"", 0));
        cache.put(&a, &data(1, 1000));
        cache.put(&b, &data(2, 1000));
        let path_a = cache.path(&a.file_name());
        // b's file where a's should be: same length, another identity.
        fs::copy(cache.path(&b.file_name()), &path_a).unwrap();
        assert!(cache.disk_read(&span(a.clone(), 1000)).is_none());
        cache.put(&a, &data(1, 1000));
        let raw = fs::read(&path_a).unwrap();
        fs::write(&path_a, &raw[..raw.len() - 1]).unwrap();
        assert!(cache.disk_read(&span(a, 1000)).is_none());
        assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_new_etag_never_sees_the_old_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 1 << 20);
        let (old, new) = (data(1, 1000), data(2, 1000));
        let calls = Arc::new(AtomicUsize::new(0));
        let got = cache
            .read(
                "k",
                "\"old\"",
                1000,
                0..1000,
                fetcher(old.clone(), calls.clone()),
            )
            .await
            .unwrap();
        assert_eq!(concat(got), old);
        let got = cache
            .read(
                "k",
                "\"new\"",
                1000,
                0..1000,
                fetcher(new.clone(), calls.clone()),
            )
            .await
            .unwrap();
        assert_eq!(concat(got), new);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn memory_serves_first_then_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 150);
        cache.put(&id("k", "\"e\"", 0), &data(1, 100));
        cache.put(&id("k", "\"e\"", 1), &data(2, 100));
        // Block 0 fell out of the 150-byte memory tier; disk still has it.
        let one = span(id("k", "\"e\"", 1), 100);
        let zero = span(id("k", "\"e\"", 0), 100);
        assert_eq!(cache.memory_get(&one).unwrap(), data(2, 100));
        assert!(cache.memory_get(&zero).is_none());
        assert_eq!(cache.disk_read(&zero).unwrap(), data(1, 100));
        assert_eq!(cache.stats.memory_hits.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats.disk_hits.load(Ordering::Relaxed), 1);
        // Read whole from disk, block 0 is in memory again.
        assert!(cache.memory_get(&zero).is_some());
    }

    #[tokio::test]
    async fn a_range_is_served_across_blocks_and_fetched_as_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 64 << 20, 0);
        let size = 5 * BLOCK_SIZE + 1234;
        let object = data(7, size as usize);
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = fetcher(object.clone(), calls.clone());
        let range = BLOCK_SIZE / 2..size;
        let got = cache
            .read("k", "\"e\"", size, range.clone(), &fetch)
            .await
            .unwrap();
        assert_eq!(concat(got), object[range.start as usize..]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one GET for the run");
        // Blocks are fetched whole, so block 0 came too. Once the files are
        // written, every range is served from disk with no fetch.
        while cache.write_backlog.available_permits() < WRITE_BACKLOG {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for range in [
            0..1,
            4095..70_000,
            BLOCK_SIZE - 3..BLOCK_SIZE + 3,
            size - 1..size,
        ] {
            let got = cache
                .read("k", "\"e\"", size, range.clone(), &fetch)
                .await
                .unwrap();
            assert_eq!(
                concat(got),
                object[range.start as usize..range.end as usize]
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.stats.disk_hits.load(Ordering::Relaxed) >= 4);
    }

    #[tokio::test]
    async fn concurrent_readers_of_one_block_fetch_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 1 << 20);
        let object = data(5, 1000);
        let calls = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..8)
            .map(|n| {
                let (cache, fetch) = (cache.clone(), fetcher(object.clone(), calls.clone()));
                tokio::spawn(async move {
                    let range = n * 100..n * 100 + 100;
                    let got = cache.read("k", "\"e\"", 1000, range, fetch).await;
                    concat(got.unwrap())
                })
            })
            .collect();
        for (n, reader) in readers.into_iter().enumerate() {
            assert_eq!(reader.await.unwrap(), object[n * 100..n * 100 + 100]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.misses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached_and_waiters_fetch_for_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = {
            let calls = calls.clone();
            move |_range: Range<u64>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    Err(StoreError::Injected {
                        op: Operation::GetObject,
                        detail: "boom".into(),
                    })
                }
            }
        };
        let first = {
            let (cache, failing) = (cache.clone(), failing.clone());
            tokio::spawn(async move { cache.read("k", "\"e\"", 10, 0..10, failing).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let object = data(6, 10);
        let waiter = cache
            .read(
                "k",
                "\"e\"",
                10,
                0..10,
                fetcher(object.clone(), calls.clone()),
            )
            .await;
        assert!(first.await.unwrap().is_err());
        assert_eq!(concat(waiter.unwrap()), object);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(cache.fetching.lock().unwrap().is_empty());
    }
}
