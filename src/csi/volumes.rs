//! The volumes this node serves: one supervised `s3vol mount --foreground`
//! daemon per published target, started with the volume's credentials and
//! stopped the way a stop signal stops any volume.
//!
//! The external ID and static keys never reach a command line, an environment
//! or a file: they are written to anonymous in-memory files (memfd, mode 0600)
//! that the daemon inherits as descriptors and reads as `/dev/fd/N`. A pod's
//! service-account token, which changes at every republish, is kept in a file
//! of the state directory (root's alone), which the daemon re-reads at each
//! renewal.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::watch;
use tonic::Status;
use tracing::{info, warn};

use super::budget::{Budget, NodeBudget, Share};
use super::health::Published;
use super::request::{Credentials, Publish, Role};
use super::tokens::Tokens;
use crate::auth::Secret;
use crate::local_dir::LocalDir;
use crate::startup::{Kind, StartError};
use crate::stats::bytes;

/// How the driver runs its volumes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The s3vol binary that serves each volume (this one).
    pub program: PathBuf,
    /// Root's directory for what a volume keeps while published (its token).
    pub state_dir: PathBuf,
    /// Passed to every volume as --cache-dir.
    pub cache_dir: Option<PathBuf>,
    /// How long a publish waits for the volume to be mounted.
    pub mount_timeout: Duration,
    /// How long an unpublish waits for the daemon to stop (it gives open files
    /// a grace of 5 s, then aborts their uploads).
    pub stop_timeout: Duration,
}

/// A daemon serving a published target.
struct Daemon {
    volume_id: String,
    fingerprint: String,
    pid: nix::unistd::Pid,
    /// True once the daemon has exited.
    exited: watch::Receiver<bool>,
}

impl Daemon {
    fn running(&self) -> bool {
        !*self.exited.borrow()
    }
}

/// What is mounted at a target path.
enum AtTarget {
    Nothing,
    /// An s3vol volume that answers.
    Live,
    /// An s3vol volume whose daemon is gone ("Transport endpoint is not
    /// connected").
    Dead,
    Other(String),
}

pub struct Volumes {
    settings: Settings,
    tokens: Tokens,
    budget: Budget,
    /// One slot per target path: publishes and unpublishes of a target run one
    /// at a time, those of different targets side by side.
    targets: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<Daemon>>>>>,
    /// What is published where, for the volumes' health and metrics.
    published: Mutex<HashMap<PathBuf, Published>>,
}

impl Volumes {
    /// The volumes of a driver run with `settings`; the state directory is
    /// opened (and created) now.
    pub fn new(settings: Settings, budget: NodeBudget) -> Result<Self, String> {
        let tokens = LocalDir::open_or_create(&settings.state_dir)
            .map(Tokens)
            .map_err(|e| format!("--state-dir: {e}"))?;
        Ok(Self {
            budget: Budget::new(budget),
            settings,
            tokens,
            targets: Mutex::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
        })
    }

    /// The volumes published now.
    pub fn published(&self) -> Vec<Published> {
        self.published.lock().values().cloned().collect()
    }

    /// The volume published at `target`, if one is.
    pub fn published_at(&self, target: &Path) -> Option<Published> {
        self.published.lock().get(target).cloned()
    }

    fn record(&self, publish: &Publish, daemon: Option<&Daemon>) {
        let published = Published::new(
            &publish.volume_id,
            &publish.target,
            daemon.map(|d| d.exited.clone()),
        );
        self.published
            .lock()
            .insert(publish.target.clone(), published);
    }

    fn slot(&self, target: &Path) -> Arc<tokio::sync::Mutex<Option<Daemon>>> {
        self.targets
            .lock()
            .entry(target.to_path_buf())
            .or_default()
            .clone()
    }

