//! End to end: the memory limit (`--max-memory`) on the real binary against
//! Garage, with more readers and writers at once than it has room for.

use crate::common;

use std::io::{Read, Write};

use common::{Mount, Server, ServerKind, pattern};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;
const OBJECTS: usize = 8;
const SIZE: usize = 24 * MIB + 4321;

#[tokio::test]
#[ignore = "needs Garage (scripts/test.sh)"]
async fn thirty_two_readers_and_eight_writers_slow_down_within_the_limit_and_never_fail() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    for i in 0..OBJECTS {
        server
            .put(BUCKET, &format!("root/in/{i}.bin"), pattern(SIZE, i as u64))
            .await;
    }
    let mount = Mount::new(
        &server,
        "vol/root",
        &["--read-write", "--max-memory", "32MiB"],
    );
    std::fs::create_dir(mount.path().join("out")).unwrap();

    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for reader in 0..32 {
            let path = mount.path().join(format!("in/{}.bin", reader % OBJECTS));
            threads.push(scope.spawn(move || {
                let mut got = Vec::with_capacity(SIZE);
                let mut file = std::fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; MIB];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => panic!("reader {reader}: {e}"),
                    }
                }
                assert!(
                    got == pattern(SIZE, (reader % OBJECTS) as u64),
                    "reader {reader} read other bytes"
                );
            }));
        }
        for writer in 0..8 {
            let path = mount.path().join(format!("out/{writer}.bin"));
            threads.push(scope.spawn(move || {
                let data = pattern(SIZE, 100 + writer);
                let mut file = std::fs::File::create(&path).unwrap();
                for chunk in data.chunks(MIB) {
                    file.write_all(chunk)
                        .unwrap_or_else(|e| panic!("writer {writer}: {e}"));
                }
                // The close uploads what is left; it must succeed.
                file.sync_all()
                    .unwrap_or_else(|e| panic!("writer {writer}: {e}"));
            }));
        }
        for thread in threads {
            thread.join().unwrap();
        }
    });

    for writer in 0..8u64 {
        let stored = server
            .get(BUCKET, &format!("root/out/{writer}.bin"))
            .await
            .expect("uploaded");
        assert!(
            stored == pattern(SIZE, 100 + writer),
            "out/{writer}.bin differs in S3"
        );
    }
    let stats = mount.stats();
    let memory = &stats["memory"];
    assert_eq!(memory["limit"], 32 * MIB as u64, "{stats}");
    // The limit was reached: reads went without read-ahead or uploads waited.
    let waited =
        memory["reads_without_room"].as_u64().unwrap() + memory["upload_waits"].as_u64().unwrap();
    assert!(waited > 0, "the limit was never reached: {memory}");
    assert_eq!(memory["pool_in_use"], 0, "memory still held: {memory}");
    assert_eq!(stats["request_errors"], 0, "{stats}");
    // What the daemon holds besides the limit is its own (about 30 MiB) and the
    // reads the kernel has in flight, each fetched at its own size. Here this
    // load peaked at 68 MiB; with the default limit of 128MiB, near 100 MiB.
    let peak = common::peak_rss_mib(mount.path());
    assert!(peak <= 90, "peak RSS {peak} MiB with --max-memory 32MiB");

    let text = common::s3vol()
        .args(["stats", mount.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("memory       limit 32.0 MiB"), "{text}");
}
