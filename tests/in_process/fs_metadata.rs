//! Modes, owners and times kept in the objects' user metadata, on the in-memory
//! store: what is shown, what is kept, and what it costs in requests.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common;

use common::fs::{READ, TRUNCATE, WRITE, lookup_path, rename_in_root};
use s3vol::fs::posix::Posix;
use s3vol::fs::xattrs::Xattrs;
use s3vol::fs::{Fs, FsConfig, ROOT_INO, WriteConfig};
use s3vol::local_dir::LocalDir;
use s3vol::store::faulty::{Fault, FaultyStore};
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

    // A read-only volume shows the same, and refuses a change with no request.
    let read_only = Fs::new(store.clone(), "root/", FsConfig::default());
    let shown = read_only
        .lookup(ROOT_INO, OsStr::new("s3fs"))
        .await
        .unwrap()
        .attr;
    assert_eq!((shown.perm, shown.uid, shown.gid), (0o640, 1234, 5678));
    store.clear_calls();
    assert_eq!(
        read_only
            .setattr(shown.ino, None, chmod(0o600), None)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert!(store.calls().is_empty(), "{:?}", store.calls());

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
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("new"), None, CREATOR)
        .await
        .unwrap();
    assert_eq!(
        (entry.attr.perm, entry.attr.uid, entry.attr.gid),
        (0o600, 1000, 100)
    );
    vol.fs.write(fh, 0, b"first").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    // Mode and owner, and the time of the last write to the nanosecond (S3's
    // own is the upload's, to the second), as modification and change time.
    async fn kept(store: &MemoryStore, vol: &Volume) -> BTreeMap<String, String> {
        let mut user = store.headers("root/new").unwrap().user;
        let mtime = user.remove("mtime").expect("a time");
        let ctime = user.remove("ctime").expect("a change time");
        let shown = vol.fs.lookup(ROOT_INO, OsStr::new("new")).await.unwrap();
        assert_eq!(mtime, s3vol::fs::posix::format_time(shown.attr.mtime));
        assert_eq!(ctime, mtime);
        assert_eq!(shown.attr.ctime, shown.attr.mtime);
        user
    }
    let expected: BTreeMap<String, String> = [("mode", "0100600"), ("uid", "1000"), ("gid", "100")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(kept(&store, &vol).await, expected);

    // Rewritten by someone else, by the shell's `>`: still 0600 and 1000's.
    let fresh = volume(&store, true);
    let ino = lookup_path(&fresh.fs, "new").await.unwrap();
    let fh = fresh.fs.open(ino, TRUNCATE).await.unwrap();
    fresh.fs.write(fh, 0, b"second").await.unwrap();
    fresh.fs.flush(fh, None).await.unwrap();
    fresh.fs.release(fh).await;
    assert_eq!(store.get("root/new").as_deref(), Some(&b"second"[..]));
    assert_eq!(kept(&store, &fresh).await, expected);
    // And changed in place.
    let fh = fresh.fs.open(ino, WRITE).await.unwrap();
    fresh.fs.write(fh, 0, b"S").await.unwrap();
    fresh.fs.flush(fh, None).await.unwrap();
    fresh.fs.release(fh).await;
    assert_eq!(store.get("root/new").as_deref(), Some(&b"Second"[..]));
    assert_eq!(kept(&store, &fresh).await, expected);

    // A volume that keeps no metadata writes none.
    let off = volume(&store, false);
    let (_, fh) = off
        .fs
        .create(ROOT_INO, OsStr::new("plain"), None, CREATOR)
        .await
        .unwrap();
    off.fs.flush(fh, None).await.unwrap();
    off.fs.release(fh).await;
    assert!(store.headers("root/plain").unwrap().user.is_empty());
    // Nor does it carry a rewritten file's over.
    let ino = lookup_path(&off.fs, "new").await.unwrap();
    let fh = off.fs.open(ino, TRUNCATE).await.unwrap();
    off.fs.write(fh, 0, b"third").await.unwrap();
    off.fs.flush(fh, None).await.unwrap();
    off.fs.release(fh).await;
    assert!(store.headers("root/new").unwrap().user.is_empty());
}

/// A file made 0600 by user 1000, group 100.
const CREATOR: Posix = Posix {
    perm: Some(0o600),
    uid: Some(1000),
    gid: Some(100),
    mtime: None,
    ctime: None,
    xattrs: None,
    symlink: false,
};

fn chmod(perm: u16) -> Posix {
    Posix {
        perm: Some(perm),
        ..Posix::default()
    }
}

fn touch(mtime: SystemTime) -> Posix {
    Posix {
        mtime: Some(mtime),
        ..Posix::default()
    }
}

fn ops(store: &MemoryStore) -> Vec<Operation> {
    store.calls().iter().map(|c| c.op).collect()
}

#[tokio::test]
async fn a_closed_file_s_changes_are_merged_into_one_copy_that_keeps_everything_else() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let mut headers = user(&[("mode", "33188"), ("color", "blue")]);
    headers.content_type = Some("text/csv".into());
    headers.cache_control = Some("no-cache".into());
    store.put_with("root/data.csv", "a,b\n", headers);
    let vol = volume(&store, true);
    let ino = lookup_path(&vol.fs, "data.csv").await.unwrap();
    store.clear_calls();
    // chmod, chown and touch -d: shown at once, sent together.
    let shown = vol.fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    assert_eq!(shown.attr.perm, 0o600);
    let owner = Posix {
        uid: Some(1000),
        gid: Some(100),
        ..Posix::default()
    };
    vol.fs.setattr(ino, None, owner, None).await.unwrap();
    let shown = vol
        .fs
        .setattr(ino, None, touch(at(1_500_000_000, 7)), None)
        .await
        .unwrap();
    assert_eq!(
        (
            shown.attr.perm,
            shown.attr.uid,
            shown.attr.gid,
            shown.attr.mtime
        ),
        (0o600, 1000, 100, at(1_500_000_000, 7))
    );
    assert!(store.calls().is_empty(), "nothing yet: {:?}", store.calls());
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(ops(&store), [Operation::HeadObject, Operation::CopyObject]);
    let kept = store.headers("root/data.csv").unwrap();
    assert_eq!(kept.user["mode"], "0100600");
    assert_eq!(kept.user["uid"], "1000");
    assert_eq!(kept.user["gid"], "100");
    assert_eq!(kept.user["mtime"], "1500000000.000000007");
    assert_eq!(kept.user["color"], "blue");
    assert_eq!(kept.content_type.as_deref(), Some("text/csv"));
    assert_eq!(kept.cache_control.as_deref(), Some("no-cache"));
    assert_eq!(store.get("root/data.csv").as_deref(), Some(&b"a,b\n"[..]));
    // Nothing more to send; a fresh mount shows what was kept.
    store.clear_calls();
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert!(store.calls().is_empty());
    let other = volume(&store, true);
    let attr = other
        .fs
        .lookup(ROOT_INO, OsStr::new("data.csv"))
        .await
        .unwrap();
    assert_eq!((attr.attr.perm, attr.attr.uid), (0o600, 1000));
}

/// `rsync -a` looks for the file, writes a temporary one, sets its times and
/// mode, and renames it: past the lookup, one PUT, one copy (the rename's,
/// carrying the metadata) and one DELETE.
#[tokio::test]
async fn rsync_s_write_set_times_and_rename_costs_a_put_a_copy_and_a_delete() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(&store, true);
    assert_eq!(lookup_path(&vol.fs, "f").await, Err(libc::ENOENT));
    store.clear_calls();
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new(".f.Ab12"), None, CREATOR)
        .await
        .unwrap();
    vol.fs.write(fh, 0, b"content").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    let ino = entry.attr.ino;
    vol.fs
        .setattr(ino, None, touch(at(1_400_000_000, 0)), None)
        .await
        .unwrap();
    vol.fs.setattr(ino, None, chmod(0o644), None).await.unwrap();
    rename_in_root(&vol.fs, ".f.Ab12", "f").await;
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(
        ops(&store),
        [
            Operation::PutObject,
            Operation::CopyObject,
            Operation::DeleteObject
        ]
    );
    assert_eq!(store.keys(), ["root/f"]);
    let kept = store.headers("root/f").unwrap().user;
    assert_eq!(kept["mode"], "0100644");
    assert_eq!(kept["uid"], "1000");
    assert_eq!(kept["mtime"], "1400000000");
    let f = vol.fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    assert_eq!((f.attr.perm, f.attr.mtime), (0o644, at(1_400_000_000, 0)));
}

#[tokio::test]
async fn changes_to_a_file_being_written_go_into_its_upload() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(&store, true);
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("copy"), None, Posix::default())
        .await
        .unwrap();
    vol.fs.write(fh, 0, b"bytes").await.unwrap();
    // cp -p: times and mode set through the descriptor before close.
    let ino = entry.attr.ino;
    vol.fs
        .setattr(ino, None, touch(at(1_300_000_000, 0)), Some(fh))
        .await
        .unwrap();
    vol.fs
        .setattr(ino, None, chmod(0o755), Some(fh))
        .await
        .unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(ops(&store), [Operation::PutObject]);
    let kept = store.headers("root/copy").unwrap().user;
    assert_eq!(kept["mode"], "0100755");
    assert_eq!(kept["mtime"], "1300000000");
    // A write after the time was set makes the time the write's.
    store.clear_calls();
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    vol.fs.write(fh, 0, b"B").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    let kept = store.headers("root/copy").unwrap().user;
    assert_eq!(kept["mode"], "0100755");
    let shown = vol.fs.getattr(ino).await.unwrap().attr.mtime;
    assert!(shown > at(1_700_000_000, 0));
    assert_eq!(kept["mtime"], s3vol::fs::posix::format_time(shown));
}

