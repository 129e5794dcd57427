//! When a written file becomes an object, tried through the kernel with the
//! system calls that shells and process launchers make: a descriptor dup'ed and
//! the original closed, a child forked while a file is open that exits or execs.
//! Only a close by the process that opened the file, after it created or wrote
//! it, publishes the file; other flushes publish nothing, and what they leave is
//! uploaded when the last descriptor is closed. (The mount is served by this process over the
//! memory store: see common/fuse.rs.)

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use common::fuse::MemoryMount;
use common::{pattern, wait_until};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use s3vol::fs::FsConfig;
use s3vol::store::memory::MemoryStore;

/// What the bucket holds at `key`, as its length, for messages.
fn held(store: &MemoryStore, key: &str) -> Option<usize> {
    store.get(key).map(|b| b.len())
}

/// Whether the bucket holds exactly `data` at `key`.
fn holds(store: &MemoryStore, key: &str, data: &[u8]) -> bool {
    store.get(key).is_some_and(|b| b == data)
}

fn volume() -> (Arc<MemoryStore>, MemoryMount) {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("root/existing.bin", pattern(1_000_000, 1));
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    };
    (store.clone(), MemoryMount::read_write(store, config))
}

/// An empty read-write volume that trusts what it learnt of S3 for a minute,
/// as the kernel trusts its names.
fn trusting_volume() -> (Arc<MemoryStore>, MemoryMount) {
    let store = Arc::new(MemoryStore::new("bkt"));
    let config = FsConfig {
        metadata_ttl: Duration::from_secs(60),
        ..FsConfig::default()
    };
    (store.clone(), MemoryMount::read_write(store, config))
}

/// Forks a child that holds copies of this process's descriptors and either
/// exits at once or execs `/bin/true`, and waits for it.
fn fork_child(exec: bool) {
    let program = CString::new("/bin/true").unwrap();
    // SAFETY: the child only calls async-signal-safe functions (execv, _exit)
    // before it is gone; everything it needs was allocated before the fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            if exec {
                let _ = nix::unistd::execv(&program, &[&program]);
            }
            // SAFETY: _exit ends the child without running this process's
            // destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        }
    }
}

#[test]
fn closing_a_dup_ed_descriptor_before_writing_keeps_the_object() {
    let (store, vol) = volume();
    // As a shell runs `cmd > existing.bin`: open with O_TRUNC, dup2 onto another
    // descriptor, close the original, then write.
    let opened = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(vol.join("existing.bin"))
        .unwrap();
    let copy = nix::unistd::dup(&opened).unwrap();
    drop(opened);
    assert!(
        holds(&store, "root/existing.bin", &pattern(1_000_000, 1)),
        "the close of the original, before any write, replaced the object: {:?} bytes",
        held(&store, "root/existing.bin")
    );
    let mut file = File::from(copy);
    file.write_all(b"new content").unwrap();
    drop(file);
    assert!(
        holds(&store, "root/existing.bin", b"new content"),
        "the writer's close publishes"
    );
}

#[test]
fn a_truncating_open_and_close_empties_the_object_at_release() {
    let (store, vol) = volume();
    // `: > existing.bin`
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(vol.join("existing.bin"))
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || store
            .get("root/existing.bin")
            .is_some_and(|b| b.is_empty())),
        "the truncation never reached the bucket"
    );
}

/// `sleep`, copied to `program`, run for `seconds` and asleep: until it wakes,
/// it runs no code it would have to fault in again from the file.
fn asleep(program: &std::path::Path, seconds: &str) -> std::process::Child {
    let child = std::process::Command::new(program)
        .arg(seconds)
        .spawn()
        .unwrap();
    // clock_nanosleep(2) or nanosleep(2), by /proc's record of the call the
    // process waits in.
    let syscall = format!("/proc/{}/syscall", child.id());
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&syscall).is_ok_and(|call| {
                let number = call.split_whitespace().next().unwrap_or("");
                number == libc::SYS_clock_nanosleep.to_string()
                    || number == libc::SYS_nanosleep.to_string()
            })
        }),
        "the program never went to sleep"
    );
    child
}

