//! What every cache tier does: keep whole blocks within a bound in bytes, least
//! recently used out first, and give back the wanted part of one it holds.
//!
//! [`super::BlockCache`] asks its tiers in order (memory, then disk) and fetches
//! from S3 only what neither holds. A tier never fails a read: a block it cannot
//! give back intact is a miss.

use bytes::Bytes;

#[cfg(test)]
use super::BlockId;
use super::Span;

pub trait Tier: Send + Sync {
    /// Bytes `span.want` of the block, if this tier holds it intact. The disk
    /// tier reads a file: call it only where blocking is allowed.
    fn get(&self, span: &Span) -> Option<Bytes>;

    /// Whether [`Tier::get`] would find the block, without reading it.
    fn holds(&self, span: &Span) -> bool;

    /// Keeps a whole block, making room by dropping the least recently used
    /// ones; a block larger than the whole bound is not kept. The disk tier
    /// writes a file: call it only where blocking is allowed.
    fn put(&self, span: &Span, block: &Bytes);

    /// Bytes held now.
    fn used(&self) -> u64;

    /// The most bytes the tier holds.
    fn capacity(&self) -> u64;

    /// Drops the block, if held.
    fn remove(&self, span: &Span);

    /// Drops every block.
    fn clear(&self);
}

/// The span of all `len` bytes of block `id`, as a read of the whole block has.
#[cfg(test)]
pub(super) fn whole(id: &BlockId, len: usize) -> Span {
    Span {
        start: id.index * super::BLOCK_SIZE,
        name: id.file_name(),
        version: id.version_name(),
        id: id.clone(),
        len,
        want: 0..len,
    }
}

#[cfg(test)]
pub(super) mod conformance {
    //! The same checks on every tier.

    use super::*;

    fn block(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>()
            .into()
    }

    fn id(index: u64) -> BlockId {
        BlockId {
            key: "dir/k".into(),
            etag: "\"e\"".into(),
            index,
        }
    }

    /// `tier` must be empty and hold at least four blocks of `len` bytes but
    /// fewer than eight.
    pub fn check(tier: &dyn Tier, len: usize) {
        let span = whole(&id(0), len);
        assert!(tier.get(&span).is_none(), "an empty tier holds nothing");
        assert!(!tier.holds(&span));
        tier.put(&span, &block(0, len));
        assert!(tier.holds(&span));
        assert_eq!(tier.get(&span).unwrap(), block(0, len));
        // A part of a block is a part of its bytes.
        let part = Span {
            want: 1..len / 2,
            ..span.clone()
        };
        assert_eq!(tier.get(&part).unwrap(), block(0, len).slice(1..len / 2));
        // Another version of the same block is another block.
        let other = whole(
            &BlockId {
                etag: "\"f\"".into(),
                ..id(0)
            },
            len,
        );
        assert!(tier.get(&other).is_none());
        // A block removed is gone; put back, it is there again.
        tier.remove(&span);
        assert!(!tier.holds(&span) && tier.get(&span).is_none());
        assert_eq!(tier.used(), 0);
        tier.put(&span, &block(0, len));
        assert!(tier.holds(&span));

        // Filling it twice over keeps it within its bound, newest blocks in.
        for index in 1..16 {
            tier.put(&whole(&id(index), len), &block(index as u8, len));
            assert!(tier.used() <= tier.capacity(), "over the bound at {index}");
        }
        assert_eq!(tier.get(&whole(&id(15), len)).unwrap(), block(15, len));
        assert!(tier.get(&span).is_none(), "the oldest block is dropped");
        // Reading a block makes it recently used: it outlives a newer one.
        assert!(tier.get(&whole(&id(13), len)).is_some());
        tier.put(&whole(&id(16), len), &block(16, len));
        tier.put(&whole(&id(17), len), &block(17, len));
        tier.put(&whole(&id(18), len), &block(18, len));
        assert!(tier.holds(&whole(&id(13), len)));
        assert!(!tier.holds(&whole(&id(14), len)));

        // A block larger than the whole tier is not kept.
        let huge = tier.capacity() as usize + 1;
        tier.put(&whole(&id(99), huge), &block(9, huge));
        assert!(!tier.holds(&whole(&id(99), huge)));

        tier.clear();
        assert_eq!(tier.used(), 0);
        assert!(tier.get(&whole(&id(15), len)).is_none());
    }
}
