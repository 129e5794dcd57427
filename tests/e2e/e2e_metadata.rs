//! End to end on Garage: modes, owners, times and symbolic links kept in the
//! objects' metadata, as rsync, cp, tar and make use them, as other users see
//! them, and as s3fs-fuse and rclone write and read them.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Mount, Server};

const BUCKET: &str = "vol";

async fn garage() -> Server {
    Server::garage_with(BUCKET).await
}

/// Unmounts and waits for the daemon to exit: by then every change of mode,
/// owner or time still waiting is in S3.
fn stop(mount: Mount) {
    let path = mount.path().to_path_buf();
    drop(mount);
    common::assert_daemon_exits(&path, "after its unmount");
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with what backups and software trees hold: modes other than the
/// defaults, times in the past, a symbolic link, a subdirectory.
fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for (name, mode) in [("private", 0o600), ("script", 0o755), ("sub/data", 0o640)] {
        let path = dir.join(name);
        std::fs::write(&path, format!("{name}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::symlink("sub/data", dir.join("link")).unwrap();
    run(Command::new("touch")
        .args(["-h", "-d", "2020-02-03 04:05:06.789"])
        .arg(dir.join("private"))
        .arg(dir.join("script"))
        .arg(dir.join("sub/data")));
}

/// What `ls -l`-like comparison needs of each entry under `dir`: name, type and
/// mode, size, modification time to the second, link target.
fn describe(dir: &Path) -> Vec<String> {
    let out = run(Command::new("find")
        .arg(".")
        .args(["-mindepth", "1", "-not", "-type", "d"])
        .args(["-printf", "%P %M %s %TY-%Tm-%Td %TH:%TM:%.2TS %l\n"])
        .current_dir(dir));
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn rsync_a_twice_sends_nothing_the_second_time_and_keeps_everything() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    for i in 0..50 {
        std::fs::write(source.path().join(format!("f{i:02}")), vec![b'x'; i * 100]).unwrap();
    }
    let target = format!("{}/", mount.path().display());
    let from = format!("{}/", source.path().display());
    let stats = |out: &str| -> usize {
        let line = out
            .lines()
            .find(|l| l.starts_with("Number of regular files transferred"))
            .unwrap_or_else(|| panic!("{out}"));
        line.rsplit(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    let first = run(Command::new("rsync").args(["-a", "--stats", &from, &target]));
    assert_eq!(stats(&first), 53);
    let second = run(Command::new("rsync").args(["-a", "--stats", &from, &target]));
    assert_eq!(stats(&second), 0, "{second}");
    assert_eq!(describe(source.path()), describe(mount.path()));

    // And as another mount sees it.
    stop(mount);
    let fresh = Mount::new(&server, "vol/root", &["--read-write"]);
    assert_eq!(describe(source.path()), describe(fresh.path()));
    let again = run(Command::new("rsync").args([
        "-a",
        "--stats",
        &from,
        &format!("{}/", fresh.path().display()),
    ]));
    assert_eq!(stats(&again), 0, "{again}");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn cp_a_and_tar_keep_modes_times_and_links() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    run(Command::new("cp")
        .arg("-a")
        .arg(source.path())
        .arg(mount.path().join("copied")));
    assert_eq!(
        describe(source.path()),
        describe(&mount.path().join("copied"))
    );
    // tar out of the volume and back in.
    let archive = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(archive.path())
        .arg("-C")
        .arg(mount.path().join("copied"))
        .arg("."));
    std::fs::create_dir(mount.path().join("untarred")).unwrap();
    run(Command::new("tar")
        .arg("-xpf")
        .arg(archive.path())
        .arg("-C")
        .arg(mount.path().join("untarred")));
    assert_eq!(
        describe(source.path()),
        describe(&mount.path().join("untarred"))
    );
    assert_eq!(
        std::fs::read_link(mount.path().join("untarred/link")).unwrap(),
        Path::new("sub/data")
    );
    assert_eq!(
        std::fs::read(mount.path().join("untarred/link")).unwrap(),
        b"sub/data\n"
    );
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn make_rebuilds_only_what_changed() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let dir = mount.path();
    std::fs::write(
        dir.join("Makefile"),
        "out: in\n\tcat in > out\n\techo built >> log\n",
    )
    .unwrap();
    std::fs::write(dir.join("in"), "v1\n").unwrap();
    let make = || run(Command::new("make").arg("-C").arg(dir));
    make();
    make();
    assert_eq!(std::fs::read_to_string(dir.join("log")).unwrap(), "built\n");
    // Changed within the same second as the build: the times kept are the
    // writes' own, to the nanosecond, not S3's to the second.
    std::fs::write(dir.join("in"), "v2\n").unwrap();
    make();
    make();
    assert_eq!(
        std::fs::read_to_string(dir.join("log")).unwrap(),
        "built\nbuilt\n"
    );
    assert_eq!(std::fs::read_to_string(dir.join("out")).unwrap(), "v2\n");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_file_made_private_is_refused_to_other_users_of_an_allow_other_mount() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/root", &["--read-write", "--allow-other"]);
    let private = mount.path().join("private");
    let shared = mount.path().join("shared");
    std::fs::write(&private, "secret\n").unwrap();
    std::fs::write(&shared, "open\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cat_as_nobody = |path: &Path| {
        common::host::as_user(common::host::NOBODY, "cat")
            .arg(path)
            .output()
            .unwrap()
    };
    let refused = cat_as_nobody(&private);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );
    assert_eq!(cat_as_nobody(&shared).stdout, b"open\n");
    // Its extended attributes likewise: not read through a file that may not
    // be read, not set on one that may not be written (the shared one is
    // root's 0644), and nothing of them reaches S3.
    run(Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "mine"])
        .arg(&private));
    let as_nobody = |args: &[&str], path: &Path| {
        let program = args[0];
        common::host::as_user(common::host::NOBODY, program)
            .args(&args[1..])
            .arg(path)
            .output()
            .unwrap()
    };
    for (args, path) in [
        (&["getfattr", "-n", "user.tag"][..], &private),
        (
            &["setfattr", "-n", "user.tag", "-v", "theirs"][..],
            &private,
        ),
        (&["setfattr", "-n", "user.tag", "-v", "theirs"][..], &shared),
        (&["setfattr", "-x", "user.tag"][..], &private),
    ] {
        let out = as_nobody(args, path);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{args:?} {path:?}: {out:?}"
        );
    }
    assert_eq!(getfattr(&private, "user.tag"), "mine");
    // Kept in S3: a new mount refuses it too.
    stop(mount);
    let fresh = Mount::new(&server, "vol/root", &["--allow-other"]);
    let meta = std::fs::metadata(fresh.path().join("private")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert!(
        !cat_as_nobody(&fresh.path().join("private"))
            .status
            .success()
    );
}

/// s3fs-fuse 1.90 and rclone 1.60 wrote these headers in a run against Garage;
/// s3vol shows them, and what s3vol writes carries headers both read.
#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn what_s3fs_and_rclone_wrote_shows_and_what_s3vol_writes_they_read() {
    let server = garage().await;
    let client = server.client();
    let put = |key: &'static str, body: &'static [u8], meta: &[(&str, &str)]| {
        let mut request = client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.to_vec().into());
        for (name, value) in meta {
            request = request.metadata(*name, *value);
        }
        request.send()
    };
    put(
        "root/by-s3fs",
        b"hi\n",
        &[
            ("mode", "33184"),
            ("uid", "1234"),
            ("gid", "5678"),
            ("mtime", "1577934245.123456789"),
            ("atime", "1577934245.123456789"),
            ("ctime", "1796083096"),
        ],
    )
    .await
    .unwrap();
    put("root/s3fs-link", b"by-s3fs", &[("mode", "41471")])
        .await
        .unwrap();
    put(
        "root/by-rclone",
        b"hello\n",
        &[
            ("mode", "100604"),
            ("uid", "42"),
            ("gid", "43"),
            ("mtime", "1557126489.987654321"),
            ("atime", "2019-05-06T07:08:09.987654321Z"),
        ],
    )
    .await
    .unwrap();
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let s3fs = std::fs::symlink_metadata(mount.path().join("by-s3fs")).unwrap();
    assert_eq!(
        (s3fs.mode(), s3fs.uid(), s3fs.gid()),
        (0o100640, 1234, 5678)
    );
    assert_eq!((s3fs.mtime(), s3fs.mtime_nsec()), (1577934245, 123456789));
    let rclone = std::fs::symlink_metadata(mount.path().join("by-rclone")).unwrap();
    assert_eq!(
        (rclone.mode(), rclone.uid(), rclone.gid()),
        (0o100604, 42, 43)
    );
    assert_eq!(rclone.mtime(), 1557126489);
    assert_eq!(
        std::fs::read_link(mount.path().join("s3fs-link")).unwrap(),
        Path::new("by-s3fs")
    );

    // chmod and touch of rclone's file keep its other headers.
    let path = mount.path().join("by-rclone");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    run(Command::new("touch")
        .args(["-d", "@1600000000.5"])
        .arg(&path));
    // A new file and a link, as s3vol writes them.
    std::fs::write(mount.path().join("ours"), "ours\n").unwrap();
    std::fs::set_permissions(
        mount.path().join("ours"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("ours", mount.path().join("our-link")).unwrap();
    stop(mount);

    let meta = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .head_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap()
                .metadata()
                .cloned()
                .unwrap_or_default()
        }
    };
    let rclone = meta("root/by-rclone").await;
    assert_eq!(rclone["mode"], "0100640");
    assert_eq!(rclone["mtime"], "1600000000.500000000");
    assert_eq!(rclone["uid"], "42");
    assert_eq!(rclone["atime"], "2019-05-06T07:08:09.987654321Z");
    let ours = meta("root/ours").await;
    assert_eq!(ours["mode"], "0100750");
    assert_eq!(ours["uid"], nix::unistd::getuid().to_string());
    let link = meta("root/our-link").await;
    assert_eq!(link["mode"], "0120777");
    assert_eq!(
        server.get(BUCKET, "root/our-link").await.as_deref(),
        Some(&b"ours"[..])
    );
}

