//! The disk tier: blocks in this mount's directory, bounded in bytes with
//! least-recently-used eviction.
//!
//! Each version of an object has one data file, its cached blocks at their
//! places in the object and holes elsewhere, and one header file, a slot per
//! block (see `super::block_file`). A block is counted against the bound from
//! the moment it is reserved, before a byte is written, so the files on disk
//! never exceed the bound, not even while many are being written; an evicted
//! block's range is punched out of its data file and its slot out of the header
//! file, and the files go with their version's last block. A block is read only once its writer has marked it written, so a
//! reader never sees half a block. Recently used blocks are kept open with
//! their checked headers, so a small read costs one read of its chunk: no path
//! lookup, no header read.
//!
//! A version whole on disk can be pinned ([`DiskTier::pin_whole`]): no block of
//! it is evicted or punched until the pin is dropped, so the kernel can read
//! its data file directly meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::block_file::{self, BlockKey, DataFile, DirectWrites, OpenBlock, ReadFailure, punch};
use super::tier::Tier;
use super::{CacheStats, Span};
use crate::local_dir::LocalDir;

/// One block counted against the bound.
struct Entry {
    size: u64,
    /// False while the block is being written: it is counted, but not read.
    written: bool,
    version: String,
    /// Which data file of the version the block is in (see [`Version::seq`]).
    seq: u64,
    /// Tells this reservation of the block from a later one.
    ticket: u64,
    /// The block's place in the data file.
    start: u64,
    len: u64,
    /// Its header's slot in the header file.
    header: Range<u64>,
}

/// The files of one version.
struct Version {
    /// The version's key and ETag: a version name (a hash of them) shared
    /// by another version is a miss, never the other's data.
    key: String,
    etag: String,
    /// Names the data file (`{seq:x}.data`) and the header file
    /// (`{seq:x}.headers`): a version whose last block went and that is
    /// cached again gets new files, which no writer of the old ones can touch.
    seq: u64,
    /// Created by the first block written.
    file: Option<Arc<DataFile>>,
    /// Its blocks counted in `Files::entries`, written or being written.
    blocks: usize,
    /// While any pin is held, none of its blocks is evicted.
    pins: usize,
    /// The file was handed to a reader of its own (the kernel): its bytes
    /// may be read, and mapped, for as long as that reader keeps it, even
    /// after its last handle is released. No range of it is punched: it goes
    /// whole, unlinked, when a block of it must go.
    exposed: bool,
}

struct Files {
    /// Block name -> its entry, least recently used first.
    entries: LruCache<String, Entry>,
    /// Version name -> its data file.
    versions: HashMap<String, Version>,
    used: u64,
    /// The mount is going: no block is reserved any more (see
    /// [`DiskTier::stop`]).
    stopped: bool,
}

impl Files {
    /// Stops counting `entry`, which left `entries`: punches its range out
    /// of the data file and its header's slot out of the header file, and
    /// removes both files with the version's last block. Done under the lock,
    /// so no block of the same name can be reserved (and written) in between.
    /// Returns the blocks that went with it: all of its version's when the
    /// version is pinned or handed over (a reader may hold its data file: it
    /// goes whole, never punched) or its range could not be punched (the files
    /// are then removed whole, to keep the bound).
    fn release(&mut self, entry: Entry, dir: &LocalDir) -> Vec<String> {
        self.used -= entry.size;
        let Some(version) = self.versions.get_mut(&entry.version) else {
            return Vec::new();
        };
        if version.seq != entry.seq {
            return Vec::new();
        }
        version.blocks -= 1;
        if version.blocks == 0 {
            self.versions.remove(&entry.version);
            remove_version_files(dir, entry.seq);
            return Vec::new();
        }
        if version.exposed || version.pins > 0 {
            // Another reader may hold the file, or is about to be handed it
            // (pinned, not yet handed over): it goes whole, intact.
            return self.drop_version(&entry.version, dir);
        }
        let Some(file) = &version.file else {
            return Vec::new();
        };
        let punched = punch(&file.file, entry.start, entry.len)
            .and_then(|()| file.punch_header(dir, entry.header));
        match punched {
            Ok(()) => Vec::new(),
            Err(e) => {
                debug!(error = %e, "cannot punch a block out of its data file; dropping the version");
                self.drop_version(&entry.version, dir)
            }
        }
    }

    /// Drops every block of `version` and its data file.
    fn drop_version(&mut self, version: &str, dir: &LocalDir) -> Vec<String> {
        let Some(gone) = self.versions.remove(version) else {
            return Vec::new();
        };
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.version == version && e.seq == gone.seq)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &names {
            if let Some(entry) = self.entries.pop(name) {
                self.used -= entry.size;
            }
        }
        remove_version_files(dir, gone.seq);
        names
    }
}

