//! The disk tier: block files in this mount's directory, bounded in bytes with
//! least-recently-used eviction.
//!
//! A file is counted against the bound from the moment it is reserved, before
//! a byte is written, so the files on disk never exceed the bound, not even
//! while many are being written. Files are written under a temporary name and
//! renamed into place, so a reader never sees half a block. Recently used files
//! are kept open with their checked headers (see `super::block_file`), so a
//! small read costs one read of its chunk: no path lookup, no header read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::block_file::{self, BlockKey, OpenBlock, ReadFailure};
use super::tier::Tier;
use super::{CacheStats, Span};
use crate::local_dir::LocalDir;

struct Entry {
    size: u64,
    /// False while the file is being written: it is counted, but not read.
    written: bool,
}

struct Files {
    /// Block file name -> its entry, least recently used first.
    entries: LruCache<String, Entry>,
    used: u64,
}

pub struct DiskTier {
    dir: LocalDir,
    capacity: u64,
    files: Mutex<Files>,
    /// Block files kept open, their headers checked.
    open_files: Mutex<LruCache<String, Arc<OpenBlock>>>,
    /// Where evictions and damaged files are counted.
    stats: Arc<CacheStats>,
    /// Tags the files this tier writes; a file without its tag is never read.
    key: BlockKey,
}

impl DiskTier {
    /// A tier of block files in `dir`, at most `capacity` bytes.
    pub fn new(dir: LocalDir, capacity: u64, stats: Arc<CacheStats>) -> std::io::Result<Self> {
        Ok(Self {
            key: BlockKey::random()?,
            dir,
            capacity,
            files: Mutex::new(Files {
                entries: LruCache::unbounded(),
                used: 0,
            }),
            open_files: Mutex::new(LruCache::new(open_files_limit())),
            stats,
        })
    }

    /// Where a block file is, for tests that change it behind the tier's back.
    #[cfg(test)]
    pub(super) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Counts the file for `data` against the bound before it is written,
    /// evicting files to make room. False when it can never fit.
    pub(super) fn reserve(&self, span: &Span, data: &Bytes) -> bool {
        let name = span.name.as_str();
        let size = block_file::file_len(&span.id, data.len());
        if size > self.capacity {
            return false;
        }
        let evicted = {
            let mut files = self.files.lock();
            let entry = Entry {
                size,
                written: false,
            };
            if let Some(old) = files.entries.put(name.to_string(), entry) {
                files.used -= old.size;
            }
            files.used += size;
            let mut evicted = Vec::new();
            while files.used > self.capacity {
                let Some((victim, entry)) = files.entries.pop_lru() else {
                    break;
                };
                files.used -= entry.size;
                evicted.push(victim);
            }
            evicted
        };
        {
            // An open descriptor would keep an evicted file's space in use.
            let mut open = self.open_files.lock();
            for victim in evicted.iter().map(String::as_str).chain([name]) {
                open.pop(victim);
            }
        }
        for victim in evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            // A file still being written is removed by its writer, which finds
            // its entry gone.
            let _ = self.dir.remove_file(&victim);
        }
        true
    }

    /// Writes a reserved block file and puts it in place, unless it was evicted
    /// (or the tier cleared) meanwhile. Blocking.
    pub(super) fn write_reserved(&self, span: &Span, data: &Bytes) {
        let (id, name) = (&span.id, span.name.as_str());
        let temporary = format!("{name}.tmp-{:x}", next_temporary());
        let written = block_file::write_block(&self.dir, &temporary, id, data, &self.key);
        let mut files = self.files.lock();
        let placed = match (written, files.entries.peek_mut(name)) {
            (Ok(block), Some(entry)) if !entry.written => {
                let renamed = self.dir.rename(&temporary, name);
                entry.written = renamed.is_ok();
                renamed.ok().map(|()| block)
            }
            // Evicted while written, or written twice at once (the other won).
            (Ok(_), _) => None,
            (Err(e), Some(entry)) if !entry.written => {
                debug!(key = id.key, block = id.index, error = %e, "block not cached on disk");
                let size = entry.size;
                files.entries.pop(name);
                files.used -= size;
                None
            }
            (Err(_), _) => None,
        };
        drop(files);
        match placed {
            // Kept open: the first read of a block just written needs no path
            // lookup and no header read.
            Some(block) => self.keep_open(name, block),
            None => {
                let _ = self.dir.remove_file(&temporary);
            }
        }
    }

    /// Remembers an open block file, unless it was evicted meanwhile (its
    /// descriptor must not keep the space in use).
    fn keep_open(&self, name: &str, block: OpenBlock) {
        self.open_files
            .lock()
            .put(name.to_string(), Arc::new(block));
        if !self.files.lock().entries.contains(name) {
            self.open_files.lock().pop(name);
        }
    }

    /// Drops a file that is gone or damaged.
    fn forget(&self, name: &str) {
        self.open_files.lock().pop(name);
        let mut files = self.files.lock();
        if files.entries.peek(name).is_some_and(|e| e.written)
            && let Some(entry) = files.entries.pop(name)
        {
            files.used -= entry.size;
            let _ = self.dir.remove_file(name);
        }
    }
}

impl Tier for DiskTier {
    /// Reads the wanted part of a block from its file, checking the chunks read.
    fn get(&self, span: &Span) -> Option<Bytes> {
        let name = span.name.as_str();
        // Marks the file recently used; skips one being written or evicted.
        let usable = self
            .files
            .lock()
            .entries
            .get(name)
            .is_some_and(|e| e.written);
        if !usable {
            return None;
        }
        let opened = self.open_files.lock().get(name).cloned();
        let read = match opened {
            Some(block) => block.read(span.want.clone()),
            None => {
                OpenBlock::open(&self.dir, name, &span.id, span.len, &self.key).and_then(|block| {
                    let data = block.read(span.want.clone());
                    self.keep_open(name, block);
                    data
                })
            }
        };
        match read {
            Ok(data) => Some(data),
            Err(ReadFailure::Missing) => {
                // Evicted between the check and the read.
                self.forget(name);
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
                self.forget(name);
                None
            }
        }
    }

    fn holds(&self, span: &Span) -> bool {
        self.files
            .lock()
            .entries
            .peek(&span.name)
            .is_some_and(|e| e.written)
    }

    fn put(&self, span: &Span, block: &Bytes) {
        if self.reserve(span, block) {
            self.write_reserved(span, block);
        }
    }

    fn used(&self) -> u64 {
        self.files.lock().used
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn remove(&self, span: &Span) {
        self.forget(&span.name);
    }

    /// Forgets every file; the directory itself is the mount's to remove.
    fn clear(&self) {
        self.open_files.lock().clear();
        let mut files = self.files.lock();
        for (name, _) in files.entries.iter() {
            let _ = self.dir.remove_file(name);
        }
        files.entries.clear();
        files.used = 0;
    }
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Distinct temporary names for blocks written at once.
fn next_temporary() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
    use crate::cache::BlockId;

    #[test]
    fn the_disk_tier_keeps_the_tier_contract() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlockId {
            key: "dir/k".into(),
            etag: "\"e\"".into(),
            index: 0,
        };
        let file = block_file::file_len(&id, 1000);
        let local = LocalDir::open_or_create(dir.path()).unwrap();
        let tier = DiskTier::new(local, 5 * file, Arc::default()).unwrap();
        super::super::tier::conformance::check(&tier, 1000);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "clear removes the files"
        );
    }
}
