//! `s3vol stats MOUNTPOINT`: ask a mounted volume's daemon for its report,
//! through an ioctl on the volume's root, and print it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use super::{cleanup_command, daemon_gone, fail, plain};
use crate::daemon::Failure;
use crate::mountinfo::mounted_at;

/// `s3vol stats MOUNTPOINT`: asks the daemon for its report through an ioctl on
/// the volume's root and prints it.
pub fn run(mountpoint: &Path, json: bool) -> ExitCode {
    match read_report(mountpoint) {
        Ok(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let shown = mountpoint.display().to_string();
            print!("{}", crate::stats::render(&shown, &report));
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => fail(&message),
    }
}

pub(super) fn read_report(mountpoint: &Path) -> Result<serde_json::Value, Failure> {
    use nix::errno::Errno;
    let shown = mountpoint.display();
    // Root reads the report without opening the root (whose opendir lists it
    // from S3): it works while the endpoint is down, when it matters most.
    if nix::unistd::geteuid().is_root()
        && crate::mountinfo::mounted_at(mountpoint).as_deref() == Some("fuse.s3vol")
        && let Ok(buf) = crate::control::report_attribute(mountpoint)
    {
        return serde_json::from_slice(&buf)
            .map_err(|e| Failure(format!("the statistics of {shown} are not valid JSON: {e}")));
    }
    let not_a_volume = || {
        Failure(format!(
            "{shown} is not where an s3vol volume is mounted; give the mountpoint itself \
             (findmnt -t fuse.s3vol lists them)"
        ))
    };
    // A mountpoint is a directory: anything else (a FIFO would hold the open)
    // is refused at once.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(mountpoint);
    let root = match opened {
        Ok(root) => root,
        Err(e) if daemon_gone(&e) => {
            return Err(Failure(format!(
                "the daemon of {shown} is gone ({}); clean up with `{}`",
                plain(&e),
                cleanup_command(mountpoint)
            )));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(not_a_volume()),
        Err(e) => return Err(Failure(format!("cannot open {shown}: {e}"))),
    };
    // Only FUSE mounts are asked: another filesystem might give the number a
    // meaning of its own.
    let path = std::fs::canonicalize(mountpoint)?;
    if !mounted_at(&path).is_some_and(|fstype| fstype.starts_with("fuse")) {
        return Err(not_a_volume());
    }
    let buf = match crate::control::report(&root) {
        Ok(buf) => buf,
        Err(Errno::ENOTTY | Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => {
            return Err(not_a_volume());
        }
        Err(e) => {
            return Err(Failure(format!(
                "cannot read the statistics of {shown}: {e}"
            )));
        }
    };
    serde_json::from_slice(&buf)
        .map_err(|e| Failure(format!("the statistics of {shown} are not valid JSON: {e}")))
}
