//! End to end: the real s3vol binary mounted read-only against Garage and moto.
//! Each test body is written once and run on both servers.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{
    Mount, Server, ServerKind, daemon_pids, is_mounted, pattern, run_s3vol, s3vol, wait_until,
};

const BUCKET: &str = "vol";

/// Walks `dir` and returns every file's bytes and every directory, by relative path.
fn walk(root: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(rel);
                stack.push(path);
            } else {
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    dirs.sort();
    (files, dirs)
}

async fn seed_tree(server: &Server, big: usize) -> BTreeMap<String, Vec<u8>> {
    server.create_bucket(BUCKET).await;
    let mut objects = BTreeMap::new();
    objects.insert("root/empty.txt".to_string(), Vec::new());
    objects.insert("root/one".to_string(), b"1".to_vec());
    objects.insert("root/page.bin".to_string(), pattern(4096, 1));
    objects.insert("root/big.bin".to_string(), pattern(big, 2));
    objects.insert("root/a/b/c/deep.txt".to_string(), b"deep".to_vec());
    objects.insert("root/marked/".to_string(), Vec::new());
    objects.insert("root/marked/inside".to_string(), b"in".to_vec());
    objects.insert("root/emptydir/".to_string(), Vec::new());
    objects.insert(
        "root/both".to_string(),
        b"shadowed by the directory".to_vec(),
    );
    objects.insert("root/both/child".to_string(), b"child".to_vec());
    objects.insert("root/sp ace & ümlaut.txt".to_string(), b"unicode".to_vec());
    objects.insert("outside/secret".to_string(), b"never shown".to_vec());
    for (key, data) in &objects {
        server.put(BUCKET, key, data.clone()).await;
    }
    objects
}

async fn contents_and_listing_match_s3(kind: ServerKind) {
    let server = Server::start(kind);
    let big = if kind == ServerKind::Moto {
        3 << 20
    } else {
        48 << 20
    };
    seed_tree(&server, big).await;
    let mount = Mount::new(&server, "vol/root", &[]);

    // What the S3 API says is under the prefix, mapped as SEMANTICS.md says.
    let keys = server.keys(BUCKET, "root/").await;
    let mut want_files = BTreeMap::new();
    let mut want_dirs = std::collections::BTreeSet::new();
    for key in &keys {
        let rel = &key["root/".len()..];
        let mut parts: Vec<&str> = rel.split('/').collect();
        let leaf = parts.pop().unwrap();
        for i in 1..=parts.len() {
            want_dirs.insert(parts[..i].join("/"));
        }
        if !leaf.is_empty() {
            let data = server
                .client()
                .get_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
                .to_vec();
            want_files.insert(rel.to_string(), data);
        }
    }
    // A directory hides a file of the same name.
    want_files.retain(|path, _| !want_dirs.contains(path));

    let (files, dirs) = walk(mount.path());
    assert_eq!(dirs, want_dirs.into_iter().collect::<Vec<_>>());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        want_files.keys().collect::<Vec<_>>()
    );
    for (path, data) in &want_files {
        assert!(files[path] == *data, "{path} differs from S3");
    }
    assert!(!mount.path().join("secret").exists());
    let meta = std::fs::metadata(mount.path().join("big.bin")).unwrap();
    assert_eq!(meta.len(), big as u64);
}

