//! Buffers for GET bodies of read-ahead parts, reused.
//!
//! A sequential read allocates and frees a part-sized buffer (8 MiB) per ranged
//! GET, on whichever thread the request ran, and frees it on whichever thread
//! the reader consumed it. Taken from the heap, those buffers fragment it: the
//! daemon's peak RSS was half as large again as the data it held. Freed with
//! munmap, every byte read costs a page fault when the next buffer is mapped.
//! Instead, bodies larger than [`POOLED_ABOVE`] go into buffers mapped on their
//! own and kept, up to [`KEEP`] of them, for the next GET: reused pages cost no
//! fault and need no clearing (the kernel clears a fresh buffer's pages as the
//! body is copied in: 8% of the daemon's CPU over two cold 1 GiB reads when two
//! were kept), and the heap never holds them. The kept buffers are unmapped once
//! the volume is idle ([`release_free_buffers`]), as the allocator's free memory
//! is. Each asks for huge pages
//! (transparent huge pages, `madvise`): where the kernel gives them (and
//! places the mapping on a 2 MiB boundary, as recent kernels do for mappings of
//! whole huge pages), a fresh buffer costs 4 page faults instead of 2048, and
//! pinning its pages for a direct write of the disk cache walks a few large
//! pages rather than thousands of small ones. A body is then resident 2 MiB at
//! a time as it arrives (docs/CACHE.md, Memory).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use memmap2::MmapMut;
use parking_lot::Mutex;

/// Bodies larger than this use pooled buffers, the others the heap: a block of
/// the cache (1 MiB) fetched alone is kept in its memory tier, and must not keep
/// a whole part's buffer with it.
const POOLED_ABOVE: usize = 1 << 20;

/// Free buffers kept for reuse while the volume is busy: as many as are in use
/// at once with the default `--max-memory` (the read-ahead pool's six parts and
/// the disk write backlog's two). More are unmapped when freed. Keeping them
/// never raises the peak: a buffer is mapped only when none is free, so the
/// buffers mapped never outnumber the most in use at once.
const KEEP: usize = 8;

/// Every store's pool, for [`release_free_buffers`].
static POOLS: Mutex<Vec<Weak<Buffers>>> = Mutex::new(Vec::new());

/// Unmaps the free buffers of every pool of this process: called once the
/// volume is idle, whose kept buffers would otherwise stay resident until it
/// reads again.
pub(crate) fn release_free_buffers() {
    let mut pools = POOLS.lock();
    pools.retain(|pool| match pool.upgrade() {
        Some(pool) => {
            let freed = std::mem::take(&mut *pool.free.lock());
            drop(freed);
            true
        }
        None => false,
    });
}

/// The mapped buffers of one store, free for reuse.
#[derive(Debug)]
pub(super) struct Buffers {
    /// The size of each pooled buffer: the largest part read ahead.
    size: usize,
    free: Mutex<Vec<MmapMut>>,
}

impl Buffers {
    pub(super) fn new(size: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            size,
            free: Mutex::new(Vec::new()),
        });
        let mut pools = POOLS.lock();
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        pool
    }

    /// A buffer for a body of `len` bytes.
    pub(super) fn take(self: &Arc<Self>, len: usize) -> Body {
        if len <= POOLED_ABOVE {
            return Body::Heap(Vec::with_capacity(len));
        }
        let reused = (len <= self.size).then(|| self.free.lock().pop()).flatten();
        let map = match reused {
            Some(map) => Some(map),
            // (A kernel without transparent huge pages refuses the advice, one
            // with them off ignores it: small pages serve.)
            None => MmapMut::map_anon(len.max(self.size)).ok().inspect(|map| {
                let _ = map.advise(memmap2::Advice::HugePage);
            }),
        };
        match map {
            Some(map) => Body::Mapped(Mapped {
                map: Some(map),
                len: 0,
                pool: self.clone(),
            }),
            // No mapping to be had: the heap will do.
            None => Body::Heap(Vec::with_capacity(len)),
        }
    }

    fn give_back(&self, map: MmapMut) {
        if map.len() == self.size {
            let mut free = self.free.lock();
            if free.len() < KEEP {
                free.push(map);
            }
        }
    }
}

