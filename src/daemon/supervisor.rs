//! The supervisor: the small process that holds a volume's FUSE connection
//! and sends no request to S3, and runs the worker that serves it.
//!
//! The kernel keeps a FUSE connection for as long as any process holds its
//! descriptor. The first worker mounts and hands the supervisor the
//! descriptor; when a worker dies (a crash, SIGKILL, the OOM killer) the
//! supervisor asks the kernel to send again the requests it had read and not
//! answered (FUSE_NOTIFY_RESEND, Linux 6.9), and starts a new worker on the
//! same connection within a second. The mount never goes away; applications
//! see their requests answered a little later. A worker is also replaced on
//! request (`s3vol restart`, SIGUSR2): the installed binary is started, the
//! old worker having first finished what it had in flight.
//!
//! The worker is this program, started again with the configuration in an
//! anonymous in-memory file (secrets included, never on a command line), the
//! volume's journal (`crate::journal`), and a socket pair to the supervisor
//! (`super::link`), all at fixed descriptor numbers.
//!
//! A worker that dies again and again soon after it starts, or a kernel
//! that cannot resend, ends the volume as an unsupervised crash did before:
//! the mount is detached and its connection ended, with the reason logged.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{error, info, warn};

use super::link::{self, FromWorker, ToWorker};
use crate::config::MountConfig;
use crate::fuse::session::{self, VolumeHandle};
use crate::journal;
use crate::startup::StartError;

/// The environment variable that tells the program it is a worker: `first`
/// (mount) or `takeover` (serve the connection at [`FUSE_FD`]).
pub const WORKER_ENV: &str = "S3VOL_WORKER";

/// Where a worker finds what its supervisor hands it.
pub const CONFIG_FD: RawFd = 3;
pub const CONTROL_FD: RawFd = 4;
pub const JOURNAL_FD: RawFd = 5;
pub const FUSE_FD: RawFd = 6;
pub const READY_FD: RawFd = 7;
/// The running build's own binary, for a worker started from it.
pub const OWN_BINARY_FD: RawFd = 8;

/// The exit status of a worker that stepped aside for a new one.
pub const RETIRED: i32 = 75;

/// The exit status of a worker whose FUSE session failed while the
/// connection lived on (EX_SOFTWARE): a crash, as far as the supervisor goes.
pub const SESSION_FAILED: i32 = 70;

/// A crash loop: this many workers dead within [`CRASH_WINDOW`] end the volume.
const CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// A worker taking the volume over that does not serve within this long is
/// killed, and counts as a death: the volume's applications wait meanwhile
/// (an endpoint or STS that does not answer, say).
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(60);

/// A worker that dies this soon after it started is started again only after
/// [`BACKOFF`], so that a loop does not spin.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_millis(250);

/// Runs the volume's workers until the volume ends. `ready` goes to the first
/// worker, which mounts.
/// The exit code is the last worker's, or 1 where the supervisor ended the
/// volume (logged).
pub(super) fn supervise(
    config: &MountConfig,
    mountpoint: &Path,
    ready: Option<OwnedFd>,
) -> Result<ExitCode, StartError> {
    let mut supervisor = Supervisor::new(config, mountpoint)?;
    supervisor.start_worker(ready)?;
    supervisor.run()
}

struct Worker {
    child: Child,
    started: Instant,
    link: OwnedFd,
    /// It said it serves the volume.
    serving: bool,
    /// It was asked to step aside.
    retiring: bool,
    /// It runs the binary installed at the volume's path (not this build).
    installed: bool,
    /// It missed the takeover deadline and was killed.
    killed: bool,
}

struct Supervisor {
    program: PathBuf,
    /// This build's binary, open: what a worker runs when the installed one
    /// could not take the volume over (an upgrade that cannot read this
    /// volume's configuration, say).
    own_binary: File,
    /// The next worker runs `own_binary`.
    fall_back: bool,
    /// Workers of the installed binary that died before serving, in a row.
    installed_failures: u32,
    mountpoint: PathBuf,
    config: OwnedFd,
    journal: OwnedFd,
    signals: SignalFd,
    /// The volume's FUSE connection, once the first worker mounted it.
    fuse: Option<OwnedFd>,
    volume: Option<VolumeHandle>,
    worker: Option<Worker>,
    crashes: VecDeque<Instant>,
    /// A stop was asked for: the worker is unmounting.
    stopping: bool,
}

