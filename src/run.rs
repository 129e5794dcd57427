//! The mount command's life: check the request, daemonize with a readiness
//! handshake, connect, mount, serve until unmounted or signalled, exit cleanly.
//!
//! Daemonizing forks before any thread exists (tokio's runtime is built in the child).
//! The parent waits on a pipe: the child writes `ready` once the kernel has accepted
//! the mount, or the reason it could not mount, and the parent exits 0 or prints the
//! reason and exits 1. So `s3vol mount` returns only when the volume is usable, and a
//! script (or mount(8), or systemd) sees every failure.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use aws_credential_types::provider::SharedCredentialsProvider;
use nix::unistd::{ForkResult, fork, setsid};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use crate::auth;
use crate::cache::{BlockCache, CacheConfig};
use crate::cleanup;
use crate::cli::{CheckArgs, CleanupArgs, MountArgs, RoleArgs, S3Args, StatsArgs};
use crate::fs::upload::WriteConfig;
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseAdapter;
use crate::fuse::session::{self, Access, MountPlan, VolumeHandle};
use crate::logging::{self, LogTarget};
use crate::mountinfo::mounted_at;
use crate::preflight;
use crate::stats::MountStats;
use crate::store::ObjectStore;
use crate::store::counted::CountedStore;
use crate::store::expiry::RenewOnExpiry;
use crate::store::retry::{RetryPolicy, RetryingStore};
use crate::store::s3::{S3Options, S3Store};

/// What the child tells the parent when the mount is serving.
const READY: &[u8] = b"ready\n";

