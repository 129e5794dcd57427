//! Random sequences of filesystem operations, with another client changing the
//! bucket in between and requests failing now and then, checked against a
//! reference model: the bucket as a map of keys to bytes, and the view
//! SEMANTICS.md derives from it.
//!
//! After every operation the whole volume (every directory listing and every
//! file's bytes) and the bucket's exact key set must match the model: nothing
//! lost, nothing half-written, no stray keys, no multipart upload left open. A
//! failed request must fail the operation with the errno SEMANTICS.md names and
//! leave the bucket as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::pattern;
use proptest::prelude::*;
use s3vol::cache::{BlockCache, CacheConfig};
use s3vol::fs::posix::Posix;
use s3vol::fs::{Fs, FsConfig, Kind, OpenFlags, ROOT_INO, WriteConfig};
use s3vol::local_dir::LocalDir;
use s3vol::store::Operation;
use s3vol::store::faulty::{Fault, FaultyStore};
use s3vol::store::memory::MemoryStore;

const ROOT: &str = "root/";

/// S3's smallest part: a file larger than this is uploaded in parts.
const PART: usize = 5 << 20;

/// File and directory names are disjoint, so a file never shares a name with a
/// directory (shadowing is tested elsewhere).
const FILES: [&str; 6] = ["x", "y", "z", "w", "report 2024.csv", "ünïcødé"];
/// Directories, parents before children.
const DIRS: [&str; 3] = ["a", "b", "a/c"];

/// What a write writes: a few bytes, or (rarely) a file large enough to be
/// uploaded in parts, described by its length and seed so cases stay small.
#[derive(Clone)]
enum Data {
    Bytes(Vec<u8>),
    Large { len: usize, seed: u64 },
}

impl Data {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Bytes(bytes) => bytes.clone(),
            Data::Large { len, seed } => pattern(*len, *seed),
        }
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Bytes(bytes) => write!(f, "{bytes:?}"),
            Data::Large { len, seed } => write!(f, "Large {{ len: {len}, seed: {seed} }}"),
        }
    }
}

/// Which handle of two a write goes through.
#[derive(Clone, Copy, Debug)]
enum Handle {
    First,
    Second,
}

#[derive(Clone, Debug)]
enum Op {
    /// Create (or truncate) a file and write `data` to it.
    Create {
        path: String,
        data: Data,
    },
    /// Write `data` at `offset` of an existing file.
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    Append {
        path: String,
        data: Vec<u8>,
    },
    Truncate {
        path: String,
        size: u64,
    },
    /// Two handles open on one existing file, writes through either in turn,
    /// the first closed (and its close uploading) while the second still writes.
    Interleave {
        path: String,
        writes: Vec<(Handle, u64, Vec<u8>)>,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        dir: String,
    },
    Rmdir {
        dir: String,
    },
    /// `op` with every request of `denied` answered AccessDenied.
    Denied {
        denied: Operation,
        op: Box<Op>,
    },
    /// Another client puts or deletes a key.
    ExternalPut {
        path: String,
        data: Vec<u8>,
    },
    ExternalDelete {
        path: String,
    },
}

fn file_path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "a/", "b/", "a/c/"]),
        prop::sample::select(FILES.to_vec()),
    )
        .prop_map(|(dir, name)| format!("{dir}{name}"))
}

fn small() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        20 => small().prop_map(Data::Bytes),
        // One part and a little more, or three parts; the last is short.
        2 => (prop::sample::select(vec![PART + 1, 2 * PART + 12_345]), any::<u64>())
            .prop_map(|(len, seed)| Data::Large { len, seed }),
    ]
}

fn dir() -> impl Strategy<Value = String> {
    prop::sample::select(DIRS.to_vec()).prop_map(str::to_string)
}

