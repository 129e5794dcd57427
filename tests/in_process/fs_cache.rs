//! The block cache under the filesystem, on the in-memory store: what is read once
//! is read again without a GET, a replaced object is never served from old blocks,
//! and the statistics report counts what happened.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::common;

use common::fs::{READ, lookup_path, read_all};
use common::pattern;
use s3vol::cache::{BLOCK_SIZE, BlockCache, CacheConfig};
use s3vol::control::{BUF, STATS};
use s3vol::fs::{Fs, FsConfig, LOOKUP_BYTES, ROOT_INO};
use s3vol::local_dir::LocalDir;
use s3vol::stats::MountStats;
use s3vol::store::counted::CountedStore;
use s3vol::store::faulty::{Fault, FaultyStore};
use s3vol::store::memory::MemoryStore;
use s3vol::store::{ObjectStore, Operation};

const MIB: usize = 1024 * 1024;

struct Volume {
    cache: Arc<BlockCache>,
    fs: Fs,
    _dir: tempfile::TempDir,
}

/// As at unmount: blocks still being written behind a reader land in no
/// directory the test is about to remove.
impl Drop for Volume {
    fn drop(&mut self) {
        self.cache.close();
    }
}

/// A block cache of `capacity` bytes on disk under `dir`.
fn cache_in(dir: &std::path::Path, capacity: u64) -> Arc<BlockCache> {
    Arc::new(
        BlockCache::open(CacheConfig {
            dir: LocalDir::open_or_create(&dir.join("blocks")).unwrap(),
            disk_bytes: capacity,
            memory_bytes: 4 * MIB as u64,
            write_backlog: 32 << 20,
        })
        .unwrap(),
    )
}

/// A volume over `store` with a cache of `capacity` bytes and metadata trusted
/// for `ttl`.
fn volume(store: Arc<MemoryStore>, capacity: u64, ttl: Duration) -> Volume {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(dir.path(), capacity);
    let counted = CountedStore::new(store.clone());
    let stats = Arc::new(MountStats {
        source: "bkt".into(),
        read_write: false,
        started: SystemTime::now(),
        requests: counted.stats(),
        cache: Some(cache.clone()),
        memory: None,
        credentials: None,
        errors: Default::default(),
        io_timeout: std::time::Duration::from_secs(30),
        passthrough: Default::default(),
        heads_without_the_sdk: None,
        audit: None,
        callers: Default::default(),
    });
    let counted: Arc<dyn ObjectStore> = Arc::new(counted);
    let config = FsConfig {
        metadata_ttl: ttl,
        cache: Some(cache.clone()),
        stats: Some(stats),
        ..FsConfig::default()
    };
    Volume {
        fs: Fs::new(counted, "", config),
        cache,
        _dir: dir,
    }
}

/// The bytes GETs have asked for since the calls were last cleared.
fn fetched_bytes(store: &MemoryStore) -> u64 {
    store
        .calls()
        .iter()
        .filter_map(|c| c.range.clone())
        .map(|r| r.end - r.start)
        .sum()
}

fn gets(store: &MemoryStore) -> usize {
    store.count_calls(Operation::GetObject)
}

#[tokio::test]
async fn a_second_read_sends_no_get_and_random_reads_are_served_too() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(20 * MIB + 4321, 11);
    store.put("big.bin", data.clone());
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "big.bin").await.unwrap();
    // (The lookup read the first bytes; the file is larger, so they are not kept.)
    store.clear_calls();

    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, data);
    let fetched = fetched_bytes(&store);
    assert_eq!(fetched, data.len() as u64, "each byte fetched once");

    store.clear_calls();
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, data);
    let fh = vol.fs.open(ino, READ).await.unwrap();
    for offset in [15 * MIB + 7, 3, 9 * MIB - 2, data.len() - 4096] {
        let got = vol.fs.read(fh, offset as u64, 4096).await.unwrap();
        assert_eq!(&got[..], &data[offset..offset + 4096], "at {offset}");
    }
    vol.fs.release(fh).await;
    assert_eq!(gets(&store), 0, "{:?}", store.calls());
    assert!(
        vol.cache
            .stats
            .disk_hits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

/// What a sequential reader read the kernel keeps in its page cache: the
/// cache keeps it on disk, not in memory too. A random read's block is kept
/// in memory.
#[tokio::test]
async fn a_sequential_read_leaves_the_memory_tier_to_random_reads() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(6 * MIB, 17);
    store.put("seq.bin", data.clone());
    store.put("rand.bin", data.clone());
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "seq.bin").await.unwrap();
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, data);
    assert_eq!(vol.cache.memory_used().0, 0);
    let ino = lookup_path(&vol.fs, "rand.bin").await.unwrap();
    let fh = vol.fs.open(ino, READ).await.unwrap();
    let offset = 4 * MIB + 5;
    let got = vol.fs.read(fh, offset as u64, 4096).await.unwrap();
    assert_eq!(&got[..], &data[offset..offset + 4096]);
    vol.fs.release(fh).await;
    assert_eq!(vol.cache.memory_used().0, BLOCK_SIZE);
}

