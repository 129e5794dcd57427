//! Filesystem behaviour on the in-memory store: no network, no kernel.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::fs::{READ, WRITE, lookup_path, read_all};
use common::pattern;
use s3vol::fs::posix::Posix;
use s3vol::fs::read::ReadConfig;
use s3vol::fs::{Fs, FsConfig, Kind, Mutation, ROOT_INO};
use s3vol::local_dir::LocalDir;
use s3vol::memory::MemoryBudget;
use s3vol::store::faulty::{Fault, FaultyStore};
use s3vol::store::memory::MemoryStore;
use s3vol::store::{ObjectStore, Operation};

const MIB: usize = 1024 * 1024;

fn fs_on(store: Arc<dyn ObjectStore>, root: &str) -> Fs {
    Fs::new(store, root, FsConfig::default())
}

async fn list(fs: &Fs, ino: u64) -> Vec<(String, Kind)> {
    let fh = fs.opendir(ino).await.unwrap();
    let entries = fs.readdir(fh, 0).unwrap();
    fs.releasedir(fh);
    entries
        .into_iter()
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| (e.name, e.kind))
        .collect()
}

#[tokio::test]
async fn directories_markers_implicit_and_shadowing() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/file.txt", "hello");
    store.put("root/marker/", "");
    store.put("root/implicit/deep/x", "x");
    store.put("root/both", "i am hidden");
    store.put("root/both/inner", "inner");
    store.put("elsewhere/secret", "not in the volume");
    let fs = fs_on(store.clone(), "root/");

    assert_eq!(
        list(&fs, ROOT_INO).await,
        vec![
            ("both".to_string(), Kind::Directory),
            ("file.txt".to_string(), Kind::File),
            ("implicit".to_string(), Kind::Directory),
            ("marker".to_string(), Kind::Directory),
        ]
    );
    let marker = lookup_path(&fs, "marker").await.unwrap();
    assert!(
        list(&fs, marker).await.is_empty(),
        "a marker is not an entry"
    );
    let deep = lookup_path(&fs, "implicit/deep").await.unwrap();
    assert_eq!(list(&fs, deep).await, vec![("x".to_string(), Kind::File)]);

    // Looked up cold (no listing first), the directory still shadows the file.
    let fresh = fs_on(store.clone(), "root/");
    let both = fresh.lookup(ROOT_INO, OsStr::new("both")).await.unwrap();
    assert_eq!(both.attr.kind, Kind::Directory);
    let file = fresh
        .lookup(ROOT_INO, OsStr::new("file.txt"))
        .await
        .unwrap();
    assert_eq!((file.attr.kind, file.attr.size), (Kind::File, 5));

    assert_eq!(lookup_path(&fs, "secret").await, Err(libc::ENOENT));
    assert_eq!(lookup_path(&fs, "../elsewhere").await, Err(libc::ENOENT));
    for call in store.calls() {
        assert!(
            call.key.starts_with("root/"),
            "request outside the volume: {call:?}"
        );
    }
}

#[tokio::test]
async fn the_whole_bucket_can_be_the_root() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("a", "1");
    store.put("d/b", "2");
    let fs = fs_on(store, "");
    assert_eq!(
        list(&fs, ROOT_INO).await,
        vec![
            ("a".to_string(), Kind::File),
            ("d".to_string(), Kind::Directory)
        ]
    );
    let b = lookup_path(&fs, "d/b").await.unwrap();
    assert_eq!(read_all(&fs, b, 4096).await, b"2");
}

