//! FUSE passthrough: a file whose version is whole in the disk cache is read
//! by the kernel from the cache's data file, never through the daemon (Linux
//! 6.9 and later).
//!
//! The kernel registers the data file under a backing ID, handed over with the
//! open's reply, and keeps its own reference to the file for as long as the
//! file is open. It has two rules, and breaking either fails the application's
//! open(2) with EIO: every passthrough open of an inode names the same backing
//! file, and an inode has no passthrough open while it has an open that uses
//! its page cache. So each inode is in one of two modes here, counted per
//! handle: passthrough (one backing ID, reused by every open of the same
//! version, closed with the last) or cached; the kernel takes no open of an
//! inode in passthrough without it, not even a direct one. So an open of a
//! new version while the kernel reads an older one is given a new inode for
//! the name (ESTALE, and the kernel looks the name up again), as if the file
//! had been replaced; the old inode serves its readers until they close. An
//! inode with cached opens gets no passthrough until they are all released
//! (the kernel has ended an open's mode before its release reaches us, so
//! counting down at release is never early). Writers never meet passthrough:
//! it is off on read-write volumes.
//!
//! The filesystem asks for no backing file when the kernel likely holds the
//! version whole in its page cache already (read whole through the daemon, and
//! kept since): its pages are faster than the disk, where the cache writes its
//! blocks past the page cache.
//!
//! A pinned version's blocks are not evicted while its backing ID is open (see
//! `crate::cache`). Passthrough is off on an encrypted volume (its cache holds
//! ciphertext), with an audit log (whose reads must reach the daemon), and
//! when the kernel refuses a backing file: no CAP_SYS_ADMIN, a kernel or
//! connection without passthrough, a cache directory on a stacked file system.
//! `s3vol stats` says which.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tracing::{debug, info};

use crate::cache::WholeFile;
use crate::stats::PassthroughStatus;

/// The kernel's registry of backing files for a FUSE connection.
pub trait Backings: Send + Sync {
    /// Registers `file`, returning its backing ID.
    fn open(&self, file: &File) -> io::Result<u32>;
    /// Lets backing ID `id` go; files open through it stay readable.
    fn close(&self, id: u32);
}

/// How the kernel is to do an open's I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Through the kernel's page cache and the daemon.
    Cached,
    /// From the backing file with this ID, never reaching the daemon.
    Passthrough(u32),
    /// None: the kernel reads the inode from a backing file that this open
    /// cannot share (another version, or a file staged here), and would fail
    /// the open with EIO. The open is to go to a new inode.
    Conflict,
}

/// What an open counts in its inode's mode.
#[derive(Clone, Copy, Debug)]
enum Counted {
    Cached,
    Passthrough,
}

#[derive(Default)]
struct Mode {
    cached: usize,
    passthrough: usize,
    backing: Option<Backing>,
}

struct Backing {
    id: u32,
    etag: Arc<str>,
    /// The pinned version (none for a backing ID a dead worker left).
    _whole: Option<WholeFile>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Mode>,
    handles: HashMap<u64, (u64, Counted)>,
}

#[derive(Default)]
pub struct Passthrough {
    backings: OnceLock<Arc<dyn Backings>>,
    state: Mutex<State>,
    off: OnceLock<String>,
    opens: AtomicU64,
}

impl Passthrough {
    /// The kernel's backing files, once mounted; `probe`, a file where the
    /// cache's files are, is registered and let go at once, so that a
    /// refusal (and why) is known before the first open.
    pub fn attach(&self, backings: Arc<dyn Backings>, probe: Option<File>) {
        if let (None, Some(probe)) = (self.off.get(), probe) {
            match backings.open(&probe) {
                Ok(id) => backings.close(id),
                Err(e) => self.refused(&e),
            }
        }
        let _ = self.backings.set(backings);
    }

    /// Whether the kernel may still be asked for backing files.
    pub fn is_on(&self) -> bool {
        self.off.get().is_none()
    }

    /// Passthrough is off for good, for `why`, which the log says.
    pub fn turn_off(&self, why: String) {
        if self.off.set(why.clone()).is_ok() {
            info!("files whole in the disk cache are read through the daemon: {why}");
        }
    }