/// s3fs-fuse mounted over the bucket, for as long as it lives.
struct S3fs {
    dir: tempfile::TempDir,
    _passwd: tempfile::NamedTempFile,
}

impl S3fs {
    fn mount(server: &Server) -> S3fs {
        let passwd = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            passwd.path(),
            format!("{}:{}\n", server.access_key, server.secret_key),
        )
        .unwrap();
        std::fs::set_permissions(passwd.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("s3fs")
            .arg(BUCKET)
            .arg(dir.path())
            .arg("-o")
            .arg(format!(
                // use_xattr: s3fs's extended attributes are off by default.
                "url={},use_path_request_style,use_xattr,endpoint={},passwd_file={}",
                server.endpoint,
                server.region,
                passwd.path().display()
            )));
        S3fs {
            dir,
            _passwd: passwd,
        }
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path())
            .status();
    }
}

/// rclone with the server as remote `g:`.
fn rclone(server: &Server) -> Command {
    let mut command = Command::new("rclone");
    command
        // rclone refuses to start with a CA bundle it cannot use, and needs none
        // for plain http.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_G_TYPE", "s3")
        .env("RCLONE_CONFIG_G_PROVIDER", "Other")
        .env("RCLONE_CONFIG_G_ENDPOINT", &server.endpoint)
        .env("RCLONE_CONFIG_G_ACCESS_KEY_ID", &server.access_key)
        .env("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", &server.secret_key)
        .env("RCLONE_CONFIG_G_REGION", &server.region)
        .env("RCLONE_CONFIG", "/dev/null");
    command
}

