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
//! body is copied in), and the heap never holds them. A pool's kept buffers are unmapped
//! once it has handed out none for two seconds ([`release_idle_buffers`]), as an
//! idle volume's free memory is. Each asks for huge pages
//! (transparent huge pages, `madvise`): where the kernel gives them (and
//! places the mapping on a 2 MiB boundary, as recent kernels do for mappings of
//! whole huge pages), a fresh buffer costs 4 page faults instead of 2048, and
//! pinning its pages for a direct write of the disk cache walks a few large
//! pages rather than thousands of small ones. A body is then resident 2 MiB at
//! a time as it arrives (docs/CACHE.md, Memory), and a kept buffer handed out
//! for a smaller body first gives back the pages past it, so that a buffer never
//! holds much more than its body.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{MmapMut, UncheckedAdvice};
use parking_lot::Mutex;

/// Bodies larger than this use pooled buffers, the others the heap: a block of
/// the cache (1 MiB) fetched alone is kept in its memory tier, and must not keep
/// a whole part's buffer with it.
const POOLED_ABOVE: usize = 1 << 20;

/// Free buffers kept for reuse while the volume reads: the read-ahead of one
/// reader at the largest window. More are unmapped when freed. Keeping more
/// spares the kernel clearing fresh pages (with eight kept, 8% of the daemon's
/// CPU fell to 1.5% over two cold 1 GiB reads in one mount), but raised the
/// peak of four readers at once by 10 to 20 MiB: a GET in flight fills a kept
/// buffer resident whole, a fresh one only as far as its body has come. In a
/// fresh mount's 1 GiB read, eight saved no measurable CPU.
const KEEP: usize = 2;

/// How long a pool keeps its free buffers after it last handed one out.
const IDLE: Duration = Duration::from_secs(2);

/// The resident unit of a buffer on transparent huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// Every store's pool, for [`release_idle_buffers`].
static POOLS: Mutex<Vec<Weak<Buffers>>> = Mutex::new(Vec::new());

/// Unmaps the free buffers of every pool of this process that has handed out
/// none for [`IDLE`]: a volume that stopped reading (or only writes now, whose
/// parts are not these buffers) holds no memory it does not use. Called every
/// second.
pub(crate) fn release_idle_buffers() {
    let pools: Vec<Arc<Buffers>> = {
        let mut pools = POOLS.lock();
        pools.retain(|pool| pool.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    };
    for pool in pools {
        pool.release_if_idle(IDLE);
    }
}

/// A free buffer, and how much of it has been written (resident) since it
/// was mapped or last fitted.
struct Kept {
    map: MmapMut,
    touched: usize,
}

impl Kept {
    /// Gives back the pages past what a body of `len` bytes needs (in whole
    /// huge pages), where an earlier, larger body left them resident: a 2 MiB
    /// part in a buffer an 8 MiB one filled would otherwise hold 8 MiB.
    fn fit(&mut self, len: usize) {
        let needed = len.next_multiple_of(HUGE_PAGE).min(self.map.len());
        if self.touched > needed {
            // SAFETY: the buffer is free: no `Bytes` refers to it, and its
            // old contents are not needed (the pages read as zeros again).
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    needed,
                    self.touched - needed,
                )
            };
            self.touched = needed;
        }
    }
}

/// A pool's free buffers and when it last handed one out.
struct Free {
    kept: Vec<Kept>,
    last_taken: Instant,
}

/// The mapped buffers of one store, free for reuse.
pub(super) struct Buffers {
    /// The size of each pooled buffer: the largest part read ahead.
    size: usize,
    free: Mutex<Free>,
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffers")
            .field("size", &self.size)
            .field("free", &self.free.lock().kept.len())
            .finish()
    }
}

impl Buffers {
    pub(super) fn new(size: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            size,
            free: Mutex::new(Free {
                kept: Vec::new(),
                last_taken: Instant::now(),
            }),
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
        let reused = (len <= self.size)
            .then(|| {
                let mut free = self.free.lock();
                free.last_taken = Instant::now();
                free.kept.pop()
            })
            .flatten();
        let kept = match reused {
            Some(mut kept) => {
                kept.fit(len);
                Some(kept)
            }
            // (A kernel without transparent huge pages refuses the advice, one
            // with them off ignores it: small pages serve.)
            None => MmapMut::map_anon(len.max(self.size)).ok().map(|map| {
                let _ = map.advise(memmap2::Advice::HugePage);
                Kept { map, touched: 0 }
            }),
        };
        match kept {
            Some(Kept { map, touched }) => Body::Mapped(Mapped {
                map: Some(map),
                len: 0,
                touched,
                pool: self.clone(),
            }),
            // No mapping to be had: the heap will do.
            None => Body::Heap(Vec::with_capacity(len)),
        }
    }

