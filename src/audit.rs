//! `--audit-log PATH`: one JSON line for every operation that reads or changes
//! the bucket or hands out access to it: the first read through a handle, a
//! directory listed, a link's target read, every change (create, the close
//! that made an object, rename, unlink, mkdir, rmdir, symlink, chmod, chown,
//! utimens), and `s3vol info` and `s3vol url`; saying who asked (uid, gid,
//! pid and command name), on which key, and what came of it (`errno`, 0 for
//! success).
//!
//! The log never slows the filesystem down or stops it: lines go into a bounded
//! queue that a thread of its own appends to the file. A line that finds the
//! queue full, or that the file refuses (a full disk, an I/O error), is dropped
//! and counted (`s3vol stats`), and the volume's log says so once per kind of
//! failure. The file is opened as the log file is (`crate::logging`): appended
//! to, never through a symbolic link, a regular file of mode 0600.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::json;
use tracing::warn;

/// Lines waiting to be written; more are dropped.
const QUEUE: usize = 4096;

/// Who asked for an operation, as the kernel names the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

tokio::task_local! {
    /// The caller of the request being served: set by the FUSE adapter around
    /// each request, read where the filesystem records an event.
    static CALLER: Caller;
}

/// Runs `work` on behalf of `caller`.
pub async fn as_caller<F: std::future::Future>(caller: Caller, work: F) -> F::Output {
    CALLER.scope(caller, work).await
}

/// Runs `work` on behalf of `caller`, on this thread.
pub fn now_as_caller<T>(caller: Caller, work: impl FnOnce() -> T) -> T {
    CALLER.sync_scope(caller, work)
}

/// The caller of the request being served; all zeros outside one (work the
/// volume does of itself, such as the uploads at unmount).
pub fn current_caller() -> Caller {
    CALLER.try_with(|caller| *caller).unwrap_or_default()
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The first read of an object through a handle.
    Read,
    Create,
    /// The close (or fsync) that made the object: the line carries its ETag.
    Write,
    Rename,
    Unlink,
    Mkdir,
    Rmdir,
    /// A directory opened to be listed.
    List,
    Symlink,
    /// A symbolic link's target read.
    Readlink,
    /// A mode set (chmod), an owner (chown), a time (touch, utime).
    Chmod,
    Chown,
    Utimens,
    /// An extended attribute set (setfattr) or removed (setfattr -x).
    Setxattr,
    Removexattr,
    /// `s3vol info`: what S3 holds for a file.
    Info,
    /// `s3vol url`: a presigned URL handed out.
    Url,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Create => "create",
            Op::Write => "write",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::List => "list",
            Op::Symlink => "symlink",
            Op::Readlink => "readlink",
            Op::Chmod => "chmod",
            Op::Chown => "chown",
            Op::Utimens => "utimens",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::Info => "info",
            Op::Url => "url",
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    /// The caller, with the thread the kernel named (the log shows its
    /// process).
    pub caller: Caller,
    /// The object key, or the directory's prefix (with its `/`).
    pub key: String,
    /// A rename's new key.
    pub to: Option<String>,
    pub size: Option<u64>,
    /// The ETag of the object a write made, or a read read.
    pub etag: Option<String>,
    /// 0, or the errno the caller was answered.
    pub errno: i32,
    /// What a chmod or chown set, or a URL's method and expiry.
    pub detail: Option<Detail>,
}

/// What an event set or handed out, besides its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// The permission bits a chmod set.
    Mode(u16),
    /// The owner and group a chown set (`None`: left as they were).
    Owner { uid: Option<u32>, gid: Option<u32> },
    /// The name of the extended attribute set or removed.
    Xattr(String),
    /// A presigned URL: its method, and until when it works.
    Url {
        method: &'static str,
        expires: SystemTime,
    },
}

impl Event {
    /// An event of `op` on `key` by the current caller, that succeeded.
    pub fn new(op: Op, key: impl Into<String>) -> Self {
        Self {
            op,
            caller: current_caller(),
            key: key.into(),
            to: None,
            size: None,
            etag: None,
            errno: 0,
            detail: None,
        }
    }
}

