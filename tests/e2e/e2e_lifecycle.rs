//! End to end: how a mount ends. A stop signal while a file is being written
//! either lets the writer finish and upload it (s3vol exits 0), or aborts the
//! upload, never leaving parts or a partial object behind (s3vol exits 1 and
//! names the file);
//! `umount -l` keeps serving files that are open; SIGHUP changes nothing; a killed
//! daemon leaves a mountpoint that `umount` cleans.

use crate::common;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::foreground::Foreground;
use common::writer::Writer;
use common::{Mount, Server, daemon_pids, is_mounted, pattern, s3vol, wait_until};
use tokio::runtime::Handle;

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;

async fn garage() -> Server {
    Server::garage_with(BUCKET).await
}

fn the_daemon(mountpoint: &Path) -> i32 {
    let pids = daemon_pids(mountpoint);
    assert_eq!(pids.len(), 1, "one daemon serves {}", mountpoint.display());
    pids[0]
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

fn wait_for_exit(mountpoint: &Path) {
    common::assert_daemon_exits(mountpoint, "did not exit");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn sigterm_lets_a_writer_finish_and_uploads_its_file() {
    let server = garage().await;
    let mut mount = Foreground::start(&server);
    let pid = mount.pid();
    let data = pattern(24 * MIB, 61);
    let (mut writer, _source) = Writer::start(&data, &mount.path().join("big.bin"));
    writer.step(&format!("write {}", 16 * MIB)).unwrap();

    signal(pid, libc::SIGTERM);
    // The volume leaves the directory tree at once; the open file is still served.
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(mount.path())),
        "not detached"
    );
    assert!(
        mount.child.try_wait().unwrap().is_none(),
        "exited too early"
    );
    writer.step(&format!("write {}", 8 * MIB)).unwrap();
    writer.step("close").expect("close uploads the file");

    assert!(mount.exited_cleanly());
    assert!(
        server.get(BUCKET, "root/big.bin").await.unwrap() == data,
        "the object is not what was written"
    );
    assert_eq!(
        server.pending_uploads(BUCKET, "").await,
        Vec::<String>::new()
    );
    let log = mount.log_text();
    assert!(log.contains("detaching it"), "{log}");
    assert!(log.contains("\"uploads\":{\"objects\":1"), "{log}");
}

