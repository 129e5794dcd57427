//! End to end: the real s3vol binary mounted read-write against Garage and moto.
//! Each test body is written once and run on both servers.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Mount, Server, ServerKind, pattern, s3vol};
use serde_json::json;

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;

/// A server with an empty bucket and a read-write mount of `vol/root`.
async fn rw_volume(kind: ServerKind, extra: &[&str]) -> (Server, Mount) {
    let server = Server::start(kind);
    server.create_bucket(BUCKET).await;
    let mut args = vec!["--read-write"];
    args.extend_from_slice(extra);
    let mount = Mount::new(&server, "vol/root", &args);
    (server, mount)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn files_round_trip_byte_exact(kind: ServerKind) {
    let (server, mount) = rw_volume(kind, &[]).await;
    // moto is slow and keeps everything in memory: the large file stays modest there.
    let large = if kind == ServerKind::Moto {
        12 * MIB
    } else {
        100 * MIB
    };
    for (i, size) in [0, 1, 8 * MIB - 1, 8 * MIB + 1, large]
        .into_iter()
        .enumerate()
    {
        let data = pattern(size, i as u64 + 1);
        let name = format!("f{size}");
        // write(2) then close(2), by cp: durable once it returns.
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), &data).unwrap();
        run(Command::new("cp")
            .arg(source.path())
            .arg(mount.path().join(&name)));
        let stored = server.get(BUCKET, &format!("root/{name}")).await;
        assert!(stored.as_deref() == Some(&data[..]), "{name} differs in S3");
        let back = std::fs::read(mount.path().join(&name)).unwrap();
        assert!(back == data, "{name} differs read back");
        assert_eq!(
            std::fs::metadata(mount.path().join(&name)).unwrap().len(),
            size as u64
        );
    }
    assert!(server.pending_uploads(BUCKET, "root/").await.is_empty());
    // What the statistics say of the uploads: five objects, two of them multipart.
    let stats = mount.stats();
    let written = (16 * MIB + large) as u64;
    assert!(
        stats["uploads"]["objects"].as_u64().unwrap() >= 5,
        "{stats}"
    );
    assert!(stats["uploads"]["parts"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(stats["uploads"]["aborted"], 0, "{stats}");
    assert!(stats["bytes_to_s3"].as_u64().unwrap() >= written, "{stats}");
}

/// A directory tree as users copy in: nested directories, several sizes, a
/// name with spaces, an empty file.
fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("readme.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("sub/with space.bin"), pattern(300_000, 7)).unwrap();
    std::fs::write(dir.join("sub/deeper/big.bin"), pattern(9 * MIB, 8)).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    run(Command::new("diff").arg("-r").arg(a).arg(b));
}

async fn cp_rsync_tar_git_and_editors_work(kind: ServerKind) {
    let (server, mount) = rw_volume(kind, &[]).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    sample_tree(&src);
    let vol = mount.path();

    run(Command::new("cp").arg("-a").arg(&src).arg(vol.join("cp")));
    same_tree(&src, &vol.join("cp"));

    run(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(vol.join("rsync")));
    same_tree(&src, &vol.join("rsync"));

    let archive = local.path().join("src.tar");
    run(Command::new("tar")
        .arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    std::fs::create_dir(vol.join("tar")).unwrap();
    run(Command::new("tar")
        .arg("xf")
        .arg(&archive)
        .arg("-C")
        .arg(vol.join("tar")));
    same_tree(&src, &vol.join("tar"));

    let repo = local.path().join("repo");
    let git = |dir: &Path, args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args));
    };
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "first"]);
    std::fs::write(repo.join("a.txt"), "two\n").unwrap();
    git(&repo, &["commit", "-qam", "second"]);
    run(Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(format!("file://{}", repo.display()))
        .arg(vol.join("clone")));
    git(&vol.join("clone"), &["fsck", "--no-progress"]);
    git(&vol.join("clone"), &["status", "--porcelain"]);
    assert_eq!(std::fs::read(vol.join("clone/a.txt")).unwrap(), b"two\n");

    // Editors save through a temporary file and a rename (sed -i does the same).
    std::fs::write(vol.join("doc.txt"), "draft\n").unwrap();
    run(Command::new("sed")
        .args(["-i", "s/draft/final/"])
        .arg(vol.join("doc.txt")));
    assert_eq!(std::fs::read(vol.join("doc.txt")).unwrap(), b"final\n");
    {
        use std::io::Write;
        let tmp = vol.join(".doc.txt.swp");
        let mut file = std::fs::File::create(&tmp).unwrap();
        file.write_all(b"saved\n").unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::rename(&tmp, vol.join("doc.txt")).unwrap();
    }
    assert_eq!(
        server.get(BUCKET, "root/doc.txt").await.as_deref(),
        Some(&b"saved\n"[..])
    );
    assert_eq!(server.get(BUCKET, "root/.doc.txt.swp").await, None);

    // What S3 holds is what the tools wrote, under the names they gave it.
    let big = server.get(BUCKET, "root/rsync/sub/deeper/big.bin").await;
    assert!(big.as_deref() == Some(&pattern(9 * MIB, 8)[..]));
    assert!(server.pending_uploads(BUCKET, "root/").await.is_empty());

    // And they are there for the next mount too.
    drop(mount);
    let again = Mount::new(&server, "vol/root", &[]);
    same_tree(&src, &again.path().join("tar"));
}

