//! A file's mode, owner, modification and change times and extended
//! attributes, kept in its object's user metadata the way s3fs-fuse and rclone
//! keep them, so that a bucket written by either shows its files' modes and
//! times here, and the other way round.
//!
//! | header | written | read |
//! | --- | --- | --- |
//! | `x-amz-meta-mode` | `0` and the octal `st_mode`, file type included (`0100640`): s3fs reads it with C's base 0 (a leading 0 means octal), rclone as octal | s3fs's decimal (`33184`), rclone's octal without the 0 (`100640`), or either with a leading 0 |
//! | `x-amz-meta-uid`, `x-amz-meta-gid` | decimal | decimal |
//! | `x-amz-meta-mtime` | seconds since the epoch, with 9 digits of nanoseconds when there are any (`1557126489.987654321`), as s3fs writes and rclone's S3 backend reads | that, any number of fraction digits, or RFC 3339 |
//! | `x-amz-meta-ctime` | as `mtime`, as s3fs writes it | as `mtime` |
//! | `x-amz-meta-xattr` | s3fs's encoding (see [`super::xattrs`]) | the same |
//!
//! The two tools write the mode differently under one name: s3fs in decimal,
//! rclone in octal without a leading 0. Which one a value is follows from the
//! file type bits it must carry: an object's mode says "regular file" or
//! "symbolic link", a directory marker's says "directory", and for every mode
//! either tool writes only one reading gives a type that fits. A value that fits
//! no reading is ignored, and the mount's default shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::xattrs::{XATTR, Xattrs};
use crate::store::ObjectHeaders;

pub const MODE: &str = "mode";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const MTIME: &str = "mtime";
pub const CTIME: &str = "ctime";

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// Permission bits with setuid, setgid and sticky.
pub const PERM_BITS: u32 = 0o7777;

/// What a name is: a file (an object) or a directory (a key prefix, perhaps
/// with a marker object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
}

/// What an object's metadata says of the file it stands for; `None` where it
/// says nothing, and the mount's defaults show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Posix {
    /// Permission bits, setuid, setgid and sticky included.
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    /// The time of the last change of the file or of anything kept here.
    pub ctime: Option<SystemTime>,
    /// The extended attributes, every one of them (a change sets them all).
    pub xattrs: Option<Arc<Xattrs>>,
    /// The object is a symbolic link whose body is its target.
    pub symlink: bool,
}

impl Posix {
    /// What `user` metadata says of an object (a file's, or a directory's
    /// marker when `kind` is a directory).
    pub fn read(user: &BTreeMap<String, String>, kind: Kind) -> Posix {
        let (perm, symlink) = match user.get(MODE).and_then(|m| parse_mode(m, kind)) {
            Some(mode) => (Some((mode & PERM_BITS) as u16), mode & S_IFMT == S_IFLNK),
            None => (None, false),
        };
        Posix {
            perm,
            uid: user.get(UID).and_then(|v| v.trim().parse().ok()),
            gid: user.get(GID).and_then(|v| v.trim().parse().ok()),
            mtime: user.get(MTIME).and_then(|v| parse_time(v)),
            ctime: user.get(CTIME).and_then(|v| parse_time(v)),
            xattrs: Some(Arc::new(
                user.get(XATTR)
                    .map(|v| Xattrs::decode(v))
                    .unwrap_or_default(),
            )),
            symlink,
        }
    }

    /// Writes what is set into `user`, leaving every other entry as it is.
    pub fn write(&self, user: &mut BTreeMap<String, String>, kind: Kind) {
        if let Some(perm) = self.perm {
            let kind_bits = match (kind, self.symlink) {
                (Kind::Directory, _) => S_IFDIR,
                (Kind::File, true) => S_IFLNK,
                (Kind::File, false) => S_IFREG,
            };
            user.insert(MODE.into(), format!("0{:o}", kind_bits | u32::from(perm)));
        }
        if let Some(uid) = self.uid {
            user.insert(UID.into(), uid.to_string());
        }
        if let Some(gid) = self.gid {
            user.insert(GID.into(), gid.to_string());
        }
        if let Some(mtime) = self.mtime {
            user.insert(MTIME.into(), format_time(mtime));
        }
        if let Some(ctime) = self.ctime {
            user.insert(CTIME.into(), format_time(ctime));
        }
        if let Some(xattrs) = &self.xattrs {
            xattrs.write(user);
        }
    }

    /// The headers of an object of `kind` that carries these and nothing else.
    pub fn headers(&self, kind: Kind) -> ObjectHeaders {
        let mut headers = ObjectHeaders::default();
        self.write(&mut headers.user, kind);
        headers
    }