#[tokio::test]
async fn read_ahead_opens_all_the_way_at_once_over_cached_blocks() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(40 * MIB, 13);
    store.put("f", data.clone());
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    store.clear_calls();
    // The first 16 MiB in the cache, the rest not: read backwards, each read is
    // a random one, which fetches the one block it touches.
    let fh = vol.fs.open(ino, READ).await.unwrap();
    for block in (0..16u64).rev() {
        vol.fs.read(fh, block * MIB as u64, 4096).await.unwrap();
    }
    vol.fs.release(fh).await;
    let fetched = fetched_bytes(&store);
    assert_eq!(fetched, 16 * MIB as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.clear_calls();

    // Reading from the start again: the window is the largest at once, so the
    // bytes after the cached ones are asked for long before they are reached
    // (a window starting at 1 MiB would ask for nothing until near 16 MiB).
    let fh = vol.fs.open(ino, READ).await.unwrap();
    let got = vol.fs.read(fh, 0, 128 * 1024).await.unwrap();
    assert_eq!(&got[..], &data[..128 * 1024]);
    let asked = || {
        store
            .calls()
            .iter()
            .filter_map(|c| c.range.clone())
            .filter(|r| r.start >= 16 * MIB as u64)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while asked() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(asked() > 0, "nothing past the cached blocks was read ahead");
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, data);
    vol.fs.release(fh).await;
}

#[tokio::test]
async fn a_small_file_is_looked_up_opened_and_read_with_one_get() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let small = pattern(10_000, 21);
    let large = pattern(3 * MIB, 22);
    store.put("d/small.bin", small.clone());
    store.put("d/small2.bin", small.clone());
    store.put("d/empty", Vec::new());
    store.put("d/empty2", Vec::new());
    store.put("d/large.bin", large.clone());
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ops = |store: &MemoryStore| -> Vec<Operation> {
        store.calls().into_iter().map(|c| c.op).collect()
    };

    // A name no listing showed: the GET of its first bytes answers the lookup
    // and brings the whole file; the read sends nothing.
    let d = lookup_path(&vol.fs, "d").await.unwrap();
    store.clear_calls();
    let ino = lookup_path(&vol.fs, "d/small.bin").await.unwrap();
    assert_eq!(read_all(&vol.fs, ino, 4096).await, small);
    let mut sent = ops(&store);
    sent.sort_by_key(|op| op.to_string());
    assert_eq!(sent, [Operation::GetObject, Operation::ListObjectsV2]);
    // An empty one has no first byte to send: a HEAD follows the GET.
    store.clear_calls();
    let ino = lookup_path(&vol.fs, "d/empty").await.unwrap();
    assert_eq!(vol.fs.getattr(ino).await.unwrap().attr.size, 0);
    let mut sent = ops(&store);
    sent.sort_by_key(|op| op.to_string());
    assert_eq!(
        sent,
        [
            Operation::GetObject,
            Operation::HeadObject,
            Operation::ListObjectsV2
        ]
    );

    // Names a listing showed: a small one costs the same single GET, a large
    // one a HEAD (its bytes are read when it is read), an empty one a HEAD.
    let fh = vol.fs.opendir(d).await.unwrap();
    vol.fs.readdir(fh, 0).unwrap();
    store.clear_calls();
    let ino = lookup_path(&vol.fs, "d/small2.bin").await.unwrap();
    assert_eq!(read_all(&vol.fs, ino, 4096).await, small);
    assert_eq!(ops(&store), [Operation::GetObject]);
    store.clear_calls();
    let ino = lookup_path(&vol.fs, "d/large.bin").await.unwrap();
    assert_eq!(ops(&store)[0], Operation::HeadObject);
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, large);
    store.clear_calls();
    vol.fs.lookup(d, "empty2".as_ref()).await.unwrap();
    assert!(!ops(&store).contains(&Operation::GetObject));
    vol.fs.releasedir(fh);
}

