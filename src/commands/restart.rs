//! `s3vol restart MOUNTPOINT`: replaces a volume's worker with the installed
//! binary, without unmounting. Asked through an ioctl on the volume's root,
//! which its daemon allows root and the user who mounted it; the command
//! then waits until the new worker serves.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::fail;
use super::stats::read_report;
use crate::daemon::Failure;

/// How long a new worker may take to serve: connecting to S3 and opening
/// again the files that are open.
const WAIT: Duration = Duration::from_secs(60);

pub fn run(mountpoint: &Path) -> ExitCode {
    match restart(mountpoint) {
        Ok(pid) => {
            println!(
                "s3vol: {} is served by a new worker (process {pid})",
                mountpoint.display()
            );
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => fail(&message),
    }
}

fn worker_pid(mountpoint: &Path) -> Result<u64, Failure> {
    let report = read_report(mountpoint)?;
    report["worker_pid"].as_u64().ok_or_else(|| {
        Failure(format!(
            "the daemon of {} is older than restarts in place; unmount the volume and mount \
             it again to run the installed version",
            mountpoint.display()
        ))
    })
}

fn restart(mountpoint: &Path) -> Result<u64, Failure> {
    let shown = mountpoint.display();
    let before = worker_pid(mountpoint)?;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(mountpoint)
        .map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    crate::control::restart(&root).map_err(|e| {
        Failure(match e {
            Errno::EPERM => {
                format!("only root and the user who mounted {shown} may restart its worker")
            }
            Errno::ENOTTY => format!(
                "the daemon of {shown} is older than restarts in place; unmount the volume and \
                 mount it again to run the installed version"
            ),
            Errno::ENOTSUP => format!(
                "the worker of {shown} cannot be replaced in place: this kernel cannot send \
                 FUSE requests again (Linux 6.9 or later can); unmount the volume and mount it \
                 again to run the installed version"
            ),
            e => format!("cannot restart the worker of {shown}: {e}"),
        })
    })?;
    drop(root);
    let since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        // Between workers the report may not come; the next one answers.
        if let Ok(now) = worker_pid(mountpoint)
            && now != before
        {
            return Ok(now);
        }
        if since.elapsed() > WAIT {
            return Err(Failure(format!(
                "the worker of {shown} was asked to step aside {WAIT:?} ago and still serves: \
                 a file open for writing holds it (it waits up to 30 s), or the new worker \
                 could not start (see the volume's log)"
            )));
        }
    }
}
