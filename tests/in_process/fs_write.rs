//! Writing on the in-memory store: uploads, staging, directories, renames and
//! failures, with no network and no kernel.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::fs::{READ, TRUNCATE, WRITE, lookup_path, read_all};
use common::pattern;
use s3vol::fs::posix::Posix;
use s3vol::fs::{Fs, FsConfig, Kind, ROOT_INO, WriteConfig};
use s3vol::local_dir::LocalDir;
use s3vol::store::faulty::{Fault, FaultyStore};
use s3vol::store::memory::MemoryStore;
use s3vol::store::{ObjectStore, Operation};
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;
/// S3's smallest part: tests use it so multipart uploads stay small.
const PART: usize = 5 * MIB;

/// A read-write volume on `store` at prefix `root/`, and its staging directory.
struct Volume {
    fs: Fs,
    staging: TempDir,
}

fn volume(store: Arc<dyn ObjectStore>) -> Volume {
    volume_with_staging(store, u64::MAX)
}

/// A volume whose files being written may take `staging_limit` bytes together.
fn volume_with_staging(store: Arc<dyn ObjectStore>, staging_limit: u64) -> Volume {
    let staging = tempfile::tempdir().unwrap();
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: PART as u64,
            max_in_flight: 4,
            // Small enough that tests reach the part-by-part copy.
            single_copy_limit: 2 * PART as u64,
            staging_limit,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    Volume {
        fs: Fs::new(store, "root/", config),
        staging,
    }
}

async fn write_all(fs: &Fs, fh: u64, mut offset: u64, data: &[u8]) {
    // As the kernel sends them: at most 1 MiB per write.
    for chunk in data.chunks(MIB) {
        assert_eq!(
            fs.write(fh, offset, chunk).await.unwrap() as usize,
            chunk.len()
        );
        offset += chunk.len() as u64;
    }
}

/// Creates `name` in the root with `data`, closing it (flush, release).
async fn create_file(fs: &Fs, name: &str, data: &[u8]) -> Result<(), i32> {
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new(name), None, Posix::default())
        .await
        .unwrap();
    write_all(fs, fh, 0, data).await;
    let result = fs.flush(fh, None).await.map_err(|e| e.errno());
    fs.release(fh).await;
    result
}

#[tokio::test]
async fn a_small_file_is_one_put_on_close_and_visible_at_once() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("a.txt"), None, Posix::default())
        .await
        .unwrap();
    vol.fs.write(fh, 0, b"hello").await.unwrap();
    // Visible in the mount at once, not yet in S3.
    let ino = lookup_path(&vol.fs, "a.txt").await.unwrap();
    assert_eq!(ino, entry.attr.ino);
    assert_eq!(vol.fs.getattr(ino).await.unwrap().attr.size, 5);
    assert_eq!(store.get("root/a.txt"), None);
    vol.fs.flush(fh, None).await.unwrap();
    assert_eq!(store.get("root/a.txt").as_deref(), Some(&b"hello"[..]));
    assert_eq!(store.count_calls(Operation::PutObject), 1);
    assert_eq!(store.count_calls(Operation::CreateMultipartUpload), 0);
    vol.fs.release(fh).await;
    // Nothing changed since the flush: release sends nothing more.
    assert_eq!(store.count_calls(Operation::PutObject), 1);
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, b"hello");
}

#[tokio::test]
async fn an_empty_file_is_uploaded_too() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    create_file(&vol.fs, "empty", b"").await.unwrap();
    assert_eq!(store.get("root/empty").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn parts_upload_while_the_application_writes() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let data = pattern(4 * PART + 12345, 1);
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("big"), None, Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, fh, 0, &data).await;
    // The writer has moved past four parts: they upload before close.
    let before_close = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while store.count_calls(Operation::UploadPart) < 4 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        before_close.is_ok(),
        "parts were not uploaded while writing"
    );
    assert_eq!(store.get("root/big"), None, "not visible before close");
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/big").unwrap(), data);
    assert_eq!(store.count_calls(Operation::UploadPart), 5);
    assert_eq!(store.count_calls(Operation::CompleteMultipartUpload), 1);
    assert!(store.pending_uploads().is_empty());
}

