//! End to end: a volume outlives its worker. The worker serving a mounted
//! volume is killed with SIGKILL in the middle of a 1 GiB read, an `ls -lR` of
//! 10,000 entries, an `rsync -a` into the volume and a write; or replaced on
//! request by another build. The mount never goes away: readers finish byte
//! for byte, the same inode numbers answer, a file open for writing fails
//! with EIO and leaves nothing in S3, and a worker that dies again and again
//! ends the volume cleanly.

use crate::common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Mount, Server, daemon_pids, is_mounted, kill_worker, the_worker, wait_until, worker_pids,
};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;

async fn garage() -> Server {
    Server::garage_with(BUCKET).await
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on the worker this test's mount started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A local file of `size` random bytes, put into the bucket as `key`.
async fn random_object(server: &Server, dir: &Path, key: &str, size: usize) -> PathBuf {
    let source = dir.join(key.replace('/', "_"));
    let status = Command::new("head")
        .arg("-c")
        .arg(size.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(&source).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    server
        .put(BUCKET, key, std::fs::read(&source).unwrap())
        .await;
    source
}

/// Mounts the volume with the binary at `program` (a copy that a test then
/// replaces, as an upgrade does), logging to `log`.
fn mount_with(program: &Path, server: &Server, mountpoint: &Path, log: &Path, extra: &[&str]) {
    let out = Command::new(program)
        .args(["mount", "vol/root"])
        .arg(mountpoint)
        .arg("--log-file")
        .arg(log)
        .args(extra)
        .args(server.endpoint_args())
        .envs(server.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_gib_read_and_new_opens_carry_on_when_the_worker_is_killed() {
    let server = garage().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_object(&server, local.path(), "root/big", 1024 * MIB).await;
    server.put(BUCKET, "root/small", b"small".to_vec()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let device = std::fs::metadata(mount.path()).unwrap().dev();
    let inode = std::fs::metadata(mount.path().join("small")).unwrap().ino();
    let supervisor = daemon_pids(mount.path())[0];

    // cmp reads the volume's copy from its first byte to its last, and says
    // whether it is the local one.
    let cmp = Command::new("cmp")
        .arg(&source)
        .arg(mount.path().join("big"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let new = kill_worker(mount.path());
    let out = cmp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cmp: {}{}\nlog: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mount.log_text()
    );
    let log = mount.log_text();
    assert!(log.contains("took over from the worker before"), "{log}");
    // The start-up log said the kernel heals.
    assert!(log.contains("heals=true"), "{log}");

    // The same mount, the same inode for the same name, new opens work.
    assert!(is_mounted(mount.path()));
    assert_eq!(std::fs::metadata(mount.path()).unwrap().dev(), device);
    let meta = std::fs::metadata(mount.path().join("small")).unwrap();
    assert_eq!(meta.ino(), inode);
    assert_eq!(std::fs::read(mount.path().join("small")).unwrap(), b"small");
    assert_eq!(the_worker(mount.path()), new);
    assert_eq!(daemon_pids(mount.path()), [supervisor]);
    // The supervisor holds a descriptor and waits: little memory of its own.
    let supervisor_rss = rss_kib(supervisor);
    eprintln!("supervisor RSS: {supervisor_rss} KiB");
    assert!(supervisor_rss < 16 * 1024, "{supervisor_rss} KiB");

    // Unmounting ends both processes, cleanly.
    common::unmount(mount.path());
    common::assert_daemon_exits(mount.path(), "outlived its mount");
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_file_the_kernel_reads_from_the_cache_opens_again_after_a_kill() {
    use std::os::unix::fs::FileExt;
    let server = garage().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_object(&server, local.path(), "root/f", 16 * MIB).await;
    let data = std::fs::read(&source).unwrap();
    let mount = Mount::new(&server, "vol/root", &[]);
    let file = mount.path().join("f");
    assert!(std::fs::read(&file).unwrap() == data);
    mount.wait_for_disk(data.len());
    // The kernel lets go of the file and the pages the first read left, from
    // which it would serve the next open instead.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let reader = std::fs::File::open(&file).unwrap();
    assert_eq!(mount.stats()["passthrough"]["files_now"], 1);

    kill_worker(mount.path());
    // The kernel reads on from the backing file; a new open of the same
    // version takes the backing ID the dead worker left (another would fail
    // the open with EIO), and reads the same bytes.
    let mut buf = vec![0u8; MIB];
    reader.read_exact_at(&mut buf, 3 * MIB as u64).unwrap();
    assert!(buf == data[3 * MIB..4 * MIB]);
    let again = std::fs::read(&file).unwrap();
    assert!(again == data, "a new open after the kill");
    let stats = mount.stats();
    assert_eq!(stats["passthrough"]["opens"], 1, "{stats}");
    drop(reader);
    assert!(
        wait_until(
            Duration::from_secs(10),
            || mount.stats()["passthrough"]["files_now"] == 0
        ),
        "the adopted backing ID goes with the last reader"
    );
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn ls_lr_of_ten_thousand_entries_finishes_when_the_worker_is_killed() {
    let server = garage().await;
    let objects = (0..10_000).map(|i| {
        (
            format!("root/d{:02}/f{i:05}", i % 100),
            format!("{i}").into_bytes(),
        )
    });
    server.put_many(BUCKET, objects).await;
    // A short TTL: the kill comes while lookups and listings still go to S3.
    let mount = Mount::new(&server, "vol/root", &["--metadata-ttl", "0"]);
    let ls = Command::new("ls")
        .arg("-lR")
        .arg(mount.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    kill_worker(mount.path());
    let out = ls.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ls -lR: {stderr}\n{}",
        mount.log_text()
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    let files = listed
        .lines()
        .filter(|l| l.starts_with('-') && l.contains(" f"))
        .count();
    assert_eq!(files, 10_000, "{stderr}");
}

/// A file open for writing when the worker dies: its next write and its
/// close fail with EIO, no object is made of it, its upload is aborted; the
/// volume goes on, and a rerun of `rsync -a` brings every file over.
#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn writes_cut_by_a_worker_kill_fail_with_eio_and_leave_nothing_behind() {
    let server = garage().await;
    server
        .put(BUCKET, "root/old", b"the old version".to_vec())
        .await;
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);

    // A writer past one part (a multipart upload under way), then the kill.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.path().join("old"))
        .unwrap();
    use std::io::Write;
    file.write_all(&vec![7u8; 9 * MIB]).unwrap();
    let mut created = std::fs::File::create(mount.path().join("new")).unwrap();
    created.write_all(&vec![8u8; 9 * MIB]).unwrap();
    // The first part's upload begins while the writes go on.
    std::thread::sleep(Duration::from_millis(500));
    kill_worker(mount.path());
    for (name, file) in [("old", &mut file), ("new", &mut created)] {
        let written = file.write_all(b"more");
        assert_eq!(
            written.map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO)),
            "{name}"
        );
        assert_eq!(
            file.sync_all().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO)),
            "{name}"
        );
    }
    drop(file);
    drop(created);
    assert_eq!(
        server.get(BUCKET, "root/old").await.unwrap(),
        b"the old version"
    );
    assert!(server.get(BUCKET, "root/new").await.is_none());
    // The new worker aborted the uploads before it served.
    assert_eq!(
        server.pending_parts(BUCKET, "root/").await,
        0,
        "an upload was left behind"
    );

    // rsync -a into the volume, the worker killed in the middle; once more
    // after, and everything is there, byte for byte.
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    for d in 0..4 {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).unwrap();
        for f in 0..25 {
            let size = if f % 10 == 0 { 3 * MIB } else { 1000 + f * d };
            std::fs::write(
                tree.join(format!("d{d}/f{f}")),
                common::pattern(size, (d * 100 + f) as u64),
            )
            .unwrap();
        }
    }
    let target = mount.path().join("copy");
    let rsync = |target: &Path| {
        Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", tree.display()))
            .arg(target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = rsync(&target);
    std::thread::sleep(Duration::from_millis(600));
    kill_worker(mount.path());
    let first = first.wait_with_output().unwrap();
    eprintln!(
        "rsync during the kill: {} {}",
        first.status,
        String::from_utf8_lossy(&first.stderr)
    );
    let second = rsync(&target).wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    for d in 0..4 {
        for f in 0..25 {
            let name = format!("d{d}/f{f}");
            let want = std::fs::read(tree.join(&name)).unwrap();
            let got = server.get(BUCKET, &format!("root/copy/{name}")).await;
            assert!(got.as_deref() == Some(&want[..]), "{name} differs in S3");
        }
    }
    assert_eq!(server.pending_parts(BUCKET, "root/").await, 0);
    // Nothing but the tree (and the old file) is in S3: rsync's temporary
    // files of the cut run were not published.
    let keys = server.keys(BUCKET, "root/copy/").await;
    assert!(
        keys.iter()
            .all(|k| !k.contains("/.f") && !k.contains("/.d")),
        "{keys:?}"
    );
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_worker_that_dies_again_and_again_ends_the_volume_cleanly() {
    let server = garage().await;
    server.put(BUCKET, "root/a", b"a".to_vec()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let supervisor = daemon_pids(mount.path())[0];
    // Each new worker killed as soon as it shows.
    let mut killed = std::collections::BTreeSet::new();
    let looped = wait_until(Duration::from_secs(30), || {
        for pid in worker_pids(mount.path()) {
            if killed.insert(pid) {
                kill(pid);
            }
        }
        !is_mounted(mount.path())
    });
    assert!(looped, "still mounted after {} kills", killed.len());
    assert!(killed.len() >= 5, "{killed:?}");
    assert!(wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{supervisor}")).exists()
            || std::fs::read_to_string(format!("/proc/{supervisor}/stat"))
                .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
    }));
    let log = mount.log_text();
    assert!(log.contains("ending the volume: 5 workers died"), "{log}");
}

/// `s3vol restart` starts the binary now installed at the path the volume
/// was started from, while a reader reads; another user may not.
#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_restart_swaps_in_another_build_during_a_read() {
    let server = garage().await;
    let local = tempfile::tempdir().unwrap();
    let source = random_object(&server, local.path(), "root/big", 256 * MIB).await;
    // The volume runs from a copy of the binary, which is then replaced.
    let installed = local.path().join("bin/s3vol");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(common::binary(), &installed).unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let log = local.path().join("log");
    // Other users may use the volume, not restart it.
    mount_with(
        &installed,
        &server,
        mountpoint.path(),
        &log,
        &["--allow-other"],
    );
    let _unmount = common::Unmount(mountpoint.path());
    let old = the_worker(mountpoint.path());
    let old_exe = std::fs::metadata(format!("/proc/{old}/exe")).unwrap().ino();

    // Another build: the same program with bytes appended, put in place as a
    // package upgrade does (a new file renamed over the old).
    let upgrade = local.path().join("bin/s3vol.new");
    let mut bytes = std::fs::read(common::binary()).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&upgrade, &bytes).unwrap();
    std::fs::set_permissions(
        &upgrade,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&upgrade, &installed).unwrap();
    let new_exe = std::fs::metadata(&installed).unwrap().ino();
    assert_ne!(old_exe, new_exe);

    // Another user may not restart it.
    let refused = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::binary())
        .arg("restart")
        .arg(mountpoint.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only root and the user who mounted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut reader = std::fs::File::open(mountpoint.path().join("big")).unwrap();
    let mut read = vec![0u8; 16 * MIB];
    reader.read_exact(&mut read).unwrap();
    let restart = common::s3vol()
        .arg("restart")
        .arg(mountpoint.path())
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&restart.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let new = the_worker(mountpoint.path());
    assert_ne!(new, old);
    assert!(String::from_utf8_lossy(&restart.stdout).contains(&new.to_string()));
    assert_eq!(
        std::fs::metadata(format!("/proc/{new}/exe")).unwrap().ino(),
        new_exe,
        "the new worker runs the installed build"
    );
    reader.read_to_end(&mut read).unwrap();
    assert!(read == std::fs::read(&source).unwrap(), "the read differs");
    // SIGUSR2 to the supervisor does the same.
    let supervisor = daemon_pids(mountpoint.path())[0];
    // SAFETY: kill(2) on the supervisor this test started.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGUSR2) }, 0);
    assert!(
        wait_until(Duration::from_secs(20), || worker_pids(mountpoint.path())
            .iter()
            .any(|&p| p != new)),
        "SIGUSR2 did not replace the worker"
    );
    assert_eq!(
        std::fs::read(mountpoint.path().join("big")).unwrap().len(),
        256 * MIB
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("stepped aside").count(), 2, "{log}");
    assert!(!log.contains("died"), "{log}");
}

/// An upgrade whose binary cannot take the volume over (here, one that exits
/// at once) does not end the volume: the running build serves on.
#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_broken_upgrade_leaves_the_running_build_serving() {
    let server = garage().await;
    server.put(BUCKET, "root/a", b"a".to_vec()).await;
    let local = tempfile::tempdir().unwrap();
    let installed = local.path().join("s3vol");
    std::fs::copy(common::binary(), &installed).unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let log = local.path().join("log");
    mount_with(&installed, &server, mountpoint.path(), &log, &[]);
    let _unmount = common::Unmount(mountpoint.path());
    let broken = local.path().join("s3vol.new");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &installed).unwrap();

    kill_worker(mountpoint.path());
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("took over from the worker before")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(std::fs::read(mountpoint.path().join("a")).unwrap(), b"a");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("the installed binary could not take the volume over"),
        "{log}"
    );
}

