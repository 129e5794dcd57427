//! The changes of closed files' modes, owners and times that wait to be
//! copied onto their objects.
//!
//! A change is taken by whoever puts it in S3 (the volume's metadata turn, an
//! fsync, a stop, a rename's copy). Until its taker settles it, the change is
//! not forgotten: a taker that fails or is cut short gives it back to wait
//! again, under what came since (a newer change, or what an upload carried),
//! and a stop counts a change still taken as not kept. A copy that failed is
//! tried again by the volume's turn only after a pause that grows with each
//! failure (an fsync or a stop tries at once); one that never can succeed is
//! not tried again, and is reported as not kept.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::posix::Posix;
use super::{FsError, FsResult};

/// A change of mode, owner or time not yet in S3.
struct Pending {
    posix: Posix,
    since: Instant,
    /// Copies of it that failed one after another, and when the volume's
    /// turn may try the next.
    failures: u32,
    retry_at: Option<Instant>,
    /// The order of the last change merged into it, among all changes.
    seq: u64,
}

/// The pause before the volume's turn tries a change again after its
/// `failures`th failed copy in a row: 1 s, doubling up to 64 s.
fn retry_pause(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(6))
}

#[derive(Default)]
struct Changes {
    waiting: HashMap<u64, Pending>,
    /// The changes of each inode being put in S3: how many takers, what
    /// they set (shown until they are in S3), and the order of the newest.
    taken: HashMap<u64, (usize, Posix, u64)>,
    /// What an upload carried of a file while a change of it was taken (all
    /// its mode, owner and times, as shown when the upload read them), and
    /// the order of the last change that could be in it.
    carried: HashMap<u64, (u64, Posix)>,
    /// Files whose change could never be kept (its copy failed for good),
    /// with that change's order: until a newer change is in S3, or the
    /// file's end.
    lost: HashMap<u64, u64>,
    /// The order given to the last change.
    seq: u64,
    /// The volume stopped: no change is taken in any more.
    stopped: bool,
    /// The inodes whose change the stop found not in S3.
    not_kept: Vec<u64>,
}

impl Changes {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Every inode whose change waits or is being put in S3, and with
    /// `lost`, those whose change could not be kept.
    fn unsettled(&self, lost: bool) -> Vec<u64> {
        let mut inos: Vec<u64> = self.waiting.keys().copied().collect();
        let taken = self.taken.keys();
        let lost = self.lost.keys().filter(|_| lost);
        for ino in taken.chain(lost) {
            if !inos.contains(ino) {
                inos.push(*ino);
            }
        }
        inos
    }
}

/// A change taken to be put in S3. Dropped without [`Taken::settle`] (its
/// copy failed, or its taker was cut short), it waits again, under what came
/// since: the changes merged meanwhile, and what an upload carried.
#[must_use = "a change taken and dropped waits again"]
pub(super) struct Taken<'a> {
    queue: &'a ChangeQueue,
    ino: u64,
    change: Option<Pending>,
    failed: bool,
}