#[tokio::test]
async fn overwrite_append_random_write_and_truncate() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", pattern(3 * MIB, 2));
    let vol = volume(store.clone());
    let ino = lookup_path(&vol.fs, "f").await.unwrap();

    // O_TRUNC: the old content is never downloaded.
    store.clear_calls();
    let fh = vol.fs.open(ino, TRUNCATE).await.unwrap();
    vol.fs.write(fh, 0, b"new").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.count_calls(Operation::GetObject), 0);
    assert_eq!(store.get("root/f").as_deref(), Some(&b"new"[..]));

    // Append: the object is staged, extended, uploaded whole.
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    vol.fs.write(fh, 3, b" and more").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/f").as_deref(), Some(&b"new and more"[..]));

    // A random write in the middle.
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    vol.fs.write(fh, 4, b"AND").await.unwrap();
    assert_eq!(&vol.fs.read(fh, 0, 100).await.unwrap()[..], b"new AND more");
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/f").as_deref(), Some(&b"new AND more"[..]));

    // truncate(1) of a file nobody has open: shrink, then grow with zeros.
    assert_eq!(
        vol.fs
            .setattr(ino, Some(3), Posix::default(), None)
            .await
            .unwrap()
            .attr
            .size,
        3
    );
    assert_eq!(store.get("root/f").as_deref(), Some(&b"new"[..]));
    vol.fs
        .setattr(ino, Some(5), Posix::default(), None)
        .await
        .unwrap();
    assert_eq!(store.get("root/f").as_deref(), Some(&b"new\0\0"[..]));
    // Modes, owners and times are accepted and change nothing.
    store.clear_calls();
    assert_eq!(
        vol.fs
            .setattr(ino, None, Posix::default(), None)
            .await
            .unwrap()
            .attr
            .size,
        5
    );
    assert!(store.calls().iter().all(|c| !c.op.mutates()));
}

#[tokio::test]
async fn rewriting_an_uploaded_part_uploads_it_again() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let mut data = pattern(3 * PART, 3);
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("db"), None, Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, fh, 0, &data).await;
    // Back to the start, as a database rewriting its header does.
    vol.fs.write(fh, 10, b"HEADER").await.unwrap();
    data[10..16].copy_from_slice(b"HEADER");
    // Reading back what was written, as git does with the pack it writes.
    assert_eq!(
        &vol.fs.read(fh, 2 * PART as u64, 1000).await.unwrap()[..],
        &data[2 * PART..2 * PART + 1000]
    );
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/db").unwrap(), data);
    assert!(store.pending_uploads().is_empty());
}

#[tokio::test]
async fn handles_on_one_path_share_the_file_and_readers_see_it() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (entry, a) = vol
        .fs
        .create(ROOT_INO, OsStr::new("shared"), None, Posix::default())
        .await
        .unwrap();
    let ino = entry.attr.ino;
    let b = vol.fs.open(ino, WRITE).await.unwrap();
    vol.fs.write(a, 0, b"aaaa").await.unwrap();
    vol.fs.write(b, 2, b"bbbb").await.unwrap();
    let reader = vol.fs.open(ino, READ).await.unwrap();
    assert_eq!(&vol.fs.read(reader, 0, 100).await.unwrap()[..], b"aabbbb");
    // A reader closing uploads nothing; fsync through it does.
    vol.fs.flush(reader, None).await.unwrap();
    assert_eq!(store.get("root/shared"), None);
    vol.fs.fsync(reader).await.unwrap();
    assert_eq!(store.get("root/shared").as_deref(), Some(&b"aabbbb"[..]));
    // Closing one writer uploads what both wrote so far.
    vol.fs.flush(a, None).await.unwrap();
    vol.fs.release(a).await;
    assert_eq!(store.get("root/shared").as_deref(), Some(&b"aabbbb"[..]));
    vol.fs.write(b, 6, b"!").await.unwrap();
    vol.fs.flush(b, None).await.unwrap();
    vol.fs.release(b).await;
    vol.fs.release(reader).await;
    assert_eq!(store.get("root/shared").as_deref(), Some(&b"aabbbb!"[..]));
}

#[tokio::test]
async fn a_file_unlinked_while_open_is_never_uploaded() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("tmp"), None, Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, fh, 0, &pattern(2 * PART + 1, 4)).await;
    vol.fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/tmp"), None);
    assert!(store.pending_uploads().is_empty());
    assert_eq!(lookup_path(&vol.fs, "tmp").await, Err(libc::ENOENT));
}

/// A directory this mount just made holds nothing: creating files in it
/// costs their PUTs alone, with no lookup in S3 first, while the TTL lasts.
#[tokio::test]
async fn files_created_in_a_new_directory_cost_their_puts_alone() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let dir = vol
        .fs
        .mkdir(ROOT_INO, OsStr::new("new"), Posix::default())
        .await
        .unwrap();
    store.clear_calls();
    for i in 0..10 {
        let name = format!("f{i}");
        // As open(O_CREAT) does: a lookup first, which finds nothing.
        let missing = vol.fs.lookup(dir.attr.ino, OsStr::new(&name)).await;
        assert_eq!(missing.unwrap_err().errno(), libc::ENOENT);
        let (_, fh) = vol
            .fs
            .create(dir.attr.ino, OsStr::new(&name), None, Posix::default())
            .await
            .unwrap();
        vol.fs.write(fh, 0, b"data").await.unwrap();
        vol.fs.flush(fh, None).await.unwrap();
        vol.fs.release(fh).await;
    }
    let ops: Vec<Operation> = store.calls().iter().map(|c| c.op).collect();
    assert_eq!(ops, [Operation::PutObject; 10], "{ops:?}");
    assert_eq!(store.get("root/new/f9").as_deref(), Some(&b"data"[..]));
    // And its listing is what was made in it, with no request either.
    let fh = vol.fs.opendir(dir.attr.ino).await.unwrap();
    assert_eq!(vol.fs.readdir(fh, 0).unwrap().len(), 12);
    assert_eq!(store.calls().len(), 10);
}

