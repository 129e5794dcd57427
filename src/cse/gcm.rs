//! AES-256-GCM for objects written and read in parts, in any order.
//!
//! An S3 object is one GCM message: the whole ciphertext followed by the
//! 16-byte tag. GCM is counter mode plus a hash (GHASH) of the ciphertext, and
//! both can be split: the bytes at any offset are encrypted or decrypted on
//! their own ([`Cipher::apply`]), and the hash of a stretch of ciphertext
//! ([`Cipher::hash`]) is combined with the others in order ([`Tagger`]), since
//! GHASH is a polynomial in the hash key `H`: a stretch of `n` blocks after a
//! running hash `Y` gives `Y·Hⁿ ⊕ P`. So an upload encrypts its parts in
//! parallel, as they are written, and needs nothing but the parts' hashes to
//! make the tag; a reader checks the tag from the hashes of the parts it
//! fetched. Bytes decrypted without the whole message are not authenticated,
//! which docs/SECURITY.md states.
//!
//! Built here from AES in counter mode and GHASH (NIST SP 800-38D, for a
//! 96-bit IV) because the one-shot AEAD API takes the whole message at once;
//! unit tests check it against that API.

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use zeroize::Zeroizing;

/// AES-GCM's tag, as S3 Encryption Clients write it.
pub const TAG_LEN: usize = 16;
/// The most content one GCM message may hold (NIST SP 800-38D: 2^39 - 256
/// bits): past it the 32-bit block counter would wrap round onto the tag's
/// mask and the first blocks' keystream.
pub const MAX_CONTENT: u64 = (1 << 36) - 32;

/// Content past [`MAX_CONTENT`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("past the {MAX_CONTENT} bytes one AES-GCM message may hold")]
pub struct TooLong;
const BLOCK: usize = 16;

type Ctr = ctr::Ctr32BE<Aes256>;
type Element = [u8; 16];

/// The counter block of content block `block`: the IV, then the counter (1
/// is the tag's mask, content starts at 2).
fn counter(iv: &[u8; 12], block: u32) -> [u8; 16] {
    let mut counter = [0u8; 16];
    counter[..12].copy_from_slice(iv);
    counter[12..].copy_from_slice(&block.to_be_bytes());
    counter
}

/// `a·b` in GHASH's field: a hash keyed with `b` of the one block `a`.
fn mul(a: &Element, b: &Element) -> Element {
    let mut hash = GHash::new(b.into());
    hash.update(&[(*a).into()]);
    hash.finalize().into()
}

/// `h` to the power `n`, by squaring.
fn power(h: &Element, mut n: u64) -> Element {
    // The field's 1 in GHASH's bit order: the first bit set.
    let mut result = [0u8; 16];
    result[0] = 0x80;
    let mut square = *h;
    while n > 0 {
        if n & 1 == 1 {
            result = mul(&result, &square);
        }
        square = mul(&square, &square);
        n >>= 1;
    }
    result
}

fn xor(a: &mut Element, b: &Element) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a ^= b);
}

/// The hash of one stretch of ciphertext, on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    hash: Element,
    len: u64,
}

