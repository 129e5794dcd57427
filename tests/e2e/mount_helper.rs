//! mount(8) and fstab: `mount -t s3vol`, `mount -T FSTAB DIR` and
//! `mount -a -T FSTAB` with the binary under test as /sbin/mount.s3vol, against
//! Garage.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::host::{SyslogListener, in_helper_namespace};
use common::{
    Server, ServerKind, Unmount, daemon_pids, findmnt, guide_fstab_line, is_mounted, mount_count,
    succeeded,
};

const BUCKET: &str = "vol";

/// mount(8) with `args`, in the server's environment.
fn mount8(server: &Server, args: &[&str]) -> Output {
    common::mount8(&server.env(), args)
}

/// The options every test line carries: where the server is, and a cache
/// directory and log of the mount's own, their paths in double quotes so that a
/// `name` may hold a comma.
fn server_options(server: &Server, dir: &Path, name: &str) -> String {
    format!(
        "endpoint_url={},force_path_style,cache_dir=\"{}\",log_file=\"{}\"",
        server.endpoint,
        dir.join(format!("{name}.cache")).display(),
        dir.join(format!("{name}.log")).display()
    )
}

async fn server_with_data() -> Server {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "root/a.txt", b"inside\n".to_vec()).await;
    server
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn fstab_lines_mount_with_mount_and_mount_a() {
    let server = server_with_data().await;
    let dir = tempfile::tempdir().unwrap();
    let (ro, rw) = (dir.path().join("ro"), dir.path().join("rw"));
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a read-only line (mount(8) passes it on as rw) and a read-write one\n\
             vol/root {} s3vol defaults,nofail,_netdev,{} 0 0\n\
             vol/root {} s3vol read_write,noatime,x-systemd.automount,{} 0 0\n",
            ro.display(),
            // A value with a comma, quoted as the deploy guide says.
            server_options(&server, dir.path(), "ro,quoted"),
            rw.display(),
            server_options(&server, dir.path(), "rw"),
        ),
    )
    .unwrap();
    let fstab = fstab.to_str().unwrap();

    in_helper_namespace(|| {
        // One line, by its mountpoint.
        let _ro = Unmount(&ro);
        assert!(succeeded(&mount8(
            &server,
            &["-T", fstab, ro.to_str().unwrap()]
        )));
        let shown = findmnt(&ro);
        assert!(shown.starts_with("fuse.s3vol vol/root ro,"), "{shown}");
        assert!(shown.contains("nosuid,nodev"), "{shown}");
        assert_eq!(std::fs::read(ro.join("a.txt")).unwrap(), b"inside\n");
        // The comma reached s3vol inside its value.
        assert!(dir.path().join("ro,quoted.log").is_file());
        assert!(dir.path().join("ro,quoted.cache").is_dir());
        let refused = std::fs::write(ro.join("new.txt"), b"x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
        let status = Command::new("umount").arg(&ro).status().unwrap();
        assert!(status.success());
        assert!(!is_mounted(&ro));
        common::assert_daemon_exits(&ro, "outlived umount");

        // Every line; again, which must change nothing.
        let _rw = Unmount(&rw);
        for _ in 0..2 {
            assert!(succeeded(&mount8(&server, &["-a", "-T", fstab])));
            assert_eq!(mount_count(&ro), 1, "{}", findmnt(&ro));
            assert_eq!(mount_count(&rw), 1, "{}", findmnt(&rw));
        }
        let shown = findmnt(&rw);
        assert!(shown.starts_with("fuse.s3vol vol/root rw,"), "{shown}");
        std::fs::write(rw.join("written.txt"), b"through fstab\n").unwrap();
        assert!(std::fs::write(ro.join("written.txt"), b"x").is_err());
    });
    assert!(!is_mounted(&ro) && !is_mounted(&rw));
    assert_eq!(
        server.get(BUCKET, "root/written.txt").await.unwrap(),
        b"through fstab\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn mount_t_s3vol_takes_options_and_reports_failures() {
    let server = server_with_data().await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_arg = mnt.to_str().unwrap();
    let options = server_options(&server, dir.path(), "t");

    in_helper_namespace(|| {
        let _mnt = Unmount(&mnt);
        for (source, extra, fstype, why) in [
            (
                "vol/root",
                "colour=blue",
                "s3vol",
                "unknown option \"colour\"",
            ),
            (
                "vol/root",
                "metadata_ttl=soon",
                "s3vol",
                "\"soon\" is not a duration",
            ),
            ("vol/root", "foreground", "s3vol", "always detaches"),
            ("missing-bucket", "ro", "s3vol", "missing-bucket"),
            (
                "vol/root",
                "ro,read_write",
                "fuse.s3vol",
                "cannot be used with",
            ),
        ] {
            let all = format!("{options},{extra}");
            let out = mount8(&server, &["-t", fstype, source, mnt_arg, "-o", &all]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{extra} mounted");
            assert!(stderr.contains(why), "{extra}: {stderr}");
            assert!(!is_mounted(&mnt), "{extra} left a mount");
        }

        // -f checks the options and mounts nothing; -s lets unknown ones pass.
        let all = format!("{options},read_write");
        let out = mount8(
            &server,
            &["-f", "-v", "-t", "s3vol", "vol/root", mnt_arg, "-o", &all],
        );
        assert!(succeeded(&out));
        assert!(!is_mounted(&mnt));
        let all = format!("{options},colour=blue,uid=1234,noexec");
        let out = mount8(
            &server,
            &["-s", "-t", "fuse.s3vol", "vol/root", mnt_arg, "-o", &all],
        );
        assert!(succeeded(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
        let shown = findmnt(&mnt);
        assert!(shown.contains("noexec"), "{shown}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(mnt.join("a.txt")).unwrap().uid(), 1234);
    });
    assert!(!is_mounted(&mnt));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_bad_fstab_line_fails_with_the_helpers_message() {
    let server = server_with_data().await;
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (dir.path().join("bad"), dir.path().join("good"));
    std::fs::create_dir(&bad).unwrap();
    std::fs::create_dir(&good).unwrap();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "vol/root {} s3vol nofail,metadata_tll=5s,{} 0 0\n\
             vol/root {} s3vol {} 0 0\n",
            bad.display(),
            server_options(&server, dir.path(), "bad"),
            good.display(),
            server_options(&server, dir.path(), "good"),
        ),
    )
    .unwrap();
    let fstab = fstab.to_str().unwrap();

    in_helper_namespace(|| {
        let (_bad, _good) = (Unmount(&bad), Unmount(&good));
        let out = mount8(&server, &["-T", fstab, bad.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unknown option \"metadata_tll\""),
            "{stderr}"
        );
        // mount -a reports the line and mounts the others; it exits 64, "some
        // mounts succeeded". (nofail only silences a missing device; for
        // systemd, it keeps the boot from depending on the line.)
        let out = mount8(&server, &["-a", "-T", fstab]);
        assert_eq!(out.status.code(), Some(64));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unknown option \"metadata_tll\""),
            "{stderr}"
        );
        assert!(!is_mounted(&bad));
        assert!(is_mounted(&good));
        assert_eq!(std::fs::read(good.join("a.txt")).unwrap(), b"inside\n");
    });
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn the_deploy_guides_read_write_line_mounts_with_mount_a() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket("platform-scratch").await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("scratch");
    std::fs::create_dir(&mnt).unwrap();
    // The guide's line, pointed at the local server.
    let region = format!("region={}", server.region);
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        guide_fstab_line(
            "platform-scratch/jobs",
            &mnt,
            |options| options.replace("region=eu-west-1", &region),
            &server_options(&server, dir.path(), "scratch"),
        ),
    )
    .unwrap();

    in_helper_namespace(|| {
        let _mnt = Unmount(&mnt);
        assert!(succeeded(&mount8(
            &server,
            &["-a", "-T", fstab.to_str().unwrap()]
        )));
        let shown = findmnt(&mnt);
        println!("{}\n{shown}", std::fs::read_to_string(&fstab).unwrap());
        assert!(
            shown.starts_with("fuse.s3vol platform-scratch/jobs rw,"),
            "{shown}"
        );
        std::fs::write(mnt.join("result.txt"), b"done\n").unwrap();
    });
    assert_eq!(
        server
            .get("platform-scratch", "jobs/result.txt")
            .await
            .unwrap(),
        b"done\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn mount_n_mounts_in_another_namespace() {
    let server = server_with_data().await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_arg = mnt.to_str().unwrap();
    let options = server_options(&server, dir.path(), "n");

    in_helper_namespace(|| {
        // A process in a mount namespace of its own, a copy of this one.
        let mut other = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "120"])
            .spawn()
            .unwrap();
        let pid = other.id().to_string();
        let namespace = |of: &str| std::fs::read_link(format!("/proc/{of}/ns/mnt")).ok();
        assert!(
            common::wait_until(std::time::Duration::from_secs(5), || namespace(&pid)
                != namespace("thread-self")),
            "unshare did not start"
        );
        let theirs = || std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();

        let out = mount8(
            &server,
            &[
                "-N", &pid, "-t", "s3vol", "vol/root", mnt_arg, "-o", &options,
            ],
        );
        assert!(succeeded(&out));
        assert!(
            theirs().contains(&format!("{mnt_arg} ")) && theirs().contains("fuse.s3vol"),
            "not mounted in the other namespace"
        );
        assert!(!is_mounted(&mnt), "mounted in this namespace");
        let status = Command::new("nsenter")
            .args(["-t", &pid, "-m", "umount", mnt_arg])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!theirs().contains(&format!("{mnt_arg} ")));
        let _ = other.kill();
        let _ = other.wait();
    });
}

