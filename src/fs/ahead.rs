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
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

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

/// HEADs of listed entries under way, in batches that run on their own: by the
/// inode each is for, the batch asking for it.
#[derive(Default)]
pub(super) struct Batches(Mutex<HashMap<u64, Batch>>);

type Batch = Shared<BoxFuture<'static, ()>>;

impl Batches {
    /// The batch asking for `ino`'s metadata, if one is.
    fn asking_for(&self, ino: u64) -> Option<Batch> {
        self.0.lock().get(&ino).cloned()
    }
}

/// An entry a listing showed, whose metadata is to be asked for.
pub(super) struct Listed {
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
        {
            // What the window found is kept as if looked up; what failed or is
            // gone is asked for again when its own lookup comes.
            let mut table = self.inodes.lock();
            let now = Instant::now();
            for (entry, stat) in others {
                if let Ok(Some(stat)) = stat {
                    table.upsert(parent, &entry.name, entry.kind, stat, now);
                }
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

    /// Waits for the batch asking for the metadata of `ino`, if one is.
    pub(super) async fn wait_for_batch(&self, ino: u64) {
        if let Some(batch) = self.batches.asking_for(ino) {
            batch.await;
        }
    }

    /// READDIRPLUS of directory `parent` through handle `fh` from `offset`:
    /// at most `most` entries with their attributes. Past the first reply, the
    /// entries that fit in one wait for their metadata, and the next
    /// [`AHEAD`] entries' is asked for meanwhile (see the module).
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
            for entry in rest.iter().take(fits) {
                self.wait_for_batch(entry.ino).await;
            }
        }
        Ok(self.with_attributes(&rest.first(most)))
    }

    /// Those of `entries` whose metadata is wanted and not yet asked for.
    fn wanted<'a>(&self, entries: impl Iterator<Item = &'a DirEntry>) -> Vec<(u64, Listed)> {
        let table = self.inodes.lock();
        let now = Instant::now();
        entries
            .filter(|entry| self.batches.asking_for(entry.ino).is_none())
            .filter_map(|entry| Some((entry.ino, self.listed(&table, entry, now)?)))
            .collect()
    }

    /// Asks for the metadata of `entries` of `parent` in a batch that runs on
    /// its own and keeps each answer as it comes.
    fn ask_batch(self: &Arc<Self>, parent: u64, entries: Vec<(u64, Listed)>) {
        if entries.is_empty() {
            return;
        }
        let inos: Vec<u64> = entries.iter().map(|(ino, _)| *ino).collect();
        let registered = inos.clone();
        let fs = self.clone();
        let work = async move {
            futures::stream::iter(entries)
                .map(|(_, entry)| {
                    let fs = &fs;
                    async move {
                        let stat = fs.stat_of(&entry, false).await;
                        (entry, stat)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .for_each(|(entry, stat)| {
                    // What failed or is gone is asked for again by its own lookup.
                    if let Ok(Some(stat)) = stat {
                        let now = Instant::now();
                        fs.inodes
                            .lock()
                            .upsert(parent, &entry.name, entry.kind, stat, now);
                    }
                    async {}
                })
                .await;
            let mut batches = fs.batches.0.lock();
            for ino in &inos {
                batches.remove(ino);
            }
        };
        let batch: Batch = work.boxed().shared();
        {
            // Before it runs: it takes them off when it ends.
            let mut batches = self.batches.0.lock();
            for ino in registered {
                batches.insert(ino, batch.clone());
            }
        }
        tokio::spawn(batch);
    }

    /// Listed `entry`, if its metadata is wanted: not known, and what the
    /// listing said of it still fresh.
    fn listed(&self, table: &InodeTable, entry: &DirEntry, now: Instant) -> Option<Listed> {
        let node = table.get(entry.ino)?;
        let wanted = self.metadata_unknown(entry.ino, node)
            && node.remaining(self.config.metadata_ttl, now).is_some();
        wanted.then(|| Listed {
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
            .filter(|entry| self.batches.asking_for(entry.ino).is_none())
            .filter_map(|entry| self.listed(&table, entry, now))
            .collect()
    }
}
