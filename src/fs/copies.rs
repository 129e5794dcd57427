//! The copies in place this mount made: a change of mode, owner or time copies
//! an object onto itself, with the same bytes, and S3 may give the copy an
//! ETag of its own (a copy of a multipart object always has one). A read
//! pinned to the ETag before the copy follows it, rather than failing as if
//! another client had replaced the object.

use parking_lot::Mutex;

/// The copies remembered, most recent first: enough for every file a busy
/// volume has open.
const REMEMBERED: usize = 4096;

/// The most copies one after another that a read follows.
const MOST_IN_A_ROW: usize = 16;

#[derive(Debug)]
pub struct CopiesInPlace {
    /// (key, ETag before) -> ETag after.
    copies: Mutex<lru::LruCache<(String, String), String>>,
}

impl Default for CopiesInPlace {
    fn default() -> Self {
        Self {
            copies: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(REMEMBERED).expect("not zero"),
            )),
        }
    }
}

impl CopiesInPlace {
    /// `key` was copied onto itself: version `before` is now `after`.
    pub fn note(&self, key: &str, before: &str, after: &str) {
        if before != after {
            self.copies
                .lock()
                .put((key.to_string(), before.to_string()), after.to_string());
        }
    }

    /// The ETag that version `etag` of `key` has now, if this mount copied it
    /// in place since.
    pub fn now(&self, key: &str, etag: &str) -> Option<String> {
        let mut copies = self.copies.lock();
        let mut now: Option<String> = None;
        for _ in 0..MOST_IN_A_ROW {
            let before = now.as_deref().unwrap_or(etag).to_string();
            match copies.get(&(key.to_string(), before)) {
                Some(after) => now = Some(after.clone()),
                None => break,
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_copied_in_place_is_followed_to_its_latest_copy() {
        let copies = CopiesInPlace::default();
        assert_eq!(copies.now("k", "\"a\""), None);
        copies.note("k", "\"a\"", "\"a\"");
        assert_eq!(copies.now("k", "\"a\""), None, "a copy that kept its ETag");
        copies.note("k", "\"a-2\"", "\"b\"");
        copies.note("k", "\"b\"", "\"c\"");
        assert_eq!(copies.now("k", "\"a-2\"").as_deref(), Some("\"c\""));
        assert_eq!(copies.now("k", "\"b\"").as_deref(), Some("\"c\""));
        assert_eq!(copies.now("other", "\"a-2\""), None);
        // A loop (a copy back to an earlier ETag) ends.
        copies.note("k", "\"c\"", "\"a-2\"");
        assert!(copies.now("k", "\"b\"").is_some());
    }
}