/// A failure to report to the user; the command exits 1 with this message.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub fn mount(mut args: MountArgs) -> ExitCode {
    let mountpoint = match check_mountpoint(&args.mountpoint) {
        Ok(path) => path,
        Err(Failure(message)) => {
            eprintln!("s3vol: {message}");
            return ExitCode::FAILURE;
        }
    };
    // Everything that names a file is resolved now: the daemon runs in "/".
    let role = match args.role.role() {
        Ok(role) => role,
        Err(message) => {
            eprintln!("s3vol: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(message) = args.s3.encryption() {
        eprintln!("s3vol: {message}");
        return ExitCode::FAILURE;
    }
    if args.read_write || !args.no_cache {
        // Checked (and made absolute) now, with the answer on the terminal; the
        // daemon runs in "/".
        match local_dir(args.cache_dir.as_deref()) {
            Ok(dir) => args.cache_dir = Some(dir),
            Err(message) => {
                eprintln!("s3vol: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = &args.log_file
        && let Ok(absolute) = std::path::absolute(path)
    {
        args.log_file = Some(absolute);
    }
    if let Some(log_file) = &args.log_file
        && let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
    {
        eprintln!(
            "s3vol: cannot open log file {}: {e}; choose a writable --log-file",
            log_file.display()
        );
        return ExitCode::FAILURE;
    }
    if args.foreground {
        let target = match &args.log_file {
            Some(path) => LogTarget::File(path),
            None => LogTarget::Stderr,
        };
        if let Err(e) = logging::init(&args.log_level, target) {
            eprintln!("s3vol: cannot start logging: {e}");
            return ExitCode::FAILURE;
        }
        return match serve(&args, &mountpoint, role.as_ref(), None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure(message)) => {
                if args.log_file.is_some() {
                    error!("{message}");
                }
                eprintln!("s3vol: {message}");
                ExitCode::FAILURE
            }
        };
    }
    daemonize(&args, &mountpoint, role.as_ref())
}

fn daemonize(args: &MountArgs, mountpoint: &Path, role: Option<&auth::RoleOptions>) -> ExitCode {
    let (read_end, write_end) = match nix::unistd::pipe() {
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
                let log = match &args.log_file {
                    Some(path) => path.display().to_string(),
                    None => "syslog: journalctl -t s3vol".to_string(),
                };
                eprintln!(
                    "s3vol: the daemon exited before the volume was mounted; see its log \
                     ({log}) or run with --foreground for why"
                );
                ExitCode::FAILURE
            } else {
                eprintln!("s3vol: {}", String::from_utf8_lossy(&answer).trim_end());
                ExitCode::FAILURE
            }
        }
        Ok(ForkResult::Child) => {
            drop(read_end);
            let _ = setsid();
            let _ = std::env::set_current_dir("/");
            let target = match &args.log_file {
                Some(path) => LogTarget::File(path),
                None => LogTarget::Syslog,
            };
            let _ = logging::init(&args.log_level, target);
            detach_stdio();
            let mut pipe = Some(write_end);
            match serve(args, mountpoint, role, Some(&mut pipe)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failure(message)) => {
                    error!("{message}");
                    if let Some(fd) = pipe.take() {
                        let _ = File::from(fd).write_all(message.as_bytes());
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Points standard input, output and error at /dev/null so a detached daemon holds
/// no terminal.
fn detach_stdio() {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        // Each replaces its descriptor atomically; std's handles keep referring
        // to 0-2 by number. A failure leaves that one pointing where it did.
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
    }
}

/// What a FUSE mountpoint answers once its daemon is gone: ENOTCONN ("Transport
/// endpoint is not connected"), or ECONNABORTED for a request the kernel had
/// under way when the daemon died.
fn daemon_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
}

/// An OS error as the shell would print it, without Rust's "(os error N)".
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

/// How this user removes a dead FUSE mount: umount(8) for root, fusermount3 for
/// the others, whose own FUSE mounts it is.
fn cleanup_command(mountpoint: &Path) -> String {
    if nix::unistd::geteuid().is_root() {
        format!("umount {}", mountpoint.display())
    } else {
        format!("fusermount3 -u {}", mountpoint.display())
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

/// Connects, checks access, mounts and serves until unmounted. `ready` is the pipe
/// to the waiting parent, taken and answered once the mount serves.
fn serve(
    args: &MountArgs,
    mountpoint: &Path,
    role: Option<&auth::RoleOptions>,
    ready: Option<&mut Option<OwnedFd>>,
) -> Result<(), Failure> {
    tune_allocator();
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-io")
        .build()?;
    let (store, requests, renewals) = runtime.block_on(async {
        let (store, renewals) =
            connect_store(&args.s3, role, args.role.renew_before, &args.source.bucket).await?;
        let endpoint = endpoint(&args.s3);
        let probe = retrying(store.clone(), &args.s3);
        preflight::check_mount(probe.as_ref(), &args.source, args.read_write, &endpoint).await?;
        // Counted below the retries, so the statistics show every request sent,
        // and after the probes, which are not the volume's traffic.
        let counted = CountedStore::new(store);
        let requests = counted.stats();
        let store = retrying(Arc::new(counted), &args.s3);
        Ok::<_, Failure>((store, requests, renewals))
    })?;

    // Set by mount() whenever the cache or staging needs it.
    let local = args.cache_dir.as_deref();
    let cache = match (args.no_cache, local) {
        (false, Some(local)) => Some(Arc::new(open_cache(local, args.cache_size)?)),
        _ => None,
    };
    let write = match (args.read_write, local) {
        (true, Some(local)) => Some(WriteConfig {
            part_size: args.part_size,
            max_in_flight: usize::from(args.max_concurrency),
            ..WriteConfig::new(private_dir(&local.join("staging"))?)
        }),
        _ => None,
    };
    let stats = Arc::new(MountStats {
        source: args.source.to_string(),
        read_write: args.read_write,
        started: std::time::SystemTime::now(),
        requests,
        cache: cache.clone(),
        renewals: Some(renewals),
    });
    let config = FsConfig {
        uid: args.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
        gid: args.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        metadata_ttl: args.metadata_ttl,
        cache: cache.clone(),
        write,
        stats: Some(stats.clone()),
        ..FsConfig::default()
    };
    let fs = Arc::new(Fs::new(store, args.source.prefix.as_str(), config));
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let plan = MountPlan {
        source: &args.source.to_string(),
        read_only: !args.read_write,
        noexec: args.noexec,
        access: if args.allow_other {
            Access::Everyone
        } else if args.allow_root {
            Access::OwnerAndRoot
        } else {
            Access::Owner
        },
    };

    // Registered before the kernel shows the mount: a SIGTERM or SIGINT sent the
    // moment it appears must unmount, not kill the process.
    let stop_signals = {
        let _runtime = runtime.enter();
        StopSignals::register()
    };
    let volume = session::mount(adapter, mountpoint, &plan).map_err(|e| {
        // fusermount3's own complaints say what to do; the kernel's errnos do not.
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ". Is /dev/fuse available (in a container: --device /dev/fuse --cap-add \
                 SYS_ADMIN) and, for users other than root, fusermount3 installed (package \
                 fuse3)?"
            }
            _ => "",
        };
        Failure(format!(
            "cannot mount at {}: {e}{hint}",
            mountpoint.display()
        ))
    })?;
    let finish = Arc::new(Finish {
        mountpoint: mountpoint.to_path_buf(),
        stats: stats.clone(),
        cache: cache.clone(),
        done: std::sync::Once::new(),
    });
    runtime.spawn(stop_on_signal(
        stop_signals,
        volume.handle(),
        fs.clone(),
        finish.clone(),
    ));

    info!(
        source = %args.source,
        mountpoint = %mountpoint.display(),
        mode = if args.read_write { "read-write" } else { "read-only" },
        pid = std::process::id(),
        "mounted"
    );
    if let Some(slot) = ready
        && let Some(fd) = slot.take()
    {
        let _ = File::from(fd).write_all(READY);
    }
    let result = match volume.run() {
        // The connection was ended through fusectl: by the stop signal's grace
        // running out, or by an administrator. Either way the volume is gone.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("the FUSE connection was aborted");
            Ok(())
        }
        other => other,
    };
    runtime.block_on(abandon_open_files(&fs));
    finish.run();
    runtime.shutdown_background();
    result.map_err(|e| Failure(format!("FUSE session ended with an error: {e}")))
}

/// Stops uploading and abandons the files still being written, logging what
/// was lost.
async fn abandon_open_files(fs: &Fs) {
    let lost = fs.stop().await;
    if !lost.is_empty() {
        error!(
            keys = ?lost,
            "changes to these files were never uploaded: their uploads were aborted, and \
             S3 keeps the previous versions"
        );
    }
}

/// The last words of a mount: its statistics in the log, and the block cache's
/// directory removed. Run once, when the session ends or the process must exit.
struct Finish {
    mountpoint: PathBuf,
    stats: Arc<MountStats>,
    cache: Option<Arc<BlockCache>>,
    done: std::sync::Once,
}

impl Finish {
    fn run(&self) {
        self.done.call_once(|| {
            info!(
                mountpoint = %self.mountpoint.display(),
                stats = %self.stats.report(),
                "unmounted"
            );
            if let Some(cache) = &self.cache {
                cache.close();
            }
        });
    }
}

/// How long a stop signal waits for files still open on the volume before their
/// uploads are aborted. Shorter than the grace that container runtimes give
/// before SIGKILL (10 s for Docker and Kubernetes' default is 30 s), so the
/// aborts happen and no parts are left behind.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGTERM or SIGINT (systemd, a container runtime, Ctrl-C): unmount. With no
/// file open, that is all, and the session ends. Otherwise the volume is
/// detached, so nothing new can be opened while the open files are served and
/// their closes upload them; whatever is still open after [`STOP_GRACE`] (or at
/// a second signal) is abandoned, its upload aborted, and the connection ended.
async fn stop_on_signal(
    mut signals: StopSignals,
    volume: VolumeHandle,
    fs: Arc<Fs>,
    finish: Arc<Finish>,
) {
    signals.wait().await;
    info!("signal received; unmounting");
    match volume.unmount() {
        Ok(()) => return,
        Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {}
        Err(e) => {
            error!("cannot unmount: {e}");
            return;
        }
    }
    warn!(
        grace = ?STOP_GRACE,
        "files are open on the volume: detaching it and waiting for them to be closed \
         (a second signal stops at once)"
    );
    if let Err(e) = volume.detach() {
        error!("cannot detach the volume: {e}");
    }
    tokio::select! {
        _ = tokio::time::sleep(STOP_GRACE) => {}
        _ = signals.wait() => {}
    }
    warn!("stopping with files still open; the applications using them get ENOTCONN");
    abandon_open_files(&fs).await;
    if let Err(e) = volume.abort() {
        // Exiting ends the connection just the same.
        warn!("cannot end the FUSE connection ({e}); exiting");
        finish.run();
        std::process::exit(0);
    }
}

/// Read-ahead allocates and frees a multi-MiB buffer per ranged GET. By default glibc
/// serves those with mmap and returns them with munmap, so every byte read costs a
/// page fault in the kernel: a third of the daemon's CPU time in a sequential read.
/// Keeping them on the heap (bounded by the read-ahead budget anyway) avoids it.
/// Block-cache reads allocate on blocking-pool threads and free on runtime
/// threads; with glibc's default of one arena per thread the freed memory sits
/// in many arenas at once (a re-read from the disk cache peaked near 300 MiB).
/// Two arenas keep the peak at that of a cold read, at no measurable cost.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters and is called before the
    // runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The block cache keeps block files open, one descriptor each; many systems
/// start processes with a soft limit of 1024 descriptors and a far higher hard
/// limit. Raise the soft limit to the hard one (the cache uses a quarter).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open files limit to {hard}: {e}");
    }
}

/// The S3 store for `bucket`, signing with the role's or the default chain's
/// credentials, renewed ahead of expiry by a task that lives as long as the
/// runtime, and retrying a request once with new ones when S3 calls them expired.
async fn connect_store(
    s3: &S3Args,
    role: Option<&auth::RoleOptions>,
    renew_before: std::time::Duration,
    bucket: &str,
) -> Result<(Arc<dyn ObjectStore>, Renewals), Failure> {
    let base = auth::load_base_config(s3.region.as_deref(), s3.profile.as_deref()).await;
    let credentials = auth::volume_credentials(role, renew_before, &base)
        .await
        .map_err(Failure)?;
    let options = S3Options {
        endpoint_url: s3.endpoint_url.clone(),
        force_path_style: s3.force_path_style,
        credentials: Some(SharedCredentialsProvider::new(credentials.clone())),
        encryption: s3.encryption().map_err(Failure)?,
        stall_timeout: Some(RetryPolicy::within(s3.io_timeout).stall_timeout()),
    };
    let s3 = Arc::new(S3Store::from_sdk_config(bucket, &base, &options));
    let credentials = Arc::new(credentials);
    let renewals: Renewals = {
        let credentials = credentials.clone();
        Arc::new(move || credentials.renewals())
    };
    Ok((Arc::new(RenewOnExpiry::new(s3, credentials)), renewals))
}

/// `store` with failed requests retried for as long as `--io-timeout` allows.
fn retrying(store: Arc<dyn ObjectStore>, s3: &S3Args) -> Arc<dyn ObjectStore> {
    Arc::new(RetryingStore::new(
        store,
        RetryPolicy::within(s3.io_timeout),
    ))
}

/// Counts the credential renewals of a mount.
type Renewals = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Memory for whole blocks read recently, in front of the disk tier. Small: the
/// kernel's page cache already keeps the block files (and, for unchanged files,
/// the files themselves) that are read often.
const MEMORY_TIER: u64 = 32 << 20;

/// The block cache in `local`/blocks, bounded by `size` or else by a quarter of
/// the space free there now.
fn open_cache(local: &Path, size: Option<u64>) -> Result<BlockCache, Failure> {
    let dir = local.join("blocks");
    let disk_bytes = match size {
        Some(size) => size,
        None => {
            let free = nix::sys::statvfs::statvfs(local)
                .map(|s| s.blocks_available() * s.fragment_size())
                .map_err(|e| {
                    Failure(format!(
                        "cannot see the free space in {}: {e}",
                        local.display()
                    ))
                })?;
            let share = free / 4;
            if share < 64 << 20 {
                tracing::warn!(
                    dir = %local.display(),
                    free = %crate::stats::bytes(free),
                    "little free space for the block cache; choose another --cache-dir or set --cache-size"
                );
            }
            share
        }
    };
    info!(dir = %dir.display(), size = %crate::stats::bytes(disk_bytes), "block cache");
    BlockCache::open(CacheConfig {
        dir: dir.clone(),
        disk_bytes,
        memory_bytes: MEMORY_TIER,
    })
    .map_err(|e| {
        Failure(format!(
            "cannot use {} for the block cache: {e}; choose another --cache-dir, or turn \
             the cache off with --no-cache",
            dir.display()
        ))
    })
}

/// The directory for local data (cached blocks, staged writes): the one given, or
/// /var/cache/s3vol, or ~/.cache/s3vol for users who cannot write there; created
/// mode 0700 and made absolute.
fn local_dir(cache_dir: Option<&Path>) -> Result<PathBuf, String> {
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
    let mut last_error = String::new();
    for dir in candidates {
        let usable = private_dir(&dir).and_then(|dir| match tempfile::tempfile_in(&dir) {
            Ok(_) => Ok(dir),
            Err(e) => Err(Failure(format!("cannot write in {}: {e}", dir.display()))),
        });
        match usable {
            Ok(dir) => return Ok(dir),
            Err(Failure(why)) => last_error = why,
        }
    }
    Err(format!(
        "no writable directory for the block cache and staged writes ({last_error}); \
         choose one with --cache-dir"
    ))
}

/// Creates `dir` (and its parents) mode 0700 if it is missing.
fn private_dir(dir: &Path) -> Result<PathBuf, Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// The endpoint as messages name it.
fn endpoint(s3: &S3Args) -> String {
    s3.endpoint_url
        .clone()
        .unwrap_or_else(|| "the AWS S3 endpoint".to_string())
}

/// `s3vol check`: probes what the mode needs and prints the table; exit 1 when
/// anything needed is denied or S3 cannot be reached.
pub fn check(args: CheckArgs) -> ExitCode {
    let result = one_shot(&args.s3, &args.role, &args.source.bucket, async |store| {
        let mode = preflight::ProbeMode {
            read_write: args.read_write,
            delete: args.probe_delete,
        };
        let probes =
            preflight::probe_access(store.as_ref(), &args.source, mode, &endpoint(&args.s3))
                .await?;
        print!("{}", preflight::render(&probes));
        Ok(probes
            .iter()
            .all(|p| !matches!(p.outcome, preflight::Outcome::Denied { .. })))
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "s3vol: some permissions a {} volume needs are denied; see the fixes above",
                if args.read_write {
                    "read-write"
                } else {
                    "read-only"
                }
            );
            ExitCode::FAILURE
        }
        Err(Failure(message)) => {
            eprintln!("s3vol: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `body` with a store for the volume's bucket, as the one-shot commands
/// (`check`, `cleanup`) need: warnings to stderr, the role assumed if given,
/// failed requests retried within --io-timeout.
fn one_shot<T>(
    s3: &S3Args,
    role: &RoleArgs,
    bucket: &str,
    body: impl AsyncFnOnce(Arc<dyn ObjectStore>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let _ = logging::init("warn", LogTarget::Stderr);
    let role_options = role.role().map_err(Failure)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (store, _) =
            connect_store(s3, role_options.as_ref(), role.renew_before, bucket).await?;
        body(retrying(store, s3)).await
    })
}

/// `s3vol cleanup`: lists the multipart uploads under the volume's prefix and
/// aborts the stale ones when asked; exit 1 when listing or an abort failed.
pub fn cleanup(args: CleanupArgs) -> ExitCode {
    let location = format!("s3://{}/{}", args.source.bucket, args.source.prefix);
    let plan = cleanup::CleanupPlan {
        prefix: args.source.prefix.as_str(),
        older_than: args.older_than,
        abort: args.abort,
    };
    let result = one_shot(&args.s3, &args.role, &args.source.bucket, async |store| {
        cleanup::cleanup(store.as_ref(), &plan, std::time::SystemTime::now())
            .await
            .map_err(|e| Failure(format!("cannot list the uploads under {location}: {e:#}")))
    });
    match result {
        Ok(found) => {
            print!("{}", cleanup::render(&found, &plan, &location));
            let failed = found
                .iter()
                .any(|f| matches!(f.outcome, cleanup::Outcome::Failed(_)));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(Failure(message)) => {
            eprintln!("s3vol: {message}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, caught from registration on; and SIGHUP, which is only
/// logged. SIGHUP's default would kill the daemon without unmounting: a closed
/// terminal or a log rotation's `kill -HUP` must not take the volume down.
struct StopSignals(Option<[Signal; 3]>);

impl StopSignals {
    /// Must run inside the tokio runtime.
    fn register() -> Self {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Self(Some([term, int, hup])),
            _ => Self(None),
        }
    }

    async fn wait(&mut self) {
        let Some([term, int, hup]) = &mut self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    info!("SIGHUP ignored; stop the volume with umount or SIGTERM");
                }
            }
        }
    }
}

/// `s3vol stats MOUNTPOINT`: asks the daemon for its report through an ioctl on
/// the volume's root and prints it.
pub fn stats(args: &StatsArgs) -> ExitCode {
    match read_report(&args.mountpoint) {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let shown = args.mountpoint.display().to_string();
            print!("{}", crate::stats::render(&shown, &report));
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => {
            eprintln!("s3vol: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read_report(mountpoint: &Path) -> Result<serde_json::Value, Failure> {
    use nix::errno::Errno;
    let shown = mountpoint.display();
    let not_a_volume = || {
        Failure(format!(
            "{shown} is not where an s3vol volume is mounted; give the mountpoint itself \
             (findmnt -t fuse.s3vol lists them)"
        ))
    };
    let root = match File::open(mountpoint) {
        Ok(root) => root,
        Err(e) if daemon_gone(&e) => {
            return Err(Failure(format!(
                "the daemon of {shown} is gone ({}); clean up with `{}`",
                plain(&e),
                cleanup_command(mountpoint)
            )));
        }
        Err(e) => return Err(Failure(format!("cannot open {shown}: {e}"))),
    };
    // Only FUSE mounts are asked: another filesystem might give the number a
    // meaning of its own.
    let path = std::fs::canonicalize(mountpoint)?;
    if !mounted_at(&path).is_some_and(|fstype| fstype.starts_with("fuse")) {
        return Err(not_a_volume());
    }
    let mut buf = vec![0u8; crate::stats::REPORT_MAX];
    let len = match crate::stats::read_report(&root, &mut buf) {
        Ok(len) => len,
        Err(Errno::ENOTTY | Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => {
            return Err(not_a_volume());
        }
        Err(e) => {
            return Err(Failure(format!(
                "cannot read the statistics of {shown}: {e}"
            )));
        }
    };
    buf.truncate(len);
    serde_json::from_slice(&buf)
        .map_err(|e| Failure(format!("the statistics of {shown} are not valid JSON: {e}")))
}
