//! The filesystem: S3's flat key space presented as directories and files.
//!
//! This module implements docs/SEMANTICS.md. It never names fuser: it takes plain
//! inode numbers and names, returns its own types and [`FsError`], and is tested on
//! the in-memory store with no kernel involved.
//!
//! A directory is a key prefix ending in `/`. It exists when any key lies under it,
//! whether a marker object `dir/` (as the S3 console makes) or only deeper keys (an
//! "implicit" directory). When both `name` and `name/...` exist, the directory wins
//! and the file is hidden, because a directory cannot be shadowed without hiding
//! everything in it. Keys whose last segment cannot be a Linux file name (empty,
//! `.`, `..`, too long, NUL) are skipped in listings with one warning per listing.

mod ahead;
mod audit;
pub mod content_type;
mod control;
mod copies;
mod dir;
mod encrypted;
pub mod error;
mod handle_table;
mod handles;
pub mod inode;
pub mod kernel;
mod lookup;
mod meta;
pub mod passthrough;
pub mod posix;
pub mod xattrs;

pub use meta::xattr_name;
mod changes;
pub mod read;
mod remove;
mod rename;
mod staging;
mod stop;
mod symlink;
mod takeover;
pub mod upload;
mod write;
mod writer;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::debug;

use self::ahead::Listed;
use self::changes::ChangeQueue;
pub use self::dir::DirEntry;
pub use self::error::{FsError, FsResult};
use self::handle_table::{HandleTable, OpenFile};
pub use self::handles::Answer;
use self::inode::{InodeTable, Node};
pub use self::inode::{Kind, ROOT_INO, Stat};
pub use self::lookup::LOOKUP_BYTES;
pub use self::meta::METADATA_DELAY;
pub use self::read::ReadConfig;
use self::staging::StagingRegistry;
pub use self::takeover::Adopted;
use self::upload::StagingBudget;
pub use self::upload::WriteConfig;
use crate::cache::BlockCache;
// The one place the filesystem names encryption: its codec, and what the
// codec's decryptions and sealing keys are made of.
pub(crate) use crate::cse::codec::{
    Codec, ContentKey, CseError, Decryption, OpenError, Piece, Plain, Tagger, Verdict, Version,
};
use crate::memory::{DEFAULT_MAX_MEMORY, MemoryBudget};
use crate::names::{NameProblem, check_name};
use crate::stats::MountStats;
use crate::store::ObjectStore;

/// What the kernel is told about ownership and modes, and how long metadata lives.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long what S3 said about a name is trusted before asking again.
    pub metadata_ttl: Duration,
    /// Modes, owners and times are read from and kept in the objects' user
    /// metadata (`--no-metadata` turns it off).
    pub metadata: bool,
    /// Uploads, copies and directory markers carry a Content-Type from the
    /// file's extension (`--no-content-type` turns it off).
    pub content_types: bool,
    pub read: ReadConfig,
    /// The memory read-ahead and uploads may hold (`--max-memory`).
    pub memory: Arc<MemoryBudget>,
    /// Where read data is kept; `None` reads everything from S3.
    pub cache: Option<Arc<BlockCache>>,
    /// How to write; `None` makes the volume read-only.
    pub write: Option<WriteConfig>,
    /// The mount's counters, the answer to the stats ioctl on the root
    /// (`s3vol stats`).
    pub stats: Option<Arc<MountStats>>,
    /// Where reads and changes are recorded (`--audit-log`).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// How file content is kept in objects: as it is, or encrypted
    /// (`--cse-kms-key-id`).
    pub codec: Arc<dyn Codec>,
    /// How long a listing may bring nothing, page after page
    /// (`--io-timeout`).
    pub io_timeout: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(5),
            metadata: true,
            content_types: true,
            read: ReadConfig::default(),
            memory: MemoryBudget::new(DEFAULT_MAX_MEMORY, false, None),
            cache: None,
            write: None,
            stats: None,
            audit: None,
            codec: Arc::new(Plain),
            io_timeout: crate::store::LISTING_PATIENCE,
        }
    }
}

/// S_ISUID and S_ISGID.
const SETID_BITS: u16 = 0o6000;

/// Attributes of one inode as the kernel sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// The last change of the file, its content or anything kept of it.
    pub ctime: SystemTime,
    pub perm: u16,
    /// A file that is a symbolic link (its object's metadata says so).
    pub symlink: bool,
    /// 1 for a file (0 once unlinked while still open here), 2 for a directory:
    /// S3 has no hard links, and subdirectories are not counted.
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Attributes plus how long the kernel may cache them.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// What `df` shows: S3 has no capacity, so a large constant.
#[derive(Clone, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// The changes S3 has no way to express.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    Symlink,
    Link,
    Mknod,
}