    /// Mounts `publish` at its target, or finds it mounted already.
    pub async fn publish(&self, publish: Publish) -> Result<(), Status> {
        let slot = self.slot(&publish.target);
        let mut daemon = slot.lock().await;
        let target = &publish.target;
        match at_target(target).await {
            AtTarget::Live => match daemon.as_ref().filter(|d| d.running()) {
                Some(d) if d.fingerprint == publish.fingerprint() => {
                    // A republish: kubelet's periodic one brings a fresh token.
                    if let Credentials::Pod { token, .. } = &publish.credentials {
                        self.tokens.keep(target, token)?;
                    }
                    return Ok(());
                }
                Some(d) => {
                    return Err(Status::already_exists(format!(
                        "target_path {} already has volume {} published with other options; \
                         unpublish it first",
                        target.display(),
                        d.volume_id
                    )));
                }
                None => {
                    // Mounted by a driver that ran before this one, whose daemon
                    // reads the token from the same file.
                    warn!(
                        target = %target.display(),
                        "an s3vol volume this driver did not start is mounted here; taken as \
                         the one published"
                    );
                    if let Credentials::Pod { token, .. } = &publish.credentials
                        && self.tokens.has(target)
                    {
                        self.tokens.keep(target, token)?;
                    }
                    self.budget.adopt(target, self.share(&publish));
                    self.record(&publish, None);
                    return Ok(());
                }
            },
            AtTarget::Dead => {
                warn!(target = %target.display(), "the volume's daemon is gone; mounting it again");
                detach(target)?;
            }
            AtTarget::Other(fstype) => {
                return Err(Status::failed_precondition(format!(
                    "target_path {} has a {fstype} filesystem mounted on it",
                    target.display()
                )));
            }
            AtTarget::Nothing => {}
        }
        if let Some(old) = daemon.take() {
            stop(&old, self.settings.stop_timeout).await;
        }
        let share = self.share(&publish);
        if let Err(refused) = self.budget.reserve(target, share) {
            // Nothing runs at the target any more (a dead daemon's share goes).
            self.budget.release(target);
            return Err(refused);
        }
        let started = self.start_at(&publish, share).await;
        if started.is_err() {
            self.budget.release(target);
            self.tokens.forget(target);
        }
        let started = started?;
        self.record(&publish, Some(&started));
        *daemon = Some(started);
        Ok(())
    }

    /// What `publish` takes of the node's budget.
    fn share(&self, publish: &Publish) -> Share {
        // The sizes were checked with the mount's own parser before.
        let size = |name: &str, parse: fn(&str) -> Result<u64, String>| {
            publish
                .option(name)
                .and_then(|value| value.as_deref())
                .and_then(|text| parse(text).ok())
        };
        Share::of(
            self.budget.limits(),
            size("cache-size", crate::values::parse_cache_size),
            size("staging-size", crate::values::parse_staging_size),
            publish.option("no-cache").is_some(),
            publish.read_write,
        )
    }

