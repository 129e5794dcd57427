//! A worker taking over from one that died, on the in-memory store: the
//! second filesystem reads the first one's journal and answers for the same
//! inode and handle numbers.

use std::ffi::OsStr;
use std::sync::Arc;

use crate::common;

use common::fs::{READ, lookup_path};
use common::pattern;
use s3vol::fs::posix::Posix;
use s3vol::fs::{Fs, FsConfig, ROOT_INO, WriteConfig};
use s3vol::journal::{self, Journal};
use s3vol::local_dir::LocalDir;
use s3vol::store::ObjectStore;
use s3vol::store::journaled::JournaledStore;
use s3vol::store::memory::MemoryStore;

const MIB: usize = 1024 * 1024;

/// A read-write volume at `root/` of `store` that keeps the journal in `fd`;
/// what the journal held when it was opened.
fn worker(
    store: &Arc<MemoryStore>,
    fd: &std::os::fd::OwnedFd,
    staging: &tempfile::TempDir,
) -> (Fs, journal::Carried) {
    worker_on(store.clone(), fd, staging)
}

/// A worker on `store` (a wrapper of the bucket, say), keeping the journal in
/// `fd`.
fn worker_on(
    store: Arc<dyn ObjectStore>,
    fd: &std::os::fd::OwnedFd,
    staging: &tempfile::TempDir,
) -> (Fs, journal::Carried) {
    let (journal, carried) = Journal::open(fd.try_clone().unwrap()).unwrap();
    let journal = Arc::new(journal);
    let store: Arc<dyn ObjectStore> = Arc::new(JournaledStore::new(store, journal.clone()));
    let config = FsConfig {
        write: Some(WriteConfig {
            part_size: 5 * MIB as u64,
            ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
        }),
        ..FsConfig::default()
    };
    let fs = Fs::new(store, "root/", config);
    fs.keep_journal(journal);
    (fs, carried)
}

#[tokio::test]
async fn a_new_worker_answers_for_the_numbers_the_dead_one_gave() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let content = pattern(3 * MIB, 7);
    store.put("root/a/file", content.clone());
    for i in 0..20 {
        store.put(&format!("root/a/n{i:02}"), "x");
    }
    let fd = journal::create().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (first, carried) = worker(&store, &fd, &staging);
    assert_eq!(carried, journal::Carried::default());

    // What the kernel learns from the first worker.
    let dir = lookup_path(&first, "a").await.unwrap();
    let file = lookup_path(&first, "a/file").await.unwrap();
    let listing = first.opendir(dir).await.unwrap();
    let seen = first.readdir(listing, 0).unwrap();
    let reader = first.open(file, READ).await.unwrap();
    let head = first.read(reader, 0, MIB as u32).await.unwrap();
    assert_eq!(&head[..], &content[..MIB]);
    let (_, writer) = first
        .create(dir, OsStr::new("new"), None, Posix::default())
        .await
        .unwrap();
    // More than a part: a multipart upload is under way.
    for (i, chunk) in pattern(7 * MIB, 8).chunks(MIB).enumerate() {
        first.write(writer, (i * MIB) as u64, chunk).await.unwrap();
    }
    let uploads = || store.pending_uploads();
    for _ in 0..100 {
        if !uploads().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(uploads(), ["root/a/new"]);
    // The first worker dies: nothing of it is used again.
    std::mem::forget(first);

    let (second, carried) = worker(&store, &fd, &staging);
    let adopted = second.adopt(carried).await;
    assert_eq!(adopted.handles, 2, "{adopted:?}");
    assert_eq!(adopted.lost, 1, "{adopted:?}");
    assert_eq!(adopted.uploads_aborted, 1, "{adopted:?}");
    assert!(uploads().is_empty(), "the dead worker's upload was aborted");

    // The same numbers name the same things.
    assert_eq!(
        second.getattr(file).await.unwrap().attr.size,
        content.len() as u64
    );
    assert_eq!(lookup_path(&second, "a/file").await.unwrap(), file);
    assert_eq!(lookup_path(&second, "a").await.unwrap(), dir);
    // The listing goes on from where it was, with the same entries.
    let rest = second.readdir(listing, 5).unwrap();
    assert_eq!(
        rest.iter().map(|e| (&e.name, e.ino)).collect::<Vec<_>>(),
        seen[5..]
            .iter()
            .map(|e| (&e.name, e.ino))
            .collect::<Vec<_>>()
    );
    // The read goes on, pinned to the same version.
    let tail = second
        .read(reader, MIB as u64, 2 * MIB as u32)
        .await
        .unwrap();
    assert_eq!(&tail[..], &content[MIB..]);
    // The file being written is lost: EIO, and nothing in S3.
    let errno = |e: s3vol::fs::FsError| e.errno();
    assert_eq!(
        second.write(writer, 0, b"more").await.map_err(errno),
        Err(libc::EIO)
    );
    assert_eq!(
        second.flush(writer, None).await.map_err(errno),
        Err(libc::EIO)
    );
    second.release(writer).await;
    assert!(store.get("root/a/new").is_none());
    assert_eq!(lookup_path(&second, "a/new").await, Err(libc::ENOENT));
    // Numbers given out from now on are new ones.
    let (entry, fh) = second
        .create(ROOT_INO, OsStr::new("later"), None, Posix::default())
        .await
        .unwrap();
    assert!(entry.attr.ino > file && entry.attr.ino > dir);
    assert!(fh > writer && fh > reader && fh > listing);

    // A third worker sees what the second changed.
    second.release(reader).await;
    second.releasedir(listing);
    std::mem::forget(second);
    let (third, carried) = worker(&store, &fd, &staging);
    let adopted = third.adopt(carried).await;
    assert_eq!((adopted.handles, adopted.lost), (0, 1), "{adopted:?}");
    assert_eq!(
        third.write(fh, 0, b"x").await.map_err(errno),
        Err(libc::EIO)
    );
}

