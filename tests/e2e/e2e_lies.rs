//! End to end: a server that lies. Through the proxy (`common::proxy::Lie`),
//! Garage's answers turn into ones no S3 would give; each must end in a clear
//! error (EIO, with what the server did in the log), never wrong bytes, a panic,
//! a hang past `--io-timeout`, or memory without bound (the daemon's peak RSS
//! stays under 256 MiB). And a local user with many handles open on a large
//! directory must not take the daemon's memory either.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{FaultProxy, Lie};
use common::{Mount, Server, ServerKind, pattern};

const BUCKET: &str = "vol";
const MIB: usize = 1024 * 1024;
/// What no answer of a lying server may push the daemon past.
const RSS_LIMIT_MIB: u64 = 256;

async fn server_and_proxy() -> (Server, FaultProxy) {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let proxy = FaultProxy::start(&server.endpoint);
    (server, proxy)
}

fn errno(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn lies_about_a_read_end_in_eio_never_in_wrong_bytes() {
    let (server, proxy) = server_and_proxy().await;
    let data = pattern(3 * MIB, 81);
    let lies = [
        (Lie::LongBody, "ran past"),
        (Lie::EndlessBody, "ran past"),
        (Lie::DrippingBody, "slower than the 16 KiB/s"),
        // A stall after a few bytes is a stall (asked again from where it
        // stopped), not a slow body.
        (Lie::StallingBody, "no data for 1s"),
        (Lie::WholeObject, "without a Content-Range"),
        (Lie::WrongRange, "with Content-Range"),
        (Lie::WrongEtag, "If-Match ignored"),
    ];
    for (lie, _) in &lies {
        server
            .put(BUCKET, &format!("root/{lie:?}"), data.clone())
            .await;
    }
    let mount = Mount::at_endpoint(
        &proxy.endpoint(),
        "vol/root",
        &["--io-timeout", "3s"],
        &server.env(),
    );
    for (lie, said) in lies {
        let file = mount.path().join(format!("{lie:?}"));
        // Looked up truthfully first: these lies are about reads. (A lookup GETs
        // a file's first bytes, and an ETag lied about there cannot be told from
        // a new version: the read pinned to it then fails with ESTALE.)
        std::fs::metadata(&file).unwrap();
        proxy.lie(Some(lie));
        let started = Instant::now();
        let read = std::fs::read(&file);
        let took = started.elapsed();
        proxy.lie(None);
        assert_eq!(errno(read), Some(libc::EIO), "{lie:?}");
        assert!(took < Duration::from_secs(20), "{lie:?} took {took:?}");
        let log = mount.log_text();
        assert!(log.contains(said), "{lie:?}: the log does not say {said:?}");
        // Nothing of the lie was kept: the truth reads whole.
        assert!(
            std::fs::read(&file).unwrap() == data,
            "{lie:?}: wrong bytes"
        );
    }
    assert!(mount.log_text().contains("cannot be right"));
    let rss = common::peak_rss_mib(mount.path());
    assert!(rss < RSS_LIMIT_MIB, "peak RSS {rss} MiB");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn lies_in_listings_end_in_eio_and_lead_nowhere_outside_the_prefix() {
    let (server, proxy) = server_and_proxy().await;
    for key in ["root/d/a", "root/d/b", "root/d/sub/c", "root/e/x"] {
        server.put(BUCKET, key, b"data".to_vec()).await;
    }
    let mount = Mount::at_endpoint(
        &proxy.endpoint(),
        "vol/root",
        &["--read-write", "--io-timeout", "3s", "--metadata-ttl", "0"],
        &server.env(),
    );
    let dir = mount.path().join("d");
    for (lie, said) in [
        (Lie::RepeatingListing, "go round forever"),
        (Lie::EndlessListing, "did not end after 500000 entries"),
        (Lie::EmptyListing, "pages that bring no entry"),
    ] {
        proxy.lie(Some(lie));
        let started = Instant::now();
        let listed =
            std::fs::read_dir(&dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
        let took = started.elapsed();
        proxy.lie(None);
        assert_eq!(errno(listed), Some(libc::EIO), "{lie:?}");
        // Empty pages end within --io-timeout (and a page's time).
        let bound = match lie {
            Lie::EmptyListing => Duration::from_secs(6),
            _ => Duration::from_secs(120),
        };
        assert!(took < bound, "{lie:?} took {took:?}");
        assert!(
            mount.log_text().contains(said),
            "{lie:?}: the log does not say {said:?}"
        );
    }

    // Keys outside the prefix asked for are not shown, read, moved or deleted.
    proxy.lie(Some(Lie::ForeignKeys));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "sub"]);
    std::fs::rename(&dir, mount.path().join("moved")).unwrap();
    std::fs::remove_dir_all(mount.path().join("e")).unwrap();
    proxy.lie(None);
    let touched: Vec<String> = proxy
        .counts()
        .payload_signing()
        .into_iter()
        .map(|(start, _)| start)
        .filter(|start| !start.starts_with("GET ") && start.contains("outside-the-prefix"))
        .collect();
    assert!(
        touched.is_empty(),
        "requests outside the prefix: {touched:?}"
    );
    let mut keys = server.keys(BUCKET, "").await;
    keys.sort();
    assert_eq!(
        keys,
        ["root/moved/a", "root/moved/b", "root/moved/sub/c"],
        "only the volume's own keys moved"
    );
    assert!(mount.log_text().contains("outside the prefix"));
    let rss = common::peak_rss_mib(mount.path());
    assert!(rss < RSS_LIMIT_MIB, "peak RSS {rss} MiB");
}

#[tokio::test]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_hundred_thousand_handles_of_one_directory_share_one_listing() {
    let server = Server::start(ServerKind::Garage);
    server.create_bucket(BUCKET).await;
    let objects = (0..2000).map(|i| {
        (
            format!("root/big/file-{i:05}-with-a-name-of-some-length"),
            b"x".to_vec(),
        )
    });
    server.put_many(BUCKET, objects).await;
    let mount = Mount::new(&server, "vol/root", &["--allow-other"]);
    let dir = mount.path().join("big");
    // Another local user opens the directory a hundred thousand times: ten
    // processes of ten thousand handles (the most one may hold here).
    let script = format!(
        r#"
import os, sys
os.setgid(65534); os.setuid(65534)
fds = [os.open({dir:?}, os.O_RDONLY | os.O_DIRECTORY) for _ in range(10000)]
print(len(fds), flush=True)
sys.stdin.read()
"#,
        dir = dir.to_str().unwrap()
    );
    let mut openers = Vec::new();
    for _ in 0..10 {
        let mut opener = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(opener.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        if line.trim() != "10000" {
            let out = opener.wait_with_output().unwrap();
            panic!(
                "the handles were not opened: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        openers.push(opener);
    }
    let rss = common::peak_rss_mib(mount.path());
    for mut opener in openers {
        drop(opener.stdin.take());
        assert!(opener.wait().unwrap().success());
    }
    assert!(
        rss < RSS_LIMIT_MIB,
        "peak RSS {rss} MiB with 100,000 handles of a 2,000-entry directory"
    );
}
