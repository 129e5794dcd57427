//! `s3vol mount`: check what can be checked while the user is still watching
//! (the mountpoint, the directory for local data, the log file), then serve the
//! volume in the foreground or from a daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{cleanup_command, daemon_gone, fail, plain};
use crate::config::MountConfig;
use crate::daemon::{self, Failure};
use crate::local_dir::LocalDir;
use crate::mountinfo::mounted_at;

pub fn run(mut config: MountConfig) -> ExitCode {
    if let Some(fd) = config.ready_fd
        && let Err(message) = check_ready_fd(fd)
    {
        return fail(&message);
    }
    let mountpoint = match check_mountpoint(&config.mountpoint) {
        Ok(path) => path,
        Err(Failure(message)) => return fail(&message),
    };
    // A directory for local data this mount makes, removed again (if still
    // empty) when the mount fails: a failed mount leaves nothing behind.
    let mut made = None;
    if config.read_write || !config.no_cache {
        // Checked (and made absolute) now, with the answer on the terminal; the
        // daemon runs in "/".
        let missing = |dir: &Path| std::fs::symlink_metadata(dir).is_err();
        let was_missing = config.cache_dir.as_deref().is_some_and(missing);
        match local_dir(config.cache_dir.as_deref()) {
            Ok(dir) => {
                made = was_missing.then(|| dir.clone());
                config.cache_dir = Some(dir);
            }
            Err(message) => return fail(&message),
        }
    }
    let outcome = serve(&mut config, &mountpoint);
    if outcome != ExitCode::SUCCESS
        && let Some(dir) = made
    {
        let _ = std::fs::remove_dir(dir);
    }
    outcome
}

/// Opens the log files and serves the volume at `mountpoint`, in the
/// foreground or from a daemon.
fn serve(config: &mut MountConfig, mountpoint: &Path) -> ExitCode {
    for (file, what, option) in [
        (&mut config.log_file, "log file", "--log-file"),
        (&mut config.audit_log, "audit log", "--audit-log"),
    ] {
        let Some(path) = file.as_mut() else { continue };
        if let Ok(absolute) = std::path::absolute(&*path) {
            *path = absolute;
        }
        if let Err(e) = crate::logging::open_log_file(path) {
            return fail(&format!(
                "cannot open {what} {}: {e}; choose a writable {option}",
                path.display()
            ));
        }
    }
    if config.foreground {
        daemon::run_in_foreground(config, mountpoint)
    } else {
        daemon::daemonize(config, mountpoint)
    }
}

/// `--ready-fd` must name a pipe this process inherited: any other descriptor
/// would be taken over (and closed) as if it were one.
fn check_ready_fd(fd: std::os::fd::RawFd) -> Result<(), String> {
    use nix::sys::stat::{SFlag, fstat};
    let refused = || {
        format!(
            "--ready-fd {fd} is not an open pipe above standard error; it is for \
             supervisors that pass one"
        )
    };
    // SAFETY: F_GETFD only asks whether the number is an open descriptor.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(refused());
    }
    // SAFETY: the descriptor is open (above) and only borrowed to be examined.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mode = fstat(borrowed).map_err(|_| refused())?.st_mode;
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFIFO => Ok(()),
        _ => Err(refused()),
    }
}

/// Checks the mountpoint before anything else, so the common mistakes get plain
/// answers.
fn check_mountpoint(path: &Path) -> Result<PathBuf, Failure> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            return Err(Failure(format!(
                "mountpoint {shown} is not a directory; give an empty directory"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure(format!(
                "mountpoint {shown} does not exist; create it first (mkdir -p {shown})"
            )));
        }
        Err(e) if daemon_gone(&e) => {
            return Err(Failure(format!(
                "mountpoint {shown} is a FUSE mount whose daemon is gone ({}); clean it up \
                 with `{}` and mount again",
                plain(&e),
                cleanup_command(path)
            )));
        }
        Err(e) => return Err(Failure(format!("cannot use mountpoint {shown}: {e}"))),
    }
    let path = std::fs::canonicalize(path)?;
    if let Some(fstype) = mounted_at(&path) {
        return Err(Failure(format!(
            "{} is already a mount point ({fstype}); unmount it first (umount {}) or choose \
             another directory",
            path.display(),
            path.display()
        )));
    }
    Ok(path)
}

/// The directory for local data (cached blocks, staged writes): the one given, or
/// /var/cache/s3vol, or ~/.cache/s3vol for users who cannot use that; created mode
/// 0700, made absolute, and checked to be the running user's alone (see
/// [`LocalDir`]).
pub(super) fn local_dir(cache_dir: Option<&Path>) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match cache_dir {
        Some(dir) => vec![std::path::absolute(dir).map_err(|e| e.to_string())?],
        None => {
            let mut dirs = vec![PathBuf::from("/var/cache/s3vol")];
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(Path::new(&home).join(".cache/s3vol"));
            }
            dirs
        }
    };
    let given = cache_dir.is_some();
    let mut last_error = String::new();
    for dir in candidates {
        let usable = LocalDir::open_or_create(&dir).and_then(|local| {
            local
                .unnamed_file()
                .map(drop)
                .map_err(|e| format!("cannot write in {}: {e}", dir.display()))
        });
        match usable {
            Ok(()) => return Ok(dir),
            // The one asked for: its own words, which say what to change.
            Err(why) if given => return Err(format!("--cache-dir {why}")),
            Err(why) => last_error = why,
        }
    }
    Err(format!(
        "no usable directory for the block cache and staged writes ({last_error}); \
         choose one with --cache-dir"
    ))
}