/// Under systemd, or mounted by hand without `log_file`, the daemon's log goes
/// to syslog, that is to the journal (`journalctl -t s3vol`). A volume mounted
/// through mount(8) outlives its worker too.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_volume_without_a_log_file_logs_to_syslog() {
    let server = server_with_data().await;
    // Not a valid name below `a/`: listing it warns.
    server.put(BUCKET, "root/a//b", b"x".to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let options = format!(
        "endpoint_url={},force_path_style,cache_dir={}",
        server.endpoint,
        dir.path().join("cache").display()
    );

    let (pids, messages) = in_helper_namespace(|| {
        let syslog = SyslogListener::at_dev_log();
        let _mnt = Unmount(&mnt);
        let mnt_arg = mnt.to_str().unwrap();
        let out = mount8(
            &server,
            &["-t", "s3vol", "vol/root", mnt_arg, "-o", &options],
        );
        assert!(succeeded(&out));
        let supervisor = daemon_pids(&mnt)[0];
        let first = common::the_worker(&mnt);
        assert_eq!(std::fs::read_dir(mnt.join("a")).unwrap().count(), 0);
        let second = common::kill_worker(&mnt);
        assert_eq!(daemon_pids(&mnt)[0], supervisor, "the same volume");
        assert_eq!(std::fs::read_dir(mnt.join("a")).unwrap().count(), 0);
        assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
        common::assert_daemon_exits(&mnt, "outlived umount");
        ([supervisor, first, second], syslog.messages())
    });
    // The supervisor's lines and its workers'.
    let tags = pids.map(|pid| format!(" s3vol[{pid}]: "));
    assert!(!messages.is_empty(), "nothing reached syslog");
    assert!(
        messages
            .iter()
            .all(|m| tags.iter().any(|tag| m.contains(tag))),
        "not all tagged {tags:?}: {messages:#?}"
    );
    // Facility daemon (3 << 3) with info (6) and warning (4).
    let sent = |priority: &str, text: &str| {
        messages
            .iter()
            .any(|m| m.starts_with(priority) && m.contains(text))
    };
    assert!(sent("<30>", "INFO s3vol::daemon: mounted"), "{messages:#?}");
    assert!(
        sent("<28>", "WARN s3vol::fs::dir: skipped keys"),
        "{messages:#?}"
    );
    assert!(sent("<30>", "unmounted"), "{messages:#?}");
    assert!(
        sent("<30>", "took over from the worker before"),
        "{messages:#?}"
    );
}

