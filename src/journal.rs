//! What the kernel has been told about a volume, kept where the next worker
//! finds it: which inode number names which name, which handle numbers are
//! open on what, and which multipart uploads are under way.
//!
//! The kernel holds a FUSE connection's inode and handle numbers for as long
//! as files are open or names cached; a worker that replaces a dead one must
//! answer for the same numbers. Each change is appended to an anonymous
//! in-memory file (a memfd) that the volume's supervisor holds and hands to
//! every worker: one `pwrite` of one JSON line per change, so a worker killed
//! at any moment leaves at most its last line cut short, which a reader skips.
//!
//! The file starts with an 8-byte offset: where the lines begin. When the
//! lines grow well past what they describe, the journal appends a snapshot of
//! the state they add up to, moves the offset to it and gives the memory
//! before it back. A worker killed during that leaves the old lines and the
//! snapshot's, which add up to the same state: every snapshot line restates
//! what is so.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Where the lines start: after the header's offset.
const HEADER: u64 = 8;

/// The header of a journal that stopped being kept: the numbers given out
/// since are unknown, so no worker may take the volume over from it.
const ABANDONED: u64 = u64::MAX;

/// Lines beyond this many bytes since the last snapshot are folded into a new
/// one (when they are also more than twice its size): 10,000 names take about
/// 600 KB.
const COMPACT_AFTER: u64 = 8 << 20;

/// One change of what the kernel knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Record {
    /// Inode `ino` is `name` in directory `parent`.
    Named {
        ino: u64,
        parent: u64,
        name: String,
        dir: bool,
    },
    /// Inode `ino` lost its name; the kernel still holds it.
    Unlinked {
        ino: u64,
    },
    /// The kernel forgot inode `ino`.
    Dropped {
        ino: u64,
    },
    /// Handle `fh` is open on inode `ino`.
    Opened {
        fh: u64,
        ino: u64,
        open: Handle,
    },
    Closed {
        fh: u64,
    },
    /// A multipart upload of `key` is being asked for, at `at` (seconds since
    /// the epoch): a worker killed before it hears the answer leaves an upload
    /// whose ID no one knows.
    UploadStarting {
        key: String,
        at: u64,
    },
    /// No upload of `key` is waiting for an answer any more: the request
    /// failed, or the next worker looked for what it left.
    UploadUnasked {
        key: String,
    },
    /// A multipart upload of `key` began.
    UploadStarted {
        key: String,
        id: String,
    },
    /// The upload ended: completed or aborted.
    UploadEnded {
        id: String,
    },
    /// What is staged for inode `ino` is in S3, with no change since: a
    /// handle writing it that a worker leaves behind loses nothing.
    Published {
        ino: u64,
    },
    /// What is staged for inode `ino` changed since it was last in S3.
    Changed {
        ino: u64,
    },
}

/// What an open handle reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handle {
    Directory,
    /// Reads the object version `etag`, `size` bytes long.
    Object {
        etag: String,
        size: u64,
    },
    /// Reads the object version `etag`, `size` bytes long, which the kernel
    /// reads from the backing file of ID `backing` (passthrough), open until
    /// the handle's release. A variant of its own: a build that knows no
    /// passthrough refuses the journal rather than answer an open of the
    /// file in a way the kernel fails.
    Passthrough {
        etag: String,
        size: u64,
        backing: u32,
    },
    /// A file being written (`writing`: through this handle), or read
    /// through its staged copy: its state lived in the worker alone.
    Staged {
        writing: bool,
    },
}

/// An inode the kernel holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarriedNode {
    pub parent: u64,
    pub name: String,
    pub dir: bool,
    /// Its name is gone.
    pub unlinked: bool,
}

/// The state the journal's lines add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub nodes: BTreeMap<u64, CarriedNode>,
    /// Open handles: the inode and what the handle reads.
    pub handles: BTreeMap<u64, (u64, Handle)>,
    /// Uploads under way: upload ID to key.
    pub uploads: BTreeMap<String, String>,
    /// Keys whose upload was asked for with no answer recorded, and since
    /// when.
    pub starting: BTreeMap<String, u64>,
    /// Inodes whose staged content is in S3 with no change since (a file
    /// staged and never recorded here has changes of its own).
    pub published: std::collections::BTreeSet<u64>,
    /// The highest inode and handle numbers ever given out.
    pub last_ino: u64,
    pub last_fh: u64,
}

