//! The host as a test needs it, changed only inside a private mount namespace
//! so that the machine and the other tests never see it: mount(8)'s helpers in
//! /sbin, a /dev/fuse and /etc files prepared for users other than root, and a
//! syslog socket at /dev/log.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use tempfile::TempDir;

/// `nobody`, the user the tests mount as when they need someone who is not root.
pub const NOBODY: (u32, u32) = (65534, 65534);
/// `daemon`, a second user who is neither root nor the one who mounted.
pub const DAEMON: (u32, u32) = (1, 1);

const NONE: Option<&str> = None;

/// Runs `body` on a thread of its own in a private mount namespace: what it
/// mounts is seen only by that thread and the processes it starts, so `body`
/// must unmount it itself ([`super::Unmount`]).
pub fn in_private_mount_namespace<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // unshare(CLONE_NEWNS) applies to the calling thread only.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
                mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
                    .expect("make the namespace's mounts private");
                body()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `body` in a private mount namespace ([`in_private_mount_namespace`])
/// whose /sbin also holds `mount.s3vol` and `mount.fuse.s3vol`, linked to the
/// binary under test. mount(8) looks for its helpers in /sbin only; this way it
/// finds the one under test and the host's /sbin is left alone.
pub fn in_helper_namespace<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    in_private_mount_namespace(|| {
        let _links = install_helpers(&super::binary());
        body()
    })
}

/// Lays links named as mount(8)'s helpers, to `binary`, over /sbin. The
/// directory returned holds them.
fn install_helpers(binary: &Path) -> TempDir {
    // /sbin takes its mode from its top layer: every user must still enter it.
    let links = shared_tempdir();
    for name in ["mount.s3vol", "mount.fuse.s3vol"] {
        std::os::unix::fs::symlink(binary, links.path().join(name)).unwrap();
    }
    let sbin = std::fs::canonicalize("/sbin").unwrap();
    let layers = format!("lowerdir={}:{}", links.path().display(), sbin.display());
    mount(
        Some("overlay"),
        &sbin,
        Some("overlay"),
        MsFlags::empty(),
        Some(layers.as_str()),
    )
    .expect("overlay the helpers on /sbin");
    links
}

/// A file system in memory of the test's (a tmpfs unless it asks for another
/// kind), lazily unmounted when dropped so its directory can be removed.
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch::of("tmpfs")
    }

    /// A file system of type `kind` that takes a mode (tmpfs, ramfs).
    pub fn of(kind: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        mount(
            Some(kind),
            dir.path(),
            Some(kind),
            MsFlags::empty(),
            Some("mode=755"),
        )
        .unwrap_or_else(|e| panic!("mount a {kind}: {e}"));
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

/// Runs `body` in a private mount namespace ([`in_private_mount_namespace`])
/// in which `/etc/hosts` also names `name` as 127.0.0.1: a host name that is not
/// this host's for s3vol (only "localhost" is), whose traffic still stays on it.
pub fn with_host_name<T: Send>(name: &str, body: impl FnOnce() -> T + Send) -> T {
    in_private_mount_namespace(|| {
        let hosts = tempfile::NamedTempFile::new().unwrap();
        let mut content = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        content.push_str(&format!("\n127.0.0.1 {name}\n"));
        std::fs::write(hosts.path(), content).unwrap();
        std::fs::set_permissions(hosts.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        cover(hosts.path(), "/etc/hosts");
        body()
    })
}

/// Lays `file` over `target` (which must exist) with a bind mount.
fn cover(file: &Path, target: &str) {
    mount(Some(file), target, NONE, MsFlags::MS_BIND, NONE)
        .unwrap_or_else(|e| panic!("bind {} over {target}: {e}", file.display()));
}

/// Runs `body` in a private mount namespace set up the way a host is for users
/// other than root: /dev/fuse open to every user (mode 0666, as Debian's udev
/// rules make it; this machine's may be root's alone), each of `files`, such as
/// `("/etc/fuse.conf", "user_allow_other\n")` or an `/etc/fstab`, laid over the
/// host's with the content given, and mount(8)'s helpers in /sbin. `body` gets
/// the path of a copy of the binary under test that every user may run (the
/// build directory may be in a home that others cannot enter).
pub fn in_namespace_for_users<T: Send>(
    files: &[(&str, &str)],
    body: impl FnOnce(&Path) -> T + Send,
) -> T {
    in_private_mount_namespace(|| {
        let scratch = Scratch::new();
        let binary = scratch.path().join("s3vol");
        // Copied by another process: a file this one held open for writing would
        // be inherited by whatever a concurrent test forks, until it execs, and
        // running the copy meanwhile fails with ETXTBSY ("Text file busy").
        let copied = std::process::Command::new("cp")
            .arg(super::binary())
            .arg(&binary)
            .status()
            .unwrap();
        assert!(copied.success(), "cp of the binary under test failed");
        let _links = install_helpers(&binary);
        let fuse = scratch.path().join("fuse");
        nix::sys::stat::mknod(
            &fuse,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(10, 229),
        )
        .expect("mknod a FUSE device node");
        std::fs::set_permissions(&fuse, std::fs::Permissions::from_mode(0o666)).unwrap();
        cover(&fuse, "/dev/fuse");
        for (index, (target, content)) in files.iter().enumerate() {
            let file = scratch.path().join(index.to_string());
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            cover(&file, target);
        }
        body(&binary)
    })
}

/// A temporary directory every user may enter, for the directories of a test
/// that mounts as someone other than root ([`owned_dir`]).
pub fn shared_tempdir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `program`, to be run as the user `uid:gid` with no supplementary groups.
pub fn as_user((uid, gid): (u32, u32), program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(program);
    command
}

/// A directory that `user` owns, for a mountpoint, a home or a cache.
pub fn owned_dir(parent: &Path, name: &str, (uid, gid): (u32, u32)) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    dir
}

/// What processes of the calling thread's namespace send to syslog(3): a
/// datagram socket bound over /dev/log, as journald's or rsyslog's is.
pub struct SyslogListener {
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    _scratch: Scratch,
}

impl SyslogListener {
    /// Listens at /dev/log. Call it inside a private mount namespace: /dev gets
    /// a writable overlay there, so that /dev/log can exist without touching the
    /// host's /dev.
    pub fn at_dev_log() -> SyslogListener {
        let scratch = Scratch::new();
        let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        let layers = format!(
            "lowerdir=/dev,upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            "/dev",
            Some("overlay"),
            MsFlags::empty(),
            Some(layers.as_str()),
        )
        .expect("overlay /dev");
        // A socket reached through overlayfs refuses connections; a bind mount
        // of the socket itself does not.
        let path = scratch.path().join("log");
        let socket = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let _ = std::fs::remove_file("/dev/log");
        std::fs::write("/dev/log", b"").unwrap();
        cover(&path, "/dev/log");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // Read as they come, as a syslog daemon does: a socket's queue holds
        // only a few datagrams (net.unix.max_dgram_qlen), and a sender blocks
        // once it is full.
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.recv(&mut buf) {
                        Ok(n) => received
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => break,
                        Err(_) => {}
                    }
                }
            })
        };
        SyslogListener {
            received,
            stop,
            reader: Some(reader),
            _scratch: scratch,
        }
    }

    /// The messages received so far, each as syslog(3) sent it:
    /// `<PRIORITY>TIMESTAMP TAG[PID]: TEXT`. Waits for those still queued.
    pub fn messages(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

impl Drop for SyslogListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
