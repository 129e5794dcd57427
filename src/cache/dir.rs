//! Each mount's own directory under the shared cache directory.
//!
//! A mount creates `mount-PID-N/` (mode 0700) and holds an exclusive `flock` on
//! its `lock` file for as long as it runs; at unmount it removes the directory.
//! A mount that died leaves its directory behind, unlocked: the next mount that
//! uses the same cache directory finds the lock free and removes it. Mounts
//! sharing a cache directory never touch each other's blocks.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

/// This mount's directory, locked while it lives.
pub(super) struct MountDir {
    path: PathBuf,
    /// Held for the mount's life: tells later mounts this directory is in use.
    _lock: Flock<File>,
}

impl MountDir {
    /// Creates `shared` if needed (mode 0700), removes the directories of mounts
    /// that are gone, and makes a new, empty, locked directory in it.
    pub(super) fn create(shared: &Path) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(shared)?;
        remove_abandoned(shared);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = shared.join(format!("mount-{}-{nanos:08x}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        let lock = lock_file(&path, true)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::WouldBlock, "a new cache directory is locked")
        })?;
        Ok(Self { path, _lock: lock })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it (at unmount).
    pub(super) fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn!(dir = %self.path.display(), error = %e, "cannot remove the cache directory");
        }
    }
}

/// Removes the directories of mounts that are gone: those whose lock nobody holds.
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("mount-"));
        if !ours || !path.is_dir() {
            continue;
        }
        // Held while removing, so a mount that picks the same name waits.
        if let Ok(Some(_lock)) = lock_file(&path, false) {
            info!(dir = %path.display(), "removing the cache of a mount that is gone");
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), error = %e, "cannot remove an abandoned cache");
            }
        }
    }
}

/// Takes the exclusive lock on `dir/lock` without waiting: `None` when another
/// process holds it. The lock lasts as long as the returned value.
fn lock_file(dir: &Path, create: bool) -> io::Result<Option<Flock<File>>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
}
