//! A mounted volume's life: detach from the terminal with a readiness handshake,
//! connect, mount, serve until unmounted or signalled, exit cleanly.
//!
//! Daemonizing forks before any thread exists (tokio's runtime is built in the child).
//! The parent waits on a pipe: the child writes `ready` once the kernel has accepted
//! the mount, or the reason it could not mount, and the parent exits 0 or prints the
//! reason and exits 1. So `s3vol mount` returns only when the volume is usable, and a
//! script (or mount(8), or systemd) sees every failure.
//!
//! `volume` assembles what serves the volume (the store stack, the block cache,
//! the filesystem); `stop` says how it ends; `process` tunes the process.

mod link;
mod process;
mod stop;
pub mod supervisor;
mod volume;
pub mod worker;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use nix::unistd::{ForkResult, fork, setsid};
use tracing::{error, info, warn};

use crate::config::MountConfig;
use crate::fuse::session;
use crate::journal::Journal;
use crate::logging::{self, LogTarget};
use crate::startup::StartError;

/// What the child tells the parent when the mount is serving.
const READY: &[u8] = b"ready\n";

/// A failure of a command to report to the user; the command exits 1 with this
/// message. (A volume that cannot start says why with a
/// [`StartError`], whose kind the CSI driver reads.)
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// Serves `config`'s volume at `mountpoint` (checked, absolute) in this process,
/// logging to standard error or the log file, until it is unmounted.
pub fn run_in_foreground(config: &MountConfig, mountpoint: &Path) -> ExitCode {
    let target = match &config.log_file {
        Some(path) => LogTarget::File(path),
        None => LogTarget::Stderr,
    };
    if let Err(e) = logging::init(&config.log_level, target) {
        eprintln!("s3vol: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    let ready = config.ready_fd.map(|fd| {
        // SAFETY: the mount command checked that `fd` is an open pipe this
        // process inherited, and nothing else in it owns that descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Only the first worker gets it, at a number of its own.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        fd
    });
    match supervisor::supervise(config, mountpoint, ready) {
        Ok(code) => code,
        Err(StartError { message, .. }) => {
            if config.log_file.is_some() {
                error!("{message}");
            }
            eprintln!("s3vol: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the volume, telling the waiting side of `ready` (if any) that it is
/// mounted, or why it could not be (a [`StartError::report`]).
fn serve_and_report(
    config: &MountConfig,
    mountpoint: &Path,
    ready: Option<OwnedFd>,
    handed: Option<worker::Handed>,
) -> Result<(), StartError> {
    let mut pipe = ready;
    let result = serve(config, mountpoint, &mut pipe, handed);
    if let (Err(failure), Some(fd)) = (&result, pipe.take()) {
        let _ = File::from(fd).write_all(failure.report().as_bytes());
    }
    result
}

/// Serves `config`'s volume at `mountpoint` from a detached child process, and
/// returns once it is mounted (exit 0) or could not be (exit 1, the reason on
/// standard error).
pub fn daemonize(config: &MountConfig, mountpoint: &Path) -> ExitCode {
    // Close-on-exec: only the first worker gets the write end, at a number
    // of its own; no other child may hold it (the parent waits for its end).
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("s3vol: cannot create a pipe to the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: no other thread exists yet (the runtime is built after the fork), so
    // the child may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("s3vol: cannot fork the daemon: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(write_end);
            let mut answer = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut answer);
            if answer == READY {
                ExitCode::SUCCESS
            } else if answer.is_empty() {
                let log = match &config.log_file {
                    Some(path) => path.display().to_string(),
                    None => "syslog: journalctl -t s3vol".to_string(),
                };
                eprintln!(
                    "s3vol: the daemon exited before the volume was mounted; see its log \
                     ({log}) or run with --foreground for why"
                );
                ExitCode::FAILURE
            } else {
                let failure = StartError::from_report(&String::from_utf8_lossy(&answer));
                eprintln!("s3vol: {}", failure.message);
                ExitCode::FAILURE
            }
        }
        Ok(ForkResult::Child) => {
            drop(read_end);
            let _ = setsid();
            let _ = std::env::set_current_dir("/");
            let target = match &config.log_file {
                Some(path) => LogTarget::File(path),
                None => LogTarget::Syslog,
            };
            let _ = logging::init(&config.log_level, target);
            process::detach_stdio();
            match supervisor::supervise(config, mountpoint, Some(write_end)) {
                Ok(code) => code,
                Err(StartError { message, .. }) => {
                    error!("{message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Connects, checks access, mounts and serves until unmounted. `ready` is the pipe
/// to the waiting parent, taken and answered once the mount serves.
fn serve(
    config: &MountConfig,
    mountpoint: &Path,
    ready: &mut Option<OwnedFd>,
    handed: Option<worker::Handed>,
) -> Result<(), StartError> {
    process::tune_allocator();
    process::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-io")
        .build()?;
    let (journal, carried) = match &handed {
        Some(handed) => {
            let fd = handed
                .journal
                .try_clone()
                .map_err(|e| StartError::other(e.to_string()))?;
            let (journal, carried) = Journal::open(fd)
                .map_err(|e| StartError::other(format!("cannot read the volume's journal: {e}")))?;
            (Some(Arc::new(journal)), Some(carried))
        }
        None => (None, None),
    };
    let taking_over = handed.as_ref().is_some_and(|h| h.fuse.is_some());
    let volume = runtime.block_on(volume::Volume::assemble(
        config,
        runtime.handle(),
        journal.clone(),
        !taking_over,
    ))?;
    // Bound before the mount shows: an address this host cannot listen on
    // fails the start (a port another process holds is waited for).
    let metrics = match config.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).map_err(StartError::other)?),
        None => None,
    };

    // Registered before the kernel shows the mount: a SIGTERM or SIGINT sent the
    // moment it appears must unmount, not kill the process.
    let stop_signals = {
        let _runtime = runtime.enter();
        let requests = handed.as_ref().map(|h| worker::listen(h.link.clone()));
        stop::StopSignals::register(requests)
    };
    let (link, fuse, handed_device) = match handed {
        Some(handed) => (Some(handed.link), handed.fuse, handed.device),
        None => (None, None, None),
    };
    let mut lost_with_worker = Vec::new();
    let mounted = match fuse {
        Some(fuse) => {
            if let Some(carried) = carried {
                lost_with_worker = runtime.block_on(volume.fs.adopt(carried)).lost_keys;
            }
            let device = handed_device.clone();
            let mounted =
                session::take_over(volume.adapter, fuse, mountpoint, &volume.plan, device)
                    .map_err(|e| StartError::other(format!("cannot take the volume over: {e}")))?;
            volume.fs.distrust_kernel_attributes();
            mounted
        }
        None => mount(volume.adapter, mountpoint, &volume.plan)?,
    };
    if let Some(link) = &link {
        if taking_over {
            worker::tell(link, link::FromWorker::Serving, None);
        } else {
            let connection =
                session::connection(&mounted).map_err(|e| StartError::other(e.to_string()))?;
            worker::tell(link, link::FromWorker::Mounted, Some(&connection));
        }
        let link = link.clone();
        let journal = journal.clone();
        volume.fs.on_restart(Arc::new(move || {
            // Without a resend, the requests in flight when this worker
            // steps aside would wait forever; without the whole journal, no
            // worker could take over: either way the volume would end.
            let kept = journal.as_ref().is_none_or(|j| j.kept());
            if !session::kernel_resends() || !kept {
                return Err(std::io::ErrorKind::Unsupported.into());
            }
            link::tell_supervisor(&link, link::FromWorker::Restart, None)
        }));
    }
    let finish = Arc::new(stop::Finish::new(
        mountpoint,
        volume.fs.clone(),
        volume.stats.clone(),
        volume.cache.clone(),
    ));
    finish.lost_with_worker(lost_with_worker);
    runtime.spawn(volume.fs.clone().apply_metadata_as_due());
    runtime.spawn(process::trim_when_idle(volume.stats.requests.clone()));
    if let Some(listener) = metrics {
        runtime.spawn(crate::metrics::serve(listener, volume.stats.clone()));
    }
    runtime.spawn(stop::stop_on_signal(
        stop_signals,
        mounted.handle(),
        finish.clone(),
    ));

    info!(
        source = %config.source,
        mountpoint = %mountpoint.display(),
        mode = if config.read_write { "read-write" } else { "read-only" },
        pid = std::process::id(),
        "mounted"
    );
    if !volume.stats.callers.host_pid_namespace {
        warn!(
            "this daemon runs in a PID namespace of its own (not the host's first): a process \
             outside it (another container's or pod's) that uses the volume shows as PID 0, so \
             its close cannot be told from a forked child's exit or a duplicate descriptor's \
             close, and every close after a write uploads the file. Run s3vol where it sees the \
             processes that use the volume (on Kubernetes, the node plugin with hostPID: true); \
             s3vol stats counts the closes it could not see"
        );
    }
    if let Some(fd) = ready.take() {
        let _ = File::from(fd).write_all(READY);
    }
    let result = match mounted.run() {
        // Unmounted: every file was closed, and what the closes left to upload
        // is uploaded now if the kernel dropped their last releases.
        Ok(()) => {
            runtime.block_on(finish.finish_closed_files());
            Ok(())
        }
        // The connection was ended through fusectl: by the stop signal's grace
        // running out, or by an administrator. Either way the volume is gone,
        // and the files still open with it.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("the FUSE connection was aborted");
            runtime.block_on(finish.abandon_open_files());
            Ok(())
        }
        // A supervised worker whose session failed while the connection
        // lives: the supervisor starts another on it; unless a stop began,
        // when none would come to abort what this one leaves, and this one
        // ends the volume.
        Err(e) if link.is_some() => {
            finish.exit_unless_ending(supervisor::SESSION_FAILED, || {
                error!("FUSE session ended with an error: {e}; the supervisor starts a new worker")
            });
            runtime.block_on(finish.abandon_open_files());
            Err(e)
        }
        Err(e) => {
            runtime.block_on(finish.abandon_open_files());
            Err(e)
        }
    };
    finish.run();
    runtime.shutdown_background();
    result.map_err(|e| StartError::other(format!("FUSE session ended with an error: {e}")))?;
    // Exit non-zero when writes were lost, so systemd and scripts see it.
    match finish.failure() {
        Some(why) => Err(StartError::other(why)),
        None => Ok(()),
    }
}

/// Mounts the volume, saying what to do where the kernel refuses.
fn mount(
    adapter: crate::fuse::FuseAdapter,
    mountpoint: &Path,
    plan: &session::MountPlan,
) -> Result<session::Volume, StartError> {
    session::mount(adapter, mountpoint, plan).map_err(|e| {
        // fusermount3's own complaints say what to do; the kernel's errnos do not.
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ". Is /dev/fuse available (in a container: --device /dev/fuse --cap-add \
                 SYS_ADMIN) and, for users other than root, fusermount3 installed (package \
                 fuse3)?"
            }
            _ => "",
        };
        StartError::other(format!(
            "cannot mount at {}: {e}{hint}",
            mountpoint.display()
        ))
    })
}
