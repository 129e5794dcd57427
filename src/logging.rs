//! Where log lines go (standard error, a file, or syslog for a detached daemon), and
//! how an error is shown in one line.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use nix::syslog::{self, Facility, LogFlags, Severity};
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

/// Installs the global subscriber. `level` applies to s3vol itself; other crates
/// (the AWS SDK) log warnings and errors only, and fuser errors only (it warns about
/// unmounts that already happened), unless `RUST_LOG` says else.
pub fn init(level: &str, target: LogTarget<'_>) -> io::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,fuser=error,s3vol={level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match target {
        // Colours only for a terminal: a log kept by a container runtime, a
        // file or a pipe would carry their escape codes as text.
        LogTarget::Stderr => builder
            .with_ansi(io::stderr().is_terminal())
            .with_writer(io::stderr)
            .try_init(),
        LogTarget::File(path) => {
            let file = open_log_file(path)?;
            log_panics();
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
        LogTarget::Syslog => {
            syslog::openlog(Some(c"s3vol"), LogFlags::LOG_PID, Facility::LOG_DAEMON)?;
            log_panics();
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(SyslogWriter)
                .try_init()
        }
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = result;
    Ok(())
}

/// Opens (or creates) the log file for appending, as a regular file readable by
/// its owner alone: never through a symbolic link (another user could point one
/// at a file of theirs, or at a file the daemon may write), never a device or a
/// pipe, mode 0600 (the log names keys and paths).
pub fn open_log_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let shown = path.display();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO put in its place must not hang the mount (regular
        // files ignore it).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                e.kind(),
                format!("{shown} is a symbolic link; give the log file's own path"),
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{shown} is not a regular file")));
    }
    // Someone else's file, or another name of a file (a hard link to one
    // the daemon may write, such as /etc/shadow), is never appended to nor
    // made 600.
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{shown} belongs to uid {}, not to the user s3vol runs as (uid {me}); remove it or \
             give a path of this user's own",
            meta.uid()
        )));
    }
    if meta.nlink() > 1 {
        return Err(io::Error::other(format!(
            "{shown} has {} hard links; a log file must have a name of its own (remove the \
             other names, or give another path)",
            meta.nlink()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// The whole cause chain of an error on one line, for logs and messages.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Logs a panic as well as printing it: a detached daemon's standard error is
/// /dev/null, and without this a crash would leave the log silent while the
/// mount command says "see the log for why".
fn log_panics() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!("s3vol crashed, which is a bug: {info}\n{backtrace}");
        print(info);
    }));
}

/// Sends each formatted line to syslog(3) (the journal, under systemd), with
/// a priority taken from the event's level.
#[derive(Clone, Copy)]
struct SyslogWriter;

/// One event's line, sent when the formatter drops it.
struct SyslogLine {
    severity: Severity,
    text: Vec<u8>,
}

/// syslog's severity for a tracing level.
fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::LOG_ERR,
        Level::WARN => Severity::LOG_WARNING,
        Level::INFO => Severity::LOG_INFO,
        Level::DEBUG | Level::TRACE => Severity::LOG_DEBUG,
    }
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let line = text.trim();
        if line.is_empty() {
            return;
        }
        // The facility is openlog's. Nothing is left to tell of a lost line.
        let _ = syslog::syslog(self.severity, &line.replace('\0', " "));
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            severity: Severity::LOG_INFO,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine {
            severity: severity(meta.level()),
            text: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_log_file_is_a_private_regular_file_never_reached_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.log");
        open_log_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);

        let wide = dir.path().join("wide.log");
        std::fs::write(&wide, "earlier lines\n").unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = open_log_file(&wide).unwrap();
        file.write_all(b"appended\n").unwrap();
        assert_eq!(mode(&wide), 0o600);
        assert_eq!(
            std::fs::read_to_string(&wide).unwrap(),
            "earlier lines\nappended\n"
        );

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "not a log").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = open_log_file(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a log");

        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_log_file(&fifo).is_err(), "a FIFO is no log file");
        assert!(open_log_file(Path::new("/dev/null")).is_err());
    }

    #[test]
    fn a_log_file_of_another_user_or_with_another_name_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // A hard link to a file the daemon may write: neither appended to nor
        // made 600.
        let precious = dir.path().join("precious");
        std::fs::write(&precious, "keep\n").unwrap();
        std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o644)).unwrap();
        let linked = dir.path().join("linked.log");
        std::fs::hard_link(&precious, &linked).unwrap();
        let error = open_log_file(&linked).unwrap_err().to_string();
        assert!(error.contains("2 hard links"), "{error}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep\n");
        assert_eq!(mode(&precious), 0o644);

        // A file another user made where the log is to go (only root can
        // give it away).
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs.log");
            std::fs::write(&theirs, "").unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let error = open_log_file(&theirs).unwrap_err().to_string();
            assert!(error.contains("belongs to uid 65534"), "{error}");
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
            assert_eq!(mode(&theirs), 0o644);
        }
    }
}
