//! Reading one open object: sequential detection and read-ahead.
//!
//! Each open file handle owns a [`Reader`]. A reader that keeps asking for the bytes
//! right after its last read is *sequential*: the reader then keeps a window of
//! ranged GETs in flight ahead of it, starting small (so opening a file to read its
//! first few bytes costs one small request) and doubling each time the application
//! consumes a whole part, up to a window that keeps several GETs in flight at once,
//! which is what it takes to fill a fast link from S3. A read anywhere else is
//! *random*: it fetches only the aligned 64 KiB blocks it touches and resets the
//! window.
//!
//! Every GET is pinned to the ETag seen at open, so an object replaced while it is
//! read fails the read (ESTALE) instead of returning a mix of two versions.
//!
//! On an encrypted volume, bytes of a version not yet authenticated are released
//! only to a sequential read from its start; the read that reaches the end waits
//! for the tag, and any other read checks the whole version first
//! ([`ObjectVersion::authenticate`]), unless the volume was mounted with
//! `--cse-unauthenticated-ranges`.
//!
//! With a block cache, every fetch goes through it: blocks it holds come from
//! memory or disk, the rest from S3 in whole blocks (a random read then fetches
//! the 1 MiB block it touches, which the next read nearby finds cached). Where
//! the cache holds what comes next, the window starts at its largest.
//!
//! Read-ahead memory comes from the volume's memory budget (`crate::memory`): a
//! part is only requested ahead of need when the budget has room, so many
//! concurrent readers share it instead of multiplying it. A read the application
//! is waiting for right now is always fetched: as a whole part when the budget has
//! room, else at its own size.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::cache::{BlockCache, CachedSource, RangeSource};
use crate::fs::{Decryption, Verdict};
use crate::memory::MemoryBudget;
use crate::store::{ObjectStore, Operation, StoreError, StoreResult};

/// Read-ahead tuning. The defaults are what a fast local or same-region S3 needs.
#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// The first read-ahead window: small, because many files are opened to read a
    /// header and closed again.
    pub initial_window: u64,
    /// The largest window: 8 parts of 8 MiB keep 8 GETs in flight, enough to fill
    /// a 10 Gb/s link at S3's typical per-connection throughput.
    pub max_window: u64,
    /// The largest single ranged GET. Smaller parts start delivering sooner; larger
    /// parts cost fewer requests. 8 MiB is S3's own advice for ranged reads.
    pub part_size: u64,
    /// A random read fetches whole aligned blocks of this size. Servers that do not
    /// set TCP_NODELAY hold a response smaller than one TCP segment until the
    /// client's delayed ACK (~40 ms); 64 KiB spans more than one segment even on
    /// loopback and costs no more time than 4 KiB on any link.
    pub random_block: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            initial_window: 1024 * 1024,
            max_window: 64 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            random_block: 64 * 1024,
        }
    }
}

/// A ranged GET in flight or done.
struct Part {
    range: Range<u64>,
    state: PartState,
    /// Budget held while the part's bytes are in memory; `None` for a part fetched
    /// at the size of a read the application was waiting for, with no room in
    /// the budget.
    _permit: Option<OwnedSemaphorePermit>,
}

enum PartState {
    Pending(JoinHandle<StoreResult<Vec<Bytes>>>),
    /// The part's bytes, in pieces (blocks from the cache need no copying).
    Ready(Vec<Bytes>),
}