#[tokio::test]
async fn a_change_waiting_is_dropped_with_its_file_and_kept_by_a_stop() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/gone", "x");
    store.put("root/kept", "y");
    let vol = volume(&store, true);
    let gone = lookup_path(&vol.fs, "gone").await.unwrap();
    let kept = lookup_path(&vol.fs, "kept").await.unwrap();
    vol.fs
        .setattr(gone, None, chmod(0o600), None)
        .await
        .unwrap();
    vol.fs
        .setattr(kept, None, chmod(0o640), None)
        .await
        .unwrap();
    vol.fs.unlink(ROOT_INO, OsStr::new("gone")).await.unwrap();
    store.clear_calls();
    assert!(vol.fs.stop(Duration::from_secs(3)).await.is_empty());
    assert_eq!(ops(&store), [Operation::HeadObject, Operation::CopyObject]);
    assert_eq!(store.headers("root/kept").unwrap().user["mode"], "0100640");
    assert_eq!(store.keys(), ["root/kept"]);
}

/// A volume over `store`, through a store that fails as told, whose file
/// `f` (put in `store`) has a chmod to 0600 waiting: the failing store, the
/// volume, its staging directory, and `f`'s inode.
async fn a_chmod_of_f(store: &Arc<MemoryStore>) -> (Arc<FaultyStore>, Arc<Fs>, TempDir, u64) {
    store.put("root/f", "x");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, staging) = shared_volume(faulty.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    (faulty, fs, staging, ino)
}

/// The volume's turn of changes of modes, owners and times, run now as it
/// runs every quarter of a second: the keys it could not copy.
fn a_turn(fs: &Arc<Fs>) -> tokio::task::JoinHandle<Vec<String>> {
    let fs = fs.clone();
    tokio::spawn(async move { fs.apply_metadata(Duration::ZERO).await })
}

/// A volume over `store` (which holds `root/f`) whose `f` has a chmod to 0600
/// waiting, and the turn that took that change and is copying it (its
/// CopyObject held for `hold`), as the volume's own turn every quarter of a
/// second does: the volume, an open handle of `f`, and the turn.
async fn a_turn_copying_a_chmod(
    store: &Arc<MemoryStore>,
    staging: &TempDir,
    hold: Duration,
) -> (Arc<Fs>, u64, tokio::task::JoinHandle<Vec<String>>) {
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let config = FsConfig {
        write: Some(WriteConfig::new(
            LocalDir::open_or_create(staging.path()).unwrap(),
        )),
        ..FsConfig::default()
    };
    let fs = Arc::new(Fs::new(faulty.clone(), "root/", config));
    let ino = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    faulty.fail_nth(Operation::CopyObject, 1, Fault::Delay(hold));
    store.clear_calls();
    let turn = a_turn(&fs);
    // The turn has taken the change once it sends its HEAD.
    for _ in 0..1000 {
        if store.calls().iter().any(|c| c.op == Operation::HeadObject) {
            return (fs, fh, turn);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no HEAD within 5 s: {:?}", store.calls());
}

/// A stop while the change of a closed file is being copied waits for that
/// copy: the change is in S3 when the stop returns, or counted lost.
#[tokio::test]
async fn a_stop_waits_for_a_change_another_turn_is_copying() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let staging = tempfile::tempdir().unwrap();
    let (fs, _fh, turn) = a_turn_copying_a_chmod(&store, &staging, HALF_SECOND).await;
    let lost = fs.stop(Duration::from_secs(3)).await;
    let kept = store.headers("root/f").unwrap().user;
    assert!(
        kept.get("mode").map(String::as_str) == Some("0100600") || lost == ["root/f"],
        "the stop returned with the change neither in S3 nor lost: {kept:?}, lost {lost:?}"
    );
    assert!(turn.await.unwrap().is_empty());
}

/// The same for fsync, which says the change is durable when it returns.
#[tokio::test]
async fn an_fsync_waits_for_a_change_another_turn_is_copying() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let staging = tempfile::tempdir().unwrap();
    let (fs, fh, turn) = a_turn_copying_a_chmod(&store, &staging, HALF_SECOND).await;
    fs.fsync(fh).await.unwrap();
    let kept = store.headers("root/f").unwrap().user;
    assert_eq!(
        kept.get("mode").map(String::as_str),
        Some("0100600"),
        "fsync returned before the change was in S3"
    );
    assert!(turn.await.unwrap().is_empty());
    fs.release(fh).await;
}

const HALF_SECOND: Duration = Duration::from_millis(500);

/// A stop whose time runs out while another turn is still copying a change
/// counts that change as not kept: it may or may not reach S3.
#[tokio::test]
async fn a_change_still_being_copied_when_the_stop_gives_up_counts_as_lost() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let staging = tempfile::tempdir().unwrap();
    let hold = Duration::from_secs(2);
    let (fs, _fh, turn) = a_turn_copying_a_chmod(&store, &staging, hold).await;
    let lost = fs.stop(Duration::from_millis(200)).await;
    let kept = store.headers("root/f").unwrap().user;
    assert!(
        kept.get("mode").map(String::as_str) == Some("0100600") || lost == ["root/f"],
        "the stop gave up with the change neither in S3 nor lost: {kept:?}, lost {lost:?}"
    );
    turn.await.unwrap();
}

/// The stop's own copy of a change, cut short by its time running out: the
/// change counts as not kept.
#[tokio::test]
async fn a_change_the_stop_could_not_finish_copying_counts_as_lost() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, _) = a_chmod_of_f(&store).await;
    faulty.fail_all(Operation::CopyObject, Fault::Delay(Duration::from_secs(2)));
    assert_eq!(fs.stop(Duration::from_millis(200)).await, ["root/f"]);
}

/// A stop whose copies of changes hang still has time to abort the uploads
/// of the files being written (once their parts in flight are done): the
/// copies get part of its time, not all of it, and no part is left in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_copies_hang_still_aborts_the_uploads_under_way() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, _) = a_chmod_of_f(&store).await;
    faulty.fail_all(Operation::CopyObject, Fault::Delay(Duration::from_secs(10)));
    // Each takes a while, as over a network.
    for op in [Operation::UploadPart, Operation::AbortMultipartUpload] {
        faulty.fail_all(op, Fault::Delay(Duration::from_millis(200)));
    }
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("g"), None, Posix::default())
        .await
        .unwrap();
    // Past the first part (8 MiB): its upload begins.
    let chunk = vec![7u8; 1 << 20];
    for i in 0..9u64 {
        fs.write(fh, i << 20, &chunk).await.unwrap();
    }
    let began = || !store.pending_uploads().is_empty();
    assert!(
        common::wait_until_async(Duration::from_secs(1), began).await,
        "no part upload began"
    );
    let mut lost = fs.stop(Duration::from_millis(1500)).await;
    lost.sort();
    assert_eq!(lost, ["root/f", "root/g"]);
    assert!(
        store.pending_uploads().is_empty(),
        "the hanging copies took all of the stop's time: the upload was never aborted"
    );
}

/// A copy of a change that fails is not the end of it: the change waits
/// again (tried again by the volume's turn after a while, at once by an
/// fsync, which fails while the copy does), and a stop that cannot put it in
/// S3 either counts it as lost.
#[tokio::test]
async fn a_change_whose_copy_failed_waits_to_be_tried_again() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    store.put("root/g", "y");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    // Each try sends a HEAD, then its copy (which fails before the store).
    let tries = || {
        store
            .calls()
            .iter()
            .filter(|c| c.op == Operation::HeadObject)
            .count()
    };
    for name in ["f", "g"] {
        let ino = lookup_path(&fs, name).await.unwrap();
        fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    }
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(f, READ).await.unwrap();
    faulty.fail_all(Operation::CopyObject, Fault::Error);
    store.clear_calls();
    let mut failed = fs.apply_metadata(Duration::ZERO).await;
    failed.sort();
    assert_eq!(failed, ["root/f", "root/g"]);
    // Not again at once: a failing copy is not sent every turn.
    let sent = tries();
    assert_eq!(sent, 2);
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(tries(), sent, "a failed copy was tried again at once");
    // An fsync tries at once, and says whether the change is in S3.
    assert!(
        fs.fsync(fh).await.is_err(),
        "fsync said a failed change was kept"
    );
    faulty.clear();
    fs.fsync(fh).await.unwrap();
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
    fs.release(fh).await;
    // The volume's turn tries `g` again once it has waited.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.headers("root/g").unwrap().user["mode"], "0100600");
    // A change whose copies keep failing is lost at the stop, and said to be.
    let g = lookup_path(&fs, "g").await.unwrap();
    fs.setattr(g, None, chmod(0o640), None).await.unwrap();
    faulty.fail_all(Operation::CopyObject, Fault::Error);
    assert_eq!(fs.apply_metadata(Duration::ZERO).await, ["root/g"]);
    assert_eq!(fs.stop(Duration::from_secs(3)).await, ["root/g"]);
    assert_eq!(store.headers("root/g").unwrap().user["mode"], "0100600");
}

