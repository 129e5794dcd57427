//! End to end: `--audit-log` on a read-write volume over Garage, driven by the
//! tools people use, and on a disk that fills up.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Mount, Server, ServerKind};

const BUCKET: &str = "vol";

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Garage with `key` holding `data`, and vol/data mounted read-write with an
/// audit log (in the returned directory, at the returned path).
async fn audited_volume(
    key: &str,
    data: &[u8],
) -> (Server, Mount, tempfile::TempDir, std::path::PathBuf) {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, key, data.to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let vol = Mount::new(
        &server,
        "vol/data",
        &["--read-write", "--audit-log", log.to_str().unwrap()],
    );
    (server, vol, dir, log)
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn each_operation_is_a_line_naming_the_command_that_asked() {
    let (server, vol, _dir, log) = audited_volume("data/in.txt", b"input").await;
    let at = |name: &str| vol.path().join(name);
    run("cat", &[&at("in.txt")]);
    run("cp", &[&at("in.txt"), &at("copy.txt")]);
    run("mv", &[&at("copy.txt"), &at("moved.txt")]);
    run("mkdir", &[&at("d")]);
    run("touch", &[&at("d/x")]);
    let refused = Command::new("rmdir").arg(at("d")).status().unwrap();
    assert!(!refused.success(), "d is not empty");
    run("rm", &[&at("d/x")]);
    run("rmdir", &[&at("d")]);
    run("rm", &[&at("moved.txt")]);
    common::unmount(vol.path());

    let lines = lines(&log);
    let seen: Vec<(String, String, String, i64)> = lines
        .iter()
        .map(|l| {
            let text = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (
                text("command"),
                text("op"),
                text("key"),
                l["errno"].as_i64().unwrap(),
            )
        })
        .collect();
    let has = |command: &str, op: &str, key: &str, errno: i32| {
        let wanted = (command.into(), op.into(), key.into(), i64::from(errno));
        assert!(seen.contains(&wanted), "no {wanted:?} in {seen:#?}");
    };
    has("cat", "read", "data/in.txt", 0);
    has("cp", "read", "data/in.txt", 0);
    has("cp", "create", "data/copy.txt", 0);
    has("cp", "write", "data/copy.txt", 0);
    has("mv", "rename", "data/copy.txt", 0);
    has("mkdir", "mkdir", "data/d/", 0);
    has("touch", "create", "data/d/x", 0);
    has("rmdir", "rmdir", "data/d/", libc::ENOTEMPTY);
    has("rm", "unlink", "data/d/x", 0);
    has("rmdir", "rmdir", "data/d/", 0);
    has("rm", "unlink", "data/moved.txt", 0);
    let write = lines.iter().find(|l| l["op"] == "write").unwrap();
    let head = server.head(BUCKET, "data/in.txt").await;
    // The copy has the same bytes, so the same (single-part) ETag.
    assert_eq!(write["etag"], head.e_tag().unwrap());
    assert_eq!(write["size"], 5);
    let rename = lines.iter().find(|l| l["op"] == "rename").unwrap();
    assert_eq!(rename["to"], "data/moved.txt");
    for line in &lines {
        assert_eq!(line["uid"], 0, "{line}");
        assert!(line["pid"].as_u64().unwrap() > 0, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Every operation that reads or changes the bucket, or hands out access to
/// it, leaves exactly one line, whichever command makes it: the first read
/// through a read-write descriptor, a listing, a link made and read, a mode,
/// an owner and a time set, `s3vol info` and `s3vol url`.
#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn every_operation_on_the_bucket_is_exactly_one_line() {
    let (_server, vol, _dir, log) = audited_volume("data/in.txt", b"input").await;
    let at = |name: &str| vol.path().join(name);
    let steps: &[(&str, &[&str])] = &[
        ("cat", &["in.txt"]),
        ("ls", &["."]),
        ("ln", &["-s", "in.txt", "link"]),
        ("readlink", &["link"]),
        ("chmod", &["600", "in.txt"]),
        ("chown", &["1000:1000", "in.txt"]),
        ("touch", &["-m", "-d", "@1700000000", "in.txt"]),
        ("setfattr", &["-n", "user.tag", "-v", "x", "in.txt"]),
        ("getfattr", &["-d", "in.txt"]),
        ("setfattr", &["-x", "user.tag", "in.txt"]),
        ("python3", &["-c", "open('in.txt', 'r+b').read(3)"]),
        ("mkdir", &["d"]),
        ("rmdir", &["d"]),
        ("cp", &["in.txt", "copy.txt"]),
        // truncate(2) by name: the kernel sends the time with the size.
        ("python3", &["-c", "import os; os.truncate('copy.txt', 2)"]),
        ("mv", &["copy.txt", "moved.txt"]),
        ("rm", &["moved.txt"]),
    ];
    for (program, args) in steps {
        let status = Command::new(program)
            .args(*args)
            .current_dir(vol.path())
            .status()
            .unwrap();
        assert!(status.success(), "{program} {args:?}");
    }
    for args in [&["info"][..], &["url"], &["url", "--method", "put"]] {
        let out = common::s3vol()
            .args(args)
            .arg(at("in.txt"))
            .output()
            .unwrap();
        assert!(common::succeeded(&out), "s3vol {args:?}");
    }
    common::unmount(vol.path());

    let mut seen: Vec<(String, String, String)> = lines(&log)
        .iter()
        .map(|l| {
            assert_eq!(l["errno"], 0, "{l}");
            let text = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (text("command"), text("op"), text("key"))
        })
        .collect();
    seen.sort();
    let mut wanted: Vec<(String, String, String)> = [
        ("cat", "read", "data/in.txt"),
        ("ls", "list", "data/"),
        ("ln", "symlink", "data/link"),
        ("readlink", "readlink", "data/link"),
        ("chmod", "chmod", "data/in.txt"),
        ("chown", "chown", "data/in.txt"),
        ("touch", "utimens", "data/in.txt"),
        ("setfattr", "setxattr", "data/in.txt"),
        ("setfattr", "removexattr", "data/in.txt"),
        ("python3", "read", "data/in.txt"),
        ("mkdir", "mkdir", "data/d/"),
        ("rmdir", "rmdir", "data/d/"),
        ("cp", "read", "data/in.txt"),
        ("cp", "create", "data/copy.txt"),
        ("cp", "write", "data/copy.txt"),
        ("python3", "write", "data/copy.txt"),
        ("mv", "rename", "data/copy.txt"),
        ("rm", "unlink", "data/moved.txt"),
        ("s3vol", "info", "data/in.txt"),
        ("s3vol", "url", "data/in.txt"),
        ("s3vol", "url", "data/in.txt"),
    ]
    .iter()
    .map(|(c, o, k)| (c.to_string(), o.to_string(), k.to_string()))
    .collect();
    wanted.sort();
    assert_eq!(seen, wanted);
    let lines = lines(&log);
    let chmod = lines.iter().find(|l| l["op"] == "chmod").unwrap();
    assert_eq!(chmod["mode"], "0600");
    let chown = lines.iter().find(|l| l["op"] == "chown").unwrap();
    assert_eq!(
        (chown["owner_uid"].as_u64(), chown["owner_gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    let names: Vec<&str> = lines
        .iter()
        .filter(|l| l["op"].as_str().unwrap().ends_with("xattr"))
        .map(|l| l["xattr"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user.tag", "user.tag"]);
    let methods: Vec<&str> = lines
        .iter()
        .filter(|l| l["op"] == "url")
        .map(|l| {
            assert!(l["expires"].as_str().unwrap().ends_with('Z'), "{l}");
            l["method"].as_str().unwrap()
        })
        .collect();
    assert_eq!(methods, ["GET", "PUT"]);
}

/// A change uploaded at the file's last release (its opener closed before the
/// change was made, by a child it forked, whose close publishes nothing) is
/// recorded as the writer's: the release carries no caller of its own.
#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_change_uploaded_at_the_last_release_names_its_writer() {
    let (server, vol, _dir, log) = audited_volume("data/shared.txt", b"before\n").await;
    // The parent opens the file and closes it unchanged; then its child,
    // which inherited the descriptor, writes and closes it.
    let script = "import os, sys\n\
        fd = os.open(sys.argv[1], os.O_WRONLY)\n\
        r, w = os.pipe()\n\
        pid = os.fork()\n\
        if pid == 0:\n\
        \x20   os.close(w)\n\
        \x20   os.read(r, 1)\n\
        \x20   os.write(fd, b'after!\\n')\n\
        \x20   os.close(fd)\n\
        \x20   os._exit(0)\n\
        os.close(fd)\n\
        os.write(w, b'x')\n\
        os.waitpid(pid, 0)\n\
        print(pid)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(vol.path().join("shared.txt"))
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    let child: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || { lines(&log).iter().any(|l| l["op"] == "write") }
    ));
    // truncate(2) of a file no one has open is uploaded at once, by its caller.
    let status = Command::new("python3")
        .args(["-c", "import os, sys; os.truncate(sys.argv[1], 3)"])
        .arg(vol.path().join("shared.txt"))
        .status()
        .unwrap();
    assert!(status.success());
    common::unmount(vol.path());
    assert_eq!(
        server.get(BUCKET, "data/shared.txt").await.as_deref(),
        Some(&b"aft"[..])
    );
    let lines = lines(&log);
    let writes: Vec<&serde_json::Value> = lines.iter().filter(|l| l["op"] == "write").collect();
    assert_eq!(writes.len(), 2, "{lines:#?}");
    assert_eq!(writes[0]["key"], "data/shared.txt");
    assert_eq!(writes[0]["pid"], child, "{}", writes[0]);
    assert_eq!(writes[0]["size"], 7, "{}", writes[0]);
    assert_eq!(writes[1]["command"], "python3", "{}", writes[1]);
    assert_eq!(writes[1]["size"], 3, "{}", writes[1]);
}

#[tokio::test]
#[ignore = "needs Garage and root; run scripts/test.sh"]
async fn a_full_disk_drops_lines_and_never_the_operations() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    // A disk of 8 KiB for the log: a few dozen lines fill it.
    let disk = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _unmount_disk = common::Unmount(disk.path());
    let log = disk.path().join("audit.log");
    let vol = Mount::new(
        &server,
        BUCKET,
        &["--read-write", "--audit-log", log.to_str().unwrap()],
    );
    for i in 0..100 {
        let path = vol.path().join(format!("f{i}"));
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }
    let stats = vol.stats();
    let (written, dropped) = (
        stats["audit"]["lines_written"].as_u64().unwrap(),
        stats["audit"]["lines_dropped"].as_u64().unwrap(),
    );
    assert!(written > 0 && dropped > 0, "{stats}");
    assert_eq!(
        server.keys(BUCKET, "").await.len(),
        100,
        "every file is in S3"
    );
    let text = vol.log_text();
    assert_eq!(
        text.matches("cannot write the audit log").count(),
        1,
        "said once: {text}"
    );
    let out = common::s3vol()
        .args(["stats", vol.path().to_str().unwrap()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("audit log    {written}")),
        "{shown}"
    );
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_read_line_names_the_version_read_and_how_the_read_ended() {
    use std::io::Read;
    // Larger than what a lookup reads of a file (and caches whole).
    let one = common::pattern(200 << 10, 1);
    let two = common::pattern(300 << 10, 2);
    let (server, vol, _dir, log) = audited_volume("data/a.txt", &one).await;
    server.put(BUCKET, "data/gone.txt", one.clone()).await;
    // Opened on one version, replaced before its first read: the handle reads
    // the new one, and the line says so.
    let mut replaced = std::fs::File::open(vol.path().join("a.txt")).unwrap();
    let mut gone = std::fs::File::open(vol.path().join("gone.txt")).unwrap();
    server.put(BUCKET, "data/a.txt", two.clone()).await;
    let mut read = Vec::new();
    replaced.read_to_end(&mut read).unwrap();
    assert!(
        read == two,
        "read {} bytes, not the new version",
        read.len()
    );
    // Deleted before its first read: the read fails, and the line says how.
    server
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key("data/gone.txt")
        .send()
        .await
        .unwrap();
    let failed = gone.read_to_end(&mut read).unwrap_err();
    // Put back as it was (the same bytes, the same ETag): the read that
    // succeeds after the failed one has its line too.
    server.put(BUCKET, "data/gone.txt", one.clone()).await;
    read.clear();
    gone.read_to_end(&mut read).unwrap();
    assert!(read == one);
    drop((replaced, gone));
    common::unmount(vol.path());
    let new_etag = server
        .head(BUCKET, "data/a.txt")
        .await
        .e_tag()
        .unwrap()
        .to_string();
    let lines = lines(&log);
    let read = |key: &str| {
        lines
            .iter()
            .find(|l| l["op"] == "read" && l["key"] == key)
            .unwrap_or_else(|| panic!("no read of {key}: {lines:#?}"))
            .clone()
    };
    let a = read("data/a.txt");
    assert_eq!(a["etag"], new_etag.as_str(), "{a}");
    assert_eq!(a["errno"], 0, "{a}");
    let gone: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["op"] == "read" && l["key"] == "data/gone.txt")
        .collect();
    // Each failed read is a line (the kernel may have asked more than once),
    // then the first that succeeded.
    let (last, failures) = gone.split_last().unwrap();
    assert!(!failures.is_empty(), "{gone:#?}");
    for line in failures {
        assert_eq!(line["errno"], failed.raw_os_error().unwrap(), "{line}");
    }
    assert_eq!(last["errno"], 0, "{last}");
}
