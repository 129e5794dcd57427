//! What `s3vol mount` is asked to do, as plain values. The command line and the
//! mount helper (`cli`) build a [`MountConfig`]; the mount command and the daemon
//! below it never see a clap type.

use std::path::PathBuf;
use std::time::Duration;

use crate::names::Source;
use crate::store::stack::Connection;

/// One volume to mount.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MountConfig {
    pub source: Source,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    pub read_write: bool,
    pub connection: Connection,
    /// Owner and group of every file (default: the user running s3vol).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Every user may use the volume.
    pub allow_other: bool,
    /// Root may use the volume as well as its owner.
    pub allow_root: bool,
    pub noexec: bool,
    /// How long what S3 said about a name is trusted.
    pub metadata_ttl: Duration,
    /// Modes, owners and times are not read from or kept in user metadata.
    pub no_metadata: bool,
    /// Uploads and copies carry no Content-Type of their own.
    pub no_content_type: bool,
    /// Size of the first 1000 parts of a multipart upload.
    pub part_size: u64,
    /// Part uploads in flight at once, across the volume.
    pub max_concurrency: u16,
    /// Local data (cached blocks, staged writes); chosen at mount when `None`.
    pub cache_dir: Option<PathBuf>,
    /// The block cache's bound on disk; see `daemon::volume` for the default.
    pub cache_size: Option<u64>,
    /// The bound on files being written at once; see `daemon::volume`.
    pub staging_size: Option<u64>,
    pub no_cache: bool,
    /// The memory the volume may hold for data (`crate::memory`).
    pub max_memory: u64,
    pub foreground: bool,
    /// A pipe inherited from a supervisor, told when the volume serves.
    pub ready_fd: Option<std::os::fd::RawFd>,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    /// Where reads and changes are recorded (`crate::audit`).
    pub audit_log: Option<PathBuf>,
    /// Where Prometheus metrics are served (`crate::metrics`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Show the bucket as it was at this moment (`crate::store::versioned`).
    pub version_at: Option<std::time::SystemTime>,
    /// Client-side encryption (`crate::cse`).
    pub cse: Option<crate::cse::volume::CseOptions>,
}
