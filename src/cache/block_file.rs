//! The block file format: how one cached block of an object version lies on
//! disk.
//!
//! Every version has one data file, which holds each cached block at the
//! block's own offset in the object (the rest is a hole), so that a version
//! whole in the cache is a plain copy of the object: the kernel can read it
//! directly (FUSE passthrough, which the filesystem decides). Beside it lies
//! the version's header file, with a slot of whole pages for each block at
//! the block's index ([`slot_len`]): the block's identity (magic, data length,
//! index, key, ETag) and a CRC32C of every [`CHUNK`] of its data. One file per
//! version rather than one per block: creating a file for every 1 MiB block
//! written took about 8% of the daemon's CPU in a cold read (ext4's inode
//! allocation), and an evicted block's slot is punched out as its data is. A
//! read checks the header once, when the block is first read, and then only the
//! chunks it touches, so a 4 KiB random read costs one small read, not a whole
//! block. A block that does not match (torn write, disk corruption, hash
//! collision, a slot punched out) is [`ReadFailure::Damaged`], never an error
//! for the application.
//!
//! The header ends with a tag over the identity and the CRCs, keyed with the
//! mount's own random [`BlockKey`]. The key never leaves the daemon's memory, so a
//! header this mount did not write (left by a crashed mount, copied from another,
//! or forged) fails the tag and is a miss, never data. The chunks themselves
//! carry CRC32C, which catches damage but not a deliberate edit that keeps the
//! CRC: that takes write access to the mount's private directory, which only the
//! daemon's own user and root have, and they can change the daemon itself. (A
//! keyed hash of every chunk verifies about 1.1 GB/s per core here; CRC32C,
//! 20 GB/s.) Two writers of the same block (one evicted while it wrote, and the
//! next) write the same header, byte for byte: the same identity, the same
//! bytes (a version's bytes never change) and the same key.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tracing::info;

use super::{BLOCK_SIZE, BlockId};
use crate::local_dir::LocalDir;

/// The unit of checksumming inside a block file: what a small read reads and
/// verifies. One page: a 4 KiB random read costs one 4 KiB disk read (plus the
/// block's header, which the page cache soon holds), as from a plain file.
pub(super) const CHUNK: usize = 4096;

/// Identifies the first bytes of a block's header: "s3vol block, format 5".
const MAGIC: &[u8; 8] = b"S3VBLK05";

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

/// The length of a block's header.
fn header_len(id: &BlockId, len: usize) -> usize {
    tag_start(id, len) + TAG
}

/// The length of each slot of a version's header file: the header of a whole
/// block, in whole pages (one page unless the key is longer than about 2.9
/// KiB), so that punching a slot out frees its disk space.
fn slot_len(id: &BlockId) -> u64 {
    header_len(id, BLOCK_SIZE as usize).next_multiple_of(CHUNK) as u64
}

/// The bytes of block `id`'s slot in its version's header file.
pub(super) fn slot(id: &BlockId) -> Range<u64> {
    let len = slot_len(id);
    let start = id.index.saturating_mul(len);
    start..start.saturating_add(len)
}

/// The disk space counted for `len` bytes of block `id`: its data, in whole
/// pages, and its header's slot.
pub(super) fn file_len(id: &BlockId, len: usize) -> u64 {
    len.next_multiple_of(CHUNK) as u64 + slot_len(id)
}

/// What a write that bypasses the page cache must be aligned to, in the file
/// and in memory: a page, which is at least the logical block size of the
/// disks a cache lies on. (A file system that asks for more refuses the write,
/// and blocks go through the page cache from then on.)
const DIRECT_ALIGN: usize = 4096;

/// Whether blocks are still written past the page cache (`O_DIRECT`): until
/// the cache's file system refuses it once.
///
/// Why bypass it: a cold read already puts every byte in the kernel's cache of
/// the FUSE file, and a copy in the page cache of the data file doubled the
/// memory it fills; on a machine that returns freed memory to its host, filling
/// fresh pages costs more CPU than the read itself (docs/BENCHMARK.md). Written
/// directly, a block costs one DMA from the buffer it arrived in. A re-read
/// served by the kernel from the FUSE file's pages does not need the copy; one
/// served from the data file (passthrough, or the daemon after the kernel
/// dropped its pages) reads the disk, as it would after any memory pressure.
#[derive(Default)]
pub(super) struct DirectWrites {
    refused: AtomicBool,
}

impl DirectWrites {
    fn refuse(&self, e: &io::Error) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            info!(error = %e, "cache blocks are written through the page cache: the cache's file system refused a direct write");
        }
    }
}

