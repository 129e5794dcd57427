//! `s3vol info PATH` and `s3vol url PATH`: ask the daemon of the volume that
//! PATH is on, through an ioctl on the file itself (see `crate::control`). The
//! caller needs no credentials: the daemon answers with the volume's, for a
//! file the caller could open.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::errno::Errno;
use serde_json::Value;

use super::{daemon_gone, fail, plain};
use crate::control::{self, UrlRequest};
use crate::daemon::Failure;
use crate::store::UrlMethod;

/// `s3vol info PATH`: what S3 holds for the file.
pub fn info(path: &Path, json: bool) -> ExitCode {
    let facts = match ask(path, control::INFO, None) {
        Ok(facts) => facts,
        Err(Failure(message)) => return fail(&message),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&facts).expect("JSON"));
    } else {
        print!("{}", render_info(&facts));
    }
    ExitCode::SUCCESS
}

/// `s3vol url PATH`: the URL on standard output (alone, so that
/// `curl "$(s3vol url PATH)"` works), its expiry on standard error, with the
/// headers a PUT must send.
pub fn url(path: &Path, method: UrlMethod, valid_for: Duration, json: bool) -> ExitCode {
    let request = UrlRequest { method, valid_for };
    let answer = match ask(path, control::URL, Some(request)) {
        Ok(answer) => answer,
        Err(Failure(message)) => return fail(&message),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    let text = |name: &str| answer[name].as_str().unwrap_or_default().to_string();
    println!("{}", text("url"));
    let left = Duration::from_secs(answer["expires_in_secs"].as_u64().unwrap_or(0));
    let cut = if answer["cut_by_session"].as_bool() == Some(true) {
        ", when the volume's role session ends"
    } else {
        ""
    };
    eprintln!(
        "{} URL of s3://{}/{}: expires {} (in {}{cut})",
        text("method"),
        text("bucket"),
        text("key"),
        text("expires"),
        humantime::format_duration(left)
    );
    let headers = answer["headers"].as_object().cloned().unwrap_or_default();
    if !headers.is_empty() {
        let flags: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("-H '{name}: {}'", value.as_str().unwrap_or_default()))
            .collect();
        eprintln!(
            "the upload must send these headers, as they were signed (S3 refuses it \
             otherwise): curl -T FILE {} URL",
            flags.join(" ")
        );
    }
    ExitCode::SUCCESS
}

/// Opens `path` (for writing when a PUT URL is asked for, so the kernel checks
/// that the caller may write it) and asks its volume's daemon.
fn ask(path: &Path, request: u32, url: Option<UrlRequest>) -> Result<Value, Failure> {
    let shown = path.display();
    let write = url.is_some_and(|u| u.method == UrlMethod::Put);
    let file = open(path, write)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Failure(format!(
            "{shown} is a directory; give a file on the volume"
        )));
    }
    if !meta.is_file() {
        return Err(Failure(format!(
            "{shown} is not a regular file, nor on an s3vol volume"
        )));
    }
    // Only FUSE mounts are asked: another filesystem might give the number a
    // meaning of its own.
    let dev = meta.dev();
    let on_fuse =
        crate::mountinfo::fstype_of_device(nix::sys::stat::major(dev), nix::sys::stat::minor(dev))
            .is_some_and(|fstype| fstype.starts_with("fuse"));
    let not_a_volume = || {
        Failure(format!(
            "{shown} is not on an s3vol volume (findmnt -t fuse.s3vol lists them)"
        ))
    };
    if !on_fuse {
        return Err(not_a_volume());
    }
    let answer = match control::ask(&file, request, url) {
        Ok(answer) => answer,
        Err(Errno::ENOTTY | Errno::ENOSYS | Errno::EOPNOTSUPP) => return Err(not_a_volume()),
        Err(Errno::ENOENT) => {
            return Err(Failure(format!(
                "{shown} is not in S3 yet: a file written through the volume is uploaded when \
                 it is closed"
            )));
        }
        Err(Errno::EACCES) => {
            return Err(Failure(format!(
                "S3 refused the volume's credentials for {shown}; the volume's log says why \
                 (`s3vol check` probes what they allow)"
            )));
        }
        Err(e) => return Err(Failure(format!("cannot ask the volume about {shown}: {e}"))),
    };
    serde_json::from_slice(&answer).map_err(|e| {
        Failure(format!(
            "the volume's answer about {shown} is not JSON: {e}"
        ))
    })
}

/// Opens `path` without waiting: a FIFO (or a device) given by mistake must
/// not hold the command (regular files ignore O_NONBLOCK).
fn open(path: &Path, write: bool) -> Result<File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let opened = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    match opened {
        Ok(file) => Ok(file),
        Err(e) if daemon_gone(&e) => Err(Failure(format!(
            "the daemon of the volume {shown} is on is gone ({}); unmount that volume \
             (findmnt -t fuse.s3vol lists it) and mount it again",
            plain(&e)
        ))),
        Err(e) if write && e.raw_os_error() == Some(libc::EROFS) => Err(Failure(format!(
            "{shown} is on a read-only volume: a PUT URL needs a volume mounted with \
             --read-write"
        ))),
        Err(e) if write && e.raw_os_error() == Some(libc::EISDIR) => Err(Failure(format!(
            "{shown} is a directory; give a file on the volume"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(Failure(format!(
            "you may not {} {shown}, so the volume gives no {} for it",
            if write { "write" } else { "read" },
            if write { "PUT URL" } else { "answer" }
        ))),
        // A FIFO nobody reads, opened for writing without waiting.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(Failure(format!(
            "{shown} is not a regular file, nor on an s3vol volume"
        ))),
        Err(e) => Err(Failure(format!("cannot open {shown}: {}", plain(&e)))),
    }
}

/// The facts as `s3vol info` prints them: one per line, `-` for none.
fn render_info(facts: &Value) -> String {
    let text = |name: &str| match &facts[name] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let encryption = match (text("sse").as_str(), text("sse_kms_key_id").as_str()) {
        ("-", _) => "-".to_string(),
        (sse, "-") => sse.to_string(),
        (sse, key) => format!("{sse} (KMS key {key})"),
    };
    let metadata = facts["metadata"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map_or("-".to_string(), |m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        });
    [
        ("object", format!("s3://{}/{}", text("bucket"), text("key"))),
        ("size", text("size")),
        ("etag", text("etag")),
        ("version id", text("version_id")),
        ("storage class", text("storage_class")),
        ("last modified", text("last_modified")),
        ("encryption", encryption),
        ("client-side", text("client_side_encryption")),
        ("content type", text("content_type")),
        ("metadata", metadata),
    ]
    .iter()
    .map(|(name, value)| format!("{name:<14} {value}\n"))
    .collect()
}
