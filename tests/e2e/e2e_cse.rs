//! Client-side encryption (`--cse-kms-key-id`) against AWS's own S3 Encryption
//! Client (Python, `scripts/s3ec.py`): what a volume writes, the official
//! client reads, and the other way round, in both formats; with Garage as S3
//! and moto as KMS.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use common::{Mount, Server, ServerKind};
use s3vol::cse::envelope::{Envelope, Format, context_for};
use s3vol::cse::kms::Kms;

const BUCKET: &str = "cse";
const CONTEXT: &str = "volume=test";

struct Setup {
    s3: Server,
    kms_server: Server,
    kms: Kms,
    key_id: String,
}

impl Setup {
    async fn new() -> Setup {
        let s3 = Server::start(ServerKind::Garage);
        s3.create_bucket(BUCKET).await;
        let kms_server = Server::start(ServerKind::Moto);
        let config = aws_sdk_kms::config::Builder::new()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .endpoint_url(&kms_server.endpoint)
            .region(aws_sdk_kms::config::Region::new(s3.region.clone()))
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        let client = aws_sdk_kms::Client::from_conf(config);
        let key = client.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        Setup {
            s3,
            kms_server,
            kms: Kms::new(client, &key_id),
            key_id,
        }
    }

    /// The environment s3vol and the official client run in: Garage's keys
    /// (which moto's KMS takes as well) and moto as KMS.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.s3.env();
        env.push((
            "AWS_ENDPOINT_URL_KMS".into(),
            self.kms_server.endpoint.clone(),
        ));
        env
    }

    /// A volume of the bucket with this KMS key, the test context and `extra`.
    fn mount(&self, extra: &[&str]) -> Mount {
        self.mount_at(BUCKET, extra)
    }

    fn mount_at(&self, source: &str, extra: &[&str]) -> Mount {
        let mut args = vec!["--cse-kms-key-id", &self.key_id, "--cse-context", CONTEXT];
        args.extend_from_slice(extra);
        Mount::with_env(&self.s3, source, &args, &self.env())
    }

    /// Runs scripts/s3ec.py with `args`, `input` on its standard input.
    fn official(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        let python = common::tools_dir().join("s3ec-4.0.0/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3ec.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([&self.s3.endpoint, &self.kms_server.endpoint, &self.key_id])
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// What the official client reads of `key` with the volume's context.
    fn official_get(&self, key: &str) -> Vec<u8> {
        let out = self.official(&["get", BUCKET, key, CONTEXT], b"");
        assert!(
            out.status.success(),
            "the official client could not read {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn official_put(&self, key: &str, version: &str, context: &str, plain: &[u8]) {
        let out = self.official(&["put", BUCKET, key, version, context], plain);
        assert!(
            out.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The object's bytes and user metadata, as S3 holds them.
    async fn raw(&self, key: &str) -> (Vec<u8>, BTreeMap<String, String>) {
        let answer = self
            .s3
            .client()
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
        let metadata = answer
            .metadata()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let body = answer.body.collect().await.unwrap().into_bytes().to_vec();
        (body, metadata)
    }

    /// Stores `body` as `key` with `metadata`, as S3 holds them.
    async fn put_raw(&self, key: &str, body: Vec<u8>, metadata: &BTreeMap<String, String>) {
        let mut put = self
            .s3
            .client()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into());
        for (name, value) in metadata {
            put = put.metadata(name, value);
        }
        put.send().await.unwrap();
    }
}

fn volume_context() -> BTreeMap<String, String> {
    [("volume".to_string(), "test".to_string())].into()
}

fn errno_of(result: std::io::Result<Vec<u8>>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn the_official_client_reads_what_a_volume_writes() {
    let setup = Setup::new().await;
    let mount = setup.mount(&["--read-write", "--log-level", "debug"]);
    let sizes = [0, 1, 8 * MIB - 1, 8 * MIB, 8 * MIB + 1, 100 * MIB];
    for (n, &size) in sizes.iter().enumerate() {
        let plain = common::pattern(size, n as u64);
        let name = format!("written-{size}");
        std::fs::write(mount.path().join(&name), &plain).unwrap();
        let (stored, metadata) = setup.raw(&name).await;
        assert_eq!(stored.len(), size + 16, "{name}: ciphertext and tag");
        assert_eq!(metadata.get("x-amz-c").map(String::as_str), Some("115"));
        assert!(
            size < 64 || !stored.windows(64).any(|w| w == &plain[..64]),
            "{name}: plaintext in S3"
        );
        if size > 8 * MIB {
            let head = setup.s3.client().head_object().bucket(BUCKET).key(&name);
            let etag = head.send().await.unwrap().e_tag().unwrap().to_string();
            assert!(etag.contains('-'), "{name}: a multipart upload, not {etag}");
        }
        assert!(setup.official_get(&name) == plain, "{name}: other bytes");
        // Read back through the volume, and shown at its plaintext size.
        let shown = std::fs::metadata(mount.path().join(&name)).unwrap().len();
        assert_eq!(shown, size as u64);
        assert!(std::fs::read(mount.path().join(&name)).unwrap() == plain);
        eprintln!(
            "s3vol wrote {name} ({size} B, {} B in S3, format V3); the S3 Encryption Client read it back",
            stored.len()
        );
    }
    // Neither the KMS key's data keys nor what they derive reach the log.
    let (_, metadata) = setup.raw("written-1").await;
    let envelope = Envelope::read(&metadata).unwrap().unwrap();
    let data_key = setup
        .kms
        .unwrap(&envelope.wrapped_key, &envelope.context)
        .await
        .unwrap();
    let log = mount.log_text();
    assert!(log.contains("written-1"), "a debug log of the writes");
    for shown in [
        base64::engine::general_purpose::STANDARD.encode(&data_key[..]),
        hex::encode(&data_key[..]),
        format!("{:?}", &data_key[..]),
    ] {
        assert!(!log.contains(&shown), "a data key in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn a_volume_reads_what_the_official_client_writes_in_both_formats() {
    let setup = Setup::new().await;
    let sizes = [0, 1, 8 * MIB - 1, 8 * MIB, 8 * MIB + 1];
    let mut expected = Vec::new();
    for version in ["v3", "v2"] {
        for (n, &size) in sizes.iter().enumerate() {
            let plain = common::pattern(size, 100 + n as u64);
            let key = format!("{version}-official-{size}");
            setup.official_put(&key, version, CONTEXT, &plain);
            let (_, metadata) = setup.raw(&key).await;
            let format = Envelope::read(&metadata).unwrap().unwrap().format;
            let want = if version == "v3" {
                Format::V3
            } else {
                Format::V2
            };
            assert_eq!(format, want, "{metadata:?}");
            expected.push((key, plain));
        }
    }
    // s3vol's own V2, which a mount does not write but every client reads.
    let plain = common::pattern(3 * MIB + 5, 9);
    let context = context_for(Format::V2, &volume_context());
    let data_key = setup.kms.generate(&context).await.unwrap();
    let (envelope, content) =
        Envelope::seal(Format::V2, &data_key.plaintext, data_key.wrapped, context);
    let mut body = plain.clone();
    content.seal(&mut body).unwrap();
    setup
        .put_raw(
            "v2-sealed-by-s3vol",
            body,
            &envelope.metadata().into_iter().collect(),
        )
        .await;
    assert!(setup.official_get("v2-sealed-by-s3vol") == plain);
    expected.push(("v2-sealed-by-s3vol".into(), plain));

    // V2 objects, whose data key does not commit to the content key, only
    // where the volume allows them, as the official clients do.
    let mount = setup.mount(&["--cse-commitment", "allow-v2"]);
    for (key, plain) in &expected {
        let path = mount.path().join(key);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), plain.len() as u64);
        assert!(
            std::fs::read(&path).unwrap() == *plain,
            "{key}: other bytes"
        );
        eprintln!(
            "the S3 Encryption Client wrote {key} ({} B); s3vol read it",
            plain.len()
        );
    }
    let strict = setup.mount(&[]);
    for (key, plain) in &expected {
        let read = std::fs::read(strict.path().join(key));
        match key.starts_with("v3") {
            true => assert!(read.unwrap() == *plain, "{key}"),
            false => assert_eq!(errno_of(read), Some(libc::EACCES), "{key}"),
        }
    }
    assert!(strict.log_text().contains("--cse-commitment allow-v2"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn a_forged_byte_another_context_and_plaintext_are_refused() {
    let setup = Setup::new().await;
    let plain = common::pattern(3 * MIB, 7);
    setup.official_put("forged", "v3", CONTEXT, &plain);
    setup.official_put("forged-v2", "v2", CONTEXT, &plain);
    setup.official_put("other-context", "v3", "volume=another", &plain);
    setup.s3.put(BUCKET, "plain.txt", "not encrypted\n").await;
    for key in ["forged", "forged-v2"] {
        let (mut body, metadata) = setup.raw(key).await;
        body[MIB + 3] ^= 0x01;
        setup.put_raw(key, body, &metadata).await;
    }
    // An empty file is its tag alone: one that is not its own is refused too.
    setup.official_put("forged-empty", "v3", CONTEXT, b"");
    let (mut tag, metadata) = setup.raw("forged-empty").await;
    tag[0] ^= 0x01;
    setup.put_raw("forged-empty", tag, &metadata).await;

    // Authenticated before released: a forged file fails its open, every
    // time, and nothing of it is ever read.
    let mount = setup.mount(&[]);
    for _ in 0..2 {
        let path = mount.path().join("forged");
        assert_eq!(errno_of(std::fs::read(&path)), Some(libc::EIO));
        assert_eq!(
            std::fs::File::open(&path).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
    }
    assert_eq!(
        errno_of(std::fs::read(mount.path().join("forged-v2"))),
        Some(libc::EACCES),
        "a V2 object on a volume that requires key commitment"
    );
    // With --cse-unauthenticated-ranges, as before: a whole read fails
    // before its end, a range away from the change decrypts.
    let ranges = setup.mount(&[
        "--cse-unauthenticated-ranges",
        "--cse-commitment",
        "allow-v2",
    ]);
    for key in ["forged", "forged-v2"] {
        let path = ranges.path().join(key);
        assert_eq!(errno_of(std::fs::read(&path)), Some(libc::EIO), "{key}");
        assert_eq!(
            errno_of(std::fs::read(&path)),
            Some(libc::EIO),
            "{key} again"
        );
    }
    let file = std::fs::File::open(ranges.path().join("forged")).unwrap_err();
    assert_eq!(
        file.raw_os_error(),
        Some(libc::EIO),
        "a version found forged stays so"
    );
    setup.official_put("forged-later", "v3", CONTEXT, &plain);
    let (mut body, metadata) = setup.raw("forged-later").await;
    body[MIB + 3] ^= 0x01;
    setup.put_raw("forged-later", body, &metadata).await;
    let file = std::fs::File::open(ranges.path().join("forged-later")).unwrap();
    let mut start = vec![0u8; 4096];
    file.read_exact_at(&mut start, 2 * MIB as u64).unwrap();
    assert!(start == plain[2 * MIB..2 * MIB + 4096]);
    assert_eq!(
        errno_of(std::fs::read(mount.path().join("forged-empty"))),
        Some(libc::EIO)
    );
    assert_eq!(
        errno_of(std::fs::read(mount.path().join("other-context"))),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(std::fs::read(mount.path().join("plain.txt"))),
        Some(libc::EACCES)
    );
    let log = mount.log_text();
    assert!(log.contains("GCM tag does not match"), "{log}");
    assert!(log.contains("forged"), "the log names the object: {log}");
    assert!(
        log.contains("with the context [volume=another], not this volume's [volume=test]"),
        "{log}"
    );
    assert!(log.contains("--cse-allow-plaintext"), "{log}");

    // For a bucket in migration, plaintext is read as it is (in a prefix
    // whose first object is plaintext: no data key to probe at start-up).
    setup
        .s3
        .put(BUCKET, "migrating/a-plain.txt", "not encrypted\n")
        .await;
    setup.official_put("migrating/b-encrypted", "v3", CONTEXT, b"encrypted\n");
    let source = format!("{BUCKET}/migrating");
    let migrating = setup.mount_at(&source, &["--cse-allow-plaintext"]);
    for (name, content) in [
        ("a-plain.txt", &b"not encrypted\n"[..]),
        ("b-encrypted", b"encrypted\n"),
    ] {
        let path = migrating.path().join(name);
        assert_eq!(std::fs::read(&path).unwrap(), content);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            content.len() as u64
        );
    }
}

/// Bytes the daemon has served: from S3 and from its cache.
fn served(mount: &Mount) -> u64 {
    let stats = mount.stats();
    stats["bytes_from_s3"].as_u64().unwrap() + stats["cache"]["bytes_from_cache"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn a_large_file_streams_its_start_and_never_ends_or_jumps_unchecked() {
    let setup = Setup::new().await;
    // Larger than what is checked whole at open.
    let size = 40 * MIB + 5;
    let plain = common::pattern(size, 21);
    for key in ["large", "large-forged", "large-forged-2"] {
        setup.official_put(key, "v3", CONTEXT, &plain);
    }
    for key in ["large-forged", "large-forged-2"] {
        let (mut body, metadata) = setup.raw(key).await;
        body[size - 100] ^= 0x01;
        setup.put_raw(key, body, &metadata).await;
    }
    let mount = setup.mount(&[]);

    // A whole read streams, and the authentic file reads back.
    let started = std::time::Instant::now();
    assert!(std::fs::read(mount.path().join("large")).unwrap() == plain);
    eprintln!(
        "40 MiB read whole, checked at its end: {:?}",
        started.elapsed()
    );
    // The forged one fails at its end, and at every open after.
    let forged = mount.path().join("large-forged");
    assert_eq!(errno_of(std::fs::read(&forged)), Some(libc::EIO));
    assert_eq!(
        std::fs::File::open(&forged).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // A read that jumps is answered only after the whole is checked: here,
    // never, though the change is 40 MiB away from the bytes asked for.
    let file = std::fs::File::open(mount.path().join("large-forged-2")).unwrap();
    let mut buf = vec![0u8; 4096];
    let jump = file.read_exact_at(&mut buf, 20 * MIB as u64).unwrap_err();
    assert_eq!(jump.raw_os_error(), Some(libc::EIO));
    drop(file);
    // The same jump into the authentic file is answered, once checked.
    let fresh = setup.mount(&[]);
    let file = std::fs::File::open(fresh.path().join("large")).unwrap();
    file.read_exact_at(&mut buf, 20 * MIB as u64).unwrap();
    assert!(buf == plain[20 * MIB..20 * MIB + 4096]);
    drop(file);

    // The kernel keeps no page of a version not yet checked: a second handle
    // reading what the first read streams gets it from the daemon again.
    let unchecked = setup.mount(&[]);
    let path = unchecked.path().join("large");
    let mut first = std::fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 4 * MIB];
    std::io::Read::read_exact(&mut first, &mut head).unwrap();
    assert!(head == plain[..4 * MIB]);
    let before = served(&unchecked);
    let mut second = std::fs::File::open(&path).unwrap();
    std::io::Read::read_exact(&mut second, &mut head).unwrap();
    assert!(head == plain[..4 * MIB]);
    let again = served(&unchecked) - before;
    assert!(
        again >= 4 * MIB as u64,
        "the second handle's reads reached the daemon for {again} B"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn a_size_the_kernel_kept_is_corrected_and_never_ends_a_read_early() {
    let setup = Setup::new().await;
    setup.official_put("policy", "v3", CONTEXT, b"allow=no\n");
    setup.official_put("growing", "v3", CONTEXT, b"ten bytes\n");
    let mount = setup.mount(&["--metadata-ttl", "1h"]);
    let policy = mount.path().join("policy");
    let growing = mount.path().join("growing");
    // The kernel learns the sizes and keeps them (for the metadata TTL).
    assert_eq!(std::fs::metadata(&policy).unwrap().len(), 9);
    assert_eq!(std::fs::metadata(&growing).unwrap().len(), 10);

    // Someone who may write to the bucket, but not use the key, turns
    // "allow=no" into "allow=ok" (counter mode is malleable) and appends
    // 2 MiB, so that the tag lies past the size the kernel knows.
    let (mut body, metadata) = setup.raw("policy").await;
    body[6] ^= b'n' ^ b'o';
    body[7] ^= b'o' ^ b'k';
    body.extend(common::pattern(2 * MIB, 5));
    setup.put_raw("policy", body, &metadata).await;
    let read = std::fs::read(&policy);
    assert_eq!(errno_of(read), Some(libc::EIO), "a changed file was read");

    // An authentic new version, longer than the kernel thinks, is read whole.
    let longer = common::pattern(5 * MIB, 8);
    setup.official_put("growing", "v3", CONTEXT, &longer);
    let got = std::fs::read(&growing).unwrap();
    assert_eq!(
        got.len(),
        longer.len(),
        "a prefix was taken for the whole file"
    );
    assert!(got == longer);
    assert_eq!(
        std::fs::metadata(&growing).unwrap().len(),
        longer.len() as u64
    );
}

/// Replaces `key`'s metadata with `from`'s (its envelope, same context) by a
/// copy onto itself: the bytes, and so the ETag, stay.
async fn swap_envelope(setup: &Setup, key: &str, from: &str) {
    let (_, metadata) = setup.raw(from).await;
    let mut copy = setup
        .s3
        .client()
        .copy_object()
        .bucket(BUCKET)
        .key(key)
        .copy_source(format!("{BUCKET}/{key}"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace);
    for (name, value) in &metadata {
        copy = copy.metadata(name, value);
    }
    copy.send().await.unwrap();
}

async fn etag(setup: &Setup, key: &str) -> String {
    let head = setup.s3.client().head_object().bucket(BUCKET).key(key);
    head.send().await.unwrap().e_tag().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn an_envelope_swapped_under_the_same_etag_is_checked_again() {
    let setup = Setup::new().await;
    let mount = setup.mount(&["--read-write"]);
    for size in [200 * 1024, 40 * MIB] {
        let (victim, donor) = (format!("victim-{size}"), format!("donor-{size}"));
        let plain = common::pattern(size, 30);
        setup.official_put(&victim, "v3", CONTEXT, &plain);
        setup.official_put(&donor, "v3", CONTEXT, &common::pattern(size, 31));
        let path = mount.path().join(&victim);
        // Read once: that version is authentic.
        assert!(std::fs::read(&path).unwrap() == plain);
        let before = etag(&setup, &victim).await;
        swap_envelope(&setup, &victim, &donor).await;
        assert_eq!(etag(&setup, &victim).await, before, "the bytes stayed");
        // Another envelope is another version to check: it fails.
        assert_eq!(errno_of(std::fs::read(&path)), Some(libc::EIO), "{victim}");
    }
    // A write to the file loads it first, checked: it fails, and S3 keeps
    // what it had (the official client still finds it forged).
    let path = mount.path().join(format!("victim-{}", 200 * 1024));
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"appended\n"));
    assert!(appended.is_err(), "a forged file was loaded to be changed");
    let official = setup.official(&["get", BUCKET, "victim-204800", CONTEXT], b"");
    assert!(!official.status.success());
}

/// Reads `path` whole with Linux AIO (io_submit), as io_uring and AIO readers
/// do: the kernel answers these from the size it keeps, without asking.
fn aio_read_all(path: &Path) -> Result<Vec<u8>, i32> {
    use std::os::fd::AsRawFd;
    /// `struct iocb` (linux/aio_abi.h), on a little-endian machine.
    #[repr(C)]
    #[derive(Default)]
    struct Iocb {
        data: u64,
        key: u32,
        rw_flags: i32,
        opcode: u16,
        reqprio: i16,
        fildes: u32,
        buf: u64,
        nbytes: u64,
        offset: i64,
        reserved2: u64,
        flags: u32,
        resfd: u32,
    }
    /// `struct io_event`.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Event {
        data: u64,
        obj: u64,
        res: i64,
        res2: i64,
    }
    let file = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap())?;
    let mut context: u64 = 0;
    // SAFETY: io_setup writes the new context into the u64 given.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut context) },
        0
    );
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let result = loop {
        let mut iocb = Iocb {
            fildes: file.as_raw_fd() as u32,
            buf: buf.as_mut_ptr() as u64,
            nbytes: buf.len() as u64,
            offset: out.len() as i64,
            ..Default::default()
        };
        let mut list = [&mut iocb as *mut Iocb];
        let mut event = [Event::default()];
        // SAFETY: the iocb, its buffer and the event outlive the calls, which
        // complete the one request before the loop goes on.
        let done = unsafe {
            libc::syscall(libc::SYS_io_submit, context, 1, list.as_mut_ptr()) == 1
                && libc::syscall(
                    libc::SYS_io_getevents,
                    context,
                    1,
                    1,
                    event.as_mut_ptr(),
                    std::ptr::null::<libc::timespec>(),
                ) == 1
        };
        assert!(done, "{}", std::io::Error::last_os_error());
        match event[0].res {
            0 => break Ok(out),
            n if n < 0 => break Err(-n as i32),
            n => out.extend_from_slice(&buf[..n as usize]),
        }
    };
    // SAFETY: the context was made by io_setup above and is used no more.
    unsafe { libc::syscall(libc::SYS_io_destroy, context) };
    result
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn an_aio_reader_gets_the_size_s3_has_not_the_one_the_kernel_kept() {
    let setup = Setup::new().await;
    setup.official_put("policy", "v3", CONTEXT, b"allow=no\n");
    setup.official_put("log", "v3", CONTEXT, b"short\n");
    let mount = setup.mount(&["--metadata-ttl", "1h"]);
    let (policy, log) = (mount.path().join("policy"), mount.path().join("log"));
    assert_eq!(std::fs::metadata(&policy).unwrap().len(), 9);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 6);
    // Changed and lengthened past what is checked at open, by someone
    // without the key.
    let (mut body, metadata) = setup.raw("policy").await;
    body[6] ^= b'n' ^ b'o';
    body[7] ^= b'o' ^ b'k';
    body.extend(common::pattern(33 * MIB, 5));
    setup.put_raw("policy", body, &metadata).await;
    assert_eq!(aio_read_all(&policy).map(|d| d.len()), Err(libc::EIO));
    // An authentic longer version: read whole.
    let longer = common::pattern(35 * MIB, 6);
    setup.official_put("log", "v3", CONTEXT, &longer);
    let got = aio_read_all(&log).unwrap();
    assert_eq!(got.len(), longer.len(), "the kernel's size ended the read");
    assert!(got == longer);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn checks_of_many_files_at_once_keep_within_the_memory_limit() {
    let setup = Setup::new().await;
    let plain = common::pattern(31 * MIB, 9);
    const FILES: usize = 16;
    {
        let writer = setup.mount(&["--read-write"]);
        std::fs::create_dir(writer.path().join("many")).unwrap();
        for n in 0..FILES {
            std::fs::write(writer.path().join(format!("many/{n}")), &plain).unwrap();
        }
    }
    let mount = setup.mount(&["--max-memory", "64MiB", "--no-cache"]);
    // Each open checks its file whole before it returns, all at once.
    let threads: Vec<_> = (0..FILES)
        .map(|n| {
            let path = mount.path().join(format!("many/{n}"));
            std::thread::spawn(move || std::fs::File::open(path).map(drop))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    let peak = common::peak_rss_mib(mount.path());
    eprintln!("{FILES} files of 31 MiB checked at once: peak RSS {peak} MiB");
    assert!(peak < 160, "peak RSS {peak} MiB");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, moto and the S3 Encryption Client; run scripts/test.sh"]
async fn random_reads_and_changes_through_staging_stay_readable_everywhere() {
    let setup = Setup::new().await;
    let size = 20 * MIB + 7;
    let plain = common::pattern(size, 11);
    setup.official_put("big", "v3", CONTEXT, &plain);
    let mount = setup.mount(&["--read-write", "--log-level", "debug"]);

    // Random reads at chosen offsets, byte for byte.
    let file = std::fs::File::open(mount.path().join("big")).unwrap();
    for (offset, len) in [
        (size - 1, 1),
        (0, 1),
        (15, 2),
        (16, 16),
        (8 * MIB - 1, 2),
        (MIB + 12_345, 200_000),
        (size - 70_000, 70_000),
    ] {
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, offset as u64).unwrap();
        assert!(got == plain[offset..offset + len], "{offset}+{len}");
    }
    drop(file);

    // Append, a write in the middle, chmod and rename: each object the volume
    // leaves is one the official client reads.
    let path = mount.path().join("big");
    let mut expected = plain.clone();
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"appended").unwrap();
        expected.extend_from_slice(b"appended");
    }
    {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"middle", 9 * MIB as u64).unwrap();
        expected[9 * MIB..9 * MIB + 6].copy_from_slice(b"middle");
    }
    assert!(setup.official_get("big") == expected, "after the writes");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&path, mount.path().join("renamed")).unwrap();
    assert!(
        setup.official_get("renamed") == expected,
        "after chmod and rename"
    );
    let (_, metadata) = setup.raw("renamed").await;
    assert!(metadata.contains_key("x-amz-3"), "{metadata:?}");
    let info = common::s3vol()
        .args(["info", mount.path().join("renamed").to_str().unwrap()])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(r#"client-side    S3 Encryption Client format V3, context {"aws:x-amz-cek-alg":"115","volume":"test"}"#),
        "{info}"
    );
    assert!(std::fs::read(mount.path().join("renamed")).unwrap() == expected);

    // A part rewritten after it was sent is never sent again under the same
    // key: the upload starts over with a new one.
    let rewritten = mount.path().join("rewritten");
    let mut expected = common::pattern(24 * MIB, 12);
    {
        let mut file = std::fs::File::create(&rewritten).unwrap();
        file.write_all(&expected).unwrap();
        // The parts the writer moved past go while the file is open: wait
        // until S3 holds one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while setup.s3.pending_parts(BUCKET, "rewritten").await == 0 {
            assert!(std::time::Instant::now() < deadline, "no part was sent");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        file.write_all_at(b"rewritten", 100).unwrap();
        expected[100..109].copy_from_slice(b"rewritten");
    }
    assert!(setup.official_get("rewritten") == expected);
    let started = mount
        .log_text()
        .lines()
        .filter(|l| l.contains("multipart upload started") && l.contains("rewritten"))
        .count();
    assert_eq!(started, 2, "{}", mount.log_text());
    assert!(setup.s3.pending_uploads(BUCKET, "").await.is_empty());

    // A small file rewritten in place gets a new data key each time.
    let small = mount.path().join("small");
    std::fs::write(&small, b"first").unwrap();
    let (_, first) = setup.raw("small").await;
    std::fs::write(&small, b"second").unwrap();
    let (_, second) = setup.raw("small").await;
    assert_ne!(first["x-amz-3"], second["x-amz-3"]);
    assert_eq!(setup.official_get("small"), b"second");
    // No link: its target would be stored in clear. Nor an extended
    // attribute, for the same reason.
    let err = std::os::unix::fs::symlink("small", mount.path().join("link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP));
    let refused = Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "secret"])
        .arg(&small)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("Operation not supported"),
        "{stderr}"
    );
    drop(mount);
    // One another writer stored beside the envelope is shown, and the file
    // still reads.
    let (_, mut metadata) = setup.raw("small").await;
    assert!(!metadata.contains_key("xattr"));
    let found = s3vol::fs::xattrs::Xattrs::default().with("user.found", b"yes");
    metadata.insert("xattr".into(), found.encode());
    setup
        .s3
        .client()
        .copy_object()
        .bucket(BUCKET)
        .key("small")
        .copy_source(format!("{BUCKET}/small"))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .set_metadata(Some(metadata.into_iter().collect()))
        .send()
        .await
        .unwrap();
    let mount = setup.mount(&[]);
    let shown = Command::new("getfattr")
        .args(["--only-values", "-n", "user.found"])
        .arg(mount.path().join("small"))
        .output()
        .unwrap();
    assert_eq!(
        shown.stdout,
        b"yes",
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert_eq!(
        std::fs::read(mount.path().join("small")).unwrap(),
        b"second"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage and moto; run scripts/test.sh"]
async fn check_probes_the_kms_key_with_the_context() {
    let setup = Setup::new().await;
    setup.official_put("one", "v3", CONTEXT, b"x");
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            BUCKET,
            "--endpoint-url",
            &setup.s3.endpoint,
            "--force-path-style",
        ];
        args.extend_from_slice(extra);
        common::s3vol()
            .args(&args)
            .envs(setup.env())
            .output()
            .unwrap()
    };
    let out = check(&[
        "--read-write",
        "--cse-kms-key-id",
        &setup.key_id,
        "--cse-context",
        CONTEXT,
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{table}");
    for action in ["kms:GenerateDataKey", "kms:Decrypt"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(action) && l.ends_with("allowed")),
            "{table}"
        );
    }
    // Read-only: the Decrypt of the first object's key.
    let out = check(&["--cse-kms-key-id", &setup.key_id, "--cse-context", CONTEXT]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(!table.contains("GenerateDataKey"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kms:Decrypt") && l.ends_with("allowed"))
    );

    let out = check(&["--read-write", "--cse-kms-key-id", "alias/missing"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alias/missing"), "{err}");
    eprint!("{err}");
}
