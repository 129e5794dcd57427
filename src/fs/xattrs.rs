//! A file's extended attributes, kept in its object's user metadata the way
//! s3fs-fuse keeps them, so that either reads what the other wrote: one entry,
//! `x-amz-meta-xattr`, holding a JSON object of every name and its value in
//! base64, percent-encoded (`{"user.tag":"aGk="}` is stored as
//! `%7B%22user.tag%22%3A%22aGk%3D%22%7D`).
//!
//! S3 bounds an object's user metadata to 2 KB, names and values together, so
//! a set that would not fit beside the mode, owner and times is refused before
//! it is kept (see [`metadata_bytes`]).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The user metadata entry the attributes are kept in.
pub const XATTR: &str = "xattr";

/// The namespace applications may use; the only one shown.
pub const USER_NAMESPACE: &str = "user.";

/// S3's bound on an object's user metadata.
pub const METADATA_LIMIT: usize = 2048;

/// What s3fs leaves unencoded: letters, digits and `/.-_~`.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// The file capability, which a write takes away.
const CAPABILITY: &str = "security.capability";

/// The attributes one object keeps, every namespace's (another tool may have
/// stored `security.` or `trusted.` ones: they are kept, never shown).
#[derive(Clone, Default)]
pub struct Xattrs {
    values: BTreeMap<String, Vec<u8>>,
    /// The names set (`Some`) or removed (`None`) here since the values were
    /// read: what a change does to whatever set it is applied to.
    edits: BTreeMap<String, Option<Vec<u8>>>,
    /// Entries of the stored value that could not be read: a set rewritten
    /// from this one would lose them, so none is.
    unreadable: usize,
    /// The stored value, kept as it was when not all of it could be read.
    stored: Option<String>,
}

/// Two sets are equal when they hold the same: how each came to is no part
/// of it.
impl PartialEq for Xattrs {
    fn eq(&self, other: &Self) -> bool {
        (&self.values, self.unreadable, &self.stored)
            == (&other.values, other.unreadable, &other.stored)
    }
}

impl Eq for Xattrs {}

/// Names and sizes only: values may be anything an application keeps.
impl std::fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self
            .values
            .iter()
            .map(|(name, value)| format!("{name} ({} bytes)", value.len()))
            .collect();
        let edited: Vec<&String> = self.edits.keys().collect();
        f.debug_struct("Xattrs")
            .field("values", &sizes)
            .field("edited", &edited)
            .field("unreadable", &self.unreadable)
            .finish()
    }
}

impl Xattrs {
    /// The attributes an `x-amz-meta-xattr` value holds.
    pub fn decode(stored: &str) -> Xattrs {
        let mut xattrs = Xattrs::default();
        match percent_decode_str(stored.trim()).decode_utf8() {
            Err(_) => xattrs.unreadable = 1,
            Ok(json) => match (json.find('{'), json.rfind('}')) {
                (Some(start), Some(end)) if start < end => {
                    let pairs = json[start + 1..end].split(',');
                    for pair in pairs.filter(|p| !p.trim().is_empty()) {
                        match decode_pair(pair) {
                            Some((name, value)) => {
                                xattrs.values.insert(name, value);
                            }
                            None => xattrs.unreadable += 1,
                        }
                    }
                }
                _ => xattrs.unreadable = usize::from(!json.trim().is_empty()),
            },
        }
        if xattrs.is_unreadable() {
            xattrs.stored = Some(stored.to_string());
        }
        xattrs
    }

    /// The `x-amz-meta-xattr` value that holds these attributes.
    pub fn encode(&self) -> String {
        let pairs: Vec<String> = self
            .values
            .iter()
            .map(|(name, value)| format!("\"{name}\":\"{}\"", STANDARD.encode(value)))
            .collect();
        let json = format!("{{{}}}", pairs.join(","));
        utf8_percent_encode(&json, KEPT).to_string()
    }

    /// Whether the stored value had entries that could not be read.
    pub fn is_unreadable(&self) -> bool {
        self.unreadable > 0
    }

    /// Whether names were set or removed here since the values were read.
    pub fn is_edited(&self) -> bool {
        !self.edits.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of `name`, if it is a `user.` attribute that is set.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        name.starts_with(USER_NAMESPACE)
            .then(|| self.values.get(name))
            .flatten()
            .map(Vec::as_slice)
    }

