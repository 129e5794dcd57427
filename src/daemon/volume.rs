//! What serves a volume, assembled from its configuration: the store stack
//! (checked with the start-up probes), the block cache, the staging directory,
//! the statistics, the filesystem and its FUSE adapter, and how to mount it.

use std::sync::Arc;

use tracing::info;

use crate::cache::{BlockCache, CacheConfig};
use crate::config::MountConfig;
use crate::cse::codec::Plain;
use crate::cse::volume::VolumeEncryption;
use crate::fs::{Fs, FsConfig, WriteConfig};
use crate::fuse::FuseAdapter;
use crate::fuse::session::{Access, MountPlan};
use crate::journal::Journal;
use crate::local_dir::LocalDir;
use crate::memory::MemoryBudget;
use crate::preflight;
use crate::startup::StartError;
use crate::stats::{MountStats, bytes};
use crate::store::ObjectStore;
use crate::store::journaled::JournaledStore;
use crate::store::versioned::VersionedView;

/// A volume ready to be mounted.
pub(super) struct Volume {
    pub fs: Arc<Fs>,
    pub adapter: FuseAdapter,
    pub plan: MountPlan,
    pub stats: Arc<MountStats>,
    pub cache: Option<Arc<BlockCache>>,
}

impl Volume {
    /// Connects to S3, checks that the credentials can do what the mode needs,
    /// and builds the filesystem on top. `config.cache_dir` is set (by the mount
    /// command) whenever the cache or staging needs it.
    ///
    /// With a `journal`, the filesystem records there what the kernel is
    /// told, and the store the uploads under way. A worker taking a volume
    /// over skips the access probes (`probe` false): the volume is mounted,
    /// and every moment without a worker is a moment its applications wait.
    pub(super) async fn assemble(
        config: &MountConfig,
        runtime: &tokio::runtime::Handle,
        journal: Option<Arc<Journal>>,
        probe: bool,
    ) -> Result<Self, StartError> {
        let connection = &config.connection;
        let stack = connection.volume_stack(&config.source.bucket).await?;
        let encryption = config
            .cse
            .as_ref()
            .map(|cse| Arc::new(VolumeEncryption::connect(cse, &stack.sdk)));
        if probe {
            preflight::check_mount(
                stack.probe.as_ref(),
                &config.source,
                config.read_write,
                &connection.endpoint(),
                encryption.as_deref(),
            )
            .await?;
        }

        let store = match &journal {
            Some(journal) => {
                Arc::new(JournaledStore::new(stack.store, journal.clone())) as Arc<dyn ObjectStore>
            }
            None => stack.store,
        };
        let store = match config.version_at {
            Some(at) => {
                preflight::check_versions(
                    stack.probe.as_ref(),
                    &config.source,
                    &connection.endpoint(),
                )
                .await?;
                Arc::new(VersionedView::new(store, at, connection.io_timeout))
                    as Arc<dyn ObjectStore>
            }
            None => store,
        };

        // Opened again here, after the fork, with the same checks as before it.
        let local = match &config.cache_dir {
            Some(path) => Some(LocalDir::open_or_create(path).map_err(StartError::other)?),
            None => None,
        };
        let shares = match &local {
            Some(local) => Some(LocalShares::of(local, config)?),
            None => None,
        };
        let caching = local.is_some() && !config.no_cache;
        let memory = MemoryBudget::new(
            config.max_memory,
            caching,
            config.read_write.then_some(config.part_size),
        );
        let cache = match (&local, &shares) {
            (Some(local), Some(shares)) if caching => {
                Some(Arc::new(open_cache(local, shares.cache, &memory)?))
            }
            _ => None,
        };
        let write = match (&local, &shares) {
            (Some(local), Some(shares)) if config.read_write => Some(WriteConfig {
                part_size: config.part_size,
                max_in_flight: usize::from(config.max_concurrency),
                staging_limit: shares.staging,
                ..WriteConfig::new(local.subdir("staging").map_err(StartError::other)?)
            }),
            _ => None,
        };
        // Opened again here, after the fork, with the same checks as before it.
        let audit = match &config.audit_log {
            Some(path) => Some(crate::audit::AuditLog::open(path).map_err(|e| {
                StartError::other(format!("cannot open audit log {}: {e}", path.display()))
            })?),
            None => None,
        };
        let stats = Arc::new(MountStats {
            source: match config.version_at {
                Some(at) => format!(
                    "{} as it was at {}",
                    config.source,
                    humantime::format_rfc3339_seconds(at)
                ),
                None => config.source.to_string(),
            },
            read_write: config.read_write,
            started: std::time::SystemTime::now(),
            requests: stack.requests,
            cache: cache.clone(),
            memory: Some(memory.clone()),
            credentials: Some(stack.credentials),
            audit: audit.as_ref().map(|audit| audit.stats.clone()),
            callers: Default::default(),
            errors: Default::default(),
            io_timeout: config.connection.io_timeout,
            passthrough: Default::default(),
            heads_without_the_sdk: Some(stack.heads_without_the_sdk),
        });
        let fs_config = FsConfig {
            uid: config
                .uid
                .unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
            gid: config
                .gid
                .unwrap_or_else(|| nix::unistd::getegid().as_raw()),
            file_mode: config.file_mode,
            dir_mode: config.dir_mode,
            metadata_ttl: config.metadata_ttl,
            metadata: !config.no_metadata,
            content_types: !config.no_content_type,
            cache: cache.clone(),
            memory,
            write,
            stats: Some(stats.clone()),
            audit,
            codec: match encryption {
                Some(encryption) => encryption,
                None => Arc::new(Plain),
            },
            io_timeout: connection.io_timeout,
            ..FsConfig::default()
        };
        let fs = Arc::new(Fs::new(store, config.source.prefix.as_str(), fs_config));
        if let Some(journal) = journal {
            fs.keep_journal(journal);
        }
        let plan = MountPlan {
            source: config.source.to_string(),
            read_only: !config.read_write,
            noexec: config.noexec,
            access: if config.allow_other {
                Access::Everyone
            } else if config.allow_root {
                Access::OwnerAndRoot
            } else {
                Access::Owner
            },
        };
        Ok(Self {
            adapter: FuseAdapter::new(fs.clone(), runtime.clone()),
            fs,
            plan,
            stats,
            cache,
        })
    }
}

