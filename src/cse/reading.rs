//! Reading one encrypted object: ranges decrypted as they arrive, the tag
//! checked once the stretches fetched cover the whole object, and what the
//! volume has learnt of each version it checked.
//!
//! A handle's reads fetch stretches of ciphertext (read-ahead parts, cache
//! blocks), concurrently and so out of order. Each is decrypted on its own and
//! its hash kept; the hashes are combined in order from the start of the
//! object, and once they reach its end, with the tag fetched along with the
//! last stretch, the tag is checked. A version can also be checked whole, by
//! hashing all of it in order ([`WholeCheck`]), before any of it is released.
//!
//! Each verdict is kept for the volume in [`Verdicts`], by key and ETag (a
//! version S3 never changes): a version found forged stays forged for every
//! later open, and one found authentic needs no second check
//! (docs/ENCRYPTION.md says what is released when).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::error;

use super::envelope::ContentKey;
use super::gcm::{MAX_CONTENT, Misaligned, Piece, TAG_LEN, Tagger, TooLong};

/// Hashes of stretches that came before the ones they follow: more than this,
/// and the handle gives up checking (a reader jumping about is not reading the
/// object whole).
const MAX_WAITING: usize = 1024;

/// The most versions whose verdict a volume keeps: a few MiB of memory; the
/// least recently checked go first (and are checked again if read again).
const MAX_VERDICTS: usize = 100_000;

/// An object version as a volume decrypts it: its key, its ETag (S3 never
/// changes a version's bytes) and its envelope's identity (metadata can be
/// replaced while the bytes, and so the ETag, stay).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionId {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub envelope: [u8; 32],
}

/// The verdicts of the versions a volume has checked, and the checks under
/// way.
pub struct Verdicts {
    known: Mutex<lru::LruCache<VersionId, Verdict>>,
    /// One whole check of a version at a time: the others wait for its verdict.
    checking: Mutex<HashMap<VersionId, Weak<tokio::sync::Mutex<()>>>>,
}

impl Default for Verdicts {
    fn default() -> Self {
        let bound = NonZeroUsize::new(MAX_VERDICTS).expect("not zero");
        Verdicts {
            known: Mutex::new(lru::LruCache::new(bound)),
            checking: Mutex::new(HashMap::new()),
        }
    }
}

impl Verdicts {
    /// What is known of `version`: [`Verdict::Pending`] when nothing is.
    pub fn of(&self, version: &VersionId) -> Verdict {
        self.known
            .lock()
            .get(version)
            .copied()
            .unwrap_or(Verdict::Pending)
    }

    /// Keeps a final verdict (authentic or forged) of `version`.
    fn record(&self, version: &VersionId, verdict: Verdict) {
        if matches!(verdict, Verdict::Authentic | Verdict::Forged) {
            self.known.lock().put(version.clone(), verdict);
        }
    }