#[tokio::test]
async fn directories_are_markers_and_rmdir_needs_them_empty() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let dir = vol
        .fs
        .mkdir(ROOT_INO, OsStr::new("d"), Posix::default())
        .await
        .unwrap();
    assert_eq!(dir.attr.kind, Kind::Directory);
    assert_eq!(store.get("root/d/").as_deref(), Some(&b""[..]));
    let (_, fh) = vol
        .fs
        .create(dir.attr.ino, OsStr::new("x"), None, Posix::default())
        .await
        .unwrap();
    // Not yet in S3, but the directory is not empty.
    let err = vol.fs.rmdir(ROOT_INO, OsStr::new("d")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    let err = vol.fs.rmdir(ROOT_INO, OsStr::new("d")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    vol.fs.unlink(dir.attr.ino, OsStr::new("x")).await.unwrap();
    vol.fs.rmdir(ROOT_INO, OsStr::new("d")).await.unwrap();
    assert!(store.keys().is_empty(), "{:?}", store.keys());
    assert_eq!(lookup_path(&vol.fs, "d").await, Err(libc::ENOENT));
}

#[tokio::test]
async fn rename_files_and_directories() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/a", "A");
    store.put("root/old", "replaced");
    store.put("root/dir/", "");
    store.put("root/dir/one", "1");
    store.put("root/dir/sub/two", "2");
    let vol = volume(store.clone());
    let root = OsStr::new;
    let a = lookup_path(&vol.fs, "a").await.unwrap();
    vol.fs
        .rename(ROOT_INO, root("a"), ROOT_INO, root("old"), 0)
        .await
        .unwrap();
    assert_eq!(store.get("root/old").as_deref(), Some(&b"A"[..]));
    assert_eq!(store.get("root/a"), None);
    // The inode moved with the name, and reads the copy (whose ETag is new).
    assert_eq!(lookup_path(&vol.fs, "old").await, Ok(a));
    assert_eq!(read_all(&vol.fs, a, 4096).await, b"A");

    // RENAME_NOREPLACE refuses an existing target; RENAME_EXCHANGE is not possible.
    store.put("root/b", "B");
    let err = vol
        .fs
        .rename(ROOT_INO, root("b"), ROOT_INO, root("old"), 1)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EEXIST);
    let err = vol
        .fs
        .rename(ROOT_INO, root("b"), ROOT_INO, root("old"), 2)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EINVAL);

    let dir = lookup_path(&vol.fs, "dir").await.unwrap();
    vol.fs
        .rename(ROOT_INO, root("dir"), ROOT_INO, root("moved"), 0)
        .await
        .unwrap();
    let mut keys = store.keys();
    keys.sort();
    assert_eq!(
        keys,
        [
            "root/b",
            "root/moved/",
            "root/moved/one",
            "root/moved/sub/two",
            "root/old"
        ]
    );
    assert_eq!(lookup_path(&vol.fs, "moved").await, Ok(dir));
    let two = lookup_path(&vol.fs, "moved/sub/two").await.unwrap();
    assert_eq!(read_all(&vol.fs, two, 128 * 1024).await, b"2");
    // Into itself: refused before any request.
    let moved = lookup_path(&vol.fs, "moved").await.unwrap();
    let err = vol
        .fs
        .rename(ROOT_INO, root("moved"), moved, root("x"), 0)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EINVAL);
}

#[tokio::test]
async fn renaming_a_file_being_written_uploads_it_under_the_new_name() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new(".swp"), None, Posix::default())
        .await
        .unwrap();
    vol.fs.write(fh, 0, b"draft").await.unwrap();
    let root = OsStr::new;
    vol.fs
        .rename(ROOT_INO, root(".swp"), ROOT_INO, root("doc"), 0)
        .await
        .unwrap();
    vol.fs.write(fh, 5, b" final").await.unwrap();
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert_eq!(store.get("root/doc").as_deref(), Some(&b"draft final"[..]));
    assert_eq!(store.get("root/.swp"), None);
}

