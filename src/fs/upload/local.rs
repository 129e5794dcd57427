//! The local file that holds a staged file's bytes, in clear or, on a volume
//! with client-side encryption, encrypted.
//!
//! On an encrypted volume the staging file holds the plaintext under a key of
//! its own: random, made when the file is staged, kept only in memory and
//! gone with the file. The file is encrypted in chunks of [`CHUNK`] bytes, each
//! in counter mode under a nonce of its own made of the chunk's index and a
//! generation, so any chunk can be read or rewritten alone. Bytes written
//! where nothing was written under the chunk's generation take the keystream
//! that follows; a write over bytes already written (or cut off) under it
//! starts a new generation, and the chunk is encrypted again whole under it.
//! So no keystream is ever used for two plaintexts: a copy of the disk shows
//! nothing of the data, and neither do two copies taken while the same bytes
//! were rewritten. Counter mode turns a hole (a sparse region) into noise, so a
//! file that grows past its end has the gap written as encrypted zeros.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use aes::Aes256;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use bytes::Bytes;
use parking_lot::Mutex;
use zeroize::Zeroizing;

/// The unit of encryption of a staging file. Small enough that rewriting a
/// few bytes in the middle of a file re-encrypts little; large enough that a
/// file of many GiB keeps little state per chunk (8 bytes per 64 KiB).
const CHUNK: u64 = 64 << 10;
/// How much of a gap is zero-filled per write.
const FILL_CHUNK: u64 = 1 << 20;
/// The largest write buffer kept between writes: the kernel's largest FUSE
/// write is 1 MiB.
const MAX_KEPT: usize = 1 << 20;

type Ctr = ctr::Ctr32BE<Aes256>;

pub(super) struct LocalFile {
    file: File,
    /// The key of an encrypted staging file, and what its writes share.
    cipher: Option<(StagingKey, Mutex<Writing>)>,
}

/// A staging file's key: AES-256 and a random nonce that each chunk's own
/// nonce is derived from.
struct StagingKey {
    aes: Aes256,
    nonce: [u8; 12],
}

impl StagingKey {
    fn random() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut key[..]).expect("the system's random source");
        getrandom::fill(&mut nonce).expect("the system's random source");
        Self {
            aes: Aes256::new((&*key).into()),
            nonce,
        }
    }

    /// Encrypts or decrypts `data`, the bytes of chunk `index` from `offset`
    /// in it on, under `generation`.
    fn apply(&self, index: u64, generation: u32, offset: u64, data: &mut [u8]) {
        use ctr::cipher::StreamCipherSeek;
        let mut nonce = self.nonce;
        nonce[..8]
            .iter_mut()
            .zip(index.to_be_bytes())
            .for_each(|(n, i)| *n ^= i);
        nonce[8..]
            .iter_mut()
            .zip(generation.to_be_bytes())
            .for_each(|(n, g)| *n ^= g);
        let mut block = [0u8; 16];
        block[..12].copy_from_slice(&nonce);
        let core = ctr::CtrCore::<Aes256, ctr::flavors::Ctr32BE>::inner_iv_init(
            self.aes.clone(),
            &block.into(),
        );
        let mut ctr = Ctr::from_core(core);
        // Within a chunk: at most 4096 blocks, far from the counter's end.
        ctr.seek(offset);
        ctr.apply_keystream(data);
    }
}

/// What is known of one chunk of an encrypted staging file.
#[derive(Clone, Copy, Default)]
struct Chunk {
    /// The generation its bytes are encrypted under (0: none written yet).
    generation: u32,
    /// How far into the chunk keystream of this generation has been used.
    used: u32,
}

/// Held by each write to an encrypted staging file.
struct Writing {
    /// The file's length on disk: a gap before a write is filled before it,
    /// and no write lands in it meanwhile.
    len: u64,
    chunks: Vec<Chunk>,
    /// Where a write's bytes are encrypted: kept, so that writes of a large
    /// file reuse one buffer instead of paging in a new one each time.
    buffer: Vec<u8>,
}

impl LocalFile {
    /// `file`, empty; with `encrypt`, its bytes are kept under a new key.
    pub fn new(file: File, encrypt: bool) -> Self {
        let cipher = encrypt.then(|| {
            let writing = Writing {
                len: 0,
                chunks: Vec::new(),
                buffer: Vec::new(),
            };
            (StagingKey::random(), Mutex::new(writing))
        });
        LocalFile { file, cipher }
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let Some((key, writing)) = &self.cipher else {
            return self.file.write_all_at(data, offset);
        };
        let mut writing = writing.lock();
        self.fill(key, &mut writing, offset)?;
        self.write_chunks(key, &mut writing, data, offset)?;
        if writing.buffer.capacity() > MAX_KEPT {
            writing.buffer = Vec::new();
        }
        Ok(())
    }