#[tokio::test]
async fn listings_cover_every_page() {
    let store = Arc::new(MemoryStore::new("bkt"));
    for i in 0..2500 {
        store.put(&format!("big/f{i:05}"), "x");
    }
    for i in 0..1200 {
        store.put(&format!("big/d{i:05}/x"), "y");
    }
    // Metadata off: with it, each entry's costs a HEAD (fs_metadata.rs).
    let config = FsConfig {
        metadata: false,
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), "", config);
    let dir = lookup_path(&fs, "big").await.unwrap();
    store.clear_calls();
    let entries = list(&fs, dir).await;
    assert_eq!(entries.len(), 3700);
    assert_eq!(
        entries.iter().filter(|e| e.1 == Kind::Directory).count(),
        1200
    );
    assert_eq!(store.count_calls(Operation::ListObjectsV2), 4);
    // The listing answered every lookup: `ls -l` sends nothing more.
    store.clear_calls();
    for (name, _) in entries.iter().take(50) {
        fs.lookup(dir, OsStr::new(name)).await.unwrap();
    }
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

#[tokio::test]
async fn readdir_resumes_at_the_offset_cookie() {
    let store = Arc::new(MemoryStore::new("bkt"));
    for i in 0..10 {
        store.put(&format!("f{i}"), "x");
    }
    let fs = fs_on(store, "");
    let fh = fs.opendir(ROOT_INO).await.unwrap();
    let all = fs.readdir(fh, 0).unwrap();
    assert_eq!(all.len(), 12);
    let cookie = all[4].next_offset;
    let rest = fs.readdir(fh, cookie).unwrap();
    assert_eq!(rest, all[5..].to_vec());
    assert!(
        fs.readdir(fh, all.last().unwrap().next_offset)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn keys_that_are_not_file_names_are_skipped() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("v/ok", "1");
    store.put("v//double", "2");
    store.put("v/./dot", "3");
    store.put("v/../up", "4");
    store.put("v/.", "5");
    store.put("v/..", "6");
    store.put(&format!("v/{}", "n".repeat(256)), "7");
    store.put("v/nul\0name", "8");
    store.put(&format!("v/{}", "m".repeat(255)), "9");
    let fs = fs_on(store, "v/");
    let names: Vec<String> = list(&fs, ROOT_INO).await.into_iter().map(|e| e.0).collect();
    assert_eq!(names, vec!["m".repeat(255), "ok".to_string()]);
    assert_eq!(
        lookup_path(&fs, &"n".repeat(256)).await,
        Err(libc::ENAMETOOLONG)
    );
}

#[tokio::test]
async fn reads_are_byte_exact_sequential_and_random() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let big = pattern(20 * MIB + 12345, 7);
    store.put("data/big.bin", big.clone());
    store.put("data/empty", "");
    store.put("data/small", "tiny");
    let fs = fs_on(store.clone(), "data/");
    let ino = lookup_path(&fs, "big.bin").await.unwrap();
    assert_eq!(read_all(&fs, ino, 128 * 1024).await, big);
    let empty = lookup_path(&fs, "empty").await.unwrap();
    assert_eq!(read_all(&fs, empty, 4096).await, b"");
    let small = lookup_path(&fs, "small").await.unwrap();
    assert_eq!(read_all(&fs, small, 4096).await, b"tiny");

    // Random reads fetch only the aligned 64 KiB blocks they touch.
    let fh = fs.open(ino, READ).await.unwrap();
    let _ = fs.read(fh, 0, 4096).await.unwrap();
    store.clear_calls();
    for offset in [15 * MIB as u64, 3 * MIB as u64 + 17, 11 * MIB as u64] {
        let data = fs.read(fh, offset, 4096).await.unwrap();
        assert_eq!(&data[..], &big[offset as usize..offset as usize + 4096]);
    }
    let ranges: Vec<_> = store.calls().into_iter().filter_map(|c| c.range).collect();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    for range in &ranges {
        assert_eq!(range.start % 65536, 0, "{range:?}");
        assert!(range.end - range.start <= 2 * 65536, "{range:?}");
    }
    // Reading past the end returns nothing, not an error.
    assert!(
        fs.read(fh, big.len() as u64 + 10, 10)
            .await
            .unwrap()
            .is_empty()
    );
    fs.release(fh).await;
}

