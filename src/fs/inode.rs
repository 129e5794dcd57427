//! The inode table: which inode number names which key, and what was last learnt
//! about it from S3.
//!
//! S3 has no inodes. An inode here is a (parent, name) pair seen by a lookup or a
//! listing; the same pair keeps its number for as long as the kernel holds it, so
//! `stat` twice gives the same `st_ino`. If a name turns from a file into a directory
//! (another client put `name/x` beside `name`), it gets a new inode, because the
//! kernel must never see one inode change type.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use super::posix::Kind;
use super::posix::Posix;
use crate::journal::{CarriedNode, Journal, Record};
use crate::store::ObjectInfo;

pub const ROOT_INO: u64 = 1;

/// What S3 said about a name. Directories have no size, ETag or time of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub etag: String,
    pub mtime: SystemTime,
    /// What the object's metadata says of its mode, owner and time: known from a
    /// HEAD, not from a listing (`None`).
    pub posix: Option<Posix>,
    /// `posix` is all the object carries besides its bytes (this mount
    /// uploaded it), so a change of it needs no HEAD first.
    pub own_headers: bool,
}

impl Stat {
    /// What a HEAD (or a listing) said of a file's object.
    pub fn of_file(info: ObjectInfo) -> Self {
        Self {
            size: info.size,
            etag: info.etag,
            mtime: info.last_modified,
            posix: info.headers.map(|h| Posix::read(&h.user, Kind::File)),
            own_headers: false,
        }
    }

    /// A directory with no marker object: nothing kept of it to learn.
    pub fn unmarked_directory(mtime: SystemTime) -> Self {
        Self {
            posix: Some(Posix::default()),
            ..Self::directory(mtime)
        }
    }

    pub fn directory(mtime: SystemTime) -> Self {
        Self {
            size: 0,
            etag: String::new(),
            mtime,
            posix: None,
            own_headers: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// The object key (files) or key prefix with trailing `/` (directories).
    pub key: String,
    pub stat: Stat,
    /// When `stat` was learnt from S3; `None` means it never expires (the root).
    pub fetched: Option<Instant>,
    /// References the kernel holds (lookups not yet forgotten).
    pub lookups: u64,
    /// Set when S3 showed that `stat` is out of date before the TTL ran out.
    pub expired: bool,
    /// Directories: when a complete listing was last taken. Until the TTL runs out
    /// the table's children of this node are the whole directory (as changed by
    /// this mount since), so listings and lookups of absent names need no request.
    pub listed: Option<Instant>,
    /// Files: the ETag of the version whose pages the kernel may hold in its
    /// page cache, set when a reader opened that version.
    pub kernel_cached: Option<String>,
    /// Bytes of that version the daemon has read to the kernel through opens
    /// that fill its page cache, since the kernel last emptied it: once they
    /// reach the size, the kernel likely holds the file whole (unless memory
    /// pressure took pages since).
    pub kernel_filled: u64,
    /// Its name is gone (unlinked, replaced by a rename, or found gone from
    /// S3) while the kernel still holds it, for a descriptor open on it: its
    /// key is another's now, or no one's.
    pub unlinked: bool,
}

impl Node {
    /// How much longer `stat` may be trusted, or `None` if it has expired.
    pub fn remaining(&self, ttl: Duration, now: Instant) -> Option<Duration> {
        if self.expired {
            return None;
        }
        match self.fetched {
            None => Some(ttl),
            Some(at) => ttl
                .checked_sub(now.saturating_duration_since(at))
                .filter(|d| !d.is_zero()),
        }
    }
}

/// Names recently found absent, remembered for the TTL. Bounded: a scan of many
/// missing names forgets the oldest.
const ABSENT_NAMES: usize = 65_536;

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, String), u64>,
    /// Names S3 said do not exist, and when.
    absent: lru::LruCache<(u64, String), Instant>,
    next_ino: u64,
    /// Bumped whenever a name is added, removed or moved: a listing snapshot
    /// taken at one count is still right at the same count.
    changes: u64,
    /// Where the numbers the kernel is given are recorded for a worker that
    /// replaces this one.
    journal: Option<Arc<Journal>>,
}