/// A file being written when SIGTERM comes, and still open at a second one: its
/// upload is aborted and s3vol exits 0. Blocking; `s3` runs the checks on S3.
/// Returns the log.
fn a_second_sigterm_aborts(server: &Server, s3: &Handle) -> String {
    let mut mount = Foreground::start(server);
    let pid = mount.pid();
    let data = pattern(21 * MIB, 62);
    let (mut writer, _source) = Writer::start(&data, &mount.path().join("big.bin"));
    writer.step(&format!("write {}", 20 * MIB)).unwrap();
    // Parts past the first are uploaded while the file is written.
    assert!(
        wait_until(Duration::from_secs(10), || !s3
            .block_on(server.pending_uploads(BUCKET, ""))
            .is_empty()),
        "no multipart upload began while writing"
    );

    signal(pid, libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(mount.path())),
        "not detached"
    );
    signal(pid, libc::SIGTERM);
    // Changes were lost: the exit says so.
    assert_eq!(mount.exit_code(), Some(1), "{}", mount.log_text());

    let error = writer.step("write 4").unwrap_err();
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED].contains(&error),
        "errno {error}"
    );
    assert!(
        writer.step("close").is_err(),
        "close claimed the file was saved"
    );
    assert!(
        s3.block_on(server.get(BUCKET, "root/big.bin")).is_none(),
        "an object was made of a file still open: {}",
        mount.log_text()
    );
    assert_eq!(
        s3.block_on(server.pending_uploads(BUCKET, "")),
        Vec::<String>::new(),
        "parts were left behind"
    );
    let log = mount.log_text();
    assert!(log.contains("stopping with files still open"), "{log}");
    assert!(log.contains("root/big.bin"), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_second_sigterm_aborts_the_upload_of_a_file_still_open() {
    let server = garage().await;
    let s3 = Handle::current();
    // Wherever fusectl is: the connection is ended through it, or by exiting.
    std::thread::scope(|scope| {
        scope
            .spawn(|| a_second_sigterm_aborts(&server, &s3))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_second_sigterm_ends_the_connection_through_fusectl() {
    let server = garage().await;
    let s3 = Handle::current();
    let log = common::host::in_private_mount_namespace(|| {
        let none = None::<&str>;
        // Where the host has it mounted already (systemd does), the namespace
        // has it too, and mounting it again is EBUSY.
        match nix::mount::mount(
            Some("fusectl"),
            "/sys/fs/fuse/connections",
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            none,
        ) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => panic!("mount fusectl: {e}"),
        }
        a_second_sigterm_aborts(&server, &s3)
    });
    assert!(!log.contains("cannot end the FUSE connection"), "{log}");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_lazy_unmount_serves_open_files_until_they_are_closed() {
    let server = garage().await;
    let data = pattern(3 * MIB, 63);
    server.put(BUCKET, "root/data.bin", data.clone()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let pid = the_daemon(mount.path());
    let mut file = File::open(mount.path().join("data.bin")).unwrap();

    let status = Command::new("umount").arg("-l").arg(mount.path()).status();
    assert!(status.unwrap().success());
    assert!(!is_mounted(mount.path()));
    let mut read = Vec::new();
    file.read_to_end(&mut read).unwrap();
    assert!(read == data, "the open file's content changed");
    assert!(
        daemon_pids(mount.path()).contains(&pid),
        "exited while serving"
    );
    drop(file);
    wait_for_exit(mount.path());
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn umount_cleans_up_after_a_killed_daemon() {
    let server = garage().await;
    server.put(BUCKET, "root/one", b"1".to_vec()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    common::kill_volume(mount.path());
    wait_for_exit(mount.path());

    // ECONNABORTED when the kernel had a request under way as the daemon died.
    let error = std::fs::metadata(mount.path()).unwrap_err();
    assert!(
        matches!(
            error.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{error}"
    );
    let mountpoint = mount.path().to_str().unwrap();
    let again = || {
        s3vol()
            .args(["mount", "vol/root", mountpoint, "--no-cache"])
            .args(server.endpoint_args())
            .envs(server.env())
            .output()
            .unwrap()
    };
    let refused = again();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("whose daemon is gone")
            && stderr.contains(&format!("clean it up with `umount {mountpoint}`")),
        "{stderr}"
    );

    let status = Command::new("umount").arg(mount.path()).status();
    assert!(status.unwrap().success());
    assert!(!is_mounted(mount.path()));
    let remounted = again();
    assert!(
        remounted.status.success(),
        "{}",
        String::from_utf8_lossy(&remounted.stderr)
    );
    assert_eq!(std::fs::read(mount.path().join("one")).unwrap(), b"1");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn sighup_leaves_the_volume_mounted() {
    let server = garage().await;
    server.put(BUCKET, "root/one", b"1".to_vec()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    signal(the_daemon(mount.path()), libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || mount
            .log_text()
            .contains("SIGHUP ignored")),
        "{}",
        mount.log_text()
    );
    assert!(is_mounted(mount.path()));
    assert_eq!(std::fs::read(mount.path().join("one")).unwrap(), b"1");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_write_killed_midway_leaves_no_object_and_cleanup_aborts_its_upload() {
    let server = garage().await;
    // An upload under another prefix, which cleanup of vol/root must not touch.
    let elsewhere = server
        .client()
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("other/keep")
        .send()
        .await
        .unwrap();
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let data = pattern(40 * MIB, 12);
    let (mut writer, _source) = Writer::start(&data, &mount.path().join("big"));
    writer.step(&format!("write {}", 24 * MIB)).unwrap();
    // Parts go up while the writer writes: the upload exists in S3.
    let mut waited = 0;
    while server.pending_uploads(BUCKET, "root/").await != ["root/big"] {
        waited += 1;
        assert!(waited < 200, "no upload under way");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::kill_volume(mount.path());
    wait_for_exit(mount.path());
    assert!(writer.step("close").is_err());
    assert_eq!(
        server.get(BUCKET, "root/big").await,
        None,
        "a partial object"
    );

    let endpoint = server.endpoint_args();
    let cleanup = |extra: &[&str]| {
        let mut args = vec!["cleanup", "vol/root"];
        args.extend_from_slice(extra);
        args.extend(endpoint.iter().map(String::as_str));
        let out = common::run_s3vol(&server, &args);
        assert!(common::succeeded(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A dry run by default, and the upload is too recent for the default age.
    let listed = cleanup(&[]);
    assert!(
        listed.contains("recent, kept") && listed.contains("root/big"),
        "{listed}"
    );
    let listed = cleanup(&["--older-than", "0"]);
    assert!(
        listed.contains("stale") && listed.contains("root/big"),
        "{listed}"
    );
    assert!(listed.contains("nothing was aborted"), "{listed}");
    assert_eq!(server.pending_uploads(BUCKET, "root/").await, ["root/big"]);

    let aborted = cleanup(&["--older-than", "0", "--abort"]);
    assert!(aborted.contains("aborted 1 upload(s)"), "{aborted}");
    assert!(server.pending_uploads(BUCKET, "root/").await.is_empty());
    assert_eq!(
        server.pending_uploads(BUCKET, "other/").await,
        ["other/keep"],
        "{:?}",
        elsewhere.upload_id()
    );
    assert!(cleanup(&[]).contains("no multipart uploads in progress under s3://vol/root/"));
}

/// What `findmnt` says is mounted exactly at `path` (its filesystem type), if
/// anything.
fn fstype_at(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--mountpoint"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().map(|l| l.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn sigterm_after_a_lazy_unmount_stops_the_daemon_and_spares_a_newer_mount() {
    let server = garage().await;
    let mut mount = Foreground::start(&server);
    let pid = mount.pid();
    let data = pattern(2 * MIB, 64);
    let (mut writer, _source) = Writer::start(&data, &mount.path().join("open.bin"));
    writer.step(&format!("write {MIB}")).unwrap();
    // Someone else detaches the volume (LazyUnmount=yes in a mount unit) and
    // mounts another filesystem at the same path.
    assert!(
        Command::new("umount")
            .arg("-l")
            .arg(mount.path())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "newer"])
            .arg(mount.path())
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(mount.path().join("theirs"), "not s3vol's").unwrap();

    signal(pid, libc::SIGTERM);
    // The grace runs out for the file still open, and the daemon exits, saying
    // that its changes were lost.
    assert_eq!(mount.exit_code(), Some(1), "{}", mount.log_text());
    assert!(
        mount.log_text().contains("root/open.bin"),
        "{}",
        mount.log_text()
    );
    let newer = fstype_at(mount.path());
    let theirs = std::fs::read_to_string(mount.path().join("theirs"));
    let _ = Command::new("umount").arg(mount.path()).status();
    assert_eq!(
        newer.as_deref(),
        Some("tmpfs"),
        "the newer mount was unmounted"
    );
    assert_eq!(theirs.unwrap(), "not s3vol's");
    assert!(
        writer.step("close").is_err(),
        "close claimed the file was saved"
    );
    assert_eq!(
        server.pending_uploads(BUCKET, "").await,
        Vec::<String>::new()
    );
}