fn data_name(seq: u64) -> String {
    format!("{seq:x}.data")
}

fn headers_name(seq: u64) -> String {
    format!("{seq:x}.headers")
}

/// Removes the files of the version `seq`.
fn remove_version_files(dir: &LocalDir, seq: u64) {
    let _ = dir.remove_file(&data_name(seq));
    let _ = dir.remove_file(&headers_name(seq));
}

pub struct DiskTier {
    dir: LocalDir,
    capacity: u64,
    files: Arc<Mutex<Files>>,
    /// Blocks kept open, their headers checked.
    open_files: Mutex<LruCache<String, Arc<OpenBlock>>>,
    /// Where evictions and damaged files are counted.
    stats: Arc<CacheStats>,
    /// Tags the headers this tier writes; a block without its tag is never read.
    key: BlockKey,
    direct: DirectWrites,
}

/// A version whole on disk, pinned: its data file, opened anew for the reader
/// it is handed to, and the pin, which lets its blocks go when dropped.
pub struct WholeFile {
    pub file: File,
    pin: Pin,
}

struct Pin {
    files: Arc<Mutex<Files>>,
    version: String,
    seq: u64,
}

impl WholeFile {
    /// The file was handed to a reader of its own (the kernel), which may
    /// keep it past the pin: from now on it is never punched, only removed
    /// whole (see [`Version::exposed`]).
    pub fn handed_over(&self) {
        let mut files = self.pin.files.lock();
        if let Some(version) = files.versions.get_mut(&self.pin.version)
            && version.seq == self.pin.seq
        {
            version.exposed = true;
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut files = self.files.lock();
        if let Some(version) = files.versions.get_mut(&self.version)
            && version.seq == self.seq
        {
            version.pins -= 1;
        }
    }
}

impl DiskTier {
    /// A tier of block files in `dir`, at most `capacity` bytes.
    pub fn new(dir: LocalDir, capacity: u64, stats: Arc<CacheStats>) -> std::io::Result<Self> {
        Ok(Self {
            key: BlockKey::random()?,
            direct: DirectWrites::default(),
            dir,
            capacity,
            files: Arc::new(Mutex::new(Files {
                entries: LruCache::unbounded(),
                versions: HashMap::new(),
                used: 0,
                stopped: false,
            })),
            open_files: Mutex::new(LruCache::new(open_files_limit())),
            stats,
        })
    }

    /// Where a file of the tier is, for tests that change it behind the
    /// tier's back: a block's version's header file, or (`data`) its data file.
    #[cfg(test)]
    pub(super) fn path(&self, span: &Span, data: bool) -> std::path::PathBuf {
        let files = self.files.lock();
        let entry = files.entries.peek(&span.name).expect("a block held");
        let name = match data {
            true => data_name(entry.seq),
            false => headers_name(entry.seq),
        };
        self.dir.path().join(name)
    }

    /// Forgets every block and takes no more, at unmount: a block fetched
    /// later is not written, so the mount's directory, which goes next, stays
    /// empty but for the writes already under way.
    pub(super) fn stop(&self) {
        self.files.lock().stopped = true;
        self.clear();
    }

    /// Counts the block `span` of `data` against the bound before it is
    /// written, evicting unpinned blocks to make room. False when it cannot
    /// fit, or is held or being written already.
    pub(super) fn reserve(&self, span: &Span, data: &Bytes) -> bool {
        let name = span.name.as_str();
        let size = block_file::file_len(&span.id, data.len());
        if size > self.capacity {
            return false;
        }
        let mut guard = self.files.lock();
        if guard.stopped || guard.entries.get(name).is_some() {
            return false;
        }
        let files = &mut *guard;
        let version = files
            .versions
            .entry(span.version.clone())
            .or_insert_with(|| Version {
                key: span.id.key.clone(),
                etag: span.id.etag.clone(),
                seq: next_name(),
                file: None,
                blocks: 0,
                pins: 0,
                exposed: false,
            });
        if version.key != span.id.key || version.etag != span.id.etag {
            // Another version's name: not cached on disk.
            return false;
        }
        version.blocks += 1;
        let entry = Entry {
            size,
            written: false,
            version: span.version.clone(),
            seq: version.seq,
            ticket: next_name(),
            start: span.start,
            len: data.len() as u64,
            header: block_file::slot(&span.id),
        };
        files.entries.put(name.to_string(), entry);
        files.used += size;
        let mut gone = Vec::new();
        let mut kept = Vec::new();
        while files.used > self.capacity {
            let Some((victim, entry)) = files.entries.pop_lru() else {
                break;
            };
            let pinned = files
                .versions
                .get(&entry.version)
                .is_some_and(|v| v.pins > 0);
            if pinned || victim == name {
                kept.push((victim, entry));
                continue;
            }
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            gone.extend(files.release(entry, &self.dir));
            gone.push(victim);
        }
        // Pinned blocks stay, in their order, as most recently used (a pinned
        // version is being read); this block, the newest, stays newest.
        for (victim, entry) in kept {
            files.entries.put(victim, entry);
        }
        let fits = files.used <= self.capacity;
        if !fits && let Some(entry) = files.entries.pop(name) {
            gone.extend(files.release(entry, &self.dir));
        }
        drop(guard);
        // An open descriptor would keep an evicted block's file in use.
        let mut open = self.open_files.lock();
        for victim in gone.iter().map(String::as_str).chain([name]) {
            open.pop(victim);
        }
        fits
    }

