//! Reading one encrypted object: ranges decrypted as they arrive, and the tag
//! checked once the stretches fetched cover the whole object.
//!
//! A handle's reads fetch stretches of ciphertext (read-ahead parts, cache
//! blocks), concurrently and so out of order. Each is decrypted on its own and
//! its hash kept; the hashes are combined in order from the start of the
//! object, and once they reach its end, with the tag fetched along with the
//! last stretch, the tag is checked. A sequential read of the whole object is
//! therefore authenticated by the time its last bytes are returned: a forged
//! object fails that read, and every later one, with EIO. Bytes read before
//! were decrypted unauthenticated, as those of any random read are
//! (docs/SECURITY.md says what that guarantees).

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use tracing::error;

use super::envelope::ContentKey;
use super::gcm::{Piece, TAG_LEN, Tagger};

/// Hashes of stretches that came before the ones they follow: more than this,
/// and the handle gives up checking (a reader jumping about is not reading the
/// object whole).
const MAX_WAITING: usize = 1024;

/// Where a handle's check of the object's tag stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not all of the object has been fetched in checkable stretches yet.
    Pending,
    /// The stretches fetched do not chain from the start (a read began
    /// mid-object at an offset no stretch boundary shares): not checked.
    Unchecked,
    Authentic,
    Forged,
}

struct Check {
    tagger: Tagger,
    /// Hashes of stretches beyond the chain's end, by where they start.
    waiting: BTreeMap<u64, Piece>,
    tag: Option<[u8; TAG_LEN]>,
    verdict: Verdict,
}

/// The content key of an object open for reading, and its tag check.
pub struct Decryption {
    key: ContentKey,
    /// The plaintext's length: the object's, less the tag.
    size: u64,
    check: Mutex<Check>,
}

impl Decryption {
    pub fn new(key: ContentKey, size: u64) -> Self {
        let tagger = key.tagger();
        Decryption {
            key,
            size,
            check: Mutex::new(Check {
                tagger,
                waiting: BTreeMap::new(),
                tag: None,
                verdict: Verdict::Pending,
            }),
        }
    }

    /// The length of the stored object: the plaintext and the tag.
    pub fn stored_size(&self) -> u64 {
        self.size + TAG_LEN as u64
    }

    /// Decrypts `data`, the stored bytes from `start` on; when they run to
    /// the end of the object, their last 16 bytes are the tag. The plaintext,
    /// or `None` once the object is known to be forged (logged with `key`).
    pub fn decrypt(&self, object: &str, start: u64, mut data: Vec<u8>) -> Option<Bytes> {
        let end = start + data.len() as u64;
        let tag = (end == self.stored_size() && data.len() >= TAG_LEN).then(|| {
            let tag = data.split_off(data.len() - TAG_LEN);
            tag.try_into().expect("16 bytes")
        });
        // A stretch that overlaps the chain's end (a random read's block,
        // then a sequential read through it) is hashed from there.
        let chained = self.check.lock().unwrap().tagger.len();
        let from = match chained.checked_sub(start) {
            Some(skip) if skip % 16 == 0 && skip < data.len() as u64 => skip,
            _ => 0,
        };
        let piece = self.key.hash(&data[from as usize..]);
        if self.note(object, start + from, piece, tag) == Verdict::Forged {
            return None;
        }
        self.key.apply(start, &mut data);
        Some(Bytes::from(data))
    }

    /// Decrypts `data`, the stored bytes from `start` on, wholly before the
    /// tag, without hashing them: for reads answered on the spot.
    pub fn decrypt_unchecked(&self, start: u64, data: &mut [u8]) {
        self.key.apply(start, data);
    }

    /// The check's state.
    pub fn verdict(&self) -> Verdict {
        self.check.lock().unwrap().verdict
    }