impl Carried {
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Named {
                ino,
                parent,
                name,
                dir,
            } => {
                self.last_ino = self.last_ino.max(ino);
                self.nodes.insert(
                    ino,
                    CarriedNode {
                        parent,
                        name,
                        dir,
                        unlinked: false,
                    },
                );
            }
            Record::Unlinked { ino } => {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.unlinked = true;
                }
            }
            Record::Dropped { ino } => {
                self.nodes.remove(&ino);
                self.published.remove(&ino);
            }
            Record::Opened { fh, ino, open } => {
                self.last_fh = self.last_fh.max(fh);
                self.handles.insert(fh, (ino, open));
            }
            Record::Closed { fh } => {
                self.handles.remove(&fh);
            }
            Record::UploadStarting { key, at } => {
                self.starting.entry(key).or_insert(at);
            }
            Record::UploadUnasked { key } => {
                self.starting.remove(&key);
            }
            Record::UploadStarted { key, id } => {
                self.starting.remove(&key);
                self.uploads.insert(id, key);
            }
            Record::UploadEnded { id } => {
                self.uploads.remove(&id);
            }
            Record::Published { ino } => {
                self.published.insert(ino);
            }
            Record::Changed { ino } => {
                self.published.remove(&ino);
            }
        }
    }

    /// Lines that restate this state (the numbers given out included).
    fn snapshot(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for (&ino, node) in &self.nodes {
            records.push(Record::Named {
                ino,
                parent: node.parent,
                name: node.name.clone(),
                dir: node.dir,
            });
            if node.unlinked {
                records.push(Record::Unlinked { ino });
            }
        }
        // The highest numbers, kept even when what they named is gone.
        if !self.nodes.contains_key(&self.last_ino) && self.last_ino != 0 {
            records.push(Record::Named {
                ino: self.last_ino,
                parent: 0,
                name: String::new(),
                dir: false,
            });
            records.push(Record::Dropped { ino: self.last_ino });
        }
        for (&fh, (ino, open)) in &self.handles {
            records.push(Record::Opened {
                fh,
                ino: *ino,
                open: open.clone(),
            });
        }
        if !self.handles.contains_key(&self.last_fh) && self.last_fh != 0 {
            records.push(Record::Opened {
                fh: self.last_fh,
                ino: 0,
                open: Handle::Staged { writing: false },
            });
            records.push(Record::Closed { fh: self.last_fh });
        }
        for (id, key) in &self.uploads {
            records.push(Record::UploadStarted {
                key: key.clone(),
                id: id.clone(),
            });
        }
        for (key, at) in &self.starting {
            records.push(Record::UploadStarting {
                key: key.clone(),
                at: *at,
            });
        }
        for &ino in &self.published {
            records.push(Record::Published { ino });
        }
        records
    }
}

/// A volume's journal, open for appending.
pub struct Journal {
    file: Mutex<Appending>,
}

struct Appending {
    file: File,
    /// Where the lines start and end.
    start: u64,
    end: u64,
    /// The size of the last snapshot.
    snapshot: u64,
    /// Writing failed once (and was logged): the journal is no longer kept.
    failed: bool,
}