    /// The names shown: the `user.` ones that can be asked for (another tool
    /// may have stored names no application could ask for by name).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|name| check_name(name).is_ok())
    }

    /// These attributes with `name` set to `value`.
    pub fn with(&self, name: &str, value: &[u8]) -> Xattrs {
        self.edited(name, Some(value.to_vec()))
    }

    /// These attributes without `name`.
    pub fn without(&self, name: &str) -> Xattrs {
        self.edited(name, None)
    }

    fn edited(&self, name: &str, value: Option<Vec<u8>>) -> Xattrs {
        let mut changed = self.clone();
        changed.edit(name, value);
        changed
    }

    fn edit(&mut self, name: &str, value: Option<Vec<u8>>) {
        match &value {
            Some(value) => self.values.insert(name.to_string(), value.clone()),
            None => self.values.remove(name),
        };
        self.edits.insert(name.to_string(), value);
    }

    /// These attributes as a write leaves them: without the file capability
    /// (as Linux takes it away when a file is written).
    pub fn without_privileges(&self) -> Xattrs {
        match self.values.contains_key(CAPABILITY) {
            true => self.without(CAPABILITY),
            false => self.clone(),
        }
    }

    /// `newer` made on these: its edits applied to these values, or, when it
    /// has none (a set read whole), `newer` itself.
    pub fn merged(&self, newer: &Xattrs) -> Xattrs {
        if !newer.is_edited() {
            return newer.clone();
        }
        let mut merged = self.clone();
        for (name, value) in &newer.edits {
            merged.edit(name, value.clone());
        }
        merged
    }

    /// Writes these attributes into `user`: the entry, or none when there are
    /// none. A set with unreadable entries leaves what is stored as it is.
    pub fn write(&self, user: &mut BTreeMap<String, String>) {
        if let Some(stored) = self.stored.as_ref().filter(|_| self.is_unreadable()) {
            user.insert(XATTR.to_string(), stored.clone());
            return;
        }
        match self.is_empty() {
            true => user.remove(XATTR),
            false => user.insert(XATTR.to_string(), self.encode()),
        };
    }
}

/// Why a name cannot be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadName {
    /// Not in the `user.` namespace.
    Namespace,
    /// Empty after `user.`, or holding `"`, `,` or `:`, which s3fs's reading
    /// of the stored value splits on.
    Unreadable,
}

/// Whether `name` is one an application may set here.
pub fn check_name(name: &str) -> Result<(), BadName> {
    let Some(rest) = name.strip_prefix(USER_NAMESPACE) else {
        return Err(BadName::Namespace);
    };
    if rest.is_empty() || rest.contains(['"', ',', ':']) || rest.chars().any(char::is_control) {
        return Err(BadName::Unreadable);
    }
    Ok(())
}

/// `"name":"base64"`, decoded.
fn decode_pair(pair: &str) -> Option<(String, Vec<u8>)> {
    let (name, value) = pair.split_once(':')?;
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"')?.strip_suffix('"').map(str::to_string)
    };
    let (name, value) = (unquote(name)?, unquote(value)?);
    if name.is_empty() {
        return None;
    }
    let value = STANDARD
        .decode(&value)
        .or_else(|_| STANDARD_NO_PAD.decode(&value))
        .ok()?;
    Some((name, value))
}