    /// Passthrough is off for good, as the volume's options say.
    pub fn not_configured(&self, why: &str) {
        let _ = self.off.set(why.to_string());
    }

    pub fn status(&self) -> PassthroughStatus {
        let state = self.state.lock();
        PassthroughStatus {
            off: self.off.get().cloned(),
            opens: self.opens.load(Ordering::Relaxed),
            inodes_now: state.inodes.values().filter(|m| m.passthrough > 0).count(),
        }
    }

    /// Decides the I/O of an open of `ino` that reads version `etag` of the
    /// object (`None`: a file staged here, or an open for writing); `whole`
    /// gives the version's data file if it is whole in the disk cache and
    /// may be read through passthrough. Counted until [`Passthrough::bind`]
    /// names the handle, or the ticket is dropped.
    pub fn open(
        &self,
        ino: u64,
        etag: Option<&str>,
        whole: impl FnOnce() -> Option<WholeFile>,
    ) -> Ticket<'_> {
        let mut state = self.state.lock();
        let mode = state.inodes.entry(ino).or_default();
        let (io, counted) = match (etag, &mode.backing) {
            (Some(etag), Some(backing)) if *backing.etag == *etag => {
                (Io::Passthrough(backing.id), Some(Counted::Passthrough))
            }
            (_, Some(_)) => (Io::Conflict, None),
            (Some(etag), None) if mode.cached == 0 => match self.register(whole) {
                Some((id, whole)) => {
                    mode.backing = Some(Backing {
                        id,
                        etag: etag.into(),
                        _whole: Some(whole),
                    });
                    (Io::Passthrough(id), Some(Counted::Passthrough))
                }
                None => (Io::Cached, Some(Counted::Cached)),
            },
            _ => (Io::Cached, Some(Counted::Cached)),
        };
        if let Some(counted) = counted {
            count(mode, counted, 1);
        }
        Ticket {
            passthrough: self,
            ino,
            io,
            counted,
        }
    }

    /// The version's data file registered with the kernel, where passthrough
    /// is on and the version is whole on disk.
    fn register(&self, whole: impl FnOnce() -> Option<WholeFile>) -> Option<(u32, WholeFile)> {
        if self.off.get().is_some() {
            return None;
        }
        let backings = self.backings.get()?;
        let whole = whole()?;
        match backings.open(&whole.file) {
            Ok(id) => {
                whole.handed_over();
                Some((id, whole))
            }
            Err(e) => {
                self.refused(&e);
                None
            }
        }
    }

    /// The kernel refused a backing file: for good (passthrough goes off,
    /// saying why), or for this file alone.
    fn refused(&self, e: &io::Error) {
        match e.raw_os_error() {
            Some(libc::EPERM) => self.turn_off(
                "the kernel refused a backing file (EPERM): the daemon lacks CAP_SYS_ADMIN, \
                 or the volume was mounted by a kernel without FUSE passthrough"
                    .into(),
            ),
            Some(libc::ELOOP) => self.turn_off(
                "the cache directory is on a stacked file system (overlayfs?): put \
                 --cache-dir on a plain one"
                    .into(),
            ),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL) => {
                self.turn_off(format!("the kernel has no FUSE passthrough ({e})"))
            }
            _ => debug!(error = %e, "no backing file for this open"),
        }
    }

    /// Whether the kernel reads `ino` from the backing file of a version
    /// other than `etag`.
    pub fn reads_other(&self, ino: u64, etag: &str) -> bool {
        let state = self.state.lock();
        let backing = state.inodes.get(&ino).and_then(|m| m.backing.as_ref());
        backing.is_some_and(|b| *b.etag != *etag)
    }

    /// A handle a worker before this one opened on `ino`, with the backing ID
    /// it was given (`None`: cached, or direct, counted as cached to be
    /// safe). The ID stays open until the last handle using it is released.
    pub fn adopt(&self, fh: u64, ino: u64, etag: &str, backing: Option<u32>) {
        let mut state = self.state.lock();
        let mode = state.inodes.entry(ino).or_default();
        let counted = match backing {
            Some(id) => {
                mode.backing.get_or_insert_with(|| Backing {
                    id,
                    etag: etag.into(),
                    _whole: None,
                });
                Counted::Passthrough
            }
            None => Counted::Cached,
        };
        count(mode, counted, 1);
        state.handles.insert(fh, (ino, counted));
    }

    /// Handle `fh` is released: what it counted goes, and the inode's backing
    /// ID with its last passthrough open.
    pub fn release(&self, fh: u64) {
        let mut state = self.state.lock();
        let Some((ino, counted)) = state.handles.remove(&fh) else {
            return;
        };
        self.uncount(&mut state, ino, counted);
    }

    fn uncount(&self, state: &mut State, ino: u64, counted: Counted) {
        let Some(mode) = state.inodes.get_mut(&ino) else {
            return;
        };
        count(mode, counted, -1);
        let backing = match mode.passthrough {
            0 => mode.backing.take(),
            _ => None,
        };
        if mode.cached == 0 && mode.passthrough == 0 {
            state.inodes.remove(&ino);
        }
        if let (Some(backing), Some(backings)) = (backing, self.backings.get()) {
            backings.close(backing.id);
        }
    }
}