/// A worker dies after a close made a file durable but before the kernel's
/// release reached it: the handle is lost with the worker, its changes are
/// not (they are in S3), so they are not reported lost. A handle that wrote
/// after its last upload is.
#[tokio::test]
async fn a_handle_whose_changes_are_in_s3_loses_nothing_with_its_worker() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/old", "old content");
    let fd = journal::create().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (first, _) = worker(&store, &fd, &staging);
    // Written and flushed (close), not released: in S3, and nothing after.
    let (_, closed) = first
        .create(ROOT_INO, OsStr::new("closed"), None, Posix::default())
        .await
        .unwrap();
    first.write(closed, 0, b"durable").await.unwrap();
    first.flush(closed, None).await.unwrap();
    // Opened on an object and never written.
    let old = lookup_path(&first, "old").await.unwrap();
    let untouched = first.open(old, common::fs::WRITE).await.unwrap();
    // Flushed, then written again: that change is lost.
    let (_, rewritten) = first
        .create(ROOT_INO, OsStr::new("rewritten"), None, Posix::default())
        .await
        .unwrap();
    first.write(rewritten, 0, b"first").await.unwrap();
    first.flush(rewritten, None).await.unwrap();
    first.write(rewritten, 0, b"second").await.unwrap();
    std::mem::forget(first);

    let (second, carried) = worker(&store, &fd, &staging);
    let adopted = second.adopt(carried).await;
    assert_eq!(adopted.lost, 3, "{adopted:?}");
    assert_eq!(adopted.lost_keys, ["root/rewritten"], "{adopted:?}");
    assert_eq!(store.get("root/closed").as_deref(), Some(&b"durable"[..]));
    assert_eq!(store.get("root/rewritten").as_deref(), Some(&b"first"[..]));
    // An open's O_TRUNC comes after it, as a truncation by name, which the
    // kernel sends the new worker: it fails while the lost handle is open,
    // and S3 keeps what it held.
    let truncation = second.setattr(old, Some(0), Posix::default(), None).await;
    assert_eq!(truncation.unwrap_err().errno(), libc::EIO);
    // So does ftruncate(2) through the lost handle.
    let truncation = second
        .setattr(old, Some(0), Posix::default(), Some(untouched))
        .await;
    assert_eq!(truncation.unwrap_err().errno(), libc::EIO);
    assert_eq!(store.get("root/old").as_deref(), Some(&b"old content"[..]));
    // Past the moments after the takeover, a truncation by name is no lost
    // open's: it is made, though the lost handle is not yet released (one
    // the kernel never knew never would be).
    tokio::time::sleep(std::time::Duration::from_millis(10_100)).await;
    second
        .setattr(old, Some(0), Posix::default(), None)
        .await
        .unwrap();
    assert_eq!(store.get("root/old").as_deref(), Some(&b""[..]));
    for fh in [closed, untouched, rewritten] {
        second.release(fh).await;
    }
}