/// Runs `fail` against a fresh volume writing `size` bytes to "f" (which held
/// "old" before), and checks the promise: the error reaches close, the old object
/// is untouched and no multipart upload is left behind.
async fn failed_upload(size: usize, op: Operation, nth: usize) {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/f", "old");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = volume(faulty.clone());
    faulty.fail_nth(op, nth, Fault::Error);
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let fh = vol.fs.open(ino, TRUNCATE).await.unwrap();
    write_all(&vol.fs, fh, 0, &pattern(size, 5)).await;
    let err = vol.fs.flush(fh, None).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{op:?}: {err}");
    assert!(format!("{err:#}").contains("injected"), "{err:#}");
    vol.fs.release(fh).await;
    assert_eq!(memory.get("root/f").as_deref(), Some(&b"old"[..]), "{op:?}");
    assert!(memory.pending_uploads().is_empty(), "{op:?} left an upload");
    drop(vol.staging);
}

#[tokio::test]
async fn a_failed_upload_surfaces_on_close_and_leaves_nothing_behind() {
    failed_upload(3 * PART, Operation::UploadPart, 2).await;
    failed_upload(3 * PART, Operation::UploadPart, 3).await;
    failed_upload(3 * PART, Operation::CompleteMultipartUpload, 1).await;
    failed_upload(3 * PART, Operation::CreateMultipartUpload, 1).await;
    failed_upload(100, Operation::PutObject, 1).await;
}

#[tokio::test]
async fn a_failed_copy_leaves_the_source_in_place() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/a", "A");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = volume(faulty.clone());
    faulty.fail_nth(Operation::CopyObject, 1, Fault::Error);
    let root = OsStr::new;
    let err = vol
        .fs
        .rename(ROOT_INO, root("a"), ROOT_INO, root("b"), 0)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EIO);
    assert_eq!(memory.keys(), ["root/a"]);
    // An AccessDenied says so.
    faulty.fail_nth(Operation::CopyObject, 1, Fault::AccessDenied);
    let err = vol
        .fs
        .rename(ROOT_INO, root("a"), ROOT_INO, root("b"), 0)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EACCES);
}

#[tokio::test]
async fn staging_files_leave_no_trace_in_the_cache_directory() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), None, Posix::default())
        .await
        .unwrap();
    vol.fs.write(fh, 0, b"secret data").await.unwrap();
    // Unlinked at creation: nobody can open it by name, and a crash leaves nothing.
    assert_eq!(std::fs::read_dir(vol.staging.path()).unwrap().count(), 0);
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
}

#[tokio::test]
async fn keys_longer_than_s3_allows_are_enametoolong_before_any_request() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let mut dir = ROOT_INO;
    let long = "d".repeat(250);
    for _ in 0..4 {
        dir = vol
            .fs
            .mkdir(dir, OsStr::new(&long), Posix::default())
            .await
            .unwrap()
            .attr
            .ino;
    }
    store.clear_calls();
    // root/ + 4 × 251 bytes + 20: past S3's 1024-byte keys.
    let name = OsStr::new("twenty-bytes-of-name");
    let err = vol
        .fs
        .create(dir, name, None, Posix::default())
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    let err = vol.fs.mkdir(dir, name, Posix::default()).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    assert!(store.calls().is_empty(), "{:?}", store.calls());
}

#[tokio::test]
async fn an_unlinked_open_file_has_no_links_and_still_works() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), None, Posix::default())
        .await
        .unwrap();
    assert_eq!(entry.attr.nlink, 1);
    vol.fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    assert_eq!(vol.fs.getattr(entry.attr.ino).await.unwrap().attr.nlink, 0);
    vol.fs.write(fh, 0, b"still here").await.unwrap();
    assert_eq!(&vol.fs.read(fh, 0, 100).await.unwrap()[..], b"still here");
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    assert!(store.keys().is_empty());
}

#[tokio::test]
async fn objects_above_the_single_copy_limit_are_renamed_part_by_part() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(5 * PART + 7, 9);
    store.put("root/huge", data.clone());
    let vol = volume(store.clone());
    let root = OsStr::new;
    vol.fs
        .rename(ROOT_INO, root("huge"), ROOT_INO, root("moved"), 0)
        .await
        .unwrap();
    assert!(store.get("root/moved").unwrap() == data);
    assert_eq!(store.get("root/huge"), None);
    let moved = lookup_path(&vol.fs, "moved").await.unwrap();
    assert!(read_all(&vol.fs, moved, 1 << 20).await == data);
    // Copy parts of the limit's size (10 MiB here): 25 MiB in three.
    assert_eq!(store.count_calls(Operation::UploadPartCopy), 3);
    assert_eq!(store.count_calls(Operation::CopyObject), 0);
    assert!(store.pending_uploads().is_empty());
}

