//! Where each part of a multipart upload starts and ends. Parts 1-1000 have the
//! configured size, each following thousand twice the size of the one before, so
//! that no object needs more than S3's 10,000 parts (8 MiB parts reach S3's 5 TiB
//! object limit within the limit).

use std::ops::Range;

/// S3's largest object.
pub(super) const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// S3's largest part.
pub(super) const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// S3's most parts in one upload.
pub(super) const MAX_PARTS: usize = 10_000;

/// Parts per size tier: the part size doubles every this many parts.
pub(super) const PARTS_PER_TIER: u64 = 1000;

/// Where each part of an object starts and ends.
#[derive(Clone, Copy, Debug)]
pub struct PartLayout {
    base: u64,
}

impl PartLayout {
    pub fn new(base: u64) -> Self {
        Self { base }
    }

    /// The size of the first parts.
    pub fn first_size(&self) -> u64 {
        self.base
    }

    fn tier_size(&self, tier: u64) -> u64 {
        self.base
            .checked_shl(tier as u32)
            .unwrap_or(MAX_PART_SIZE)
            .min(MAX_PART_SIZE)
    }

    /// The 0-based index of the part holding byte `offset`.
    pub fn index_of(&self, offset: u64) -> usize {
        let (mut start, mut index) = (0u64, 0u64);
        for tier in 0.. {
            let size = self.tier_size(tier);
            let span = size.saturating_mul(PARTS_PER_TIER);
            if offset < start.saturating_add(span) || size == MAX_PART_SIZE {
                return (index + (offset - start) / size) as usize;
            }
            start += span;
            index += PARTS_PER_TIER;
        }
        unreachable!()
    }

    /// The bytes of part `index` (0-based).
    pub fn range(&self, index: usize) -> Range<u64> {
        let (mut start, mut index) = (0u64, index as u64);
        for tier in 0.. {
            let size = self.tier_size(tier);
            if index < PARTS_PER_TIER || size == MAX_PART_SIZE {
                let from = start + index * size;
                return from..from + size;
            }
            start += size * PARTS_PER_TIER;
            index -= PARTS_PER_TIER;
        }
        unreachable!()
    }

    /// The largest file this layout can upload: S3's 5 TiB, or a little less with
    /// parts under 5.2 MiB, where 10,000 parts hold less.
    pub fn max_size(&self) -> u64 {
        self.range(MAX_PARTS - 1).end.min(MAX_OBJECT_SIZE)
    }

    /// How many parts an object of `size` bytes has (at least one).
    pub fn count(&self, size: u64) -> usize {
        if size == 0 {
            1
        } else {
            self.index_of(size - 1) + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn parts_grow_every_thousand_and_cover_s3s_largest_object() {
        let layout = PartLayout::new(8 * MIB);
        assert_eq!(layout.range(0), 0..8 * MIB);
        assert_eq!(layout.range(999), 999 * 8 * MIB..1000 * 8 * MIB);
        assert_eq!(layout.range(1000).end - layout.range(1000).start, 16 * MIB);
        assert_eq!(layout.index_of(8 * MIB - 1), 0);
        assert_eq!(layout.index_of(8 * MIB), 1);
        assert_eq!(layout.index_of(8000 * MIB), 1000);
        assert_eq!(layout.count(0), 1);
        assert_eq!(layout.count(1), 1);
        assert_eq!(layout.count(8 * MIB), 1);
        assert_eq!(layout.count(8 * MIB + 1), 2);
        // A 5 TiB object fits in S3's 10,000 parts, none over 5 GiB.
        assert_eq!(layout.max_size(), MAX_OBJECT_SIZE);
        assert!(layout.count(MAX_OBJECT_SIZE) <= MAX_PARTS);
        let last = layout.range(layout.count(MAX_OBJECT_SIZE) - 1);
        assert!(last.end - last.start <= MAX_PART_SIZE);
        // With the smallest parts, 10,000 of them hold a little less.
        let small = PartLayout::new(5 * MIB);
        assert!(small.max_size() > MAX_OBJECT_SIZE / 100 * 95);
        assert_eq!(small.count(small.max_size()), MAX_PARTS);
    }

    #[test]
    fn index_and_range_agree_everywhere() {
        let layout = PartLayout::new(5 * MIB);
        for index in [0, 1, 998, 999, 1000, 1001, 1999, 2000, 5000, 9999] {
            let range = layout.range(index);
            assert_eq!(layout.index_of(range.start), index, "start of {index}");
            assert_eq!(layout.index_of(range.end - 1), index, "end of {index}");
            assert_eq!(
                layout.range(index + 1).start,
                range.end,
                "{index} is contiguous"
            );
        }
    }
}