impl Part {
    async fn pieces(&mut self) -> StoreResult<&[Bytes]> {
        if let PartState::Pending(task) = &mut self.state {
            let data = match task.await {
                Ok(result) => result?,
                Err(join) => {
                    return Err(StoreError::Internal {
                        op: Operation::GetObject,
                        detail: format!("read-ahead task failed: {join}"),
                    });
                }
            };
            self.state = PartState::Ready(data);
        }
        match &self.state {
            PartState::Ready(pieces) => Ok(pieces),
            PartState::Pending(_) => unreachable!("a part is ready once awaited"),
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let PartState::Pending(task) = &self.state {
            task.abort();
        }
    }
}

/// The version of an object a handle reads, and where its bytes come from.
#[derive(Clone)]
pub struct ObjectVersion {
    /// Its stored bytes: the block cache in front of the store, or the store.
    /// The cache holds what S3 holds: ciphertext, at the same offsets.
    pub source: Arc<dyn RangeSource>,
    pub key: Arc<str>,
    pub etag: Arc<str>,
    /// The size the file shows: of the plaintext, when it is encrypted.
    pub size: u64,
    /// The object's content key, on a volume with client-side encryption.
    pub decryption: Option<Arc<Decryption>>,
    /// Bytes of an encrypted version are released only once it is
    /// authenticated, but to a sequential read from its start (whose end
    /// waits for the tag). Off with `--cse-unauthenticated-ranges`.
    pub authenticate_first: bool,
    /// Where a whole check takes its memory from.
    pub memory: Arc<MemoryBudget>,
}

/// A version of an object as the store holds it: the source behind the cache.
pub(crate) struct StoreSource {
    pub store: Arc<dyn ObjectStore>,
    pub key: Arc<str>,
    pub etag: Arc<str>,
    /// The copies this mount made of objects: a version renamed or copied in
    /// place since is read from its copy.
    pub copies: Arc<super::copies::Copies>,
}

#[async_trait]
impl RangeSource for StoreSource {
    /// One ranged GET pinned to the version. (The cache checks that each
    /// fetch returned the whole range; without it, [`Gather::take`] finds a
    /// short answer.)
    async fn get(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        let got = self
            .store
            .get_range(&self.key, range.clone(), Some(&self.etag))
            .await;
        let got = match got {
            // Gone from its key: renamed or copied in place here since it
            // was opened? Then the copy.
            Err(StoreError::Changed { .. } | StoreError::NotFound { .. }) => {
                match self.copies.latest(&self.key, &self.etag) {
                    Some((key, etag)) => self.store.get_range(&key, range, Some(&etag)).await,
                    None => got,
                }
            }
            got => got,
        };
        Ok(vec![got?])
    }
}

impl ObjectVersion {
    /// The version `from` names, `size` bytes as the file shows them, read
    /// from the store alone and authenticated before release where encrypted.
    pub(crate) fn new(
        from: StoreSource,
        size: u64,
        decryption: Option<Arc<Decryption>>,
        memory: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            key: from.key.clone(),
            etag: from.etag.clone(),
            source: Arc::new(from),
            size,
            decryption,
            authenticate_first: true,
            memory,
        }
    }

    /// The same version, read through `cache` when there is one.
    pub(crate) fn cached(mut self, cache: Option<&Arc<BlockCache>>) -> Self {
        if let Some(cache) = cache {
            self.source = Arc::new(CachedSource::new(
                cache.clone(),
                self.key.clone(),
                self.etag.clone(),
                self.stored_size(),
                self.source,
            ));
        }
        self
    }
}

/// The parts a whole check fetches, two at a time, when the memory pool has
/// room for them: S3's advice for ranged reads. Without room, a check takes
/// [`CHECK_PART_WITHOUT_ROOM`] at a time, outside the pool.
const CHECK_PART: u64 = 8 << 20;
const CHECK_PART_WITHOUT_ROOM: u64 = 1 << 20;

impl ObjectVersion {
    /// Bytes `range`, in pieces, from the cache or from S3; decrypted.
    pub(crate) async fn get(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        self.get_as(range, false).await
    }

    /// Like [`ObjectVersion::get`], for a sequential reader (see
    /// [`RangeSource::get_streamed`]).
    pub(crate) async fn get_streamed(&self, range: Range<u64>) -> StoreResult<Vec<Bytes>> {
        self.get_as(range, true).await
    }

    async fn get_as(&self, range: Range<u64>, streamed: bool) -> StoreResult<Vec<Bytes>> {
        let Some(decryption) = &self.decryption else {
            return self.get_stored(range, streamed).await;
        };
        // The stretch that ends the file brings the tag with it.
        let end = match range.end == self.size {
            true => decryption.stored_size(),
            false => range.end,
        };
        let mut pieces = self.get_stored(range.start..end, streamed).await?;
        // Decrypted in place: a single piece (a GET's body) is taken over
        // without a copy when nothing else holds it.
        let data = match pieces.len() {
            1 => Vec::from(pieces.pop().expect("one piece")),
            _ => pieces.concat(),
        };
        if (data.len() as u64) < end - range.start {
            return Err(StoreError::ShortBody {
                op: Operation::GetObject,
                key: self.key.to_string(),
                expected: end - range.start,
                got: data.len() as u64,
            });
        }
        match decryption.decrypt(range.start, data) {
            Some(plain) => Ok(vec![plain]),
            None => Err(self.forged()),
        }
    }

