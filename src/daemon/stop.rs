//! How a volume stops: on SIGTERM or SIGINT it unmounts, gives the files still
//! open a grace to be closed (and uploaded), then abandons them and ends the
//! connection; SIGHUP is only logged. Whatever ends the session, the mount's
//! statistics are logged and its block cache removed, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use super::link::ToWorker;
use super::supervisor::RETIRED;
use super::worker::Requests;
use crate::cache::BlockCache;
use crate::fs::Fs;
use crate::fuse::session::VolumeHandle;
use crate::stats::MountStats;

/// How long a stop signal waits for files still open on the volume before their
/// uploads are aborted. Shorter than the grace that container runtimes give
/// before SIGKILL (10 s for Docker and Kubernetes' default is 30 s), so the
/// aborts happen and no parts are left behind.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// SIGTERM or SIGINT (systemd, a container runtime, Ctrl-C): unmount. With no
/// file open, that is all, and the session ends. Otherwise the volume is
/// detached, so nothing new can be opened while the open files are served and
/// their closes upload them; whatever is still open after [`STOP_GRACE`] (or at
/// a second signal) is abandoned, its upload aborted, and the connection ended.
/// A volume that someone else detached already gets the same grace; unmount and
/// detach act only on this volume's own mount, never on a newer one at its path.
pub(super) async fn stop_on_signal(
    mut signals: StopSignals,
    volume: VolumeHandle,
    finish: Arc<Finish>,
) {
    if signals.wait().await == Asked::Retire {
        // A stop while stepping aside wins: the volume ends as asked.
        tokio::select! {
            never = retire(&finish) => match never {},
            () = async { while signals.wait().await != Asked::Stop {} } => {}
        }
    }
    info!("signal received; unmounting");
    finish.begin_ending();
    match volume.unmount() {
        // The session ends, and with it the daemon.
        Ok(()) => return,
        Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
            warn!(
                grace = ?STOP_GRACE,
                "files are open on the volume: detaching it and waiting for them to be \
                 closed (a second signal stops at once)"
            );
            if let Err(e) = volume.detach() {
                error!("cannot detach the volume: {e}");
            }
        }
        // Detached already (someone's `umount -l`), or not unmountable: the files
        // still open keep the session alive, so they get the same grace.
        Err(e) => warn!(
            grace = ?STOP_GRACE,
            "cannot unmount ({e}); waiting for the files still open to be closed \
             (a second signal stops at once)"
        ),
    }
    tokio::select! {
        _ = tokio::time::sleep(STOP_GRACE) => {}
        _ = async { while signals.wait().await != Asked::Stop {} } => {}
    }
    warn!("stopping with files still open; the applications using them get ENOTCONN");
    finish.abandon_open_files().await;
    if let Err(e) = volume.abort() {
        // Exiting ends the connection just the same.
        warn!("cannot end the FUSE connection ({e}); exiting");
        finish.run();
        std::process::exit(match finish.failure() {
            Some(_) => 1,
            None => 0,
        });
    }
}

/// SIGTERM and SIGINT, caught from registration on; and SIGHUP, which is only
/// logged. SIGHUP's default would kill the daemon without unmounting: a closed
/// terminal or a log rotation's `kill -HUP` must not take the volume down.
///
/// A supervised worker takes its stops from the supervisor instead (which
/// systemd, a container runtime or Ctrl-C signal too: a signal to both must
/// stop the volume once, not twice), and its retirements; the signals count
/// again once the supervisor is gone.
pub(super) struct StopSignals {
    signals: Option<[Signal; 3]>,
    supervisor: Option<Requests>,
}

/// What was asked of the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asked {
    Stop,
    /// Step aside for a new worker (from the supervisor only).
    Retire,
}

