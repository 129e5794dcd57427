//! Metadata read-ahead. A listing does not carry a file's mode, owner and time,
//! so each costs a HEAD; `ls -l`, `rsync`, `du` and `find -newer` ask for every
//! entry of a directory, one after another, in the order the listing gave them.
//! When a lookup needs the metadata of an entry of a directory whose listing a
//! handle holds, the entries after it that need theirs are asked for at the same
//! time: a window that starts small (a single `stat` costs little) and doubles
//! while lookups keep to it, so a directory of N entries costs N HEADs in about
//! N / 32 round trips instead of N.
//!
//! A listing read past its first reply with attributes (READDIRPLUS) is one
//! whose entries are being looked up as they come: the kernel asks that way
//! only after a lookup in the directory (FUSE_READDIRPLUS_AUTO), as `ls -l`
//! does and `find` does not. Then each reply waits for the metadata of the
//! entries it carries, so the kernel needs no lookup of its own for them, and
//! the HEADs of the entries after it go out meanwhile, in batches that run on
//! while the reply returns: a lookup or a reply that needs an entry a batch is
//! asking for waits for that batch rather than asking again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use futures::future::{FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::dir::DirEntry;
use super::inode::{InodeTable, Kind, Stat};
use super::{Entry, Fs, FsResult};
use crate::store::StoreError;

/// The first window, in entries.
const FIRST_WINDOW: usize = 8;
/// The largest window.
const MAX_WINDOW: usize = 256;
/// HEADs in flight at once for one window.
const IN_FLIGHT: usize = 32;

/// Entries a READDIRPLUS reply waits for: those that fit in the kernel's
/// buffer for one, as large as the reader's (glibc's readdir reads 32 KiB at a
/// time; Linux before 6.16 used a page, and the entries past it are then
/// asked for ahead of the next reply).
const REPLY_BYTES: usize = 32 * 1024;
/// Entries whose metadata is asked for past those of the reply being made.
const AHEAD: usize = 128;

/// Per directory: the entry the next window starts at if lookups keep to the
/// order, and that window's size.
#[derive(Default)]
pub(super) struct Windows(Mutex<HashMap<u64, (String, usize)>>);

/// HEADs of listed entries under way in batches that run on their own: by the
/// inode each is for, the number of the batch asking and what waits for its
/// answer.
#[derive(Default)]
pub(super) struct Batches {
    asking: Mutex<HashMap<u64, (u64, Answer)>>,
    next: AtomicU64,
}

/// Ready once the HEAD of one entry is answered (or its batch is gone).
type Answer = Shared<oneshot::Receiver<()>>;

impl Batches {
    /// What waits for `ino`'s metadata, if a batch is asking for it.
    fn asking_for(&self, ino: u64) -> Option<Answer> {
        self.asking
            .lock()
            .get(&ino)
            .map(|(_, answer)| answer.clone())
    }

    /// Whether a batch is asking for `ino`'s metadata.
    fn is_asking(&self, ino: u64) -> bool {
        self.asking.lock().contains_key(&ino)
    }

    /// Takes `ino` off, if batch `batch` still asks for it.
    fn answered(&self, batch: u64, ino: u64) {
        let mut asking = self.asking.lock();
        if asking.get(&ino).is_some_and(|(by, _)| *by == batch) {
            asking.remove(&ino);
        }
    }
}

/// Takes a batch's entries off when it ends, however it ends (done, a panic,
/// the runtime going away): nobody waits for an answer that cannot come.
struct Unregister {
    fs: Arc<Fs>,
    batch: u64,
    inos: Vec<u64>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        for &ino in &self.inos {
            self.fs.batches.answered(self.batch, ino);
        }
    }
}

/// An entry a listing showed, whose metadata is to be asked for.
pub(super) struct Listed {
    pub ino: u64,
    /// The ETag the volume knew it by when it was asked for.
    pub etag: String,
    pub name: String,
    pub kind: Kind,
    pub key: String,
    pub mtime: SystemTime,
    /// The size the listing gave.
    pub size: u64,
}