    /// Bytes `range`; zeros past the end of the file on disk (a sparse tail).
    pub fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let Some((key, writing)) = &self.cipher else {
            self.read_raw(&mut buf, range.start)?;
            return Ok(Bytes::from(buf));
        };
        // Read and decrypted under the lock, so that no write re-encrypts a
        // chunk under a new generation in between.
        let writing = writing.lock();
        let filled = self.read_raw(&mut buf, range.start)?;
        // Past what is on disk, the zeros stand for themselves.
        for_each_chunk(range.start, &mut buf[..filled], |index, at, part| {
            let chunk = writing
                .chunks
                .get(index as usize)
                .copied()
                .unwrap_or_default();
            key.apply(index, chunk.generation, at, part);
        });
        Ok(Bytes::from(buf))
    }

    /// Cuts or extends the file to `size` bytes, zero-filled.
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        let Some((key, writing)) = &self.cipher else {
            return self.file.set_len(size);
        };
        let mut writing = writing.lock();
        match size > writing.len {
            true => self.fill(key, &mut writing, size)?,
            // What is cut off keeps its chunk's keystream used: bytes written
            // there again start a new generation.
            false => self.file.set_len(size)?,
        }
        writing.len = size;
        Ok(())
    }

    /// Reads what the file holds at `offset` into `buf`; how much there was.
    fn read_raw(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    /// Writes encrypted zeros from the file's end up to `end`, if it is
    /// beyond.
    fn fill(&self, key: &StagingKey, writing: &mut Writing, end: u64) -> io::Result<()> {
        let zeros = vec![0u8; FILL_CHUNK.min(end.saturating_sub(writing.len)) as usize];
        while writing.len < end {
            let at = writing.len;
            let len = (end - at).min(FILL_CHUNK) as usize;
            self.write_chunks(key, writing, &zeros[..len], at)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, which is not beyond the file's end, chunk
    /// by chunk: with the keystream that follows what a chunk used, or under
    /// a new generation with the chunk's bytes before them encrypted again.
    fn write_chunks(
        &self,
        key: &StagingKey,
        writing: &mut Writing,
        data: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / CHUNK;
            let chunk_start = index * CHUNK;
            let until = end.min(chunk_start + CHUNK);
            let slot = index as usize;
            if writing.chunks.len() <= slot {
                writing.chunks.resize(slot + 1, Chunk::default());
            }
            let chunk = writing.chunks[slot];
            let within = at - chunk_start;
            let new_bytes = &data[(at - offset) as usize..(until - offset) as usize];
            let buffer = &mut writing.buffer;
            buffer.clear();
            let written = if chunk.generation > 0 && within >= u64::from(chunk.used) {
                // Bytes where the chunk's keystream is unused: encrypted with it.
                buffer.extend_from_slice(new_bytes);
                key.apply(index, chunk.generation, within, buffer);
                self.file.write_all_at(buffer, at)?;
                Chunk {
                    generation: chunk.generation,
                    used: chunk.used.max((within + buffer.len() as u64) as u32),
                }
            } else {
                // A rewrite: the whole chunk under a new generation, its other
                // bytes read and decrypted under the old one.
                let generation = next_generation(chunk.generation)?;
                let old_end = writing.len.min(chunk_start + CHUNK);
                buffer.resize((until.max(old_end) - chunk_start) as usize, 0);
                if chunk.generation > 0 && old_end > chunk_start {
                    let old = &mut buffer[..(old_end - chunk_start) as usize];
                    let filled = self.read_raw(old, chunk_start)?;
                    key.apply(index, chunk.generation, 0, &mut old[..filled]);
                }
                buffer[within as usize..within as usize + new_bytes.len()]
                    .copy_from_slice(new_bytes);
                key.apply(index, generation, 0, buffer);
                self.file.write_all_at(buffer, chunk_start)?;
                Chunk {
                    generation,
                    used: buffer.len() as u32,
                }
            };
            writing.chunks[slot] = written;
            writing.len = writing.len.max(until);
            at = until;
        }
        Ok(())
    }
}

/// The generation after `generation`, or an error past the last one (a
/// chunk rewritten four billion times).
fn next_generation(generation: u32) -> io::Result<u32> {
    generation.checked_add(1).ok_or_else(|| {
        io::Error::other("a chunk of the staging file was rewritten too often for its key")
    })
}

/// Calls `f` with each chunk `data` (the file's bytes from `offset` on)
/// touches: its index, where in it the part starts, and the part.
fn for_each_chunk(offset: u64, data: &mut [u8], mut f: impl FnMut(u64, u64, &mut [u8])) {
    let mut at = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let index = at / CHUNK;
        let within = at - index * CHUNK;
        let len = ((CHUNK - within) as usize).min(rest.len());
        let (part, after) = rest.split_at_mut(len);
        f(index, within, part);
        rest = after;
        at += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(encrypt: bool) -> (LocalFile, File) {
        let file = tempfile::tempfile().unwrap();
        let raw = file.try_clone().unwrap();
        (LocalFile::new(file, encrypt), raw)
    }

    fn on_disk(raw: &File) -> Vec<u8> {
        let len = raw.metadata().unwrap().len() as usize;
        let mut buf = vec![0u8; len];
        raw.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn an_encrypted_staging_file_reads_back_what_was_written_and_holds_none_of_it() {
        for encrypt in [false, true] {
            let (local, raw) = staged(encrypt);
            let secret = b"the customer's plaintext".repeat(100);
            local.write_at(&secret, 0).unwrap();
            // Past the end: the gap reads as zeros.
            local.write_at(b"tail", 5000).unwrap();
            local.set_len(9000).unwrap();
            let all = local.read(0..9000).unwrap();
            assert_eq!(&all[..secret.len()], &secret[..]);
            assert!(all[secret.len()..5000].iter().all(|&b| b == 0));
            assert_eq!(&all[5000..5004], b"tail");
            assert!(all[5004..].iter().all(|&b| b == 0));
            let disk = on_disk(&raw);
            let leaks = disk.windows(12).any(|w| w == b"the customer");
            assert_eq!(leaks, !encrypt, "encrypt {encrypt}");
            // Cut short: what remains is intact.
            local.set_len(10).unwrap();
            assert_eq!(local.read(0..10).unwrap(), &secret[..10]);
        }
    }

    #[test]
    fn rewritten_bytes_never_share_a_keystream() {
        let (local, raw) = staged(true);
        let first = vec![b'A'; 3000];
        let second = vec![b'B'; 3000];
        local.write_at(&vec![b'x'; 200_000], 0).unwrap();
        local.write_at(&first, 70_000).unwrap();
        let before = on_disk(&raw);
        // The same bytes rewritten, and bytes cut off and written again.
        local.write_at(&second, 70_000).unwrap();
        let after = on_disk(&raw);
        let xor = |a: &[u8], b: &[u8]| -> Vec<u8> { a.iter().zip(b).map(|(x, y)| x ^ y).collect() };
        let range = 70_000..73_000;
        assert_ne!(
            xor(&before[range.clone()], &after[range.clone()]),
            xor(&first, &second),
            "two disk images XOR to the plaintexts' XOR"
        );
        local.set_len(150_000).unwrap();
        let cut = on_disk(&raw);
        local.write_at(&vec![b'C'; 50_000], 150_000).unwrap();
        let again = on_disk(&raw);
        let tail = 150_000..200_000;
        assert_ne!(
            xor(&before[tail.clone()], &again[tail.clone()]),
            xor(&vec![b'x'; 50_000], &vec![b'C'; 50_000])
        );
        assert_eq!(cut.len(), 150_000);
        // Everything still reads back.
        let all = local.read(0..200_000).unwrap();
        assert!(all[..70_000].iter().all(|&b| b == b'x'));
        assert_eq!(&all[70_000..73_000], &second[..]);
        assert!(all[73_000..150_000].iter().all(|&b| b == b'x'));
        assert!(all[150_000..].iter().all(|&b| b == b'C'));
    }

    #[test]
    fn writes_of_any_size_anywhere_read_back_as_a_plain_file_does() {
        // A reference in memory against the staging file, through appends,
        // rewrites across chunk boundaries, gaps and cuts.
        let (local, _raw) = staged(true);
        let mut reference: Vec<u8> = Vec::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..300 {
            let len = reference.len() as u64;
            match next(4) {
                0 | 1 => {
                    let offset = match next(3) {
                        0 => len,
                        _ => next(len + 100_000),
                    };
                    let size = 1 + next(150_000) as usize;
                    let data: Vec<u8> = (0..size).map(|i| (i as u64 ^ round) as u8).collect();
                    local.write_at(&data, offset).unwrap();
                    let end = offset as usize + size;
                    if reference.len() < end {
                        reference.resize(end, 0);
                    }
                    reference[offset as usize..end].copy_from_slice(&data);
                }
                2 => {
                    let size = next(len + 100_000);
                    local.set_len(size).unwrap();
                    reference.resize(size as usize, 0);
                }
                _ => {
                    let from = next(len + 1);
                    let to = from + next(len - from + 1);
                    let got = local.read(from..to).unwrap();
                    assert_eq!(got, &reference[from as usize..to as usize], "round {round}");
                }
            }
        }
        let len = reference.len() as u64;
        assert_eq!(local.read(0..len).unwrap(), &reference[..]);
    }

    #[test]
    fn a_read_racing_a_rewrite_of_its_chunk_reads_what_was_written() {
        let (local, _raw) = staged(true);
        let local = std::sync::Arc::new(local);
        local.write_at(&vec![b'k'; 64 << 10], 0).unwrap();
        let writer = {
            let local = local.clone();
            std::thread::spawn(move || {
                for round in 0..400u32 {
                    // The first half of the chunk rewritten again and again.
                    local.write_at(&[round as u8; 100], 0).unwrap();
                }
            })
        };
        // The second half, never rewritten, reads back as written each time.
        for _ in 0..400 {
            let got = local.read(32 << 10..64 << 10).unwrap();
            assert!(
                got.iter().all(|&b| b == b'k'),
                "a read saw another generation"
            );
        }
        writer.join().unwrap();
    }
}