/// O_RDONLY|O_TRUNC of a program that is running fails with ETXTBSY and
/// truncates nothing: not the object, not the file the mount shows, not the
/// kernel's pages the program runs from. (A kernel that sends the open's
/// O_TRUNC to the daemon finds the program only after the file was
/// truncated: its pages were dropped and the file taken to be empty, and a
/// program starting up, or waking, died of SIGBUS or SIGSEGV, after which
/// the open found nothing running and succeeded.)
#[test]
fn a_truncating_open_of_a_running_program_fails_and_leaves_it_whole() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    };
    let vol = MemoryMount::read_write_exec(store.clone(), config);
    let program = std::fs::read("/bin/sleep").unwrap();
    let path = vol.join("sleep");
    std::fs::write(&path, &program).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    vol.settle();
    // Kept whole, in S3 and in the mount, once the releases are answered.
    let whole = |when: &str| {
        vol.settle();
        assert!(
            holds(&store, "root/sleep", &program),
            "{when}: the refused open emptied the object: {:?} bytes",
            held(&store, "root/sleep")
        );
        assert!(
            std::fs::read(&path).unwrap() == program,
            "{when}: the mount shows it emptied"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            program.len() as u64
        );
    };
    // Asleep: it wakes and exits normally, running code it had not run yet.
    let mut running = asleep(&path, "4");
    let refused = open_read_only_truncating(&path);
    assert_eq!(refused, Err(Some(libc::ETXTBSY)));
    let status = running.wait().unwrap();
    assert!(status.success(), "the program did not survive: {status}");
    whole("refused while asleep");

    // Again while a reader keeps the file staged after a writer's close
    // published it, refused twice.
    let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all(&program).unwrap();
    let reader = File::open(&path).unwrap();
    drop(writer);
    let mut running = asleep(&path, "4");
    let refused = [0, 1].map(|_| open_read_only_truncating(&path));
    assert_eq!(refused, [Err(Some(libc::ETXTBSY)); 2]);
    let status = running.wait().unwrap();
    assert!(status.success(), "the program did not survive: {status}");
    drop(reader);
    whole("kept staged by a reader");

    // Starting up: the open comes while it loads and runs its first code.
    // It sleeps long enough to be running still, however slow the machine,
    // and ends by the test's SIGKILL, not a crash.
    for _ in 0..20 {
        let mut starting = std::process::Command::new(&path).arg("30").spawn().unwrap();
        let refused = open_read_only_truncating(&path);
        starting.kill().unwrap();
        let status = starting.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the program did not survive: {status}"
        );
        assert_eq!(refused, Err(Some(libc::ETXTBSY)));
    }
    whole("refused while starting up");

    // The same open with nothing running truncates, as on any file system,
    // and as truncate(1) does: in S3 when the open returns.
    assert_eq!(open_read_only_truncating(&path), Ok(()));
    assert_eq!(held(&store, "root/sleep"), Some(0));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

/// open(2) of `path` with O_RDONLY|O_TRUNC, closed at once; its errno if it
/// failed.
fn open_read_only_truncating(path: &std::path::Path) -> Result<(), Option<i32>> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(path)
        .map(drop)
        .map_err(|e| e.raw_os_error())
}

#[test]
fn a_file_created_and_closed_empty_is_an_object_when_close_returns() {
    let (store, vol) = volume();
    // `touch new`, `cp empty new`, a job's `_SUCCESS` marker: created, nothing
    // written, closed by the creator. The close reports it durable, so it is.
    drop(File::create(vol.join("_SUCCESS")).unwrap());
    assert_eq!(
        held(&store, "root/_SUCCESS"),
        Some(0),
        "close returned before the new file was an object"
    );
}