async fn writes_fail_with_erofs(kind: ServerKind) {
    let server = Server::start(kind);
    seed_tree(&server, 1000).await;
    let before = server.keys(BUCKET, "").await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let p = mount.path();
    let erofs = |r: std::io::Result<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    erofs(std::fs::write(p.join("new.txt"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(p.join("one"))
            .map(|_| ()),
        "append",
    );
    erofs(std::fs::create_dir(p.join("newdir")), "mkdir");
    erofs(std::fs::remove_file(p.join("one")), "unlink");
    erofs(std::fs::remove_dir(p.join("emptydir")), "rmdir");
    erofs(std::fs::rename(p.join("one"), p.join("two")), "rename");
    erofs(
        std::fs::set_permissions(
            p.join("one"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
    erofs(std::os::unix::fs::symlink("one", p.join("link")), "symlink");
    assert_eq!(server.keys(BUCKET, "").await, before, "the bucket changed");
    assert_eq!(std::fs::read(p.join("one")).unwrap(), b"1");
}

async fn unmount_and_signals_end_cleanly(kind: ServerKind) {
    let server = Server::start(kind);
    seed_tree(&server, 1000).await;

    // Daemon: umount ends the process.
    let mount = Mount::new(&server, "vol/root", &[]);
    let pids = daemon_pids(mount.path());
    assert_eq!(pids.len(), 1, "one daemon serves the mount");
    assert_eq!(std::fs::read(mount.path().join("one")).unwrap(), b"1");
    common::unmount(mount.path());
    common::assert_daemon_exits(mount.path(), "outlived its mount");
    assert!(
        mount.log_text().contains("unmounted"),
        "{}",
        mount.log_text()
    );

    // Foreground: SIGTERM and SIGINT unmount and exit 0.
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = s3vol()
            .args([
                "mount",
                "vol/root",
                dir.path().to_str().unwrap(),
                "--foreground",
            ])
            .args(server.endpoint_args())
            .envs(server.env())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || is_mounted(dir.path())),
            "foreground mount did not appear"
        );
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {signal}: exit {status}");
        assert!(!is_mounted(dir.path()));
    }
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn garage_contents_and_listing_match_s3() {
    contents_and_listing_match_s3(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn moto_contents_and_listing_match_s3() {
    contents_and_listing_match_s3(ServerKind::Moto).await;
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn garage_writes_fail_with_erofs() {
    writes_fail_with_erofs(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn moto_writes_fail_with_erofs() {
    writes_fail_with_erofs(ServerKind::Moto).await;
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn garage_unmount_and_signals_end_cleanly() {
    unmount_and_signals_end_cleanly(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn moto_unmount_and_signals_end_cleanly() {
    unmount_and_signals_end_cleanly(ServerKind::Moto).await;
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn garage_lists_ten_thousand_entries() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    const N: usize = 10_050;
    let objects = (0..N).map(|i| (format!("many/f{i:05}"), vec![b'x'; i % 7]));
    server.put_many(BUCKET, objects).await;
    let mount = Mount::new(&server, "vol/many", &[]);
    let mut names: Vec<String> = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), N);
    assert_eq!(names[0], "f00000");
    assert_eq!(names[N - 1], format!("f{:05}", N - 1));
    let meta = std::fs::metadata(mount.path().join("f00006")).unwrap();
    assert_eq!(meta.len(), 6);
}

/// Runs `s3vol mount` expecting failure; returns its standard error.
fn mount_fails(server: &Server, source: &str, mountpoint: &Path, extra: &[&str]) -> String {
    let mp = mountpoint.to_str().unwrap();
    let mut args = vec!["mount", source, mp];
    let endpoint = server.endpoint_args();
    args.extend(endpoint.iter().map(String::as_str));
    args.extend_from_slice(extra);
    // Other tests mount and unmount in parallel: count only this mountpoint's mounts.
    let mounts_before = common::mount_count(mountpoint);
    let out = run_s3vol(server, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    let mounts_after = common::mount_count(mountpoint);
    assert_eq!(mounts_before, mounts_after, "{args:?} mounted anyway");
    stderr
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn bad_input_gets_a_message_that_says_what_to_do() {
    let server = Server::start(ServerKind::Garage);
    seed_tree(&server, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path();

    let err = mount_fails(&server, "nosuchbucket", mp, &[]);
    assert!(
        err.contains("bucket 'nosuchbucket' does not exist"),
        "{err}"
    );
    let err = mount_fails(&server, "vol/typo", mp, &[]);
    assert!(err.contains("prefix 'typo/' does not exist"), "{err}");

    let (key, secret) = server.write_only_key(BUCKET);
    let out = s3vol()
        .args(["mount", "vol/root", mp.to_str().unwrap()])
        .args(server.endpoint_args())
        .envs(server.env())
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("AccessDenied: s3:ListBucket on arn:aws:s3:::vol"),
        "{err}"
    );

    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let out = s3vol()
        .args([
            "mount",
            "vol/root",
            mp.to_str().unwrap(),
            "--force-path-style",
        ])
        .args(["--endpoint-url", &format!("http://127.0.0.1:{closed}")])
        .args(["--io-timeout", "2s"])
        .envs(server.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach S3 at http://127.0.0.1"), "{err}");

    let err = mount_fails(&server, "vol/root", &mp.join("missing"), &[]);
    assert!(err.contains("does not exist; create it first"), "{err}");
    let file = mp.join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = mount_fails(&server, "vol/root", &file, &[]);
    assert!(err.contains("is not a directory"), "{err}");
    std::fs::remove_file(&file).unwrap();

    let mounted = Mount::new(&server, "vol/root", &[]);
    let err = mount_fails(&server, "vol/root", mounted.path(), &[]);
    assert!(err.contains("is already a mount point"), "{err}");
    drop(mounted);

    for (extra, phrase) in [
        (&["--file-mode", "999"][..], "not an octal permission mode"),
        (
            &["--allow-other", "--allow-root"][..],
            "cannot be used with",
        ),
        (&["--metadata-ttl", "soon"][..], "is not a duration"),
        (&["--log-level", "loud"][..], "invalid value"),
        (&["--no-such-option"][..], "unexpected argument"),
    ] {
        let err = mount_fails(&server, "vol/root", mp, extra);
        assert!(err.contains(phrase), "{extra:?}: {err}");
    }
    let err = mount_fails(&server, "Bad_Bucket", mp, &[]);
    assert!(err.contains("not a valid bucket name"), "{err}");
    let err = mount_fails(&server, "vol/a//b", mp, &[]);
    assert!(err.contains("empty segments"), "{err}");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn ownership_and_modes_are_what_the_options_say() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start(ServerKind::Garage);
    seed_tree(&server, 1000).await;
    let mount = Mount::new(
        &server,
        "s3://vol/root/",
        &[
            "-o",
            "uid=1234,gid=4321,file_mode=0640,dir_mode=0750,metadata_ttl=1s",
        ],
    );
    let file = std::fs::metadata(mount.path().join("one")).unwrap();
    assert_eq!((file.uid(), file.gid()), (1234, 4321));
    assert_eq!(file.mode() & 0o7777, 0o640);
    let dir = std::fs::metadata(mount.path().join("a")).unwrap();
    assert_eq!((dir.uid(), dir.gid()), (1234, 4321));
    assert_eq!(dir.mode() & 0o7777, 0o750);
    let df = nix::sys::statvfs::statvfs(mount.path()).unwrap();
    assert!(df.blocks() as u128 * df.fragment_size() as u128 >= 1 << 50);
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn an_object_replaced_under_an_open_file_gives_estale() {
    use std::os::unix::fs::FileExt;
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let original = pattern(32 << 20, 5);
    server.put(BUCKET, "root/f.bin", original.clone()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let file = std::fs::File::open(mount.path().join("f.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, original[..4096]);
    server.put(BUCKET, "root/f.bin", pattern(32 << 20, 6)).await;
    // Far from what read-ahead already holds, so it must go to S3.
    let err = file.read_exact_at(&mut buf, 30 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    assert!(mount.log_text().contains("changed"), "{}", mount.log_text());
    // Opening again reads the new version whole, without waiting out the TTL.
    drop(file);
    assert!(std::fs::read(mount.path().join("f.bin")).unwrap() == pattern(32 << 20, 6));
}