/// Two opens for writing of one file at once: the second shares the first's
/// staged file, and what the journal says of it is the shared file's state,
/// never that of the one the second open made and dropped. A write through
/// the first, acknowledged, is named lost when the worker dies.
#[tokio::test]
async fn opens_racing_to_stage_a_file_never_hide_a_write() {
    use s3vol::store::Operation;
    use s3vol::store::faulty::{Fault, FaultyStore};
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "old");
    let fd = journal::create().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let (first, _) = worker_on(faulty.clone(), &fd, &staging);
    let ino = lookup_path(&first, "f").await.unwrap();
    // Each open asks S3 what the file is now: the second's answer comes later.
    let late = |ms| Fault::LateAnswer(std::time::Duration::from_millis(ms));
    faulty.fail_nth(Operation::HeadObject, 1, late(50));
    faulty.fail_nth(Operation::HeadObject, 2, late(300));
    let (_writer, other) = tokio::join!(
        async {
            let fh = first.open(ino, common::fs::WRITE).await.unwrap();
            first.write(fh, 0, b"new").await.unwrap();
            fh
        },
        first.open(ino, common::fs::WRITE),
    );
    other.unwrap();
    std::mem::forget(first);

    let (second, carried) = worker(&store, &fd, &staging);
    let adopted = second.adopt(carried).await;
    assert_eq!(adopted.lost_keys, ["root/f"], "{adopted:?}");
}

/// A worker that asked S3 for a multipart upload and died before it heard the
/// answer leaves an upload whose ID no one recorded: the next worker finds
/// uploads of that key begun since it asked and aborts them, leaves other
/// keys' uploads alone, and records that it looked, so a third never looks
/// again.
#[tokio::test]
async fn an_upload_asked_for_and_never_answered_is_found_and_aborted() {
    use s3vol::journal::Record;
    use s3vol::store::ObjectHeaders;
    let store = Arc::new(MemoryStore::new("bkt"));
    let fd = journal::create().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(fd.try_clone().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    journal.record(&Record::UploadStarting {
        key: "root/big".into(),
        at: now,
    });
    // S3 began it; the answer never reached the journal.
    let headers = ObjectHeaders::default();
    let lost = store
        .create_multipart_upload("root/big", &headers)
        .await
        .unwrap();
    let other = store
        .create_multipart_upload("root/other", &headers)
        .await
        .unwrap();
    drop(journal);

    let (second, carried) = worker(&store, &fd, &staging);
    assert!(carried.starting.contains_key("root/big"), "{carried:?}");
    let adopted = second.adopt(carried).await;
    assert_eq!(adopted.uploads_aborted, 1, "{adopted:?}");
    let left: Vec<String> = store
        .list_multipart_uploads("root/")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(
        left,
        [other],
        "only the unanswered upload of the key asked for went"
    );
    assert!(!left.contains(&lost));
    std::mem::forget(second);

    let (_third, carried) = worker(&store, &fd, &staging);
    assert!(carried.starting.is_empty(), "looked for once: {carried:?}");
}
