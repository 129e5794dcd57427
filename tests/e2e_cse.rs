//! The client-side encryption format against AWS's own S3 Encryption Client
//! (Python, `scripts/s3ec.py`), with moto's KMS: what s3vol's format code seals,
//! the official client opens, and the other way round, in both formats.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::{Server, ServerKind};
use s3vol::cse::envelope::{Envelope, Format, context_for};
use s3vol::cse::kms::Kms;

const BUCKET: &str = "cse";

struct Setup {
    server: Server,
    kms: Kms,
}

impl Setup {
    async fn new() -> Setup {
        let server = Server::start(ServerKind::Moto);
        server.create_bucket(BUCKET).await;
        let config = aws_sdk_kms::config::Builder::new()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .endpoint_url(&server.endpoint)
            .region(aws_sdk_kms::config::Region::new(server.region.clone()))
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                &server.access_key,
                &server.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        let client = aws_sdk_kms::Client::from_conf(config);
        let key = client.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        Setup {
            server,
            kms: Kms::new(client, key_id),
        }
    }

    /// Runs scripts/s3ec.py with `args`, `input` on its standard input.
    fn official(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        let python = common::tools_dir().join("s3ec-4.0.0/bin/python");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3ec.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([self.server.endpoint.as_str(), self.kms.key_id()])
            .args(args)
            .envs(self.server.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The object's bytes and user metadata, as S3 holds them.
    async fn raw(&self, key: &str) -> (Vec<u8>, BTreeMap<String, String>) {
        let answer = self
            .server
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

    /// Seals `plain` as s3vol's format code does and stores it.
    async fn seal_and_put(&self, key: &str, format: Format, plain: &[u8]) {
        let context = context_for(format, &volume_context());
        let data_key = self.kms.generate(&context).await.unwrap();
        let (envelope, content) =
            Envelope::seal(format, &data_key.plaintext, data_key.wrapped, context);
        let mut body = plain.to_vec();
        content.seal(&mut body);
        let mut put = self
            .server
            .client()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(body.into());
        for (name, value) in envelope.metadata() {
            put = put.metadata(name, value);
        }
        put.send().await.unwrap();
    }

    /// Opens the object as s3vol's format code does: the plaintext, or why not.
    async fn open(&self, key: &str) -> Result<Vec<u8>, String> {
        let (body, metadata) = self.raw(key).await;
        let envelope = Envelope::read(&metadata)
            .map_err(|e| e.to_string())?
            .ok_or("not encrypted")?;
        let data_key = self
            .kms
            .unwrap(&envelope.wrapped_key, &envelope.context)
            .await
            .map_err(|e| e.to_string())?;
        let content = envelope.content_key(&data_key).map_err(|e| e.to_string())?;
        content
            .open(body)
            .ok_or_else(|| "the GCM tag does not match".to_string())
    }
}

fn volume_context() -> BTreeMap<String, String> {
    [("volume".to_string(), "test".to_string())].into()
}

const SIZES: &[usize] = &[0, 1, (8 << 20) - 1, 8 << 20, (8 << 20) + 1];

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto and the S3 Encryption Client; run scripts/test.sh"]
async fn the_official_client_opens_what_s3vol_seals_in_both_formats() {
    let setup = Setup::new().await;
    for format in [Format::V3, Format::V2] {
        for (n, &size) in SIZES.iter().enumerate() {
            let plain = common::pattern(size, n as u64);
            let key = format!("{format:?}/sealed-{size}");
            setup.seal_and_put(&key, format, &plain).await;
            let out = setup.official(&["get", BUCKET, &key, "volume=test"], b"");
            assert!(
                out.status.success(),
                "{key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout == plain,
                "{key}: the official client read other bytes"
            );
            eprintln!(
                "s3vol sealed {key} ({size} B, {format:?}); the S3 Encryption Client read it back"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto and the S3 Encryption Client; run scripts/test.sh"]
async fn s3vol_opens_what_the_official_client_writes_in_both_formats() {
    let setup = Setup::new().await;
    for version in ["v3", "v2"] {
        for (n, &size) in SIZES.iter().enumerate() {
            let plain = common::pattern(size, 100 + n as u64);
            let key = format!("{version}/official-{size}");
            let out = setup.official(&["put", BUCKET, &key, version, "volume=test"], &plain);
            assert!(
                out.status.success(),
                "{key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (_, metadata) = setup.raw(&key).await;
            let envelope = Envelope::read(&metadata).unwrap().unwrap();
            let expected = if version == "v3" {
                Format::V3
            } else {
                Format::V2
            };
            assert_eq!(envelope.format, expected, "{metadata:?}");
            envelope.check_context(&volume_context()).unwrap();
            let err = envelope.check_context(&BTreeMap::new()).unwrap_err();
            assert!(err.to_string().contains("[volume]"), "{err}");
            let opened = setup.open(&key).await.unwrap();
            assert!(opened == plain, "{key}: other bytes");
            eprintln!("the S3 Encryption Client wrote {key} ({size} B); s3vol opened it");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto and the S3 Encryption Client; run scripts/test.sh"]
async fn tampering_a_wrong_context_and_ranges() {
    let setup = Setup::new().await;
    let plain = common::pattern(3 << 20, 7);
    for format in [Format::V3, Format::V2] {
        let key = format!("{format:?}/tamper");
        setup.seal_and_put(&key, format, &plain).await;
        let (body, metadata) = setup.raw(&key).await;
        let envelope = Envelope::read(&metadata).unwrap().unwrap();

        // Any range decrypts alone, byte for byte.
        let data_key = setup
            .kms
            .unwrap(&envelope.wrapped_key, &envelope.context)
            .await
            .unwrap();
        let content = envelope.content_key(&data_key).unwrap();
        for (offset, len) in [(0, 1), (17, 4096), (1 << 20, 1 << 20), ((3 << 20) - 5, 5)] {
            let mut range = body[offset..offset + len].to_vec();
            content.apply(offset as u64, &mut range);
            assert!(range == plain[offset..offset + len], "{key} {offset}+{len}");
        }

        // One byte changed in S3: both clients refuse the object.
        let mut changed = body.clone();
        changed[1 << 20] ^= 0x01;
        let mut put = setup
            .server
            .client()
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(changed.into());
        for (name, value) in &metadata {
            put = put.metadata(name, value);
        }
        put.send().await.unwrap();
        assert_eq!(
            setup.open(&key).await.unwrap_err(),
            "the GCM tag does not match"
        );
        let out = setup.official(&["get", BUCKET, &key, "volume=test"], b"");
        assert!(!out.status.success());

        // The wrapped key under another context: KMS refuses it.
        let mut other = envelope.context.clone();
        other.insert("volume".into(), "another".into());
        let err = setup
            .kms
            .unwrap(&envelope.wrapped_key, &other)
            .await
            .unwrap_err();
        assert_eq!(err.operation, "Decrypt", "{err}");
    }
}