/// Why the kernel would refuse backing files from the cache directory `dir`,
/// known before the volume is mounted (the kernel is then not asked for
/// passthrough at all, which would make the volume a stacked file system):
/// no CAP_SYS_ADMIN, or a directory on overlayfs.
pub fn cannot_pass_through(dir: &std::path::Path) -> Option<String> {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    if effective & (1 << CAP_SYS_ADMIN) == 0 {
        return Some(
            "the daemon lacks CAP_SYS_ADMIN, which the kernel asks of whoever hands it a \
             backing file"
                .into(),
        );
    }
    let stacked = nix::sys::statfs::statfs(dir)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC);
    stacked.then(|| {
        "the cache directory is on a stacked file system (overlayfs): put --cache-dir on a \
         plain one"
            .into()
    })
}

fn count(mode: &mut Mode, counted: Counted, by: isize) {
    let n = match counted {
        Counted::Cached => &mut mode.cached,
        Counted::Passthrough => &mut mode.passthrough,
    };
    *n = n.checked_add_signed(by).expect("counted once");
}

/// An open's I/O, counted in its inode's mode until the open is released.
pub struct Ticket<'a> {
    passthrough: &'a Passthrough,
    ino: u64,
    pub io: Io,
    counted: Option<Counted>,
}

impl Ticket<'_> {
    /// The open is handle `fh`: counted until it is released.
    pub fn bind(mut self, fh: u64) {
        if matches!(self.io, Io::Passthrough(_)) {
            self.passthrough.opens.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(counted) = self.counted.take() {
            self.passthrough
                .state
                .lock()
                .handles
                .insert(fh, (self.ino, counted));
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(counted) = self.counted.take() {
            let mut state = self.passthrough.state.lock();
            self.passthrough.uncount(&mut state, self.ino, counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{BlockCache, CacheConfig};
    use crate::local_dir::LocalDir;

    /// The kernel's registry, as far as the tests need: IDs handed out and
    /// let go, and optionally a refusal.
    #[derive(Default)]
    struct Kernel {
        next: Mutex<u32>,
        open: Mutex<Vec<u32>>,
        closed: Mutex<Vec<u32>>,
        refuse: Option<i32>,
    }

    impl Backings for Kernel {
        fn open(&self, _: &File) -> io::Result<u32> {
            if let Some(errno) = self.refuse {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let mut next = self.next.lock();
            *next += 1;
            self.open.lock().push(*next);
            Ok(*next)
        }

        fn close(&self, id: u32) {
            self.closed.lock().push(id);
        }
    }

    /// A cache holding the whole of `key` (one small block) on disk.
    async fn cache_with(key: &str, dir: &tempfile::TempDir) -> Arc<BlockCache> {
        let cache = Arc::new(
            BlockCache::open(CacheConfig {
                dir: LocalDir::open_or_create(dir.path()).unwrap(),
                disk_bytes: 1 << 20,
                memory_bytes: 0,
                write_backlog: 1 << 20,
            })
            .unwrap(),
        );
        cache
            .keep_whole(key, "\"e1\"", &bytes::Bytes::from_static(b"content"))
            .await;
        for _ in 0..100 {
            if cache.whole_file(key, "\"e1\"", 7).is_some() {
                return cache;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the block never reached the disk");
    }

    #[tokio::test]
    async fn one_backing_id_per_inode_shared_by_its_version_and_let_go_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_with("k", &dir).await;
        let whole = || cache.whole_file("k", "\"e1\"", 7);
        let kernel = Arc::new(Kernel::default());
        let passthrough = Passthrough::default();
        passthrough.attach(kernel.clone(), None);

        // A cached open first: no passthrough until it is released.
        let cached = passthrough.open(1, Some("\"e1\""), || None);
        assert_eq!(cached.io, Io::Cached);
        cached.bind(10);
        let second = passthrough.open(1, Some("\"e1\""), whole);
        assert_eq!(second.io, Io::Cached, "the inode has a cached open");
        second.bind(11);
        passthrough.release(10);
        passthrough.release(11);

        let first = passthrough.open(1, Some("\"e1\""), whole);
        assert_eq!(first.io, Io::Passthrough(1));
        first.bind(20);
        let again = passthrough.open(1, Some("\"e1\""), whole);
        assert_eq!(
            again.io,
            Io::Passthrough(1),
            "the same ID for the same version"
        );
        again.bind(21);
        assert_eq!(*kernel.open.lock(), [1]);
        // Neither another version nor a staged file can share it.
        assert_eq!(
            passthrough.open(1, Some("\"e2\""), || None).io,
            Io::Conflict
        );
        assert_eq!(passthrough.open(1, None, || None).io, Io::Conflict);
        assert!(passthrough.reads_other(1, "\"e2\"") && !passthrough.reads_other(1, "\"e1\""));
        // An open that never became a handle counts nothing.
        drop(passthrough.open(1, Some("\"e1\""), whole));
        assert_eq!(passthrough.status().inodes_now, 1);
        passthrough.release(20);
        assert!(kernel.closed.lock().is_empty(), "one open left");
        passthrough.release(21);
        passthrough.release(21);
        assert_eq!(*kernel.closed.lock(), [1], "let go once, with the last");
        let status = passthrough.status();
        assert_eq!((status.opens, status.inodes_now), (2, 0));
        // The next open registers the file anew.
        assert_eq!(
            passthrough.open(1, Some("\"e1\""), whole).io,
            Io::Passthrough(2)
        );
    }

    #[tokio::test]
    async fn a_refusal_turns_it_off_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_with("k", &dir).await;
        let kernel = Arc::new(Kernel {
            refuse: Some(libc::EPERM),
            ..Kernel::default()
        });
        let passthrough = Passthrough::default();
        passthrough.attach(kernel, cache.probe_file().ok());
        let off = passthrough.status().off.expect("off at the probe");
        assert!(off.contains("CAP_SYS_ADMIN"), "{off}");
        let whole = || cache.whole_file("k", "\"e1\"", 7);
        assert_eq!(passthrough.open(1, Some("\"e1\""), whole).io, Io::Cached);
    }

    #[test]
    fn a_backing_id_a_dead_worker_left_is_shared_and_let_go() {
        let kernel = Arc::new(Kernel::default());
        let passthrough = Passthrough::default();
        passthrough.attach(kernel.clone(), None);
        passthrough.adopt(7, 1, "\"e1\"", Some(42));
        passthrough.adopt(8, 2, "\"e1\"", None);
        let joined = passthrough.open(1, Some("\"e1\""), || None);
        assert_eq!(joined.io, Io::Passthrough(42));
        joined.bind(9);
        assert_eq!(
            passthrough.open(1, Some("\"e2\""), || None).io,
            Io::Conflict
        );
        // An inode with an adopted cached handle gets no passthrough.
        assert_eq!(passthrough.open(2, Some("\"e1\""), || None).io, Io::Cached);
        passthrough.release(7);
        passthrough.release(9);
        assert_eq!(*kernel.closed.lock(), [42]);
        assert!(kernel.open.lock().is_empty());
    }
}