/// How a file is opened, and by whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub write: bool,
    /// O_TRUNC: the file starts empty.
    pub truncate: bool,
    /// The process opening it (its thread group), when the kernel names it.
    pub process: Option<u32>,
    /// O_DIRECT: the kernel keeps none of what this open reads.
    pub direct: bool,
}

/// A file handle just opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The kernel's cached pages of the file are of the version opened.
    pub keep_cache: bool,
    /// The kernel is to keep no page of what the handle reads (an encrypted
    /// version not yet authenticated): every read comes here.
    pub direct_io: bool,
    /// The kernel is to read the file from the backing file of this ID
    /// (passthrough).
    pub backing: Option<u32>,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    /// Files being written, and changes waiting to be put in S3.
    staging: StagingRegistry,
    /// Changes of closed files' modes, owners and times waiting for S3.
    changes: ChangeQueue,
    /// The latest snapshot of each directory's listing, shared by its handles.
    dir_snapshots: Mutex<HashMap<u64, dir::Snapshot>>,
    /// Every open file and directory handle.
    handles: HandleTable,
    /// Upload permits, staging space and memory of the files being written.
    uploads: upload::Shares,
    /// The time shown for directories that have no marker object of their own.
    mount_time: SystemTime,
    /// How far metadata is read ahead in each directory.
    ahead: ahead::Windows,
    /// Metadata asked for ahead of READDIRPLUS replies.
    batches: ahead::Batches,
    /// Held by a change of extended attributes, each made on the last.
    xattr_changes: tokio::sync::Mutex<()>,
    /// Held while a change of mode, owner or time is put in S3 (by a stop,
    /// throughout), so that a stop or an fsync waits for the one another turn
    /// took and is still copying.
    metadata_turn: tokio::sync::Mutex<()>,
    /// The keys whose changes the stop lost, once it is done: the volume stops
    /// once, and every call of [`Fs::stop`] returns when it has.
    stopped: tokio::sync::OnceCell<Vec<String>>,
    /// The kernel's caches, once the volume is mounted.
    kernel: kernel::Kernel,
    /// Which files the kernel reads from the disk cache directly.
    passthrough: Arc<passthrough::Passthrough>,
    /// Asks the volume's supervisor for a new worker (`s3vol restart`).
    restart: std::sync::OnceLock<Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>>,
}

impl Fs {
    /// Counts a call answered with `errno`, for the statistics.
    pub fn count_error(&self, errno: i32) {
        if let Some(stats) = &self.config.stats {
            stats.errors.record(errno);
        }
    }

    /// A filesystem whose root directory is the key prefix `root_key` (empty, or
    /// ending in `/`).
    pub fn new(store: Arc<dyn ObjectStore>, root_key: &str, config: FsConfig) -> Self {
        let mut uploads = match &config.write {
            Some(write) => write.shares(config.memory.clone()),
            // Read-only: nothing is ever uploaded or staged.
            None => upload::Shares {
                permits: Arc::new(Semaphore::new(0)),
                staging: StagingBudget::new(0),
                memory: config.memory.clone(),
                codec: Arc::new(Plain),
                copies: Arc::default(),
                content_types: false,
            },
        };
        uploads.codec = config.codec.clone();
        uploads.content_types = config.content_types;
        let mount_time = SystemTime::now();
        let passthrough = Arc::new(passthrough::Passthrough::default());
        if config.cache.is_none() {
            passthrough.not_configured("no disk cache");
        } else if config.codec.encrypts() {
            passthrough.not_configured("an encrypted volume's cache holds ciphertext");
        } else if config.audit.is_some() {
            passthrough.not_configured("the audit log records reads, which must reach the daemon");
        } else if config.write.is_some() {
            passthrough.not_configured(
                "a read-write volume (a file opened for writing must reach the daemon)",
            );
        } else if let Some(why) = config
            .cache
            .as_ref()
            .and_then(|cache| passthrough::cannot_pass_through(cache.dir()))
        {
            passthrough.turn_off(why);
        }
        if let Some(stats) = &config.stats {
            let status = Arc::downgrade(&passthrough);
            let _ = stats.passthrough.set(Arc::new(move || {
                status.upgrade().map(|p| p.status()).unwrap_or_default()
            }));
        }
        Self {
            store,
            inodes: Mutex::new(InodeTable::new(root_key, mount_time)),
            mount_time,
            staging: StagingRegistry::default(),
            changes: ChangeQueue::default(),
            uploads,
            dir_snapshots: Mutex::new(HashMap::new()),
            handles: HandleTable::default(),
            config,
            xattr_changes: tokio::sync::Mutex::new(()),
            metadata_turn: tokio::sync::Mutex::new(()),
            stopped: tokio::sync::OnceCell::new(),
            ahead: ahead::Windows::default(),
            batches: ahead::Batches::default(),
            kernel: kernel::Kernel::default(),
            passthrough,
            restart: std::sync::OnceLock::new(),
        }
    }

