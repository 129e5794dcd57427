//! End to end: the block cache and `s3vol stats` on the real binary against Garage.

use crate::common;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, Server, ServerKind, pattern, s3vol, unmount, wait_until};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;

fn gets(mount: &Mount) -> u64 {
    gets_of(&mount.stats())
}

fn gets_of(stats: &serde_json::Value) -> u64 {
    stats["requests"]["GetObject"].as_u64().unwrap()
}

/// Drops the kernel's page cache, so a read reaches the daemon again.
fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The per-mount directories under `cache`/blocks, and the disk space their
/// files take (a version's data file has holes where blocks are missing).
fn cache_dirs(cache: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(cache.join("blocks")) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let path = e.unwrap().path();
            // A block file may be renamed into place or evicted meanwhile.
            let bytes = std::fs::read_dir(&path)
                .unwrap()
                .filter_map(|f| f.ok()?.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum();
            (path, bytes)
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn a_second_read_is_served_from_the_cache_with_no_get() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let data = pattern(40 * MIB + 123, 4);
    server.put(BUCKET, "root/big.bin", data.clone()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let file = mount.path().join("big.bin");

    assert_eq!(std::fs::read(&file).unwrap(), data);
    let first = mount.stats();
    assert!(first["requests"]["GetObject"].as_u64().unwrap() >= 1);
    // The file, and the first 64 KiB the lookup of a name no listing showed asks
    // for (kept only for a file that small).
    assert_eq!(first["bytes_from_s3"], data.len() as u64 + 65536);
    assert_eq!(first["cache"]["enabled"], true);

    // Re-read from the cache: through the daemon, or (its blocks all on
    // disk by then) by the kernel from the cache's file. No GET either way.
    drop_page_cache();
    assert_eq!(std::fs::read(&file).unwrap(), data);
    let second = mount.stats();
    assert_eq!(
        second["requests"]["GetObject"], first["requests"]["GetObject"],
        "no GET for the re-read"
    );
    let from_cache = second["cache"]["bytes_from_cache"].as_u64().unwrap();
    let passed_through = second["passthrough"]["opens"].as_u64().unwrap();
    assert!(
        from_cache >= data.len() as u64 || passed_through == 1,
        "{second}"
    );

    // Random reads of cached data: byte-exact, still no GET.
    drop_page_cache();
    let handle = std::fs::File::open(&file).unwrap();
    for offset in [33 * MIB + 5, 7, 12 * MIB - 3, data.len() - 100, 20 * MIB] {
        let mut buf = vec![0u8; 100];
        handle.read_exact_at(&mut buf, offset as u64).unwrap();
        assert_eq!(buf, data[offset..offset + 100], "at {offset}");
    }
    assert_eq!(gets(&mount), first["requests"]["GetObject"]);
    drop(handle);

    // The human form names the same numbers.
    let out = s3vol()
        .args(["stats", mount.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vol/root (read-only)"), "{text}");
    assert!(text.contains("40.1 MiB from S3"), "{text}");
    assert!(text.contains("served from cache"), "{text}");

    // The cache lives in a private directory of this mount's own, removed at
    // unmount, with the statistics in the log.
    let dirs = cache_dirs(&mount.cache);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mode = std::fs::metadata(&dirs[0].0).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(dirs[0].1 >= data.len() as u64);
    unmount(mount.path());
    // The daemon removes it on its way out, just after the kernel lets go.
    assert!(wait_until(Duration::from_secs(10), || cache_dirs(
        &mount.cache
    )
    .is_empty()));
    let log = mount.log_text();
    assert!(log.contains("unmounted"), "{log}");
    assert!(log.contains("\"bytes_from_cache\""), "{log}");
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn a_file_whole_in_the_cache_is_read_by_the_kernel_from_it() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let data = pattern(24 * MIB + 5, 7);
    server.put(BUCKET, "root/f.bin", data.clone()).await;
    let mount = Mount::new(&server, "vol/root", &["--metadata-ttl", "1s"]);
    let file = mount.path().join("f.bin");
    assert_eq!(
        mount.stats()["passthrough"]["on"],
        true,
        "{}",
        mount.stats()
    );
    assert_eq!(std::fs::read(&file).unwrap(), data);
    mount.wait_for_disk(data.len());

    // Opened again, the file is read by the kernel from the cache's file: the
    // daemon serves none of it, and S3 is not asked.
    drop_page_cache();
    let before = mount.stats();
    let reader = std::fs::File::open(&file).unwrap();
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut &reader, &mut read).unwrap();
    assert!(read == data, "passthrough reads the object byte for byte");
    let after = mount.stats();
    assert_eq!(after["passthrough"]["opens"], 1, "{after}");
    assert_eq!(after["passthrough"]["files_now"], 1, "{after}");
    assert_eq!(
        after["cache"]["bytes_from_cache"], before["cache"]["bytes_from_cache"],
        "the daemon served no byte"
    );
    assert_eq!(gets(&mount), gets_of(&before));
    // A second open of the same version shares the backing file.
    let second = std::fs::File::open(&file).unwrap();
    let mut buf = vec![0u8; 4096];
    second.read_exact_at(&mut buf, 20 * MIB as u64).unwrap();
    assert_eq!(buf, data[20 * MIB..20 * MIB + 4096]);
    assert_eq!(mount.stats()["passthrough"]["opens"], 2);

    // Another client replaces the object: past the TTL, a new open reads the
    // new version (under a new inode: the kernel takes no other file for an
    // inode it reads from a backing file); the readers keep theirs.
    let inode = std::fs::metadata(&file).unwrap().ino();
    let new = pattern(3 * MIB, 9);
    server.put(BUCKET, "root/f.bin", new.clone()).await;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        std::fs::read(&file).unwrap() == new,
        "a new open reads the new version"
    );
    assert_ne!(std::fs::metadata(&file).unwrap().ino(), inode);
    reader.read_exact_at(&mut buf, 5 * MIB as u64).unwrap();
    assert_eq!(buf, data[5 * MIB..5 * MIB + 4096], "the reader's version");
    drop((reader, second));
    assert!(
        wait_until(
            Duration::from_secs(10),
            || mount.stats()["passthrough"]["files_now"] == 0
        ),
        "the backing file goes with the last reader"
    );

    let out = s3vol()
        .args(["stats", mount.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("passthrough  on: 2 opens"), "{text}");
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn a_file_the_kernel_holds_whole_is_read_from_its_pages_and_after_that_from_the_cache() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let data = pattern(24 * MIB + 5, 3);
    server.put(BUCKET, "root/f.bin", data.clone()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let file = mount.path().join("f.bin");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    mount.wait_for_disk(data.len());

    // Read whole through the daemon, its pages kept by the kernel: a re-read
    // is served from them, not from the cache's file on disk.
    let before = mount.stats();
    assert!(std::fs::read(&file).unwrap() == data);
    let after = mount.stats();
    assert_eq!(after["passthrough"]["opens"], 0, "{after}");
    assert_eq!(
        after["cache"]["bytes_from_cache"], before["cache"]["bytes_from_cache"],
        "the kernel's pages served it"
    );
    assert_eq!(gets(&mount), gets_of(&before));

    // Once the kernel lets go of the file, its pages went too: the cache's
    // file serves it.
    drop_page_cache();
    assert!(std::fs::read(&file).unwrap() == data);
    let last = mount.stats();
    assert_eq!(last["passthrough"]["opens"], 1, "{last}");
    assert_eq!(gets(&mount), gets_of(&before));

    // An application's O_DIRECT read leaves nothing in the kernel's cache:
    // the next open reads the cache's file.
    let other = pattern(8 * MIB, 5);
    server.put(BUCKET, "root/g.bin", other.clone()).await;
    let out = Command::new("dd")
        .arg(format!("if={}", mount.path().join("g.bin").display()))
        .args(["of=/dev/null", "bs=1M", "iflag=direct", "status=none"])
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    mount.wait_for_disk(data.len() + other.len());
    assert!(std::fs::read(mount.path().join("g.bin")).unwrap() == other);
    let after_direct = mount.stats();
    assert_eq!(after_direct["passthrough"]["opens"], 2, "{after_direct}");
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn a_cache_where_direct_writes_are_refused_is_written_through_the_page_cache() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| pattern(24 * MIB + i, 7 + i as u64))
        .collect();
    for (i, data) in files.iter().enumerate() {
        server
            .put(BUCKET, &format!("root/f{i}"), data.clone())
            .await;
    }
    // ramfs has no direct I/O: an O_DIRECT open there fails with EINVAL. (It
    // shows no free space either, so the cache is given its size.) Mounted in a
    // namespace of the test's own, so that it goes with the test however the
    // test ends.
    common::host::in_private_mount_namespace(|| {
        let ramfs = common::host::Scratch::of("ramfs");
        let cache = ramfs.path().join("cache");
        let cache_arg = cache.to_str().unwrap().to_string();
        let mount = Mount::new(
            &server,
            "vol/root",
            &["--cache-dir", &cache_arg, "--cache-size", "256MiB"],
        );
        for (i, data) in files.iter().enumerate() {
            assert!(std::fs::read(mount.path().join(format!("f{i}"))).unwrap() == *data);
        }
        let total = files.iter().map(Vec::len).sum();
        mount.wait_for_disk(total);
        // Said once, however many blocks were written after.
        let log = mount.log_text();
        assert_eq!(log.matches("refused a direct write").count(), 1, "{log}");
        // Every block landed whole: the files are read again from the cache
        // alone, once the kernel has let go of its pages of them.
        let before = mount.stats();
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache");
        for (i, data) in files.iter().enumerate() {
            assert!(std::fs::read(mount.path().join(format!("f{i}"))).unwrap() == *data);
        }
        let after = mount.stats();
        assert_eq!(gets_of(&after), gets_of(&before));
        // Served by the cache's files, through passthrough or the daemon.
        let grew = |field: &serde_json::Value, old: &serde_json::Value| {
            field.as_u64().unwrap() - old.as_u64().unwrap()
        };
        let opens = grew(
            &after["passthrough"]["opens"],
            &before["passthrough"]["opens"],
        );
        let from_disk = grew(
            &after["cache"]["disk_hit_bytes"],
            &before["cache"]["disk_hit_bytes"],
        );
        assert!(
            opens == 3 || from_disk >= total as u64,
            "{opens} passthrough opens, {from_disk} bytes from the disk cache: {after}"
        );
    });
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn an_object_replaced_by_another_client_is_read_fresh_after_the_ttl() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let (old, new) = (pattern(3 * MIB, 1), pattern(3 * MIB, 2));
    server.put(BUCKET, "root/f", old.clone()).await;
    let mount = Mount::new(&server, "vol/root", &["--metadata-ttl", "1s"]);
    let file = mount.path().join("f");
    assert_eq!(std::fs::read(&file).unwrap(), old);

    // A re-read of the same version is served by the kernel's page cache.
    assert_eq!(std::fs::read(&file).unwrap(), old);

    server.put(BUCKET, "root/f", new.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // No page cache dropped: the new version must replace the kernel's pages.
    assert_eq!(std::fs::read(&file).unwrap(), new);
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn the_cache_keeps_its_size_bound_and_no_cache_keeps_nothing() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    for n in 0..3 {
        server
            .put(BUCKET, &format!("root/f{n}"), pattern(4 * MIB, n))
            .await;
    }
    let mount = Mount::new(&server, "vol/root", &["--cache-size", "4MiB"]);
    for n in 0..3 {
        let path = mount.path().join(format!("f{n}"));
        assert_eq!(std::fs::read(path).unwrap(), pattern(4 * MIB, n as u64));
    }
    // Block files are written in the background; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = mount.stats();
    assert!(stats["cache"]["disk_used"].as_u64().unwrap() <= 4 * MIB as u64);
    assert!(stats["cache"]["evictions"].as_u64().unwrap() > 0, "{stats}");
    let dirs = cache_dirs(&mount.cache);
    assert!(dirs[0].1 <= 4 * MIB as u64, "{dirs:?}");
    drop(mount);

    let mount = Mount::new(&server, "vol/root", &["--no-cache"]);
    let path = mount.path().join("f0");
    assert_eq!(std::fs::read(&path).unwrap(), pattern(4 * MIB, 0));
    let before = gets(&mount);
    drop_page_cache();
    assert_eq!(std::fs::read(&path).unwrap(), pattern(4 * MIB, 0));
    assert!(gets(&mount) > before, "every read goes to S3");
    assert!(cache_dirs(&mount.cache).is_empty());
    assert_eq!(mount.stats()["cache"]["enabled"], false);
}

/// Runs `command` (a shell line) as `nobody`.
fn as_nobody(command: &str) {
    let status = common::host::as_user(common::host::NOBODY, "sh")
        .args(["-c", command])
        .status()
        .unwrap();
    assert!(status.success(), "as nobody: {command}");
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn a_cache_directory_another_user_controls_is_refused() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "root/f", b"x".to_vec()).await;
    let base = common::host::shared_tempdir();
    let theirs = common::host::owned_dir(base.path(), "theirs", common::host::NOBODY);
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, why) in [(&theirs, "belongs to uid 65534"), (&open, "chmod 700")] {
        let err = refused_mount(&server, dir);
        assert!(err.contains(why), "{err}");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "{dir:?} was used"
        );
    }
}

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn swapping_the_cache_directory_for_a_link_sends_nothing_elsewhere() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    for name in ["a", "b"] {
        server
            .put(BUCKET, &format!("root/{name}"), pattern(3 * MIB, 5))
            .await;
    }
    // The cache directory's parent is another user's, who can rename what is in
    // it and put links there; the place they point the link to is theirs too.
    let base = common::host::shared_tempdir();
    let parent = common::host::owned_dir(base.path(), "parent", common::host::NOBODY);
    let lure = common::host::owned_dir(base.path(), "lure", common::host::NOBODY);
    let cache = parent.join("cache");
    let cache_arg = cache.to_str().unwrap().to_string();
    let mount = Mount::new(
        &server,
        "vol/root",
        &["--read-write", "--cache-dir", &cache_arg],
    );
    std::fs::read(mount.path().join("a")).unwrap();
    as_nobody(&format!(
        "mv {0}/cache {0}/moved && mkdir -p {1}/blocks {1}/staging && ln -s {1} {0}/cache",
        parent.display(),
        lure.display()
    ));
    // Blocks and staging files keep going where the volume was mounted.
    drop_page_cache();
    std::fs::read(mount.path().join("b")).unwrap();
    std::fs::write(mount.path().join("new"), pattern(MIB, 6)).unwrap();
    assert!(
        !cache_dirs(&parent.join("moved")).is_empty(),
        "the blocks are in the directory that was opened"
    );
    drop(mount);
    let left: Vec<_> = walkdir(&lure);
    assert_eq!(
        left,
        [lure.join("blocks"), lure.join("staging")],
        "s3vol wrote or removed something through the link"
    );
    // A new mount is not led through the link either.
    let err = refused_mount(&server, &cache);
    assert!(err.contains("symbolic link"), "{err}");
}

/// A mount of the volume with `--cache-dir cache_dir` fails with exit 1; what it
/// said.
fn refused_mount(server: &Server, cache_dir: &std::path::Path) -> String {
    let mountpoint = tempfile::tempdir().unwrap();
    let out = s3vol()
        .args(["mount", "vol/root"])
        .arg(mountpoint.path())
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(server.endpoint_args())
        .envs(server.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// Every path under `dir`, sorted.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}
