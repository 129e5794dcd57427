//! Test harness: local S3 servers on free 127.0.0.1 ports and real mounts of the
//! s3vol binary, each stopped or unmounted when dropped, even when a test fails.
//!
//! Servers are started through `scripts/garage.sh` and `scripts/moto.sh`, the same
//! scripts the demo and benchmark use. Tests that need them are `#[ignore]`d so a
//! plain `cargo test` stays offline; `scripts/test.sh` installs the servers and runs
//! everything with `--include-ignored`.

#![allow(dead_code)]

pub mod foreground;
pub mod fs;
pub mod fuse;
pub mod host;
pub mod metrics;
pub mod nspawn;
pub mod procs;
pub mod proxy;
pub mod tls;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::MultipartUpload;
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Garage,
    Moto,
}

/// A running local S3 server.
pub struct Server {
    pub kind: ServerKind,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pid: u32,
    dir: TempDir,
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Where scripts/lib.sh keeps the servers and tools it installs.
pub fn tools_dir() -> PathBuf {
    std::env::var("S3VOL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/s3vol-tools"))
}

fn parse_assignments(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Server {
    pub fn start(kind: ServerKind) -> Server {
        Server::start_with_env(kind, &[])
    }

    /// Starts a server with extra environment for its script (such as
    /// GARAGE_DB_ENGINE=sqlite).
    pub fn start_with_env(kind: ServerKind, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let name = match kind {
            ServerKind::Garage => "garage.sh",
            ServerKind::Moto => "moto.sh",
        };
        let out = Command::new("bash")
            .arg(script(name))
            .arg("start")
            .arg(dir.path())
            .envs(env.iter().copied())
            .stderr(Stdio::inherit())
            .output()
            .expect("run the server script");
        assert!(out.status.success(), "{name} start failed");
        let vars = parse_assignments(&String::from_utf8_lossy(&out.stdout));
        let pid_key = match kind {
            ServerKind::Garage => "GARAGE_PID",
            ServerKind::Moto => "MOTO_PID",
        };
        let (access_key, secret_key, region) = match kind {
            ServerKind::Garage => (
                vars["AWS_ACCESS_KEY_ID"].clone(),
                vars["AWS_SECRET_ACCESS_KEY"].clone(),
                vars["AWS_REGION"].clone(),
            ),
            // moto accepts any key until authentication is switched on.
            ServerKind::Moto => ("testing".into(), "testing".into(), "us-east-1".into()),
        };
        Server {
            kind,
            endpoint: vars["S3_ENDPOINT"].clone(),
            access_key,
            secret_key,
            region,
            pid: vars[pid_key].parse().unwrap(),
            dir,
        }
    }

    /// Garage with `bucket` created.
    pub async fn garage_with(bucket: &str) -> Server {
        let server = Server::start(ServerKind::Garage);
        server.create_bucket(bucket).await;
        server
    }

    /// An SDK client with the server's credentials, for setting up and checking
    /// bucket contents independently of s3vol.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(&self.access_key, &self.secret_key)
    }

    pub fn client_with(&self, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            // A stuck server fails the test instead of hanging it.
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        if self.kind == ServerKind::Garage {
            // A global alias, so other keys can be granted access to it by name.
            self.garage(&["bucket", "create", bucket]);
            let key = self.access_key.clone();
            self.garage(&[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &key,
            ]);
            return;
        }
        self.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    /// Turns versioning on for `bucket` (moto keeps versions; Garage does not).
    pub async fn enable_versioning(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let enabled = VersioningConfiguration::builder()
            .status(BucketVersioningStatus::Enabled)
            .build();
        self.client()
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(enabled)
            .send()
            .await
            .unwrap();
    }

    pub async fn put(&self, bucket: &str, key: &str, data: impl Into<Vec<u8>>) {
        self.client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data.into()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
    }

    /// Puts each of `objects` (key and bytes) into `bucket`, 32 at a time.
    pub async fn put_many(
        &self,
        bucket: &str,
        objects: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) {
        use futures::StreamExt;
        let client = self.client();
        let puts = objects.into_iter().map(|(key, data)| {
            let request = client.put_object().bucket(bucket).key(&key);
            async move {
                request
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
            }
        });
        futures::stream::iter(puts)
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }

    /// The object's bytes as the S3 API returns them, or `None` if it is missing.
    /// What a HEAD of `bucket`/`key` says.
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.client()
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {bucket}/{key}: {e:?}"))
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Some(out.body.collect().await.unwrap().to_vec()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(e) => panic!("get {bucket}/{key}: {e:?}"),
        }
    }

    /// The multipart uploads in progress under `prefix`.
    async fn uploads(&self, bucket: &str, prefix: &str) -> Vec<MultipartUpload> {
        let out = self
            .client()
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list uploads in {bucket}: {e:?}"));
        out.uploads().to_vec()
    }

    /// Keys with a multipart upload in progress under `prefix`.
    pub async fn pending_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let uploads = self.uploads(bucket, prefix).await;
        uploads
            .iter()
            .filter_map(|u| u.key().map(String::from))
            .collect()
    }

    /// How many parts the multipart uploads in progress under `prefix` hold.
    pub async fn pending_parts(&self, bucket: &str, prefix: &str) -> usize {
        let mut parts = 0;
        for upload in self.uploads(bucket, prefix).await {
            let listed = self
                .client()
                .list_parts()
                .bucket(bucket)
                .key(upload.key().unwrap_or_default())
                .upload_id(upload.upload_id().unwrap_or_default())
                .send()
                .await
                .unwrap_or_else(|e| panic!("list parts in {bucket}: {e:?}"));
            parts += listed.parts().len();
        }
        parts
    }

    /// Every key under `prefix`, as the S3 API lists them.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap();
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
        }
        keys
    }

    /// Sets the server up as a customer would for s3vol (`scripts/moto_roles.py`:
    /// a user, a role requiring an external ID, a prefix-scoped policy) and switches
    /// authentication on. Returns the script's JSON answer.
    pub fn setup_roles(&self) -> serde_json::Value {
        assert_eq!(self.kind, ServerKind::Moto);
        let python = tools_dir().join("moto-5.2.5/bin/python");
        let out = Command::new(python)
            .arg(script("moto_roles.py"))
            .arg(&self.endpoint)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "moto_roles.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// moto's record of its state (every AssumeRole with its external ID, ...).
    pub fn moto_state(&self) -> serde_json::Value {
        self.moto_api("GET", "/moto-api/data.json", "")
    }

    /// The session layer in front of moto (`scripts/moto_server.py`): applies
    /// `change` (lifetime, sts, revoke) and returns its counters.
    pub fn sessions(&self, change: serde_json::Value) -> serde_json::Value {
        self.moto_api("POST", "/_s3vol/sessions", &change.to_string())
    }

    fn moto_api(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        assert_eq!(self.kind, ServerKind::Moto);
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    }

    /// Runs the Garage CLI against this server and returns its output.
    fn garage(&self, args: &[&str]) -> String {
        assert_eq!(self.kind, ServerKind::Garage);
        let out = Command::new(tools_dir().join("garage-2.5.0/bin/garage"))
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A key that may write `bucket` but not read or list it (Garage only).
    pub fn write_only_key(&self, bucket: &str) -> (String, String) {
        let text = self.garage(&["key", "create", "writer"]);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let (key, secret) = (field("Key ID:"), field("Secret key:"));
        self.garage(&["bucket", "allow", "--write", bucket, "--key", &key]);
        (key, secret)
    }

    /// A base environment for running s3vol against this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            // Keep the host's AWS configuration out of the tests.
            ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn endpoint_args(&self) -> Vec<String> {
        vec![
            "--endpoint-url".into(),
            self.endpoint.clone(),
            "--force-path-style".into(),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we started; at worst it names a process that
        // already exited.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
    }
}

/// The s3vol binary under test: this build's, or the one S3VOL_BIN names (the
/// soak runs the release build).
pub fn binary() -> PathBuf {
    std::env::var_os("S3VOL_BIN")
        .unwrap_or(env!("CARGO_BIN_EXE_s3vol").into())
        .into()
}

/// A command of the s3vol binary under test ([`binary`]).
pub fn s3vol() -> Command {
    Command::new(binary())
}

/// Runs `s3vol` with `args` in the server's environment.
pub fn run_s3vol(server: &Server, args: &[&str]) -> Output {
    s3vol()
        .args(args)
        .envs(server.env())
        .output()
        .expect("run s3vol")
}

/// A daemonized mount of the real binary, unmounted when dropped. Unless the
/// options name one, it gets a cache directory of its own beside the mountpoint.
pub struct Mount {
    pub dir: TempDir,
    pub log: PathBuf,
    pub cache: PathBuf,
}

impl Mount {
    /// Mounts `source` with the server's endpoint and `extra` options; panics with
    /// s3vol's message if it fails.
    pub fn new(server: &Server, source: &str, extra: &[&str]) -> Mount {
        Mount::with_env(server, source, extra, &server.env())
    }

    /// Like [`Mount::new`] with the environment given.
    pub fn with_env(
        server: &Server,
        source: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Mount {
        Mount::at_endpoint(&server.endpoint, source, extra, env)
    }

    /// Mounts `source` from the S3 endpoint `endpoint` (a proxy in front of a
    /// server, say) with `extra` options and the environment given.
    pub fn at_endpoint(
        endpoint: &str,
        source: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().with_extension("log");
        let mountpoint = dir.path().to_str().unwrap().to_string();
        let log_arg = log.to_str().unwrap().to_string();
        let cache = dir.path().with_extension("cache");
        let cache_arg = cache.to_str().unwrap().to_string();
        let mut args = vec!["mount", source, &mountpoint, "--log-file", &log_arg];
        if !extra.contains(&"--cache-dir") {
            args.extend(["--cache-dir", &cache_arg]);
        }
        args.extend(["--endpoint-url", endpoint, "--force-path-style"]);
        args.extend_from_slice(extra);
        let out = s3vol()
            .args(&args)
            .envs(env.iter().cloned())
            .output()
            .expect("run s3vol");
        assert!(
            out.status.success(),
            "mount failed: {}\nlog: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Mount { dir, log, cache }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The mount's statistics report, through `s3vol stats --json`.
    pub fn stats(&self) -> serde_json::Value {
        let out = s3vol()
            .args(["stats", "--json", self.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every byte of a `size`-byte file read once is on disk in
    /// the cache: its blocks are written behind the reader, and counted from
    /// when they are reserved.
    pub fn wait_for_disk(&self, size: usize) {
        assert!(
            wait_until(Duration::from_secs(20), || {
                let cache = &self.stats()["cache"];
                cache["disk_used"].as_u64().unwrap() >= size as u64 && cache["disk_writing"] == 0
            }),
            "{}",
            self.stats()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(self.dir.path());
        remove_once_the_daemon_is_gone(self.dir.path(), &self.cache);
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// How many mounts are stacked at `path`.
pub fn mount_count(path: &Path) -> usize {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let wanted = path.to_str().unwrap().replace(' ', "\\040");
    // The calling thread's view: a test may give its thread a mount namespace
    // of its own.
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .count()
}

/// Unmounts `path` and waits until the kernel no longer lists it.
pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let status = Command::new("umount").arg(path).status();
    if !matches!(status, Ok(s) if s.success()) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
    wait_until(Duration::from_secs(10), || !is_mounted(path));
}

/// The live s3vol processes whose command line names `mountpoint`, with
/// whether each is a volume's worker (`s3vol worker MOUNTPOINT`).
fn volume_processes(mountpoint: &Path) -> Vec<(i32, bool)> {
    let wanted = mountpoint.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (!zombie
                && args.first().is_some_and(|a| a.ends_with(b"s3vol"))
                && args.contains(&wanted.as_bytes()))
            .then(|| (pid, args.get(1) == Some(&&b"worker"[..])))
        })
        .collect()
}

/// The daemon of the volume at `mountpoint`: its supervisor (the process
/// `s3vol mount` or mount.s3vol became), which users and systemd signal.
pub fn daemon_pids(mountpoint: &Path) -> Vec<i32> {
    volume_processes(mountpoint)
        .into_iter()
        .filter(|(_, worker)| !worker)
        .map(|(pid, _)| pid)
        .collect()
}

/// Kills the whole daemon of the volume at `mountpoint` with SIGKILL, as a
/// crash of both its processes would: the supervisor is stopped first (it
/// would start a new worker), then the worker killed (which would stop the
/// volume once its supervisor is gone), then the supervisor. The mount is
/// left dead.
pub fn kill_volume(mountpoint: &Path) {
    let processes = volume_processes(mountpoint);
    assert!(
        !processes.is_empty(),
        "no daemon serves {}",
        mountpoint.display()
    );
    let signal = |worker: bool, signal: i32| {
        for (pid, _) in processes.iter().filter(|(_, w)| *w == worker) {
            // SAFETY: kill(2) on a process found by its command line.
            unsafe { libc::kill(*pid, signal) };
        }
    };
    signal(false, libc::SIGSTOP);
    let stopped = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|s| s.starts_with('T')))
    };
    wait_until(Duration::from_secs(2), || {
        processes
            .iter()
            .filter(|(_, w)| !w)
            .all(|(pid, _)| stopped(pid))
    });
    signal(true, libc::SIGKILL);
    signal(false, libc::SIGKILL);
}

/// Kills with SIGKILL whatever s3vol processes still serve `mountpoint`, a
/// stopped one too: after this, looking at the mount cannot hang.
pub fn kill_leftovers(mountpoint: &Path) {
    for (pid, _) in volume_processes(mountpoint) {
        // SAFETY: kill(2) on a process found by its command line.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The worker serving the volume at `mountpoint`: the process that talks to
/// S3 and answers the kernel.
pub fn worker_pids(mountpoint: &Path) -> Vec<i32> {
    volume_processes(mountpoint)
        .into_iter()
        .filter(|(_, worker)| *worker)
        .map(|(pid, _)| pid)
        .collect()
}

/// The one worker serving `mountpoint`.
pub fn the_worker(mountpoint: &Path) -> i32 {
    let pids = worker_pids(mountpoint);
    assert_eq!(pids.len(), 1, "one worker serves {}", mountpoint.display());
    pids[0]
}

/// Kills the worker serving `mountpoint` with SIGKILL and waits for its
/// successor; the successor's process.
pub fn kill_worker(mountpoint: &Path) -> i32 {
    let old = the_worker(mountpoint);
    // SAFETY: kill(2) of the worker a test's mount started.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0, "kill {old}");
    let mut new = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            new = worker_pids(mountpoint)
                .into_iter()
                .find(|&p| p != old)
                .unwrap_or(0);
            new != 0
        }),
        "no new worker after the first was killed"
    );
    new
}

/// The peak resident memory (VmHWM) of the daemon serving `mountpoint`, in MiB.
pub fn peak_rss_mib(mountpoint: &Path) -> u64 {
    let pid = worker_pids(mountpoint)[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

/// Waits until no s3vol process serves `mountpoint` any more; panics with
/// `what` if one is still there after 20 s.
pub fn assert_daemon_exits(mountpoint: &Path, what: &str) {
    assert!(
        daemon_exits_within(mountpoint, Duration::from_secs(20)),
        "the daemon of {} {what}",
        mountpoint.display()
    );
}

/// Whether every process of the volume at `mountpoint` is gone within `limit`.
/// A test removes a volume's cache directory only then: the daemon removes
/// its own part of it as it exits, and a worker starting meanwhile makes the
/// directory again.
/// Removes `cache`, the cache directory of the volume at `mountpoint`, once
/// no process of the volume is left: a worker starting late (one the
/// supervisor started again after a kill) would make it anew. Waits up to a
/// minute, as a loaded machine may take that long to wind a volume down.
pub fn remove_once_the_daemon_is_gone(mountpoint: &Path, cache: &Path) {
    if !daemon_exits_within(mountpoint, Duration::from_secs(60)) {
        eprintln!("the daemon of {} still runs", mountpoint.display());
    }
    let _ = std::fs::remove_dir_all(cache);
}

pub fn daemon_exits_within(mountpoint: &Path, limit: Duration) -> bool {
    wait_until(limit, || volume_processes(mountpoint).is_empty())
}

/// [`wait_until`] for async tests: the runtime's threads stay free while it
/// waits.
pub async fn wait_until_async(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A 1x1 PNG image.
pub fn png() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=",
        )
        .unwrap()
}

/// Deterministic, non-repeating-looking test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Unmounts a path when dropped, even when a test fails.
pub struct Unmount<'a>(pub &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        unmount(self.0);
    }
}

/// `findmnt`'s answer for a mountpoint: FSTYPE SOURCE OPTIONS (empty if nothing
/// is mounted there).
pub fn findmnt(path: &Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE,OPTIONS"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// docs/DEPLOY.md, whose examples the tests run.
pub fn deploy_guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DEPLOY.md")).unwrap()
}

/// The deploy guide's fstab line for `source`, pointed at a test's mountpoint,
/// its options passed through `edit` (to swap the guide's names for the test's)
/// and `extra` appended (where the server is).
pub fn guide_fstab_line(
    source: &str,
    mountpoint: &Path,
    edit: impl Fn(&str) -> String,
    extra: &str,
) -> String {
    let guide = deploy_guide();
    let line = guide
        .lines()
        .find(|l| l.split_whitespace().next() == Some(source))
        .unwrap_or_else(|| panic!("docs/DEPLOY.md has no fstab line for {source}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [source, _, fstype, options, dump, pass] = fields[..] else {
        panic!("not an fstab line: {line}");
    };
    format!(
        "{source} {} {fstype} {},{extra} {dump} {pass}\n",
        mountpoint.display(),
        edit(options)
    )
}

/// mount(8) with `args` in `env` (mount(8) passes the AWS_* variables on to the
/// helper).
pub fn mount8(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new("mount")
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap()
}

/// Whether a command succeeded, printing what it said if not.
pub fn succeeded(out: &Output) -> bool {
    if !out.status.success() {
        eprintln!(
            "failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}