impl StopSignals {
    /// Must run inside the tokio runtime.
    pub(super) fn register(supervisor: Option<Requests>) -> Self {
        let signals = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => None,
        };
        Self {
            signals,
            supervisor,
        }
    }

    async fn wait(&mut self) -> Asked {
        let Some([term, int, hup]) = &mut self.signals else {
            return std::future::pending().await;
        };
        loop {
            let supervised = self.supervisor.is_some();
            let supervisor = &mut self.supervisor;
            let from_supervisor = async {
                match supervisor {
                    Some(requests) => requests.stop.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                asked = from_supervisor => match asked {
                    Some(Some(ToWorker::Stop)) => return Asked::Stop,
                    Some(Some(ToWorker::Retire)) => return Asked::Retire,
                    // The supervisor is gone (killed: by the CSI driver's
                    // last resort, say): nothing would replace this worker,
                    // so the volume stops as at SIGTERM.
                    Some(None) | None => {
                        self.supervisor = None;
                        return Asked::Stop;
                    }
                },
                _ = term.recv() => if !supervised { return Asked::Stop } else { ignored("SIGTERM") },
                _ = int.recv() => if !supervised { return Asked::Stop } else { ignored("SIGINT") },
                _ = hup.recv() => {
                    info!("SIGHUP ignored; stop the volume with umount or SIGTERM");
                }
            }
        }
    }
}

fn ignored(signal: &str) {
    info!(
        "{signal} to the worker ignored: stop the volume with umount, or with SIGTERM to its \
         supervisor (the worker's parent)"
    );
}

/// How long a retiring worker's last copies of changes of modes, owners and
/// times may take.
const LAST_COPIES_WITHIN: Duration = Duration::from_secs(5);

