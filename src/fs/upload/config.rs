//! How a read-write volume writes: part sizes, uploads in flight, the copy
//! limit and the staging space.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Shares, StagingBudget};
use crate::local_dir::LocalDir;
use crate::memory::MemoryBudget;

/// How a read-write volume writes.
#[derive(Clone, Debug)]
pub struct WriteConfig {
    /// Size of the first 1000 parts of a multipart upload (S3's minimum is 5 MiB).
    pub part_size: u64,
    /// Part uploads in flight per mount; bounds upload memory.
    pub max_in_flight: usize,
    /// Where staging files are made, with no name: gone when closed.
    pub staging: Arc<LocalDir>,
    /// Objects up to this size are renamed with one CopyObject (S3 allows 5 GiB);
    /// larger ones are copied in parts of this size with UploadPartCopy.
    pub single_copy_limit: u64,
    /// Most bytes the files being written may take in staging, all together.
    pub staging_limit: u64,
}

impl WriteConfig {
    /// The defaults: 8 MiB parts, 8 part uploads in flight, S3's copy limit.
    pub fn new(staging: LocalDir) -> Self {
        Self {
            part_size: 8 * 1024 * 1024,
            max_in_flight: 8,
            staging: Arc::new(staging),
            single_copy_limit: 5 * 1024 * 1024 * 1024,
            staging_limit: u64::MAX,
        }
    }

    /// What a volume's files being written share: its upload permits, staging
    /// space and `memory`.
    pub fn shares(&self, memory: Arc<MemoryBudget>) -> Shares {
        Shares {
            permits: Arc::new(Semaphore::new(self.max_in_flight)),
            staging: StagingBudget::new(self.staging_limit),
            memory,
            codec: Arc::new(crate::fs::Plain),
            copies: Arc::default(),
            content_types: false,
        }
    }
}