#[tokio::test]
async fn sequential_reads_grow_the_window_and_fetch_each_byte_once() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(40 * MIB, 1);
    store.put("f", data.clone());
    let fs = fs_on(store.clone(), "");
    let ino = lookup_path(&fs, "f").await.unwrap();
    store.clear_calls();
    assert_eq!(read_all(&fs, ino, 128 * 1024).await, data);
    let ranges: Vec<_> = store.calls().into_iter().filter_map(|c| c.range).collect();
    let fetched: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    assert_eq!(fetched, data.len() as u64, "each byte fetched once");
    let first = ranges[0].end - ranges[0].start;
    let largest = ranges.iter().map(|r| r.end - r.start).max().unwrap();
    assert_eq!(first, MIB as u64, "starts with a small window");
    assert_eq!(largest, 8 * MIB as u64, "grows to full-size parts");
}

#[tokio::test]
async fn read_ahead_stays_within_the_mount_budget() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(64 * MIB, 3);
    store.put("f", data.clone());
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    // The smallest limit: a pool of 20 MiB, less than the largest window.
    let budget = MemoryBudget::new(32 * MIB as u64, false, None);
    let pool = budget.pool_size();
    assert!(pool < ReadConfig::default().max_window);
    let config = FsConfig {
        memory: budget,
        ..FsConfig::default()
    };
    let fs = Fs::new(faulty, "", config);
    let ino = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    let mut offset = 0u64;
    while offset < 48 * MIB as u64 {
        let got = fs.read(fh, offset, 1024 * 1024).await.unwrap();
        assert_eq!(
            &got[..],
            &data[offset as usize..offset as usize + got.len()]
        );
        offset += got.len() as u64;
        // What is requested beyond the read position never exceeds the budget plus
        // the read the application is waiting for, fetched at its own size when
        // the budget has no room (not as a whole 8 MiB part).
        let ahead: u64 = store
            .calls()
            .iter()
            .filter_map(|c| c.range.clone())
            .map(|r| r.end.saturating_sub(offset.max(r.start)))
            .sum();
        assert!(ahead <= pool + MIB as u64, "{ahead} bytes ahead");
    }
    fs.release(fh).await;
}

#[tokio::test]
async fn an_object_replaced_mid_read_fails_with_estale() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", pattern(4 * MIB, 1));
    let fs = fs_on(store.clone(), "");
    let ino = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    fs.read(fh, 0, 4096).await.unwrap();
    store.put("f", pattern(4 * MIB, 2));
    // Far away, so not served from what was already fetched.
    let err = fs.read(fh, 3 * MIB as u64, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    // Reopening reads the new version at once, TTL or not.
    let again = fs.open(ino, READ).await.unwrap();
    assert_eq!(
        &fs.read(again, 0, 8).await.unwrap()[..],
        &pattern(4 * MIB, 2)[..8]
    );
    store.remove("f");
    let err = fs.read(fh, MIB as u64 + 5, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
}

#[tokio::test]
async fn store_failures_map_to_truthful_errnos() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", "data");
    store.put("g", "data");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let fs = Fs::new(faulty.clone(), "", FsConfig::default());

    faulty.fail_nth(Operation::HeadObject, 1, Fault::AccessDenied);
    let err = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    assert!(err.to_string().contains("s3:GetObject"), "{err}");
    // What the log line shows: S3's error code and the request ID.
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert!(err.to_string().contains("request id injected-"), "{err}");

    let ino = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap().attr.ino;
    let fh = fs.open(ino, READ).await.unwrap();
    faulty.fail_nth(Operation::GetObject, 1, Fault::AccessDenied);
    assert_eq!(fs.read(fh, 0, 10).await.unwrap_err().errno(), libc::EACCES);
    faulty.fail_nth(Operation::GetObject, 1, Fault::Unreachable);
    assert_eq!(fs.read(fh, 0, 10).await.unwrap_err().errno(), libc::EIO);
    // The handle recovers once the store does.
    assert_eq!(&fs.read(fh, 0, 10).await.unwrap()[..], b"data");

    faulty.fail_all(Operation::ListObjectsV2, Fault::Error);
    assert_eq!(fs.opendir(ROOT_INO).await.unwrap_err().errno(), libc::EIO);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("g"))
            .await
            .unwrap_err()
            .errno(),
        libc::EIO
    );
}

