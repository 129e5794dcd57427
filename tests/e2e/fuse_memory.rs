//! The kernel path without a server: the FUSE adapter mounted over the memory
//! store in this process, driven with real system calls (open, read, pread,
//! write, rename, unlink, mkdir, rmdir, getxattr, ioctl). What the kernel sends
//! and what `fuse/` answers are tested here; what each answer means for S3 is
//! tested on `Fs` directly in the fs_* tests.
//!
//! Nothing here starts a process: a child would inherit the test's open files,
//! and its exit would close them behind the test's back (see common/fuse.rs).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::fuse::{MemoryMount, PART};
use common::pattern;
use s3vol::control::{self, STATS};
use s3vol::fs::FsConfig;
use s3vol::store::faulty::{Fault, FaultyStore};
use s3vol::store::memory::MemoryStore;
use s3vol::store::{ObjectStore, Operation};

const MIB: usize = 1 << 20;

/// Every answer from S3 is asked for again: the tests change the bucket behind
/// the volume's back.
fn fresh() -> FsConfig {
    FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("not an OS error: {e}"))
}

fn sorted_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn reads_lists_and_stats_through_the_kernel() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let big = pattern(3 * PART as usize + 12_345, 7);
    store.put("root/small.txt", "hello, kernel\n");
    store.put("root/data/big.bin", big.clone());
    store.put("root/data/deep/x", "x");
    store.put("elsewhere/y", "not in the volume");
    let vol = MemoryMount::read_only(store.clone(), fresh());

    assert_eq!(sorted_names(vol.path()), ["data", "small.txt"]);
    assert_eq!(sorted_names(&vol.join("data")), ["big.bin", "deep"]);
    assert_eq!(
        fs::read_to_string(vol.join("small.txt")).unwrap(),
        "hello, kernel\n"
    );
    let meta = fs::metadata(vol.join("data/big.bin")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), big.len() as u64);
    assert!(fs::metadata(vol.join("data/deep")).unwrap().is_dir());

    // Sequential, then random reads, then past the end.
    assert_eq!(fs::read(vol.join("data/big.bin")).unwrap(), big);
    let file = File::open(vol.join("data/big.bin")).unwrap();
    for offset in [
        0,
        1,
        PART as usize - 3,
        2 * PART as usize + 99,
        big.len() - 10,
    ] {
        let mut buf = vec![0; 4096];
        let n = file.read_at(&mut buf, offset as u64).unwrap();
        assert_eq!(&buf[..n], &big[offset..(offset + 4096).min(big.len())]);
    }
    let mut buf = [0u8; 16];
    assert_eq!(file.read_at(&mut buf, big.len() as u64 + 5).unwrap(), 0);

    // The statistics report comes back through the ioctl on the root only.
    let root = File::open(vol.path()).unwrap();
    let report = control::ask(&root, STATS, None).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["mode"], "read-only");
    assert!(report["requests"]["GetObject"].as_u64().unwrap() > 0);
    assert_eq!(
        control::ask(&file, STATS, None).unwrap_err(),
        nix::errno::Errno::ENOTTY
    );
}

#[test]
fn a_read_only_volume_refuses_every_change_and_sends_nothing() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "data");
    store.put("root/d/", "");
    let vol = MemoryMount::read_only(store.clone(), fresh());
    store.clear_calls();
    let erofs = |result: std::io::Result<()>| assert_eq!(errno(result.unwrap_err()), libc::EROFS);
    erofs(fs::write(vol.join("f"), "new").map(drop));
    erofs(fs::write(vol.join("new"), "new").map(drop));
    erofs(fs::remove_file(vol.join("f")));
    erofs(fs::create_dir(vol.join("e")));
    erofs(fs::remove_dir(vol.join("d")));
    erofs(fs::rename(vol.join("f"), vol.join("g")));
    erofs(std::os::unix::fs::symlink("f", vol.join("link")));
    assert!(
        store.calls().iter().all(|c| !c.op.mutates()),
        "{:?}",
        store.calls()
    );
    assert_eq!(fs::read(vol.join("f")).unwrap(), b"data");
}