/// How the local directory's space is shared between the block cache and the
/// files being written: a quarter of what is free when the volume is mounted,
/// unless the options say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalShares {
    cache: u64,
    staging: u64,
}

impl LocalShares {
    fn of(local: &LocalDir, config: &MountConfig) -> Result<Self, StartError> {
        let given = (config.cache_size, config.staging_size);
        let free = match given {
            // Both given: the free space does not matter.
            (Some(_), Some(_)) => 0,
            _ => nix::sys::statvfs::fstatvfs(local)
                .map(|s| s.blocks_available() * s.fragment_size())
                .map_err(|e| {
                    StartError::other(format!(
                        "cannot see the free space in {}: {e}",
                        local.path().display()
                    ))
                })?,
        };
        let shares = Self::split(
            free,
            config.cache_size,
            config.staging_size,
            config.read_write,
        );
        if given.0.is_none() && free / 4 < 64 << 20 {
            tracing::warn!(
                dir = %local.path().display(),
                free = %bytes(free),
                "little free space for the block cache and files being written; choose \
                 another --cache-dir or set --cache-size and --staging-size"
            );
        }
        Ok(shares)
    }

    /// A quarter of `free` for both: all of it for the cache of a read-only
    /// volume; half for each of a read-write one. A cache size given leaves the
    /// rest of the quarter to staging, but never less than half the quarter.
    fn split(free: u64, cache: Option<u64>, staging: Option<u64>, writing: bool) -> Self {
        let quarter = free / 4;
        let cache = cache.unwrap_or(if writing { quarter / 2 } else { quarter });
        let staging = staging.unwrap_or(quarter.saturating_sub(cache).max(quarter / 2));
        Self { cache, staging }
    }
}

/// The block cache in `local`/blocks, bounded by `disk_bytes` and by its shares
/// of `memory`. The memory tier is small: the kernel's page cache already keeps
/// the block files (and, for unchanged files, the files themselves) that are
/// read often.
fn open_cache(
    local: &LocalDir,
    disk_bytes: u64,
    memory: &MemoryBudget,
) -> Result<BlockCache, StartError> {
    let dir = local.subdir("blocks").map_err(StartError::other)?;
    let shown = dir.path().display().to_string();
    info!(dir = shown, size = %bytes(disk_bytes), "block cache");
    BlockCache::open(CacheConfig {
        dir,
        disk_bytes,
        memory_bytes: memory.memory_tier(),
        write_backlog: memory.write_backlog(),
    })
    .map_err(|e| {
        StartError::other(format!(
            "cannot use {shown} for the block cache: {e}; choose another --cache-dir, or \
             turn the cache off with --no-cache"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_space_is_shared_as_documented() {
        const GIB: u64 = 1 << 30;
        let split = LocalShares::split;
        // 40 GiB free: a quarter is 10 GiB.
        assert_eq!(split(40 * GIB, None, None, false).cache, 10 * GIB);
        let rw = split(40 * GIB, None, None, true);
        assert_eq!((rw.cache, rw.staging), (5 * GIB, 5 * GIB));
        let small_cache = split(40 * GIB, Some(2 * GIB), None, true);
        assert_eq!(small_cache.staging, 8 * GIB);
        // A cache that takes the whole quarter still leaves staging an eighth.
        let big_cache = split(40 * GIB, Some(20 * GIB), None, true);
        assert_eq!(big_cache.staging, 5 * GIB);
        let given = split(0, Some(GIB), Some(3 * GIB), true);
        assert_eq!((given.cache, given.staging), (GIB, 3 * GIB));
    }
}