#[tokio::test]
async fn every_change_is_refused_without_a_request() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", "data");
    let fs = fs_on(store.clone(), "");
    let ino = lookup_path(&fs, "f").await.unwrap();
    store.clear_calls();
    for op in [Mutation::Symlink, Mutation::Link, Mutation::Mknod] {
        assert_eq!(fs.mutate(op).errno(), libc::EROFS, "{op:?}");
    }
    let name = OsStr::new("f");
    let erofs = |r: Result<(), s3vol::fs::FsError>| r.unwrap_err().errno();
    assert_eq!(erofs(fs.open(ino, WRITE).await.map(drop)), libc::EROFS);
    assert_eq!(
        erofs(
            fs.create(ROOT_INO, OsStr::new("new"), None, Posix::default())
                .await
                .map(drop)
        ),
        libc::EROFS
    );
    assert_eq!(
        erofs(
            fs.mkdir(ROOT_INO, OsStr::new("d"), Posix::default())
                .await
                .map(drop)
        ),
        libc::EROFS
    );
    assert_eq!(erofs(fs.unlink(ROOT_INO, name).await), libc::EROFS);
    assert_eq!(erofs(fs.rmdir(ROOT_INO, name).await), libc::EROFS);
    let tag = OsStr::new("user.tag");
    assert_eq!(erofs(fs.setxattr(ino, tag, b"v", 0).await), libc::EROFS);
    assert_eq!(erofs(fs.removexattr(ino, tag).await), libc::EROFS);
    assert_eq!(
        erofs(
            fs.rename(ROOT_INO, name, ROOT_INO, OsStr::new("g"), 0)
                .await
        ),
        libc::EROFS
    );
    assert_eq!(
        erofs(
            fs.setattr(ino, Some(0), Posix::default(), None)
                .await
                .map(drop)
        ),
        libc::EROFS
    );
    assert_eq!(
        erofs(
            fs.setattr(
                ino,
                None,
                Posix {
                    perm: Some(0o600),
                    ..Posix::default()
                },
                None
            )
            .await
            .map(drop)
        ),
        libc::EROFS
    );
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

#[tokio::test]
async fn metadata_is_trusted_for_the_ttl_then_refreshed() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", "one");
    let cached = Fs::new(
        store.clone(),
        "",
        FsConfig {
            metadata_ttl: Duration::from_secs(60),
            ..FsConfig::default()
        },
    );
    let uncached = Fs::new(
        store.clone(),
        "",
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..FsConfig::default()
        },
    );
    let a = lookup_path(&cached, "f").await.unwrap();
    let b = lookup_path(&uncached, "f").await.unwrap();
    store.put("f", "three");
    store.clear_calls();
    assert_eq!(cached.getattr(a).await.unwrap().attr.size, 3);
    assert!(store.calls().is_empty());
    assert_eq!(uncached.getattr(b).await.unwrap().attr.size, 5);
    assert_eq!(read_all(&uncached, b, 4096).await, b"three");
    store.remove("f");
    assert_eq!(uncached.getattr(b).await.unwrap_err().errno(), libc::ENOENT);
}

#[tokio::test]
async fn a_name_that_becomes_a_directory_gets_a_new_inode() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("x", "file");
    let fs = Fs::new(
        store.clone(),
        "",
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..FsConfig::default()
        },
    );
    let file = lookup_path(&fs, "x").await.unwrap();
    store.put("x/inside", "now a directory");
    let dir = fs.lookup(ROOT_INO, OsStr::new("x")).await.unwrap();
    assert_eq!(dir.attr.kind, Kind::Directory);
    assert_ne!(dir.attr.ino, file);
    // The old inode, for whoever still holds it (an open descriptor), is
    // the file it was, with no name.
    let old = fs.getattr(file).await.unwrap().attr;
    assert_eq!((old.kind, old.size, old.nlink), (Kind::File, 4, 0));
}

