//! End to end: `s3vol url` and `s3vol info` on a mounted volume, against Garage
//! and moto, with the URLs fetched by curl, a plain HTTP client with no
//! credentials. (Role sessions: see e2e_role.rs.)

use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, Server, ServerKind, pattern, s3vol};

const BUCKET: &str = "vol";

fn s3vol_on(args: &[&str]) -> Output {
    s3vol().args(args).output().expect("run s3vol")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "s3vol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// curl's HTTP status and body for `url`, uploading `upload` with a PUT if given.
fn curl(url: &str, upload: Option<&Path>) -> (u32, Vec<u8>) {
    curl_with(url, upload, &serde_json::Map::new())
}

/// [`curl`], sending `headers` (as `s3vol url --json` lists them).
fn curl_with(
    url: &str,
    upload: Option<&Path>,
    headers: &serde_json::Map<String, serde_json::Value>,
) -> (u32, Vec<u8>) {
    let body = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new("curl");
    command.args(["--silent", "--show-error", "--output"]);
    command.arg(body.path());
    command.args(["--write-out", "%{http_code}", "--max-time", "30"]);
    if let Some(file) = upload {
        command.arg("--upload-file").arg(file);
    }
    for (name, value) in headers {
        command
            .arg("--header")
            .arg(format!("{name}: {}", value.as_str().unwrap()));
    }
    let out = command.arg(url).output().expect("run curl");
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (status, std::fs::read(body.path()).unwrap())
}

/// What a HEAD of `key` in the bucket says.
async fn head(server: &Server, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    server.head(BUCKET, key).await
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn get_and_put_urls_work_with_plain_http(kind: ServerKind) {
    let server = Server::start(kind);
    server.create_bucket(BUCKET).await;
    let data = pattern(3 << 20, 7);
    server
        .put(BUCKET, "data/set/part-0.bin", data.clone())
        .await;
    let vol = Mount::new(&server, "vol/data", &["--read-write"]);
    let file = vol.path().join("set/part-0.bin");

    // GET: the default, valid for an hour.
    let out = s3vol_on(&["url", path_arg(&file)]);
    let url = stdout(&out).trim().to_string();
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    // (moto's test key is "testing" for both halves.)
    if server.secret_key != server.access_key {
        assert!(!url.contains(&server.secret_key), "no secret in the URL");
    }
    let note = stderr(&out);
    assert!(
        note.contains("GET URL of s3://vol/data/set/part-0.bin: expires"),
        "{note}"
    );
    let (status, body) = curl(&url, None);
    assert_eq!(status, 200);
    assert!(body == data, "the URL serves the object's bytes");

    // JSON for scripts.
    let out = s3vol_on(&["url", "--json", "--expires", "10m", path_arg(&file)]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answer["method"], "GET");
    assert_eq!(answer["key"], "data/set/part-0.bin");
    let left = answer["expires_in_secs"].as_u64().unwrap();
    assert!((590..=600).contains(&left), "{answer}");
    assert_eq!(answer["cut_by_session"], false);

    // PUT: a new object in the file's place, from a client with no credentials.
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), b"replaced through a presigned PUT").unwrap();
    let out = s3vol_on(&["url", "--method", "put", path_arg(&file)]);
    let (status, body) = curl(stdout(&out).trim(), Some(upload.path()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        server.get(BUCKET, "data/set/part-0.bin").await.unwrap(),
        b"replaced through a presigned PUT"
    );

    // A PUT URL of a file whose mode was set carries that mode, signed in:
    // the upload must send it, and the object keeps it, as the mount's own
    // upload would.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = s3vol_on(&["url", "--method", "put", "--json", path_arg(&file)]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let headers = answer["headers"].as_object().unwrap().clone();
    assert_eq!(headers["x-amz-meta-mode"], "0100640", "{answer}");
    let text = stderr(&s3vol_on(&["url", "--method", "put", path_arg(&file)]));
    assert!(text.contains("-H 'x-amz-meta-mode: 0100640'"), "{text}");
    std::fs::write(upload.path(), b"uploaded with its mode").unwrap();
    let url = answer["url"].as_str().unwrap();
    if kind == ServerKind::Garage {
        // (moto checks no signature.)
        let (status, body) = curl(url, Some(upload.path()));
        assert!(
            (400..500).contains(&status),
            "a PUT without the signed headers: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            server.get(BUCKET, "data/set/part-0.bin").await.unwrap(),
            b"replaced through a presigned PUT"
        );
    }
    let (status, body) = curl_with(url, Some(upload.path()), &headers);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let head = head(&server, "data/set/part-0.bin").await;
    assert_eq!(head.metadata().unwrap()["mode"], "0100640");

    // An expired URL is refused by the server. (moto checks no signature until
    // authentication is switched on: e2e_role checks expiry there.)
    if kind == ServerKind::Garage {
        let out = s3vol_on(&["url", "--expires", "1s", path_arg(&file)]);
        let url = stdout(&out).trim().to_string();
        std::thread::sleep(Duration::from_millis(2500));
        let (status, body) = curl(&url, None);
        let body = String::from_utf8_lossy(&body);
        assert!(
            status == 400 && body.contains("Date is too old"),
            "an expired URL: {status} {body}"
        );
    }

    // What the command refuses, with a reason and exit code 1.
    let refused = |args: &[&str], why: &str| {
        let out = s3vol_on(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    };
    let dir = vol.path().join("set");
    refused(&["url", path_arg(&dir)], "is a directory");
    refused(&["url", "/etc/hostname"], "is not on an s3vol volume");
    refused(
        &["url", path_arg(&vol.path().join("set/none"))],
        "No such file",
    );
    let out = s3vol_on(&["url", "--expires", "8d", path_arg(&file)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("from 1s to 7d"), "{}", stderr(&out));
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn get_and_put_urls_work_with_plain_http_on_garage() {
    get_and_put_urls_work_with_plain_http(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn get_and_put_urls_work_with_plain_http_on_moto() {
    get_and_put_urls_work_with_plain_http(ServerKind::Moto).await;
}

async fn info_and_a_read_only_volume(kind: ServerKind) {
    let server = Server::start(kind);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "f.txt", b"hello".to_vec()).await;
    let vol = Mount::new(&server, BUCKET, &[]);
    let file = vol.path().join("f.txt");

    let out = s3vol_on(&["info", "--json", path_arg(&file)]);
    let facts: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let head = head(&server, "f.txt").await;
    assert_eq!(facts["bucket"], BUCKET);
    assert_eq!(facts["key"], "f.txt");
    assert_eq!(facts["size"], 5);
    assert_eq!(facts["etag"], head.e_tag().unwrap());
    assert_eq!(facts["version_id"].as_str(), head.version_id());
    assert_eq!(facts["storage_class"], "STANDARD");
    let text = stdout(&s3vol_on(&["info", path_arg(&file)]));
    assert!(
        text.starts_with("object         s3://vol/f.txt\nsize           5\n"),
        "{text}"
    );

    // No PUT URL on a read-only volume, and the read-only volume says so.
    let out = s3vol_on(&["url", "--method", "put", path_arg(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("read-only volume"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn info_and_a_read_only_volume_on_garage() {
    info_and_a_read_only_volume(ServerKind::Garage).await;
}

#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn info_and_a_read_only_volume_on_moto() {
    info_and_a_read_only_volume(ServerKind::Moto).await;
}

/// On a volume with `--sse`, a PUT URL asks for it: the upload sends the
/// header it was signed with, and the object is stored encrypted. (moto keeps
/// server-side encryption; Garage has none.)
#[tokio::test]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_put_url_carries_the_volume_s_server_side_encryption() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket(BUCKET).await;
    server.put(BUCKET, "f.txt", b"before".to_vec()).await;
    let vol = Mount::new(&server, BUCKET, &["--read-write", "--sse", "AES256"]);
    let file = vol.path().join("f.txt");
    let out = s3vol_on(&["url", "--method", "put", "--json", path_arg(&file)]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let headers = answer["headers"].as_object().unwrap().clone();
    assert_eq!(
        headers["x-amz-server-side-encryption"], "AES256",
        "{answer}"
    );
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), b"after").unwrap();
    let (status, body) = curl_with(
        answer["url"].as_str().unwrap(),
        Some(upload.path()),
        &headers,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let head = head(&server, "f.txt").await;
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    assert_eq!(server.get(BUCKET, "f.txt").await.unwrap(), b"after");
}
