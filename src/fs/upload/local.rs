//! The local file that holds a staged file's bytes, in clear or, on a volume
//! with client-side encryption, encrypted.
//!
//! On an encrypted volume the staging file holds the plaintext under a key of
//! its own: random, made when the file is staged, kept only in memory and
//! gone with the file, in counter mode at the file's offsets (any byte can be
//! read or rewritten alone). A copy of the disk taken at any one moment shows
//! nothing of the data; two copies taken while the same bytes were rewritten
//! show how the two versions differ, which docs/SECURITY.md states. Counter
//! mode turns a hole (a sparse region) into noise, so on such a volume a file
//! that grows past its end has the gap written as encrypted zeros.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use bytes::Bytes;
use zeroize::Zeroizing;

use crate::cse::gcm::Cipher;

/// How much of a gap is zero-filled per write.
const FILL_CHUNK: u64 = 1 << 20;
/// The largest write buffer kept between writes: the kernel's largest FUSE
/// write is 1 MiB.
const MAX_KEPT: usize = 1 << 20;

pub(super) struct LocalFile {
    file: File,
    /// The key of an encrypted staging file, and what its writes share.
    cipher: Option<(Cipher, Mutex<Writing>)>,
}

/// Held by each write to an encrypted staging file.
struct Writing {
    /// The file's length on disk: a gap before a write is filled before it,
    /// and no write lands in it meanwhile.
    len: u64,
    /// Where a write's bytes are encrypted: kept, so that writes of a large
    /// file reuse one buffer instead of paging in a new one each time.
    buffer: Vec<u8>,
}

impl LocalFile {
    /// `file`, empty; with `encrypt`, its bytes are kept under a new key.
    pub fn new(file: File, encrypt: bool) -> Self {
        let cipher = encrypt.then(|| {
            let mut key = Zeroizing::new([0u8; 32]);
            let mut iv = [0u8; 12];
            getrandom::fill(&mut key[..]).expect("the system's random source");
            getrandom::fill(&mut iv).expect("the system's random source");
            let writing = Writing {
                len: 0,
                buffer: Vec::new(),
            };
            (Cipher::new(key, iv, b""), Mutex::new(writing))
        });
        LocalFile { file, cipher }
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let Some((cipher, writing)) = &self.cipher else {
            return self.file.write_all_at(data, offset);
        };
        let mut writing = writing.lock().unwrap();
        self.fill(cipher, writing.len..offset)?;
        let Writing { len, buffer } = &mut *writing;
        buffer.clear();
        buffer.extend_from_slice(data);
        cipher.apply(offset, buffer);
        self.file.write_all_at(buffer, offset)?;
        *len = (*len).max(offset + data.len() as u64);
        if buffer.capacity() > MAX_KEPT {
            *buffer = Vec::new();
        }
        Ok(())
    }

    /// Bytes `range`; zeros past the end of the file on disk (a sparse tail).
    pub fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[filled..], range.start + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if let Some((cipher, _)) = &self.cipher {
            // Past what is on disk, the zeros stand for themselves.
            cipher.apply(range.start, &mut buf[..filled]);
        }
        Ok(Bytes::from(buf))
    }

    /// Cuts or extends the file to `size` bytes, zero-filled.
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        let Some((cipher, writing)) = &self.cipher else {
            return self.file.set_len(size);
        };
        let mut writing = writing.lock().unwrap();
        match size > writing.len {
            true => self.fill(cipher, writing.len..size)?,
            false => self.file.set_len(size)?,
        }
        writing.len = size;
        Ok(())
    }

    /// Writes encrypted zeros over `gap`, if it is not empty.
    fn fill(&self, cipher: &Cipher, gap: Range<u64>) -> io::Result<()> {
        let mut at = gap.start;
        while at < gap.end {
            let end = (at + FILL_CHUNK).min(gap.end);
            let mut zeros = vec![0u8; (end - at) as usize];
            cipher.apply(at, &mut zeros);
            self.file.write_all_at(&zeros, at)?;
            at = end;
        }
        Ok(())
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
}