/// A volume with a block cache over `store`, whose calls the returned
/// store can fail.
fn volume_with_faults(store: &Arc<MemoryStore>) -> (Fs, Arc<FaultyStore>, tempfile::TempDir) {
    let faulty = Arc::new(FaultyStore::new(store.clone()));
    let dir = tempfile::tempdir().unwrap();
    let config = FsConfig {
        cache: Some(cache_in(dir.path(), 64 * MIB as u64)),
        ..FsConfig::default()
    };
    (Fs::new(faulty.clone(), "", config), faulty, dir)
}

#[tokio::test]
async fn a_file_whose_bytes_are_refused_is_still_looked_up_with_a_head() {
    // An object under a KMS key the role may not use, or in an archive storage
    // class, answers a HEAD but refuses a GET.
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("locked.bin", pattern(1000, 23));
    let (fs, faulty, _dir) = volume_with_faults(&store);
    faulty.fail_nth(Operation::GetObject, 1, Fault::AccessDenied);
    let ino = lookup_path(&fs, "locked.bin").await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().attr.size, 1000);
    assert_eq!(store.count_calls(Operation::HeadObject), 1);
}

#[tokio::test]
async fn an_archived_file_is_seen_and_its_read_refused() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("cold.bin", pattern(1000, 23));
    let (fs, faulty, _dir) = volume_with_faults(&store);
    faulty.fail_all(Operation::GetObject, Fault::Forbidden("InvalidObjectState"));
    let ino = lookup_path(&fs, "cold.bin").await.unwrap();
    assert_eq!(fs.getattr(ino).await.unwrap().attr.size, 1000);
    let fh = fs.open(ino, READ).await.unwrap();
    let read = fs.read(fh, 0, 4096).await;
    assert_eq!(
        read.as_ref().map_err(|e| e.errno()).err(),
        Some(libc::EACCES)
    );
    let said = read.unwrap_err().to_string();
    assert!(said.contains("restored"), "{said}");
    fs.release(fh).await;
}

#[tokio::test]
async fn a_random_read_caches_the_block_it_touches() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let data = pattern(8 * MIB, 12);
    store.put("f", data.clone());
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let fh = vol.fs.open(ino, READ).await.unwrap();
    let offset = 5 * MIB + 100;
    vol.fs.read(fh, 0, 10).await.unwrap();
    store.clear_calls();
    let got = vol.fs.read(fh, offset as u64, 4096).await.unwrap();
    assert_eq!(&got[..], &data[offset..offset + 4096]);
    let ranges: Vec<_> = store.calls().into_iter().filter_map(|c| c.range).collect();
    assert_eq!(
        ranges,
        vec![5 * BLOCK_SIZE..6 * BLOCK_SIZE],
        "one whole block"
    );
    // Elsewhere in the same block: no request.
    let near = offset + 300_000;
    let got = vol.fs.read(fh, near as u64, 4096).await.unwrap();
    assert_eq!(&got[..], &data[near..near + 4096]);
    assert_eq!(gets(&store), 1);
    vol.fs.release(fh).await;
}

#[tokio::test]
async fn a_replaced_object_is_read_fresh_once_the_ttl_has_passed() {
    let store = Arc::new(MemoryStore::new("bkt"));
    let old = pattern(3 * MIB, 1);
    let new = pattern(3 * MIB, 2);
    store.put("f", old.clone());
    let ttl = Duration::from_millis(300);
    let vol = volume(store.clone(), 64 * MIB as u64, ttl);
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, old);

    // Same size, another ETag. Within the TTL the volume still knows the old
    // version and serves it whole from the cache, with no request at all.
    store.put("f", new.clone());
    store.clear_calls();
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, old);
    assert!(store.calls().is_empty(), "{:?}", store.calls());

    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(read_all(&vol.fs, ino, 128 * 1024).await, new);
    assert!(gets(&store) > 0, "the new version came from S3");
}

#[tokio::test]
async fn an_object_replaced_mid_read_fails_with_estale_not_a_mix() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", pattern(4 * MIB, 1));
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let fh = vol.fs.open(ino, READ).await.unwrap();
    vol.fs.read(fh, 0, 4096).await.unwrap();
    store.put("f", pattern(4 * MIB, 2));
    let err = vol.fs.read(fh, 3 * MIB as u64, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    // Block 0 of the old version is still cached, but the next open pins the
    // new ETag and never sees it.
    let again = vol.fs.open(ino, READ).await.unwrap();
    assert_eq!(
        &vol.fs.read(again, 0, 8).await.unwrap()[..],
        &pattern(4 * MIB, 2)[..8]
    );
}