/// A GET body being received.
pub(super) enum Body {
    Heap(Vec<u8>),
    Mapped(Mapped),
}

/// A pooled buffer and how much of it holds the body; back in the pool when the
/// last `Bytes` made from it is dropped.
pub(super) struct Mapped {
    map: Option<MmapMut>,
    len: usize,
    pool: Arc<Buffers>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |map| &map[..self.len])
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            self.pool.give_back(map);
        }
    }
}

impl Body {
    pub(super) fn len(&self) -> usize {
        match self {
            Body::Heap(data) => data.len(),
            Body::Mapped(mapped) => mapped.len,
        }
    }

    /// Appends `chunk`; false (and nothing appended) if it does not fit in a
    /// pooled buffer, which holds the size asked for.
    #[must_use]
    pub(super) fn extend(&mut self, chunk: &[u8]) -> bool {
        match self {
            Body::Heap(data) => data.extend_from_slice(chunk),
            Body::Mapped(mapped) => {
                let Some(map) = mapped.map.as_mut() else {
                    return false;
                };
                let end = mapped.len + chunk.len();
                if end > map.len() {
                    return false;
                }
                map[mapped.len..end].copy_from_slice(chunk);
                mapped.len = end;
            }
        }
        true
    }

    pub(super) fn freeze(self) -> Bytes {
        match self {
            Body::Heap(data) => Bytes::from(data),
            Body::Mapped(mapped) => Bytes::from_owner(mapped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_buffer_comes_back_for_the_next_body_once_its_bytes_are_dropped() {
        let pool = Buffers::new(8 * MIB);
        let mut body = pool.take(8 * MIB);
        assert!(body.extend(&[7u8; 4096]));
        let bytes = body.freeze();
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(pool.free.lock().is_empty(), "a slice still uses it");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(pool.free.lock().len(), 1);
        let again = pool.take(2 * MIB);
        assert!(pool.free.lock().is_empty(), "not reused");
        assert_eq!(again.len(), 0, "a reused buffer starts empty");
    }

    #[test]
    fn a_body_never_runs_past_its_buffer_and_small_ones_use_the_heap() {
        let pool = Buffers::new(2 * MIB);
        let mut body = pool.take(2 * MIB);
        assert!(body.extend(&vec![1u8; 2 * MIB]));
        assert!(!body.extend(&[1u8]), "wrote past the end");
        assert_eq!(body.freeze().len(), 2 * MIB);
        assert!(matches!(pool.take(MIB), Body::Heap(_)), "a cache block");
    }

    /// The `VmFlags` of the mapping of this process that holds `address`.
    fn flags_of_mapping_at(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_string();
            }
        }
        panic!("no mapping holds {address:#x}");
    }

    #[test]
    fn a_pooled_buffer_asks_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // a kernel without them: nothing to ask for
        }
        let pool = Buffers::new(8 * MIB);
        let Body::Mapped(mapped) = pool.take(8 * MIB) else {
            panic!("not a pooled buffer");
        };
        let address = mapped.map.as_ref().unwrap().as_ptr() as usize;
        let flags = flags_of_mapping_at(address);
        assert!(
            flags.split(' ').any(|flag| flag == "hg"),
            "no MADV_HUGEPAGE: {flags}"
        );
    }

    #[test]
    fn at_most_keep_buffers_are_kept() {
        let pool = Buffers::new(2 * MIB);
        let bodies: Vec<Bytes> = (0..KEEP + 3).map(|_| pool.take(2 * MIB).freeze()).collect();
        drop(bodies);
        assert_eq!(pool.free.lock().len(), KEEP);
    }

    #[test]
    fn an_idle_volume_unmaps_its_kept_buffers() {
        let pool = Buffers::new(2 * MIB);
        let bodies: Vec<Bytes> = (0..3).map(|_| pool.take(2 * MIB).freeze()).collect();
        drop(bodies);
        assert_eq!(pool.free.lock().len(), 3);
        release_free_buffers();
        assert!(pool.free.lock().is_empty(), "still kept");
        let gone = Arc::downgrade(&pool);
        drop(pool);
        release_free_buffers();
        assert!(
            !POOLS.lock().iter().any(|pool| pool.ptr_eq(&gone)),
            "a dropped store's pool is still listed"
        );
    }
}