impl Fs {
    /// What S3 says of `listed` in `parent`, fetched with the metadata of the
    /// entries after it that lack theirs (with HEADs: see `super::lookup`).
    /// `None` if the file is gone (or is a directory now).
    pub(super) async fn stat_listed(
        &self,
        parent: u64,
        listed: Listed,
    ) -> FsResult<Option<(Kind, Stat)>> {
        let (name, kind) = (listed.name.clone(), listed.kind);
        let ahead = self.entries_ahead(parent, &name);
        let fetch = |entry: Listed, own: bool| async move {
            let stat = self.stat_of(&entry, own).await;
            (entry, stat)
        };
        let own = fetch(listed, true);
        let others = futures::stream::iter(ahead.into_iter().map(|entry| fetch(entry, false)))
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>();
        let ((_, own), others) = tokio::join!(own, others);
        // What the window found is kept as if looked up; what failed or is
        // gone is asked for again when its own lookup comes.
        for (entry, stat) in others {
            if let Ok(Some(stat)) = stat {
                self.keep_answer(parent, &entry, stat);
            }
        }
        Ok(own?.map(|stat| (kind, stat)))
    }

    /// What S3 says of listed `entry`: a HEAD (or, for a lookup of its
    /// `own`, what `super::lookup` asks). `None` if the file is gone.
    async fn stat_of(&self, entry: &Listed, own: bool) -> FsResult<Option<Stat>> {
        match entry.kind {
            Kind::File => {
                let found = if own {
                    self.stat_file(&entry.key, Some(entry.size)).await
                } else {
                    self.store.head_object(&entry.key).await
                };
                match found {
                    Ok(info) => Ok(Some(self.file_stat(info))),
                    Err(StoreError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Kind::Directory => self.directory_stat(&entry.key, entry.mtime).await.map(Some),
        }
    }

    /// Keeps what a HEAD asked for ahead of its lookup found of `entry`,
    /// unless what the volume knows of the name changed meanwhile: the name
    /// gone or another inode's (an unlink, a rename), the file being written
    /// here, its metadata learnt since (a chmod, an upload of this mount's),
    /// another version known. A late answer must never bring an older state
    /// back.
    fn keep_answer(&self, parent: u64, entry: &Listed, stat: Stat) {
        let mut table = self.inodes.lock();
        let unchanged = table.child(parent, &entry.name).is_some_and(|(ino, node)| {
            ino == entry.ino
                && !node.unlinked
                && node.kind == entry.kind
                && node.stat.etag == entry.etag
                && self.metadata_unknown(ino, node)
        });
        if unchanged && !self.staging.contains(entry.ino) {
            table.upsert(parent, &entry.name, entry.kind, stat, Instant::now());
        }
    }

    /// The entry of `name` in `parent` once a batch asking for its metadata
    /// has its answer, if one is asking and the answer made it fresh.
    pub(super) async fn answer_of_batch(&self, parent: u64, name: &str) -> Option<Entry> {
        let ino = self.inodes.lock().child(parent, name)?.0;
        let answer = self.batches.asking_for(ino)?;
        let _ = answer.await;
        let table = self.inodes.lock();
        let (now, node) = table.child(parent, name)?;
        (now == ino).then(|| self.fresh_entry(ino, node))?
    }

    /// READDIRPLUS of directory `parent` through handle `fh` from `offset`:
    /// at most `most` entries with their attributes. Past the first reply, the
    /// entries that fit in one wait for their metadata (for `--io-timeout` at
    /// most: those still unknown then are looked up by the kernel), and the
    /// next [`AHEAD`] entries' is asked for meanwhile (see the module).
    pub async fn readdirplus_page(
        self: &Arc<Self>,
        parent: u64,
        fh: u64,
        offset: u64,
        most: usize,
    ) -> FsResult<Vec<(DirEntry, Entry)>> {
        let rest = self.readdir_page(fh, offset, usize::MAX)?;
        if offset > 0 && self.config.metadata {
            let mut used = 0;
            let fits = rest
                .iter()
                .take_while(|entry| {
                    // struct fuse_direntplus, the name padded to 8 bytes.
                    used += 152 + entry.name.len().next_multiple_of(8);
                    used <= REPLY_BYTES
                })
                .count();
            let reply = self.wanted(rest.iter().take(fits));
            let ahead = self.wanted(rest.iter().skip(fits).take(AHEAD));
            self.ask_batch(parent, reply);
            self.ask_batch(parent, ahead);
            let answers = rest
                .iter()
                .take(fits)
                .filter_map(|entry| self.batches.asking_for(entry.ino));
            let all = futures::future::join_all(answers);
            let _ = tokio::time::timeout(self.config.io_timeout, all).await;
        }
        Ok(self.with_attributes(&rest, most))
    }

    /// Those of `entries` whose metadata is wanted and not yet asked for.
    fn wanted<'a>(&self, entries: impl Iterator<Item = &'a DirEntry>) -> Vec<Listed> {
        let table = self.inodes.lock();
        let now = Instant::now();
        entries
            .filter(|entry| entry.name != "." && entry.name != "..")
            .filter(|entry| !self.batches.is_asking(entry.ino))
            .filter_map(|entry| self.listed(&table, entry, now))
            .collect()
    }

    /// Asks for the metadata of `entries` of `parent` in a batch that runs on
    /// its own, keeps each answer as it comes (see [`Fs::keep_answer`]) and
    /// tells whoever waits for it.
    fn ask_batch(self: &Arc<Self>, parent: u64, entries: Vec<Listed>) {
        let batch = self.batches.next.fetch_add(1, Ordering::Relaxed);
        let mut asked = Vec::with_capacity(entries.len());
        {
            let mut asking = self.batches.asking.lock();
            for entry in entries {
                // Asked for by another batch since it was found wanted.
                if asking.contains_key(&entry.ino) {
                    continue;
                }
                let (tell, answer) = oneshot::channel();
                asking.insert(entry.ino, (batch, answer.shared()));
                asked.push((entry, tell));
            }
        }
        if asked.is_empty() {
            return;
        }
        let unregister = Unregister {
            fs: self.clone(),
            batch,
            inos: asked.iter().map(|(entry, _)| entry.ino).collect(),
        };
        tokio::spawn(async move {
            let fs = &unregister.fs;
            futures::stream::iter(asked)
                .map(|(entry, tell)| async move {
                    let stat = fs.stat_of(&entry, false).await;
                    (entry, tell, stat)
                })
                .buffer_unordered(IN_FLIGHT)
                .for_each(|(entry, tell, stat)| {
                    // What failed or is gone is asked for again by its own lookup.
                    if let Ok(Some(stat)) = stat {
                        fs.keep_answer(parent, &entry, stat);
                    }
                    fs.batches.answered(batch, entry.ino);
                    let _ = tell.send(());
                    async {}
                })
                .await;
            drop(unregister);
        });
    }

    /// Listed `entry`, if its metadata is wanted: not known, and what the
    /// listing said of it still fresh.
    fn listed(&self, table: &InodeTable, entry: &DirEntry, now: Instant) -> Option<Listed> {
        let node = table.get(entry.ino)?;
        let wanted = self.metadata_unknown(entry.ino, node)
            && node.remaining(self.config.metadata_ttl, now).is_some();
        wanted.then(|| Listed {
            ino: entry.ino,
            etag: node.stat.etag.clone(),
            name: entry.name.clone(),
            kind: node.kind,
            key: node.key.clone(),
            mtime: node.stat.mtime,
            size: node.stat.size,
        })
    }

    /// The entries after `name` in `parent`'s listing whose metadata a lookup
    /// would ask for, as many as the window allows.
    fn entries_ahead(&self, parent: u64, name: &str) -> Vec<Listed> {
        let Some(entries) = self.shared_listing(parent) else {
            return Vec::new();
        };
        // "." and ".." come first; the names after them are sorted.
        let names = &entries[2.min(entries.len())..];
        let Ok(at) = names.binary_search_by(|e| e.name.as_str().cmp(name)) else {
            return Vec::new();
        };
        let size = {
            let mut windows = self.ahead.0.lock();
            let size = match windows.get(&parent) {
                Some((next, size)) if next == name => (size * 2).min(MAX_WINDOW),
                _ => FIRST_WINDOW,
            };
            let next = names
                .get(at + size)
                .map_or_else(String::new, |e| e.name.clone());
            windows.insert(parent, (next, size));
            size
        };
        let table = self.inodes.lock();
        let now = Instant::now();
        names[at + 1..names.len().min(at + size)]
            .iter()
            .filter(|entry| !self.batches.is_asking(entry.ino))
            .filter_map(|entry| self.listed(&table, entry, now))
            .collect()
    }
}