#[test]
fn writes_reach_the_bucket_when_closed() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let vol = MemoryMount::read_write(store.clone(), fresh());

    // A small file: one PutObject at close.
    fs::write(vol.join("small"), b"one part").unwrap();
    assert_eq!(store.get("root/small").unwrap(), &b"one part"[..]);

    // A file of several parts: uploaded while written, completed at close.
    let big = pattern(2 * PART as usize + MIB + 17, 3);
    let mut file = File::create(vol.join("big")).unwrap();
    for chunk in big.chunks(MIB / 2) {
        file.write_all(chunk).unwrap();
    }
    assert_eq!(store.get("root/big"), None, "nothing visible before close");
    drop(file);
    assert_eq!(store.get("root/big").unwrap(), big);
    assert!(store.count_calls(Operation::UploadPart) >= 3);
    assert_eq!(store.count_calls(Operation::CompleteMultipartUpload), 1);
    assert!(store.pending_uploads().is_empty());

    // Append, overwrite in the middle, truncate: each one a new object at close.
    let mut file = OpenOptions::new()
        .append(true)
        .open(vol.join("small"))
        .unwrap();
    file.write_all(b", appended").unwrap();
    drop(file);
    assert_eq!(store.get("root/small").unwrap(), &b"one part, appended"[..]);
    let mut file = OpenOptions::new()
        .write(true)
        .open(vol.join("small"))
        .unwrap();
    file.seek(SeekFrom::Start(4)).unwrap();
    file.write_all(b"PART").unwrap();
    file.sync_all().unwrap();
    assert_eq!(
        store.get("root/small").unwrap(),
        &b"one PART, appended"[..],
        "fsync makes it durable"
    );
    file.set_len(3).unwrap();
    drop(file);
    assert_eq!(store.get("root/small").unwrap(), &b"one"[..]);

    // Read back through the kernel what was written through it.
    let mut back = Vec::new();
    File::open(vol.join("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, big);
}

#[test]
fn directories_renames_and_unlinks() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/keep", "k");
    let vol = MemoryMount::read_write(store.clone(), fresh());

    fs::create_dir(vol.join("dir")).unwrap();
    assert!(store.get("root/dir/").is_some(), "a marker object");
    fs::write(vol.join("dir/a"), "a").unwrap();
    fs::create_dir(vol.join("dir/sub")).unwrap();
    fs::write(vol.join("dir/sub/b"), "b").unwrap();
    assert_eq!(
        errno(fs::remove_dir(vol.join("dir")).unwrap_err()),
        libc::ENOTEMPTY
    );

    // A file renamed, over an existing one too.
    fs::rename(vol.join("dir/a"), vol.join("a2")).unwrap();
    fs::rename(vol.join("a2"), vol.join("keep")).unwrap();
    assert_eq!(fs::read(vol.join("keep")).unwrap(), b"a");
    // A directory renamed with everything in it.
    fs::rename(vol.join("dir"), vol.join("moved")).unwrap();
    assert_eq!(fs::read(vol.join("moved/sub/b")).unwrap(), b"b");
    assert_eq!(
        errno(fs::metadata(vol.join("dir")).unwrap_err()),
        libc::ENOENT
    );
    let mut keys = store.keys();
    keys.sort();
    assert_eq!(
        keys,
        [
            "root/keep",
            "root/moved/",
            "root/moved/sub/",
            "root/moved/sub/b"
        ]
    );

    fs::remove_file(vol.join("moved/sub/b")).unwrap();
    fs::remove_dir(vol.join("moved/sub")).unwrap();
    fs::remove_dir(vol.join("moved")).unwrap();
    assert_eq!(store.keys(), ["root/keep"]);
    assert_eq!(sorted_names(vol.path()), ["keep"]);
}

