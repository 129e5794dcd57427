//! AES-256-GCM as a stream, and any range of its ciphertext decrypted on its
//! own.
//!
//! An S3 object is one GCM message: the whole ciphertext followed by the
//! 16-byte tag. Uploads encrypt it part by part, so the cipher keeps its place
//! across calls ([`Sealer`]); a whole read checks the tag at the end
//! ([`Opener`]). GCM's confidentiality is counter mode, so the bytes of any
//! range can be decrypted without the rest ([`decrypt_range`]); such bytes are
//! not authenticated, which docs/SECURITY.md states.
//!
//! GCM is built here from AES in counter mode and GHASH (NIST SP 800-38D, for a
//! 96-bit IV) because the one-shot AEAD API takes the whole message at once;
//! unit tests check it against that API.

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;

/// AES-GCM's tag, as S3 Encryption Clients write it.
pub const TAG_LEN: usize = 16;
const BLOCK: usize = 16;

type Ctr = ctr::Ctr32BE<Aes256>;

/// The counter block of the first byte of content: the IV, then 2 (1 is the
/// tag's mask).
fn first_counter(iv: &[u8; 12], block: u32) -> [u8; 16] {
    let mut counter = [0u8; 16];
    counter[..12].copy_from_slice(iv);
    counter[12..].copy_from_slice(&block.to_be_bytes());
    counter
}

/// The cipher and hash shared by both directions.
struct Stream {
    ctr: Ctr,
    ghash: GHash,
    /// The last bytes of ciphertext that do not yet fill a GHASH block.
    partial: Vec<u8>,
    aad_len: u64,
    len: u64,
    /// E(K, J0): the tag is the hash masked with it.
    mask: [u8; 16],
}

impl Stream {
    fn new(key: &[u8; 32], iv: &[u8; 12], aad: &[u8]) -> Self {
        use aes::cipher::{BlockEncrypt, KeyInit as _};
        let cipher = Aes256::new(key.into());
        let mut h = [0u8; 16];
        cipher.encrypt_block((&mut h).into());
        let mut mask = first_counter(iv, 1);
        cipher.encrypt_block((&mut mask).into());
        let mut ghash = GHash::new(&h.into());
        ghash.update_padded(aad);
        Stream {
            ctr: Ctr::new(key.into(), &first_counter(iv, 2).into()),
            ghash,
            partial: Vec::with_capacity(BLOCK),
            aad_len: aad.len() as u64,
            len: 0,
            mask,
        }
    }

    /// Hashes `ciphertext`, which follows what was hashed before.
    fn hash(&mut self, mut ciphertext: &[u8]) {
        self.len += ciphertext.len() as u64;
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(ciphertext.len());
            self.partial.extend_from_slice(&ciphertext[..take]);
            ciphertext = &ciphertext[take..];
            if self.partial.len() < BLOCK {
                return;
            }
            self.ghash
                .update(&[ghash::Block::clone_from_slice(&self.partial)]);
            self.partial.clear();
        }
        let whole = ciphertext.len() / BLOCK * BLOCK;
        // In batches, which GHASH takes faster than block by block, without
        // allocating on a path every byte of an object takes.
        let mut batch = [ghash::Block::default(); 64];
        for chunk in ciphertext[..whole].chunks(BLOCK * batch.len()) {
            for (block, bytes) in batch.iter_mut().zip(chunk.chunks_exact(BLOCK)) {
                block.copy_from_slice(bytes);
            }
            self.ghash.update(&batch[..chunk.len() / BLOCK]);
        }
        self.partial.extend_from_slice(&ciphertext[whole..]);
    }

    fn tag(mut self) -> [u8; TAG_LEN] {
        self.ghash.update_padded(&self.partial);
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(self.len * 8).to_be_bytes());
        self.ghash.update(&[lengths.into()]);
        let mut tag: [u8; TAG_LEN] = self.ghash.finalize().into();
        for (t, m) in tag.iter_mut().zip(self.mask) {
            *t ^= m;
        }
        tag
    }
}

