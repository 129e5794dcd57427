//! A string that never prints: secret keys, session tokens, external IDs.

use std::fmt;
use std::path::Path;

/// Holds a secret. `Debug` and `Display` print `***`, so a secret that ends up in a
/// log line, an error message or a `{:?}` of a larger struct stays hidden; the value
/// is reachable only through [`Secret::expose`], which is easy to search for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets serialize as they are, for one use only: the configuration a
/// volume's supervisor hands its worker through an anonymous in-memory file,
/// which the worker reads as the command line was read.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The most a secret file may hold: an external ID is at most 1,224 characters.
const MAX_SECRET_FILE: u64 = 4096;

/// Reads the secret kept in the file at `path` (a trailing newline ignored).
/// The file must be the secret's owner's alone: it belongs to the user running
/// s3vol or to root, and neither its group nor others may open it. Otherwise it
/// is refused, with the `chown` or `chmod` that fixes it; `option` names the
/// option that gave the path.
pub fn read_secret_file(path: &Path, option: &str) -> Result<Secret, String> {
    read_secret_file_up_to(path, option, MAX_SECRET_FILE)
}

/// [`read_secret_file`] for a file of at most `max` bytes.
pub(super) fn read_secret_file_up_to(
    path: &Path,
    option: &str,
    max: u64,
) -> Result<Secret, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    // Without waiting: a FIFO in its place must not hold the mount.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {option} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {option} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{option} {shown} is not a regular file; put the secret in a file of its own"
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{option} {shown} belongs to uid {}, not to the user running s3vol (uid {me}) \
             or root, so that user could change the secret or read it: give it to this \
             user with `chown {me} {shown}` and `chmod 600 {shown}`",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{option} {shown} may be opened by other users (mode {:04o}); it holds a \
             secret: make it private with `chmod 600 {shown}`",
            meta.mode() & 0o7777
        ));
    }
    // A secret is short; a file of any size is not read whole into memory.
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {option} {shown}: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!(
            "{option} {shown} is larger than {max} bytes; it should hold the secret alone"
        ));
    }
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Options {
        role: String,
        external_id: Secret,
    }

    #[test]
    fn secrets_never_format() {
        let options = Options {
            role: "arn:aws:iam::111122223333:role/r".into(),
            external_id: Secret::new("very-secret-id"),
        };
        let shown = format!("{options:?} {options:#?} {}", options.external_id);
        assert!(!shown.contains("very-secret-id"), "{shown}");
        assert!(shown.contains("***"));
        assert_eq!(options.external_id.expose(), "very-secret-id");
    }

    #[test]
    fn a_secret_file_must_be_its_owner_s_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, "ext-123\n").unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o600);
        assert_eq!(read_secret_file(&path, "--x").unwrap().expose(), "ext-123");
        chmod(0o400);
        assert!(read_secret_file(&path, "--x").is_ok());
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            chmod(mode);
            let error = read_secret_file(&path, "--x").unwrap_err();
            assert!(error.contains("chmod 600"), "{mode:o}: {error}");
            assert!(!error.contains("ext-123"), "{error}");
        }
        chmod(0o600);
        if nix::unistd::geteuid().is_root() {
            // Another user's file: they could change the secret.
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let error = read_secret_file(&path, "--x").unwrap_err();
            assert!(error.contains("chown 0"), "{error}");
        }
        let missing = read_secret_file(&dir.path().join("none"), "--x").unwrap_err();
        assert!(missing.contains("cannot read --x"), "{missing}");
    }
}