/// One object's content key and IV, and what follows from them.
pub struct Cipher {
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 12],
    /// GHASH's key, E(K, 0).
    h: Element,
    /// E(K, J0): the tag is the hash masked with it.
    mask: Element,
    /// The hash of the additional authenticated data, where content starts.
    aad_hash: Element,
    aad_len: u64,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    pub fn new(key: Zeroizing<[u8; 32]>, iv: [u8; 12], aad: &[u8]) -> Self {
        use aes::cipher::{BlockEncrypt, KeyInit as _};
        let aes = Aes256::new((&*key).into());
        let mut h = [0u8; 16];
        aes.encrypt_block((&mut h).into());
        let mut mask = counter(&iv, 1);
        aes.encrypt_block((&mut mask).into());
        let mut aad_hash = GHash::new(&h.into());
        aad_hash.update_padded(aad);
        Cipher {
            key,
            iv,
            h,
            mask,
            aad_hash: aad_hash.finalize().into(),
            aad_len: aad.len() as u64,
        }
    }

    /// Encrypts or decrypts, in place, the bytes at `offset` of the content.
    /// (Decrypted alone, they are not authenticated.) Bytes past
    /// [`MAX_CONTENT`] are refused, never wrapped.
    pub fn apply(&self, offset: u64, data: &mut [u8]) -> Result<(), TooLong> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > MAX_CONTENT)
        {
            return Err(TooLong);
        }
        let mut ctr = Ctr::new((&*self.key).into(), &counter(&self.iv, 2).into());
        ctr.seek(offset);
        ctr.apply_keystream(data);
        Ok(())
    }

    /// The hash of `ciphertext`, a stretch of the content: to be given to a
    /// [`Tagger`] in order. Every stretch but the last must be a whole number
    /// of 16-byte blocks long.
    pub fn hash(&self, ciphertext: &[u8]) -> Piece {
        let mut hash = GHash::new(&self.h.into());
        // The whole blocks at once, where they lie (GHASH takes many blocks
        // faster than one by one), then the rest, padded.
        let (blocks, rest) = ghash::Block::slice_as_chunks(ciphertext);
        hash.update(blocks);
        hash.update_padded(rest);
        Piece {
            hash: hash.finalize().into(),
            len: ciphertext.len() as u64,
        }
    }

    /// Combines the hashes of the content's stretches, in order, into the tag.
    pub fn tagger(&self) -> Tagger {
        Tagger {
            h: self.h,
            mask: self.mask,
            aad_len: self.aad_len,
            running: self.aad_hash,
            len: 0,
        }
    }

    /// Encrypts a whole message in place and appends its tag. (Volumes
    /// write objects in parts, in `fs::upload::sealing`.)
    pub fn seal(&self, data: &mut Vec<u8>) -> Result<(), TooLong> {
        self.apply(0, data)?;
        let mut tagger = self.tagger();
        tagger.push(self.hash(data)).map_err(|_| TooLong)?;
        data.extend_from_slice(&tagger.tag());
        Ok(())
    }

    /// Decrypts a whole message followed by its tag, in place: `None` when it
    /// is shorter than a tag or the tag does not match (and then nothing was
    /// decrypted). (Volumes read objects in stretches, in `cse::reading`.)
    #[cfg(test)]
    pub fn open(&self, mut data: Vec<u8>) -> Option<Vec<u8>> {
        let tag = data.split_off(data.len().checked_sub(TAG_LEN)?);
        let mut tagger = self.tagger();
        tagger.push(self.hash(&data)).expect("one piece");
        if !tagger.verify(&tag) {
            return None;
        }
        self.apply(0, &mut data).ok()?;
        Some(data)
    }
}

/// Why a stretch cannot follow the ones before it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a stretch of ciphertext follows one that is not a whole number of blocks long")]
pub struct Misaligned;

/// The running hash of a message's content, stretch by stretch.
pub struct Tagger {
    h: Element,
    mask: Element,
    aad_len: u64,
    running: Element,
    len: u64,
}

impl Tagger {
    /// The content's length so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the stretch `piece` hashed.
    pub fn push(&mut self, piece: Piece) -> Result<(), Misaligned> {
        if !self.len.is_multiple_of(BLOCK as u64) {
            return Err(Misaligned);
        }
        let blocks = piece.len.div_ceil(BLOCK as u64);
        self.running = mul(&self.running, &power(&self.h, blocks));
        xor(&mut self.running, &piece.hash);
        self.len += piece.len;
        Ok(())
    }