impl Taken<'_> {
    pub(super) fn posix(&self) -> &Posix {
        &self.change.as_ref().expect("a change until settled").posix
    }

    /// How many copies of it failed one after another before this one.
    pub(super) fn failures(&self) -> u32 {
        self.change.as_ref().map_or(0, |c| c.failures)
    }

    /// The change is in S3, or moot: it waits no more (nor does the mark
    /// of an older one that could not be kept).
    pub(super) fn settle(mut self) {
        if let Some(change) = self.change.take() {
            let mut changes = self.queue.changes.lock();
            if changes
                .lost
                .get(&self.ino)
                .is_some_and(|at| *at < change.seq)
            {
                changes.lost.remove(&self.ino);
            }
        }
    }

    /// Its copy failed: it waits again, for the volume's turn to try after
    /// the pause returned.
    pub(super) fn failed(mut self) -> Duration {
        self.failed = true;
        retry_pause(self.failures() + 1)
    }

    /// It can never be put in S3: it waits no more, and is reported as not
    /// kept (by an fsync, and by the stop) until a newer change.
    pub(super) fn lost(mut self) {
        let Some(change) = self.change.take() else {
            return;
        };
        let mut changes = self.queue.changes.lock();
        // Unless a newer change came meanwhile: it is the file's now.
        let newer = changes
            .waiting
            .get(&self.ino)
            .is_some_and(|w| w.seq > change.seq);
        if !newer {
            changes.lost.insert(self.ino, change.seq);
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut changes = self.queue.changes.lock();
        let carried = changes.carried.get(&self.ino).cloned();
        if let Entry::Occupied(mut takers) = changes.taken.entry(self.ino) {
            takers.get_mut().0 -= 1;
            if takers.get().0 == 0 {
                takers.remove();
                changes.carried.remove(&self.ino);
            }
        }
        let Some(mut taken) = self.change.take() else {
            return;
        };
        // What an upload carried that was read after it was made is newer:
        // never undone.
        if let Some((at, carried)) = carried
            && at >= taken.seq
        {
            taken.posix = taken.posix.without(&carried);
            if taken.posix == Posix::default() {
                return;
            }
        }
        if self.failed {
            taken.failures += 1;
            taken.retry_at = Some(Instant::now() + retry_pause(taken.failures));
        }
        // (Given back after a stop, it is counted by no stop a second time:
        // the first counted it while it was taken.)
        match changes.waiting.entry(self.ino) {
            Entry::Occupied(mut since) => {
                let since = since.get_mut();
                // The newer of the two wins where both set the same thing.
                since.posix = match taken.seq < since.seq {
                    true => taken.posix.updated(&since.posix),
                    false => since.posix.updated(&taken.posix),
                };
                since.since = since.since.min(taken.since);
                since.seq = since.seq.max(taken.seq);
                if self.failed {
                    since.failures = taken.failures;
                    since.retry_at = taken.retry_at;
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(taken);
            }
        }
    }
}

/// The changes waiting, and those being put in S3.
#[derive(Default)]
pub(super) struct ChangeQueue {
    changes: Mutex<Changes>,
}

impl ChangeQueue {
    /// The volume stops: every inode whose change is not in S3 (waiting,
    /// being put there, or never to be), the same at every call (a stop
    /// that runs again counts what the first found); from now on no change
    /// waits, and a new one is refused.
    pub(super) fn stop(&self) -> Vec<u64> {
        let mut changes = self.changes.lock();
        if !std::mem::replace(&mut changes.stopped, true) {
            changes.not_kept = changes.unsettled(true);
            changes.waiting.clear();
            changes.lost.clear();
        }
        changes.not_kept.clone()
    }

    /// Merges a change into what waits for `ino` (from the time the first
    /// began waiting). Refused once the volume stops: no stop would find it.
    pub(super) fn merge_pending(
        &self,
        ino: u64,
        merge: impl FnOnce(Posix) -> Posix,
    ) -> FsResult<()> {
        let mut changes = self.changes.lock();
        // Under the lock the stop marks itself and takes the changes under:
        // a change merged before that is taken by it.
        if changes.stopped {
            return Err(FsError::Stopped);
        }
        let seq = changes.next_seq();
        let entry = changes.waiting.entry(ino).or_insert_with(|| Pending {
            posix: Posix::default(),
            since: Instant::now(),
            failures: 0,
            retry_at: None,
            seq,
        });
        entry.posix = merge(std::mem::take(&mut entry.posix));
        entry.seq = seq;
        Ok(())
    }

    /// The order of the last change made: what a reader of a file's mode,
    /// owner and times then shows includes every change up to it.
    pub(super) fn made_so_far(&self) -> u64 {
        self.changes.lock().seq
    }

    /// An upload of `ino` carried `sent`, read when the changes made so far
    /// were those up to `as_of` ([`ChangeQueue::made_so_far`]): what waited
    /// and is in it waits no more, and a change taken before is not given
    /// back over it nor shown. (Its change time is the upload's own, or
    /// S3's: a later change.)
    pub(super) fn settle_pending(&self, ino: u64, sent: &Posix, as_of: u64) {
        let mut changes = self.changes.lock();
        // The upload carried what the file showed: a change not kept before
        // is in S3 now.
        if changes.lost.get(&ino).is_some_and(|at| *at <= as_of) {
            changes.lost.remove(&ino);
        }
        if let Some(taken) = changes.taken.get_mut(&ino) {
            if taken.2 <= as_of {
                taken.1 = taken.1.without(sent);
            }
            changes.carried.insert(ino, (as_of, sent.clone()));
        }
        if changes.waiting.get(&ino).is_some_and(|waiting| {
            let waiting = Posix {
                ctime: None,
                ..waiting.posix.clone()
            };
            sent.updated(&waiting) == *sent
        }) {
            changes.waiting.remove(&ino);
        }
    }

    /// `known` with what is being put in S3 for `ino` and what waits for it
    /// over it.
    pub(super) fn shown(&self, ino: u64, known: Option<&Posix>) -> Option<Posix> {
        let changes = self.changes.lock();
        let taken = changes.taken.get(&ino).map(|(_, posix, _)| posix);
        let waiting = changes.waiting.get(&ino).map(|p| &p.posix);
        if taken.is_none() && waiting.is_none() {
            return known.cloned();
        }
        let mut shown = known.cloned().unwrap_or_default();
        for change in taken.into_iter().chain(waiting) {
            shown = shown.updated(change);
        }
        Some(shown)
    }

    /// A write takes away what would run the file with other privileges
    /// (see [`Posix::without_privileges`]): from the change of `ino` still
    /// waiting, too.
    pub(super) fn drop_privileges(&self, ino: u64) {
        if let Some(waiting) = self.changes.lock().waiting.get_mut(&ino) {
            waiting.posix = waiting.posix.without_privileges();
        }
    }

    /// Whether a change of `ino` waits or is being put in S3.
    pub(super) fn has(&self, ino: u64) -> bool {
        let changes = self.changes.lock();
        changes.waiting.contains_key(&ino) || changes.taken.contains_key(&ino)
    }

    /// The change waiting for `ino`, taken: whoever takes it puts it in S3,
    /// or gives it back.
    pub(super) fn take_pending(&self, ino: u64) -> Option<Taken<'_>> {
        self.take_if(ino, |_| true)
    }

    /// [`ChangeQueue::take_pending`] if the change has waited `delay`
    /// and, if a copy of it failed, the pause after that.
    pub(super) fn take_due(&self, ino: u64, delay: Duration) -> Option<Taken<'_>> {
        let now = Instant::now();
        self.take_if(ino, |pending| is_due(pending, delay, now))
    }

    fn take_if(&self, ino: u64, due: impl FnOnce(&Pending) -> bool) -> Option<Taken<'_>> {
        let mut changes = self.changes.lock();
        if !changes.waiting.get(&ino).is_some_and(due) {
            return None;
        }
        let change = changes.waiting.remove(&ino)?;
        let taken = changes.taken.entry(ino).or_default();
        taken.0 += 1;
        taken.1 = taken.1.updated(&change.posix);
        taken.2 = taken.2.max(change.seq);
        Some(Taken {
            queue: self,
            ino,
            change: Some(change),
            failed: false,
        })
    }

    /// What waits for `ino` is moot (its file is gone), and so is a change
    /// of it that could not be kept.
    pub(super) fn drop_pending(&self, ino: u64) {
        let mut changes = self.changes.lock();
        changes.waiting.remove(&ino);
        changes.lost.remove(&ino);
    }

    /// The inodes whose change has waited `delay` and, if a copy of it
    /// failed, the pause after that.
    pub(super) fn due(&self, delay: Duration) -> Vec<u64> {
        let now = Instant::now();
        let changes = self.changes.lock();
        changes
            .waiting
            .iter()
            .filter(|(_, p)| is_due(p, delay, now))
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Every inode whose change waits or is being put in S3.
    pub(super) fn not_in_s3(&self) -> Vec<u64> {
        self.changes.lock().unsettled(false)
    }

    /// Every inode whose change is not in S3: waiting, being put there, or
    /// never to be.
    pub(super) fn not_kept(&self) -> Vec<u64> {
        self.changes.lock().unsettled(true)
    }

    /// Whether a change of `ino` could never be kept (and no newer came).
    pub(super) fn was_lost(&self, ino: u64) -> bool {
        self.changes.lock().lost.contains_key(&ino)
    }
}