fn child_closes_publish_nothing(exec: bool) {
    let (store, vol) = volume();
    let data = pattern(3_000_000, 2);
    let mut file = File::create(vol.join("growing.bin")).unwrap();
    file.write_all(&data[..1_000_000]).unwrap();
    fork_child(exec);
    assert_eq!(
        held(&store, "root/growing.bin"),
        None,
        "a child's close published a file still being written"
    );
    file.write_all(&data[1_000_000..]).unwrap();
    // The existing object is left alone while a child comes and goes, too.
    let mut existing = OpenOptions::new()
        .write(true)
        .open(vol.join("existing.bin"))
        .unwrap();
    existing.write_all(b"changed").unwrap();
    fork_child(exec);
    assert!(
        holds(&store, "root/existing.bin", &pattern(1_000_000, 1)),
        "a child's close published a change still being made"
    );
    drop(existing);
    let mut changed = pattern(1_000_000, 1);
    changed[..7].copy_from_slice(b"changed");
    assert!(
        holds(&store, "root/existing.bin", &changed),
        "the writer's close publishes"
    );
    assert_eq!(held(&store, "root/growing.bin"), None);
    // The writer's own close makes it durable before it returns.
    let fd = file.as_raw_fd();
    std::mem::forget(file);
    // SAFETY: `fd` was just released from `file`, which no longer owns it.
    drop(unsafe { File::from_raw_fd(fd) });
    assert!(
        holds(&store, "root/growing.bin", &data),
        "the writer's close publishes"
    );
    assert!(store.pending_uploads().is_empty());
}

#[test]
fn a_forked_child_that_exits_publishes_nothing() {
    child_closes_publish_nothing(false);
}

#[test]
fn a_forked_child_that_execs_publishes_nothing() {
    child_closes_publish_nothing(true);
}

/// How a writer that opened a file, wrote and never closed it ends.
#[derive(Clone, Copy)]
enum Ending {
    /// Killed by this signal (as the OOM killer or a crash kills).
    Signal(nix::sys::signal::Signal),
    /// `_exit(0)`: a normal exit, which closes the file as it goes.
    Exit,
}

/// Forks a writer that opens `path` (truncating it), writes `data` through
/// to the volume and ends as `ending` says, without closing the file; waits
/// for it and checks it ended so.
fn writer_that_ends(path: &std::path::Path, data: &[u8], ending: Ending) {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open(2) of a path allocated before the fork.
    let open = || unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
    };
    child_that_writes(open, data, ending);
}

/// Forks a child that writes `data` to the descriptor `open` gives it (one
/// it opens, or one it inherited) and ends as `ending` says, without closing
/// it; waits for it and checks it ended so.
fn child_that_writes(open: impl FnOnce() -> libc::c_int, data: &[u8], ending: Ending) {
    // SAFETY: the child only makes system calls (open, write, prctl,
    // setrlimit, kill, _exit) on memory allocated before the fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            let fd = open();
            if fd < 0 || libc::write(fd, data.as_ptr().cast(), data.len()) != data.len() as isize {
                libc::_exit(3);
            }
            if let Ending::Signal(signal) = ending {
                // The signal's own action (this process's handlers, such as
                // Rust's for SIGSEGV, are inherited), and no core dump of the
                // test binary.
                libc::signal(signal as i32, libc::SIG_DFL);
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::kill(libc::getpid(), signal as i32);
            }
            libc::_exit(0)
        },
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).unwrap();
            match ending {
                Ending::Signal(signal) => {
                    assert_eq!(status, WaitStatus::Signaled(child, signal, false))
                }
                Ending::Exit => assert_eq!(status, WaitStatus::Exited(child, 0)),
            }
        }
    }
}

