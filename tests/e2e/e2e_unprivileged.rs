//! Volumes mounted by users other than root, through the setuid fusermount3: an
//! fstab line marked `user`, mounted and unmounted by that user with mount(8),
//! and the deploy guide's container recipe, whose entrypoint runs as a user
//! with `--allow-other`, against Garage. `nobody` stands in for the user, and
//! `daemon` for the container's other users.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::host::{DAEMON, NOBODY, as_user, in_namespace_for_users, owned_dir, shared_tempdir};
use common::{Server, ServerKind, Unmount, daemon_pids, deploy_guide, findmnt, is_mounted};
use common::{succeeded, wait_until};

const BUCKET: &str = "vol";

async fn server_with_data() -> Server {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "root/a.txt", b"inside\n".to_vec()).await;
    server
}

/// `sh -c SCRIPT` as `user`, answering what it printed, or why it failed.
fn shell_as(user: (u32, u32), script: &str) -> Result<String, String> {
    let out = as_user(user, "sh").args(["-c", script]).output().unwrap();
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if out.status.success() {
        Ok(said(&out.stdout))
    } else {
        Err(said(&out.stderr))
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_user_mounts_and_unmounts_an_fstab_line_marked_user() {
    let server = server_with_data().await;
    let dir = shared_tempdir();
    let mnt = owned_dir(dir.path(), "mnt", NOBODY);
    let work = owned_dir(dir.path(), "work", NOBODY);
    let fstab = format!(
        "vol/root {} s3vol user,noauto,read_write,endpoint_url={},force_path_style,\
         cache_dir={},log_file={} 0 0\n",
        mnt.display(),
        server.endpoint,
        work.join("cache").display(),
        work.join("log").display()
    );

    in_namespace_for_users(&[("/etc/fstab", &fstab)], |_| {
        let _mnt = Unmount(&mnt);
        // mount(8) runs the helper as the user; the AWS_* variables pass through.
        let out = as_user(NOBODY, "mount")
            .arg(&mnt)
            .envs(server.env())
            .output()
            .unwrap();
        assert!(
            succeeded(&out),
            "{}",
            std::fs::read_to_string(work.join("log")).unwrap_or_default()
        );
        let shown = findmnt(&mnt);
        assert!(shown.starts_with("fuse.s3vol vol/root rw,"), "{shown}");
        // mount(8) adds noexec (and nosuid, nodev) to a user's mount.
        assert!(shown.contains("noexec"), "{shown}");
        assert!(shown.contains("user_id=65534"), "{shown}");
        assert_eq!(
            daemon_pids(&mnt)
                .iter()
                .map(|pid| std::fs::metadata(format!("/proc/{pid}")).unwrap().uid())
                .collect::<Vec<_>>(),
            [NOBODY.0],
            "the daemon runs as the user"
        );

        let mnt_arg = mnt.to_str().unwrap();
        let read = shell_as(
            NOBODY,
            &format!("cat {mnt_arg}/a.txt && echo mine > {mnt_arg}/mine.txt"),
        );
        assert_eq!(read.unwrap(), "inside\n");
        // Without allow_other, nobody else may look in, root included.
        let refused = std::fs::metadata(mnt.join("a.txt")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EACCES), "{refused}");

        let out = as_user(NOBODY, "umount").arg(&mnt).output().unwrap();
        assert!(succeeded(&out));
        assert!(!is_mounted(&mnt));
        common::assert_daemon_exits(&mnt, "outlived umount");
    });
    assert_eq!(
        server.get(BUCKET, "root/mine.txt").await.unwrap(),
        b"mine\n"
    );
}

/// The guide's Dockerfile entrypoint, as its arguments.
fn guide_entrypoint() -> Vec<String> {
    let guide = deploy_guide();
    let line = guide
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("docs/DEPLOY.md has a Dockerfile with an ENTRYPOINT");
    serde_json::from_str(line).expect("the ENTRYPOINT is a JSON array")
}

/// The entrypoint run as `nobody` with the guide's arguments after it, from
/// `binary`, with `home` as HOME and the server's credentials.
fn container(binary: &Path, server: &Server, mnt: &Path, home: &Path) -> Command {
    let entrypoint = guide_entrypoint();
    assert_eq!(entrypoint[0], "s3vol", "{entrypoint:?}");
    let mut command = as_user(NOBODY, binary);
    command
        .args(&entrypoint[1..])
        .args(["vol/root"])
        .arg(mnt)
        .arg("--read-write")
        .args(server.endpoint_args())
        .envs(server.env())
        .env("HOME", home);
    command
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn the_container_entrypoint_runs_as_a_user_and_lets_others_in() {
    let server = server_with_data().await;
    let dir = shared_tempdir();
    let mnt = owned_dir(dir.path(), "data", NOBODY);
    let home = owned_dir(dir.path(), "home", NOBODY);
    let log = dir.path().join("container.log");
    // As the Dockerfile writes it.
    let fuse_conf = "# /etc/fuse.conf\nuser_allow_other\n";

    in_namespace_for_users(&[("/etc/fuse.conf", fuse_conf)], |binary| {
        let _mnt = Unmount(&mnt);
        let mut child = container(binary, &server, &mnt, &home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(20), || is_mounted(&mnt)),
            "the volume did not appear: {}",
            said()
        );
        let shown = findmnt(&mnt);
        assert!(shown.starts_with("fuse.s3vol vol/root rw,"), "{shown}");
        assert!(shown.contains("allow_other"), "{shown}");
        assert!(shown.contains("user_id=65534"), "{shown}");
        // The default cache directory is the user's.
        assert!(home.join(".cache/s3vol").is_dir(), "{}", said());

        // Another user reads, and root writes; the mode bits still apply, so
        // the other user may not write the owner's files.
        let mnt_arg = mnt.to_str().unwrap();
        assert_eq!(
            shell_as(DAEMON, &format!("cat {mnt_arg}/a.txt")).unwrap(),
            "inside\n"
        );
        std::fs::write(mnt.join("from-root.txt"), b"root\n").unwrap();
        let refused = shell_as(DAEMON, &format!("echo x > {mnt_arg}/a.txt")).unwrap_err();
        assert!(refused.contains("Permission denied"), "{refused}");

        // `docker stop`: SIGTERM unmounts (through fusermount3, as the user)
        // and s3vol exits 0.
        // SAFETY: kill(2) on the child this test started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}: {}", said());
        assert!(!is_mounted(&mnt), "{}", said());
    });
    assert_eq!(
        server.get(BUCKET, "root/from-root.txt").await.unwrap(),
        b"root\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn allow_other_without_user_allow_other_fails_with_the_reason() {
    let server = server_with_data().await;
    let dir = shared_tempdir();
    let mnt = owned_dir(dir.path(), "data", NOBODY);
    let home = owned_dir(dir.path(), "home", NOBODY);

    in_namespace_for_users(&[("/etc/fuse.conf", "# mount_max = 1000\n")], |binary| {
        let _mnt = Unmount(&mnt);
        let out = container(binary, &server, &mnt, &home).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot mount at") && stderr.contains("user_allow_other"),
            "{stderr}"
        );
        assert!(!is_mounted(&mnt));
    });
}
