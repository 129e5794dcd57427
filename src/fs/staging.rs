//! The staging registry: the files being written in this mount, by inode,
//! with the handles that hold each.
//!
//! A file is staged by the first handle that writes it (or by its creation),
//! each further handle attaches to it, and the last one to let go publishes
//! its changes and unstages it; the registry keeps it until its close (the
//! wait for its part uploads, the abort of an upload not completed) is done.
//! A stop takes every staged file at once, to abandon it, and every closing
//! one, to wait for its close: a file is staged only under the registry's
//! lock with the stop checked, and the stop is marked under that lock, so
//! every staged file is either abandoned by the stop or never staged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::upload::StagedFile;
use super::{FsError, FsResult};

/// A file being written, and how many handles are open on it.
struct Staged {
    file: Arc<StagedFile>,
    handles: usize,
}

#[derive(Default)]
struct Files {
    staged: HashMap<u64, Staged>,
    /// Unstaged by their last handle, and still being closed.
    closing: Vec<Arc<StagedFile>>,
    /// What the stop took, kept so that a stop that runs again (the first
    /// cut short) takes the same files.
    taken: Taken,
}

/// What a stop takes.
#[derive(Clone, Default)]
pub(super) struct Taken {
    /// The files being written: to be abandoned.
    pub(super) staged: Vec<Arc<StagedFile>>,
    /// The files whose close is under way: to be waited for.
    pub(super) closing: Vec<Arc<StagedFile>>,
}

/// A file unstaged and being closed: it is one of the files a stop takes
/// until this is dropped.
pub(super) struct Closing<'a> {
    registry: &'a StagingRegistry,
    file: Arc<StagedFile>,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut files = self.registry.files.lock();
        files.closing.retain(|f| !Arc::ptr_eq(f, &self.file));
    }
}

#[derive(Default)]
pub(super) struct StagingRegistry {
    files: Mutex<Files>,
    stopped: AtomicBool,
}

impl StagingRegistry {
    /// ENOTCONN once [`StagingRegistry::stop`] ran.
    pub(super) fn running(&self) -> FsResult<()> {
        match self.stopped.load(Ordering::SeqCst) {
            true => Err(FsError::Stopped),
            false => Ok(()),
        }
    }

    /// The staged file of `ino`, if it is being written.
    pub(super) fn file(&self, ino: u64) -> Option<Arc<StagedFile>> {
        self.files.lock().staged.get(&ino).map(|s| s.file.clone())
    }

    pub(super) fn contains(&self, ino: u64) -> bool {
        self.files.lock().staged.contains_key(&ino)
    }

    /// How many handles hold the staged file of `ino`.
    pub(super) fn handles(&self, ino: u64) -> usize {
        self.files.lock().staged.get(&ino).map_or(0, |s| s.handles)
    }

    /// Every file staged now.
    pub(super) fn all(&self) -> Vec<(u64, Arc<StagedFile>)> {
        let files = self.files.lock();
        files
            .staged
            .iter()
            .map(|(ino, s)| (*ino, s.file.clone()))
            .collect()
    }

    /// No file is staged or being closed.
    pub(super) fn is_idle(&self) -> bool {
        let files = self.files.lock();
        files.staged.is_empty() && files.closing.is_empty()
    }

    /// One more handle on the staged file of `ino`, if there is one.
    pub(super) fn attach(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let mut files = self.files.lock();
        let staged = files.staged.get_mut(&ino)?;
        staged.handles += 1;
        Some(staged.file.clone())
    }

    /// Stages `file` for `ino` with one handle on it, or attaches to the one
    /// another open staged meanwhile.
    pub(super) fn stage(&self, ino: u64, file: Arc<StagedFile>) -> FsResult<Arc<StagedFile>> {
        let mut files = self.files.lock();
        self.running()?;
        let staged = files
            .staged
            .entry(ino)
            .or_insert(Staged { file, handles: 0 });
        staged.handles += 1;
        Ok(staged.file.clone())
    }

    /// Stages `file`, a new file, with one handle on it, for the inode
    /// `number` gives it (called under this registry's lock, after the stop
    /// was checked).
    pub(super) fn stage_new(
        &self,
        file: Arc<StagedFile>,
        number: impl FnOnce() -> u64,
    ) -> FsResult<u64> {
        let mut files = self.files.lock();
        self.running()?;
        let ino = number();
        files.staged.insert(ino, Staged { file, handles: 1 });
        Ok(ino)
    }

    /// One handle fewer on the staged file of `ino`: the file, when that was
    /// the last. It stays staged while it uploads, so that a stop waits for
    /// it and an open meanwhile shares it.
    pub(super) fn detach(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let mut files = self.files.lock();
        let staged = files.staged.get_mut(&ino)?;
        staged.handles -= 1;
        (staged.handles == 0).then(|| staged.file.clone())
    }