#[test]
fn errors_reach_the_application_with_their_errno() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/f", pattern(8 * MIB, 1));
    memory.put("root/d/x", "x");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let vol = MemoryMount::read_write(store, fresh());

    assert_eq!(
        errno(fs::metadata(vol.join("none")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(File::open(vol.join("f/x")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs::remove_file(vol.join("d")).unwrap_err()),
        libc::EISDIR
    );
    let long = "n".repeat(256);
    assert_eq!(
        errno(fs::write(vol.join(&long), "x").unwrap_err()),
        libc::ENAMETOOLONG
    );
    // A symbolic link is made, read and followed by the kernel; a hard link is
    // refused.
    std::os::unix::fs::symlink("f", vol.join("link")).unwrap();
    assert_eq!(fs::read_link(vol.join("link")).unwrap(), Path::new("f"));
    assert!(fs::symlink_metadata(vol.join("link")).unwrap().is_symlink());
    // Followed: what it names is the file.
    assert_eq!(
        fs::metadata(vol.join("link")).unwrap().ino(),
        fs::metadata(vol.join("f")).unwrap().ino()
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("f", vol.join("link")).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs::hard_link(vol.join("f"), vol.join("h")).unwrap_err()),
        libc::EOPNOTSUPP
    );
    // Extended attributes through the kernel: user.* kept, other namespaces
    // refused with EOPNOTSUPP, sizes asked for and buffers too small as
    // getxattr(2) and listxattr(2) say.
    let path = CString::new(vol.join("f").as_os_str().as_bytes()).unwrap();
    let get = |name: &std::ffi::CStr, size: usize| -> Result<Vec<u8>, i32> {
        let mut value = vec![0u8; size];
        // SAFETY: both strings are NUL-terminated and outlive the call, and the
        // buffer is valid for the length given (a null pointer for 0).
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                if size == 0 {
                    std::ptr::null_mut()
                } else {
                    value.as_mut_ptr().cast()
                },
                size,
            )
        };
        match n {
            -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
            n if size == 0 => Ok(vec![0; n as usize]),
            n => Ok(value[..n as usize].to_vec()),
        }
    };
    let set = |name: &std::ffi::CStr, value: &[u8]| -> Result<(), i32> {
        // SAFETY: as above.
        let n = unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        match n {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
        }
    };
    assert_eq!(get(c"user.x", 64), Err(libc::ENODATA));
    set(c"user.x", b"xy").unwrap();
    assert_eq!(get(c"user.x", 64).as_deref(), Ok(&b"xy"[..]));
    assert_eq!(get(c"user.x", 0).map(|v| v.len()), Ok(2));
    assert_eq!(get(c"user.x", 1), Err(libc::ERANGE));
    let mut names = [0u8; 64];
    // SAFETY: as above.
    let n = unsafe { libc::listxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert_eq!(&names[..n as usize], b"user.x\0");
    for name in [
        c"trusted.x",
        c"security.capability",
        c"system.posix_acl_access",
    ] {
        assert_eq!(get(name, 64), Err(libc::EOPNOTSUPP), "{name:?}");
    }
    assert_eq!(set(c"trusted.x", b"1"), Err(libc::EOPNOTSUPP));

    // S3 refuses: EACCES, not EIO.
    faulty.fail_all(Operation::GetObject, Fault::AccessDenied);
    assert_eq!(errno(fs::read(vol.join("f")).unwrap_err()), libc::EACCES);
    faulty.clear();
    faulty.fail_all(Operation::PutObject, Fault::AccessDenied);
    let mut file = File::create(vol.join("denied")).unwrap();
    file.write_all(b"never stored").unwrap();
    assert_eq!(errno(file.sync_all().unwrap_err()), libc::EACCES);
    drop(file);
    assert_eq!(memory.get("root/denied"), None);
    faulty.clear();

    // An object replaced under an open handle: ESTALE, never a mix. (The read
    // jumps far from the first, past anything read ahead.)
    let file = File::open(vol.join("f")).unwrap();
    let mut first = vec![0; 4096];
    file.read_exact_at(&mut first, 0).unwrap();
    memory.put("root/f", pattern(8 * MIB, 2));
    let mut later = vec![0; 4096];
    let result = file.read_exact_at(&mut later, 6 * MIB as u64);
    assert_eq!(
        result.map_err(errno).unwrap_err(),
        libc::ESTALE,
        "a read of the new version through the old handle"
    );
    drop(file);
    assert_eq!(fs::read(vol.join("f")).unwrap(), pattern(8 * MIB, 2));

    // A file past S3's 5 TiB is refused before anything is staged.
    let file = File::create(vol.join("huge")).unwrap();
    assert_eq!(errno(file.set_len(6 << 40).unwrap_err()), libc::EFBIG);
}