fn a_writer_killed_by(signal: nix::sys::signal::Signal) {
    let (store, vol) = volume();
    store.put("root/d.txt", "good v1\n");
    store.put("root/emptied.txt", "kept\n");
    let big = pattern(3 * common::fuse::PART as usize, 4);
    writer_that_ends(&vol.join("d.txt"), b"PARTIAL", Ending::Signal(signal));
    // Killed between its truncating open and its first write.
    writer_that_ends(&vol.join("emptied.txt"), b"", Ending::Signal(signal));
    // One that had parts of a multipart upload in S3 when it died, and one
    // that created its file.
    writer_that_ends(&vol.join("existing.bin"), &big, Ending::Signal(signal));
    writer_that_ends(&vol.join("new.txt"), b"half", Ending::Signal(signal));
    // The last release comes after the close: give it the time to publish
    // anything it would.
    assert!(
        !wait_until(Duration::from_secs(2), || {
            !holds(&store, "root/d.txt", b"good v1\n")
                || !holds(&store, "root/emptied.txt", b"kept\n")
                || !holds(&store, "root/existing.bin", &pattern(1_000_000, 1))
                || held(&store, "root/new.txt").is_some()
        }),
        "a writer killed by {signal} published what it wrote: d.txt {:?}, emptied.txt {:?}, \
         existing.bin {:?}, new.txt {:?} bytes",
        held(&store, "root/d.txt"),
        held(&store, "root/emptied.txt"),
        held(&store, "root/existing.bin"),
        held(&store, "root/new.txt"),
    );
    assert!(
        wait_until(Duration::from_secs(5), || store
            .pending_uploads()
            .is_empty()),
        "the killed writer's multipart upload was left: {:?}",
        store.pending_uploads()
    );
    // The volume shows what S3 holds again.
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read(vol.join("d.txt")).is_ok_and(|d| d == b"good v1\n")
    }));
    // A writer that is not killed publishes as ever.
    writer_that_ends(&vol.join("d.txt"), b"good v2\n", Ending::Exit);
    assert!(holds(&store, "root/d.txt", b"good v2\n"));
}

#[test]
fn a_writer_killed_by_sigkill_publishes_nothing() {
    a_writer_killed_by(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn a_writer_that_crashes_publishes_nothing() {
    a_writer_killed_by(nix::sys::signal::Signal::SIGSEGV);
}

#[test]
fn a_writer_stopped_by_sigterm_publishes_nothing() {
    a_writer_killed_by(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_writer_that_exits_without_closing_publishes() {
    let (store, vol) = volume();
    store.put("root/d.txt", "good v1\n");
    writer_that_ends(&vol.join("d.txt"), b"complete\n", Ending::Exit);
    // Its exit closed the file, and that close made it durable.
    assert!(holds(&store, "root/d.txt", b"complete\n"));
    writer_that_ends(&vol.join("made.txt"), b"made\n", Ending::Exit);
    assert!(holds(&store, "root/made.txt", b"made\n"));
}

#[test]
fn a_killed_writer_that_inherited_the_descriptor_publishes_nothing() {
    use nix::sys::signal::Signal::SIGKILL;
    let (store, vol) = volume();
    store.put("root/d.txt", "good v1\n");
    store.put("root/e.txt", "good v1\n");
    // As a shell runs `exec 3>d.txt; cmd >&3; exec 3>&-` where cmd is killed
    // half-way: the shell opened the file, the command wrote and died.
    let shell = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(vol.join("d.txt"))
        .unwrap();
    child_that_writes(|| shell.as_raw_fd(), b"PARTIAL", Ending::Signal(SIGKILL));
    drop(shell);
    // And where another descriptor on the file asks for it to be durable:
    // what the killed process left is not what anyone meant to keep, and
    // fsync says so.
    let writer = OpenOptions::new()
        .write(true)
        .open(vol.join("e.txt"))
        .unwrap();
    let other = OpenOptions::new()
        .write(true)
        .open(vol.join("e.txt"))
        .unwrap();
    child_that_writes(|| writer.as_raw_fd(), b"PART", Ending::Signal(SIGKILL));
    drop(writer);
    let fsync = other.sync_all().map_err(|e| e.raw_os_error());
    drop(other);
    assert!(
        !wait_until(Duration::from_secs(2), || {
            !holds(&store, "root/d.txt", b"good v1\n") || !holds(&store, "root/e.txt", b"good v1\n")
        }),
        "what a killed process wrote through an inherited descriptor was published: d.txt {:?}, \
         e.txt {:?}",
        store.get("root/d.txt"),
        store.get("root/e.txt"),
    );
    assert_eq!(fsync, Err(Some(libc::EIO)));
    // A chmod of a held-back file goes onto what S3 keeps, with no upload to
    // carry it.
    {
        use std::os::unix::fs::PermissionsExt;
        store.put("root/m.txt", "good v1\n");
        let shell = OpenOptions::new()
            .write(true)
            .open(vol.join("m.txt"))
            .unwrap();
        child_that_writes(|| shell.as_raw_fd(), b"PART", Ending::Signal(SIGKILL));
        std::fs::set_permissions(vol.join("m.txt"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || kept_mode(&store, "root/m.txt")
                == Some(0o600)),
            "the change of mode of a held-back file was lost"
        );
        drop(shell);
        assert!(holds(&store, "root/m.txt", b"good v1\n"));
    }
    // A rewrite that ends with ftruncate (`f.write(); f.truncate()`), by a
    // process killed right after, through a descriptor it inherited.
    store.put("root/f.txt", "good v1, longer\n");
    let opened = read_write(&vol.join("f.txt"));
    // SAFETY: the child only makes system calls on memory allocated before
    // the fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            let fd = opened.as_raw_fd();
            libc::pwrite(fd, b"PARTIAL".as_ptr().cast(), 7, 0);
            libc::ftruncate(fd, 7);
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(0)
        },
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).unwrap();
            assert_eq!(status, WaitStatus::Signaled(child, SIGKILL, false));
        }
    }
    drop(opened);
    assert!(
        !wait_until(Duration::from_secs(1), || !holds(
            &store,
            "root/f.txt",
            b"good v1, longer\n"
        )),
        "a killed process's truncation was published: {:?}",
        store.get("root/f.txt")
    );
    // A command that is not killed publishes through the shell's close as ever.
    let shell = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(vol.join("d.txt"))
        .unwrap();
    child_that_writes(|| shell.as_raw_fd(), b"good v2\n", Ending::Exit);
    drop(shell);
    assert!(holds(&store, "root/d.txt", b"good v2\n"));
}