/// Encrypts a message in pieces, in order.
pub struct Sealer(Stream);

impl Sealer {
    pub fn new(key: &[u8; 32], iv: &[u8; 12], aad: &[u8]) -> Self {
        Sealer(Stream::new(key, iv, aad))
    }

    /// Encrypts the next piece of the message in place.
    pub fn seal(&mut self, data: &mut [u8]) {
        self.0.ctr.apply_keystream(data);
        self.0.hash(data);
    }

    /// The tag, to follow the ciphertext.
    pub fn finish(self) -> [u8; TAG_LEN] {
        self.0.tag()
    }
}

/// Decrypts a message in pieces, in order, and checks its tag at the end.
pub struct Opener(Stream);

impl Opener {
    pub fn new(key: &[u8; 32], iv: &[u8; 12], aad: &[u8]) -> Self {
        Opener(Stream::new(key, iv, aad))
    }

    /// Decrypts the next piece of ciphertext (without the tag) in place.
    pub fn open(&mut self, data: &mut [u8]) {
        self.0.hash(data);
        self.0.ctr.apply_keystream(data);
    }

    /// Whether `tag` is the message's: compared in constant time.
    pub fn verify(self, tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        tag.len() == TAG_LEN && bool::from(self.0.tag().ct_eq(tag))
    }
}

/// Decrypts `data`, the ciphertext at `offset` in the message, in place,
/// without authenticating it.
pub fn decrypt_range(key: &[u8; 32], iv: &[u8; 12], offset: u64, data: &mut [u8]) {
    let mut ctr = Ctr::new(key.into(), &first_counter(iv, 2).into());
    ctr.seek(offset);
    ctr.apply_keystream(data);
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
    fn sealing_in_pieces_of_any_size_is_gcm() {
        let key = [7u8; 32];
        let iv = [1u8; 12];
        for len in [0, 1, 15, 16, 17, 100, 4096, 70_001] {
            for aad in [&b""[..], b"\x00\x73"] {
                let plain = message(len, len as u8);
                let expected = reference(&key, &iv, aad, &plain);
                for piece in [1, 7, 16, 33, 4096] {
                    let mut sealer = Sealer::new(&key, &iv, aad);
                    let mut out = plain.clone();
                    for chunk in out.chunks_mut(piece) {
                        sealer.seal(chunk);
                    }
                    out.extend_from_slice(&sealer.finish());
                    assert_eq!(out, expected, "len {len} piece {piece} aad {aad:?}");
                }
            }
        }
    }

    #[test]
    fn opening_checks_the_tag_and_any_range_decrypts_alone() {
        let key = [9u8; 32];
        let iv = [3u8; 12];
        let plain = message(50_000, 5);
        let sealed = reference(&key, &iv, b"", &plain);
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);

        let mut opener = Opener::new(&key, &iv, b"");
        let mut out = body.to_vec();
        for chunk in out.chunks_mut(999) {
            opener.open(chunk);
        }
        assert_eq!(out, plain);
        assert!(opener.verify(tag));

        // One changed byte of ciphertext, or of the tag, fails the check.
        for (at, in_tag) in [(0, false), (31_337, false), (3, true)] {
            let mut body = body.to_vec();
            let mut tag = tag.to_vec();
            if in_tag {
                tag[at] ^= 1;
            } else {
                body[at] ^= 0x80;
            }
            let mut opener = Opener::new(&key, &iv, b"");
            opener.open(&mut body);
            assert!(!opener.verify(&tag));
        }

        for (offset, len) in [
            (0, 1),
            (1, 15),
            (15, 2),
            (16, 16),
            (4095, 8193),
            (49_999, 1),
        ] {
            let mut range = body[offset..offset + len].to_vec();
            decrypt_range(&key, &iv, offset as u64, &mut range);
            assert_eq!(range, plain[offset..offset + len], "{offset}+{len}");
        }
    }
}
