//! End to end under faults: the real s3vol binary mounted against Garage through
//! the fault-injecting proxy (`common::proxy`), which resets connections, stalls,
//! cuts answers mid-body and answers 500 or 503 SlowDown for a share of requests,
//! or takes the whole server away for a while.

use crate::common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultProxy, Outage};
use common::writer::Writer;
use common::{Mount, Server, ServerKind, pattern};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;
/// Short, so a stalled request is abandoned after 1 s and the tests stay quick.
const IO_TIMEOUT: &str = "3s";

/// Garage with an empty bucket, and a proxy in front of it.
async fn server_and_proxy() -> (Server, FaultProxy) {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let proxy = FaultProxy::start(&server.endpoint);
    (server, proxy)
}

fn mount_through(proxy: &FaultProxy, server: &Server, extra: &[&str]) -> Mount {
    let mut args = vec!["--io-timeout", IO_TIMEOUT];
    args.extend_from_slice(extra);
    Mount::at_endpoint(&proxy.endpoint(), "vol/root", &args, &server.env())
}

/// Block `i` of a large test file: 4 MiB of pattern, stamped with its index so
/// that no two blocks are alike and a block read from the wrong place shows.
fn block(base: &[u8], i: usize) -> Vec<u8> {
    let mut block = base.to_vec();
    block[..8].copy_from_slice(&(i as u64).to_le_bytes());
    block
}

const BLOCK: usize = 4 * MIB;