/// An fstab line's `external_id=`, as mount(8) hands it to the helper and the
/// helper to the daemon it forks: no process of the mount shows it in /proc
/// (a systemd mount unit runs the same mount(8) and helper). The secret is read
/// while they wait on an STS endpoint that never answers.
#[test]
#[ignore = "needs root for mount(8) in a namespace; run scripts/test.sh"]
fn an_external_id_in_an_fstab_line_never_shows_in_proc() {
    use common::procs::{seen_by_others_while_it_waits, silent_endpoint};
    const SECRET: &str = "ext-fstab-5e1d";
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let silent = silent_endpoint();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "bkt/root {} s3vol role_arn=arn:aws:iam::111122223333:role/reader,\
             external_id={SECRET},sts_endpoint_url={silent},endpoint_url={silent},\
             no_cache,log_file={} 0 0\n",
            mountpoint.display(),
            dir.path().join("log").display()
        ),
    )
    .unwrap();
    let seen = in_helper_namespace(|| {
        seen_by_others_while_it_waits(Command::new("mount").args([
            "-T",
            fstab.to_str().unwrap(),
            mountpoint.to_str().unwrap(),
        ]))
    });
    // mount(8), the helper and the daemon it forked were all looked at.
    assert!(
        seen.matches("role/reader").count() >= 2,
        "the helper and its daemon were seen: {seen}"
    );
    assert!(seen.contains("-T"), "mount(8) was seen: {seen}");
    assert!(!seen.contains(SECRET), "{seen}");
}
