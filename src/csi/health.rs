//! How the node's volumes are: each daemon is asked for its report through the
//! volume's own root (its `trusted.s3vol.report` attribute), off the runtime
//! and for a bounded time. NodeGetVolumeStats turns the answer into a volume
//! condition, and the driver's metrics endpoint (`service::DriverMetrics`)
//! serves every report, labelled with its volume.
//!
//! A volume is abnormal when its daemon is gone, when its mount does not
//! answer within [`PROBE_TIMEOUT`], when its credentials cannot be renewed, or
//! when its endpoint has failed every request for longer than its
//! `--io-timeout` ([`crate::stats::trouble`]).

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

/// A volume published at a target.
#[derive(Clone, Debug)]
pub struct Published {
    pub volume_id: String,
    pub target: PathBuf,
    /// Whether its daemon has exited; `None` for one this driver did not start.
    exited: Option<watch::Receiver<bool>>,
}

impl Published {
    pub fn new(volume_id: &str, target: &Path, exited: Option<watch::Receiver<bool>>) -> Self {
        Self {
            volume_id: volume_id.to_string(),
            target: target.to_path_buf(),
            exited,
        }
    }

    /// Whether the daemon this driver started for the volume has exited.
    pub fn daemon_exited(&self) -> bool {
        self.exited.as_ref().is_some_and(|exited| *exited.borrow())
    }
}

/// How long a volume has to answer before it is reported as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What asking a volume came to.
#[derive(Clone, Debug)]
pub enum Probe {
    /// Its report.
    Answered(Value),
    /// The mount is there, its daemon is not ("Transport endpoint is not
    /// connected"), or nothing is mounted any more.
    Gone(String),
    /// No answer within [`PROBE_TIMEOUT`] of the question.
    Silent,
    /// An answer that is not a report.
    Failed(String),
}

/// Asks volumes how they are, one question per volume at a time: callers
/// that ask while a question is out share its answer, and a daemon that hangs
/// holds one blocked thread, not one per caller.
#[derive(Default)]
pub struct Prober {
    asking: Arc<Mutex<HashMap<PathBuf, Question>>>,
}

/// Forgets the question about a target when dropped.
struct Over(Arc<Mutex<HashMap<PathBuf, Question>>>, PathBuf);

impl Drop for Over {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// A question out to a volume: when it was asked, and its answer to come.
struct Question {
    asked: Instant,
    answer: Shared<BoxFuture<'static, Probe>>,
}

impl Prober {
    /// Asks the volume mounted at `target` for its report, or shares the
    /// answer to the question already out; `Silent` once the question is
    /// [`PROBE_TIMEOUT`] old.
    pub async fn probe(&self, target: &Path) -> Probe {
        let (asked, answer) = {
            let mut asking = self.asking.lock();
            let question = asking.entry(target.to_path_buf()).or_insert_with(|| {
                let (asking, path) = (self.asking.clone(), target.to_path_buf());
                let blocking = tokio::task::spawn_blocking(move || {
                    // The question is over however `ask` ends (a panic too):
                    // the next caller asks again.
                    let _over = Over(asking, path.clone());
                    ask(&path)
                });
                let answer = async move {
                    blocking
                        .await
                        .unwrap_or_else(|e| Probe::Failed(format!("the question failed: {e}")))
                };
                Question {
                    asked: Instant::now(),
                    answer: answer.boxed().shared(),
                }
            });
            (question.asked, question.answer.clone())
        };
        let left = PROBE_TIMEOUT.saturating_sub(asked.elapsed());
        tokio::time::timeout(left, answer)
            .await
            .unwrap_or(Probe::Silent)
    }

    /// The volume's condition: `None` when it is normal, else what is wrong
    /// and what to do; and its report when it answered.
    pub async fn condition(&self, volume: &Published) -> (Option<String>, Option<Value>) {
        if volume.daemon_exited() {
            return (Some(gone("its daemon has exited")), None);
        }
        match self.probe(&volume.target).await {
            Probe::Answered(report) => (crate::stats::trouble(&report), Some(report)),
            Probe::Gone(why) => (Some(gone(&why)), None),
            Probe::Failed(why) => (
                Some(format!(
                    "the volume's daemon answers but gave no report ({why}); see the driver's log"
                )),
                None,
            ),
            Probe::Silent => (
                Some(format!(
                    "the volume did not answer within {} s: its daemon is stuck or overloaded \
                     (see the driver's log); applications using it wait too",
                    PROBE_TIMEOUT.as_secs()
                )),
                None,
            ),
        }
    }
}

fn gone(why: &str) -> String {
    format!(
        "the volume's daemon is gone ({why}); kubelet's next republish mounts the volume \
         again, and applications that had files open must open them again"
    )
}

/// Whether `root` is on the device mountinfo shows mounted at `target`.
fn is_device(root: &std::fs::File, target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = root.metadata() else {
        return false;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    crate::mountinfo::device(target) == Some(format!("{major}:{minor}"))
}

/// Asks the volume at `target` for its report (blocking): through the root's
/// attribute, which needs no S3 request; a daemon of a version that does not
/// serve it is asked through an open of the root (which lists it).
fn ask(target: &Path) -> Probe {
    match crate::mountinfo::mounted_at(target) {
        Some(fstype) if fstype == "fuse.s3vol" => {}
        Some(fstype) => return Probe::Gone(format!("a {fstype} filesystem is mounted there")),
        None => return Probe::Gone("nothing is mounted at the target".into()),
    }
    let answer = match crate::control::report_attribute(target) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
                .open(target)
                .and_then(|root| {
                    // Unmounted (or mounted over) since mountinfo was read:
                    // only the volume's own root is asked s3vol's questions.
                    if !is_device(&root, target) {
                        return Err(std::io::Error::from_raw_os_error(libc::ENOTCONN));
                    }
                    crate::control::report(&root).map_err(std::io::Error::from)
                })
        }
        answer => answer,
    };
    match answer {
        Ok(answer) => match serde_json::from_slice(&answer) {
            Ok(report) => Probe::Answered(report),
            Err(e) => Probe::Failed(format!("its report is not JSON: {e}")),
        },
        // ECONNABORTED while the kernel ends the connection of a daemon that
        // has just died, ENOTCONN after.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            Probe::Gone("the transport endpoint is not connected".into())
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}
