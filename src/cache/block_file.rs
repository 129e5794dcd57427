//! The block file format: how one cached block of an object version lies on
//! disk.
//!
//! Every version has one data file, which holds each cached block at the
//! block's own offset in the object (the rest is a hole), so that a version
//! whole in the cache is a plain copy of the object: the kernel can read it
//! directly (FUSE passthrough, which the filesystem decides). Each block has a
//! small header file of its own beside it: the block's identity (magic, data
//! length, index, key, ETag) and a CRC32C of every [`CHUNK`] of its data. A read
//! checks the header once, when the block is first read, and then only the
//! chunks it touches, so a 4 KiB random read costs one small read, not a whole
//! block. A block that does not match (torn write, disk corruption, hash
//! collision) is [`ReadFailure::Damaged`], never an error for the application.
//!
//! The header ends with a tag over the identity and the CRCs, keyed with the
//! mount's own random [`BlockKey`]. The key never leaves the daemon's memory, so a
//! header this mount did not write (left by a crashed mount, copied from another,
//! or forged) fails the tag and is a miss, never data. The chunks themselves
//! carry CRC32C, which catches damage but not a deliberate edit that keeps the
//! CRC: that takes write access to the mount's private directory, which only the
//! daemon's own user and root have, and they can change the daemon itself. (A
//! keyed hash of every chunk verifies about 1.1 GB/s per core here; CRC32C,
//! 20 GB/s.)

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::BlockId;
use crate::local_dir::LocalDir;

/// The unit of checksumming inside a block file: what a small read reads and
/// verifies. One page: a 4 KiB random read costs one 4 KiB disk read (plus the
/// block's header, which the page cache soon holds), as from a plain file.
pub(super) const CHUNK: usize = 4096;

/// Identifies the first bytes of a block's header: "s3vol block, format 4".
const MAGIC: &[u8; 8] = b"S3VBLK04";

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

/// The length of a block's header file.
fn header_len(id: &BlockId, len: usize) -> usize {
    tag_start(id, len) + TAG
}

/// The disk space counted for `len` bytes of block `id`: its data, in whole
/// pages, and its header file.
pub(super) fn file_len(id: &BlockId, len: usize) -> u64 {
    (len.next_multiple_of(CHUNK) + header_len(id, len).next_multiple_of(CHUNK)) as u64
}

/// Writes block `id` into the version's `data` file at `start` (its place in
/// the object) and its header, tagged with `key`, as the file `header` (which
/// must not exist); returns the block open for reading.
pub(super) fn write_block(
    dir: &LocalDir,
    header: &str,
    data_file: &Arc<File>,
    start: u64,
    id: &BlockId,
    data: &Bytes,
    key: &BlockKey,
) -> io::Result<OpenBlock> {
    let crcs: Vec<u32> = data.chunks(CHUNK).map(crc32c::crc32c).collect();
    let mut bytes = identity(id, data.len());
    for crc in &crcs {
        bytes.extend_from_slice(&crc.to_le_bytes());
    }
    let tag = key.tag(&bytes);
    bytes.extend_from_slice(&tag);
    data_file.write_all_at(data, start)?;
    dir.create_file(header)?.write_all(&bytes)?;
    Ok(OpenBlock::new(data_file.clone(), start, data.len(), crcs))
}

/// Why a block file could not be read.
pub(super) enum ReadFailure {
    /// There is no such file (evicted meanwhile).
    Missing,
    /// The file does not hold the block, or not intact.
    Damaged(String),
}

/// A block open for reading, its header checked.
pub(super) struct OpenBlock {
    /// The version's data file.
    file: Arc<File>,
    /// Where the block starts in the file.
    data_start: u64,
    len: usize,
    /// The CRC32C of each chunk.
    crcs: Vec<u32>,
}