    /// The turn to check `version` whole: held by one check at a time.
    async fn turn(&self, version: &VersionId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut checking = self.checking.lock();
            checking.retain(|_, turn| turn.strong_count() > 0);
            match checking.get(version).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    checking.insert(version.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

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
    version: VersionId,
    verdicts: Arc<Verdicts>,
}

impl Decryption {
    /// The decryption of `version`, whose plaintext is `size` bytes long,
    /// keeping its verdict in `verdicts` (and starting from what it holds).
    /// An object longer than GCM allows is refused (it cannot be one).
    pub fn new(
        key: ContentKey,
        size: u64,
        version: VersionId,
        verdicts: Arc<Verdicts>,
    ) -> Result<Self, TooLong> {
        if size > MAX_CONTENT {
            return Err(TooLong);
        }
        let tagger = key.tagger();
        Ok(Decryption {
            key,
            size,
            check: Mutex::new(Check {
                tagger,
                waiting: BTreeMap::new(),
                tag: None,
                verdict: verdicts.of(&version),
            }),
            version,
            verdicts,
        })
    }

    /// The plaintext's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The length of the stored object: the plaintext and the tag.
    pub fn stored_size(&self) -> u64 {
        self.size + TAG_LEN as u64
    }

    /// Decrypts `data`, the stored bytes from `start` on; when they run to
    /// the end of the object, their last 16 bytes are the tag. The plaintext,
    /// or `None` once the object is known to be forged (which is logged).
    pub fn decrypt(&self, start: u64, mut data: Vec<u8>) -> Option<Bytes> {
        if self.verdict() == Verdict::Forged {
            return None;
        }
        let end = start + data.len() as u64;
        let tag = (end == self.stored_size() && data.len() >= TAG_LEN).then(|| {
            let tag = data.split_off(data.len() - TAG_LEN);
            tag.try_into().expect("16 bytes")
        });
        // A stretch that overlaps the chain's end (a random read's block,
        // then a sequential read through it) is hashed from there.
        let chained = self.check.lock().tagger.len();
        let from = match chained.checked_sub(start) {
            Some(skip) if skip % 16 == 0 && skip < data.len() as u64 => skip,
            _ => 0,
        };
        let piece = self.key.hash(&data[from as usize..]);
        if self.note(start + from, piece, tag) == Verdict::Forged {
            return None;
        }
        // An object past GCM's limit is refused at open; a stretch past it
        // here is not returned.
        self.key.apply(start, &mut data).ok()?;
        Some(Bytes::from(data))
    }

    /// Decrypts `data`, the stored bytes from `start` on, wholly before the
    /// tag, without hashing them: for reads answered on the spot.
    pub fn decrypt_unchecked(&self, start: u64, data: &mut [u8]) -> Result<(), TooLong> {
        self.key.apply(start, data)
    }

    /// The check's state: this handle's, or the volume's when another handle
    /// of the same version has reached one.
    pub fn verdict(&self) -> Verdict {
        let mut check = self.check.lock();
        if matches!(check.verdict, Verdict::Pending | Verdict::Unchecked) {
            let known = self.verdicts.of(&self.version);
            if known != Verdict::Pending {
                check.verdict = known;
            }
        }
        check.verdict
    }

    /// The turn to check the whole object: one check of a version at a time
    /// on the volume; whoever waited reads the verdict the first one reached.
    pub async fn check_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.verdicts.turn(&self.version).await
    }

    /// A check of the whole object, fed its stored bytes in order, from the
    /// start: its verdict becomes this handle's and the volume's.
    pub fn whole_check(&self) -> WholeCheck<'_> {
        WholeCheck {
            decryption: self,
            tagger: self.key.tagger(),
            tag: Vec::with_capacity(TAG_LEN),
        }
    }

    /// Settles the verdict of the object as `verdict` (from a whole check).
    fn settle(&self, verdict: Verdict) -> Verdict {
        let mut check = self.check.lock();
        if check.verdict != Verdict::Forged {
            check.verdict = verdict;
        }
        if verdict == Verdict::Forged {
            self.log_forged();
        }
        self.verdicts.record(&self.version, check.verdict);
        check.verdict
    }

    fn log_forged(&self) {
        error!(
            key = &*self.version.key,
            "the object's GCM tag does not match its content: it was changed by someone \
             without its key, or damaged; every read of this version fails with EIO"
        );
    }

    fn note(&self, start: u64, piece: Piece, tag: Option<[u8; 16]>) -> Verdict {
        let mut guard = self.check.lock();
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
                    self.log_forged();
                    Verdict::Forged
                }
            };
            self.verdicts.record(&self.version, check.verdict);
        }
        check.verdict
    }
}

/// A check of a whole object: its stored bytes given in order from the start
/// ([`WholeCheck::push`]), the tag last, then [`WholeCheck::finish`].
pub struct WholeCheck<'a> {
    decryption: &'a Decryption,
    tagger: Tagger,
    /// The tag, once the content is all pushed.
    tag: Vec<u8>,
}

