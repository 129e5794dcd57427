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
use std::sync::Arc;
use std::time::Duration;

mod common;

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