/// What the log has done, for `s3vol stats`.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct AuditLog {
    sender: Mutex<Option<SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: Arc<AuditStats>,
    /// Whether a full queue has been logged.
    warned_full: AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the audit log at `path` and starts its writer.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let file = crate::logging::open_log_file(path)?;
        Ok(Self::start(file))
    }

    /// An audit log writing to `file`.
    fn start(file: File) -> Arc<Self> {
        let (sender, receiver) = sync_channel(QUEUE);
        let stats = Arc::new(AuditStats::default());
        let writer = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("s3vol-audit".into())
                .spawn(move || write_lines(file, receiver, &stats))
                .expect("start the audit log's writer")
        };
        Arc::new(Self {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            stats,
            warned_full: AtomicBool::new(false),
        })
    }

    /// Queues `event`'s line; never waits. The caller's process and command
    /// name are looked up now, while the process is likely still there.
    pub fn record(&self, mut event: Event) {
        let process = crate::procfs::thread_group(event.caller.pid);
        event.caller.pid = process.unwrap_or(event.caller.pid);
        let command = process.and_then(crate::procfs::command_name);
        let line = line(&event, SystemTime::now(), command);
        let sent = match &*self.sender.lock() {
            Some(sender) => sender.try_send(line),
            None => return,
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.warned_full.swap(true, Ordering::Relaxed) {
                    warn!(
                        "the audit log cannot keep up; lines are dropped (counted in s3vol stats)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes out what is queued and stops the writer (at unmount).
    pub fn close(&self) {
        self.sender.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: appends each line whole, counting what the file refuses.
fn write_lines(mut file: File, lines: Receiver<Vec<u8>>, stats: &AuditStats) {
    let mut last_error: Option<io::ErrorKind> = None;
    for line in lines {
        match file.write_all(&line) {
            Ok(()) => {
                stats.written.fetch_add(1, Ordering::Relaxed);
                last_error = None;
            }
            Err(e) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                if last_error != Some(e.kind()) {
                    warn!(error = %e, "cannot write the audit log; lines are dropped (counted in s3vol stats)");
                    last_error = Some(e.kind());
                }
            }
        }
    }
}

/// The JSON line of `event`, at `time`.
fn line(event: &Event, time: SystemTime, command: Option<String>) -> Vec<u8> {
    let mut value = json!({
        "time": humantime::format_rfc3339_millis(time).to_string(),
        "op": event.op.name(),
        "uid": event.caller.uid,
        "gid": event.caller.gid,
        "pid": event.caller.pid,
        "command": command,
        "key": event.key,
        "errno": event.errno,
    });
    let object = value.as_object_mut().expect("an object");
    if let Some(to) = &event.to {
        object.insert("to".into(), json!(to));
    }
    if let Some(size) = event.size {
        object.insert("size".into(), json!(size));
    }
    if let Some(etag) = &event.etag {
        object.insert("etag".into(), json!(etag));
    }
    match &event.detail {
        Some(Detail::Mode(mode)) => {
            object.insert("mode".into(), json!(format!("{mode:04o}")));
        }
        Some(Detail::Owner { uid, gid }) => {
            object.insert("owner_uid".into(), json!(uid));
            object.insert("owner_gid".into(), json!(gid));
        }
        Some(Detail::Xattr(name)) => {
            object.insert("xattr".into(), json!(name));
        }
        Some(Detail::Url { method, expires }) => {
            object.insert("method".into(), json!(method));
            let expires = humantime::format_rfc3339_seconds(*expires).to_string();
            object.insert("expires".into(), json!(expires));
        }
        None => {}
    }
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(op: Op) -> Event {
        Event {
            op,
            caller: Caller {
                uid: 1000,
                gid: 100,
                pid: std::process::id(),
            },
            key: "dir/a \"b\"".into(),
            to: None,
            size: Some(5),
            etag: Some("\"e\"".into()),
            errno: 0,
            detail: None,
        }
    }

    #[test]
    fn each_event_is_one_json_line_naming_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(event(Op::Write));
        log.record(Event {
            to: Some("dir/c".into()),
            size: None,
            etag: None,
            errno: libc::ENOENT,
            ..event(Op::Rename)
        });
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["op"], "write");
        assert_eq!(lines[0]["key"], "dir/a \"b\"");
        assert_eq!(lines[0]["etag"], "\"e\"");
        assert_eq!(lines[0]["uid"], 1000);
        assert_eq!(lines[0]["pid"], std::process::id());
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(lines[0]["command"], me.trim_end());
        assert_eq!(lines[1]["op"], "rename");
        assert_eq!(lines[1]["to"], "dir/c");
        assert_eq!(lines[1]["errno"], libc::ENOENT);
        assert!(lines[1].get("size").is_none());
        assert_eq!(log.stats.written.load(Ordering::Relaxed), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_file_that_refuses_lines_counts_them_dropped_and_never_blocks() {
        // /dev/full refuses every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let log = AuditLog::start(full);
        let started = std::time::Instant::now();
        for _ in 0..3 * QUEUE {
            log.record(event(Op::Create));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "recording waited"
        );
        log.close();
        assert_eq!(log.stats.dropped.load(Ordering::Relaxed), 3 * QUEUE as u64);
        assert_eq!(log.stats.written.load(Ordering::Relaxed), 0);
    }
}