/// A version's data file and header file. The data file is read and written
/// through `file`; blocks that can are written directly, and headers written
/// and read, through a descriptor opened for the one access, so that a version
/// costs one descriptor however it was written (a volume may cache many small
/// files).
pub(super) struct DataFile {
    pub(super) file: Arc<File>,
    name: String,
    headers: String,
}

impl DataFile {
    /// Creates the data file `name` and the header file `headers` in `dir`.
    pub(super) fn create(dir: &LocalDir, name: &str, headers: &str) -> io::Result<Self> {
        let file = dir.create_file(name)?;
        if let Err(e) = dir.create_file(headers) {
            let _ = dir.remove_file(name);
            return Err(e);
        }
        random_access(&file);
        Ok(Self {
            file: Arc::new(file),
            name: name.to_string(),
            headers: headers.to_string(),
        })
    }

    /// Frees a block's `slot` of the header file (see [`slot`]), which then
    /// reads as zeros.
    pub(super) fn punch_header(&self, dir: &LocalDir, slot: Range<u64>) -> io::Result<()> {
        let headers = dir.open_read_write(&self.headers, false)?;
        punch(&headers, slot.start, slot.end - slot.start)
    }

    /// Writes `data` at `start`: with `direct`, the part of it aligned in the
    /// file and in memory directly (a buffer of a part fetched whole is; a block
    /// fetched alone, on the heap, is not), the rest through the page cache.
    pub(super) fn write_at(
        &self,
        dir: &LocalDir,
        data: &[u8],
        start: u64,
        direct: Option<&DirectWrites>,
    ) -> io::Result<()> {
        let aligned = (data.len() / DIRECT_ALIGN) * DIRECT_ALIGN;
        let direct = direct.filter(|d| {
            !d.refused.load(Ordering::Relaxed)
                && aligned > 0
                && start.is_multiple_of(DIRECT_ALIGN as u64)
                && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        });
        let mut written = 0;
        if let Some(direct) = direct {
            // (The name is this file's until the version goes, and never
            // another's: a version cached again gets a new name.)
            let wrote = dir
                .open_direct_writer(&self.name)
                .and_then(|writer| writer.write_all_at(&data[..aligned], start));
            match wrote {
                Ok(()) => written = aligned,
                // No direct I/O here (EINVAL at open, or an alignment the file
                // system asks more of; EOPNOTSUPP): the page cache from now on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                    direct.refuse(&e)
                }
                // What a buffered write would meet as well.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)
                    ) =>
                {
                    return Err(e);
                }
                // The version went meanwhile (the block goes where it did), or
                // no descriptor to be had now: this block through the page cache.
                Err(_) => {}
            }
        }
        self.file
            .write_all_at(&data[written..], start + written as u64)
    }
}

/// Writes the header of block `id`, tagged with `key`, into its slot of the
/// version's header file, once its `data` is in the version's `data_file` at
/// `start` (its place in the object: see [`DataFile::write_at`]); returns the
/// block open for reading.
pub(super) fn write_header(
    dir: &LocalDir,
    data_file: &DataFile,
    start: u64,
    id: &BlockId,
    data: &Bytes,
    key: &BlockKey,
) -> io::Result<OpenBlock> {
    let crcs: Vec<u32> = data.chunks(CHUNK).map(crc_fast::crc32_iscsi).collect();
    let mut bytes = identity(id, data.len());
    for crc in &crcs {
        bytes.extend_from_slice(&crc.to_le_bytes());
    }
    let tag = key.tag(&bytes);
    bytes.extend_from_slice(&tag);
    dir.open_read_write(&data_file.headers, false)?
        .write_all_at(&bytes, slot(id).start)?;
    Ok(OpenBlock::new(
        data_file.file.clone(),
        start,
        data.len(),
        crcs,
    ))
}