    /// Writes a reserved block into its version's data file and its header,
    /// unless it was evicted (or the tier cleared) meanwhile; `direct`: past
    /// the page cache, where it can be (see [`DirectWrites`]). Blocking.
    pub(super) fn write_reserved(&self, span: &Span, data: &Bytes, direct: bool) {
        let (id, name) = (&span.id, span.name.as_str());
        let Some((file, seq, ticket)) = self.data_file(span) else {
            return;
        };
        let direct = direct.then_some(&self.direct);
        let written = file
            .write_at(&self.dir, data, span.start, direct)
            .and_then(|()| {
                block_file::write_header(&self.dir, &file, span.start, id, data, &self.key)
            });
        let mut files = self.files.lock();
        let ours = files
            .entries
            .peek(name)
            .is_some_and(|e| !e.written && e.ticket == ticket);
        let placed = match written {
            Ok(block) if ours => {
                files.entries.peek_mut(name).expect("held").written = true;
                Some(block)
            }
            Ok(_) => None,
            Err(e) => {
                if ours {
                    debug!(key = id.key, block = id.index, error = %e, "block not cached on disk");
                }
                None
            }
        };
        if placed.is_none() {
            if ours {
                let entry = files.entries.pop(name).expect("held");
                let gone = files.release(entry, &self.dir);
                drop(files);
                self.close(&gone);
                return;
            }
            // Evicted while written: what was written is taken back, unless
            // the block was reserved again meanwhile (its new writer writes
            // the same bytes and the same header) or the version's files are
            // others by now.
            let same_file = files
                .versions
                .get(&span.version)
                .is_some_and(|v| v.seq == seq && !v.exposed);
            if same_file && !files.entries.contains(name) {
                let _ = punch(&file.file, span.start, data.len() as u64);
                let _ = file.punch_header(&self.dir, block_file::slot(id));
            }
            return;
        }
        drop(files);
        if let Some(block) = placed {
            // Kept open: the first read of a block just written needs no path
            // lookup and no header read.
            self.keep_open(name, Arc::new(block));
        }
    }

    /// The data file a reserved block goes into, created with the version's
    /// first block, its version's seq and the block's ticket; `None` when
    /// the block is no longer reserved.
    fn data_file(&self, span: &Span) -> Option<(Arc<DataFile>, u64, u64)> {
        let mut files = self.files.lock();
        let files = &mut *files;
        let entry = files.entries.peek(&span.name).filter(|e| !e.written)?;
        let ticket = entry.ticket;
        let version = files
            .versions
            .get_mut(&span.version)
            .filter(|v| v.seq == entry.seq)?;
        if version.file.is_none() {
            match DataFile::create(
                &self.dir,
                &data_name(version.seq),
                &headers_name(version.seq),
            ) {
                Ok(file) => version.file = Some(Arc::new(file)),
                Err(e) => {
                    debug!(error = %e, "cannot create a data file");
                    let entry = files.entries.pop(&span.name).expect("held");
                    files.release(entry, &self.dir);
                    return None;
                }
            }
        }
        Some((version.file.clone()?, version.seq, ticket))
    }

    /// Pins the version `version` of `key` at `etag`, of `blocks` blocks,
    /// if every one of them is written, and opens its data file anew (the
    /// tier's own descriptor reads without read-ahead), checked to be the
    /// same file and `size` bytes long. Marks its blocks recently used.
    pub(super) fn pin_whole(
        &self,
        (version, key, etag): (&str, &str, &str),
        blocks: &[String],
        size: u64,
    ) -> Option<WholeFile> {
        let (seq, ours) = {
            let mut files = self.files.lock();
            let seq = files
                .versions
                .get(version)
                .filter(|v| v.key == key && v.etag == etag)?
                .seq;
            let whole = blocks.iter().all(|name| {
                files
                    .entries
                    .get(name)
                    .is_some_and(|e| e.written && e.version == version && e.seq == seq)
            });
            let held = files.versions.get_mut(version).filter(|_| whole)?;
            held.pins += 1;
            (held.seq, held.file.as_ref().map(|f| f.file.clone()))
        };
        let pin = Pin {
            files: self.files.clone(),
            version: version.to_string(),
            seq,
        };
        let ours = ours?;
        let file = self.dir.open_file(&data_name(seq)).ok()?;
        let (theirs, ours) = (file.metadata().ok()?, ours.metadata().ok()?);
        let same = (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) && ours.len() == size;
        same.then_some(WholeFile { file, pin })
    }