/// The real tools, both ways: what s3vol writes, s3fs-fuse shows and
/// `rclone copy --metadata` restores; what they write, s3vol shows.
#[tokio::test]
#[ignore = "needs Garage, s3fs and rclone; run scripts/test.sh"]
async fn s3fs_and_rclone_read_what_s3vol_writes_and_the_other_way_round() {
    let server = garage().await;
    // s3vol writes.
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", source.path().display()))
        .arg(mount.path()));
    let tagged = mount.path().join("private");
    run(Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "by-s3vol"])
        .arg(&tagged));
    run(Command::new("chmod").arg("640").arg(&tagged));
    let changed = std::fs::metadata(&tagged).unwrap().ctime();
    std::fs::write(mount.path().join("notes.json"), "{}\n").unwrap();
    stop(mount);

    // s3fs shows modes, times, the link, the attribute and the change time.
    {
        let s3fs = S3fs::mount(&server);
        let root = s3fs.dir.path().join("root");
        let mut theirs = describe(&root);
        theirs.retain(|entry| !entry.starts_with("notes.json "));
        let mut ours = describe(source.path());
        for entry in &mut ours {
            if entry.starts_with("private ") {
                *entry = entry.replacen("-rw-------", "-rw-r-----", 1);
            }
        }
        assert_eq!(ours, theirs);
        assert_eq!(getfattr(&root.join("private"), "user.tag"), "by-s3vol");
        assert_eq!(
            std::fs::metadata(root.join("private")).unwrap().ctime(),
            changed
        );
    }
    // rclone sees the type s3vol gave.
    let listed = run(rclone(&server).args(["lsjson", "g:vol/root/notes.json"]));
    assert!(
        listed.contains("\"MimeType\":\"application/json\""),
        "{listed}"
    );
    // rclone restores modes and times to a local copy.
    let restored = tempfile::tempdir().unwrap();
    run(rclone(&server)
        .args(["copy", "--metadata", "g:vol/root/sub"])
        .arg(restored.path()));
    let data = std::fs::metadata(restored.path().join("data")).unwrap();
    let original = std::fs::metadata(source.path().join("sub/data")).unwrap();
    assert_eq!(data.mode() & 0o7777, 0o640);
    assert_eq!(data.mtime(), original.mtime());
    assert_eq!(data.mtime_nsec(), original.mtime_nsec());

    // They write: s3fs a file it chmods, chowns and touches; rclone a copy with
    // its metadata.
    {
        let s3fs = S3fs::mount(&server);
        let theirs = s3fs.dir.path().join("from-s3fs");
        std::fs::write(&theirs, "s3fs\n").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o604)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4321), Some(8765)).unwrap();
        run(Command::new("touch")
            .args(["-d", "2019-09-09 09:09:09"])
            .env("TZ", "UTC")
            .arg(&theirs));
        std::os::unix::fs::symlink("from-s3fs", s3fs.dir.path().join("s3fs-link")).unwrap();
        run(Command::new("setfattr")
            .args(["-n", "user.tag", "-v", "by-s3fs"])
            .arg(&theirs));
    }
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("from-rclone");
    std::fs::write(&file, "rclone\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o610)).unwrap();
    run(Command::new("touch")
        .args(["-d", "2018-08-08 08:08:08.5"])
        .arg(&file));
    run(rclone(&server)
        .args(["copy", "--metadata"])
        .arg(&file)
        .arg("g:vol/"));
    let page = local.path().join("page.html");
    std::fs::write(&page, "<p>rclone</p>\n").unwrap();
    run(rclone(&server).args(["copy"]).arg(&page).arg("g:vol/"));

    // What s3fs stored. Under load, s3fs 1.90 has been seen to lose the chown,
    // and the chmod before it: the touch after them rewrote the metadata from
    // s3fs's own stale copy. s3vol must show what the object carries,
    // whatever that is.
    let head = server.head("vol", "from-s3fs").await;
    let stored = head.metadata().cloned().unwrap_or_default();
    let number = |name: &str, default: u32| -> u32 {
        stored.get(name).map_or(default, |v| v.parse().unwrap())
    };
    let owner = (number("uid", 0), number("gid", 0));
    if owner != (4321, 8765) {
        eprintln!("s3fs stored no chown this time: {stored:?}");
    }
    let mode = number("mode", 0);
    assert!(
        [0o100604, 0o100644].contains(&mode),
        "the mode s3fs chmodded to, or the one it created with: {stored:?}"
    );
    eprintln!("s3fs stored {stored:?}");

    let mount = Mount::new(&server, "vol", &[]);
    let s3fs = std::fs::symlink_metadata(mount.path().join("from-s3fs")).unwrap();
    assert_eq!(
        (s3fs.mode(), s3fs.uid(), s3fs.gid()),
        (mode, owner.0, owner.1)
    );
    assert_eq!(
        std::fs::read_link(mount.path().join("s3fs-link")).unwrap(),
        Path::new("from-s3fs")
    );
    // Its attribute, and its change time to the second it keeps.
    assert_eq!(
        getfattr(&mount.path().join("from-s3fs"), "user.tag"),
        "by-s3fs"
    );
    let kept: f64 = stored["ctime"].parse().unwrap();
    assert_eq!(s3fs.ctime(), kept as i64);
    let rclone = std::fs::symlink_metadata(mount.path().join("from-rclone")).unwrap();
    let local = std::fs::metadata(&file).unwrap();
    assert_eq!(rclone.mode(), 0o100610);
    assert_eq!(
        (rclone.mtime(), rclone.mtime_nsec()),
        (local.mtime(), local.mtime_nsec())
    );
    assert_eq!(
        run(Command::new("date")
            .args(["-u", "-r"])
            .arg(mount.path().join("from-s3fs"))
            .arg("+%F %T")),
        run(Command::new("date")
            .args(["-u", "-d", "2019-09-09 09:09:09", "+%F %T"])
            .env("TZ", "UTC"))
    );
    drop(mount);
    // rclone's type for the page stays through a chmod here.
    assert_eq!(
        content_type(&server, "page.html").await.as_deref(),
        Some("text/html; charset=utf-8")
    );
    let mount = Mount::new(&server, "vol", &["--read-write"]);
    run(Command::new("chmod")
        .arg("600")
        .arg(mount.path().join("page.html")));
    stop(mount);
    assert_eq!(
        content_type(&server, "page.html").await.as_deref(),
        Some("text/html; charset=utf-8")
    );
}