    /// Makes the target and starts its daemon with `share`.
    async fn start_at(&self, publish: &Publish, share: Share) -> Result<Daemon, Status> {
        let target = &publish.target;
        match std::fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && target.is_dir() => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot create target_path {}: {e}",
                    target.display()
                )));
            }
        }
        self.start(publish, share).await
    }

    /// Unmounts the target and removes it; a target with nothing mounted is
    /// only removed.
    pub async fn unpublish(&self, target: &Path) -> Result<(), Status> {
        let slot = self.slot(target);
        let mut daemon = slot.lock().await;
        if let Some(running) = daemon.take() {
            stop(&running, self.settings.stop_timeout).await;
        }
        self.tokens.forget(target);
        self.budget.release(target);
        self.published.lock().remove(target);
        match at_target(target).await {
            AtTarget::Nothing => {}
            AtTarget::Live => {
                // Not one of this driver's daemons: unmount it; with files still
                // open, detach it, and its daemon ends once they are closed.
                if nix::mount::umount(target).is_err() {
                    detach(target)?;
                }
            }
            AtTarget::Dead => detach(target)?,
            AtTarget::Other(fstype) => {
                return Err(Status::failed_precondition(format!(
                    "target_path {} has a {fstype} filesystem mounted on it, not an s3vol volume",
                    target.display()
                )));
            }
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot remove target_path {}: {e}",
                    target.display()
                )));
            }
        }
        drop(daemon);
        // Forgotten unless another call for the target holds it (it took the
        // slot from the map, under the map's lock, so this count is exact).
        let mut targets = self.targets.lock();
        if Arc::strong_count(&slot) == 2 {
            targets.remove(target);
        }
        Ok(())
    }

    /// Stops every volume (the driver is stopping).
    pub async fn stop_all(&self) {
        let slots: Vec<_> = self.targets.lock().values().cloned().collect();
        let stops = slots.into_iter().map(|slot| async move {
            if let Some(daemon) = slot.lock().await.take() {
                stop(&daemon, self.settings.stop_timeout).await;
            }
        });
        futures::future::join_all(stops).await;
    }

    /// Starts the daemon for `publish` and waits until its volume is mounted.
    async fn start(&self, publish: &Publish, share: Share) -> Result<Daemon, Status> {
        let mut launch = Launch::new(&self.settings, &self.tokens, publish, share)?;
        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Status::internal(format!("cannot create a pipe: {e}")))?;
        launch.pass(ready_write, "--ready-fd");
        let mut child = launch.spawn()?;
        drop(launch);
        // A child not yet waited for has its ID.
        let pid = nix::unistd::Pid::from_raw(child.id().expect("a running child") as i32);
        let volume = publish.volume_id.clone();
        if let Some(stderr) = child.stderr.take() {
            let volume = volume.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // The daemon's words may quote what a bucket holds (names
                    // of keys): shown, never obeyed by a terminal.
                    info!(volume = %volume, "{}", without_controls(&line));
                }
            });
        }
        let (exited_tx, exited) = watch::channel(false);
        {
            let volume = volume.clone();
            let target = publish.target.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                info!(volume = %volume, target = %target.display(), ?status, "volume daemon exited");
                let _ = exited_tx.send(true);
            });
        }
        let daemon = Daemon {
            volume_id: volume,
            fingerprint: publish.fingerprint(),
            pid,
            exited,
        };
        let answer = async {
            let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_read)?;
            let mut answer = Vec::new();
            pipe.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = match tokio::time::timeout(self.settings.mount_timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                stop(&daemon, self.settings.stop_timeout).await;
                return Err(Status::internal(format!(
                    "cannot hear from the volume: {e}"
                )));
            }
            Err(_) => {
                stop(&daemon, self.settings.stop_timeout).await;
                return Err(Status::deadline_exceeded(format!(
                    "the volume was not mounted within {:?}",
                    self.settings.mount_timeout
                )));
            }
        };
        if answer == b"ready\n" {
            let (held, volumes) = self.budget.in_use();
            info!(volume = %daemon.volume_id, target = %publish.target.display(), pid = %pid,
                  read_write = publish.read_write, cache = %bytes(share.cache),
                  staging = %bytes(share.staging), node_volumes = volumes,
                  node_cache = %bytes(held.cache), node_staging = %bytes(held.staging),
                  "published");
            return Ok(daemon);
        }
        if answer.is_empty() {
            return Err(Status::internal(
                "the volume's daemon exited before the volume was mounted; see the driver's log",
            ));
        }
        Err(failure_status(StartError::from_report(
            &String::from_utf8_lossy(&answer),
        )))
    }
}

/// `line` with each control character written as its escape (`\u{1b}`).
pub(super) fn without_controls(line: &str) -> String {
    line.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The gRPC answer to a mount's failure, by its kind: a refusal of the
/// credentials is PermissionDenied, a missing bucket or prefix NotFound, an
/// unreachable endpoint Unavailable; the message is the one `s3vol mount`
/// prints (the daemon's words, which may quote what an endpoint answered,
/// without their control characters).
pub(super) fn failure_status(failure: StartError) -> Status {
    let message = without_controls(failure.message.trim());
    match failure.kind {
        Kind::Denied => Status::permission_denied(message),
        Kind::NotFound => Status::not_found(message),
        Kind::Unreachable => Status::unavailable(message),
        Kind::Other => Status::internal(message),
    }
}

/// What the target holds. A stat of a live FUSE mount asks its daemon, so it
/// runs off the runtime and is given up on after a while (a hung daemon is
/// treated as dead).
async fn at_target(target: &Path) -> AtTarget {
    match crate::mountinfo::mounted_at(target) {
        None => return AtTarget::Nothing,
        Some(fstype) if fstype != "fuse.s3vol" => return AtTarget::Other(fstype),
        Some(_) => {}
    }
    let path = target.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(path));
    match tokio::time::timeout(Duration::from_secs(10), stat).await {
        Ok(Ok(Ok(_))) => AtTarget::Live,
        _ => AtTarget::Dead,
    }
}