impl OpenBlock {
    /// Opens block `id` of `len` bytes at `start` in the version's data file,
    /// if the header file `header` in `dir` is exactly this block's, tagged
    /// with `key`.
    pub(super) fn open(
        dir: &LocalDir,
        header: &str,
        data_file: Arc<File>,
        start: u64,
        id: &BlockId,
        len: usize,
        key: &BlockKey,
    ) -> Result<Self, ReadFailure> {
        let file = match dir.open_file(header) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
            Err(e) => return Err(ReadFailure::Damaged(e.to_string())),
        };
        let header_len = header_len(id, len);
        if file.metadata().map_err(damaged)?.len() != header_len as u64 {
            return Err(ReadFailure::Damaged("header has the wrong length".into()));
        }
        let mut bytes = vec![0u8; header_len];
        file.read_exact_at(&mut bytes, 0).map_err(damaged)?;
        let expected = identity(id, len);
        if bytes[..expected.len()] != expected[..] {
            return Err(ReadFailure::Damaged("header names another block".into()));
        }
        let tag_start = tag_start(id, len);
        if bytes[tag_start..] != key.tag(&bytes[..tag_start]) {
            return Err(ReadFailure::Damaged(
                "header was not written by this mount (its tag does not match)".into(),
            ));
        }
        let crcs = bytes[expected.len()..tag_start]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self::new(data_file, start, len, crcs))
    }

    fn new(file: Arc<File>, start: u64, len: usize, crcs: Vec<u32>) -> Self {
        Self {
            file,
            data_start: start,
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

/// Every read of a block through the daemon names its exact range; the
/// kernel's read-ahead would only fetch pages nobody asked for (a 4 KiB read
/// would cost 128 KiB). The advice holds for this descriptor alone: the kernel
/// reading a whole file (passthrough) opens its own.
pub(super) fn random_access(file: &File) {
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

    fn data_file(dir: &LocalDir) -> Arc<File> {
        Arc::new(dir.create_file("data").unwrap())
    }

    #[test]
    fn a_block_lies_at_its_place_in_the_data_file_and_round_trips() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let key = BlockKey::random().unwrap();
        let file = data_file(&dir);
        let data: Bytes = (0..3 * CHUNK + 17)
            .map(|i| i as u8)
            .collect::<Vec<_>>()
            .into();
        let start = 5 * CHUNK as u64;
        write_block(&dir, "h", &file, start, &id(), &data, &key).unwrap();
        let raw = fs::read(temp.path().join("data")).unwrap();
        assert_eq!(raw.len() as u64, start + data.len() as u64);
        assert_eq!(
            &raw[start as usize..],
            &data[..],
            "the data file is the object's bytes"
        );
        let header = fs::metadata(temp.path().join("h")).unwrap().len();
        assert_eq!(
            file_len(&id(), data.len()),
            4 * CHUNK as u64 + header.next_multiple_of(CHUNK as u64)
        );
        let block = OpenBlock::open(&dir, "h", file.clone(), start, &id(), data.len(), &key)
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
        // The same header asked for as another block, or another length, is damaged.
        let other = BlockId { index: 4, ..id() };
        let open =
            |id: &BlockId, len| OpenBlock::open(&dir, "h", file.clone(), start, id, len, &key);
        assert!(matches!(
            open(&other, data.len()),
            Err(ReadFailure::Damaged(_))
        ));
        assert!(matches!(
            open(&id(), data.len() - 1),
            Err(ReadFailure::Damaged(_))
        ));
        assert!(matches!(
            OpenBlock::open(&dir, "none", file.clone(), start, &id(), 1, &key),
            Err(ReadFailure::Missing)
        ));
        // A chunk changed in the data file fails its CRC; the others still read.
        file.write_all_at(b"x", start + CHUNK as u64).unwrap();
        let block = open(&id(), data.len()).ok().unwrap();
        assert!(matches!(
            block.read(CHUNK..CHUNK + 1),
            Err(ReadFailure::Damaged(_))
        ));
        assert_eq!(block.read(0..CHUNK).ok().unwrap(), data.slice(0..CHUNK));
    }

    #[test]
    fn a_header_this_mount_did_not_write_is_never_data() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let file = data_file(&dir);
        let data: Bytes = (0..2 * CHUNK)
            .map(|i| (i * 7) as u8)
            .collect::<Vec<_>>()
            .into();
        let (ours, theirs) = (BlockKey::random().unwrap(), BlockKey::random().unwrap());
        let open = |name| OpenBlock::open(&dir, name, file.clone(), 0, &id(), data.len(), &ours);
        // Left by another (or a crashed) mount: its own key.
        write_block(&dir, "left", &file, 0, &id(), &data, &theirs).unwrap();
        assert!(matches!(
            open("left"),
            Err(ReadFailure::Damaged(why)) if why.contains("not written by this mount")
        ));
        // Forged: the right identity and CRCs, any tag.
        let mut header = identity(&id(), data.len());
        for chunk in data.chunks(CHUNK) {
            header.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        }
        header.resize(header_len(&id(), data.len()), 0);
        fs::write(temp.path().join("forged"), header).unwrap();
        assert!(open("forged").is_err());
        // What this mount wrote is read back.
        write_block(&dir, "own", &file, 0, &id(), &data, &ours).unwrap();
        let block = open("own").ok().unwrap();
        assert_eq!(block.read(0..data.len()).ok().unwrap(), data);
    }
}