/// A worker asked to step aside for a new one keeps the volume while a
/// change whose copy failed is not in S3, and steps aside once it is.
#[tokio::test]
async fn a_worker_steps_aside_only_once_every_change_is_in_s3() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, _) = a_chmod_of_f(&store).await;
    faulty.fail_all(Operation::CopyObject, Fault::Error);
    assert!(!fs.ready_to_retire().await, "ready with a change not in S3");
    assert_eq!(fs.changes_not_in_s3(), ["root/f"]);
    faulty.clear();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fs.ready_to_retire().await);
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
}

/// An older change whose copy failed, given back after an upload carried a
/// newer one, does not undo the newer one.
#[tokio::test]
async fn an_older_change_given_back_never_undoes_a_newer_one_an_upload_carried() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, ino) = a_chmod_of_f(&store).await;
    // The turn's copy of 0600 is held, pinned to the version it read.
    faulty.fail_nth(Operation::CopyObject, 1, Fault::Delay(HALF_SECOND));
    let turn = a_turn(&fs);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile a chmod to 0644, and a write whose close uploads with it.
    fs.setattr(ino, None, chmod(0o644), None).await.unwrap();
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 0, b"y").await.unwrap();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100644");
    // The held copy finds a new version and fails.
    assert_eq!(turn.await.unwrap(), ["root/f"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(
        store.headers("root/f").unwrap().user["mode"],
        "0100644",
        "the older chmod, given back, undid the newer one"
    );
}

/// A rename that is refused, or whose copy fails, leaves the changes
/// waiting for both its names as they were.
#[tokio::test]
async fn a_rename_that_fails_keeps_the_changes_waiting() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/d/", "");
    store.put("root/d/x", "x");
    store.put("root/e/", "");
    store.put("root/e/y", "y");
    store.put("root/f", "f");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let d = lookup_path(&fs, "d").await.unwrap();
    lookup_path(&fs, "e").await.unwrap();
    let f = lookup_path(&fs, "f").await.unwrap();
    fs.setattr(d, None, chmod(0o700), None).await.unwrap();
    fs.setattr(f, None, chmod(0o600), None).await.unwrap();
    let refused = fs
        .rename(ROOT_INO, OsStr::new("e"), ROOT_INO, OsStr::new("d"), 0)
        .await;
    assert_eq!(errno(refused), libc::ENOTEMPTY);
    faulty.fail_all(Operation::CopyObject, Fault::Error);
    let failed = fs
        .rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), 0)
        .await;
    assert!(failed.is_err());
    faulty.clear();
    assert!(fs.stop(Duration::from_secs(3)).await.is_empty());
    assert_eq!(store.headers("root/d/").unwrap().user["mode"], "040700");
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
}

/// A change that can never be copied onto its object (the object is gone,
/// as S3 says again when asked again) is not tried again and again: fsync
/// says it was not kept, and so does the stop.
#[tokio::test]
async fn a_change_that_can_never_be_kept_is_reported_not_retried() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let (fs, _staging) = shared_volume(store.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    // Another client deletes the object.
    store.remove("root/f");
    assert_eq!(fs.apply_metadata(Duration::ZERO).await, ["root/f"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fs.apply_metadata(Duration::ZERO).await, ["root/f"]);
    store.clear_calls();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(errno(fs.fsync(fh).await), libc::EIO);
    assert!(store.calls().is_empty(), "tried again: {:?}", store.calls());
    fs.release(fh).await;
    assert_eq!(fs.stop(Duration::from_secs(3)).await, ["root/f"]);
}

/// A change of an object in an archive storage class: S3 refuses every copy
/// of it until someone restores the object, which takes hours. The change is
/// reported at once rather than tried every minute (and waited for by every
/// restart): fsync says it was not kept, and so does the stop.
#[tokio::test(start_paused = true)]
async fn a_change_of_an_archived_object_is_reported_not_retried() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    faulty.fail_all(
        Operation::CopyObject,
        Fault::Forbidden("InvalidObjectState"),
    );
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    assert_eq!(fs.apply_metadata(Duration::ZERO).await, ["root/f"]);
    assert!(fs.ready_to_retire().await, "a restart would wait for it");
    store.clear_calls();
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(errno(fs.fsync(fh).await), libc::EIO);
    assert!(store.calls().is_empty(), "tried again: {:?}", store.calls());
    fs.release(fh).await;
    assert_eq!(fs.stop(Duration::from_secs(3)).await, ["root/f"]);
}

/// A rename of an archived object copies it, which S3 refuses: the error
/// names the object to restore, not the name it was to get.
#[tokio::test]
async fn a_rename_of_an_archived_object_names_it_to_be_restored() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/cold", "x");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    lookup_path(&fs, "cold").await.unwrap();
    faulty.fail_all(
        Operation::CopyObject,
        Fault::Forbidden("ObjectNotInActiveTierError"),
    );
    let renamed = fs
        .rename(
            ROOT_INO,
            OsStr::new("cold"),
            ROOT_INO,
            OsStr::new("warm"),
            0,
        )
        .await;
    let said = renamed.as_ref().err().map(ToString::to_string);
    assert_eq!(errno(renamed), libc::EACCES);
    let said = said.unwrap();
    assert!(
        said.contains("root/cold") && !said.contains("root/warm"),
        "{said}"
    );
    assert!(store.get("root/cold").is_some());
}

/// Two renames that the kernel lets run at once, one of a directory and one
/// replacing a file being written inside it, while the volume's turn copies
/// a change: each waits for the other's locks in one order, and both end.
#[tokio::test]
async fn a_directory_rename_and_a_rename_replacing_a_file_inside_it_both_end() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "f");
    store.put("root/d/", "");
    store.put("root/d/b", "b");
    store.put("root/d/t", "t");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let d = lookup_path(&fs, "d").await.unwrap();
    let b = lookup_path(&fs, "d/b").await.unwrap();
    lookup_path(&fs, "d/t").await.unwrap();
    let f = lookup_path(&fs, "f").await.unwrap();
    // d/b is being written here.
    let fh = fs.open(b, WRITE).await.unwrap();
    fs.write(fh, 0, b"B").await.unwrap();
    // The volume's turn holds the turn for half a second.
    fs.setattr(f, None, chmod(0o600), None).await.unwrap();
    faulty.fail_nth(Operation::CopyObject, 1, Fault::Delay(HALF_SECOND));
    let turn = a_turn(&fs);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let moving_dir = tokio::spawn({
        let fs = fs.clone();
        async move {
            fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let replacing = tokio::spawn({
        let fs = fs.clone();
        async move { fs.rename(d, OsStr::new("t"), d, OsStr::new("b"), 0).await }
    });
    let both = async { (moving_dir.await.unwrap(), replacing.await.unwrap()) };
    let (moved, replaced) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the two renames wait for each other");
    moved.unwrap();
    // Whichever went first, the other ends too (finding its name gone, if
    // the directory moved first).
    assert!(
        replaced.is_ok() || errno(replaced) == libc::ENOENT,
        "the rename inside failed otherwise"
    );
    assert!(turn.await.unwrap().is_empty());
    fs.release(fh).await;
}

/// An open for writing while the turn copies a chmod: what the file shows,
/// and what its upload carries, is the chmod, not what S3 held before it.
#[tokio::test]
async fn an_open_for_writing_while_a_chmod_is_copied_keeps_the_chmod() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with("root/f", "x", user(&[("mode", "0100644")]));
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    faulty.fail_nth(Operation::CopyObject, 1, Fault::Delay(HALF_SECOND));
    let turn = a_turn(&fs);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 1, b"y").await.unwrap();
    assert!(turn.await.unwrap().is_empty());
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert!(fs.stop(Duration::from_secs(3)).await.is_empty());
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
}