/// The Content-Type S3 gives for `key`.
async fn content_type(server: &Server, key: &str) -> Option<String> {
    server
        .head(BUCKET, key)
        .await
        .content_type()
        .map(str::to_string)
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn objects_get_the_type_of_their_extension_and_keep_one_given_elsewhere() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/t", &["--read-write", "--part-size", "5MiB"]);
    let dir = mount.path();
    std::fs::write(dir.join("page.html"), "<p>hi</p>").unwrap();
    std::fs::write(dir.join("data.json"), "{\"a\": [1, 2]}\n").unwrap();
    // A multipart upload, which Garage stores no type for unless asked.
    std::fs::write(dir.join("big.png"), common::pattern(12 << 20, 1)).unwrap();
    std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
    std::fs::create_dir(dir.join("d")).unwrap();
    // An object another tool wrote with a type of its own.
    server
        .client()
        .put_object()
        .bucket(BUCKET)
        .key("t/report.bin")
        .content_type("text/x-report")
        .body(b"report".to_vec().into())
        .send()
        .await
        .unwrap();
    let wanted = [
        ("t/page.html", "text/html"),
        ("t/data.json", "application/json"),
        ("t/big.png", "image/png"),
        ("t/tool", "application/octet-stream"),
        ("t/d/", "application/x-directory"),
    ];
    for (key, kind) in wanted {
        assert_eq!(
            content_type(&server, key).await.as_deref(),
            Some(kind),
            "{key}"
        );
    }
    // chmod and touch copy in place, a rename with the same extension copies:
    // the type stays; a new extension brings its own.
    run(Command::new("chmod").arg("600").arg(dir.join("report.bin")));
    run(Command::new("touch").arg(dir.join("data.json")));
    std::fs::rename(dir.join("report.bin"), dir.join("report2.bin")).unwrap();
    std::fs::rename(dir.join("page.html"), dir.join("page.txt")).unwrap();
    std::fs::rename(dir.join("big.png"), dir.join("big2.png")).unwrap();
    // A presigned URL serves the type too (a GET: the URL is signed for one),
    // the one `file` finds in what it downloads.
    std::fs::write(
        dir.join("doc.html"),
        "<!DOCTYPE html>\n<html><body>hi</body></html>\n",
    )
    .unwrap();
    std::fs::write(dir.join("pic.png"), common::png()).unwrap();
    let download = tempfile::tempdir().unwrap();
    for (name, kind) in [
        ("data.json", "application/json"),
        ("doc.html", "text/html"),
        ("pic.png", "image/png"),
    ] {
        let url = run(common::s3vol().args(["url"]).arg(dir.join(name)));
        let body = download.path().join(name);
        let headers = run(Command::new("curl")
            .args(["-sS", "-D", "-", "-o"])
            .arg(&body)
            .arg(url.trim()));
        assert!(
            headers
                .to_ascii_lowercase()
                .contains(&format!("content-type: {kind}")),
            "{name}: {headers}"
        );
        let found = run(Command::new("file").args(["-b", "--mime-type"]).arg(&body));
        assert_eq!(found.trim(), kind, "{name}");
    }
    stop(mount);
    assert_eq!(
        content_type(&server, "t/report2.bin").await.as_deref(),
        Some("text/x-report")
    );
    assert_eq!(
        content_type(&server, "t/data.json").await.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        content_type(&server, "t/page.txt").await.as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        content_type(&server, "t/big2.png").await.as_deref(),
        Some("image/png")
    );

    // --no-content-type: uploads carry none (S3's default is the server's).
    let mount = Mount::new(&server, "vol/n", &["--read-write", "--no-content-type"]);
    std::fs::write(mount.path().join("page.html"), "<p>hi</p>").unwrap();
    stop(mount);
    assert_ne!(
        content_type(&server, "n/page.html").await.as_deref(),
        Some("text/html")
    );
}