#[tokio::test]
async fn writes_that_need_no_download_complete_without_waiting() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/old", "old content");
    let vol = volume(store.clone());
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("new"), None, Posix::default())
        .await
        .unwrap();
    assert_eq!(vol.fs.write_now(fh, 0, b"now", 0).unwrap().unwrap(), 3);
    // An existing object must be downloaded before it is changed: not now.
    let old = lookup_path(&vol.fs, "old").await.unwrap();
    let fh2 = vol.fs.open(old, WRITE).await.unwrap();
    assert!(vol.fs.write_now(fh2, 0, b"x", 0).is_none());
    vol.fs.write(fh2, 0, b"O").await.unwrap();
    assert_eq!(vol.fs.write_now(fh2, 1, b"LD", 0).unwrap().unwrap(), 2);
    for fh in [fh, fh2] {
        vol.fs.flush(fh, None).await.unwrap();
        vol.fs.release(fh).await;
    }
    assert_eq!(store.get("root/new").as_deref(), Some(&b"now"[..]));
    assert_eq!(store.get("root/old").as_deref(), Some(&b"OLD content"[..]));
}

#[tokio::test]
async fn directory_renames_past_the_bound_or_the_key_limit_send_no_copy() {
    let store = Arc::new(MemoryStore::new("bkt"));
    for i in 0..1001 {
        store.put(&format!("root/many/f{i:04}"), "x");
    }
    store.put(&format!("root/deep/{}", "n".repeat(1000)), "x");
    let vol = volume(store.clone());
    let root = OsStr::new;
    lookup_path(&vol.fs, "many").await.unwrap();
    lookup_path(&vol.fs, "deep").await.unwrap();
    store.clear_calls();
    // More than 1000 objects: EXDEV, and mv copies file by file itself.
    let err = vol
        .fs
        .rename(ROOT_INO, root("many"), ROOT_INO, root("moved"), 0)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::EXDEV);
    // A longer name would push a key past S3's 1024 bytes.
    let err = vol
        .fs
        .rename(ROOT_INO, root("deep"), ROOT_INO, root(&"d".repeat(40)), 0)
        .await;
    assert_eq!(err.unwrap_err().errno(), libc::ENAMETOOLONG);
    assert_eq!(store.count_calls(Operation::CopyObject), 0);
    assert_eq!(store.count_calls(Operation::DeleteObject), 0);
    assert_eq!(store.keys().len(), 1002);
}

/// A volume over `root/f` (1000 bytes) with a handle open on it for writing,
/// whose first write, of `data` at `offset`, is under way: the first change
/// downloads the object, that GET answers 400 ms late (with `then`, if given,
/// instead of the object), and the file is busy until it ends. 100 ms into it.
struct Downloading {
    memory: Arc<MemoryStore>,
    vol: Arc<Volume>,
    ino: u64,
    fh: u64,
    write: tokio::task::JoinHandle<s3vol::fs::FsResult<u32>>,
}

async fn a_first_write_downloading(
    offset: u64,
    data: &'static [u8],
    then: Option<Fault>,
) -> Downloading {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/f", pattern(1000, 1));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = Arc::new(volume(faulty.clone()));
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    faulty.fail_nth(
        Operation::GetObject,
        1,
        Fault::Delay(Duration::from_millis(400)),
    );
    if let Some(fault) = then {
        faulty.fail_nth(Operation::GetObject, 1, fault);
    }
    let write = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.fs.write(fh, offset, data).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    Downloading {
        memory,
        vol,
        ino,
        fh,
        write,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_racing_a_stop_fails_instead_of_answering_done() {
    let Downloading {
        memory,
        vol,
        fh,
        write: writer,
        ..
    } = a_first_write_downloading(0, b"new", None).await;
    // fsync starts before the stop, and waits for the download; the stop comes
    // while it waits.
    let sync = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.fs.fsync(fh).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lost = vol.fs.stop(Duration::from_secs(10)).await;
    writer.await.unwrap().unwrap();
    let synced = sync.await.unwrap();
    assert_eq!(
        synced.map_err(|e| e.errno()),
        Err(libc::ENOTCONN),
        "fsync answered for a file whose upload the stop abandoned"
    );
    assert_eq!(lost, ["root/f"]);
    assert_eq!(memory.get("root/f").unwrap(), pattern(1000, 1));
    assert!(memory.pending_uploads().is_empty());
}

/// A truncation to nothing while the first write's download of the object
/// is under way: the old bytes that download brings never come back, neither
/// over a write after the truncation nor in the gap before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_during_the_download_of_the_object_leaves_none_of_it() {
    let Downloading {
        memory,
        vol,
        ino,
        fh: first,
        write: writer,
    } = a_first_write_downloading(5, b"x", None).await;
    let second = vol.fs.open(ino, TRUNCATE).await.unwrap();
    write_all(&vol.fs, second, 10, b"new").await;
    writer.await.unwrap().unwrap();
    // The first write lands after the truncation, whose download it waited
    // for: nothing of the download is left.
    let content = read_all(&vol.fs, ino, 4096).await;
    assert_eq!(content, b"\0\0\0\0\0x\0\0\0\0new", "old bytes came back");
    vol.fs.flush(second, None).await.unwrap();
    vol.fs.release(first).await;
    vol.fs.release(second).await;
    assert_eq!(memory.get("root/f").unwrap(), content);
}

/// The same truncation, and the download it made needless then fails: the
/// write that started the download goes on, since it no longer needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_fails_after_a_truncation_fails_no_write() {
    let Downloading {
        memory,
        vol,
        ino,
        fh: first,
        write: writer,
    } = a_first_write_downloading(5, b"x", Some(Fault::AccessDenied)).await;
    let second = vol.fs.open(ino, TRUNCATE).await.unwrap();
    let written = writer.await.unwrap();
    assert_eq!(
        memory.count_calls(Operation::GetObject),
        0,
        "the download's GET was the one refused"
    );
    assert_eq!(
        written.map_err(|e| e.errno()),
        Ok(1),
        "the write failed for a download it no longer needed"
    );
    let content = read_all(&vol.fs, ino, 4096).await;
    assert_eq!(content, b"\0\0\0\0\0x");
    vol.fs.flush(first, None).await.unwrap();
    vol.fs.release(first).await;
    vol.fs.release(second).await;
    assert_eq!(memory.get("root/f").unwrap(), content);
}

