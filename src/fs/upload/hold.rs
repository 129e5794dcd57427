//! What a staged file holds back from S3: the changes of a writer killed by
//! a signal, and truncations by opens that no process is known to have had.
//!
//! The kernel, with atomic O_TRUNC, sends an open with O_TRUNC to the daemon
//! and, only for access mode O_RDONLY, takes write access afterwards: it
//! fails the open then (ETXTBSY) if a program is running from the file. Such
//! truncations form a run while they are all that changed the file since it
//! last held what S3 holds; a handle a process has (it flushed, read or
//! synced) ends the run, and when the run's last handle is released unused,
//! its truncations are held back.

use super::state::{State, Unproven};
use super::{StageResult, StagedFile};

/// Why changes of a staged file are not uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBack {
    /// The process that made them was killed by this signal.
    Killed(i32),
    /// The only changes were truncations by opens that the kernel failed
    /// after the daemon had opened the file (O_RDONLY|O_TRUNC of a program
    /// that is running): no process had them.
    RefusedOpen,
}

impl std::fmt::Display for HeldBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeldBack::Killed(signal) => write!(
                f,
                "the file was last changed by a process killed by signal {signal}; what it \
                 wrote is not published"
            ),
            HeldBack::RefusedOpen => f.write_str(
                "the file was last changed by the truncation of an open that the kernel then \
                 failed; the truncation is not published",
            ),
        }
    }
}

impl StagedFile {
    /// The process that changed the file was killed by `signal` (SIGKILL, the
    /// OOM killer, a crash) and closed it as it died: when the file's last
    /// change was that `process`'s (or, where the last change was not told to
    /// be anyone's, when `opened_it`: it opened the handle whose change that
    /// was), what it wrote is not uploaded, unless the file changes again. A
    /// multipart upload under way is aborted when the last handle goes
    /// ([`StagedFile::close`]). Decided under the lock every change takes, so
    /// a change another process makes meanwhile is never held back. Returns
    /// whether the change was `process`'s and is held back.
    pub fn hold_back_for(&self, signal: i32, process: u32, opened_it: bool) -> bool {
        let mut state = self.state.lock();
        let changed_it = match state.last_writer {
            Some(last) => last == process,
            None => opened_it,
        };
        // Held back already: a refused open's truncations were the changes.
        let refused = state.held_back == Some(HeldBack::RefusedOpen);
        changed_it && !refused && self.hold_back(&mut state, HeldBack::Killed(signal))
    }

    /// Truncates the file to nothing for an open with O_TRUNC by `by`. The
    /// kernel takes write access for one of access mode O_RDONLY
    /// (`read_only`) only after the daemon opened the file, and fails it
    /// then if a program is running from the file (ETXTBSY). When the file
    /// held what S3 holds before (or only such truncations since), the
    /// truncation joins a run of them that no process is yet known to have
    /// had: returns its name, for [`StagedFile::open_truncation_reached`] and
    /// [`StagedFile::refused_open_released`].
    pub async fn truncate_by_open(
        &self,
        by: Option<u32>,
        read_only: bool,
    ) -> StageResult<Option<u64>> {
        let (before, clean, run_before) = {
            let state = self.state.lock();
            let run = state.unproven_run().map(|run| run.run);
            (state.changes, !state.dirty || run.is_some(), run)
        };
        self.truncate(0, by).await?;
        let mut state = self.state.lock();
        // Another change in between ends the run.
        if !read_only || !clean || state.changes != before + 1 {
            return Ok(None);
        }
        let current = state.unproven.filter(|run| run.last_change == before);
        // So does a process having one of its handles meanwhile: what it
        // had is a truncation like any other.
        if current.map(|run| run.run) != run_before {
            return Ok(None);
        }
        let last_change = state.changes;
        // Releases of the run's handles may have come meanwhile: its count
        // is read now.
        let joined = match current {
            Some(run) => Unproven {
                open: run.open + 1,
                last_change,
                ..run
            },
            None => Unproven {
                run: last_change,
                open: 1,
                last_change,
            },
        };
        state.unproven = Some(joined);
        Ok(Some(joined.run))
    }

    /// Marks a file staged empty for an open with O_TRUNC (`read_only`, as
    /// for [`StagedFile::truncate_by_open`]), before any other open can share
    /// it: its emptiness, over what S3 holds, is the run's first truncation.
    pub fn emptied_by_open(&self, read_only: bool) -> Option<u64> {
        let mut state = self.state.lock();
        if !read_only || state.changes != 0 || state.unproven.is_some() {
            return None;
        }
        state.unproven = Some(Unproven {
            run: 0,
            open: 1,
            last_change: 0,
        });
        Some(0)
    }

    /// A process had a handle whose open's truncation is in `run`: the
    /// truncation is a change like any other.
    pub fn open_truncation_reached(&self, run: u64) {
        let mut state = self.state.lock();
        if state.unproven.is_some_and(|u| u.run == run) {
            state.unproven = None;
        }
    }

    /// A handle whose open's truncation is in `run` was released with no
    /// process ever having had it: the kernel failed the open after the
    /// daemon's answer. When it was the run's last and nothing else changed
    /// the file, the run's truncations are held back, so the last release
    /// leaves S3's version. Returns whether they are.
    pub fn refused_open_released(&self, run: u64) -> bool {
        let mut state = self.state.lock();
        let Some(unproven) = state.unproven.as_mut().filter(|u| u.run == run) else {
            return false;
        };
        unproven.open = unproven.open.saturating_sub(1);
        let last = unproven.open == 0;
        last && state.unproven_run().is_some() && self.hold_back(&mut state, HeldBack::RefusedOpen)
    }

    /// Holds back the file's changes, if it has any and is not unlinked. A
    /// refused open's truncations are as good as what S3 holds, for the
    /// journal too; a killed writer's hold may keep others' writes with its
    /// own, which a worker after this one must count as lost.
    fn hold_back(&self, state: &mut State, why: HeldBack) -> bool {
        if state.dirty && !state.deleted {
            state.unsent = false;
            state.held_back = Some(why);
            if why == HeldBack::RefusedOpen {
                self.tell_published(true);
            }
            return true;
        }
        false
    }

    /// Whether the file has changes an upload would publish: not held back,
    /// nor truncations that no process is yet known to have had.
    pub fn has_changes_to_publish(&self) -> bool {
        let state = self.state.lock();
        state.dirty && !state.deleted && state.held_back.is_none() && state.unproven_run().is_none()
    }

    /// Why the file's changes are held back, while nothing changed it since
    /// ([`StagedFile::hold_back_for`]).
    pub fn held_back(&self) -> Option<HeldBack> {
        let state = self.state.lock();
        state
            .held_back
            .filter(|_| state.dirty && !state.unsent && !state.deleted)
    }
}
