//! One fetch per block: readers of a block nobody holds yet fetch it once.
//!
//! The first reader claims it and fetches it (together with the neighbouring
//! blocks it also claimed, in one ranged GET); the others wait for its result.
//! If that fetch fails, the claim is dropped unfinished and each waiter fetches
//! for itself.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::BlockId;
use crate::store::{Operation, StoreError, StoreResult};

/// The blocks being fetched right now, and who waits for them.
#[derive(Default)]
pub(super) struct Flights {
    fetching: Mutex<HashMap<BlockId, broadcast::Sender<Bytes>>>,
}

/// What a reader does about a block it needs.
pub(super) enum Flight {
    /// Nobody was fetching it: this reader does, for everyone.
    Claimed(Claim),
    /// Another reader fetches it; its result arrives here (or an error, when
    /// that fetch failed).
    Waiting(broadcast::Receiver<Bytes>),
}

impl Flights {
    /// Claims block `id`, or joins the reader that already has.
    pub(super) fn join(self: &Arc<Self>, id: &BlockId) -> Flight {
        let mut fetching = self.fetching.lock();
        match fetching.get(id) {
            Some(sender) => Flight::Waiting(sender.subscribe()),
            None => {
                fetching.insert(id.clone(), broadcast::channel(1).0);
                Flight::Claimed(Claim {
                    flights: self.clone(),
                    id: id.clone(),
                })
            }
        }
    }

    /// No block is being fetched.
    #[cfg(test)]
    pub(super) fn is_idle(&self) -> bool {
        self.fetching.lock().is_empty()
    }
}

/// A block this reader fetches for everyone; the others are told when it is done,
/// or, when the claim is dropped unfinished, that they must fetch it themselves.
pub(super) struct Claim {
    flights: Arc<Flights>,
    id: BlockId,
}

impl Claim {
    pub(super) fn complete(self, data: &Bytes) {
        if let Some(sender) = self.flights.fetching.lock().remove(&self.id) {
            let _ = sender.send(data.clone());
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // After complete() the entry is gone already; removing it again is a no-op.
        self.flights.fetching.lock().remove(&self.id);
    }
}

/// Groups claims of the blocks at positions `i` (in order) into runs of
/// neighbouring blocks, each fetched with one request.
pub(super) fn split_runs(claims: Vec<(usize, Claim)>) -> Vec<Vec<(usize, Claim)>> {
    let mut runs: Vec<Vec<(usize, Claim)>> = Vec::new();
    for (i, claim) in claims {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|(j, _)| j + 1 == i) => run.push((i, claim)),
            _ => runs.push(vec![(i, claim)]),
        }
    }
    runs
}

/// A fetch must return exactly the bytes asked for: fewer means the object shrank.
pub(super) fn check_length(key: &str, range: &Range<u64>, data: &Bytes) -> StoreResult<()> {
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
