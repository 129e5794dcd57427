//! Filesystem errors and the one place that turns them into errnos.

use super::upload::StageError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("name is longer than 255 bytes")]
    NameTooLong,
    #[error("the volume is mounted read-only")]
    ReadOnly,
    #[error("{0} is not supported on an S3 volume")]
    NotSupported(&'static str),
    #[error("no such open file handle {0}")]
    BadHandle(u64),
    #[error("directory is not empty")]
    NotEmpty,
    #[error("already exists")]
    Exists,
    #[error("{0}")]
    Invalid(&'static str),
    /// Too much to do in one request; `mv` then copies and deletes by itself.
    #[error("{0}")]
    CrossDevice(String),
    /// Writing: the staging file, the 5 TiB limit, or the upload.
    #[error(transparent)]
    Stage(Box<StageError>),
    /// An open file's object was replaced or deleted by another client.
    #[error("object {key} changed or disappeared while open: {source}")]
    Stale {
        key: String,
        #[source]
        source: Box<StoreError>,
    },
    /// The volume is being unmounted and gave up waiting for this file to be
    /// closed; what was written through it was not uploaded.
    #[error("the volume is being unmounted; the file's changes were not uploaded")]
    Stopped,
    /// Boxed: store errors carry S3's code, message and request ID, and most
    /// results never hold one.
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Store(Box::new(e))
    }
}

impl From<StageError> for FsError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::Store(e) => FsError::Store(Box::new(e)),
            other => FsError::Stage(Box::new(other)),
        }
    }
}

impl FsError {
    /// The errno the application sees. Each arm is a judgement; the comment says why.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::ReadOnly => libc::EROFS,
            // Links, device nodes and locks have no S3 equivalent; ENOTSUP tells tools
            // like cp and tar to fall back rather than retry.
            FsError::NotSupported(_) => libc::ENOTSUP,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            FsError::Invalid(_) => libc::EINVAL,
            // mv answers EXDEV by copying and deleting itself, file by file.
            FsError::CrossDevice(_) => libc::EXDEV,
            FsError::Stage(e) => match &**e {
                StageError::TooLarge => libc::EFBIG,
                // A full local disk is ENOSPC, whatever the bucket holds.
                StageError::Local { source, .. }
                    if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
                {
                    libc::ENOSPC
                }
                StageError::Local { .. } => libc::EIO,
                StageError::Store(e) => store_errno(e),
            },
            // ESTALE is what NFS users know for "the file changed under your handle".
            FsError::Stale { .. } => libc::ESTALE,
            // What the application sees once the daemon is gone, too.
            FsError::Stopped => libc::ENOTCONN,
            FsError::Store(e) => store_errno(e),
        }
    }

    /// Expected outcomes (a lookup of a name that does not exist) are not worth a
    /// warning in the log.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::NameTooLong
                | FsError::ReadOnly
                | FsError::NotSupported(_)
                | FsError::IsADirectory
                | FsError::NotADirectory
                | FsError::NotEmpty
                | FsError::Exists
                | FsError::CrossDevice(_)
        )
    }
}

fn store_errno(e: &StoreError) -> i32 {
    match e {
        StoreError::NotFound { .. } => libc::ENOENT,
        // The policy said no: EACCES, never the EIO other S3 filesystems report.
        StoreError::AccessDenied { .. } => libc::EACCES,
        // Without credentials every request would be refused: the same answer.
        StoreError::Credentials { .. } => libc::EACCES,
        // Still refused after a forced renewal: the same as having none.
        StoreError::ExpiredToken { .. } => libc::EACCES,
        StoreError::Changed { .. } | StoreError::ShortBody { .. } => libc::ESTALE,
        // The bucket vanished after mount: the volume's root is gone.
        StoreError::NoSuchBucket { .. } => libc::ENOENT,
        StoreError::InvalidRange { .. } => libc::ESTALE,
        StoreError::Unreachable { .. }
        | StoreError::Service { .. }
        | StoreError::Internal { .. } => libc::EIO,
        #[cfg(any(test, feature = "testing"))]
        StoreError::Injected { .. } => libc::EIO,
    }
}

pub type FsResult<T> = Result<T, FsError>;
