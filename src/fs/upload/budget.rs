//! The staging space of a mount: the files being written take local disk, and
//! all of them together at most `--staging-size`.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{StageError, StageResult};

/// The staging space a mount's files take, against its bound.
#[derive(Debug)]
pub struct StagingBudget {
    limit: u64,
    used: Mutex<u64>,
}

impl StagingBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: Mutex::new(0),
        })
    }

    /// Takes `bytes` more, unless that would pass the bound.
    pub(super) fn take(&self, bytes: u64) -> StageResult<()> {
        let mut used = self.used.lock();
        match used.checked_add(bytes).filter(|total| *total <= self.limit) {
            Some(total) => {
                *used = total;
                Ok(())
            }
            None => Err(StageError::StagingFull { limit: self.limit }),
        }
    }

    pub(super) fn give_back(&self, bytes: u64) {
        let mut used = self.used.lock();
        *used = used.saturating_sub(bytes);
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        *self.used.lock()
    }
}