#[test]
fn a_killed_process_holds_back_only_a_file_whose_last_change_was_its_own() {
    use nix::sys::signal::Signal::SIGKILL;
    let (store, vol) = volume();
    store.put("root/log", "start\n");
    let mut shell = OpenOptions::new()
        .append(true)
        .open(vol.join("log"))
        .unwrap();
    let (wait, go) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only makes system calls (write, read, kill, _exit)
    // on memory allocated before the fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => unsafe {
            // Writes through the inherited descriptor, waits, and is killed.
            let line = b"child\n";
            libc::write(shell.as_raw_fd(), line.as_ptr().cast(), line.len());
            let mut byte = 0u8;
            libc::read(wait.as_raw_fd(), (&raw mut byte).cast(), 1);
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(0)
        },
        ForkResult::Parent { child } => {
            // The last change is the shell's own, after the child's.
            wait_until(Duration::from_secs(5), || {
                std::fs::metadata(vol.join("log")).is_ok_and(|m| m.len() == 12)
            });
            shell.write_all(b"shell\n").unwrap();
            nix::unistd::write(&go, b"x").unwrap();
            assert_eq!(
                waitpid(child, None).unwrap(),
                WaitStatus::Signaled(child, SIGKILL, false)
            );
        }
    }
    drop(shell);
    assert!(
        holds(&store, "root/log", b"start\nchild\nshell\n"),
        "a live writer's last change was held back: {:?}",
        store.get("root/log")
    );
}

/// The permission bits the object at `key` keeps in its metadata.
fn kept_mode(store: &MemoryStore, key: &str) -> Option<u32> {
    let headers = store.headers(key)?;
    let mode = headers.user.get("mode")?;
    Some(u32::from_str_radix(mode, 8).ok()? & 0o7777)
}