/// A chmod while the close's upload is under way (its headers already
/// sent): the change waits for that upload, and is copied after it if the
/// upload did not carry it.
#[tokio::test]
async fn a_chmod_during_an_upload_is_kept() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), None, CREATOR)
        .await
        .unwrap();
    let ino = lookup_path(&fs, "f").await.unwrap();
    fs.write(fh, 0, b"data").await.unwrap();
    faulty.fail_nth(Operation::PutObject, 1, Fault::Delay(HALF_SECOND));
    let closing = tokio::spawn({
        let fs = fs.clone();
        async move { fs.flush(fh, None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs.setattr(ino, None, chmod(0o640), None).await.unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    closing.await.unwrap().unwrap();
    fs.fsync(fh).await.unwrap();
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100640");
    fs.release(fh).await;
    assert!(fs.stop(Duration::from_secs(3)).await.is_empty());
}

const PART: usize = 5 << 20;

/// A volume over `store` (given `root/big`, three parts of 5 MiB, copied in
/// parts above two), through a store that fails as told, whose `big` has a
/// chmod to 0600 waiting: the failing store and the volume.
async fn a_chmod_of_big(
    store: &Arc<MemoryStore>,
    staging: &TempDir,
) -> (Arc<FaultyStore>, Arc<Fs>) {
    store.put("root/big", common::pattern(3 * PART, 4));
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: PART as u64,
            single_copy_limit: 2 * PART as u64,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    let fs = Arc::new(Fs::new(faulty.clone(), "root/", config));
    let ino = lookup_path(&fs, "big").await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    (faulty, fs)
}

/// [`a_chmod_of_big`], and the turn copying it in parts, its completion
/// held for half a second: the volume and the turn, once both part copies
/// are sent.
async fn a_turn_copying_in_parts(
    store: &Arc<MemoryStore>,
    staging: &TempDir,
) -> (Arc<Fs>, tokio::task::JoinHandle<Vec<String>>) {
    let (faulty, fs) = a_chmod_of_big(store, staging).await;
    faulty.fail_nth(
        Operation::CompleteMultipartUpload,
        1,
        Fault::Delay(HALF_SECOND),
    );
    let turn = a_turn(&fs);
    for _ in 0..1000 {
        let calls = store.calls();
        if calls
            .iter()
            .filter(|c| c.op == Operation::UploadPartCopy)
            .count()
            == 2
        {
            return (fs, turn);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no part copies within 5 s: {:?}", store.calls());
}

/// An unlink while the turn copies the object onto itself in parts: the
/// copy never brings the file back after the delete.
#[tokio::test]
async fn an_unlink_during_a_copy_in_parts_stays_unlinked() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let staging = tempfile::tempdir().unwrap();
    let (fs, turn) = a_turn_copying_in_parts(&store, &staging).await;
    fs.unlink(ROOT_INO, OsStr::new("big")).await.unwrap();
    turn.await.unwrap();
    assert!(store.get("root/big").is_none(), "the unlinked file is back");
}

/// What this mount wrote and another client replaced or removed since: a
/// change's copy fails once, and the next try asks S3 what is there (a
/// directory whose marker is gone gets a new one).
#[tokio::test]
async fn a_change_of_what_another_client_replaced_since_is_copied_on_the_next_try() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (fs, _staging) = shared_volume(store.clone());
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), None, CREATOR)
        .await
        .unwrap();
    fs.write(fh, 0, b"ours").await.unwrap();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    fs.mkdir(ROOT_INO, OsStr::new("d"), chmod(0o755))
        .await
        .unwrap();
    let (f, d) = (
        lookup_path(&fs, "f").await.unwrap(),
        lookup_path(&fs, "d").await.unwrap(),
    );
    store.put("root/f", "theirs");
    store.remove("root/d/");
    fs.setattr(f, None, chmod(0o640), None).await.unwrap();
    fs.setattr(d, None, chmod(0o700), None).await.unwrap();
    let mut failed = fs.apply_metadata(Duration::ZERO).await;
    failed.retain(|key| key == "root/f");
    assert_eq!(failed, ["root/f"], "a copy pinned to the old version");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100640");
    assert_eq!(store.get("root/f").unwrap(), &b"theirs"[..]);
    assert_eq!(store.headers("root/d/").unwrap().user["mode"], "040700");
}

/// A rename while the volume's turn is copying a change onto the file waits
/// for that copy, and its own copy carries the change: it never lands on the
/// old name after the rename copied from it.
#[tokio::test]
async fn a_rename_waits_for_a_change_being_copied_and_carries_it() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, _) = a_chmod_of_f(&store).await;
    // The turn's copy is held; so is the rename's delete of the old name.
    faulty.fail_nth(
        Operation::CopyObject,
        1,
        Fault::Delay(Duration::from_millis(300)),
    );
    faulty.fail_nth(
        Operation::DeleteObject,
        1,
        Fault::Delay(Duration::from_millis(600)),
    );
    store.clear_calls();
    let turn = a_turn(&fs);
    for _ in 0..1000 {
        if store.calls().iter().any(|c| c.op == Operation::HeadObject) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rename_in_root(&fs, "f", "g").await;
    assert!(turn.await.unwrap().is_empty());
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.keys(), ["root/g"]);
    assert_eq!(store.headers("root/g").unwrap().user["mode"], "0100600");
}

/// A change that would take an object's metadata past S3's 2 KB is never
/// sent: not in place (fsync says EIO), not with a rename, which still moves
/// the file with the metadata it had; the stop counts both as lost.
#[tokio::test]
async fn a_change_that_does_not_fit_is_never_sent_and_is_reported() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let note = "n".repeat(2000);
    let full = user(&[("note", &note)]);
    store.put_with("root/full", "x", full.clone());
    store.put_with("root/other", "y", full.clone());
    let (fs, _staging) = shared_volume(store.clone());
    let ino = lookup_path(&fs, "full").await.unwrap();
    let fh = fs.open(ino, READ).await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    store.clear_calls();
    assert_eq!(fs.apply_metadata(Duration::ZERO).await, ["root/full"]);
    assert!(
        !ops(&store).contains(&Operation::CopyObject),
        "a copy S3 would refuse was sent"
    );
    assert_eq!(errno(fs.fsync(fh).await), libc::EIO);
    fs.release(fh).await;
    // A change waiting when the file is renamed.
    let other = lookup_path(&fs, "other").await.unwrap();
    fs.setattr(other, None, chmod(0o600), None).await.unwrap();
    rename_in_root(&fs, "other", "moved").await;
    assert_eq!(store.headers("root/moved"), Some(full));
    let mut lost = fs.stop(Duration::from_secs(3)).await;
    lost.sort();
    assert_eq!(lost, ["root/full", "root/moved"]);
}

/// A copy of a large object onto itself in parts (a change of its mode)
/// while another client writes a new version: the copy's completion is
/// conditional on the version it copied, and never lands over the new one.
#[tokio::test]
async fn a_copy_in_parts_never_lands_over_a_version_written_meanwhile() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let staging = tempfile::tempdir().unwrap();
    let (_fs, turn) = a_turn_copying_in_parts(&store, &staging).await;
    store.put("root/big", "theirs");
    assert_eq!(turn.await.unwrap(), ["root/big"], "the copy did not fail");
    assert_eq!(store.get("root/big").unwrap(), &b"theirs"[..]);
    assert!(
        store.pending_uploads().is_empty(),
        "the copy's upload was left"
    );
}

/// fsync of a file whose change of mode waits while another descriptor has
/// written it since: the change is in S3 when fsync returns, without waiting
/// for that descriptor's upload.
#[tokio::test]
async fn fsync_puts_a_change_in_s3_while_another_descriptor_writes() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let (fs, _staging) = shared_volume(store.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    let reader = fs.open(ino, READ).await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    let writer = fs.open(ino, WRITE).await.unwrap();
    fs.write(writer, 0, b"y").await.unwrap();
    fs.fsync(reader).await.unwrap();
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
    fs.flush(writer, None).await.unwrap();
    fs.release(writer).await;
    fs.release(reader).await;
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
    assert_eq!(store.get("root/f").unwrap(), &b"y"[..]);
}

/// A server that does not take a condition on the completion of an upload
/// (501): a copy of a large object onto itself still completes, once a HEAD
/// shows the object is still the version copied.
#[tokio::test]
async fn a_copy_in_parts_completes_on_a_server_without_the_condition() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let staging = tempfile::tempdir().unwrap();
    let (faulty, fs) = a_chmod_of_big(&store, &staging).await;
    faulty.fail_nth(Operation::CompleteMultipartUpload, 1, Fault::NotImplemented);
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.headers("root/big").unwrap().user["mode"], "0100600");
    assert_eq!(store.get("root/big").unwrap(), common::pattern(3 * PART, 4));
}

/// fsync whose copy of a change fails because another descriptor's upload
/// landed first, carrying the change: the change is in S3, and fsync says
/// so.
#[tokio::test]
async fn fsync_succeeds_when_an_upload_carried_the_change_its_copy_missed() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let (faulty, fs, _staging, ino) = a_chmod_of_f(&store).await;
    let reader = fs.open(ino, READ).await.unwrap();
    let writer = fs.open(ino, WRITE).await.unwrap();
    fs.write(writer, 0, b"y").await.unwrap();
    faulty.fail_nth(
        Operation::CopyObject,
        1,
        Fault::Delay(Duration::from_millis(300)),
    );
    let syncing = tokio::spawn({
        let fs = fs.clone();
        async move { fs.fsync(reader).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs.flush(writer, None).await.unwrap();
    syncing.await.unwrap().unwrap();
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
    fs.release(writer).await;
    fs.release(reader).await;
}

/// A write takes away the set-ID bits even of a chmod that still waits for
/// its copy: the upload carries the mode without them, and the change that
/// waited never puts them back.
#[tokio::test]
async fn a_write_takes_the_set_id_bits_from_a_chmod_still_waiting() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let (fs, _staging) = shared_volume(store.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    fs.setattr(ino, None, chmod(0o4755), None).await.unwrap();
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 0, b"y").await.unwrap();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100755");
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100755");
}

/// fsync through any descriptor, a read-only one too, makes what every
/// descriptor wrote durable, as on a local filesystem.
#[tokio::test]
async fn fsync_of_a_read_only_descriptor_uploads_what_another_wrote() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let (fs, _staging) = shared_volume(store.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    let reader = fs.open(ino, READ).await.unwrap();
    let writer = fs.open(ino, WRITE).await.unwrap();
    fs.write(writer, 0, b"new").await.unwrap();
    fs.fsync(reader).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b"new"[..]);
    fs.flush(writer, None).await.unwrap();
    fs.release(writer).await;
    fs.release(reader).await;
}

