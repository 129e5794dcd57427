//! What a volume's daemon answers through ioctls on the volume's own files: its
//! report (on the root), what S3 holds for a file, and presigned URLs.
//!
//! An ioctl needs no socket to find (it works wherever the mount is visible, in
//! containers too) and reaches the daemon only through a descriptor the caller
//! could open: the kernel has already checked the file's permissions for the
//! caller, as for any open. (An extended attribute would be the obvious channel,
//! but serving any attribute makes the kernel send `ls -l`'s two attribute
//! lookups per file to the daemon, which tripled the time of an `ls -l` of
//! 10,000 files.)
//!
//! Every request carries a buffer of [`BUF`] bytes; the answer is JSON, and the
//! ioctl returns its length. [`URL`] also reads its question from the buffer:
//! [`UrlRequest`] as JSON.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::{Value, json};

use crate::store::UrlMethod;

/// The size of every request's buffer: the largest answer.
pub const BUF: usize = 8192;

/// The ioctls' type: `'S'`.
const TYPE: u8 = b'S';

/// The report, on the volume's root, as versions before [`REPORT`] asked for
/// it: `_IOR('S', 1, [u8; BUF])`. Answered while the report fits.
pub const STATS: u32 = nix::request_code_read!(TYPE, 1, BUF) as u32;

/// The room for [`REPORT`]'s answer: the most an ioctl number can name.
pub const REPORT_BUF: usize = (1 << 14) - 1;

/// `s3vol stats`, the metrics of the CSI driver and its volume health, on the
/// volume's root: `_IOR('S', 4, [u8; REPORT_BUF])`.
pub const REPORT: u32 = nix::request_code_read!(TYPE, 4, REPORT_BUF) as u32;

/// `s3vol info`, on a file open for reading: `_IOR('S', 2, [u8; BUF])`.
pub const INFO: u32 = nix::request_code_read!(TYPE, 2, BUF) as u32;

/// `s3vol url`, on a file open for reading (a GET URL) or writing (a PUT URL):
/// `_IOWR('S', 3, [u8; BUF])`.
pub const URL: u32 = nix::request_code_readwrite!(TYPE, 3, BUF) as u32;

/// `s3vol restart`, on the volume's root: `_IO('S', 5)`. Replaces the
/// volume's worker with the installed binary.
pub const RESTART: u32 = nix::request_code_none!(TYPE, 5) as u32;

nix::ioctl_none!(restart_ioctl, TYPE, 5);

/// Asks the daemon of the volume whose root `root` is open to replace its
/// worker.
pub fn restart(root: &File) -> nix::Result<()> {
    // SAFETY: the request carries no data; the descriptor is open.
    unsafe { restart_ioctl(root.as_raw_fd()) }.map(|_| ())
}

nix::ioctl_read_buf!(stats_ioctl, TYPE, 1, u8);
nix::ioctl_read_buf!(report_ioctl, TYPE, 4, u8);
nix::ioctl_read_buf!(info_ioctl, TYPE, 2, u8);
nix::ioctl_readwrite_buf!(url_ioctl, TYPE, 3, u8);

/// What `s3vol url` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlRequest {
    pub method: UrlMethod,
    pub valid_for: Duration,
}

impl UrlRequest {
    fn to_json(self) -> Value {
        json!({
            "method": self.method.as_str(),
            "valid_for_secs": self.valid_for.as_secs(),
        })
    }

    /// The request in a URL ioctl's buffer (JSON, then zeros); `None` when it
    /// is not one.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let value: Value = serde_json::from_slice(&buf[..end]).ok()?;
        let method = match value.get("method")?.as_str()? {
            "GET" => UrlMethod::Get,
            "PUT" => UrlMethod::Put,
            _ => return None,
        };
        let valid_for = Duration::from_secs(value.get("valid_for_secs")?.as_u64()?);
        Some(Self { method, valid_for })
    }
}

/// Asks the daemon: `request` (one of [`STATS`], [`REPORT`], [`INFO`], [`URL`])
/// on `file`, which must be open on a file of an s3vol volume (the caller checks
/// that: on another filesystem the number may mean something else). Returns the
/// answer.
pub fn ask(file: &File, request: u32, url: Option<UrlRequest>) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; if request == REPORT { REPORT_BUF } else { BUF }];
    let fd = file.as_raw_fd();
    // SAFETY: each request's size field is `buf.len()` (BUF, or REPORT_BUF for
    // REPORT), the kernel copies at most that many bytes each way, and the
    // descriptor stays open for the call.
    let len = unsafe {
        match request {
            STATS => stats_ioctl(fd, &mut buf),
            REPORT => report_ioctl(fd, &mut buf),
            INFO => info_ioctl(fd, &mut buf),
            URL => {
                let question = url.ok_or(nix::errno::Errno::EINVAL)?.to_json().to_string();
                buf[..question.len()].copy_from_slice(question.as_bytes());
                url_ioctl(fd, &mut buf)
            }
            _ => return Err(nix::errno::Errno::ENOTTY),
        }
    }?;
    buf.truncate(len.max(0) as usize);
    Ok(buf)
}

/// The root's extended attribute that holds the volume's report. The kernel
/// lets only root read `trusted.` attributes; reading one needs no open of the
/// root, and so no listing of it from S3 (an opendir lists the directory): the
/// CSI driver asks this way, and `s3vol stats` when run by root.
pub const REPORT_XATTR: &str = "trusted.s3vol.report";

/// The most the report takes as an attribute (the kernel's bound on a value).
pub const REPORT_XATTR_MAX: usize = 65536;

/// The report of the volume mounted at `root`, through [`REPORT_XATTR`].
/// ENODATA from a daemon of a version that does not serve it (or for a caller
/// who is not root).
pub fn report_attribute(root: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(REPORT_XATTR).expect("no NUL");
    let mut buf = vec![0u8; REPORT_XATTR_MAX];
    // SAFETY: both strings are NUL-terminated and live for the call; the kernel
    // writes at most `buf.len()` bytes into `buf`.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// The report of the volume whose root `root` is open on: asked with
/// [`REPORT`], and with [`STATS`] of a daemon of a version that does not know
/// it.
pub fn report(root: &File) -> nix::Result<Vec<u8>> {
    use nix::errno::Errno;
    match ask(root, REPORT, None) {
        Err(Errno::ENOTTY | Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => {
            ask(root, STATS, None)
        }
        answer => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_are_the_kernel_encoding_of_ior_and_iowr() {
        // Direction in the top two bits (2: read, 3: read and write), then the
        // size, the type and the number. s3vol binaries of other versions ask
        // with these numbers.
        let s = u32::from(b'S') << 8;
        assert_eq!(STATS, (2 << 30) | (8192 << 16) | s | 1);
        assert_eq!(REPORT, (2 << 30) | (16383 << 16) | s | 4);
        assert_eq!(INFO, (2 << 30) | (8192 << 16) | s | 2);
        assert_eq!(URL, (3 << 30) | (8192 << 16) | s | 3);
    }

    #[test]
    fn a_url_request_reads_back_and_junk_is_none() {
        let request = UrlRequest {
            method: UrlMethod::Put,
            valid_for: Duration::from_secs(90),
        };
        let mut buf = vec![0u8; BUF];
        let text = request.to_json().to_string();
        buf[..text.len()].copy_from_slice(text.as_bytes());
        assert_eq!(UrlRequest::parse(&buf), Some(request));
        for junk in [
            &b""[..],
            b"{}",
            b"{\"method\":\"DELETE\",\"valid_for_secs\":1}",
            b"\xff",
        ] {
            assert_eq!(UrlRequest::parse(junk), None);
        }
    }
}
