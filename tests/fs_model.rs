//! Random sequences of filesystem operations, with another client changing the
//! bucket in between, checked against a reference model: the bucket as a map of
//! keys to bytes, and the view SEMANTICS.md derives from it.
//!
//! After every operation the whole volume (every directory listing and every
//! file's bytes) and the bucket's exact key set must match the model: nothing
//! lost, nothing half-written, no stray keys.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use s3vol::fs::WriteConfig;
use s3vol::fs::{Fs, FsConfig, Kind, OpenFlags, ROOT_INO};
use s3vol::store::memory::MemoryStore;

const ROOT: &str = "root/";

/// File and directory names are disjoint, so a file never shares a name with a
/// directory (shadowing is tested elsewhere).
const FILES: [&str; 3] = ["x", "y", "z"];
const DIRS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    /// Create (or truncate) a file and write `data` to it.
    Create {
        path: String,
        data: Vec<u8>,
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
        prop::sample::select(vec!["", "a/", "b/"]),
        prop::sample::select(FILES.to_vec()),
    )
        .prop_map(|(dir, name)| format!("{dir}{name}"))
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (file_path(), data()).prop_map(|(path, data)| Op::Create { path, data }),
        (file_path(), 0u64..50, data()).prop_map(|(path, offset, data)| Op::Write {
            path,
            offset,
            data
        }),
        (file_path(), data()).prop_map(|(path, data)| Op::Append { path, data }),
        (file_path(), 0u64..60).prop_map(|(path, size)| Op::Truncate { path, size }),
        (file_path(), file_path()).prop_map(|(from, to)| Op::Rename { from, to }),
        file_path().prop_map(|path| Op::Unlink { path }),
        prop::sample::select(DIRS.to_vec()).prop_map(|d| Op::Mkdir { dir: d.into() }),
        prop::sample::select(DIRS.to_vec()).prop_map(|d| Op::Rmdir { dir: d.into() }),
        (file_path(), data()).prop_map(|(path, data)| Op::ExternalPut { path, data }),
        file_path().prop_map(|path| Op::ExternalDelete { path }),
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

struct Harness {
    store: Arc<MemoryStore>,
    fs: Fs,
    model: Model,
    _staging: tempfile::TempDir,
}

const TRUNCATE: OpenFlags = OpenFlags {
    write: true,
    truncate: true,
};
const WRITE: OpenFlags = OpenFlags {
    write: true,
    truncate: false,
};