/// Makes a new, empty journal: an in-memory file only this process and those
/// it hands the descriptor to can reach.
pub fn create() -> io::Result<OwnedFd> {
    let fd =
        nix::sys::memfd::memfd_create(c"s3vol-journal", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(io::Error::from)?;
    let file = File::from(fd);
    file.write_all_at(&HEADER.to_le_bytes(), 0)?;
    Ok(file.into())
}

impl Journal {
    /// Opens the journal in `fd` and reads what it holds so far.
    pub fn open(fd: OwnedFd) -> io::Result<(Self, Carried)> {
        let file = File::from(fd);
        let (start, end, carried) = read(&file)?;
        let journal = Self {
            file: Mutex::new(Appending {
                file,
                start,
                end,
                snapshot: end - start,
                failed: false,
            }),
        };
        Ok((journal, carried))
    }

    /// Appends `record`. A failure is logged once; the volume goes on without
    /// a journal (a worker that replaces this one then knows less).
    pub fn record(&self, record: &Record) {
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut appending = self.file.lock();
        if appending.failed {
            return;
        }
        if let Err(e) = appending.append(&line) {
            appending.failed = true;
            // A worker replacing this one would hand out numbers the kernel
            // holds for other names: better no takeover at all.
            let _ = appending.file.write_all_at(&ABANDONED.to_le_bytes(), 0);
            warn!(
                "cannot keep the volume's journal ({e}): if this worker dies, the volume ends \
                 rather than be taken over"
            );
        }
    }

    /// Whether every change so far is in the journal.
    pub fn kept(&self) -> bool {
        !self.file.lock().failed
    }

    /// The descriptor, for a worker to be handed.
    pub fn fd(&self) -> io::Result<OwnedFd> {
        self.file.lock().file.as_fd().try_clone_to_owned()
    }
}

impl Appending {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        self.file.write_all_at(line, self.end)?;
        self.end += line.len() as u64;
        let grown = self.end - self.start;
        if grown > COMPACT_AFTER && grown > 2 * self.snapshot {
            self.compact()?;
        }
        Ok(())
    }

    /// Appends a snapshot of the state, starts the lines there and frees the
    /// memory before it.
    fn compact(&mut self) -> io::Result<()> {
        let (_, _, carried) = read(&self.file)?;
        let at = self.end;
        let mut text = Vec::new();
        for record in carried.snapshot() {
            serde_json::to_writer(&mut text, &record).expect("records serialize");
            text.push(b'\n');
        }
        self.file.write_all_at(&text, at)?;
        self.end = at + text.len() as u64;
        // One aligned 8-byte write: whole or not at all.
        self.file.write_all_at(&at.to_le_bytes(), 0)?;
        let page = 4096;
        let from = HEADER.div_ceil(page) * page;
        let to = at / page * page;
        if to > from {
            use nix::fcntl::{FallocateFlags, fallocate};
            // Giving the memory back is an economy: a failure only keeps it.
            let _ = fallocate(
                &self.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                from as i64,
                (to - from) as i64,
            );
        }
        self.start = at;
        self.snapshot = text.len() as u64;
        Ok(())
    }
}