#[test]
fn a_rename_over_a_file_open_for_writing_is_not_undone_by_its_descriptor() {
    use s3vol::control::{self, INFO, URL, UrlRequest};
    use s3vol::store::UrlMethod;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (store, vol) = volume();
    std::fs::write(vol.join("cfg"), "old\n").unwrap();
    // As a shell runs `exec 3>>cfg; echo stale >&3; mv cfg.tmp cfg; exec 3>&-`.
    let mut old = OpenOptions::new()
        .append(true)
        .open(vol.join("cfg"))
        .unwrap();
    let old_reader = File::open(vol.join("cfg")).unwrap();
    let get = UrlRequest {
        method: UrlMethod::Get,
        valid_for: Duration::from_secs(60),
    };
    let put = UrlRequest {
        method: UrlMethod::Put,
        ..get
    };
    old.write_all(b"stale\n").unwrap();
    std::fs::write(vol.join("cfg.tmp"), "new\n").unwrap();
    std::fs::set_permissions(vol.join("cfg.tmp"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(vol.join("cfg.tmp"), vol.join("cfg")).unwrap();
    // The old descriptors now name an unlinked file, for writing and for
    // reading alike.
    assert_eq!(old.metadata().unwrap().nlink(), 0);
    assert_eq!(old_reader.metadata().unwrap().nlink(), 0);
    old.write_all(b"later\n").unwrap();
    // Its mode and time are its own: they change nothing in S3.
    old.set_permissions(std::fs::Permissions::from_mode(0o644))
        .unwrap();
    old.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    assert_eq!(old.metadata().unwrap().mode() & 0o7777, 0o644);
    // Nor can it tell of, or hand out, the object that has the name now.
    for (file, request, url) in [
        (&old, INFO, None),
        (&old_reader, INFO, None),
        (&old_reader, URL, Some(get)),
        (&old, URL, Some(put)),
    ] {
        assert_eq!(
            control::ask(file, request, url).unwrap_err(),
            nix::errno::Errno::ESTALE,
            "ioctl {request:#x} on a descriptor of the replaced file"
        );
    }
    old.sync_all().unwrap();
    drop(old);
    drop(old_reader);
    // A change of mode waits a moment before it is copied in place.
    std::thread::sleep(s3vol::fs::METADATA_DELAY * 2);
    assert!(
        !wait_until(Duration::from_secs(1), || !holds(
            &store, "root/cfg", b"new\n"
        )),
        "the old descriptor changed the renamed file: S3 holds {:?}",
        store.get("root/cfg")
    );
    assert_eq!(kept_mode(&store, "root/cfg"), Some(0o600));
    assert_eq!(store.get("root/cfg.tmp"), None);
    assert!(store.pending_uploads().is_empty());
    assert_eq!(std::fs::read(vol.join("cfg")).unwrap(), b"new\n");
}

/// `path` opened for reading and writing, as Python's `open(..., 'r+b')` and
/// SQLite open a file.
fn read_write(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn reading_through_a_read_write_descriptor_costs_what_a_read_only_one_does() {
    use s3vol::store::Operation;
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let (store, vol) = volume();
    let data = pattern(12 << 20, 7);
    store.put("root/db.sqlite", data.clone());
    let etag = store.etag("root/db.sqlite");
    // The time it shows is the object's, before and while it is open.
    std::thread::sleep(Duration::from_millis(1100));
    let shown = std::fs::metadata(vol.join("db.sqlite"))
        .unwrap()
        .modified()
        .unwrap();
    store.clear_calls();
    // As Python's open(..., 'r+b') and SQLite open a file.
    let mut file = read_write(&vol.join("db.sqlite"));
    let mut head = [0u8; 10];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..10]);
    let mut far = [0u8; 100];
    file.read_exact_at(&mut far, 9 << 20).unwrap();
    assert_eq!(far, data[9 << 20..(9 << 20) + 100]);
    assert_eq!(file.metadata().unwrap().modified().unwrap(), shown);
    drop(file);
    let fetched: u64 = store
        .calls()
        .iter()
        .filter_map(|c| c.range.as_ref().map(|r| r.end - r.start))
        .sum();
    assert!(
        fetched <= 3 << 20,
        "reading 110 bytes through a read-write descriptor fetched {fetched} bytes"
    );
    for op in [
        Operation::PutObject,
        Operation::CreateMultipartUpload,
        Operation::UploadPart,
        Operation::CopyObject,
    ] {
        assert_eq!(
            store.count_calls(op),
            0,
            "a handle that changed nothing made a {op:?}"
        );
    }
    assert_eq!(store.etag("root/db.sqlite"), etag);
    // Its first write stages it: the change is published whole.
    let mut file = read_write(&vol.join("db.sqlite"));
    let mut head = [0u8; 10];
    file.read_exact(&mut head).unwrap();
    file.write_all_at(b"CHANGED", 5 << 20).unwrap();
    let mut back = [0u8; 7];
    file.read_exact_at(&mut back, 5 << 20).unwrap();
    assert_eq!(&back, b"CHANGED");
    drop(file);
    let mut changed = data;
    changed[5 << 20..(5 << 20) + 7].copy_from_slice(b"CHANGED");
    assert!(holds(&store, "root/db.sqlite", &changed));
}

/// `cmd > f` of a file another client deleted while the kernel still knows
/// its name creates it again: the open, finding the object gone, answers
/// ESTALE, and the kernel looks the name up once more and creates the file.
/// Without O_CREAT, the same open fails with ENOENT.
#[test]
fn a_truncating_open_of_a_file_another_client_deleted_creates_it_again() {
    let (store, vol) = trusting_volume();
    let path = vol.join("f");
    std::fs::write(&path, "old").unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3);
    vol.settle();
    store.remove("root/f");
    std::fs::write(&path, "new").unwrap();
    assert!(holds(&store, "root/f", b"new"), "{:?}", store.get("root/f"));

    vol.settle();
    store.remove("root/f");
    let refused = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(store.get("root/f"), None);
}

