//! How the node's volumes are: each daemon is asked for its report through the
//! volume's own root (the ioctl `s3vol stats` uses), off the runtime and for a
//! bounded time. NodeGetVolumeStats turns the answer into a volume condition,
//! and the driver's metrics endpoint serves every report, labelled with its
//! volume.
//!
//! A volume is abnormal when its daemon is gone, when its mount does not
//! answer within [`PROBE_TIMEOUT`], when its credentials cannot be renewed, or
//! when its endpoint has failed every request for longer than its
//! `--io-timeout` ([`crate::stats::trouble`]).

use std::collections::HashSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::Value;

use super::volumes::{Published, Volumes};
use crate::metrics::{Exposition, Scrape};

/// How long a volume has to answer before it is reported as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What asking a volume came to.
#[derive(Debug)]
pub enum Probe {
    /// Its report.
    Answered(Value),
    /// The mount is there, its daemon is not ("Transport endpoint is not
    /// connected"), or nothing is mounted any more.
    Gone(String),
    /// No answer within [`PROBE_TIMEOUT`] (or a question asked before is still
    /// unanswered).
    Silent,
    /// An answer that is not a report.
    Failed(String),
}

/// Asks volumes how they are, one question per volume at a time: a daemon that
/// hangs holds one blocked thread, not one per scrape.
#[derive(Default)]
pub struct Prober {
    asking: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Prober {
    /// Asks the volume mounted at `target` for its report.
    pub async fn probe(&self, target: &Path) -> Probe {
        if !self.asking.lock().insert(target.to_path_buf()) {
            return Probe::Silent;
        }
        let asking = self.asking.clone();
        let path = target.to_path_buf();
        let question = tokio::task::spawn_blocking(move || {
            let answer = ask(&path);
            asking.lock().remove(&path);
            answer
        });
        match tokio::time::timeout(PROBE_TIMEOUT, question).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Probe::Failed(format!("the question failed: {e}")),
            Err(_) => Probe::Silent,
        }
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
                .and_then(|root| crate::control::report(&root).map_err(std::io::Error::from))
        }
        answer => answer,
    };
    match answer {
        Ok(answer) => match serde_json::from_slice(&answer) {
            Ok(report) => Probe::Answered(report),
            Err(e) => Probe::Failed(format!("its report is not JSON: {e}")),
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            Probe::Gone("the transport endpoint is not connected".into())
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// The driver's metrics endpoint: every published volume's report, each
/// series labelled with the volume and its target, and whether each answers.
pub struct DriverMetrics {
    pub volumes: Arc<Volumes>,
    pub prober: Arc<Prober>,
}

impl Scrape for DriverMetrics {
    fn scrape(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let published = self.volumes.published();
            let conditions = published.iter().map(|volume| self.prober.condition(volume));
            let conditions = futures::future::join_all(conditions).await;
            let mut text = Exposition::default();
            text.gauge(
                "s3vol_csi_volumes",
                "Volumes this node plugin has published.",
                Vec::new(),
                published.len() as f64,
            );
            for (volume, (trouble, report)) in published.iter().zip(conditions) {
                let labels = vec![
                    ("volume", volume.volume_id.clone()),
                    ("target", volume.target.display().to_string()),
                ];
                text.gauge(
                    "s3vol_volume_up",
                    "Whether the volume's daemon answered the scrape (1) or not (0).",
                    labels.clone(),
                    if report.is_some() { 1.0 } else { 0.0 },
                );
                text.gauge(
                    "s3vol_volume_abnormal",
                    "Whether NodeGetVolumeStats reports the volume abnormal (1) or not (0).",
                    labels.clone(),
                    if trouble.is_some() { 1.0 } else { 0.0 },
                );
                if let Some(report) = report {
                    text.add_report(&labels, &report);
                }
            }
            text.render()
        })
    }
}
