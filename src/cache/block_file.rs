//! The block file format: what one cached block looks like on disk.
//!
//! A header with the block's identity (magic, data length, index, key, ETag) and a
//! CRC32C of every [`CHUNK`] of data, padded to a chunk boundary, then the data. A
//! read checks the header once, when the file is opened, and then only the chunks
//! it touches, so a 4 KiB random read costs one small read, not a whole block. A
//! file that does not match (torn write, disk corruption, hash collision) is
//! [`ReadFailure::Damaged`], never an error for the application.
//!
//! The header ends with a tag over the identity and the CRCs, keyed with the
//! mount's own random [`BlockKey`]. The key never leaves the daemon's memory, so a
//! file this mount did not write (left by a crashed mount, copied from another, or
//! forged) fails the tag and is a miss, never data. The chunks themselves carry
//! CRC32C, which catches damage but not a deliberate edit that keeps the CRC: that
//! takes write access to the mount's private directory, which only the daemon's
//! own user and root have, and they can change the daemon itself. (A keyed hash of
//! every chunk verifies about 1.1 GB/s per core here; CRC32C, 20 GB/s.)

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::BlockId;
use crate::local_dir::LocalDir;

/// The unit of checksumming inside a block file: what a small read reads and
/// verifies. One page: a 4 KiB random read costs one 4 KiB disk read (plus the
/// block's header, which the page cache soon holds), as from a plain file.
pub(super) const CHUNK: usize = 4096;

/// Identifies the first bytes of a block file: "s3vol block, format 3".
const MAGIC: &[u8; 8] = b"S3VBLK03";

/// The keyed tag's length: forging one is a 2^-128 guess.
const TAG: usize = 16;

/// A mount's own key for the tags of its block files: random, made when the
/// cache opens, never written anywhere.
pub(super) struct BlockKey([u8; 32]);

impl BlockKey {
    pub(super) fn random() -> io::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(io::Error::other)?;
        Ok(Self(key))
    }

    fn tag(&self, header: &[u8]) -> [u8; TAG] {
        let hash = blake3::keyed_hash(&self.0, header);
        hash.as_bytes()[..TAG].try_into().expect("16 bytes")
    }
}

fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// The start of a block file: magic, data length, index, key length, ETag
/// length, key, ETag. The chunk CRCs follow.
fn identity(id: &BlockId, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + id.key.len() + id.etag.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
    out.extend_from_slice(&(id.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(id.etag.len() as u32).to_le_bytes());
    out.extend_from_slice(id.key.as_bytes());
    out.extend_from_slice(id.etag.as_bytes());
    out
}

/// Where the tag starts: after the identity and the CRCs.
fn tag_start(id: &BlockId, len: usize) -> usize {
    MAGIC.len() + 24 + id.key.len() + id.etag.len() + 4 * chunks(len)
}

/// Where the data starts: after the identity, the CRCs and the tag, padded to a
/// chunk boundary so that reading one chunk reads one page of the disk.
fn header_len(id: &BlockId, len: usize) -> usize {
    (tag_start(id, len) + TAG).next_multiple_of(CHUNK)
}

/// The size of the file holding `len` bytes of block `id`.
pub(super) fn file_len(id: &BlockId, len: usize) -> u64 {
    (header_len(id, len) + len) as u64
}

/// Writes the block file (which must not exist), tagged with `key`, and returns
/// it open for reading.
pub(super) fn write_block(
    dir: &LocalDir,
    name: &str,
    id: &BlockId,
    data: &Bytes,
    key: &BlockKey,
) -> io::Result<OpenBlock> {
    let crcs: Vec<u32> = data.chunks(CHUNK).map(crc32c::crc32c).collect();
    let header_len = header_len(id, data.len());
    let mut header = identity(id, data.len());
    for crc in &crcs {
        header.extend_from_slice(&crc.to_le_bytes());
    }
    let tag = key.tag(&header);
    header.extend_from_slice(&tag);
    header.resize(header_len, 0);
    let mut file = dir.create_file(name)?;
    random_access(&file);
    file.write_all(&header)?;
    file.write_all(data)?;
    Ok(OpenBlock::new(file, header_len, data.len(), crcs))
}

/// Why a block file could not be read.
pub(super) enum ReadFailure {
    /// There is no such file (evicted meanwhile).
    Missing,
    /// The file does not hold the block, or not intact.
    Damaged(String),
}

/// A block file open for reading, its header checked.
pub(super) struct OpenBlock {
    file: File,
    /// Where the data starts in the file.
    data_start: u64,
    len: usize,
    /// The CRC32C of each chunk.
    crcs: Vec<u32>,
}

impl OpenBlock {
    /// Opens the file `name` in `dir` if it holds exactly this block of `len`
    /// bytes, tagged with `key`.
    pub(super) fn open(
        dir: &LocalDir,
        name: &str,
        id: &BlockId,
        len: usize,
        key: &BlockKey,
    ) -> Result<Self, ReadFailure> {
        let file = match dir.open_file(name) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
            Err(e) => return Err(ReadFailure::Damaged(e.to_string())),
        };
        random_access(&file);
        let header_len = header_len(id, len);
        let file_len = file.metadata().map_err(damaged)?.len();
        if file_len != (header_len + len) as u64 {
            return Err(ReadFailure::Damaged("file has the wrong length".into()));
        }
        let mut header = vec![0u8; header_len];
        file.read_exact_at(&mut header, 0).map_err(damaged)?;
        let expected = identity(id, len);
        if header[..expected.len()] != expected[..] {
            return Err(ReadFailure::Damaged("file holds another block".into()));
        }
        let tag_start = tag_start(id, len);
        if header[tag_start..tag_start + TAG] != key.tag(&header[..tag_start]) {
            return Err(ReadFailure::Damaged(
                "file was not written by this mount (its tag does not match)".into(),
            ));
        }
        let crcs = header[expected.len()..tag_start]
            .chunks_exact(4)
            .take(chunks(len))
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self::new(file, header_len, len, crcs))
    }

    fn new(file: File, header_len: usize, len: usize, crcs: Vec<u32>) -> Self {
        Self {
            file,
            data_start: header_len as u64,
            len,
            crcs,
        }
    }

    /// Bytes `want` of the block, if the chunks holding them are intact.
    pub(super) fn read(&self, want: Range<usize>) -> Result<Bytes, ReadFailure> {
        let first = want.start / CHUNK;
        let read_start = first * CHUNK;
        let read_end = want.end.div_ceil(CHUNK).saturating_mul(CHUNK).min(self.len);
        let mut data = vec![0u8; read_end - read_start];
        self.file
            .read_exact_at(&mut data, self.data_start + read_start as u64)
            .map_err(damaged)?;
        for (n, chunk) in data.chunks(CHUNK).enumerate() {
            if crc32c::crc32c(chunk) != self.crcs[first + n] {
                return Err(ReadFailure::Damaged("checksum mismatch".into()));
            }
        }
        Ok(Bytes::from(data).slice(want.start - read_start..want.end - read_start))
    }
}

