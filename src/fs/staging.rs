//! The staging registry: the files being written in this mount, by inode,
//! with the handles that hold each, and the changes of closed files' modes,
//! owners and times that wait to be copied onto their objects.
//!
//! A change is taken by whoever puts it in S3 (the volume's metadata turn, an
//! fsync, a stop, a rename's copy). Until its taker settles it, the change is
//! not forgotten: a taker that fails or is cut short gives it back to wait
//! again, and a stop counts a change still taken as not kept. A copy that
//! failed is tried again by the volume's turn only after a pause that grows
//! with each failure (an fsync or a stop tries at once).
//!
//! A file is staged by the first handle that writes it (or by its creation),
//! each further handle attaches to it, and the last one to let go publishes
//! its changes and unstages it. A stop abandons every staged file at once:
//! a file is staged only under the registry's lock with the stop checked,
//! and the stop is marked under that lock, so every staged file is either
//! abandoned by the stop or never staged.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::posix::Posix;
use super::upload::StagedFile;
use super::{FsError, FsResult};

/// A file being written, and how many handles are open on it.
struct Staged {
    file: Arc<StagedFile>,
    handles: usize,
}

/// A change of mode, owner or time not yet in S3.
struct Pending {
    posix: Posix,
    since: Instant,
    /// Copies of it that failed one after another, and when the volume's
    /// turn may try the next.
    failures: u32,
    retry_at: Option<Instant>,
}

impl Pending {
    fn new(posix: Posix) -> Self {
        Self {
            posix,
            since: Instant::now(),
            failures: 0,
            retry_at: None,
        }
    }
}

/// The longest pause between two copies of a change that keeps failing.
const MOST_RETRY_PAUSE: Duration = Duration::from_secs(64);

/// The pause before the volume's turn tries a change again after its
/// `failures`th failed copy in a row: 1 s, doubling up to [`MOST_RETRY_PAUSE`].
fn retry_pause(failures: u32) -> Duration {
    let pause = Duration::from_secs(1 << failures.saturating_sub(1).min(6));
    pause.min(MOST_RETRY_PAUSE)
}

#[derive(Default)]
struct Changes {
    waiting: HashMap<u64, Pending>,
    /// How many takers are putting a change of each inode in S3.
    taken: HashMap<u64, usize>,
}

impl Changes {
    /// Every inode whose change waits or is being put in S3.
    fn not_in_s3(&self) -> Vec<u64> {
        let mut inos: Vec<u64> = self.waiting.keys().copied().collect();
        let taken = self.taken.keys();
        inos.extend(taken.filter(|ino| !self.waiting.contains_key(ino)));
        inos
    }
}

#[derive(Default)]
pub(super) struct StagingRegistry {
    files: Mutex<HashMap<u64, Staged>>,
    changes: Mutex<Changes>,
    stopped: AtomicBool,
}

/// A change taken to be put in S3. Dropped without [`Taken::settle`] (its
/// copy failed, or its taker was cut short), it waits again under whatever
/// change came since.
pub(super) struct Taken<'a> {
    registry: &'a StagingRegistry,
    ino: u64,
    change: Option<Pending>,
    failed: bool,
}