    /// Gives the filesystem the kernel's caches to correct (once mounted).
    pub fn set_kernel_cache(&self, kernel: Arc<dyn kernel::KernelCache>) {
        self.kernel.attach(kernel);
    }

    /// Gives the filesystem the kernel's backing files (once mounted), for
    /// files whole in the disk cache to be read through passthrough.
    pub fn set_backings(&self, backings: Arc<dyn passthrough::Backings>) {
        let probe = self.config.cache.as_ref().and_then(|c| c.probe_file().ok());
        self.passthrough.attach(backings, probe);
    }

    /// Whether files may be read through passthrough: the kernel is to be
    /// asked for it.
    pub fn may_pass_through(&self) -> bool {
        self.passthrough.is_on()
    }

    /// The kernel cannot read files through passthrough, for `why`.
    pub fn no_passthrough(&self, why: String) {
        self.passthrough.turn_off(why);
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes
            .lock()
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// [`Fs::node`], for what reaches its object by its key: ESTALE once the
    /// name is gone (the key is another file's now, or no one's).
    fn named_node(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.unlinked {
            return Err(FsError::Unlinked { key: node.key });
        }
        Ok(node)
    }

    fn attr(&self, ino: u64, node: &Node) -> Attr {
        let (perm, mut size, mut mtime, mut nlink) = match node.kind {
            Kind::File => (self.config.file_mode, node.stat.size, node.stat.mtime, 1),
            Kind::Directory => (self.config.dir_mode, 0, node.stat.mtime, 2),
        };
        // What the object's metadata says, where it says it.
        let posix = self
            .changes
            .shown(ino, node.stat.posix.as_ref())
            .filter(|_| self.config.metadata)
            .unwrap_or_default();
        // Set-user-ID and set-group-ID bits are kept but never shown: whoever
        // can write to the bucket could otherwise hand a root-owned setuid
        // program to anyone who copies it off the volume with `cp -a`.
        // Nor those of --file-mode and --dir-mode. (A directory's set-group-ID
        // bit from its marker, as s3fs's `chmod 2750 d` keeps it, runs nothing.)
        let perm = match (node.kind, posix.perm) {
            (Kind::Directory, Some(kept)) => kept,
            (_, kept) => kept.unwrap_or(perm) & !SETID_BITS,
        };
        mtime = posix.mtime.unwrap_or(mtime);
        // The change time kept (s3fs's), else S3's last change of the object.
        let mut ctime = posix.ctime.unwrap_or(node.stat.mtime);
        if node.unlinked {
            nlink = 0;
        }
        // A file being written here is what this mount shows, whatever S3 holds.
        if let Some(file) = self.staging.file(ino) {
            size = file.size();
            mtime = file.changed_mtime().unwrap_or(mtime);
            ctime = file.changed_ctime().unwrap_or(ctime);
            if file.is_deleted() {
                nlink = 0;
            }
        }
        if node.kind == Kind::File {
            self.kernel.shown(ino, size);
        }
        Attr {
            ino,
            kind: node.kind,
            symlink: posix.symlink,
            size,
            mtime,
            ctime,
            perm,
            nlink,
            uid: posix.uid.unwrap_or(self.config.uid),
            gid: posix.gid.unwrap_or(self.config.gid),
        }
    }

    /// Whether the attributes shown for `ino` wait on its object's metadata,
    /// which a listing does not bring: a file's, or a directory marker's, is
    /// asked for with a HEAD.
    fn metadata_unknown(&self, ino: u64, node: &Node) -> bool {
        self.config.metadata && ino != ROOT_INO && node.stat.posix.is_none()
    }

    /// The entry for `ino` if what we know of it is still fresh and whole (a
    /// file being written here always is).
    fn fresh_entry(&self, ino: u64, node: &Node) -> Option<Entry> {
        if self.staging.contains(ino) {
            return Some(Entry {
                attr: self.attr(ino, node),
                ttl: self.config.metadata_ttl,
            });
        }
        if self.metadata_unknown(ino, node) {
            return None;
        }
        node.remaining(self.config.metadata_ttl, Instant::now())
            .map(|ttl| Entry {
                attr: self.attr(ino, node),
                ttl,
            })
    }

    /// Looks `name` up in directory `parent`, from cache when fresh.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let parent_node = self.node(parent)?;
        if parent_node.kind != Kind::Directory {
            return Err(FsError::NotADirectory);
        }
        // S3 keys are UTF-8, so a name that is not cannot exist.
        let name = name.to_str().ok_or(FsError::NotFound)?;
        match check_name(name) {
            Ok(()) => {}
            Err(NameProblem::TooLong) => return Err(FsError::NameTooLong),
            Err(_) => return Err(FsError::NotFound),
        }
        let cached = {
            let mut table = self.inodes.lock();
            if table.known_absent(parent, name, self.config.metadata_ttl, Instant::now()) {
                return Err(FsError::NotFound);
            }
            table
                .child(parent, name)
                .and_then(|(ino, node)| self.fresh_entry(ino, node))
        };
        let entry = match cached {
            Some(entry) => entry,
            None => self.refresh_child(parent, &parent_node.key, name).await?,
        };
        self.inodes.lock().add_lookup(entry.attr.ino);
        Ok(entry)
    }