impl Harness {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::new("bkt"));
        let staging = tempfile::tempdir().unwrap();
        let config = FsConfig {
            // Another client changes the bucket: ask S3 every time.
            metadata_ttl: Duration::ZERO,
            write: Some(WriteConfig {
                part_size: 5 << 20,
                max_in_flight: 2,
                ..WriteConfig::new(staging.path().to_path_buf())
            }),
            ..FsConfig::default()
        };
        Self {
            fs: Fs::new(store.clone(), ROOT, config),
            store,
            model: Model::default(),
            _staging: staging,
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

    async fn write_through(&self, ino: u64, flags: OpenFlags, offset: u64, data: &[u8]) {
        let fh = self.fs.open(ino, flags).await.unwrap();
        self.fs.write(fh, offset, data).await.unwrap();
        self.fs.flush(fh).await.unwrap();
        self.fs.release(fh).await;
    }

    /// Applies `op` to the volume and the model; the outcome must agree.
    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path, data } => {
                let parent = Model::parent(path);
                if !self.model.dir_exists(parent) {
                    assert_eq!(self.parent_ino(path).await, Err(libc::ENOENT), "{op:?}");
                    return;
                }
                let dir = self.parent_ino(path).await.unwrap();
                match self.resolve(path).await {
                    Ok((ino, _)) => self.write_through(ino, TRUNCATE, 0, data).await,
                    Err(libc::ENOENT) => {
                        let (_, fh) = self.fs.create(dir, Self::name(path)).await.unwrap();
                        self.fs.write(fh, 0, data).await.unwrap();
                        self.fs.flush(fh).await.unwrap();
                        self.fs.release(fh).await;
                    }
                    Err(e) => panic!("{op:?}: lookup failed with {e}"),
                }
                self.model.keys.insert(path.clone(), data.clone());
            }
            Op::Write { path, offset, data } => {
                let Some(old) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                self.write_through(ino, WRITE, *offset, data).await;
                let mut new = old;
                let end = *offset as usize + data.len();
                if new.len() < end {
                    new.resize(end, 0);
                }
                new[*offset as usize..end].copy_from_slice(data);
                self.model.keys.insert(path.clone(), new);
            }
            Op::Append { path, data } => {
                let Some(old) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                let size = self.fs.getattr(ino).await.unwrap().attr.size;
                assert_eq!(size, old.len() as u64, "{op:?}: size before append");
                self.write_through(ino, WRITE, size, data).await;
                let mut new = old;
                new.extend_from_slice(data);
                self.model.keys.insert(path.clone(), new);
            }
            Op::Truncate { path, size } => {
                let Some(mut new) = self.model.keys.get(path).cloned() else {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                };
                let (ino, _) = self.resolve(path).await.unwrap();
                let attr = self.fs.setattr(ino, Some(*size)).await.unwrap().attr;
                assert_eq!(attr.size, *size, "{op:?}");
                new.resize(*size as usize, 0);
                self.model.keys.insert(path.clone(), new);
            }
            Op::Rename { from, to } => {
                let Some(data) = self.model.keys.get(from).cloned() else {
                    assert_eq!(self.resolve(from).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                };
                if !self.model.dir_exists(Model::parent(to)) {
                    assert_eq!(self.parent_ino(to).await, Err(libc::ENOENT), "{op:?}");
                    return;
                }
                let (a, b) = (
                    self.parent_ino(from).await.unwrap(),
                    self.parent_ino(to).await.unwrap(),
                );
                self.fs
                    .rename(a, Self::name(from), b, Self::name(to), 0)
                    .await
                    .unwrap_or_else(|e| panic!("{op:?}: {e}"));
                if from != to {
                    self.model.keys.remove(from);
                    self.model.keys.insert(to.clone(), data);
                }
            }
            Op::Unlink { path } => {
                if !self.model.keys.contains_key(path) {
                    assert_eq!(self.resolve(path).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                }
                let dir = self.parent_ino(path).await.unwrap();
                self.fs.unlink(dir, Self::name(path)).await.unwrap();
                self.model.keys.remove(path);
            }
            Op::Mkdir { dir } => {
                if self.model.dir_exists(dir) {
                    assert!(self.resolve(dir).await.is_ok(), "{op:?}");
                    return; // the kernel answers EEXIST itself
                }
                self.fs.mkdir(ROOT_INO, OsStr::new(dir)).await.unwrap();
                self.model.keys.insert(format!("{dir}/"), Vec::new());
            }
            Op::Rmdir { dir } => {
                if !self.model.dir_exists(dir) {
                    assert_eq!(self.resolve(dir).await.err(), Some(libc::ENOENT), "{op:?}");
                    return;
                }
                self.resolve(dir).await.unwrap();
                let result = self.fs.rmdir(ROOT_INO, OsStr::new(dir)).await;
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
            Op::ExternalPut { path, data } => {
                self.store.put(&format!("{ROOT}{path}"), data.clone());
                self.model.keys.insert(path.clone(), data.clone());
            }
            Op::ExternalDelete { path } => {
                self.store.remove(&format!("{ROOT}{path}"));
                self.model.keys.remove(path);
            }
        }
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
            let fh = self.fs.open(ino, OpenFlags::default()).await.unwrap();
            let got = self.fs.read(fh, 0, 4096).await.unwrap();
            self.fs.release(fh).await;
            assert_eq!(&got[..], &data[..], "{path} after {after:?}");
        }
    }
}

fn run(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::new();
        for op in ops {
            harness.apply(op).await;
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
        run(&ops);
    }
}