impl Supervisor {
    fn new(config: &MountConfig, mountpoint: &Path) -> Result<Self, StartError> {
        // The path, not /proc/self/exe: after a package upgrade the path
        // names the new binary, which is what a restart is for.
        let program = std::env::current_exe().map_err(|e| StartError::other(e.to_string()))?;
        let program = PathBuf::from(
            program
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
        );
        let text = serde_json::to_vec(config).map_err(|e| StartError::other(e.to_string()))?;
        let memfd = sealed_file(&text)
            .map_err(|e| StartError::other(format!("cannot keep the configuration: {e}")))?;
        let journal = journal::create()
            .map_err(|e| StartError::other(format!("cannot make the volume's journal: {e}")))?;
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
        ] {
            mask.add(signal);
        }
        mask.thread_block()
            .map_err(|e| StartError::other(e.to_string()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| StartError::other(e.to_string()))?;
        info!(
            supervisor = std::process::id(),
            heals = session::kernel_resends(),
            "supervising the volume's worker"
        );
        if !session::kernel_resends() {
            warn!(
                "this kernel cannot send a FUSE request again (FUSE_NOTIFY_RESEND, Linux 6.9): \
                 if the worker dies, the volume ends and its applications get ENOTCONN"
            );
        }
        let own_binary = File::open("/proc/self/exe").map_err(|e| {
            StartError::other(format!("cannot open this program's own binary: {e}"))
        })?;
        Ok(Self {
            program,
            own_binary,
            fall_back: false,
            installed_failures: 0,
            mountpoint: mountpoint.to_path_buf(),
            config: memfd,
            journal,
            signals,
            fuse: None,
            volume: None,
            worker: None,
            crashes: VecDeque::new(),
            stopping: false,
        })
    }

    /// Starts a worker: the first (which mounts, and tells `ready`) or one
    /// that takes the connection over.
    fn start_worker(&mut self, ready: Option<OwnedFd>) -> Result<(), StartError> {
        let (ours, theirs) = link::pair().map_err(|e| StartError::other(e.to_string()))?;
        let mut passed: Vec<(&OwnedFd, RawFd)> = vec![
            (&self.config, CONFIG_FD),
            (&theirs, CONTROL_FD),
            (&self.journal, JOURNAL_FD),
        ];
        if let Some(fuse) = &self.fuse {
            passed.push((fuse, FUSE_FD));
        }
        if let Some(ready) = &ready {
            passed.push((ready, READY_FD));
        }
        let own: OwnedFd = self
            .own_binary
            .try_clone()
            .map_err(|e| StartError::other(e.to_string()))?
            .into();
        let mut command = if self.fall_back {
            passed.push((&own, OWN_BINARY_FD));
            Command::new(format!("/proc/self/fd/{OWN_BINARY_FD}"))
        } else {
            Command::new(&self.program)
        };
        command
            .arg0("s3vol")
            .arg("worker")
            .arg(&self.mountpoint)
            .env(
                WORKER_ENV,
                match (&self.fuse, self.volume.as_ref().and_then(|v| v.device())) {
                    (Some(_), Some(device)) => format!("takeover {device}"),
                    (Some(_), None) => "takeover".to_string(),
                    (None, _) => "first".to_string(),
                },
            )
            .current_dir("/");
        let child = spawn_with(&mut command, &passed)
            .map_err(|e| StartError::other(format!("cannot start the volume's worker: {e}")))?;
        info!(
            worker = child.id(),
            program = %if self.fall_back { "this build".into() } else { self.program.display().to_string() },
            "worker started"
        );
        self.worker = Some(Worker {
            child,
            started: Instant::now(),
            link: ours,
            serving: false,
            retiring: false,
            installed: !self.fall_back,
            killed: false,
        });
        Ok(())
    }