#[tokio::test]
async fn reading_three_times_the_capacity_keeps_the_bound() {
    let store = Arc::new(MemoryStore::new("bkt"));
    for n in 0..3 {
        store.put(&format!("f{n}"), pattern(4 * MIB, n));
    }
    let capacity = 4 * MIB as u64 + 64 * 1024;
    let vol = volume(store.clone(), capacity, Duration::from_secs(60));
    for n in 0..3 {
        let ino = lookup_path(&vol.fs, &format!("f{n}")).await.unwrap();
        assert_eq!(
            read_all(&vol.fs, ino, 128 * 1024).await,
            pattern(4 * MIB, n)
        );
        assert!(vol.cache.disk_used() <= capacity);
    }
    let evictions = vol
        .cache
        .stats
        .evictions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(evictions >= 8, "{evictions} evictions");
    // The last file is what the cache holds now.
    store.clear_calls();
    let ino = lookup_path(&vol.fs, "f2").await.unwrap();
    read_all(&vol.fs, ino, 128 * 1024).await;
    assert!(gets(&store) <= 1, "{:?}", store.calls());
}

#[tokio::test]
async fn the_root_serves_the_statistics_report() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", pattern(2 * MIB, 3));
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::from_secs(60));
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    read_all(&vol.fs, ino, 128 * 1024).await;
    read_all(&vol.fs, ino, 128 * 1024).await;

    let ask = |ino, cmd, size| vol.fs.ioctl(ino, 0, cmd, &[], size);
    let raw = ask(ROOT_INO, STATS, BUF as u32).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(report["requests"]["GetObject"], gets(&store) as u64);
    // The lookup's GET of the first bytes, then the file.
    assert_eq!(report["bytes_from_s3"], 2 * MIB as u64 + LOOKUP_BYTES);
    assert_eq!(report["cache"]["misses"], 2);
    assert!(report["cache"]["bytes_from_cache"].as_u64().unwrap() >= 2 * MIB as u64);
    assert_eq!(report["mode"], "read-only");

    // Only the root answers it, a number s3vol does not know is refused, and
    // only a buffer that holds the report gets it.
    let errno = |r: Result<Vec<u8>, s3vol::fs::FsError>| r.unwrap_err().errno();
    assert_eq!(errno(ask(ino, STATS, BUF as u32).await), libc::ENOTTY);
    assert_eq!(errno(ask(ROOT_INO, STATS + 7, 1 << 20).await), libc::ENOTTY);
    assert_eq!(errno(ask(ROOT_INO, STATS, 16).await), libc::ERANGE);
}

async fn open_read(fs: &Fs, ino: u64) -> s3vol::fs::Opened {
    fs.open_file(ino, READ).await.unwrap()
}

#[tokio::test]
async fn the_kernel_keeps_its_page_cache_only_for_the_version_it_holds() {
    let store = Arc::new(MemoryStore::new("bkt"));
    store.put("f", "version one");
    let vol = volume(store.clone(), 64 * MIB as u64, Duration::ZERO);
    let ino = lookup_path(&vol.fs, "f").await.unwrap();
    let first = open_read(&vol.fs, ino).await;
    assert!(
        !first.keep_cache,
        "nothing is known of the kernel's cache yet"
    );
    vol.fs.release(first.fh).await;
    let again = open_read(&vol.fs, ino).await;
    assert!(again.keep_cache, "same version: keep it");

    // Replaced while `again` (old version) stays open.
    store.put("f", "version two");
    let new = open_read(&vol.fs, ino).await;
    assert!(!new.keep_cache, "another version");
    vol.fs.release(new.fh).await;
    let meanwhile = open_read(&vol.fs, ino).await;
    assert!(
        !meanwhile.keep_cache,
        "an old-version reader may still add pages"
    );
    vol.fs.release(meanwhile.fh).await;
    vol.fs.release(again.fh).await;
    let after = open_read(&vol.fs, ino).await;
    assert!(
        !after.keep_cache,
        "the old reader's pages may be in the cache"
    );
    vol.fs.release(after.fh).await;
    let settled = open_read(&vol.fs, ino).await;
    assert!(settled.keep_cache);
    vol.fs.release(settled.fh).await;
}