/// Writes `blocks` blocks to `path` through dd in a process of its own (a
/// descriptor of the test process would be flushed by every process another test
/// forks). dd reports a failed write or close with its exit status.
fn write_blocks(path: &Path, blocks: usize, base: &[u8]) {
    let mut dd = Command::new("dd")
        .arg(format!("of={}", path.display()))
        .args(["bs=4M", "iflag=fullblock", "status=none"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = dd.stdin.take().unwrap();
    for i in 0..blocks {
        stdin.write_all(&block(base, i)).unwrap();
    }
    drop(stdin);
    let out = dd.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `path` sequentially and checks every block.
fn check_blocks(path: &Path, blocks: usize, base: &[u8]) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut got = vec![0u8; BLOCK];
    for i in 0..blocks {
        file.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("reading block {i}: {e}"));
        assert!(got == block(base, i), "block {i} differs");
    }
    assert_eq!(file.read(&mut got).unwrap(), 0, "data past the end");
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_gib_is_written_and_read_byte_exact_with_a_tenth_of_requests_failing() {
    let (server, proxy) = server_and_proxy().await;
    proxy.inject(0.10, &Fault::ALL);
    let base = pattern(BLOCK, 41);
    let blocks = 1024 * MIB / BLOCK;

    let writer = mount_through(&proxy, &server, &["--read-write"]);
    // At least one of each kind, whatever the dice say, forced on the write's
    // requests: queued before the mount, all five would land one after the other
    // on its first request, whose 3 s of retries a stall and the backoff between
    // the five nearly use up (one more fault, and the mount fails).
    proxy.force(&Fault::ALL, false);
    let started = Instant::now();
    write_blocks(&writer.path().join("big"), blocks, &base);
    eprintln!("1 GiB written in {:.1?}", started.elapsed());
    eprintln!("{}", proxy.counts().summary());
    drop(writer);
    assert_eq!(server.pending_parts(BUCKET, "root/").await, 0);
    let faults_while_writing = proxy.counts().total_faults();

    // A fresh mount without a cache: every byte comes from S3 through the proxy,
    // two GETs are surely cut off mid-body and one stalls mid-body.
    proxy.force(&[Fault::Cut, Fault::Stall, Fault::Cut], true);
    let reader = mount_through(&proxy, &server, &["--no-cache"]);
    let started = Instant::now();
    check_blocks(&reader.path().join("big"), blocks, &base);
    eprintln!("1 GiB read in {:.1?}", started.elapsed());
    let counts = proxy.counts();
    eprintln!("{}", counts.summary());
    // Faults really happened on both legs, of every kind.
    assert!(faults_while_writing > 0);
    assert!(counts.total_faults() > faults_while_writing);
    for fault in Fault::ALL {
        assert!(counts.faults(fault) > 0, "no {fault:?} was injected");
    }
    // s3vol saw them and retried; a GET cut off mid-body was resumed.
    let stats = reader.stats();
    assert!(stats["request_errors"].as_u64().unwrap() > 0, "{stats}");
    let log = reader.log_text();
    assert!(
        log.contains("resuming from the last byte received"),
        "{log}"
    );
    // The stalled body was given up after a third of --io-timeout.
    assert!(log.contains("no data for 1s"), "{log}");
}

/// Creates, lists, reads, renames and deletes small files; exits non-zero with
/// the failing call on any error.
const SMALL_FILES: &str = r#"
import os, sys
root = sys.argv[1]
for d in range(4):
    os.mkdir(f"{root}/d{d}")
    for i in range(40):
        with open(f"{root}/d{d}/f{i}", "w") as f:
            f.write(f"file {d}/{i}\n" * (i + 1))
for d in range(4):
    names = sorted(os.listdir(f"{root}/d{d}"))
    assert len(names) == 40, names
    for i in range(40):
        with open(f"{root}/d{d}/f{i}") as f:
            assert f.read() == f"file {d}/{i}\n" * (i + 1)
        os.stat(f"{root}/d{d}/f{i}")
    for i in range(0, 40, 4):
        os.rename(f"{root}/d{d}/f{i}", f"{root}/d{d}/r{i}")
    for i in range(1, 40, 4):
        os.unlink(f"{root}/d{d}/f{i}")
print("done")
"#;

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn small_files_see_no_error_with_a_tenth_of_requests_failing() {
    let (server, proxy) = server_and_proxy().await;
    proxy.inject(0.10, &Fault::ALL);
    let mount = mount_through(&proxy, &server, &["--read-write"]);
    let out = Command::new("python3")
        .args(["-c", SMALL_FILES])
        .arg(mount.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount.log_text()
    );
    let counts = proxy.counts();
    eprintln!("{}", counts.summary());
    assert!(
        counts.total_faults() > 20,
        "too few faults to mean anything"
    );

    // S3 holds exactly what the workload left.
    let keys = server.keys(BUCKET, "root/").await;
    for d in 0..4 {
        for i in 0..40 {
            let key = match i % 4 {
                0 => format!("root/d{d}/r{i}"),
                1 => continue,
                _ => format!("root/d{d}/f{i}"),
            };
            let body = server.get(BUCKET, &key).await;
            let want = format!("file {d}/{i}\n").repeat(i + 1);
            assert_eq!(body.as_deref(), Some(want.as_bytes()), "{key}");
        }
    }
    let files = keys.iter().filter(|k| !k.ends_with('/')).count();
    assert_eq!(files, 4 * 30, "{keys:?}");
    // A CreateMultipartUpload whose answer was lost and that was sent again
    // leaves an empty upload: no parts, nothing billed.
    assert_eq!(server.pending_parts(BUCKET, "root/").await, 0);
}

/// The errno of an I/O error, and how long the call took.
fn timed<T>(call: impl FnOnce() -> std::io::Result<T>) -> (Option<i32>, Duration) {
    let start = Instant::now();
    let result = call();
    (
        result.err().map(|e| e.raw_os_error().unwrap_or(0)),
        start.elapsed(),
    )
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn an_outage_fails_calls_within_the_io_timeout_and_the_mount_recovers() {
    let (server, proxy) = server_and_proxy().await;
    server.put(BUCKET, "root/before", b"before".to_vec()).await;
    let mount = mount_through(&proxy, &server, &["--read-write", "--metadata-ttl", "0"]);
    assert_eq!(
        std::fs::read(mount.path().join("before")).unwrap(),
        b"before"
    );

    // A file being written when the server goes away.
    let (mut writer, _data) = Writer::start(b"unsaved", &mount.path().join("open"));
    writer.step("write 7").unwrap();

    // 3 s of retrying, 1 s of silence before a retry, and the slack of a loaded
    // machine.
    let bound = Duration::from_secs(8);
    let outage = Instant::now();
    let mut slowest = Duration::ZERO;
    for state in [Outage::Refused, Outage::Silent] {
        proxy.set_outage(state);
        let phase = Instant::now();
        let mut round = 0;
        while phase.elapsed() < Duration::from_secs(15) {
            round += 1;
            let name = format!("{state:?}-{round}");
            let (stat, took) = timed(|| std::fs::metadata(mount.path().join(&name)));
            assert_eq!(stat, Some(libc::EIO), "stat {name}");
            slowest = slowest.max(took);
            let (read, took) = timed(|| std::fs::read(mount.path().join("before")));
            assert_eq!(read, Some(libc::EIO), "read during {state:?}");
            slowest = slowest.max(took);
            if state == Outage::Silent && round == 1 {
                let (close, took) = timed(|| {
                    writer
                        .step("close")
                        .map_err(std::io::Error::from_raw_os_error)
                });
                assert_eq!(close, Some(libc::EIO), "close during the outage");
                slowest = slowest.max(took);
            }
        }
    }
    eprintln!(
        "{:.1?} of outage; the slowest call took {slowest:.1?}",
        outage.elapsed()
    );
    assert!(slowest < bound, "a call took {slowest:?}");
    proxy.set_outage(Outage::None);

    // Back without a remount.
    assert_eq!(
        std::fs::read(mount.path().join("before")).unwrap(),
        b"before"
    );
    std::fs::write(mount.path().join("after"), b"after").unwrap();
    assert_eq!(
        server.get(BUCKET, "root/after").await.as_deref(),
        Some(&b"after"[..])
    );
    // The file whose close failed was not stored, not even in part.
    assert_eq!(server.get(BUCKET, "root/open").await, None);
    let log = mount.log_text();
    assert!(log.contains("giving up"), "{log}");
}

/// The ways a request's payload was signed, for the uploads the proxy saw.
fn upload_signing(proxy: &FaultProxy) -> Vec<(String, String)> {
    proxy
        .counts()
        .payload_signing()
        .into_iter()
        .filter(|(start, _)| start.contains("x-id=PutObject") || start.contains("x-id=UploadPart"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn upload_payloads_over_http_beyond_this_host_are_signed() {
    let (server, proxy) = server_and_proxy().await;
    let base = pattern(BLOCK, 71);
    // A name other than localhost is another host to s3vol; /etc/hosts (in this
    // test's namespace) sends it to the proxy on 127.0.0.1 all the same.
    let remote = format!("http://s3vol-remote.test:{}", proxy.port);
    common::host::with_host_name("s3vol-remote.test", || {
        let mount = Mount::at_endpoint(
            &remote,
            "vol/root",
            &["--read-write", "--allow-http", "--io-timeout", IO_TIMEOUT],
            &server.env(),
        );
        std::fs::write(mount.path().join("small"), b"small file").unwrap();
        write_blocks(&mount.path().join("large"), 3, &base);
    });
    let uploads = upload_signing(&proxy);
    assert!(uploads.len() >= 3, "a PutObject and two parts: {uploads:?}");
    for (start, signing) in &uploads {
        // Every chunk signed as it streams, or a SHA-256 of the whole payload.
        let signed = signing == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
            || (signing.len() == 64 && signing.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(signed, "{start}: {signing:?}");
    }

    // On this host's loopback there is no network to cross: no SHA-256 over
    // every byte (a fifth of the daemon's CPU when writing).
    let local = mount_through(&proxy, &server, &["--read-write"]);
    std::fs::write(local.path().join("local"), b"small file").unwrap();
    let last = upload_signing(&proxy).pop().unwrap();
    assert_eq!(last.1, "UNSIGNED-PAYLOAD", "{}", last.0);
}