#[test]
fn files_tell_what_s3_holds_and_give_urls_through_their_descriptors() {
    use s3vol::control::{INFO, URL, UrlRequest};
    use s3vol::store::UrlMethod;
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/d/f.bin", "twelve bytes");
    let vol = MemoryMount::read_write(store.clone(), fresh());
    let ask = |file: &File, request, url| {
        control::ask(file, request, url)
            .map(|answer| serde_json::from_slice::<serde_json::Value>(&answer).unwrap())
    };
    let get = |secs| UrlRequest {
        method: UrlMethod::Get,
        valid_for: Duration::from_secs(secs),
    };
    let put = UrlRequest {
        method: UrlMethod::Put,
        ..get(60)
    };

    let file = File::open(vol.join("d/f.bin")).unwrap();
    let facts = ask(&file, INFO, None).unwrap();
    assert_eq!(facts["bucket"], "bkt");
    assert_eq!(facts["key"], "root/d/f.bin");
    assert_eq!(facts["size"], 12);
    assert_eq!(facts["etag"], store.etag("root/d/f.bin").unwrap());
    assert_eq!(facts["storage_class"], "STANDARD");

    let url = ask(&file, URL, Some(get(90))).unwrap();
    assert_eq!(url["method"], "GET");
    assert_eq!(url["key"], "root/d/f.bin");
    assert!(
        url["url"]
            .as_str()
            .unwrap()
            .starts_with("memory://bkt/root/d/f.bin?method=GET"),
        "{url}"
    );
    assert!((85..=90).contains(&url["expires_in_secs"].as_u64().unwrap()));
    // A PUT URL needs a descriptor open for writing: the kernel checked that
    // the caller may write the file when it was opened.
    assert_eq!(
        ask(&file, URL, Some(put)).unwrap_err(),
        nix::errno::Errno::EBADF
    );
    let writable = OpenOptions::new()
        .write(true)
        .open(vol.join("d/f.bin"))
        .unwrap();
    let url = ask(&writable, URL, Some(put)).unwrap();
    assert!(url["url"].as_str().unwrap().contains("method=PUT"), "{url}");
    drop(writable);
    assert_eq!(
        store.get("root/d/f.bin").unwrap(),
        "twelve bytes",
        "nothing written"
    );

    // A directory has no object; a file not yet uploaded is not in S3.
    let dir = File::open(vol.join("d")).unwrap();
    assert_eq!(
        ask(&dir, INFO, None).unwrap_err(),
        nix::errno::Errno::EISDIR
    );
    let mut new = File::create(vol.join("d/new")).unwrap();
    new.write_all(b"not yet").unwrap();
    assert_eq!(
        ask(&new, INFO, None).unwrap_err(),
        nix::errno::Errno::ENOENT
    );
    drop(new);
    assert_eq!(
        ask(&File::open(vol.join("d/new")).unwrap(), INFO, None).unwrap()["size"],
        7
    );
    // A request the volume does not know is refused, with no answer.
    assert_eq!(
        control::ask(&file, STATS + 7, None).unwrap_err(),
        nix::errno::Errno::ENOTTY
    );
}

#[test]
fn a_read_only_volume_gives_no_put_url() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/f", "data");
    let vol = MemoryMount::read_only(store, fresh());
    // The kernel refuses the descriptor a PUT URL needs; asked through one open
    // for reading, the volume refuses as read-only before anything else.
    let denied = OpenOptions::new().write(true).open(vol.join("f"));
    assert_eq!(errno(denied.unwrap_err()), libc::EROFS);
    let reader = File::open(vol.join("f")).unwrap();
    let put = s3vol::control::UrlRequest {
        method: s3vol::store::UrlMethod::Put,
        valid_for: Duration::from_secs(60),
    };
    assert_eq!(
        control::ask(&reader, s3vol::control::URL, Some(put)).unwrap_err(),
        nix::errno::Errno::EROFS
    );
    // A GET URL it gives.
    let get = s3vol::control::UrlRequest {
        method: s3vol::store::UrlMethod::Get,
        ..put
    };
    assert!(control::ask(&reader, s3vol::control::URL, Some(get)).is_ok());
}