/// A change made while the volume stops (here with a truncation, whose
/// upload the stop waits for) is put in S3, counted as lost, or refused:
/// never accepted and left where no stop finds it.
#[tokio::test]
async fn a_change_made_during_the_stop_is_never_silently_dropped() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    let ino = lookup_path(&fs, "f").await.unwrap();
    faulty.fail_all(Operation::PutObject, Fault::Delay(HALF_SECOND));
    let setattr = tokio::spawn({
        let fs = fs.clone();
        async move { fs.setattr(ino, Some(0), chmod(0o600), None).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lost = fs.stop(Duration::from_secs(3)).await;
    let answer = setattr.await.unwrap();
    let kept = store.headers("root/f").unwrap().user;
    assert!(
        answer.is_err()
            || kept.get("mode").map(String::as_str) == Some("0100600")
            || lost.contains(&"root/f".to_string()),
        "the chmod was accepted, is not in S3, and the stop did not count it lost: {kept:?}"
    );
}

#[tokio::test]
async fn without_metadata_changes_are_accepted_and_nothing_is_sent() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "x");
    let vol = volume(&store, false);
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    store.clear_calls();
    let shown = vol.fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    assert_eq!(shown.attr.perm, 0o644);
    assert!(vol.fs.stop(Duration::from_secs(1)).await.is_empty());
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

/// A multipart upload sets the metadata when it starts: a change after that is
/// copied onto the object in place once it is complete, before close returns.
#[tokio::test]
async fn a_change_after_a_multipart_upload_began_is_copied_on_before_close_returns() {
    const PART: usize = 5 * 1024 * 1024;
    let store = Arc::new(MemoryStore::new("bkt"));
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: PART as u64,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), "root/", config);
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("big"), None, chmod(0o644))
        .await
        .unwrap();
    let data = common::pattern(3 * PART, 9);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        fs.write(fh, (i << 20) as u64, chunk).await.unwrap();
    }
    // The parts written past upload in the background: the upload has begun.
    while !ops(&store).contains(&Operation::CreateMultipartUpload) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ino = entry.attr.ino;
    fs.setattr(ino, None, chmod(0o600), Some(fh)).await.unwrap();
    fs.flush(fh, None).await.unwrap();
    let calls = ops(&store);
    assert_eq!(
        calls
            .iter()
            .filter(|op| **op == Operation::CreateMultipartUpload)
            .count(),
        1
    );
    assert_eq!(calls.last(), Some(&Operation::CopyObject), "{calls:?}");
    assert_eq!(store.headers("root/big").unwrap().user["mode"], "0100600");
    assert_eq!(store.get("root/big").as_deref(), Some(&data[..]));
    // Written again after an fsync, with its mode changed between: the new
    // upload starts with it, and no copy is needed.
    fs.fsync(fh).await.unwrap();
    fs.setattr(ino, None, chmod(0o640), Some(fh)).await.unwrap();
    store.clear_calls();
    fs.write(fh, 0, b"again").await.unwrap();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert!(
        !ops(&store).contains(&Operation::CopyObject),
        "{:?}",
        ops(&store)
    );
    assert_eq!(store.headers("root/big").unwrap().user["mode"], "0100640");
    assert_eq!(store.get("root/big").unwrap()[..5], b"again"[..]);
}

#[tokio::test]
async fn symbolic_links_are_objects_holding_their_target_as_s3fs_makes_them() {
    let store = Arc::new(MemoryStore::new("bkt"));
    // One s3fs made, listed before it is looked up.
    store.put_with("root/theirs", "target/file", user(&[("mode", "41471")]));
    let vol = volume(&store, true);
    let owner = Posix {
        uid: Some(1000),
        gid: Some(100),
        ..Posix::default()
    };
    let made = vol
        .fs
        .symlink(
            ROOT_INO,
            OsStr::new("ours"),
            "../elsewhere".as_ref(),
            owner.clone(),
        )
        .await
        .unwrap();
    assert!(made.attr.symlink);
    assert_eq!(
        (made.attr.perm, made.attr.size, made.attr.uid),
        (0o777, 12, 1000)
    );
    assert_eq!(
        store.get("root/ours").as_deref(),
        Some(&b"../elsewhere"[..])
    );
    let kept = store.headers("root/ours").unwrap().user;
    assert_eq!(kept["mode"], "0120777");
    assert_eq!(kept["uid"], "1000");
    assert_eq!(
        &vol.fs.readlink(made.attr.ino).await.unwrap()[..],
        b"../elsewhere"
    );

    let theirs = vol.fs.lookup(ROOT_INO, OsStr::new("theirs")).await.unwrap();
    assert!(theirs.attr.symlink);
    assert_eq!(
        &vol.fs.readlink(theirs.attr.ino).await.unwrap()[..],
        b"target/file"
    );
    // A name taken, a file that is no link.
    assert_eq!(
        vol.fs
            .symlink(ROOT_INO, OsStr::new("theirs"), "x".as_ref(), owner.clone())
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    store.put("root/plain", "text");
    let plain = lookup_path(&vol.fs, "plain").await.unwrap();
    assert_eq!(
        vol.fs.readlink(plain).await.unwrap_err().errno(),
        libc::EINVAL
    );
    // A rename carries the mark.
    rename_in_root(&vol.fs, "ours", "moved").await;
    assert_eq!(store.headers("root/moved").unwrap().user["mode"], "0120777");

    // Without metadata, a link is a file holding its target, and none is made.
    let off = volume(&store, false);
    let seen = off.fs.lookup(ROOT_INO, OsStr::new("theirs")).await.unwrap();
    assert!(!seen.attr.symlink);
    assert_eq!(
        off.fs
            .symlink(ROOT_INO, OsStr::new("new"), "x".as_ref(), owner)
            .await
            .unwrap_err()
            .errno(),
        libc::ENOTSUP
    );
}

/// A bucket writer cannot hand out a setuid program: the bits are kept in the
/// metadata, never shown, so `cp -a` off the volume does not copy them.
#[tokio::test]
async fn set_id_bits_are_kept_but_never_shown() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with(
        "root/planted",
        "#!/bin/sh\n",
        user(&[("mode", "0106755"), ("uid", "0"), ("gid", "0")]),
    );
    let vol = volume(&store, true);
    let planted = vol
        .fs
        .lookup(ROOT_INO, OsStr::new("planted"))
        .await
        .unwrap();
    assert_eq!((planted.attr.perm, planted.attr.uid), (0o755, 0));
    let ino = planted.attr.ino;
    vol.fs
        .setattr(ino, None, chmod(0o4711), None)
        .await
        .unwrap();
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(
        store.headers("root/planted").unwrap().user["mode"],
        "0104711"
    );
    assert_eq!(vol.fs.getattr(ino).await.unwrap().attr.perm, 0o711);
}

#[tokio::test]
async fn the_modes_of_the_options_never_show_set_id_bits() {
    // --file-mode 4755 --dir-mode 2775: objects without metadata of their own.
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/plain", "x");
    store.put("root/sub/plain", "y");
    let fs = Fs::new(
        store.clone(),
        "root/",
        FsConfig {
            file_mode: 0o4755,
            dir_mode: 0o2775,
            ..FsConfig::default()
        },
    );
    let file = fs.lookup(ROOT_INO, OsStr::new("plain")).await.unwrap();
    assert_eq!(file.attr.perm, 0o755);
    let dir = fs.lookup(ROOT_INO, OsStr::new("sub")).await.unwrap();
    assert_eq!(dir.attr.perm, 0o775);
    assert_eq!(fs.getattr(ROOT_INO).await.unwrap().attr.perm, 0o775);
}

/// Above the single-copy limit (5 GiB on S3; 10 MiB here), the copy in place is
/// a multipart copy that starts with the new headers.
#[tokio::test]
async fn a_change_to_an_object_above_the_copy_limit_is_copied_in_parts() {
    const PART: usize = 5 * 1024 * 1024;
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = common::pattern(3 * PART, 4);
    let mut headers = user(&[("color", "blue")]);
    headers.content_type = Some("video/mp4".into());
    store.put_with("root/big", data.clone(), headers);
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: PART as u64,
            single_copy_limit: 2 * PART as u64,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), "root/", config);
    let ino = lookup_path(&fs, "big").await.unwrap();
    store.clear_calls();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let calls = ops(&store);
    assert_eq!(
        calls,
        [
            Operation::HeadObject,
            Operation::CreateMultipartUpload,
            Operation::UploadPartCopy,
            Operation::UploadPartCopy,
            Operation::CompleteMultipartUpload
        ]
    );
    let kept = store.headers("root/big").unwrap();
    assert_eq!(kept.user["mode"], "0100600");
    assert_eq!(kept.user["color"], "blue");
    assert_eq!(kept.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(store.get("root/big").as_deref(), Some(&data[..]));
    // Reads go on: the object's bytes are the same, under its new ETag.
    assert_eq!(common::fs::read_all(&fs, ino, 1 << 20).await, data);
}