/// `stat`'s change time, to the nanosecond.
fn ctime(path: &Path) -> (i64, i64) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.ctime(), meta.ctime_nsec())
}

fn getfattr(path: &Path, name: &str) -> String {
    run(Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path))
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn extended_attributes_and_change_times_work_with_the_usual_tools() {
    let server = garage().await;
    let mount = Mount::new(&server, "vol/x", &["--read-write"]);
    let dir = mount.path().to_path_buf();
    let file = dir.join("f.txt");
    std::fs::write(&file, "hello\n").unwrap();
    run(Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "blue"])
        .arg(&file));
    run(Command::new("setfattr")
        .args(["-n", "user.bin", "-v", "0x00ff0a"])
        .arg(&file));
    let dump = run(Command::new("getfattr")
        .args(["-d", "-e", "hex", "--absolute-names"])
        .arg(&file));
    assert!(dump.contains("user.bin=0x00ff0a"), "{dump}");
    assert!(dump.contains("user.tag=0x626c7565"), "{dump}");
    // Refused with the errnos Linux filesystems use, keeping what was there.
    let refused = |args: &[&str], message: &str| {
        let out = Command::new("setfattr")
            .args(args)
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{args:?}: {stderr}"
        );
    };
    refused(&["-n", "trusted.x", "-v", "1"], "Operation not supported");
    refused(
        &["-n", "user.big", "-v", &"x".repeat(1500)],
        "Argument list too long",
    );
    let fill = "y".repeat(700);
    run(Command::new("setfattr")
        .args(["-n", "user.fill", "-v", &fill])
        .arg(&file));
    refused(&["-n", "user.more", "-v", &fill], "No space left on device");
    run(Command::new("setfattr")
        .args(["-x", "user.fill"])
        .arg(&file));
    refused(&["-x", "user.none"], "No such attribute");
    assert_eq!(getfattr(&file, "user.tag"), "blue");

    // The change time: chmod, a rename and setfattr move it; a read does not.
    let before = ctime(&file);
    let mtime = std::fs::metadata(&file).unwrap().mtime_nsec();
    std::thread::sleep(std::time::Duration::from_millis(20));
    run(Command::new("chmod").arg("600").arg(&file));
    let chmodded = ctime(&file);
    assert!(chmodded > before, "{chmodded:?} after {before:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().mtime_nsec(), mtime);
    run(Command::new("cat").arg(&file));
    assert_eq!(ctime(&file), chmodded);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let renamed = dir.join("g.txt");
    std::fs::rename(&file, &renamed).unwrap();
    let moved = ctime(&renamed);
    assert!(moved > chmodded, "{moved:?} after {chmodded:?}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    run(Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "green"])
        .arg(&renamed));
    let tagged = ctime(&renamed);
    assert!(tagged > moved, "{tagged:?} after {moved:?}");
    let found = run(Command::new("find")
        .arg(&dir)
        .args(["-cmin", "-1", "-name", "g.txt"]));
    assert_eq!(found.trim(), renamed.to_str().unwrap());

    // cp -a and rsync -aX carry them in and out; a second rsync sends nothing.
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("in");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("a.txt"), "a\n").unwrap();
    run(Command::new("setfattr")
        .args(["-n", "user.origin", "-v", "local"])
        .arg(source.join("a.txt")));
    run(Command::new("cp")
        .arg("-a")
        .arg(source.join("a.txt"))
        .arg(dir.join("a.txt")));
    assert_eq!(getfattr(&dir.join("a.txt"), "user.origin"), "local");
    let from = format!("{}/", source.display());
    let to = format!("{}/", dir.join("synced").display());
    run(Command::new("rsync").args(["-aX", &from, &to]));
    assert_eq!(getfattr(&dir.join("synced/a.txt"), "user.origin"), "local");
    let again = run(Command::new("rsync").args(["-aXi", &from, &to]));
    assert!(
        again.lines().all(|l| l.starts_with(".d")),
        "sent again: {again}"
    );
    run(Command::new("cp")
        .arg("-a")
        .arg(&renamed)
        .arg(local.path().join("back.txt")));
    assert_eq!(
        getfattr(&local.path().join("back.txt"), "user.tag"),
        "green"
    );
    stop(mount);

    // What S3 holds: s3fs's encoding and the change time, which a fresh
    // mount shows as they were.
    let head = server.head(BUCKET, "x/g.txt").await;
    let stored = head.metadata().cloned().unwrap_or_default();
    let xattrs = s3vol::fs::xattrs::Xattrs::decode(&stored["xattr"]);
    assert_eq!(xattrs.get("user.tag"), Some(&b"green"[..]));
    assert_eq!(xattrs.get("user.bin"), Some(&[0, 0xff, b'\n'][..]));
    assert!(stored.contains_key("ctime"), "{stored:?}");
    let fresh = Mount::new(&server, "vol/x", &[]);
    let shown = fresh.path().join("g.txt");
    assert_eq!(getfattr(&shown, "user.tag"), "green");
    assert_eq!(ctime(&shown), tagged);
}