    /// Remembers an open block, unless it was evicted meanwhile (its
    /// descriptor must not keep the space in use).
    fn keep_open(&self, name: &str, block: Arc<OpenBlock>) {
        self.open_files.lock().put(name.to_string(), block);
        if !self.files.lock().entries.contains(name) {
            self.open_files.lock().pop(name);
        }
    }

    /// Closes the blocks `names` kept open.
    pub(super) fn close(&self, names: &[String]) {
        let mut open = self.open_files.lock();
        for name in names {
            open.pop(name);
        }
    }

    /// Whether block `name` is still the one written under `ticket`.
    fn still_holds(&self, name: &str, ticket: u64) -> bool {
        let files = self.files.lock();
        files
            .entries
            .peek(name)
            .is_some_and(|e| e.written && e.ticket == ticket)
    }

    /// Drops a block that is gone or damaged.
    fn forget(&self, name: &str) {
        self.open_files.lock().pop(name);
        let mut files = self.files.lock();
        if files.entries.peek(name).is_some_and(|e| e.written)
            && let Some(entry) = files.entries.pop(name)
        {
            let gone = files.release(entry, &self.dir);
            drop(files);
            self.close(&gone);
        }
    }

    /// The block `span` open for reading: kept open, or its header read and
    /// checked now.
    fn open_block(&self, span: &Span) -> Result<Arc<OpenBlock>, ReadFailure> {
        let name = span.name.as_str();
        if let Some(block) = self.open_files.lock().get(name).cloned() {
            return Ok(block);
        }
        let file = {
            let files = self.files.lock();
            let entry = files.entries.peek(name).filter(|e| e.written);
            let found = entry.and_then(|e| {
                let version = files.versions.get(&e.version).filter(|v| v.seq == e.seq)?;
                version.file.clone()
            });
            found.ok_or(ReadFailure::Missing)?
        };
        let block = OpenBlock::open(&self.dir, &file, span.start, &span.id, span.len, &self.key)?;
        let block = Arc::new(block);
        self.keep_open(name, block.clone());
        Ok(block)
    }
}

impl Tier for DiskTier {
    /// Reads the wanted part of a block, checking the chunks read.
    fn get(&self, span: &Span) -> Option<Bytes> {
        let name = span.name.as_str();
        // Marks the block recently used; skips one being written or evicted.
        let ticket = self
            .files
            .lock()
            .entries
            .get(name)
            .filter(|e| e.written)
            .map(|e| e.ticket)?;
        match self
            .open_block(span)
            .and_then(|block| block.read(span.want.clone()))
        {
            Ok(data) => Some(data),
            Err(ReadFailure::Unreadable(why)) => {
                debug!(
                    key = span.id.key,
                    block = span.id.index,
                    why,
                    "cache block not read now"
                );
                None
            }
            Err(ReadFailure::Missing) => {
                // Evicted between the check and the read.
                self.forget(name);
                None
            }
            Err(ReadFailure::Damaged(_)) if !self.still_holds(name, ticket) => {
                // Evicted (and punched) while it was read: a miss.
                self.close(&[name.to_string()]);
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
            self.write_reserved(span, block, true);
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

    /// Forgets every block; the directory itself is the mount's to remove.
    fn clear(&self) {
        self.open_files.lock().clear();
        let mut files = self.files.lock();
        for version in files.versions.values() {
            remove_version_files(&self.dir, version.seq);
        }
        files.entries.clear();
        files.versions.clear();
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

/// Distinct names for the files of the tier.
fn next_name() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How many blocks to keep open: plenty for the random reads of a large file,
/// and never more than a quarter of the descriptors the process may have.
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

    #[test]
    fn a_stopped_tier_writes_no_more_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDir::open_or_create(dir.path()).unwrap();
        let tier = DiskTier::new(local, 1 << 20, Arc::default()).unwrap();
        let id = |index| BlockId {
            key: "k".into(),
            etag: "\"e\"".into(),
            index,
        };
        let block = Bytes::from(vec![7u8; 1000]);
        tier.put(&super::super::tier::whole(&id(0), 1000), &block);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // At unmount: the directory goes next, and nothing may land in it.
        tier.stop();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let later = super::super::tier::whole(&id(1), 1000);
        tier.put(&later, &block);
        assert!(!tier.holds(&later));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a block fetched after the stop was written"
        );
    }
}
