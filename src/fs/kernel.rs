//! What the kernel keeps of the volume's files (their attributes, their pages),
//! for the filesystem to correct when S3 says otherwise. The FUSE adapter
//! implements [`KernelCache`] with the kernel's notifications; without one
//! (tests on the memory store), there is nothing to correct.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// The kernel's caches of a mounted volume.
pub trait KernelCache: Send + Sync {
    /// The kernel's attributes of file `ino` (its size) may be stale: it is
    /// to ask again before it relies on them.
    fn attributes_changed(&self, ino: u64);

    /// No page of file `ino` the kernel holds is to be served again. May wait
    /// for pages being read: never call it while answering a read of `ino`.
    fn drop_pages(&self, ino: u64);
}

/// The kernel, as the filesystem knows it: its caches once mounted, and the
/// size each file was last shown with.
#[derive(Default)]
pub(super) struct Kernel {
    cache: OnceLock<Arc<dyn KernelCache>>,
    sizes: Mutex<HashMap<u64, u64>>,
}

impl Kernel {
    pub fn attach(&self, cache: Arc<dyn KernelCache>) {
        let _ = self.cache.set(cache);
    }

    /// Notes that file `ino` is shown to the kernel `size` bytes long.
    pub fn shown(&self, ino: u64, size: u64) {
        self.sizes.lock().insert(ino, size);
    }

    /// The size file `ino` was last shown with, where a kernel holds it.
    pub fn size_shown(&self, ino: u64) -> Option<u64> {
        self.cache.get()?;
        self.sizes.lock().get(&ino).copied()
    }

    /// The kernel no longer knows `ino`.
    pub fn forgotten(&self, ino: u64) {
        self.sizes.lock().remove(&ino);
    }

    pub fn attributes_changed(&self, ino: u64) {
        if let Some(cache) = self.cache.get() {
            cache.attributes_changed(ino);
        }
    }

    /// Drops the kernel's pages of `ino` off the request being answered,
    /// which may hold some of them.
    pub fn drop_pages(&self, ino: u64) {
        if let Some(cache) = self.cache.get().cloned() {
            tokio::task::spawn_blocking(move || cache.drop_pages(ino));
        }
    }
}
