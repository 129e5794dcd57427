//! The bookkeeping of one staged file: its parts' versions and uploads, and
//! the multipart upload under way.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;

use super::layout::PartLayout;
use super::{Base, StageError};
use crate::fs::posix::Posix;
use crate::fs::{ContentKey, Piece};

/// A part as uploaded.
#[derive(Clone, Debug)]
pub(super) struct Sent {
    /// The version of the part's bytes sent (never newer than they were).
    pub(super) version: u64,
    pub(super) etag: String,
    /// On an encrypted volume, the hash of the part's ciphertext.
    pub(super) piece: Option<Piece>,
}

/// A multipart upload under way, and the content key of the object it makes.
#[derive(Clone)]
pub(super) struct Upload {
    pub(super) id: String,
    pub(super) key: Option<Arc<ContentKey>>,
}

pub(super) struct State {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) base: Option<Base>,
    /// Per part: bumped by every change to the part's bytes.
    pub(super) versions: Vec<u64>,
    /// Per part: its latest upload in the current multipart upload.
    pub(super) uploaded: Vec<Option<Sent>>,
    /// Per part: a background upload is in flight.
    pub(super) in_flight: Vec<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// A background part upload failed; reported by the next flush.
    pub(super) failure: Option<StageError>,
    /// Changed since the last successful upload.
    pub(super) dirty: bool,
    /// Changed since the last upload was tried (a failed try clears it too: its
    /// failure was reported to whoever asked).
    pub(super) unsent: bool,
    /// Unlinked: nothing is uploaded any more.
    pub(super) deleted: bool,
    /// Abandoned by a stopping volume: nothing is uploaded any more, and whoever
    /// asks for an upload is told so.
    pub(super) abandoned: bool,
    /// The process that made the file's last change (a write, a truncation),
    /// where the kernel named it.
    pub(super) last_writer: Option<u32>,
    /// The signal that killed the process whose changes are not to be
    /// uploaded (`StagedFile::hold_back_for`).
    pub(super) held_back: Option<i32>,
    /// Staging bytes taken from the mount's budget for this file: the largest
    /// it has been since it last shrank.
    pub(super) taken: u64,
    pub(super) mtime: SystemTime,
    /// The mode, owner and time the object will keep in its metadata.
    pub(super) posix: Posix,
    /// Those the multipart upload under way was started with.
    pub(super) started_with: Option<Posix>,
}

impl State {
    /// Bytes `range` changed, by process `by` where the kernel named it.
    pub(super) fn touch(&mut self, layout: &PartLayout, range: Range<u64>, by: Option<u32>) {
        let last = layout.index_of(range.end.max(range.start + 1) - 1);
        if self.versions.len() <= last {
            self.versions.resize(last + 1, 0);
            self.uploaded.resize(last + 1, None);
            self.in_flight.resize(last + 1, false);
        }
        for index in layout.index_of(range.start)..=last {
            self.versions[index] += 1;
        }
        self.dirty = true;
        self.unsent = true;
        self.held_back = None;
        self.last_writer = by;
        self.mtime = SystemTime::now();
        // A time set before is the time of a change no more.
        self.posix.mtime = None;
    }

    /// The time of the last change of the content or of anything kept.
    pub(super) fn ctime(&self) -> SystemTime {
        self.posix
            .ctime
            .map_or(self.mtime, |set| set.max(self.mtime))
    }

    pub(super) fn is_clean(&self, index: usize) -> bool {
        matches!(&self.uploaded[index], Some(sent) if sent.version == self.versions[index])
    }
}