/// Where the lines start and end, and what they add up to. A line cut short
/// (the writer killed in the middle of it) ends the reading.
fn read(file: &File) -> io::Result<(u64, u64, Carried)> {
    let mut header = [0u8; 8];
    file.read_exact_at(&mut header, 0)?;
    let start = u64::from_le_bytes(header);
    if start == ABANDONED {
        return Err(io::Error::other(
            "the worker before this one stopped keeping the journal",
        ));
    }
    let size = file.metadata()?.len();
    if start < HEADER || start > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the journal's lines start at {start}, outside its {size} bytes"),
        ));
    }
    let mut text = vec![0u8; (size - start) as usize];
    file.read_exact_at(&mut text, start)?;
    let mut carried = Carried::default();
    let mut end = start;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let Some(complete) = line.strip_suffix(b"\n") else {
            break;
        };
        // A whole line that does not read (a build that writes what this
        // one does not know) must not be skipped: what it said is lost.
        let record = serde_json::from_slice::<Record>(complete).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a line of the journal does not read: {e}"),
            )
        })?;
        carried.apply(record);
        end += line.len() as u64;
    }
    Ok((start, end, carried))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(ino: u64, parent: u64, name: &str) -> Record {
        Record::Named {
            ino,
            parent,
            name: name.into(),
            dir: false,
        }
    }

    fn reopen(journal: &Journal) -> Carried {
        Journal::open(journal.fd().unwrap()).unwrap().1
    }

    #[test]
    fn a_new_worker_reads_what_the_last_one_recorded() {
        let (journal, empty) = Journal::open(create().unwrap()).unwrap();
        assert_eq!(empty, Carried::default());
        journal.record(&named(2, 1, "a"));
        journal.record(&named(3, 1, "b"));
        journal.record(&Record::Opened {
            fh: 7,
            ino: 2,
            open: Handle::Passthrough {
                etag: "\"e\"".into(),
                size: 5,
                backing: 9,
            },
        });
        journal.record(&Record::Dropped { ino: 3 });
        journal.record(&Record::UploadStarted {
            key: "k".into(),
            id: "u1".into(),
        });
        journal.record(&Record::UploadStarted {
            key: "k".into(),
            id: "u2".into(),
        });
        journal.record(&Record::UploadEnded { id: "u1".into() });
        // In S3 and unchanged: 2 was, changed since; 4 is; 3 is gone.
        for record in [
            Record::Published { ino: 2 },
            Record::Published { ino: 3 },
            Record::Published { ino: 4 },
            Record::Changed { ino: 2 },
            Record::Dropped { ino: 3 },
        ] {
            journal.record(&record);
        }
        let carried = reopen(&journal);
        assert_eq!(carried.published.iter().collect::<Vec<_>>(), [&4]);
        assert_eq!(carried.nodes.keys().collect::<Vec<_>>(), [&2]);
        assert_eq!(carried.last_ino, 3);
        assert_eq!(carried.last_fh, 7);
        assert_eq!(carried.handles[&7].0, 2);
        assert!(matches!(
            carried.handles[&7].1,
            Handle::Passthrough { backing: 9, .. }
        ));
        assert_eq!(
            carried.uploads.into_iter().collect::<Vec<_>>(),
            [("u2".to_string(), "k".to_string())]
        );
    }

    #[test]
    fn a_line_cut_short_ends_the_reading_and_is_written_over() {
        let fd = create().unwrap();
        let (journal, _) = Journal::open(fd.try_clone().unwrap()).unwrap();
        journal.record(&named(2, 1, "a"));
        // A writer killed in the middle of its line.
        let file = File::from(fd);
        let end = file.metadata().unwrap().len();
        file.write_all_at(br#"{"r":"named","ino":3,"par"#, end)
            .unwrap();
        let (again, carried) = Journal::open(journal.fd().unwrap()).unwrap();
        assert_eq!(carried.nodes.len(), 1);
        again.record(&named(4, 1, "c"));
        let carried = reopen(&again);
        assert_eq!(carried.nodes.keys().collect::<Vec<_>>(), [&2, &4]);
    }

    #[test]
    fn a_journal_that_could_not_be_kept_or_does_not_read_refuses_a_takeover() {
        let fd = create().unwrap();
        let (journal, _) = Journal::open(fd.try_clone().unwrap()).unwrap();
        journal.record(&named(2, 1, "a"));
        let file = File::from(fd);
        let end = file.metadata().unwrap().len();
        file.write_all_at(b"{\"r\":\"from_a_later_build\"}\n", end)
            .unwrap();
        assert!(Journal::open(journal.fd().unwrap()).is_err());
        file.write_all_at(&ABANDONED.to_le_bytes(), 0).unwrap();
        let refused = Journal::open(journal.fd().unwrap()).err().unwrap();
        assert!(refused.to_string().contains("stopped keeping"), "{refused}");
    }

    #[test]
    fn compaction_keeps_the_state_and_the_numbers_given_out() {
        let (journal, _) = Journal::open(create().unwrap()).unwrap();
        // Many names looked up and forgotten, a few kept.
        let mut expected = Carried::default();
        for ino in 2..200_000u64 {
            let record = named(ino, 1, &format!("file-{ino:08}"));
            journal.record(&record);
            expected.apply(record);
            if ino % 1000 != 0 {
                journal.record(&Record::Dropped { ino });
                expected.apply(Record::Dropped { ino });
            }
        }
        journal.record(&Record::Opened {
            fh: 9,
            ino: 2000,
            open: Handle::Directory,
        });
        expected.apply(Record::Opened {
            fh: 9,
            ino: 2000,
            open: Handle::Directory,
        });
        let carried = reopen(&journal);
        assert_eq!(carried, expected);
        let appending = journal.file.lock();
        assert!(
            appending.start > HEADER,
            "the journal was compacted at least once"
        );
        assert!(appending.end - appending.start < COMPACT_AFTER + (1 << 20));
    }
}