    /// These values, with those `newer` sets taking their place (and the
    /// extended attributes it set or removed set or removed).
    pub fn updated(&self, newer: &Posix) -> Posix {
        Posix {
            perm: newer.perm.or(self.perm),
            uid: newer.uid.or(self.uid),
            gid: newer.gid.or(self.gid),
            mtime: newer.mtime.or(self.mtime),
            ctime: newer.ctime.or(self.ctime),
            xattrs: match (&self.xattrs, &newer.xattrs) {
                (Some(these), Some(newer)) => Some(Arc::new(these.merged(newer))),
                (these, newer) => newer.clone().or_else(|| these.clone()),
            },
            symlink: self.symlink || newer.symlink,
        }
    }

    /// These values less what would run the file with other privileges: the
    /// set-ID bits of its mode and its file capability (what a write takes
    /// away, as on any Linux filesystem).
    pub fn without_privileges(&self) -> Posix {
        Posix {
            perm: self.perm.map(|perm| perm & !super::SETID_BITS),
            xattrs: self
                .xattrs
                .as_ref()
                .map(|xattrs| Arc::new(xattrs.without_privileges())),
            ..self.clone()
        }
    }

    /// These values less those `newer` sets (extended attributes included,
    /// as a whole): what of them `newer` leaves standing.
    pub fn without(&self, newer: &Posix) -> Posix {
        Posix {
            perm: self.perm.filter(|_| newer.perm.is_none()),
            uid: self.uid.filter(|_| newer.uid.is_none()),
            gid: self.gid.filter(|_| newer.gid.is_none()),
            mtime: self.mtime.filter(|_| newer.mtime.is_none()),
            ctime: self.ctime.filter(|_| newer.ctime.is_none()),
            xattrs: self.xattrs.clone().filter(|_| newer.xattrs.is_none()),
            symlink: self.symlink,
        }
    }
}

/// The full `st_mode` a `mode` value stands for on an object of `kind`.
fn parse_mode(text: &str, kind: Kind) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fits = |mode: &u32| match kind {
        Kind::Directory => mode & S_IFMT == S_IFDIR,
        Kind::File => matches!(mode & S_IFMT, S_IFREG | S_IFLNK),
    };
    let octal = u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o177777);
    if text.len() > 1 && text.starts_with('0') {
        // Octal for both tools; permission bits alone are taken as they are.
        return octal
            .filter(|m| fits(m) || m & S_IFMT == 0)
            .map(|m| with_kind(m, kind));
    }
    let decimal = text.parse::<u32>().ok().filter(|m| *m <= 0o177777);
    if let Some(mode) = decimal.into_iter().chain(octal).find(fits) {
        return Some(mode);
    }
    // Permission bits alone, in decimal as s3fs reads them.
    decimal
        .filter(|m| m & S_IFMT == 0)
        .map(|m| with_kind(m, kind))
}

/// `mode` with the type bits of `kind` when it has none.
fn with_kind(mode: u32, kind: Kind) -> u32 {
    if mode & S_IFMT != 0 {
        return mode;
    }
    mode | match kind {
        Kind::Directory => S_IFDIR,
        Kind::File => S_IFREG,
    }
}

/// Seconds since the epoch with an optional decimal fraction, or RFC 3339.
fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
    {
        let secs: u64 = secs.parse().ok()?;
        // The first nine digits are the nanoseconds; more are below a nanosecond.
        let digits = &fraction[..fraction.len().min(9)];
        let nanos = if digits.is_empty() {
            0
        } else {
            digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
        };
        return UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
    }
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(parsed.into())
}