fn is_due(pending: &Pending, delay: Duration, now: Instant) -> bool {
    now.duration_since(pending.since) >= delay && pending.retry_at.is_none_or(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_waits_until_an_upload_carries_it() {
        let queue = ChangeQueue::default();
        let chmod = Posix {
            perm: Some(0o600),
            ..Posix::default()
        };
        queue
            .merge_pending(7, |waiting| waiting.updated(&chmod))
            .unwrap();
        assert_eq!(queue.shown(7, None).unwrap().perm, Some(0o600));
        assert_eq!(queue.due(Duration::ZERO), [7]);
        assert!(queue.due(Duration::from_secs(3600)).is_empty());
        // An upload that carried another mode leaves it waiting.
        queue.settle_pending(7, &Posix::default(), queue.made_so_far());
        assert!(queue.shown(7, None).is_some());
        queue.settle_pending(7, &chmod, queue.made_so_far());
        assert!(queue.take_pending(7).is_none());
        assert_eq!(queue.shown(7, None), None);
    }

    fn perm(perm: u16) -> Posix {
        Posix {
            perm: Some(perm),
            ..Posix::default()
        }
    }

    #[test]
    fn a_taken_change_is_given_back_unless_settled_and_a_stop_counts_it() {
        let queue = ChangeQueue::default();
        let merge = |ino, change: Posix| queue.merge_pending(ino, |w| w.updated(&change));
        merge(1, perm(0o600)).unwrap();
        merge(2, perm(0o640)).unwrap();
        // Settled: gone.
        queue.take_pending(1).unwrap().settle();
        assert_eq!(queue.not_in_s3(), [2]);
        assert!(queue.take_pending(1).is_none());
        // Taken, then a newer change, then the taker gives up: the newer one
        // wins where both set the same thing, and the change is due again.
        let taken = queue.take_pending(2).unwrap();
        assert_eq!(taken.posix().perm, Some(0o640));
        assert_eq!(queue.not_in_s3(), [2], "a taken change counts");
        merge(2, perm(0o444)).unwrap();
        drop(taken);
        assert_eq!(queue.due(Duration::ZERO), [2]);
        assert_eq!(queue.shown(2, None).unwrap().perm, Some(0o444));
        // A failed copy waits its pause before the turn tries it again.
        let pause = queue.take_pending(2).unwrap().failed();
        assert_eq!(pause, Duration::from_secs(1));
        assert!(queue.due(Duration::ZERO).is_empty());
        assert_eq!(
            queue.take_pending(2).unwrap().failed(),
            Duration::from_secs(2)
        );
        // A stop counts what waits, what is taken and what was lost, once
        // each.
        merge(3, perm(0o600)).unwrap();
        let _taken = queue.take_pending(3).unwrap();
        merge(3, perm(0o644)).unwrap();
        merge(4, perm(0o600)).unwrap();
        queue.take_pending(4).unwrap().lost();
        assert!(queue.was_lost(4));
        assert_eq!(
            queue.not_in_s3().len(),
            2,
            "a lost change is not waited for"
        );
        let mut not_kept = queue.stop();
        not_kept.sort();
        assert_eq!(not_kept, [2, 3, 4]);
        assert!(matches!(merge(5, perm(0o600)), Err(FsError::Stopped)));
        let mut again = queue.stop();
        again.sort();
        assert_eq!(again, [2, 3, 4], "a second stop found other changes");
    }

    #[test]
    fn a_change_given_back_never_undoes_a_newer_one() {
        let queue = ChangeQueue::default();
        let merge = |ino, change: Posix| queue.merge_pending(ino, |w| w.updated(&change));
        // Two takers: the older change given back after the newer one.
        merge(1, perm(0o600)).unwrap();
        let older = queue.take_pending(1).unwrap();
        merge(1, perm(0o644)).unwrap();
        let newer = queue.take_pending(1).unwrap();
        drop(newer);
        drop(older);
        assert_eq!(queue.shown(1, None).unwrap().perm, Some(0o644));
        // An upload carried a newer mode while a change was taken.
        let older = queue.take_pending(1).unwrap();
        let sent = Posix {
            perm: Some(0o640),
            uid: Some(0),
            ..Posix::default()
        };
        queue.settle_pending(1, &sent, queue.made_so_far());
        drop(older);
        assert!(queue.take_pending(1).is_none(), "carried: nothing left");
        // What the upload did not carry still waits.
        let with_gid = Posix {
            gid: Some(7),
            ..perm(0o600)
        };
        merge(1, with_gid).unwrap();
        let older = queue.take_pending(1).unwrap();
        queue.settle_pending(1, &sent, queue.made_so_far());
        drop(older);
        let left = queue.take_pending(1).unwrap();
        assert_eq!((left.posix().perm, left.posix().gid), (None, Some(7)));
        left.settle();
    }

    #[test]
    fn a_change_not_kept_is_reported_until_a_newer_one_is_in_s3() {
        let queue = ChangeQueue::default();
        let merge = |ino, change: Posix| queue.merge_pending(ino, |w| w.updated(&change));
        merge(1, perm(0o600)).unwrap();
        queue.take_pending(1).unwrap().lost();
        assert!(queue.was_lost(1));
        // A newer change, while it waits, leaves the mark.
        merge(1, perm(0o640)).unwrap();
        assert!(queue.was_lost(1));
        queue.take_pending(1).unwrap().settle();
        assert!(!queue.was_lost(1), "the newer change is in S3");
        // One that could not be kept while a newer one came marks nothing.
        merge(2, perm(0o600)).unwrap();
        let older = queue.take_pending(2).unwrap();
        merge(2, perm(0o640)).unwrap();
        older.lost();
        assert!(!queue.was_lost(2));
        // An upload that carried the file's metadata clears the mark.
        merge(3, perm(0o600)).unwrap();
        queue.take_pending(3).unwrap().lost();
        queue.settle_pending(3, &perm(0o600), queue.made_so_far());
        assert!(!queue.was_lost(3));
    }

    #[test]
    fn what_is_being_copied_is_shown_under_what_waits() {
        let queue = ChangeQueue::default();
        let merge = |ino, change: Posix| queue.merge_pending(ino, |w| w.updated(&change));
        let known = Posix {
            uid: Some(5),
            ..perm(0o644)
        };
        merge(1, perm(0o600)).unwrap();
        let taken = queue.take_pending(1).unwrap();
        assert!(queue.has(1));
        let shown = queue.shown(1, Some(&known)).unwrap();
        assert_eq!((shown.perm, shown.uid), (Some(0o600), Some(5)));
        merge(
            1,
            Posix {
                gid: Some(7),
                ..perm(0o640)
            },
        )
        .unwrap();
        let shown = queue.shown(1, Some(&known)).unwrap();
        assert_eq!((shown.perm, shown.gid), (Some(0o640), Some(7)));
        taken.settle();
        queue.take_pending(1).unwrap().settle();
        assert!(!queue.has(1));
        assert_eq!(queue.shown(1, Some(&known)), Some(known));
    }

    #[test]
    fn an_upload_of_newer_values_hides_an_older_change_being_copied() {
        let queue = ChangeQueue::default();
        let merge = |ino, change: Posix| queue.merge_pending(ino, |w| w.updated(&change));
        merge(1, perm(0o644)).unwrap();
        let older = queue.take_pending(1).unwrap();
        merge(1, perm(0o600)).unwrap();
        // An upload read the file's metadata after both, and carried 0600.
        let as_of = queue.made_so_far();
        queue.settle_pending(1, &perm(0o600), as_of);
        let shown = queue.shown(1, Some(&perm(0o600))).unwrap();
        assert_eq!(
            shown.perm,
            Some(0o600),
            "the older change shown over the upload"
        );
        drop(older);
        assert!(
            queue.take_pending(1).is_none(),
            "given back over the upload"
        );
        // A change made after the upload read the metadata is not in it.
        merge(2, perm(0o644)).unwrap();
        let as_of = queue.made_so_far();
        let later = queue.take_pending(2);
        merge(2, perm(0o600)).unwrap();
        let newest = queue.take_pending(2).unwrap();
        queue.settle_pending(2, &perm(0o644), as_of);
        drop(newest);
        assert_eq!(queue.shown(2, None).unwrap().perm, Some(0o600));
        drop(later);
    }

    #[test]
    fn the_pause_after_failed_copies_doubles_up_to_a_limit() {
        let pauses: Vec<u64> = (1..=9).map(|n| retry_pause(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }
}