#[test]
fn the_audit_log_names_every_read_and_change_with_its_caller() {
    use s3vol::audit::AuditLog;
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/old.txt", "old bytes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let config = FsConfig {
        audit: Some(AuditLog::open(&path).unwrap()),
        ..fresh()
    };
    let vol = MemoryMount::read_write(store.clone(), config);

    // One read line per handle, however many reads it makes.
    for _ in 0..2 {
        let mut file = File::open(vol.join("old.txt")).unwrap();
        let mut buf = [0u8; 3];
        file.read_exact(&mut buf).unwrap();
        file.read_exact(&mut buf).unwrap();
    }
    fs::write(vol.join("new.txt"), b"new bytes!").unwrap();
    fs::rename(vol.join("new.txt"), vol.join("moved.txt")).unwrap();
    fs::create_dir(vol.join("d")).unwrap();
    fs::write(vol.join("d/f"), b"").unwrap();
    // A failure the daemon answers is logged with its errno. (A name the kernel
    // already knows to be missing never reaches the daemon.)
    let refused = fs::remove_dir(vol.join("d")).unwrap_err();
    assert_eq!(errno(refused), libc::ENOTEMPTY);
    fs::remove_file(vol.join("d/f")).unwrap();
    fs::remove_dir(vol.join("d")).unwrap();
    fs::remove_file(vol.join("moved.txt")).unwrap();
    vol.fs.close_audit_log();

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary: Vec<(String, String, i64)> = lines
        .iter()
        .map(|l| {
            let text = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            let key = match l.get("to") {
                Some(to) => format!("{} -> {}", text("key"), to.as_str().unwrap()),
                None => text("key"),
            };
            (text("op"), key, l["errno"].as_i64().unwrap())
        })
        .collect();
    let expected = [
        ("read", "root/old.txt", 0),
        ("read", "root/old.txt", 0),
        ("create", "root/new.txt", 0),
        ("write", "root/new.txt", 0),
        ("rename", "root/new.txt -> root/moved.txt", 0),
        ("mkdir", "root/d/", 0),
        ("create", "root/d/f", 0),
        ("write", "root/d/f", 0),
        ("rmdir", "root/d/", libc::ENOTEMPTY as i64),
        ("unlink", "root/d/f", 0),
        ("rmdir", "root/d/", 0),
        ("unlink", "root/moved.txt", 0),
    ];
    let expected: Vec<(String, String, i64)> = expected
        .iter()
        .map(|(op, key, errno)| (op.to_string(), key.to_string(), *errno))
        .collect();
    assert_eq!(summary, expected, "{text}");
    // Each line names this process, which made every call.
    let me = fs::read_to_string("/proc/self/comm").unwrap();
    for line in &lines {
        assert_eq!(line["pid"], std::process::id(), "{line}");
        assert_eq!(line["uid"], nix::unistd::getuid().as_raw(), "{line}");
        assert_eq!(line["command"], me.trim_end(), "{line}");
    }
    assert_eq!(lines[0]["size"], 9);
    assert_eq!(lines[0]["etag"], store.etag("root/old.txt").unwrap());
    assert_eq!(lines[3]["size"], 10);
    assert!(
        lines[3]["etag"].as_str().unwrap().starts_with('"'),
        "{}",
        lines[3]
    );
    let report = control::ask(&File::open(vol.path()).unwrap(), STATS, None).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["audit"]["lines_written"], 12);
    assert_eq!(report["audit"]["lines_dropped"], 0);
}

#[test]
fn a_request_that_panics_is_answered_eio_and_the_volume_goes_on() {
    let memory = Arc::new(MemoryStore::new("bkt"));
    memory.put("root/f", pattern(3 * MIB, 4));
    memory.put("root/g", "g");
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let vol = MemoryMount::read_only(store, fresh());
    // Every GetObject panics, as a bug in the code that sends it would.
    faulty.fail_all(Operation::GetObject, Fault::Panic);
    faulty.fail_all(Operation::HeadObject, Fault::Panic);
    for _ in 0..3 {
        assert_eq!(errno(fs::read(vol.join("f")).unwrap_err()), libc::EIO);
    }
    // Each is counted as an EIO answered (once the task's unwinding, which
    // answered it, has ended).
    let root = fs::File::open(vol.path()).unwrap();
    let eio = || {
        let report: serde_json::Value =
            serde_json::from_slice(&s3vol::control::report(&root).unwrap()).unwrap();
        report["errors_by_errno"]["EIO"].as_u64().unwrap_or(0)
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || eio() >= 3),
        "{}",
        eio()
    );
    faulty.clear();
    // The volume answers as before, on every thread.
    for _ in 0..8 {
        assert_eq!(fs::read(vol.join("f")).unwrap(), pattern(3 * MIB, 4));
        assert_eq!(fs::read(vol.join("g")).unwrap(), b"g");
    }
    assert_eq!(sorted_names(vol.path()), ["f", "g"]);
}