    fn run(&mut self) -> Result<ExitCode, StartError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            let (signal_ready, link_ready) = {
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                if let Some(worker) = &self.worker {
                    fds.push(PollFd::new(worker.link.as_fd(), PollFlags::POLLIN));
                }
                let timeout = match self.takeover_left() {
                    // Whole milliseconds, rounded up; the deadline is a minute.
                    Some(left) => PollTimeout::from(left.as_millis().min(60_000) as u16 + 1),
                    None => PollTimeout::NONE,
                };
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Ok(self.give_up(&format!("poll: {e}"))),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), fds.get(1).is_some_and(ready))
            };
            if self.takeover_left() == Some(Duration::ZERO)
                && let Some(worker) = &mut self.worker
            {
                warn!(
                    worker = worker.child.id(),
                    "the new worker did not take the volume over within {TAKEOVER_DEADLINE:?}; \
                     killing it"
                );
                let _ = worker.child.kill();
                worker.killed = true;
            }
            if link_ready {
                self.hear_worker();
            }
            if signal_ready {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if let Some(done) = self.on_signal(info.ssi_signo as i32)? {
                        return Ok(done);
                    }
                }
            }
        }
    }

    /// How long a worker taking the volume over has left to serve it.
    fn takeover_left(&self) -> Option<Duration> {
        let worker = self.worker.as_ref()?;
        (self.fuse.is_some() && !worker.serving && !worker.killed)
            .then(|| TAKEOVER_DEADLINE.saturating_sub(worker.started.elapsed()))
    }

    /// Reads what the worker said.
    fn hear_worker(&mut self) {
        let Some(worker) = &mut self.worker else {
            return;
        };
        // An end of the stream (the worker gone) is seen with SIGCHLD.
        while let Ok(Some((message, fd))) = link::receive(&worker.link) {
            match message {
                // Once: the connection is the first worker's to hand over.
                FromWorker::Mounted if self.fuse.is_some() => {
                    warn!("a worker said again that it mounted; ignored");
                }
                FromWorker::Mounted => {
                    if let Some(fd) = fd {
                        self.volume = Some(VolumeHandle::new(
                            &self.mountpoint,
                            crate::mountinfo::device(&self.mountpoint),
                        ));
                        self.fuse = Some(fd);
                    }
                    worker.serving = true;
                    // From here on it mostly waits.
                    super::process::release_program_pages();
                }
                FromWorker::Serving => {
                    worker.serving = true;
                    super::process::release_program_pages();
                }
                FromWorker::Restart => {
                    info!("restart asked for through the volume");
                    if let Some(worker) = &mut self.worker {
                        retire(worker, &mut self.fall_back);
                    }
                    return;
                }
            }
        }
    }

    /// What a signal means; `Some` when the volume has ended.
    fn on_signal(&mut self, signo: i32) -> Result<Option<ExitCode>, StartError> {
        match Signal::try_from(signo) {
            Ok(Signal::SIGCHLD) => self.reap(),
            Ok(Signal::SIGTERM | Signal::SIGINT) => {
                self.stopping = true;
                match &self.worker {
                    Some(worker) => {
                        let _ = link::send(&worker.link, ToWorker::Stop);
                    }
                    None => return Ok(Some(self.give_up("stopped by a signal"))),
                }
                Ok(None)
            }
            Ok(Signal::SIGUSR2) if !session::kernel_resends() => {
                warn!(
                    "SIGUSR2 ignored: this kernel cannot send FUSE requests again (Linux 6.9), \
                     so the worker cannot be replaced without ending the volume; unmount and \
                     mount again instead"
                );
                Ok(None)
            }
            Ok(Signal::SIGUSR2) => {
                info!("SIGUSR2: replacing the worker with the installed binary");
                if let Some(worker) = &mut self.worker {
                    retire(worker, &mut self.fall_back);
                }
                Ok(None)
            }
            _ => {
                info!("SIGHUP ignored; stop the volume with umount or SIGTERM");
                Ok(None)
            }
        }
    }

    /// Waits for the worker if it has ended, and decides what comes next.
    fn reap(&mut self) -> Result<Option<ExitCode>, StartError> {
        let Some(worker) = &mut self.worker else {
            return Ok(None);
        };
        let status = match worker.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(StartError::other(format!(
                    "cannot wait for the worker: {e}"
                )));
            }
        };
        let worker = self.worker.take().expect("checked above");
        // Whatever it said last, before its end of the link closed.
        let lived = worker.started.elapsed();
        let ended_volume =
            matches!(status.code(), Some(0 | 1)) && (worker.serving || self.fuse.is_none());
        if ended_volume || self.fuse.is_none() {
            // The volume ended (unmounted, or never mounted): so does the
            // supervisor, as the worker did.
            return Ok(Some(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }));
        }
        // Stepped aside when asked: no crash. Unasked, it is one.
        let retired = status.code() == Some(RETIRED) && worker.retiring;
        if !retired {
            warn!(worker = worker.child.id(), status = %describe(status), lived = ?lived, "the volume's worker died");
            let now = Instant::now();
            self.crashes.push_back(now);
            while self
                .crashes
                .front()
                .is_some_and(|at| now.duration_since(*at) > CRASH_WINDOW)
            {
                self.crashes.pop_front();
            }
            if self.crashes.len() >= CRASHES {
                return Ok(Some(self.give_up(&format!(
                    "{CRASHES} workers died within {CRASH_WINDOW:?}, the last {}",
                    describe(status)
                ))));
            }
        }
        if self.stopping {
            return Ok(Some(
                self.give_up("the worker died while the volume was stopping"),
            ));
        }
        let fuse = self.fuse.as_ref().expect("mounted");
        if let Err(e) = session::resend(fuse) {
            return Ok(Some(self.give_up(&format!(
                "the kernel cannot send the dead worker's requests again ({e}; Linux 6.9 or \
                 later can)"
            ))));
        }
        if worker.serving {
            self.installed_failures = 0;
        } else if !retired && worker.installed {
            // Twice in a row: once may be the endpoint's doing, not the binary's.
            self.installed_failures += 1;
            if self.installed_failures >= 2 {
                warn!(
                    program = %self.program.display(),
                    "the installed binary could not take the volume over; the next worker runs \
                     the build the volume was mounted with"
                );
                self.fall_back = true;
            }
        }
        if !retired && lived < QUICK_DEATH {
            std::thread::sleep(BACKOFF);
        }
        if let Err(e) = self.start_worker(None) {
            return Ok(Some(self.give_up(&e.message)));
        }
        Ok(None)
    }

    /// Ends the volume: detached, its connection ended, the reason logged.
    fn give_up(&mut self, why: &str) -> ExitCode {
        error!("ending the volume: {why}");
        if let Some(volume) = &self.volume {
            let _ = volume.detach();
            let _ = volume.abort();
        }
        self.fuse = None;
        ExitCode::FAILURE
    }
}