/// The worker gets the configuration through a sealed in-memory file: its
/// command line shows no secret, and its environment is the one the volume was
/// mounted with (the user's own AWS_* variables, here) and the worker's mark,
/// nothing s3vol adds. And a supervisor killed with SIGKILL, which could start
/// no new worker, stops the volume as SIGTERM would: the worker unmounts it and
/// exits.
#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn the_worker_shows_no_secret_and_a_killed_supervisor_stops_the_volume() {
    let server = garage().await;
    server.put(BUCKET, "root/small", b"small".to_vec()).await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let secret = server
        .env()
        .into_iter()
        .find(|(name, _)| name == "AWS_SECRET_ACCESS_KEY")
        .unwrap()
        .1;
    let worker = the_worker(mount.path());
    let supervisor = daemon_pids(mount.path())[0];
    let shown = |pid: i32, what: &str| {
        let raw = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        !shown(worker, "cmdline").iter().any(|a| a.contains(&secret)),
        "the worker's command line shows the secret"
    );
    let added: Vec<_> = shown(worker, "environ")
        .difference(&shown(supervisor, "environ"))
        .cloned()
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(added[0].starts_with("S3VOL_WORKER="), "{added:?}");
    assert_eq!(std::fs::read(mount.path().join("small")).unwrap(), b"small");

    kill(supervisor);
    assert!(
        wait_until(Duration::from_secs(20), || !is_mounted(mount.path())),
        "still mounted: {}",
        mount.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            // Gone, or a zombie its new parent has yet to reap.
            std::fs::read_to_string(format!("/proc/{worker}/stat")).map_or(true, |s| {
                s.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
            })
        }),
        "the worker outlived its supervisor"
    );
    let log = mount.log_text();
    assert!(log.contains("unmounted"), "{log}");
}