    fn give_back(&self, map: MmapMut, touched: usize) {
        if map.len() == self.size {
            let mut free = self.free.lock();
            if free.kept.len() < KEEP {
                free.kept.push(Kept { map, touched });
            }
        }
    }

    /// Unmaps the free buffers if none was handed out for `idle`.
    fn release_if_idle(&self, idle: Duration) {
        let released = {
            let mut free = self.free.lock();
            if free.last_taken.elapsed() < idle {
                return;
            }
            std::mem::take(&mut free.kept)
        };
        drop(released);
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
    /// How much of the buffer an earlier body left resident.
    touched: usize,
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
            // A body leaves the huge page it ends in resident whole.
            let resident = self.len.next_multiple_of(HUGE_PAGE).min(map.len());
            self.pool.give_back(map, self.touched.max(resident));
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
        assert!(pool.free.lock().kept.is_empty(), "a slice still uses it");
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(pool.free.lock().kept.len(), 1);
        let again = pool.take(2 * MIB);
        assert!(pool.free.lock().kept.is_empty(), "not reused");
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

    /// The field `name` (`VmFlags:`, `Rss:`) of the mapping of this process
    /// that holds `address`.
    fn smaps_field_at(address: usize, name: &str) -> String {
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
            } else if inside && let Some(value) = line.strip_prefix(name) {
                return value.trim().to_string();
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
        let flags = smaps_field_at(address, "VmFlags:");
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
        assert_eq!(pool.free.lock().kept.len(), KEEP);
    }

    #[test]
    fn a_pool_that_hands_out_nothing_for_a_while_unmaps_its_kept_buffers() {
        let pool = Buffers::new(2 * MIB);
        let bodies: Vec<Bytes> = (0..KEEP).map(|_| pool.take(2 * MIB).freeze()).collect();
        drop(bodies);
        pool.release_if_idle(Duration::from_secs(3600));
        assert_eq!(pool.free.lock().kept.len(), KEEP, "released while busy");
        pool.release_if_idle(Duration::ZERO);
        assert!(pool.free.lock().kept.is_empty(), "still kept");
        // A dropped store's pool leaves the list.
        let gone = Arc::downgrade(&pool);
        drop(pool);
        release_idle_buffers();
        assert!(
            !POOLS.lock().iter().any(|pool| pool.ptr_eq(&gone)),
            "a dropped store's pool is still listed"
        );
    }

    /// The resident bytes of the mapping of this process that holds `address`.
    fn resident_at(address: usize) -> usize {
        smaps_field_at(address, "Rss:")
            .trim_end_matches("kB")
            .trim()
            .parse::<usize>()
            .unwrap()
            * 1024
    }

    #[test]
    fn a_kept_buffer_holds_no_more_than_its_next_body() {
        let pool = Buffers::new(8 * MIB);
        let mut body = pool.take(8 * MIB);
        assert!(body.extend(&vec![1u8; 8 * MIB]));
        let full = body.freeze();
        let address = full.as_ptr() as usize;
        assert!(resident_at(address) >= 8 * MIB);
        drop(full);
        let mut body = pool.take(2 * MIB + 1);
        assert!(body.extend(&vec![2u8; 2 * MIB + 1]));
        let small = body.freeze();
        assert_eq!(small.as_ptr() as usize, address, "not the kept buffer");
        assert_eq!(small[2 * MIB], 2);
        assert!(
            resident_at(address) <= 4 * MIB,
            "{} bytes resident for a body of 2 MiB",
            resident_at(address)
        );
        drop(small);
        // A body that ends inside a huge page left all of it resident.
        let mut body = pool.take(8 * MIB);
        assert!(body.extend(&vec![1u8; 7 * MIB]));
        drop(body.freeze());
        let mut body = pool.take(MIB + MIB / 2);
        assert!(body.extend(&vec![2u8; MIB + MIB / 2]));
        let small = body.freeze();
        assert_eq!(small.as_ptr() as usize, address, "not the kept buffer");
        assert!(
            resident_at(address) <= 2 * MIB,
            "{} bytes resident for a body of 1.5 MiB",
            resident_at(address)
        );
    }
}