/// Why a block could not be read.
pub(super) enum ReadFailure {
    /// The tier holds no such block (evicted meanwhile).
    Missing,
    /// The block could not be read now, for a reason not its own.
    Unreadable(String),
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
    /// Opens block `id` of `len` bytes at `start` in the version's files, if
    /// its slot of the header file holds exactly this block's header, tagged
    /// with `key`.
    pub(super) fn open(
        dir: &LocalDir,
        data_file: &DataFile,
        start: u64,
        id: &BlockId,
        len: usize,
        key: &BlockKey,
    ) -> Result<Self, ReadFailure> {
        // (No descriptor to be had now, say: not the block's fault.)
        let headers = dir
            .open_file(&data_file.headers)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ReadFailure::Missing,
                _ => ReadFailure::Unreadable(e.to_string()),
            })?;
        let header_len = header_len(id, len);
        let mut bytes = vec![0u8; header_len];
        match headers.read_exact_at(&mut bytes, slot(id).start) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ReadFailure::Damaged("header cut short".into()));
            }
            Err(e) => return Err(damaged(e)),
        }
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
        Ok(Self::new(data_file.file.clone(), start, len, crcs))
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
            if crc_fast::crc32_iscsi(chunk) != self.crcs[first + n] {
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

/// Frees the disk space of bytes `start..start + len` of `file`, which then
/// read as zeros.
pub(super) fn punch(file: &File, start: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file, flags, start as i64, len as i64)?;
    Ok(())
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

    fn data_file(dir: &LocalDir) -> DataFile {
        DataFile::create(dir, "data", "headers").unwrap()
    }

    /// Block `id()` written as the cache writes it: its data, then its header.
    fn write_block(dir: &LocalDir, file: &DataFile, start: u64, data: &Bytes, key: &BlockKey) {
        file.write_at(dir, data, start, None).unwrap();
        write_header(dir, file, start, &id(), data, key).unwrap();
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
        write_block(&dir, &file, start, &data, &key);
        let raw = fs::read(temp.path().join("data")).unwrap();
        assert_eq!(raw.len() as u64, start + data.len() as u64);
        assert_eq!(
            &raw[start as usize..],
            &data[..],
            "the data file is the object's bytes"
        );
        // The header in its slot, the block's index, a whole page.
        let headers = fs::read(temp.path().join("headers")).unwrap();
        let slot = slot(&id());
        assert_eq!(slot, 3 * CHUNK as u64..4 * CHUNK as u64);
        assert_eq!(
            headers.len(),
            slot.start as usize + header_len(&id(), data.len())
        );
        assert!(headers[..slot.start as usize].iter().all(|&b| b == 0));
        assert_eq!(file_len(&id(), data.len()), 5 * CHUNK as u64);
        let block = OpenBlock::open(&dir, &file, start, &id(), data.len(), &key)
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
        // The same header asked for as another block, or another length, is
        // damaged; so is a slot never written.
        let other = BlockId { index: 4, ..id() };
        let header_file = fs::OpenOptions::new()
            .write(true)
            .open(temp.path().join("headers"))
            .unwrap();
        header_file
            .write_all_at(&headers[slot.start as usize..], self::slot(&other).start)
            .unwrap();
        let open = |id: &BlockId, len| OpenBlock::open(&dir, &file, start, id, len, &key);
        assert!(matches!(
            open(&other, data.len()),
            Err(ReadFailure::Damaged(why)) if why.contains("another block")
        ));
        assert!(matches!(
            open(&id(), data.len() - 1),
            Err(ReadFailure::Damaged(_))
        ));
        for index in [2, 9] {
            assert!(matches!(
                open(&BlockId { index, ..id() }, data.len()),
                Err(ReadFailure::Damaged(_))
            ));
        }
        // A header file gone (its version went meanwhile) is a miss.
        let gone = BlockId { index: 7, ..id() };
        fs::rename(temp.path().join("headers"), temp.path().join("moved")).unwrap();
        assert!(matches!(open(&gone, data.len()), Err(ReadFailure::Missing)));
        fs::rename(temp.path().join("moved"), temp.path().join("headers")).unwrap();
        // A chunk changed in the data file fails its CRC; the others still read.
        file.file.write_all_at(b"x", start + CHUNK as u64).unwrap();
        let block = open(&id(), data.len()).ok().unwrap();
        assert!(matches!(
            block.read(CHUNK..CHUNK + 1),
            Err(ReadFailure::Damaged(_))
        ));
        assert_eq!(block.read(0..CHUNK).ok().unwrap(), data.slice(0..CHUNK));
    }

    #[test]
    fn a_long_key_s_header_still_fits_its_slot() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let key = BlockKey::random().unwrap();
        let file = data_file(&dir);
        let long = BlockId {
            key: "k".repeat(5000),
            etag: "\"e\"".into(),
            index: 1,
        };
        let data = Bytes::from(vec![5u8; BLOCK_SIZE as usize]);
        let (first, second) = (
            BlockId {
                index: 0,
                ..long.clone()
            },
            long.clone(),
        );
        assert_eq!(slot(&first).end, slot(&second).start);
        assert!(slot(&second).end - slot(&second).start >= header_len(&long, data.len()) as u64);
        assert_eq!(slot(&second).start % CHUNK as u64, 0);
        for id in [&first, &second] {
            let start = id.index * BLOCK_SIZE;
            file.file.write_all_at(&data, start).unwrap();
            write_header(&dir, &file, start, id, &data, &key).unwrap();
        }
        for id in [&first, &second] {
            let block = OpenBlock::open(&dir, &file, id.index * BLOCK_SIZE, id, data.len(), &key)
                .ok()
                .unwrap();
            assert_eq!(block.read(0..data.len()).ok().unwrap(), data);
        }
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
        let open = || OpenBlock::open(&dir, &file, 0, &id(), data.len(), &ours);
        // Left by another (or a crashed) mount: its own key.
        write_block(&dir, &file, 0, &data, &theirs);
        assert!(matches!(
            open(),
            Err(ReadFailure::Damaged(why)) if why.contains("not written by this mount")
        ));
        // Forged: the right identity and CRCs, any tag.
        let mut header = identity(&id(), data.len());
        for chunk in data.chunks(CHUNK) {
            header.extend_from_slice(&crc_fast::crc32_iscsi(chunk).to_le_bytes());
        }
        header.resize(header_len(&id(), data.len()), 0);
        fs::OpenOptions::new()
            .write(true)
            .open(temp.path().join("headers"))
            .unwrap()
            .write_all_at(&header, slot(&id()).start)
            .unwrap();
        assert!(open().is_err());
        // What this mount wrote is read back.
        write_block(&dir, &file, 0, &data, &ours);
        let block = open().ok().unwrap();
        assert_eq!(block.read(0..data.len()).ok().unwrap(), data);
    }

    /// `len` bytes of a pattern at `skew` bytes past a page boundary.
    fn bytes_at(len: usize, skew: usize) -> Bytes {
        let mut map = memmap2::MmapMut::map_anon(len + skew).unwrap();
        for (i, b) in map.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        Bytes::from_owner(map).slice(skew..)
    }

    /// Whether the page of `file` at `offset` is in the page cache.
    fn resident(file: &File, offset: usize) -> bool {
        // SAFETY: the test's own file, which nothing changes while mapped.
        let map = unsafe { memmap2::Mmap::map(file) }.unwrap();
        let mut vec = [0u8; 1];
        // SAFETY: the range is one page of a live mapping; `vec` holds one
        // entry per page.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(offset) as *mut libc::c_void,
                DIRECT_ALIGN,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        vec[0] & 1 == 1
    }

    #[test]
    fn blocks_are_written_whole_from_any_memory_and_aligned_ones_bypass_the_page_cache() {
        let temp = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_or_create(temp.path()).unwrap();
        let file = data_file(&dir);
        let direct = DirectWrites::default();
        let page = DIRECT_ALIGN;
        // (start, length, how far past a page its memory starts)
        let cases = [
            (0, 16 * page, 0),             // aligned: direct
            (16 * page, 3 * page + 17, 0), // aligned with a tail
            (32 * page, 2 * page, 5),      // memory not aligned
            (40 * page + 1, page, 0),      // file offset not aligned
            (48 * page, 100, 0),           // less than a page
        ];
        for (start, len, skew) in cases {
            let data = bytes_at(len, skew);
            file.write_at(&dir, &data, start as u64, Some(&direct))
                .unwrap();
        }
        // On the file systems caches lie on (ext4, XFS), the aligned blocks
        // never entered the page cache. (Btrfs, since Linux 6.14, turns a direct
        // write to a file with checksums into a buffered one; tmpfs has no disk.)
        let fs = nix::sys::statfs::fstatfs(&*file.file)
            .unwrap()
            .filesystem_type();
        if [
            nix::sys::statfs::EXT4_SUPER_MAGIC,
            nix::sys::statfs::XFS_SUPER_MAGIC,
        ]
        .contains(&fs)
        {
            assert!(!direct.refused.load(Ordering::Relaxed));
            assert!(!resident(&file.file, 0), "written directly");
            assert!(!resident(&file.file, 8 * page), "written directly");
            assert!(resident(&file.file, 32 * page), "through the page cache");
        }
        // A version that went while its block was written: the block lands in
        // the file it was written for, by its descriptor, and direct writes
        // stay as they were.
        let refused = direct.refused.load(Ordering::Relaxed);
        dir.rename("data", "gone").unwrap();
        let late = bytes_at(4 * page, 0);
        file.write_at(&dir, &late, 56 * page as u64, Some(&direct))
            .unwrap();
        assert_eq!(direct.refused.load(Ordering::Relaxed), refused);
        for (start, len, skew) in cases.into_iter().chain([(56 * page, 4 * page, 0)]) {
            let mut back = vec![0u8; len];
            file.file.read_exact_at(&mut back, start as u64).unwrap();
            assert!(back[..] == bytes_at(len, skew)[..], "{start} {len} {skew}");
        }
    }
}