/// The size S3 counts of user metadata `user`, counted with each header's
/// `x-amz-meta-` prefix so as never to be below S3's own count.
pub fn metadata_bytes(user: &BTreeMap<String, String>) -> usize {
    user.iter()
        .map(|(key, value)| "x-amz-meta-".len() + key.len() + value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What s3fs-fuse 1.90 stored for `setfattr -n user.tag -v by-s3fs f`.
    const BY_S3FS: &str = "%7B%22user.tag%22%3A%22YnktczNmcw%3D%3D%22%7D";

    #[test]
    fn what_s3fs_writes_reads_back_and_is_written_alike() {
        let xattrs = Xattrs::decode(BY_S3FS);
        assert_eq!(xattrs.get("user.tag"), Some(&b"by-s3fs"[..]));
        assert_eq!(xattrs.names().collect::<Vec<_>>(), ["user.tag"]);
        assert!(!xattrs.is_unreadable());
        assert_eq!(xattrs.encode(), BY_S3FS);
        // An empty value is an empty string.
        let empty = xattrs.with("user.empty", b"");
        assert!(empty.encode().contains("%22user.empty%22%3A%22%22"));
        assert_eq!(
            Xattrs::decode(&empty.encode()).get("user.empty"),
            Some(&b""[..])
        );
    }

    #[test]
    fn any_bytes_round_trip() {
        let value: Vec<u8> = (0..=255).collect();
        let xattrs = Xattrs::default()
            .with("user.bin", &value)
            .with("user.ünï/cödé", b"x");
        let back = Xattrs::decode(&xattrs.encode());
        assert_eq!(back, xattrs);
        assert!(
            xattrs
                .encode()
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"')
        );
        assert_eq!(back.without("user.bin").names().count(), 1);
    }

    #[test]
    fn other_namespaces_are_kept_and_never_shown() {
        let stored = Xattrs::default()
            .with("security.capability", b"\x01\0\0\x02")
            .with("trusted.x", b"t")
            .with("user.a", b"a")
            .encode();
        let xattrs = Xattrs::decode(&stored);
        assert_eq!(xattrs.names().collect::<Vec<_>>(), ["user.a"]);
        assert_eq!(xattrs.get("security.capability"), None);
        assert_eq!(xattrs.get("trusted.x"), None);
        // Rewritten, they stay; a write takes the capability away.
        assert_eq!(
            Xattrs::decode(&xattrs.with("user.b", b"b").encode())
                .values
                .len(),
            4
        );
        let written = xattrs.without_privileges();
        assert_eq!(written.get("user.a"), Some(&b"a"[..]));
        assert!(!written.encode().contains("security.capability"));
        assert!(written.values.contains_key("trusted.x"));
    }

    #[test]
    fn damaged_values_are_marked_and_never_rewritten() {
        for stored in ["%7B%22user.a%22%3A%22%21%21%21%22%7D", "garbage", "%ff%fe"] {
            let xattrs = Xattrs::decode(stored);
            assert!(xattrs.is_unreadable(), "{stored}");
            let mut user = BTreeMap::from([(XATTR.to_string(), stored.to_string())]);
            xattrs.with("user.b", b"b").write(&mut user);
            assert_eq!(user[XATTR], stored);
        }
        // Into a fresh set of headers (an upload), as it was.
        let mut fresh = BTreeMap::new();
        Xattrs::decode("garbage").write(&mut fresh);
        assert_eq!(fresh[XATTR], "garbage");
        // One bad pair among good ones: the good ones show.
        let mixed = Xattrs::decode("{\"user.a\":\"YQ==\",\"user.b\"}");
        assert_eq!(mixed.get("user.a"), Some(&b"a"[..]));
        assert!(mixed.is_unreadable());
        assert!(!Xattrs::decode("").is_unreadable());
        assert!(!Xattrs::decode("%7B%7D").is_unreadable());
    }

    #[test]
    fn a_change_applies_its_own_edits_to_whatever_set_it_meets() {
        let read = Xattrs::decode(&Xattrs::default().with("user.a", b"1").encode());
        let change = read.with("user.b", b"2").without("user.a");
        // Another client set user.c meanwhile: the change keeps it.
        let now = Xattrs::decode(&read.with("user.c", b"3").encode());
        let merged = now.merged(&change);
        assert_eq!(merged.names().collect::<Vec<_>>(), ["user.b", "user.c"]);
        // A set read whole replaces.
        assert_eq!(change.merged(&now), now);
        // Values never reach a log.
        assert!(!format!("{change:?}").contains('2'));
        assert!(format!("{change:?}").contains("user.b (1 bytes)"));
        // Names no application could ask for are not listed.
        let odd = Xattrs::decode(&Xattrs::default().with("user.a\nb", b"x").encode());
        assert_eq!(odd.names().count(), 0);
    }

    #[test]
    fn the_last_one_removed_removes_the_entry() {
        let mut user = BTreeMap::from([(XATTR.to_string(), BY_S3FS.to_string())]);
        Xattrs::decode(BY_S3FS).without("user.tag").write(&mut user);
        assert!(user.is_empty());
    }

    #[test]
    fn names_s3fs_could_not_read_back_are_refused() {
        assert_eq!(check_name("user.ok.name-1"), Ok(()));
        for name in [
            "security.selinux",
            "trusted.a",
            "system.posix_acl_access",
            "usera",
        ] {
            assert_eq!(check_name(name), Err(BadName::Namespace), "{name}");
        }
        for name in ["user.", "user.a:b", "user.a,b", "user.\"", "user.a\nb"] {
            assert_eq!(check_name(name), Err(BadName::Unreadable), "{name}");
        }
    }

    #[test]
    fn metadata_is_counted_with_its_header_names() {
        let user = BTreeMap::from([("mode".to_string(), "0100644".to_string())]);
        assert_eq!(metadata_bytes(&user), 11 + 4 + 7);
    }
}
