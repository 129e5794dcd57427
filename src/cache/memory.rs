//! The memory tier: the whole blocks used most recently, in front of the disk.
//!
//! It takes blocks that arrive in a buffer of their own (a block read whole from
//! disk, a single-block fetch), so it never pins a larger fetched buffer and
//! never costs a copy.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use super::tier::Tier;
use super::{BlockId, Span};

pub struct MemoryTier {
    capacity: u64,
    state: Mutex<State>,
}

struct State {
    blocks: LruCache<BlockId, Bytes>,
    used: u64,
}

impl MemoryTier {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            state: Mutex::new(State {
                blocks: LruCache::unbounded(),
                used: 0,
            }),
        }
    }
}

impl Tier for MemoryTier {
    fn get(&self, span: &Span) -> Option<Bytes> {
        let block = self.state.lock().blocks.get(&span.id).cloned()?;
        (block.len() == span.len).then(|| block.slice(span.want.clone()))
    }

    fn holds(&self, span: &Span) -> bool {
        self.state.lock().blocks.contains(&span.id)
    }

    fn put(&self, span: &Span, block: &Bytes) {
        let size = block.len() as u64;
        if size > self.capacity {
            return;
        }
        let mut state = self.state.lock();
        if let Some(old) = state.blocks.put(span.id.clone(), block.clone()) {
            state.used -= old.len() as u64;
        }
        state.used += size;
        while state.used > self.capacity {
            let Some((_, old)) = state.blocks.pop_lru() else {
                break;
            };
            state.used -= old.len() as u64;
        }
    }

    fn used(&self) -> u64 {
        self.state.lock().used
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn remove(&self, span: &Span) {
        let mut state = self.state.lock();
        if let Some(old) = state.blocks.pop(&span.id) {
            state.used -= old.len() as u64;
        }
    }

    fn clear(&self) {
        let mut state = self.state.lock();
        state.blocks.clear();
        state.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_tier_keeps_the_tier_contract() {
        super::super::tier::conformance::check(&MemoryTier::new(5 * 1000), 1000);
    }
}
