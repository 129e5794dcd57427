//! End to end: `--version-at`, a read-only view of the prefix as it was, on
//! moto (which keeps versions) and Garage (which keeps none).

use crate::common;

use std::time::{Duration, SystemTime};

use common::{Mount, Server, ServerKind, s3vol};

const BUCKET: &str = "vol";

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn the_prefix_shows_as_it_was_byte_exact() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket(BUCKET).await;
    server.enable_versioning(BUCKET).await;
    let first = common::pattern(3 << 20, 1);
    server.put(BUCKET, "data/big.bin", first.clone()).await;
    server
        .put(BUCKET, "data/notes.txt", b"first notes".to_vec())
        .await;
    server
        .put(BUCKET, "data/old.txt", b"deleted before".to_vec())
        .await;
    server
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key("data/old.txt")
        .send()
        .await
        .unwrap();
    server
        .put(BUCKET, "data/sub/inner.txt", b"inside".to_vec())
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moment = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server
        .put(BUCKET, "data/big.bin", common::pattern(1 << 20, 2))
        .await;
    server
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key("data/notes.txt")
        .send()
        .await
        .unwrap();
    server
        .put(BUCKET, "data/later.txt", b"written later".to_vec())
        .await;

    let at = humantime::format_rfc3339_millis(moment).to_string();
    let past = Mount::new(&server, "vol/data", &["--version-at", &at]);
    assert_eq!(listing(past.path()), ["big.bin", "notes.txt", "sub"]);
    assert!(std::fs::read(past.path().join("big.bin")).unwrap() == first);
    assert_eq!(
        std::fs::read(past.path().join("notes.txt")).unwrap(),
        b"first notes"
    );
    assert_eq!(
        std::fs::read(past.path().join("sub/inner.txt")).unwrap(),
        b"inside"
    );
    let size = std::fs::metadata(past.path().join("big.bin"))
        .unwrap()
        .len();
    assert_eq!(size, 3 << 20);
    // A URL of a file is the URL of the version it shows.
    let out = s3vol()
        .args(["url", past.path().join("big.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(common::succeeded(&out));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.contains("versionId="), "{url}");
    let fetched = std::process::Command::new("curl")
        .args(["--silent", "--fail", "--max-time", "30", &url])
        .output()
        .unwrap();
    assert!(fetched.stdout == first, "the URL serves the version shown");
    // The view is read-only, and says which moment it shows.
    let refused = std::fs::write(past.path().join("new.txt"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS));
    let stats = past.stats();
    assert!(
        stats["source"]
            .as_str()
            .unwrap()
            .contains(" as it was at 20"),
        "{stats}"
    );
    assert!(stats["requests"]["ListObjectVersions"].as_u64().unwrap() > 0);
    // Today's view beside it.
    let now = Mount::new(&server, "vol/data", &[]);
    assert_eq!(listing(now.path()), ["big.bin", "later.txt", "sub"]);
    assert_eq!(
        std::fs::metadata(now.path().join("big.bin")).unwrap().len(),
        1 << 20
    );
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_bucket_without_versions_is_refused_with_the_reason() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "data/a.txt", b"a".to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = s3vol()
        .args(["mount", "vol/data", dir.path().to_str().unwrap()])
        .args(["--version-at", "1h", "--cache-dir"])
        .arg(dir.path().with_extension("cache"))
        .args(server.endpoint_args())
        .envs(server.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not keep versions"), "{err}");
    assert!(err.contains("put-bucket-versioning"), "{err}");
    assert!(!common::is_mounted(dir.path()));
    // The cache directory the mount made for itself went with it.
    assert!(!dir.path().with_extension("cache").exists());
}