impl Taken<'_> {
    pub(super) fn posix(&self) -> &Posix {
        &self.change.as_ref().expect("a change until settled").posix
    }

    /// The change is in S3, or moot: it waits no more.
    pub(super) fn settle(mut self) {
        self.change = None;
    }

    /// Its copy failed: it waits again, for the volume's turn to try after
    /// the pause returned.
    pub(super) fn failed(mut self) -> Duration {
        self.failed = true;
        let failures = self.change.as_ref().map_or(0, |c| c.failures) + 1;
        retry_pause(failures)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut changes = self.registry.changes.lock();
        if let Entry::Occupied(mut takers) = changes.taken.entry(self.ino) {
            *takers.get_mut() -= 1;
            if *takers.get() == 0 {
                takers.remove();
            }
        }
        let Some(mut taken) = self.change.take() else {
            return;
        };
        if self.failed {
            taken.failures += 1;
            taken.retry_at = Some(Instant::now() + retry_pause(taken.failures));
        }
        // (Given back after a stop, it waits where nothing looks: the stop
        // counted it as not kept while it was taken.)
        match changes.waiting.entry(self.ino) {
            Entry::Occupied(mut since) => {
                let since = since.get_mut();
                since.posix = taken.posix.updated(&since.posix);
                since.since = taken.since;
                since.failures = taken.failures;
                since.retry_at = taken.retry_at;
            }
            Entry::Vacant(slot) => {
                slot.insert(taken);
            }
        }
    }
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
        self.files.lock().get(&ino).map(|s| s.file.clone())
    }

    pub(super) fn contains(&self, ino: u64) -> bool {
        self.files.lock().contains_key(&ino)
    }

    /// How many handles hold the staged file of `ino`.
    pub(super) fn handles(&self, ino: u64) -> usize {
        self.files.lock().get(&ino).map_or(0, |s| s.handles)
    }

    /// Every file staged now.
    pub(super) fn all(&self) -> Vec<(u64, Arc<StagedFile>)> {
        let files = self.files.lock();
        files
            .iter()
            .map(|(ino, s)| (*ino, s.file.clone()))
            .collect()
    }

    /// One more handle on the staged file of `ino`, if there is one.
    pub(super) fn attach(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let mut files = self.files.lock();
        let staged = files.get_mut(&ino)?;
        staged.handles += 1;
        Some(staged.file.clone())
    }

    /// Stages `file` for `ino` with one handle on it, or attaches to the one
    /// another open staged meanwhile.
    pub(super) fn stage(&self, ino: u64, file: Arc<StagedFile>) -> FsResult<Arc<StagedFile>> {
        let mut files = self.files.lock();
        self.running()?;
        let staged = files.entry(ino).or_insert(Staged { file, handles: 0 });
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
        files.insert(ino, Staged { file, handles: 1 });
        Ok(ino)
    }

    /// One handle fewer on the staged file of `ino`: the file, when that was
    /// the last. It stays staged while it uploads, so that a stop waits for
    /// it and an open meanwhile shares it.
    pub(super) fn detach(&self, ino: u64) -> Option<Arc<StagedFile>> {
        let mut files = self.files.lock();
        let staged = files.get_mut(&ino)?;
        staged.handles -= 1;
        (staged.handles == 0).then(|| staged.file.clone())
    }

    /// Unstages `file` if no handle took it again since it was detached;
    /// whether it did (a stop meanwhile abandoned it, or an open holds it).
    pub(super) fn unstage(&self, ino: u64, file: &Arc<StagedFile>) -> bool {
        let mut files = self.files.lock();
        let unused = files
            .get(&ino)
            .is_some_and(|s| s.handles == 0 && Arc::ptr_eq(&s.file, file));
        unused && files.remove(&ino).is_some()
    }

    /// Marks the stop and takes every staged file and every inode whose
    /// change of mode, owner or time still waits or is still being put in S3
    /// (its copy may or may not get there).
    pub(super) fn stop(&self) -> (Vec<Arc<StagedFile>>, Vec<u64>) {
        let files: Vec<Arc<StagedFile>> = {
            let mut files = self.files.lock();
            self.stopped.store(true, Ordering::SeqCst);
            files.drain().map(|(_, s)| s.file).collect()
        };
        let mut changes = self.changes.lock();
        let not_kept = changes.not_in_s3();
        changes.waiting.clear();
        (files, not_kept)
    }

    /// Merges a change into what waits for `ino` (from the time the first
    /// began waiting). Refused once the volume stops: no stop would find it.
    pub(super) fn merge_pending(
        &self,
        ino: u64,
        merge: impl FnOnce(Posix) -> Posix,
    ) -> FsResult<()> {
        let mut changes = self.changes.lock();
        // Checked under the lock the stop takes its changes under, after
        // marking itself: a change merged before that is taken by it.
        self.running()?;
        let entry = changes
            .waiting
            .entry(ino)
            .or_insert_with(|| Pending::new(Posix::default()));
        entry.posix = merge(std::mem::take(&mut entry.posix));
        Ok(())
    }

    /// An upload of `ino` carried `sent`: what waited and is in it waits no
    /// more. (Its change time is the upload's own, or S3's: a later change.)
    pub(super) fn settle_pending(&self, ino: u64, sent: &Posix) {
        let pending = &mut self.changes.lock().waiting;
        if pending.get(&ino).is_some_and(|waiting| {
            let waiting = Posix {
                ctime: None,
                ..waiting.posix.clone()
            };
            sent.updated(&waiting) == *sent
        }) {
            pending.remove(&ino);
        }
    }

    /// `known` with what waits for `ino` over it.
    pub(super) fn shown(&self, ino: u64, known: Option<&Posix>) -> Option<Posix> {
        match self.changes.lock().waiting.get(&ino) {
            Some(pending) => Some(known.cloned().unwrap_or_default().updated(&pending.posix)),
            None => known.cloned(),
        }
    }

    /// The change waiting for `ino`, taken: whoever takes it puts it in S3,
    /// or gives it back.
    pub(super) fn take_pending(&self, ino: u64) -> Option<Taken<'_>> {
        let mut changes = self.changes.lock();
        let change = changes.waiting.remove(&ino)?;
        *changes.taken.entry(ino).or_default() += 1;
        Some(Taken {
            registry: self,
            ino,
            change: Some(change),
            failed: false,
        })
    }

    /// The change waiting for `ino` is moot (its file is gone).
    pub(super) fn drop_pending(&self, ino: u64) {
        self.changes.lock().waiting.remove(&ino);
    }

    /// The inodes whose change has waited `delay` and, if a copy of it
    /// failed, the pause after that.
    pub(super) fn due(&self, delay: Duration) -> Vec<u64> {
        let now = Instant::now();
        let changes = self.changes.lock();
        changes
            .waiting
            .iter()
            .filter(|(_, p)| {
                now.duration_since(p.since) >= delay && p.retry_at.is_none_or(|at| at <= now)
            })
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Every inode whose change waits or is being put in S3.
    pub(super) fn not_in_s3(&self) -> Vec<u64> {
        self.changes.lock().not_in_s3()
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
        assert!(!registry.unstage(1, &last));
        assert!(registry.contains(1));
        let last = registry.detach(1).unwrap();
        assert!(registry.unstage(1, &last));
        assert!(!registry.contains(1) && registry.file(1).is_none());
    }

    #[tokio::test]
    async fn after_a_stop_nothing_is_staged_and_everything_staged_was_taken() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StagingRegistry::default();
        registry.stage(1, file(&dir, "a")).unwrap();
        registry.stage_new(file(&dir, "b"), || 2).unwrap();
        registry.merge_pending(3, |posix| posix).unwrap();
        let (files, waiting) = registry.stop();
        assert_eq!(files.len(), 2);
        assert_eq!(waiting, [3]);
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

    #[test]
    fn a_change_waits_until_an_upload_carries_it() {
        let registry = StagingRegistry::default();
        let chmod = Posix {
            perm: Some(0o600),
            ..Posix::default()
        };
        registry
            .merge_pending(7, |waiting| waiting.updated(&chmod))
            .unwrap();
        assert_eq!(registry.shown(7, None).unwrap().perm, Some(0o600));
        assert_eq!(registry.due(Duration::ZERO), [7]);
        assert!(registry.due(Duration::from_secs(3600)).is_empty());
        // An upload that carried another mode leaves it waiting.
        registry.settle_pending(7, &Posix::default());
        assert!(registry.shown(7, None).is_some());
        registry.settle_pending(7, &chmod);
        assert!(registry.take_pending(7).is_none());
        assert_eq!(registry.shown(7, None), None);
    }

    fn perm(perm: u16) -> Posix {
        Posix {
            perm: Some(perm),
            ..Posix::default()
        }
    }

    #[test]
    fn a_taken_change_is_given_back_unless_settled_and_a_stop_counts_it() {
        let registry = StagingRegistry::default();
        let merge = |ino, change: Posix| registry.merge_pending(ino, |w| w.updated(&change));
        merge(1, perm(0o600)).unwrap();
        merge(2, perm(0o640)).unwrap();
        // Settled: gone.
        registry.take_pending(1).unwrap().settle();
        assert_eq!(registry.not_in_s3(), [2]);
        assert!(registry.take_pending(1).is_none());
        // Taken, then a newer change, then the taker gives up: the newer one
        // wins where both set the same thing, and the change is due again.
        let taken = registry.take_pending(2).unwrap();
        assert_eq!(taken.posix().perm, Some(0o640));
        assert_eq!(registry.not_in_s3(), [2], "a taken change counts");
        merge(2, perm(0o444)).unwrap();
        drop(taken);
        assert_eq!(registry.due(Duration::ZERO), [2]);
        assert_eq!(registry.shown(2, None).unwrap().perm, Some(0o444));
        // A failed copy waits its pause before the turn tries it again.
        let pause = registry.take_pending(2).unwrap().failed();
        assert_eq!(pause, Duration::from_secs(1));
        assert!(registry.due(Duration::ZERO).is_empty());
        assert_eq!(
            registry.take_pending(2).unwrap().failed(),
            Duration::from_secs(2)
        );
        // A stop counts what waits and what is taken, once each.
        merge(3, perm(0o600)).unwrap();
        let _taken = registry.take_pending(3).unwrap();
        let (_, mut not_kept) = registry.stop();
        not_kept.sort();
        assert_eq!(not_kept, [2, 3]);
        assert!(matches!(merge(4, perm(0o600)), Err(FsError::Stopped)));
    }

    #[test]
    fn the_pause_after_failed_copies_doubles_up_to_a_limit() {
        let pauses: Vec<u64> = (1..=9).map(|n| retry_pause(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }
}