    /// Checks the whole version, unless that is done: hashes all of it in
    /// order (from the cache where it holds the blocks, which keeps what it
    /// fetches) and compares the tag. A forged version is an error here and
    /// for every later read of it on the volume.
    pub(crate) async fn authenticate(&self) -> StoreResult<()> {
        let Some(decryption) = &self.decryption else {
            return Ok(());
        };
        // Whoever checks the version first, the others wait for its verdict.
        let _turn = decryption.check_turn().await;
        match decryption.verdict() {
            Verdict::Authentic => return Ok(()),
            Verdict::Forged => return Err(self.forged()),
            Verdict::Pending | Verdict::Unchecked => {}
        }
        let stored = decryption.stored_size();
        let room = self.memory.try_read_ahead(2 * CHECK_PART);
        let (part, at_once) = match room {
            Some(_) => (CHECK_PART, 2),
            None => {
                self.memory.read_without_room();
                (CHECK_PART_WITHOUT_ROOM, 1)
            }
        };
        let mut check = decryption.whole_check();
        let parts = (0..stored.div_ceil(part)).map(|index| {
            let range = index * part..((index + 1) * part).min(stored);
            async move { (range.end - range.start, self.get_stored(range, false).await) }
        });
        let mut fetched = futures::stream::iter(parts).buffered(at_once);
        while let Some((len, pieces)) = fetched.next().await {
            let pieces = pieces?;
            let got: u64 = pieces.iter().map(|p| p.len() as u64).sum();
            if got != len {
                return Err(StoreError::ShortBody {
                    op: Operation::GetObject,
                    key: self.key.to_string(),
                    expected: len,
                    got,
                });
            }
            for piece in &pieces {
                check.push(piece).map_err(|e| StoreError::Internal {
                    op: Operation::GetObject,
                    detail: e.to_string(),
                })?;
            }
        }
        match check.finish() {
            Verdict::Authentic => Ok(()),
            _ => Err(self.forged()),
        }
    }

    /// Whether bytes of this version would be released unauthenticated.
    fn unchecked(&self) -> bool {
        self.authenticate_first
            && self
                .decryption
                .as_ref()
                .is_some_and(|d| d.verdict() != Verdict::Authentic)
    }

    /// Stored bytes `range`, in pieces.
    async fn get_stored(&self, range: Range<u64>, streamed: bool) -> StoreResult<Vec<Bytes>> {
        match streamed {
            true => self.source.get_streamed(range).await,
            false => self.source.get(range).await,
        }
    }

    pub(crate) fn forged(&self) -> StoreError {
        StoreError::BadAnswer {
            op: Operation::GetObject,
            key: self.key.to_string(),
            detail: "its GCM tag does not match its content: it was changed by someone \
                     without its key, or damaged"
                .into(),
        }
    }

    /// The length of the object in S3.
    fn stored_size(&self) -> u64 {
        self.decryption
            .as_ref()
            .map_or(self.size, |d| d.stored_size())
    }

    /// The object was found forged: nothing more of it is returned.
    pub(crate) fn is_forged(&self) -> bool {
        self.decryption
            .as_ref()
            .is_some_and(|d| d.verdict() == Verdict::Forged)
    }
}

/// The read state of one open object.
pub struct Reader {
    object: ObjectVersion,
    config: ReadConfig,
    budget: Arc<MemoryBudget>,
    /// Where the next read of a sequential reader starts.
    next_offset: u64,
    window: u64,
    /// Contiguous parts, in order, starting at or before `next_offset`.
    parts: VecDeque<Part>,
    /// Every read so far continued the one before it, from offset 0.
    from_start: bool,
    /// A worker before this one may have returned bytes through the handle.
    taken_over: bool,
    /// How many bytes of the version were returned (any: the version read is
    /// the one the application saw).
    returned: u64,
    /// [`Reader::switch_to`] was called (it may be, once).
    switched: bool,
}

impl Reader {
    pub fn new(object: ObjectVersion, config: ReadConfig, budget: Arc<MemoryBudget>) -> Self {
        let window = config.initial_window;
        Self {
            object,
            config,
            budget,
            next_offset: 0,
            window,
            parts: VecDeque::new(),
            from_start: true,
            taken_over: false,
            returned: 0,
            switched: false,
        }
    }

    /// A reader taking over a handle that may have returned bytes already
    /// (a worker before this one served it): it never switches to another
    /// version.
    pub fn already_served(mut self) -> Self {
        self.taken_over = true;
        self
    }

    /// The version read.
    pub fn object(&self) -> &ObjectVersion {
        &self.object
    }

    /// How many bytes of [`Reader::object`] it returned.
    pub fn returned(&self) -> u64 {
        self.returned
    }