    /// Unstages `file` if no handle took it again since it was detached:
    /// it is then closing until the guard returned is dropped (when its
    /// close is done, or given up). `None` if one did (a stop meanwhile
    /// abandoned it, or an open holds it).
    pub(super) fn unstage(&self, ino: u64, file: &Arc<StagedFile>) -> Option<Closing<'_>> {
        let mut files = self.files.lock();
        let unused = files
            .staged
            .get(&ino)
            .is_some_and(|s| s.handles == 0 && Arc::ptr_eq(&s.file, file));
        if !unused {
            return None;
        }
        files.staged.remove(&ino);
        files.closing.push(file.clone());
        Some(Closing {
            registry: self,
            file: file.clone(),
        })
    }

    /// Marks the stop and takes every file staged or being closed; the
    /// same files again if it ran before.
    pub(super) fn stop(&self) -> Taken {
        let mut files = self.files.lock();
        self.stopped.store(true, Ordering::SeqCst);
        let Files {
            staged,
            closing,
            taken,
        } = &mut *files;
        taken.staged.extend(staged.drain().map(|(_, s)| s.file));
        taken.closing.append(closing);
        taken.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::upload::WriteConfig;
    use crate::local_dir::LocalDir;
    use crate::memory::MemoryBudget;
    use crate::store::memory::MemoryStore;

    fn file(dir: &tempfile::TempDir, key: &str) -> Arc<StagedFile> {
        let config = WriteConfig::new(LocalDir::open_or_create(dir.path()).unwrap());
        let shares = config.shares(MemoryBudget::new(1 << 30, false, None));
        let store = Arc::new(MemoryStore::new("bkt"));
        StagedFile::new(key, None, store, &config, shares, true).unwrap()
    }

    #[tokio::test]
    async fn the_last_handle_unstages_unless_another_took_the_file_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StagingRegistry::default();
        let first = file(&dir, "a");
        let staged = registry.stage(1, first.clone()).unwrap();
        // A second open shares what the first staged, not its own file.
        let shared = registry.stage(1, file(&dir, "a")).unwrap();
        assert!(Arc::ptr_eq(&staged, &first) && Arc::ptr_eq(&shared, &first));
        assert_eq!(registry.handles(1), 2);
        assert!(registry.detach(1).is_none(), "one handle still holds it");
        let last = registry.detach(1).expect("the last handle let go");
        // Opened again while it uploaded: it stays staged.
        assert!(registry.attach(1).is_some());
        assert!(registry.unstage(1, &last).is_none());
        assert!(registry.contains(1));
        let last = registry.detach(1).unwrap();
        assert!(registry.unstage(1, &last).is_some());
        assert!(!registry.contains(1) && registry.file(1).is_none());
    }

    #[tokio::test]
    async fn a_stop_takes_the_files_still_being_closed_and_takes_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StagingRegistry::default();
        let keys = |files: &[Arc<StagedFile>]| {
            let mut keys: Vec<String> = files.iter().map(|f| f.key()).collect();
            keys.sort();
            keys
        };
        let done = registry.stage(1, file(&dir, "done")).unwrap();
        let old = registry.stage(2, file(&dir, "old")).unwrap();
        let mut guards = Vec::new();
        for (ino, file) in [(1, &done), (2, &old)] {
            registry.detach(ino).unwrap();
            guards.push(registry.unstage(ino, file).expect("unused"));
        }
        assert!(!registry.contains(2) && !registry.is_idle());
        drop(guards.remove(0));
        assert!(!registry.is_idle(), "one is still being closed");
        // The same inode written again while its old file is being closed.
        let new = registry.stage(2, file(&dir, "new")).unwrap();
        assert!(!Arc::ptr_eq(&new, &old));
        let taken = registry.stop();
        assert_eq!(keys(&taken.staged), ["new"]);
        assert_eq!(keys(&taken.closing), ["old"]);
        // Its close done meanwhile, a stop run again (the first cut short)
        // still takes the same files.
        drop(guards);
        let again = registry.stop();
        assert_eq!(keys(&again.staged), ["new"]);
        assert_eq!(keys(&again.closing), ["old"]);
        assert!(registry.is_idle() && registry.all().is_empty());
    }

    #[tokio::test]
    async fn after_a_stop_nothing_is_staged_and_everything_staged_was_taken() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StagingRegistry::default();
        registry.stage(1, file(&dir, "a")).unwrap();
        registry.stage_new(file(&dir, "b"), || 2).unwrap();
        let taken = registry.stop();
        assert_eq!((taken.staged.len(), taken.closing.len()), (2, 0));
        assert!(matches!(registry.running(), Err(FsError::Stopped)));
        let refused = registry.stage(4, file(&dir, "c"));
        assert!(matches!(refused, Err(FsError::Stopped)));
        let mut numbered = false;
        let refused = registry.stage_new(file(&dir, "d"), || {
            numbered = true;
            5
        });
        assert!(matches!(refused, Err(FsError::Stopped)) && !numbered);
        assert!(registry.all().is_empty());
    }
}
