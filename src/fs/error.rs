//! Filesystem errors and the one place that turns them into errnos.

use super::CseError;
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
    /// Only root or the volume's owner may ask for it.
    #[error("{0}")]
    NotPermitted(&'static str),
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
    /// An open found the object's size other than the one the kernel was
    /// given: the kernel is told, and opens the file again with a fresh
    /// lookup (it does so once at ESTALE), so that no read takes the old
    /// size's prefix for the whole file.
    #[error("object {key} is {now} bytes, not the {was} the kernel was told; opened again")]
    Resized { key: String, was: u64, now: u64 },
    /// An open found a new version of an object while the kernel reads an
    /// older one from the disk cache (passthrough), which every open of the
    /// inode would have to share: the name is given a new inode, and the
    /// kernel opens again with a fresh lookup (it does so once at ESTALE).
    #[error("object {key} was replaced while open through passthrough; opened again")]
    Replaced { key: String },
    /// An open file's object was replaced or deleted by another client.
    #[error("object {key} changed or disappeared while open: {source}")]
    Stale {
        key: String,
        #[source]
        source: Box<StoreError>,
    },
    /// The file a descriptor is open on has no name any more (unlinked, or
    /// replaced by a rename): what would reach its object would reach
    /// another's.
    #[error("{key} was unlinked or replaced since this descriptor was opened")]
    Unlinked { key: String },
    /// The volume is being unmounted and gave up waiting for the files still
    /// open: what was written through them was not uploaded, and nothing more
    /// is changed.
    #[error("the volume is being unmounted; changes are no longer uploaded")]
    Stopped,
    /// The handle was open for writing when the volume's worker died: what
    /// was written through it died with it, and its upload was aborted.
    #[error(
        "the volume's worker was replaced while this file was open for writing; its changes \
         were not uploaded"
    )]
    Lost,
    /// An extended attribute outside the `user.` namespace: not kept.
    #[error("only user.* extended attributes are kept on an S3 volume")]
    XattrNamespace,
    /// The extended attribute is not set.
    #[error("no such extended attribute")]
    NoXattr,
    /// The extended attributes would not fit S3's 2 KB of user metadata
    /// beside what else the object keeps; `alone`: nor would this one by
    /// itself.
    #[error(
        "{key}: its user metadata would take {needed} bytes, more than S3's 2048 with the \
         extended attributes asked for"
    )]
    XattrsFull {
        key: String,
        needed: usize,
        alone: bool,
    },
    /// The object's extended attributes are not in the encoding s3vol and
    /// s3fs read: changing them would lose what cannot be read.
    #[error("{key}: its extended attributes in S3 cannot be read; left as they are")]
    XattrsUnreadable { key: String },
    /// A change of the file's mode, owner, time or extended attributes
    /// could not be kept in S3 (the log says why).
    #[error("{key}: a change of its mode, owner, time or extended attributes could not be kept")]
    ChangeNotKept { key: String },
    /// An ioctl request s3vol does not serve (see `crate::control`).
    #[error("ioctl request {0:#x} is not served here")]
    UnknownIoctl(u32),
    /// The answer does not fit the caller's buffer.
    #[error("the answer takes {needed} bytes; the buffer holds {given}")]
    BufferTooSmall { needed: usize, given: usize },
    /// An object this encrypted volume may not or cannot read.
    #[error("{key}: {source}")]
    Encryption {
        key: String,
        #[source]
        source: Box<CseError>,
    },
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
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            FsError::Invalid(_) => libc::EINVAL,
            // mv answers EXDEV by copying and deleting itself, file by file.
            FsError::CrossDevice(_) => libc::EXDEV,
            FsError::Stage(e) => match &**e {
                StageError::TooLarge => libc::EFBIG,
                // Out of the space allowed for staging: a full disk to the writer.
                StageError::StagingFull { .. } => libc::ENOSPC,
                // A full local disk is ENOSPC, whatever the bucket holds.
                StageError::Local { source, .. }
                    if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
                {
                    libc::ENOSPC
                }
                StageError::Local { .. } => libc::EIO,
                // As for a file that outlived the grace of a stop.
                StageError::Abandoned => libc::ENOTCONN,
                // The fsync's data was not made durable; nothing failed to send.
                StageError::HeldBack { .. } => libc::EIO,
                StageError::Encryption { source, .. } => cse_errno(source),
                StageError::Store(e) => store_errno(e),
            },
            // ESTALE is what NFS users know for "the file changed under your handle".
            FsError::Stale { .. }
            | FsError::Resized { .. }
            | FsError::Replaced { .. }
            | FsError::Unlinked { .. } => libc::ESTALE,
            // What Linux filesystems answer for a namespace they do not
            // support; `ls` and `cp -a` take it as "none".
            FsError::XattrNamespace => libc::EOPNOTSUPP,
            FsError::NoXattr => libc::ENODATA,
            // setxattr(2): E2BIG for a value no file could hold, ENOSPC when
            // the file's room is taken.
            FsError::XattrsFull { alone: true, .. } => libc::E2BIG,
            FsError::XattrsFull { alone: false, .. } => libc::ENOSPC,
            FsError::XattrsUnreadable { .. } => libc::EIO,
            // fsync(2)'s answer when what it makes durable cannot be.
            FsError::ChangeNotKept { .. } => libc::EIO,
            // What ioctl(2) answers for a request the file does not know.
            FsError::UnknownIoctl(_) => libc::ENOTTY,
            // As getxattr(2) does when the value does not fit.
            FsError::BufferTooSmall { .. } => libc::ERANGE,
            // What the application sees once the daemon is gone, too.
            FsError::Stopped => libc::ENOTCONN,
            // The volume goes on: only what was written through the handle
            // is gone, as after a failed write-back.
            FsError::Lost => libc::EIO,
            FsError::Encryption { source, .. } => cse_errno(source),
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
                | FsError::XattrNamespace
                | FsError::NoXattr
                | FsError::XattrsFull { .. }
                | FsError::UnknownIoctl(_)
                | FsError::Resized { .. }
                | FsError::Replaced { .. }
        )
    }
}

