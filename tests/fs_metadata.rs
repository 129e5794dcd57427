//! Modes, owners and times kept in the objects' user metadata, on the in-memory
//! store: what is shown, what is kept, and what it costs in requests.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::fs::{TRUNCATE, WRITE, lookup_path};
use s3vol::fs::posix::Posix;
use s3vol::fs::{Fs, FsConfig, ROOT_INO, WriteConfig};
use s3vol::local_dir::LocalDir;
use s3vol::store::memory::MemoryStore;
use s3vol::store::{ObjectHeaders, Operation};
use tempfile::TempDir;

fn user(pairs: &[(&str, &str)]) -> ObjectHeaders {
    ObjectHeaders {
        user: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ObjectHeaders::default()
    }
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A read-write volume at `root/` with the mount's defaults: uid 0, gid 0,
/// files 0644.
struct Volume {
    fs: Fs,
    _staging: TempDir,
}

fn volume(store: &Arc<MemoryStore>, metadata: bool) -> Volume {
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        metadata,
        write: Some(WriteConfig::new(
            LocalDir::open_or_create(staging.path()).unwrap(),
        )),
        ..FsConfig::default()
    };
    Volume {
        fs: Fs::new(store.clone(), "root/", config),
        _staging: staging,
    }
}

/// A bucket written by s3fs-fuse, by `rclone copy --metadata`, by a plain
/// `rclone copy`, and by a tool that keeps nothing.
fn mixed_bucket() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with(
        "root/s3fs",
        "a",
        user(&[
            ("mode", "33184"),
            ("uid", "1234"),
            ("gid", "5678"),
            ("mtime", "1577934245.123456789"),
        ]),
    );
    store.put_with(
        "root/rclone",
        "b",
        user(&[
            ("mode", "100604"),
            ("uid", "42"),
            ("gid", "43"),
            ("mtime", "1557126489.987654321"),
            ("atime", "2019-05-06T07:08:09.987654321Z"),
        ]),
    );
    store.put_with("root/plain", "c", user(&[("mtime", "1557126489.5")]));
    store.put("root/bare", "d");
    store
}

#[tokio::test]
async fn files_show_the_mode_owner_and_time_their_metadata_keeps() {
    let store = mixed_bucket();
    let vol = volume(&store, true);
    let attr = |name: &'static str| {
        let fs = &vol.fs;
        async move { fs.lookup(ROOT_INO, OsStr::new(name)).await.unwrap().attr }
    };
    let s3fs = attr("s3fs").await;
    assert_eq!(
        (s3fs.perm, s3fs.uid, s3fs.gid, s3fs.mtime),
        (0o640, 1234, 5678, at(1577934245, 123456789))
    );
    let rclone = attr("rclone").await;
    assert_eq!(
        (rclone.perm, rclone.uid, rclone.gid, rclone.mtime),
        (0o604, 42, 43, at(1557126489, 987654321))
    );
    let plain = attr("plain").await;
    assert_eq!(
        (plain.perm, plain.uid, plain.gid, plain.mtime),
        (0o644, 0, 0, at(1557126489, 500_000_000))
    );
    // Nothing kept: the mount's defaults and S3's LastModified.
    let bare = attr("bare").await;
    assert_eq!((bare.perm, bare.uid, bare.gid), (0o644, 0, 0));
    assert!(bare.mtime > at(1_700_000_000, 0));

    // --no-metadata shows the defaults whatever the objects carry.
    let off = volume(&store, false);
    let s3fs = off.fs.lookup(ROOT_INO, OsStr::new("s3fs")).await.unwrap();
    assert_eq!((s3fs.attr.perm, s3fs.attr.uid), (0o644, 0));
    assert!(s3fs.attr.mtime > at(1_700_000_000, 0));
}

#[tokio::test]
async fn a_listed_file_costs_one_head_for_its_metadata_then_nothing_within_the_ttl() {
    let store = mixed_bucket();
    let vol = volume(&store, true);
    let fh = vol.fs.opendir(ROOT_INO).await.unwrap();
    // READDIRPLUS hands the kernel no attributes it would keep: each entry is
    // looked up again at once.
    let entries = vol.fs.readdirplus(fh, 2).unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|(_, e)| e.ttl.is_zero()));
    store.clear_calls();
    let s3fs = vol.fs.lookup(ROOT_INO, OsStr::new("s3fs")).await.unwrap();
    assert_eq!(s3fs.attr.uid, 1234);
    assert!(s3fs.ttl > Duration::ZERO);
    let calls: Vec<Operation> = store.calls().iter().map(|c| c.op).collect();
    assert_eq!(calls, [Operation::HeadObject], "a HEAD, and no listing");
    store.clear_calls();
    vol.fs.lookup(ROOT_INO, OsStr::new("s3fs")).await.unwrap();
    vol.fs.getattr(s3fs.attr.ino).await.unwrap();
    assert!(store.calls().is_empty(), "{:?}", store.calls());

    // Without metadata, the listing is enough.
    let off = volume(&store, false);
    let fh = off.fs.opendir(ROOT_INO).await.unwrap();
    assert!(
        off.fs
            .readdirplus(fh, 2)
            .unwrap()
            .iter()
            .all(|(_, e)| !e.ttl.is_zero())
    );
    store.clear_calls();
    off.fs.lookup(ROOT_INO, OsStr::new("s3fs")).await.unwrap();
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

#[tokio::test]
async fn a_created_file_keeps_its_mode_and_owner_and_a_rewrite_keeps_them_too() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(&store, true);
    let creator = Posix {
        perm: Some(0o600),
        uid: Some(1000),
        gid: Some(100),
        ..Posix::default()
    };
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("new"), None, creator)
        .await
        .unwrap();
    assert_eq!(
        (entry.attr.perm, entry.attr.uid, entry.attr.gid),
        (0o600, 1000, 100)
    );
    vol.fs.write(fh, 0, b"first").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    let kept = store.headers("root/new").unwrap().user;
    let expected: BTreeMap<String, String> = [("mode", "0100600"), ("uid", "1000"), ("gid", "100")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(kept, expected, "no time: S3's LastModified is the file's");

    // Rewritten by someone else, by the shell's `>`: still 0600 and 1000's.
    let fresh = volume(&store, true);
    let ino = lookup_path(&fresh.fs, "new").await.unwrap();
    let fh = fresh.fs.open(ino, TRUNCATE).await.unwrap();
    fresh.fs.write(fh, 0, b"second").await.unwrap();
    fresh.fs.flush(fh, None).await.unwrap();
    fresh.fs.release(fh).await;
    assert_eq!(store.get("root/new").as_deref(), Some(&b"second"[..]));
    assert_eq!(store.headers("root/new").unwrap().user, expected);
    // And changed in place.
    let fh = fresh.fs.open(ino, WRITE).await.unwrap();
    fresh.fs.write(fh, 0, b"S").await.unwrap();
    fresh.fs.flush(fh, None).await.unwrap();
    fresh.fs.release(fh).await;
    assert_eq!(store.get("root/new").as_deref(), Some(&b"Second"[..]));
    assert_eq!(store.headers("root/new").unwrap().user, expected);

    // A volume that keeps no metadata writes none.
    let off = volume(&store, false);
    let (_, fh) = off
        .fs
        .create(ROOT_INO, OsStr::new("plain"), None, creator)
        .await
        .unwrap();
    off.fs.flush(fh, None).await.unwrap();
    off.fs.release(fh).await;
    assert!(store.headers("root/plain").unwrap().user.is_empty());
}
