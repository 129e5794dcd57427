//! Metadata read-ahead. A listing does not carry a file's mode, owner and time,
//! so each costs a HEAD; `ls -l`, `rsync`, `du` and `find -newer` ask for every
//! entry of a directory, one after another, in the order the listing gave them.
//! When a lookup needs the metadata of an entry of a directory whose listing a
//! handle holds, the entries after it that need theirs are asked for at the same
//! time: a window that starts small (a single `stat` costs little) and doubles
//! while lookups keep to it, so a directory of N entries costs N HEADs in about
//! N / 32 round trips instead of N.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use parking_lot::Mutex;

use super::inode::{Kind, Stat};
use super::{Fs, FsResult};
use crate::store::StoreError;

/// The first window, in entries.
const FIRST_WINDOW: usize = 8;
/// The largest window.
const MAX_WINDOW: usize = 256;
/// HEADs in flight at once for one window.
const IN_FLIGHT: usize = 32;

/// Per directory: the entry the next window starts at if lookups keep to the
/// order, and that window's size.
#[derive(Default)]
pub(super) struct Windows(Mutex<HashMap<u64, (String, usize)>>);

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
            let stat = match entry.kind {
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
            };
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
            .filter_map(|entry| {
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
            })
            .collect()
    }
}