#[test]
fn an_open_after_another_client_replaced_the_file_reads_the_new_version() {
    let (store, vol) = trusting_volume();
    std::fs::write(vol.join("grows.txt"), "v1").unwrap();
    std::fs::write(vol.join("shrinks.txt"), "a longer version one").unwrap();
    assert_eq!(std::fs::metadata(vol.join("grows.txt")).unwrap().len(), 2);
    assert_eq!(
        std::fs::metadata(vol.join("shrinks.txt")).unwrap().len(),
        20
    );
    // Another client replaces them, within the metadata TTL: a fresh open
    // reads what S3 holds, longer or shorter than the size the kernel kept
    // (once the writes' handles are released: until then an open reads the
    // staged copy, the version this mount wrote, trusted for the TTL).
    vol.settle();
    store.put("root/grows.txt", "version two");
    store.put("root/shrinks.txt", "v2");
    assert_eq!(
        std::fs::read(vol.join("grows.txt")).unwrap(),
        b"version two"
    );
    assert_eq!(std::fs::read(vol.join("shrinks.txt")).unwrap(), b"v2");
    assert_eq!(std::fs::metadata(vol.join("grows.txt")).unwrap().len(), 11);
    // So does a descriptor open for reading and writing (as SQLite opens a
    // database), and what it writes goes on from the new version.
    store.put("root/grows.txt", "version three");
    let mut rw = read_write(&vol.join("grows.txt"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut rw, &mut text).unwrap();
    assert_eq!(text, "version three");
    rw.write_all(b"+").unwrap();
    drop(rw);
    assert!(
        holds(&store, "root/grows.txt", b"version three+"),
        "{:?}",
        store.get("root/grows.txt")
    );
    // A handle that already returned bytes of a version fails (ESTALE)
    // rather than mix two.
    use std::os::unix::fs::FileExt;
    let big = pattern(16 << 20, 3);
    store.put("root/big.bin", big.clone());
    let file = File::open(vol.join("big.bin")).unwrap();
    let mut first = vec![0u8; 4096];
    file.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(first, big[..4096]);
    store.put("root/big.bin", pattern(16 << 20, 9));
    let mut far = vec![0u8; 4096];
    let err = file.read_exact_at(&mut far, 12 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
}

/// Reads and a first write through descriptors opened on a multipart object
/// (whose copies get ETags of their own) before `change` copies it to `key`
/// (`root/KEY` in the bucket): they read on, and the write lands there.
fn descriptors_read_on_after(change: impl FnOnce(&MemoryMount), key: &str) {
    use std::os::unix::fs::FileExt;
    let (store, vol) = volume();
    let data = pattern(3 * common::fuse::PART as usize, 6);
    std::fs::write(vol.join("big.bin"), &data).unwrap();
    let etag = store.etag("root/big.bin").unwrap();
    assert!(etag.contains('-'), "{etag}");
    let reader = File::open(vol.join("big.bin")).unwrap();
    let writer = read_write(&vol.join("big.bin"));
    let mut first = vec![0u8; 4096];
    reader.read_exact_at(&mut first, 0).unwrap();
    writer.read_exact_at(&mut first, 0).unwrap();
    change(&vol);
    let stored = format!("root/{key}");
    assert!(
        wait_until(Duration::from_secs(5), || store
            .etag(&stored)
            .is_some_and(|now| now != etag)),
        "the object was not copied"
    );
    // Same bytes under a new ETag: the reads go on, far from what was read.
    let mut far = vec![0u8; 4096];
    let at = 2 * common::fuse::PART as usize + 4096;
    reader.read_exact_at(&mut far, at as u64).unwrap();
    assert_eq!(far, data[at..at + 4096]);
    writer.write_all_at(b"CHANGED", 8).unwrap();
    drop(writer);
    let mut changed = data;
    changed[8..15].copy_from_slice(b"CHANGED");
    assert!(holds(&store, &stored, &changed));
}

#[test]
fn a_change_of_mode_leaves_the_descriptors_open_on_the_file_reading_and_writing() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o600);
    descriptors_read_on_after(
        |vol| std::fs::set_permissions(vol.join("big.bin"), mode).unwrap(),
        "big.bin",
    );
}