/// `t` as s3fs writes it: seconds, and nine digits of nanoseconds if any.
pub fn format_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match since.subsec_nanos() {
        0 => since.as_secs().to_string(),
        nanos => format!("{}.{nanos:09}", since.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    /// What s3fs-fuse 1.90 wrote for `echo hi > f; chmod 640 f; touch -d
    /// "2020-01-02 03:04:05.123456789" f; chown 1234:5678 f`, `ln -s f link` and
    /// `mkdir d; chmod 2750 d; touch -d 2021-01-01 d`.
    #[test]
    fn what_s3fs_writes_is_read() {
        let file = user(&[
            ("atime", "1577934245.123456789"),
            ("ctime", "1796083096"),
            ("gid", "5678"),
            ("mode", "33184"),
            ("mtime", "1577934245.123456789"),
            ("uid", "1234"),
        ]);
        assert_eq!(
            Posix::read(&file, Kind::File),
            Posix {
                perm: Some(0o640),
                uid: Some(1234),
                gid: Some(5678),
                mtime: Some(at(1577934245, 123456789)),
                ctime: Some(at(1796083096, 0)),
                xattrs: Some(Arc::default()),
                symlink: false,
            }
        );
        let link = user(&[("mode", "41471"), ("mtime", "1796083096")]);
        let read = Posix::read(&link, Kind::File);
        assert!(read.symlink);
        assert_eq!(read.perm, Some(0o777));
        let dir = user(&[("mode", "17896"), ("mtime", "1609459200")]);
        let read = Posix::read(&dir, Kind::Directory);
        assert_eq!(read.perm, Some(0o2750));
        assert_eq!(read.mtime, Some(at(1609459200, 0)));
    }

    /// What rclone 1.60 wrote for `rclone copy --metadata` of a local file
    /// (mode 604, owner 42:43), and for a plain `rclone copy`.
    #[test]
    fn what_rclone_writes_is_read() {
        let file = user(&[
            ("atime", "2019-05-06T07:08:09.987654321Z"),
            ("btime", "2026-11-30T23:58:31.304329088Z"),
            ("gid", "43"),
            ("mode", "100604"),
            ("mtime", "1557126489.987654321"),
            ("uid", "42"),
        ]);
        assert_eq!(
            Posix::read(&file, Kind::File),
            Posix {
                perm: Some(0o604),
                uid: Some(42),
                gid: Some(43),
                mtime: Some(at(1557126489, 987654321)),
                ctime: None,
                xattrs: Some(Arc::default()),
                symlink: false,
            }
        );
        let plain = user(&[("mtime", "1557126489.5")]);
        assert_eq!(
            Posix::read(&plain, Kind::File).mtime,
            Some(at(1557126489, 500_000_000))
        );
        // A directory rclone describes (mode 42775: setgid) is not taken for the
        // symbolic link the same digits make in decimal.
        let dir = user(&[("mode", "42775")]);
        assert_eq!(Posix::read(&dir, Kind::Directory).perm, Some(0o2775));
    }

    #[test]
    fn every_mode_either_tool_writes_reads_back_one_way() {
        for (kind, kind_bits) in [
            (Kind::File, S_IFREG),
            (Kind::File, S_IFLNK),
            (Kind::Directory, S_IFDIR),
        ] {
            for perm in 0..=PERM_BITS {
                let mode = kind_bits | perm;
                for text in [mode.to_string(), format!("{mode:o}"), format!("0{mode:o}")] {
                    assert_eq!(parse_mode(&text, kind), Some(mode), "{text}");
                }
            }
        }
    }

    #[test]
    fn what_s3vol_writes_both_tools_read_alike() {
        let posix = Posix {
            perm: Some(0o640),
            uid: Some(1000),
            gid: Some(100),
            mtime: Some(at(1557126489, 987654321)),
            ctime: Some(at(1557126490, 5)),
            xattrs: Some(Arc::new(Xattrs::default().with("user.a", b"1"))),
            symlink: false,
        };
        let mut written = user(&[("atime", "1"), ("other", "kept")]);
        posix.write(&mut written, Kind::File);
        assert_eq!(written["mode"], "0100640");
        assert_eq!(written["uid"], "1000");
        assert_eq!(written["gid"], "100");
        assert_eq!(written["mtime"], "1557126489.987654321");
        assert_eq!(written["ctime"], "1557126490.000000005");
        assert_eq!(written["xattr"], "%7B%22user.a%22%3A%22MQ%3D%3D%22%7D");
        assert_eq!(written["other"], "kept");
        assert_eq!(written["atime"], "1");
        assert_eq!(Posix::read(&written, Kind::File), posix);
        let mut whole = BTreeMap::new();
        let posix = Posix {
            mtime: Some(at(1557126489, 0)),
            ..Posix::default()
        };
        posix.write(&mut whole, Kind::Directory);
        assert_eq!(whole, user(&[("mtime", "1557126489")]));
        let link = Posix {
            perm: Some(0o777),
            symlink: true,
            ..Posix::default()
        };
        let mut written = BTreeMap::new();
        link.write(&mut written, Kind::File);
        assert_eq!(written["mode"], "0120777");
    }

    #[test]
    fn values_that_fit_nothing_are_ignored() {
        for mode in ["", "abc", "-1", "0x1a4", "99999999", "16877"] {
            // 16877 is a directory's mode: not a file's.
            assert_eq!(parse_mode(mode, Kind::File), None, "{mode}");
        }
        assert_eq!(parse_mode("33188", Kind::Directory), None);
        // Permission bits alone, as s3sync and old tools write them.
        assert_eq!(parse_mode("420", Kind::File), Some(0o100644));
        assert_eq!(parse_mode("0644", Kind::File), Some(0o100644));
        let odd = user(&[("uid", "x"), ("gid", "-5"), ("mtime", "yesterday")]);
        assert_eq!(
            Posix::read(&odd, Kind::File),
            Posix {
                xattrs: Some(Arc::default()),
                ..Posix::default()
            }
        );
        assert_eq!(
            parse_time("2019-05-06T08:08:09.5+01:00"),
            Some(at(1557126489, 500_000_000))
        );
        assert_eq!(parse_time("1.1234567891"), Some(at(1, 123456789)));
    }
}