#[tokio::test]
async fn statfs_reports_a_large_capacity() {
    let fs = fs_on(Arc::new(MemoryStore::new("bkt")), "");
    let s = fs.statfs();
    assert!(s.blocks * u64::from(s.block_size) >= 1 << 50);
    assert_eq!(s.name_max, 255);
}

#[tokio::test]
async fn directories_show_their_marker_time_or_the_mount_time() {
    let before = std::time::SystemTime::now();
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("implicit/x", "x");
    store.put("marked/", "");
    let marker_time = store.head_object("marked/").await.unwrap().last_modified;
    let fs = fs_on(store, "");
    let implicit = fs.lookup(ROOT_INO, OsStr::new("implicit")).await.unwrap();
    assert!(implicit.attr.mtime >= before, "{:?}", implicit.attr.mtime);
    let marked = fs.lookup(ROOT_INO, OsStr::new("marked")).await.unwrap();
    assert_eq!(marked.attr.mtime, marker_time);
    let fh = fs.opendir(ROOT_INO).await.unwrap();
    for (entry, e) in fs.readdirplus(fh, 0).unwrap() {
        assert!(e.attr.mtime >= before, "{}: {:?}", entry.name, e.attr.mtime);
    }
}

#[tokio::test]
async fn listings_and_absent_names_are_trusted_for_the_ttl() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("d/a", "a");
    store.put("d/b", "b");
    let fs = Fs::new(
        store.clone(),
        "",
        FsConfig {
            metadata_ttl: Duration::from_millis(300),
            // What a listing alone answers (with metadata, each file's costs a
            // HEAD once: fs_metadata.rs).
            metadata: false,
            ..FsConfig::default()
        },
    );
    let d = lookup_path(&fs, "d").await.unwrap();
    assert_eq!(list(&fs, d).await.len(), 2);
    store.clear_calls();
    // ls, ls -l, find and a shell completing a missing name: nothing more is sent.
    assert_eq!(list(&fs, d).await.len(), 2);
    assert_eq!(lookup_path(&fs, "d/a").await.map(|_| ()), Ok(()));
    assert_eq!(lookup_path(&fs, "d/missing").await, Err(libc::ENOENT));
    assert!(store.calls().is_empty(), "{:?}", store.calls());

    // A name looked up and missing outside a listed directory is remembered too.
    assert_eq!(lookup_path(&fs, "nothing").await, Err(libc::ENOENT));
    store.put("nothing", "now there");
    store.put("d/c", "c");
    store.clear_calls();
    assert_eq!(lookup_path(&fs, "nothing").await, Err(libc::ENOENT));
    assert_eq!(list(&fs, d).await.len(), 2);
    assert!(store.calls().is_empty(), "{:?}", store.calls());

    // Once the TTL has passed, S3 is asked again and the other client's keys show.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(lookup_path(&fs, "nothing").await.is_ok());
    assert_eq!(list(&fs, d).await.len(), 3);
}

#[tokio::test]
async fn a_cached_listing_shows_this_mounts_own_changes() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("d/a", "a");
    let staging = tempfile::tempdir().unwrap();
    let fs = Fs::new(
        store.clone(),
        "",
        FsConfig {
            metadata_ttl: Duration::from_secs(60),
            write: Some(s3vol::fs::WriteConfig::new(
                LocalDir::open_or_create(staging.path()).unwrap(),
            )),
            ..FsConfig::default()
        },
    );
    let d = lookup_path(&fs, "d").await.unwrap();
    assert_eq!(list(&fs, d).await.len(), 1);
    let (_, fh) = fs
        .create(d, OsStr::new("new"), None, Posix::default())
        .await
        .unwrap();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    fs.unlink(d, OsStr::new("a")).await.unwrap();
    store.clear_calls();
    let names: Vec<String> = list(&fs, d).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["new"]);
    assert_eq!(lookup_path(&fs, "d/a").await, Err(libc::ENOENT));
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}