    fn note(&self, object: &str, start: u64, piece: Piece, tag: Option<[u8; 16]>) -> Verdict {
        let mut guard = self.check.lock().unwrap();
        let check = &mut *guard;
        if check.verdict != Verdict::Pending {
            return check.verdict;
        }
        if let Some(tag) = tag {
            check.tag = Some(tag);
        }
        if start >= check.tagger.len() {
            check.waiting.insert(start, piece);
        }
        while let Some(piece) = check.waiting.remove(&check.tagger.len()) {
            if check.tagger.push(piece).is_err() {
                check.verdict = Verdict::Unchecked;
                return check.verdict;
            }
        }
        let chained = check.tagger.len();
        check.waiting.retain(|&at, _| at > chained);
        if check.waiting.len() > MAX_WAITING {
            check.verdict = Verdict::Unchecked;
        } else if chained == self.size
            && let Some(tag) = check.tag
        {
            check.verdict = match check.tagger.verify(&tag) {
                true => Verdict::Authentic,
                false => {
                    error!(
                        key = object,
                        "the object's GCM tag does not match its content: it was changed \
                         by someone without its key, or damaged; its reads fail with EIO"
                    );
                    Verdict::Forged
                }
            };
        }
        check.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn key() -> ContentKey {
        ContentKey::new(Zeroizing::new([4u8; 32]), [1u8; 12], b"\x00\x73")
    }

    fn sealed(len: usize) -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut stored = plain.clone();
        key().seal(&mut stored);
        (plain, stored)
    }

    fn reopen(len: usize) -> Decryption {
        Decryption::new(key(), len as u64)
    }

    #[test]
    fn stretches_in_any_order_are_checked_once_they_cover_the_object() {
        let (plain, stored) = sealed(100_000);
        let decryption = reopen(plain.len());
        // The last stretch (with the tag) first, then the first, then the middle.
        let cuts = [(65_536, stored.len()), (0, 32_768), (32_768, 65_536)];
        let mut out = vec![0u8; plain.len()];
        for (i, &(from, to)) in cuts.iter().enumerate() {
            let got = decryption
                .decrypt("k", from as u64, stored[from..to].to_vec())
                .unwrap();
            out[from..from + got.len()].copy_from_slice(&got);
            let expected = match i {
                2 => Verdict::Authentic,
                _ => Verdict::Pending,
            };
            assert_eq!(decryption.verdict(), expected, "after stretch {i}");
        }
        assert_eq!(out, plain);
    }

    #[test]
    fn a_changed_byte_is_found_when_the_chain_completes_and_fails_every_later_read() {
        let (plain, mut stored) = sealed(40_000);
        stored[20_000] ^= 1;
        let decryption = reopen(plain.len());
        assert!(
            decryption
                .decrypt("k", 0, stored[..16_384].to_vec())
                .is_some()
        );
        assert!(
            decryption
                .decrypt("k", 16_384, stored[16_384..].to_vec())
                .is_none()
        );
        assert_eq!(decryption.verdict(), Verdict::Forged);
        assert!(decryption.decrypt("k", 0, stored[..16].to_vec()).is_none());
    }

    #[test]
    fn a_read_from_the_middle_is_decrypted_and_not_checked() {
        let (plain, stored) = sealed(10_000);
        let decryption = reopen(plain.len());
        let got = decryption
            .decrypt("k", 5_000, stored[5_000..].to_vec())
            .unwrap();
        assert_eq!(got, plain[5_000..]);
        assert_eq!(decryption.verdict(), Verdict::Pending);
        // A stretch that does not end on a block boundary breaks the chain.
        assert!(
            decryption
                .decrypt("k", 0, stored[..4_999].to_vec())
                .is_some()
        );
        assert_eq!(decryption.verdict(), Verdict::Pending);
        assert!(
            decryption
                .decrypt("k", 4_999, stored[4_999..5_000].to_vec())
                .is_some()
        );
        assert_eq!(decryption.verdict(), Verdict::Unchecked);
        // An empty object is only its tag.
        let (_, stored) = sealed(0);
        let decryption = reopen(0);
        assert_eq!(decryption.decrypt("k", 0, stored).unwrap().len(), 0);
        assert_eq!(decryption.verdict(), Verdict::Authentic);
    }
}
