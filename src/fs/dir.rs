//! Directory listings: a directory is listed whole (every page of ListObjectsV2)
//! when opened, or taken from the inode table while its last listing is fresh,
//! and each open handle reads its own snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::inode::{Kind, Stat};
use super::{Entry, Fs, FsError, FsResult};
use crate::audit::Op;
use crate::names::{NameProblem, check_name};
use crate::store::{ListRequest, Operation, Pagination};

/// A directory's entries as one listing gave them, shared by the handles open
/// on it.
pub(super) struct Snapshot {
    /// When the listing was taken, and the table's change count then.
    listed: Instant,
    changes: u64,
    entries: std::sync::Weak<Vec<DirEntry>>,
}

/// Entries of a directory handle's listing, shared, not copied.
pub struct Page {
    entries: Arc<Vec<DirEntry>>,
    range: std::ops::Range<usize>,
}

impl Page {
    pub fn iter(&self) -> std::slice::Iter<'_, DirEntry> {
        self.entries[self.range.clone()].iter()
    }

    fn to_vec(&self) -> Vec<DirEntry> {
        self.entries[self.range.clone()].to_vec()
    }
}

/// One directory entry; `next_offset` is the cookie of the entry after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
    pub next_offset: u64,
}

impl Fs {
    /// Lists directory `ino` completely (all pages), or takes the listing from
    /// the table while the last one is fresh, and keeps the snapshot for the
    /// handle's readdir calls. Handles opened on an unchanged, fresh listing share
    /// one snapshot: a hundred thousand open handles of a large directory cost
    /// one copy of its names, not a hundred thousand.
    pub(super) async fn open_dir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        let ttl = self.config.metadata_ttl;
        let (mut version, cached) = {
            let table = self.inodes.lock();
            let now = Instant::now();
            let version = table
                .fresh_listing(ino, ttl, now)
                .map(|listed| (listed, table.changes()));
            if let Some(version) = version
                && let Some(shared) = self.shared_snapshot(ino, version)
            {
                drop(table);
                return Ok(self.open_snapshot(ino, shared));
            }
            (version, table.listing(ino, ttl, now))
        };
        let mut entries = vec![
            (ino, Kind::Directory, ".".to_string()),
            (node.parent, Kind::Directory, "..".to_string()),
        ];
        match cached {
            Some(children) => entries.extend(children),
            None => {
                let listed = self.list_dir(&node.key).await?;
                let now = Instant::now();
                let mut table = self.inodes.lock();
                for (name, (kind, stat)) in listed {
                    let child = table.upsert(ino, &name, kind, stat, now);
                    entries.push((child, kind, name));
                }
                table.mark_listed(ino, now);
                version = Some((now, table.changes()));
            }
        }
        let entries: Arc<Vec<DirEntry>> = Arc::new(
            entries
                .into_iter()
                .enumerate()
                .map(|(i, (ino, kind, name))| DirEntry {
                    ino,
                    kind,
                    name,
                    next_offset: i as u64 + 1,
                })
                .collect(),
        );
        if let Some((listed, changes)) = version {
            let mut snapshots = self.dir_snapshots.lock();
            // Only snapshots some handle still holds are worth keeping.
            snapshots.retain(|_, s| s.entries.strong_count() > 0);
            snapshots.insert(
                ino,
                Snapshot {
                    listed,
                    changes,
                    entries: Arc::downgrade(&entries),
                },
            );
        }
        Ok(self.open_snapshot(ino, entries))
    }

    /// The snapshot of `ino` another handle holds, if it was taken of the same
    /// listing with no name changed since.
    fn shared_snapshot(
        &self,
        ino: u64,
        (listed, changes): (Instant, u64),
    ) -> Option<Arc<Vec<DirEntry>>> {
        let snapshots = self.dir_snapshots.lock();
        let snapshot = snapshots.get(&ino)?;
        if snapshot.listed != listed || snapshot.changes != changes {
            return None;
        }
        snapshot.entries.upgrade()
    }

    /// `ino`'s listing as a handle open on it holds it, if one does.
    pub(super) fn shared_listing(&self, ino: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.dir_snapshots.lock().get(&ino)?.entries.upgrade()
    }

    fn open_snapshot(&self, ino: u64, entries: Arc<Vec<DirEntry>>) -> u64 {
        self.handles.open_dir(ino, entries)
    }

    /// Entries of an open directory from position `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        Ok(self.readdir_page(fh, offset, usize::MAX)?.to_vec())
    }

    /// At most `most` entries of an open directory from position `offset` on
    /// (what one reply to the kernel holds: copying the rest of a large
    /// directory at each call would cost the square of its size).
    pub fn readdir_page(&self, fh: u64, offset: u64, most: usize) -> FsResult<Page> {
        let entries = self
            .handles
            .dir(fh)
            .ok_or_else(|| self.unknown_handle(fh))?;
        let start = (offset as usize).min(entries.len());
        let end = start.saturating_add(most).min(entries.len());
        Ok(Page {
            entries,
            range: start..end,
        })
    }

    /// Like [`Fs::readdir`], with each entry's attributes, as READDIRPLUS needs
    /// them. The caller reports which entries reached the kernel with
    /// [`Fs::remember`], because each one counts as a lookup.
    pub fn readdirplus(&self, fh: u64, offset: u64) -> FsResult<Vec<(DirEntry, Entry)>> {
        let page = self.readdir_page(fh, offset, usize::MAX)?;
        Ok(self.with_attributes(&page, usize::MAX))
    }

    /// The first `most` entries of `page` still known, with their attributes:
    /// each with the time the kernel may keep them, none for one whose
    /// metadata is not known yet (it is looked up again at once, which asks
    /// for it). Entries gone since the listing are skipped, never counted: an
    /// empty reply would end the kernel's reading of the directory.
    pub(super) fn with_attributes(&self, page: &Page, most: usize) -> Vec<(DirEntry, Entry)> {
        let table = self.inodes.lock();
        let now = Instant::now();
        page.iter()
            .filter_map(|entry| {
                let node = table.get(entry.ino)?;
                let ttl = node
                    .remaining(self.config.metadata_ttl, now)
                    .filter(|_| !self.metadata_unknown(entry.ino, node))
                    .unwrap_or(Duration::ZERO);
                let attr = self.attr(entry.ino, node);
                Some((entry.clone(), Entry { attr, ttl }))
            })
            .take(most)
            .collect()
    }

    /// The kernel now holds a reference to `ino` (from READDIRPLUS).
    pub fn remember(&self, ino: u64) {
        self.inodes.lock().add_lookup(ino);
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }

    /// Every valid name directly under `dir_key`, directories shadowing files.
    async fn list_dir(&self, dir_key: &str) -> FsResult<BTreeMap<String, (Kind, Stat)>> {
        let mut names = BTreeMap::new();
        let mut skipped = 0usize;
        let mut example: Option<(String, NameProblem)> = None;
        let mut token: Option<String> = None;
        let mut pages = Pagination::new(Operation::ListObjectsV2, dir_key, self.config.io_timeout);
        loop {
            let page = self
                .store
                .list_objects(ListRequest {
                    prefix: dir_key,
                    delimiter: Some("/"),
                    continuation: token.as_deref(),
                    max_keys: None,
                })
                .await?;
            let entries = page.objects.len() + page.common_prefixes.len();
            for prefix in &page.common_prefixes {
                // The store keeps to the prefix; a name that is not under it is
                // skipped all the same, never sliced wrong.
                let name = prefix
                    .strip_prefix(dir_key)
                    .and_then(|rest| rest.strip_suffix('/'))
                    .unwrap_or_default();
                match check_name(name) {
                    Ok(()) => {
                        names.insert(
                            name.to_string(),
                            (Kind::Directory, Stat::directory(self.mount_time)),
                        );
                    }
                    Err(problem) => {
                        skipped += 1;
                        example.get_or_insert((prefix.clone(), problem));
                    }
                }
            }
            for object in page.objects {
                if object.key == dir_key {
                    continue; // the directory's own marker
                }
                let Some(name) = object.key.strip_prefix(dir_key) else {
                    continue;
                };
                if let Err(problem) = check_name(name) {
                    skipped += 1;
                    example.get_or_insert((object.key.clone(), problem));
                    continue;
                }
                names
                    .entry(name.to_string())
                    .or_insert((Kind::File, self.file_stat(object)));
            }
            token = pages.next(entries, page.next_token)?;
            if token.is_none() {
                break;
            }
        }
        if let Some((key, problem)) = example {
            warn!(
                directory = dir_key,
                skipped,
                example = ?key,
                %problem,
                "skipped keys that cannot be shown as file names"
            );
        }
        Ok(names)
    }
}

// The entry points the audit log records (see `super::audit`).
impl Fs {
    /// [`Fs::open_dir`], recorded: a listing of the directory.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let result = self.open_dir(ino).await;
        self.audit_on(Op::List, ino, &result, None);
        result
    }
}