    /// The tag of the content pushed.
    pub fn tag(&self) -> [u8; TAG_LEN] {
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(self.len * 8).to_be_bytes());
        let mut running = self.running;
        xor(&mut running, &lengths);
        let mut tag = mul(&running, &self.h);
        xor(&mut tag, &self.mask);
        tag
    }

    /// Whether `tag` is the content's: compared in constant time.
    pub fn verify(&self, tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        tag.len() == TAG_LEN && bool::from(self.tag().ct_eq(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce};

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn reference(key: &[u8; 32], iv: &[u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        Aes256Gcm::new(key.into())
            .encrypt(Nonce::from_slice(iv), Payload { msg: plain, aad })
            .unwrap()
    }

    #[test]
    fn stretches_encrypted_and_hashed_apart_make_gcm() {
        let key = [7u8; 32];
        let iv = [1u8; 12];
        for len in [0, 1, 15, 16, 17, 100, 4096, 70_001] {
            for aad in [&b""[..], b"\x00\x73"] {
                let cipher = Cipher::new(Zeroizing::new(key), iv, aad);
                let plain = message(len, len as u8);
                let expected = reference(&key, &iv, aad, &plain);
                for stretch in [16, 48, 4096, 65_536] {
                    let mut out = plain.clone();
                    // Encrypted last stretch first, as parts of an upload may be.
                    let mut pieces = Vec::new();
                    for (index, chunk) in out.chunks_mut(stretch).enumerate().rev() {
                        cipher.apply((index * stretch) as u64, chunk).unwrap();
                        pieces.push(cipher.hash(chunk));
                    }
                    let mut tagger = cipher.tagger();
                    for piece in pieces.into_iter().rev() {
                        tagger.push(piece).unwrap();
                    }
                    out.extend_from_slice(&tagger.tag());
                    assert_eq!(out, expected, "len {len} stretch {stretch} aad {aad:?}");
                }
                let mut whole = plain.clone();
                cipher.seal(&mut whole).unwrap();
                assert_eq!(whole, expected);
                assert_eq!(cipher.open(whole), Some(plain));
            }
        }
    }

    #[test]
    fn a_changed_byte_fails_the_tag_and_any_range_decrypts_alone() {
        let key = [9u8; 32];
        let iv = [3u8; 12];
        let cipher = Cipher::new(Zeroizing::new(key), iv, b"");
        let plain = message(50_000, 5);
        let sealed = reference(&key, &iv, b"", &plain);
        for at in [0, 31_337, sealed.len() - 3] {
            let mut changed = sealed.clone();
            changed[at] ^= 0x80;
            assert_eq!(cipher.open(changed), None, "byte {at}");
        }
        assert_eq!(cipher.open(sealed[..10].to_vec()), None);

        let body = &sealed[..plain.len()];
        for (offset, len) in [
            (0, 1),
            (1, 15),
            (15, 2),
            (16, 16),
            (4095, 8193),
            (49_999, 1),
        ] {
            let mut range = body[offset..offset + len].to_vec();
            cipher.apply(offset as u64, &mut range).unwrap();
            assert_eq!(range, plain[offset..offset + len], "{offset}+{len}");
        }
    }

    #[test]
    fn a_stretch_after_a_ragged_one_is_refused() {
        let cipher = Cipher::new(Zeroizing::new([1u8; 32]), [2u8; 12], b"");
        let mut tagger = cipher.tagger();
        tagger.push(cipher.hash(&[0u8; 17])).unwrap();
        assert_eq!(tagger.push(cipher.hash(&[0u8; 16])), Err(Misaligned));
        assert_eq!(tagger.len(), 17);
    }

    #[test]
    fn content_past_gcm_s_limit_is_refused_not_wrapped() {
        let cipher = Cipher::new(Zeroizing::new([1u8; 32]), [2u8; 12], b"");
        let mut last = [0u8; 32];
        assert_eq!(cipher.apply(MAX_CONTENT - 32, &mut last), Ok(()));
        assert_eq!(cipher.apply(MAX_CONTENT - 31, &mut last), Err(TooLong));
        assert_eq!(cipher.apply(1 << 36, &mut [0u8; 1]), Err(TooLong));
        assert_eq!(cipher.apply(u64::MAX, &mut [0u8; 1]), Err(TooLong));
    }

    /// The AES-256 cases of the GCM specification's test vectors (McGrew and
    /// Viega, "The Galois/Counter Mode of Operation", test cases 13 to 16),
    /// through the split cipher: each message in stretches of one block.
    #[test]
    fn the_published_aes_256_gcm_vectors_come_out() {
        let key15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let plain15 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let cipher15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                        8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let cases = [
            // (key, iv, aad, plaintext, ciphertext, tag)
            (
                "00".repeat(32),
                "00".repeat(12),
                String::new(),
                String::new(),
                String::new(),
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                "00".repeat(32),
                "00".repeat(12),
                String::new(),
                "00".repeat(16),
                "cea7403d4d606b6e074ec5d3baf39d18".to_string(),
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                key15.to_string(),
                "cafebabefacedbaddecaf888".to_string(),
                String::new(),
                plain15.to_string(),
                cipher15.to_string(),
                "b094dac5d93471bdec1a502270e3cc6c",
            ),
            (
                key15.to_string(),
                "cafebabefacedbaddecaf888".to_string(),
                "feedfacedeadbeeffeedfacedeadbeefabaddad2".to_string(),
                plain15[..120].to_string(),
                cipher15[..120].to_string(),
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (n, (key, iv, aad, plain, expected, tag)) in cases.iter().enumerate() {
            let hex = |text: &str| hex::decode(text).unwrap();
            let key: [u8; 32] = hex(key).try_into().unwrap();
            let iv: [u8; 12] = hex(iv).try_into().unwrap();
            let cipher = Cipher::new(Zeroizing::new(key), iv, &hex(aad));
            let mut out = hex(plain);
            let mut tagger = cipher.tagger();
            for (index, block) in out.chunks_mut(BLOCK).enumerate() {
                cipher.apply((index * BLOCK) as u64, block).unwrap();
                tagger.push(cipher.hash(block)).unwrap();
            }
            assert_eq!(hex::encode(&out), *expected, "test case {}", n + 13);
            assert_eq!(hex::encode(tagger.tag()), *tag, "test case {}", n + 13);
        }
    }
}