/// Without the truncation, the failed download fails the write that needed
/// it; the next write downloads the object again, and what is published is
/// the object with that write alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_fails_fails_the_write_that_needs_it() {
    let Downloading {
        memory,
        vol,
        fh,
        write: writer,
        ..
    } = a_first_write_downloading(5, b"x", Some(Fault::AccessDenied)).await;
    let written = writer.await.unwrap();
    assert_eq!(written.map_err(|e| e.errno()), Err(libc::EACCES));
    assert_eq!(memory.get("root/f").unwrap(), pattern(1000, 1));
    write_all(&vol.fs, fh, 7, b"y").await;
    vol.fs.flush(fh, None).await.unwrap();
    vol.fs.release(fh).await;
    let mut expected = pattern(1000, 1).to_vec();
    expected[7] = b'y';
    assert_eq!(memory.get("root/f").unwrap(), expected);
}

#[tokio::test]
async fn only_the_opener_s_close_after_a_write_publishes() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = volume(store.clone());
    let (opener, child) = (Some(100), Some(200));
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), opener, Posix::default())
        .await
        .unwrap();
    // The creator's close before anything was written (a shell's dup2, say):
    // the new empty file, which replaces nothing.
    vol.fs.flush(fh, opener).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b""[..]);
    write_all(&vol.fs, fh, 0, b"partial").await;
    // A forked child's close of its copy: nothing, though the file was written.
    vol.fs.flush(fh, child).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b""[..]);
    write_all(&vol.fs, fh, 7, b" and whole").await;
    // The opener's close, after it wrote: durable when it returns.
    vol.fs.flush(fh, opener).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b"partial and whole"[..]);
    vol.fs.release(fh).await;
    assert_eq!(store.count_calls(Operation::PutObject), 2);

    // An existing file opened with O_TRUNC and closed by its opener before a
    // write: the object stays as it was until the opener writes and closes.
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let flags = s3vol::fs::OpenFlags {
        process: opener,
        ..TRUNCATE
    };
    let fh = vol.fs.open(ino, flags).await.unwrap();
    vol.fs.flush(fh, opener).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b"partial and whole"[..]);
    write_all(&vol.fs, fh, 0, b"next").await;
    vol.fs.flush(fh, opener).await.unwrap();
    assert_eq!(store.get("root/f").unwrap(), &b"next"[..]);
    vol.fs.release(fh).await;
}

