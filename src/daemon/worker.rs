//! A worker: this program started by a volume's supervisor
//! (`super::supervisor`) to serve the volume. It reads its configuration
//! from the descriptor the supervisor hands it, mounts (the first worker) or
//! takes the FUSE connection over (the next ones), and serves until the
//! volume ends, it is asked to step aside, or it dies.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::signal::{SigHandler, Signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::link::{self, FromWorker, ToWorker};
use super::supervisor::{
    CONFIG_FD, CONTROL_FD, FUSE_FD, JOURNAL_FD, OWN_BINARY_FD, READY_FD, WORKER_ENV,
};
use crate::config::MountConfig;
use crate::logging::{self, LogTarget};

/// What a worker is handed.
pub(super) struct Handed {
    pub link: Arc<OwnedFd>,
    pub journal: OwnedFd,
    /// The connection to take over; `None` for the first worker, which mounts.
    pub fuse: Option<OwnedFd>,
    /// The mount's `MAJOR:MINOR`, as the supervisor learnt it at the mount.
    pub device: Option<String>,
}

/// Runs as a worker if this process was started as one; `None` otherwise.
pub fn run_if_worker() -> Option<ExitCode> {
    let role = std::env::var(WORKER_ENV).ok()?;
    // SAFETY: no thread exists yet; nothing reads the environment meanwhile.
    unsafe { std::env::remove_var(WORKER_ENV) };
    Some(run(&role))
}

/// A descriptor the supervisor passed at `number`, if it did; close-on-exec
/// from now on, so that nothing this worker runs inherits it.
fn handed(number: RawFd) -> Option<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: only changes the flags of the number, if it is open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(number) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    // SAFETY: the supervisor put this descriptor at this number for this
    // process alone, and nothing else here refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(number) })
}

fn run(role: &str) -> ExitCode {
    // Stops come from the supervisor (signals are handled once the runtime
    // runs); a SIGUSR2 meant for the supervisor (`systemctl kill -s USR2`
    // reaches every process of the unit) must not kill the worker.
    for signal in [
        Signal::SIGUSR2,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        // SAFETY: setting a disposition to SIG_IGN runs no code of ours.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
    }
    // The binary this worker was started from, if it came through a
    // descriptor: not needed once running.
    drop(handed(OWN_BINARY_FD));
    let (Some(config_fd), Some(link), Some(journal)) =
        (handed(CONFIG_FD), handed(CONTROL_FD), handed(JOURNAL_FD))
    else {
        eprintln!("s3vol: this process was started as a volume's worker without what one needs");
        return ExitCode::FAILURE;
    };
    let mut text = Vec::new();
    let mut file = File::from(config_fd);
    // The offset is shared with the supervisor's descriptor and every worker's.
    let config = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut text))
        .map_err(|e| e.to_string())
        .and_then(|_| parse_config(&text));
    let mut config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("s3vol: the worker cannot read its configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The supervisor's pipe to whoever waits for the mount: the first
    // worker's, at its own number.
    config.ready_fd = None;
    let Some(mountpoint) = std::env::args_os().nth(2).map(PathBuf::from) else {
        eprintln!("s3vol: the worker was given no mountpoint");
        return ExitCode::FAILURE;
    };
    let target = match (&config.log_file, config.foreground) {
        (Some(path), _) => LogTarget::File(path),
        (None, true) => LogTarget::Stderr,
        (None, false) => LogTarget::Syslog,
    };
    let _ = logging::init(&config.log_level, target);
    let (role, device) = match role.split_once(' ') {
        Some((role, device)) => (role, Some(device.to_string())),
        None => (role, None),
    };
    let fuse = if role == "takeover" {
        match handed(FUSE_FD) {
            Some(fd) => Some(fd),
            None => {
                error!("a takeover worker was given no FUSE connection");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let ready = if fuse.is_none() {
        handed(READY_FD)
    } else {
        None
    };
    let handed = Handed {
        link: Arc::new(link),
        journal,
        fuse,
        device,
    };
    match super::serve_and_report(&config, &mountpoint, ready, Some(handed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            error!("{}", failure.message);
            if config.foreground && config.log_file.is_some() {
                eprintln!("s3vol: {}", failure.message);
            }
            ExitCode::FAILURE
        }
    }
}

/// The configuration the supervisor wrote. A failure says where, not what:
/// the text holds secrets, and serde's message can quote the value it could
/// not take.
fn parse_config(text: &[u8]) -> Result<MountConfig, String> {
    serde_json::from_slice::<MountConfig>(text).map_err(|e| {
        format!(
            "{:?} error at line {} column {} (a build that writes another format?)",
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

/// What the supervisor asks of a running worker.
pub(super) struct Requests {
    pub stop: mpsc::UnboundedReceiver<Option<ToWorker>>,
}

/// Listens to the supervisor on a thread of its own: stops and retirements
/// arrive on the channel; `None` once the supervisor is gone.
pub(super) fn listen(link: Arc<OwnedFd>) -> Requests {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("s3vol-link".into())
        .spawn(move || {
            loop {
                match link::wait_for_supervisor(&link) {
                    Ok(Some(request)) => {
                        if tx.send(Some(request)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        warn!("the volume's supervisor is gone: stopping the volume");
                        let _ = tx.send(None);
                        return;
                    }
                }
            }
        })
        .expect("a thread can be started");
    Requests { stop: rx }
}

/// Tells the supervisor, logging a failure.
pub(super) fn tell(link: &OwnedFd, message: FromWorker, fd: Option<&OwnedFd>) {
    if let Err(e) = link::tell_supervisor(link, message, fd) {
        warn!("cannot tell the volume's supervisor {message:?}: {e}");
    } else {
        info!(?message, "told the supervisor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_that_does_not_read_is_not_quoted() {
        // A value of the wrong type where serde would name what it found.
        let text = br#"{"source": "the-external-id-secret"}"#;
        let refused = parse_config(text).err().unwrap();
        assert!(!refused.contains("the-external-id-secret"), "{refused}");
        assert!(refused.contains("line 1"), "{refused}");
        // What serde itself says quotes it: the reason for the above.
        let quoted = serde_json::from_slice::<MountConfig>(text).err().unwrap();
        assert!(
            quoted.to_string().contains("the-external-id-secret"),
            "{quoted}"
        );
    }
}