/// Detaches whatever is mounted at `target` (a dead daemon's mount, or one with
/// files open).
fn detach(target: &Path) -> Result<(), Status> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Status::internal(format!("cannot unmount {}: {e}", target.display())))
}

/// Stops a daemon as a stop signal does (unmount; files still open get a grace,
/// then their uploads are aborted), and kills it if it has not exited within
/// `limit`.
async fn stop(daemon: &Daemon, limit: Duration) {
    use nix::sys::signal::{Signal, kill};
    if !daemon.running() {
        return;
    }
    let _ = kill(daemon.pid, Signal::SIGTERM);
    let mut exited = daemon.exited.clone();
    if tokio::time::timeout(limit, exited.wait_for(|done| *done))
        .await
        .is_err()
    {
        warn!(volume = %daemon.volume_id, pid = %daemon.pid,
              "the volume's daemon did not stop within {limit:?}; killing it");
        let _ = kill(daemon.pid, Signal::SIGKILL);
        let _ = exited.wait_for(|done| *done).await;
    }
}

/// The command line, environment and inherited descriptors of one daemon.
struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    clear_credentials: bool,
    /// Descriptors the daemon inherits, each at its number there.
    passed: Vec<(OwnedFd, RawFd)>,
}

/// The environment that would point the daemon at credentials other than the
/// volume's own.
const CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

impl Launch {
    fn new(
        settings: &Settings,
        tokens: &Tokens,
        publish: &Publish,
        share: Share,
    ) -> Result<Self, Status> {
        let mut launch = Launch {
            program: settings.program.clone(),
            args: vec![
                "mount".into(),
                publish.source.clone().into(),
                publish.target.clone().into(),
                "--foreground".into(),
                // The pod's users are not the driver's.
                "--allow-other".into(),
                // Whatever profile files the driver's container holds, a
                // volume neither reads them nor runs what they name.
                "--no-shared-config".into(),
            ],
            env: Vec::new(),
            clear_credentials: false,
            passed: Vec::new(),
        };
        if publish.read_write {
            launch.args.push("--read-write".into());
        }
        if let Some(dir) = &settings.cache_dir {
            launch.args.push("--cache-dir".into());
            launch.args.push(dir.clone().into());
        }
        launch.args.extend(publish.daemon_options(share));
        match &publish.credentials {
            Credentials::Secret { keys, role } => {
                if let Some(keys) = keys {
                    let fd = launch.pass_secret(&keys.to_file_text())?;
                    launch.clear_credentials = true;
                    launch.args.push("--credentials-file".into());
                    launch.args.push(fd.into());
                }
                if let Some(Role {
                    external_id: Some(id),
                    ..
                }) = role
                {
                    let fd = launch.pass_secret(id)?;
                    launch.args.push("--external-id-file".into());
                    launch.args.push(fd.into());
                }
            }
            Credentials::Pod { role_arn, token } => {
                let file = tokens.keep(&publish.target, token)?;
                launch.clear_credentials = true;
                launch.env.push(("AWS_ROLE_ARN", role_arn.into()));
                launch
                    .env
                    .push(("AWS_ROLE_SESSION_NAME", publish.session_name.clone().into()));
                launch
                    .env
                    .push(("AWS_WEB_IDENTITY_TOKEN_FILE", file.clone().into()));
                if let Some(url) = &publish.sts_endpoint {
                    launch.env.push(("AWS_ENDPOINT_URL_STS", url.into()));
                }
            }
        }
        Ok(launch)
    }