    /// Whether the reader may still read another version than the one it
    /// was opened on: it returned no byte yet, and did not switch before.
    pub fn may_switch(&self) -> bool {
        !self.taken_over && self.returned == 0 && !self.switched
    }

    /// Reads `object` from now on (see [`Reader::may_switch`]).
    pub fn switch_to(&mut self, object: ObjectVersion) {
        let (config, budget) = (self.config.clone(), self.budget.clone());
        *self = Self {
            switched: true,
            ..Self::new(object, config, budget)
        };
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(&mut self, offset: u64, len: u32) -> StoreResult<Bytes> {
        let end = offset.saturating_add(u64::from(len)).min(self.object.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        // Only a read that continues the ones before it from the start may be
        // answered before the version is authenticated.
        self.from_start &= offset <= self.next_offset;
        let result = match self.object.unchecked() && !self.from_start {
            true => self.object.authenticate().await,
            false => Ok(()),
        };
        let result = match result {
            Ok(()) if self.is_sequential(offset) => self.read_sequential(offset, end).await,
            Ok(()) => self.read_random(offset, end).await,
            Err(e) => Err(e),
        };
        // A part fetched in the background may have found the object forged
        // since: then not even bytes that came before are returned. The read
        // that reaches the end waits for the tag.
        let result = match result {
            Ok(_) if self.object.is_forged() => Err(self.object.forged()),
            Ok(data) if end == self.object.size && self.object.unchecked() => {
                self.object.authenticate().await.map(|()| data)
            }
            other => other,
        };
        match &result {
            Ok(data) => self.returned += data.len() as u64,
            Err(_) => {
                // Whatever failed, the parts in flight may be just as stale or
                // broken.
                self.parts.clear();
                self.window = self.config.initial_window;
            }
        }
        result
    }

    /// Answers a random read from the block cache alone, blocking on local disk
    /// at most; `None` when the read needs S3 (or belongs to a sequential run,
    /// whose read-ahead reads the cache in parallel).
    pub fn read_cached(&mut self, offset: u64, len: u32) -> Option<Bytes> {
        let end = offset.saturating_add(u64::from(len)).min(self.object.size);
        if offset >= end || self.is_sequential(offset) {
            return None;
        }
        let object = &self.object;
        if object.is_forged() || object.unchecked() {
            return None;
        }
        let pieces = object.source.get_now(offset..end)?;
        let mut out = Gather::new(&(offset..end));
        out.take(&object.key, &pieces, offset, offset..end).ok()?;
        let data = out.finish();
        let data = match &self.object.decryption {
            Some(decryption) => {
                let mut plain = data.to_vec();
                decryption.decrypt_unchecked(offset, &mut plain).ok()?;
                Bytes::from(plain)
            }
            None => data,
        };
        self.after_random_read(offset, end);
        self.returned += data.len() as u64;
        Some(data)
    }

    /// A random read that jumped farther than the largest window ends the
    /// sequential run; a new one may start right after it.
    fn after_random_read(&mut self, offset: u64, end: u64) {
        if offset.abs_diff(self.next_offset) > self.config.max_window {
            self.parts.clear();
            self.window = self.config.initial_window;
            self.next_offset = end;
        }
    }

    /// A read is sequential when it continues the last one, lands inside what is
    /// already fetched, or skips forward by less than the window (the kernel's own
    /// read-ahead can deliver requests slightly out of order).
    fn is_sequential(&self, offset: u64) -> bool {
        let in_parts = matches!(
            (self.parts.front(), self.parts.back()),
            (Some(first), Some(last)) if offset >= first.range.start && offset < last.range.end
        );
        in_parts || (offset >= self.next_offset && offset < self.next_offset + self.window)
    }

    async fn read_random(&mut self, offset: u64, end: u64) -> StoreResult<Bytes> {
        // The cache fetches whole blocks itself; without it, fetch aligned blocks
        // of the configured size.
        let block = match self.object.source.fetches_blocks() {
            true => 1,
            false => self.config.random_block.max(1),
        };
        let fetch_start = offset / block * block;
        let fetch_end = end
            .div_ceil(block)
            .saturating_mul(block)
            .min(self.object.size);
        let pieces = self.object.get(fetch_start..fetch_end).await?;
        self.after_random_read(offset, end);
        let mut out = Gather::new(&(offset..end));
        out.take(&self.object.key, &pieces, fetch_start, offset..end)?;
        Ok(out.finish())
    }

    async fn read_sequential(&mut self, offset: u64, end: u64) -> StoreResult<Bytes> {
        // Drop what lies wholly before this read; a gap means start over from here.
        while self.parts.front().is_some_and(|p| p.range.end <= offset) {
            self.parts.pop_front();
            self.grow_window();
        }
        if self.parts.front().is_some_and(|p| p.range.start > offset) {
            self.parts.clear();
        }
        self.fill_window(offset, end);

        let mut out = Gather::new(&(offset..end));
        for part in self.parts.iter_mut() {
            if part.range.start >= end {
                break;
            }
            let wanted = offset.max(part.range.start)..end.min(part.range.end);
            let start = part.range.start;
            let pieces = part.pieces().await?;
            out.take(&self.object.key, pieces, start, wanted)?;
        }
        while self.parts.front().is_some_and(|p| p.range.end <= end) {
            self.parts.pop_front();
            self.grow_window();
        }
        self.next_offset = end;
        Ok(out.finish())
    }

    fn grow_window(&mut self) {
        self.window = (self.window * 2).min(self.config.max_window);
    }

    /// Makes sure parts cover `[offset, needed_end)` and, budget permitting, the
    /// window beyond it. When the cache holds what comes next, the window opens
    /// all the way at once: reading ahead from local disk costs no request, and a
    /// file of a few MiB would otherwise be read in a few small parts one after
    /// another.
    fn fill_window(&mut self, offset: u64, needed_end: u64) {
        let mut next = self.parts.back().map_or(offset, |p| p.range.end);
        if self.window < self.config.max_window && self.object.source.holds(next) {
            self.window = self.config.max_window;
        }
        let target = offset
            .saturating_add(self.window)
            .max(needed_end)
            .min(self.object.size);
        while next < target {
            // Parts near the reader are small, so the bytes it needs next arrive
            // first, however wide the window: 1 MiB, 1, 2, 4, then whole parts.
            let part_len = (self.config.part_size.min(self.window))
                .min(self.budget.read_ahead_limit())
                .min(next.saturating_sub(offset).max(self.config.initial_window))
                .max(1);
            let mut part_end = (next + part_len).min(self.object.size);
            let permit = self.budget.try_read_ahead(part_end - next);
            if permit.is_none() {
                if next >= needed_end {
                    break;
                }
                // The application waits for these bytes: fetch them anyway, but
                // only them (in whole aligned blocks).
                let block = self.config.random_block.max(1);
                part_end = part_end.min(needed_end.div_ceil(block).saturating_mul(block));
                self.budget.read_without_room();
            }
            let object = self.object.clone();
            let range = next..part_end;
            let fetch = range.clone();
            let task = tokio::spawn(async move { object.get_streamed(fetch).await });
            self.parts.push_back(Part {
                range,
                state: PartState::Pending(task),
                _permit: permit,
            });
            next = part_end;
        }
    }
}

/// Collects the bytes of one read from the pieces that hold them, copying only
/// when they span more than one piece.
struct Gather {
    /// The length of the whole read.
    len: usize,
    single: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl Gather {
    fn new(range: &Range<u64>) -> Self {
        Self {
            len: (range.end - range.start) as usize,
            single: None,
            joined: None,
        }
    }

    /// Takes bytes `wanted` from `pieces`, which hold the object's bytes from
    /// `start` on.
    fn take(
        &mut self,
        key: &str,
        pieces: &[Bytes],
        start: u64,
        wanted: Range<u64>,
    ) -> StoreResult<()> {
        let mut at = start;
        for piece in pieces {
            let piece_end = at + piece.len() as u64;
            let from = wanted.start.max(at);
            let to = wanted.end.min(piece_end);
            if from < to {
                self.push(piece.slice((from - at) as usize..(to - at) as usize));
            }
            at = piece_end;
        }
        if at < wanted.end {
            return Err(StoreError::ShortBody {
                op: Operation::GetObject,
                key: key.to_string(),
                expected: wanted.end - start,
                got: at - start,
            });
        }
        Ok(())
    }

    fn push(&mut self, slice: Bytes) {
        match (&mut self.joined, self.single.take()) {
            (Some(joined), _) => joined.extend_from_slice(&slice),
            (None, None) => self.single = Some(slice),
            (None, Some(first)) => {
                let mut joined = BytesMut::with_capacity(self.len);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&slice);
                self.joined = Some(joined);
            }
        }
    }

    fn finish(self) -> Bytes {
        self.joined
            .map(BytesMut::freeze)
            .or(self.single)
            .unwrap_or_default()
    }
}