/// An anonymous in-memory file holding `text`, readable by this user alone
/// and sealed: no worker can change what the next one reads.
fn sealed_file(text: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let memfd = memfd_create(
        c"s3vol-config",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    nix::sys::stat::fchmod(&memfd, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    File::from(memfd.try_clone()?).write_all(text)?;
    fcntl(
        &memfd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )?;
    Ok(memfd)
}

/// Asks `worker` to step aside once what it has in flight is done.
fn retire(worker: &mut Worker, fall_back: &mut bool) {
    // A restart is for the installed binary.
    *fall_back = false;
    if !worker.retiring {
        worker.retiring = true;
        let _ = link::send(&worker.link, ToWorker::Retire);
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}

/// Spawns `command` with each of `passed` at its number, and nothing else
/// inherited; signals unblocked (the supervisor blocks them for its
/// signalfd, and a mask survives exec).
fn spawn_with(command: &mut Command, passed: &[(&OwnedFd, RawFd)]) -> std::io::Result<Child> {
    // Each first copied above the numbers it will take, so that moving one
    // into place never overwrites another.
    let mut high = Vec::new();
    for (fd, number) in passed {
        let copy = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: fcntl just returned this new descriptor, owned by no one else.
        high.push((unsafe { OwnedFd::from_raw_fd(copy) }, *number));
    }
    let raw: Vec<(RawFd, RawFd)> = high.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)).collect();
    // SAFETY: between fork and exec the child calls only dup2 and
    // sigprocmask, which are async-signal-safe; the copies it moves stay open
    // in this process until spawn returns. dup2 leaves the new descriptor
    // without close-on-exec.
    unsafe {
        command.pre_exec(move || {
            // Nothing else of the supervisor's crosses the exec (what it
            // inherited included): every descriptor from 3 on is marked
            // close-on-exec, and dup2 clears the mark on those passed. (Closing
            // them now would close std's own pipe that reports a failed exec.)
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for (fd, number) in &raw {
                if libc::dup2(*fd, *number) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A SIGUSR2 meant for the supervisor (`systemctl kill -s USR2`
            // reaches the whole unit) must not kill the worker before it
            // sets its own dispositions; an ignored signal stays ignored
            // across exec.
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(high);
    child
}