/// Whether something learnt at `at` is still within `ttl` of `now`.
fn fresh(at: Instant, ttl: Duration, now: Instant) -> bool {
    now.saturating_duration_since(at) < ttl
}

impl InodeTable {
    /// A table holding only the root directory, whose key is `root_key`.
    pub fn new(root_key: &str, mount_time: SystemTime) -> Self {
        let root = Node {
            parent: ROOT_INO,
            name: String::new(),
            kind: Kind::Directory,
            key: root_key.to_string(),
            stat: Stat::directory(mount_time),
            fetched: None,
            lookups: 1,
            expired: false,
            listed: None,
            kernel_cached: None,
            kernel_filled: 0,
            unlinked: false,
        };
        Self {
            nodes: HashMap::from([(ROOT_INO, root)]),
            children: HashMap::new(),
            absent: lru::LruCache::new(
                std::num::NonZeroUsize::new(ABSENT_NAMES).expect("not zero"),
            ),
            next_ino: ROOT_INO + 1,
            changes: 0,
            journal: None,
        }
    }

    /// Records every number given out, renamed or dropped from now on.
    pub fn keep_journal(&mut self, journal: Arc<Journal>) {
        self.journal = Some(journal);
    }

    fn record(&self, record: Record) {
        if let Some(journal) = &self.journal {
            journal.record(&record);
        }
    }

    fn record_named(&self, ino: u64) {
        if let Some(node) = self.nodes.get(&ino) {
            self.record(Record::Named {
                ino,
                parent: node.parent,
                name: node.name.clone(),
                dir: node.kind == Kind::Directory,
            });
        }
    }