#[test]
fn a_rename_leaves_the_descriptors_open_on_the_file_reading_and_writing() {
    descriptors_read_on_after(
        |vol| std::fs::rename(vol.join("big.bin"), vol.join("moved.bin")).unwrap(),
        "moved.bin",
    );
}

#[test]
fn a_rename_or_unlink_that_s3_refuses_to_finish_leaves_each_name_its_own_content() {
    use s3vol::store::Operation::DeleteObject;
    use s3vol::store::faulty::{Fault, FaultyStore};
    let memory = Arc::new(MemoryStore::new("bkt"));
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    };
    let vol = MemoryMount::read_write(faulty.clone(), config);
    std::fs::write(vol.join("cfg"), "old\n").unwrap();
    std::fs::write(vol.join("cfg.tmp"), "new\n").unwrap();
    let mut old = OpenOptions::new()
        .append(true)
        .open(vol.join("cfg"))
        .unwrap();
    old.write_all(b"stale\n").unwrap();
    let mut kept = File::create(vol.join("kept")).unwrap();
    kept.write_all(b"first\n").unwrap();
    // A policy without s3:DeleteObject: the copy is made, the source stays.
    faulty.fail_all(DeleteObject, Fault::AccessDenied);
    let refused = std::fs::rename(vol.join("cfg.tmp"), vol.join("cfg")).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EACCES), "{refused}");
    let refused = std::fs::remove_file(vol.join("kept")).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EACCES), "{refused}");
    faulty.clear();
    // The name `cfg` is the copy's now: the old descriptor changes nothing
    // under it. The file that could not be unlinked is still written.
    old.write_all(b"later\n").unwrap();
    drop(old);
    kept.write_all(b"second\n").unwrap();
    drop(kept);
    assert!(
        !wait_until(Duration::from_secs(1), || !holds(
            &memory, "root/cfg", b"new\n"
        )),
        "the replaced file's descriptor changed the name: {:?}",
        memory.get("root/cfg")
    );
    assert!(holds(&memory, "root/cfg.tmp", b"new\n"));
    assert!(holds(&memory, "root/kept", b"first\nsecond\n"));
    assert_eq!(std::fs::read(vol.join("cfg")).unwrap(), b"new\n");
    assert_eq!(std::fs::read(vol.join("cfg.tmp")).unwrap(), b"new\n");
}
