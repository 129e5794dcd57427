//! Each mount's own directory under the shared `blocks` directory.
//!
//! A mount creates `mount-PID-N/` (mode 0700) and holds an exclusive `flock` on
//! the directory itself and on its `lock` file for as long as it runs (the
//! first keeps it live whatever happens to the file; the second is what
//! earlier versions hold); at unmount it removes the directory.
//! A mount that died leaves its directory behind, unlocked: the next mount that
//! uses the same cache directory finds the lock free and removes it (or finds
//! no lock file at all in a directory older than [`UNLOCKED_GRACE`]: a mount
//! that died before it made one). Mounts
//! sharing a cache directory never touch each other's blocks. Everything goes
//! through directory descriptors ([`LocalDir`]): a link in the way is removed,
//! never followed.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

use crate::local_dir::LocalDir;

/// This mount's directory, locked while it lives.
pub(super) struct MountDir {
    /// The shared directory it is in.
    shared: LocalDir,
    name: String,
    dir: LocalDir,
    /// Held for the mount's life: tell later mounts this directory is in use.
    _locks: (Flock<OwnedFd>, Flock<File>),
}

/// How many names a new mount tries for its directory: another takes one only
/// by a collision of random names, or by looking at it at that very moment.
const NAME_TRIES: usize = 8;

impl MountDir {
    /// Removes the directories of mounts that are gone from `shared`, and makes
    /// a new, empty, locked directory in it.
    pub(super) fn create(shared: &LocalDir) -> io::Result<Self> {
        remove_abandoned(shared);
        for _ in 0..NAME_TRIES {
            let name = format!("mount-{}-{:08x}", std::process::id(), fastrand::u32(..));
            let dir = match shared.new_subdir(&name) {
                Ok(dir) => dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            // Another mount looking at it this moment (see remove_abandoned)
            // holds one of its locks: it leaves it alone, and so do we.
            let locks = match (dir.try_lock()?, lock_file(&dir, true)?) {
                (Some(dir_lock), Some(file_lock)) => (dir_lock, file_lock),
                _ => {
                    let _ = shared.remove_tree(&name);
                    continue;
                }
            };
            return Ok(Self {
                shared: shared.try_clone()?,
                name,
                dir,
                _locks: locks,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("no new cache directory could be locked in {NAME_TRIES} tries"),
        ))
    }

    /// The directory itself.
    pub(super) fn dir(&self) -> &LocalDir {
        &self.dir
    }

    /// Removes the directory and everything in it (at unmount).
    pub(super) fn remove(&self) {
        if let Err(e) = self.shared.remove_tree(&self.name) {
            warn!(dir = %self.dir.path().display(), error = %e, "cannot remove the cache directory");
        }
    }
}

/// How long a mount's directory may be without its lock file before it counts
/// as abandoned: a mount makes the file right after the directory.
pub(super) const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

/// Removes the directories of mounts that are gone: those whose lock nobody
/// holds, and those that never got one.
fn remove_abandoned(shared: &LocalDir) {
    let Ok(entries) = shared.entries() else {
        return;
    };
    for (name, is_dir) in entries {
        if !name.starts_with("mount-") {
            continue;
        }
        if !is_dir {
            // A link or a file where a mount's directory would be: never ours.
            let _ = shared.remove_file(&name);
            continue;
        }
        // Never created here: it may have just gone with its mount.
        let Ok(dir) = shared.existing_subdir(&name) else {
            continue;
        };
        // A live mount holds the lock on its directory; one of an earlier
        // version only that on its lock file. Both are held while removing.
        let Ok(Some(_dir_lock)) = dir.try_lock() else {
            continue;
        };
        let _file_lock = match lock_file(&dir, false) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let old = dir
                    .modified()
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age > UNLOCKED_GRACE);
                if !old {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        info!(dir = %dir.path().display(), "removing the cache of a mount that is gone");
        match shared.remove_tree(&name) {
            // Another mount starting removed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(dir = %dir.path().display(), error = %e, "cannot remove an abandoned cache")
            }
            Ok(()) => {}
        }
    }
}

/// Takes the exclusive lock on `dir/lock` without waiting: `None` when another
/// process holds it. The lock lasts as long as the returned value.
fn lock_file(dir: &LocalDir, create: bool) -> io::Result<Option<Flock<File>>> {
    let file = dir.open_read_write("lock", create)?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
}