/// Over HTTPS, as volumes on AWS are: the modes and times a first mount
/// wrote show to a fresh mount's `ls -l`, whose HEADs (after the SDK's first,
/// which teaches s3vol where and how to send them) are signed and sent by
/// s3vol itself, through the same TLS the SDK's client speaks.
#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn ls_l_over_https_shows_what_was_written_with_heads_sent_without_the_sdk() {
    let server = garage().await;
    let front = common::tls::TlsFront::start(&server.endpoint);
    let mut env = server.env();
    env.push(front.trust());
    let endpoint = front.endpoint();
    let writer = Mount::at_endpoint(&endpoint, BUCKET, &["--read-write"], &env);
    // Larger than the 64 KiB a lookup reads instead of a HEAD.
    for (name, mode) in [("a", 0o600), ("b", 0o755), ("c", 0o640), ("d", 0o444)] {
        let path = writer.path().join(name);
        std::fs::write(&path, vec![b'x'; 100 << 10]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let written = describe(writer.path());
    stop(writer);

    let reader = Mount::at_endpoint(&endpoint, BUCKET, &["--log-level", "debug"], &env);
    let listed = run(Command::new("ls").arg("-l").arg(reader.path()));
    assert_eq!(describe(reader.path()), written, "{listed}");
    let stats = reader.stats();
    assert!(
        stats["requests"]["HeadObject"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert_eq!(stats["request_errors"], 0, "{stats}");
    // Sent and read without the SDK, none sent again: the HEADs after its
    // first (which may have been the mount's own, before any counted here)
    // and any sent beside that one, before it was learnt from.
    let heads = stats["requests"]["HeadObject"].as_u64().unwrap();
    let without = &stats["heads_without_the_sdk"];
    let answered = without["answered"].as_u64().unwrap();
    assert!((heads - 1..=heads).contains(&answered), "{stats}");
    assert_eq!(without["resent"], 0, "{stats}");
    let log = reader.log_text();
    assert!(
        log.contains("HEADs are signed and sent here from now on") && log.contains(&endpoint),
        "{log}"
    );
}
