//! The copies of objects this mount made that left the bytes a descriptor
//! reads somewhere else: a rename copies an object to its new key and deletes
//! the old one, and a change of mode, owner or time copies an object onto
//! itself, where S3 may give it an ETag of its own (a copy of a multipart
//! object always has one). A descriptor opened before, finding its version
//! gone, reads the copy, as it would read on on a local disk, rather than
//! failing as if another client had replaced or deleted the object.

use parking_lot::Mutex;

/// The copies remembered, most recent first: enough for every file a busy
/// volume has open.
const REMEMBERED: usize = 4096;

/// The most copies one after another that a read follows.
const MOST_IN_A_ROW: usize = 16;

/// A version of an object: its key and ETag.
pub type Version = (String, String);

#[derive(Debug)]
pub struct Copies {
    /// Version copied -> its copy.
    copies: Mutex<lru::LruCache<Version, Version>>,
}

impl Default for Copies {
    fn default() -> Self {
        Self {
            copies: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(REMEMBERED).expect("not zero"),
            )),
        }
    }
}

impl Copies {
    /// Version `etag` of `key` was copied to `to_key`, whose copy has ETag
    /// `to_etag`, with the same bytes.
    pub fn note(&self, key: &str, etag: &str, to_key: &str, to_etag: &str) {
        if (key, etag) != (to_key, to_etag) {
            self.copies.lock().put(
                (key.to_string(), etag.to_string()),
                (to_key.to_string(), to_etag.to_string()),
            );
        }
    }

    /// Where the bytes of version `etag` of `key` are now, if this mount
    /// copied them since: its last copy of them. Asked only once the version
    /// is found gone from its key: an object made there later with the same
    /// bytes has the same ETag, and is read as itself.
    pub fn latest(&self, key: &str, etag: &str) -> Option<Version> {
        let mut copies = self.copies.lock();
        let mut now = (key.to_string(), etag.to_string());
        let mut moved = false;
        for _ in 0..MOST_IN_A_ROW {
            match copies.get(&now) {
                Some(copy) => (now, moved) = (copy.clone(), true),
                None => break,
            }
        }
        moved.then_some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(key: &str, etag: &str) -> Version {
        (key.to_string(), etag.to_string())
    }

    #[test]
    fn a_version_copied_in_place_or_renamed_is_followed_to_its_last_copy() {
        let copies = Copies::default();
        assert_eq!(copies.latest("k", "a"), None);
        copies.note("k", "a", "k", "a");
        assert_eq!(copies.latest("k", "a"), None);
        // A change of mode, then a rename, then another change of mode.
        copies.note("k", "a-2", "k", "b");
        copies.note("k", "b", "moved", "b");
        copies.note("moved", "b", "moved", "c");
        assert_eq!(copies.latest("k", "a-2"), Some(version("moved", "c")));
        assert_eq!(copies.latest("k", "b"), Some(version("moved", "c")));
        assert_eq!(copies.latest("other", "a-2"), None);
        // A loop (a copy back to an earlier version) ends.
        copies.note("moved", "c", "k", "a-2");
        copies.latest("k", "b");
    }
}
