//! One module per command. Each takes plain values (the command line's are
//! turned into them by `cli`), prints what it has to say, and returns the exit
//! code: 0, or 1 with the reason on standard error as `s3vol: ...`.

pub mod check;
pub mod cleanup;
pub mod csi;
pub mod helper;
pub mod mount;
pub mod object;
pub mod policy;
pub mod restart;
pub mod stats;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cse::volume::{CseOptions, VolumeEncryption};
use crate::daemon::Failure;
use crate::logging::{self, LogTarget};
use crate::store::ObjectStore;
use crate::store::stack::Connection;

/// Says why the command failed and exits 1.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("s3vol: {message}");
    ExitCode::FAILURE
}

/// Runs `body` with a store for the volume's bucket, as the one-shot commands
/// (`check`, `cleanup`) need: warnings to stderr, the role assumed if given,
/// failed requests retried within --io-timeout; and the volume's client-side
/// encryption, if it has one.
fn one_shot<T>(
    connection: &Connection,
    bucket: &str,
    cse: Option<&CseOptions>,
    body: impl AsyncFnOnce(Arc<dyn ObjectStore>, Option<Arc<VolumeEncryption>>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let _ = logging::init("warn", LogTarget::Stderr);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (store, sdk) = connection
            .command_store(bucket)
            .await
            .map_err(|e| Failure(e.message))?;
        let encryption = cse.map(|cse| Arc::new(VolumeEncryption::connect(cse, &sdk)));
        body(store, encryption).await
    })
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
