//! The FUSE adapter mounted over the in-memory store, in the test process: real
//! system calls reach `fuse/` and `fs/` through the kernel with no S3 server.
//!
//! Tests that use it must not start processes while files are open on the
//! mount: a forked child's exit closes its copies of the descriptors, and the
//! kernel sends their FLUSH as if the test had closed them.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use s3vol::fs::{Fs, FsConfig, WriteConfig};
use s3vol::fuse::FuseAdapter;
use s3vol::fuse::session::{self, Access, MountPlan, VolumeHandle};
use s3vol::local_dir::LocalDir;
use s3vol::stats::MountStats;
use s3vol::store::ObjectStore;
use s3vol::store::counted::CountedStore;
use tempfile::TempDir;

/// The part size of the test volumes: S3's smallest, so multipart files stay small.
pub const PART: u64 = 5 << 20;

/// A volume of `store`'s keys under `root/`, mounted in a temporary directory and
/// served by threads of this process; unmounted when dropped.
pub struct MemoryMount {
    pub fs: Arc<Fs>,
    dir: TempDir,
    _staging: TempDir,
    handle: VolumeHandle,
    session: Option<JoinHandle<std::io::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MemoryMount {
    /// A read-only volume.
    pub fn read_only(store: Arc<dyn ObjectStore>, config: FsConfig) -> Self {
        Self::mount(store, config, false, true)
    }

    /// A read-write volume with [`PART`]-sized parts.
    pub fn read_write(store: Arc<dyn ObjectStore>, config: FsConfig) -> Self {
        Self::mount(store, config, true, true)
    }

    /// A read-write volume whose programs may run.
    pub fn read_write_exec(store: Arc<dyn ObjectStore>, config: FsConfig) -> Self {
        Self::mount(store, config, true, false)
    }

    fn mount(
        store: Arc<dyn ObjectStore>,
        mut config: FsConfig,
        read_write: bool,
        noexec: bool,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let staging = tempfile::tempdir().unwrap();
        if read_write {
            config.write = Some(WriteConfig {
                part_size: PART,
                max_in_flight: 4,
                ..WriteConfig::new(LocalDir::open_or_create(staging.path()).unwrap())
            });
        }
        let counted = CountedStore::new(store);
        config.stats = Some(Arc::new(MountStats {
            source: "bkt/root".into(),
            read_write,
            started: std::time::SystemTime::now(),
            requests: counted.stats(),
            cache: config.cache.clone(),
            memory: None,
            credentials: None,
            errors: Default::default(),
            io_timeout: std::time::Duration::from_secs(30),
            passthrough: Default::default(),
            heads_without_the_sdk: None,
            audit: config.audit.as_ref().map(|audit| audit.stats.clone()),
            callers: Default::default(),
        }));
        let fs = Arc::new(Fs::new(Arc::new(counted), "root/", config));
        runtime.spawn(fs.clone().apply_metadata_as_due());
        let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = std::fs::canonicalize(dir.path()).unwrap();
        let plan = MountPlan {
            source: "bkt/root".into(),
            read_only: !read_write,
            noexec,
            access: Access::Owner,
        };
        let volume = session::mount(adapter, &mountpoint, &plan).unwrap_or_else(|e| {
            panic!(
                "cannot mount at {}: {e} (these tests need /dev/fuse, and root or fusermount3)",
                mountpoint.display()
            )
        });
        let handle = volume.handle();
        let session = std::thread::spawn(move || volume.run());
        Self {
            fs,
            dir,
            _staging: staging,
            handle,
            session: Some(session),
            runtime: Some(runtime),
        }
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` under the mountpoint.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Waits (up to 10 s) until the kernel's releases of closed files have
    /// been answered: the kernel sends a release after close(2) has returned,
    /// and until it is answered a new open reads the file's staged copy.
    pub fn settle(&self) {
        let runtime = self.runtime.as_ref().expect("mounted");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !runtime.block_on(self.fs.ready_to_retire()) {
            assert!(
                std::time::Instant::now() < deadline,
                "files closed 10 s ago are still staged"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for MemoryMount {
    fn drop(&mut self) {
        // A test that failed with a file open leaves the volume busy: detach it,
        // and the session ends once the file is closed (at the latest, with the
        // test's thread).
        if self.handle.unmount().is_err() {
            let _ = self.handle.detach();
        }
        if let Some(session) = self.session.take()
            && !std::thread::panicking()
        {
            let _ = session.join();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