/// The operations a volume's user makes.
fn user_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (file_path(), data()).prop_map(|(path, data)| Op::Create { path, data }),
        (file_path(), 0u64..50, small()).prop_map(|(path, offset, data)| Op::Write {
            path,
            offset,
            data
        }),
        (file_path(), small()).prop_map(|(path, data)| Op::Append { path, data }),
        (file_path(), 0u64..60).prop_map(|(path, size)| Op::Truncate { path, size }),
        (
            file_path(),
            prop::collection::vec(
                (
                    prop::sample::select(vec![Handle::First, Handle::Second]),
                    0u64..50,
                    small()
                ),
                1..6
            )
        )
            .prop_map(|(path, writes)| Op::Interleave { path, writes }),
        (file_path(), file_path()).prop_map(|(from, to)| Op::Rename { from, to }),
        file_path().prop_map(|path| Op::Unlink { path }),
        dir().prop_map(|dir| Op::Mkdir { dir }),
        dir().prop_map(|dir| Op::Rmdir { dir }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => user_op(),
        1 => (file_path(), small()).prop_map(|(path, data)| Op::ExternalPut { path, data }),
        1 => file_path().prop_map(|path| Op::ExternalDelete { path }),
        // The requests each kind of change needs, refused.
        1 => (file_path(), data()).prop_map(|(path, data)| Op::Denied {
            denied: Operation::PutObject,
            op: Box::new(Op::Create { path, data }),
        }),
        1 => (file_path(), any::<u64>()).prop_map(|(path, seed)| Op::Denied {
            denied: Operation::UploadPart,
            op: Box::new(Op::Create { path, data: Data::Large { len: 2 * PART + 1, seed } }),
        }),
        1 => (file_path(), file_path()).prop_map(|(from, to)| Op::Denied {
            denied: Operation::CopyObject,
            op: Box::new(Op::Rename { from, to }),
        }),
        1 => file_path().prop_map(|path| Op::Denied {
            denied: Operation::DeleteObject,
            op: Box::new(Op::Unlink { path }),
        }),
    ]
}

/// The bucket under the volume's prefix: key (without the prefix) to bytes.
#[derive(Default, Debug)]
struct Model {
    keys: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty() || self.keys.keys().any(|k| k.starts_with(&format!("{dir}/")))
    }

    fn parent(path: &str) -> &str {
        path.rsplit_once('/').map_or("", |(d, _)| d)
    }

    /// What a listing of `dir` shows: names and kinds.
    fn listing(&self, dir: &str) -> BTreeMap<String, Kind> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = BTreeMap::new();
        for key in self.keys.keys() {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((name, _)) => {
                    out.insert(name.to_string(), Kind::Directory);
                }
                None if !rest.is_empty() => {
                    out.entry(rest.to_string()).or_insert(Kind::File);
                }
                None => {}
            }
        }
        out
    }
}

/// `data` written at `offset` of `file`, zero-filling a gap. Writing nothing
/// changes nothing (the kernel sends no empty write).
fn written(mut file: Vec<u8>, offset: u64, data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return file;
    }
    let end = offset as usize + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset as usize..end].copy_from_slice(data);
    file
}

struct Harness {
    store: Arc<MemoryStore>,
    faulty: Arc<FaultyStore>,
    /// The requests refused during the current operation.
    denied: Option<Operation>,
    fs: Fs,
    model: Model,
    cache: Option<Arc<BlockCache>>,
    _local: tempfile::TempDir,
}

/// As at unmount: blocks still being written behind a reader land in no
/// directory the test is about to remove.
impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(cache) = &self.cache {
            cache.close();
        }
    }
}

const TRUNCATE: OpenFlags = OpenFlags {
    write: true,
    truncate: true,
    process: None,
    direct: false,
};
const WRITE: OpenFlags = OpenFlags {
    write: true,
    truncate: false,
    process: None,
    direct: false,
};