impl WholeCheck<'_> {
    /// The next stored bytes. Every push but the last of the content must be
    /// a whole number of 16-byte blocks long (as cache blocks and parts are).
    pub fn push(&mut self, mut stored: &[u8]) -> Result<(), Misaligned> {
        let content_left = self.decryption.size - self.tagger.len();
        if content_left > 0 {
            let content = stored.len().min(content_left as usize);
            self.tagger
                .push(self.decryption.key.hash(&stored[..content]))?;
            stored = &stored[content..];
        }
        let room = TAG_LEN - self.tag.len();
        self.tag
            .extend_from_slice(&stored[..stored.len().min(room)]);
        Ok(())
    }

    /// The verdict, kept for the handle and the volume: authentic when the
    /// content and its tag were all pushed and match.
    pub fn finish(self) -> Verdict {
        let whole = self.tagger.len() == self.decryption.size && self.tag.len() == TAG_LEN;
        let verdict = match whole && self.tagger.verify(&self.tag) {
            true => Verdict::Authentic,
            false => Verdict::Forged,
        };
        self.decryption.settle(verdict)
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
        key().seal(&mut stored).unwrap();
        (plain, stored)
    }

    fn reopen(len: usize) -> Decryption {
        let version = VersionId {
            key: "k".into(),
            etag: "\"etag\"".into(),
            envelope: [0; 32],
        };
        Decryption::new(key(), len as u64, version, Arc::default()).unwrap()
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
                .decrypt(from as u64, stored[from..to].to_vec())
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
        assert!(decryption.decrypt(0, stored[..16_384].to_vec()).is_some());
        assert!(
            decryption
                .decrypt(16_384, stored[16_384..].to_vec())
                .is_none()
        );
        assert_eq!(decryption.verdict(), Verdict::Forged);
        assert!(decryption.decrypt(0, stored[..16].to_vec()).is_none());
    }

    #[test]
    fn a_read_from_the_middle_is_decrypted_and_not_checked() {
        let (plain, stored) = sealed(10_000);
        let decryption = reopen(plain.len());
        let got = decryption.decrypt(5_000, stored[5_000..].to_vec()).unwrap();
        assert_eq!(got, plain[5_000..]);
        assert_eq!(decryption.verdict(), Verdict::Pending);
        // A stretch that does not end on a block boundary breaks the chain.
        assert!(decryption.decrypt(0, stored[..4_999].to_vec()).is_some());
        assert_eq!(decryption.verdict(), Verdict::Pending);
        assert!(
            decryption
                .decrypt(4_999, stored[4_999..5_000].to_vec())
                .is_some()
        );
        assert_eq!(decryption.verdict(), Verdict::Unchecked);
        // An empty object is only its tag.
        let (_, stored) = sealed(0);
        let decryption = reopen(0);
        assert_eq!(decryption.decrypt(0, stored).unwrap().len(), 0);
        assert_eq!(decryption.verdict(), Verdict::Authentic);
    }

    #[test]
    fn a_verdict_outlives_the_handle_that_reached_it_and_binds_only_its_version() {
        let (plain, mut stored) = sealed(40_000);
        stored[100] ^= 1;
        let verdicts: Arc<Verdicts> = Arc::default();
        let open = |etag: &str| {
            let version = VersionId {
                key: "k".into(),
                etag: etag.into(),
                envelope: [0; 32],
            };
            Decryption::new(key(), plain.len() as u64, version, verdicts.clone()).unwrap()
        };
        let first = open("v1");
        assert!(first.decrypt(0, stored.clone()).is_none());
        // A second handle of the same version: forged before it reads a byte.
        let second = open("v1");
        assert_eq!(second.verdict(), Verdict::Forged);
        assert!(second.decrypt(30_000, stored[30_000..].to_vec()).is_none());
        // Another version of the object is not.
        assert_eq!(open("v2").verdict(), Verdict::Pending);
    }

    #[test]
    fn a_whole_check_takes_the_object_in_pieces_and_finds_any_change() {
        let (plain, stored) = sealed(70_000);
        let check = |stored: &[u8], cut: usize| {
            let decryption = reopen(plain.len());
            let mut whole = decryption.whole_check();
            for piece in stored.chunks(cut) {
                whole.push(piece).unwrap();
            }
            (whole.finish(), decryption.verdict())
        };
        for cut in [16, 4096, 65_536, stored.len()] {
            assert_eq!(
                check(&stored, cut),
                (Verdict::Authentic, Verdict::Authentic)
            );
        }
        let mut changed = stored.clone();
        changed[69_999] ^= 0x40;
        assert_eq!(check(&changed, 4096).0, Verdict::Forged);
        // Short by a byte, or with the tag missing: never authentic.
        assert_eq!(check(&stored[..stored.len() - 1], 4096).0, Verdict::Forged);
        assert_eq!(check(&stored[..plain.len()], 4096).0, Verdict::Forged);
    }
}