    async fn refresh_child(&self, parent: u64, parent_key: &str, name: &str) -> FsResult<Entry> {
        // Metadata a listing's batch is asking for comes with it.
        if let Some(entry) = self.answer_of_batch(parent, name).await {
            return Ok(entry);
        }
        let staged = {
            let table = self.inodes.lock();
            table
                .child(parent, name)
                .filter(|(ino, _)| self.staging.contains(*ino))
                .map(|(ino, node)| Entry {
                    attr: self.attr(ino, node),
                    ttl: self.config.metadata_ttl,
                })
        };
        if let Some(entry) = staged {
            return Ok(entry);
        }
        // What a fresh listing showed lacks only its metadata: a HEAD of the
        // file, or of the directory's marker, brings it.
        let listed = {
            let table = self.inodes.lock();
            table
                .child(parent, name)
                .filter(|(_, node)| {
                    node.remaining(self.config.metadata_ttl, Instant::now())
                        .is_some()
                })
                .map(|(ino, node)| Listed {
                    ino,
                    etag: node.stat.etag.clone(),
                    name: name.to_string(),
                    kind: node.kind,
                    key: node.key.clone(),
                    mtime: node.stat.mtime,
                    size: node.stat.size,
                })
        };
        let found = match listed {
            Some(listed) => {
                match self.stat_listed(parent, listed).await? {
                    Some(found) => Some(found),
                    // Gone since, or a directory now: ask the whole question.
                    None => self.stat_name(parent_key, name).await?,
                }
            }
            None => self.stat_name(parent_key, name).await?,
        };
        let mut table = self.inodes.lock();
        match found {
            Some((kind, stat)) => {
                let ino = table.upsert(parent, name, kind, stat, Instant::now());
                let node = table.get(ino).expect("just inserted");
                Ok(Entry {
                    attr: self.attr(ino, node),
                    ttl: self.config.metadata_ttl,
                })
            }
            None => {
                table.note_absent(parent, name, Instant::now());
                Err(FsError::NotFound)
            }
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Entry> {
        let node = self.node(ino)?;
        if let Some(entry) = self.fresh_entry(ino, &node) {
            return Ok(entry);
        }
        // Open, with its name gone: it is what it was (its name, if it is
        // still there, is another file's).
        if node.unlinked {
            return Ok(Entry {
                attr: self.attr(ino, &node),
                ttl: self.config.metadata_ttl,
            });
        }
        let parent = self.node(node.parent)?;
        let entry = self
            .refresh_child(node.parent, &parent.key, &node.name)
            .await?;
        if entry.attr.ino != ino {
            // The name now refers to something else (a file became a directory).
            return Err(FsError::NotFound);
        }
        Ok(entry)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut table = self.inodes.lock();
        table.forget(ino, n);
        if table.get(ino).is_none() {
            self.kernel.forgotten(ino);
        }
    }

    pub fn statfs(&self) -> StatFs {
        // 1 PiB in 4 KiB blocks: large enough that nothing refuses to copy in, and
        // still a sane number for tools that do arithmetic on it.
        const BLOCKS: u64 = 1 << 38;
        StatFs {
            blocks: BLOCKS,
            bfree: BLOCKS,
            files: 1 << 32,
            ffree: 1 << 32,
            block_size: 4096,
            name_max: crate::names::NAME_MAX as u32,
        }
    }

    /// A change S3 cannot express: refused with EROFS on a read-only volume
    /// (before any request), with ENOTSUP otherwise.
    pub fn mutate(&self, op: Mutation) -> FsError {
        if let Err(e) = self.writable() {
            return e;
        }
        debug!(?op, "not supported on an S3 volume");
        FsError::NotSupported(match op {
            Mutation::Symlink => "a symbolic link",
            Mutation::Link => "a hard link",
            Mutation::Mknod => "a device node or FIFO",
        })
    }

    /// EROFS on a read-only volume, ENOTCONN on a stopped one: every change is
    /// refused before any request.
    fn writable(&self) -> FsResult<&WriteConfig> {
        let config = self.config.write.as_ref().ok_or(FsError::ReadOnly)?;
        self.staging.running()?;
        Ok(config)
    }
}