impl Harness {
    fn new(block_cache: bool) -> Self {
        let store = Arc::new(MemoryStore::new("bkt"));
        let faulty = Arc::new(FaultyStore::new(store.clone()));
        let local = tempfile::tempdir().unwrap();
        let cache = block_cache.then(|| {
            Arc::new(
                BlockCache::open(CacheConfig {
                    dir: LocalDir::open_or_create(&local.path().join("blocks")).unwrap(),
                    disk_bytes: 64 << 20,
                    memory_bytes: 4 << 20,
                    write_backlog: 32 << 20,
                })
                .unwrap(),
            )
        });
        let config = FsConfig {
            // Another client changes the bucket: ask S3 every time.
            metadata_ttl: Duration::ZERO,
            cache: cache.clone(),
            write: Some(WriteConfig {
                part_size: PART as u64,
                max_in_flight: 2,
                ..WriteConfig::new(LocalDir::open_or_create(local.path()).unwrap())
            }),
            ..FsConfig::default()
        };
        Self {
            fs: Fs::new(faulty.clone(), ROOT, config),
            store,
            faulty,
            denied: None,
            model: Model::default(),
            cache,
            _local: local,
        }
    }

    /// Resolves a path as the kernel does, one lookup per component.
    async fn resolve(&self, path: &str) -> Result<(u64, Kind), i32> {
        let (mut ino, mut kind) = (ROOT_INO, Kind::Directory);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let entry = self
                .fs
                .lookup(ino, OsStr::new(part))
                .await
                .map_err(|e| e.errno())?;
            (ino, kind) = (entry.attr.ino, entry.attr.kind);
        }
        Ok((ino, kind))
    }

    async fn parent_ino(&self, path: &str) -> Result<u64, i32> {
        self.resolve(Model::parent(path)).await.map(|(ino, _)| ino)
    }

    fn name(path: &str) -> &OsStr {
        OsStr::new(path.rsplit('/').next().unwrap())
    }

    /// Writes `data` at `offset` in pieces of at most 1 MiB, as the kernel sends
    /// them.
    async fn write_at(&self, fh: u64, offset: u64, data: &[u8]) {
        for (n, chunk) in data.chunks(1 << 20).enumerate() {
            let at = offset + (n << 20) as u64;
            self.fs.write(fh, at, chunk).await.unwrap();
        }
    }

    /// Opens, writes and closes; the close's result.
    async fn write_through(
        &self,
        ino: u64,
        flags: OpenFlags,
        offset: u64,
        data: &[u8],
    ) -> Result<(), i32> {
        let fh = self.fs.open(ino, flags).await.unwrap();
        self.write_at(fh, offset, data).await;
        let closed = self.fs.flush(fh, None).await.map_err(|e| e.errno());
        self.fs.release(fh).await;
        closed
    }

    /// Applies `op` to the volume and the model; the outcome must agree. A
    /// change whose close (or rename, or unlink) fails returns its errno and
    /// leaves the model as it was.
    async fn apply(&mut self, op: &Op) -> Result<(), i32> {
        match op {
            Op::Create { path, data } => {
                let parent = Model::parent(path);
                if !self.model.dir_exists(parent) {
                    assert_eq!(self.parent_ino(path).await, Err(libc::ENOENT), "{op:?}");
                    return Ok(());
                }
                let dir = self.parent_ino(path).await.unwrap();
                let data = data.bytes();
                // A close with nothing written leaves the upload to the release,
                // which cannot report a refusal to anyone: the bucket keeps what
                // it had.
                let unreported = data.is_empty() && self.denied == Some(Operation::PutObject);
                match self.resolve(path).await {
                    Ok((ino, _)) => self.write_through(ino, TRUNCATE, 0, &data).await?,
                    Err(libc::ENOENT) => {
                        let (_, fh) = self
                            .fs
                            .create(dir, Self::name(path), None, Posix::default())
                            .await
                            .unwrap();
                        self.write_at(fh, 0, &data).await;
                        let closed = self.fs.flush(fh, None).await.map_err(|e| e.errno());
                        self.fs.release(fh).await;
                        closed?;
                    }
                    Err(e) => panic!("{op:?}: lookup failed with {e}"),
                }
                if !unreported {
                    self.model.keys.insert(path.clone(), data);
                }
            }
            Op::Write { path, offset, data } => {
                let Some(old) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                self.write_through(ino, WRITE, *offset, data).await?;
                self.model
                    .keys
                    .insert(path.clone(), written(old, *offset, data));
            }
            Op::Append { path, data } => {
                let Some(old) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                let size = self.fs.getattr(ino).await.unwrap().attr.size;
                assert_eq!(size, old.len() as u64, "{op:?}: size before append");
                self.write_through(ino, WRITE, size, data).await?;
                let mut new = old;
                new.extend_from_slice(data);
                self.model.keys.insert(path.clone(), new);
            }
            Op::Truncate { path, size } => {
                let Some(mut new) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                let attr = self
                    .fs
                    .setattr(ino, Some(*size), Posix::default(), None)
                    .await
                    .map_err(|e| e.errno())?
                    .attr;
                assert_eq!(attr.size, *size, "{op:?}");
                new.resize(*size as usize, 0);
                self.model.keys.insert(path.clone(), new);
            }
            Op::Interleave { path, writes } => {
                let Some(mut content) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                let first = self.fs.open(ino, WRITE).await.unwrap();
                let second = self.fs.open(ino, WRITE).await.unwrap();
                let before = content.clone();
                let (mut first_open, mut first_wrote) = (true, false);
                for (i, (handle, offset, data)) in writes.iter().enumerate() {
                    let fh = match handle {
                        Handle::First if first_open => {
                            first_wrote |= !data.is_empty();
                            first
                        }
                        _ => second,
                    };
                    self.write_at(fh, *offset, data).await;
                    content = written(content, *offset, data);
                    if i == writes.len() / 2 && first_open {
                        // Closing a handle that wrote makes what every handle
                        // wrote so far durable; closing one that did not
                        // publishes nothing.
                        self.fs.flush(first, None).await.unwrap();
                        self.fs.release(first).await;
                        first_open = false;
                        let stored = self.store.get(&format!("{ROOT}{path}")).unwrap();
                        let want = if first_wrote { &content } else { &before };
                        assert_eq!(&stored[..], &want[..], "{op:?}: after the first close");
                    }
                }
                if first_open {
                    self.fs.flush(first, None).await.unwrap();
                    self.fs.release(first).await;
                }
                self.fs.flush(second, None).await.unwrap();
                self.fs.release(second).await;
                self.model.keys.insert(path.clone(), content);
            }
            Op::Rename { from, to } => {
                let Some(data) = self.model.keys.get(from).cloned() else {
                    assert_eq!(self.resolve(from).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                };
                if !self.model.dir_exists(Model::parent(to)) {
                    assert_eq!(self.parent_ino(to).await, Err(libc::ENOENT), "{op:?}");
                    return Ok(());
                }
                let (a, b) = (
                    self.parent_ino(from).await.unwrap(),
                    self.parent_ino(to).await.unwrap(),
                );
                self.fs
                    .rename(a, Self::name(from), b, Self::name(to), 0)
                    .await
                    .map_err(|e| e.errno())?;
                if from != to {
                    self.model.keys.remove(from);
                    self.model.keys.insert(to.clone(), data);
                }
            }
            Op::Unlink { path } => {
                if !self.model.keys.contains_key(path) {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                }
                let dir = self.parent_ino(path).await.unwrap();
                self.fs
                    .unlink(dir, Self::name(path))
                    .await
                    .map_err(|e| e.errno())?;
                self.model.keys.remove(path);
            }
            Op::Mkdir { dir } => {
                if self.model.dir_exists(dir) {
                    assert!(self.resolve(dir).await.is_ok(), "{op:?}");
                    return Ok(()); // the kernel answers EEXIST itself
                }
                if !self.model.dir_exists(Model::parent(dir)) {
                    assert_eq!(self.parent_ino(dir).await, Err(libc::ENOENT), "{op:?}");
                    return Ok(());
                }
                let parent = self.parent_ino(dir).await.unwrap();
                self.fs
                    .mkdir(parent, Self::name(dir), Posix::default())
                    .await
                    .unwrap();
                self.model.keys.insert(format!("{dir}/"), Vec::new());
            }
            Op::Rmdir { dir } => {
                if !self.model.dir_exists(dir) {
                    assert_eq!(self.resolve(dir).await.err(), Some(libc::ENOENT), "{op:?}");
                    return Ok(());
                }
                self.resolve(dir).await.unwrap();
                let parent = self.parent_ino(dir).await.unwrap();
                let result = self.fs.rmdir(parent, Self::name(dir)).await;
                let marker = format!("{dir}/");
                let empty = self
                    .model
                    .keys
                    .keys()
                    .all(|k| !k.starts_with(&marker) || *k == marker);
                if empty {
                    result.unwrap_or_else(|e| panic!("{op:?}: {e}"));
                    self.model.keys.remove(&marker);
                } else {
                    assert_eq!(result.unwrap_err().errno(), libc::ENOTEMPTY, "{op:?}");
                }
            }
            Op::Denied { denied, op } => {
                self.faulty.fail_all(*denied, Fault::AccessDenied);
                self.denied = Some(*denied);
                let result = Box::pin(self.apply(op)).await;
                self.denied = None;
                self.faulty.clear();
                // Refused or not needed at all (the file did not exist, say):
                // never another error.
                if let Err(errno) = result {
                    assert_eq!(errno, libc::EACCES, "{op:?} with {denied:?} denied");
                }
            }
            Op::ExternalPut { path, data } => {
                self.store.put(&format!("{ROOT}{path}"), data.clone());
                self.model.keys.insert(path.clone(), data.clone());
            }
            Op::ExternalDelete { path } => {
                self.store.remove(&format!("{ROOT}{path}"));
                self.model.keys.remove(path);
            }
        }
        Ok(())
    }

    /// Reads a whole file as an application would.
    async fn read(&self, ino: u64) -> Vec<u8> {
        let fh = self.fs.open(ino, OpenFlags::default()).await.unwrap();
        let mut out = Vec::new();
        loop {
            let got = self.fs.read(fh, out.len() as u64, 1 << 20).await.unwrap();
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
        }
        self.fs.release(fh).await;
        out
    }

    /// The volume and the bucket match the model exactly.
    async fn check(&self, after: &Op) {
        let keys: BTreeSet<String> = self
            .store
            .keys()
            .into_iter()
            .map(|k| k.strip_prefix(ROOT).unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = self.model.keys.keys().cloned().collect();
        assert_eq!(keys, want, "bucket keys after {after:?}");
        assert!(self.store.pending_uploads().is_empty(), "after {after:?}");
        for dir in std::iter::once("").chain(DIRS) {
            if !self.model.dir_exists(dir) {
                continue;
            }
            let (ino, _) = self.resolve(dir).await.unwrap();
            let fh = self.fs.opendir(ino).await.unwrap();
            let listed: BTreeMap<String, Kind> = self
                .fs
                .readdir(fh, 0)
                .unwrap()
                .into_iter()
                .filter(|e| e.name != "." && e.name != "..")
                .map(|e| (e.name, e.kind))
                .collect();
            self.fs.releasedir(fh);
            assert_eq!(
                listed,
                self.model.listing(dir),
                "listing of '{dir}' after {after:?}"
            );
        }
        for (path, data) in &self.model.keys {
            if path.ends_with('/') {
                continue;
            }
            let (ino, kind) = self.resolve(path).await.unwrap();
            assert_eq!(kind, Kind::File);
            let got = self.read(ino).await;
            assert!(
                got == *data,
                "{path} after {after:?}: {} bytes, not {}",
                got.len(),
                data.len()
            );
        }
    }
}

fn run(ops: &[Op], block_cache: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::new(block_cache);
        for op in ops {
            let result = harness.apply(op).await;
            assert_eq!(result, Ok(()), "{op:?}");
            harness.check(op).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_model(ops in prop::collection::vec(op(), 1..25)) {
        run(&ops, false);
    }

    #[test]
    fn random_operations_match_the_model_through_the_block_cache(
        ops in prop::collection::vec(op(), 1..25)
    ) {
        run(&ops, true);
    }
}

/// Shrunk failures, kept as cases of their own.
mod regressions {
    use super::*;

    /// An empty append to an empty file uploaded nothing and left the key
    /// missing.
    #[test]
    fn an_empty_append_to_an_empty_file() {
        run(
            &[
                Op::Create {
                    path: "y".into(),
                    data: Data::Bytes(vec![]),
                },
                Op::Append {
                    path: "y".into(),
                    data: vec![],
                },
            ],
            false,
        );
    }
}
