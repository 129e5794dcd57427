//! The benchmark's systems against the test servers: every system
//! `scripts/bench.sh` compares (s3vol with and without its cache, s3fs-fuse and
//! rclone mount) is mounted with the benchmark's own settings
//! (`scripts/systems.sh`) against a Garage started as the tests start it, and
//! reads, lists, writes and removes there. A server setting the peers do not
//! follow (the region they sign for, say) fails here, not in the next
//! benchmark's peer columns.

use std::process::Command;

use crate::common::{self, Server, pattern, script};

const SYSTEMS: [&str; 4] = ["s3vol", "s3vol-nocache", "s3fs", "rclone"];

#[tokio::test]
#[ignore = "needs Garage, s3fs and rclone; run by scripts/test.sh"]
async fn every_benchmark_system_mounts_the_test_server_with_the_benchmarks_settings() {
    let server = Server::garage_with("bench").await;
    let seed = pattern(3 << 20, 33);
    server.put("bench", "check/seed.bin", seed.clone()).await;
    for system in SYSTEMS {
        server
            .put("bench", &format!("check/{system}.gone"), "x")
            .await;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("seed.bin"), &seed).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = Unmount(mnt.clone());

    // Bounded: a system that hangs fails the test instead of the whole run.
    let out = Command::new("timeout")
        .args(["600", "bash", "-c"])
        .arg(
            r#"source "$1"; source "$2"; shift 2; prepare_systems
               for s in "$@"; do check_system "$s"; done"#,
        )
        .arg("bash")
        .arg(script("lib.sh"))
        .arg(script("systems.sh"))
        .args(SYSTEMS)
        .envs(server.env())
        .env("S3_ENDPOINT", &server.endpoint)
        .env("S3VOL", common::binary())
        .env("S3VOL_TOOLS", common::tools_dir())
        .env("mnt", &mnt)
        .env("work", work.path())
        .output()
        .unwrap();
    let logs: String = ["s3vol.log", "s3fs.log", "rclone.log"]
        .iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(work.path().join(name)).ok()?;
            Some(format!("--- {name}\n{text}"))
        })
        .collect();
    assert!(
        out.status.success(),
        "a benchmark system failed against the test server:\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What each wrote is in S3 whole, and what each removed is gone.
    for system in SYSTEMS {
        let written = server.get("bench", &format!("check/{system}.bin")).await;
        assert!(
            written == Some(seed.clone()),
            "{system}'s write is not in S3 whole"
        );
        let gone = server.get("bench", &format!("check/{system}.gone")).await;
        assert_eq!(gone, None, "{system} did not remove check/{system}.gone");
    }
}

/// Unmounts whatever a failed check left mounted.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for _ in 0..3 {
            common::unmount(&self.0);
        }
    }
}
