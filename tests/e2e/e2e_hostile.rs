//! End to end: buckets whose contents no filesystem would hold. Keys that are not
//! file names, a key beside a prefix of the same name, a directory of 100,000
//! keys, objects of 0 bytes and over 5 GiB, objects replaced or deleted while they
//! are read. The real binary against Garage; docs/SEMANTICS.md says what each
//! case looks like, and these tests hold it to that.

use crate::common;

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use common::{Mount, Server, pattern};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;

async fn garage() -> Server {
    Server::garage_with(BUCKET).await
}

fn names_in(dir: &std::path::Path) -> BTreeSet<Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect()
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn keys_that_are_not_file_names_are_skipped_and_the_rest_shown() {
    let server = garage().await;
    let long = "L".repeat(300);
    let cases: &[(&str, &[u8])] = &[
        ("root/ok", b"ok"),
        ("root/a//b", b"double slash"),
        ("root//lead", b"empty segment"),
        ("root/./dot", b"dot segment"),
        ("root/../up", b"dotdot segment"),
        ("root/x/./y", b"dot inside"),
        ("root/ctl\x01bell\x07", b"control characters"),
        ("root/line\nbreak", b"newline"),
        ("root/tab\there", b"tab"),
        ("root/same", b"the file"),
        ("root/same/inner", b"under the prefix"),
        ("root/empty", b""),
        ("root/dir/", b""),
        ("root/sp ace", b"space"),
    ];
    for (key, body) in cases {
        server.put(BUCKET, key, body.to_vec()).await;
    }
    server
        .put(BUCKET, &format!("root/{long}"), b"too long".to_vec())
        .await;
    let mount = Mount::new(&server, "vol/root", &[]);
    let root = mount.path();

    let names = names_in(root);
    let shown: BTreeSet<Vec<u8>> = [
        &b"ok"[..],
        b"a",
        b"x",
        b"ctl\x01bell\x07",
        b"line\nbreak",
        b"tab\there",
        b"same",
        b"empty",
        b"dir",
        b"sp ace",
    ]
    .iter()
    .map(|n| n.to_vec())
    .collect();
    assert_eq!(names, shown);
    // `a` holds `b` only by way of an empty name: an empty directory here.
    assert!(root.join("a").is_dir());
    assert!(names_in(&root.join("a")).is_empty());
    // `x/./y`: the `.` segment is skipped, so `x` looks empty.
    assert!(names_in(&root.join("x")).is_empty());
    // Control characters are legal in Linux names and come through as they are.
    assert_eq!(
        std::fs::read(root.join("ctl\x01bell\x07")).unwrap(),
        b"control characters"
    );
    assert_eq!(std::fs::read(root.join("line\nbreak")).unwrap(), b"newline");
    // A key and a prefix of the same name: the directory wins.
    assert!(root.join("same").is_dir());
    assert_eq!(
        std::fs::read(root.join("same/inner")).unwrap(),
        b"under the prefix"
    );
    // Zero bytes, and a console-made directory marker.
    assert_eq!(std::fs::metadata(root.join("empty")).unwrap().len(), 0);
    assert_eq!(std::fs::read(root.join("empty")).unwrap(), b"");
    assert!(root.join("dir").is_dir());
    // Nothing crashed, and the log says what was left out.
    assert!(std::fs::metadata(root).is_ok());
    let log = mount.log_text();
    assert!(
        log.contains("skipped keys that cannot be shown as file names"),
        "{log}"
    );

    // Control characters can be read but not created: S3's XML answers could not
    // name such a key.
    drop(mount);
    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let root = mount.path();
    let err = std::fs::write(root.join("new\x02name"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    std::fs::write(root.join("new\tname"), b"tab").unwrap();
    assert_eq!(
        server.get(BUCKET, "root/new\tname").await.as_deref(),
        Some(&b"tab"[..])
    );
    // A name over 255 bytes cannot even be asked for.
    let err = std::fs::metadata(root.join(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
}

/// How many keys the big directory holds.
const MANY: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn a_directory_of_100000_keys_is_listed_whole() {
    let server = Arc::new(garage().await);
    let started = Instant::now();
    // Many puts at once: Garage answers each in about a millisecond.
    let client = server.client();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..MANY).step_by(64) {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("root/many/k{i:06}"))
                    .body(ByteStream::from_static(b""))
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    eprintln!("{MANY} keys put in {:.1?}", started.elapsed());

    // What is tested is that the listing brings the attributes, when the
    // objects' metadata is not read (it takes a HEAD each), not how long they
    // last: on a slow machine the listing alone outlasts the default 5 s TTL,
    // and every entry that expired while `ls` worked would rightly be asked for.
    let mount = Mount::new(
        &server,
        "vol/root",
        &["--no-metadata", "--metadata-ttl", "10m"],
    );
    let dir = mount.path().join("many");
    let started = Instant::now();
    let names = names_in(&dir);
    eprintln!("listed in {:.1?}", started.elapsed());
    assert_eq!(names.len(), MANY);
    assert!(names.contains(&b"k000000"[..]));
    assert!(names.contains(&format!("k{:06}", MANY - 1).into_bytes()));
    // `ls -l` asks for every entry's attributes: they come with the listing.
    let started = Instant::now();
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"-"))
        .count();
    assert_eq!(lines, MANY);
    eprintln!("ls -l in {:.1?}", started.elapsed());
    let stats = mount.stats();
    let heads = stats["requests"]["HeadObject"].as_u64().unwrap();
    assert!(heads < 100, "ls -l sent {heads} HeadObject requests");
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn an_object_over_5_gib_is_read_and_renamed() {
    let server = garage().await;
    // 5.5 GiB made of one 128 MiB source copied 44 times on the server, so the
    // test sends 128 MiB and Garage stores it once.
    let piece = 128 * MIB;
    let source = pattern(piece, 77);
    server.put(BUCKET, "src/piece", source.clone()).await;
    let client = server.client();
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("root/huge")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let pieces = 44;
    let mut parts = Vec::new();
    for number in 1..=pieces {
        let out = client
            .upload_part_copy()
            .bucket(BUCKET)
            .key("root/huge")
            .upload_id(id)
            .part_number(number)
            .copy_source(format!("{BUCKET}/src/piece"))
            .send()
            .await
            .unwrap();
        let etag = out.copy_part_result().unwrap().e_tag().unwrap().to_string();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("root/huge")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let size = (piece * pieces as usize) as u64;
    assert!(size > 5 << 30);

    let mount = Mount::new(&server, "vol/root", &["--read-write"]);
    let path = mount.path().join("huge");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    // Reads beyond 4 GiB and 5 GiB land where they should.
    let file = std::fs::File::open(&path).unwrap();
    for offset in [0u64, (4 << 30) + 12345, (5 << 30) - 100, size - 4096] {
        let mut buf = vec![0u8; 4096];
        file.read_exact_at(&mut buf, offset).unwrap();
        let at = (offset % piece as u64) as usize;
        let want: Vec<u8> = (0..4096).map(|i| source[(at + i) % piece]).collect();
        assert!(buf == want, "bytes at {offset} differ");
    }
    let mut tail = vec![0u8; 8192];
    let n = file.read_at(&mut tail, size - 4096).unwrap();
    assert_eq!(n, 4096, "a read past the end returns what there is");
    drop(file);

    // A rename over 5 GiB: copied in parts on the server.
    let started = Instant::now();
    std::fs::rename(&path, mount.path().join("moved")).unwrap();
    eprintln!("renamed {size} bytes in {:.1?}", started.elapsed());
    let keys = server.keys(BUCKET, "root/").await;
    assert_eq!(keys, ["root/moved"]);
    let moved = std::fs::File::open(mount.path().join("moved")).unwrap();
    let mut buf = vec![0u8; 4096];
    moved.read_exact_at(&mut buf, size - 4096).unwrap();
    let at = ((size - 4096) % piece as u64) as usize;
    assert!(buf[..] == source[at..at + 4096]);
    let stats = mount.stats();
    assert!(stats["requests"]["UploadPartCopy"].as_u64().unwrap() > 0);
}

#[tokio::test]
#[ignore = "needs Garage; run by scripts/test.sh"]
async fn an_object_deleted_under_an_open_file_fails_the_read_cleanly() {
    let server = garage().await;
    let original = pattern(32 * MIB, 8);
    server.put(BUCKET, "root/f.bin", original.clone()).await;
    let mount = Mount::new(&server, "vol/root", &["--metadata-ttl", "1s"]);
    let file = std::fs::File::open(mount.path().join("f.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, original[..4096]);
    server
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key("root/f.bin")
        .send()
        .await
        .unwrap();
    // Far from what read-ahead holds: S3 says the object is gone.
    let err = file.read_exact_at(&mut buf, 30 * MIB as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    drop(file);
    // And once the metadata TTL has passed, the file is gone from the volume.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let err = std::fs::metadata(mount.path().join("f.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}