#[tokio::test]
async fn directories_keep_their_mode_owner_and_time_on_their_marker() {
    let store = Arc::new(MemoryStore::new("bkt"));
    // s3fs's `mkdir d; chmod 2750 d; touch -d 2021-01-01 d`, and a directory
    // that only exists because a key is under it.
    store.put_with(
        "root/theirs/",
        "",
        user(&[("mode", "17896"), ("uid", "7"), ("mtime", "1609459200")]),
    );
    store.put("root/implicit/file", "x");
    let vol = volume(&store, true);
    let theirs = vol.fs.lookup(ROOT_INO, OsStr::new("theirs")).await.unwrap();
    assert_eq!(
        (theirs.attr.perm, theirs.attr.uid, theirs.attr.mtime),
        (0o2750, 7, at(1609459200, 0))
    );
    let owner = Posix {
        perm: Some(0o700),
        uid: Some(1000),
        gid: Some(100),
        ..Posix::default()
    };
    let made = vol
        .fs
        .mkdir(ROOT_INO, OsStr::new("ours"), owner)
        .await
        .unwrap();
    assert_eq!((made.attr.perm, made.attr.uid), (0o700, 1000));
    let marker = store.headers("root/ours/").unwrap().user;
    assert_eq!(marker["mode"], "040700");
    assert_eq!(marker["uid"], "1000");
    assert!(marker.contains_key("mtime"));

    // chmod of a directory: a copy of its marker in place, or a marker made.
    let implicit = lookup_path(&vol.fs, "implicit").await.unwrap();
    assert_eq!(vol.fs.getattr(implicit).await.unwrap().attr.perm, 0o755);
    store.clear_calls();
    vol.fs
        .setattr(made.attr.ino, None, chmod(0o750), None)
        .await
        .unwrap();
    vol.fs
        .setattr(implicit, None, chmod(0o700), None)
        .await
        .unwrap();
    assert!(vol.fs.apply_metadata(Duration::ZERO).await.is_empty());
    let mut calls = ops(&store);
    calls.sort_by_key(|op| format!("{op:?}"));
    assert_eq!(
        calls,
        [
            Operation::CopyObject,
            Operation::HeadObject,
            Operation::PutObject
        ]
    );
    assert_eq!(store.headers("root/ours/").unwrap().user["mode"], "040750");
    assert_eq!(
        store.headers("root/implicit/").unwrap().user["mode"],
        "040700"
    );
    assert_eq!(store.get("root/implicit/file").as_deref(), Some(&b"x"[..]));

    // Another mount sees them; a listed directory costs one HEAD of its marker.
    let other = volume(&store, true);
    let fh = other.fs.opendir(ROOT_INO).await.unwrap();
    other.fs.readdirplus(fh, 2).unwrap();
    // (Closed, so that nothing is read ahead.)
    other.fs.releasedir(fh);
    store.clear_calls();
    let seen = other
        .fs
        .lookup(ROOT_INO, OsStr::new("implicit"))
        .await
        .unwrap();
    assert_eq!(seen.attr.perm, 0o700);
    assert_eq!(ops(&store), [Operation::HeadObject]);
    // The volume root's are not kept.
    store.clear_calls();
    other
        .fs
        .setattr(ROOT_INO, None, chmod(0o700), None)
        .await
        .unwrap();
    assert!(other.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

/// A read-write volume at `root/` of `store`, shared between tasks, and its
/// staging directory.
fn shared_volume(store: Arc<dyn s3vol::store::ObjectStore>) -> (Arc<Fs>, TempDir) {
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        write: Some(WriteConfig::new(
            LocalDir::open_or_create(staging.path()).unwrap(),
        )),
        ..FsConfig::default()
    };
    (Arc::new(Fs::new(store, "root/", config)), staging)
}

/// A bucket of `count` one-byte files `root/fNNN` (`width` digits), each with
/// mode 0640 and uid 7 in its metadata, as s3fs keeps them.
fn files_kept_by_s3fs(count: usize, width: usize) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new("bkt"));
    for i in 0..count {
        store.put_with(
            &format!("root/f{i:0width$}"),
            "x",
            user(&[("mode", "33184"), ("uid", "7")]),
        );
    }
    store
}

/// `ls -l` of a listed directory: each entry's metadata is one HEAD, asked for
/// in windows that double while the lookups follow the listing's order.
#[tokio::test]
async fn ls_l_reads_metadata_ahead_in_growing_windows() {
    let store = files_kept_by_s3fs(100, 3);
    let vol = volume(&store, true);
    let fh = vol.fs.opendir(ROOT_INO).await.unwrap();
    vol.fs.readdirplus(fh, 2).unwrap();
    store.clear_calls();
    let heads = || store.count_calls(Operation::HeadObject);
    let stat = |i: usize| {
        let fs = &vol.fs;
        async move {
            let name = format!("f{i:03}");
            fs.lookup(ROOT_INO, OsStr::new(&name)).await.unwrap().attr
        }
    };
    assert_eq!(stat(0).await.uid, 7);
    assert_eq!(heads(), 8, "the first window");
    for i in 1..8 {
        assert_eq!(stat(i).await.perm, 0o640);
    }
    assert_eq!(heads(), 8, "answered by the window");
    stat(8).await;
    assert_eq!(heads(), 8 + 16, "the window doubles");
    for i in 9..100 {
        assert_eq!(stat(i).await.uid, 7, "f{i:03}");
    }
    assert_eq!(heads(), 100, "each entry's metadata asked for once");
    assert_eq!(store.count_calls(Operation::ListObjectsV2), 0);
    vol.fs.releasedir(fh);

    // A lone stat with no listing held: one HEAD.
    let other = volume(&store, true);
    let fh = other.fs.opendir(ROOT_INO).await.unwrap();
    other.fs.releasedir(fh);
    store.clear_calls();
    other.fs.lookup(ROOT_INO, OsStr::new("f050")).await.unwrap();
    assert_eq!(ops(&store), [Operation::HeadObject]);
}

/// `ls -l` past the first READDIRPLUS reply (which the kernel sends only after
/// a lookup in the directory): each reply carries its entries' metadata, with
/// the time the kernel may keep it, so the kernel looks none of them up; the
/// metadata of the entries after a reply is asked for meanwhile; and no entry's
/// is asked for twice, however the replies and lookups meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_l_past_the_first_reply_gets_entries_with_their_metadata() {
    let store = files_kept_by_s3fs(1000, 4);
    let fs = Arc::new(Fs::new(store.clone(), "root/", FsConfig::default()));
    let fs = || &fs;
    let heads = || store.count_calls(Operation::HeadObject);
    let fh = fs().opendir(ROOT_INO).await.unwrap();
    // The first reply, as `find` reads it too: names and sizes, no HEAD.
    store.clear_calls();
    let first = fs().readdirplus_page(ROOT_INO, fh, 0, 100).await.unwrap();
    assert_eq!(first.len(), 100);
    assert!(
        first[2..].iter().all(|(_, e)| e.ttl.is_zero()),
        "past . and .."
    );
    assert_eq!(heads(), 0);
    // The next: its entries (as many as 32 KiB of them hold: 204 of these
    // names) come with their metadata, kept by the kernel for the TTL.
    let next = fs()
        .readdirplus_page(ROOT_INO, fh, 100, 1000)
        .await
        .unwrap();
    assert_eq!(next[0].0.name, "f0098");
    let carried = next.iter().take_while(|(_, e)| !e.ttl.is_zero()).count();
    assert!(carried >= 204, "{carried}");
    assert!(
        next[..carried]
            .iter()
            .all(|(_, e)| e.attr.uid == 7 && e.attr.perm == 0o640)
    );
    // The 128 after them are asked for meanwhile (the reply waits for its own
    // alone), and no more.
    common::wait_until(Duration::from_secs(10), || heads() >= 204 + 128);
    assert_eq!(heads(), 204 + 128);
    for i in 98..98 + 204 + 128 {
        let name = format!("f{i:04}");
        fs().lookup(ROOT_INO, OsStr::new(&name)).await.unwrap();
    }
    assert_eq!(
        heads(),
        204 + 128,
        "the lookups were answered by the batches"
    );
    // The rest, replies and lookups mixed: each entry's metadata once.
    let mut offset = 100 + 204 + 128;
    while offset < 1002 {
        let page = fs()
            .readdirplus_page(ROOT_INO, fh, offset as u64, 1000)
            .await
            .unwrap();
        let carried = page.iter().take_while(|(_, e)| !e.ttl.is_zero()).count();
        offset += carried.clamp(1, 50);
    }
    for i in 0..1000 {
        let name = format!("f{i:04}");
        let entry = fs().lookup(ROOT_INO, OsStr::new(&name)).await.unwrap();
        assert_eq!(entry.attr.uid, 7, "{name}");
    }
    assert_eq!(heads(), 1000, "each entry's metadata asked for once");
    fs().releasedir(fh);
}