/// How long a retiring worker waits for the files open for writing to be
/// closed, and for the changes of modes, owners and times whose copies failed
/// to be copied, before it steps aside anyway (the files' writes then fail
/// with EIO; the changes are lost).
const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// Steps aside for a new worker: once no file is open for writing or being
/// uploaded (or after [`RETIRE_WAIT`]) and what is in flight had a moment to
/// finish, exits with [`RETIRED`]. The kernel sends what is left unanswered
/// to the next worker. If the volume's end began meanwhile (its session
/// over), that end goes on instead, and this never returns.
async fn retire(finish: &Finish) -> ! {
    info!("asked to step aside for a new worker");
    let since = tokio::time::Instant::now();
    while !finish.fs.ready_to_retire().await {
        if since.elapsed() > RETIRE_WAIT {
            warn!(
                "stepping aside with files still open for writing or being uploaded, or with \
                 changes of modes, owners or times not yet copied: such a file's next write \
                 or close fails with EIO and its upload is aborted; such a change is lost \
                 (each is named below)"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What came meanwhile, before the last requests this worker answers.
    for key in finish.fs.copy_changes_now(LAST_COPIES_WITHIN).await {
        warn!(
            key,
            "the change of mode, owner or time is not in S3: not copied before this worker \
             made way for the next, or never to be (the log above says why)"
        );
    }
    finish.exit_unless_ending(RETIRED, || {
        finish.fs.close_audit_log();
        info!("stepped aside");
    });
    info!("not stepping aside: the volume is ending");
    std::future::pending().await
}

/// How long the files still open when a stop gives up on them may take to be
/// abandoned (an upload under way finishing, the aborts of the others): with
/// [`STOP_GRACE`] and the abort of the connection, a stop fits in the 10 s that
/// Docker gives before SIGKILL.
const ABANDON_WITHIN: Duration = Duration::from_secs(3);

/// The end of a mount: what became of the files still being written, its
/// statistics in the log, and the block cache's directory removed.
pub(super) struct Finish {
    mountpoint: PathBuf,
    fs: Arc<Fs>,
    stats: Arc<MountStats>,
    cache: Option<Arc<BlockCache>>,
    /// The keys whose changes were not uploaded.
    lost: Mutex<Vec<String>>,
    /// The volume's end began (a stop was asked for, or the session
    /// ended): the worker no longer steps aside, nor exits for a new one.
    ending: Mutex<bool>,
    done: std::sync::Once,
}

impl Finish {
    pub(super) fn new(
        mountpoint: &Path,
        fs: Arc<Fs>,
        stats: Arc<MountStats>,
        cache: Option<Arc<BlockCache>>,
    ) -> Self {
        Self {
            mountpoint: mountpoint.to_path_buf(),
            fs,
            stats,
            cache,
            lost: Mutex::new(Vec::new()),
            ending: Mutex::new(false),
            done: std::sync::Once::new(),
        }
    }

    /// The volume's end begins.
    pub(super) fn begin_ending(&self) {
        *self.ending.lock() = true;
    }

    /// Runs `last` and exits with `code`, unless the volume's end began
    /// (then returns): checked and done under one lock, so that the end
    /// cannot begin in between.
    pub(super) fn exit_unless_ending(&self, code: i32, last: impl FnOnce()) {
        let ending = self.ending.lock();
        if !*ending {
            last();
            std::process::exit(code);
        }
    }

    /// Stops uploading and abandons the files still being written.
    pub(super) async fn abandon_open_files(&self) {
        self.begin_ending();
        self.record(self.fs.stop(ABANDON_WITHIN).await);
    }

    /// The files the worker before this one had open for writing when it
    /// died: their changes are lost (their writers were told, with EIO).
    pub(super) fn lost_with_worker(&self, keys: Vec<String>) {
        self.record(keys);
    }

    /// Uploads what closed files left to upload, then stops.
    pub(super) async fn finish_closed_files(&self) {
        self.begin_ending();
        self.record(self.fs.finish(ABANDON_WITHIN).await);
    }

    /// Logs and keeps the keys in `lost` not known yet (a stop gives the
    /// same keys to each of its callers).
    fn record(&self, lost: Vec<String>) {
        let mut recorded = self.lost.lock();
        let new: Vec<String> = lost
            .into_iter()
            .filter(|key| !recorded.contains(key))
            .collect();
        if !new.is_empty() {
            error!(
                keys = ?new,
                "changes to these files were never uploaded: their uploads were aborted, and \
                 S3 keeps the previous versions"
            );
            recorded.extend(new);
        }
    }

    /// Why the mount did not end well: the files whose changes were lost.
    pub(super) fn failure(&self) -> Option<String> {
        let lost = self.lost.lock();
        (!lost.is_empty()).then(|| {
            format!(
                "the changes to {} file(s) were not in S3 when the volume stopped (S3 \
                 keeps their previous versions and metadata): {}",
                lost.len(),
                lost.join(", ")
            )
        })
    }

    /// The last words: the audit log written out, the statistics logged and
    /// the cache removed, once.
    pub(super) fn run(&self) {
        self.done.call_once(|| {
            self.fs.close_audit_log();
            info!(
                mountpoint = %self.mountpoint.display(),
                stats = %self.stats.report(),
                "unmounted"
            );
            if let Some(cache) = &self.cache {
                cache.close();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn finish() -> Finish {
        let fs = Fs::new(
            Arc::new(MemoryStore::new("bkt")),
            "",
            crate::fs::FsConfig::default(),
        );
        let stats = MountStats {
            source: "bkt".into(),
            read_write: false,
            started: std::time::SystemTime::now(),
            requests: Arc::default(),
            cache: None,
            memory: None,
            credentials: None,
            audit: None,
            callers: Default::default(),
            errors: Default::default(),
            io_timeout: Duration::from_secs(30),
            passthrough: Default::default(),
            heads_without_the_sdk: None,
        };
        Finish::new(Path::new("/mnt"), Arc::new(fs), Arc::new(stats), None)
    }

    /// A worker asked to step aside while the volume ends (its session over,
    /// the main thread uploading and aborting) finishes the end instead: an
    /// exit for a new worker there would cut the end short, and the
    /// supervisor would start a worker on a connection that is gone.
    #[tokio::test]
    async fn a_worker_whose_volume_is_ending_does_not_step_aside() {
        let finish = finish();
        assert!(finish.fs.ready_to_retire().await);
        finish.begin_ending();
        // A worker stepping aside here would exit the test's process with
        // RETIRED.
        let retired = tokio::time::timeout(Duration::from_secs(3), retire(&finish)).await;
        assert!(retired.is_err());
    }

    #[test]
    fn each_lost_key_is_recorded_once() {
        let finish = finish();
        assert_eq!(finish.failure(), None);
        finish.lost_with_worker(vec!["a".into()]);
        // A stop's keys reach each of its callers.
        finish.record(vec!["a".into(), "b".into()]);
        finish.record(vec!["b".into()]);
        let failure = finish.failure().unwrap();
        assert!(failure.contains("2 file(s)"), "{failure}");
        assert!(failure.ends_with(": a, b"), "{failure}");
    }
}