#[tokio::test]
async fn the_last_release_uploads_what_no_close_did() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/f", "old content");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = volume(faulty.clone());
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    // Opened by one process, written and closed only by another: the closes
    // publish nothing, the release does.
    let flags = s3vol::fs::OpenFlags {
        process: Some(1),
        ..TRUNCATE
    };
    let fh = vol.fs.open(ino, flags).await.unwrap();
    write_all(&vol.fs, fh, 0, b"new").await;
    vol.fs.flush(fh, Some(2)).await.unwrap();
    assert_eq!(memory.get("root/f").unwrap(), &b"old content"[..]);
    vol.fs.release(fh).await;
    assert_eq!(memory.get("root/f").unwrap(), &b"new"[..]);

    // An upload that failed at a close, which reported it, is not tried again
    // when the handle is released.
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    write_all(&vol.fs, fh, 0, b"NEW").await;
    faulty.fail_nth(Operation::PutObject, 1, Fault::AccessDenied);
    let puts = memory.count_calls(Operation::PutObject);
    assert_eq!(
        vol.fs.flush(fh, None).await.unwrap_err().errno(),
        libc::EACCES
    );
    vol.fs.release(fh).await;
    assert_eq!(memory.count_calls(Operation::PutObject), puts);
    assert_eq!(memory.get("root/f").unwrap(), &b"new"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_up_on_stuck_uploads_at_its_deadline_all_at_once() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = Arc::new(volume(faulty.clone()));
    // Three files whose uploads hang in PutObject, each holding its file.
    faulty.fail_all(Operation::PutObject, Fault::Delay(Duration::from_secs(30)));
    let mut syncs = Vec::new();
    for name in ["a", "b", "c"] {
        let (_, fh) = vol
            .fs
            .create(ROOT_INO, OsStr::new(name), None, Posix::default())
            .await
            .unwrap();
        write_all(&vol.fs, fh, 0, b"data").await;
        let vol = vol.clone();
        syncs.push(tokio::spawn(async move { vol.fs.fsync(fh).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut lost = vol.fs.stop(Duration::from_millis(500)).await;
    let took = started.elapsed();
    lost.sort();
    assert_eq!(lost, ["root/a", "root/b", "root/c"]);
    assert!(
        took < Duration::from_secs(2),
        "three stuck files took {took:?}: abandoned one after the other, or past the deadline"
    );
    for sync in syncs {
        sync.abort();
    }
}

/// A stop while another is abandoning the files (the session ending as its
/// last file closes, during a stop signal's abandoning) returns only once
/// they are abandoned, and names what was lost: a daemon that exits on the
/// first to return would leave the other's aborts undone and its losses
/// unreported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_waits_for_the_first_and_names_what_it_lost() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = Arc::new(volume(faulty.clone()));
    faulty.fail_all(
        Operation::UploadPart,
        Fault::Delay(Duration::from_millis(500)),
    );
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), None, Posix::default())
        .await
        .unwrap();
    // Past the first part: its upload starts, and hangs.
    write_all(&vol.fs, fh, 0, &pattern(PART + MIB, 1)).await;
    let first = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.fs.stop(Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = vol.fs.stop(Duration::from_secs(3)).await;
    assert!(
        memory.pending_uploads().is_empty(),
        "the second stop returned while the first was still abandoning the file"
    );
    assert_eq!(second, ["root/f"]);
    assert_eq!(first.await.unwrap(), ["root/f"]);
}

/// A stop while the last release of a file is closing it (here, what a
/// writer killed by a signal left: its part uploads waited for, its upload
/// aborted) waits for that close: the session of a detached volume ends with
/// that release, and a daemon that exits on the stop's return would leave the
/// upload in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_close_of_a_file_already_released() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = Arc::new(volume(faulty.clone()));
    faulty.fail_all(Operation::UploadPart, Fault::Delay(Duration::from_secs(2)));
    let (_, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), Some(7), Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, fh, 0, &pattern(PART + MIB, 1)).await;
    vol.fs.close_by_killed_process(fh, Some(7), libc::SIGKILL);
    let release = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.fs.release(fh).await })
    };
    let began = || !memory.pending_uploads().is_empty();
    assert!(
        common::wait_until_async(Duration::from_secs(1), began).await,
        "no part upload began"
    );
    // The release, with nothing to publish, is at once waiting in the close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What a killed writer left is not lost: it was never to be uploaded.
    assert_eq!(
        vol.fs.stop(Duration::from_secs(3)).await,
        Vec::<String>::new()
    );
    assert!(
        memory.pending_uploads().is_empty(),
        "the stop returned while the released file's upload was still being aborted"
    );
    release.await.unwrap();
    assert!(memory.get("root/f").is_none());
}

