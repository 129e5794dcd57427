//! End to end: a mount's `--metrics-listen` endpoint, scraped during a
//! workload and read with Prometheus's own parser; its numbers agree with
//! `s3vol stats`, it listens on loopback unless told otherwise, and it shows
//! no secret.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::metrics::{free_port, parse, scrape, sum};
use common::{Mount, Server, ServerKind};

/// Whether 127.0.0.1:`port` (and not another address) is where a socket
/// listens, by /proc/net/tcp.
fn listens_on_loopback_only(port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, state) = (fields.get(1)?, fields.get(3)?);
            (*state == "0A" && addr.ends_with(&format!(":{port:04X}"))).then(|| addr.to_string())
        })
        .collect();
    listening == [format!("0100007F:{port:04X}")]
}

/// Whether every request the report counts has come to an outcome: none is
/// on its way.
fn every_request_has_its_outcome(report: &serde_json::Value) -> bool {
    report["requests"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(op, sent)| {
            let outcomes: u64 = report["requests_by_outcome"][op]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|n| n.as_u64()).sum());
            sent.as_u64() == Some(outcomes)
        })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_scrape_during_a_workload_agrees_with_stats_and_shows_no_secret() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket("met").await;
    server
        .put("met", "data/seed.bin", common::pattern(3 << 20, 1))
        .await;
    let port = free_port();
    let port_arg = port.to_string();
    let mount = Mount::new(
        &server,
        "met/data",
        &[
            "--read-write",
            "--metrics-listen",
            &port_arg,
            "--part-size",
            "8MiB",
        ],
    );
    assert!(
        listens_on_loopback_only(port),
        "a bare port binds 127.0.0.1 alone"
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // Scrapes while files are written and read: each answers and parses.
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while !done.load(Ordering::Relaxed) || scrapes == 0 {
                let (status, body) = scrape(addr);
                assert!(status.starts_with("HTTP/1.1 200"), "{status}");
                parse(&body);
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            scrapes
        })
    };
    let root = mount.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let data = common::pattern(20 << 20, 2);
        std::fs::write(root.join("big.bin"), &data).unwrap();
        assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), data);
        assert_eq!(
            std::fs::read(root.join("seed.bin")).unwrap(),
            common::pattern(3 << 20, 1)
        );
        for i in 0..5 {
            std::fs::write(root.join(format!("small-{i}.txt")), b"small\n").unwrap();
        }
        assert!(std::fs::metadata(root.join("not-there")).is_err());
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    assert!(scrapes >= 1);

    // Once the volume is quiet (no request on its way: each sent has its
    // outcome), the scrape and the report say the same.
    let quiet_by = std::time::Instant::now() + Duration::from_secs(60);
    let (stats, samples, text) = loop {
        let before = mount.stats();
        let (_, text) = scrape(addr);
        let after = mount.stats();
        let same = |key: &str| before[key] == after[key];
        if same("requests")
            && same("requests_by_outcome")
            && same("errors_by_errno")
            && every_request_has_its_outcome(&after)
        {
            break (after, parse(&text), text);
        }
        assert!(
            std::time::Instant::now() < quiet_by,
            "the volume never came to rest: {after}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (op, n) in stats["requests"].as_object().unwrap() {
        let n = n.as_u64().unwrap() as f64;
        assert_eq!(
            sum(&samples, "s3vol_requests_total", &[("operation", op)]),
            n,
            "{op}\n{text}"
        );
        if n > 0.0 {
            assert_eq!(
                sum(
                    &samples,
                    "s3vol_request_duration_seconds_count",
                    &[("operation", op)]
                ),
                n,
                "every request is timed: {op}"
            );
        }
    }
    assert!(
        stats["requests"]["UploadPart"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(
        sum(
            &samples,
            "s3vol_s3_bytes_total",
            &[("direction", "received")]
        ),
        stats["bytes_from_s3"].as_f64().unwrap()
    );
    assert_eq!(
        sum(&samples, "s3vol_s3_bytes_total", &[("direction", "sent")]),
        stats["bytes_to_s3"].as_f64().unwrap()
    );
    assert!(stats["bytes_to_s3"].as_u64().unwrap() >= 20 << 20);
    assert_eq!(
        sum(&samples, "s3vol_uploads_total", &[]),
        stats["uploads"]["objects"].as_f64().unwrap()
    );
    assert_eq!(sum(&samples, "s3vol_uploads_in_flight", &[]), 0.0);
    assert_eq!(
        sum(
            &samples,
            "s3vol_request_first_byte_seconds_count",
            &[("operation", "GetObject")]
        ),
        stats["requests_by_outcome"]["GetObject"]["ok"]
            .as_f64()
            .unwrap(),
        "every GET that answered is timed to its first byte"
    );
    let enoent = stats["errors_by_errno"]["ENOENT"].as_f64().unwrap();
    assert!(enoent >= 1.0, "{stats}");
    assert_eq!(
        sum(&samples, "s3vol_fs_errors_total", &[("errno", "ENOENT")]),
        enoent
    );
    assert_eq!(
        sum(&samples, "s3vol_cache_hits_total", &[]),
        stats["cache"]["memory_hits"].as_f64().unwrap()
            + stats["cache"]["disk_hits"].as_f64().unwrap()
    );
    assert_eq!(
        sum(
            &samples,
            "s3vol_info",
            &[("source", "met/data"), ("mode", "read-write")]
        ),
        1.0
    );
    // Types follow the names.
    for s in &samples {
        if s.name.ends_with("_total") {
            assert_eq!(s.kind, "counter", "{}", s.name);
        }
    }
    assert!(
        !text.contains(&server.secret_key),
        "the secret key is never shown"
    );
    assert!(!text.contains(&server.access_key), "nor the access key");
    assert!(
        !text.contains("seed.bin") && !text.contains("big.bin"),
        "nor an object's name"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_metrics_address_that_is_bad_fails_the_mount_and_a_taken_port_is_served_once_free() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket("met").await;
    for (value, says) in [
        ("192.0.2.1:9464", "cannot listen there"),
        ("localhost:9464", "is not a port or an IP address and port"),
        ("0", "names no port"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::run_s3vol(
            &server,
            &[
                "mount",
                "met",
                dir.path().to_str().unwrap(),
                "--endpoint-url",
                &server.endpoint,
                "--force-path-style",
                "--metrics-listen",
                value,
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        assert!(stderr.contains("--metrics-listen"), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
        assert!(!common::is_mounted(dir.path()), "{value}");
    }

    // A port another process holds (a local user, say) does not keep the
    // volume from mounting: it says so, and serves there once the port is free.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let port = addr.port().to_string();
    let mount = Mount::new(&server, "met", &["--metrics-listen", &port]);
    assert!(std::fs::read_dir(mount.path()).is_ok());
    assert!(
        mount.log_text().contains("another process holds the port"),
        "{}",
        mount.log_text()
    );
    drop(holder);
    let served = common::wait_until(Duration::from_secs(30), || {
        std::panic::catch_unwind(|| scrape(addr)).is_ok_and(|(status, body)| {
            status.starts_with("HTTP/1.1 200") && body.contains("s3vol_info")
        })
    });
    assert!(served, "{}", mount.log_text());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn the_report_attribute_is_root_s_alone() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket("met").await;
    let mount = Mount::new(&server, "met", &["--allow-other"]);
    let root = mount.path().to_str().unwrap().to_string();
    let getfattr = |command: &mut std::process::Command| {
        command
            .args(["-n", "trusted.s3vol.report", "--only-values", &root])
            .output()
            .unwrap()
    };
    let as_root = getfattr(&mut std::process::Command::new("getfattr"));
    assert!(as_root.status.success(), "{as_root:?}");
    let report: serde_json::Value = serde_json::from_slice(&as_root.stdout).unwrap();
    assert_eq!(report["source"], "met");
    // Another user reaches the volume (allow_other), not its report.
    let nobody = (65534, 65534);
    let listed = common::host::as_user(nobody, "ls")
        .arg(&root)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let refused = getfattr(&mut common::host::as_user(nobody, "getfattr"));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
}