/// Every read of a block file names its exact range; the kernel's read-ahead
/// would only fetch pages nobody asked for (a 4 KiB read would cost 128 KiB).
fn random_access(file: &File) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    // Only a hint: a file system that ignores it reads a little more.
    let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
}

fn damaged(e: io::Error) -> ReadFailure {
    ReadFailure::Damaged(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id() -> BlockId {
        BlockId {
            key: "dir/key".into(),
            etag: "\"e\"".into(),
            index: 3,
        }
    }

    #[test]
    fn data_starts_on_a_chunk_boundary_and_round_trips() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let path = temp.path().join("b");
        let key = BlockKey::random().unwrap();
        let data: Bytes = (0..3 * CHUNK + 17)
            .map(|i| i as u8)
            .collect::<Vec<_>>()
            .into();
        write_block(&dir, "b", &id(), &data, &key).unwrap();
        let len = fs::metadata(&path).unwrap().len();
        assert_eq!(len, file_len(&id(), data.len()));
        assert_eq!((len - data.len() as u64) % CHUNK as u64, 0);
        let block = OpenBlock::open(&dir, "b", &id(), data.len(), &key)
            .ok()
            .unwrap();
        for want in [
            0..1,
            CHUNK - 1..CHUNK + 1,
            0..data.len(),
            data.len() - 3..data.len(),
        ] {
            assert_eq!(block.read(want.clone()).ok().unwrap(), data.slice(want));
        }
        // The same file asked for as another block, or another length, is damaged.
        let other = BlockId { index: 4, ..id() };
        assert!(matches!(
            OpenBlock::open(&dir, "b", &other, data.len(), &key),
            Err(ReadFailure::Damaged(_))
        ));
        assert!(matches!(
            OpenBlock::open(&dir, "b", &id(), data.len() - 1, &key),
            Err(ReadFailure::Damaged(_))
        ));
        assert!(matches!(
            OpenBlock::open(&dir, "none", &id(), 1, &key),
            Err(ReadFailure::Missing)
        ));
    }

    #[test]
    fn a_file_this_mount_did_not_write_is_never_data() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let data: Bytes = (0..2 * CHUNK)
            .map(|i| (i * 7) as u8)
            .collect::<Vec<_>>()
            .into();
        let (ours, theirs) = (BlockKey::random().unwrap(), BlockKey::random().unwrap());
        // Left by another (or a crashed) mount: its own key.
        write_block(&dir, "left", &id(), &data, &theirs).unwrap();
        assert!(matches!(
            OpenBlock::open(&dir, "left", &id(), data.len(), &ours),
            Err(ReadFailure::Damaged(why)) if why.contains("not written by this mount")
        ));
        // Forged: the right identity and CRCs, any tag.
        let forged = temp.path().join("forged");
        let mut header = identity(&id(), data.len());
        for chunk in data.chunks(CHUNK) {
            header.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        }
        header.resize(header_len(&id(), data.len()), 0);
        header.extend_from_slice(&data);
        fs::write(&forged, header).unwrap();
        assert!(OpenBlock::open(&dir, "forged", &id(), data.len(), &ours).is_err());
        // What this mount wrote is read back.
        write_block(&dir, "own", &id(), &data, &ours).unwrap();
        let block = OpenBlock::open(&dir, "own", &id(), data.len(), &ours)
            .ok()
            .unwrap();
        assert_eq!(block.read(0..data.len()).ok().unwrap(), data);
    }
}