/// The commands users run, each leaving in S3 what it meant to: a writer
/// killed by SIGKILL leaves the previous version; a descriptor open on a file
/// that `mv` replaced does not undo the rename; a read through a read-write
/// descriptor (as SQLite and Python's `r+b` open files) fetches what it reads
/// and uploads nothing.
#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn what_ordinary_programs_leave_in_s3_is_what_they_meant() {
    let (server, mount) = rw_volume(ServerKind::Garage, &[]).await;
    let dir = mount.path();
    std::fs::write(dir.join("d.txt"), "good v1").unwrap();
    let killed = Command::new("python3")
        .current_dir(dir)
        .args([
            "-c",
            "import os; f=open('d.txt','w'); f.write('PARTIAL'); f.flush(); \
             os.kill(os.getpid(), 9)",
        ])
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9)
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        server.get(BUCKET, "root/d.txt").await.unwrap(),
        b"good v1",
        "the killed writer's partial output replaced the file"
    );

    std::fs::write(dir.join("cfg"), "old\n").unwrap();
    std::fs::write(dir.join("cfg.tmp"), "new\n").unwrap();
    run(Command::new("chmod").arg("600").arg(dir.join("cfg.tmp")));
    run(Command::new("sh").current_dir(dir).args([
        "-c",
        "exec 3>>cfg; echo stale >&3; mv cfg.tmp cfg; exec 3>&-",
    ]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(server.get(BUCKET, "root/cfg").await.unwrap(), b"new\n");
    let head = server.head(BUCKET, "root/cfg").await;
    assert_eq!(head.metadata().unwrap()["mode"], "0100600");

    let big = pattern(40 * MIB, 9);
    server.put(BUCKET, "root/db.bin", big.clone()).await;
    let before = mount.stats();
    let out = Command::new("python3")
        .current_dir(dir)
        .args([
            "-c",
            "import sys; sys.stdout.buffer.write(open('db.bin', 'r+b').read(10))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, big[..10]);
    let after = mount.stats();
    let fetched =
        after["bytes_from_s3"].as_u64().unwrap() - before["bytes_from_s3"].as_u64().unwrap();
    assert!(
        fetched < 4 * MIB as u64,
        "10 bytes read through r+b fetched {fetched} bytes"
    );
    assert_eq!(
        after["bytes_to_s3"], before["bytes_to_s3"],
        "a handle that changed nothing uploaded"
    );
    assert_eq!(
        after["requests"]["CreateMultipartUpload"],
        before["requests"]["CreateMultipartUpload"]
    );
}

#[tokio::test]
#[ignore = "needs Garage and dbench; run scripts/test.sh"]
async fn a_file_servers_load_loses_nothing_and_warns_of_nothing() {
    let (_server, mount) = rw_volume(ServerKind::Garage, &[]).await;
    // dbench plays a Windows file server's clients: opens for reading and
    // writing, writes, reads, flushes, renames and deletes, two at once.
    let out = Command::new("dbench")
        .args(["-t", "10", "-D"])
        .arg(mount.path())
        .arg("2")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Throughput"), "{report}");
    // s3vol's warnings say something was lost; nothing was.
    let log = mount.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN s3vol::")).collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}

async fn unlink_rmdir_and_rename_reach_s3(kind: ServerKind) {
    let (server, mount) = rw_volume(kind, &[]).await;
    let vol = mount.path();
    std::fs::create_dir_all(vol.join("a/b")).unwrap();
    std::fs::write(vol.join("a/b/f"), "f").unwrap();
    let err = std::fs::remove_dir(vol.join("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::rename(vol.join("a"), vol.join("z")).unwrap();
    let mut keys = server.keys(BUCKET, "root/").await;
    keys.sort();
    assert_eq!(keys, ["root/z/", "root/z/b/", "root/z/b/f"]);
    std::fs::remove_file(vol.join("z/b/f")).unwrap();
    std::fs::remove_dir(vol.join("z/b")).unwrap();
    std::fs::remove_dir(vol.join("z")).unwrap();
    assert!(server.keys(BUCKET, "root/").await.is_empty());
    assert!(std::fs::read_dir(vol).unwrap().next().is_none());
}

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod garage {
            $(
                #[tokio::test]
                #[ignore = "needs Garage; run scripts/test.sh"]
                async fn $name() {
                    super::$name(super::ServerKind::Garage).await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test]
                #[ignore = "needs moto; run scripts/test.sh"]
                async fn $name() {
                    super::$name(super::ServerKind::Moto).await;
                }
            )*
        }
    };
}

on_both_servers!(
    files_round_trip_byte_exact,
    cp_rsync_tar_git_and_editors_work,
    unlink_rmdir_and_rename_reach_s3,
);

/// moto's front layer counts every request that changes a bucket.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_read_only_volume_never_sends_a_mutating_request() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "root/f", "data").await;
    server.put(BUCKET, "root/d/", "").await;
    let before = server.sessions(json!({}))["s3_writes"].as_u64().unwrap();
    let mount = Mount::new(&server, "vol/root", &[]);
    let vol = mount.path();
    let erofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        erofs(std::fs::write(vol.join("new"), "x")),
        Some(libc::EROFS)
    );
    assert_eq!(erofs(std::fs::write(vol.join("f"), "x")), Some(libc::EROFS));
    assert_eq!(
        erofs(std::fs::create_dir(vol.join("nd"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        erofs(std::fs::remove_file(vol.join("f"))),
        Some(libc::EROFS)
    );
    assert_eq!(erofs(std::fs::remove_dir(vol.join("d"))), Some(libc::EROFS));
    assert_eq!(
        erofs(std::fs::rename(vol.join("f"), vol.join("g"))),
        Some(libc::EROFS)
    );
    let truncate = std::fs::OpenOptions::new().write(true).open(vol.join("f"));
    assert_eq!(truncate.unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(vol.join("f")).unwrap(), b"data");
    drop(mount);
    let after = server.sessions(json!({}))["s3_writes"].as_u64().unwrap();
    assert_eq!(after, before, "a read-only volume sent a mutating request");
}

/// Buckets whose policy denies unencrypted uploads: --sse is sent on every
/// PutObject, CreateMultipartUpload and CopyObject.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn sse_meets_a_policy_that_denies_unencrypted_uploads() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket(BUCKET).await;
    server.sessions(json!({"require_sse": true}));
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();

    // Without --sse the start-up probe is refused and the mount fails early.
    let dir = tempfile::tempdir().unwrap();
    let out = s3vol()
        .args(["mount", "vol/root", dir.path().to_str().unwrap()])
        .args(["--read-write", "--cache-dir", cache])
        .args(server.endpoint_args())
        .envs(server.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("AccessDenied: s3:PutObject"), "{err}");

    let mount = Mount::new(
        &server,
        "vol/root",
        &["--read-write", "--cache-dir", cache, "--sse", "AES256"],
    );
    let vol = mount.path();
    std::fs::write(vol.join("small"), "s").unwrap();
    let large = pattern(11 * MIB, 3);
    std::fs::write(vol.join("large"), &large).unwrap();
    std::fs::rename(vol.join("small"), vol.join("moved")).unwrap();
    assert_eq!(
        server.get(BUCKET, "root/moved").await.as_deref(),
        Some(&b"s"[..])
    );
    assert!(server.get(BUCKET, "root/large").await.as_deref() == Some(&large[..]));
}

/// Whether `name` matches `pattern`, in which `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn glob_matches_like_a_shell() {
    assert!(glob("*::fifo", "open::eexist::fifo"));
    assert!(!glob("*::fifo", "open::fifo_nonblock_wronly"));
    assert!(glob("link::*", "link::a::b"));
    assert!(glob("open::etxtbsy", "open::etxtbsy"));
    assert!(!glob("open::etxtbsy", "open::etxtbsy2"));
    assert!(glob("a*c*e", "abcde"));
}

/// What pjdfstest printed under the case `name` that failed: its message and
/// the first frames of its backtrace, which say which step of the case failed.
fn failure_detail(report: &str, name: &str) -> String {
    let is_status = |l: &str| {
        let l = l.trim_end();
        l.ends_with(" ok") || l.ends_with("FAILED") || l.ends_with("skipped")
    };
    let mut lines = report.lines().skip_while(|l| {
        !(l.split_whitespace().next() == Some(name) && l.trim_end().ends_with("FAILED"))
    });
    let mut detail: Vec<&str> = lines.next().into_iter().collect();
    detail.extend(lines.take_while(|l| !is_status(l)).take(40));
    detail.join("\n")
}

#[test]
fn a_failure_detail_is_the_cases_own_lines() {
    let report = "a::b    ok\nopen::etxtbsy    FAILED\n\tETXTBSY\nBacktrace:\n  0: x\n\
                  open::other    FAILED\n\tEIO\n";
    assert_eq!(
        failure_detail(report, "open::etxtbsy"),
        "open::etxtbsy    FAILED\n\tETXTBSY\nBacktrace:\n  0: x"
    );
    assert_eq!(
        failure_detail(report, "open::other"),
        "open::other    FAILED\n\tEIO"
    );
}

/// pjdfstest (the POSIX conformance suite) on a read-write volume. Garage keeps
/// its metadata in SQLite here, which holds keys up to S3's 1024 bytes.
#[tokio::test]
#[ignore = "needs Garage and pjdfstest; run scripts/test.sh"]
async fn pjdfstest_fails_only_where_semantics_md_says() {
    let server = Server::start_with_env(ServerKind::Garage, &[("GARAGE_DB_ENGINE", "sqlite")]);
    server.create_bucket(BUCKET).await;
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(
        &server,
        "vol/root",
        &[
            "--read-write",
            "--cache-dir",
            cache.path().to_str().unwrap(),
            // open::interact_2gb writes a byte past 2 GiB, and a staged file
            // counts at its length: the default bound, a share of the free
            // disk, is below that on a machine with less than 16 GiB free.
            "--staging-size",
            "3GiB",
            // pjdfstest switches to unprivileged users.
            "--allow-other",
        ],
    );
    let config = cache.path().join("pjdfstest.toml");
    std::fs::write(
        &config,
        "[settings]\nnaptime = 0.01\nallow_remount = false\n\n[dummy_auth]\n\
         entries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n\n[features]\n",
    )
    .unwrap();
    let out = Command::new(common::tools_dir().join("pjdfstest-0.2.2/bin/pjdfstest"))
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(mount.path())
        .current_dir(mount.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run pjdfstest (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let passed = report
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .count();
    assert!(passed > 100, "pjdfstest ran too few cases:\n{report}");
    eprintln!(
        "pjdfstest: {passed} passed, {} failed: {failed:?}",
        failed.len()
    );

    let list = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest_expected_failures.txt"),
    )
    .unwrap();
    let expected: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let unexpected: Vec<&&str> = failed
        .iter()
        .filter(|name| !expected.iter().any(|p| glob(p, name)))
        .collect();
    let stale: Vec<&&str> = expected
        .iter()
        .filter(|p| !failed.iter().any(|name| glob(p, name)))
        .collect();
    if !unexpected.is_empty() {
        eprintln!("{report}");
    }
    assert!(
        unexpected.is_empty(),
        "failures not explained in tests/pjdfstest_expected_failures.txt: {unexpected:?}\n{}",
        unexpected
            .iter()
            .map(|name| failure_detail(&report, name))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stale.is_empty(),
        "expected failures that no longer fail (remove them): {stale:?}"
    );
}

/// A bucket policy that denies requests without TLS refuses everything over
/// http: the start-up message names TLS.
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_bucket_that_requires_tls_is_named_as_the_cause_over_http() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "root/f", b"x".to_vec()).await;
    server.sessions(json!({"require_tls": true}));
    let dir = tempfile::tempdir().unwrap();
    let out = s3vol()
        .args([
            "mount",
            "vol/root",
            dir.path().to_str().unwrap(),
            "--no-cache",
        ])
        .args(server.endpoint_args())
        .envs(server.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("AccessDenied: s3:ListBucket"), "{err}");
    assert!(err.contains("requires TLS"), "{err}");
    assert!(err.contains("aws:SecureTransport"), "{err}");
    assert!(err.contains("use https://"), "{err}");
}
