//! Reading /proc/self/mountinfo: what is mounted where.

use std::path::Path;

/// The filesystem type mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    fields(path, |fields| {
        let dash = fields.iter().position(|f| *f == "-")?;
        Some(fields.get(dash + 1).unwrap_or(&"?").to_string())
    })
}

/// The device number (`MAJOR:MINOR`) of the filesystem mounted at `path`. Read
/// from mountinfo, because a stat() of a FUSE mountpoint would wait on its daemon.
pub fn device(path: &Path) -> Option<String> {
    fields(path, |f| f.get(2).map(|d| d.to_string()))
}

/// The filesystem type of the mount whose device is `major:minor` (as `stat`
/// gives it for any file on the mount).
pub fn fstype_of_device(major: u64, minor: u64) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = format!("{major}:{minor}");
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(2) == Some(&wanted.as_str()))
            .then(|| fields.get(dash + 1).unwrap_or(&"?").to_string())
    })
}

/// Applies `pick` to the fields of the last mountinfo line for `path` (the topmost
/// mount there).
fn fields<T>(path: &Path, pick: impl Fn(&[&str]) -> Option<T>) -> Option<T> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (unescape(fields.get(4)?) == wanted)
            .then(|| pick(&fields))
            .flatten()
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(octal, 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/mnt/plain"), "/mnt/plain");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }

    #[test]
    fn the_root_filesystem_is_a_mount_point() {
        assert!(mounted_at(Path::new("/")).is_some());
        assert!(mounted_at(Path::new("/no/such/dir")).is_none());
    }
}