/// A HEAD a READDIRPLUS batch sent is answered after the name changed here:
/// the answer must not bring back a file unlinked meanwhile, nor the mode a
/// chmod replaced, nor an entry a reply dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_answer_never_brings_an_older_state_back() {
    use s3vol::store::faulty::{Fault, FaultyStore};
    let store = files_kept_by_s3fs(300, 3);
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    faulty.fail_all(
        Operation::HeadObject,
        Fault::LateAnswer(Duration::from_millis(500)),
    );
    let (fs, _staging) = shared_volume(faulty.clone());
    let fh = fs.opendir(ROOT_INO).await.unwrap();
    let first = fs.readdirplus_page(ROOT_INO, fh, 0, 100).await.unwrap();
    let ino_of = |name: &str| first.iter().find(|(e, _)| e.name == name).unwrap().0.ino;
    let chmodded = ino_of("f060");
    // The next reply waits for its entries' HEADs (204 fit), 32 at a time,
    // slowly: f050's and f060's are in the first 32.
    let reply = tokio::spawn({
        let fs = fs.clone();
        async move { fs.readdirplus_page(ROOT_INO, fh, 50, 1000).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile, with those HEADs in flight: an unlink and a chmod, whose
    // own requests are answered at once.
    faulty.clear();
    fs.unlink(ROOT_INO, OsStr::new("f050")).await.unwrap();
    fs.setattr(chmodded, None, chmod(0o600), None)
        .await
        .unwrap();
    let entries = reply.await.unwrap();
    assert!(!entries.is_empty());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let gone = fs.lookup(ROOT_INO, OsStr::new("f050")).await;
    assert_eq!(gone.unwrap_err().errno(), libc::ENOENT, "f050 came back");
    assert_eq!(fs.getattr(chmodded).await.unwrap().attr.perm, 0o600);
    // Entries dropped from the table are skipped, never an empty reply mid-way.
    let rest = fs.readdirplus_page(ROOT_INO, fh, 52, 1).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0.name, "f051", "f050 skipped");
}

/// A refresh from S3 while a change waits does not bring the old mode back once
/// the change is in S3.
#[tokio::test]
async fn a_change_applied_after_a_refresh_shows_as_applied() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with("root/f", "x", user(&[("mode", "0100644")]));
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        metadata_ttl: Duration::from_millis(50),
        write: Some(WriteConfig::new(
            LocalDir::open_or_create(staging.path()).unwrap(),
        )),
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), "root/", config);
    let ino = lookup_path(&fs, "f").await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Refreshed from S3 (still 0644 there); the waiting change still shows.
    assert_eq!(fs.getattr(ino).await.unwrap().attr.perm, 0o600);
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.headers("root/f").unwrap().user["mode"], "0100600");
    assert_eq!(fs.getattr(ino).await.unwrap().attr.perm, 0o600);
}

/// A rename above the single-copy limit is a multipart copy, which carries
/// nothing by itself: it starts with the source's headers.
#[tokio::test]
async fn a_rename_in_parts_carries_every_header() {
    const PART: usize = 5 * 1024 * 1024;
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = common::pattern(3 * PART, 6);
    let mut headers = user(&[("mode", "0100600"), ("color", "red")]);
    headers.content_type = Some("video/mp4".into());
    store.put_with("root/big", data.clone(), headers.clone());
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: PART as u64,
            single_copy_limit: 2 * PART as u64,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), "root/", config);
    lookup_path(&fs, "big").await.unwrap();
    rename_in_root(&fs, "big", "moved").await;
    assert!(ops(&store).contains(&Operation::UploadPartCopy));
    // With the rename's change time.
    let mut moved = store.headers("root/moved").unwrap();
    assert!(moved.user.remove("ctime").is_some());
    assert_eq!(moved, headers);
    assert_eq!(store.get("root/moved").as_deref(), Some(&data[..]));
}

fn errno<T: std::fmt::Debug>(result: Result<T, s3vol::fs::FsError>) -> i32 {
    result.unwrap_err().errno()
}

/// The attributes `key`'s object keeps, as s3fs reads them.
fn kept_xattrs(store: &MemoryStore, key: &str) -> Xattrs {
    Xattrs::decode(&store.headers(key).unwrap().user["xattr"])
}

#[tokio::test]
async fn extended_attributes_are_kept_as_s3fs_keeps_them_within_s3_s_bound() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with("root/f", "data", user(&[("color", "blue")]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    let tag = OsStr::new("user.tag");
    assert_eq!(errno(fs.getxattr(ino, tag).await), libc::ENODATA);
    assert_eq!(fs.listxattr(ino).await.unwrap(), b"");
    fs.setxattr(ino, tag, b"v1", 0).await.unwrap();
    assert_eq!(
        errno(fs.setxattr(ino, tag, b"v2", libc::XATTR_CREATE).await),
        libc::EEXIST
    );
    let other = OsStr::new("user.other");
    assert_eq!(
        errno(fs.setxattr(ino, other, b"x", libc::XATTR_REPLACE).await),
        libc::ENODATA
    );
    fs.setxattr(ino, OsStr::new("user.bin"), &[0, 255, b'\n'], 0)
        .await
        .unwrap();
    assert_eq!(fs.getxattr(ino, tag).await.unwrap(), b"v1");
    assert_eq!(fs.listxattr(ino).await.unwrap(), b"user.bin\0user.tag\0");
    // Other namespaces are not kept, with the errno Linux filesystems use.
    for name in [
        "security.capability",
        "trusted.x",
        "system.posix_acl_access",
    ] {
        let name = OsStr::new(name);
        assert_eq!(
            errno(fs.setxattr(ino, name, b"x", 0).await),
            libc::EOPNOTSUPP
        );
        assert_eq!(errno(fs.getxattr(ino, name).await), libc::EOPNOTSUPP);
        assert_eq!(errno(fs.removexattr(ino, name).await), libc::EOPNOTSUPP);
    }
    // Names s3fs could not read back.
    for name in ["user.", "user.a:b", "user.a,b", "user.\"q\""] {
        let name = OsStr::new(name);
        assert_eq!(errno(fs.setxattr(ino, name, b"x", 0).await), libc::EINVAL);
    }
    // One copy for them all, keeping the rest.
    assert!(!store.headers("root/f").unwrap().user.contains_key("xattr"));
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let kept = store.headers("root/f").unwrap().user;
    assert_eq!(kept["color"], "blue");
    assert!(kept.contains_key("ctime"));
    let xattrs = kept_xattrs(&store, "root/f");
    assert_eq!(xattrs.get("user.bin"), Some(&[0, 255, b'\n'][..]));
    assert_eq!(xattrs.get("user.tag"), Some(&b"v1"[..]));

    // One value too large for S3's 2 KB by itself: E2BIG; one that fits but
    // not beside the others: ENOSPC. Neither changes what is kept.
    assert_eq!(
        errno(
            fs.setxattr(ino, OsStr::new("user.big"), &[7; 1500], 0)
                .await
        ),
        libc::E2BIG
    );
    fs.setxattr(ino, OsStr::new("user.m1"), &[1; 700], 0)
        .await
        .unwrap();
    assert_eq!(
        errno(fs.setxattr(ino, OsStr::new("user.m2"), &[2; 700], 0).await),
        libc::ENOSPC
    );
    assert_eq!(
        fs.listxattr(ino).await.unwrap(),
        b"user.bin\0user.m1\0user.tag\0"
    );
    fs.removexattr(ino, tag).await.unwrap();
    assert_eq!(errno(fs.removexattr(ino, tag).await), libc::ENODATA);
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let fresh = volume(&store, true);
    let ino = lookup_path(&fresh.fs, "f").await.unwrap();
    assert_eq!(
        fresh.fs.listxattr(ino).await.unwrap(),
        b"user.bin\0user.m1\0"
    );
    assert_eq!(
        fresh.fs.getxattr(ino, OsStr::new("user.m1")).await.unwrap(),
        [1; 700]
    );
    // The last one removed removes the entry.
    for name in ["user.bin", "user.m1"] {
        fresh.fs.removexattr(ino, OsStr::new(name)).await.unwrap();
    }
    assert!(fresh.fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert!(!store.headers("root/f").unwrap().user.contains_key("xattr"));
}

#[tokio::test]
async fn attributes_of_other_namespaces_in_the_bucket_are_never_shown_and_never_lost() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let planted = Xattrs::default()
        .with("security.capability", &[1, 0, 0, 2, 0xff, 0xff, 0xff, 0xff])
        .with("trusted.t", b"t")
        .with("user.a", b"a");
    store.put_with("root/f", "x", user(&[("xattr", &planted.encode())]));
    store.put_with(
        "root/damaged",
        "x",
        user(&[("xattr", "%7B%22user.a%22%3A%22%21%21%22%7D")]),
    );
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    assert_eq!(fs.listxattr(ino).await.unwrap(), b"user.a\0");
    assert_eq!(
        errno(fs.getxattr(ino, OsStr::new("security.capability")).await),
        libc::EOPNOTSUPP
    );
    fs.setxattr(ino, OsStr::new("user.b"), b"b", 0)
        .await
        .unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(kept_xattrs(&store, "root/f"), planted.with("user.b", b"b"));
    // A value that cannot be read is left as it is: no change is made on it.
    let damaged = lookup_path(fs, "damaged").await.unwrap();
    assert_eq!(
        errno(fs.setxattr(damaged, OsStr::new("user.b"), b"b", 0).await),
        libc::EIO
    );
    assert_eq!(
        errno(fs.removexattr(damaged, OsStr::new("user.a")).await),
        libc::EIO
    );
    fs.setattr(damaged, None, chmod(0o600), None).await.unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let kept = store.headers("root/damaged").unwrap().user;
    assert_eq!(kept["xattr"], "%7B%22user.a%22%3A%22%21%21%22%7D");
    assert_eq!(kept["mode"], "0100600");
}

#[tokio::test]
async fn extended_attributes_of_a_file_being_written_go_into_its_upload() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("new.txt"), None, CREATOR)
        .await
        .unwrap();
    let ino = entry.attr.ino;
    fs.write(fh, 0, b"hello").await.unwrap();
    fs.setxattr(ino, OsStr::new("user.origin"), b"here", 0)
        .await
        .unwrap();
    assert_eq!(fs.listxattr(ino).await.unwrap(), b"user.origin\0");
    store.clear_calls();
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(ops(&store), [Operation::PutObject]);
    assert_eq!(
        kept_xattrs(&store, "root/new.txt").get("user.origin"),
        Some(&b"here"[..])
    );
    // A directory's go onto its marker, made if it has none.
    store.put("root/d/inside", "x");
    let dir = lookup_path(fs, "d").await.unwrap();
    fs.setxattr(dir, OsStr::new("user.d"), b"dir", 0)
        .await
        .unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(
        kept_xattrs(&store, "root/d/").get("user.d"),
        Some(&b"dir"[..])
    );
    // The root keeps none; a volume without metadata none at all.
    assert_eq!(
        errno(fs.setxattr(ROOT_INO, OsStr::new("user.r"), b"r", 0).await),
        libc::ENOTSUP
    );
    let bare = volume(&store, false);
    let ino = lookup_path(&bare.fs, "new.txt").await.unwrap();
    assert_eq!(bare.fs.listxattr(ino).await.unwrap(), b"");
    assert_eq!(
        errno(bare.fs.setxattr(ino, OsStr::new("user.x"), b"x", 0).await),
        libc::ENOTSUP
    );
}

