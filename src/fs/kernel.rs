//! What the kernel keeps of the volume's files (their attributes, their pages),
//! for the filesystem to correct when S3 says otherwise. The FUSE adapter
//! implements it with the kernel's notifications; without one (tests on the
//! memory store), there is nothing to correct.

/// The kernel's caches of a mounted volume.
pub trait KernelCache: Send + Sync {
    /// The kernel's attributes of file `ino` (its size) may be stale: it is
    /// to ask again before it relies on them.
    fn attributes_changed(&self, ino: u64);

    /// No page of file `ino` the kernel holds is to be served again. May wait
    /// for pages being read: never call it while answering a read of `ino`.
    fn drop_pages(&self, ino: u64);
}