    /// Takes over the inodes a worker before this one gave the kernel, with
    /// the same numbers. What S3 holds for them is asked again at their next
    /// use; each counts one lookup, so the kernel's forget of it (which
    /// names all its lookups, older ones included) lets it go. Nodes whose
    /// parent is gone are left out: the kernel cannot reach them by name.
    pub fn adopt(&mut self, nodes: &BTreeMap<u64, CarriedNode>, last_ino: u64, now: Instant) {
        self.next_ino = self.next_ino.max(last_ino + 1);
        // Parents first, whatever their numbers: a directory renamed under
        // a newer one has a higher number than its children.
        let mut pending: Vec<u64> = nodes.keys().copied().filter(|&i| i != ROOT_INO).collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|&ino| {
                let carried = &nodes[&ino];
                let Some(parent) = self.nodes.get(&carried.parent) else {
                    return nodes.contains_key(&carried.parent);
                };
                let kind = if carried.dir {
                    Kind::Directory
                } else {
                    Kind::File
                };
                let key = match kind {
                    Kind::File => format!("{}{}", parent.key, carried.name),
                    Kind::Directory => format!("{}{}/", parent.key, carried.name),
                };
                let stat = match kind {
                    Kind::Directory => Stat::directory(SystemTime::UNIX_EPOCH),
                    Kind::File => Stat {
                        size: 0,
                        etag: String::new(),
                        mtime: SystemTime::UNIX_EPOCH,
                        posix: None,
                        own_headers: false,
                    },
                };
                self.nodes.insert(
                    ino,
                    Node {
                        parent: carried.parent,
                        name: carried.name.clone(),
                        kind,
                        key,
                        stat,
                        fetched: Some(now),
                        lookups: 1,
                        expired: true,
                        listed: None,
                        kernel_cached: None,
                        kernel_filled: 0,
                        unlinked: carried.unlinked,
                    },
                );
                if !carried.unlinked {
                    self.children
                        .insert((carried.parent, carried.name.clone()), ino);
                }
                false
            });
            if pending.len() == before {
                break;
            }
        }
        self.changes += 1;
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// Records that `ino` is opened to read version `etag` (`None`: to write), and
    /// says whether the kernel may keep the pages it cached for the file: only
    /// when they are of this same version.
    pub fn note_open(&mut self, ino: u64, etag: Option<&str>) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let keep = etag.is_some() && node.kernel_cached.as_deref() == etag;
        node.kernel_cached = etag.map(str::to_string);
        if !keep {
            node.kernel_filled = 0;
        }
        keep
    }

    /// The open just decided does not keep the kernel's pages of `ino`: the
    /// kernel empties its cache of the file.
    pub fn note_emptied(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.kernel_filled = 0;
        }
    }

    /// Whether the kernel likely holds version `etag` of file `ino` whole in
    /// its page cache: every byte of it was read to the kernel since it last
    /// emptied its cache of the file, and it has not forgotten the file.
    pub fn kernel_holds_whole(&self, ino: u64, etag: &str) -> bool {
        self.nodes.get(&ino).is_some_and(|node| {
            node.kernel_cached.as_deref() == Some(etag)
                && node.stat.size > 0
                && node.kernel_filled >= node.stat.size
        })
    }

    /// A reader of version `etag` closed, having read `filled` bytes into the
    /// kernel's page cache: if the kernel's cache is known to hold another
    /// version, it may now hold a mix. With `corrects`, it was opened on the
    /// belief that the kernel held the version whole: bytes it read through
    /// the daemon show that it did not, and are all it is known to hold.
    pub fn note_closed(&mut self, ino: u64, etag: &str, filled: u64, corrects: bool) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.kernel_cached.as_deref() == Some(etag) {
            node.kernel_filled = if corrects && filled > 0 {
                filled
            } else {
                node.kernel_filled.saturating_add(filled)
            };
        } else {
            node.kernel_cached = None;
            node.kernel_filled = 0;
        }
    }

    /// `ino` is now the object with this ETag (its content unchanged).
    pub fn set_posix(&mut self, ino: u64, posix: Posix) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.stat.posix = Some(posix);
        }
    }

    pub fn set_etag(&mut self, ino: u64, etag: String) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.stat.etag = etag;
        }
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<(u64, &Node)> {
        let ino = *self.children.get(&(parent, name.to_string()))?;
        self.nodes.get(&ino).map(|node| (ino, node))
    }

    /// Records what S3 said about `parent/name` and returns its inode number.
    pub fn upsert(&mut self, parent: u64, name: &str, kind: Kind, stat: Stat, now: Instant) -> u64 {
        let slot = (parent, name.to_string());
        self.absent.pop(&slot);
        if let Some(&ino) = self.children.get(&slot)
            && let Some(node) = self.nodes.get_mut(&ino)
            && node.kind == kind
        {
            node.stat = stat;
            node.fetched = Some(now);
            node.expired = false;
            return ino;
        }
        let parent_key = self.nodes.get(&parent).map_or("", |p| p.key.as_str());
        let key = match kind {
            Kind::File => format!("{parent_key}{name}"),
            Kind::Directory => format!("{parent_key}{name}/"),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_string(),
                kind,
                key,
                stat,
                fetched: Some(now),
                lookups: 0,
                expired: false,
                listed: None,
                kernel_cached: None,
                kernel_filled: 0,
                unlinked: false,
            },
        );
        self.record_named(ino);
        if let Some(old) = self.children.insert(slot, ino) {
            self.unlink(old);
        }
        self.changes += 1;
        ino
    }

    /// What S3 now holds for `ino`, while it has its name.
    pub fn learnt(&mut self, ino: u64, stat: Stat, now: Instant) {
        if let Some(node) = self.nodes.get_mut(&ino)
            && !node.unlinked
        {
            node.stat = stat;
            node.fetched = Some(now);
            node.expired = false;
        }
    }

    /// How many times names were added, removed or moved so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// When `dir` was last listed, if that listing is still fresh.
    pub fn fresh_listing(&self, dir: u64, ttl: Duration, now: Instant) -> Option<Instant> {
        self.nodes
            .get(&dir)?
            .listed
            .filter(|listed| fresh(*listed, ttl, now))
    }

    /// Directory `dir` was listed completely at `now`.
    pub fn mark_listed(&mut self, dir: u64, now: Instant) {
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.listed = Some(now);
        }
    }

    /// The entries of directory `dir`, sorted by name, if its listing is fresh.
    pub fn listing(
        &self,
        dir: u64,
        ttl: Duration,
        now: Instant,
    ) -> Option<Vec<(u64, Kind, String)>> {
        let listed = self.nodes.get(&dir)?.listed?;
        if !fresh(listed, ttl, now) {
            return None;
        }
        let mut entries: Vec<(u64, Kind, String)> = self
            .children
            .iter()
            .filter(|((parent, _), _)| *parent == dir)
            .filter_map(|((_, name), ino)| {
                let node = self.nodes.get(ino)?;
                Some((*ino, node.kind, name.clone()))
            })
            .collect();
        entries.sort_by(|a, b| a.2.cmp(&b.2));
        Some(entries)
    }

    /// Whether `parent/name` is known not to exist: S3 said so within the TTL, or
    /// the parent's fresh listing does not hold it.
    pub fn known_absent(&mut self, parent: u64, name: &str, ttl: Duration, now: Instant) -> bool {
        let slot = (parent, name.to_string());
        if self.children.contains_key(&slot) {
            return false;
        }
        if self
            .absent
            .get(&slot)
            .is_some_and(|at| fresh(*at, ttl, now))
        {
            return true;
        }
        self.nodes
            .get(&parent)
            .and_then(|p| p.listed)
            .is_some_and(|at| fresh(at, ttl, now))
    }

    /// `dir`'s listing no longer tells every name in it: the next look at a
    /// name the table lacks asks S3.
    pub fn unlist(&mut self, dir: u64) {
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.listed = None;
        }
    }

    /// S3 said `parent/name` does not exist.
    pub fn note_absent(&mut self, parent: u64, name: &str, now: Instant) {
        self.remove_child(parent, name);
        self.absent.put((parent, name.to_string()), now);
    }

    /// Forgets that `parent/name` exists (S3 said it does not).
    pub fn remove_child(&mut self, parent: u64, name: &str) {
        if let Some(ino) = self.children.remove(&(parent, name.to_string())) {
            self.unlink(ino);
            self.changes += 1;
        }
    }

    /// [`InodeTable::remove_child`], if `parent/name` is still `ino`.
    pub fn remove_child_of(&mut self, parent: u64, name: &str, ino: u64) {
        if self
            .child(parent, name)
            .is_some_and(|(child, _)| child == ino)
        {
            self.remove_child(parent, name);
        }
    }

    /// Moves `ino` to `new_parent/new_name`, keeping its number (the kernel keeps
    /// its inode across a rename), replacing whatever had that name, and rewrites
    /// the keys of everything known under it. Returns the inodes whose key changed.
    pub fn rename(&mut self, ino: u64, new_parent: u64, new_name: &str) -> Vec<u64> {
        let Some(node) = self.nodes.get(&ino) else {
            return Vec::new();
        };
        let old_slot = (node.parent, node.name.clone());
        if self.children.get(&old_slot) == Some(&ino) {
            self.children.remove(&old_slot);
        }
        self.remove_child(new_parent, new_name);
        self.absent.pop(&(new_parent, new_name.to_string()));
        self.children
            .insert((new_parent, new_name.to_string()), ino);
        self.changes += 1;
        let node = self.nodes.get_mut(&ino).expect("checked above");
        node.parent = new_parent;
        node.name = new_name.to_string();
        // Named again, whatever a look at its old name found meanwhile.
        node.unlinked = false;
        self.record_named(ino);
        let mut moved = Vec::new();
        let mut queue = vec![ino];
        while let Some(current) = queue.pop() {
            let (parent, name, kind) = {
                let n = &self.nodes[&current];
                (n.parent, n.name.clone(), n.kind)
            };
            let parent_key = self.nodes.get(&parent).map_or("", |p| p.key.as_str());
            let key = match kind {
                Kind::File => format!("{parent_key}{name}"),
                Kind::Directory => format!("{parent_key}{name}/"),
            };
            self.nodes.get_mut(&current).expect("present").key = key;
            moved.push(current);
            queue.extend(self.children_of(current));
        }
        moved
    }

    /// Inodes named directly under `parent`.
    pub fn children_of(&self, parent: u64) -> Vec<u64> {
        self.children
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .map(|(_, ino)| *ino)
            .collect()
    }

    /// Makes the next lookup or open of `ino` ask S3 again.
    pub fn expire(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino)
            && node.fetched.is_some()
        {
            node.expired = true;
        }
    }

    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            // The kernel's inode went, and its pages with it (or a lookup's
            // answer went unused; counting from nothing then only costs a
            // passthrough open where the pages would have done).
            node.kernel_filled = 0;
            if node.lookups == 0 {
                let slot = (node.parent, node.name.clone());
                // Keep the name mapping (and so the node) while it still points here:
                // the listing cache answers later lookups from it.
                if self.children.get(&slot) != Some(&ino) {
                    self.nodes.remove(&ino);
                    self.record(Record::Dropped { ino });
                }
            }
        }
    }

    /// `ino` lost its name: forgotten, unless the kernel still holds it.
    fn unlink(&mut self, ino: u64) {
        match self.nodes.get_mut(&ino) {
            Some(node) if node.lookups == 0 => {
                self.nodes.remove(&ino);
                self.record(Record::Dropped { ino });
            }
            Some(node) => {
                node.unlinked = true;
                self.record(Record::Unlinked { ino });
            }
            None => {}
        }
    }

    /// Every inode number in the table.
    pub fn numbers(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_keeps_its_inode_and_type_change_gets_a_new_one() {
        let now = Instant::now();
        let mut table = InodeTable::new("root/", SystemTime::UNIX_EPOCH);
        let stat = Stat::directory(SystemTime::UNIX_EPOCH);
        let a = table.upsert(ROOT_INO, "a", Kind::File, stat.clone(), now);
        assert_eq!(table.get(a).unwrap().key, "root/a");
        assert_eq!(
            table.upsert(ROOT_INO, "a", Kind::File, stat.clone(), now),
            a
        );
        let dir = table.upsert(ROOT_INO, "a", Kind::Directory, stat.clone(), now);
        assert_ne!(dir, a);
        assert_eq!(table.get(dir).unwrap().key, "root/a/");
        let child = table.upsert(dir, "b", Kind::File, stat, now);
        assert_eq!(table.get(child).unwrap().key, "root/a/b");
        // The file inode had no kernel references, so it went when it was replaced.
        assert!(table.get(a).is_none());
    }

    #[test]
    fn the_kernel_holds_a_file_whole_once_every_byte_of_one_version_was_kept() {
        let now = Instant::now();
        let mut table = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let stat = |etag: &str| Stat {
            size: 100,
            etag: etag.into(),
            ..Stat::directory(SystemTime::UNIX_EPOCH)
        };
        let f = table.upsert(ROOT_INO, "f", Kind::File, stat("v1"), now);
        table.add_lookup(f);
        let read_whole = |table: &mut InodeTable, etag: &str, bytes: u64| {
            let kept = table.note_open(f, Some(etag));
            table.note_closed(f, etag, bytes, false);
            kept
        };
        assert!(!read_whole(&mut table, "v1", 60));
        assert!(!table.kernel_holds_whole(f, "v1"), "60 of 100 bytes");
        assert!(read_whole(&mut table, "v1", 40), "kept: the bytes add up");
        assert!(table.kernel_holds_whole(f, "v1"));
        assert!(!table.kernel_holds_whole(f, "v2"));

        // An open that does not keep the pages empties the kernel's cache.
        table.note_open(f, Some("v1"));
        table.note_emptied(f);
        assert!(!table.kernel_holds_whole(f, "v1"));
        table.note_closed(f, "v1", 100, false);
        assert!(table.kernel_holds_whole(f, "v1"));

        // Opened on that belief, a reader that found pages missing (reclaimed
        // under memory pressure) corrects it; one that found them all leaves it.
        table.note_open(f, Some("v1"));
        table.note_closed(f, "v1", 0, true);
        assert!(table.kernel_holds_whole(f, "v1"));
        table.note_open(f, Some("v1"));
        table.note_closed(f, "v1", 30, true);
        assert!(!table.kernel_holds_whole(f, "v1"), "30 of 100 known held");
        read_whole(&mut table, "v1", 70);
        assert!(table.kernel_holds_whole(f, "v1"));

        // A reader of another version closing mixes the cache.
        table.note_closed(f, "v0", 100, false);
        assert!(!table.kernel_holds_whole(f, "v1"));
        read_whole(&mut table, "v1", 100);
        assert!(table.kernel_holds_whole(f, "v1"));

        // A new version read whole counts from nothing.
        table.learnt(f, stat("v2"), now);
        assert!(!read_whole(&mut table, "v2", 50));
        assert!(!table.kernel_holds_whole(f, "v2"));
        read_whole(&mut table, "v2", 50);
        assert!(table.kernel_holds_whole(f, "v2"));

        // Forgotten by the kernel, its pages went with its inode.
        table.forget(f, 1);
        assert!(!table.kernel_holds_whole(f, "v2"));
    }

    #[test]
    fn forgotten_nodes_go_once_unnamed() {
        let now = Instant::now();
        let mut table = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let stat = Stat::directory(SystemTime::UNIX_EPOCH);
        let a = table.upsert(ROOT_INO, "a", Kind::File, stat, now);
        table.add_lookup(a);
        table.remove_child(ROOT_INO, "a");
        assert!(table.get(a).is_some(), "the kernel still holds it");
        table.forget(a, 1);
        assert!(table.get(a).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_held_node_that_loses_its_name_is_unlinked_and_learns_nothing_more() {
        let now = Instant::now();
        let mut table = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let stat = Stat::directory(SystemTime::UNIX_EPOCH);
        let held = |table: &mut InodeTable, name| {
            let ino = table.upsert(ROOT_INO, name, Kind::File, stat.clone(), now);
            table.add_lookup(ino);
            ino
        };
        // Replaced by a rename, removed, and replaced by a directory.
        let (old, new) = (held(&mut table, "cfg"), held(&mut table, "cfg.tmp"));
        let (removed, retyped) = (held(&mut table, "rm"), held(&mut table, "t"));
        table.rename(new, ROOT_INO, "cfg");
        table.remove_child(ROOT_INO, "rm");
        table.upsert(ROOT_INO, "t", Kind::Directory, stat.clone(), now);
        for ino in [old, removed, retyped] {
            assert!(table.get(ino).unwrap().unlinked, "{ino}");
        }
        assert!(!table.get(new).unwrap().unlinked);
        // What an upload of the old file learns is not the name's.
        let uploaded = Stat {
            size: 99,
            ..stat.clone()
        };
        table.learnt(old, uploaded.clone(), now);
        assert_eq!(table.get(old).unwrap().stat.size, 0);
        assert_eq!(table.child(ROOT_INO, "cfg").unwrap().0, new);
        table.learnt(new, uploaded, now);
        assert_eq!(table.get(new).unwrap().stat.size, 99);
        // A file being renamed whose old name a lookup found gone (the source
        // deleted before the table moved it) has a name again once moved.
        let moving = held(&mut table, "a");
        table.note_absent(ROOT_INO, "a", now);
        assert!(table.get(moving).unwrap().unlinked);
        table.rename(moving, ROOT_INO, "b");
        assert!(!table.get(moving).unwrap().unlinked);
    }

    #[test]
    fn rename_keeps_the_inode_and_rewrites_keys_below() {
        let now = Instant::now();
        let mut table = InodeTable::new("r/", SystemTime::UNIX_EPOCH);
        let stat = Stat::directory(SystemTime::UNIX_EPOCH);
        let dir = table.upsert(ROOT_INO, "d", Kind::Directory, stat.clone(), now);
        let sub = table.upsert(dir, "s", Kind::Directory, stat.clone(), now);
        let file = table.upsert(sub, "f", Kind::File, stat.clone(), now);
        let other = table.upsert(ROOT_INO, "e", Kind::Directory, stat, now);
        let moved = table.rename(dir, other, "d2");
        assert_eq!(moved.len(), 3);
        assert_eq!(table.get(dir).unwrap().key, "r/e/d2/");
        assert_eq!(table.get(file).unwrap().key, "r/e/d2/s/f");
        assert_eq!(table.child(other, "d2").unwrap().0, dir);
        assert!(table.child(ROOT_INO, "d").is_none());
    }

    #[test]
    fn remaining_ttl_counts_down() {
        let now = Instant::now();
        let mut table = InodeTable::new("", SystemTime::UNIX_EPOCH);
        let a = table.upsert(
            ROOT_INO,
            "a",
            Kind::File,
            Stat::directory(SystemTime::UNIX_EPOCH),
            now,
        );
        let ttl = Duration::from_secs(5);
        let node = table.get(a).unwrap();
        assert_eq!(node.remaining(ttl, now), Some(ttl));
        assert_eq!(
            node.remaining(ttl, now + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(node.remaining(ttl, now + ttl), None);
    }
}