/// ctime as POSIX has it: moved by every change of the file and of what is
/// kept of it (chmod, chown, touch, a rename, a write, an attribute), never
/// by a read; kept in `x-amz-meta-ctime` as s3fs keeps it.
#[tokio::test]
async fn the_change_time_moves_with_every_change_and_is_kept() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with("root/f", "data", user(&[("mtime", "1500000000")]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    let ctime = || async { fs.getattr(ino).await.unwrap().attr };
    let last = std::cell::Cell::new(ctime().await.ctime);
    let moved = |attr: s3vol::fs::Attr, what: &str| {
        let before = last.replace(attr.ctime);
        assert!(
            attr.ctime > before,
            "{what}: {:?} after {before:?}",
            attr.ctime
        );
        attr
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let attr = moved(
        fs.setattr(ino, None, chmod(0o600), None)
            .await
            .unwrap()
            .attr,
        "chmod",
    );
    assert_eq!(attr.mtime, at(1_500_000_000, 0), "a chmod leaves mtime");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let owner = Posix {
        uid: Some(7),
        ..Posix::default()
    };
    moved(
        fs.setattr(ino, None, owner, None).await.unwrap().attr,
        "chown",
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let attr = moved(
        fs.setattr(ino, None, touch(at(1_000_000_000, 0)), None)
            .await
            .unwrap()
            .attr,
        "touch",
    );
    assert_eq!(attr.mtime, at(1_000_000_000, 0));
    tokio::time::sleep(Duration::from_millis(5)).await;
    fs.setxattr(ino, OsStr::new("user.a"), b"a", 0)
        .await
        .unwrap();
    moved(ctime().await, "setxattr");
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let kept = store.headers("root/f").unwrap().user;
    assert_eq!(
        kept["ctime"],
        s3vol::fs::posix::format_time(last.get()),
        "kept to the nanosecond"
    );
    // A read changes nothing.
    let fh = fs.open(ino, common::fs::READ).await.unwrap();
    fs.read(fh, 0, 4).await.unwrap();
    fs.release(fh).await;
    assert_eq!(ctime().await.ctime, last.get());
    tokio::time::sleep(Duration::from_millis(5)).await;
    rename_in_root(fs, "f", "g").await;
    moved(ctime().await, "rename");
    assert_eq!(
        store.headers("root/g").unwrap().user["ctime"],
        s3vol::fs::posix::format_time(last.get())
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 0, b"DATA").await.unwrap();
    let attr = moved(ctime().await, "write");
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert_eq!(ctime().await.ctime, attr.ctime, "the close moves nothing");
    // A fresh mount shows what was kept.
    let fresh = volume(&store, true);
    let g = lookup_path(&fresh.fs, "g").await.unwrap();
    let shown = fresh.fs.getattr(g).await.unwrap().attr;
    assert_eq!(shown.ctime, attr.ctime);
}

/// A change still waiting when the file is opened for writing goes with the
/// upload that the writes make, which the waiting copy then leaves to it.
#[tokio::test]
async fn a_change_waiting_when_the_file_is_opened_for_writing_goes_into_its_upload() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put_with("root/f", "data", user(&[("mode", "33188")]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
    fs.setxattr(ino, OsStr::new("user.a"), b"1", 0)
        .await
        .unwrap();
    let fh = fs.open(ino, WRITE).await.unwrap();
    fs.write(fh, 4, b"more").await.unwrap();
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    fs.flush(fh, None).await.unwrap();
    fs.release(fh).await;
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.get("root/f").as_deref(), Some(&b"datamore"[..]));
    let kept = store.headers("root/f").unwrap().user;
    assert_eq!(kept["mode"], "0100600");
    assert_eq!(kept_xattrs(&store, "root/f").get("user.a"), Some(&b"1"[..]));
}

/// A change of attributes is what it set and removed, applied to the set S3
/// holds when it is sent: another client's attribute set meanwhile stays.
#[tokio::test]
async fn an_attribute_another_client_set_meanwhile_is_kept() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let stored = Xattrs::default().with("user.a", b"1");
    store.put_with("root/f", "x", user(&[("xattr", &stored.encode())]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    fs.setxattr(ino, OsStr::new("user.b"), b"2", 0)
        .await
        .unwrap();
    fs.removexattr(ino, OsStr::new("user.a")).await.unwrap();
    let theirs = stored.with("user.c", b"3");
    store.put_with("root/f", "x", user(&[("xattr", &theirs.encode())]));
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    let kept = kept_xattrs(&store, "root/f");
    assert_eq!(kept.names().collect::<Vec<_>>(), ["user.b", "user.c"]);
}

/// The room S3 leaves is counted with what the object keeps as it is (a value
/// that is not read as a mode, an owner or a time) at its own width; and a
/// rename never fails for the change time it would add to a full object.
#[tokio::test]
async fn the_room_counts_what_is_kept_as_it_is_and_a_rename_fits_a_full_object() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let junk = "x".repeat(1000);
    store.put_with("root/f", "x", user(&[("uid", &junk)]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    let ino = lookup_path(fs, "f").await.unwrap();
    assert_eq!(
        errno(fs.setxattr(ino, OsStr::new("user.a"), &[1; 700], 0).await),
        libc::ENOSPC
    );
    let note = "n".repeat(2000);
    let full = user(&[("note", &note)]);
    store.put_with("root/full", "x", full.clone());
    lookup_path(fs, "full").await.unwrap();
    rename_in_root(fs, "full", "moved").await;
    assert_eq!(store.headers("root/moved"), Some(full));
}

/// A write takes away what would run the file with other privileges, as on
/// any Linux filesystem: set-ID bits and the file capability; the rest of
/// what the object kept stays, an attribute set that cannot be read included.
#[tokio::test]
async fn a_rewrite_drops_set_id_bits_and_the_capability_and_keeps_the_rest() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let xattrs = Xattrs::default()
        .with("security.capability", &[1, 0, 0, 2])
        .with("user.a", b"1");
    store.put_with(
        "root/tool",
        "#!/bin/sh\n",
        user(&[("mode", "0104755"), ("xattr", &xattrs.encode())]),
    );
    store.put_with("root/odd", "x", user(&[("xattr", "garbage")]));
    let vol = volume(&store, true);
    let fs = &vol.fs;
    for name in ["tool", "odd"] {
        let ino = lookup_path(fs, name).await.unwrap();
        let fh = fs.open(ino, WRITE).await.unwrap();
        fs.write(fh, 0, b"#").await.unwrap();
        fs.flush(fh, None).await.unwrap();
        fs.release(fh).await;
    }
    let kept = store.headers("root/tool").unwrap().user;
    assert_eq!(kept["mode"], "0100755");
    let kept = kept_xattrs(&store, "root/tool");
    assert_eq!(kept, Xattrs::default().with("user.a", b"1"));
    assert_eq!(store.headers("root/odd").unwrap().user["xattr"], "garbage");
}

/// A change being copied in place when the file is renamed or unlinked: its
/// copy finds the old name gone. Renamed, the change goes to the new name at
/// the next turn; unlinked, it is moot. Neither is a change lost.
#[tokio::test]
async fn a_change_whose_copy_finds_the_name_moved_or_gone_is_not_lost() {
    use s3vol::store::faulty::{Fault, FaultyStore};
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/moved", "m");
    store.put("root/gone", "g");
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (fs, _staging) = shared_volume(faulty.clone());
    for (name, then) in [("moved", "renamed"), ("gone", "unlinked")] {
        let ino = lookup_path(&fs, name).await.unwrap();
        fs.setattr(ino, None, chmod(0o600), None).await.unwrap();
        // The copy in place waits; the name changes meanwhile.
        faulty.fail_all(
            Operation::CopyObject,
            Fault::Delay(Duration::from_millis(300)),
        );
        let applying = a_turn(&fs);
        tokio::time::sleep(Duration::from_millis(100)).await;
        faulty.clear();
        match then {
            "renamed" => rename_in_root(&fs, name, "new").await,
            _ => fs.unlink(ROOT_INO, OsStr::new(name)).await.unwrap(),
        }
        assert!(applying.await.unwrap().is_empty(), "{then}: a change lost");
    }
    assert!(fs.apply_metadata(Duration::ZERO).await.is_empty());
    assert_eq!(store.keys(), ["root/new"]);
    assert_eq!(store.headers("root/new").unwrap().user["mode"], "0100600");
}