fn cse_errno(e: &CseError) -> i32 {
    match e.is_refusal() {
        // Not encrypted, encrypted for another context, or under a key these
        // credentials may not use: this volume may not read it, like a
        // policy's refusal.
        true => libc::EACCES,
        // Damaged or unsupported encryption metadata, or KMS unreachable.
        false => libc::EIO,
    }
}

fn store_errno(e: &StoreError) -> i32 {
    match e {
        StoreError::NotFound { .. } => libc::ENOENT,
        // The policy said no: EACCES, never the EIO other S3 filesystems report.
        StoreError::AccessDenied { .. } => libc::EACCES,
        // Not readable to anyone until restored: what other S3 filesystems
        // answer for an object of an archive storage class too.
        StoreError::Archived { .. } => libc::EACCES,
        // Every request is refused so: as having no credentials.
        StoreError::BadSignature { .. } => libc::EACCES,
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
        // Wrong bytes are worse than none: the read fails, and the log says what
        // the server did.
        StoreError::BadAnswer { .. } => libc::EIO,
        #[cfg(any(test, feature = "testing"))]
        StoreError::Injected { .. } => libc::EIO,
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Operation, ServiceInfo};

    /// The situation cell of the row of docs/SEMANTICS.md's error table that
    /// documents `e`. Exhaustive, so a new error must be given a row.
    fn documented_in(e: &FsError) -> &'static str {
        match e {
            FsError::NotFound => "name does not exist",
            FsError::NotADirectory => "a file where a directory is needed",
            FsError::IsADirectory => "a directory where a file is needed",
            FsError::NameTooLong => {
                "name longer than 255 bytes, or a key longer than S3's 1024 bytes"
            }
            FsError::ReadOnly => "any write on a read-only volume",
            FsError::NotSupported(_) => {
                "hard link, device node, FIFO; symlink or setxattr with `--no-metadata` or on \
                 an encrypted volume; setxattr on the volume's root"
            }
            FsError::BadHandle(_) => {
                "a handle the volume does not know, or a write (or a PUT URL) through a handle \
                 opened for reading"
            }
            FsError::NotEmpty => "rmdir of a non-empty directory, or a directory renamed over one",
            FsError::Exists => {
                "rename with `RENAME_NOREPLACE` onto a name that exists, setxattr with \
                 `XATTR_CREATE` of an attribute that is set"
            }
            FsError::Invalid(_) => {
                "a name S3 cannot hold (not UTF-8, or a control character S3's XML cannot \
                 carry), `RENAME_EXCHANGE`, a directory moved into itself, readlink of a \
                 file that is no link, an ioctl request that `s3vol url` did not send, an \
                 extended attribute name s3fs could not read back (empty, not UTF-8, or with \
                 `\"`, `,`, `:` or a control character)"
            }
            FsError::CrossDevice(_) => "rename of a directory holding more than 1000 objects",
            FsError::Stage(e) => match &**e {
                StageError::TooLarge => {
                    "file larger than S3's 5 TiB (or, encrypted, AES-GCM's 64 GiB)"
                }
                StageError::StagingFull { .. } => {
                    "local staging disk full, or `--staging-size` reached"
                }
                StageError::Local { source, .. }
                    if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
                {
                    "local staging disk full, or `--staging-size` reached"
                }
                StageError::Local { .. } => {
                    "a transfer that failed inside s3vol, or a staging file that cannot be \
                     read or written"
                }
                StageError::Abandoned => STOPPED_ROW,
                StageError::HeldBack { .. } => {
                    "fsync of a file whose last change was made by a process killed by a signal \
                     (what it wrote is not published)"
                }
                StageError::Encryption { source, .. } => cse_row(source),
                StageError::Store(e) => store_row(e),
            },
            FsError::Encryption { source, .. } => cse_row(source),
            FsError::Stale { .. } => "object replaced, deleted or shrunk under an open handle",
            FsError::Unlinked { .. } => {
                "`s3vol info`, `s3vol url` or a new open (of `/proc/self/fd/N`) through a \
                 descriptor of a file unlinked, or replaced by a rename, since it was opened"
            }
            FsError::Resized { .. } => {
                "an open that finds the object's size changed since the kernel was told, \
                 twice in a row (the kernel opens again at once after the first)"
            }
            FsError::Replaced { .. } => {
                "an open that finds a new version of a file the kernel reads from the disk \
                 cache, twice in a row (the kernel opens again at once after the first)"
            }
            FsError::Stopped => STOPPED_ROW,
            FsError::NotPermitted(_) => {
                "`s3vol restart` by a user other than root and the one who mounted the volume"
            }
            FsError::Lost => {
                "write, fsync or close of a file that was open for writing when the volume's \
                 worker died, or a truncation of it by name (an open's O_TRUNC) in the 10 s \
                 after the takeover, before it is released (see DEPLOY.md, \"When the worker dies\")"
            }
            FsError::XattrNamespace => {
                "an extended attribute outside the `user.` namespace (`security.`, `system.`, \
                 `trusted.`)"
            }
            FsError::NoXattr => "getxattr or removexattr of an extended attribute that is not set",
            FsError::XattrsFull { alone: true, .. } => {
                "setxattr of one attribute too large for S3's 2 KB of user metadata by itself"
            }
            FsError::XattrsFull { alone: false, .. } => {
                "setxattr that would take the file's extended attributes past S3's 2 KB of user \
                 metadata"
            }
            FsError::XattrsUnreadable { .. } => {
                "setxattr or removexattr on an object whose `x-amz-meta-xattr` cannot be read \
                 (not in s3fs's encoding)"
            }
            FsError::ChangeNotKept { .. } => {
                "fsync of a file whose change of mode, owner, time or extended attributes could \
                 never be copied onto its object (its metadata would not fit, the object is \
                 gone, or it is archived)"
            }
            FsError::UnknownIoctl(_) => {
                "an ioctl other than s3vol's own (`s3vol stats` on the volume's root, `s3vol \
                 info` and `s3vol url` on a file)"
            }
            FsError::BufferTooSmall { .. } => {
                "an s3vol ioctl with a buffer too small for the answer"
            }
            FsError::Store(e) => store_row(e),
        }
    }

    fn cse_row(e: &CseError) -> &'static str {
        match e.is_refusal() {
            true => {
                "an object an encrypted volume may not read: not encrypted (without \
                 `--cse-allow-plaintext`), encrypted with another context, or under a KMS key \
                 the credentials may not use"
            }
            false => {
                "an object whose encryption cannot be used (damaged or unsupported metadata), \
                 or KMS unreachable"
            }
        }
    }

    fn store_row(e: &StoreError) -> &'static str {
        match e {
            StoreError::NotFound { .. } => "name does not exist",
            StoreError::NoSuchBucket { .. } => {
                "the bucket no longer exists (deleted after the volume was mounted)"
            }
            StoreError::AccessDenied { .. }
            | StoreError::Credentials { .. }
            | StoreError::ExpiredToken { .. } => {
                "S3 answers AccessDenied (the policy does not allow it), or no usable credentials"
            }
            StoreError::BadSignature { .. } => {
                "S3 refuses the requests' signature (an access key ID it does not know, a \
                 secret key that does not belong to it, or a clock more than 15 minutes off)"
            }
            StoreError::Archived { .. } => {
                "an object of an archive storage class (S3 Glacier Flexible Retrieval or Deep \
                 Archive, an Intelligent-Tiering archive tier) that was not restored"
            }
            StoreError::Changed { .. }
            | StoreError::ShortBody { .. }
            | StoreError::InvalidRange { .. } => {
                "object replaced, deleted or shrunk under an open handle"
            }
            StoreError::Unreachable { .. } | StoreError::Service { .. } => {
                "endpoint unreachable, stalled, or answering 500/503 for longer than \
                 `--io-timeout`, or any other error S3 answers"
            }
            StoreError::BadAnswer { .. } => {
                "an answer from the server that cannot be right (a body longer than the \
                 range asked for, another range or ETag than asked, a listing that repeats \
                 or never ends), or an encrypted object whose GCM tag does not match"
            }
            StoreError::Internal { .. } | StoreError::Injected { .. } => {
                "a transfer that failed inside s3vol, or a staging file that cannot be \
                 read or written"
            }
        }
    }

    /// One error of every kind [`FsError::errno`] tells apart.
    fn examples() -> Vec<FsError> {
        let op = Operation::GetObject;
        let key = || "k".to_string();
        let info = ServiceInfo::default;
        let local = |errno| StageError::Local {
            dir: "/staging".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        let store = [
            StoreError::NotFound { op, key: key() },
            StoreError::NoSuchBucket {
                bucket: "b".into(),
                info: info(),
            },
            StoreError::AccessDenied {
                op,
                resource: key(),
                info: info(),
            },
            StoreError::Archived {
                op,
                key: key(),
                info: info(),
            },
            StoreError::BadSignature { op, info: info() },
            StoreError::Credentials { detail: key() },
            StoreError::ExpiredToken { op, info: info() },
            StoreError::Changed {
                op,
                key: key(),
                expected_etag: key(),
            },
            StoreError::ShortBody {
                op,
                key: key(),
                expected: 2,
                got: 1,
            },
            StoreError::InvalidRange { op, key: key() },
            StoreError::Unreachable { op, detail: key() },
            StoreError::Service {
                op,
                key: key(),
                info: info(),
            },
            StoreError::Internal { op, detail: key() },
            StoreError::BadAnswer {
                op,
                key: key(),
                detail: key(),
            },
        ];
        let mut all = vec![
            FsError::NotFound,
            FsError::NotADirectory,
            FsError::IsADirectory,
            FsError::NameTooLong,
            FsError::ReadOnly,
            FsError::NotSupported("a symbolic link"),
            FsError::BadHandle(7),
            FsError::Lost,
            FsError::NotPermitted("restart"),
            FsError::NotEmpty,
            FsError::Exists,
            FsError::Invalid("a name"),
            FsError::CrossDevice("many keys".into()),
            FsError::Stage(Box::new(StageError::TooLarge)),
            FsError::Stage(Box::new(StageError::StagingFull { limit: 1 })),
            FsError::Stage(Box::new(local(libc::ENOSPC))),
            FsError::Stage(Box::new(local(libc::EDQUOT))),
            FsError::Stage(Box::new(local(libc::EIO))),
            FsError::Stage(Box::new(StageError::Abandoned)),
            FsError::Stage(Box::new(StageError::HeldBack { signal: 9 })),
            FsError::Unlinked { key: key() },
            FsError::Stage(Box::new(StageError::Encryption {
                key: key(),
                source: CseError::Plaintext,
            })),
            FsError::Encryption {
                key: key(),
                source: Box::new(CseError::Plaintext),
            },
            FsError::Encryption {
                key: key(),
                source: Box::new(CseError::Envelope(
                    crate::cse::envelope::EnvelopeError::Missing("x-amz-3"),
                )),
            },
            FsError::Stale {
                key: key(),
                source: Box::new(StoreError::Changed {
                    op,
                    key: key(),
                    expected_etag: key(),
                }),
            },
            FsError::Resized {
                key: key(),
                was: 1,
                now: 2,
            },
            FsError::Replaced { key: key() },
            FsError::Stopped,
            FsError::XattrNamespace,
            FsError::NoXattr,
            FsError::XattrsFull {
                key: key(),
                needed: 3000,
                alone: true,
            },
            FsError::XattrsFull {
                key: key(),
                needed: 3000,
                alone: false,
            },
            FsError::XattrsUnreadable { key: key() },
            FsError::ChangeNotKept { key: key() },
            FsError::UnknownIoctl(1),
            FsError::BufferTooSmall {
                needed: 2,
                given: 1,
            },
        ];
        all.extend(store.into_iter().map(FsError::from));
        all
    }

    /// The rows of the table under "## Errors": situation -> errno cell.
    fn error_table(doc: &str) -> Vec<(String, String)> {
        let section = &doc[doc.find("\n## Errors").expect("an Errors section")..];
        section
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2) // the header and its rule
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
                assert_eq!(cells.len(), 2, "two cells in {line:?}");
                (cells[0].trim().to_string(), cells[1].trim().to_string())
            })
            .collect()
    }

    const STOPPED_ROW: &str = "a file still open when a stopping volume's grace ran out, \
                               or a change asked for after that";

    #[test]
    fn the_error_table_in_semantics_md_says_what_errno_answers() {
        let table = error_table(include_str!("../../docs/SEMANTICS.md"));
        let mut used = std::collections::BTreeSet::new();
        for e in examples() {
            let row = documented_in(&e);
            let cell = table
                .iter()
                .find(|(situation, _)| situation == row)
                .map(|(_, cell)| cell)
                .unwrap_or_else(|| panic!("SEMANTICS.md has no row {row:?} (for {e:?})"));
            // The first errno the cell names is the one the application gets.
            let documented = match cell.split('`').nth(1).unwrap_or_default() {
                // The same number on Linux; tools and POSIX call it ENOTSUP.
                "ENOTSUP" => "EOPNOTSUPP",
                name => name,
            };
            let actual = format!("{:?}", nix::errno::Errno::from_raw(e.errno()));
            assert_eq!(documented, actual, "row {row:?} for {e:?}");
            used.insert(row);
        }
        for (situation, _) in &table {
            assert!(
                used.contains(situation.as_str()),
                "SEMANTICS.md's row {situation:?} documents no error s3vol returns"
            );
        }
    }
}
