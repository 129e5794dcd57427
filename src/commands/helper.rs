//! `mount.s3vol`: what mount(8) runs for `mount -t s3vol` and fstab lines.
//!
//! mount(8) runs helpers with PATH and HOME removed from the environment. The
//! helper reads its command line ([`crate::cli::helper`]), enters the mount
//! namespace `-N` names, restores what the AWS configuration and fusermount3
//! need from the environment, and runs `s3vol mount`, which returns only once the
//! volume serves (exit 0) or with the reason on standard error (exit 1), so
//! `mount -a`, `nofail` and systemd see real failures.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::helper::{USAGE, mount_args, parse_args};

/// The search path given to a helper whose environment has none, so fusermount3
/// (needed by non-root mounts) is found.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs as `mount.s3vol` with `args` (argv[0] included).
pub fn run(args: Vec<OsString>) -> ExitCode {
    let request = match parse_args(&args[1..]) {
        Ok(Some(request)) => request,
        Ok(None) => {
            println!("{USAGE}\nOptions are those of `s3vol mount --help`, as -o name=value.");
            return ExitCode::SUCCESS;
        }
        Err(message) => return fail(&message),
    };
    let (mount, warnings) = match mount_args(&request) {
        Ok(parsed) => parsed,
        Err(message) => return fail(&message),
    };
    for warning in warnings {
        eprintln!("mount.s3vol: {warning}");
    }
    if request.verbose {
        eprintln!(
            "mount.s3vol: mounting {} at {} {}{}",
            mount.source,
            request.mountpoint.display(),
            if mount.read_write {
                "read-write"
            } else {
                "read-only"
            },
            if request.fake {
                " (-f: not really)"
            } else {
                ""
            }
        );
    }
    if request.fake {
        return ExitCode::SUCCESS;
    }
    if let Some(namespace) = &request.namespace
        && let Err(message) = enter_namespace(namespace)
    {
        return fail(&message);
    }
    complete_environment();
    // Files the options name (--external-id-file) are read in the namespace
    // entered above, as the mount itself happens there.
    match mount.into_config() {
        Ok(config) => super::mount::run(config),
        Err(message) => super::fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("mount.s3vol: {message}");
    ExitCode::FAILURE
}

/// Moves into the mount namespace `-N` names: a PID or a namespace file (mount(8)
/// passes /proc/PID/fd/N).
fn enter_namespace(namespace: &str) -> Result<(), String> {
    let path = match namespace.parse::<u32>() {
        Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/mnt")),
        Err(_) => PathBuf::from(namespace),
    };
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot open namespace {}: {e}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot enter mount namespace {}: {e}", path.display()))
}

/// mount(8) runs helpers without PATH and HOME. Without HOME, the AWS shared
/// configuration (~/.aws) of the user mounting is not found; without PATH, a
/// non-root mount cannot find fusermount3.
fn complete_environment() {
    if std::env::var_os("PATH").is_none() {
        // SAFETY: the helper has started no thread yet (the runtime is built
        // later), so nothing reads the environment concurrently.
        unsafe { std::env::set_var("PATH", DEFAULT_PATH) };
    }
    if std::env::var_os("HOME").is_none()
        && let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid())
    {
        // SAFETY: as above, single-threaded.
        unsafe { std::env::set_var("HOME", user.dir) };
    }
}