    /// The number the next passed descriptor gets in the daemon.
    fn next_number(&self) -> RawFd {
        3 + self.passed.len() as RawFd
    }

    /// Passes `fd` to the daemon and names its number there after `option`.
    fn pass(&mut self, fd: OwnedFd, option: &str) {
        let number = self.next_number();
        self.args.push(format!("{option}={number}").into());
        self.passed.push((fd, number));
    }

    /// Puts `secret` in an anonymous in-memory file only its owner may open,
    /// passed to the daemon; returns its path there (`/dev/fd/N`).
    fn pass_secret(&mut self, secret: &Secret) -> Result<String, Status> {
        let failed = |e: std::io::Error| Status::internal(format!("cannot pass a secret: {e}"));
        let fd =
            nix::sys::memfd::memfd_create(c"s3vol-secret", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| failed(e.into()))?;
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| failed(e.into()))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(secret.expose().as_bytes()).map_err(failed)?;
        let number = self.next_number();
        self.passed.push((file.into(), number));
        Ok(format!("/dev/fd/{number}"))
    }

    fn spawn(&mut self) -> Result<tokio::process::Child, Status> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if self.clear_credentials {
            for name in CREDENTIAL_VARIABLES {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Each descriptor is first copied above the numbers it will take, so
        // that moving one into place never overwrites another.
        let mut moves = Vec::new();
        for (fd, number) in &self.passed {
            let high = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .map_err(|e| Status::internal(format!("cannot pass a descriptor: {e}")))?;
            // SAFETY: fcntl just returned this new descriptor, owned by no one else.
            moves.push((unsafe { OwnedFd::from_raw_fd(high) }, *number));
        }
        let raw: Vec<(RawFd, RawFd)> = moves.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)).collect();
        // SAFETY: between fork and exec the child only calls dup2, which is
        // async-signal-safe; the copies it moves are open in the parent until
        // the spawn returns. dup2 leaves the new descriptor without close-on-exec.
        unsafe {
            command.pre_exec(move || {
                for (fd, number) in &raw {
                    if libc::dup2(*fd, *number) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            Status::internal(format!("cannot start {}: {e}", self.program.display()))
        })?;
        drop(moves);
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By the kind the daemon reports, whatever its words say: a key or a
    /// bucket named like an S3 error code changes nothing.
    #[test]
    fn a_refusal_of_the_credentials_is_permission_denied() {
        let cases = [
            (
                Kind::Denied,
                "STS refused to let these credentials assume role r",
                tonic::Code::PermissionDenied,
            ),
            (
                Kind::NotFound,
                "bucket 'accessdenied' does not exist",
                tonic::Code::NotFound,
            ),
            (
                Kind::Unreachable,
                "cannot reach S3 at http://x",
                tonic::Code::Unavailable,
            ),
            (
                Kind::Other,
                "cannot mount at /AccessDenied: busy",
                tonic::Code::Internal,
            ),
        ];
        for (kind, message, code) in cases {
            let report = StartError::new(kind, message).report();
            let status = failure_status(StartError::from_report(&report));
            assert_eq!((status.code(), status.message()), (code, message));
        }
        let status = failure_status(StartError::other("a \u{1b}[2J line"));
        assert_eq!(status.message(), "a \\u{1b}[2J line");
    }

    #[test]
    fn a_daemon_s_line_reaches_the_log_without_its_control_characters() {
        assert_eq!(
            without_controls("key \u{1b}[2Jname\r\tdone é"),
            "key \\u{1b}[2Jname\\r\\tdone é"
        );
    }

    #[test]
    fn a_token_file_is_root_s_alone_replaced_whole_and_forgotten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens(LocalDir::open_or_create(dir.path()).unwrap());
        let target = Path::new("/var/lib/kubelet/pods/x/mount");
        assert!(!tokens.has(target));
        tokens.keep(target, &Secret::new("one")).unwrap();
        let file = tokens.keep(target, &Secret::new("two")).unwrap();
        assert!(tokens.has(target));
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        tokens.forget(target);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