/// Once stopped, the volume changes nothing more: a file created or opened for
/// writing in the moment before the connection ends would never be uploaded nor
/// abandoned (its parts left behind, its loss unreported).
#[tokio::test]
async fn after_a_stop_nothing_is_created_or_changed() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/existing", pattern(PART + 10, 1));
    store.put("root/dir/", Vec::new());
    let vol = volume(store.clone());
    let ino = lookup_path(&vol.fs, "existing").await.unwrap();
    let dir = lookup_path(&vol.fs, "dir").await.unwrap();
    assert_eq!(
        vol.fs.stop(Duration::from_secs(1)).await,
        Vec::<String>::new()
    );
    let stopped = |result: Result<(), s3vol::fs::FsError>, what: &str| {
        assert_eq!(result.map_err(|e| e.errno()), Err(libc::ENOTCONN), "{what}");
    };
    stopped(
        vol.fs
            .create(ROOT_INO, OsStr::new("new"), None, Posix::default())
            .await
            .map(drop),
        "create",
    );
    stopped(vol.fs.open(ino, WRITE).await.map(drop), "open for writing");
    stopped(
        vol.fs.open(ino, TRUNCATE).await.map(drop),
        "open with O_TRUNC",
    );
    stopped(
        vol.fs
            .setattr(ino, Some(0), Posix::default(), None)
            .await
            .map(drop),
        "truncate",
    );
    stopped(
        vol.fs
            .mkdir(ROOT_INO, OsStr::new("d"), Posix::default())
            .await
            .map(drop),
        "mkdir",
    );
    stopped(
        vol.fs.unlink(ROOT_INO, OsStr::new("existing")).await,
        "unlink",
    );
    stopped(vol.fs.rmdir(ROOT_INO, OsStr::new("dir")).await, "rmdir");
    stopped(
        vol.fs
            .rename(
                ROOT_INO,
                OsStr::new("existing"),
                dir,
                OsStr::new("moved"),
                0,
            )
            .await,
        "rename",
    );
    // Reading still works while the connection lasts.
    assert_eq!(read_all(&vol.fs, ino, 4096).await, pattern(PART + 10, 1));
    let mut keys: Vec<String> = store.keys();
    keys.sort();
    assert_eq!(keys, ["root/dir/", "root/existing"]);
    assert!(store.pending_uploads().is_empty());
}

#[tokio::test]
async fn files_being_written_stay_within_the_staging_bound() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/existing", pattern(6000, 1));
    let vol = volume_with_staging(store.clone(), 10_000);
    let (_, a) = vol
        .fs
        .create(ROOT_INO, OsStr::new("a"), None, Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, a, 0, &pattern(8000, 2)).await;
    let (_, b) = vol
        .fs
        .create(ROOT_INO, OsStr::new("b"), None, Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, b, 0, &pattern(2000, 3)).await;
    // One more byte than the bound: ENOSPC, and nothing of it staged.
    let past = vol.fs.write(b, 2000, b"x").await.unwrap_err();
    assert_eq!(past.errno(), libc::ENOSPC);
    assert!(past.to_string().contains("--staging-size"), "{past}");
    // Changing an existing object stages all of it first: refused too.
    let ino = lookup_path(&vol.fs, "existing").await.unwrap();
    let fh = vol.fs.open(ino, WRITE).await.unwrap();
    assert_eq!(
        vol.fs.write(fh, 0, b"y").await.unwrap_err().errno(),
        libc::ENOSPC
    );
    vol.fs.release(fh).await;
    // What was written within the bound is whole in S3 once closed, and the
    // space it took comes back.
    vol.fs.flush(a, None).await.unwrap();
    vol.fs.release(a).await;
    assert_eq!(store.get("root/a").unwrap(), pattern(8000, 2));
    write_all(&vol.fs, b, 2000, &pattern(7000, 4)).await;
    vol.fs.flush(b, None).await.unwrap();
    vol.fs.release(b).await;
    let mut want = pattern(2000, 3);
    want.extend(pattern(7000, 4));
    assert_eq!(store.get("root/b").unwrap(), want);
    assert_eq!(store.get("root/existing").unwrap(), pattern(6000, 1));
}

/// truncate(2) of a file whose last release is uploading it: the truncation is
/// uploaded too, not lost when the release lets the staged file go.
#[tokio::test]
async fn a_truncate_during_the_last_release_s_upload_is_uploaded() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let vol = volume(faulty.clone());
    let (entry, fh) = vol
        .fs
        .create(ROOT_INO, OsStr::new("f"), Some(100), Posix::default())
        .await
        .unwrap();
    write_all(&vol.fs, fh, 0, &pattern(1000, 1)).await;
    // Closed by another process than the opener: the release uploads it, slowly.
    vol.fs.flush(fh, Some(200)).await.unwrap();
    faulty.fail_nth(
        Operation::PutObject,
        1,
        Fault::Delay(Duration::from_millis(300)),
    );
    let fs = &vol.fs;
    let release = fs.release(fh);
    let truncate = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fs.setattr(entry.attr.ino, Some(10), Posix::default(), None)
            .await
    };
    let ((), truncated) = tokio::join!(release, truncate);
    assert_eq!(truncated.unwrap().attr.size, 10);
    assert_eq!(memory.get("root/f").unwrap(), pattern(1000, 1)[..10]);
    assert!(memory.pending_uploads().is_empty());
}
